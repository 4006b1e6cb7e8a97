"""The layout of a sharded collection: which rank holds which shard, the local collections
that hold them, and access to its tables (shared by both sharded collections)."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn import Module, ModuleList

from embtable import ops
from embtable.config import PoolingMode, TableConfig
from embtable.distributed._agree import Agreement
from embtable.distributed._comm import CommStats
from embtable.distributed._exchange import Exchange
from embtable.distributed._synced import Job, SyncedLookup, pooling_code
from embtable.distributed.errors import ShardedValueError
from embtable.distributed.plan import Shard, ShardingPlan, ShardingType
from embtable.jagged import KeyedJagged
from embtable.nn.collection import BucketInput, _bucket_values
from embtable.nn.grouping import plan_groups

__all__ = ["Route", "ShardedTables"]


class Route(NamedTuple):
    """One feature as one rank receives it: which table, how sharded, which shard."""

    feature: str
    table: str
    kind: ShardingType
    shard: Shard
    index: int  # the shard's position in the table's shard list



class ShardedTables(Agreement, Exchange, Module):
    _pooled: ClassVar[bool]
    _collection: ClassVar[type]

    def __init__(
        self,
        tables: Sequence[TableConfig],
        plan: ShardingPlan,
        *,
        process_group: Any = None,
        device: torch.device | str | None = None,
        timeout: datetime.timedelta | None = None,
        is_weighted: bool = False,
        exact_columns: bool = True,
        _source: Module | None = None,
    ) -> None:
        super().__init__()
        api = type(self).__name__
        # TorchRec's meaning, as the unsharded collection: weights are used only when True
        self._is_weighted = bool(is_weighted) and self._pooled
        kinds = {"is_weighted": self._is_weighted} if self._pooled else {}
        if not dist.is_available() or not dist.is_initialized():
            raise ShardedValueError(
                f"{api}: torch.distributed is not initialized; call "
                f"torch.distributed.init_process_group (e.g. under torchrun) first"
            )
        groups = plan_groups(tables, pooled=self._pooled, api=api)  # validates the configs
        self.tables = tuple(groups.configs.values())
        probe = self._collection.__new__(self._collection)
        for config in self.tables:
            probe._check_pooling(config, api)
        dynamic = [c.name for c in self.tables if getattr(c, "dynamic", None) is not None]
        if dynamic:
            raise ShardedValueError(
                f"{api}: table {dynamic[0]!r} is dynamic (raw ids mapped to slots); sharding "
                f"covers static tables only (docs/distributed.md, Limits)"
            )
        plan.check(self.tables)
        if process_group is None:  # (new_group's own default would be 30 minutes)
            process_group = dist.new_group(timeout=timeout or _default_timeout())
        self.group = process_group
        self.rank = dist.get_rank(process_group)
        self.world_size = dist.get_world_size(process_group)
        if plan.world_size != self.world_size:
            raise ShardedValueError(
                f"{api}: the plan is for world_size={plan.world_size}, the process group has "
                f"{self.world_size} ranks"
            )
        self.plan = plan
        self.feature_names = list(groups.features)
        self.embedding_dims = [groups.features[f].embedding_dim for f in self.feature_names]
        self.stats = CommStats()
        self._kept: dict[str, Any] = {}  # large step buffers reused step to step (_comm)
        self._configs = {c.name: c for c in self.tables}
        self._table_of = {f: groups.features[f].table for f in self.feature_names}
        self._kind = {c.name: plan.tables[c.name].sharding_type for c in self.tables}
        self._shards = {c.name: plan.shards(c.name, c) for c in self.tables}
        self.routes = [self._routes_of(r) for r in range(self.world_size)]
        # row-wise max tables get their own collection: their lookup marks the rows that won
        # the whole bag, not only the shard's maximum (see _maxpool.ExactMax)
        self._exact_max = {
            c.name
            for c in self.tables
            if self._pooled
            and c.pooling is PoolingMode.MAX
            and self._kind[c.name] is ShardingType.ROW_WISE
        }
        # column shards: a collection per layout (their update spans the shards: _synced)
        self._columns = [c.name for c in self.tables if self._kind[c.name] is ShardingType.COLUMN_WISE]
        local_all = [self._local_config(c) for c in self.tables]
        apart = self._exact_max | set(self._columns)
        local = [c for c in local_all if c is not None and c.name not in apart]
        local_max = [c for c in local_all if c is not None and c.name in self._exact_max]
        local_cols = [c for c in local_all if c is not None and c.name in self._columns]
        replicas = [c for c in self.tables if self._kind[c.name] is ShardingType.DATA_PARALLEL]
        # Shards are initialized from a stream of their own per rank (equal seeds on every
        # rank must not give equal row blocks), and the caller's RNG state is left as it was.
        devices = (
            [torch.device(device)]
            if device is not None and torch.device(device).type == "cuda"
            else []
        )
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(torch.initial_seed() + 7919 * (self.rank + 1))
            self.local = self._collection(local, device=device, **kinds) if local else None
            self.local_max = (
                self._collection(local_max, device=device, **kinds) if local_max else None
            )
            col_sets = _column_sets(local_cols, self._shards)
            self.local_cols = (
                ModuleList([self._collection(s, device=device, **kinds) for s in col_sets])
                if col_sets
                else None
            )
            self.replicas = self._collection(replicas, device=device, **kinds) if replicas else None
        self._col_index = {c.name: i for i, s in enumerate(col_sets) for c in s}
        self.exact_columns = bool(exact_columns)
        self._col_groups = self._column_groups(timeout) if self.exact_columns else {}
        self._dp_features = [
            f
            for f in self.feature_names
            if self._kind[self._table_of[f]] is ShardingType.DATA_PARALLEL
        ]
        self._row_cuts = {
            name: torch.tensor([s.row_offset for s in shards[1:]], dtype=torch.int64)
            for name, shards in self._shards.items()
        }
        with torch.no_grad():
            if _source is not None:
                self._copy_from(_source)
            if self.replicas is not None:  # replicas start equal on every rank
                for weight in self.replicas.grouped_weights:
                    dist.broadcast(
                        weight.data, dist.get_global_rank(process_group, 0), group=process_group
                    )

    # ------------------------------------------------------------------ synced lookups

    def _synced_lookup(
        self, received: KeyedJagged | None, features: KeyedJagged
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor | None, Tensor | None]:
        """Look up the column shards held here (in ``received``, the exchanged bags) and the
        replicas (in ``features``, this rank's own batch) through one
        :class:`~embtable.distributed._synced.SyncedLookup`.

        Column buckets of sum / mean pooling are pooled straight into the ``[bags, F * d]``
        layout (example-major, :func:`~embtable.ops.pool_bags_grouped`): when one such bucket
        holds every feature this rank serves, in the order of its routes, it is already the
        block of rows to send (``whole``; ``columns`` is then left empty).

        Returns:
            ``(columns, replicas, anchor, whole)``: per feature the pooled ``[bags, d]`` (or,
            not pooled, the ``[ids, d]`` rows) of its column shard and of its replica, an
            empty tensor to add to the rows every rank sends (``None``: nothing is synced),
            and the ``[bags, sum of local widths]`` rows to send, or ``None``.
        """
        if not self._columns and self.replicas is None:
            return {}, {}, None, None
        jobs: list[Job] = []
        placed: list[tuple[str, Any, Any]] = []  # per job: (table or "", bucket, lookup)
        owners: list[tuple[str, Module]] = []
        if received is not None and self.local_cols is not None:
            owners += [(holder.tables[0].name, holder) for holder in self.local_cols]
        if self.replicas is not None:
            owners.append(("", self.replicas))
        for name, holder in owners:
            source = received if name else features
            sub = source.select(holder.feature_names)
            inputs = _column_inputs(holder, sub) if name else None
            for bucket, lookup in zip(holder.plan.buckets, inputs or holder.bucket_inputs(sub)):
                placed.append((name, bucket, lookup))
                pooling = pooling_code(bucket.pooling if self._pooled else None)
                jobs.append(
                    Job(
                        table=name or None,
                        group=self._col_groups.get(name),
                        agree=bool(name) and self.exact_columns,
                        full_dim=self._configs[name].embedding_dim if name else 0,
                        weight=holder.grouped_weights[bucket.group],
                        pooling=pooling,
                        lookup=lookup,
                        padding_rows=bucket.padding_rows,
                        # (column buckets: pooled example-major, the layout the rows are sent in)
                        num_features=len(bucket.features)
                        if name and pooling in (ops.POOL_SUM, ops.POOL_MEAN)
                        else 0,
                        kept=self._kept,
                        scale_grad_by_freq=bucket.scale_grad_by_freq,
                    )
                )
        weights = list({id(j.weight): j.weight for j in jobs}.values())
        anchor = torch.zeros(
            0,
            device=self._device(),
            requires_grad=torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()),
        )
        replica_group = self.group if self.replicas is not None else None
        anchor, *outs = SyncedLookup.apply(jobs, replica_group, self.stats, anchor, *weights)
        n_col = sum(1 for name, _, _ in placed if name)  # (column jobs come first)
        replicas = self._split_outputs(placed[n_col:], outs[n_col:], jobs[n_col:])
        mine = tuple(r.feature for r in self.routes[self.rank])
        if n_col == 1 and jobs[0].num_features and placed[0][1].features == mine:
            return {}, replicas, anchor, outs[0]
        columns = self._split_outputs(placed[:n_col], outs[:n_col], jobs[:n_col])
        return columns, replicas, anchor, None

    def _split_outputs(
        self, placed: list[tuple[str, Any, Any]], outs: list[Tensor], jobs: list[Job]
    ) -> dict[str, Tensor]:
        """Per feature, its view of its job's output (see :meth:`_synced_lookup`)."""
        found: dict[str, Tensor] = {}
        for (_, bucket, lookup), out, job in zip(placed, outs, jobs):
            count = len(bucket.features)
            if job.num_features:  # [bags, F * d], example-major
                parts = out.view(out.shape[0], count, out.shape[1] // count).unbind(1)
            elif self._pooled:
                parts = out.view(count, out.shape[0] // count, out.shape[1]).unbind(0)
            else:
                parts = out.split(lookup.counts)
            found.update(zip(bucket.features, parts))
        return found

    # ------------------------------------------------------------------ layout

    def _column_groups(self, timeout: datetime.timedelta | None) -> dict[str, Any]:
        """The process group of each column-wise table's shards held here (``None``: one
        shard).  Every rank makes every subgroup (``new_group`` is collective), in plan order."""
        made: dict[tuple[int, ...], Any] = {}
        out: dict[str, Any] = {}
        for name in self._columns:
            ranks = tuple(sorted({s.rank for s in self._shards[name]}))
            if 1 < len(ranks) < self.world_size and ranks not in made:
                made[ranks] = dist.new_group(
                    [dist.get_global_rank(self.group, r) for r in ranks],
                    timeout=timeout or _default_timeout(),
                )
            if self.rank in ranks:
                out[name] = (
                    None
                    if len(ranks) == 1
                    else self.group
                    if len(ranks) == self.world_size
                    else made[ranks]
                )
        return out

    def _routes_of(self, rank: int) -> list[Route]:
        routes = []
        for config in self.tables:
            kind = self._kind[config.name]
            if kind is ShardingType.DATA_PARALLEL:
                continue
            for index, shard in enumerate(self._shards[config.name]):
                if shard.rank == rank:
                    routes += [
                        Route(f, config.name, kind, shard, index) for f in config.feature_names
                    ]
        return routes

    def local_shard(self, table: str) -> Shard | None:
        """This rank's shard of ``table`` (``None`` if it holds none)."""
        for shard in self._shards[table]:
            if shard.rank == self.rank:
                return shard
        return None

    def _local_config(self, config: TableConfig) -> TableConfig | None:
        kind = self._kind[config.name]
        shard = self.local_shard(config.name)
        if kind is ShardingType.DATA_PARALLEL or shard is None:
            return None
        pooling = config.pooling
        pad = config.padding_idx
        if kind is ShardingType.ROW_WISE:
            if pooling is PoolingMode.MEAN:
                pooling = PoolingMode.SUM  # partial sums; the requester divides by the bag's count
            inside = pad is not None and shard.row_offset <= pad < shard.row_offset + shard.num_rows
            pad = pad - shard.row_offset if inside else None
        return replace(
            config,
            num_embeddings=shard.num_rows,
            embedding_dim=shard.num_cols,
            pooling=pooling,
            padding_idx=pad,
            init_bound=config.uniform_bound if config.init == "uniform" else None,
        )

    def _copy_from(self, source: Module) -> None:
        api = type(self).__name__
        if tuple(getattr(source, "tables", ())) != self.tables:
            raise ShardedValueError(
                f"{api}: the source collection's tables differ from the plan's tables"
            )
        for config in self.tables:
            full = source.table_weight(config.name)
            if self._kind[config.name] is ShardingType.DATA_PARALLEL:
                self.replicas.table_weight(config.name).copy_(full)
                continue
            shard = self.local_shard(config.name)
            if shard is not None:
                part = full[
                    shard.row_offset : shard.row_offset + shard.num_rows,
                    shard.col_offset : shard.col_offset + shard.num_cols,
                ]
                self.holder_of(config.name).table_weight(config.name).copy_(part)

    # ------------------------------------------------------------------ tables

    def shard_weights(self) -> dict[str, tuple[Shard, Tensor]]:
        """``{table: (this rank's shard, its rows as a view)}`` for every table held here
        (replicas of data-parallel tables as a shard covering the whole table)."""
        out: dict[str, tuple[Shard, Tensor]] = {}
        for config in self.tables:
            shard = self.local_shard(config.name)
            if shard is None:
                continue
            out[config.name] = (shard, self.holder_of(config.name).table_weight(config.name))
        return out

    def holder_of(self, table: str) -> Module | None:
        """The local collection holding this rank's shard of ``table`` (``None`` if none)."""
        if self._kind[table] is ShardingType.DATA_PARALLEL:
            return self.replicas
        if self.local_shard(table) is None:
            return None
        if table in self._col_index:
            return self.local_cols[self._col_index[table]]
        return self.local_max if table in self._exact_max else self.local

    @torch.no_grad()
    def full_tables(self) -> dict[str, Tensor]:
        """Every table assembled whole on every rank (a collective; for tests and small tables).

        Returns:
            ``{table: [num_embeddings, embedding_dim] tensor}`` in configuration order.
        """
        out = {}
        for config in self.tables:
            if self._kind[config.name] is ShardingType.DATA_PARALLEL:
                out[config.name] = self.replicas.table_weight(config.name).clone()
                continue
            device = self._device()
            full = torch.zeros(
                config.num_embeddings, config.embedding_dim, dtype=config.dtype, device=device
            )
            shard = self.local_shard(config.name)
            if shard is not None:
                full[
                    shard.row_offset : shard.row_offset + shard.num_rows,
                    shard.col_offset : shard.col_offset + shard.num_cols,
                ] = self.holder_of(config.name).table_weight(config.name)
            dist.all_reduce(full, group=self.group)
            out[config.name] = full
        return out

    def _device(self) -> torch.device:
        for holder in (self.local, self.local_max, self.replicas, *(self.local_cols or ())):
            if holder is not None:
                return holder.grouped_weights[0].device
        return torch.device("cpu")


def _default_timeout() -> datetime.timedelta | None:
    """The default process group's timeout (``init_process_group(timeout=...)``), if readable."""
    try:
        device = torch.device("cuda" if dist.get_backend() == "nccl" else "cpu")
        return dist.GroupMember.WORLD._get_backend(device).options._timeout
    except (AttributeError, RuntimeError, ValueError):
        return None


def _column_sets(configs: list[TableConfig], shards: dict[str, list[Shard]]) -> list[list[TableConfig]]:
    """The column shards held here, one collection per layout: tables split into the same
    columns on the same ranks share one collection (a grouped weight, one lookup and one
    update per step, as in one process); a table with a ``padding_idx`` keeps its own.
    Every rank of a layout holds the same tables in the same (plan) order, so their
    collectives see the same buckets and rows."""
    sets: dict[tuple[Any, ...], list[TableConfig]] = {}
    for config in configs:
        layout = tuple((s.rank, s.col_offset, s.num_cols) for s in shards[config.name])
        key = (layout,) if config.padding_idx is None else (layout, config.name)
        sets.setdefault(key, []).append(config)
    return list(sets.values())


def _column_inputs(
    holder: Module, sub: KeyedJagged, *, in_place: bool = False
) -> list[BucketInput] | None:
    """The bucket inputs of a column collection from the exchanged bags (already checked by
    the agreement): ids shifted and offsets built by one compiled pass per bucket
    (:func:`~embtable.ops.bucket_ids`); ``None`` where that does not apply (the caller
    takes :meth:`bucket_inputs`, which also names a bad id).

    ``in_place``: ``sub``'s ids are the caller's own (the received bags): int32 ids of a
    grouped weight of fewer than 2^31 rows are shifted where they are (then ``sub`` holds
    the grouped rows' ids) and the bucket's ids are a view of them, int32, not a new int64
    tensor; each id was checked against its table by the agreement on the rank that sent it
    (the kernels that take them check the grouped weight's bounds)."""
    if (
        not holder._pooled
        or not ops.extension_available()
        or sub.device.type != "cpu"
        or sub.variable_stride_per_key()
        or (holder._is_weighted and sub.weights() is None)
    ):
        return None
    batch = sub.stride()
    index_of = {key: i for i, key in enumerate(sub.keys())}
    starts = sub.offset_per_key()
    inputs = []
    weighted = holder._is_weighted
    in_place = in_place and len(holder.plan.buckets) == 1  # (no None once ids are shifted)
    for bucket in holder.plan.buckets:
        if len(bucket.padding_rows) > 1 or (weighted and bucket.pooling is not PoolingMode.SUM):
            return None
    for bucket, consts in zip(holder.plan.buckets, holder._bucket_consts):
        weight = holder.grouped_weights[bucket.group]
        values, lengths, per_value = _bucket_values(
            sub, index_of, bucket, batch, weighted, weight.dtype
        )
        if in_place and values.dtype == torch.int32 and weight.shape[0] <= _INT32_MAX:
            ids, offsets = _shift_in_place(values, lengths, consts["feature_rows"], batch)
        else:
            try:
                ids, offsets = ops.bucket_ids(values, lengths, consts["feature_rows"], batch)
            except (RuntimeError, IndexError):
                return None
        inputs.append(
            BucketInput(
                ids,
                offsets,
                per_value,
                bucket.padding_rows[0] if bucket.padding_rows else None,
                [starts[index_of[f] + 1] - starts[index_of[f]] for f in bucket.features],
            )
        )
    return inputs


_INT32_MAX = 2**31 - 1


def _shift_in_place(
    values: Tensor, lengths: Tensor, feature_rows: Tensor, batch: int
) -> tuple[Tensor, Tensor]:
    """:func:`~embtable.ops.bucket_ids` without new ids: each feature's slice of ``values``
    (feature-major, ``batch`` bags per feature) shifted in place by its table's row offset
    (``feature_rows[f, 0]``); returns ``values`` and the int64 bag offsets of ``lengths``.
    No bounds check: the ids were checked before they were sent."""
    offsets = lengths.new_zeros(lengths.numel() + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, dtype=torch.int64, out=offsets[1:])
    ends = offsets[batch :: batch].tolist() if batch else [0] * feature_rows.shape[0]
    begin = 0
    for (shift, _), end in zip(feature_rows.tolist(), ends):
        if shift and end > begin:
            values[begin:end].add_(shift)
        begin = end
    return values, offsets
