"""Collectives of the sharded collections: an autograd ``all_to_all_single`` and byte counts.

Every exchange goes through :func:`all_to_all` or :func:`all_reduce`, which count the bytes
a rank sends to other ranks (its own block of an all_to_all is not sent; an all_reduce of
``n`` bytes over ``p`` ranks counts ``2 n (p - 1) / p``, a ring's share) and the time spent in
the collective, per kind (``"ids"``, ``"rows"``, ``"rows_grad"``, ...), in a :class:`CommStats`.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "CommStats",
    "all_reduce",
    "all_to_all",
    "differentiable_all_to_all",
    "exchange_even_columns",
    "kept_buffer",
    "start_all_reduce",
    "start_all_to_all",
]


@dataclass
class CommStats:
    """Bytes sent to other ranks and seconds spent in collectives, per kind, since the last reset."""

    bytes_sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: int = 0

    def reset(self) -> None:
        """Zero every counter."""
        self.bytes_sent.clear()
        self.seconds.clear()
        self.calls = 0

    def record(self, kind: str, nbytes: int, start: float) -> None:
        """Count one collective of ``kind`` that sent ``nbytes`` and began at ``start``
        (``time.perf_counter()``)."""
        self.bytes_sent[kind] += nbytes
        self.seconds[kind] += time.perf_counter() - start
        self.calls += 1

    def total_bytes(self) -> int:
        """All bytes sent since the last reset."""
        return sum(self.bytes_sent.values())

    def total_seconds(self) -> float:
        """All seconds spent in collectives since the last reset."""
        return sum(self.seconds.values())


def all_to_all(
    x: Tensor,
    out_splits: list[int],
    in_splits: list[int],
    group: Any,
    rank: int,
    stats: CommStats | None,
    kind: str,
) -> Tensor:
    """``all_to_all_single`` of the first dimension of ``x`` (block ``d`` of ``x`` goes to rank
    ``d``), received into a new tensor."""
    out = x.new_empty((sum(out_splits),) + tuple(x.shape[1:]))
    start = time.perf_counter()
    dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
    if stats is not None:
        row = x[0].numel() * x.element_size() if x.dim() > 1 else x.element_size()
        stats.record(kind, (sum(in_splits) - in_splits[rank]) * row, start)
    return out


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        out_splits: list[int],
        in_splits: list[int],
        group: Any,
        rank: int,
        stats: CommStats | None,
        kind: str,
        after: Tensor | None,
    ) -> Tensor:
        ctx.meta = (out_splits, in_splits, group, rank, stats, kind)
        return all_to_all(x, out_splits, in_splits, group, rank, stats, kind)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        out_splits, in_splits, group, rank, stats, kind = ctx.meta
        back = all_to_all(
            grad.contiguous(), in_splits, out_splits, group, rank, stats, kind + "_grad"
        )
        after = torch.zeros(0, device=grad.device) if ctx.needs_input_grad[7] else None
        return (back,) + (None,) * 6 + (after,)


def differentiable_all_to_all(
    x: Tensor,
    out_splits: list[int],
    in_splits: list[int],
    group: Any,
    rank: int,
    stats: CommStats | None,
    kind: str,
    after: Tensor | None = None,
) -> Tensor:
    """:func:`all_to_all` whose backward sends the gradient back the same way (reverse splits).

    ``after``: an empty tensor whose producer's backward must run after this backward (it
    gets an empty gradient from it): the same order of collectives on every rank.
    """
    return _AllToAll.apply(x, out_splits, in_splits, group, rank, stats, kind, after)


_use_count = getattr(torch._C, "_storage_Use_Count", None)  # (tensors sharing a storage)


def kept_buffer(
    kept: dict[str, Any] | None, name: str, like: Tensor, shape: tuple[int, ...]
) -> Tensor:
    """A buffer of ``shape`` for one role (``name``), taken from and left in ``kept`` (the
    module's workspace; ``None``: a new one each call). Up to two are kept per role (a
    caller that keeps each result until the next step's returns gets them in turn); one is
    reused only while nothing else holds its memory (e.g. a result, or views of it, that a
    caller kept), else a new one is made. 1-D buffers: a slice of a kept one at least as
    long (grown by a quarter when none is).

    Keeping the step's large buffers keeps glibc from giving their pages back at the end of
    a step and faulting them in again in the next, when the caller drops each result."""
    if kept is None or _use_count is None:  # (no way to tell a free buffer: never reuse)
        return like.new_empty(shape)
    flat = len(shape) == 1
    pool = kept.setdefault(name, [])
    for found in pool:
        if not (
            (found.numel() >= shape[0] if flat else found.shape == shape)
            and found.dtype == like.dtype
            and found.device == like.device
        ):
            continue
        storage = found.untyped_storage()
        # nothing else holds its memory: 2 references to the storage (``found`` and ``storage``)
        # and no other holder of its Python object (``storage``, the argument, torch's own)
        if _use_count(storage._cdata) == 2 and sys.getrefcount(storage) <= 3:
            return _alias(found, shape, flat)
    found = like.new_empty((shape[0] + shape[0] // 4,) if flat else shape).detach()
    if len(pool) == 2:
        pool.pop(0)
    pool.append(found)
    return _alias(found, shape, flat)


def _alias(found: Tensor, shape: tuple[int, ...], flat: bool) -> Tensor:
    """A new tensor on ``found``'s memory, never ``found`` itself: whoever holds it (a caller,
    a tensor autograd saved, a DLPack capsule) then holds the storage too, which
    :func:`kept_buffer`'s count sees. Detached, so not a view: an autograd Function may
    return it as its output and the caller may still modify that in place."""
    return (found[: shape[0]] if flat else found).detach()


class _EvenColumns(torch.autograd.Function):
    """:func:`exchange_even_columns` (forward and backward)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        shape: tuple[int, int, int, int],
        group: Any,
        rank: int,
        stats: CommStats | None,
        kind: str,
        after: Tensor | None,
        kept: dict[str, Any] | None,
    ) -> Tensor:
        world, batch, features, width = shape
        ctx.meta = (shape, group, rank, stats, kind, kept)
        blocks = x.view(world, batch, features, width)
        rows = _others(rank, world)
        count = rows.stop - rows.start
        received = kept_buffer(kept, "full", x, (count, batch, features, width))
        done = _all_to_all_others(
            blocks[rows].reshape(-1), received.view(-1), group, rank, world, stats, kind
        )
        out = kept_buffer(kept, "out", x, (batch, features, world, width))
        if count < world:  # (its own block placed while the others' are on the wire)
            out[:, :, rank].copy_(blocks[rank])
        done()
        # the others' blocks into the result's layout: one copy (strided destination rows of
        # count * width columns; cheaper than passing the own block through a [W, B, F, d]
        # buffer and permuting all of it, as before session 6)
        out[:, :, rows].copy_(received.permute(1, 2, 0, 3))
        return out.view(batch, features * world * width).detach()  # (not a view: see _alias)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        shape, group, rank, stats, kind, kept = ctx.meta
        world, batch, features, width = shape
        g = grad.reshape(batch, features, world, width)
        back = kept_buffer(kept, "back", grad, (world, batch, features, width))
        rows = _others(rank, world)
        sent = kept_buffer(kept, "send", grad, (len(range(world)[rows]), batch, features, width))
        sent.copy_(g[:, :, rows].permute(2, 0, 1, 3))
        sent = sent.view(-1)
        done = _all_to_all_others(
            sent, back[rows].view(-1), group, rank, world, stats, kind + "_grad"
        )
        if rows.stop - rows.start < world:  # (a middle rank receives its own block too)
            back[rank].copy_(g[:, :, rank])
        done()
        after = torch.zeros(0, device=grad.device) if ctx.needs_input_grad[6] else None
        return (back.view(-1),) + (None,) * 5 + (after, None)


def _others(rank: int, world: int) -> slice:
    """The blocks a rank exchanges: every other rank's when they lie side by side (rank ``0``
    or ``W - 1``), else every rank's (a middle rank sends its own block to itself)."""
    if rank == 0:
        return slice(1, world)
    if rank == world - 1:
        return slice(0, world - 1)
    return slice(0, world)


def _all_to_all_others(
    x: Tensor, into: Tensor | None, group: Any, rank: int, world: int, stats: CommStats | None,
    kind: str,
) -> Callable[[], Tensor]:
    """Start sending ``x`` (equal blocks for the ranks of :func:`_others`) and receiving theirs
    (into ``into``, or a new tensor); returns the call that waits for it and returns it."""
    rows = _others(rank, world)
    n = x.numel() // max(1, len(range(world)[rows]))
    splits = [n if rows.start <= s < rows.stop else 0 for s in range(world)]
    out = x.new_empty(sum(splits)) if into is None else into
    return start_all_to_all(out, x.contiguous(), splits, splits, group, rank, stats, kind)


def start_all_to_all(
    out: Tensor,
    send: Tensor,
    out_splits: list[int],
    in_splits: list[int],
    group: Any,
    rank: int,
    stats: CommStats | None,
    kind: str,
) -> Callable[[], Tensor]:
    """Start an ``all_to_all_single`` of the flat ``send`` (its blocks per destination) into
    ``out``; returns the call that waits for it and returns ``out`` (``stats`` counts the
    bytes sent to other ranks and the time spent starting and waiting, see :func:`_waiter`)."""
    start = time.perf_counter()
    work = dist.all_to_all_single(out, send, out_splits, in_splits, group=group, async_op=True)
    nbytes = (sum(in_splits) - in_splits[rank]) * send.element_size()
    return _waiter(work, out, stats, kind, nbytes, start)


def _waiter(
    work: Any, out: Tensor, stats: CommStats | None, kind: str, nbytes: int, start: float
) -> Callable[[], Tensor]:
    """The call that waits for an asynchronous collective begun at ``start`` and returns
    ``out``; ``stats`` counts the time spent starting it and waiting for it (not the work
    done in between)."""
    launch = time.perf_counter() - start

    def done() -> Tensor:
        begin = time.perf_counter() - launch
        work.wait()
        if stats is not None:
            stats.record(kind, nbytes, begin)
        return out

    return done


def exchange_even_columns(
    x: Tensor,
    shape: tuple[int, int, int, int],
    group: Any,
    rank: int,
    stats: CommStats | None,
    kind: str,
    after: Tensor | None = None,
    kept: dict[str, Any] | None = None,
) -> Tensor:
    """The rows of an all-column plan in equal blocks, sent and assembled in one step.

    ``x``: this rank's pooled columns ``[W, B, F, d]`` (flat; block ``s``: the bags of rank
    ``s``); returns ``[B, F * W * d]``, feature ``f``'s columns ``s d .. (s + 1) d`` from rank
    ``s``.  Rank ``0`` and rank ``W - 1`` (every rank of two) send only the other ranks'
    blocks and receive the others' straight into place (no copy of their own block through
    the collective); backward sends the gradient back the same way.  ``after``: as for
    :func:`differentiable_all_to_all`.  ``kept``: the caller's workspace, where the receive
    buffer, the result and backward's two buffers stay from step to step (:func:`kept_buffer`).
    """
    return _EvenColumns.apply(x, shape, group, rank, stats, kind, after, kept)


def start_all_reduce(
    x: Tensor, op: Any, group: Any, stats: CommStats | None, kind: str
) -> Callable[[], Tensor]:
    """:func:`all_reduce` begun asynchronously: returns the call that waits for it (and
    returns ``x``, reduced in place)."""
    start = time.perf_counter()
    work = dist.all_reduce(x, op=op, group=group, async_op=True)
    ranks = dist.get_world_size(group)
    return _waiter(work, x, stats, kind, 2 * x.numel() * x.element_size() * (ranks - 1) // ranks, start)


def all_reduce(x: Tensor, op: Any, group: Any, stats: CommStats | None, kind: str) -> Tensor:
    """``dist.all_reduce`` of ``x`` in place over ``group`` (``op``: ``dist.ReduceOp``); returns ``x``."""
    start = time.perf_counter()
    dist.all_reduce(x, op=op, group=group)
    if stats is not None:
        ranks = dist.get_world_size(group)
        stats.record(kind, 2 * x.numel() * x.element_size() * (ranks - 1) // ranks, start)
    return x
