"""Benchmark: does the split of ``embtable/jagged.py`` cost time?  This checkout against another.

``KeyedJagged``'s constructor (``validate=True`` and ``False``), ``permute``, ``split``,
``concat`` and ``from_dict`` of F = 8 features x B = 256 examples, timed in this checkout and
in a source tree from before the split (``--before``, e.g. ``git archive 2d40164~1 src | tar
-x -C /tmp/before``, with the compiled ``_C`` copied beside it).  Each contender runs in its own
child process (``PYTHONPATH`` = its ``src``), one thread, thread CPU time, the children
alternated ``--repeat`` times; medians of the per-call times.  Every child first prints a
digest of its results, which must be equal for both contenders (the correctness check).

Usage::

    python benchmarks/keyed_jagged_split.py --before /tmp/before/src [--repeat 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(calls: int) -> None:
    """Print ``{"digest": ..., "us": {workload: microseconds per call}}`` for this tree."""
    import torch

    from embtable import KeyedJagged

    torch.set_num_threads(1)
    torch.manual_seed(0)
    keys = [f"f{i}" for i in range(8)]
    lengths = torch.randint(0, 5, (8 * 256,))
    values = torch.randint(0, 1000, (int(lengths.sum()),))
    batch = KeyedJagged(keys, values, lengths)
    nested = {key: [[int(v)] * 2 for v in range(16)] for key in keys}
    workloads = {
        "KeyedJagged(...), validate=True": lambda: KeyedJagged(keys, values, lengths),
        "KeyedJagged(...), validate=False": lambda: KeyedJagged(keys, values, lengths, validate=False),
        "permute([7, 0, 3, 3])": lambda: batch.permute([7, 0, 3, 3]),
        "split([3, 5])": lambda: batch.split([3, 5]),
        "concat(split([3, 5]))": lambda: KeyedJagged.concat(batch.split([3, 5])),
        "from_dict (8 x 16 x 2 ids)": lambda: KeyedJagged.from_dict(nested),
    }
    digest = hashlib.sha256()
    for fn in workloads.values():
        out = fn()
        for part in out if isinstance(out, list) else [out]:
            digest.update(json.dumps([part.keys(), part.stride(), part.values().tolist(),
                                      part.lengths().tolist()]).encode())  # fmt: skip
    us = {}
    for name, fn in workloads.items():
        start = time.thread_time()
        for _ in range(calls):
            fn()
        us[name] = (time.thread_time() - start) / calls * 1e6
    print(json.dumps({"digest": digest.hexdigest(), "us": us}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the src folder of the tree to compare with")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.calls)
        return
    trees = {"before the split": Path(args.before).resolve(), "this checkout": HERE.parent / "src"}
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(args.repeat):
        for name, src in trees.items():
            env = {**os.environ, "PYTHONPATH": str(src)}
            text = subprocess.run([sys.executable, __file__, "--child", "--before", args.before,
                                   "--calls", str(args.calls)], env=env, check=True,
                                  capture_output=True, text=True).stdout  # fmt: skip
            runs[name].append(json.loads(text.strip().splitlines()[-1]))
    digests = {run["digest"] for results in runs.values() for run in results}
    if len(digests) != 1:
        raise SystemExit(f"the two trees give different results: {digests}")
    names = list(next(iter(runs.values()))[0]["us"])
    before, after = trees
    print(f"| workload (1 thread, medians of {args.repeat} children) | {before} | {after} | ratio |")
    print("|---|---|---|---|")
    for workload in names:
        a = statistics.median(run["us"][workload] for run in runs[before])
        b = statistics.median(run["us"][workload] for run in runs[after])
        print(f"| {workload} | {a:.1f} us | {b:.1f} us | {b / a:.2f} |")


if __name__ == "__main__":
    main()
