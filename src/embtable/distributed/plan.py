"""Sharding plans as plain data: which rank holds which rows / columns of which table.

A :class:`ShardingPlan` maps every table of a collection to a :class:`TableSharding`:

- ``table_wise``: the whole table on one rank;
- ``row_wise``: rows split over ranks (evenly, or at given ``boundaries``);
- ``column_wise``: embedding dims split over ranks (evenly, or at given ``boundaries``);
- ``data_parallel``: a full replica on every rank.

A plan is written by hand, made by :func:`plan_sharding`, printed (``str(plan)`` or
:meth:`ShardingPlan.describe`), saved as JSON and loaded again.  It holds no tensors and
imports nothing from torch.distributed.

Example:
    >>> from embtable import TableConfig
    >>> from embtable.distributed import ShardingPlan, TableSharding
    >>> plan = ShardingPlan(world_size=2, tables={
    ...     "user": TableSharding.row_wise(),
    ...     "item": TableSharding.table_wise(rank=1),
    ...     "genre": TableSharding.data_parallel(),
    ... })
    >>> ShardingPlan.from_json(plan.to_json()) == plan
    True
    >>> [s.num_rows for s in plan.shards("user", TableConfig(name="user", num_embeddings=5,
    ...                                                        embedding_dim=4))]
    [2, 3]
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from embtable._atomic import atomic_write_bytes
from embtable.config import TableConfig

__all__ = [
    "Shard",
    "ShardingPlan",
    "ShardingType",
    "TableSharding",
    "plan_sharding",
    "state_bytes_per_row",
]


class ShardingType(str, Enum):
    """How one table is spread over the ranks."""

    TABLE_WISE = "table_wise"
    ROW_WISE = "row_wise"
    COLUMN_WISE = "column_wise"
    DATA_PARALLEL = "data_parallel"


@dataclass(frozen=True, kw_only=True)
class Shard:
    """One rank's block of a table: rows ``[row_offset, row_offset + num_rows)`` x columns
    ``[col_offset, col_offset + num_cols)`` (a replica for ``data_parallel``)."""

    rank: int
    row_offset: int
    num_rows: int
    col_offset: int
    num_cols: int


@dataclass(frozen=True, kw_only=True)
class TableSharding:
    """How one table is sharded; build it with the class methods.

    Attributes:
        sharding_type: a :class:`ShardingType`.
        ranks: the ranks holding shards, in row / column order (``None``: every rank).
        boundaries: row (``row_wise``) or column (``column_wise``) cut points,
            ``len(ranks) + 1`` of them from 0 to the table's size (``None``: even split).
        reason: why the planner chose this (free text, printed with the plan).
    """

    sharding_type: ShardingType
    ranks: tuple[int, ...] | None = None
    boundaries: tuple[int, ...] | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        api = "TableSharding"
        try:
            kind = ShardingType(self.sharding_type)
        except ValueError:
            raise ValueError(
                f"{api}: sharding_type must be one of {[t.value for t in ShardingType]}, "
                f"got {self.sharding_type!r}"
            ) from None
        object.__setattr__(self, "sharding_type", kind)
        if self.ranks is not None:
            ranks = tuple(self.ranks)
            if not ranks or any(
                isinstance(r, bool) or not isinstance(r, int) or r < 0 for r in ranks
            ):
                raise ValueError(f"{api}: ranks must be non-negative ints, got {self.ranks!r}")
            if len(set(ranks)) != len(ranks):
                raise ValueError(f"{api}: ranks must be distinct, got {ranks}")
            if kind is ShardingType.TABLE_WISE and len(ranks) != 1:
                raise ValueError(f"{api}: table_wise takes one rank, got {ranks}")
            object.__setattr__(self, "ranks", ranks)
        if self.boundaries is not None:
            if kind not in (ShardingType.ROW_WISE, ShardingType.COLUMN_WISE):
                raise ValueError(
                    f"{api}: boundaries apply to row_wise / column_wise, not {kind.value}"
                )
            cuts = tuple(self.boundaries)
            if any(b < a for a, b in zip(cuts, cuts[1:])) or not cuts or cuts[0] != 0:
                raise ValueError(f"{api}: boundaries must start at 0 and not decrease, got {cuts}")
            if self.ranks is not None and len(cuts) != len(self.ranks) + 1:
                raise ValueError(
                    f"{api}: {len(self.ranks)} ranks need {len(self.ranks) + 1} boundaries, got {cuts}"
                )
            object.__setattr__(self, "boundaries", cuts)

    @classmethod
    def table_wise(cls, rank: int, reason: str = "") -> TableSharding:
        """The whole table on ``rank``."""
        return cls(sharding_type=ShardingType.TABLE_WISE, ranks=(rank,), reason=reason)

    @classmethod
    def row_wise(
        cls,
        ranks: Sequence[int] | None = None,
        boundaries: Sequence[int] | None = None,
        reason: str = "",
    ) -> TableSharding:
        """Rows split over ``ranks`` (default: all), evenly or at ``boundaries``."""
        return cls(
            sharding_type=ShardingType.ROW_WISE,
            ranks=None if ranks is None else tuple(ranks),
            boundaries=None if boundaries is None else tuple(boundaries),
            reason=reason,
        )

    @classmethod
    def column_wise(
        cls,
        ranks: Sequence[int] | None = None,
        boundaries: Sequence[int] | None = None,
        reason: str = "",
    ) -> TableSharding:
        """Embedding dims split over ``ranks`` (default: all), evenly or at ``boundaries``."""
        return cls(
            sharding_type=ShardingType.COLUMN_WISE,
            ranks=None if ranks is None else tuple(ranks),
            boundaries=None if boundaries is None else tuple(boundaries),
            reason=reason,
        )

    @classmethod
    def data_parallel(cls, reason: str = "") -> TableSharding:
        """A replica on every rank (gradients of the global batch applied on each)."""
        return cls(sharding_type=ShardingType.DATA_PARALLEL, reason=reason)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "sharding_type": self.sharding_type.value,
            "ranks": None if self.ranks is None else list(self.ranks),
            "boundaries": None if self.boundaries is None else list(self.boundaries),
            "reason": self.reason,
        }


def _even(size: int, parts: int) -> tuple[int, ...]:
    return tuple(i * size // parts for i in range(parts + 1))


@dataclass(frozen=True, kw_only=True)
class ShardingPlan:
    """The sharding of every table of a collection over ``world_size`` ranks.

    Args:
        world_size: the number of ranks the plan is for.
        tables: ``{table name: TableSharding}``.

    Raises:
        ValueError: a rank outside ``range(world_size)``, a bad world size.
        TypeError: a value that is not a :class:`TableSharding`.
    """

    world_size: int
    tables: Mapping[str, TableSharding] = field(default_factory=dict)

    def __post_init__(self) -> None:
        api = "ShardingPlan"
        if (
            isinstance(self.world_size, bool)
            or not isinstance(self.world_size, int)
            or self.world_size < 1
        ):
            raise ValueError(f"{api}: world_size must be an int >= 1, got {self.world_size!r}")
        tables = dict(self.tables)
        for name, sharding in tables.items():
            if not isinstance(sharding, TableSharding):
                raise TypeError(
                    f"{api}: table {name!r} maps to {type(sharding).__name__}, expected TableSharding"
                )
            bad = [r for r in sharding.ranks or () if r >= self.world_size]
            if bad:
                raise ValueError(
                    f"{api}: table {name!r} is placed on rank {bad[0]}, outside world_size={self.world_size}"
                )
        object.__setattr__(self, "tables", tables)

    # ------------------------------------------------------------------ shards

    def ranks_of(self, table: str) -> tuple[int, ...]:
        """The ranks holding a shard (or replica) of ``table``, in row / column order."""
        sharding = self._sharding(table)
        return sharding.ranks if sharding.ranks is not None else tuple(range(self.world_size))

    def shards(self, table: str, config: TableConfig) -> list[Shard]:
        """The shards of ``table`` (sized by ``config``), in row / column order.

        Raises:
            KeyError: ``table`` is not in the plan.
            ValueError: boundaries that do not end at the table's rows / dim.
        """
        sharding = self._sharding(table)
        ranks = self.ranks_of(table)
        rows, dim = config.num_embeddings, config.embedding_dim
        kind = sharding.sharding_type
        if kind in (ShardingType.TABLE_WISE, ShardingType.DATA_PARALLEL):
            return [
                Shard(rank=r, row_offset=0, num_rows=rows, col_offset=0, num_cols=dim)
                for r in ranks
            ]
        size = rows if kind is ShardingType.ROW_WISE else dim
        cuts = sharding.boundaries if sharding.boundaries is not None else _even(size, len(ranks))
        if len(cuts) != len(ranks) + 1 or cuts[-1] != size:
            raise ValueError(
                f"ShardingPlan: table {table!r} has {kind.value} boundaries {cuts}; expected "
                f"{len(ranks) + 1} cut points from 0 to {size}"
            )
        out = []
        for r, lo, hi in zip(ranks, cuts, cuts[1:]):
            if kind is ShardingType.ROW_WISE:
                out.append(
                    Shard(rank=r, row_offset=lo, num_rows=hi - lo, col_offset=0, num_cols=dim)
                )
            else:
                out.append(
                    Shard(rank=r, row_offset=0, num_rows=rows, col_offset=lo, num_cols=hi - lo)
                )
        return out

    def check(self, tables: Sequence[TableConfig]) -> None:
        """Raise ``ValueError`` unless the plan covers exactly ``tables`` with valid shards."""
        names = [t.name for t in tables]
        missing = [n for n in names if n not in self.tables]
        extra = [n for n in self.tables if n not in names]
        if missing or extra:
            raise ValueError(
                f"ShardingPlan: the plan's tables {sorted(self.tables)} differ from the collection's "
                f"{sorted(names)} (missing {missing}, unknown {extra})"
            )
        for config in tables:
            shards = self.shards(config.name, config)
            if self.tables[config.name].sharding_type is ShardingType.COLUMN_WISE:
                if any(s.num_cols == 0 for s in shards):
                    raise ValueError(
                        f"ShardingPlan: table {config.name!r} of dim {config.embedding_dim} has an empty "
                        f"column shard; use fewer ranks or explicit boundaries"
                    )

    def _sharding(self, table: str) -> TableSharding:
        try:
            return self.tables[table]
        except KeyError:
            raise KeyError(
                f"ShardingPlan: no table {table!r}; the plan has {sorted(self.tables)}"
            ) from None

    # ------------------------------------------------------------------ text and JSON

    def describe(self, tables: Sequence[TableConfig] | None = None) -> str:
        """A readable table: one line per table (with sizes and bytes when ``tables`` are given)."""
        configs = {t.name: t for t in tables or ()}
        head = f"{'table':<16} {'sharding':<14} {'ranks':<14} {'shape':<16} reason"
        lines = [f"ShardingPlan(world_size={self.world_size})", head, "-" * len(head)]
        for name, sharding in self.tables.items():
            ranks = ",".join(map(str, self.ranks_of(name)))
            config = configs.get(name)
            shape = f"{config.num_embeddings}x{config.embedding_dim}" if config else ""
            if sharding.boundaries is not None:
                ranks += f" @{list(sharding.boundaries)}"
            lines.append(
                f"{name:<16} {sharding.sharding_type.value:<14} {ranks:<14} {shape:<16} {sharding.reason}"
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"world_size": N, "tables": {name: {...}}}``."""
        return {
            "world_size": self.world_size,
            "tables": {n: s.to_dict() for n, s in self.tables.items()},
        }

    def to_json(self) -> str:
        """The plan as a JSON string (:meth:`from_json` reads it back)."""
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShardingPlan:
        """The plan of :meth:`to_dict`'s form.

        Raises:
            ValueError: missing or bad fields.
        """
        try:
            tables = {
                name: TableSharding(
                    sharding_type=entry["sharding_type"],
                    ranks=None if entry.get("ranks") is None else tuple(entry["ranks"]),
                    boundaries=None
                    if entry.get("boundaries") is None
                    else tuple(entry["boundaries"]),
                    reason=entry.get("reason", ""),
                )
                for name, entry in data["tables"].items()
            }
            return cls(world_size=data["world_size"], tables=tables)
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"ShardingPlan.from_dict: not a plan ({error!r})") from None

    @classmethod
    def from_json(cls, text: str) -> ShardingPlan:
        """The plan of a :meth:`to_json` string."""
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the plan as JSON to ``path`` (atomically: beside it, fsync, rename)."""
        atomic_write_bytes(path, self.to_json().encode())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ShardingPlan:
        """Read a plan written by :meth:`save`."""
        with open(path) as handle:
            return cls.from_json(handle.read())


# ---------------------------------------------------------------------- planner

_STATE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "int8_rowwise": 1}
_MOMENTS = {"sgd": 0, "adagrad": 1, "rowwise_adagrad": 0, "adam": 2, "adamw": 2}


def state_bytes_per_row(optimizer: str, embedding_dim: int, state_dtype: str = "float32") -> int:
    """Optimizer-state bytes of one row for a fused ``optimizer`` and ``state_dtype``.

    ``sgd``: 0; ``adagrad``: one ``D``-wide moment; ``rowwise_adagrad``: one float32 per row;
    ``adam`` / ``adamw``: two moments plus an int64 row step.  ``int8_rowwise`` moments take
    one byte per entry plus a float32 scale per row.

    Example:
        >>> state_bytes_per_row("adam", 64), state_bytes_per_row("adam", 64, "int8_rowwise")
        (520, 144)
    """
    if optimizer not in _MOMENTS:
        raise ValueError(
            f"state_bytes_per_row: optimizer must be one of {sorted(_MOMENTS)}, got {optimizer!r}"
        )
    if state_dtype not in _STATE_BYTES:
        raise ValueError(
            f"state_bytes_per_row: state_dtype must be one of {sorted(_STATE_BYTES)}, got {state_dtype!r}"
        )
    if optimizer == "rowwise_adagrad":
        return 4
    per_moment = embedding_dim * _STATE_BYTES[state_dtype] + (
        4 if state_dtype == "int8_rowwise" else 0
    )
    return _MOMENTS[optimizer] * per_moment + (8 if optimizer in ("adam", "adamw") else 0)


def plan_sharding(
    tables: Sequence[TableConfig],
    world_size: int,
    *,
    memory_per_rank: int | None = None,
    optimizer: str = "sgd",
    state_dtype: str = "float32",
    ids_per_step: Mapping[str, float] | None = None,
    data_parallel_bytes: int = 0,
) -> ShardingPlan:
    """A plan balancing per-rank bytes (table + optimizer state) and lookup cost.

    Tables go, heaviest (share of bytes + share of lookup cost) first: replicated (``data_parallel``) when they take at most
    ``data_parallel_bytes``; ``row_wise`` over every rank when one table holds more than an
    even share of all bytes (``total / world_size``) or more than ``memory_per_rank``;
    otherwise ``table_wise`` on the rank with the least load so far, the load of a rank
    being its share of all bytes plus its share of all lookup cost
    (``ids_per_step[table] x embedding_dim``; 0 for tables not in ``ids_per_step``).  Each
    table's ``reason`` says why it went where it did.

    Args:
        tables: the collection's table configs.
        world_size: the number of ranks.
        memory_per_rank: bytes each rank may hold (``None``: no limit).
        optimizer: the fused rule whose state is counted (``"sgd"``, ``"adagrad"``,
            ``"rowwise_adagrad"``, ``"adam"``, ``"adamw"``).
        state_dtype: the optimizer's ``state_dtype``.
        ids_per_step: expected ids looked up per step, per table (optional).
        data_parallel_bytes: tables up to this many bytes are replicated on every rank.

    Returns:
        The :class:`ShardingPlan`.

    Raises:
        ValueError: a bad ``world_size``; a rank would hold more than ``memory_per_rank``.

    Example:
        >>> from embtable import TableConfig
        >>> from embtable.distributed import plan_sharding
        >>> tables = [TableConfig(name="user", num_embeddings=1_000_000, embedding_dim=64),
        ...           TableConfig(name="item", num_embeddings=10_000, embedding_dim=64),
        ...           TableConfig(name="city", num_embeddings=20_000, embedding_dim=32)]
        >>> plan = plan_sharding(tables, 2, optimizer="rowwise_adagrad")
        >>> [plan.tables[t].sharding_type.value for t in ("user", "item", "city")]
        ['row_wise', 'table_wise', 'table_wise']
        >>> plan.ranks_of("item"), plan.ranks_of("city")
        ((1,), (0,))
    """
    api = "plan_sharding"
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"{api}: world_size must be an int >= 1, got {world_size!r}")
    ids = dict(ids_per_step or {})
    unknown = set(ids) - {t.name for t in tables}
    if unknown:
        raise ValueError(f"{api}: ids_per_step names unknown tables {sorted(unknown)}")

    def table_bytes(config: TableConfig) -> int:
        weight = config.num_embeddings * config.embedding_dim * _itemsize(config)
        return weight + config.num_embeddings * state_bytes_per_row(
            optimizer, config.embedding_dim, state_dtype
        )

    sizes = {t.name: table_bytes(t) for t in tables}
    costs = {t.name: ids.get(t.name, 0.0) * t.embedding_dim for t in tables}
    total = sum(sizes.values()) or 1
    total_cost = sum(costs.values()) or 1.0
    share = total / world_size
    load_bytes = [0] * world_size
    load_cost = [0.0] * world_size
    chosen: dict[str, TableSharding] = {}

    def weight(t: TableConfig) -> float:
        return sizes[t.name] / total + costs[t.name] / total_cost

    for config in sorted(tables, key=lambda t: (-weight(t), t.name)):
        name = config.name
        size = sizes[name]
        if size <= data_parallel_bytes:
            chosen[name] = TableSharding.data_parallel(
                reason=f"{_mib(size)} <= data_parallel_bytes: replicated"
            )
            for r in range(world_size):
                load_bytes[r] += size
            continue
        too_big = memory_per_rank is not None and size > memory_per_rank
        if world_size > 1 and (size > share or too_big):
            why = (
                f"{_mib(size)} > memory_per_rank {_mib(memory_per_rank)}"
                if too_big
                else f"{_mib(size)} > even share {_mib(share)}"
            )
            chosen[name] = TableSharding.row_wise(reason=f"{why}: rows split over all ranks")
            for r in range(world_size):
                part = (
                    r + 1
                ) * config.num_embeddings // world_size - r * config.num_embeddings // world_size
                load_bytes[r] += size * part // max(config.num_embeddings, 1)
                load_cost[r] += costs[name] / world_size
            continue
        scores = [load_bytes[r] / total + load_cost[r] / total_cost for r in range(world_size)]
        rank = min(range(world_size), key=lambda r: (scores[r], r))
        load_bytes[rank] += size
        load_cost[rank] += costs[name]
        chosen[name] = TableSharding.table_wise(
            rank,
            reason=f"{_mib(size)}; rank {rank} had the least load ({scores[rank]:.2f} of bytes+cost)",
        )
    if memory_per_rank is not None:
        over = [r for r in range(world_size) if load_bytes[r] > memory_per_rank]
        if over:
            raise ValueError(
                f"{api}: rank {over[0]} would hold {_mib(load_bytes[over[0]])}, over memory_per_rank "
                f"{_mib(memory_per_rank)}; add ranks or memory, or use a smaller state_dtype"
            )
    return ShardingPlan(world_size=world_size, tables={t.name: chosen[t.name] for t in tables})


def _itemsize(config: TableConfig) -> int:
    import torch

    return torch.empty((), dtype=config.dtype).element_size()


def _mib(size: float | None) -> str:
    return f"{(size or 0) / 2**20:.1f} MiB"
