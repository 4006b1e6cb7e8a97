"""``embtable train movielens --nproc N``: the demo recommender with sharded tables + DDP.

N gloo processes on 127.0.0.1 (``torch.multiprocessing``; the same code runs under
``torchrun``).  The model is the demo's biased factorization with side features, built on
one :class:`~embtable.distributed.ShardedEmbeddingBagCollection`: user-side tables (user id,
age group, gender, occupation) and item-side tables (item id, release-year span, genres as
a mean bag with a padding row) of width ``dim + 1`` (``dim`` factors and a bias); the
prediction is ``mean + <sum of user rows, sum of item rows>`` over the factors plus the two
bias columns plus a small dense ``Linear`` head on the pooled vectors, which is the DDP part.
Tables train with fused Adam inside backward (sharded with :func:`plan_sharding`), the head
with torch's Adam under ``DistributedDataParallel``.  Each rank reads its share of every
global batch (``batch_size`` per rank).  At the end: test RMSE (every rank scores its share),
``<out>/summary.json`` and the sharded tables' checkpoint in ``<out>/tables``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import socket
import time
from typing import Any

import torch
import torch.distributed as dist

from embtable._atomic import atomic_write_bytes
from embtable.distributed.checkpoint import MANIFEST

__all__ = ["train_movielens_sharded"]

_USER = ("user", "age", "gender", "occupation")
_ITEM = ("item", "year", "genres")


def _tables(data: Any, width: int) -> list[Any]:
    from embtable import TableConfig

    sizes = data.cardinalities()
    rows = {
        "user": data.num_users,
        "item": data.num_items,
        **sizes["user_features"],
        **sizes["item_features"],
    }
    genres = sizes["item_bags"]["genres"]
    out = [
        TableConfig(name=name, num_embeddings=rows[name], embedding_dim=width, init_std=0.01)
        for name in ("user", "age", "gender", "occupation", "item", "year")
    ]
    out.append(
        TableConfig(
            name="genres",
            num_embeddings=genres + 1,
            embedding_dim=width,
            init_std=0.01,
            pooling="mean",
            padding_idx=genres,
        )
    )
    return out


def _batch(data: Any, users: torch.Tensor, items: torch.Tensor) -> Any:
    from embtable import KeyedJagged

    side = data.features(users, items)
    genres = side["genres"]
    single = [users, side["age"], side["gender"], side["occupation"], items, side["year"]]
    values = torch.cat([t.to(torch.int64) for t in single] + [genres.reshape(-1).to(torch.int64)])
    lengths = torch.cat(
        [
            torch.ones(len(users) * len(single), dtype=torch.int64),
            torch.full((len(users),), genres.shape[1], dtype=torch.int64),
        ]
    )
    return KeyedJagged(
        ["user", "age", "gender", "occupation", "item", "year", "genres"], values, lengths
    )


class _Model(torch.nn.Module):
    def __init__(self, sharded: Any, width: int, mean: float) -> None:
        super().__init__()
        self.sparse = sharded
        self.head = torch.nn.Linear(2 * width, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        self.mean = mean

    def forward(self, batch: Any) -> torch.Tensor:
        pooled = self.sparse(batch)
        user = sum(pooled[f] for f in _USER)
        item = sum(pooled[f] for f in _ITEM)
        dot = (user[:, :-1] * item[:, :-1]).sum(1)
        return (
            self.mean
            + dot
            + user[:, -1]
            + item[:, -1]
            + self.head(torch.cat([user, item], 1)).squeeze(1)
        )


def _shares(
    index: torch.Tensor, rank: int, world: int, batch: int, seed: int, epoch: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's part of each global batch of a shuffled pass over ``index``, and which of
    its ratings are real: the last global batch is filled up with the pass's first ratings
    (every rank needs ``batch``); the fill is marked ``False``."""
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = index[torch.randperm(len(index), generator=gen)]
    step = batch * world
    count = -(-len(order) // step)
    real = torch.arange(count * step) < len(order)
    order = torch.cat([order, order[: count * step - len(order)]])
    return [
        (
            order[s * step + rank * batch : s * step + (rank + 1) * batch],
            real[s * step + rank * batch : s * step + (rank + 1) * batch],
        )
        for s in range(count)
    ]


def _worker(rank: int, world: int, port: int, options: Any, result_path: str) -> None:
    from embtable import optim
    from embtable.data.movielens import load_movielens
    from embtable.distributed import ShardedEmbeddingBagCollection, plan_sharding, save_checkpoint

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120)
    )
    data = load_movielens(options.data)
    train_idx, test_idx = data.split(
        options.split, test_fraction=options.test_fraction, seed=options.seed
    )
    if options.limit is not None:
        keep = torch.arange(min(options.limit, len(data)))
        train_idx, test_idx = (
            train_idx[torch.isin(train_idx, keep)],
            test_idx[torch.isin(test_idx, keep)],
        )
    mean = float(data.ratings[train_idx].mean())
    width = options.dim + 1
    tables = _tables(data, width)
    plan = plan_sharding(tables, world, optimizer="adam")
    torch.manual_seed(options.seed)
    sharded = ShardedEmbeddingBagCollection(tables, plan)
    model = _Model(sharded, width, mean)
    sparse_opt = optim.fuse(model.sparse, "adam", lr=options.lr * 5, weight_decay=0.0)
    model.head = torch.nn.parallel.DistributedDataParallel(model.head)
    dense_opt = torch.optim.Adam(optim.dense_parameters(model), lr=options.lr)
    if rank == 0:
        print(plan.describe(tables), flush=True)
    start = time.perf_counter()
    history = []
    for epoch in range(options.epochs):
        total = torch.zeros(2)
        for part, _ in _shares(train_idx, rank, world, options.batch_size, options.seed, epoch):
            users, items = data.users[part], data.items[part]
            pred = model(_batch(data, users, items))
            err = pred - data.ratings[part]
            loss = err.pow(2).mean()
            dense_opt.zero_grad()
            loss.backward()
            dense_opt.step()
            sparse_opt.step()
            total += torch.tensor([float(err.detach().pow(2).sum()), len(part)])
        dist.all_reduce(total)
        history.append(
            {"epoch": epoch + 1, "train_rmse": round(float((total[0] / total[1]).sqrt()), 4)}
        )
        if rank == 0:
            print(
                f"epoch {epoch + 1:>3}/{options.epochs}  train RMSE {history[-1]['train_rmse']:.4f}",
                flush=True,
            )
    seconds = time.perf_counter() - start
    sq = torch.zeros(2)
    with torch.no_grad():
        for part, real in _shares(test_idx, rank, world, options.batch_size, options.seed, 0):
            pred = model(_batch(data, data.users[part], data.items[part]))
            sq += torch.tensor(
                [float((pred - data.ratings[part])[real].pow(2).sum()), float(real.sum())]
            )
    dist.all_reduce(sq)
    os.makedirs(options.out, exist_ok=True)
    save_checkpoint(os.path.join(options.out, "tables"), sharded)
    if rank == 0:
        summary = {
            "dataset": "movielens-100k",
            "nproc": world,
            "model": f"biased factorization with side features on a sharded collection, dim {options.dim}",
            "plan": plan.to_dict(),
            "history": history,
            "test": {"rmse": round(float((sq[0] / sq[1]).sqrt()), 4), "ratings": int(sq[1])},
            "train_seconds": round(seconds, 1),
            "bytes_sent_rank0_last_step": sharded.stats.total_bytes(),
            "tables_manifest_sha256": _manifest_digest(os.path.join(options.out, "tables")),
        }
        atomic_write_bytes(result_path, json.dumps(summary, indent=1).encode())
    dist.destroy_process_group()


def _manifest_digest(tables: str) -> str:
    """SHA-256 of the sharded checkpoint's manifest: ties ``summary.json`` to the tables."""
    with open(os.path.join(tables, MANIFEST), "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def read_summary(out: str | os.PathLike[str]) -> dict[str, Any]:
    """``<out>/summary.json`` of a sharded run, checked against ``<out>/tables``.

    Raises:
        RuntimeError: the summary names another checkpoint than the one in ``<out>/tables``
            (a run killed between writing the tables and the summary).
    """
    path, tables = os.path.join(out, "summary.json"), os.path.join(out, "tables")
    with open(path) as handle:
        summary = json.load(handle)
    if summary.get("tables_manifest_sha256") != _manifest_digest(tables):
        raise RuntimeError(
            f"train_movielens_sharded: {path} does not describe the checkpoint in {tables} "
            "(a run was killed between the two); train again"
        )
    return summary


def train_movielens_sharded(options: Any, nproc: int, *, verbose: bool = True) -> dict[str, Any]:
    """Train the demo model with its tables sharded over ``nproc`` local gloo processes.

    Args:
        options: the CLI's ``MovieLensOptions`` (``data``, ``out``, ``split``,
            ``test_fraction``, ``seed``, ``dim``, ``epochs``, ``batch_size`` (per rank),
            ``lr``, ``limit`` are used).
        nproc: number of processes (>= 1).

    Returns:
        The summary, also written to ``<out>/summary.json``.

    Raises:
        ValueError: ``nproc < 1``.
    """
    import torch.multiprocessing as mp

    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"train_movielens_sharded: nproc must be an int >= 1, got {nproc!r}")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.makedirs(options.out, exist_ok=True)
    path = os.path.join(options.out, "summary.json")
    mp.spawn(_worker, args=(nproc, port, options, path), nprocs=nproc, join=True)
    summary = read_summary(options.out)
    if verbose:
        print(
            f"test RMSE {summary['test']['rmse']:.4f} on {summary['test']['ratings']:,} ratings "
            f"({nproc} processes, {summary['train_seconds']} s); tables in {options.out}/tables",
            flush=True,
        )
    return summary
