"""Benchmark: what the issue-13 checks cost, and the quadratic ``errors="skip"`` that is gone.

Workloads (each result is checked before anything is timed; one thread, thread CPU time,
contenders alternated, medians of ``--repeat`` runs; same data and memory for each):

1. ``errors="skip"`` over a word2vec file of N good lines then N duplicate lines, against the
   same N good lines without duplicates (the skip's cost per duplicate line; gensim reads the
   clean file in about the same time);
2. ``KeyedJagged`` construction with ``validate=True`` (the wrap-proof lengths check) against
   ``validate=False`` (no O(F * B) check), F = 8 features, B = 4,096 examples;
3. one fused Adam backward (512 ids of a 100,000 x 64 table): the whole step, and the
   per-step group check (``FusedOptimizer._check_group``) alone;
4. ``Vectors.save`` (atomic: written beside, fsynced, renamed; wall time, since fsync waits
   on the disk) of a 100,000 x 100 table against a plain ``np.save`` of the same array.

Usage::

    python benchmarks/reliability.py [--repeat 7] [--duplicates 15000]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import embtable
from embtable import KeyedJagged
from embtable.vectors import Vectors


def _thread_seconds(fn) -> float:
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def _wall_seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _alternate(contenders: dict, repeat: int, clock=_thread_seconds) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeat):
        for name, fn in contenders.items():
            times[name].append(clock(fn))
    return {name: statistics.median(values) for name, values in times.items()}


def skip_duplicates(folder: Path, n: int, repeat: int) -> dict[str, float]:
    rows = [f"w{i} {i % 7} 1 2\n" for i in range(n)]
    dup = folder / "dup.txt"
    dup.write_text(f"{2 * n} 3\n" + "".join(rows) + "".join(reversed(rows)))
    clean = folder / "clean.txt"
    clean.write_text(f"{n} 3\n" + "".join(rows))
    logging.disable(logging.WARNING)  # (the skipped lines are logged one by one otherwise)
    a = Vectors.load_word2vec_format(dup, errors="skip", progress=False)
    b = Vectors.load_word2vec_format(clean, progress=False)
    assert a.tokens == b.tokens and torch.equal(a.weight, b.weight)
    return _alternate({
        f"skip, {n:,} good + {n:,} duplicate lines": lambda: Vectors.load_word2vec_format(dup, errors="skip", progress=False),
        f"strict, the {n:,} good lines only": lambda: Vectors.load_word2vec_format(clean, progress=False),
    }, repeat)  # fmt: skip


def keyed_jagged(repeat: int) -> dict[str, float]:
    torch.manual_seed(0)
    keys = [f"f{i}" for i in range(8)]
    lengths = torch.randint(0, 6, (8 * 4096,))
    values = torch.randint(0, 1000, (int(lengths.sum()),))
    checked = KeyedJagged(keys, values, lengths)
    assert checked.offsets()[-1] == values.numel()
    loops = 200

    def build(validate: bool):
        for _ in range(loops):
            KeyedJagged(keys, values, lengths, validate=validate)

    result = _alternate({"validate=True": lambda: build(True), "validate=False": lambda: build(False)}, repeat)
    return {f"KeyedJagged(8 x 4,096), {name}": t / loops for name, t in result.items()}


def fused_step(repeat: int) -> dict[str, float]:
    torch.manual_seed(0)
    table = embtable.Embedding(100_000, 64)
    opt = embtable.optim.fuse(table, "adam", lr=1e-3)
    ids = torch.randint(0, 100_000, (512,))
    (table(ids) ** 2).sum().backward()
    assert opt.state[table.weight]["table_step"] == 1
    group, loops = opt.param_groups[0], 50

    def steps():
        for _ in range(loops):
            (table(ids) ** 2).sum().backward()

    def checks():
        for _ in range(loops * 100):
            opt._check_group(table.weight, group)

    result = _alternate({"step": steps, "check": checks}, repeat)
    return {
        "fused Adam step (512 ids, 100,000 x 64), forward + backward": result["step"] / loops,
        "its group check (_check_group) alone": result["check"] / (loops * 100),
    }


def save(folder: Path, repeat: int) -> dict[str, float]:
    torch.manual_seed(0)
    n = 100_000
    vectors = Vectors([f"w{i}" for i in range(n)], torch.randn(n, 100))
    vectors.save(folder / "native")
    assert torch.equal(Vectors.load(folder / "native").weight, vectors.weight)
    array = vectors.weight.numpy()
    return _alternate({
        "Vectors.save, 100,000 x 100 (atomic, fsynced)": lambda: vectors.save(folder / "native"),
        "np.save of the same array (no fsync)": lambda: np.save(folder / "plain.npy", array),
    }, repeat, clock=_wall_seconds)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--duplicates", type=int, default=15_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = {**skip_duplicates(folder, args.duplicates, args.repeat), **keyed_jagged(args.repeat),
                **fused_step(args.repeat), **save(folder, args.repeat)}  # fmt: skip
    print(f"| workload (1 thread, medians of {args.repeat}) | time |")
    print("|---|---|")
    for name, seconds in rows.items():
        shown = f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} us"
        print(f"| {name} | {shown} |")


if __name__ == "__main__":
    main()
