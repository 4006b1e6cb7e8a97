"""Pure-PyTorch twin of the compiled fused row update (``embtable::fused_update_rows``).

The oracle of the C++ kernel: same arguments, same results to 1e-6 (float32),
computed with general tensor operations in the same order of floating-point
operations.  (The twin of ``embtable::pool_bags`` is
:func:`embtable.ops._reference.pool_bags`.)

Conventions (shared with the C++ kernels):
    * ``ids``: 1-D int32/int64 row numbers, already validated.
    * ``offsets``: for pooled inputs, ``num_bags + 1`` int64 boundaries
      (``offsets[-1] == len(ids)``); ignored when ``pooling == POOL_NONE``.
    * ``padding_idx``: a row number, or ``-1`` for none.  Padding ids are
      skipped: they are not pooled, do not count in a mean, receive nothing.
    * ``pooling``: :data:`POOL_NONE` (one gradient row per id, ``Embedding``),
      :data:`POOL_SUM`, :data:`POOL_MEAN`, :data:`POOL_MAX`.
    * ``optimizer`` and ``hparams``: see :data:`HPARAM_NAMES`.  Every list
      starts with ``lr, weight_decay, weight_decay_mode`` where the mode is
      0 (none), 1 (L2: ``g += weight_decay * w``) or 2 (decoupled:
      ``w *= 1 - lr * weight_decay`` before the update).
    * ``state``: the optimizer's tensors in the order of :func:`fused_update_rows`.  A
      moment is one float32/bfloat16/float16 ``[V, D]`` tensor, or, quantized
      (``state_dtype="int8_rowwise"``), two consecutive entries: its codes (``[V, D]``,
      int8 for a signed moment, uint8 for a non-negative one) and their float32 scales
      (``[V]``).  Both contiguous.

8-bit row-wise quantized moments (:func:`encode_rows`, :func:`decode_rows`): a row ``x``
is stored as ``scale = max_d |x_d|`` and one code per entry, companded so that small
entries keep precision.  Signed moments (SGD's momentum buffer, Adam's ``exp_avg``):
``q = round(sqrt(|x| / scale) * 127)`` with the sign of ``x``, decoded as
``sign(q) * (|q| / 127)^2 * scale``.  Non-negative moments (Adagrad's ``sum``, Adam's
``exp_avg_sq``): ``q = round((x / scale)^(1/4) * 255)``, decoded as
``(q / 255)^4 * scale``.  Every operation is a float32 tensor operation in a fixed order
(``round`` is half to even; ``1 / 127`` and ``1 / 255`` are float32 constants), which the
C++ kernel reproduces exactly.  The kernel decodes the touched rows, updates them in
float32 exactly as float32 state, and encodes the new rows (untouched rows keep their
codes).

Example:
    >>> import torch
    >>> from embtable.ops._fused_reference import fused_update_rows, OPT_SGD, POOL_NONE
    >>> weight = torch.zeros(4, 2)
    >>> ids = torch.tensor([1, 3, 1])
    >>> grad = torch.ones(3, 2)
    >>> fused_update_rows(weight, [], ids, torch.empty(0, dtype=torch.long), grad, None,
    ...                   POOL_NONE, -1, False, OPT_SGD, [0.5, 0.0, 0, 0.0, 0])
    >>> weight
    tensor([[ 0.0000,  0.0000],
            [-1.0000, -1.0000],
            [ 0.0000,  0.0000],
            [-0.5000, -0.5000]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "HPARAM_NAMES",
    "OPT_ADAGRAD",
    "OPT_ADAM",
    "OPT_ROWWISE_ADAGRAD",
    "OPT_SGD",
    "POOL_MAX",
    "POOL_MEAN",
    "POOL_NONE",
    "POOL_SUM",
    "decode_rows",
    "encode_rows",
    "fused_update_rows",
    "reduce_rows",
]

POOL_NONE, POOL_SUM, POOL_MEAN, POOL_MAX = 0, 1, 2, 3
OPT_SGD, OPT_ADAGRAD, OPT_ROWWISE_ADAGRAD, OPT_ADAM = 0, 1, 2, 3

#: The meaning of ``hparams`` for each optimizer code.
HPARAM_NAMES: dict[int, tuple[str, ...]] = {
    OPT_SGD: ("lr", "weight_decay", "weight_decay_mode", "momentum", "nesterov"),
    OPT_ADAGRAD: ("lr", "weight_decay", "weight_decay_mode", "eps"),
    OPT_ROWWISE_ADAGRAD: ("lr", "weight_decay", "weight_decay_mode", "eps"),
    OPT_ADAM: (
        "lr",
        "weight_decay",
        "weight_decay_mode",
        "beta1",
        "beta2",
        "eps",
        "bias_correction_mode",
        "table_step",
    ),
}


def reduce_rows(
    ids: Tensor,
    offsets: Tensor,
    grad: Tensor,
    per_sample_weights: Tensor | None,
    pooling: int,
    padding_idx: int,
    scale_grad_by_freq: bool,
) -> tuple[Tensor, Tensor]:
    """The distinct non-padding rows of ``ids`` and their summed gradient ``[U, D]`` (float32).

    Contribution of position ``i`` in bag ``b``: ``grad[b] * coeff[i]`` with ``coeff`` the
    per-sample weight times ``1 / (non-padding ids in bag b)`` for mean pooling (``grad[i]``
    when ``pooling == POOL_NONE``); contributions are added in input order, then divided by
    the id's count when ``scale_grad_by_freq``.
    """
    ids = ids.long()
    grad = grad.float().reshape(-1, grad.shape[-1])
    n = ids.numel()
    coeff = None if per_sample_weights is None else per_sample_weights.float()
    if pooling == POOL_NONE:
        src = torch.arange(n)
    else:
        offsets = offsets.long()
        num_bags = offsets.numel() - 1
        src = torch.repeat_interleave(torch.arange(num_bags), offsets[1:] - offsets[:-1])
        if pooling == POOL_MEAN:
            counts = torch.zeros(num_bags, dtype=torch.long).index_add_(
                0, src, (ids != padding_idx).long()
            )
            inverse = torch.where(counts > 0, 1.0 / counts.clamp_min(1).float(), 1.0)
            inverse = inverse.index_select(0, src)
            coeff = inverse if coeff is None else coeff * inverse
    keep = ids != padding_idx
    ids, src = ids[keep], src[keep]
    coeff = None if coeff is None else coeff[keep]
    rows, inverse, counts = torch.unique(ids, sorted=True, return_inverse=True, return_counts=True)
    contributions = grad.index_select(0, src)
    if coeff is not None:
        contributions = contributions * coeff.unsqueeze(1)
    summed = grad.new_zeros((rows.numel(), grad.shape[1])).index_add_(0, inverse, contributions)
    if scale_grad_by_freq:
        summed = summed / counts.float().unsqueeze(1)
    return rows, summed


_C127 = torch.tensor(127.0, dtype=torch.float32)
_C255 = torch.tensor(255.0, dtype=torch.float32)
_INV127 = torch.tensor(1 / 127, dtype=torch.float32)
_INV255 = torch.tensor(1 / 255, dtype=torch.float32)


def encode_rows(x: Tensor, signed: bool) -> tuple[Tensor, Tensor]:
    """8-bit row-wise codes of ``x`` and one float32 scale per row (the row's max ``|x|``).

    Args:
        x: ``[U, D]`` values (computed in float32).
        signed: int8 codes in ``[-127, 127]`` (``sqrt`` companding) when True, else uint8
            codes in ``[0, 255]`` of the non-negative values (fourth-root companding;
            negative values are stored as 0).

    Returns:
        ``(codes [U, D] int8 or uint8, scale [U] float32)``; an all-zero row has scale 0
        and codes 0.

    Example:
        >>> import torch
        >>> from embtable.ops._fused_reference import decode_rows, encode_rows
        >>> codes, scale = encode_rows(torch.tensor([[-4.0, 1.0, 0.0], [0.0, 0.0, 0.0]]), True)
        >>> codes, scale
        (tensor([[-127,   64,    0],
                [   0,    0,    0]], dtype=torch.int8), tensor([4., 0.]))
        >>> decode_rows(codes, scale, True)
        tensor([[-4.0000,  1.0158,  0.0000],
                [ 0.0000,  0.0000,  0.0000]])
        >>> codes, scale = encode_rows(torch.tensor([[1e-4, 1e-8, 0.0]]), False)
        >>> codes, decode_rows(codes, scale, False)
        (tensor([[255,  26,   0]], dtype=torch.uint8), tensor([[1.0000e-04, 1.0808e-08, 0.0000e+00]]))
    """
    x = x.float()
    magnitude = x.abs() if signed else x.clamp_min(0.0)
    scale = magnitude.amax(1) if x.shape[1] > 0 else x.new_zeros(x.shape[0])
    divisor = torch.where(scale > 0.0, scale, torch.ones_like(scale)).unsqueeze(1)
    r = magnitude / divisor
    if signed:
        q = torch.round(r.sqrt() * _C127) * x.sign()
        return q.clamp(-127.0, 127.0).to(torch.int8), scale
    q = torch.round(r.sqrt().sqrt() * _C255)
    return q.clamp(0.0, 255.0).to(torch.uint8), scale


def decode_rows(codes: Tensor, scale: Tensor, signed: bool) -> Tensor:
    """The float32 ``[U, D]`` values of :func:`encode_rows`' ``codes`` and ``scale``.

    Signed: ``sign(q) * ((|q| / 127)^2 * scale)``; unsigned: ``((q / 255)^2)^2 * scale``
    (``/ 127`` is ``* float32(1 / 127)``, and so on; see the module docstring).
    """
    s = scale.float().unsqueeze(1)
    if signed:
        a = codes.abs().float() * _INV127
        return codes.sign().float() * ((a * a) * s)
    a = codes.float() * _INV255
    b = a * a
    return (b * b) * s


def _slots(state: Sequence[Tensor]) -> list[tuple[Tensor, Tensor | None]]:
    """``state`` as ``(tensor, scale)`` pairs: a quantized moment's codes with their scales."""
    slots, i = [], 0
    while i < len(state):
        if state[i].dtype in (torch.int8, torch.uint8):
            slots.append((state[i], state[i + 1]))
            i += 2
        else:
            slots.append((state[i], None))
            i += 1
    return slots


def _read(slot: tuple[Tensor, Tensor | None], rows: Tensor) -> Tensor:
    tensor, scale = slot
    if scale is None:
        return tensor.index_select(0, rows).float()
    return decode_rows(tensor.index_select(0, rows), scale.index_select(0, rows), tensor.dtype == torch.int8)


def _write(slot: tuple[Tensor, Tensor | None], rows: Tensor, value: Tensor) -> None:
    tensor, scale = slot
    if scale is None:
        tensor.index_copy_(0, rows, value.to(tensor.dtype))
        return
    codes, new_scale = encode_rows(value, tensor.dtype == torch.int8)
    tensor.index_copy_(0, rows, codes)
    scale.index_copy_(0, rows, new_scale)


def _decayed(w: Tensor, lr: float, weight_decay: float, mode: int) -> Tensor:
    return w * float(1.0 - lr * weight_decay) if mode == 2 else w


def _with_l2(g: Tensor, w: Tensor, weight_decay: float, mode: int) -> Tensor:
    return g + float(weight_decay) * w if mode == 1 else g


def rowwise_adagrad_new_rows(
    w: Tensor, g: Tensor, total: Tensor, lr: float, wd: float, mode: int, eps: float
) -> Tensor:
    """Row-wise Adagrad's new rows ``w`` (float32) from the gradient rows ``g`` and each row's
    updated accumulator ``total`` (also the formula of the column shards in
    :mod:`embtable.distributed`, whose ``total`` spans every shard's columns)."""
    lr_t, wd_t = torch.tensor(lr, dtype=torch.float32), torch.tensor(wd, dtype=torch.float32)
    multiplier = torch.div(lr_t, total.sqrt() + eps)
    if mode == 1:
        correction = 1.0 - multiplier * wd_t
    elif mode == 2:
        correction = torch.ones_like(multiplier) * (1.0 - lr_t * wd_t)
    else:
        correction = torch.ones_like(multiplier)
    return correction.unsqueeze(1) * w - multiplier.unsqueeze(1) * g


def adam_new_rows(
    w: Tensor, g: Tensor, slots: list, rows: Tensor, hparams: Sequence[float]
) -> tuple[Tensor, Tensor, Tensor]:
    """Adam's new rows and moments ``(new, m, v)`` of ``rows``; advances the step counts in
    ``slots[2]`` and leaves writing the moments to the caller."""
    lr, wd, mode = float(hparams[0]), float(hparams[1]), int(hparams[2])
    beta1, beta2, eps = float(hparams[3]), float(hparams[4]), float(hparams[5])
    per_row, table_step = int(hparams[6]) == 0, int(hparams[7])
    steps = slots[2][0]
    t = steps.index_select(0, rows) + 1 if per_row else torch.full_like(rows, table_step)
    steps.index_copy_(0, rows, t.to(steps.dtype))
    t = t.double()
    bc1 = 1.0 - torch.pow(torch.tensor(beta1, dtype=torch.float64), t)
    bc2 = 1.0 - torch.pow(torch.tensor(beta2, dtype=torch.float64), t)
    neg_step_size = (-(lr * bc2.sqrt() / bc1)).float().unsqueeze(1)
    step = _with_l2(g, w, wd, mode)
    m_old = _read(slots[0], rows)
    v_old = _read(slots[1], rows)
    m_new = (step - m_old) * (1.0 - beta1) + m_old
    v_new = (step * step - v_old) * (1.0 - beta2) + v_old
    new = _decayed(w, lr, wd, mode) + neg_step_size * (m_new / (v_new.sqrt() + eps))
    return new, m_new, v_new


def elementwise_new_rows(
    optimizer: int, w: Tensor, g: Tensor, slots: list, rows: Tensor, hparams: Sequence[float]
) -> tuple[Tensor, list[tuple[Any, Tensor]]]:
    """SGD's, Adagrad's or Adam's new rows of ``rows`` (float32 ``w``, gradient rows ``g``) and
    the state to write, ``[(slot, values)]``; the caller writes it (Adam's step counts
    excepted: :func:`adam_new_rows` advances them).  Also the column shards' formula in
    :mod:`embtable.distributed`, whose elementwise rules need no statistic across shards."""
    lr, wd, mode = float(hparams[0]), float(hparams[1]), int(hparams[2])
    if optimizer == OPT_ADAM:
        new, m_new, v_new = adam_new_rows(w, g, slots, rows, hparams)
        return new, [(slots[0], m_new), (slots[1], v_new)]
    step = _with_l2(g, w, wd, mode)
    if optimizer == OPT_ADAGRAD:
        total = _read(slots[0], rows) + step * step
        return _decayed(w, lr, wd, mode) - lr * (step / (total.sqrt() + float(hparams[3]))), [(slots[0], total)]
    if optimizer != OPT_SGD:
        raise ValueError(f"elementwise_new_rows: optimizer code {optimizer!r} is not SGD, Adagrad or Adam")
    momentum, nesterov = float(hparams[3]), bool(hparams[4])
    writes = []
    if momentum != 0.0:
        buf = _read(slots[0], rows) * momentum + step
        writes.append((slots[0], buf))
        step = step + momentum * buf if nesterov else buf
    return _decayed(w, lr, wd, mode) - lr * step, writes


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
    """Reduce the output gradient per distinct row and apply one optimizer update, in place.

    Reads each touched row of ``weight`` and ``state`` once and writes it once; no
    ``[V, D]`` gradient is formed.  State tensors may be float32, float16 or bfloat16
    (the arithmetic is float32; results are rounded back to the state's dtype), or
    int8/uint8 codes followed by their float32 row scales (see the module docstring).
    """
    rows, g = reduce_rows(ids, offsets, grad, per_sample_weights, pooling, padding_idx, scale_grad_by_freq)
    if rows.numel() == 0:
        return
    h = list(hparams)
    lr, wd, mode = float(h[0]), float(h[1]), int(h[2])
    w = weight.index_select(0, rows).float()
    slots = _slots(state)
    if optimizer in (OPT_SGD, OPT_ADAGRAD, OPT_ADAM):
        new, writes = elementwise_new_rows(optimizer, w, g, slots, rows, h)
        for slot, value in writes:
            _write(slot, rows, value)
    elif optimizer == OPT_ROWWISE_ADAGRAD:
        eps = float(h[3])
        g_eff = _with_l2(g, w, wd, mode)
        square = (g_eff * g_eff).sum(1) / g.shape[1]
        total = state[0].index_select(0, rows).float() + square
        state[0].index_copy_(0, rows, total.to(state[0].dtype))
        new = rowwise_adagrad_new_rows(w, g, total, lr, wd, mode, eps)
    else:
        raise ValueError(f"fused_update_rows: unknown optimizer code {optimizer!r}; expected 0..3")
    with torch.no_grad():
        weight.index_copy_(0, rows, new.to(weight.dtype))
