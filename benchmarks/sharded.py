"""Benchmark: a DLRM-like collection sharded over 2 gloo processes vs one process.

Workload: the 26-table collection of ``benchmarks/bags.py`` (rows log-uniformly spaced from
10 to ``--rows-max``, D = 64, 1-20 ids per example and feature, Zipf-like ids, sum pooling),
global batch ``--batch`` (4096), fused RowWiseAdagrad.

Contenders (same global batches, one thread per process, no huge pages for any: the script
sets ``EMBTABLE_HUGEPAGES=0``, since TorchRec's tables are not put on huge pages; ``--hugepages``
lets embtable's big tables and state take them):
- ``1 process``: ``embtable.EmbeddingBagCollection`` fused, the whole global batch per step;
- ``2 processes``: ``ShardedEmbeddingBagCollection`` (built directly: each rank allocates only
  its shards) with the plan of ``plan_sharding`` (row-wise for tables above an even share,
  the others table-wise), each rank a local batch of ``batch / 2``; gloo over loopback.

Per step (medians over ``--steps`` timed steps after warm-up): wall ms, CPU ms of the
calling thread (and, printed below the table, of the whole process: gloo's transport
threads included), samples/s, and the
split into lookup (forward outside collectives), exchange (time inside ``all_to_all``,
forward and backward; includes waiting for the other rank) and update (backward outside
collectives: the fused optimizer); bytes each rank sends per step vs the plan's analytic
minimum (int64 ids routed to another rank + float32 pooled rows returned + their gradients);
peak RSS growth of each rank vs the bytes of its shards and their optimizer state.
Before timing, each rank checks its sharded outputs and tables after one step against the
unsharded collection on a small copy of the workload.

The two contenders run one after the other (alternating ``--rounds`` times): a process group
cannot be interleaved call by call with a one-process run.

Usage:
    python benchmarks/sharded.py                       # rows-max 1,000,000, batch 4096
    python benchmarks/sharded.py --rows-max 100000 --steps 10 --rounds 2
    python benchmarks/sharded.py --quick               # smoke run
    python benchmarks/sharded.py --kernel-calls 300    # the column path's row-statistic kernels
    python benchmarks/sharded.py --rows-max 4000000 --memory-phases --phase-steps 8  # memory per step
    python benchmarks/sharded.py --memory-account --phase-steps 8  # live tensors, glibc's count
    python benchmarks/sharded.py --kernel-calls 15 --kernel-workload columns  # reduction, 26 tables
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import _memory_account  # noqa: E402 - benchmarks/ is on sys.path when run as a script
import embtable
from embtable import EmbeddingBagCollection, KeyedJagged, TableConfig
from embtable._atomic import atomic_write_bytes
from embtable.distributed import (
    ShardedEmbeddingBagCollection,
    ShardingPlan,
    TableSharding,
    plan_sharding,
    shard,
)
from embtable.distributed.plan import ShardingType, state_bytes_per_row
from embtable.testing import zipf_ids

DIM = 64
RULE = "rowwise_adagrad"


def table_configs(rows_max: int, count: int = 26) -> list[TableConfig]:
    rows = [int(round(r)) for r in np.logspace(1, np.log10(rows_max), count)]
    return [
        TableConfig(name=f"t{i}", num_embeddings=n, embedding_dim=DIM, feature_names=[f"f{i}"])
        for i, n in enumerate(rows)
    ]


def global_batch(tables: list[TableConfig], batch: int, seed: int) -> KeyedJagged:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 21, (len(tables), batch), generator=gen)
    values = [
        zipf_ids(t.num_embeddings, (int(n),), generator=gen) for t, n in zip(tables, lengths.sum(1))
    ]
    return KeyedJagged(
        [f"f{i}" for i in range(len(tables))], torch.cat(values), lengths.reshape(-1)
    )


def local_slice(kjt: KeyedJagged, rank: int, world: int) -> KeyedJagged:
    batch = kjt.stride() // world
    keys, starts = kjt.keys(), kjt.offset_per_key()
    values, lengths = [], []
    for p in range(len(keys)):
        lens = kjt.lengths()[p * kjt.stride() : (p + 1) * kjt.stride()]
        before = int(lens[: rank * batch].sum())
        mine = lens[rank * batch : (rank + 1) * batch]
        values.append(kjt.values()[starts[p] + before : starts[p] + before + int(mine.sum())])
        lengths.append(mine)
    return KeyedJagged(keys, torch.cat(values), torch.cat(lengths))


def peak_rss() -> int:
    """This process's resident high-water mark (VmHWM; ru_maxrss would include the parent's
    peak before the spawn's exec)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def current_rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def minimum_bytes(
    sharded: ShardedEmbeddingBagCollection, local: KeyedJagged, full: KeyedJagged
) -> int:
    """The plan's analytic minimum a rank sends per step: its ids owned by other ranks (int64),
    the pooled rows it computes for other ranks' bags and the gradients of its own bags' rows
    pooled elsewhere (float32); for a data-parallel table a ring all_reduce of its dense
    gradient and touched column (``2 * 4 rows (D + 1) (W - 1) / W``); for a column shard with
    row-wise Adagrad the all_reduce of one float per distinct row of the global batch
    ``full`` (the shards' sum of squares)."""
    rank, world, batch = sharded.rank, sharded.world_size, local.stride()
    total = 0
    starts = local.offset_per_key()
    for config in sharded.tables:
        kind = sharded._kind[config.name]
        if kind is ShardingType.DATA_PARALLEL:
            total += 2 * 4 * config.num_embeddings * (config.embedding_dim + 1) * (world - 1) // world
        held = [s.rank for s in sharded._shards[config.name]]
        exact = sharded.exact_columns
        if kind is ShardingType.COLUMN_WISE and RULE == "rowwise_adagrad" and rank in held and exact:
            cuts, keys = full.offset_per_key(), full.keys()
            ids = torch.cat(
                [full.values()[cuts[keys.index(f)] : cuts[keys.index(f) + 1]] for f in config.feature_names]
            )
            total += 2 * 4 * torch.unique(ids).numel() * (len(held) - 1) // len(held)
    for p, name in enumerate(local.keys()):
        table = sharded._table_of[name]
        if sharded._kind[table] is ShardingType.DATA_PARALLEL:
            continue
        ids = local.values()[starts[p] : starts[p + 1]]
        for shard_ in sharded._shards[table]:
            if shard_.rank == rank:
                total += (world - 1) * batch * shard_.num_cols * 4  # rows for the other ranks' bags
                continue
            if sharded._kind[table] is ShardingType.ROW_WISE:
                inside = (ids >= shard_.row_offset) & (ids < shard_.row_offset + shard_.num_rows)
                total += int(inside.sum()) * 8
            else:
                total += ids.numel() * 8
            total += (
                batch * shard_.num_cols * 4
            )  # gradient of this rank's bags' rows from that shard
    return total


def check_correct(rank: int, world: int, args: argparse.Namespace) -> None:
    """Small copy of the workload on the benchmarked kind of plan: sharded outputs and tables
    after one step equal one process's (tables: not with ``--inexact-columns``, whose column
    shards keep their own row-wise Adagrad state, as TorchRec's)."""
    tables = table_configs(2000)
    torch.manual_seed(0)
    reference = EmbeddingBagCollection(tables)
    plan = make_plan(tables, world, args.sharding, args.data_parallel_bytes)
    sharded = shard(reference, plan, exact_columns=not args.inexact_columns)
    embtable.optim.fuse(reference, RULE, lr=0.05)
    embtable.optim.fuse(sharded, RULE, lr=0.05)
    full = global_batch(tables, 64, seed=1)
    out = sharded(local_slice(full, rank, world)).values()
    expected = reference(full).values()
    size = 64 // world
    torch.testing.assert_close(out, expected[rank * size : (rank + 1) * size], rtol=1e-5, atol=1e-6)
    out.pow(2).sum().backward()
    expected.pow(2).sum().backward()
    if args.inexact_columns and args.sharding == "column_wise":
        return
    for name, table in sharded.full_tables().items():
        torch.testing.assert_close(
            table, reference.table_weight(name).detach(), rtol=1e-5, atol=1e-6
        )


def make_plan(
    tables: list[TableConfig], world: int, sharding: str, data_parallel_bytes: int = 0
) -> ShardingPlan:
    """``plan_sharding``'s plan (``"auto"``; tables up to ``data_parallel_bytes`` replicated),
    or every table sharded one way."""
    if sharding == "auto":
        return plan_sharding(
            tables, world, optimizer=RULE, data_parallel_bytes=data_parallel_bytes
        )
    make = {
        "row_wise": lambda t: TableSharding.row_wise(),
        "column_wise": lambda t: TableSharding.column_wise(),
        "table_wise": lambda t: TableSharding.table_wise(rank=int(t.name[1:]) % world),
    }[sharding]
    return ShardingPlan(world_size=world, tables={t.name: make(t) for t in tables})


def _gather_results(rank: int, world: int, result: dict[str, Any], out_path: str) -> None:
    """Every rank's ``result`` to rank 0, which writes the list to ``out_path`` atomically (a
    worker that dies afterwards leaves whole results for :func:`run_sharded`); then shut down."""
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, result)
    if rank == 0:
        atomic_write_bytes(out_path, json.dumps(gathered).encode())
    dist.destroy_process_group()


def sharded_worker(
    rank: int, world: int, port: int, args: argparse.Namespace, out_path: str
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300)
    )
    check_correct(rank, world, args)
    tables = table_configs(args.rows_max)
    fulls = [global_batch(tables, args.batch, seed=s) for s in range(4)]
    batches = [local_slice(full, rank, world) for full in fulls]
    base_rss = current_rss()
    plan = make_plan(tables, world, args.sharding, args.data_parallel_bytes)
    torch.manual_seed(0)
    sharded = ShardedEmbeddingBagCollection(tables, plan, exact_columns=not args.inexact_columns)
    if args.memory_chunks is not None:
        sharded.memory_chunks = args.memory_chunks
    embtable.optim.fuse(sharded, RULE, lr=0.05)
    shard_bytes = sum(
        s.num_rows * s.num_cols * 4 + s.num_rows * state_bytes_per_row(RULE, s.num_cols)
        for s, _ in sharded.shard_weights().values()
    )
    result: dict[str, Any] = {
        "rank": rank,
        "plan": plan.describe(tables),
        "shard_bytes": shard_bytes,
        "chunks": sharded._chunks_for(batches[0].stride()),
    }
    walls, cpus, procs, lookups, exchanges, updates, sent = [], [], [], [], [], [], []
    for step in range(args.warmup + args.steps):
        local = batches[step % len(batches)]
        sharded.stats.reset()
        dist.barrier(group=sharded.group)
        wall0, cpu0, proc0 = time.perf_counter(), time.thread_time(), time.process_time()
        out = sharded(local)
        forward_done = time.perf_counter()
        forward_comm = sharded.stats.total_seconds()
        out.values().sum().backward()
        wall1, cpu1, proc1 = time.perf_counter(), time.thread_time(), time.process_time()
        del out  # (a training loop does not keep the pooled rows into the next step)
        comm = sharded.stats.total_seconds()
        if step >= args.warmup:
            walls.append(wall1 - wall0)
            cpus.append(cpu1 - cpu0)
            procs.append(proc1 - proc0)
            lookups.append(forward_done - wall0 - forward_comm)
            exchanges.append(comm)
            updates.append(wall1 - forward_done - (comm - forward_comm))
            sent.append(sharded.stats.total_bytes())
    result.update(
        wall_ms=statistics.median(walls) * 1e3,
        cpu_ms=statistics.median(cpus) * 1e3,
        proc_ms=statistics.median(procs) * 1e3,
        lookup_ms=statistics.median(lookups) * 1e3,
        exchange_ms=statistics.median(exchanges) * 1e3,
        update_ms=statistics.median(updates) * 1e3,
        bytes_sent=statistics.median(sent),
        bytes_min=statistics.median(minimum_bytes(sharded, b, f) for b, f in zip(batches, fulls)),
        peak_growth=peak_rss() - base_rss,
    )
    _gather_results(rank, world, result, out_path)


def torchrec_worker(
    rank: int, world: int, port: int, args: argparse.Namespace, out_path: str
) -> None:
    """TorchRec's DistributedModelParallel on the same tables, table-wise (the sharding type of
    embtable's plan here), fused RowWiseAdagrad applied in backward, gloo, one thread."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300)
    )
    result: dict[str, Any] = {"rank": rank}
    try:
        import logging

        logging.getLogger("torchrec").setLevel(logging.ERROR)
        from torch.distributed.optim import _apply_optimizer_in_backward
        from torchrec import EmbeddingBagCollection as TorchRecEBC
        from torchrec import EmbeddingBagConfig, KeyedJaggedTensor
        from torchrec.distributed import DistributedModelParallel
        from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
        from torchrec.distributed.planner import (
            EmbeddingShardingPlanner,
            ParameterConstraints,
            Topology,
        )
        from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

        tables = table_configs(args.rows_max)
        configs = [
            EmbeddingBagConfig(
                name=t.name,
                embedding_dim=DIM,
                num_embeddings=t.num_embeddings,
                feature_names=list(t.feature_names),
            )
            for t in tables
        ]
        ebc = TorchRecEBC(tables=configs, device=torch.device("meta"))
        _apply_optimizer_in_backward(RowWiseAdagrad, ebc.parameters(), {"lr": 0.05})
        sharder = EmbeddingBagCollectionSharder()
        constraints = {
            t.name: ParameterConstraints(sharding_types=[args.torchrec_sharding]) for t in tables
        }
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=world, compute_device="cpu"), constraints=constraints
        )
        plan = planner.plan(ebc, [sharder])  # on every rank (the same plan): a refusal raises everywhere
        model = DistributedModelParallel(
            ebc, device=torch.device("cpu"), plan=plan, sharders=[sharder]
        )
        batches = []
        for s in range(4):
            local = local_slice(global_batch(tables, args.batch, seed=s), rank, world)
            batches.append(
                KeyedJaggedTensor(keys=local.keys(), values=local.values(), lengths=local.lengths())
            )
        walls, cpus, procs = [], [], []
        for step in range(args.warmup + args.steps):
            dist.barrier()
            wall0, cpu0, proc0 = time.perf_counter(), time.thread_time(), time.process_time()
            model(batches[step % 4]).values().sum().backward()
            if step >= args.warmup:
                walls.append(time.perf_counter() - wall0)
                cpus.append(time.thread_time() - cpu0)
                procs.append(time.process_time() - proc0)
        result.update(
            wall_ms=statistics.median(walls) * 1e3,
            cpu_ms=statistics.median(cpus) * 1e3,
            proc_ms=statistics.median(procs) * 1e3,
        )
    except Exception as error:  # report why it does not run
        result["error"] = f"{type(error).__name__}: {str(error)[:300]}"
    _gather_results(rank, world, result, out_path)


def _reset_peak() -> None:
    """Restart VmHWM from the current RSS (Linux ``clear_refs`` 5)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def memory_worker(
    rank: int, world: int, port: int, args: argparse.Namespace, out_path: str
) -> None:
    """Where a step's memory goes: for steps 0 .. ``--phase-steps`` - 1, RSS above the step's
    start (MB) at the forward's peak, after forward, at the backward's peak and after the step
    (outputs dropped); and the peak RSS growth over all steps (VmHWM, as the main table's)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300)
    )
    tables = table_configs(args.rows_max)
    batches = [local_slice(global_batch(tables, args.batch, seed=s), rank, world) for s in range(2)]
    base, heap0 = current_rss(), _memory_account.heap()
    sharded = ShardedEmbeddingBagCollection(
        tables, make_plan(tables, world, args.sharding, args.data_parallel_bytes)
    )
    if args.memory_chunks is not None:
        sharded.memory_chunks = args.memory_chunks
    embtable.optim.fuse(sharded, RULE, lr=0.05)
    shards = sum(
        s.num_rows * s.num_cols * 4 + s.num_rows * state_bytes_per_row(RULE, s.num_cols)
        for s, _ in sharded.shard_weights().values()
    )
    rows, high, heaps, accounts = [], 0, [], []
    for step in range(args.phase_steps):
        last = step == args.phase_steps - 1  # (the profiler's own records grow the heap)
        prof = _memory_account.profiler() if args.memory_account and last else None
        start = current_rss()
        if prof is not None:
            prof.__enter__()
        _reset_peak()
        values = sharded(batches[step % 2]).values()
        forward_peak, forward_kept = peak_rss() - start, current_rss() - start
        _reset_peak()
        values.sum().backward()
        backward_peak = peak_rss() - start
        if prof is None:  # (the peak leaves out the profiled step)
            high = max(high, forward_peak + start, backward_peak + start)
        del values
        if prof is not None:
            prof.__exit__(None, None, None)
            accounts.append(_memory_account.live_at_peak(prof))
            del prof
        rows.append([step, forward_peak, forward_kept, backward_peak, current_rss() - start])
        heaps.append({"rss": current_rss() - base, **_memory_account.heap()})
    result = {
        "rank": rank,
        "steps": rows,
        "heaps": heaps,
        "accounts": accounts,
        "shards": shards,
        "growth": current_rss() - base,
        "peak": (high if args.memory_account and high else max(peak_rss(), high)) - base,
        "chunks": sharded._chunks_for(batches[0].stride()),
        "heap0": heap0,
    }
    _gather_results(rank, world, result, out_path)


def print_memory_phases(args: argparse.Namespace) -> None:
    """The table of :func:`memory_worker` for every rank."""
    print("| rank | step | forward peak MB | after forward MB | backward peak MB | after step MB |")
    print("|---|---|---|---|---|---|")
    results = run_sharded(args, args.world, memory_worker)
    for result in results:
        for step, *sizes in result["steps"]:
            cells = " | ".join(f"{size / 1e6:.1f}" for size in sizes)
            print(f"| {result['rank']} | {step} | {cells} |")
    for result in results:
        print(
            f"rank {result['rank']}: RSS growth after {args.phase_steps} steps "
            f"{result['growth'] / 1e6:.1f} MB, peak {result['peak'] / 1e6:.1f} MB, shards + "
            f"state {result['shards'] / 1e6:.1f} MB ({result['growth'] / result['shards']:.2f}x, "
            f"peak {result['peak'] / result['shards']:.2f}x; {result['chunks']} memory chunks)"
        )
    if args.memory_account:
        print("(--memory-account: the peak leaves out the last step, which is profiled)")
        print_memory_account(results)


def print_memory_account(results: list[dict[str, Any]]) -> None:
    """``--memory-account``: per step, RSS growth since the worker's start and glibc's count
    after the step (in use and free bytes in the heap, the main arena); the tensors allocated
    in the last step and alive at its peak (only that step is profiled: the profiler's own
    records would grow the heap), in all and by call chain."""
    print("\n| rank | step | RSS growth MB | heap in use MB | heap free MB | arena MB "
          "| live at peak MB |")
    print("|---|---|---|---|---|---|---|")
    for result in results:
        inuse0 = result["heap0"]["inuse"]
        for (step, *_), heap in zip(result["steps"], result["heaps"]):
            live = result["accounts"][-1]["live"] if step == len(result["steps"]) - 1 else None
            print(
                f"| {result['rank']} | {step} | {heap['rss'] / 1e6:.1f} | "
                f"{(heap['inuse'] - inuse0) / 1e6:.1f} | {heap['free'] / 1e6:.1f} | "
                f"{heap['arena'] / 1e6:.1f} | {'' if live is None else f'{live / 1e6:.1f}'} |"
            )
    for result in results:
        last = result["accounts"][-1]
        print(f"\nrank {result['rank']}, step {len(result['steps']) - 1}: tensors alive at "
              f"the peak {last['live'] / 1e6:.1f} MB (allocated in the step: "
              f"{last['peak'] / 1e6:.1f} MB)")
        for chain, size, count in last["groups"]:
            if size >= 100_000:
                print(f"  {size / 1e6:6.2f} MB x{count:<4d} {chain}")


def run_sharded(args: argparse.Namespace, world: int, worker: Any = None) -> list[dict[str, Any]]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "result.json")
        try:
            mp.spawn(
                worker or sharded_worker, args=(world, port, args, path), nprocs=world, join=True
            )
        except mp.ProcessExitedException as error:
            if not os.path.exists(path):  # (rank 0 writes the results before shutting down)
                raise
            print(f"note: a worker died after the results were written: {error}", file=sys.stderr)
        with open(path) as handle:
            return json.load(handle)


def run_single(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    tables = table_configs(args.rows_max)
    batches = [global_batch(tables, args.batch, seed=s) for s in range(4)]
    base_rss = current_rss()
    torch.manual_seed(0)
    collection = EmbeddingBagCollection(tables)
    embtable.optim.fuse(collection, RULE, lr=0.05)
    table_bytes = sum(
        t.num_embeddings * (DIM * 4 + state_bytes_per_row(RULE, DIM)) for t in tables
    )
    walls, cpus, lookups, updates = [], [], [], []
    for step in range(args.warmup + args.steps):
        kjt = batches[step % len(batches)]
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        out = collection(kjt)
        mid = time.perf_counter()
        out.values().sum().backward()
        wall1, cpu1 = time.perf_counter(), time.thread_time()
        del out
        if step >= args.warmup:
            walls.append(wall1 - wall0)
            cpus.append(cpu1 - cpu0)
            lookups.append(mid - wall0)
            updates.append(wall1 - mid)
    return {
        "wall_ms": statistics.median(walls) * 1e3,
        "cpu_ms": statistics.median(cpus) * 1e3,
        "lookup_ms": statistics.median(lookups) * 1e3,
        "update_ms": statistics.median(updates) * 1e3,
        "peak_growth": peak_rss() - base_rss,
        "shard_bytes": table_bytes,
    }


def _single_worker(rank: int, args: argparse.Namespace, out_path: str) -> None:
    with open(out_path, "w") as handle:
        json.dump(run_single(args), handle)


def run_single_process(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`run_single` in a fresh process (its own peak RSS)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "single.json")
        mp.spawn(_single_worker, args=(args, path), nprocs=1, join=True)
        with open(path) as handle:
            return json.load(handle)


# ---------------------------------------------------------------------- scaling model (docs/distributed.md)


def model_bytes_per_step(
    kind: str,
    world: int,
    batch: int,
    ids_per_bag: float,
    dim: int,
    rows: float = 0,
    id_bytes: int = 8,
) -> float:
    """Bytes one rank sends per step for one feature of one table (docs/distributed.md, formulas):
    ids of ``id_bytes`` (8: int64; 4: int32, as they travel when every table has fewer than
    2^31 rows), float32 pooled rows and gradients (4 bytes per value), ``batch`` bags
    per rank of ``ids_per_bag`` ids, the ids' owners uniform over the rows; a data-parallel
    table of ``rows`` rows all-reduces its dense gradient and touched column (ring).  (Column
    shards' per-row statistics, one float per distinct row and statistic, are left out;
    column-wise needs ``world <= dim``: ``nan`` beyond.)"""
    w, b, L, d, i = world, batch, ids_per_bag, dim, id_bytes
    if kind == "row_wise":
        return i * b * L * (w - 1) / w + 2 * 4 * b * d * (w - 1)
    if kind == "table_wise":  # the owner's load: every other rank's rows out, its gradients in
        return 4 * b * d * (w - 1)
    if kind == "column_wise":
        if w > d:
            return float("nan")
        return i * b * L * (w - 1) + 2 * 4 * b * d * (w - 1) / w
    if kind == "data_parallel":
        return 2 * 4 * rows * (d + 1) * (w - 1) / w
    raise ValueError(kind)


def model_memory_per_rank(
    kind: str, world: int, rows: float, dim: int, state_per_row: float
) -> float:
    """Bytes of table + optimizer state one rank holds (row-wise Adagrad: one float per row)."""
    if kind == "row_wise":
        return rows / world * (4 * dim + state_per_row)
    if kind == "column_wise":
        return rows * (4 * dim / min(world, dim) + state_per_row) if world <= dim else float("nan")
    return rows * (4 * dim + state_per_row)  # table-wise owner, data-parallel replica


def scaling_plot(path: str) -> None:
    """The scaling model's two panels for a 1e9 x 64 table, 8..1024 ranks (written to ``path``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worlds = [8, 16, 32, 64, 128, 256, 512, 1024]
    kinds = ["row_wise", "table_wise", "column_wise", "data_parallel"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for kind in kinds:
        left.plot(
            worlds,
            [  # (1e9 rows < 2^31: the ids travel as int32)
                model_bytes_per_step(kind, w, 512, 10, 64, rows=1e9, id_bytes=4) / 2**20
                for w in worlds
            ],
            marker="o",
            label=kind,
        )
        right.plot(
            worlds,
            [model_memory_per_rank(kind, w, 1e9, 64, 4) / 2**30 for w in worlds],
            marker="o",
            label=kind,
        )
    left.set(
        xscale="log",
        yscale="log",
        xlabel="ranks",
        ylabel="MiB sent per step per rank",
        title="1 feature, 512 bags/rank, 10 int32 ids/bag, D=64",
    )
    right.set(
        xscale="log",
        yscale="log",
        xlabel="ranks",
        ylabel="GiB per rank (weights + row-wise Adagrad)",
        title="1e9 x 64 table",
    )
    right.axhline(128, color="gray", linestyle=":", label="128 GiB host")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def column_bucket(bags: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The 26 tables' column bucket of the column-wise benchmark as one rank reduces it:
    every feature's ids of a global batch of ``bags`` shifted into one grouped weight
    (``bucket_ids``); returns ``(ids, offsets, rows)``."""
    tables = table_configs(100_000)
    kjt = global_batch(tables, bags, seed=0)
    starts = np.cumsum([0] + [t.num_embeddings for t in tables])
    feature_rows = torch.tensor([[int(s), t.num_embeddings] for s, t in zip(starts, tables)])
    ids, offsets = embtable.ops.bucket_ids(kjt.values(), kjt.lengths(), feature_rows, bags)
    return ids, offsets, int(starts[-1])


def kernel_timings(args: argparse.Namespace) -> None:
    """The exact column path's row-statistic kernels alone on one table (V = 100K rows,
    D = 32, 4,096 bags of 1-20 Zipf-like ids), each against its pure-PyTorch oracle: a
    correctness check first, then thread CPU time at one thread, contenders alternating call
    by call, same inputs and pages; medians over ``--kernel-calls`` calls.
    ``--kernel-workload columns``: the reduction alone on the 26 tables' column bucket of
    the column-wise run (:func:`column_bucket`, 4,096 bags per feature, D = 32)."""
    from embtable.distributed import _rowstat

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    rows, dim, bags = 100_000, 32, 4096
    lengths = torch.randint(1, 21, (bags,), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    ids = zipf_ids(rows, (int(offsets[-1]),), generator=gen)
    grad = torch.randn(bags, dim, generator=gen)
    if args.kernel_workload == "columns":
        ids, offsets, rows = column_bucket(bags)
        grad = torch.randn(offsets.numel() - 1, dim, generator=gen)
    pairs = {
        "distinct rows": (
            lambda: _rowstat.distinct_rows(ids, rows),
            lambda: _rowstat.reference_distinct_rows(ids, rows),
        ),
        "rows + summed sum-bag gradient": (
            lambda: _rowstat.bag_rows(ids, offsets, grad, None, rows, 1, -1),
            lambda: _rowstat.reference_bag_rows(ids, offsets, grad, None, rows, 1, -1),
        ),
    }
    if args.kernel_workload == "columns":
        del pairs["distinct rows"]  # (not on the bag path: rowstat_reduce finds the rows)
    for name, (compiled, oracle) in pairs.items():  # correctness first
        for got, want in zip(compiled(), oracle()):
            if not torch.equal(got, want):
                raise SystemExit(f"{name}: the compiled kernel differs from its oracle")
    print(
        f"{ids.numel():,} ids over {rows:,} rows, D {dim}, {offsets.numel() - 1} bags; one "
        "thread, thread CPU "
        f"time, medians of {args.kernel_calls} alternating calls"
    )
    print("| kernel | compiled us | oracle us | oracle / compiled |")
    print("|---|---|---|---|")
    for name, contenders in pairs.items():
        times: list[list[float]] = [[], []]
        for _ in range(args.kernel_calls):
            for k, run in enumerate(contenders):
                start = time.thread_time()
                run()
                times[k].append(time.thread_time() - start)
        fast, slow = (statistics.median(t) * 1e6 for t in times)
        print(f"| {name} | {fast:.0f} | {slow:.0f} | {slow / fast:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows-max", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--world", type=int, default=2, help="processes of the sharded contender")
    parser.add_argument("--scaling-plot", metavar="PNG", help="only write the scaling model's plot")
    parser.add_argument(
        "--sharding",
        default="auto",
        choices=("auto", "row_wise", "column_wise", "table_wise"),
        help="embtable's plan: plan_sharding's (auto) or every table one way",
    )
    parser.add_argument(
        "--data-parallel-bytes",
        type=int,
        default=0,
        help="auto plan: replicate tables of at most this many bytes (weights + state)",
    )
    parser.add_argument(
        "--torchrec", action="store_true", help="add TorchRec's DistributedModelParallel"
    )
    parser.add_argument(
        "--torchrec-sharding", default="table_wise", help="its sharding type (table_wise, ...)"
    )
    parser.add_argument(
        "--inexact-columns",
        action="store_true",
        help="exact_columns=False: column shards keep their own per-row state (TorchRec's way)",
    )
    parser.add_argument(
        "--memory-phases",
        action="store_true",
        help="only measure where a step's memory goes (RSS per phase, 3 steps)",
    )
    parser.add_argument(
        "--phase-steps", type=int, default=3, help="steps of --memory-phases (default 3)"
    )
    parser.add_argument(
        "--memory-account",
        action="store_true",
        help="--memory-phases plus glibc's mallinfo2 after each step and the tensors alive at "
        "the last step's peak (the torch profiler's allocation events, that step only)",
    )
    parser.add_argument(
        "--memory-chunks",
        type=int,
        default=None,
        help="ShardedEmbeddingBagCollection.memory_chunks (default: the library's choice; "
        "1: the rows exchanged at once)",
    )
    parser.add_argument(
        "--hugepages",
        action="store_true",
        help="let embtable put big tables and state on huge pages (TorchRec's stay off them)",
    )
    parser.add_argument(
        "--kernel-calls",
        type=int,
        default=0,
        help="only time the column path's row-statistic kernels (this many calls each)",
    )
    parser.add_argument(
        "--kernel-workload",
        choices=("table", "columns"),
        default="table",
        help="--kernel-calls on one 100K-row table, or on the 26 tables' column bucket",
    )
    args = parser.parse_args()
    if not args.hugepages:  # (the spawned ranks inherit it: one placement for every contender)
        os.environ["EMBTABLE_HUGEPAGES"] = "0"
    if args.scaling_plot:
        scaling_plot(args.scaling_plot)
        return
    if args.kernel_calls:
        kernel_timings(args)
        return
    if args.memory_phases or args.memory_account:
        print_memory_phases(args)
        return
    if args.quick:
        args.rows_max, args.batch, args.steps, args.warmup, args.rounds = 10_000, 512, 3, 1, 1
    singles, shardeds, torchrecs = [], [], []
    for _ in range(args.rounds):
        singles.append(run_single_process(args))
        shardeds.append(run_sharded(args, args.world))
        if args.torchrec:
            torchrecs.append(run_sharded(args, args.world, torchrec_worker))
    print(shardeds[0][0]["plan"])
    one = {k: statistics.median(r[k] for r in singles) for k in singles[0]}
    print(
        f"\nrows-max {args.rows_max}, global batch {args.batch}, fused {RULE}, 1 thread per process, "
        f"{args.rounds} rounds x {args.steps} steps (medians), "
        f"embtable huge pages {'on' if args.hugepages else 'off'}"
    )
    header = (
        "contender",
        "wall ms",
        "CPU ms",
        "samples/s",
        "lookup ms",
        "exchange ms",
        "update ms",
        "sent MB/step",
        "min MB/step",
        "sent/min",
        "peak MB",
        "shards MB",
        "peak/shards",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    print(
        f"| 1 process | {one['wall_ms']:.1f} | {one['cpu_ms']:.1f} | {args.batch / one['wall_ms'] * 1e3:,.0f} | {one['lookup_ms']:.1f} | - | "
        f"{one['update_ms']:.1f} | - | - | - | {one['peak_growth'] / 1e6:.0f} | "
        f"{one['shard_bytes'] / 1e6:.0f} | {one['peak_growth'] / one['shard_bytes']:.2f} |"
    )
    for rank in range(args.world):
        rows = [s[rank] for s in shardeds]
        med = {
            k: statistics.median(r[k] for r in rows)
            for k in (
                "wall_ms",
                "cpu_ms",
                "lookup_ms",
                "exchange_ms",
                "update_ms",
                "bytes_sent",
                "bytes_min",
                "peak_growth",
                "shard_bytes",
            )
        }
        print(
            f"| {args.world} processes, rank {rank} | {med['wall_ms']:.1f} | {med['cpu_ms']:.1f} | {args.batch / med['wall_ms'] * 1e3:,.0f} | "
            f"{med['lookup_ms']:.1f} | {med['exchange_ms']:.1f} | {med['update_ms']:.1f} | "
            f"{med['bytes_sent'] / 1e6:.2f} | {med['bytes_min'] / 1e6:.2f} | {med['bytes_sent'] / med['bytes_min']:.3f} | "
            f"{med['peak_growth'] / 1e6:.0f} | {med['shard_bytes'] / 1e6:.0f} | "
            f"{med['peak_growth'] / med['shard_bytes']:.2f} |"
        )
    for rank in range(args.world) if torchrecs else ():
        rows = [t[rank] for t in torchrecs]
        if any("error" in r for r in rows):
            print(
                f"| TorchRec DMP {args.torchrec_sharding}, rank {rank} | {rows[0].get('error')} |"
            )
            continue
        wall = statistics.median(r["wall_ms"] for r in rows)
        cpu = statistics.median(r["cpu_ms"] for r in rows)
        print(
            f"| TorchRec DMP {args.torchrec_sharding}, {args.world} processes, rank {rank} | {wall:.1f} | {cpu:.1f} | "
            f"{args.batch / wall * 1e3:,.0f} | - | - | - | - | - | - | - | - | - |"
        )
    procs = [
        f"rank {rank} {statistics.median(s[rank]['proc_ms'] for s in shardeds):.1f}"
        for rank in range(args.world)
    ]
    if torchrecs and not any("error" in r for t in torchrecs for r in t):
        procs += [
            f"TorchRec rank {rank} {statistics.median(t[rank]['proc_ms'] for t in torchrecs):.1f}"
            for rank in range(args.world)
        ]
    print(f"process CPU ms per step (all threads, gloo's included): {', '.join(procs)}")
    print(f"memory chunks per step (sharded contender): {shardeds[0][0]['chunks']}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
