"""Collectives of the sharded collections: an autograd ``all_to_all_single`` and byte counts.

Every exchange goes through :func:`all_to_all`, which counts the bytes a rank sends to
other ranks (its own block is not sent) and the time spent in the collective, per kind
(``"ids"``, ``"rows"``, ``"grads"``, ...), in a :class:`CommStats`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["CommStats", "all_to_all", "differentiable_all_to_all"]


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
        stats.bytes_sent[kind] += (sum(in_splits) - in_splits[rank]) * row
        stats.seconds[kind] += time.perf_counter() - start
        stats.calls += 1
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
    ) -> Tensor:
        ctx.meta = (out_splits, in_splits, group, rank, stats, kind)
        return all_to_all(x, out_splits, in_splits, group, rank, stats, kind)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        out_splits, in_splits, group, rank, stats, kind = ctx.meta
        back = all_to_all(
            grad.contiguous(), in_splits, out_splits, group, rank, stats, kind + "_grad"
        )
        return (back,) + (None,) * 6


def differentiable_all_to_all(
    x: Tensor,
    out_splits: list[int],
    in_splits: list[int],
    group: Any,
    rank: int,
    stats: CommStats | None,
    kind: str,
) -> Tensor:
    """:func:`all_to_all` whose backward sends the gradient back the same way (reverse splits)."""
    return _AllToAll.apply(x, out_splits, in_splits, group, rank, stats, kind)


class _OwnPart(torch.autograd.Function):
    """Forward: this rank's elements of a replicated result.  Backward: every rank's gradient of
    its own elements, gathered into the gradient of the whole result (one all_to_all)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, parts: list[Tensor], group: Any, rank: int, stats: CommStats | None
    ) -> Tensor:
        ctx.meta = (x.shape, parts, group, rank, stats)
        return x.reshape(-1)[parts[rank]]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        shape, parts, group, rank, stats = ctx.meta
        world = len(parts)
        mine = grad.contiguous()
        sizes = [int(p.numel()) for p in parts]
        gathered = all_to_all(
            mine.repeat(world), sizes, [mine.numel()] * world, group, rank, stats, "dp_grad"
        )
        full = grad.new_zeros(int(torch.Size(shape).numel()))
        full[torch.cat(parts)] = gathered
        return full.view(shape), None, None, None, None


def own_part(
    x: Tensor, parts: list[Tensor], group: Any, rank: int, stats: CommStats | None
) -> Tensor:
    """The flat elements ``parts[rank]`` of ``x``; backward gathers all ranks' gradients."""
    return _OwnPart.apply(x, parts, group, rank, stats)
