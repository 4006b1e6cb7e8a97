r"""Sharded collections: each rank holds only its shards and looks up its local batch.

A forward pass of :class:`ShardedEmbeddingBagCollection` on every rank (each with its own
local batch of ``B`` examples):

1. **agree** -- one ``all_to_all`` of 7 integers per rank and destination: batch size,
   weights present, the first bad input found locally (missing feature, id outside its
   table, weights on a mean / max table), the number of ids it will send that destination
   and whether they need int64.  If any rank's batch is bad, every rank raises the same
   error naming that rank, feature and id, before anything is exchanged or updated;
2. **route ids** -- each feature's ids go to the ranks that hold its table: all of them to
   the owner (table-wise), to every column shard (column-wise), or each id to the rank
   owning its row, shifted to the shard's local row (row-wise); one ``all_to_all_single``
   of the bag lengths and ids (int32 unless some rank needs int64; per-value weights take a
   second);
3. **look up** -- each rank pools the received bags of all ranks (``world x B`` bags per
   feature: the global batch) with an ordinary :class:`~embtable.EmbeddingBagCollection` of
   its shards (the compiled kernels, fused optimizers);
4. **return rows** -- the pooled rows go back (``all_to_all_single``); the requesting rank
   concatenates column shards, adds row-wise partial sums (dividing by the bag's id count
   for mean pooling; taking the maximum of the non-empty partial maxima for max pooling);
5. **data-parallel tables** -- each replica pools this rank's own bags (nothing is sent).

Backward runs the same way in reverse: the gradients of the pooled rows go to the shard
owners (one ``all_to_all_single``), whose fused optimizers update their rows inside
backward exactly as an unsharded collection does on the global batch (every id of a row
reaches that row's owner, so per-row counts and optimizer steps are the global ones).
Column shards agree on their per-row statistics, and data-parallel replicas all-reduce
their gradients, in one autograd node after that exchange (:mod:`._synced`).

:class:`ShardedEmbeddingCollection` does the same without pooling (each id's row comes back).

The pieces live in modules of one job each: the layout and local collections
(:mod:`._base`), the agreement (:mod:`._agree`), the id exchange (:mod:`._exchange`),
row-wise max pooling (:mod:`._maxpool`), column shards and replicas (:mod:`._synced`) and
the collectives (:mod:`._comm`); this module holds the two public collections and
:func:`shard`.
"""

from __future__ import annotations

import datetime
from typing import Any

import torch
from torch import Tensor

from embtable.config import PoolingMode
from embtable.distributed._base import ShardedTables
from embtable.distributed._chunked import Chunking, exchange_in_chunks, make_chunking
from embtable.distributed._comm import differentiable_all_to_all, exchange_even_columns
from embtable.distributed._maxpool import ExactMax, MaxCombine, sum_parts
from embtable.distributed.errors import ShardedError, ShardedIndexError, ShardedValueError
from embtable.distributed.plan import ShardingPlan, ShardingType
from embtable.jagged import KeyedJagged
from embtable.nn.collection import EmbeddingBagCollection, EmbeddingCollection
from embtable.nn.outputs import JaggedEmbeddings, JaggedRows, PooledEmbeddings

__all__ = [
    "ShardedEmbeddingBagCollection",
    "ShardedEmbeddingCollection",
    "ShardedError",
    "ShardedIndexError",
    "ShardedValueError",
    "shard",
]

_ShardedTables = ShardedTables  # (the name checkpoint.py and older callers import)

#: Bytes of the ``[B, sum D]`` result per chunk when ``memory_chunks`` is ``None``.
CHUNK_BYTES = 1 << 20
#: The most chunks chosen by ``memory_chunks=None`` (10: the 1M-row benchmark's peak per rank
#: stays within 1.1x its shards on every rank, at some samples/s against 8; see
#: docs/distributed.md, "Memory per rank").
MAX_CHUNKS = 10


class ShardedEmbeddingBagCollection(ShardedTables):
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
        exact_columns: column shards agree on per-row statistics (row-wise Adagrad's squared
            gradient, int8_rowwise scales, max pooling's touched rows) so that training equals
            one process (default).  ``False``: each column shard keeps its own per-row state
            and updates on its own, as TorchRec does (faster; not equal to one process for
            those rules and max pooling).

    Attributes:
        local: the :class:`~embtable.EmbeddingBagCollection` of this rank's table-wise and
            row-wise shards (``None`` if it holds none); fuse it (or the whole model) with
            :func:`embtable.optim.fuse`.
        local_max: the row-wise max-pooled shards (``None`` if none; see ``_maxpool``).
        local_cols: a ``ModuleList`` of the column shards held here, one collection per
            layout (tables split into the same columns on the same ranks; a table with a
            ``padding_idx`` alone), ``None`` if none; their updates agree with the other
            shards: ``_synced``.
        replicas: the collection of data-parallel tables (``None`` if none): each rank pools
            its own bags; the gradients are all-reduced.
        stats: bytes sent and seconds spent per exchange kind (:class:`CommStats`).
        memory_chunks: how many chunks of features a step's pooled rows are exchanged in
            (and, for a fused table-/row-wise lookup, pooled and updated in), one after the
            other, so that one chunk's buffers are alive at a time
            (:mod:`embtable.distributed._chunked`; same results, more ``all_to_all`` calls of
            the same total bytes).  ``None`` (default): one chunk per :data:`CHUNK_BYTES`
            (1 MiB) of this rank's ``[B, sum D]`` result, at most :data:`MAX_CHUNKS`; set the
            same value on every rank.  Plans with row-wise max tables or only even column
            shards exchange their rows at once.

    Raises:
        ValueError: torch.distributed not initialized, a plan for another world size or
            other tables, bad configs.
    """

    _pooled = True
    _collection = EmbeddingBagCollection
    memory_chunks: int | None = None

    def forward(self, features: KeyedJagged) -> PooledEmbeddings:
        """Pool this rank's local batch; returns ``[B, D_f]`` per feature, like the unsharded module."""
        batch, weighted, split = self._agree(features)  # (and the split of the batch)
        chunks = self._chunks_for(batch)
        kjt, counts = self._exchange_ids(split, batch, weighted)
        del split["pieces"]  # (sent: the routed ids are no longer needed)
        columns, replicas, anchor, whole = self._synced_lookup(kjt, features)
        if chunks > 1 and not self._exact_max and not self._even_columns():
            looked = [kjt, columns, whole]
            del kjt, columns, whole  # (handed over: freed there once pooled)
            values = exchange_in_chunks(
                self, batch, chunks, looked, replicas, anchor, split["extra"]
            )
            views = list(values.split(self.embedding_dims, 1))
            return PooledEmbeddings(self.feature_names, views, values=values)
        world = self.world_size
        widths = [sum(r.shard.num_cols for r in routes) for routes in self.routes]
        if whole is not None:  # (column shards pooled straight into the rows to send)
            send = whole.reshape(-1)
        elif kjt is not None:
            # [world * B, sum of local widths], flat: freed once sent (nothing else holds it)
            send = self._lookup(kjt, columns).reshape(-1)
        else:
            send = torch.zeros(0, device=self._device(), requires_grad=True)
        del kjt, columns, whole  # (``send`` is then the only holder of the rows to send)
        mine = widths[self.rank]
        even = self._even_columns()
        if even:  # every feature split in d columns over ranks 0..W-1: received into place
            shape = (world, batch, len(self.feature_names), even)
            values = exchange_even_columns(
                send, shape, self.group, self.rank, self.stats, "rows", anchor, self._kept
            )
            del send
            views = list(values.split(self.embedding_dims, 1))
            return PooledEmbeddings(self.feature_names, views, values=values)
        back = differentiable_all_to_all(
            send,
            [batch * w for w in widths],
            [batch * mine] * world,
            self.group,
            self.rank,
            self.stats,
            "rows",
            after=anchor,
        )
        del send
        extra = split["extra"]
        del split
        if self._exact_max:  # (row-wise max tables: their parts are combined by MaxCombine)
            values = self._combined(back, batch, widths, extra, replicas)
        else:
            layout, extras = self._layout(batch, widths, extra, replicas)
            values = _Assemble.apply(back, layout, *extras)
        del back
        views = list(values.split(self.embedding_dims, 1))
        return PooledEmbeddings(self.feature_names, views, values=values)

    def _layout(
        self, batch: int, widths: list[int], extra: dict[str, Any], replicas: dict[str, Tensor]
    ) -> tuple[tuple[Any, ...], list[Tensor]]:
        """Where each feature's columns of the ``[B, sum D]`` result come from, for
        :class:`_Assemble`: ``(batch, sum D, blocks, slots, placed)`` and the tensors placed
        as they are (replicas).  ``blocks``: per source rank, the offset and width of its
        ``[B, w]`` block of the received rows; ``slots``: ``(column, width, parts, divisor)``
        with ``parts`` the ``(source, column)`` of each shard's partial result (several:
        row-wise partial sums) and ``divisor`` the bag's id count (row-wise mean) or ``None``;
        ``placed``: ``(column, width)`` of each tensor placed as it is."""
        blocks, offset = [], 0
        where: dict[tuple[str, int], tuple[int, int]] = {}
        for s, routes in enumerate(self.routes):
            blocks.append((offset, widths[s]))
            offset += batch * widths[s]
            col = 0
            for route in routes:
                where[(route.feature, route.index)] = (s, col)
                col += route.shard.num_cols
        slots: list[tuple[int, int, tuple[tuple[int, int], ...], Tensor | None]] = []
        placed: list[tuple[int, int]] = []
        extras: list[Tensor] = []
        dst = 0
        for name, dim in zip(self.feature_names, self.embedding_dims):
            if name in replicas:
                placed.append((dst, dim))
                extras.append(replicas[name])
                dst += dim
                continue
            table = self._table_of[name]
            shards = self._shards[table]
            if self._kind[table] is ShardingType.COLUMN_WISE:
                for k, shard in enumerate(shards):
                    part = (where[(name, k)],)
                    slots.append((dst + shard.col_offset, shard.num_cols, part, None))
            else:
                parts = tuple(where[(name, k)] for k in range(len(shards)))
                divisor = None
                if (
                    self._kind[table] is ShardingType.ROW_WISE
                    and self._configs[table].pooling is PoolingMode.MEAN
                ):
                    counts = extra[name][0]  # [shards, B] non-padding ids per bag per shard
                    divisor = counts.sum(0).clamp(min=1).to(self._dtype_of(table)).unsqueeze(1)
                slots.append((dst, dim, parts, divisor))
            dst += dim
        return (batch, dst, blocks, slots, placed), extras

    def _dtype_of(self, table: str) -> torch.dtype:
        return self._configs[table].dtype

    def _combined(
        self,
        back: Tensor,
        batch: int,
        widths: list[int],
        extra: dict[str, Any],
        replicas: dict[str, Tensor],
    ) -> Tensor:
        """The ``[B, sum D]`` result from views of the received rows (plans with row-wise
        max tables, whose parts :class:`MaxCombine` combines)."""
        # split (not slicing): backward then assembles the gradient with one concatenation
        partial: dict[tuple[str, int], Tensor] = {}
        blocks = back.split([batch * w for w in widths])
        for s, routes in enumerate(self.routes):
            if not routes:
                continue
            columns = blocks[s].view(batch, widths[s]).split([r.shard.num_cols for r in routes], 1)
            for route, part in zip(routes, columns):
                partial[(route.feature, route.index)] = part
        tensors: list[Tensor] = []
        for name in self.feature_names:
            if name in replicas:
                tensors.append(replicas[name])
                continue
            table = self._table_of[name]
            parts = [partial[(name, k)] for k in range(len(self._shards[table]))]
            if self._kind[table] is ShardingType.COLUMN_WISE:
                tensors += parts
                continue
            tensors.append(self._combine(table, parts, extra.get(name)))
        return torch.cat(tensors, 1) if len(tensors) > 1 else tensors[0]

    def _chunks_for(self, batch: int) -> int:
        """How many chunks a step of ``batch`` examples exchanges its rows in (the same on
        every rank): :attr:`memory_chunks`, or with ``None`` one per
        :data:`CHUNK_BYTES` of the ``[B, sum D]`` result, at most :data:`MAX_CHUNKS`."""
        if self.memory_chunks is not None:
            chunks = self.memory_chunks
            if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 1:
                raise ShardedValueError(
                    f"{type(self).__name__}: memory_chunks must be None or an int >= 1, got "
                    f"{chunks!r}"
                )
            return chunks
        size = batch * sum(self.embedding_dims) * self._row_bytes()
        return max(1, min(MAX_CHUNKS, round(size / CHUNK_BYTES)))

    def _row_bytes(self) -> int:
        return max(torch.empty(0, dtype=c.dtype).element_size() for c in self.tables)

    def _chunking(self, chunks: int) -> Chunking:
        """The features each rank serves, cut into ``chunks`` slices (cached)."""
        found = self.__dict__.get("_chunks")
        if found is None or found[0] != chunks:
            found = (chunks, make_chunking(self.routes, self.rank, chunks))
            self.__dict__["_chunks"] = found
        return found[1]

    def _even_columns(self) -> int:
        """``d`` when every feature's table is column-wise in ``d`` columns on each of ranks
        ``0 .. W-1`` in order (rank ``s`` then sends its block ``[B, F * d]`` of every
        feature's columns ``s d .. (s + 1) d``), else ``0``."""
        found = self.__dict__.get("_even")
        if found is None:
            found = 0
            widths = {
                s.num_cols
                for table in self._table_of.values()
                for s in self._shards[table]
            }
            tables = set(self._table_of.values())
            if len(widths) == 1 and all(
                self._kind[t] is ShardingType.COLUMN_WISE
                and [s.rank for s in self._shards[t]] == list(range(self.world_size))
                for t in tables
            ) and all(
                [r.feature for r in routes] == self.feature_names for routes in self.routes
            ):
                found = widths.pop()
            self.__dict__["_even"] = found
        return found

    def _combine(self, table: str, parts: list[Tensor], extra: Any) -> Tensor:
        """A table-wise or row-wise feature's pooled ``[B, D]`` from its shards' ``parts``
        (column shards go into the result as they are: :meth:`forward`)."""
        if self._kind[table] is ShardingType.TABLE_WISE:
            return parts[0]
        pooling = self._configs[table].pooling
        counts = extra[0]  # [shards, B] non-padding ids per bag per shard
        if pooling is PoolingMode.SUM:
            return sum_parts(parts)
        if pooling is PoolingMode.MEAN:
            total = counts.sum(0).clamp(min=1).to(parts[0].dtype).unsqueeze(1)
            return sum_parts(parts) / total
        return MaxCombine.apply(torch.stack(parts), counts > 0)

    def _lookup(self, kjt: KeyedJagged, columns: dict[str, Tensor]) -> Tensor:
        """Pool the received bags of every local feature: ``[world * B, sum of local widths]``
        in the order of this rank's routes (``columns``: the column shards' pooled bags)."""
        if self.local_max is None and not columns:
            return self.local(kjt).values()
        pooled: dict[str, Tensor] = dict(columns)
        if self.local is not None:
            main = self.local(kjt.select(self.local.feature_names))
            pooled.update((f, main[f]) for f in main.keys())
        if self.local_max is not None:
            pooled.update(self._exact_max_lookup(kjt))
        return torch.cat([pooled[r.feature] for r in self.routes[self.rank]], 1)

    def _exact_max_lookup(self, kjt: KeyedJagged) -> dict[str, Tensor]:
        sub = kjt.select(self.local_max.feature_names)
        bags = sub.stride()
        pooled: dict[str, Tensor] = {}
        for bucket, lookup in zip(self.local_max.plan.buckets, self.local_max.bucket_inputs(sub)):
            weight = self.local_max.grouped_weights[bucket.group]
            pad = -1 if lookup.padding_idx is None else lookup.padding_idx
            out = ExactMax.apply(weight, lookup.ids, lookup.offsets, pad)
            per_feature = out.view(len(bucket.features), bags, out.shape[1]).unbind(0)
            pooled.update(zip(bucket.features, per_feature))
        return pooled


class ShardedEmbeddingCollection(ShardedTables):
    r"""An :class:`~embtable.EmbeddingCollection` sharded over the ranks of a process group.

    As :class:`ShardedEmbeddingBagCollection`, without pooling: each id's row (or its column
    shards) comes back to the rank that asked for it.  Same arguments.
    """

    _pooled = False
    _collection = EmbeddingCollection

    def forward(self, features: KeyedJagged) -> JaggedEmbeddings:
        """Look up every id of this rank's local batch; per feature ``[N_f, D_f]`` rows and lengths."""
        batch, _, split = self._agree(features)
        kjt, counts = self._exchange_ids(split, batch, False)
        columns, replicas, anchor, _ = self._synced_lookup(kjt, features)
        world = self.world_size
        mine = self.routes[self.rank]
        sent = self._sent_counts(split)
        out_sizes = [
            sum(n * r.shard.num_cols for n, r in zip(sent[d], self.routes[d])) for d in range(world)
        ]
        if kjt is not None:
            looked = dict(columns)
            if self.local is not None:
                result = self.local(kjt.select(self.local.feature_names))
                looked.update((f, result[f].values) for f in result.keys())
            blocks: list[list[Tensor]] = [[] for _ in range(world)]
            for f, route in enumerate(mine):
                rows = looked[route.feature].split([counts[s][f] for s in range(world)])
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
            send, out_sizes, in_sizes, self.group, self.rank, self.stats, "rows", after=anchor
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
        index_of = {k: i for i, k in enumerate(features.keys())}
        found: dict[str, JaggedRows] = {
            name: JaggedRows(rows, features.lengths()[index_of[name] * batch :][:batch])
            for name, rows in replicas.items()
        }
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


class _Assemble(torch.autograd.Function):
    """The ``[B, sum D]`` result from the received rows in one copy (see
    :meth:`ShardedEmbeddingBagCollection._layout`); backward writes the gradient of the
    received rows straight into the one buffer sent back (no per-block concatenations, and
    an expanded gradient, e.g. of ``values().sum()``, is read without being materialized).
    The received rows are not saved: they are freed once the result is built."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, back: Tensor, layout: tuple[Any, ...], *placed_tensors: Tensor
    ) -> Tensor:
        batch, total, blocks, slots, placed = layout
        ctx.layout = layout
        ctx.numel = back.numel()
        out = back.new_empty((batch, total))
        views = [back[o : o + batch * w].view(batch, w) for o, w in blocks]
        for dst, width, parts, divisor in slots:
            target = out[:, dst : dst + width]
            pieces = [views[s][:, c : c + width] for s, c in parts]
            if len(pieces) == 1:
                target.copy_(pieces[0])
            else:  # row-wise partial sums, in shard order (as sum_parts)
                torch.add(pieces[0], pieces[1], out=target)
                for piece in pieces[2:]:
                    target.add_(piece)
            if divisor is not None:
                target.div_(divisor)
        for (dst, width), tensor in zip(placed, placed_tensors):
            out[:, dst : dst + width].copy_(tensor)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        batch, _, blocks, slots, placed = ctx.layout
        back = None
        if ctx.needs_input_grad[0]:
            back = grad.new_empty(ctx.numel)  # (every column of every block is one slot's part)
            views = [back[o : o + batch * w].view(batch, w) for o, w in blocks]
            for dst, width, parts, divisor in slots:
                source = grad[:, dst : dst + width]
                if divisor is not None:
                    source = source / divisor
                for s, c in parts:
                    views[s][:, c : c + width].copy_(source)
        others = [
            grad[:, dst : dst + width] if ctx.needs_input_grad[2 + i] else None
            for i, (dst, width) in enumerate(placed)
        ]
        return (back, None, *others)


def shard(
    collection: EmbeddingBagCollection | EmbeddingCollection,
    plan: ShardingPlan,
    process_group: Any = None,
    *,
    timeout: datetime.timedelta | None = None,
    exact_columns: bool = True,
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
        exact_columns: as for :class:`ShardedEmbeddingBagCollection`.

    Raises:
        TypeError: ``collection`` is not an embtable collection.
        ValueError: as for :class:`ShardedEmbeddingBagCollection`.
    """
    if isinstance(collection, EmbeddingBagCollection):
        cls: type[ShardedTables] = ShardedEmbeddingBagCollection
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
        exact_columns=exact_columns,
        _source=collection,
    )
