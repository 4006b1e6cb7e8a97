"""Benchmark: per-example gradients with torch.func.vmap(grad(...)) vs a Python loop.

Per-example gradients (as differentially private training clips them) of a loss through an
``Embedding`` / ``EmbeddingBag``, four ways: embtable with ``vmap(grad)``, embtable with a
Python loop of single-example ``grad`` calls, and the same two with torch's modules on the
same weights.  First every contender's result is checked against the embtable loop (the
definition of a per-example gradient); then each is timed at one thread with thread CPU time
(``time.thread_time``), the contenders in alternation (so all see the same load on a shared
machine), repeated; the table gives median milliseconds and ratios to the embtable loop.
Same data, same thread count, ordinary (not huge-page) memory for every contender.

Usage:
    python benchmarks/per_sample_grad.py            # B=64 examples, V=2000 rows, D=32
    python benchmarks/per_sample_grad.py --quick    # smaller, a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.func import functional_call, grad, vmap

import embtable


def make_modules(kind: str, rows: int, dim: int) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    kwargs = {"mode": "sum"} if kind == "EmbeddingBag" else {}
    ours = getattr(embtable, kind)(rows, dim, **kwargs)
    theirs = getattr(torch.nn, kind)(rows, dim, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    return {"embtable": ours, "torch": theirs}


def contenders(modules: dict[str, torch.nn.Module], ids: torch.Tensor) -> dict[str, Callable[[], torch.Tensor]]:
    runs = {}
    for name, module in modules.items():
        params = {k: v.detach() for k, v in module.named_parameters()}

        def loss(p, x, m=module):
            return functional_call(m, p, (x,)).pow(2).sum()

        per_example, single = vmap(grad(loss), in_dims=(None, 0)), grad(loss)
        runs[f"{name} vmap(grad)"] = lambda f=per_example, p=params: f(p, ids)["weight"]
        runs[f"{name} loop"] = lambda f=single, p=params: torch.stack([f(p, x)["weight"] for x in ids])
    return runs


def measure(runs: dict[str, Callable[[], torch.Tensor]], repeats: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(repeats + 1):  # one warm-up round
        for name, run in runs.items():
            start = time.thread_time()
            run()
            if i:
                times[name].append((time.thread_time() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    batch, rows, dim, length = (8, 200, 8, 8) if args.quick else (64, 2000, 32, 32)
    print(f"B={batch} examples, V={rows} rows, D={dim}; 1 thread, thread CPU time, median of {args.repeats}")
    print(f"{'table':<13} {'contender':<22} {'median ms':>10} {'vs embtable loop':>17}")
    for kind in ("Embedding", "EmbeddingBag"):
        gen = torch.Generator().manual_seed(1)
        shape = (batch, length) if kind == "Embedding" else (batch, 4, length // 4)  # bags: 4 per example
        ids = torch.randint(0, rows, shape, generator=gen)
        runs = contenders(make_modules(kind, rows, dim), ids)
        reference = runs["embtable loop"]()
        for name, run in runs.items():  # correctness first
            torch.testing.assert_close(run(), reference, msg=lambda m, n=f"{kind} {name}": f"{n}: {m}")
        times = measure(runs, args.repeats)
        base = statistics.median(times["embtable loop"])
        for name, values in times.items():
            median = statistics.median(values)
            print(f"{kind:<13} {name:<22} {median:>10.2f} {median / base:>16.3f}x")


if __name__ == "__main__":
    main()
