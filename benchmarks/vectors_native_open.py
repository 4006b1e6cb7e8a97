"""Benchmark: only the "open native (mmap)" row of ``benchmarks/vectors.py``.

Same data (``rows x dim`` N(0, 0.3) float32, tokens ``tok0..``), same child process code
(imported from ``benchmarks/vectors.py``: each open in a fresh subprocess after the folder is
read once into the page cache, wall time and ``VmHWM``), same gensim contender
(``KeyedVectors.load(mmap="r")``), without the slow text / binary loads and queries.

Usage::

    python benchmarks/vectors_native_open.py --repeat 5 --tmp /tmp/native-open
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import torch

_spec = importlib.util.spec_from_file_location("bench_vectors", Path(__file__).with_name("vectors.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--dim", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=5, help="subprocess opens per contender")
    parser.add_argument("--tmp", help="folder for the generated files (reused when present)")
    args = parser.parse_args()
    from gensim.models import KeyedVectors

    from embtable.vectors import Vectors

    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="embtable-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    native, gensim_native = tmp / "native", tmp / "gensim.kv"
    rng = np.random.default_rng(0)
    matrix = (rng.standard_normal((args.rows, args.dim)) * 0.3).astype(np.float32)
    tokens = [f"tok{i}" for i in range(args.rows)]
    if not (native / "vocab.json").is_file() or not gensim_native.is_file():
        source = Vectors(tokens, torch.from_numpy(matrix))
        source.save(native)
        source.to_gensim().save(str(gensim_native))
    # correctness first: both open to the source table and tokens
    ours = Vectors.load(native)
    assert ours.tokens == tokens and np.array_equal(ours.weight.numpy(), matrix)
    kv = KeyedVectors.load(str(gensim_native), mmap="r")
    assert kv.index_to_key == tokens and np.array_equal(kv.vectors, matrix)
    del ours, kv
    runs = {"embtable": [], "gensim": []}
    for _ in range(args.repeat):  # alternating contenders
        runs["gensim"].append(bench.median_child("gensim", "native", gensim_native, 1))
        runs["embtable"].append(bench.median_child("embtable", "native", native, 1))
    med = {k: float(np.median([r["s"] for r in v])) for k, v in runs.items()}
    hwm = {k: float(np.median([r["peak_mb"] for r in v])) for k, v in runs.items()}
    print(f"# {args.rows} x {args.dim}, {args.repeat} opens each (median), files in {tmp}")
    print("| workload | embtable | gensim 4.4.0 | speed-up | peak RSS embtable / gensim (MB) |")
    print("|---|---:|---:|---:|---:|")
    print(f"| open native (mmap) | {med['embtable'] * 1e3:.1f} ms | {med['gensim'] * 1e3:.1f} ms | "
          f"{med['gensim'] / med['embtable']:.2f}x | {hwm['embtable']:.0f} / {hwm['gensim']:.0f} |")


if __name__ == "__main__":
    main()
