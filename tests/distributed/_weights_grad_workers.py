"""Worker of tests/distributed/test_weights_grad.py (spawned; a module so that it pickles)."""

from __future__ import annotations

import torch

from embtable import EmbeddingBagCollection, KeyedJagged, TableConfig
from embtable.distributed import ShardingPlan, TableSharding, shard
from embtable.distributed.errors import ShardedValueError

KINDS = {
    "row_wise": TableSharding.row_wise,
    "table_wise": lambda: TableSharding.table_wise(rank=1),
    "column_wise": TableSharding.column_wise,
    "data_parallel": TableSharding.data_parallel,
}


def weights_needing_grad(rank: int, world: int) -> None:
    """Rank 0's weights require a gradient: every rank raises the same error naming rank 0
    before any table changes; detached weights, and the forward under ``no_grad``, work."""
    torch.manual_seed(0)
    tables = [TableConfig(name="a", num_embeddings=10, embedding_dim=4)]
    plain = EmbeddingBagCollection(tables, is_weighted=True)
    for kind, make in KINDS.items():
        sharded = shard(plain, ShardingPlan(world_size=world, tables={"a": make()}))
        before = {k: v.clone() for k, v in sharded.state_dict().items()}
        weights = torch.rand(5, requires_grad=rank == 0)
        batch = KeyedJagged(["a"], torch.tensor([1, 2, 3, 4, 5]), torch.tensor([2, 3]), weights=weights)
        try:
            sharded(batch).values().sum().backward()
        except ShardedValueError as error:
            text = str(error)
            assert "rank 0's batch" in text and "require a gradient" in text, (kind, text)
            assert "weights.detach()" in text, (kind, text)
        else:
            raise AssertionError(f"{kind}: rank {rank} did not raise")
        for key, value in sharded.state_dict().items():
            assert torch.equal(value, before[key]), (kind, key)
        with torch.no_grad():
            forward_only = sharded(batch).values()
        plain_batch = KeyedJagged(
            ["a"], batch.values(), batch.lengths(), weights=weights.detach()
        )
        out = sharded(plain_batch).values()
        assert torch.equal(out, forward_only), kind
        out.sum().backward()
        held = [p for p in sharded.parameters() if p.numel()]  # (table-wise: rank 1 only)
        assert all(p.grad is not None for p in held), kind
        assert sum(float(p.grad.abs().sum()) for p in held) > 0 or not held, kind
