"""The autograd Functions behind :mod:`embtable.functional`.

Each lookup has two Functions.  The plain one (``_EmbeddingFunction``,
``_EmbeddingBagFunction``, ``_GroupedBagFunction``) has no ``setup_context``: torch binds
the arguments of a Function that has one by signature on every call (~70 us), and
``torch.compile`` cannot trace a custom ``jvp``.  It runs ordinary gradients and everything
under ``torch.compile``.  The ``...Jvp`` variant (``setup_context``, ``vmap``, ``jvp``) runs
while a ``torch.func`` transform or forward-mode AD is active; :func:`function_for` chooses.

Backwards: inside ``vmap`` the vmap-able twins of :mod:`embtable.ops` (``*_batchable``),
16-bit tables torch's in-type accumulation (``*_half``), else the ordinary kernels.

On the plain eager path (what ``function_for`` answers with ``plain``, outside
``torch.compile``) a lookup of a float32/float64 CPU table runs through the compiled
``embtable::embedding_lookup`` instead (:func:`compiled_embedding`): the same forward and
backward, with the autograd formula in C++ (``csrc/cpu/embedding_autograd_cpu.cpp``), which
saves the Python Function's per-call cost.  ``_EmbeddingFunction`` stays its oracle and the
path everywhere else (``torch.func``, forward AD, ``torch.compile`` / export, 16-bit tables,
tensor subclasses and modes, no extension).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor
from torch.autograd import forward_ad

from embtable import ops

__all__ = ["compiled_embedding", "compiled_embedding_op", "feature_major", "function_for"]


def function_for(
    plain: type[torch.autograd.Function],
    with_jvp: type[torch.autograd.Function],
    weight: Tensor,
    *others: Tensor | None,
) -> type[torch.autograd.Function] | None:
    """The autograd Function a lookup must run through, or ``None`` when none is needed.

    ``with_jvp`` (``setup_context``, ``vmap`` and ``jvp``) while a ``torch.func`` transform or
    forward-mode AD is active; ``plain`` (no ``setup_context``, whose per-call argument
    binding costs ~70 us) when gradients are on for an input, also under ``torch.compile``,
    which cannot trace a custom ``jvp``; else ``None``.
    """
    grads = torch.is_grad_enabled() and (
        weight.requires_grad or any(t is not None and t.requires_grad for t in others)
    )
    if torch.compiler.is_compiling():
        return plain if grads else None
    if forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active():
        return with_jvp
    return plain if grads else None


def _embedding_grad(
    num_rows: int,
    flat_ids: Tensor,
    grad_output: Tensor,
    padding_idx: int | None,
    scale_grad_by_freq: bool,
    sparse: bool,
) -> Tensor:
    """The weight gradient of a lookup of ``flat_ids`` (shared by the Function and its vmap rule)."""
    rows = grad_output.reshape(flat_ids.shape[-1], grad_output.shape[-1])
    if ops.batched(grad_output, flat_ids):  # inside vmap (vmap(grad), jacrev): dense, vmap-able
        return ops.embedding_backward_batchable(num_rows, flat_ids, rows, padding_idx, scale_grad_by_freq)
    scale = ops.frequency_scale(flat_ids) if scale_grad_by_freq else None
    if sparse:
        return ops.sparse_row_grad(num_rows, flat_ids, rows, padding_idx, scale)
    if ops.is_half(rows.dtype):  # torch accumulates 16-bit gradients in the 16-bit type
        return ops.embedding_backward_half(num_rows, flat_ids, rows, padding_idx, scale)
    return ops.scatter_add_rows(num_rows, flat_ids, rows, padding_idx, scale)


#: Table dtypes of ``embtable::embedding_lookup`` (16-bit tables need the Python path's
#: in-type accumulation, :func:`embtable.ops.embedding_backward_half`).
_COMPILED_LOOKUP_DTYPES = (torch.float32, torch.float64)
_PLAIN_TENSORS = (Tensor, torch.nn.Parameter)
_COMPILED_LOOKUP: list[Any] = []  # the op's overload, once the extension is loaded


def compiled_embedding_op() -> Any | None:
    """``torch.ops.embtable.embedding_lookup.default`` (its fake kernel registered), or ``None``
    when the compiled extension is not available (or was built before the op existed)."""
    if not _COMPILED_LOOKUP:
        if not ops.extension_available():
            return None
        if not hasattr(torch.ops.embtable, "embedding_lookup"):  # a stale build
            _COMPILED_LOOKUP.append(None)
            return None

        @torch.library.register_fake("embtable::embedding_lookup")
        def _embedding_lookup_fake(weight, ids, padding_idx, scale_grad_by_freq, sparse):
            return weight.new_empty((*ids.shape, weight.shape[1]))

        _COMPILED_LOOKUP.append(torch.ops.embtable.embedding_lookup.default)
    return _COMPILED_LOOKUP[0]


def compiled_embedding(
    weight: Tensor, ids: Tensor, padding_idx: int | None, scale_grad_by_freq: bool, sparse: bool
) -> Tensor | None:
    """The lookup through ``embtable::embedding_lookup``, whose autograd formula is C++
    (``csrc/cpu/embedding_autograd_cpu.cpp``), or ``None`` where that op does not apply.

    It applies on the plain eager path only, where :func:`function_for` chose
    :class:`_EmbeddingFunction` outside ``torch.compile``: plain CPU tensors (no subclass, no
    meta), a float32 or float64 table, no ``torch.func`` transform, forward AD, dispatch or
    function mode active, and the extension built.  There it saves the Python Function's
    per-call cost; the results are the Python Function's, bit for bit (its backward calls the
    same ATen ops in the same order).  ``ids`` keeps its shape: the output is
    ``(*ids.shape, D)``.
    """
    if (
        type(weight) not in _PLAIN_TENSORS
        or type(ids) is not Tensor
        or weight.dtype not in _COMPILED_LOOKUP_DTYPES
        or weight.device.type != "cpu"
        or ids.device.type != "cpu"
        or torch.compiler.is_compiling()
        or torch._C._len_torch_dispatch_stack() > 0
        or torch._C._is_torch_function_mode_enabled()
    ):
        return None
    op = compiled_embedding_op()
    if op is None:
        return None
    return op(weight, ids, -1 if padding_idx is None else padding_idx, scale_grad_by_freq, sparse)


class _EmbeddingFunction(torch.autograd.Function):
    """Row gather whose backward reduces output-gradient rows into the weight's rows.

    The plain path (gradients on, no ``torch.func`` transform, no forward AD, and under
    ``torch.compile``): a Function without ``setup_context``, because torch binds the
    arguments of one that has it by signature on every call (~70 us).
    :class:`_EmbeddingFunctionJvp` is the same Function for ``torch.func`` and forward AD.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        weight: Tensor,
        flat_ids: Tensor,
        out_shape: tuple[int, ...],
        padding_idx: int | None,
        scale_grad_by_freq: bool,
        sparse: bool,
    ) -> Tensor:
        _EmbeddingFunction.save(ctx, weight, flat_ids, out_shape, padding_idx, scale_grad_by_freq, sparse)
        return ops.gather_rows(weight, flat_ids).reshape(out_shape)

    @staticmethod
    def save(
        ctx: Any,
        weight: Tensor,
        flat_ids: Tensor,
        out_shape: tuple[int, ...],
        padding_idx: int | None,
        scale_grad_by_freq: bool,
        sparse: bool,
    ) -> None:
        ctx.save_for_backward(flat_ids)
        ctx.num_rows = weight.shape[0]
        ctx.out_shape = out_shape
        ctx.padding_idx = padding_idx
        ctx.scale_grad_by_freq = scale_grad_by_freq
        ctx.sparse = sparse

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        (flat_ids,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return (None,) * 6
        grad_weight = _embedding_grad(
            ctx.num_rows, flat_ids, grad_output, ctx.padding_idx, ctx.scale_grad_by_freq, ctx.sparse
        )
        return grad_weight, None, None, None, None, None


class _EmbeddingFunctionFunc(torch.autograd.Function):
    """Row gather whose backward reduces output-gradient rows into the weight's rows.

    ``setup_context`` and ``vmap`` make it work with the ``torch.func`` transforms (``grad``,
    ``vmap(grad)``, ``jacrev``); :class:`_EmbeddingFunctionJvp` adds forward-mode AD.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        weight: Tensor,
        flat_ids: Tensor,
        out_shape: tuple[int, ...],
        padding_idx: int | None,
        scale_grad_by_freq: bool,
        sparse: bool,
    ) -> Tensor:
        return ops.gather_rows(weight, flat_ids).reshape(out_shape)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _EmbeddingFunction.save(ctx, *inputs)
        ctx.save_for_forward(inputs[1])

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        return _EmbeddingFunction.backward(ctx, grad_output)

    @staticmethod
    def vmap(
        info: Any,
        in_dims: tuple[int | None, ...],
        weight: Tensor,
        flat_ids: Tensor,
        out_shape: tuple[int, ...],
        padding_idx: int | None,
        scale_grad_by_freq: bool,
        sparse: bool,
    ) -> tuple[Tensor, int]:
        """A batch of lookups: one lookup of all examples' ids when the table is shared (and
        no per-example frequency is needed), else one lookup per example."""
        size = info.batch_size
        weight_dim, ids_dim = in_dims[0], in_dims[1]
        ids = flat_ids.movedim(ids_dim, 0) if ids_dim is not None else flat_ids.expand(size, -1)
        if weight_dim is None and not scale_grad_by_freq:
            out = _EmbeddingFunctionJvp.apply(
                weight, ids.reshape(-1), (size, *out_shape), padding_idx, False, sparse
            )
            return out, 0
        tables = weight.movedim(weight_dim, 0) if weight_dim is not None else weight.expand(size, -1, -1)
        outs = [
            _EmbeddingFunctionJvp.apply(t, i, out_shape, padding_idx, scale_grad_by_freq, sparse)
            for t, i in zip(tables.unbind(0), ids.unbind(0))
        ]
        return torch.stack(outs), 0


class _EmbeddingFunctionJvp(_EmbeddingFunctionFunc):
    """:class:`_EmbeddingFunction` with forward-mode AD (chosen only where it is needed:
    ``torch.compile`` cannot trace a custom ``jvp``)."""

    @staticmethod
    def jvp(ctx: Any, weight_tangent: Tensor | None, *_: Any) -> Tensor:
        """The tangent of a lookup is the lookup of the weight's tangent (as torch's)."""
        (flat_ids,) = ctx.saved_tensors
        return weight_tangent.index_select(0, flat_ids).reshape(ctx.out_shape)


def _bag_weight_grad(
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
    """The weight gradient of a pooled lookup: vmap-able inside ``torch.func.vmap``, torch's
    16-bit accumulation for half tables, else :func:`embtable.ops.pool_bags_backward`."""
    args = (grad_output, ids, offsets, per_sample_weights, max_ids, num_rows, pooling, padding_idx)
    if ops.batched(grad_output, ids, offsets, per_sample_weights, max_ids):
        if not ops.batched(offsets):
            return ops.pool_bags_backward_batchable(*args, scale_grad_by_freq)
        with warnings.catch_warnings():  # batched offsets (a collection's stack of examples):
            # searchsorted copies vmap's strided physical tensors, and says so once
            warnings.filterwarnings("ignore", "torch.searchsorted", UserWarning)
            return ops.pool_bags_backward_batchable(*args, scale_grad_by_freq)
    if not sparse and ops.is_half(grad_output.dtype):
        return ops.pool_bags_backward_half(*args, scale_grad_by_freq)
    return ops.pool_bags_backward(*args, scale_grad_by_freq, sparse)


def _bag_weights_grad(
    grad_output: Tensor, table: Tensor, ids: Tensor, offsets: Tensor, padding_idx: int
) -> Tensor:
    """The gradient of a weighted sum with respect to ``per_sample_weights``."""
    if ops.batched(grad_output, table, ids, offsets):
        return ops.pool_bags_weights_backward_batchable(grad_output, table, ids, offsets, padding_idx)
    return ops.pool_bags_weights_backward(grad_output, table, ids, offsets, padding_idx)


def _bag_tangent(
    weight: Tensor,
    weight_tangent: Tensor | None,
    weights: Tensor | None,
    weights_tangent: Tensor | None,
    ids: Tensor,
    offsets: Tensor,
    max_ids: Tensor,
    pooling: int,
    padding_idx: int,
) -> Tensor:
    """The forward-mode tangent of :func:`embtable.ops.pool_bags` (linear in each argument)."""
    out = None
    if weight_tangent is not None:
        if pooling == ops.POOL_MAX:  # the tangent of the winning row, per column
            dim = weight_tangent.shape[1]
            won = max_ids >= 0
            flat = (torch.where(won, max_ids, 0) * dim + torch.arange(dim, device=ids.device))
            picked = weight_tangent.reshape(-1).index_select(0, flat.reshape(-1)).view_as(flat)
            out = torch.where(won, picked, 0)
        else:
            out = _reference_pool(weight_tangent, ids, offsets, weights, pooling, padding_idx)
    if weights_tangent is not None:
        part = _reference_pool(weight, ids, offsets, weights_tangent, ops.POOL_SUM, padding_idx)
        out = part if out is None else out + part
    return out


def _reference_pool(
    weight: Tensor, ids: Tensor, offsets: Tensor, weights: Tensor | None, pooling: int, padding_idx: int
) -> Tensor:
    """Sum/mean pooling in differentiable, vmap-able operations (tangents, vmap fallbacks)."""
    bag_of = ops.bag_of_ids_batchable(offsets, ids.numel())
    math_dtype = ops.opmath_dtype(weight.dtype)
    rows = weight.index_select(0, ids).to(math_dtype)
    if weights is not None:
        rows = rows * weights.to(math_dtype).unsqueeze(1)
    if padding_idx >= 0:
        rows = torch.where((ids != padding_idx).unsqueeze(1), rows, 0)
    num_bags = offsets.shape[-1] - 1
    out = rows.new_zeros((num_bags, weight.shape[1])).index_add(0, bag_of, rows)
    if pooling == ops.POOL_MEAN:
        sizes = offsets.diff()
        if padding_idx >= 0:
            padded = (ids == padding_idx).long()
            sizes = sizes - sizes.new_zeros(sizes.shape).index_add(0, bag_of, padded)
        out = out / sizes.clamp(min=1).to(math_dtype).unsqueeze(1)
    return out.to(weight.dtype)


class _EmbeddingBagFunction(torch.autograd.Function):
    """Pooled gather whose backward spreads each bag's output gradient over its rows.

    Returns ``(out, max_ids)``; ``max_ids`` (the winners of max pooling) is not
    differentiable.  The plain path, without ``setup_context`` (see :class:`_EmbeddingFunction`);
    :class:`_EmbeddingBagFunctionJvp` serves ``torch.func`` and forward AD.
    """

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
        sparse: bool,
    ) -> tuple[Tensor, Tensor]:
        inputs = (weight, per_sample_weights, ids, offsets, pooling, padding_idx, scale_grad_by_freq, sparse)
        output = _EmbeddingBagFunctionFunc.forward(*inputs)
        _EmbeddingBagFunction.save(ctx, inputs, output)
        return output

    @staticmethod
    def save(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        weight, per_sample_weights, ids, offsets, pooling, padding_idx, scale_grad_by_freq, sparse = inputs
        max_ids = output[1]
        ctx.mark_non_differentiable(max_ids)
        table = weight if ctx.needs_input_grad[1] else None
        ctx.save_for_backward(ids, offsets, max_ids, per_sample_weights, table)
        ctx.num_rows = weight.shape[0]
        ctx.pooling = pooling
        ctx.padding_idx = padding_idx
        ctx.scale_grad_by_freq = scale_grad_by_freq
        ctx.sparse = sparse

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _grad_max_ids: Any = None) -> tuple[Tensor | None, ...]:
        ids, offsets, max_ids, per_sample_weights, table = ctx.saved_tensors
        grad_weight = grad_per_sample_weights = None
        if ctx.needs_input_grad[0]:
            grad_weight = _bag_weight_grad(
                grad_output, ids, offsets, per_sample_weights, max_ids, ctx.num_rows,
                ctx.pooling, ctx.padding_idx, ctx.scale_grad_by_freq, ctx.sparse,
            )
        if ctx.needs_input_grad[1]:
            grad_per_sample_weights = _bag_weights_grad(grad_output, table, ids, offsets, ctx.padding_idx)
        return grad_weight, grad_per_sample_weights, None, None, None, None, None, None


class _EmbeddingBagFunctionFunc(torch.autograd.Function):
    """:class:`_EmbeddingBagFunction` with ``setup_context`` and ``vmap`` (``torch.func``)."""

    @staticmethod
    def forward(  # type: ignore[override]
        weight: Tensor,
        per_sample_weights: Tensor | None,
        ids: Tensor,
        offsets: Tensor,
        pooling: int,
        padding_idx: int,
        scale_grad_by_freq: bool,
        sparse: bool,
    ) -> tuple[Tensor, Tensor]:
        if weight.device.type == "meta":  # shapes only (tracing a model on the meta device)
            num_bags = max(offsets.shape[0] - 1, 0)
            winners = (num_bags, weight.shape[1]) if pooling == ops.POOL_MAX else (0,)
            return weight.new_empty((num_bags, weight.shape[1])), ids.new_empty(winners, dtype=torch.long)
        return ops.pool_bags(weight, ids, offsets, per_sample_weights, pooling, padding_idx)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        _EmbeddingBagFunction.save(ctx, inputs, output)
        weight, per_sample_weights, ids, offsets = inputs[:4]
        ctx.save_for_forward(weight, per_sample_weights, ids, offsets, output[1])

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _grad_max_ids: Any = None) -> tuple[Tensor | None, ...]:
        return _EmbeddingBagFunction.backward(ctx, grad_output)

    @staticmethod
    def vmap(
        info: Any,
        in_dims: tuple[int | None, ...],
        weight: Tensor,
        per_sample_weights: Tensor | None,
        ids: Tensor,
        offsets: Tensor,
        pooling: int,
        padding_idx: int,
        scale_grad_by_freq: bool,
        sparse: bool,
    ) -> tuple[tuple[Tensor, Tensor], tuple[int, int]]:
        """A batch of pooled lookups: the examples' bags pooled in one call when the table is
        shared (and no per-example frequency is needed), else one call per example."""
        size = info.batch_size

        def batch(t: Tensor | None, dim: int | None) -> Tensor | None:
            if t is None:
                return None
            return t.movedim(dim, 0) if dim is not None else t.expand(size, *t.shape)

        w_dim, p_dim, i_dim, o_dim = in_dims[:4]
        weights, all_ids, bounds = batch(per_sample_weights, p_dim), batch(ids, i_dim), batch(offsets, o_dim)
        if w_dim is None and not scale_grad_by_freq:
            num_ids, num_bags = all_ids.shape[1], bounds.shape[1] - 1
            shift = torch.arange(size, device=bounds.device).unsqueeze(1) * num_ids
            starts = (bounds[:, :-1] + shift).reshape(-1)
            flat_bounds = torch.cat([starts, starts.new_full((1,), size * num_ids)])
            flat_weights = None if weights is None else weights.reshape(-1)
            out, max_ids = _EmbeddingBagFunctionJvp.apply(
                weight, flat_weights, all_ids.reshape(-1), flat_bounds, pooling, padding_idx, False, sparse
            )
            out = out.view(size, num_bags, out.shape[1])
            max_ids = max_ids.view(size, num_bags, -1) if pooling == ops.POOL_MAX else max_ids.new_empty((size, 0))
            return (out, max_ids), (0, 0)
        tables = batch(weight, w_dim)
        outs, winners = [], []
        for b in range(size):
            out, max_ids = _EmbeddingBagFunctionJvp.apply(
                tables[b], None if weights is None else weights[b], all_ids[b], bounds[b],
                pooling, padding_idx, scale_grad_by_freq, sparse,
            )
            outs.append(out)
            winners.append(max_ids)
        return (torch.stack(outs), torch.stack(winners)), (0, 0)


class _EmbeddingBagFunctionJvp(_EmbeddingBagFunctionFunc):
    """:class:`_EmbeddingBagFunction` with forward-mode AD (see :class:`_EmbeddingFunctionJvp`)."""

    @staticmethod
    def jvp(
        ctx: Any, weight_tangent: Tensor | None, weights_tangent: Tensor | None, *_: Any
    ) -> tuple[Tensor, None]:
        """The tangent of the pooled rows: the weight's tangent pooled the same way (the
        winners' tangents for max), plus the weights' tangent times the rows for a weighted sum."""
        weight, weights, ids, offsets, max_ids = ctx.saved_tensors
        tangent = _bag_tangent(
            weight, weight_tangent, weights, weights_tangent, ids, offsets, max_ids,
            ctx.pooling, ctx.padding_idx,
        )
        return tangent, None


class _GroupedBagFunction(torch.autograd.Function):
    """Pooling of feature-major bags into ``[B, F * D]``; backward as :class:`_EmbeddingBagFunction`.

    The plain path, without ``setup_context`` (see :class:`_EmbeddingFunction`);
    :class:`_GroupedBagFunctionJvp` serves ``torch.func`` and forward AD.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        weight: Tensor,
        per_sample_weights: Tensor | None,
        ids: Tensor,
        offsets: Tensor,
        pooling: int,
        padding_idx: int,
        num_features: int,
    ) -> Tensor:
        _GroupedBagFunction.save(ctx, (weight, per_sample_weights, ids, offsets, pooling, padding_idx, num_features))
        return ops.pool_bags_grouped(weight, ids, offsets, per_sample_weights, pooling, padding_idx, num_features)

    @staticmethod
    def save(ctx: Any, inputs: tuple[Any, ...]) -> None:
        weight, per_sample_weights, ids, offsets, pooling, padding_idx, num_features = inputs
        table = weight if ctx.needs_input_grad[1] else None
        ctx.save_for_backward(ids, offsets, per_sample_weights, table)
        ctx.meta = (weight.shape[0], pooling, padding_idx, num_features)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        ids, offsets, per_sample_weights, table = ctx.saved_tensors
        num_rows, pooling, padding_idx, num_features = ctx.meta
        grad = feature_major(grad_output, num_features)
        grad_weight = grad_per_sample_weights = None
        if ctx.needs_input_grad[0]:
            grad_weight = _bag_weight_grad(
                grad, ids, offsets, per_sample_weights, ids.new_empty(0), num_rows, pooling,
                padding_idx, False, False,
            )
        if ctx.needs_input_grad[1]:
            grad_per_sample_weights = _bag_weights_grad(grad, table, ids, offsets, padding_idx)
        return grad_weight, grad_per_sample_weights, None, None, None, None, None


class _GroupedBagFunctionFunc(torch.autograd.Function):
    """:class:`_GroupedBagFunction` with ``setup_context`` and ``vmap`` (``torch.func``)."""

    @staticmethod
    def forward(  # type: ignore[override]
        weight: Tensor,
        per_sample_weights: Tensor | None,
        ids: Tensor,
        offsets: Tensor,
        pooling: int,
        padding_idx: int,
        num_features: int,
    ) -> Tensor:
        return ops.pool_bags_grouped(weight, ids, offsets, per_sample_weights, pooling, padding_idx, num_features)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _GroupedBagFunction.save(ctx, inputs)
        ctx.save_for_forward(*inputs[:4])

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        return _GroupedBagFunction.backward(ctx, grad_output)

    @staticmethod
    def vmap(
        info: Any,
        in_dims: tuple[int | None, ...],
        weight: Tensor,
        per_sample_weights: Tensor | None,
        ids: Tensor,
        offsets: Tensor,
        pooling: int,
        padding_idx: int,
        num_features: int,
    ) -> tuple[Tensor, int]:
        def pick(t: Tensor | None, dim: int | None, b: int) -> Tensor | None:
            return t if t is None or dim is None else t.select(dim, b)

        outs = [
            _GroupedBagFunctionJvp.apply(
                *(pick(t, d, b) for t, d in zip((weight, per_sample_weights, ids, offsets), in_dims)),
                pooling, padding_idx, num_features,
            )
            for b in range(info.batch_size)
        ]
        return torch.stack(outs), 0


class _GroupedBagFunctionJvp(_GroupedBagFunctionFunc):
    """:class:`_GroupedBagFunction` with forward-mode AD (see :class:`_EmbeddingFunctionJvp`)."""

    @staticmethod
    def jvp(ctx: Any, weight_tangent: Tensor | None, weights_tangent: Tensor | None, *_: Any) -> Tensor:
        weight, weights, ids, offsets = ctx.saved_tensors
        _, pooling, padding_idx, num_features = ctx.meta
        tangent = _bag_tangent(
            weight, weight_tangent, weights, weights_tangent, ids, offsets, ids.new_empty(0),
            pooling, padding_idx,
        )
        batch, dim = tangent.shape[0] // num_features, tangent.shape[1]
        return tangent.view(num_features, batch, dim).transpose(0, 1).reshape(batch, num_features * dim)


def feature_major(grad: Tensor, num_features: int) -> Tensor:
    """``[B, F * D]`` (example-major) as ``[F * B, D]`` (bag ``f * B + b``), contiguous."""
    batch, width = grad.shape
    dim = width // num_features
    return grad.reshape(batch, num_features, dim).transpose(0, 1).reshape(num_features * batch, dim)
