"""Lookups whose backward *is* the optimizer step: the autograd side of fused training.

The forward gathers (``Embedding``) or pools (``EmbeddingBag``) rows like the ordinary
functional forms; the backward never forms a gradient for the table: it hands the output
gradient to the table's :class:`~embtable.optim.FusedOptimizer`, which reduces it per
distinct row and updates each touched row and its optimizer state in place
(:func:`embtable.ops.fused_update_rows`).  The table's ``.grad`` stays ``None``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from embtable import ops
from embtable.ops._fused_reference import POOL_MAX, POOL_NONE, POOL_SUM

if TYPE_CHECKING:
    from embtable.optim.fused import FusedOptimizer

__all__ = ["fused_lookup"]


def _max_rows(grad_output: Tensor, max_ids: Tensor, ids: Tensor, scale_grad_by_freq: bool) -> tuple[Tensor, Tensor]:
    """Distinct winning rows of a max pooling and their ``[U, D]`` gradient."""
    dim = grad_output.shape[1]
    valid = max_ids >= 0
    winners = max_ids[valid]
    rows, inverse = torch.unique(winners, sorted=True, return_inverse=True)
    columns = torch.arange(dim).expand_as(max_ids)[valid]
    grad = grad_output.new_zeros((rows.numel(), dim))
    grad.index_put_((inverse, columns), grad_output[valid], accumulate=True)
    if scale_grad_by_freq:
        uniq, counts = torch.unique(ids, return_counts=True)
        grad /= counts[torch.searchsorted(uniq, rows)].to(grad.dtype).unsqueeze(1)
    return rows, grad


def _rows_of(grad_output: Tensor, ids: Tensor, offsets: Tensor, pooling: int) -> int:
    """The rows of the output gradient of a ``D = 0`` table: one per id, or per bag."""
    return ids.numel() if pooling == POOL_NONE else max(offsets.numel() - 1, 0)


class _FusedLookup(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        weight: Tensor,
        per_sample_weights: Tensor | None,
        ids: Tensor,
        offsets: Tensor,
        pooling: int,
        padding_idx: int,
        scale_grad_by_freq: bool,
        optimizer: FusedOptimizer,
        out_shape: tuple[int, ...],
        num_features: int,
    ) -> Tensor:
        ctx.weight = weight
        ctx.meta = (pooling, padding_idx, scale_grad_by_freq, optimizer, num_features)
        if pooling == POOL_NONE:
            ctx.save_for_backward(ids, offsets, per_sample_weights, None)
            return ops.gather_rows(weight, ids).reshape(out_shape)
        if num_features > 1:  # feature-major bags into [B, F * D] (sum / mean)
            out = ops.pool_bags_grouped(weight, ids, offsets, per_sample_weights, pooling, padding_idx, num_features)
            ctx.save_for_backward(ids, offsets, per_sample_weights, None)
            return out
        out, max_ids = ops.pool_bags(weight, ids, offsets, per_sample_weights, pooling, padding_idx)
        ctx.save_for_backward(ids, offsets, per_sample_weights, max_ids)
        return out

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        ids, offsets, per_sample_weights, max_ids = ctx.saved_tensors
        pooling, padding_idx, scale_grad_by_freq, optimizer, num_features = ctx.meta
        weight = ctx.weight
        dim = weight.shape[1]  # (explicit sizes: -1 is ambiguous for an empty batch or D = 0)
        if num_features > 1:
            batch = grad_output.shape[0]
            grad = grad_output.reshape(batch, num_features, dim).transpose(0, 1).reshape(batch * num_features, dim)
        else:
            grad = grad_output.reshape(grad_output.numel() // dim if dim else _rows_of(grad_output, ids, offsets, pooling), dim)
            grad = grad.contiguous()
        grad_weights = None
        if ctx.needs_input_grad[1]:  # per-sample weights of a weighted sum: d out / d psw
            bag_of = torch.repeat_interleave(torch.arange(offsets.numel() - 1), offsets.diff())
            dots = (weight.detach().index_select(0, ids) * grad.index_select(0, bag_of)).sum(1)
            grad_weights = torch.where(ids == padding_idx, 0, dots).to(per_sample_weights.dtype)
        if ctx.needs_input_grad[0]:
            if pooling == POOL_MAX:
                rows, row_grad = _max_rows(grad, max_ids, ids, scale_grad_by_freq)
                optimizer.apply_update(weight, rows, offsets, row_grad, None, POOL_NONE, -1, False)
            else:
                optimizer.apply_update(
                    weight, ids, offsets, grad, per_sample_weights, pooling, padding_idx, scale_grad_by_freq
                )
        return (None, grad_weights) + (None,) * 8


def fused_lookup(
    weight: Tensor,
    ids: Tensor,
    offsets: Tensor,
    optimizer: FusedOptimizer,
    *,
    pooling: int = POOL_NONE,
    per_sample_weights: Tensor | None = None,
    padding_idx: int | None = None,
    scale_grad_by_freq: bool = False,
    out_shape: tuple[int, ...] | None = None,
    num_features: int = 1,
) -> Tensor:
    """Gather (``pooling=POOL_NONE``) or pool rows; backward applies ``optimizer`` to the rows.

    Inputs are validated by the caller (the fused module forwards).  ``offsets`` holds
    ``num_bags + 1`` boundaries for pooled lookups and is ignored otherwise.  With
    ``num_features > 1`` (sum/mean) the bags are feature-major and the result is the
    ``[B, num_features * D]`` layout of :func:`embtable.ops.pool_bags_grouped`.

    Example:
        >>> import torch
        >>> import embtable
        >>> table = embtable.Embedding(5, 2)
        >>> _ = torch.nn.init.ones_(table.weight)
        >>> opt = embtable.optim.FusedOptimizer([table.weight], "sgd", lr=0.5)
        >>> out = fused_lookup(table.weight, torch.tensor([1, 1]), torch.empty(0), opt)
        >>> out.sum().backward()
        >>> table.weight[1], table.weight.grad
        (tensor([0., 0.], grad_fn=<SelectBackward0>), None)
    """
    pad = -1 if padding_idx is None else padding_idx
    if out_shape is None:
        out_shape = (ids.numel(), weight.shape[1])
    if per_sample_weights is not None and pooling != POOL_SUM:
        raise ValueError("fused_lookup: per_sample_weights are only supported with sum pooling")
    return _FusedLookup.apply(
        weight, per_sample_weights, ids, offsets, pooling, pad, scale_grad_by_freq, optimizer, out_shape,
        num_features,
    )
