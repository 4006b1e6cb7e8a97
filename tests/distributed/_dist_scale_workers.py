"""What each spawned rank runs in tests/distributed/test_scale_grad_sharded.py.

Importable by the children by name.  Tables with ``scale_grad_by_freq=True`` (a shared sum
table, a mean table with padding, a non-pooled shared table) sharded table-, row- and
column-wise and in a mixed plan: forward outputs and the tables after fused steps (and after
unfused ``torch.optim.SGD`` steps on the shards' gradients, with ``memory_chunks=2``, and
column shards with ``exact_columns=False`` under SGD; data-parallel replicas, whose counts are
summed over the ranks) equal the
one-process collection on the concatenated global batches (``_dist_workers``' oracle), whose
own gradient is tested against a loop of torch modules (tests/test_collection_scale_grad.py).
"""

from __future__ import annotations

import os
import sys

import torch

# (pytest's --doctest-modules imports this file before any test put its folder on sys.path)
sys.path.insert(0, os.path.dirname(__file__))
import _dist_workers as _w  # noqa: E402

import embtable  # noqa: E402
from embtable import EmbeddingBagCollection, EmbeddingCollection, TableConfig  # noqa: E402
from embtable.distributed import ShardingPlan, TableSharding  # noqa: E402
from embtable.distributed.sharded import shard  # noqa: E402

RULES = [("sgd", {"lr": 0.1}), ("rowwise_adagrad", {"lr": 0.1})]


def scaled_tables() -> list[TableConfig]:
    """Few rows, so that ids repeat within a feature of the global batch."""
    return [
        TableConfig(name="a", num_embeddings=9, embedding_dim=4, feature_names=["a1", "a2"],
                    scale_grad_by_freq=True),
        TableConfig(name="b", num_embeddings=7, embedding_dim=6, pooling="mean", padding_idx=3,
                    scale_grad_by_freq=True),
        TableConfig(name="c", num_embeddings=6, embedding_dim=4),  # no flag, a's group
        TableConfig(name="d", num_embeddings=5, embedding_dim=8, scale_grad_by_freq=True),
    ]


def plans(world: int) -> dict[str, ShardingPlan]:
    def every(make):
        return ShardingPlan(world_size=world, tables={t: make() for t in "abcd"})

    return {
        "table_wise": ShardingPlan(
            world_size=world,
            tables={t: TableSharding.table_wise(rank=k % world) for k, t in enumerate("abcd")},
        ),
        "row_wise": every(TableSharding.row_wise),
        "column_wise": every(TableSharding.column_wise),
        # (a replica counts its rank's ids: the counts are summed over the ranks first)
        "data_parallel": every(TableSharding.data_parallel),
        "mixed": ShardingPlan(
            world_size=world,
            tables={
                "a": TableSharding.row_wise(boundaries=[0, 4, 9]),
                "b": TableSharding.column_wise(ranks=[1, 0]),
                "c": TableSharding.data_parallel(),
                "d": TableSharding.table_wise(rank=1),
            },
        ),
    }


def seq_tables() -> list[TableConfig]:
    return [
        TableConfig(name="w", num_embeddings=6, embedding_dim=4, pooling="none", padding_idx=0,
                    scale_grad_by_freq=True),
        TableConfig(name="v", num_embeddings=5, embedding_dim=6, pooling="none",
                    feature_names=["v1", "v2"], scale_grad_by_freq=True),
    ]


def check_scaled(rank: int, world: int) -> None:
    for name, plan in plans(world).items():
        for rule, options in RULES:
            try:
                _w.train_and_compare(rank, world, plan, rule, options, steps=3, tables=scaled_tables())
            except AssertionError as error:
                raise AssertionError(f"plan {name}, {rule}: {error}") from None
    # exact_columns=False: per-shard statistics (TorchRec's), the counts still global; SGD
    # has no statistic, so it equals one process
    _w.train_and_compare(rank, world, plans(world)["column_wise"], "sgd", {"lr": 0.1}, steps=3,
                         tables=scaled_tables(), exact_columns=False)
    _check_unfused(rank, world)
    _check_chunked(rank, world)
    _check_sequences(rank, world)


def _check_unfused(rank: int, world: int) -> None:
    """Without fuse: the shards' gradients (torch.optim.SGD steps) equal one process's."""
    for name in ("row_wise", "column_wise", "data_parallel", "mixed"):
        torch.manual_seed(0)
        reference = EmbeddingBagCollection(scaled_tables())
        sharded = shard(reference, plans(world)[name])
        opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (sharded, reference)]
        features = {f: c.num_embeddings for c in scaled_tables() for f in c.feature_names}
        for step in range(2):
            local, global_batch = _w.batches(features, step, world, rank)
            _w._loss(sharded(local).values()).backward()
            _w._loss(reference(global_batch).values()).backward()
            for opt in opts:
                opt.step()
                opt.zero_grad()
        _w._same_tables(sharded, reference, f"unfused, plan {name}")


def _check_chunked(rank: int, world: int) -> None:
    """``memory_chunks=2`` with one flagged bucket per rank (the case the chunked fused
    lookup, ``_chunked.fused_local``, would take: it must leave it to the collection)."""
    tables = [t for t in scaled_tables() if t.name in ("a", "d")]
    plan = ShardingPlan(
        world_size=world,
        tables={"a": TableSharding.table_wise(rank=0), "d": TableSharding.table_wise(rank=1)},
    )
    features = {f: c.num_embeddings for c in tables for f in c.feature_names}
    for rule, options in RULES:
        torch.manual_seed(0)
        reference = EmbeddingBagCollection(tables)
        sharded = shard(reference, plan)
        sharded.memory_chunks = 2
        embtable.optim.fuse(reference, rule, **options)
        embtable.optim.fuse(sharded, rule, **options)
        for step in range(3):
            local, global_batch = _w.batches(features, step, world, rank)
            _w._loss(sharded(local).values()).backward()
            _w._loss(reference(global_batch).values()).backward()
        _w._same_tables(sharded, reference, f"memory_chunks=2, {rule}")


def _check_sequences(rank: int, world: int) -> None:
    """EmbeddingCollection: row- and column-wise, fused row-wise Adagrad, 3 steps."""
    for kind in (TableSharding.row_wise, TableSharding.column_wise, TableSharding.data_parallel):
        plan = ShardingPlan(world_size=world, tables={"w": kind(), "v": kind()})
        torch.manual_seed(1)
        reference = EmbeddingCollection(seq_tables())
        sharded = shard(reference, plan)
        embtable.optim.fuse(reference, "rowwise_adagrad", lr=0.1)
        embtable.optim.fuse(sharded, "rowwise_adagrad", lr=0.1)
        size = _w.GLOBAL_BATCH // world
        for step in range(3):
            local, global_batch = _w.batches({"w": 6, "v1": 5, "v2": 5}, step, world, rank)
            out, expected = sharded(local), reference(global_batch)
            total = ref_total = 0.0
            for feature in out.keys():
                lengths = expected[feature].lengths
                start = int(lengths[: rank * size].sum())
                count = int(lengths[rank * size : (rank + 1) * size].sum())
                torch.testing.assert_close(
                    out[feature].values, expected[feature].values[start : start + count]
                )
                scale = torch.linspace(0.5, 1.5, out[feature].values.shape[1])
                total = total + (out[feature].values * scale).pow(2).sum()
                ref_total = ref_total + (expected[feature].values * scale).pow(2).sum()
            total.backward()
            ref_total.backward()
        _w._same_tables(sharded, reference, f"EmbeddingCollection {plan.to_dict()}")
