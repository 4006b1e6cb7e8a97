"""Functional forms: :func:`embedding` and :func:`embedding_bag`.

Signatures and semantics are those of ``torch.nn.functional.embedding`` /
``embedding_bag`` (torch 2.13), implemented by embtable: the forward gathers
rows with :mod:`embtable.ops`, the backward (a ``torch.autograd.Function``)
reduces the output gradient into rows.  torch's embedding operators are never
called.

Validation policy: the O(1) checks (dimensions, dtypes, shapes) and the O(n)
id-range check run on every call, before any weight is touched, so a failing
call never renormalizes a row (torch may renormalize part of the rows before
it notices a bad id).  For :func:`embedding_bag` the offsets are checked in
full as well (first 0, non-decreasing, within the input), which torch does not; on the
compiled path (float32 CPU tables, no ``max_norm``) these O(n) checks run inside the pooling
kernel, which reports a problem before anything is modified, and the same errors are raised.

Example:
    >>> import torch
    >>> from embtable import functional
    >>> weight = torch.arange(12.0).reshape(4, 3)
    >>> functional.embedding(torch.tensor([[0, 2], [3, 3]]), weight)
    tensor([[[ 0.,  1.,  2.],
             [ 6.,  7.,  8.]],
    <BLANKLINE>
            [[ 9., 10., 11.],
             [ 9., 10., 11.]]])
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from embtable import ops
from embtable._functions import (
    _EmbeddingBagFunction,
    _EmbeddingBagFunctionJvp,
    _EmbeddingFunction,
    _EmbeddingFunctionJvp,
    _GroupedBagFunction,
    _GroupedBagFunctionJvp,
    compiled_embedding,
    feature_major,  # noqa: F401 - re-exported: collections and fused optimizers use it
    function_for,
)
from embtable.errors import EmbeddingNotImplementedError, EmbeddingTypeError, EmbeddingValueError

__all__ = ["embedding", "embedding_bag"]


def _check_weight(weight: Any, api: str) -> None:
    if not isinstance(weight, Tensor):
        raise TypeError(f"{api}: weight must be a tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise EmbeddingValueError(
            f"{api}: weight must be 2-D (num_embeddings, embedding_dim), got shape {tuple(weight.shape)}"
        )


def _check_max_norm(max_norm: float | None, norm_type: float, api: str) -> None:
    if max_norm is not None and not max_norm >= 0:
        raise ValueError(f"{api}: max_norm must be >= 0 or None, got {max_norm!r}")
    if max_norm is not None and not norm_type > 0:
        raise ValueError(f"{api}: norm_type must be > 0 when max_norm is set, got {norm_type!r}")


def embedding(
    input: Tensor,
    weight: Tensor,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
) -> Tensor:
    r"""Look up rows of ``weight`` for every id in ``input``; a drop-in for ``torch.nn.functional.embedding``.

    Args:
        input: ids, any shape (0-d and empty included), int64 or int32.
        weight: the table, ``(num_embeddings, embedding_dim)``, any floating dtype.
        padding_idx: a row that receives no gradient (negative values count from the end).
        max_norm: if given, each row referenced by ``input`` whose ``norm_type``-norm exceeds
            it is rescaled **in place in** ``weight`` to norm ``max_norm`` (scale
            ``max_norm / (norm + 1e-7)``) before the lookup, outside autograd.
        norm_type: the p of the p-norm for ``max_norm`` (1, 2, ``inf`` or any p > 0).
        scale_grad_by_freq: divide each row's gradient by the number of times its id occurs in
            ``input``.
        sparse: make the weight's gradient a sparse COO tensor (one entry per non-padding id).
            Unlike torch 2.13, ``sparse=True`` works together with ``scale_grad_by_freq=True``.

    Shape:
        - input: ``(*)``; output: ``(*, embedding_dim)``.

    Returns:
        The looked-up rows, differentiable with respect to ``weight``.

    Raises:
        TypeError: ``input`` is not an int32/int64 tensor.
        IndexError: an id is negative or ``>= num_embeddings`` (nothing is renormalized).
        ValueError: ``weight`` is not 2-D, or ``padding_idx`` is outside the table.

        Where torch raises ``RuntimeError`` / ``IndexError`` for the same input, the error is
        also an instance of that class (:mod:`embtable.errors`); ``padding_idx`` outside the
        table, which torch only ``assert``s, is a plain ``ValueError``.

    Example:
        >>> import torch
        >>> from embtable import functional
        >>> weight = torch.ones(10, 3, requires_grad=True)
        >>> out = functional.embedding(torch.tensor([1, 1, 0]), weight, padding_idx=0)
        >>> out.shape
        torch.Size([3, 3])
        >>> out.sum().backward()
        >>> weight.grad[:3]
        tensor([[0., 0., 0.],
                [2., 2., 2.],
                [0., 0., 0.]])
    """
    api = "embedding"
    _check_weight(weight, api)
    num_rows = weight.shape[0]
    padding_idx = ops.normalize_padding_idx(padding_idx, num_rows, api)
    _check_max_norm(max_norm, norm_type, api)
    ops.check_id_dtype(input, api)
    flat_ids = input.reshape(-1)
    out_shape = (*input.shape, weight.shape[1])
    fused = fused_optimizer(weight)
    if max_norm is not None or fused is not None:
        ops.check_ids(flat_ids, num_rows, api)  # before any row or optimizer state is touched
        if max_norm is not None:  # outside autograd: neither gradients nor tangents see it
            ops.renorm_rows_(weight.detach(), ops.plain(flat_ids).reshape(-1), max_norm, norm_type)
        if fused is not None:
            pad = -1 if padding_idx is None else padding_idx
            return fused.lookup(weight, flat_ids, None, None, 0, pad, scale_grad_by_freq, out_shape)
    # Otherwise nothing is modified, and the gather itself bounds-checks every id: the O(n)
    # range check runs only to word the error when the gather refuses an id.
    try:
        function = function_for(_EmbeddingFunction, _EmbeddingFunctionJvp, weight, None, flat_ids)
        if function is _EmbeddingFunction:  # plain eager: the C++ autograd op where it applies
            out = compiled_embedding(weight, input, padding_idx, scale_grad_by_freq, sparse)
            if out is not None:
                return out
        if function is not None:
            return function.apply(weight, flat_ids, out_shape, padding_idx, scale_grad_by_freq, sparse)
        return ops.gather_rows(weight, flat_ids).reshape(out_shape)
    except IndexError as error:
        failure = error
    ops.check_ids(flat_ids, num_rows, api)  # outside the handler, so the traceback is one error
    raise failure


#: Attribute by which :func:`embtable.optim.fuse` attaches a fused optimizer to a table weight.
FUSED_ATTR = "_embtable_fused_optimizer"


def fused_optimizer(weight: Tensor) -> Any | None:
    """The fused optimizer attached to ``weight`` (see :mod:`embtable.optim`), or ``None``.

    When one is attached and gradients are on, :func:`embedding` and :func:`embedding_bag`
    run a lookup whose backward updates the weight's rows in place instead of forming a
    gradient (``sparse`` is then ignored and ``weight.grad`` stays ``None``).
    """
    if not (weight.requires_grad and torch.is_grad_enabled()):
        return None
    return getattr(weight, FUSED_ATTR, None)


_POOLING = {"sum": ops.POOL_SUM, "mean": ops.POOL_MEAN, "max": ops.POOL_MAX}
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_bag_mode(mode: Any, scale_grad_by_freq: bool, api: str) -> str:
    """``mode`` as ``"sum"``, ``"mean"`` or ``"max"``; ``ValueError`` for anything else.

    ``mode="max"`` with ``scale_grad_by_freq=True`` raises ``ValueError`` as in torch.
    """
    if not isinstance(mode, str) or mode not in _POOLING:
        raise ValueError(f"{api}: mode must be 'sum', 'mean' or 'max', got {mode!r}")
    if mode == "max" and scale_grad_by_freq:
        raise ValueError(
            f"{api}: mode='max' does not support scale_grad_by_freq=True (as in torch); "
            "use mode='sum' or 'mean', or scale_grad_by_freq=False"
        )
    return next(name for name in _POOLING if name == mode)  # a plain str, also for str enums


def _check_float_weight(weight: Tensor, api: str) -> None:
    if weight.dtype not in _FLOAT_DTYPES:
        raise EmbeddingTypeError(
            f"{api}: weight must be float16, bfloat16, float32 or float64, got dtype {weight.dtype}"
        )


def _check_offsets(offsets: Any, num_ids: int, include_last_offset: bool, api: str) -> Tensor:
    """Validated offsets as int64 (still in the caller's convention)."""
    if offsets is None:
        raise ValueError(
            f"{api}: offsets is required when input is 1-D: pass the start position of each "
            "bag, e.g. offsets=torch.tensor([0]) for a single bag"
        )
    if not isinstance(offsets, Tensor) or offsets.dtype not in (torch.int32, torch.int64):
        got = offsets.dtype if isinstance(offsets, Tensor) else type(offsets).__name__
        error = EmbeddingTypeError if isinstance(offsets, Tensor) else TypeError
        raise error(f"{api}: offsets must be an int64 or int32 tensor, got {got}")
    if offsets.dim() != 1:
        raise ValueError(
            f"{api}: offsets must be 1-D when input is 1-D, got shape {tuple(offsets.shape)}"
        )
    if include_last_offset and offsets.numel() == 0:
        raise EmbeddingValueError(
            f"{api}: with include_last_offset=True offsets needs at least 1 entry "
            "(the end of the last bag), got an empty tensor"
        )
    offsets = offsets.long()
    if offsets.numel() == 0 or offsets.device.type == "meta":  # meta: shapes, no values
        return offsets
    # every example's offsets as a row (one row outside torch.func.vmap)
    rows = ops.plain(offsets).reshape(-1, offsets.shape[0])
    if bool((rows[:, 0] != 0).any()):
        first = int(rows[:, 0][rows[:, 0] != 0][0])
        raise EmbeddingValueError(
            f"{api}: offsets[0] must be 0 (the first bag starts at position 0), "
            f"got offsets[0]={first}"
        )
    steps = rows.diff()
    if bool((steps < 0).any()):
        r, i = (int(k) for k in (steps < 0).nonzero()[0])
        raise EmbeddingValueError(
            f"{api}: offsets must be non-decreasing, got offsets[{i}]={int(rows[r, i])} > "
            f"offsets[{i + 1}]={int(rows[r, i + 1])}"
        )
    last = int(rows[:, -1].max())
    if last > num_ids:
        raise EmbeddingValueError(
            f"{api}: offsets[-1]={last} is beyond the end of input (length {num_ids}); "
            f"offsets must lie in 0..{num_ids}"
        )
    return offsets


def _bag_layout(
    input: Tensor, offsets: Any, include_last_offset: bool, api: str
) -> tuple[Tensor, Tensor]:
    """The flat ids and the ``num_bags + 1`` int64 bag boundaries of ``input``.

    With ``include_last_offset=True`` the last bag runs to the end of the input, whatever
    ``offsets[-1]`` says (torch 2.13 does so on most of its paths).
    """
    if input.dim() == 2:
        if offsets is not None:
            shape = tuple(offsets.shape) if isinstance(offsets, Tensor) else type(offsets).__name__
            raise ValueError(
                f"{api}: offsets must be None when input is 2-D (each row is a bag), got {shape}"
            )
        num_bags, length = input.shape
        if length == 0:
            return input.reshape(-1), torch.zeros(num_bags + 1, dtype=torch.int64, device=input.device)
        bounds = torch.arange(0, num_bags * length + 1, length, device=input.device)
        return input.reshape(-1), bounds
    if input.dim() != 1:
        raise ValueError(
            f"{api}: input must be 1-D (with offsets) or 2-D (one bag per row), "
            f"got shape {tuple(input.shape)}"
        )
    offsets = _check_offsets(offsets, input.numel(), include_last_offset, api)
    num_bags = offsets.numel() - 1 if include_last_offset else offsets.numel()
    end = torch.tensor([input.numel()], dtype=torch.int64, device=offsets.device)
    return input, torch.cat([offsets[:num_bags], end])


def _check_per_sample_weights(
    per_sample_weights: Any, input: Tensor, weight: Tensor, mode: str, api: str
) -> None:
    if per_sample_weights is None:
        return
    if not isinstance(per_sample_weights, Tensor):
        raise TypeError(
            f"{api}: per_sample_weights must be a tensor or None, "
            f"got {type(per_sample_weights).__name__}"
        )
    if mode != "sum":
        raise EmbeddingNotImplementedError(
            f"{api}: per_sample_weights is only supported with mode='sum', got mode={mode!r}"
        )
    if per_sample_weights.shape != input.shape:
        raise ValueError(
            f"{api}: per_sample_weights must have the shape of input {tuple(input.shape)}, "
            f"got {tuple(per_sample_weights.shape)}"
        )
    if per_sample_weights.dtype != weight.dtype:
        raise EmbeddingTypeError(
            f"{api}: per_sample_weights must have weight's dtype {weight.dtype}, "
            f"got {per_sample_weights.dtype}; convert with per_sample_weights.to(weight.dtype)"
        )


def embedding_bag(
    input: Tensor,
    weight: Tensor,
    offsets: Tensor | None = None,
    max_norm: float | None = None,
    norm_type: float = 2,
    scale_grad_by_freq: bool = False,
    mode: str = "mean",
    sparse: bool = False,
    per_sample_weights: Tensor | None = None,
    include_last_offset: bool = False,
    padding_idx: int | None = None,
) -> Tensor:
    r"""Sums, means or maxes of bags of rows of ``weight``; a drop-in for ``torch.nn.functional.embedding_bag``.

    Args:
        input: ids, int64 or int32.  1-D: the bags concatenated, cut by ``offsets``.
            2-D ``(B, N)``: ``B`` bags of ``N`` ids each (``offsets`` must be ``None``).
        weight: the table, ``(num_embeddings, embedding_dim)``, float16/bfloat16/float32/float64.
        offsets: with a 1-D input, the start of each bag (int64 or int32, any mix with
            ``input``'s dtype): first 0, non-decreasing, at most ``len(input)``.  A bag whose
            start equals the next one's is empty.
        max_norm: if given, each row referenced by ``input`` whose ``norm_type``-norm exceeds
            it is rescaled **in place in** ``weight`` to norm ``max_norm`` before pooling.
        norm_type: the p of the p-norm for ``max_norm``.
        scale_grad_by_freq: divide each row's gradient by the number of times its id occurs
            in ``input`` (not supported with ``mode="max"``, as in torch).
        mode: ``"sum"``, ``"mean"`` or ``"max"`` (column-wise; ties and the gradient go to
            the first occurrence).
        sparse: make the weight's gradient a sparse COO tensor.  Unlike torch 2.13, this
            works with ``mode="max"`` and with ``scale_grad_by_freq=True``.
        per_sample_weights: with ``mode="sum"``, a weight per id (same shape and dtype as
            ``input``/``weight``): a weighted sum.  It receives a gradient if it requires one.
        include_last_offset: ``offsets`` has ``B + 1`` entries (CSR style); the last bag
            runs to the end of ``input``.  Ignored for a 2-D input.
        padding_idx: ids equal to it are skipped: not pooled, not counted in a mean, no
            gradient (negative values count from the end).

    Shape:
        - input ``(N)`` with offsets ``(B)`` (or ``(B + 1)`` with ``include_last_offset``),
          or input ``(B, N)``; output ``(B, embedding_dim)``.  Empty bags give zeros.

    Returns:
        The pooled rows, differentiable with respect to ``weight`` and ``per_sample_weights``.

    Raises:
        TypeError: ids, offsets or weights of the wrong dtype.
        IndexError: an id is negative or ``>= num_embeddings``.
        ValueError: a bad ``mode``, bad offsets (first not 0, decreasing, past the end),
            ``per_sample_weights`` of the wrong shape or with a mode other than ``"sum"``,
            a 1-D input without offsets, a 2-D input with offsets.  All checks run before
            ``max_norm`` touches ``weight``.

        Where torch raises ``RuntimeError`` / ``NotImplementedError`` for the same input, the
        error is also an instance of that class (:mod:`embtable.errors`).

    Example:
        >>> import torch
        >>> from embtable import functional
        >>> weight = torch.arange(10.0).reshape(5, 2)
        >>> ids = torch.tensor([1, 2, 4, 4, 3])
        >>> functional.embedding_bag(ids, weight, torch.tensor([0, 2, 2]), mode="sum")
        tensor([[ 6.,  8.],
                [ 0.,  0.],
                [22., 25.]])
        >>> functional.embedding_bag(torch.tensor([[1, 0], [0, 0]]), weight, mode="mean", padding_idx=0)
        tensor([[2., 3.],
                [0., 0.]])
    """
    api = "embedding_bag"
    if (
        isinstance(weight, Tensor)
        and isinstance(input, Tensor)
        and weight.dtype == torch.long
        and input.is_floating_point()
    ):
        warnings.warn(
            "Argument order of nn.functional.embedding_bag was changed. "
            "Usage `embedding_bag(weight, input, ...)` is deprecated, "
            "and should now be `embedding_bag(input, weight, ...)`.",
            stacklevel=2,
        )
        weight, input = input, weight
    fast = _compiled_bags(
        input, weight, offsets, max_norm, scale_grad_by_freq, mode, sparse,
        per_sample_weights, include_last_offset, padding_idx, api,
    )
    if fast is not None:
        return fast
    bags = prepare_bags(
        input, weight, offsets, max_norm, norm_type, scale_grad_by_freq, mode,
        per_sample_weights, include_last_offset, padding_idx, api,
    )
    fused = fused_optimizer(weight)
    if fused is not None:
        weights, ids, bounds, pooling, pad = bags
        return fused.lookup(weight, ids, bounds, weights, pooling, pad, scale_grad_by_freq, None)
    function = function_for(_EmbeddingBagFunction, _EmbeddingBagFunctionJvp, weight, *bags[:3])
    return (function or _EmbeddingBagFunction).apply(weight, *bags, scale_grad_by_freq, sparse)[0]


_ID_DTYPES = (torch.int32, torch.int64)


def fast_bag_layout(
    input: Tensor, offsets: Any, per_sample_weights: Any, mode: Any, include_last_offset: bool
) -> tuple[Tensor, Tensor, bool] | None:
    """``(ids, bounds, bounds_end_the_last_bag)`` of a bag call a compiled kernel can take after
    O(1) checks (1-D ids with 1-D offsets, or 2-D ids of fixed-length bags; weights only for
    ``"sum"``), or ``None`` where the general path must run.  Shared by the float and the
    quantized fast paths.  ``bounds`` are the offsets as given; when the third value is
    ``False`` the last bag runs to the end of ``ids``."""
    if per_sample_weights is not None and not (
        isinstance(per_sample_weights, Tensor)
        and mode == "sum"
        and per_sample_weights.shape == input.shape
        and per_sample_weights.dtype == torch.float32
    ):
        return None
    num_ids = input.numel()
    if input.dim() == 1:
        if not (
            isinstance(offsets, Tensor)
            and offsets.dim() == 1
            and offsets.dtype in _ID_DTYPES
            and offsets.device.type == "cpu"
            and offsets.numel() >= (2 if include_last_offset else 1)
        ):
            return None
        if include_last_offset and int(offsets[-1]) != num_ids:
            return None  # the last bag is cut at the input's end: the general path
        return input, offsets, include_last_offset
    if input.dim() == 2 and offsets is None and input.shape[1] > 0:
        return input.reshape(-1), torch.arange(0, num_ids + 1, input.shape[1], device=input.device), True
    return None


def _compiled_bags(
    input: Any,
    weight: Any,
    offsets: Any,
    max_norm: float | None,
    scale_grad_by_freq: bool,
    mode: Any,
    sparse: bool,
    per_sample_weights: Any,
    include_last_offset: bool,
    padding_idx: int | None,
    api: str,
) -> Tensor | None:
    """:func:`embedding_bag` on the compiled kernel with O(1) checks in Python, or ``None``.

    Applies to float32 CPU tables without ``max_norm`` when the extension is loaded.  The
    O(n) checks (offsets start at 0, never decrease, stay within the input; ids within the
    table) run inside the kernel while it pools; when it reports a problem (before any
    weight is touched: the pooling writes only its output) this returns ``None`` and
    :func:`prepare_bags` raises the precise error.  Any other case also returns ``None``.
    """
    if not (
        max_norm is None
        and isinstance(input, Tensor)
        and isinstance(weight, Tensor)
        and weight.dtype == torch.float32
        and weight.dim() == 2
        and weight.device.type == "cpu"
        and weight.is_contiguous()
        and input.dtype in _ID_DTYPES
        and input.device.type == "cpu"
        and ops.extension_available()
        and not ops.batched(input, offsets, per_sample_weights, weight)
    ):
        return None
    layout = fast_bag_layout(input, offsets, per_sample_weights, mode, include_last_offset)
    if layout is None:
        return None
    ids, bounds, last = layout
    if not last:
        bounds = torch.cat([bounds, bounds.new_full((1,), input.numel())])  # numel may be symbolic
    mode = check_bag_mode(mode, scale_grad_by_freq, api)
    pooling = _POOLING[mode]
    row = ops.normalize_padding_idx(padding_idx, weight.shape[0], api, EmbeddingValueError)
    pad = -1 if row is None else row
    ids, bounds = ids.long(), bounds.long()
    weights = None if per_sample_weights is None else per_sample_weights.reshape(-1)
    try:
        fused = fused_optimizer(weight)
        if fused is not None:
            return fused.lookup(weight, ids, bounds, weights, pooling, pad, scale_grad_by_freq, None)
        function = function_for(_EmbeddingBagFunction, _EmbeddingBagFunctionJvp, weight, weights, ids, bounds)
        if function is None:
            return torch.ops.embtable.pool_bags(weight, ids, bounds, weights, pooling, pad)[0]
        return function.apply(
            weight, weights, ids, bounds, pooling, pad, scale_grad_by_freq, sparse
        )[0]
    except RuntimeError as error:
        if "embtable::pool_bags" not in str(error):
            raise
        return None  # bad ids or offsets: prepare_bags names them


def pool_features(
    weight: Tensor,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    pooling: int,
    padding_idx: int,
    num_features: int,
) -> Tensor:
    """Sum/mean pooling of the feature-major bags of ``num_features`` features into ``[B, F * D]``.

    The batched lookup of the collections: ``ids`` (int64, validated rows of ``weight``) and
    ``offsets`` (``F * B + 1`` boundaries) hold bag ``f * B + b`` = example ``b`` of feature
    ``f``, whose pooled row fills columns ``f * D .. (f + 1) * D`` of row ``b``.  Differentiable
    (dense gradients) and fused-optimizer aware like :func:`embedding_bag`.
    """
    fused = fused_optimizer(weight)
    if fused is not None:
        return fused.lookup(
            weight, ids, offsets, per_sample_weights, pooling, padding_idx, False, None, num_features=num_features
        )
    function = function_for(_GroupedBagFunction, _GroupedBagFunctionJvp, weight, per_sample_weights, ids, offsets)
    if function is None:
        return ops.pool_bags_grouped(weight, ids, offsets, per_sample_weights, pooling, padding_idx, num_features)
    return function.apply(weight, per_sample_weights, ids, offsets, pooling, padding_idx, num_features)


def prepare_bags(
    input: Tensor,
    weight: Tensor,
    offsets: Tensor | None,
    max_norm: float | None,
    norm_type: float,
    scale_grad_by_freq: bool,
    mode: str,
    per_sample_weights: Tensor | None,
    include_last_offset: bool,
    padding_idx: int | None,
    api: str,
) -> tuple[Tensor | None, Tensor, Tensor, int, int]:
    """Validate :func:`embedding_bag`'s arguments and renormalize rows (``max_norm``).

    Returns ``(per_sample_weights, ids, bounds, pooling, padding_idx)``: flat weights (or ``None``), flat int64 ids, ``num_bags + 1`` bag
    boundaries, the ops-level pooling code and ``padding_idx`` as a row or ``-1``.
    """
    _check_weight(weight, api)
    _check_float_weight(weight, api)
    mode = check_bag_mode(mode, scale_grad_by_freq, api)
    num_rows = weight.shape[0]
    padding_idx = ops.normalize_padding_idx(padding_idx, num_rows, api, EmbeddingValueError)
    _check_max_norm(max_norm, norm_type, api)
    ops.check_id_dtype(input, api)
    _check_per_sample_weights(per_sample_weights, input, weight, mode, api)
    ids, bounds = _bag_layout(input, offsets, include_last_offset, api)
    ops.check_ids(ids, num_rows, api)
    if max_norm is not None:  # outside autograd: neither gradients nor tangents see it
        ops.renorm_rows_(weight.detach(), ops.plain(ids).reshape(-1), max_norm, norm_type)
    weights = None if per_sample_weights is None else per_sample_weights.reshape(-1)
    if bounds.numel() == 1:  # no bags: ids outside every bag take no part
        ids, bounds = ids[:0], torch.zeros_like(bounds)
        weights = None if weights is None else weights[:0]
    pad = -1 if padding_idx is None else padding_idx
    return weights, ids.long().contiguous(), bounds, _POOLING[mode], pad
