"""What each spawned rank runs in tests/distributed/test_sharded.py.

Importable by the children by name (``_dist_*``: apart from tests/adversarial/_harness.py).

Every worker compares the sharded collection on its rank with an unsharded oracle built
from the same seed and trained on the concatenated global batches (every rank's examples,
rank after rank), and writes nothing but assertion failures (raised) and small files
under the test's temporary folder.
"""

from __future__ import annotations

import datetime
import os
import time
from typing import Any

import torch

import embtable
from embtable import EmbeddingBagCollection, EmbeddingCollection, KeyedJagged, TableConfig
from embtable.distributed import ShardingPlan, TableSharding, _synced
from embtable.distributed.checkpoint import load_checkpoint, save_checkpoint
from embtable.distributed.sharded import ShardedEmbeddingBagCollection, ShardedIndexError, shard

GLOBAL_BATCH = 8
RTOL, ATOL = 1e-5, 1e-6


def bag_tables(weighted: bool = False) -> list[TableConfig]:
    """Sum (two features), mean with padding, max, and a small table (all sum when weighted:
    per-value weights apply to sum pooling only)."""
    return [
        TableConfig(name="a", num_embeddings=40, embedding_dim=4, feature_names=["a1", "a2"]),
        TableConfig(
            name="b",
            num_embeddings=30,
            embedding_dim=6,
            pooling="sum" if weighted else "mean",
            padding_idx=3,
        ),
        TableConfig(
            name="c", num_embeddings=25, embedding_dim=4, pooling="sum" if weighted else "max"
        ),
        TableConfig(name="d", num_embeddings=12, embedding_dim=8),
    ]


def seq_tables() -> list[TableConfig]:
    """Non-pooled tables (one with padding)."""
    return [
        TableConfig(name="w", num_embeddings=30, embedding_dim=4, pooling="none", padding_idx=0),
        TableConfig(
            name="v", num_embeddings=16, embedding_dim=6, pooling="none", feature_names=["v1", "v2"]
        ),
    ]


def _rows(
    config_of: dict[str, int], step: int, weighted: bool
) -> tuple[dict[str, list[list[int]]], dict]:
    gen = torch.Generator().manual_seed(1000 + step)
    ids: dict[str, list[list[int]]] = {}
    for feature, rows in config_of.items():
        ids[feature] = [
            torch.randint(
                0, rows, (int(torch.randint(0, 5, (1,), generator=gen)),), generator=gen
            ).tolist()
            for _ in range(GLOBAL_BATCH)
        ]
    weights = {}
    if weighted:
        for feature in ("a1", "a2", "d"):
            if feature in ids:
                weights[feature] = [
                    torch.rand(len(x), generator=gen).tolist() for x in ids[feature]
                ]
    return ids, weights


def _kjt(ids: dict[str, list[list[int]]], weights: dict, lo: int, hi: int) -> KeyedJagged:
    keys = list(ids)
    values = [v for k in keys for bag in ids[k][lo:hi] for v in bag]
    lengths = [len(bag) for k in keys for bag in ids[k][lo:hi]]
    w = None
    if weights:
        w = torch.tensor(
            [
                x
                for k in keys
                for bag, wbag in zip(ids[k][lo:hi], weights.get(k, ids[k])[lo:hi])
                for x in (wbag if k in weights else [1.0] * len(bag))
            ],
            dtype=torch.float32,
        )
    return KeyedJagged(
        keys, torch.tensor(values, dtype=torch.int64), torch.tensor(lengths), weights=w
    )


def batches(features: dict[str, int], step: int, world: int, rank: int, weighted: bool = False):
    """(this rank's local batch, the global batch) of a step."""
    ids, weights = _rows(features, step, weighted)
    size = GLOBAL_BATCH // world
    return _kjt(ids, weights, rank * size, (rank + 1) * size), _kjt(ids, weights, 0, GLOBAL_BATCH)


def bag_features(with_bad_mean: bool = False) -> dict[str, int]:
    return {"a1": 40, "a2": 40, "b": 30, "c": 25, "d": 12}


def mixed_plan(world: int, variant: int) -> ShardingPlan:
    """Mixed plans: each variant has row-wise (some with uneven boundaries), table-wise,
    column-wise and data-parallel tables in another arrangement."""
    if variant == 0:
        cuts = [0, 7, 40] if world == 2 else [0, 3, 10, 20, 40]
        return ShardingPlan(
            world_size=world,
            tables={
                "a": TableSharding.row_wise(boundaries=cuts),
                "b": TableSharding.row_wise(),
                "c": TableSharding.table_wise(rank=world - 1),
                "d": TableSharding.column_wise(),
            },
        )
    if variant == 1:
        return ShardingPlan(
            world_size=world,
            tables={
                "a": TableSharding.table_wise(rank=0),
                "b": TableSharding.table_wise(rank=world - 1),
                "c": TableSharding.row_wise(),
                "d": TableSharding.data_parallel(),
            },
        )
    if variant == 3:
        return ShardingPlan(
            world_size=world,
            tables={
                "a": TableSharding.row_wise(
                    boundaries=[0, 25, 40] if world == 2 else [0, 5, 6, 30, 40]
                ),
                "b": TableSharding.row_wise(ranks=list(range(world))[::-1]),
                "c": TableSharding.table_wise(rank=0),
                "d": TableSharding.data_parallel(),
            },
        )
    return ShardingPlan(
        world_size=world,
        tables={
            "a": TableSharding.column_wise(),
            "b": TableSharding.column_wise(ranks=[1, 0]),
            "c": TableSharding.column_wise(),
            "d": TableSharding.row_wise(),
        },
    )


#: The fused rules and state dtypes every sharding type and pooling is checked with
#: (row-wise Adagrad refuses int8_rowwise: its state is one float per row already).
RULES = [
    ("sgd", {"lr": 0.1, "momentum": 0.9}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "state_dtype": "int8_rowwise"}),
    ("rowwise_adagrad", {"lr": 0.1}),
    ("adam", {"lr": 0.05}),
    ("adam", {"lr": 0.05, "state_dtype": "int8_rowwise"}),
]
KINDS = ["row_wise", "table_wise", "column_wise", "data_parallel"]


def rotated_plan(world: int, turn: int) -> ShardingPlan:
    """Tables a (sum), b (mean, padding), c (max), d (sum) get the sharding types rotated by
    ``turn``: over four turns every pooling meets every sharding type."""
    made = {
        "row_wise": TableSharding.row_wise,
        "table_wise": lambda: TableSharding.table_wise(rank=turn % world),
        "column_wise": TableSharding.column_wise,
        "data_parallel": TableSharding.data_parallel,
    }
    kinds = KINDS[turn:] + KINDS[:turn]
    return ShardingPlan(world_size=world, tables={t: made[k]() for t, k in zip("abcd", kinds)})


#: Other branches of the column shards' update (weight decay modes, Nesterov, Adagrad, AdamW).
MORE_RULES = [
    ("adagrad", {"lr": 0.1, "state_dtype": "int8_rowwise"}),
    ("adamw", {"lr": 0.05, "state_dtype": "int8_rowwise"}),
    ("rowwise_adagrad", {"lr": 0.1, "weight_decay": 0.01}),
    ("rowwise_adagrad", {"lr": 0.1, "weight_decay": 0.01, "decoupled_weight_decay": True}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01,
             "state_dtype": "int8_rowwise"}),
]


def exactness_matrix(rank: int, world: int) -> None:
    """Every sharding type x pooling (sum, mean with padding, max) x rule and state dtype
    of :data:`RULES`: outputs and tables after 5 steps equal one process's; and the column
    shards (sum, mean and max tables) with :data:`MORE_RULES`."""
    for turn in range(len(KINDS)):
        for rule, options in RULES:
            train_and_compare(rank, world, rotated_plan(world, turn), rule, options)
    for rule, options in MORE_RULES:
        train_and_compare(rank, world, mixed_plan(world, 2), rule, options, steps=3)
    # exact_columns=False: each column shard updates alone, still exact without a per-row
    # statistic (float32 Adam, sum / mean tables: the max table c is table-wise here)
    plan = ShardingPlan(
        world_size=world,
        tables={
            "a": TableSharding.column_wise(),
            "b": TableSharding.column_wise(),
            "c": TableSharding.table_wise(rank=0),
            "d": TableSharding.column_wise(),
        },
    )
    train_and_compare(rank, world, plan, "adam", {"lr": 0.05}, steps=3, exact_columns=False)


def _loss(pooled: torch.Tensor) -> torch.Tensor:
    """A loss whose gradient differs per column (so column shards get different gradients)."""
    return (pooled * torch.linspace(0.5, 1.5, pooled.shape[1])).pow(2).sum()


def _same_tables(sharded: Any, reference: Any, what: str) -> None:
    full = sharded.full_tables()
    for name, table in full.items():
        torch.testing.assert_close(
            table,
            reference.table_weight(name).detach(),
            rtol=RTOL,
            atol=ATOL,
            msg=lambda m, n=name: f"{what}: table {n}: {m}",
        )


def train_and_compare(
    rank: int,
    world: int,
    plan: ShardingPlan,
    rule: str,
    options: dict,
    steps: int = 5,
    weighted: bool = False,
    exact_columns: bool = True,
    tables: list[TableConfig] | None = None,
) -> Any:
    """Forward outputs every step and all tables after ``steps`` equal the global-batch oracle
    (``tables``: instead of :func:`bag_tables`)."""
    torch.manual_seed(0)
    tables = tables or bag_tables(weighted)
    reference = EmbeddingBagCollection(tables, is_weighted=weighted)
    sharded = shard(reference, plan, exact_columns=exact_columns)
    ref_opt = embtable.optim.fuse(reference, rule, **options)
    embtable.optim.fuse(sharded, rule, **options)
    size = GLOBAL_BATCH // world
    for step in range(steps):
        features = {f: c.num_embeddings for c in tables for f in c.feature_names}
        local, global_batch = batches(features, step, world, rank, weighted)
        out = sharded(local)
        expected = reference(global_batch)
        for feature in out.keys():
            torch.testing.assert_close(
                out[feature],
                expected[feature][rank * size : (rank + 1) * size],
                rtol=RTOL,
                atol=ATOL,
                msg=lambda m, f=feature, s=step: f"{rule} step {s} {f}: {m}",
            )
        _loss(out.values()).backward()
        _loss(expected.values()).backward()
    _same_tables(sharded, reference, f"{rule} {options} plan {plan.to_dict()}")
    del ref_opt
    return sharded


def even_columns(rank: int, world: int) -> None:
    """Sum tables of equal dim, every one column-wise over all ranks: one column collection
    per rank, pooled straight into the rows sent, the result one permuted copy; exact."""
    tables = [
        TableConfig(name="a", num_embeddings=40, embedding_dim=4, feature_names=["a1", "a2"]),
        TableConfig(name="e", num_embeddings=20, embedding_dim=4),
        TableConfig(name="g", num_embeddings=9, embedding_dim=4),
    ]
    plan = ShardingPlan(
        world_size=world, tables={t.name: TableSharding.column_wise() for t in tables}
    )
    cls = ShardedEmbeddingBagCollection
    lookup = cls._lookup

    def assembled(*args: Any) -> None:  # the rows sent must come from the pooled call whole
        raise AssertionError("even_columns: the rows sent were assembled per feature")

    pipeline = _synced._PIPELINE_ROWS
    cls._lookup = assembled
    try:
        for rule, options in (("adam", {"lr": 0.05}), ("rowwise_adagrad", {"lr": 0.1})):
            # (row-wise Adagrad: the squares agreed in two parts from 2 distinct rows on)
            _synced._PIPELINE_ROWS = 2 if rule == "rowwise_adagrad" else pipeline
            sharded = train_and_compare(rank, world, plan, rule, options, tables=tables)
            assert len(sharded.local_cols) == 1 and sharded._even_columns() == 4 // world
        # the rows sent (and their gradients back): every other rank's bags x 4 features x
        # this rank's columns, float32; nothing more; a step runs 6 collectives (agree, ids,
        # rows, rows_grad, the squares in two parts)
        local, _ = batches({"a1": 40, "a2": 40, "e": 20, "g": 9}, 9, world, rank)
        sharded.stats.reset()
        _loss(sharded(local).values()).backward()
        rows = (world - 1) * (GLOBAL_BATCH // world) * 4 * (4 // world) * 4
        assert sharded.stats.bytes_sent["rows"] == rows, dict(sharded.stats.bytes_sent)
        assert sharded.stats.bytes_sent["rows_grad"] == rows, dict(sharded.stats.bytes_sent)
        assert sharded.stats.calls == 6, dict(sharded.stats.seconds)
        # the result's buffer is reused by the next step once the caller dropped it, and a
        # result the caller keeps is never written over
        kept = sharded(local).values()
        _loss(kept).backward()
        copy, first = kept.detach().clone(), kept.data_ptr()
        again = sharded(local).values()
        _loss(again).backward()
        assert torch.equal(kept, copy) and again.data_ptr() != first
        free = {t.data_ptr() for t in sharded._kept["out"]}  # (held by the workspace alone)
        del kept, again
        again = sharded(local).values()
        _loss(again).backward()
        assert again.data_ptr() in free
        later = sharded(local).values()
        assert later.data_ptr() != again.data_ptr()  # (``again`` still held here)
        del later
        _synced._PIPELINE_ROWS = pipeline
        train_and_compare(rank, world, plan, "sgd", {"lr": 0.1}, weighted=True, tables=tables)
    finally:
        cls._lookup = lookup
        _synced._PIPELINE_ROWS = pipeline


def check_sequences(
    rank: int, world: int, plan: ShardingPlan, rule: str = "adam", options: dict | None = None
) -> None:
    """EmbeddingCollection: rows per id and tables after fused steps equal the oracle."""
    options = options or {"lr": 0.05}
    torch.manual_seed(1)
    reference = EmbeddingCollection(seq_tables())
    sharded = shard(reference, plan)
    embtable.optim.fuse(reference, rule, **options)
    embtable.optim.fuse(sharded, rule, **options)
    features = {"w": 30, "v1": 16, "v2": 16}
    for step in range(3):
        local, global_batch = batches(features, step, world, rank)
        out = sharded(local)
        expected = reference(global_batch)
        total = 0.0
        ref_total = 0.0
        for feature in out.keys():
            mine = out[feature]
            lengths = expected[feature].lengths
            size = GLOBAL_BATCH // world
            start = int(lengths[: rank * size].sum())
            count = int(lengths[rank * size : (rank + 1) * size].sum())
            torch.testing.assert_close(
                mine.values, expected[feature].values[start : start + count], rtol=RTOL, atol=ATOL
            )
            torch.testing.assert_close(mine.lengths, lengths[rank * size : (rank + 1) * size])
            total = total + mine.values.pow(2).sum() * (1 + len(feature))
            ref_total = ref_total + expected[feature].values.pow(2).sum() * (1 + len(feature))
        total.backward()
        ref_total.backward()
    _same_tables(sharded, reference, "EmbeddingCollection")


def check_bad_ids(rank: int, world: int) -> None:
    """An id outside its table on rank 1: every rank raises naming rank 1, nothing changes."""
    torch.manual_seed(0)
    reference = EmbeddingBagCollection(bag_tables())
    sharded = shard(reference, mixed_plan(world, 0))
    embtable.optim.fuse(sharded, "adam", lr=0.1)
    before = sharded.full_tables()
    local, _ = batches(bag_features(), 0, world, rank)
    if rank == 1:
        values = local.values().clone()
        values[-1] = 99  # feature "d" has 12 rows
        local = KeyedJagged(local.keys(), values, local.lengths())
    try:
        sharded(local)
    except ShardedIndexError as error:
        text = str(error)
        assert "rank 1" in text and "'d'" in text and "99" in text, text
    else:
        raise AssertionError("no error for an id outside its table")
    after = sharded.full_tables()
    for name in before:
        assert torch.equal(before[name], after[name]), name


def check_wire(rank: int, world: int) -> None:
    """A forward runs three collectives (agree, lengths + ids in one, rows); the ids exchange
    sends int32 unless some rank needs int64 (forced here by lowering the limit below the
    tables' rows), and training is exact on both."""
    from embtable.distributed import _agree

    plan = ShardingPlan(
        world_size=world,
        tables={
            "a": TableSharding.column_wise(),
            "b": TableSharding.table_wise(rank=1),
            "c": TableSharding.table_wise(rank=0),
            "d": TableSharding.column_wise(),
        },
    )
    limit = _agree._INT32_LIMIT
    for wide, itemsize in ((False, 4), (True, 8)):
        _agree._INT32_LIMIT = 10 if wide else limit  # (tables of 12-40 rows: int64 ids)
        try:
            sharded = train_and_compare(rank, world, plan, "rowwise_adagrad", {"lr": 0.1}, steps=2)
            local, _ = batches(bag_features(), 7, world, rank)
            sharded.stats.reset()
            sharded(local)
        finally:
            _agree._INT32_LIMIT = limit
        size = GLOBAL_BATCH // world
        starts = local.offset_per_key()
        ids_of = {k: starts[i + 1] - starts[i] for i, k in enumerate(local.keys())}
        # to every other rank: its features' bag lengths, then their ids (all of them here)
        expected = sum(
            size + ids_of[route.feature]
            for other, routes in enumerate(sharded.routes)
            if other != rank
            for route in routes
        )
        assert sharded.stats.calls == 3, dict(sharded.stats.seconds)
        assert sharded.stats.bytes_sent["ids"] == itemsize * expected, (wide, expected)
        assert sharded.stats.bytes_sent["agree"] == 7 * 8 * (world - 1)


def check_constructor_init(rank: int, world: int) -> None:
    """Built directly, shards differ across ranks from equal seeds, replicas are equal, and the
    caller's RNG state is untouched."""
    from embtable.distributed import ShardedEmbeddingBagCollection

    torch.manual_seed(0)
    before = torch.get_rng_state()
    tables = [
        TableConfig(name="r", num_embeddings=8, embedding_dim=2),
        TableConfig(name="p", num_embeddings=3, embedding_dim=2),
    ]
    plan = ShardingPlan(
        world_size=world, tables={"r": TableSharding.row_wise(), "p": TableSharding.data_parallel()}
    )
    sharded = ShardedEmbeddingBagCollection(tables, plan)
    assert torch.equal(before, torch.get_rng_state())
    full = sharded.full_tables()
    assert not torch.equal(full["r"][:4], full["r"][4:]), full["r"]
    mine = sharded.replicas.table_weight("p").detach()
    gathered = [torch.empty_like(mine) for _ in range(world)]
    torch.distributed.all_gather(gathered, mine)
    assert all(torch.equal(g, gathered[0]) for g in gathered)


# ---------------------------------------------------------------------- spawned groups


def group_of_two(rank: int, world: int, folder: str) -> None:
    """Every sharding type and pooling, three rules and two state dtypes, EC, failures, checkpoint."""
    exactness_matrix(rank, world)
    even_columns(rank, world)
    train_and_compare(rank, world, mixed_plan(world, 0), "sgd", {"lr": 0.1, "momentum": 0.9})
    train_and_compare(
        rank, world, mixed_plan(world, 1), "rowwise_adagrad", {"lr": 0.1}, weighted=True
    )
    train_and_compare(
        rank, world, mixed_plan(world, 1), "adam", {"lr": 0.05, "state_dtype": "int8_rowwise"}
    )
    train_and_compare(rank, world, mixed_plan(world, 2), "sgd", {"lr": 0.1})
    check_sequences(
        rank,
        world,
        ShardingPlan(
            world_size=world,
            tables={"w": TableSharding.row_wise(), "v": TableSharding.column_wise()},
        ),
    )
    check_sequences(
        rank,
        world,
        ShardingPlan(
            world_size=world,
            tables={"w": TableSharding.table_wise(rank=1), "v": TableSharding.data_parallel()},
        ),
    )
    check_sequences(
        rank,
        world,
        ShardingPlan(
            world_size=world,
            tables={"w": TableSharding.column_wise(), "v": TableSharding.column_wise()},
        ),
        "adam",
        {"lr": 0.05, "state_dtype": "int8_rowwise"},
    )
    check_bad_ids(rank, world)
    check_wire(rank, world)
    check_constructor_init(rank, world)
    checkpoint_source(rank, world, folder)
    check_interrupted_save(rank, world, folder)


def checkpoint_source(rank: int, world: int, folder: str) -> None:
    """Train 3 steps, save (Adam state), train 2 more; keep the tables of both moments."""
    sharded = _fresh(world, 0, seed=0)
    for step in range(3):
        _step(sharded, step, world, rank)
    save_checkpoint(os.path.join(folder, "two"), sharded)
    saved = sharded.full_tables()
    for step in range(3, 5):
        _step(sharded, step, world, rank)
    final = sharded.full_tables()
    if rank == 0:
        torch.save({"saved": saved, "final": final}, os.path.join(folder, "two.pt"))


def check_interrupted_save(rank: int, world: int, folder: str) -> None:
    """A save where rank 1 fails to write: every rank raises, the old checkpoint stays."""
    import torch.distributed.checkpoint as dcp

    sharded = _fresh(world, 0, seed=5)
    original = dcp.FileSystemWriter.write_data
    if rank == 1:

        def broken(self: Any, plan: Any, planner: Any) -> Any:
            raise OSError("disk full (simulated)")

        dcp.FileSystemWriter.write_data = broken
    try:
        save_checkpoint(os.path.join(folder, "two"), sharded)
    except BaseException as error:  # CheckpointException (a BaseException) on every rank
        assert "disk full" in str(error) or "rank" in str(error).lower(), str(error)
    else:
        raise AssertionError("an interrupted save did not raise")
    finally:
        dcp.FileSystemWriter.write_data = original
    torch.distributed.barrier()
    leftovers = [n for n in os.listdir(folder) if ".partial-" in n]
    if rank == 0:
        with open(os.path.join(folder, "interrupted.txt"), "w") as handle:
            handle.write(",".join(leftovers))


def _fresh(world: int, variant: int, seed: int, timeout: float | None = None) -> Any:
    torch.manual_seed(seed)
    reference = EmbeddingBagCollection(bag_tables())
    span = None if timeout is None else datetime.timedelta(seconds=timeout)
    sharded = shard(reference, mixed_plan(world, variant), timeout=span)
    embtable.optim.fuse(sharded, "adam", lr=0.05)
    return sharded


def _step(sharded: Any, step: int, world: int, rank: int) -> None:
    local, _ = batches(bag_features(), step, world, rank)
    out = sharded(local)
    _loss(out.values()).backward()


def group_of_four(rank: int, world: int, folder: str) -> None:
    """Mixed plans at world 4; the 2-rank checkpoint loaded on another plan resumes exactly."""
    train_and_compare(rank, world, mixed_plan(world, 1), "adam", {"lr": 0.05})  # row-wise max
    even_columns(rank, world)
    train_and_compare(
        rank, world, mixed_plan(world, 0), "adagrad", {"lr": 0.1}, steps=3, weighted=True
    )
    # column shards on some ranks only (their collectives run in subgroups), uneven columns
    subsets = ShardingPlan(
        world_size=world,
        tables={
            "a": TableSharding.column_wise(ranks=[1, 3]),
            "b": TableSharding.column_wise(ranks=[2, 0, 1], boundaries=[0, 1, 4, 6]),
            "c": TableSharding.column_wise(ranks=[3, 1]),
            "d": TableSharding.data_parallel(),
        },
    )
    for rule, options in (RULES[2], RULES[4]):
        train_and_compare(rank, world, subsets, rule, options, steps=3)
    sharded = _fresh(world, 3, seed=9)  # other weights, other plan
    load_checkpoint(os.path.join(folder, "two"), sharded)
    expected = torch.load(os.path.join(folder, "two.pt"))
    for name, table in sharded.full_tables().items():
        torch.testing.assert_close(table, expected["saved"][name], rtol=0, atol=0)
    for step in range(3, 5):
        _step(sharded, step, world, rank)
    for name, table in sharded.full_tables().items():
        torch.testing.assert_close(
            table,
            expected["final"][name],
            rtol=RTOL,
            atol=ATOL,
            msg=lambda m, n=name: f"resumed 2 -> 4: table {n}: {m}",
        )
    save_checkpoint(os.path.join(folder, "four"), sharded)
    final = sharded.full_tables()
    if rank == 0:
        torch.save(final, os.path.join(folder, "four.pt"))


HANG_S = 10.0
TIMEOUT_S = 4.0


def group_with_a_death(rank: int, world: int, folder: str) -> None:
    """Load the 4-rank checkpoint on 2 ranks; then rank 1 hangs between forward and backward
    (HANG_S, longer than the sharded group's timeout TIMEOUT_S) and dies: rank 0 must raise at the timeout, not
    wait for the death."""
    sharded = _fresh(world, 2, seed=3)
    load_checkpoint(os.path.join(folder, "four"), sharded)
    expected = torch.load(os.path.join(folder, "four.pt"))
    for name, table in sharded.full_tables().items():
        torch.testing.assert_close(table, expected[name], rtol=0, atol=0)
    hasty = _fresh(world, 2, seed=4, timeout=TIMEOUT_S)  # its own group, a short timeout
    local, _ = batches(bag_features(), 7, world, rank)
    torch.distributed.barrier()  # (default group, long timeout) both ranks start the step together
    out = hasty(local)
    if rank == 1:
        time.sleep(HANG_S)  # hangs mid-step ...
        os._exit(17)  # ... then dies
    start = time.monotonic()
    try:
        out.values().sum().backward()
    except Exception as error:  # gloo: connection closed / timeout
        with open(os.path.join(folder, "death.txt"), "w") as handle:
            handle.write(
                f"{time.monotonic() - start:.3f} {type(error).__name__}: {str(error)[:200]}"
            )
        os._exit(0)
    raise AssertionError("backward succeeded although rank 1 died")
