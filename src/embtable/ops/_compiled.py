"""The compiled CPU kernels (``embtable._C``) and the choice between them and the reference.

``embtable._C`` is built by the package build (``pip install --no-build-isolation -e .``,
``make test``); it is never compiled at import.  It is loaded lazily, at the first call of
a kernel below.  When it is missing or fails to load, the pure-PyTorch twins in
:mod:`embtable.ops._fused_reference` run instead, and a warning says so once.
``EMBTABLE_NO_EXT=1`` forces the reference path (silently).

The compiled kernels handle float32 tables on the CPU, with optimizer moments stored as
float32, bfloat16 or ``int8_rowwise`` codes; everything else (other table dtypes, devices,
float16 state, bfloat16 row-wise Adagrad state) takes the reference path.

Example:
    >>> import torch
    >>> from embtable.ops import pool_bags
    >>> weight = torch.arange(8.0).reshape(4, 2)
    >>> out, _ = pool_bags(weight, torch.tensor([0, 3, 1]), torch.tensor([0, 2, 3]), None, 1, -1)
    >>> out
    tensor([[6., 8.],
            [2., 3.]])
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from embtable.ops import _fused_reference as _ref
from embtable.ops import _reference

__all__ = [
    "bucket_ids",
    "extension_available",
    "fused_update_rows",
    "gather_rows",
    "pool_bags",
    "pool_bags_backward",
    "pool_bags_grouped",
    "pool_bucket",
    "use_compiled",
]

_STATE: dict[str, bool | None] = {"loaded": None, "warned": False}


def _register_fakes() -> None:
    @torch.library.register_fake("embtable::gather_rows")
    def _gather_rows_fake(weight, ids):
        return weight.new_empty((ids.shape[0], weight.shape[1]))

    @torch.library.register_fake("embtable::pool_bags")
    def _pool_bags_fake(weight, ids, offsets, per_sample_weights, pooling, padding_idx):
        num_bags = max(offsets.shape[0] - 1, 0)
        out = weight.new_empty((num_bags, weight.shape[1]))
        max_shape = (num_bags, weight.shape[1]) if pooling == _ref.POOL_MAX else (0,)
        return out, ids.new_empty(max_shape, dtype=torch.long)

    @torch.library.register_fake("embtable::pool_bags_grouped")
    def _pool_bags_grouped_fake(weight, ids, offsets, per_sample_weights, pooling, padding_idx, num_features):
        batch = max(offsets.shape[0] - 1, 0) // num_features
        return weight.new_empty((batch, num_features * weight.shape[1]))

    @torch.library.register_fake("embtable::pool_bags_backward")
    def _pool_bags_backward_fake(grad, ids, offsets, per_sample_weights, num_rows, pooling, padding_idx):
        return grad.new_empty((num_rows, grad.shape[1]))

    @torch.library.register_fake("embtable::bucket_ids")
    def _bucket_ids_fake(values, lengths, feature_rows, batch):
        ids = values.new_empty(values.shape, dtype=torch.long)
        return ids, lengths.new_empty((lengths.shape[0] + 1,), dtype=torch.long)

    @torch.library.register_fake("embtable::pool_bucket")
    def _pool_bucket_fake(weight, values, lengths, feature_rows, per_sample_weights, pooling, padding_idx, batch):
        return weight.new_empty((batch, feature_rows.shape[0] * weight.shape[1]))

    @torch.library.register_fake("embtable::fused_update_rows")
    def _fused_update_rows_fake(
        weight, state, ids, offsets, grad, per_sample_weights, pooling, padding_idx,
        scale_grad_by_freq, optimizer, hparams,
    ):
        return None


def extension_available() -> bool:
    """Whether ``embtable._C`` is loaded (loading it on the first call).

    ``False`` when ``EMBTABLE_NO_EXT=1`` or when the extension was not built; in the latter
    case a ``UserWarning`` is issued once.
    """
    if _STATE["loaded"] is None:
        if os.environ.get("EMBTABLE_NO_EXT") == "1":
            _STATE["loaded"] = False
            return False
        try:
            import embtable._C  # noqa: F401
        except ImportError as error:
            _STATE["loaded"] = False
            if not _STATE["warned"]:
                _STATE["warned"] = True
                warnings.warn(
                    f"embtable: the compiled CPU kernels (embtable._C) are not available ({error}); "
                    "using the pure-PyTorch reference kernels, which are slower. Rebuild with "
                    "`pip install --no-build-isolation -e .` or `make install`.",
                    stacklevel=3,
                )
            return False
        _register_fakes()
        _STATE["loaded"] = True
    return bool(_STATE["loaded"])


#: Optimizer-state dtypes the compiled fused update reads and writes.
_COMPILED_STATE_DTYPES = (torch.float32, torch.int64, torch.bfloat16, torch.int8, torch.uint8)


def use_compiled(weight: Tensor, *state: Tensor) -> bool:
    """True when the compiled kernels can run on these tensors (a float32 CPU table, state in
    float32 / bfloat16 / 8-bit codes / int64 step counts, all contiguous)."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not weight.is_contiguous():
        return False
    if any(s.dtype not in _COMPILED_STATE_DTYPES or not s.is_contiguous() for s in state):
        return False
    return extension_available()


def gather_rows(weight: Tensor, ids: Tensor) -> Tensor:
    """Rows ``weight[ids]`` of 1-D ``ids`` as a new ``[len(ids), D]`` tensor (``IndexError`` for
    an id outside the table); see :func:`embtable.ops._reference.gather_rows`.  Compiled for
    float32 CPU tables: the same copies, with the rows a few ids ahead prefetched."""
    if ids.dim() == 1 and use_compiled(weight):
        return torch.ops.embtable.gather_rows(weight, ids)
    return _reference.gather_rows(weight, ids)


def pool_bags(
    weight: Tensor,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    pooling: int,
    padding_idx: int,
) -> tuple[Tensor, Tensor]:
    """Pooled gather over bags; see :func:`embtable.ops._reference.pool_bags` (the oracle)."""
    if use_compiled(weight):
        return torch.ops.embtable.pool_bags(weight, ids, offsets, per_sample_weights, pooling, padding_idx)
    return _reference.pool_bags(weight, ids, offsets, per_sample_weights, pooling, padding_idx)


def pool_bags_grouped(
    weight: Tensor,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    pooling: int,
    padding_idx: int,
    num_features: int,
) -> Tensor:
    """Sum/mean pooling of feature-major bags into the ``[B, num_features * D]`` layout.

    Bag ``f * B + b`` (example ``b`` of feature ``f``) lands in columns ``f * D .. (f + 1) * D``
    of row ``b``; otherwise as :func:`pool_bags` (the reference pools, then permutes).
    """
    if use_compiled(weight):
        return torch.ops.embtable.pool_bags_grouped(
            weight, ids, offsets, per_sample_weights, pooling, padding_idx, num_features
        )
    return _reference.pool_bags_grouped(weight, ids, offsets, per_sample_weights, pooling, padding_idx, num_features)


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
    """Weight gradient of :func:`pool_bags`; see :func:`embtable.ops._reference.pool_bags_backward`.

    The dense sum/mean case without ``scale_grad_by_freq`` runs compiled for float32 CPU
    gradients: contributions are added in place into the ``[num_rows, D]`` result, in input
    order per row (the reference's order), without the ``[len(ids), D]`` per-id gradient.
    """
    if (
        not sparse
        and not scale_grad_by_freq
        and pooling != _reference.POOL_MAX
        and grad_output.dtype == torch.float32
        and grad_output.device.type == "cpu"
        and grad_output.dim() == 2
        and extension_available()
    ):
        return torch.ops.embtable.pool_bags_backward(
            grad_output, ids, offsets, per_sample_weights, num_rows, pooling, padding_idx
        )
    return _reference.pool_bags_backward(
        grad_output, ids, offsets, per_sample_weights, max_ids, num_rows, pooling, padding_idx,
        scale_grad_by_freq, sparse,
    )


def bucket_ids(values: Tensor, lengths: Tensor, feature_rows: Tensor, batch: int) -> tuple[Tensor, Tensor]:
    """A bucket's ids shifted by their tables' row offsets, and its bag offsets, in one pass.

    ``feature_rows[f] = (row_offset, num_rows)`` of feature ``f``'s table; ``lengths`` holds
    ``num_features * batch`` bag sizes (feature-major).  Returns int64 ``(ids, offsets)``
    (int32 ``values`` are read without an int64 copy; the ids are int64 either way).
    Raises ``RuntimeError`` (compiled) or ``IndexError`` (reference) when an id lies outside
    its table; callers that need a message naming the feature check again.
    """
    if extension_available() and values.device.type == "cpu":
        return torch.ops.embtable.bucket_ids(values, lengths, feature_rows, batch)
    return _reference.bucket_ids(values, lengths, feature_rows, batch)


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
    """:func:`bucket_ids` and :func:`pool_bags_grouped` in one pass over the ids (no autograd).

    A collection bucket's raw feature-major ``values`` are checked against, and shifted by,
    ``feature_rows`` while they are pooled, so no shifted copy of the ids is written; see
    :func:`embtable.ops._reference.pool_bucket` (the oracle).  Raises ``RuntimeError``
    (compiled) or ``IndexError`` / ``ValueError`` (reference) on an id outside its table or
    bad lengths, as :func:`bucket_ids`.  Forward only: callers needing gradients use
    :func:`bucket_ids` and :func:`embtable.functional.pool_features`.
    """
    if use_compiled(weight) and values.device.type == "cpu":
        return torch.ops.embtable.pool_bucket(
            weight, values, lengths, feature_rows, per_sample_weights, pooling, padding_idx, batch
        )
    return _reference.pool_bucket(weight, values, lengths, feature_rows, per_sample_weights, pooling, padding_idx, batch)


def fused_update_rows(
    weight: Tensor,
    state: Sequence[Tensor],
    ids: Tensor,
    offsets: Tensor,
    grad: Tensor,
    per_sample_weights: Tensor | None,
    pooling: int,
    padding_idx: int,
    scale_grad_by_freq: bool,
    optimizer: int,
    hparams: Sequence[float],
) -> None:
    """Fused per-row reduce + optimizer update; see :func:`embtable.ops._fused_reference.fused_update_rows`."""
    args = (ids, offsets, grad, per_sample_weights, pooling, padding_idx, scale_grad_by_freq, optimizer)
    rowwise_bf16 = optimizer == _ref.OPT_ROWWISE_ADAGRAD and state[0].dtype != torch.float32
    if grad.dtype == torch.float32 and not rowwise_bf16 and use_compiled(weight, *state):
        torch.ops.embtable.fused_update_rows(weight, list(state), *args, [float(h) for h in hparams])
    else:
        _ref.fused_update_rows(weight, state, *args, hparams)
