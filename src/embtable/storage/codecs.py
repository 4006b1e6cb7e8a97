r"""Row formats ("codecs"): how one row of a table is stored, and the reference coder.

Every format stores a table as a ``uint8`` tensor ``[num_rows, row_bytes]``, one row of
bytes per table row:

============  ===================================================  ===============
format        bytes of a row of dim ``D``                          per element
============  ===================================================  ===============
``"fp32"``    ``4 D``: float32, unchanged (mixed precision)           32 bits
``"fp16"``    ``2 D``: IEEE half floats                            16 bits
``"bf16"``    ``2 D``: bfloat16                                    16 bits
``"int8"``    ``D`` codes, then fp16 scale, fp16 bias: ``D + 4``   8 bits
``"int4"``    ``ceil(D / 2)`` bytes of codes + 4: ``D / 2 + 4``    4 bits
``"int2"``    ``ceil(D / 4)`` bytes of codes + 4: ``D / 4 + 4``    2 bits
============  ===================================================  ===============

The integer formats are FBGEMM's fused "N-bit row-wise, fp16 scale and bias" layout (the
layout of ``torch.ops.quantized.embedding_bag_4bit_prepack`` / ``_2bit_prepack``, and of
FBGEMM's inference tables with ``reverse_qparam=True``): element ``d`` of a row is the code
``q_d`` in ``bits`` bits of byte ``d // (8 / bits)``, low bits first, and decodes to
``scale * q_d + bias`` (float32 arithmetic on the fp16 ``scale`` and ``bias``).

Encoding (row-wise, asymmetric; ``n = 2 ** bits - 1``):

- ``bias = fp16(lo)``, ``scale = fp16((hi - bias) / n)`` (1 when that is 0 or its inverse
  overflows), ``q = clamp(round_half_even((x - bias) / scale), 0, n)``, where
- ``lo, hi`` are the row's min and max (``search="minmax"``, the default, byte-identical to
  FBGEMM's and torch's prepack), or the range that ``search="greedy"`` picks: starting from
  the min/max, it repeatedly moves whichever end lowers the row's squared error more
  by 1/200 of the range inward, down to 84 % of it, and keeps the best range seen
  (the idea of FBGEMM's "greedy" 4-bit mode; it helps int4 / int2 on rows with outliers).

Error (:func:`error_bound`): without clamping, an element is off by at most ``scale / 2``;
rounding ``bias`` and ``scale`` to fp16 adds at most ``2**-11`` of ``|lo| + range``.  So for
int8 the error of an element is about ``range / 510``, for int4 ``range / 30``, for int2
``range / 6``; a pooled bag's error is at most the weighted sum of its rows' bounds.
``fp16`` and ``bf16`` round each element to nearest: relative error ``2**-11`` / ``2**-8``.

The functions here are the pure-PyTorch oracle; the compiled kernels of
``csrc/cpu/quantized_cpu.cpp`` decode the same bytes while pooling.

Example:
    >>> import torch
    >>> from embtable.storage import codecs
    >>> rows = torch.tensor([[0.0, 0.5, 1.0, 1.5], [-1.0, 1.0, 0.0, 0.25]])
    >>> packed = codecs.quantize_rows(rows, "int4")
    >>> packed.dtype, packed.shape, codecs.row_bytes("int4", 4)
    (torch.uint8, torch.Size([2, 6]), 6)
    >>> codecs.dequantize_rows(packed, "int4", 4)
    tensor([[ 0.0000,  0.4999,  0.9998,  1.4996],
            [-1.0000,  0.9995,  0.0664,  0.1997]])
    >>> bool((codecs.dequantize_rows(packed, "int4", 4) - rows).abs().amax(1).le(
    ...     codecs.error_bound("int4", rows)).all())
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "FORMATS",
    "RowCodec",
    "codec",
    "dequantize_rows",
    "error_bound",
    "from_fbgemm",
    "from_torch_prepacked",
    "quantize_rows",
    "row_bytes",
    "scale_bias",
    "to_fbgemm",
    "to_torch_prepacked",
    "unpack_codes",
]

#: The largest finite float16: integer formats store the row minimum as an fp16 bias.
FP16_MAX = 65504.0
_EPS_FP16 = 2.0**-11  # half the fp16 spacing at 1 (relative rounding error)


@dataclass(frozen=True, kw_only=True)
class RowCodec:
    """One row format.

    Attributes:
        name: ``"fp32"``, ``"fp16"``, ``"bf16"``, ``"int8"``, ``"int4"`` or ``"int2"``.
        code: the format's number in the compiled kernels (``embtable::quantized_*`` ops).
        bits: bits per element.
        integer: row-wise integer codes with an fp16 scale and bias (else a float cast).
        float_dtype: the torch dtype of a float format, else ``None``.
    """

    name: str
    code: int
    bits: int
    integer: bool
    float_dtype: torch.dtype | None = None

    @property
    def per_byte(self) -> int:
        """Elements per byte of codes (integer formats)."""
        return 8 // self.bits

    def code_bytes(self, dim: int) -> int:
        """Bytes of the codes (or half floats) of a row of ``dim`` elements."""
        if self.integer:
            return -(-dim // self.per_byte)
        return self.bits // 8 * dim

    def row_bytes(self, dim: int) -> int:
        """Bytes of a stored row of ``dim`` elements (codes + 4 for the integer formats)."""
        return self.code_bytes(dim) + (4 if self.integer else 0)


_CODECS = {
    "fp32": RowCodec(name="fp32", code=6, bits=32, integer=False, float_dtype=torch.float32),
    "fp16": RowCodec(name="fp16", code=1, bits=16, integer=False, float_dtype=torch.float16),
    "bf16": RowCodec(name="bf16", code=2, bits=16, integer=False, float_dtype=torch.bfloat16),
    "int8": RowCodec(name="int8", code=3, bits=8, integer=True),
    "int4": RowCodec(name="int4", code=4, bits=4, integer=True),
    "int2": RowCodec(name="int2", code=5, bits=2, integer=True),
}

#: The row formats, from the widest to the narrowest.
FORMATS = tuple(_CODECS)
#: The formats that compress (all but ``"fp32"``).
QUANTIZED_FORMATS = FORMATS[1:]

_SEARCHES = ("minmax", "greedy")


def codec(fmt: str | RowCodec, api: str = "codec") -> RowCodec:
    """The :class:`RowCodec` named ``fmt`` (a codec is returned as is).

    Raises:
        ValueError: an unknown format name.

    Example:
        >>> codec("int4").row_bytes(64)
        36
    """
    if isinstance(fmt, RowCodec):
        return fmt
    try:
        return _CODECS[fmt]
    except (KeyError, TypeError):
        raise ValueError(f"{api}: unknown row format {fmt!r}; expected one of {list(FORMATS)}") from None


def row_bytes(fmt: str | RowCodec, dim: int) -> int:
    """Bytes per stored row of ``dim`` elements in format ``fmt``."""
    return codec(fmt, "row_bytes").row_bytes(dim)


def _check_rows(rows: Tensor, api: str) -> None:
    if not isinstance(rows, Tensor):
        raise TypeError(f"{api}: rows must be a tensor, got {type(rows).__name__}")
    if rows.dim() != 2 or not rows.is_floating_point():
        raise ValueError(
            f"{api}: rows must be a 2-D floating tensor [num_rows, dim], got shape "
            f"{tuple(rows.shape)} and dtype {rows.dtype}"
        )


def _check_packed(packed: Tensor, spec: RowCodec, dim: int, api: str) -> None:
    if not isinstance(packed, Tensor):
        raise TypeError(f"{api}: packed must be a uint8 tensor, got {type(packed).__name__}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
        raise ValueError(f"{api}: dim must be a non-negative int, got {dim!r}")
    expected = spec.row_bytes(dim)
    if packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] != expected:
        raise ValueError(
            f"{api}: packed must be uint8 [num_rows, {expected}] for format {spec.name!r} and "
            f"dim {dim}, got dtype {packed.dtype} and shape {tuple(packed.shape)}"
        )


def _fp16_round(x: Tensor) -> Tensor:
    return x.to(torch.float16).to(torch.float32)


def _params(lo: Tensor, hi: Tensor, levels: int) -> tuple[Tensor, Tensor]:
    """fp16-representable ``(scale, bias)`` (as float32) of rows with range ``[lo, hi]``."""
    bias = _fp16_round(lo)
    span = hi - bias
    scale = torch.where(span == 0, torch.ones_like(span), span / levels)
    scale = _fp16_round(scale)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    scale = torch.where(torch.isinf(1.0 / scale), torch.ones_like(scale), scale)
    return scale, bias


def _codes(x: Tensor, scale: Tensor, bias: Tensor, levels: int) -> Tensor:
    inverse = 1.0 / scale
    return torch.round((x - bias.unsqueeze(1)) * inverse.unsqueeze(1)).clamp_(0, levels)


def _squared_error(x: Tensor, lo: Tensor, hi: Tensor, levels: int) -> Tensor:
    scale, bias = _params(lo, hi, levels)
    decoded = _codes(x, scale, bias, levels) * scale.unsqueeze(1) + bias.unsqueeze(1)
    return (decoded - x).square().sum(1)


def _greedy_range(x: Tensor, levels: int, bins: int = 200, ratio: float = 0.16) -> tuple[Tensor, Tensor]:
    """Per row, the ``[lo, hi]`` of lowest squared error found by shrinking the min/max range
    from one end at a time (``bins`` steps of the range; at most ``ratio`` of it removed)."""
    lo, hi = x.amin(1), x.amax(1)
    step = (hi - lo) / bins
    best_lo, best_hi = lo.clone(), hi.clone()
    best = _squared_error(x, lo, hi, levels)
    for _ in range(int(bins * ratio)):
        up = _squared_error(x, lo + step, hi, levels)
        down = _squared_error(x, lo, hi - step, levels)
        take_up = up < down
        lo = torch.where(take_up, lo + step, lo)
        hi = torch.where(take_up, hi, hi - step)
        loss = torch.minimum(up, down)
        better = loss < best
        best = torch.where(better, loss, best)
        best_lo = torch.where(better, lo, best_lo)
        best_hi = torch.where(better, hi, best_hi)
    return best_lo, best_hi


def _pack(codes: Tensor, spec: RowCodec) -> Tensor:
    """``[N, D]`` codes (< 2**bits) to ``[N, ceil(D / per_byte)]`` bytes, low bits first."""
    num_rows, dim = codes.shape
    per_byte = spec.per_byte
    codes = codes.to(torch.uint8)
    if per_byte == 1:
        return codes
    padded = codes.new_zeros((num_rows, spec.code_bytes(dim) * per_byte))
    padded[:, :dim] = codes
    parts = padded.view(num_rows, -1, per_byte)
    out = parts[:, :, 0].clone()
    for k in range(1, per_byte):
        out |= parts[:, :, k] << (k * spec.bits)
    return out


def quantize_rows(rows: Tensor, fmt: str | RowCodec, *, search: str = "minmax") -> Tensor:
    """Encode ``rows`` (``[N, D]``, any float dtype) into format ``fmt``: ``uint8 [N, row_bytes]``.

    Args:
        rows: the rows to encode (converted to float32 first).
        fmt: ``"fp16"``, ``"bf16"``, ``"int8"``, ``"int4"`` or ``"int2"``.
        search: ``"minmax"`` (each row's min and max; FBGEMM's and torch's default) or
            ``"greedy"`` (a per-row range search that lowers the squared error; integer
            formats only, slower: about 60 encodings of each row).

    Returns:
        A new contiguous ``uint8`` tensor.

    Raises:
        TypeError: ``rows`` is not a tensor.
        ValueError: ``rows`` not 2-D floating, an unknown format or search, or (integer
            formats) a value that is not finite or beyond the fp16 range (|x| > 65504).

    Example:
        >>> import torch
        >>> packed = quantize_rows(torch.tensor([[1.0, -1.0]]), "int8")
        >>> packed.tolist()
        [[255, 0, 4, 32, 0, 188]]
    """
    api = "quantize_rows"
    spec = codec(fmt, api)
    _check_rows(rows, api)
    if search not in _SEARCHES:
        raise ValueError(f"{api}: search must be one of {list(_SEARCHES)}, got {search!r}")
    if not spec.integer:
        if search != "minmax":
            raise ValueError(f"{api}: search={search!r} applies to the integer formats, not {spec.name!r}")
        packed = rows.detach().to(spec.float_dtype, copy=True).contiguous()
        return packed.view(torch.uint8).reshape(rows.shape[0], -1)
    x = rows.detach().to(torch.float32).contiguous()
    if x.numel() and not bool((x.abs() <= FP16_MAX).all()):
        bad = x[~(x.abs() <= FP16_MAX)][0].item()
        raise ValueError(
            f"{api}: format {spec.name!r} stores each row's minimum as an fp16 bias, so values "
            f"must be finite and within +-{FP16_MAX:g}; got {bad!r}"
        )
    num_rows, dim = x.shape
    levels = (1 << spec.bits) - 1
    out = torch.empty((num_rows, spec.row_bytes(dim)), dtype=torch.uint8)
    if num_rows == 0:
        return out
    step = max(1, _CHUNK_ELEMENTS // max(dim, 1))
    for start in range(0, num_rows, step):  # bounded temporaries for big tables
        out[start : start + step] = _quantize_block(x[start : start + step], spec, levels, search)
    return out


_CHUNK_ELEMENTS = 1 << 22


def _quantize_block(x: Tensor, spec: RowCodec, levels: int, search: str) -> Tensor:
    num_rows, dim = x.shape
    out = torch.empty((num_rows, spec.row_bytes(dim)), dtype=torch.uint8)
    if dim == 0:
        lo = hi = x.new_zeros(num_rows)
    elif search == "greedy":
        lo, hi = _greedy_range(x, levels)
    else:
        lo, hi = x.amin(1), x.amax(1)
    scale, bias = _params(lo, hi, levels)
    codes = _codes(x, scale, bias, levels) if dim else x.new_zeros((num_rows, 0))
    cut = spec.code_bytes(dim)
    out[:, :cut] = _pack(codes, spec)
    header = torch.stack([scale, bias], 1).to(torch.float16)
    out[:, cut:] = header.view(torch.uint8)
    return out


def unpack_codes(packed: Tensor, fmt: str | RowCodec, dim: int) -> Tensor:
    """The integer codes ``uint8 [N, dim]`` of packed rows of an integer format."""
    api = "unpack_codes"
    spec = codec(fmt, api)
    _check_packed(packed, spec, dim, api)
    if not spec.integer:
        raise ValueError(f"{api}: format {spec.name!r} has no integer codes")
    body = packed[:, : spec.code_bytes(dim)]
    if spec.per_byte == 1:
        return body.clone()
    mask = (1 << spec.bits) - 1
    parts = [(body >> (k * spec.bits)) & mask for k in range(spec.per_byte)]
    return torch.stack(parts, 2).reshape(packed.shape[0], -1)[:, :dim].contiguous()


def scale_bias(packed: Tensor, fmt: str | RowCodec, dim: int) -> tuple[Tensor, Tensor]:
    """Each row's ``(scale, bias)`` as float32 ``[N]`` tensors (integer formats)."""
    api = "scale_bias"
    spec = codec(fmt, api)
    _check_packed(packed, spec, dim, api)
    if not spec.integer:
        raise ValueError(f"{api}: format {spec.name!r} has no scale and bias")
    cut = spec.code_bytes(dim)
    header = packed[:, cut : cut + 4].clone(memory_format=torch.contiguous_format)
    header = header.view(torch.float16).to(torch.float32)
    return header[:, 0].contiguous(), header[:, 1].contiguous()


def dequantize_rows(
    packed: Tensor, fmt: str | RowCodec, dim: int, *, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Decode packed rows back to ``[N, dim]`` floats (computed in float32, then cast to ``dtype``).

    Raises:
        ValueError: ``packed`` is not ``uint8 [N, row_bytes(fmt, dim)]``.
    """
    api = "dequantize_rows"
    spec = codec(fmt, api)
    _check_packed(packed, spec, dim, api)
    if not spec.integer:
        return packed.contiguous().view(spec.float_dtype).to(dtype)
    scale, bias = scale_bias(packed, spec, dim)
    codes = unpack_codes(packed, spec, dim).to(torch.float32)
    return (codes * scale.unsqueeze(1) + bias.unsqueeze(1)).to(dtype)


def error_bound(fmt: str | RowCodec, rows: Tensor) -> Tensor:
    """A per-row bound on ``|dequantize(quantize(row)) - row|`` for min/max encoding: float32 ``[N]``.

    Integer formats: ``scale / 2 + 2**-11 * (|min| + range) + n * 2**-25`` (``scale`` as
    stored, ``n = 2**bits - 1``: the last term covers fp16 scales in the subnormal range),
    plus float32 rounding (``2**-22`` of ``|min| + |max|``).  fp16: ``2**-11 * max|x| +
    2**-25``; bf16: ``2**-8 * max|x|`` (round to nearest).  The bound of a pooled bag is
    the sum of its rows' bounds times ``|per-sample weight|`` (divided by the count for a
    mean).

    Example:
        >>> import torch
        >>> error_bound("int8", torch.tensor([[0.0, 1.0]]))
        tensor([0.0025])
    """
    spec = codec(fmt, "error_bound")
    _check_rows(rows, "error_bound")
    x = rows.detach().to(torch.float32)
    if x.shape[1] == 0:
        return x.new_zeros(x.shape[0])
    top = x.abs().amax(1)
    if spec.name == "fp32":
        return x.new_zeros(x.shape[0])
    if spec.name == "fp16":
        return top * _EPS_FP16 + 2.0**-25
    if spec.name == "bf16":
        return top * 2.0**-8 + 2.0**-134
    levels = (1 << spec.bits) - 1
    lo, hi = x.amin(1), x.amax(1)
    scale, bias = _params(lo, hi, levels)
    span = hi - bias
    rounding = 2.0**-22 * (lo.abs() + hi.abs())
    return scale / 2 + _EPS_FP16 * (lo.abs() + span.abs()) + levels * 2.0**-25 + rounding


# ------------------------------------------------------------------ interop with peers' layouts


def to_torch_prepacked(packed: Tensor, fmt: str | RowCodec, dim: int) -> Tensor:
    """Packed rows in the layout of torch's ``quantized::embedding_bag_*_rowwise_offsets`` ops.

    ``int8`` -> ``embedding_bag_byte_prepack``'s ``[N, D + 8]`` (float32 scale and bias after
    the codes); ``int4`` / ``int2`` -> ``embedding_bag_4bit_prepack`` / ``_2bit_prepack``'s
    ``[N, ceil(D * bits / 8) + 4]``, which is this module's layout (a copy is returned).

    Raises:
        ValueError: a float format (torch has no such prepacked layout).
    """
    api = "to_torch_prepacked"
    spec = codec(fmt, api)
    _check_packed(packed, spec, dim, api)
    if not spec.integer:
        raise ValueError(f"{api}: torch has no prepacked layout for {spec.name!r}; use int8/int4/int2")
    if spec.bits != 8:
        return packed.clone()
    scale, bias = scale_bias(packed, spec, dim)
    header = torch.stack([scale, bias], 1).contiguous().view(torch.uint8)
    return torch.cat([packed[:, :dim], header], 1)


def from_torch_prepacked(prepacked: Tensor, fmt: str | RowCodec, dim: int) -> Tensor:
    """The inverse of :func:`to_torch_prepacked`.

    From ``embedding_bag_byte_prepack``'s layout the float32 scale and bias are rounded to
    fp16 and the codes kept: rows then decode to within ``2**-11`` (relative) of torch's
    decoding (exactly when scale and bias are fp16 numbers).
    """
    api = "from_torch_prepacked"
    spec = codec(fmt, api)
    if not spec.integer:
        raise ValueError(f"{api}: torch has no prepacked layout for {spec.name!r}; use int8/int4/int2")
    if spec.bits != 8:
        _check_packed(prepacked, spec, dim, api)
        return prepacked.contiguous().clone()
    if prepacked.dtype != torch.uint8 or prepacked.dim() != 2 or prepacked.shape[1] != dim + 8:
        raise ValueError(
            f"{api}: expected embedding_bag_byte_prepack's uint8 [num_rows, {dim + 8}] for dim "
            f"{dim}, got dtype {prepacked.dtype} and shape {tuple(prepacked.shape)}"
        )
    header = prepacked[:, dim:].clone(memory_format=torch.contiguous_format)
    header = header.view(torch.float32).to(torch.float16)
    return torch.cat([prepacked[:, :dim], header.view(torch.uint8)], 1)


def to_fbgemm(packed: Tensor, fmt: str | RowCodec, dim: int, row_alignment: int = 1) -> Tensor:
    """Rows in the layout of FBGEMM's ``IntNBitTableBatchedEmbeddingBagsCodegen``.

    Integer formats: the fp16 scale and bias move in front of the codes (FBGEMM's default,
    ``reverse_qparam=False``); float formats are unchanged.  Each row is zero-padded to a
    multiple of ``row_alignment`` bytes (1 on CPU, 16 on GPU in FBGEMM).
    """
    api = "to_fbgemm"
    spec = codec(fmt, api)
    _check_packed(packed, spec, dim, api)
    if spec.integer:
        cut = spec.code_bytes(dim)
        packed = torch.cat([packed[:, cut:], packed[:, :cut]], 1)
    size = packed.shape[1]
    padded = -(-size // row_alignment) * row_alignment
    if padded == size:
        return packed.contiguous().clone()
    out = packed.new_zeros((packed.shape[0], padded))
    out[:, :size] = packed
    return out


def from_fbgemm(rows: Tensor, fmt: str | RowCodec, dim: int) -> Tensor:
    """The inverse of :func:`to_fbgemm` (row padding, if any, is dropped)."""
    api = "from_fbgemm"
    spec = codec(fmt, api)
    size = spec.row_bytes(dim)
    if rows.dtype != torch.uint8 or rows.dim() != 2 or rows.shape[1] < size:
        raise ValueError(
            f"{api}: expected uint8 [num_rows, >= {size}] FBGEMM rows for format {spec.name!r} "
            f"and dim {dim}, got dtype {rows.dtype} and shape {tuple(rows.shape)}"
        )
    rows = rows[:, :size]
    if spec.integer:
        rows = torch.cat([rows[:, 4:], rows[:, :4]], 1)
    return rows.contiguous().clone()


def bytes_per_element(fmt: str | RowCodec, dim: int) -> float:
    """Stored bytes per element, header included (e.g. int4 at dim 64: 36 / 64)."""
    return codec(fmt).row_bytes(dim) / max(dim, 1)


def relative_rms(reference: Tensor, approx: Tensor) -> float:
    """``||approx - reference|| / ||reference||`` (0 for an all-zero reference and equal approx)."""
    num = float((approx.double() - reference.double()).norm())
    den = float(reference.double().norm())
    return num / den if den else (0.0 if num == 0 else math.inf)
