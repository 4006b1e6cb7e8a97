"""Max pooling of row-wise sharded tables: the maximum over shards, and a backward that
updates only the rows that won their bag across all shards."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from embtable import ops
from embtable.functional import FUSED_ATTR
from embtable.ops._fused_reference import POOL_NONE as _POOL_NONE

__all__ = ["ExactMax", "MaxCombine", "sum_parts"]


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


def sum_parts(parts: list[Tensor]) -> Tensor:
    """The sum of row-wise partial results (no copy for one shard)."""
    if len(parts) == 1:
        return parts[0]
    total = parts[0] + parts[1]
    for part in parts[2:]:
        total = total + part
    return total
