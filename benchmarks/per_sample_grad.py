"""Benchmark: per-example gradients with torch.func.vmap(grad(...)) vs a Python loop.

Per-example gradients (as differentially private training clips them) of a loss through an
``Embedding`` / ``EmbeddingBag`` / ``EmbeddingBagCollection``, four ways: embtable with ``vmap(grad)``, embtable with a
Python loop of single-example ``grad`` calls, and the same two with torch's modules on the
same weights (for the collection: a ``torch.nn.EmbeddingBag`` per table, the embtable one
vmapped over an :class:`embtable.func.KeyedJaggedStack`).  First every contender's result is checked against the embtable loop (the
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
from embtable import EmbeddingBagCollection, KeyedJagged, TableConfig
from embtable.func import KeyedJaggedStack

FEATURES = {"user": 2, "item": 1}  # collection: table -> id-length multiplier (bags per example: 1)


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


def collection_contenders(rows: int, dim: int, ids: dict[str, torch.Tensor]) -> dict[str, Callable[[], torch.Tensor]]:
    """The collection (two tables of different dims, sum pooling, one bag per feature and
    example) and a torch ``EmbeddingBag`` per table on the same weights; each result is the
    per-example gradients of every table concatenated, ``[B, sum rows * D]``."""
    torch.manual_seed(0)
    dims = {"user": dim, "item": dim // 2}
    ours = EmbeddingBagCollection([TableConfig(name=n, num_embeddings=rows, embedding_dim=d) for n, d in dims.items()])
    theirs = torch.nn.ModuleDict({n: torch.nn.EmbeddingBag(rows, d, mode="sum") for n, d in dims.items()})
    for name in dims:
        theirs[name].weight.data.copy_(ours.table_weight(name))
    stack = KeyedJaggedStack.from_batch(KeyedJagged.from_dict({n: t.tolist() for n, t in ids.items()}))
    group_of = {n: f"grouped_weight_{ours.plan.tables[n].group}" for n in dims}
    ours_params = {k: v.detach() for k, v in ours.named_parameters()}
    theirs_params = {k: v.detach() for k, v in theirs.named_parameters()}

    def ours_loss(p, example):
        return functional_call(ours, p, (example,)).values().pow(2).sum()

    def theirs_loss(p, example_ids):
        outs = [functional_call(theirs[n], {"weight": p[f"{n}.weight"]}, (example_ids[n],)) for n in dims]
        return torch.cat(outs, dim=1).pow(2).sum()

    def ours_flat(g: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([g[group_of[n]].flatten(-2) for n in dims], dim=-1)

    def theirs_flat(g: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([g[f"{n}.weight"].flatten(-2) for n in dims], dim=-1)

    ours_vmap, ours_one = vmap(grad(ours_loss), in_dims=(None, 0)), grad(ours_loss)
    theirs_vmap, theirs_one = vmap(grad(theirs_loss), in_dims=(None, 0)), grad(theirs_loss)
    examples = [stack.example(b) for b in range(len(stack))]
    per_example_ids = [{n: t[b : b + 1] for n, t in ids.items()} for b in range(len(stack))]
    batched_ids = {n: t.unsqueeze(1) for n, t in ids.items()}  # vmap: each example one bag
    return {
        "embtable vmap(grad)": lambda: ours_flat(ours_vmap(ours_params, stack)),
        "embtable loop": lambda: torch.stack([ours_flat(ours_one(ours_params, x)) for x in examples]),
        "torch vmap(grad)": lambda: theirs_flat(theirs_vmap(theirs_params, batched_ids)),
        "torch loop": lambda: torch.stack([theirs_flat(theirs_one(theirs_params, x)) for x in per_example_ids]),
    }


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
    for kind in ("Embedding", "EmbeddingBag", "Collection"):
        gen = torch.Generator().manual_seed(1)
        if kind == "Collection":  # one bag per feature and example: user ids 2L/4, item ids L/4
            ids = {n: torch.randint(0, rows, (batch, k * length // 4), generator=gen) for n, k in FEATURES.items()}
            runs = collection_contenders(rows, dim, ids)
        else:
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
