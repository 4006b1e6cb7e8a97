"""One training step of a big embedding table: embtable's fused optimizers vs torch and FBGEMM.

Two workloads (ids drawn as ``floor(V * u**3)``, u uniform: a skewed id distribution):

* ``bag``: V = 1,000,000, D = 64, B = 2048 bags of 20 ids, sum pooling (EmbeddingBag).
* ``seq``: V = 1,000,000, D = 128, a 256 x 128 batch of ids (Embedding).

A step is forward, ``backward(grad_out)`` with a fixed random ``grad_out``, and the
optimizer step.  Times are medians over the timed steps of the step's CPU time on the
main thread (``time.thread_time``; with ``--threads 1`` every kernel runs on that thread),
which excludes the time the process sits preempted on a shared, loaded machine; the
wall-clock median is printed beside it.  Columns: embtable fused SGD / Adagrad / RowWiseAdagrad / Adam
(and Adam with ``state_dtype="bfloat16"`` / ``"int8_rowwise"`` moments); torch dense
Adam; torch ``sparse=True`` + SparseAdam / SGD / Adagrad; FBGEMM TBE on CPU (EXACT_SGD,
EXACT_ADAGRAD, EXACT_ROWWISE_ADAGRAD; bag workload only) when ``fbgemm-gpu-cpu`` is installed.

Every configuration runs in its own subprocess, so that its peak memory (``ru_maxrss``
minus the resident size before the table was allocated) is its own.  The memory-traffic
floor is the bytes a step must move (each distinct touched row of the table and of its
optimizer state read and written once, the output and its gradient once, the ids once)
divided by the machine's measured copy bandwidth.

Correctness is checked first (small tables): fused SGD = torch sparse SGD, fused Adam with
``bias_correction="table"`` = SparseAdam, fused RowWiseAdagrad = FBGEMM's.

Memory placement is equal for every configuration (``benchmarks/_placement.py``):
``--placement 4k`` (every table and state on 4 KiB pages), ``huge`` (all on 2 MiB pages, put
there after the warm-up steps, so lazily made optimizer state too) or ``both``; every table
says the share of each configuration's table + state the kernel really backs with huge pages.
``--threads 1,2`` runs each setting at each thread count: at one thread ``ms/step`` is the
step's CPU time, above it wall time (meaningful on an idle machine only; the load average is
printed with every table).

``--phases`` instead times the parts of one embtable step (forward and its gather kernel,
backward and its fused update kernel, ``opt.step()``) while it alternates with its peer's
step (bag: row-wise Adagrad vs FBGEMM; seq: Adam vs SparseAdam; ``--phases-pair``: others),
then the same parts alone, and the Adam update kernel alone with float32, bfloat16 and
int8_rowwise moments.

Usage:
    python benchmarks/train_step.py [--quick] [--reps 7] [--rounds 2] [--threads 1,2]
        [--placement 4k|huge|both]
    python benchmarks/train_step.py --phases [--reps 30] [--placement huge]
        [--workloads bag --phases-pair et_adam:torch_sparse_adam]
    python benchmarks/train_step.py --perf et_sgd:bag --placement 4k --perf-out sgd.data
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import torch

import _placement  # benchmarks/ is on sys.path when run as a script

WORKLOADS = {
    "bag": {"V": 1_000_000, "D": 64, "B": 2048, "L": 20},
    "seq": {"V": 1_000_000, "D": 128, "B": 256, "L": 128},
}
QUICK = {
    "bag": {"V": 100_000, "D": 64, "B": 512, "L": 20},
    "seq": {"V": 100_000, "D": 128, "B": 64, "L": 128},
}
CONFIGS = [
    ("et_sgd", "embtable fused SGD"),
    ("et_adagrad", "embtable fused Adagrad"),
    ("et_rowwise", "embtable fused RowWiseAdagrad"),
    ("et_adam", "embtable fused Adam"),
    ("et_adam_bf16", "embtable fused Adam, bf16 state"),
    ("et_adam_int8", "embtable fused Adam, int8_rowwise"),
    ("torch_dense_adam", "torch dense Adam"),
    ("torch_sparse_adam", "torch sparse + SparseAdam"),
    ("torch_sparse_sgd", "torch sparse + SGD"),
    ("torch_sparse_adagrad", "torch sparse + Adagrad"),
    ("fbgemm_sgd", "FBGEMM TBE EXACT_SGD"),
    ("fbgemm_adagrad", "FBGEMM TBE EXACT_ADAGRAD"),
    ("fbgemm_rowwise", "FBGEMM TBE EXACT_ROWWISE_ADAGRAD"),
]
LR = 0.01
# Bytes of optimizer state per row element (k * D floats) and per row (fixed), by family.
STATE_BYTES = {
    "sgd": (0, 0),
    "adagrad": (4, 0),
    "rowwise": (0, 4),
    "adam": (8, 8),
    "adam_bf16": (4, 8),  # two bfloat16 moments, int64 step count
    "adam_int8": (2, 16),  # two 8-bit codes, two float32 row scales, int64 step count
}
# The embtable configurations: fused rule and state_dtype.
ET_RULES = {
    "et_sgd": ("sgd", "float32"),
    "et_adagrad": ("adagrad", "float32"),
    "et_rowwise": ("rowwise_adagrad", "float32"),
    "et_adam": ("adam", "float32"),
    "et_adam_bf16": ("adam", "bfloat16"),
    "et_adam_int8": ("adam", "int8_rowwise"),
}


def family(config: str) -> str:
    for name in ("adam_bf16", "adam_int8", "sgd", "adagrad", "rowwise", "adam"):
        if config.endswith(name):
            return "rowwise" if name == "adagrad" and "rowwise" in config else name
    raise ValueError(config)


def make_batch(workload: str, sizes: dict[str, int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    V, D, B, L = sizes["V"], sizes["D"], sizes["B"], sizes["L"]
    ids = (V * torch.rand(B * L, generator=g) ** 3).long().clamp_max(V - 1)
    offsets = torch.arange(0, B * L + 1, L)
    rows_out = B if workload == "bag" else B * L
    grad_out = torch.randn(rows_out, D, generator=g)
    return ids, offsets, grad_out


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The process's peak resident size (``VmHWM``; unlike ``ru_maxrss`` it is not inherited
    from the parent across ``exec``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


# --------------------------------------------------------------------------- step builders
def build_step(config: str, workload: str, sizes: dict[str, int], ids, offsets, grad_out):
    V, D, B, L = sizes["V"], sizes["D"], sizes["B"], sizes["L"]
    bag = workload == "bag"
    if config.startswith("et_"):
        import embtable

        name, state_dtype = ET_RULES[config]
        if bag:
            module = embtable.EmbeddingBag(V, D, mode="sum")
            args = (ids, offsets[:-1])
        else:
            module = embtable.Embedding(V, D)
            args = (ids.reshape(B, L),)
        grad = grad_out if bag else grad_out.reshape(B, L, D)
        opt = embtable.optim.fuse(module, name, lr=LR, state_dtype=state_dtype)

        def step():
            module(*args).backward(grad)
            opt.step()

        return step, (module, opt)
    if config.startswith("torch_"):
        sparse = "sparse" in config
        if bag:
            module = torch.nn.EmbeddingBag(V, D, mode="sum", sparse=sparse)
            args = (ids, offsets[:-1])
        else:
            module = torch.nn.Embedding(V, D, sparse=sparse)
            args = (ids.reshape(B, L),)
        grad = grad_out if bag else grad_out.reshape(B, L, D)
        opt = {
            "torch_dense_adam": lambda p: torch.optim.Adam(p, lr=LR),
            "torch_sparse_adam": lambda p: torch.optim.SparseAdam(p, lr=LR),
            "torch_sparse_sgd": lambda p: torch.optim.SGD(p, lr=LR),
            "torch_sparse_adagrad": lambda p: torch.optim.Adagrad(p, lr=LR),
        }[config](list(module.parameters()))

        def step():
            module(*args).backward(grad)
            opt.step()
            opt.zero_grad(set_to_none=True)

        return step, (module, opt)
    if config.startswith("fbgemm_"):
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            EmbeddingLocation,
            SplitTableBatchedEmbeddingBagsCodegen,
        )

        optim = {
            "fbgemm_sgd": EmbOptimType.EXACT_SGD,
            "fbgemm_adagrad": EmbOptimType.EXACT_ADAGRAD,
            "fbgemm_rowwise": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        }[config]
        tbe = SplitTableBatchedEmbeddingBagsCodegen(
            embedding_specs=[(V, D, EmbeddingLocation.HOST, ComputeDevice.CPU)],
            optimizer=optim,
            learning_rate=LR,
            eps=1e-8,
            pooling_mode=PoolingMode.SUM if bag else PoolingMode.NONE,
        )
        tbe_offsets = offsets if bag else torch.arange(0, B * L + 1)

        def step():
            tbe(ids, tbe_offsets).backward(grad_out)

        return step, (tbe,)
    raise ValueError(f"unknown config {config!r}")


def big_tensors(owners) -> list[torch.Tensor]:
    """The tables and optimizer state (tensors of 1 MiB or more) of modules and optimizers."""
    found: dict[int, torch.Tensor] = {}

    def walk(value) -> None:
        if isinstance(value, torch.Tensor):
            if value.nbytes >= 1 << 20:
                found.setdefault(value.data_ptr(), value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    for owner in owners:
        if isinstance(owner, torch.nn.Module):
            walk(list(owner.parameters()) + list(owner.buffers()))
        else:
            walk(owner.state)
    return list(found.values())


def placed(placement: str, tables: dict[str, list[torch.Tensor]]) -> dict[str, float]:
    """Place every big mapping, then the share of each configuration's tensors on huge pages."""
    from embtable.ops._memory import huge_page_fraction

    _placement.apply(placement)
    return {
        name: sum(huge_page_fraction(t) * t.nbytes for t in tensors) / max(sum(t.nbytes for t in tensors), 1)
        for name, tensors in tables.items()
    }


def worker(config: str, workload: str, sizes: dict[str, int], reps: int, threads: int, placement: str) -> dict:
    torch.set_num_threads(threads)
    ids, offsets, grad_out = make_batch(workload, sizes)
    if config.startswith("et_"):
        import embtable  # noqa: F401  (library code is not step memory)

        embtable.ops.extension_available()
    elif config.startswith("fbgemm_"):
        import fbgemm_gpu  # noqa: F401
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)  # imports torch.optim's lazy deps
    baseline = rss_bytes()
    with _placement.setting(placement):
        step, owners = build_step(config, workload, sizes, ids, offsets, grad_out)
    warm = 1 if config == "torch_dense_adam" else 3
    for _ in range(warm):
        step()
    huge = placed(placement, {config: big_tensors(owners)})[config]
    wall, cpu = [], []
    for _ in range(reps if config != "torch_dense_adam" else min(reps, 3)):
        start, start_cpu = time.perf_counter(), time.thread_time()
        step()
        cpu.append(time.thread_time() - start_cpu)
        wall.append(time.perf_counter() - start)
    return {"cpu": cpu, "wall": wall, "peak": max(peak_rss_bytes() - baseline, 0), "huge": huge}


PAIRS = {
    "bag": [("et_sgd", "fbgemm_sgd"), ("et_rowwise", "fbgemm_rowwise"), ("et_adam", "torch_sparse_adam")],
    "seq": [("et_adam", "torch_sparse_adam")],
}


def paired_worker(
    first: str, second: str, workload: str, sizes: dict[str, int], reps: int, threads: int, placement: str
) -> dict:
    """Both configurations in one process, steps alternating, so that they share the load."""
    torch.set_num_threads(threads)
    clock = time.thread_time if threads == 1 else time.perf_counter
    ids, offsets, grad_out = make_batch(workload, sizes)
    with _placement.setting(placement):
        built = {c: build_step(c, workload, sizes, ids, offsets, grad_out) for c in (first, second)}
    steps = {c: step for c, (step, _) in built.items()}
    for step in steps.values():
        for _ in range(3):
            step()
    huge = placed(placement, {c: big_tensors(owners) for c, (_, owners) in built.items()})
    cpu: dict[str, list[float]] = {c: [] for c in steps}
    for _ in range(reps):
        for config, step in steps.items():
            start = clock()
            step()
            cpu[config].append(clock() - start)
    return {"ms": {c: statistics.median(v) * 1e3 for c, v in cpu.items()}, "huge": huge}


# --------------------------------------------------------------------------- phases
PHASE_PEERS = {"bag": ("et_rowwise", "fbgemm_rowwise"), "seq": ("et_adam", "torch_sparse_adam")}


def _timed(module, name: str, sink: list[float]):
    """Replace ``module.name`` by a wrapper that appends each call's CPU time to ``sink``."""
    inner = getattr(module, name)

    def wrapper(*args):
        start = time.thread_time()
        result = inner(*args)
        sink.append(time.thread_time() - start)
        return result

    setattr(module, name, wrapper)


def phases_worker(workload: str, sizes: dict[str, int], reps: int, threads: int, placement: str,
                  pair: str = "") -> dict:
    """Where an embtable step's time goes, alone and next to its peer's step (alternating).

    Times (CPU, medians): the module forward and, inside it, the gather kernel; backward and,
    inside it, the fused update kernel; ``opt.step()``; the peer's whole step; the same parts
    of the step alone (keys ending in "alone": the peer's step skipped).  Then the update
    kernel alone, for fused Adam with each moment storage, on this workload's batch.
    ``pair``: ``"MINE:PEER"`` configurations instead of ``PHASE_PEERS[workload]``.
    """
    import embtable
    from embtable import ops

    torch.set_num_threads(threads)
    ids, offsets, grad_out = make_batch(workload, sizes)
    mine, peer = pair.split(":") if pair else PHASE_PEERS[workload]
    name, _ = ET_RULES[mine]
    V, D, B, L = sizes["V"], sizes["D"], sizes["B"], sizes["L"]
    bag = workload == "bag"
    with _placement.setting(placement):
        peer_step, peer_owners = build_step(peer, workload, sizes, ids, offsets, grad_out)
        module = embtable.EmbeddingBag(V, D, mode="sum") if bag else embtable.Embedding(V, D)
    args = (ids, offsets[:-1]) if bag else (ids.reshape(B, L),)
    grad = grad_out if bag else grad_out.reshape(B, L, D)
    opt = embtable.optim.fuse(module, name, lr=LR)
    with _placement.setting(placement):
        module(*args).backward(grad)  # makes the optimizer state (inside the setting)
        peer_step()
    huge = placed(placement, {mine: big_tensors((module, opt)), peer: big_tensors(peer_owners)})
    gather, update = [], []
    _timed(ops, "pool_bags" if bag else "gather_rows", gather)
    _timed(ops, "fused_update_rows", update)
    result: dict[str, float] = {}
    for suffix, with_peer in (("", True), (" alone", False)):
        gather.clear()
        update.clear()
        times: dict[str, list[float]] = {k: [] for k in ("forward", "backward", "step", "peer")}
        for rep in range(reps + 3):
            start = time.thread_time()
            out = module(*args)
            forward = time.thread_time()
            out.backward(grad)
            backward = time.thread_time()
            opt.step()
            stepped = time.thread_time()
            del out
            if with_peer:
                peer_step()
            done = time.thread_time()
            if rep >= 3:
                parts = (forward - start, backward - forward, stepped - backward, done - stepped)
                for key, value in zip(times, parts):
                    times[key].append(value)
        if not with_peer:
            del times["peer"]
        result.update({k + suffix: statistics.median(v) * 1e3 for k, v in times.items()})
        result["gather kernel" + suffix] = statistics.median(gather[3:]) * 1e3
        result["update kernel" + suffix] = statistics.median(update[3:]) * 1e3
    result.update({f"share on huge pages, {c}": v for c, v in huge.items()})
    # The update kernel alone, fused Adam with each moment storage (same batch, fresh state).
    weight = module.weight.detach()
    pooling = 1 if bag else 0
    bounds = offsets if bag else torch.empty(0, dtype=torch.long)
    for state_dtype in ("float32", "bfloat16", "int8_rowwise"):
        adam = embtable.optim.FusedOptimizer([weight], "adam", lr=LR, state_dtype=state_dtype)
        with _placement.setting(placement):
            state = adam.rule.init_state(weight, adam.param_groups[0])  # (as the first step makes it)
        _placement.apply(placement)
        tensors = adam.rule.state_tensors(state, adam.param_groups[0])
        hparams = adam.rule.hparams(adam.param_groups[0], 1)
        kernel = []
        for _ in range(reps + 2):
            start = time.thread_time()
            ops.fused_update_rows(weight, tensors, ids, bounds, grad_out, None, pooling, -1, False,
                                  adam.rule.code, hparams)
            kernel.append(time.thread_time() - start)
        result[f"Adam update kernel, {state_dtype} state"] = statistics.median(kernel[2:]) * 1e3
        del adam, state, tensors
    return result


# --------------------------------------------------------------------------- perf
def perf_profile(args: argparse.Namespace, sizes_of: dict) -> None:
    """``--perf CONFIG:WORKLOAD``: the step of one configuration in this process (one thread,
    ``--placement``), 5 warm-up steps, then ``perf record -e cpu-clock -g`` attached over
    ``--perf-steps`` steps; the process ends with ``os._exit``, so that the interpreter's
    exit-time garbage collection is not sampled.  Read the shares with ``perf report -i
    PERF_OUT --no-children --sort dso,sym``."""
    import signal

    config, workload = args.perf.split(":")
    placement = _placement.chosen(args)[0]
    os.environ["EMBTABLE_HUGEPAGES"] = "1" if placement == "huge" else "0"
    torch.set_num_threads(1)
    ids, offsets, grad_out = make_batch(workload, sizes_of[workload])
    with _placement.setting(placement):
        step, owners = build_step(config, workload, sizes_of[workload], ids, offsets, grad_out)
    for _ in range(5):
        step()
    huge = placed(placement, {config: big_tensors(owners)})[config]
    perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-g", "-p", str(os.getpid()),
                             "-o", args.perf_out])
    time.sleep(1.0)  # perf attached
    start = time.thread_time()
    for _ in range(args.perf_steps):
        step()
    ms = (time.thread_time() - start) / args.perf_steps * 1e3
    perf.send_signal(signal.SIGINT)
    perf.wait()
    print(f"--perf {args.perf}: {args.perf_steps} steps, {placement} pages ({100 * huge:.0f} % on huge "
          f"pages), {ms:.2f} ms/step thread CPU under perf, {load()}; profile in {args.perf_out}",
          flush=True)
    os._exit(0)


# --------------------------------------------------------------------------- correctness
def check_correctness() -> None:
    import embtable

    V, D, B, L = 500, 8, 16, 5
    ids, offsets, grad_out = make_batch("bag", {"V": V, "D": D, "B": B, "L": L}, seed=1)
    torch.manual_seed(0)
    for fused_name, ref_opt, options in (
        ("sgd", lambda p: torch.optim.SGD(p, lr=0.1), {"lr": 0.1}),
        ("adam", lambda p: torch.optim.SparseAdam(p, lr=0.1), {"lr": 0.1, "bias_correction": "table"}),
    ):
        ref = torch.nn.EmbeddingBag(V, D, mode="sum", sparse=True)
        table = embtable.EmbeddingBag(V, D, mode="sum")
        with torch.no_grad():
            table.weight.copy_(ref.weight)
        opt = ref_opt(list(ref.parameters()))
        fused = embtable.optim.fuse(table, fused_name, **options)
        for _ in range(3):
            ref(ids, offsets[:-1]).backward(grad_out)
            opt.step()
            opt.zero_grad()
            table(ids, offsets[:-1]).backward(grad_out)
            fused.step()
        torch.testing.assert_close(table.weight, ref.weight, rtol=1e-5, atol=1e-6)
    try:
        step, _ = build_step("fbgemm_rowwise", "bag", {"V": V, "D": D, "B": B, "L": L}, ids, offsets, grad_out)
    except ImportError:
        print("correctness: fbgemm-gpu-cpu not installed, FBGEMM columns skipped")
        return
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        EmbeddingLocation,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    tbe = SplitTableBatchedEmbeddingBagsCodegen(
        embedding_specs=[(V, D, EmbeddingLocation.HOST, ComputeDevice.CPU)],
        optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD, learning_rate=0.1, eps=1e-8,
        pooling_mode=PoolingMode.SUM,
    )
    table = embtable.EmbeddingBag(V, D, mode="sum")
    with torch.no_grad():
        table.weight.copy_(tbe.split_embedding_weights()[0])
    fused = embtable.optim.fuse(table, "rowwise_adagrad", lr=0.1, eps=1e-8)
    for _ in range(3):
        tbe(ids, offsets).backward(grad_out)
        table(ids, offsets[:-1]).backward(grad_out)
        fused.step()
    torch.testing.assert_close(table.weight, tbe.split_embedding_weights()[0], rtol=1e-5, atol=1e-6)
    print("correctness: fused SGD = torch sparse SGD, fused Adam(table) = SparseAdam, "
          "fused RowWiseAdagrad = FBGEMM EXACT_ROWWISE_ADAGRAD (3 steps each): ok")


def copy_bandwidth(threads: int) -> float:
    torch.set_num_threads(threads)
    src = torch.randn(64 * 1024 * 1024 // 4 * 4)  # 256 MiB
    dst = torch.empty_like(src)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * src.numel() * 4 / min(times)


def floor_bytes(config: str, workload: str, sizes: dict[str, int], unique: int) -> int:
    D, B, L = sizes["D"], sizes["B"], sizes["L"]
    per_elem, per_row = STATE_BYTES[family(config)]
    rows_out = B if workload == "bag" else B * L
    table = unique * D * 4 * 2  # read in forward (cached for backward), written once
    state = unique * (D * per_elem + per_row) * 2
    return table + state + 2 * rows_out * D * 4 + B * L * 8


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} CPUs"


def run_worker(args: argparse.Namespace, flag: list[str], threads: int, placement: str) -> dict | str:
    """One subprocess; its JSON result, or the error text."""
    cmd = [sys.executable, __file__, *flag, "--reps", str(args.reps), "--threads", str(threads),
           "--placement", placement] + (["--quick"] if args.quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_phases(args: argparse.Namespace, threads: int, placement: str) -> None:
    for workload in args.workloads.split(","):
        pair = ["--phases-pair", args.phases_pair] if args.phases_pair else []
        got = run_worker(args, ["--phases-worker", workload, *pair], threads, placement)
        if isinstance(got, str):
            print(f"{workload}: failed\n{got}")
            continue
        mine, peer = args.phases_pair.split(":") if args.phases_pair else PHASE_PEERS[workload]
        clock = "CPU-time" if threads == 1 else "wall-time"
        print(f"\n## {workload}: {dict(CONFIGS)[mine]}, steps alternating with {dict(CONFIGS)[peer]} "
              f"({args.reps} steps, {clock} medians, ms; placement {placement}, threads {threads}; {load()})")
        for key, value in got.items():
            print(f"| {key:38s} | {value:8.3f} |")


def print_steps(args: argparse.Namespace, threads: int, placement: str, bandwidth: float, have_fbgemm: bool) -> None:
    sizes_of = QUICK if args.quick else WORKLOADS
    clock = "cpu" if threads == 1 else "wall"
    for workload in args.workloads.split(","):
        sizes = sizes_of[workload]
        ids, _, _ = make_batch(workload, sizes)
        unique = int(torch.unique(ids).numel())
        V, D, B, L = sizes["V"], sizes["D"], sizes["B"], sizes["L"]
        print(f"\n## {workload}: V={V:,} D={D} batch {B}x{L} ({B * L:,} ids, {unique:,} distinct rows); "
              f"threads={threads}; placement {placement} ({_placement.thp_mode()} THP mode, see "
              f"benchmarks/_placement.py); copy bandwidth {bandwidth / 1e9:.1f} GB/s; {load()}")
        selected = [
            (config, label) for config, label in CONFIGS
            if config in args.configs.split(",")
            and not (config.startswith("fbgemm") and (not have_fbgemm or workload != "bag"))
        ]
        samples: dict[str, dict] = {}
        for round_ in range(args.rounds):  # alternate the order: load drifts during a run
            for config, label in selected if round_ % 2 == 0 else selected[::-1]:
                got = run_worker(args, ["--worker", config, workload], threads, placement)
                if isinstance(got, str):
                    print(f"{label}: failed\n{got}")
                    continue
                entry = samples.setdefault(config, {"cpu": [], "wall": [], "peak": 0, "huge": []})
                entry["cpu"] += got["cpu"]
                entry["wall"] += got["wall"]
                entry["peak"] = max(entry["peak"], got["peak"])
                entry["huge"].append(got["huge"])
        results = {
            config: {
                "ms": statistics.median(e[clock]) * 1e3,
                "wall_ms": statistics.median(e["wall"]) * 1e3,
                "peak": e["peak"],
                "huge": min(e["huge"]),
            }
            for config, e in samples.items()
        }
        table_bytes = V * D * 4
        sparse_adam = results.get("torch_sparse_adam", {}).get("ms")
        print(f"| {'config':34s} | {'ms/step':>8s} | {'wall ms':>8s} | {'SparseAdam/this':>15s} | {'this/FBGEMM':>11s} "
              f"| {'peak MB':>8s} | {'peak/(table+state)':>18s} | {'floor ms':>8s} | {'x floor':>7s} | {'huge':>5s} |")
        print("|" + "|".join("-" * (w + 2) for w in (34, 8, 8, 15, 11, 8, 18, 8, 7, 5)) + "|")
        for config, label in CONFIGS:
            if config not in results:
                continue
            r = results[config]
            fam = family(config)
            per_elem, per_row = STATE_BYTES[fam]
            state_bytes = V * (D * per_elem + per_row)
            needed = table_bytes + state_bytes
            floor_ms = floor_bytes(config, workload, sizes, unique) / bandwidth * 1e3
            peer = {"sgd": "fbgemm_sgd", "adagrad": "fbgemm_adagrad", "rowwise": "fbgemm_rowwise"}.get(fam)
            vs_fbgemm = (
                f"{r['ms'] / results[peer]['ms']:.2f}" if config.startswith("et_") and peer in results else "-"
            )
            vs_sparse_adam = f"{sparse_adam / r['ms']:.1f}x" if sparse_adam else "-"
            print(f"| {label:34s} | {r['ms']:8.2f} | {r['wall_ms']:8.2f} | {vs_sparse_adam:>15s} | {vs_fbgemm:>11s} "
                  f"| {r['peak'] / 2**20:8.0f} | {r['peak'] / needed:18.2f} | {floor_ms:8.2f} "
                  f"| {r['ms'] / floor_ms:7.1f} | {100 * r['huge']:4.0f}% |")
        labels = dict(CONFIGS)
        pairs = [p for p in PAIRS[workload] if have_fbgemm or not p[1].startswith("fbgemm")]
        pairs = [p for p in pairs if p[0] in args.configs.split(",") or p[1] in args.configs.split(",")]
        if pairs:
            print(f"\nPaired (one process, steps alternating, {args.reps} each; {clock}-time medians; "
                  f"huge = share of table + state on huge pages):")
            print(f"| {'embtable':30s} | {'ms':>6s} | {'peer':32s} | {'ms':>6s} | {'embtable/peer':>13s} "
                  f"| {'huge':>9s} |")
            print("|" + "|".join("-" * (w + 2) for w in (30, 6, 32, 6, 13, 9)) + "|")
        for first, second in pairs:
            got = run_worker(args, ["--paired-worker", first, second, workload], threads, placement)
            if isinstance(got, str):
                print(f"{first} vs {second}: failed\n{got}")
                continue
            ms, huge = got["ms"], got["huge"]
            print(f"| {labels[first]:30s} | {ms[first]:6.2f} | {labels[second]:32s} | {ms[second]:6.2f} "
                  f"| {ms[first] / ms[second]:13.2f} | {100 * huge[first]:3.0f}/{100 * huge[second]:3.0f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10x smaller tables, fewer reps")
    parser.add_argument("--reps", type=int, default=7, help="timed steps per configuration")
    parser.add_argument("--threads", default="1",
                        help="intra-op thread counts, e.g. 1,2 (1: CPU time = the step's work, see above)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every configuration")
    parser.add_argument("--workloads", default="bag,seq")
    parser.add_argument("--configs", default=",".join(c for c, _ in CONFIGS))
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "WORKLOAD"), help=argparse.SUPPRESS)
    parser.add_argument("--paired-worker", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--phases", action="store_true",
                        help="only time the parts of a step (forward, kernels, backward, step()) "
                             "next to its peer, and the Adam update kernel per state dtype")
    parser.add_argument("--phases-worker", help=argparse.SUPPRESS)
    parser.add_argument("--phases-pair", default="", metavar="MINE:PEER",
                        help="--phases with these two configurations, e.g. et_adam:torch_sparse_adam")
    parser.add_argument("--perf", default="", metavar="CONFIG:WORKLOAD",
                        help="only profile that step with perf record (see perf_profile), e.g. et_sgd:bag")
    parser.add_argument("--perf-steps", type=int, default=1500)
    parser.add_argument("--perf-out", default="perf.data")
    _placement.add_arguments(parser)
    args = parser.parse_args()
    sizes_of = QUICK if args.quick else WORKLOADS
    thread_counts = [int(t) for t in args.threads.split(",")]
    if args.worker or args.paired_worker or args.phases_worker:
        warnings.simplefilter("ignore")
        threads, placement = thread_counts[0], args.placement
        # one placement per worker process: embtable's lazily made state follows it too
        os.environ["EMBTABLE_HUGEPAGES"] = "1" if placement == "huge" else "0"
        if args.paired_worker:
            first, second, workload = args.paired_worker
            got = paired_worker(first, second, workload, sizes_of[workload], args.reps, threads, placement)
        elif args.phases_worker:
            got = phases_worker(args.phases_worker, sizes_of[args.phases_worker], args.reps, threads, placement,
                                args.phases_pair)
        else:
            config, workload = args.worker
            got = worker(config, workload, sizes_of[workload], args.reps, threads, placement)
        print(json.dumps(got))
        return
    if args.perf:
        perf_profile(args, sizes_of)
    if args.thp_system:
        parser.error("--thp-system is not supported here: every configuration runs in its own process "
                     "and is placed with madvise (see benchmarks/_placement.py)")
    if args.phases:
        for placement in _placement.chosen(args):
            for threads in thread_counts:
                print_phases(args, threads, placement)
        return
    check_correctness()
    have_fbgemm = subprocess.run(
        [sys.executable, "-c", "import fbgemm_gpu"], capture_output=True
    ).returncode == 0
    for placement in _placement.chosen(args):
        for threads in thread_counts:
            bandwidth = copy_bandwidth(threads)
            print_steps(args, threads, placement, bandwidth, have_fbgemm)
    torch.set_num_threads(thread_counts[0])


if __name__ == "__main__":
    main()
