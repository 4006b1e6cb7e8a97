"""Benchmark: what the atomic ``embtable train`` folder costs against the previous write order.

Contenders (same model, item table and summary; each its own folder on the same disk, saved
over a finished save, as ``embtable train --out`` does; one thread; wall time, since fsync
waits on the disk; alternated, medians of ``--repeat`` runs):

1. the previous order: ``summary.json`` and ``items/`` written in place (each file atomic,
   the folder not), then ``save_checkpoint`` (the baseline);
2. ``save_model_folder`` (``embtable/cli/_model_folder.py``): ``summary.json`` and ``items/``
   staged under unused names, digests, the checkpoint, renames, the manifest rewritten.

Both results are checked first: the folder reloads with the same weights, item vectors and
summary.  The model has MovieLens-100K's shape (943 users, 1,682 items, side features).

Usage::

    python benchmarks/train_folder.py [--repeat 9] [--dim 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from embtable._atomic import atomic_write_bytes
from embtable.cli._model_folder import open_model_folder, save_model_folder
from embtable.models import MatrixFactorization
from embtable.models.checkpoint import load_checkpoint, save_checkpoint
from embtable.vectors import Vectors


def _previous(out: Path, model, summary: dict, vectors, genres: dict) -> None:
    """The write order before the atomic folder (cli/train.py up to commit 6fdecb1)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    vectors.save(out / "items")
    atomic_write_bytes(out / "items" / "genres.json", (json.dumps(genres, indent=2) + "\n").encode())
    save_checkpoint(out, model, summary)


def _check(out: Path, model, summary: dict, vectors) -> None:
    again, meta = load_checkpoint(out)
    items = open_model_folder(out).items
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    assert torch.equal(Vectors.load(items, mmap=False).weight, vectors.weight)
    assert json.loads((out / "summary.json").read_text()) == summary and meta["run"] == summary["run"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--dim", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = MatrixFactorization(943, 1682, args.dim, user_features={"age": 7, "gender": 2, "occupation": 21},
                                item_features={"year": 17}, item_bags={"genres": 19})  # fmt: skip
    vectors = Vectors([f"movie {i}" for i in range(1682)], torch.randn(1682, args.dim))
    summary = {"run": 1, "history": [{"epoch": e, "loss": 0.5} for e in range(40)]}
    genres = {"genre_names": [f"g{i}" for i in range(19)], "item_genres": [[i % 19] for i in range(1682)]}
    base = Path(tempfile.mkdtemp(prefix="bench-train-folder-"))
    contenders = {
        "previous order (in place, then checkpoint)": (base / "previous", _previous),
        "atomic folder (save_model_folder)": (base / "atomic", save_model_folder),
    }
    for folder, save in contenders.values():
        save(folder, model, summary, vectors, genres)  # (the finished save each run replaces)
        save(folder, model, summary, vectors, genres)
        _check(folder, model, summary, vectors)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeat):
        for name, (folder, save) in contenders.items():
            start = time.perf_counter()
            save(folder, model, summary, vectors, genres)
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    first = next(iter(medians.values()))
    print(f"| save over a finished save (1 thread, wall, medians of {args.repeat}) | time | vs previous |")
    print("|---|---|---|")
    for name, value in medians.items():
        print(f"| {name} | {value * 1e3:.1f} ms | {value / first:.2f} |")


if __name__ == "__main__":
    main()
