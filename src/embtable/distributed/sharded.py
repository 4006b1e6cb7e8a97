r"""Sharded collections: each rank holds only its shards and looks up its local batch.

A forward pass of :class:`ShardedEmbeddingBagCollection` on every rank (each with its own
local batch of ``B`` examples):

1. **agree** -- one ``all_gather`` of 6 integers per rank: batch size, weights present, and
   the first bad input found locally (missing feature, id outside its table, weights on a
   mean / max table).  If any rank's batch is bad, every rank raises the same error naming
   that rank, feature and id, before anything is exchanged or updated;
2. **route ids** -- each feature's ids go to the ranks that hold its table: all of them to
   the owner (table-wise), to every column shard (column-wise), or each id to the rank
   owning its row, shifted to the shard's local row (row-wise); ``all_to_all_single`` of the
   bag lengths, then of the ids (and per-value weights);
3. **look up** -- each rank pools the received bags of all ranks (``world x B`` bags per
   feature: the global batch) with an ordinary :class:`~embtable.EmbeddingBagCollection` of
   its shards (the compiled kernels, fused optimizers);
4. **return rows** -- the pooled rows go back (``all_to_all_single``); the requesting rank
   concatenates column shards, adds row-wise partial sums (dividing by the bag's id count
   for mean pooling; taking the maximum of the non-empty partial maxima for max pooling);
5. **data-parallel tables** -- the ids of the global batch are gathered and every replica
   pools them; each rank keeps its own bags.

Backward runs the same way in reverse: the gradients of the pooled rows go to the shard
owners (one ``all_to_all_single``), whose fused optimizers update their rows inside
backward exactly as an unsharded collection does on the global batch (every id of a row
reaches that row's owner, so per-row counts and optimizer steps are the global ones).
Data-parallel replicas receive the gradients of every rank's bags (``all_to_all``) and each
applies the same update.

:class:`ShardedEmbeddingCollection` does the same without pooling (each id's row comes back).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn import Module

from embtable import ops
from embtable.config import PoolingMode, TableConfig
from embtable.distributed._comm import CommStats, all_to_all, differentiable_all_to_all, own_part
from embtable.distributed.plan import Shard, ShardingPlan, ShardingType
from embtable.functional import FUSED_ATTR
from embtable.jagged import KeyedJagged
from embtable.nn.collection import EmbeddingBagCollection, EmbeddingCollection
from embtable.nn.grouping import plan_groups
from embtable.nn.outputs import JaggedEmbeddings, JaggedRows, PooledEmbeddings
from embtable.ops._fused_reference import POOL_NONE as _POOL_NONE

__all__ = ["ShardedEmbeddingBagCollection", "ShardedEmbeddingCollection", "shard"]

_OK, _MISSING, _BAD_ID, _BAD_WEIGHTS, _NOT_KJT, _NO_WEIGHTS = 0, 1, 2, 3, 4, 5
_MASK_SHARDS = 8  # row shards up to which ids are split by masks (else by a stable sort)


class _Route(NamedTuple):
    """One feature as one rank receives it: which table, how sharded, which shard."""

    feature: str
    table: str
    kind: ShardingType
    shard: Shard
    index: int  # the shard's position in the table's shard list


class ShardedError(RuntimeError):
    """Base of the errors every rank raises together (also a ``RuntimeError``)."""


class ShardedIndexError(IndexError, ShardedError):
    """An id outside its table on some rank: raised on every rank, before any update."""


class ShardedValueError(ValueError, ShardedError):
    """A batch that does not fit the collection on some rank: raised on every rank."""


class _ShardedTables(Module):
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
        self._configs = {c.name: c for c in self.tables}
        self._table_of = {f: groups.features[f].table for f in self.feature_names}
        self._kind = {c.name: plan.tables[c.name].sharding_type for c in self.tables}
        self._shards = {c.name: plan.shards(c.name, c) for c in self.tables}
        self.routes = [self._routes_of(r) for r in range(self.world_size)]
        # row-wise max tables get their own collection: their lookup marks the rows that won
        # the whole bag, not only the shard's maximum (see _ExactMax)
        self._exact_max = {
            c.name
            for c in self.tables
            if self._pooled
            and c.pooling is PoolingMode.MAX
            and self._kind[c.name] is ShardingType.ROW_WISE
        }
        local_all = [self._local_config(c) for c in self.tables]
        local = [c for c in local_all if c is not None and c.name not in self._exact_max]
        local_max = [c for c in local_all if c is not None and c.name in self._exact_max]
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
            self.replicas = self._collection(replicas, device=device, **kinds) if replicas else None
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

    # ------------------------------------------------------------------ layout

    def _routes_of(self, rank: int) -> list[_Route]:
        routes = []
        for config in self.tables:
            kind = self._kind[config.name]
            if kind is ShardingType.DATA_PARALLEL:
                continue
            for index, shard in enumerate(self._shards[config.name]):
                if shard.rank == rank:
                    routes += [
                        _Route(f, config.name, kind, shard, index) for f in config.feature_names
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
        for holder in (self.local, self.local_max, self.replicas):
            if holder is not None:
                return holder.grouped_weights[0].device
        return torch.device("cpu")

    # ------------------------------------------------------------------ agreement

    def _agree(self, features: Any) -> tuple[int, bool]:
        """Check the local batch, share the verdict with every rank, raise the first bad one."""
        api = type(self).__name__
        report = self._local_verdict(features)
        device = self._device()
        mine = torch.tensor(report, dtype=torch.int64, device=device)
        size = [mine.numel()] * self.world_size
        everyone = all_to_all(
            mine.repeat(self.world_size), size, size, self.group, self.rank, self.stats, "agree"
        )
        rows = everyone.view(self.world_size, -1).cpu().tolist()
        for rank, (code, feature, value, _, _, _) in enumerate(rows):
            if code == _OK:
                continue
            where = f"{api}: rank {rank}'s batch"
            suffix = "; no rank looked up or updated anything"
            if code == _NOT_KJT:
                raise ShardedValueError(
                    f"{where} is not a KeyedJagged with one batch size for every feature "
                    f"(a batch size per feature is not sharded yet){suffix}"
                )
            name = self.feature_names[feature]
            table = self._table_of[name]
            if code == _MISSING:
                raise ShardedValueError(
                    f"{where} has no feature {name!r} (read from table {table!r}){suffix}"
                )
            if code == _NO_WEIGHTS:
                raise ShardedValueError(
                    f"{where} has no weights, but the collection is weighted (is_weighted=True); "
                    f"give KeyedJagged(..., weights=...) or use is_weighted=False{suffix}"
                )
            if code == _BAD_WEIGHTS:
                raise ShardedValueError(
                    f"{where} carries per-value weights, but feature {name!r} (table {table!r}) uses "
                    f"pooling={self._configs[table].pooling.value!r}; weights apply only to 'sum'{suffix}"
                )
            rows_n = self._configs[table].num_embeddings
            raise ShardedIndexError(
                f"{where}: feature {name!r} holds id {value}, outside table {table!r} of {rows_n} rows "
                f"(valid ids are 0..{rows_n - 1}){suffix}"
            )
        sizes = {row[3] for row in rows}
        weighted = {row[4] for row in rows}
        if len(sizes) != 1:
            raise ShardedValueError(
                f"{api}: every rank must pass the same local batch size; got {[row[3] for row in rows]}"
            )
        if len(weighted) != 1:
            raise ShardedValueError(
                f"{api}: some ranks' batches carry per-value weights and some do not "
                f"({[bool(row[4]) for row in rows]}); give weights on every rank or on none"
            )
        return rows[0][3], bool(rows[0][4])

    def _local_verdict(self, features: Any) -> list[int]:
        if not isinstance(features, KeyedJagged):
            return [_NOT_KJT, 0, 0, 0, 0, 0]
        batch = features.stride()
        if features.variable_stride_per_key():
            return [_NOT_KJT, 0, 0, batch, 0, 0]
        weighted = self._is_weighted and features.weights() is not None
        if self._is_weighted and not weighted:
            return [_NO_WEIGHTS, 0, 0, batch, 0, 0]
        index_of = {k: i for i, k in enumerate(features.keys())}
        starts = features.offset_per_key()
        bounds, order = [], []
        for j, name in enumerate(self.feature_names):
            if name not in index_of:
                return [_MISSING, j, 0, batch, int(weighted), 0]
            config = self._configs[self._table_of[name]]
            if weighted and self._pooled and config.pooling is not PoolingMode.SUM:
                return [_BAD_WEIGHTS, j, 0, batch, int(weighted), 0]
            p = index_of[name]
            if starts[p + 1] > starts[p]:
                low, high = torch.aminmax(features.values()[starts[p] : starts[p + 1]])
                bounds += [low, high]
                order.append(j)
        if bounds:
            found = torch.stack(bounds).tolist()
            for k, j in enumerate(order):
                low, high = found[2 * k], found[2 * k + 1]
                rows = self._configs[self._table_of[self.feature_names[j]]].num_embeddings
                if low < 0 or high >= rows:
                    return [_BAD_ID, j, low if low < 0 else high, batch, int(weighted), 0]
        return [_OK, 0, 0, batch, int(weighted), 0]

    # ------------------------------------------------------------------ exchange

    def _split(self, features: KeyedJagged, batch: int) -> dict[str, Any]:
        """Per routed feature: its ids, lengths and weights for each shard, and combine data."""
        index_of = {k: i for i, k in enumerate(features.keys())}
        starts = features.offset_per_key()
        values, lengths, weights = features.values(), features.lengths(), features.weights()
        pieces: dict[tuple[str, int], tuple[Tensor, Tensor, Tensor | None]] = {}
        extra: dict[str, Any] = {}
        for name in self.feature_names:
            table = self._table_of[name]
            kind = self._kind[table]
            if kind is ShardingType.DATA_PARALLEL:
                continue
            p = index_of[name]
            ids = values[starts[p] : starts[p + 1]].to(torch.int64)
            lens = lengths[p * batch : (p + 1) * batch].to(torch.int64)
            w = None if weights is None else weights[starts[p] : starts[p + 1]]
            shards = self._shards[table]
            pad = self._configs[table].padding_idx
            if kind is not ShardingType.ROW_WISE:
                for k in range(len(shards)):
                    pieces[(name, k)] = (ids, lens, w)
                if pad is not None and self._configs[table].pooling is PoolingMode.MEAN:
                    extra[name] = None
                continue
            cuts = self._row_cuts[table].to(ids.device)
            owner = torch.bucketize(ids, cuts, right=True)
            bag = torch.repeat_interleave(torch.arange(batch, device=ids.device), lens)
            key = owner * batch + bag
            per_shard = torch.bincount(key, minlength=len(shards) * batch).view(len(shards), batch)
            if len(shards) <= _MASK_SHARDS:  # a few masks beat a stable sort of the owners
                picks = [torch.nonzero(owner == k).squeeze(1) for k in range(len(shards))]
            else:
                order = torch.argsort(owner, stable=True)
                picks = list(order.split(per_shard.sum(1).tolist()))
            for k, pick in enumerate(picks):
                part = ids[pick] - shards[k].row_offset if shards[k].row_offset else ids[pick]
                pieces[(name, k)] = (part, per_shard[k], None if w is None else w[pick])
            counts = per_shard
            if pad is not None:
                counts = torch.bincount(key[ids != pad], minlength=len(shards) * batch)
                counts = counts.view(len(shards), batch)
            extra[name] = (counts, picks)
        return {"pieces": pieces, "extra": extra}

    def _exchange_ids(
        self, split: dict[str, Any], batch: int, weighted: bool
    ) -> tuple[KeyedJagged | None, Tensor | None, list[list[int]]]:
        """Send every rank its features' bags; the local batch of ``world x B`` bags per feature."""
        pieces = split["pieces"]
        world, device = self.world_size, self._device()
        send_lengths, send_values, send_weights = [], [], []
        for routes in self.routes:
            for route in routes:
                ids, lens, w = pieces[(route.feature, route.index)]
                send_lengths.append(lens)
                send_values.append(ids)
                if weighted:
                    send_weights.append(w)
        mine = self.routes[self.rank]
        nf = len(mine)
        length_in = [batch * len(routes) for routes in self.routes]
        length_out = [batch * nf] * world
        lengths = all_to_all(
            _cat(send_lengths, torch.int64, device),
            length_out,
            length_in,
            self.group,
            self.rank,
            self.stats,
            "lengths",
        )
        value_in = [0] * world
        k = 0
        for d, routes in enumerate(self.routes):
            for _ in routes:
                value_in[d] += int(send_values[k].numel())
                k += 1
        grid = lengths.view(world, nf, batch)
        counts = grid.sum(2).tolist()  # [source][feature]
        value_out = [sum(row) for row in counts]
        values = all_to_all(
            _cat(send_values, torch.int64, device),
            value_out,
            value_in,
            self.group,
            self.rank,
            self.stats,
            "ids",
        )
        weights = None
        if weighted:
            dtype = send_weights[0].dtype if send_weights else torch.float32
            weights = all_to_all(
                _cat(send_weights, dtype, device),
                value_out,
                value_in,
                self.group,
                self.rank,
                self.stats,
                "weights",
            )
        if not nf:
            return None, None, counts
        flat = [c for row in counts for c in row]
        v_parts = values.split(flat)
        w_parts = weights.split(flat) if weights is not None else None
        order = [s * nf + f for f in range(nf) for s in range(world)]  # feature-major, then source
        kjt = KeyedJagged(
            [route.feature for route in mine],
            torch.cat([v_parts[i] for i in order]),
            grid.permute(1, 0, 2).reshape(-1),
            weights=None if w_parts is None else torch.cat([w_parts[i] for i in order]),
            validate=False,
        )
        return kjt, lengths, counts

    def _sent_counts(self, split: dict[str, Any]) -> list[list[int]]:
        """``[dest][feature of dest's routes]``: how many ids this rank sent."""
        return [
            [int(split["pieces"][(r.feature, r.index)][0].numel()) for r in routes]
            for routes in self.routes
        ]

    def _gather_replicated(
        self, features: KeyedJagged, batch: int, weighted: bool
    ) -> tuple[KeyedJagged, list[list[int]]]:
        """The data-parallel features' global batch (every rank's bags, rank after rank)."""
        world, device = self.world_size, self._device()
        sub = features.select(self._dp_features)
        nf = len(self._dp_features)
        lens = sub.lengths().to(torch.int64)
        lengths = all_to_all(
            lens.repeat(world),
            [nf * batch] * world,
            [lens.numel()] * world,
            self.group,
            self.rank,
            self.stats,
            "dp_lengths",
        )
        grid = lengths.view(world, nf, batch)
        counts = grid.sum(2).tolist()
        out = [sum(row) for row in counts]
        ids = sub.values().to(torch.int64)
        values = all_to_all(
            ids.repeat(world),
            out,
            [ids.numel()] * world,
            self.group,
            self.rank,
            self.stats,
            "dp_ids",
        )
        weights = None
        if weighted:
            w = sub.weights()
            weights = all_to_all(
                w.repeat(world),
                out,
                [w.numel()] * world,
                self.group,
                self.rank,
                self.stats,
                "dp_weights",
            )
        flat = [c for row in counts for c in row]
        order = [s * nf + f for f in range(nf) for s in range(world)]
        v_parts = values.split(flat)
        w_parts = weights.split(flat) if weights is not None else None
        kjt = KeyedJagged(
            self._dp_features,
            torch.cat([v_parts[i] for i in order]).to(device),
            grid.permute(1, 0, 2).reshape(-1),
            weights=None if w_parts is None else torch.cat([w_parts[i] for i in order]),
            validate=False,
        )
        return kjt, counts


class ShardedEmbeddingBagCollection(_ShardedTables):
    r"""An :class:`~embtable.EmbeddingBagCollection` sharded over the ranks of a process group.

    Allocates only this rank's shards (and replicas of data-parallel tables).  ``forward``
    takes this rank's local batch and returns what the unsharded collection returns for it;
    see the module docstring for the exchange.  Every rank must call ``forward`` (and
    backward) in the same order with batches of the same size.

    Args:
        tables: the table configs (as for the unsharded collection).
        plan: a :class:`~embtable.distributed.ShardingPlan` for these tables and this world size.
        process_group: the group to shard over (``None``: a new group of all ranks, so the
            exchange never interleaves with other collectives, e.g. DDP's).
        device: where to allocate the shards (CUDA tensors need the NCCL backend).
        timeout: the timeout of the new group's collectives (``None``: the default group's);
            a rank that dies or hangs makes the others raise after at most this long.
        is_weighted: as the unsharded collection's (TorchRec's meaning): per-value weights of
            a batch are used only when ``True`` (and then required); :func:`shard` copies it.

    Attributes:
        local: the :class:`~embtable.EmbeddingBagCollection` of this rank's shards (``None``
            if it holds none); fuse it (or the whole model) with :func:`embtable.optim.fuse`.
        replicas: the collection of data-parallel tables (``None`` if none).
        stats: bytes sent and seconds spent per exchange kind (:class:`CommStats`).

    Raises:
        ValueError: torch.distributed not initialized, a plan for another world size or
            other tables, bad configs.
    """

    _pooled = True
    _collection = EmbeddingBagCollection

    def forward(self, features: KeyedJagged) -> PooledEmbeddings:
        """Pool this rank's local batch; returns ``[B, D_f]`` per feature, like the unsharded module."""
        batch, weighted = self._agree(features)
        split = self._split(features, batch)
        kjt, _, counts = self._exchange_ids(split, batch, weighted)
        world = self.world_size
        widths = [sum(r.shard.num_cols for r in routes) for routes in self.routes]
        if kjt is not None:
            looked = self._lookup(kjt)  # [world * B, sum of local widths]
            send = looked.reshape(-1)
        else:
            send = torch.zeros(0, device=self._device(), requires_grad=True)
        mine = widths[self.rank]
        back = differentiable_all_to_all(
            send,
            [batch * w for w in widths],
            [batch * mine] * world,
            self.group,
            self.rank,
            self.stats,
            "rows",
        )
        # split (not slicing): backward then assembles the gradient with one concatenation
        partial: dict[tuple[str, int], Tensor] = {}
        blocks = back.split([batch * w for w in widths])
        for s, routes in enumerate(self.routes):
            if not routes:
                continue
            columns = blocks[s].view(batch, widths[s]).split([r.shard.num_cols for r in routes], 1)
            for route, part in zip(routes, columns):
                partial[(route.feature, route.index)] = part
        pooled: dict[str, Tensor] = {}
        if self._dp_features:
            pooled.update(self._replicated(features, batch, weighted))
        for name in self.feature_names:
            if name in pooled:
                continue
            table = self._table_of[name]
            parts = [partial[(name, k)] for k in range(len(self._shards[table]))]
            pooled[name] = self._combine(
                name, table, parts, split["extra"].get(name), features, batch
            )
        return PooledEmbeddings(self.feature_names, [pooled[f] for f in self.feature_names])

    def _combine(
        self,
        name: str,
        table: str,
        parts: list[Tensor],
        extra: Any,
        features: KeyedJagged,
        batch: int,
    ) -> Tensor:
        kind = self._kind[table]
        if kind is ShardingType.TABLE_WISE:
            return parts[0]
        if kind is ShardingType.COLUMN_WISE:
            return torch.cat(parts, 1)
        pooling = self._configs[table].pooling
        counts = extra[0]  # [shards, B] non-padding ids per bag per shard
        if pooling is PoolingMode.SUM:
            return _sum(parts)
        if pooling is PoolingMode.MEAN:
            total = counts.sum(0).clamp(min=1).to(parts[0].dtype).unsqueeze(1)
            return _sum(parts) / total
        return _MaxCombine.apply(torch.stack(parts), counts > 0)

    def _lookup(self, kjt: KeyedJagged) -> Tensor:
        """Pool the received bags of every local feature: ``[world * B, sum of local widths]``
        in the order of this rank's routes."""
        if self.local_max is None:
            return self.local(kjt).values()
        pooled: dict[str, Tensor] = {}
        if self.local is not None:
            main = self.local(kjt.select(self.local.feature_names))
            pooled.update((f, main[f]) for f in main.keys())
        sub = kjt.select(self.local_max.feature_names)
        bags = sub.stride()
        for bucket, lookup in zip(self.local_max.plan.buckets, self.local_max.bucket_inputs(sub)):
            weight = self.local_max.grouped_weights[bucket.group]
            pad = -1 if lookup.padding_idx is None else lookup.padding_idx
            out = _ExactMax.apply(weight, lookup.ids, lookup.offsets, pad)
            per_feature = out.view(len(bucket.features), bags, out.shape[1]).unbind(0)
            pooled.update(zip(bucket.features, per_feature))
        return torch.cat([pooled[r.feature] for r in self.routes[self.rank]], 1)

    def _replicated(self, features: KeyedJagged, batch: int, weighted: bool) -> dict[str, Tensor]:
        kjt, _ = self._gather_replicated(features, batch, weighted)
        out = self.replicas(kjt).values()  # [world * B, sum D]
        width = out.shape[1]
        parts = [
            torch.arange(s * batch * width, (s + 1) * batch * width, device=out.device)
            for s in range(self.world_size)
        ]
        mine = own_part(out, parts, self.group, self.rank, self.stats).view(batch, width)
        dims = [self._configs[self._table_of[f]].embedding_dim for f in self._dp_features]
        return dict(zip(self._dp_features, mine.split(dims, 1)))


class ShardedEmbeddingCollection(_ShardedTables):
    r"""An :class:`~embtable.EmbeddingCollection` sharded over the ranks of a process group.

    As :class:`ShardedEmbeddingBagCollection`, without pooling: each id's row (or its column
    shards) comes back to the rank that asked for it.  Same arguments.
    """

    _pooled = False
    _collection = EmbeddingCollection

    def forward(self, features: KeyedJagged) -> JaggedEmbeddings:
        """Look up every id of this rank's local batch; per feature ``[N_f, D_f]`` rows and lengths."""
        batch, _ = self._agree(features)
        split = self._split(features, batch)
        kjt, _, counts = self._exchange_ids(split, batch, False)
        world = self.world_size
        mine = self.routes[self.rank]
        sent = self._sent_counts(split)
        out_sizes = [
            sum(n * r.shard.num_cols for n, r in zip(sent[d], self.routes[d])) for d in range(world)
        ]
        if kjt is not None:
            result = self.local(kjt)
            blocks: list[list[Tensor]] = [[] for _ in range(world)]
            for f, route in enumerate(mine):
                rows = result[route.feature].values.split([counts[s][f] for s in range(world)])
                for s in range(world):
                    blocks[s].append(rows[s].reshape(-1))
            send = torch.cat([t for s in range(world) for t in blocks[s]])
            in_sizes = [
                sum(counts[s][f] * r.shard.num_cols for f, r in enumerate(mine))
                for s in range(world)
            ]
        else:
            send = torch.zeros(0, device=self._device(), requires_grad=True)
            in_sizes = [0] * world
        back = differentiable_all_to_all(
            send, out_sizes, in_sizes, self.group, self.rank, self.stats, "rows"
        )
        partial: dict[tuple[str, int], Tensor] = {}
        sizes = [
            n * r.shard.num_cols
            for d, routes in enumerate(self.routes)
            for n, r in zip(sent[d], routes)
        ]
        pieces = iter(back.split(sizes))
        for d, routes in enumerate(self.routes):
            for n, route in zip(sent[d], routes):
                partial[(route.feature, route.index)] = next(pieces).view(n, route.shard.num_cols)
        found: dict[str, JaggedRows] = {}
        if self._dp_features:
            found.update(self._replicated(features, batch))
        index_of = {k: i for i, k in enumerate(features.keys())}
        for name in self.feature_names:
            if name in found:
                continue
            table = self._table_of[name]
            kind = self._kind[table]
            parts = [partial[(name, k)] for k in range(len(self._shards[table]))]
            if kind is ShardingType.TABLE_WISE:
                rows = parts[0]
            elif kind is ShardingType.COLUMN_WISE:
                rows = torch.cat(parts, 1)
            else:
                order = torch.cat(split["extra"][name][1])
                inverse = torch.empty_like(order)
                inverse[order] = torch.arange(order.numel(), device=order.device)
                rows = torch.cat(parts)[inverse]
            p = index_of[name]
            found[name] = JaggedRows(rows, features.lengths()[p * batch : (p + 1) * batch])
        return JaggedEmbeddings(self.feature_names, [found[f] for f in self.feature_names])

    def _replicated(self, features: KeyedJagged, batch: int) -> dict[str, JaggedRows]:
        kjt, counts = self._gather_replicated(features, batch, False)
        result = self.replicas(kjt)
        world, nf = self.world_size, len(self._dp_features)
        flats, parts_of = [], [[] for _ in range(world)]
        base = 0
        for f, name in enumerate(self._dp_features):
            rows = result[name].values
            dim = rows.shape[1]
            flats.append(rows.reshape(-1))
            start = 0
            for s in range(world):
                n = counts[s][f]
                parts_of[s].append(
                    torch.arange(base + start * dim, base + (start + n) * dim, device=rows.device)
                )
                start += n
            base += rows.numel()
        full = torch.cat(flats) if flats else torch.zeros(0)
        parts = [torch.cat(p) if p else torch.zeros(0, dtype=torch.int64) for p in parts_of]
        mine = own_part(full, parts, self.group, self.rank, self.stats)
        index_of = {k: i for i, k in enumerate(features.keys())}
        out, offset = {}, 0
        for f, name in enumerate(self._dp_features):
            dim = self._configs[self._table_of[name]].embedding_dim
            n = counts[self.rank][f]
            p = index_of[name]
            out[name] = JaggedRows(
                mine[offset : offset + n * dim].view(n, dim),
                features.lengths()[p * batch : (p + 1) * batch],
            )
            offset += n * dim
        del nf
        return out


def shard(
    collection: EmbeddingBagCollection | EmbeddingCollection,
    plan: ShardingPlan,
    process_group: Any = None,
    *,
    timeout: datetime.timedelta | None = None,
) -> ShardedEmbeddingBagCollection | ShardedEmbeddingCollection:
    """The sharded twin of ``collection``: this rank's shards, copied from its weights.

    Every rank calls it with a collection holding the same weights (e.g. built from the same
    seed, or loaded from the same file); data-parallel replicas are broadcast from rank 0.
    The unsharded collection can be dropped afterwards.  To never hold whole tables, build a
    :class:`ShardedEmbeddingBagCollection` directly and load a checkpoint into it.

    Args:
        collection: an :class:`~embtable.EmbeddingBagCollection` or
            :class:`~embtable.EmbeddingCollection`.
        plan: the :class:`~embtable.distributed.ShardingPlan`.
        process_group: as for :class:`ShardedEmbeddingBagCollection`.
        timeout: as for :class:`ShardedEmbeddingBagCollection`.

    Raises:
        TypeError: ``collection`` is not an embtable collection.
        ValueError: as for :class:`ShardedEmbeddingBagCollection`.
    """
    if isinstance(collection, EmbeddingBagCollection):
        cls: type[_ShardedTables] = ShardedEmbeddingBagCollection
    elif isinstance(collection, EmbeddingCollection):
        cls = ShardedEmbeddingCollection
    else:
        raise TypeError(
            f"shard: expected an embtable EmbeddingBagCollection or EmbeddingCollection, got "
            f"{type(collection).__name__}"
        )
    device = collection.grouped_weights[0].device
    return cls(
        collection.tables,
        plan,
        process_group=process_group,
        device=device,
        timeout=timeout,
        is_weighted=bool(getattr(collection, "_is_weighted", False)),
        _source=collection,
    )


class _MaxCombine(torch.autograd.Function):
    """The maximum over row shards of their partial maxima (shards without ids in a bag left
    out; 0 for a bag without ids).  Backward gives each cell's gradient to the winning shard
    and NaN to the others: a shard's :class:`_ExactMax` then knows which of its local maxima
    won the bag (a zero gradient could not say so)."""

    @staticmethod
    def forward(ctx: Any, stacked: Tensor, present: Tensor) -> Tensor:  # type: ignore[override]
        mask = present.unsqueeze(2)
        masked = torch.where(mask, stacked, torch.full_like(stacked, float("-inf")))
        best, winner = masked.max(0)  # the first maximum: the lowest shard wins ties
        ctx.save_for_backward(winner)
        ctx.shape = stacked.shape
        return torch.where(mask.any(0), best, torch.zeros_like(best))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (winner,) = ctx.saved_tensors
        out = grad.new_full(ctx.shape, float("nan"))
        out.scatter_(0, winner.unsqueeze(0), grad.unsqueeze(0))
        return out, None


class _ExactMax(torch.autograd.Function):
    """Max pooling of a row shard whose backward updates only the rows that won their bag
    across all shards: cells whose gradient is NaN (lost to another shard, see
    :class:`_MaxCombine`) touch no row, so lazy rules (Adam, momentum) step exactly the rows
    one process would.  Fused weights are updated in place; others get a dense gradient."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, ids: Tensor, offsets: Tensor, pad: int) -> Tensor:  # type: ignore[override]
        out, max_ids = ops.pool_bags(weight.detach(), ids, offsets, None, ops.POOL_MAX, pad)
        ctx.save_for_backward(max_ids, offsets)
        ctx.weight = weight
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        max_ids, offsets = ctx.saved_tensors
        weight = ctx.weight
        valid = (max_ids >= 0) & ~torch.isnan(grad)
        winners = max_ids[valid]
        columns = torch.arange(grad.shape[1], device=grad.device).expand_as(max_ids)[valid]
        values = grad[valid]
        optimizer = getattr(weight, FUSED_ATTR, None)
        if optimizer is None:
            dense = torch.zeros_like(weight)
            dense.index_put_((winners, columns), values, accumulate=True)
            return dense, None, None, None
        rows, inverse = torch.unique(winners, sorted=True, return_inverse=True)
        row_grad = grad.new_zeros((rows.numel(), grad.shape[1]))
        row_grad.index_put_((inverse, columns), values, accumulate=True)
        optimizer.apply_update(weight, rows, offsets, row_grad, None, _POOL_NONE, -1, False)
        return None, None, None, None


def _sum(parts: list[Tensor]) -> Tensor:
    """The sum of row-wise partial results (no copy for one shard)."""
    if len(parts) == 1:
        return parts[0]
    total = parts[0] + parts[1]
    for part in parts[2:]:
        total = total + part
    return total


def _default_timeout() -> datetime.timedelta | None:
    """The default process group's timeout (``init_process_group(timeout=...)``), if readable."""
    try:
        device = torch.device("cuda" if dist.get_backend() == "nccl" else "cpu")
        return dist.GroupMember.WORLD._get_backend(device).options._timeout
    except (AttributeError, RuntimeError, ValueError):
        return None


def _cat(parts: list[Tensor], dtype: torch.dtype, device: torch.device) -> Tensor:
    if not parts:
        return torch.zeros(0, dtype=dtype, device=device)
    return torch.cat([p.to(device=device, dtype=dtype) for p in parts])
