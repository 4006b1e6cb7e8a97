"""Where each table of a collection lives in grouped storage: pure data, no tensors.

A collection stores all tables of one ``(embedding_dim, dtype)`` in one grouped weight
``[sum of their num_embeddings, embedding_dim]``, tables stacked in the order they were
configured (tables with ``scale_grad_by_freq`` in a group of their own).  Table ``t`` of group ``g`` occupies rows
``row_offset .. row_offset + num_embeddings - 1`` of group ``g``'s weight, so id ``i`` of a
feature reading ``t`` is row ``row_offset + i`` there, and the table's ``padding_idx``
becomes the global padding row ``row_offset + padding_idx``.

A lookup pools all features of one group that share a pooling mode with one call
(a :class:`LookupBucket`); a collection whose tables share dim, dtype and pooling mode
makes one call in all.

Fused optimizers update the grouped weights directly: :attr:`TablePlacement.group` and
:attr:`TablePlacement.row_offset` say which rows of which parameter belong to a table.

Example:
    >>> from embtable import TableConfig
    >>> from embtable.nn.grouping import plan_groups
    >>> plan = plan_groups([
    ...     TableConfig(name="user", num_embeddings=100, embedding_dim=8),
    ...     TableConfig(name="item", num_embeddings=50, embedding_dim=8, padding_idx=0),
    ...     TableConfig(name="city", num_embeddings=20, embedding_dim=4, pooling="max"),
    ... ])
    >>> [(g.embedding_dim, g.tables, g.num_rows) for g in plan.groups]
    [(8, ('user', 'item'), 150), (4, ('city',), 20)]
    >>> plan.tables["item"]
    TablePlacement(table='item', group=0, row_offset=100, num_rows=50)
    >>> [(b.group, b.pooling.value, b.features, b.padding_rows) for b in plan.buckets]
    [(0, 'sum', ('user', 'item'), (100,)), (1, 'max', ('city',), ())]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from embtable.config import PoolingMode, TableConfig

__all__ = ["CollectionPlan", "FeaturePlacement", "LookupBucket", "TableGroup", "TablePlacement", "plan_groups"]


@dataclass(frozen=True)
class TableGroup:
    """Tables stored together in one grouped weight.

    Attributes:
        index: position of the group (and of its weight in ``grouped_weights``).
        embedding_dim, dtype: shared by every table of the group.
        tables: table names, in storage order.
        row_offsets: first row of each table in the grouped weight.
        num_rows: rows of the grouped weight (sum of the tables' ``num_embeddings``).
    """

    index: int
    embedding_dim: int
    dtype: torch.dtype
    tables: tuple[str, ...]
    row_offsets: tuple[int, ...]
    num_rows: int


@dataclass(frozen=True)
class TablePlacement:
    """Rows ``row_offset .. row_offset + num_rows - 1`` of group ``group``'s weight hold ``table``."""

    table: str
    group: int
    row_offset: int
    num_rows: int


@dataclass(frozen=True)
class FeaturePlacement:
    """A feature, the table it reads and where that table lives."""

    feature: str
    table: str
    group: int
    row_offset: int
    num_rows: int
    embedding_dim: int
    pooling: PoolingMode


@dataclass(frozen=True)
class LookupBucket:
    """Features of one group and one pooling mode, looked up together by one pooled call.

    Attributes:
        group: the group whose weight is read.
        pooling: the pooling mode of every feature of the bucket.
        features: feature names, in the collection's feature order.
        padding_rows: global rows (of the grouped weight) that are the ``padding_idx`` of a
            table read by the bucket; sorted.
        scale_grad_by_freq: whether the bucket's tables scale gradients by id frequency
            (``TableConfig.scale_grad_by_freq``; tables with and without it never share a
            bucket).  Ids are counted per feature of the bucket, as one
            ``torch.nn.Embedding(scale_grad_by_freq=True)`` call per feature
            (:mod:`embtable.nn._freq`; torch 2.13's CPU ``EmbeddingBag`` miscounts).
    """

    group: int
    pooling: PoolingMode
    features: tuple[str, ...]
    padding_rows: tuple[int, ...]
    scale_grad_by_freq: bool = False


@dataclass(frozen=True)
class CollectionPlan:
    """The complete layout of a collection: groups, table and feature placements, buckets.

    Attributes:
        configs: the table configs, by table name, in configuration order.
        groups: the grouped weights.
        tables: placement of each table, by name.
        features: placement of each feature, by name, in the collection's feature order
            (tables in configuration order, then each table's ``feature_names``).
        buckets: the pooled calls of one lookup.
    """

    configs: dict[str, TableConfig]
    groups: tuple[TableGroup, ...]
    tables: dict[str, TablePlacement]
    features: dict[str, FeaturePlacement]
    buckets: tuple[LookupBucket, ...]


def plan_groups(
    tables: Sequence[TableConfig], *, pooled: bool = True, api: str = "plan_groups"
) -> CollectionPlan:
    """Group ``tables`` by ``(embedding_dim, dtype, scale_grad_by_freq)`` and assign each a
    row offset.

    Args:
        tables: the table configs.
        pooled: ``True`` buckets features by ``(group, pooling)``; ``False`` (a collection
            that does not pool) makes one bucket per group, with pooling ``"none"``.
        api: the name errors start with.

    Raises:
        TypeError: an entry is not a :class:`TableConfig`.
        ValueError: no tables, two tables with one name, or one feature in two tables.
    """
    tables = list(tables) if not isinstance(tables, TableConfig) else [tables]
    if not tables:
        raise ValueError(f"{api}: tables must list at least one TableConfig, got none")
    configs: dict[str, TableConfig] = {}
    owner: dict[str, str] = {}
    for config in tables:
        if not isinstance(config, TableConfig):
            raise TypeError(f"{api}: tables must be TableConfig objects, got {type(config).__name__}")
        if config.name in configs:
            raise ValueError(f"{api}: two tables are named {config.name!r}; table names must be distinct")
        configs[config.name] = config
        for feature in config.feature_names:
            if feature in owner:
                raise ValueError(
                    f"{api}: feature {feature!r} is listed by tables {owner[feature]!r} and "
                    f"{config.name!r}; a feature reads exactly one table (features may share a table)"
                )
            owner[feature] = config.name

    # (scale_grad_by_freq tables apart: a fused group counts one step per lookup call, so
    # their buckets must not add steps to the other tables' group)
    members: dict[tuple[int, torch.dtype, bool], list[TableConfig]] = {}
    for config in tables:
        key = (config.embedding_dim, config.dtype, config.scale_grad_by_freq)
        members.setdefault(key, []).append(config)
    groups, placements = [], {}
    for index, ((dim, dtype, _), group_tables) in enumerate(members.items()):
        offsets, total = [], 0
        for config in group_tables:
            offsets.append(total)
            placements[config.name] = TablePlacement(config.name, index, total, config.num_embeddings)
            total += config.num_embeddings
        names = tuple(config.name for config in group_tables)
        groups.append(TableGroup(index, dim, dtype, names, tuple(offsets), total))

    features = {}
    for config in tables:
        place = placements[config.name]
        for feature in config.feature_names:
            features[feature] = FeaturePlacement(
                feature, config.name, place.group, place.row_offset, place.num_rows,
                config.embedding_dim, config.pooling,
            )

    bucket_features: dict[tuple[int, PoolingMode, bool], list[str]] = {}
    bucket_pads: dict[tuple[int, PoolingMode, bool], set[int]] = {}
    for feature, place in features.items():
        scaled = configs[place.table].scale_grad_by_freq
        key = (place.group, place.pooling if pooled else PoolingMode.NONE, scaled)
        bucket_features.setdefault(key, []).append(feature)
        padding_idx = configs[place.table].padding_idx
        pads = bucket_pads.setdefault(key, set())
        if padding_idx is not None:
            pads.add(place.row_offset + padding_idx)
    buckets = tuple(
        LookupBucket(group, pooling, tuple(names), tuple(sorted(bucket_pads[(group, pooling, scaled)])),
                     scale_grad_by_freq=scaled)
        for (group, pooling, scaled), names in bucket_features.items()
    )
    return CollectionPlan(configs, tuple(groups), placements, features, buckets)
