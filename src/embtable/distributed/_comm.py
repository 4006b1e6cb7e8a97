"""Collectives of the sharded collections: an autograd ``all_to_all_single`` and byte counts.

Every exchange goes through :func:`all_to_all` or :func:`all_reduce`, which count the bytes
a rank sends to other ranks (its own block of an all_to_all is not sent; an all_reduce of
``n`` bytes over ``p`` ranks counts ``2 n (p - 1) / p``, a ring's share) and the time spent in
the collective, per kind (``"ids"``, ``"rows"``, ``"rows_grad"``, ...), in a :class:`CommStats`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["CommStats", "all_reduce", "all_to_all", "differentiable_all_to_all"]


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
    """``all_to_all_single`` of the first dimension of ``x`` (block ``d`` of ``x`` goes to rank ``d``)."""
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


def all_reduce(x: Tensor, op: Any, group: Any, stats: CommStats | None, kind: str) -> Tensor:
    """``dist.all_reduce`` of ``x`` in place over ``group`` (``op``: ``dist.ReduceOp``); returns ``x``."""
    start = time.perf_counter()
    dist.all_reduce(x, op=op, group=group)
    if stats is not None:
        ranks = dist.get_world_size(group)
        stats.record(kind, 2 * x.numel() * x.element_size() * (ranks - 1) // ranks, start)
    return x
