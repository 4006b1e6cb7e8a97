"""ShardingPlan and plan_sharding: plain data, JSON, shards, planner decisions (no processes)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embtable import TableConfig
from embtable.distributed import (
    ShardingPlan,
    ShardingType,
    TableSharding,
    plan_sharding,
    state_bytes_per_row,
)


def _tables() -> list[TableConfig]:
    return [
        TableConfig(name="user", num_embeddings=1000, embedding_dim=16),
        TableConfig(name="item", num_embeddings=300, embedding_dim=10),
        TableConfig(name="city", num_embeddings=50, embedding_dim=4),
    ]


def test_json_round_trip_and_file(tmp_path) -> None:
    plan = ShardingPlan(
        world_size=3,
        tables={
            "user": TableSharding.row_wise(boundaries=[0, 10, 500, 1000], reason="big"),
            "item": TableSharding.column_wise(ranks=[2, 0]),
            "city": TableSharding.data_parallel(),
        },
    )
    assert ShardingPlan.from_json(plan.to_json()) == plan
    path = tmp_path / "plan.json"
    plan.save(path)
    assert ShardingPlan.load(path) == plan
    assert json.loads(path.read_text())["tables"]["item"] == {
        "sharding_type": "column_wise",
        "ranks": [2, 0],
        "boundaries": None,
        "reason": "",
    }
    text = plan.describe(_tables())
    assert "user" in text and "row_wise" in text and "1000x16" in text and "big" in text


def test_shards_cover_each_table_exactly_once() -> None:
    tables = {t.name: t for t in _tables()}
    plan = ShardingPlan(
        world_size=4,
        tables={
            "user": TableSharding.row_wise(),
            "item": TableSharding.column_wise(ranks=[3, 1]),
            "city": TableSharding.table_wise(rank=2),
        },
    )
    plan.check(list(tables.values()))
    user = plan.shards("user", tables["user"])
    assert [(s.rank, s.row_offset, s.num_rows) for s in user] == [
        (0, 0, 250),
        (1, 250, 250),
        (2, 500, 250),
        (3, 750, 250),
    ]
    item = plan.shards("item", tables["item"])
    assert [(s.rank, s.col_offset, s.num_cols) for s in item] == [(3, 0, 5), (1, 5, 5)]
    assert [(s.rank, s.num_rows, s.num_cols) for s in plan.shards("city", tables["city"])] == [
        (2, 50, 4)
    ]


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 10_000), world=st.integers(1, 9))
def test_even_row_split_is_balanced(rows: int, world: int) -> None:
    config = TableConfig(name="t", num_embeddings=rows, embedding_dim=4)
    plan = ShardingPlan(world_size=world, tables={"t": TableSharding.row_wise()})
    sizes = [s.num_rows for s in plan.shards("t", config)]
    assert sum(sizes) == rows and max(sizes) - min(sizes) <= 1
    offsets = [s.row_offset for s in plan.shards("t", config)]
    assert offsets == [sum(sizes[:i]) for i in range(world)]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: ShardingPlan(world_size=2, tables={"a": TableSharding.table_wise(rank=2)}),
            "outside world_size=2",
        ),
        (lambda: TableSharding.row_wise(ranks=[0, 0]), "distinct"),
        (lambda: TableSharding.row_wise(ranks=[0, 1], boundaries=[0, 5]), "need 3 boundaries"),
        (lambda: TableSharding(sharding_type="diagonal"), "sharding_type must be one of"),
        (
            lambda: TableSharding.data_parallel().__class__(
                sharding_type="data_parallel", boundaries=(0, 1)
            ),
            "boundaries apply",
        ),
        (lambda: ShardingPlan(world_size=0), "world_size must be an int >= 1"),
        (lambda: ShardingPlan.from_json('{"tables": {}}'), "not a plan"),
    ],
)
def test_bad_plans_raise(make, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_check_names_missing_and_unknown_tables() -> None:
    plan = ShardingPlan(
        world_size=2,
        tables={"user": TableSharding.row_wise(), "ghost": TableSharding.data_parallel()},
    )
    with pytest.raises(ValueError, match=r"missing \['item', 'city'\], unknown \['ghost'\]"):
        plan.check(_tables())
    wrong = ShardingPlan(
        world_size=2, tables={"user": TableSharding.row_wise(boundaries=[0, 5, 999])}
    )
    with pytest.raises(ValueError, match="cut points from 0 to 1000"):
        wrong.shards("user", _tables()[0])


def test_state_bytes_by_rule_and_dtype() -> None:
    # hand-computed: adam = 2 moments x D x 4 + int64 row step; int8 = D x 1 + float32 scale
    assert state_bytes_per_row("sgd", 64) == 0
    assert state_bytes_per_row("rowwise_adagrad", 64) == 4
    assert state_bytes_per_row("adagrad", 64, "bfloat16") == 128
    assert state_bytes_per_row("adam", 64) == 2 * 256 + 8
    assert state_bytes_per_row("adam", 64, "int8_rowwise") == 2 * (64 + 4) + 8
    with pytest.raises(ValueError, match="optimizer must be one of"):
        state_bytes_per_row("lamb", 4)


def test_planner_balances_and_explains() -> None:
    tables = [
        TableConfig(name=f"t{i}", num_embeddings=100 * (i + 1), embedding_dim=8) for i in range(6)
    ]
    plan = plan_sharding(tables, 2, optimizer="adam")
    assert all(plan.tables[t.name].sharding_type is ShardingType.TABLE_WISE for t in tables)
    load = [0, 0]
    for t in tables:
        load[plan.ranks_of(t.name)[0]] += t.num_embeddings
    assert abs(load[0] - load[1]) <= 100  # greedy largest-first: 1050 vs 1050 here
    assert all("least load" in plan.tables[t.name].reason for t in tables)


def test_planner_row_wise_replicated_and_memory_limit() -> None:
    tables = _tables()
    plan = plan_sharding(tables, 4, data_parallel_bytes=1000)
    assert plan.tables["user"].sharding_type is ShardingType.ROW_WISE
    assert "even share" in plan.tables["user"].reason
    assert plan.tables["city"].sharding_type is ShardingType.DATA_PARALLEL  # 50 x 4 x 4 = 800 bytes
    with pytest.raises(ValueError, match="over memory_per_rank"):
        plan_sharding(tables, 2, memory_per_rank=1000)


def test_planner_uses_lookup_cost() -> None:
    tables = [
        TableConfig(name=n, num_embeddings=100, embedding_dim=8) for n in ("hot", "cold1", "cold2")
    ]
    plan = plan_sharding(tables, 2, ids_per_step={"hot": 1000.0, "cold1": 1.0, "cold2": 1.0})
    # equal bytes; the hot table's rank takes no second table although bytes alone would allow it
    ranks = {n: plan.ranks_of(n)[0] for n in ("hot", "cold1", "cold2")}
    assert ranks["cold1"] == ranks["cold2"] != ranks["hot"]


def test_movielens_nproc_must_be_positive() -> None:
    from embtable.distributed.movielens import train_movielens_sharded

    with pytest.raises(ValueError, match="nproc must be an int >= 1, got 0"):
        train_movielens_sharded(object(), 0)

