r"""Quantized tables for inference: rows stored in a row format of :mod:`embtable.storage.codecs`.

:class:`QuantizedEmbedding` and :class:`QuantizedEmbeddingBag` have the ``forward`` of
:class:`~embtable.Embedding` / :class:`~embtable.EmbeddingBag` (same arguments, same
validation, outputs in the original float dtype), but keep their table as ``uint8``
rows in ``"fp16"``, ``"bf16"``, ``"int8"``, ``"int4"`` or ``"int2"`` (``"fp32"`` keeps a row as
is).  The pooled forward decodes rows while pooling them (compiled kernel
``embtable::quantized_pool_bags``; sum, mean, max, per-sample weights, padding), the plain
lookup decodes the rows it returns (``embtable::quantized_gather_rows``); both fall back to
the pure-PyTorch path (decode, then :func:`embtable.ops._reference.pool_bags`), the oracle,
when the extension is missing.  They are inference modules: no gradient, no ``max_norm``.

``state_dict`` holds ``packed_weight`` (``uint8 [num_embeddings, row_bytes]``: the codes with
each row's fp16 scale and bias) and an ``_extra_state`` with the format, dim and output
dtype; :meth:`save` / :meth:`load` write and memory-map one file (a safetensors file
whose metadata holds the same).  Tables move to and from torch's prepacked layouts
(:meth:`to_torch_prepacked`, :meth:`from_torch_prepacked`) and FBGEMM's inference layout
(:meth:`to_fbgemm`, :meth:`from_fbgemm`).  :func:`embtable.quantize` swaps them into a model.

Example:
    >>> import torch
    >>> import embtable
    >>> _ = torch.manual_seed(0)
    >>> bag = embtable.EmbeddingBag(1000, 64, mode="sum")
    >>> qbag = QuantizedEmbeddingBag.from_float(bag, "int4")
    >>> qbag
    QuantizedEmbeddingBag(1000, 64, format='int4', mode='sum')
    >>> ids, offsets = torch.tensor([1, 5, 7, 9]), torch.tensor([0, 3])
    >>> exact = bag(ids, offsets)
    >>> error = (qbag(ids, offsets) - exact).norm() / exact.norm()
    >>> bool(error < 0.1), qbag.packed_weight.shape
    (True, torch.Size([1000, 36]))
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import Module

from embtable import functional, ops
from embtable._atomic import atomic_write
from embtable.config import PoolingMode, TableConfig
from embtable.jagged import KeyedJagged
from embtable.nn.collection import (
    EmbeddingBagCollection,
    EmbeddingCollection,
    _bucket_slices,
    _strides,
)
from embtable.nn.embedding import check_table_shape
from embtable.nn.outputs import JaggedEmbeddings, JaggedRows, PooledEmbeddings
from embtable.ops import _reference
from embtable.ops._memory import empty_table
from embtable.storage import codecs

__all__ = [
    "QuantizedEmbedding",
    "QuantizedEmbeddingBag",
    "QuantizedEmbeddingBagCollection",
    "QuantizedEmbeddingCollection",
    "load_packed",
    "quantized_embedding",
    "quantized_embedding_bag",
    "save_packed",
]

_FLOAT_OUT = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MAX_COMPILED_DIM = 4096
_FAKES: dict[str, bool] = {"done": False}
_POOL = {"sum": ops.POOL_SUM, "mean": ops.POOL_MEAN, "max": ops.POOL_MAX}
_POOL_CODES = {PoolingMode.SUM: ops.POOL_SUM, PoolingMode.MEAN: ops.POOL_MEAN, PoolingMode.MAX: ops.POOL_MAX}


# ---------------------------------------------------------------------- kernels (compiled or reference)


def _register_fakes() -> None:
    if _FAKES["done"]:
        return
    _FAKES["done"] = True

    @torch.library.register_fake("embtable::quantized_pool_bags")
    def _pool_fake(packed, format, dim, ids, offsets, per_sample_weights, pooling, padding_idx, include_last_offset=True):
        num_bags = offsets.shape[0] - 1 if include_last_offset else offsets.shape[0]
        return packed.new_empty((max(num_bags, 0), dim), dtype=torch.float32)

    @torch.library.register_fake("embtable::quantized_gather_rows")
    def _gather_fake(packed, format, dim, ids):
        return packed.new_empty((ids.shape[0], dim), dtype=torch.float32)


def _compiled(packed: Tensor, dim: int) -> bool:
    if packed.device.type != "cpu" or dim > _MAX_COMPILED_DIM or not ops.extension_available():
        return False
    if not _FAKES["done"]:
        if not hasattr(torch.ops.embtable, "quantized_pool_bags"):
            return False  # an extension built before this kernel existed
        _register_fakes()
    return True


def pool_packed(
    packed: Tensor,
    fmt: str,
    dim: int,
    ids: Tensor,
    offsets: Tensor,
    per_sample_weights: Tensor | None,
    pooling: int,
    padding_idx: int,
    *,
    reference: bool = False,
) -> Tensor:
    """Pool bags of packed rows: float32 ``[num_bags, dim]`` (the ops-level conventions of
    :func:`embtable.ops._reference.pool_bags`: validated int64 ids, ``num_bags + 1`` offsets,
    ``padding_idx`` a row or ``-1``).  ``reference=True`` forces the pure-PyTorch path."""
    spec = codecs.codec(fmt)
    if not reference and _compiled(packed, dim):
        return torch.ops.embtable.quantized_pool_bags(
            packed, spec.code, dim, ids, offsets, per_sample_weights, pooling, padding_idx
        )
    ids, offsets, per_sample_weights = _reference._drop_padding(
        ids.long(), offsets.long(), per_sample_weights, padding_idx
    )
    rows = codecs.dequantize_rows(packed.index_select(0, ids), spec, dim)
    positions = torch.arange(ids.numel(), device=ids.device)
    weights = None if per_sample_weights is None else per_sample_weights.to(torch.float32)
    return _reference.pool_bags(rows, positions, offsets, weights, pooling, -1)[0]


def gather_packed(packed: Tensor, fmt: str, dim: int, ids: Tensor, *, reference: bool = False) -> Tensor:
    """Decoded rows ``packed[ids]`` of 1-D validated ids: float32 ``[len(ids), dim]``."""
    spec = codecs.codec(fmt)
    if not reference and _compiled(packed, dim):
        return torch.ops.embtable.quantized_gather_rows(packed, spec.code, dim, ids)
    return codecs.dequantize_rows(packed.index_select(0, ids.long()), spec, dim)


def quantized_embedding_bag(
    input: Tensor,
    packed: Tensor,
    fmt: str,
    dim: int,
    offsets: Tensor | None = None,
    mode: str = "mean",
    per_sample_weights: Tensor | None = None,
    include_last_offset: bool = False,
    padding_idx: int | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """:func:`embtable.functional.embedding_bag` on packed rows (no ``max_norm``, no gradient).

    Arguments as there, plus the packed table, its format and dim; the result is in ``dtype``.
    The same validation runs (ids, offsets, ``per_sample_weights`` of dtype ``dtype``).
    """
    api = "QuantizedEmbeddingBag"
    fast = _compiled_bag(input, packed, fmt, dim, offsets, mode, per_sample_weights, include_last_offset,
                         padding_idx, dtype)
    if fast is not None:
        return fast
    shape = torch.empty((packed.shape[0], dim), dtype=dtype, device="meta")
    weights, ids, bounds, pooling, pad = functional.prepare_bags(
        input, shape, offsets, None, 2.0, False, mode, per_sample_weights,
        include_last_offset, padding_idx, api,
    )
    out = pool_packed(packed, fmt, dim, ids, bounds, weights, pooling, pad)
    return out.to(dtype)


_ID_DTYPES = (torch.int32, torch.int64)


def _compiled_bag(
    input: Any,
    packed: Tensor,
    fmt: str,
    dim: int,
    offsets: Any,
    mode: Any,
    per_sample_weights: Any,
    include_last_offset: bool,
    padding_idx: int | None,
    dtype: torch.dtype,
) -> Tensor | None:
    """:func:`quantized_embedding_bag` on the compiled kernel with O(1) checks in Python, or ``None``.

    As :func:`embtable.functional.embedding_bag`'s fast path: float32 output, CPU tensors,
    the extension loaded.  The O(n) checks (offsets start at 0, never decrease, stay within
    the input; ids within the table) run inside the kernel while it pools (it writes only its
    output); when it reports a problem this returns ``None`` and the general path names it.
    """
    if not (
        dtype == torch.float32
        and isinstance(input, Tensor)
        and input.dtype in _ID_DTYPES
        and input.device.type == "cpu"
        and mode in _POOL
        and fmt in codecs.FORMATS
        and _compiled(packed, dim)
        and not ops.batched(input, offsets, per_sample_weights)
    ):
        return None
    layout = functional.fast_bag_layout(input, offsets, per_sample_weights, mode, include_last_offset)
    if layout is None:
        return None
    ids, bounds, last = layout  # without `last`, the kernel ends the last bag at the input's end
    if padding_idx is None:
        pad = -1
    elif isinstance(padding_idx, int) and 0 <= padding_idx < packed.shape[0]:
        pad = padding_idx
    else:
        return None  # negative or out of range: the general path normalizes or names it
    weights = None if per_sample_weights is None else per_sample_weights.reshape(-1)
    code = codecs.codec(fmt).code
    try:
        return torch.ops.embtable.quantized_pool_bags.default(
            packed, code, dim, ids, bounds, weights, _POOL[mode], pad, last
        )
    except RuntimeError as error:
        if "quantized_pool_bags" not in str(error):
            raise
        return None  # bad ids or offsets: the general path names them


def quantized_embedding(
    input: Tensor, packed: Tensor, fmt: str, dim: int, *, dtype: torch.dtype = torch.float32
) -> Tensor:
    """:func:`embtable.functional.embedding` on packed rows: ``input.shape + (dim,)`` in ``dtype``."""
    api = "QuantizedEmbedding"
    ops.check_id_dtype(input, api)
    flat = input.reshape(-1)
    ops.check_ids(flat, packed.shape[0], api)
    return gather_packed(packed, fmt, dim, flat).to(dtype).reshape(*input.shape, dim)


# ---------------------------------------------------------------------- files


def save_packed(path: str | os.PathLike, tensors: dict[str, Tensor], metadata: dict[str, Any]) -> None:
    """Write ``tensors`` (uint8 / float32 / int64) and JSON ``metadata`` as one safetensors file,
    atomically (written beside ``path``, fsynced, renamed)."""
    names = {torch.uint8: "U8", torch.float32: "F32", torch.int64: "I64"}
    header: dict[str, Any] = {"__metadata__": {"embtable": json.dumps(metadata)}}
    arrays, start = [], 0
    for name, tensor in tensors.items():
        array = tensor.detach().cpu().contiguous().numpy()
        header[name] = {"dtype": names[tensor.dtype], "shape": list(array.shape),
                        "data_offsets": [start, start + array.nbytes]}
        start += array.nbytes
        arrays.append(array)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with atomic_write(path) as fout:
        fout.write(struct.pack("<Q", len(raw)))
        fout.write(raw)
        for array in arrays:
            fout.write(memoryview(array).cast("B"))


def load_packed(path: str | os.PathLike, *, mmap: bool = True) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The tensors and metadata of a file written by :func:`save_packed`; with ``mmap=True``
    the tensors are copy-on-write memory maps of the file (opening reads only the header).

    Raises:
        ValueError: not such a file, or a truncated one.
    """
    dtypes = {"U8": np.uint8, "F32": np.float32, "I64": np.int64}
    size = os.path.getsize(path)
    with open(path, "rb") as fin:
        head = fin.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if length < 0 or length > min(size, 100_000_000):
            raise ValueError(f"load_packed: {os.fspath(path)} is not a safetensors file written by save")
        header = json.loads(fin.read(length))
    meta = header.pop("__metadata__", {})
    if "embtable" not in meta:
        raise ValueError(f"load_packed: {os.fspath(path)} holds no embtable metadata")
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        if 8 + length + end > size:
            raise ValueError(f"load_packed: {os.fspath(path)} is truncated ({size} bytes)")
        shape = tuple(entry["shape"])
        np_dtype = dtypes[entry["dtype"]]
        if mmap and end > begin:
            array = np.memmap(path, dtype=np_dtype, mode="c", offset=8 + length + begin, shape=shape)
        else:
            with open(path, "rb") as fin:
                fin.seek(8 + length + begin)
                array = np.frombuffer(fin.read(end - begin), dtype=np_dtype).reshape(shape).copy()
        tensors[name] = torch.from_numpy(array)
    return tensors, json.loads(meta["embtable"])


# ---------------------------------------------------------------------- single tables


def _check_format(fmt: Any, api: str) -> str:
    return codecs.codec(fmt, api).name


def _check_dtype(dtype: Any, api: str) -> torch.dtype:
    if dtype not in _FLOAT_OUT:
        raise ValueError(f"{api}: dtype must be one of {list(_FLOAT_OUT)}, got {dtype!r}")
    return dtype


class _QuantizedTable(Module):
    """Shared storage, conversions and files of the two single-table modules."""

    num_embeddings: int
    embedding_dim: int
    format: str
    dtype: torch.dtype
    padding_idx: int | None
    packed_weight: Tensor

    def _init_table(
        self,
        num_embeddings: int,
        embedding_dim: int,
        fmt: str,
        padding_idx: int | None,
        dtype: torch.dtype,
        device: torch.device | str | None,
    ) -> None:
        api = type(self).__name__
        check_table_shape(num_embeddings, embedding_dim, api)
        self.format = _check_format(fmt, api)
        self.dtype = _check_dtype(dtype, api)
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = ops.normalize_padding_idx(padding_idx, num_embeddings, api)
        size = codecs.row_bytes(self.format, embedding_dim)
        self.register_buffer("packed_weight", torch.zeros((num_embeddings, size), dtype=torch.uint8, device=device))

    # -- conversions

    def _load_rows(self, rows: Tensor, search: str) -> None:
        packed = codecs.quantize_rows(rows.detach().cpu(), self.format, search=search)
        # rows are read at random: big tables go on huge pages, as embtable's float tables do
        target = empty_table(tuple(packed.shape), torch.uint8, self.packed_weight.device)
        self.packed_weight = target.copy_(packed)

    def dequantize(self) -> Tensor:
        """The decoded table ``[num_embeddings, embedding_dim]`` in the output dtype."""
        return codecs.dequantize_rows(self.packed_weight, self.format, self.embedding_dim, dtype=self.dtype)

    def nbytes(self) -> int:
        """Bytes of the stored table."""
        return self.packed_weight.numel()

    def to_torch_prepacked(self) -> Tensor:
        """The table in the layout of torch's ``quantized::embedding_bag_{byte,4bit,2bit}_rowwise_offsets``
        (:func:`embtable.storage.codecs.to_torch_prepacked`)."""
        return codecs.to_torch_prepacked(self.packed_weight, self.format, self.embedding_dim)

    def to_fbgemm(self, row_alignment: int = 1) -> Tensor:
        """The table in the layout of FBGEMM's ``IntNBitTableBatchedEmbeddingBagsCodegen``
        (scale and bias first; :func:`embtable.storage.codecs.to_fbgemm`)."""
        return codecs.to_fbgemm(self.packed_weight, self.format, self.embedding_dim, row_alignment)

    def _set_packed(self, packed: Tensor) -> None:
        expected = (self.num_embeddings, codecs.row_bytes(self.format, self.embedding_dim))
        if packed.dtype != torch.uint8 or tuple(packed.shape) != expected:
            raise ValueError(
                f"{type(self).__name__}: packed rows must be uint8 {expected}, got {packed.dtype} "
                f"{tuple(packed.shape)}"
            )
        self.packed_weight = packed

    # -- state_dict

    def get_extra_state(self) -> dict[str, Any]:
        return {"format": self.format, "embedding_dim": self.embedding_dim, "dtype": str(self.dtype)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        mine = self.get_extra_state()
        if state != mine:
            raise ValueError(
                f"{type(self).__name__}.load_state_dict: the checkpoint holds a table of {state}, "
                f"this module is {mine}; build the module with the checkpoint's format and dtype"
            )

    # -- files

    def _config(self) -> dict[str, Any]:
        return {"class": type(self).__name__, "num_embeddings": self.num_embeddings,
                "embedding_dim": self.embedding_dim, "format": self.format,
                "dtype": str(self.dtype).removeprefix("torch."), "padding_idx": self.padding_idx}

    def save(self, path: str | os.PathLike) -> None:
        """Write the table and its configuration to one file (atomically)."""
        save_packed(path, {"packed_weight": self.packed_weight}, self._config())

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = True):
        """A module from a file written by :meth:`save`; ``mmap=True`` maps the rows (no read).

        Raises:
            ValueError: the file holds another class of module.
        """
        tensors, config = load_packed(path, mmap=mmap)
        name = config.pop("class", None)
        if name != cls.__name__:
            raise ValueError(f"{cls.__name__}.load: {os.fspath(path)} holds a {name}, not a {cls.__name__}")
        config["dtype"] = getattr(torch, config["dtype"])
        config["fmt"] = config.pop("format")
        module = cls(device="meta", **config)
        module._set_packed(tensors["packed_weight"])
        return module

    def _repr_head(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, format={self.format!r}"

    def _repr_tail(self) -> str:
        text = ""
        if self.padding_idx is not None:
            text += f", padding_idx={self.padding_idx}"
        if self.dtype != torch.float32:
            text += f", dtype={self.dtype}"
        return text


class QuantizedEmbedding(_QuantizedTable):
    """:class:`~embtable.Embedding`'s lookup on a quantized table (inference only).

    Args:
        num_embeddings, embedding_dim, padding_idx: as in :class:`~embtable.Embedding`
            (the padding row is returned as stored).
        fmt: the row format, ``"fp32"``, ``"fp16"``, ``"bf16"``, ``"int8"``, ``"int4"``, ``"int2"``.
        dtype: the dtype of the outputs (the original table's).
        device: where the packed rows live (the compiled kernels run on the CPU).

    Attributes:
        packed_weight: ``uint8 [num_embeddings, row_bytes]`` (zeros until set by
            :meth:`from_float`, :meth:`load_state_dict` or :meth:`load`).

    Example:
        >>> import torch
        >>> import embtable
        >>> table = embtable.Embedding.from_pretrained(torch.tensor([[0.0, 1.0], [2.0, -2.0]]))
        >>> embtable.nn.quantized.QuantizedEmbedding.from_float(table, "int8")(torch.tensor([[1, 0]]))
        tensor([[[ 1.9999, -2.0000],
                 [ 0.0000,  1.0000]]])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        *,
        fmt: str = "int8",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self._init_table(num_embeddings, embedding_dim, fmt, padding_idx, dtype, device)

    @classmethod
    def from_float(cls, module: Module, fmt: str = "int8", *, search: str = "minmax") -> QuantizedEmbedding:
        """Quantize an :class:`~embtable.Embedding` (or a ``torch.nn.Embedding``).

        Raises:
            TypeError: ``module`` has no 2-D float ``weight``.
        """
        weight = _float_weight(module, cls.__name__)
        quantized = cls(*weight.shape, getattr(module, "padding_idx", None), fmt=fmt, dtype=weight.dtype)
        quantized._load_rows(weight, search)
        return quantized

    def forward(self, input: Tensor) -> Tensor:
        """Decoded rows of ``input``'s ids: ``input.shape + (embedding_dim,)`` in :attr:`dtype`."""
        return quantized_embedding(input, self.packed_weight, self.format, self.embedding_dim, dtype=self.dtype)

    def extra_repr(self) -> str:
        return self._repr_head() + self._repr_tail()


class QuantizedEmbeddingBag(_QuantizedTable):
    """:class:`~embtable.EmbeddingBag`'s pooled lookup on a quantized table (inference only).

    Rows are decoded while they are pooled (sum, mean or max, per-sample weights, padding).

    Args:
        num_embeddings, embedding_dim, mode, include_last_offset, padding_idx: as in
            :class:`~embtable.EmbeddingBag`.
        fmt, dtype, device: as in :class:`QuantizedEmbedding`.

    Raises:
        ValueError: a bad size, ``mode``, ``padding_idx``, format or dtype.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        mode: str = "mean",
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        *,
        fmt: str = "int8",
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self._init_table(num_embeddings, embedding_dim, fmt, padding_idx, dtype, device)
        self.mode = functional.check_bag_mode(mode, False, type(self).__name__)
        self.include_last_offset = include_last_offset

    @classmethod
    def from_float(cls, module: Module, fmt: str = "int8", *, search: str = "minmax") -> QuantizedEmbeddingBag:
        """Quantize an :class:`~embtable.EmbeddingBag` (or a ``torch.nn.EmbeddingBag``)."""
        weight = _float_weight(module, cls.__name__)
        quantized = cls(
            *weight.shape, mode=module.mode, include_last_offset=module.include_last_offset,
            padding_idx=module.padding_idx, fmt=fmt, dtype=weight.dtype,
        )
        quantized._load_rows(weight, search)
        return quantized

    @classmethod
    def from_torch_prepacked(cls, prepacked: Tensor, fmt: str, embedding_dim: int, **kwargs: Any) -> QuantizedEmbeddingBag:
        """A bag module from a table in torch's prepacked layout (``kwargs``: the constructor's)."""
        packed = codecs.from_torch_prepacked(prepacked, fmt, embedding_dim)
        module = cls(packed.shape[0], embedding_dim, fmt=fmt, device="meta", **kwargs)
        module._set_packed(packed)
        return module

    @classmethod
    def from_fbgemm(cls, rows: Tensor, fmt: str, embedding_dim: int, **kwargs: Any) -> QuantizedEmbeddingBag:
        """A bag module from one table of FBGEMM's inference layout (scale and bias first)."""
        packed = codecs.from_fbgemm(rows, fmt, embedding_dim)
        module = cls(packed.shape[0], embedding_dim, fmt=fmt, device="meta", **kwargs)
        module._set_packed(packed)
        return module

    def forward(self, input: Tensor, offsets: Tensor | None = None, per_sample_weights: Tensor | None = None) -> Tensor:
        """Pool each bag; see :meth:`embtable.EmbeddingBag.forward`.  Output in :attr:`dtype`."""
        return quantized_embedding_bag(
            input, self.packed_weight, self.format, self.embedding_dim, offsets, self.mode,
            per_sample_weights, self.include_last_offset, self.padding_idx, dtype=self.dtype,
        )

    def _config(self) -> dict[str, Any]:
        return {**super()._config(), "mode": self.mode, "include_last_offset": self.include_last_offset}

    def extra_repr(self) -> str:
        return self._repr_head() + f", mode={self.mode!r}" + self._repr_tail()


def _float_weight(module: Module, api: str) -> Tensor:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.dtype not in _FLOAT_OUT:
        raise TypeError(f"{api}.from_float: expected a module with a 2-D float weight, got {type(module).__name__}")
    return weight.detach()


# ---------------------------------------------------------------------- collections


def _format_part(float_class: type, api: str, configs: list[TableConfig], device: torch.device, **kwargs: Any):
    """A float collection over ``configs`` on the meta device (no memory), whose lookup
    validation and id bucketing (:meth:`bucket_inputs`) the quantized collection reuses;
    its errors are worded with ``api``."""

    def grouped_weights(self) -> list[Tensor]:
        stand_ins = self.__dict__.get("_stand_ins")  # dtype and device of each group
        return float_class.grouped_weights.fget(self) if stand_ins is None else stand_ins

    part_class = type(api, (float_class,), {"grouped_weights": property(grouped_weights)})
    part = part_class(configs, device="meta", **kwargs)
    part._stand_ins = [torch.empty(0, dtype=g.dtype, device=device) for g in part.plan.groups]
    return part


class _QuantizedCollection(Module):
    """Packed grouped storage of a quantized collection: one ``uint8`` buffer per (format, group)."""

    _float_class: type
    _state_key: str
    _pooled: bool

    def __init__(
        self,
        tables: Sequence[TableConfig],
        formats: str | dict[str, str] = "int8",
        *,
        is_weighted: bool = False,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        api = type(self).__name__
        extra = {"is_weighted": is_weighted} if self._pooled else {}
        self._float_class(tables, device="meta", **extra)  # the float collection's validation
        dynamic = [c.name for c in tables if getattr(c, "dynamic", None) is not None]
        if dynamic:
            raise ValueError(
                f"{api}: table {dynamic[0]!r} is dynamic (its ids go through a SlotMap); quantize "
                f"static tables only, or export the dynamic table's rows first"
            )
        self.tables = tuple(tables)
        self.is_weighted = is_weighted
        self.formats = _table_formats(self.tables, formats, api)
        self.feature_names = [f for config in self.tables for f in config.feature_names]
        self.embedding_dims = [config.embedding_dim for config in self.tables for _ in config.feature_names]
        place = torch.device(device) if device is not None else torch.device("cpu")
        self._parts: dict[str, Any] = {}
        for fmt in dict.fromkeys(self.formats.values()):
            configs = [c for c in self.tables if self.formats[c.name] == fmt]
            part = _format_part(self._float_class, api, configs, place, **extra)
            self._parts[fmt] = part
            for group in part.plan.groups:
                size = codecs.row_bytes(fmt, group.embedding_dim)
                self.register_buffer(
                    f"packed_{fmt}_{group.index}",
                    empty_table((group.num_rows, size), torch.uint8, device).zero_(),
                    persistent=False,
                )

    def _packed(self, fmt: str, group: int) -> Tensor:
        return getattr(self, f"packed_{fmt}_{group}")

    def table_packed(self, table: str) -> Tensor:
        """Table ``table``'s packed rows: a view of its group's buffer.

        Raises:
            KeyError: no such table.
        """
        if table not in self.formats:
            raise KeyError(f"{type(self).__name__}: no table {table!r}; the tables are {list(self.formats)}")
        fmt = self.formats[table]
        place = self._parts[fmt].plan.tables[table]
        return self._packed(fmt, place.group).narrow(0, place.row_offset, place.num_rows)

    def dequantize(self, table: str) -> Tensor:
        """Table ``table`` decoded, in its config's dtype."""
        config = next(c for c in self.tables if c.name == table) if table in self.formats else None
        packed = self.table_packed(table)
        return codecs.dequantize_rows(packed, self.formats[table], config.embedding_dim, dtype=config.dtype)

    def nbytes(self) -> int:
        """Bytes of all stored tables."""
        return sum(self.table_packed(c.name).numel() for c in self.tables)

    @classmethod
    def from_float(
        cls, collection: Module, formats: str | dict[str, str] = "int8", *, search: str = "minmax"
    ):
        """Quantize an :class:`~embtable.EmbeddingBagCollection` / :class:`~embtable.EmbeddingCollection`;
        ``formats`` is one format for every table or ``{table: format}`` (missing tables: ``"fp32"``)."""
        module = cls(
            collection.tables, formats, is_weighted=getattr(collection, "_is_weighted", False),
            device=collection.grouped_weights[0].device,
        )
        with torch.no_grad():
            for config in module.tables:
                rows = collection.table_weight(config.name).detach().cpu()
                packed = codecs.quantize_rows(rows, module.formats[config.name], search=search)
                module.table_packed(config.name).copy_(packed)
        return module

    # -- state_dict: per table, like the float collections

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        for config in self.tables:
            destination[f"{prefix}{self._state_key}.{config.name}.packed_weight"] = self.table_packed(config.name)
        destination[f"{prefix}_extra_state"] = {"formats": dict(self.formats)}

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        loads, errors = [], []
        extra = state_dict.get(f"{prefix}_extra_state")
        if extra is not None and extra.get("formats") != self.formats:
            errors.append(f"format mismatch: the checkpoint holds {extra.get('formats')}, the module {self.formats}")
        expected = {f"{prefix}{self._state_key}.{c.name}.packed_weight": c.name for c in self.tables}
        for key, table in expected.items():
            if key not in state_dict:
                missing_keys.append(key)
                continue
            value, rows = state_dict[key], self.table_packed(table)
            if not isinstance(value, Tensor) or value.shape != rows.shape or value.dtype != torch.uint8:
                errors.append(f"size mismatch for {key}: expected uint8 {tuple(rows.shape)}")
            else:
                loads.append((rows, value))
        error_msgs.extend(errors)
        if not errors:
            for rows, value in loads:
                rows.copy_(value)
        if strict:
            known = set(expected) | {f"{prefix}_extra_state"}
            unexpected_keys.extend(k for k in state_dict if k.startswith(prefix) and k not in known)

    def extra_repr(self) -> str:
        return "\n".join(
            f"({c.name}): {c.num_embeddings} x {c.embedding_dim}, format={self.formats[c.name]}"
            for c in self.tables
        )

    def _lookups(self, features: KeyedJagged):
        """(format, bucket, BucketInput) of every bucket of every format part (validated)."""
        for fmt, part in self._parts.items():
            for bucket, lookup in zip(part.plan.buckets, part.bucket_inputs(features)):
                yield fmt, part, bucket, lookup


def _table_formats(tables: Sequence[TableConfig], formats: str | dict[str, str], api: str) -> dict[str, str]:
    names = [c.name for c in tables]
    if isinstance(formats, str):
        fmt = _check_format(formats, api)
        return {name: fmt for name in names}
    if not isinstance(formats, dict):
        raise TypeError(f"{api}: formats must be a format name or a {{table: format}} dict, got {type(formats).__name__}")
    unknown = [t for t in formats if t not in names]
    if unknown:
        raise KeyError(f"{api}: formats names table {unknown[0]!r}, which is not one of {names}")
    return {name: _check_format(formats.get(name, "fp32"), api) for name in names}


class QuantizedEmbeddingBagCollection(_QuantizedCollection):
    """:class:`~embtable.EmbeddingBagCollection`'s pooled lookup on quantized tables (inference only).

    Tables of one ``(format, embedding_dim, dtype)`` share one packed buffer and are pooled
    by one call per pooling mode, as in the float collection; outputs are in each table's
    dtype.  ``state_dict`` keys: ``embedding_bags.<table>.packed_weight`` and ``_extra_state``
    (the formats).

    Args:
        tables: the table configs.
        formats: one row format for every table, or ``{table: format}`` (mixed precision;
            tables left out stay ``"fp32"``).
        device: where the packed rows live.

    Example:
        >>> import torch
        >>> from embtable import EmbeddingBagCollection, KeyedJagged, TableConfig
        >>> _ = torch.manual_seed(0)
        >>> float_tables = EmbeddingBagCollection([
        ...     TableConfig(name="item", num_embeddings=1000, embedding_dim=16),
        ...     TableConfig(name="city", num_embeddings=50, embedding_dim=16, pooling="mean"),
        ... ])
        >>> q = QuantizedEmbeddingBagCollection.from_float(float_tables, {"item": "int4", "city": "fp16"})
        >>> batch = KeyedJagged.from_dict({"item": [[4, 9], [7]], "city": [[1], [2, 3]]})
        >>> q(batch).values().shape, q.nbytes()
        (torch.Size([2, 32]), 13600)
        >>> sorted(q.state_dict())
        ['_extra_state', 'embedding_bags.city.packed_weight', 'embedding_bags.item.packed_weight']
    """

    _float_class = EmbeddingBagCollection
    _state_key = "embedding_bags"
    _pooled = True

    def forward(self, features: KeyedJagged) -> PooledEmbeddings:
        """Pool every feature; see :meth:`embtable.EmbeddingBagCollection.forward`."""
        fast = self._compiled_forward(features)
        if fast is not None:
            return fast
        batch = features.stride() if isinstance(features, KeyedJagged) else 0
        strides = _strides(features)
        pooled: dict[str, Tensor] = {}
        for fmt, part, bucket, lookup in self._lookups(features):
            group = part.plan.groups[bucket.group]
            pad = -1 if lookup.padding_idx is None else lookup.padding_idx
            weights = lookup.per_sample_weights
            out = pool_packed(
                self._packed(fmt, bucket.group), fmt, group.embedding_dim, lookup.ids, lookup.offsets,
                None if weights is None else weights.to(torch.float32), _POOL_CODES[bucket.pooling], pad,
            ).to(group.dtype)
            if strides is None:
                per_feature = out.view(len(bucket.features), batch, -1).unbind(0)
            else:  # a batch size per feature
                per_feature = out.split([strides[f] for f in bucket.features])
            pooled.update(zip(bucket.features, per_feature))
        return PooledEmbeddings(self.feature_names, [pooled[f] for f in self.feature_names])


    def _compiled_forward(self, features: KeyedJagged) -> PooledEmbeddings | None:
        """:meth:`forward` with ``embtable::bucket_ids`` (check and shift a bucket's ids and
        build its offsets in one pass) in front of the pooling kernel, as the float
        collection's compiled path; ``None`` (the general path, which words any error) for
        variable batch sizes, several padding rows in a bucket, or an invalid batch."""
        if not (isinstance(features, KeyedJagged) and ops.extension_available()):
            return None
        if features.variable_stride_per_key() or features.device.type != "cpu":
            return None
        weighted = self.is_weighted and features.weights() is not None
        if self.is_weighted and not weighted:
            return None
        index_of = {key: i for i, key in enumerate(features.keys())}
        if any(f not in index_of for f in self.feature_names):
            return None
        batch = features.stride()
        pooled: dict[str, Tensor] = {}
        for fmt, part in self._parts.items():
            for bucket, consts in zip(part.plan.buckets, part._bucket_consts):
                if len(bucket.padding_rows) > 1 or (weighted and bucket.pooling != PoolingMode.SUM):
                    return None
                positions = [index_of[f] for f in bucket.features]
                values, lengths, per_value = _bucket_slices(features, positions, batch)
                try:
                    ids, offsets = ops.bucket_ids(values, lengths, consts["feature_rows"], batch)
                except RuntimeError as error:
                    if "embtable::bucket_ids" not in str(error):
                        raise
                    return None  # an id outside its table: the general path names it
                group = part.plan.groups[bucket.group]
                pad = bucket.padding_rows[0] if bucket.padding_rows else -1
                out = pool_packed(
                    self._packed(fmt, bucket.group), fmt, group.embedding_dim, ids, offsets,
                    per_value.to(torch.float32) if weighted else None, _POOL_CODES[bucket.pooling], pad,
                ).to(group.dtype)
                pooled.update(zip(bucket.features, out.view(len(bucket.features), batch, -1).unbind(0)))
        return PooledEmbeddings(self.feature_names, [pooled[f] for f in self.feature_names])


class QuantizedEmbeddingCollection(_QuantizedCollection):
    """:class:`~embtable.EmbeddingCollection`'s lookup on quantized tables (inference only).

    As :class:`QuantizedEmbeddingBagCollection`, with ``state_dict`` keys
    ``embeddings.<table>.packed_weight``; returns :class:`~embtable.nn.outputs.JaggedEmbeddings`.
    """

    _float_class = EmbeddingCollection
    _state_key = "embeddings"
    _pooled = False

    def forward(self, features: KeyedJagged) -> JaggedEmbeddings:
        """Look up every id of every feature; see :meth:`embtable.EmbeddingCollection.forward`."""
        batch = features.stride() if isinstance(features, KeyedJagged) else 0
        found: dict[str, JaggedRows] = {}
        for fmt, part, bucket, lookup in self._lookups(features):
            group = part.plan.groups[bucket.group]
            rows = gather_packed(self._packed(fmt, bucket.group), fmt, group.embedding_dim, lookup.ids)
            rows = rows.to(group.dtype)
            lengths = torch.diff(lookup.offsets)
            for j, (feature, piece) in enumerate(zip(bucket.features, rows.split(lookup.counts))):
                found[feature] = JaggedRows(piece, lengths[j * batch : (j + 1) * batch])
        return JaggedEmbeddings(self.feature_names, [found[f] for f in self.feature_names])
