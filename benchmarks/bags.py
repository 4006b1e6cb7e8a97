"""Benchmark: bags and collections against torch and FBGEMM, forward and forward+backward.

(a) one bag table, V = 1,000,000, D = 16, 32, 64, 128, 256, B = 2048 bags of 20 ids
    (floor(V * u**3)): embtable.EmbeddingBag vs torch.nn.EmbeddingBag, modes sum, mean,
    weighted sum (per_sample_weights) and max.
(b) a DLRM-like collection: 26 tables of 10 .. 1,000,000 rows (log-uniformly spaced),
    D = 64, B = 2048, 1-20 ids per example and feature, sum pooling:
    embtable.EmbeddingBagCollection (one batched lookup) vs a loop of 26
    torch.nn.EmbeddingBag (+ torch.cat) vs FBGEMM's SplitTableBatchedEmbeddingBagsCodegen
    on CPU (when fbgemm_gpu imports).  All three produce the [B, 26 * 64] concatenation.

Memory placement is equal for every contender (``benchmarks/_placement.py``): ``--placement
4k`` keeps every table on 4 KiB pages, ``huge`` puts every contender's tables and state on
2 MiB pages, ``both`` (default) runs the two settings one after the other; each table says
what share of each contender's tables the kernel really backs with huge pages.

Clock: with one thread (``--threads 1``), the CPU time of the timing thread
(``time.thread_time``: every kernel runs on it, and time spent preempted on a loaded machine
is left out); with more threads, wall time (``time.perf_counter``), which only means something
on an idle machine.  ``--threads 1,2`` times both and adds the 1 -> 2 thread speed-ups.

Column "faults t/e/f": the median minor page faults of the process per call of torch / embtable
/ FBGEMM.  A call that gets fresh pages from the OS (glibc returned a freed 13.6 MB output to the
OS, or a dense gradient of 690 MB is mapped anew) pays ~1.5 us per 4 KiB page on this VM, which
can be a third of a collection forward; whether it happens depends on the heap's state, not on
the kernel, so read a ratio with unequal faults with care.

Every contender is first checked against torch (outputs, dense gradients, and the weights
after one SGD step), then timed.  The contenders of one row are timed in turn, call after
call, so that load changes on a shared machine hit them alike; the table shows medians (ms)
and ratios measured in the same run.

Rows of (a): "kernel" is the pooling op alone, without the modules' Python
(``torch.nn.functional.embedding_bag`` vs ``torch.ops.embtable.pool_bags`` on the same ids and
weights); "forward" the modules under ``no_grad``; "fwd+bwd" with dense weight gradients.

Rows of (b): "forward" (no autograd); "fwd+bwd" with dense weight gradients, as
torch.nn.EmbeddingBag gives by default (FBGEMM has no such mode on CPU: its backward always
applies its optimizer); "SGD step": one training step of the tables, i.e. embtable's
collection fused with embtable.optim.fuse(..., "sgd") (the update happens in backward), the
torch loop with sparse=True gradients + torch.optim.SGD, and FBGEMM with EXACT_SGD.

Usage:
    python benchmarks/bags.py            # the sizes above, 4k and huge pages, one thread
    python benchmarks/bags.py --threads 1,2 --placement huge --dims 64,128
    python benchmarks/bags.py --quick    # small sizes, a smoke run
    python benchmarks/bags.py --workloads b --two-pass   # the collection forward before pool_bucket
    python benchmarks/bags.py --workloads b --placement 4k --threads 2 --perf embtable:fwd+bwd --perf-out e2.data
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

import _placement  # noqa: E402 - benchmarks/ is on sys.path when run as a script
import embtable
from embtable.testing import zipf_ids

Runner = Callable[[], None]


class Timing(NamedTuple):
    median: float  # ms
    best: float  # ms, the fastest round
    faults: float  # median minor page faults of the process per call (fresh memory touched)


def minor_faults() -> int:
    """The process's minor page faults so far (every thread)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def clock() -> Callable[[], float]:
    """The timing thread's CPU time at one thread, wall time with more."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


def interleaved_times(runners: dict[str, Runner], repeats: int, warmup: int = 2) -> dict[str, Timing]:
    """Median and best ms of each runner, timing the runners in turn (one call each per round)."""
    samples: dict[str, list[float]] = {name: [] for name in runners}
    faults: dict[str, list[int]] = {name: [] for name in runners}
    now = clock()
    for round_index in range(warmup + repeats):
        for name, run in runners.items():
            before = minor_faults()
            start = now()
            run()
            elapsed = now() - start
            if round_index >= warmup:
                samples[name].append(elapsed * 1e3)
                faults[name].append(minor_faults() - before)
    return {name: Timing(statistics.median(v), min(v), statistics.median(faults[name]))
            for name, v in samples.items()}


def table_row(workload: str, phase: str, timing: dict[str, Timing]) -> tuple[str, ...]:
    """One printed row: medians, median ratios, and the ratio of the best rounds vs torch."""
    ours, torch_ms, fb = timing["embtable"], timing["torch"], timing.get("fbgemm")
    return (
        workload, phase, str(torch.get_num_threads()), f"{torch_ms.median:.2f}", f"{ours.median:.2f}",
        "-" if fb is None else f"{fb.median:.2f}", f"{ours.median / torch_ms.median:.2f}",
        "-" if fb is None else f"{ours.median / fb.median:.2f}", f"{ours.best / torch_ms.best:.2f}",
        "/".join(f"{t.faults:.0f}" for t in (torch_ms, ours, *([] if fb is None else [fb]))),
        f"{torch_ms.best:.4f}", f"{ours.best:.4f}",  # not printed: for the thread speed-ups
    )


def timed_rows(
    workload: str, phases: list[tuple[str, dict[str, Runner], int]], threads: list[int]
) -> list[tuple[str, ...]]:
    """Time every phase at every thread count (same contenders, same memory)."""
    rows = []
    for count in threads:
        torch.set_num_threads(count)
        for phase, runners, repeats in phases:
            rows.append(table_row(workload, phase, interleaved_times(runners, repeats)))
    return rows


def close(actual: torch.Tensor, expected: torch.Tensor, what: str, tol: float = 1e-4) -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------------- (a) one table


def bench_single_table(
    args: argparse.Namespace, gen: torch.Generator, placement: str
) -> tuple[list[tuple[str, ...]], list[str]]:
    num_rows, batch, per_bag = (args.rows_a, args.batch, 20)
    ids = zipf_ids(num_rows, (batch * per_bag,), generator=gen)
    offsets = torch.arange(0, batch * per_bag, per_bag)
    sample_weights = torch.rand(batch * per_bag, generator=gen)
    bounds = torch.cat([offsets, torch.tensor([ids.numel()])])  # with the last offset
    rows, notes = [], []
    for dim in args.dims:
        upstream = torch.randn(batch, dim, generator=gen)
        weight = torch.randn(num_rows, dim, generator=gen)
        for mode in args.modes:
            torch_mode = "sum" if mode == "wsum" else mode
            psw = sample_weights if mode == "wsum" else None
            theirs = torch.nn.EmbeddingBag.from_pretrained(weight, freeze=False, mode=torch_mode)
            ours = embtable.EmbeddingBag.from_pretrained(weight.clone(), freeze=False, mode=torch_mode)
            # correctness first
            out_ours = ours(ids, offsets, per_sample_weights=psw)
            out_theirs = theirs(ids, offsets, per_sample_weights=psw)
            close(out_ours, out_theirs, f"(a) D={dim} {mode} forward")
            out_ours.backward(upstream)
            out_theirs.backward(upstream)
            close(ours.weight.grad, theirs.weight.grad, f"(a) D={dim} {mode} weight gradient")
            ours.weight.grad = theirs.weight.grad = None
            del out_ours, out_theirs
            _placement.apply(placement)
            tables = {"torch": [theirs.weight], "embtable": [ours.weight]}
            wrong = _placement.unequal(tables, placement)
            if wrong:
                notes.append(f"(a) D={dim} {mode}: UNEQUAL placement ({', '.join(wrong)})")
            if dim == args.dims[0] and mode == args.modes[0]:
                notes.append("(a) " + _placement.describe(placement, tables, args.thp_system))

            def forward(module: torch.nn.Module, psw: torch.Tensor | None = psw) -> Runner:
                def run() -> None:
                    with torch.no_grad():
                        module(ids, offsets, per_sample_weights=psw)

                return run

            def train(
                module: torch.nn.Module, psw: torch.Tensor | None = psw, upstream: torch.Tensor = upstream
            ) -> Runner:
                def run() -> None:
                    module.weight.grad = None
                    module(ids, offsets, per_sample_weights=psw).backward(upstream)

                return run

            pooling = {"sum": 1, "wsum": 1, "mean": 2, "max": 3}[mode]
            kernel_theirs = functools.partial(
                torch.nn.functional.embedding_bag, ids, weight, bounds, mode=torch_mode,
                per_sample_weights=psw, include_last_offset=True,
            )
            kernel_ours = functools.partial(
                torch.ops.embtable.pool_bags, ours.weight.detach(), ids, bounds, psw, pooling, -1
            )

            phases = [
                ("kernel", {"torch": kernel_theirs, "embtable": kernel_ours}, args.repeats),
                ("forward", {"torch": forward(theirs), "embtable": forward(ours)}, args.repeats),
                ("fwd+bwd", {"torch": train(theirs), "embtable": train(ours)}, args.repeats_bwd),
            ]
            rows += timed_rows(f"(a) D={dim} {mode}", phases, args.threads)
            theirs.weight.grad = ours.weight.grad = None
            del theirs, ours
        del weight
    return rows, notes


# ---------------------------------------------------------------------- (b) 26 tables


def dlrm_batch(table_rows: list[int], batch: int, gen: torch.Generator) -> embtable.KeyedJagged:
    lengths = torch.randint(1, 21, (len(table_rows), batch), generator=gen)
    values = [zipf_ids(rows, (int(n),), generator=gen) for rows, n in zip(table_rows, lengths.sum(1))]
    keys = [f"f{t}" for t in range(len(table_rows))]
    return embtable.KeyedJagged(keys, torch.cat(values), lengths.reshape(-1))


class TorchLoop(torch.nn.Module):
    """The baseline: one torch.nn.EmbeddingBag per table, then torch.cat."""

    def __init__(self, table_rows: list[int], dim: int) -> None:
        super().__init__()
        self.embedding_bags = torch.nn.ModuleDict(
            {
                f"t{t}": torch.nn.EmbeddingBag(rows, dim, mode="sum", include_last_offset=True)
                for t, rows in enumerate(table_rows)
            }
        )

    def forward(self, batch: embtable.KeyedJagged) -> torch.Tensor:
        outs = []
        for t, bag in enumerate(self.embedding_bags.values()):
            feature = batch[f"f{t}"]
            outs.append(bag(feature.values, feature.offsets))
        return torch.cat(outs, dim=1)


def make_fbgemm(table_rows: list[int], dim: int, lr: float) -> tuple[torch.nn.Module | None, str]:
    try:
        import fbgemm_gpu  # noqa: F401
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            EmbeddingLocation,
            SplitTableBatchedEmbeddingBagsCodegen,
        )
    except Exception as error:  # noqa: BLE001 - any import failure skips the column
        return None, f"FBGEMM column skipped: fbgemm_gpu does not import ({error})"
    specs = [(rows, dim, EmbeddingLocation.HOST, ComputeDevice.CPU) for rows in table_rows]
    module = SplitTableBatchedEmbeddingBagsCodegen(
        specs,
        optimizer=EmbOptimType.EXACT_SGD,
        learning_rate=lr,
        pooling_mode=PoolingMode.SUM,
        device=torch.device("cpu"),
    )
    version = getattr(fbgemm_gpu, "__version__", "?")
    return module, f"FBGEMM: fbgemm_gpu {version} SplitTableBatchedEmbeddingBagsCodegen, CPU, fp32"


def big_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """A module's parameters and buffers of 1 MiB or more (its tables)."""
    found = {id(t): t for t in [*module.parameters(), *module.buffers()] if t.nbytes >= 1 << 20}
    return list(found.values())


def bench_collection(
    args: argparse.Namespace, gen: torch.Generator, placement: str
) -> tuple[list[tuple[str, ...]], list[str]]:
    num_tables, dim, batch, lr = 26, 64, args.batch, 0.01
    table_rows = [int(round(r)) for r in np.logspace(1, np.log10(args.rows_b), num_tables)]
    tables = [
        embtable.TableConfig(name=f"t{t}", num_embeddings=rows, embedding_dim=dim, feature_names=[f"f{t}"])
        for t, rows in enumerate(table_rows)
    ]
    features = dlrm_batch(table_rows, batch, gen)
    upstream = torch.randn(batch, num_tables * dim, generator=gen)

    ours = embtable.EmbeddingBagCollection(tables)
    loop = TorchLoop(table_rows, dim)
    loop.load_state_dict(ours.state_dict())
    fbgemm, note = make_fbgemm(table_rows, dim, lr)
    if fbgemm is not None:
        with torch.no_grad():
            for t, view in enumerate(fbgemm.split_embedding_weights()):
                view.copy_(ours.table_weight(f"t{t}"))
    values, offsets = features.values(), features.offsets()
    bucket = ours.bucket_inputs(features)[0]  # one bucket: all tables share dim, dtype, mode

    # correctness first: outputs, dense gradients
    out_ours, out_loop = ours(features).values(), loop(features)
    close(out_ours, out_loop, "(b) collection forward")
    if fbgemm is not None:
        close(fbgemm(values, offsets), out_loop, "(b) FBGEMM forward")
    out_ours.backward(upstream)
    out_loop.backward(upstream)
    scale = float(upstream.abs().max())
    for t, bag in enumerate(loop.embedding_bags.values()):
        # hot rows of small tables sum ~10^4 float32 terms, in another order than torch: allow
        # the rounding of a sum of that many terms (~n * eps * max|term|)
        tol = max(1e-3, 2.5e-7 * len(features[f"f{t}"].values) * scale)
        close(ours.table_grad(f"t{t}"), bag.weight.grad, f"(b) table t{t} gradient", tol=tol)
    del out_ours, out_loop
    ours.zero_grad(set_to_none=True)
    loop.zero_grad(set_to_none=True)

    def forward_ours() -> None:
        with torch.no_grad():
            ours(features).values()

    def forward_loop() -> None:
        with torch.no_grad():
            loop(features)

    def forward_fbgemm() -> None:
        with torch.no_grad():
            fbgemm(values, offsets)

    def forward_torch_grouped() -> None:  # torch's kernel on the collection's grouped ids
        with torch.no_grad():
            torch.nn.functional.embedding_bag(
                bucket.ids, ours.grouped_weight_0, bucket.offsets, mode="sum", include_last_offset=True
            )

    def train_ours() -> None:
        ours.zero_grad(set_to_none=True)
        ours(features).values().backward(upstream)

    def train_loop() -> None:
        loop.zero_grad(set_to_none=True)
        loop(features).backward(upstream)

    forward = {"torch": forward_loop, "embtable": forward_ours, "grouped": forward_torch_grouped}
    if fbgemm is not None:
        forward["fbgemm"] = forward_fbgemm
    tables = {"torch": big_tensors(loop), "embtable": big_tensors(ours)}
    if fbgemm is not None:
        tables["fbgemm"] = big_tensors(fbgemm)
    _placement.apply(placement)
    wrong = _placement.unequal(tables, placement)
    workload = "(b) 26-table collection"
    phases = [("forward", forward, args.repeats),
              ("fwd+bwd", {"torch": train_loop, "embtable": train_ours}, args.repeats_bwd)]
    if args.perf:
        profile_phase(args, dict((name, runners) for name, runners, _ in phases))
        return [], []
    rows = timed_rows(workload, phases, args.threads)
    grouped = {count: interleaved_times({"torch": forward_loop, "grouped": forward_torch_grouped}, args.repeats)
               for count in args.threads if torch.set_num_threads(count) is None}
    ours.zero_grad(set_to_none=True)
    loop.zero_grad(set_to_none=True)
    step, step_note = sgd_steps(ours, loop, fbgemm, features, upstream, lr)
    if step:
        _placement.apply(placement)
        rows += timed_rows(workload, [("SGD step", step, args.repeats_bwd)], args.threads)
    notes = [
        f"(b) rows {table_rows[0]:,} .. {table_rows[-1]:,} (sum {sum(table_rows):,}), "
        f"{features.values().numel():,} ids; {note}",
        "(b) " + _placement.describe(placement, tables, args.thp_system),
        *([f"(b) UNEQUAL placement ({', '.join(wrong)})"] if wrong else []),
        *(f"(b) layout check, {count} thread(s): torch's own embedding_bag kernel on the collection's grouped "
          f"ids takes {g['grouped'].median:.2f} ms, {g['torch'].median / g['grouped'].median:.2f}x faster "
          "than the torch loop" for count, g in grouped.items()),
        "(b) fwd+bwd: dense weight gradients (no FBGEMM: its CPU backward always applies its optimizer)",
        step_note,
    ]
    return rows, notes


def profile_phase(args: argparse.Namespace, phases: dict[str, dict[str, Runner]]) -> None:
    """``--perf CONTENDER:PHASE``: after the setup and 3 warm-up calls, ``perf record -e cpu-clock
    -g`` attached to this process over ``--perf-calls`` calls of that one runner (no setup in the
    profile); the wall time of each call is printed."""
    import signal
    import subprocess

    contender, phase = args.perf.split(":")
    run = phases[phase][contender]
    torch.set_num_threads(args.threads[0])
    for _ in range(3):
        run()
    perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-g", "-p", str(os.getpid()),
                             "-o", args.perf_out])
    time.sleep(1.0)  # perf attached
    times = []
    for _ in range(args.perf_calls):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    perf.send_signal(signal.SIGINT)
    perf.wait()
    print(f"--perf {args.perf}: {args.perf_calls} calls at {args.threads[0]} thread(s), wall ms median "
          f"{statistics.median(times):.2f}, best {min(times):.2f}; profile in {args.perf_out}")


def sgd_steps(
    ours: embtable.EmbeddingBagCollection,
    loop: TorchLoop,
    fbgemm: torch.nn.Module | None,
    features: embtable.KeyedJagged,
    upstream: torch.Tensor,
    lr: float,
) -> tuple[dict[str, Runner], str]:
    """One SGD training step each: embtable fused SGD, torch loop with sparse grads + torch.optim.SGD, FBGEMM EXACT_SGD."""
    try:
        fused = embtable.optim.fuse(ours, "sgd", lr=lr)
    except Exception as error:  # noqa: BLE001 - the row is skipped with a note
        return {}, f"(b) SGD step skipped: embtable.optim.fuse failed ({error})"
    for bag in loop.embedding_bags.values():
        bag.sparse = True
    sgd = torch.optim.SGD(loop.parameters(), lr=lr)
    values, offsets = features.values(), features.offsets()

    def step_ours() -> None:
        ours(features).values().backward(upstream)

    def step_loop() -> None:
        sgd.zero_grad(set_to_none=True)
        loop(features).backward(upstream)
        sgd.step()

    def step_fbgemm() -> None:
        fbgemm(values, offsets).backward(upstream)

    runners = {"torch": step_loop, "embtable": step_ours}
    if fbgemm is not None:
        runners["fbgemm"] = step_fbgemm
    for run in runners.values():  # one step each from equal weights, then compare them
        run()
    for t, bag in enumerate(loop.embedding_bags.values()):
        close(ours.table_weight(f"t{t}"), bag.weight, f"(b) table t{t} after one SGD step")
        if fbgemm is not None:
            close(fbgemm.split_embedding_weights()[t], bag.weight, f"(b) FBGEMM table t{t} after one SGD step")
    del fused
    return runners, (
        f"(b) SGD step (lr {lr}): embtable.optim.fuse(collection, 'sgd') (update fused into backward) vs "
        "torch loop with sparse=True + torch.optim.SGD vs FBGEMM EXACT_SGD; weights checked equal after one step"
    )


def speedups(rows: list[tuple[str, ...]]) -> list[str]:
    """1 -> n thread speed-ups of torch and embtable for each workload and phase.

    From the fastest round of each (the one least disturbed by other processes): on a loaded
    machine the medians of a multi-threaded wall time measure the load, not the kernel.
    """
    by_key: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    for row in rows:
        by_key.setdefault((row[0], row[1]), {})[row[2]] = (float(row[-2]), float(row[-1]))
    lines = []
    for (workload, phase), per_threads in by_key.items():
        if "1" not in per_threads or len(per_threads) < 2:
            continue
        t1, o1 = per_threads["1"]
        for count, (tn, on) in per_threads.items():
            if count != "1":
                lines.append(f"| {workload} | {phase} | 1 -> {count} | {t1 / tn:.2f}x | {o1 / on:.2f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--repeats", type=int, default=41, help="timed rounds per forward row")
    parser.add_argument("--repeats-bwd", type=int, default=9, help="timed rounds per fwd+bwd row")
    parser.add_argument("--threads", default="1",
                        help="comma-separated thread counts, e.g. 1,2 (CPU time at 1, wall time above)")
    parser.add_argument("--dims", default="16,32,64,128,256", help="(a) embedding dims")
    parser.add_argument("--modes", default="sum,mean,wsum,max", help="(a) modes (wsum: per_sample_weights)")
    parser.add_argument("--workloads", default="a,b", help="a: one table, b: the collection")
    parser.add_argument("--two-pass", action="store_true",
                        help="(b) the collection forward without autograd as before embtable::pool_bucket: "
                             "bucket_ids, then pool_bags_grouped (a before/after check)")
    parser.add_argument("--perf", default="", metavar="CONTENDER:PHASE",
                        help="(b) profile one runner instead of timing, e.g. embtable:fwd+bwd or torch:forward "
                             "(perf record -e cpu-clock -g over --perf-calls calls, after the setup)")
    parser.add_argument("--perf-calls", type=int, default=12)
    parser.add_argument("--perf-out", default="perf.data")
    _placement.add_arguments(parser)
    args = parser.parse_args()
    if args.two_pass:
        from embtable.ops import _compiled

        def two_pass(weight, values, lengths, feature_rows, psw, pooling, padding_idx, batch):
            ids, offsets = _compiled.bucket_ids(values, lengths, feature_rows, batch)
            return _compiled.pool_bags_grouped(weight, ids, offsets, psw, pooling, padding_idx, feature_rows.shape[0])

        _compiled.pool_bucket = two_pass
    args.threads = [int(t) for t in args.threads.split(",")]
    args.dims = [int(d) for d in args.dims.split(",")]
    args.modes = args.modes.split(",")
    args.rows_a, args.rows_b, args.batch = (
        (10_000, 10_000, 256) if args.quick else (1_000_000, 1_000_000, 2048)
    )
    if args.quick:
        args.repeats, args.repeats_bwd = 5, 3
    load = os.getloadavg()
    print(
        f"torch {torch.__version__}, embtable {embtable.__version__}, threads {args.threads}, "
        f"compiled kernels {embtable.ops.extension_available()}; B = {args.batch}; "
        f"(a) V = {args.rows_a:,}, 20 ids per bag; (b) D = 64; "
        f"load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        "medians in ms (CPU time of the timing thread at 1 thread, wall time above); ratio = embtable / "
        "peer (< 1: embtable faster); best = ratio of the fastest rounds; faults = median minor page "
        "faults per call (torch / embtable / fbgemm: fresh pages touched, e.g. an output the allocator "
        "took from the OS again); all outputs checked against torch"
    )
    header = ("workload", "phase", "thr", "torch", "embtable", "fbgemm", "vs torch", "vs fbgemm", "best",
              "faults t/e/f")
    widths = (24, 8, 3, 9, 9, 9, 9, 9, 6, 16)
    for placement in _placement.chosen(args):
        gen = torch.Generator().manual_seed(0)
        print(f"\n## placement {placement}", flush=True)
        rows = []
        with _placement.setting(placement, args.thp_system):
            for workload in ("a", "b"):
                if workload not in args.workloads:
                    continue
                bench = bench_single_table if workload == "a" else bench_collection
                part, notes = bench(args, gen, placement)
                rows += part
                for note in notes:
                    print(note)
                print("  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
                for row in part:
                    print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
                print(flush=True)
        lines = speedups(rows)
        if lines:
            print("thread scaling, fastest rounds (wall time at n threads vs thread CPU time at 1; "
                  "only meaningful on an idle machine)")
            print("| workload | phase | threads | torch speed-up | embtable speed-up |")
            print("\n".join(lines), flush=True)
    load = os.getloadavg()
    print(f"\nload average at end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")


if __name__ == "__main__":
    main()
