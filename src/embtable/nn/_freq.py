"""``scale_grad_by_freq`` for a collection's bucket: ids counted per feature, one call per bucket.

A bucket concatenates the ids of several features (of one or several tables, shifted into
one grouped weight).  torch's ``scale_grad_by_freq`` counts an id over one call, but a
collection's contract is a loop of torch modules, one call per *feature*: the gradient a
row gets from feature ``f`` is divided by the count of its id among ``f``'s ids.  A table
shared by two features therefore counts per feature, which one torch call over the bucket
would not do.  :func:`scaled_lookup` keeps one call per bucket and is exact: the forward is
the plain lookup; the backward counts each ``(feature, row)`` pair and turns the gradient
into a weighted sum pooling without padding (each id weighted by ``weight / count``,
``/ non-padding bag size`` for a mean), which the compiled kernels take as they are: the
dense gradient (``ops.pool_bags_backward``) or, for a weight of
:func:`embtable.optim.fuse`, one fused update of the touched rows (so a row read by two
features is updated once a step, as one optimizer step on torch's summed gradient).
``torch.func.grad`` works; no double backward, forward-mode AD or ``vmap`` (refused with
``ValueError``: the counts need the whole batch).

Example:
    >>> import torch
    >>> from embtable.nn._freq import scaled_lookup
    >>> weight = torch.zeros(4, 2, requires_grad=True)
    >>> ids, offsets = torch.tensor([1, 1, 2, 1]), torch.tensor([0, 2, 3, 4])
    >>> out = scaled_lookup(weight, ids, offsets, None, "sum", None, [1, 2])
    >>> out.sum().backward()   # feature 0: ids [1, 1]; feature 1: bags [2] and [1]
    >>> weight.grad[:, 0].tolist()
    [0.0, 2.0, 1.0, 0.0]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from embtable import ops
from embtable.functional import fused_optimizer
from embtable.ops import POOL_SUM

__all__ = ["pair_counts", "scaled_lookup", "scaled_rows"]


def _coefficients(
    num_rows: int,
    ids: Tensor,
    offsets: Tensor,
    psw: Tensor | None,
    mode: str,
    padding: Tensor,
    feature_of_bag: Tensor,
    dtype: torch.dtype,
    counts: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(keep, bag_of, coeff)``: the non-padding ids, their bags, and each kept id's factor
    ``weight / count in its feature`` (``/ non-padding ids of the bag`` for a mean), so that
    the gradient is a weighted sum of the output gradient's bags.  ``counts``: the count of
    every ``(feature, row)`` pair, ``[F * num_rows]`` (:func:`pair_counts`, e.g. summed over
    the ranks of a data-parallel table); ``None``: counted here, over these ids."""
    keep, kept_bags, pair = _kept_pairs(num_rows, ids, offsets, mode, padding, feature_of_bag)
    kept_ids = ids[keep]
    coeff = torch.ones(kept_ids.numel(), dtype=dtype, device=ids.device)
    if psw is not None:
        coeff = coeff * psw.detach()[keep].to(dtype)
    if mode == "mean":  # 1 / non-padding ids of the bag
        sizes = torch.bincount(kept_bags, minlength=offsets.numel() - 1)
        coeff = coeff / sizes[kept_bags].to(dtype)
    if counts is not None:
        return keep, kept_bags, coeff / counts[pair].to(dtype)
    _, inverse, found = torch.unique(pair, return_inverse=True, return_counts=True)
    return keep, kept_bags, coeff / found[inverse].to(dtype)


def _kept_pairs(
    num_rows: int, ids: Tensor, offsets: Tensor, mode: str, padding: Tensor, feature_of_bag: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``(keep, kept_bags, pair)``: the non-padding ids, their bags, and each kept id's
    ``(feature, row)`` key ``feature * num_rows + row``."""
    if mode == "none":
        bag_of = torch.arange(ids.numel(), device=ids.device)
    else:
        bag_of = torch.repeat_interleave(torch.arange(offsets.numel() - 1, device=ids.device), offsets.diff())
    keep = ~torch.isin(ids, padding) if padding.numel() else torch.ones_like(ids, dtype=torch.bool)
    kept_bags = bag_of[keep]
    pair = feature_of_bag[kept_bags] * num_rows + ids[keep].to(torch.int64)  # (feature, row)
    return keep, kept_bags, pair


def _row_grads(
    num_rows: int,
    ids: Tensor,
    offsets: Tensor,
    psw: Tensor | None,
    mode: str,
    padding: Tensor,
    feature_of_bag: Tensor,
    grad: Tensor,
    counts: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Distinct touched rows and their ``[U, D]`` gradient, ids counted per feature (or as
    ``counts`` says: :func:`_coefficients`)."""
    keep, bag_of, coeff = _coefficients(
        num_rows, ids, offsets, psw, mode, padding, feature_of_bag, grad.dtype, counts
    )
    rows, row_of = torch.unique(ids[keep], return_inverse=True)
    row_grad = grad.new_zeros((rows.numel(), grad.shape[1]))
    row_grad.index_add_(0, row_of, grad.index_select(0, bag_of) * coeff.unsqueeze(1))
    return rows, row_grad


def _as_weighted_sum(
    num_rows: int,
    ids: Tensor,
    offsets: Tensor,
    psw: Tensor | None,
    mode: str,
    padding: Tensor,
    feature_of_bag: Tensor,
    grad: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The backward as a weighted sum pooling without padding: ``(ids, offsets, grad,
    weights)`` for the compiled kernels (``pool_bags_backward``, the fused update), whose
    gradient is the per-feature-scaled one; padding ids are dropped (no row touched)."""
    dtype = torch.float64 if grad.dtype == torch.float64 else torch.float32
    keep, bag_of, coeff = _coefficients(
        num_rows, ids, offsets, psw, mode, padding, feature_of_bag, dtype
    )
    kept = ids[keep]
    if mode == "none":  # one bag per kept id
        bounds = torch.arange(kept.numel() + 1, device=ids.device)
        return kept, bounds, grad[keep], coeff
    lengths = torch.bincount(bag_of, minlength=offsets.numel() - 1)
    bounds = torch.zeros(offsets.numel(), dtype=torch.int64, device=ids.device)
    torch.cumsum(lengths, 0, out=bounds[1:])
    return kept, bounds, grad, coeff


class _ScaledLookup(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        weight: Tensor,
        per_sample_weights: Tensor | None,
        ids: Tensor,
        offsets: Tensor,
        mode: str,
        padding_idx: int | None,
        padding: Tensor,
        feature_of_bag: Tensor,
        fused: Any,
    ) -> Tensor:
        if mode == "none":
            return weight.index_select(0, ids)
        return torch.nn.functional.embedding_bag(
            ids, weight, offsets, mode=mode, per_sample_weights=per_sample_weights,
            include_last_offset=True, padding_idx=padding_idx,
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        weight, psw, ids, offsets, mode, _, padding, feature_of_bag, fused = inputs
        ctx.weight = weight  # (the fused optimizer knows the parameter itself)
        ctx.meta = (mode, fused)
        ctx.save_for_backward(ids, offsets, psw, padding, feature_of_bag)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        ids, offsets, psw, padding, feature_of_bag = ctx.saved_tensors
        mode, fused = ctx.meta
        weight = ctx.weight
        grad = grad_output.contiguous()
        grad_weight = grad_psw = None
        if ctx.needs_input_grad[1]:  # d out / d psw (a weighted sum; the forward is unscaled)
            bag_of = torch.repeat_interleave(torch.arange(offsets.numel() - 1), offsets.diff())
            dots = (weight.detach().index_select(0, ids) * grad.index_select(0, bag_of)).sum(1)
            grad_psw = torch.where(torch.isin(ids, padding), 0, dots).to(psw.dtype)
        if ctx.needs_input_grad[0]:
            ids, bounds, grad, coeff = _as_weighted_sum(
                weight.shape[0], ids, offsets, psw, mode, padding, feature_of_bag, grad
            )
            if fused is not None:  # one fused update of the rows (a weighted sum, no padding)
                fused.apply_update(weight, ids, bounds, grad, coeff.to(grad.dtype), POOL_SUM, -1, False)
            else:
                grad_weight = ops.pool_bags_backward(
                    grad, ids, bounds, coeff.to(grad.dtype), ids[:0], weight.shape[0], POOL_SUM,
                    -1, False, False,
                ).to(weight.dtype)
        return (grad_weight, grad_psw) + (None,) * 7


def scaled_lookup(
    weight: Tensor,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    mode: str,
    padding_idx: int | None,
    bags_per_feature: Sequence[int],
    padding_rows: Sequence[int] = (),
) -> Tensor:
    """One bucket's lookup whose gradient counts ids per feature (``scale_grad_by_freq``).

    Args:
        weight: the grouped weight ``[rows, D]`` (fused or not).
        ids: the bucket's shifted ids (validated by the caller).
        offsets: ``include_last_offset`` bag boundaries (feature-major bags); ignored for
            ``mode="none"`` (then each id is its own bag).
        per_sample_weights: per-id weights of a ``"sum"``, or ``None``.
        mode: ``"sum"``, ``"mean"`` or ``"none"`` (rows as ``torch.nn.Embedding``).
        padding_idx: the padding row pooling skips, or ``None``.
        bags_per_feature: how many consecutive bags (ids for ``"none"``) each feature has.
        padding_rows: every row that gets no gradient (``padding_idx`` is added).

    Returns:
        ``[bags, D]`` pooled rows, or ``[ids, D]`` rows for ``"none"``.
    """
    padding, feature_of_bag = _layout(ids, padding_idx, bags_per_feature, padding_rows)
    if ops.batched(ids, weight, per_sample_weights):
        raise ValueError(
            "a table with scale_grad_by_freq=True cannot be looked up inside torch.func.vmap: "
            "its ids are counted over the whole batch; take per-example gradients in a loop"
        )
    fused = fused_optimizer(weight)  # (read here: Function.forward and backward run without grad mode)
    return _ScaledLookup.apply(
        weight, per_sample_weights, ids, offsets, mode, padding_idx, padding, feature_of_bag, fused
    )


def _layout(
    ids: Tensor, padding_idx: int | None, bags_per_feature: Sequence[int], padding_rows: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """The padding rows as a tensor, and each bag's feature."""
    pads = {int(p) for p in padding_rows} | ({padding_idx} if padding_idx is not None else set())
    padding = torch.tensor(sorted(pads), dtype=ids.dtype, device=ids.device)
    sizes = torch.tensor(list(bags_per_feature), dtype=torch.int64, device=ids.device)
    feature_of_bag = torch.repeat_interleave(torch.arange(sizes.numel(), device=ids.device), sizes)
    return padding, feature_of_bag


def scaled_rows(
    num_rows: int,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    mode: str,
    padding_idx: int | None,
    bags_per_feature: Sequence[int],
    padding_rows: Sequence[int],
    grad: Tensor,
    counts: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The backward of :func:`scaled_lookup` as data: the distinct touched rows (sorted) and
    their ``[U, D]`` gradient, ids counted per feature, from the output gradient ``grad``
    (feature-major bags, or one row per id for ``"none"``).  Used by the column shards and
    the data-parallel replicas of :mod:`embtable.distributed`, whose update needs the rows
    before it runs; ``counts`` (:func:`pair_counts`, summed over the replicas' ranks) replaces
    the counts of these ids."""
    padding, feature_of_bag = _layout(ids, padding_idx, bags_per_feature, padding_rows)
    return _row_grads(
        num_rows, ids, offsets, per_sample_weights, mode, padding, feature_of_bag, grad, counts
    )


def pair_counts(
    num_rows: int,
    ids: Tensor,
    offsets: Tensor,
    mode: str,
    padding_idx: int | None,
    bags_per_feature: Sequence[int],
    padding_rows: Sequence[int],
) -> Tensor:
    """How often each row occurs in each feature's non-padding ids: int64 ``[F * num_rows]``
    (``feature * num_rows + row``), the counts :func:`scaled_rows` divides by.

    Example:
        >>> import torch
        >>> ids, offsets = torch.tensor([1, 1, 2, 1]), torch.tensor([0, 2, 3, 4])
        >>> pair_counts(3, ids, offsets, "sum", None, [1, 2], []).view(2, 3).tolist()
        [[0, 2, 0], [0, 1, 1]]
    """
    padding, feature_of_bag = _layout(ids, padding_idx, bags_per_feature, padding_rows)
    _, _, pair = _kept_pairs(num_rows, ids, offsets, mode, padding, feature_of_bag)
    return torch.bincount(pair, minlength=len(bags_per_feature) * num_rows)
