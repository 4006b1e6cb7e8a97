r"""The pooled rows exchanged in feature chunks, so that a step's buffers are a chunk's size.

Without chunks (:meth:`ShardedEmbeddingBagCollection.forward`) a rank pools every bag of
its features at once (``[world x B, sum of its widths]``), sends and receives all rows in one
``all_to_all``, and in backward receives the whole gradient of those rows, copies it
feature-major for the fused update and updates every row: at the peak the result, the
received gradient and its feature-major copy are alive together (three tensors of the
size of the step's rows).  With ``memory_chunks = K`` every rank splits the features it
serves into ``K`` slices of about equal width (cut between tables) and runs, for chunk
``k = 0 .. K-1`` in turn: pool its slice, ``all_to_all`` the pooled rows, place the rows it
received into the result; backward, again per chunk: send the slice's gradient, receive it,
copy it feature-major and update the slice's rows.  Only the result (the caller's), the
ids and the buffers of two chunks are alive at once.

The fused update runs once per table per step as before: one
:meth:`~embtable.optim.FusedOptimizer.apply_update` of the grouped weight (one
``table_step``) whose kernel updates the chunks' rows one chunk after the other; the chunks
hold disjoint tables, hence disjoint rows, so every row gets the same update as in one
call.  A rank whose lookup cannot be split that way (tables not fused, per-value weights,
column shards, several buckets) pools its rows at once and only exchanges them in chunks
(the collectives are the same on every rank).

Every rank runs ``K`` ``all_to_all`` calls where one ran before, forward and backward; the
bytes are the same.  Each is started asynchronously one chunk ahead: forward pools chunk
``k + 1`` while chunk ``k``'s rows travel and places chunk ``k`` while chunk ``k + 1``'s
travel; backward updates chunk ``k`` while chunk ``k + 1``'s gradient travels.  So two
chunks' buffers are alive at a time, and the waits for the other ranks overlap work.

The result, the chunks' receive and send buffers and the feature-major copies come from the
module's workspace (:func:`~embtable.distributed._comm.kept_buffer`): one is reused from
step to step while nothing else holds its memory (a result the caller keeps is never written
over; a new one is made), so glibc's heap is not left with freed step buffers of many sizes
(its free memory between steps: 16-23 MB instead of 39-56 MB on the 1M-row benchmark).
:class:`~embtable.distributed._comm.CommStats` counts the time spent starting and waiting
(:func:`~embtable.distributed._comm.start_all_to_all`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from embtable import ops
from embtable.config import PoolingMode
from embtable.distributed._comm import CommStats, kept_buffer, start_all_to_all
from embtable.distributed.plan import ShardingType

__all__ = ["Chunking", "chunk_routes", "exchange_in_chunks"]


def chunk_routes(routes: list[Any], chunks: int) -> list[list[Any]]:
    """``routes`` (one rank's, in order) cut into ``chunks`` consecutive slices of about equal
    width (``shard.num_cols``), only between tables (a table's features stay in one slice);
    trailing slices may be empty.

    Example:
        >>> from types import SimpleNamespace as R
        >>> routes = [R(table=t, shard=R(num_cols=64)) for t in "aabcd"]
        >>> [[r.table for r in part] for part in chunk_routes(routes, 2)]
        [['a', 'a', 'b'], ['c', 'd']]
    """
    total = sum(r.shard.num_cols for r in routes)
    out: list[list[Any]] = [[] for _ in range(chunks)]
    k, width = 0, 0
    for route in routes:
        if (
            k < chunks - 1
            and out[k]
            and width >= total * (k + 1) / chunks
            and route.table != out[k][-1].table
        ):
            k += 1
        out[k].append(route)
        width += route.shard.num_cols
    return out


class Chunking(NamedTuple):
    """The static layout of the chunks (the same on every rank)."""

    routes: list[list[list[Any]]]  # [chunk][rank]: that rank's routes in the chunk
    widths: list[list[int]]  # [chunk][rank]: the width of that rank's rows in the chunk
    columns: list[int]  # [chunk]: where this rank's slice starts in its full rows


def make_chunking(all_routes: list[list[Any]], rank: int, chunks: int) -> Chunking:
    """Cut every rank's routes into ``chunks`` (:func:`chunk_routes`)."""
    per_rank = [chunk_routes(routes, chunks) for routes in all_routes]
    routes = [[per_rank[s][k] for s in range(len(all_routes))] for k in range(chunks)]
    widths = [[sum(r.shard.num_cols for r in part) for part in row] for row in routes]
    columns, start = [], 0
    for k in range(chunks):
        columns.append(start)
        start += widths[k][rank]
    return Chunking(routes, widths, columns)


class _Local(NamedTuple):
    """A rank's fused lookup split by chunk: the grouped weight, its bucket's ids and bag
    offsets (feature-major, ``bags`` per feature) and the features in each chunk."""

    weight: Tensor
    ids: Tensor
    offsets: Tensor
    pooling: int
    padding: int
    bags: int
    counts: list[int]  # features per chunk


def fused_local(module: Any, kjt: Any, chunking: Chunking, rank: int) -> _Local | None:
    """The chunked lookup of ``module.local`` on the received bags ``kjt``, or ``None`` where
    it does not apply (then the rows are pooled at once and only exchanged in chunks)."""
    from embtable.distributed._base import _column_inputs
    from embtable.functional import FUSED_ATTR

    local = module.local
    if local is None or module.local_max is not None or module.local_cols is not None:
        return None
    if len(local.plan.buckets) != 1 or (module._is_weighted and kjt.weights() is not None):
        return None
    bucket = local.plan.buckets[0]
    weight = local.grouped_weights[bucket.group]
    mine = [r.feature for k in range(len(chunking.routes)) for r in chunking.routes[k][rank]]
    if (
        tuple(bucket.features) != tuple(mine)
        or bucket.pooling not in (PoolingMode.SUM, PoolingMode.MEAN)
        or bucket.scale_grad_by_freq  # (the collection's forward counts per feature)
        or weight.shape[1] == 0
        or getattr(weight, FUSED_ATTR, None) is None
    ):
        return None
    # the received ids (int32 on an int32 wire) are shifted in place into the grouped
    # weight's rows: what is kept until backward's update is that buffer, not a copy
    inputs = _column_inputs(local, kjt.select(local.feature_names), in_place=True)
    if inputs is None or len(inputs) != 1 or inputs[0].per_sample_weights is not None:
        return None
    lookup = inputs[0]
    pooling = ops.POOL_SUM if bucket.pooling is PoolingMode.SUM else ops.POOL_MEAN
    pad = -1 if lookup.padding_idx is None else lookup.padding_idx
    counts = [len(chunking.routes[k][rank]) for k in range(len(chunking.routes))]
    ids = lookup.ids
    if ids.dtype == torch.int64 and weight.shape[0] <= torch.iinfo(torch.int32).max:
        # (an int64 wire: kept as int32 until backward; the kernels widen a chunk's slice)
        ids = ids.to(torch.int32)
    return _Local(weight, ids, lookup.offsets, pooling, pad, kjt.stride(), counts)


def _chunk_of(local: _Local, first: int, count: int) -> tuple[Tensor, Tensor]:
    """Ids and rebased offsets of features ``first .. first + count - 1``."""
    offsets = local.offsets[first * local.bags : (first + count) * local.bags + 1]
    start, end = int(offsets[0]), int(offsets[-1])
    return local.ids[start:end], offsets - start


class _Step(NamedTuple):
    """What one step's exchange needs besides its tensors."""

    chunking: Chunking
    batch: int
    world: int
    rank: int
    group: Any
    stats: CommStats | None
    local: _Local | None
    # per chunk, per source rank: (route, column in the source's block, target column, width)
    places: list[list[list[tuple[Any, int, int, int]]]]
    total: int  # sum D of the result
    divisors: dict[int, tuple[int, Tensor]]  # target column -> (width, bag id counts)
    placed: list[tuple[int, int]]  # (column, width) of each replica
    first: set[tuple[int, int, int]]  # (chunk, source, index): the part that is copied, not added
    kept: dict[str, Any] | None  # the module's workspace (:func:`~._comm.kept_buffer`)


def _places(module: Any, chunking: Chunking, extra: dict[str, Any]) -> tuple[Any, ...]:
    dst_of, at = {}, 0
    for name, dim in zip(module.feature_names, module.embedding_dims):
        dst_of[name] = at
        at += dim
    places, first, seen = [], set(), set()
    divisors: dict[int, tuple[int, Tensor]] = {}
    for k, per_rank in enumerate(chunking.routes):
        row = []
        for s, routes in enumerate(per_rank):
            col, items = 0, []
            for i, route in enumerate(routes):
                table = route.table
                dst, width = dst_of[route.feature], route.shard.num_cols
                if route.kind is ShardingType.COLUMN_WISE:
                    dst += route.shard.col_offset
                if dst not in seen:
                    seen.add(dst)
                    first.add((k, s, i))
                if (
                    route.kind is ShardingType.ROW_WISE
                    and module._configs[table].pooling is PoolingMode.MEAN
                    and dst not in divisors
                ):
                    counts = extra[route.feature][0]  # [shards, B] non-padding ids per bag
                    divisors[dst] = (width, counts.sum(0).clamp(min=1).unsqueeze(1))
                items.append((route, col, dst, width))
                col += width
            row.append(items)
        places.append(row)
    return places, at, divisors, first


def exchange_in_chunks(
    module: Any,
    batch: int,
    chunks: int,
    looked: list[Any],
    replicas: dict[str, Tensor],
    anchor: Tensor | None,
    extra: dict[str, Any],
) -> Tensor:
    """The ``[B, sum D]`` result of :meth:`ShardedEmbeddingBagCollection.forward`, its rows
    exchanged chunk by chunk (see the module docstring).  ``looked``: ``[kjt, columns,
    whole]`` of the forward, handed over (emptied here, so that the received bags are freed
    once they are no longer needed)."""
    kjt, columns, whole = looked
    looked.clear()
    chunking = module._chunking(chunks)
    rank, world = module.rank, module.world_size
    local = fused_local(module, kjt, chunking, rank) if kjt is not None and whole is None else None
    if local is not None:
        rows = local.weight
    elif whole is not None:
        rows = whole
    elif kjt is not None:
        rows = module._lookup(kjt, columns)
    else:  # (nothing to pool here: still part of every exchange, forward and backward)
        rows = torch.zeros((world * batch, 0), device=module._device(), requires_grad=True)
    del kjt, columns, whole
    places, total, divisors, first = _places(module, chunking, extra)
    placed, extras, at = [], [], 0
    for name, dim in zip(module.feature_names, module.embedding_dims):
        if name in replicas:
            placed.append((at, dim))
            extras.append(replicas[name])
        at += dim
    step = _Step(
        chunking, batch, world, rank, module.group, module.stats, local, places, total,
        divisors, placed, first, getattr(module, "_kept", None),
    )
    if anchor is None:
        anchor = torch.zeros(0, device=rows.device)
    return _ChunkedRows.apply(step, rows, anchor, *extras)


def _start(
    send: Tensor, out_splits: list[int], in_splits: list[int], step: _Step, kind: str
) -> Callable[[], Tensor]:
    """Start an ``all_to_all_single`` of the flat ``send`` into the workspace's receive
    buffer; returns the call that waits for it and returns what was received."""
    out = kept_buffer(step.kept, "chunk_received", send, (sum(out_splits),))
    return start_all_to_all(out, send, out_splits, in_splits, step.group, step.rank, step.stats, kind)


class _ChunkedRows(torch.autograd.Function):
    """``rows``: the grouped weight of a chunked fused lookup (its backward updates it and
    returns no gradient), or the rank's pooled rows ``[world x B, width]``; ``anchor``: an
    empty tensor whose producer's backward runs after this one's (it gets an empty
    gradient); then the replicas' pooled ``[B, D]``, placed as they are."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, step: _Step, rows: Tensor, anchor: Tensor, *replicas: Tensor
    ) -> Tensor:
        if step.local is not None:  # (saved tensors: freed after backward, as autograd's own)
            ctx.save_for_backward(step.local.ids, step.local.offsets)
            ctx.step = step._replace(local=step.local._replace(ids=None, offsets=None))
        else:
            ctx.step = step
        ctx.rows_shape = rows.shape
        batch, world, rank = step.batch, step.world, step.rank
        out = kept_buffer(step.kept, "chunk_result", rows, (batch, step.total))
        local = step.local
        chunks = len(step.chunking.widths)
        firsts = [0]
        for k in range(chunks):
            firsts.append(firsts[-1] + (local.counts[k] if local is not None else 0))

        def pooled(k: int) -> Tensor:
            """Chunk ``k`` of this rank's rows for every rank's bags, flat."""
            mine = step.chunking.widths[k][rank]
            if local is not None:
                count = local.counts[k]
                if not count:
                    return rows.new_empty(0)
                ids, offsets = _chunk_of(local, firsts[k], count)
                return ops.pool_bags_grouped(
                    local.weight.detach(), ids, offsets, None, local.pooling, local.padding, count
                ).reshape(-1)
            start = step.chunking.columns[k]
            return rows.detach()[:, start : start + mine].contiguous().reshape(-1)

        def sent(k: int, send: Tensor) -> Callable[[], Tensor]:
            widths = step.chunking.widths[k]
            return _start(
                send, [batch * w for w in widths], [batch * widths[rank]] * world, step, "rows"
            )

        # chunk k + 1 is pooled while chunk k's rows travel, and sent while they are placed
        pending = sent(0, pooled(0))
        for k, widths in enumerate(step.chunking.widths):
            ahead = pooled(k + 1) if k + 1 < chunks else None
            back = pending()
            pending = sent(k + 1, ahead) if ahead is not None else None
            del ahead
            offset = 0
            for s, items in enumerate(step.places[k]):
                block = back[offset : offset + batch * widths[s]].view(batch, widths[s])
                offset += batch * widths[s]
                for i, (_, col, dst, width) in enumerate(items):
                    target = out[:, dst : dst + width]
                    if (k, s, i) in step.first:
                        target.copy_(block[:, col : col + width])
                    else:  # a row-wise table's next partial sum
                        target.add_(block[:, col : col + width])
                del block
            del back  # (before the next chunk's buffers are made)
        for dst, (width, counts) in step.divisors.items():
            out[:, dst : dst + width].div_(counts.to(out.dtype))
        for (dst, width), tensor in zip(step.placed, replicas):
            out[:, dst : dst + width].copy_(tensor)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        step = ctx.step
        if step.local is not None:
            ids, offsets = ctx.saved_tensors
            step = step._replace(local=step.local._replace(ids=ids, offsets=offsets))
            del ids, offsets
        batch, world, rank = step.batch, step.world, step.rank
        local = step.local
        scaled = {
            dst: grad[:, dst : dst + width] / counts.to(grad.dtype)
            for dst, (width, counts) in step.divisors.items()
        }

        def sent(k: int) -> Callable[[], Tensor]:
            """Start chunk ``k``'s exchange: the gradient of every rank's rows in the chunk."""
            widths = step.chunking.widths[k]
            send = kept_buffer(step.kept, "chunk_sent", grad, (batch * sum(widths),))
            offset = 0
            for s, items in enumerate(step.places[k]):
                block = send[offset : offset + batch * widths[s]].view(batch, widths[s])
                offset += batch * widths[s]
                for _, col, dst, width in items:
                    source = scaled[dst] if dst in scaled else grad[:, dst : dst + width]
                    block[:, col : col + width].copy_(source)
                del block
            return _start(
                send, [batch * widths[rank]] * world, [batch * w for w in widths], step,
                "rows_grad",
            )

        def received() -> Any:
            """Chunk after chunk, a one-item list holding this rank's rows' gradient
            ``[world x B, width]`` (taken out by the caller, so that it is freed once used);
            the next chunk's exchange is started before the caller uses this one."""
            chunks = len(step.chunking.widths)
            pending = sent(0)
            for k in range(chunks):
                width = step.chunking.widths[k][rank]
                box = [pending().view(world * batch, width)]
                pending = sent(k + 1) if k + 1 < chunks else None
                yield box

        rows_grad = None
        if local is not None:
            from embtable.optim.fused import fused_optimizer_of

            def update(weight: Tensor, state: Any, *args: Any) -> None:
                """The fused kernel, chunk by chunk (``args``: the whole lookup's, unused
                but for the rule's code and hyperparameters)."""
                code, hparams = args[-2], args[-1]
                feature = 0
                for k, box in enumerate(received()):
                    rows = box.pop()
                    count = local.counts[k]
                    if count:
                        dim = rows.shape[1] // count
                        major = kept_buffer(step.kept, "chunk_major", rows, (rows.numel(),))
                        major = major.view(count, -1, dim)
                        major.copy_(rows.view(-1, count, dim).transpose(0, 1))
                        major = major.view(-1, dim)
                        rows = None
                        ids, offsets = _chunk_of(local, feature, count)
                        ops.fused_update_rows(
                            weight, state, ids, offsets, major, None, local.pooling,
                            local.padding, False, code, hparams,
                        )
                        del major
                    del rows
                    feature += count

            fused_optimizer_of(local.weight).apply_update(
                local.weight, local.ids, local.offsets, grad, None, local.pooling,
                local.padding, False, kernel=update,
            )
        else:
            rows_grad = grad.new_empty(ctx.rows_shape)
            for k, box in enumerate(received()):
                start = step.chunking.columns[k]
                part = box.pop()
                rows_grad[:, start : start + part.shape[1]] = part
                del part
            if not ctx.needs_input_grad[1]:
                rows_grad = None
        anchor = torch.zeros(0, device=grad.device) if ctx.needs_input_grad[2] else None
        others = [
            grad[:, dst : dst + width] if ctx.needs_input_grad[3 + i] else None
            for i, (dst, width) in enumerate(step.placed)
        ]
        return (None, rows_grad, anchor, *others)
