"""Benchmark: embtable.Embedding vs torch.nn.Embedding, forward and backward (dense and sparse).

Checks that both produce the same outputs and gradients, then times each phase and prints a
table of median milliseconds and the ratio embtable / torch (<= 1.1 is the target).  Phases:
the forward without gradients (a bare gather), the forward with gradients on (recording the
autograd node), and the dense and sparse backward (``out.backward(grad)`` alone). The two
contenders run in alternation (torch, embtable, torch, ...) so that both see the same load on a
shared machine; the ratio column is the median of the per-round ratios.

Times are the CPU time of the timing thread (``time.thread_time``) at one thread (the
default, ``--threads 1``: every kernel runs on that thread and time spent preempted on a
loaded machine is left out), wall time with more threads.  Memory placement is equal for both
contenders (``benchmarks/_placement.py``): ``--placement 4k``, ``huge`` or ``both`` (default);
the share of each contender's table on huge pages is printed.

embtable's lookup with gradients runs through ``embtable::embedding_lookup``, whose autograd
formula is C++ (issue 11, item 4); ``--python-function`` makes it take the Python
``torch.autograd.Function`` instead (the path before item 4, still used under ``torch.func``),
for a before / after comparison on the same machine.

Usage:
    python benchmarks/core.py            # V = 1,000,000 and 10,000, D = 64 and 128, 256 x 128 ids
    python benchmarks/core.py --quick    # smaller sizes, for a smoke run
    python benchmarks/core.py --python-function   # embtable through its Python autograd.Function
    python benchmarks/core.py --quick --ids 1x2 --dims 16 --repeats 201   # per-call costs
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

import _placement  # benchmarks/ is on sys.path when run as a script
import embtable
from embtable.testing import assert_same_grad, zipf_ids

Timed = Callable[[], float | None]


def now() -> float:
    """The timing thread's CPU time at one thread, wall time with more."""
    return time.thread_time() if torch.get_num_threads() == 1 else time.perf_counter()


def _seconds(fn: Timed) -> float:
    start = now()
    measured = fn()
    return measured if measured is not None else now() - start


def paired_ms(theirs: Timed, ours: Timed, repeats: int, warmup: int = 2) -> tuple[float, float, float]:
    """Median ms of each contender, run in alternation, and the median per-round ratio ours/theirs.

    A contender may return its own measured seconds (to leave set-up out of the timing).
    """
    theirs_ms, ours_ms = [], []
    for i in range(warmup + repeats):
        t, o = _seconds(theirs) * 1e3, _seconds(ours) * 1e3
        if i >= warmup:
            theirs_ms.append(t)
            ours_ms.append(o)
    ratio = statistics.median(o / t for o, t in zip(ours_ms, theirs_ms))
    return statistics.median(theirs_ms), statistics.median(ours_ms), ratio


def make_tables(num_rows: int, dim: int, sparse: bool) -> tuple[torch.nn.Module, torch.nn.Module]:
    weight = torch.randn(num_rows, dim)
    ours = embtable.Embedding.from_pretrained(weight.clone(), freeze=False, sparse=sparse)
    theirs = torch.nn.Embedding.from_pretrained(weight.clone(), freeze=False, sparse=sparse)
    return ours, theirs


def check(ours: torch.nn.Module, theirs: torch.nn.Module, ids: torch.Tensor, grad: torch.Tensor) -> None:
    out_ours, out_theirs = ours(ids), theirs(ids)
    assert torch.equal(out_ours, out_theirs), "forward differs from torch"
    out_ours.backward(grad)
    out_theirs.backward(grad)
    assert_same_grad(ours.weight.grad, theirs.weight.grad, rtol=1e-5, atol=1e-5)
    ours.weight.grad = theirs.weight.grad = None


def forward(table: torch.nn.Module, ids: torch.Tensor) -> Timed:
    def run() -> None:
        with torch.no_grad():
            table(ids)

    return run


def forward_grad(table: torch.nn.Module, ids: torch.Tensor) -> Timed:
    """The forward with gradients on: the gather and the recording of the autograd node."""

    def run() -> float:
        start = now()
        out = table(ids)
        elapsed = now() - start
        del out  # the graph is freed outside the timing
        return elapsed

    return run


def backward(table: torch.nn.Module, ids: torch.Tensor, grad: torch.Tensor) -> Timed:
    def run() -> float:
        table.weight.grad = None
        out = table(ids)
        start = now()
        out.backward(grad)
        return now() - start

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--dims", default=None, help="comma-separated D (default 64,128; quick: 32)")
    parser.add_argument("--ids", default=None,
                        help="ids shape as BxL (default 256x128; quick: 64x32); 1x2 shows the per-call costs")
    parser.add_argument("--python-function", action="store_true",
                        help="embtable's lookup through its Python autograd.Function (before item 4)")
    _placement.add_arguments(parser)
    args = parser.parse_args()
    if args.python_function:  # the lookup falls back to the Python Function where the op is refused
        embtable.functional.compiled_embedding = lambda *_: None
    torch.set_num_threads(args.threads)
    sizes = [(100_000, 10_000)] if args.quick else [(1_000_000, 10_000)]
    dims = [int(d) for d in args.dims.split(",")] if args.dims else ([32] if args.quick else [64, 128])
    shape = (64, 32) if args.quick else (256, 128)
    if args.ids:
        shape = tuple(int(n) for n in args.ids.lower().split("x"))
    one, five, fifteen = os.getloadavg()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, ids {shape[0]} x {shape[1]} "
          f"(floor(V * u**3)), median of {args.repeats}, "
          f"{'thread CPU' if args.threads == 1 else 'wall'} time; load average {one:.1f} / {five:.1f} / "
          f"{fifteen:.1f} on {os.cpu_count()} CPUs; embtable's autograd: "
          f"{'Python Function' if args.python_function else 'C++ (embtable::embedding_lookup)'}")
    for placement in _placement.chosen(args):
        gen = torch.Generator().manual_seed(0)
        print(f"\n## placement {placement}")
        print(f"{'V':>9} {'D':>4} {'phase':<16} {'torch ms':>9} {'embtable ms':>12} {'ratio':>6} {'huge t/e':>9}")
        print("-" * 71)
        for dim in dims:
            for num_rows in sizes[0]:
                ids = zipf_ids(num_rows, shape, generator=gen)
                grad = torch.randn(*shape, dim, generator=gen)
                rows = []
                with _placement.setting(placement, args.thp_system):
                    dense_ours, dense_theirs = make_tables(num_rows, dim, sparse=False)
                    sparse_ours, sparse_theirs = make_tables(num_rows, dim, sparse=True)
                check(dense_ours, dense_theirs, ids, grad)
                check(sparse_ours, sparse_theirs, ids, grad)
                _placement.apply(placement)
                tables = {"t": [dense_theirs.weight, sparse_theirs.weight],
                          "e": [dense_ours.weight, sparse_ours.weight]}
                shares = []
                for tensors in tables.values():
                    size = sum(t.nbytes for t in tensors)
                    huge = sum(_placement.huge_page_fraction(t) * t.nbytes for t in tensors)
                    shares.append(f"{100 * huge / size:.0f}")
                rows.append(("forward", *paired_ms(forward(dense_theirs, ids), forward(dense_ours, ids),
                                                   args.repeats)))
                rows.append(("forward, grad on", *paired_ms(forward_grad(dense_theirs, ids),
                                                            forward_grad(dense_ours, ids), args.repeats)))
                rows.append(("backward dense", *paired_ms(backward(dense_theirs, ids, grad),
                                                          backward(dense_ours, ids, grad), args.repeats)))
                rows.append(("backward sparse", *paired_ms(backward(sparse_theirs, ids, grad),
                                                           backward(sparse_ours, ids, grad), args.repeats)))
                for phase, theirs_ms, ours_ms, ratio in rows:
                    print(f"{num_rows:>9,} {dim:>4} {phase:<16} {theirs_ms:>9.3f} {ours_ms:>12.3f} {ratio:>6.2f} "
                          f"{'/'.join(shares) + '%':>9}")
                del dense_ours, dense_theirs, sparse_ours, sparse_theirs
    one, five, fifteen = os.getloadavg()
    print(f"\nload average at end {one:.1f} / {five:.1f} / {fifteen:.1f}")


if __name__ == "__main__":
    main()
