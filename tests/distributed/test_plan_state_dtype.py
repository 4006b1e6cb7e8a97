"""plan_sharding counts the optimizer state by its state dtype against memory_per_rank."""

from __future__ import annotations

import pytest

from embtable import TableConfig
from embtable.distributed import ShardingType, plan_sharding


def test_state_dtype_decides_whether_the_tables_fit() -> None:
    tables = [TableConfig(name=n, num_embeddings=1000, embedding_dim=64) for n in ("u", "v")]
    # hand-computed per table: weights 1000 x 64 x 4 = 256,000 bytes; Adam's state per row:
    # int8_rowwise 2 x (64 + 4) + 8 = 144 (144,000), float32 2 x 256 + 8 = 520 (520,000)
    plan = plan_sharding(
        tables, 2, memory_per_rank=500_000, optimizer="adam", state_dtype="int8_rowwise"
    )
    assert {plan.ranks_of("u")[0], plan.ranks_of("v")[0]} == {0, 1}  # 400,000 bytes per rank
    assert all(plan.tables[n].sharding_type is ShardingType.TABLE_WISE for n in ("u", "v"))
    assert "0.4 MiB" in plan.tables["u"].reason
    # float32: 776,000 bytes per table; even split row-wise, 776,000 per rank > 500,000
    with pytest.raises(ValueError, match="rank 0 would hold 0.7 MiB, over memory_per_rank 0.5 MiB"):
        plan_sharding(tables, 2, memory_per_rank=500_000, optimizer="adam")
    fits = plan_sharding(tables, 2, memory_per_rank=776_000, optimizer="adam")
    assert all(fits.tables[n].sharding_type is ShardingType.TABLE_WISE for n in ("u", "v"))
