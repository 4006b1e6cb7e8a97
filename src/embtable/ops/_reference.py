"""Pure-PyTorch reference kernels: the oracle for every compiled kernel.

Every function here is stateless and works on plain tensors.  None of them
calls torch's embedding operators (the lookup, the bag lookup, the in-place
row renormalization, or their backwards):
they are built from general tensor operations (``index_select``,
``index_add_``, ``unique``, ``linalg.vector_norm``).

Conventions:
    * ``ids`` are 1-D ``int32``/``int64`` tensors of row numbers, already
      validated by the caller (see :func:`embtable.ops.check_ids`).
    * ``padding_idx`` is a non-negative row number, or ``None``.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

_OPMATH = {torch.float16: torch.float32, torch.bfloat16: torch.float32}


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype arithmetic on ``dtype`` is carried out in (float32 for half types)."""
    return _OPMATH.get(dtype, dtype)


def gather_rows(weight: Tensor, ids: Tensor) -> Tensor:
    """Rows ``weight[ids]`` as a new ``[len(ids), D]`` tensor."""
    return weight.index_select(0, ids)


def renorm_rows_(weight: Tensor, ids: Tensor, max_norm: float, norm_type: float) -> Tensor:
    """Rescale, in place, each distinct row in ``ids`` whose ``norm_type``-norm exceeds ``max_norm``.

    A row with norm ``n > max_norm`` is multiplied by ``max_norm / (n + 1e-7)``,
    the formula of torch's in-place renorm op: the norm is computed in the
    weight's dtype, the scale in float64 and then rounded to the weight's dtype,
    and the product is taken in the dtype's arithmetic type (float32 for half
    types), so results are bit-identical to torch's.  Runs outside autograd.
    Returns ``weight``.
    """
    if ids.numel() == 0:
        return weight
    with torch.no_grad():
        rows = torch.unique(ids)
        if rows.dtype != torch.int64:
            rows = rows.long()
        values = weight.index_select(0, rows)
        norms = torch.linalg.vector_norm(values, ord=norm_type, dim=1).double()
        over = norms > max_norm
        if bool(over.any()):
            rows, values = rows[over], values[over]
            scale = max_norm / (norms[over] + 1e-7)
            math_dtype = opmath_dtype(weight.dtype)
            scaled = values.to(math_dtype) * scale.to(weight.dtype).to(math_dtype).unsqueeze(1)
            weight.index_copy_(0, rows, scaled.to(weight.dtype))
    return weight


def frequency_scale(ids: Tensor) -> Tensor:
    """For each position of ``ids``, ``1 / (number of times that id occurs in ids)`` (float64)."""
    _, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    return counts.to(torch.float64).reciprocal().index_select(0, inverse.reshape(-1))


def _drop_padding_rows(
    ids: Tensor, rows: Tensor, scale: Tensor | None, padding_idx: int | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``ids``, ``rows`` and ``scale`` without the positions whose id is ``padding_idx``."""
    if padding_idx is None:
        return ids, rows, scale
    keep = ids != padding_idx
    return ids[keep], rows[keep], None if scale is None else scale[keep]


def _scaled(rows: Tensor, scale: Tensor | None) -> Tensor:
    if scale is None:
        return rows
    math_dtype = opmath_dtype(rows.dtype)
    return (rows.to(math_dtype) * scale.to(math_dtype).unsqueeze(1)).to(rows.dtype)


def scatter_add_rows(
    num_rows: int,
    ids: Tensor,
    rows: Tensor,
    padding_idx: int | None = None,
    scale: Tensor | None = None,
) -> Tensor:
    """Dense ``[num_rows, D]`` gradient: ``out[ids[i]] += scale[i] * rows[i]``, skipping ``padding_idx``.

    Contributions are added in input order, as torch's dense embedding backward does.
    """
    ids, rows, scale = _drop_padding_rows(ids, rows, scale, padding_idx)
    out = rows.new_zeros((num_rows, rows.shape[-1]))
    return out.index_add_(0, ids, _scaled(rows, scale))


def sparse_row_grad(
    num_rows: int,
    ids: Tensor,
    rows: Tensor,
    padding_idx: int | None = None,
    scale: Tensor | None = None,
) -> Tensor:
    """Uncoalesced sparse COO ``[num_rows, D]`` gradient with one entry per non-padding id, in input order.

    Equal, after ``coalesce()``, to :func:`scatter_add_rows`.
    """
    ids, rows, scale = _drop_padding_rows(ids, rows, scale, padding_idx)
    dim = rows.shape[-1]
    if ids.numel() == 0:
        indices = torch.empty((1, 0), dtype=torch.int64, device=rows.device)
        values = rows.new_empty((0, dim))
    else:
        indices = ids.reshape(1, -1).to(torch.int64)
        values = _scaled(rows, scale).reshape(ids.numel(), dim)
    return torch.sparse_coo_tensor(indices, values, (num_rows, dim), check_invariants=False)


# --------------------------------------------------------------------------------------------
# Bags (EmbeddingBag): pooled forward and its backwards.
#
# Conventions shared by the bag kernels and their compiled twins (csrc/cpu/rows_cpu.h):
#   * ``ids``: 1-D int64 row numbers, validated.
#   * ``offsets``: 1-D int64 of ``num_bags + 1`` boundaries, ``offsets[0] == 0``,
#     non-decreasing, ``offsets[-1] == len(ids)``; bag ``b`` is ``ids[offsets[b]:offsets[b+1]]``.
#   * ``pooling``: :data:`POOL_SUM`, :data:`POOL_MEAN` or :data:`POOL_MAX`.
#   * ``padding_idx``: a row number, or ``-1`` for none.  Padding entries are skipped: they
#     add nothing, do not count in a mean, and receive no gradient.
#   * ``max_ids``: ``[num_bags, D]`` int64, per bag and column the id whose value won the max
#     (the first one on ties; ``-1`` for a bag with no non-padding id); ``[0]`` for sum/mean.

POOL_SUM, POOL_MEAN, POOL_MAX = 1, 2, 3


def bag_of_ids(offsets: Tensor, num_ids: int) -> Tensor:
    """For each of the ``num_ids`` positions, the bag it belongs to (int64).

    Example:
        >>> bag_of_ids(torch.tensor([0, 2, 2, 5]), 5)
        tensor([0, 0, 2, 2, 2])
    """
    num_bags = offsets.numel() - 1
    bags = torch.arange(num_bags, device=offsets.device)
    return torch.repeat_interleave(bags, offsets.diff(), output_size=num_ids)


def bag_sizes(ids: Tensor, offsets: Tensor, padding_idx: int = -1) -> Tensor:
    """Number of non-padding ids in each bag (int64 ``[num_bags]``)."""
    lengths = offsets.diff()
    if padding_idx < 0 or ids.numel() == 0:
        return lengths
    padded = torch.zeros(ids.numel() + 1, dtype=torch.int64, device=ids.device)
    torch.cumsum(ids == padding_idx, 0, out=padded[1:])
    return lengths - padded.index_select(0, offsets).diff()


def _drop_padding(
    ids: Tensor, offsets: Tensor, per_sample_weights: Tensor | None, padding_idx: int
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``ids``, ``offsets`` and weights with the padding entries removed."""
    if padding_idx < 0 or ids.numel() == 0:
        return ids, offsets, per_sample_weights
    keep = ids != padding_idx
    if bool(keep.all()):
        return ids, offsets, per_sample_weights
    kept = torch.zeros(ids.numel() + 1, dtype=torch.int64, device=ids.device)
    torch.cumsum(keep, 0, out=kept[1:])
    weights = None if per_sample_weights is None else per_sample_weights[keep]
    return ids[keep], kept.index_select(0, offsets), weights


def _csr_rows_sum(crow: Tensor, col: Tensor, values: Tensor, table: Tensor) -> Tensor:
    """``out[b] = sum_{i in bag b} values[i] * table[col[i]]`` as one CSR x dense product.

    The CSR matrix references the rows of ``table`` without copying them, so the
    ``[len(ids), D]`` gathered rows are never formed; each output row is summed in
    input order.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        matrix = torch.sparse_csr_tensor(
            crow, col, values, (crow.numel() - 1, table.shape[0]), check_invariants=False
        )
        return torch.sparse.mm(matrix, table)


def _sum_bags(
    weight: Tensor, ids: Tensor, offsets: Tensor, per_sample_weights: Tensor | None, padded: bool = False
) -> Tensor:
    num_bags, dim = offsets.numel() - 1, weight.shape[1]
    if ids.numel() == 0 or dim == 0:
        return weight.new_zeros((num_bags, dim))
    if weight.dtype in (torch.float32, torch.float64) and weight.device.type == "cpu":
        values = weight.new_ones(ids.numel()) if per_sample_weights is None else per_sample_weights
        return _csr_rows_sum(offsets, ids, values.contiguous(), weight)
    # half types (and other devices): gather, accumulate in the arithmetic dtype, round once
    math_dtype = opmath_dtype(weight.dtype)
    rows = weight.index_select(0, ids).to(math_dtype)
    if per_sample_weights is not None:
        rows = rows * per_sample_weights.to(math_dtype).unsqueeze(1)
    out = torch.zeros((num_bags, dim), dtype=math_dtype, device=weight.device)
    out.index_add_(0, bag_of_ids(offsets, ids.numel()), rows)
    if weight.dtype == torch.bfloat16 and per_sample_weights is None and not padded:
        return _bfloat16_half_away(out)  # torch 2.13's CPU kernel rounds this sum half away
    return out.to(weight.dtype)


def _bfloat16_half_away(values: Tensor) -> Tensor:
    """float32 -> bfloat16 rounding ties away from zero (FBGEMM's conversion, which torch's CPU
    ``embedding_bag`` uses for unweighted bfloat16 sums), not ``.to()``'s ties-to-even."""
    bits = values.contiguous().view(torch.int32)
    rounded = ((bits + 0x8000) & ~0xFFFF).view(torch.float32)
    return torch.where(torch.isnan(values), values, rounded).to(torch.bfloat16)


def _max_bags(weight: Tensor, ids: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
    """Column-wise max per bag, as torch's CPU kernel: the first value wins ties, a NaN wins
    only when it is the bag's first value in that column (later NaNs are ignored)."""
    num_bags, dim, num_ids = offsets.numel() - 1, weight.shape[1], ids.numel()
    nonempty = (offsets.diff() > 0).unsqueeze(1)
    if num_ids == 0 or dim == 0:
        return weight.new_zeros((num_bags, dim)), ids.new_full((num_bags, dim), -1)
    rows = weight.index_select(0, ids)
    bag_of = bag_of_ids(offsets, num_ids)
    index = bag_of.unsqueeze(1).expand(num_ids, dim)
    nan = torch.isnan(rows)
    has_nan = bool(nan.any())
    key = rows.masked_fill(nan, -math.inf) if has_nan else rows
    best = rows.new_zeros((num_bags, dim)).scatter_reduce_(0, index, key, "amax", include_self=False)
    position = torch.arange(num_ids, device=ids.device).unsqueeze(1)
    candidate = torch.where(key == best.index_select(0, bag_of), position, num_ids)
    first = torch.full((num_bags, dim), num_ids, dtype=torch.int64, device=ids.device)
    first.scatter_reduce_(0, index, candidate, "amin")
    starts = offsets[:-1].clamp(max=num_ids - 1)
    if has_nan:
        first = torch.where(nan.index_select(0, starts) & nonempty, starts.unsqueeze(1), first)
    first = torch.where(nonempty, first, 0)
    out = rows.gather(0, first).masked_fill_(~nonempty, 0)
    max_ids = ids.index_select(0, first.reshape(-1)).reshape(num_bags, dim)
    return out, max_ids.masked_fill_(~nonempty, -1)


def pool_bags(
    weight: Tensor,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    pooling: int,
    padding_idx: int,
) -> tuple[Tensor, Tensor]:
    """Pool the rows of each bag: the forward of ``EmbeddingBag``.

    Args:
        weight: the ``[V, D]`` table (any floating dtype).
        ids, offsets: the bags (see the conventions above).
        per_sample_weights: ``[len(ids)]`` weights of a weighted sum, or ``None``.
        pooling: :data:`POOL_SUM`, :data:`POOL_MEAN` or :data:`POOL_MAX`.
        padding_idx: a row skipped by the pooling, or ``-1``.

    Returns:
        ``(out, max_ids)``: ``out`` is ``[num_bags, D]`` in ``weight``'s dtype, zeros for a
        bag without non-padding ids; a mean divides the sum by the bag's non-padding count.
        ``max_ids`` as in the conventions above.  Sums of float32/float64 tables are one
        CSR x dense product (no ``[len(ids), D]`` intermediate); half types accumulate in
        float32 and round once, as torch does.

    Example:
        >>> weight = torch.arange(8.0).reshape(4, 2)
        >>> pool_bags(weight, torch.tensor([0, 3, 1]), torch.tensor([0, 2, 3]), None, POOL_MEAN, -1)[0]
        tensor([[3., 4.],
                [2., 3.]])
    """
    ids, offsets = ids.long(), offsets.long()
    ids, offsets, per_sample_weights = _drop_padding(ids, offsets, per_sample_weights, padding_idx)
    if pooling == POOL_MAX:
        return _max_bags(weight, ids, offsets)
    out = _sum_bags(weight, ids, offsets, per_sample_weights, padding_idx >= 0)
    if pooling == POOL_MEAN:
        out.div_(offsets.diff().clamp(min=1).to(out.dtype).unsqueeze(1))
    return out, ids.new_empty(0)


def _bag_entry_grads(
    grad_output: Tensor,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    pooling: int,
    padding_idx: int,
    scale_grad_by_freq: bool,
) -> tuple[Tensor, Tensor | None]:
    """Per position ``i`` of bag ``b``: the gradient row ``grad_output[b]`` and its float64 factor.

    The factor is ``per_sample_weights[i]``, times ``1 / count(ids[i])`` with
    ``scale_grad_by_freq``, times ``1 / (non-padding ids in b)`` for a mean; it is
    ``None`` when it would be 1 everywhere.  A mean without other factors is applied to
    ``grad_output`` per bag instead (same rounding: one product per contribution).
    """
    bag_of = bag_of_ids(offsets, ids.numel())
    scale = frequency_scale(ids) if scale_grad_by_freq else None
    if per_sample_weights is not None:
        weights = per_sample_weights.to(torch.float64)
        scale = weights if scale is None else scale * weights
    if pooling == POOL_MEAN:
        inverse = bag_sizes(ids, offsets, padding_idx).clamp(min=1).to(torch.float64).reciprocal()
        if scale is None:
            grad_output = grad_output * inverse.to(grad_output.dtype).unsqueeze(1)
        else:
            scale = scale * inverse.index_select(0, bag_of)
    return grad_output.index_select(0, bag_of), scale


def pool_bags_backward(
    grad_output: Tensor,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    max_ids: Tensor,
    num_rows: int,
    pooling: int,
    padding_idx: int,
    scale_grad_by_freq: bool,
    sparse: bool,
) -> Tensor:
    """Gradient of :func:`pool_bags` with respect to ``weight``: ``[num_rows, D]``.

    Sum/mean: position ``i`` of bag ``b`` adds ``factor_i * grad_output[b]`` to row ``ids[i]``
    (``factor_i``: its per-sample weight, ``1 / bag size`` for a mean, ``1 / count(ids[i])``
    with ``scale_grad_by_freq`` -- the count of that id in the whole mini-batch, as
    documented by torch), in input order; padding rows get nothing.  Max: each
    ``grad_output[b, d]`` goes to row ``max_ids[b, d]``.  ``scale_grad_by_freq`` must be
    ``False`` for max pooling (``ValueError``).

    With ``sparse=True`` the result is a sparse COO tensor, equal to the dense one after
    ``coalesce()``: for sum/mean uncoalesced, one entry per non-padding position in input
    order, as torch's sparse ``EmbeddingBag`` gradient (also with ``scale_grad_by_freq``,
    which torch refuses); for max (which torch refuses) coalesced, one entry per distinct
    winning row.
    """
    if pooling != POOL_MAX:
        rows, scale = _bag_entry_grads(
            grad_output, ids, offsets, per_sample_weights, pooling, padding_idx, scale_grad_by_freq
        )
        reduce = sparse_row_grad if sparse else scatter_add_rows
        return reduce(num_rows, ids, rows, None if padding_idx < 0 else padding_idx, scale)
    if scale_grad_by_freq:
        raise ValueError("pool_bags_backward: scale_grad_by_freq is not defined for max pooling")
    dim = grad_output.shape[1]
    won = max_ids >= 0
    rows, values = max_ids[won], grad_output[won]
    columns = torch.arange(dim, device=max_ids.device).expand_as(max_ids)[won]
    if not sparse:
        out = grad_output.new_zeros((num_rows, dim))
        return out.view(-1).index_add_(0, rows * dim + columns, values).view(num_rows, dim)
    unique, inverse = torch.unique(rows, return_inverse=True)
    summed = grad_output.new_zeros((unique.numel(), dim))
    summed.view(-1).index_add_(0, inverse * dim + columns, values)
    return torch.sparse_coo_tensor(
        unique.unsqueeze(0), summed, (num_rows, dim), is_coalesced=True, check_invariants=False
    )


def pool_bags_weights_backward(
    grad_output: Tensor, weight: Tensor, ids: Tensor, offsets: Tensor, padding_idx: int
) -> Tensor:
    """Gradient of a weighted-sum :func:`pool_bags` with respect to ``per_sample_weights``.

    Position ``i`` of bag ``b`` gets ``dot(grad_output[b], weight[ids[i]])`` (0 for padding),
    computed in the dtype's arithmetic type.
    """
    math_dtype = opmath_dtype(weight.dtype)
    bag_of = bag_of_ids(offsets, ids.numel())
    rows = weight.index_select(0, ids).to(math_dtype)
    grads = grad_output.index_select(0, bag_of).to(math_dtype)
    out = (rows * grads).sum(1)
    if padding_idx >= 0:
        out.masked_fill_(ids == padding_idx, 0)
    return out.to(weight.dtype)


def pool_bags_grouped(
    weight: Tensor,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    pooling: int,
    padding_idx: int,
    num_features: int,
) -> Tensor:
    """:func:`pool_bags` of feature-major bags, laid out as ``[B, num_features * D]``.

    Bag ``f * B + b`` (example ``b`` of feature ``f``) fills columns ``f * D .. (f + 1) * D``
    of row ``b``: the concatenated output of a collection.  Sum and mean pooling only.
    """
    out, _ = pool_bags(weight, ids, offsets, per_sample_weights, pooling, padding_idx)
    batch, dim = out.shape[0] // num_features, out.shape[1]
    return out.view(num_features, batch, dim).transpose(0, 1).reshape(batch, num_features * dim)


def bucket_ids(values: Tensor, lengths: Tensor, feature_rows: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """Feature-major ``values`` shifted by ``feature_rows[f, 0]``, and the offsets of ``lengths``.

    ``IndexError`` when an id of feature ``f`` lies outside ``0 .. feature_rows[f, 1] - 1``.
    """
    lengths = lengths.long()
    if lengths.numel() and not (0 <= int(lengths.min()) and int(lengths.max()) <= values.numel()):
        raise ValueError(f"bucket_ids: lengths must lie in [0, {values.numel()}], the number of values")
    offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=lengths.device)
    torch.cumsum(lengths, 0, out=offsets[1:])
    if int(offsets[-1]) != values.numel():  # (no wrap: each length is at most values.numel())
        raise ValueError(f"bucket_ids: lengths sum to {int(offsets[-1])}, not {values.numel()} values")
    counts = lengths.view(-1, batch).sum(1) if batch else torch.zeros_like(feature_rows[:, 0])
    shift = torch.repeat_interleave(feature_rows[:, 0], counts, output_size=values.numel())
    limit = torch.repeat_interleave(feature_rows[:, 1], counts, output_size=values.numel())
    ids = values.long()
    if bool(((ids < 0) | (ids >= limit)).any()):
        raise IndexError("bucket_ids: an id lies outside its table")
    return ids + shift, offsets


def pool_bucket(
    weight: Tensor,
    values: Tensor,
    lengths: Tensor,
    feature_rows: Tensor,
    per_sample_weights: Tensor | None,
    pooling: int,
    padding_idx: int,
    batch: int,
) -> Tensor:
    """:func:`bucket_ids` then :func:`pool_bags_grouped`: a bucket's raw ids pooled into ``[B, F * D]``.

    ``values`` / ``lengths`` / ``feature_rows`` / ``batch`` as :func:`bucket_ids` (its errors),
    ``padding_idx`` a row of the grouped ``weight``; sum (1) or mean (2) pooling.
    """
    ids, offsets = bucket_ids(values, lengths, feature_rows, batch)
    return pool_bags_grouped(weight, ids, offsets, per_sample_weights, pooling, padding_idx, feature_rows.shape[0])


# --------------------------------------------------------------------------------------------
# 16-bit gradients as torch 2.13 forms them on the CPU: every contribution is added into the
# 16-bit gradient row and rounded there, in torch's order (not accumulated in float32).

_HALF_TYPES = (torch.float16, torch.bfloat16)


def is_half(dtype: torch.dtype) -> bool:
    """Whether ``dtype`` is float16 or bfloat16 (whose gradients torch accumulates in that dtype)."""
    return dtype in _HALF_TYPES


def sequential_add_rows(
    num_slots: int, slots: Tensor, values: Tensor, dtype: torch.dtype | None = None
) -> Tensor:
    """``out[slots[i]] += values[i]`` for ``i`` in order, each sum rounded to ``dtype``.

    The accumulation of torch's CPU kernels for 16-bit gradients (``grad[k] += g`` in the
    16-bit type: the sum is formed in float32 and rounded after every addition).  ``values``
    is ``[n]`` or ``[n, D]`` (float32 or ``dtype``); the result ``[num_slots]`` or
    ``[num_slots, D]`` in ``dtype`` (default: ``values``' dtype).  Vectorized
    over rounds: round ``r`` adds the ``r``-th contribution of every slot at once, so the cost
    is O(n) plus one step per occurrence of the most frequent slot.

    Example:
        >>> ones = torch.ones(600, dtype=torch.bfloat16)
        >>> sequential_add_rows(2, torch.zeros(600, dtype=torch.long), ones)  # stalls at 256
        tensor([256.,   0.], dtype=torch.bfloat16)
    """
    dtype = values.dtype if dtype is None else dtype
    out = values.new_zeros((num_slots, *values.shape[1:]), dtype=dtype)
    if slots.numel() == 0 or out.numel() == 0:
        return out
    slots = slots.long()
    order = torch.sort(slots, stable=True).indices
    sorted_slots = slots.index_select(0, order)
    counts = torch.bincount(sorted_slots, minlength=num_slots)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(slots.numel(), device=slots.device) - starts.index_select(0, sorted_slots)
    by_round = torch.sort(rank, stable=True).indices  # round-major, slot order inside a round
    round_slots = sorted_slots.index_select(0, by_round)
    round_values = values.index_select(0, order.index_select(0, by_round)).float()
    sizes = torch.bincount(rank).tolist()
    acc = out.float()
    start = 0
    for size in sizes:
        rows = round_slots[start : start + size]
        summed = (acc.index_select(0, rows) + round_values[start : start + size]).to(dtype)
        acc.index_copy_(0, rows, summed.float())
        start += size
    return acc.to(dtype)


def embedding_backward_half(
    num_rows: int, ids: Tensor, rows: Tensor, padding_idx: int | None, scale: Tensor | None
) -> Tensor:
    """Dense 16-bit gradient of a lookup, bit for bit torch 2.13's ``embedding_dense_backward``
    on the CPU: ``grad[ids[i]] += rows[i]`` in input order, rounded to the 16-bit type after
    every addition; with ``scale`` the product ``scale[i] * rows[i]`` is taken in the 16-bit
    type first (scale rounded to it, product rounded)."""
    ids, rows, scale = _drop_padding_rows(ids, rows, scale, padding_idx)
    if scale is not None:
        rows = rows * scale.to(rows.dtype).unsqueeze(1)
    return sequential_add_rows(num_rows, ids, rows)


def pool_bags_backward_half(
    grad_output: Tensor,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    max_ids: Tensor,
    num_rows: int,
    pooling: int,
    padding_idx: int,
    scale_grad_by_freq: bool,
) -> Tensor:
    """Dense 16-bit bag gradient, bit for bit torch 2.13's CPU ``embedding_bag`` backward.

    Sum/mean: torch visits the ids in the order of ``torch.sort(ids)`` (not stable: the same
    call gives the same order here) and adds
    ``round16(round16(factor) * grad_output[bag])`` into the 16-bit row, where ``factor``
    (per-sample weight, ``1 / count`` with ``scale_grad_by_freq``, ``1 / bag size`` for a
    mean) is formed in float64.  Max: ``grad[max_ids[b, d], d] += grad_output[b, d]`` bag by
    bag, rounded after every addition.
    """
    dim, dtype = grad_output.shape[1], grad_output.dtype
    if pooling == POOL_MAX:
        won = max_ids >= 0
        slots = (max_ids * dim + torch.arange(dim, device=max_ids.device))[won]
        flat = sequential_add_rows(num_rows * dim, slots, grad_output[won])
        return flat.view(num_rows, dim)
    bag_of = bag_of_ids(offsets, ids.numel())
    factor = torch.ones(ids.numel(), dtype=torch.float64, device=ids.device)
    if per_sample_weights is not None:
        factor = per_sample_weights.to(torch.float64)
    if scale_grad_by_freq:
        _, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
        factor = factor / counts.to(torch.float64).index_select(0, inverse)
    if pooling == POOL_MEAN:
        sizes = bag_sizes(ids, offsets, padding_idx).to(torch.float64)
        factor = factor / torch.where(sizes == 0, 1.0, sizes).index_select(0, bag_of)
    values = grad_output.index_select(0, bag_of) * factor.to(dtype).unsqueeze(1)
    # torch walks the ids in the order of its (unstable) sort of them: take the same sort
    order = torch.sort(ids).indices
    if padding_idx >= 0:
        order = order[ids.index_select(0, order) != padding_idx]
    return sequential_add_rows(num_rows, ids.index_select(0, order), values.index_select(0, order))


# --------------------------------------------------------------------------------------------
# Backwards written only in out-of-place, vmap-able operations (no boolean indexing, no
# unique, no in-place writes into a zero tensor, no compiled op): used inside torch.func
# transforms (vmap(grad(...)), jacrev), where tensors carry a batch dimension per example.


def _zeros_like_batch(like: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Zeros of ``shape`` in ``like``'s dtype, batched as ``like`` is inside ``vmap``.

    The backwards below add into it in place with ``index_put_(accumulate=True)`` (index
    order, as ``index_add``): a batched target is written once, where an unbatched zero tensor
    would be expanded and copied to the batch first (2.6x slower in vmap(grad)).
    """
    if like.numel() == 0:
        return like.new_zeros(shape)
    return torch.zeros_like(like.reshape(-1)[:1]).expand(shape).clone()


def bag_of_ids_batchable(offsets: Tensor, num_ids: int) -> Tensor:
    """:func:`bag_of_ids` without ``repeat_interleave`` (whose output size depends on data)."""
    positions = torch.arange(num_ids, device=offsets.device)
    return torch.searchsorted(offsets[1:].contiguous(), positions, right=True)


def embedding_backward_batchable(
    num_rows: int, ids: Tensor, rows: Tensor, padding_idx: int | None, scale_grad_by_freq: bool
) -> Tensor:
    """:func:`scatter_add_rows` (with the frequency scale) in vmap-able operations."""
    if scale_grad_by_freq:
        ones = torch.ones(ids.shape, dtype=torch.float64, device=ids.device)
        counts = ones.new_zeros(num_rows).index_add(0, ids, ones)
        rows = _scaled(rows, counts.reciprocal().index_select(0, ids))
    if padding_idx is not None:
        rows = torch.where((ids != padding_idx).unsqueeze(1), rows, 0)
    return _zeros_like_batch(rows, (num_rows, rows.shape[-1])).index_put_((ids,), rows, accumulate=True)


def pool_bags_backward_batchable(
    grad_output: Tensor,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    max_ids: Tensor,
    num_rows: int,
    pooling: int,
    padding_idx: int,
    scale_grad_by_freq: bool,
) -> Tensor:
    """Dense :func:`pool_bags_backward` in vmap-able operations (same sums, same order)."""
    dim = grad_output.shape[1]
    if pooling == POOL_MAX:
        won = max_ids >= 0
        slots = torch.where(won, max_ids, 0) * dim + torch.arange(dim, device=max_ids.device)
        values = torch.where(won, grad_output, 0)
        flat = _zeros_like_batch(values, (num_rows * dim,))
        flat.index_put_((slots.reshape(-1),), values.reshape(-1), accumulate=True)
        return flat.view(num_rows, dim)
    bag_of = bag_of_ids_batchable(offsets, ids.numel())
    scale = None
    if scale_grad_by_freq:
        ones = torch.ones(ids.shape, dtype=torch.float64, device=ids.device)
        scale = ones.new_zeros(num_rows).index_add(0, ids, ones).reciprocal().index_select(0, ids)
    if per_sample_weights is not None:
        weights = per_sample_weights.to(torch.float64)
        scale = weights if scale is None else scale * weights
    if pooling == POOL_MEAN:
        sizes = offsets.diff()
        if padding_idx >= 0:
            padded = (ids == padding_idx).long()
            sizes = sizes - sizes.new_zeros(sizes.shape).index_add(0, bag_of, padded)
        inverse = sizes.clamp(min=1).to(torch.float64).reciprocal()
        if scale is None:
            grad_output = grad_output * inverse.to(grad_output.dtype).unsqueeze(1)
        else:
            scale = scale * inverse.index_select(0, bag_of)
    rows = _scaled(grad_output.index_select(0, bag_of), scale)
    if padding_idx >= 0:
        rows = torch.where((ids != padding_idx).unsqueeze(1), rows, 0)
    return _zeros_like_batch(rows, (num_rows, dim)).index_put_((ids,), rows, accumulate=True)


def pool_bags_weights_backward_batchable(
    grad_output: Tensor, weight: Tensor, ids: Tensor, offsets: Tensor, padding_idx: int
) -> Tensor:
    """:func:`pool_bags_weights_backward` in vmap-able operations."""
    math_dtype = opmath_dtype(weight.dtype)
    bag_of = bag_of_ids_batchable(offsets, ids.numel())
    rows = weight.index_select(0, ids).to(math_dtype)
    out = (rows * grad_output.index_select(0, bag_of).to(math_dtype)).sum(1)
    if padding_idx >= 0:
        out = torch.where(ids == padding_idx, 0, out)
    return out.to(weight.dtype)
