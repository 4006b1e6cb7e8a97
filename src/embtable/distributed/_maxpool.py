"""Max pooling of row-wise sharded tables: the maximum over shards, and a backward that
updates only the rows that won their bag across all shards."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from embtable import ops
from embtable.functional import FUSED_ATTR
from embtable.ops._fused_reference import POOL_NONE as _POOL_NONE

__all__ = ["ExactMax", "MaxCombine", "sum_parts", "winner_rows"]


class MaxCombine(torch.autograd.Function):
    """The maximum over row shards of their partial maxima (shards without ids in a bag left
    out; 0 for a bag without ids).  Backward gives each cell's gradient to the winning shard
    and NaN to the others: a shard's :class:`ExactMax` then knows which of its local maxima
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


class ExactMax(torch.autograd.Function):
    """Max pooling of a row shard whose backward updates only the rows that won their bag
    across all shards: cells whose gradient is NaN (lost to another shard, see
    :class:`MaxCombine`) touch no row, so lazy rules (Adam, momentum) step exactly the rows
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
        optimizer = getattr(weight, FUSED_ATTR, None)
        if optimizer is None:
            columns = torch.arange(grad.shape[1], device=grad.device).expand_as(max_ids)[valid]
            dense = torch.zeros_like(weight)
            dense.index_put_((max_ids[valid], columns), grad[valid], accumulate=True)
            return dense, None, None, None
        rows, row_grad = winner_rows(max_ids, grad, valid, grad.dtype)
        optimizer.apply_update(weight, rows, offsets, row_grad, None, _POOL_NONE, -1, False)
        return None, None, None, None


def winner_rows(
    max_ids: Tensor, grad: Tensor, valid: Tensor, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """The distinct rows that won a ``valid`` cell of max-pooled bags and their summed gradient.

    Args:
        max_ids: ``[bags, D]`` winning row per bag and column (``-1``: an empty bag).
        grad: ``[bags, D]`` gradient of the pooled bags.
        valid: ``[bags, D]`` cells to count.
        dtype: the summed gradient's dtype.

    Returns:
        ``(rows, summed)``: sorted distinct rows and ``[rows, D]`` sums (each cell adds to
        its own column of its winning row).

    Example:
        >>> max_ids = torch.tensor([[2, 0], [2, -1]])
        >>> winner_rows(max_ids, torch.ones(2, 2), max_ids >= 0, torch.float32)
        (tensor([0, 2]), tensor([[0., 1.],
                [2., 0.]]))
    """
    rows, inverse = torch.unique(max_ids[valid], sorted=True, return_inverse=True)
    columns = torch.arange(max_ids.shape[1], device=max_ids.device).expand_as(max_ids)[valid]
    summed = grad.new_zeros((rows.numel(), grad.shape[1]), dtype=dtype)
    summed.index_put_((inverse, columns), grad[valid].to(dtype), accumulate=True)
    return rows, summed


def sum_parts(parts: list[Tensor]) -> Tensor:
    """The sum of row-wise partial results (no copy for one shard)."""
    if len(parts) == 1:
        return parts[0]
    total = parts[0] + parts[1]
    for part in parts[2:]:
        total = total + part
    return total
