"""Sharded tables on ``torch.distributed`` (DESIGN.md, "Storage": sharding sits above nn,
optim and storage; nothing in those layers imports this package).

- :mod:`~embtable.distributed.plan`: :class:`ShardingPlan` (plain data) and :func:`plan_sharding`;
- :mod:`~embtable.distributed.sharded`: :func:`shard`, :class:`ShardedEmbeddingBagCollection`,
  :class:`ShardedEmbeddingCollection` (built from ``_base``, ``_agree``, ``_exchange``,
  ``_maxpool``, ``_synced`` and ``_comm``); :mod:`~embtable.distributed.errors`: the errors
  every rank raises together;
- :mod:`~embtable.distributed.checkpoint`: :func:`save_checkpoint`, :func:`load_checkpoint`,
  :func:`load_unsharded`, :func:`load_tables` (``torch.distributed.checkpoint``, any world size).

See ``docs/distributed.md``.
"""

from __future__ import annotations

from embtable.distributed.checkpoint import (
    load_checkpoint,
    load_tables,
    load_unsharded,
    save_checkpoint,
)
from embtable.distributed.plan import (
    Shard,
    ShardingPlan,
    ShardingType,
    TableSharding,
    plan_sharding,
    state_bytes_per_row,
)
from embtable.distributed.sharded import (
    ShardedEmbeddingBagCollection,
    ShardedEmbeddingCollection,
    ShardedError,
    ShardedIndexError,
    ShardedValueError,
    shard,
)

__all__: list[str] = [
    "ShardedEmbeddingBagCollection",
    "ShardedEmbeddingCollection",
    "ShardedError",
    "ShardedIndexError",
    "ShardedValueError",
    "Shard",
    "ShardingPlan",
    "ShardingType",
    "TableSharding",
    "load_checkpoint",
    "load_tables",
    "load_unsharded",
    "plan_sharding",
    "save_checkpoint",
    "shard",
    "state_bytes_per_row",
]
