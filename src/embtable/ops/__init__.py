"""Stateless kernels on plain tensors, and the checks every entry point shares.

The kernels come from :mod:`embtable.ops._reference` (pure PyTorch, always
present, the oracle).  Compiled CPU kernels, when built, replace the hot ones
at import of :mod:`embtable.ops._dispatch`; ``EMBTABLE_NO_EXT=1`` forces the
reference path.

Example:
    >>> import torch
    >>> from embtable import ops
    >>> ops.check_ids(torch.tensor([0, 3]), num_rows=4, api="demo")
    >>> ops.check_ids(torch.tensor([0, 4]), num_rows=4, api="demo")
    Traceback (most recent call last):
    ...
    embtable.errors.EmbeddingIndexError: demo: id 4 is out of range for a table of 4 rows (valid ids are 0..3)
"""

from __future__ import annotations

import torch
from torch import Tensor

from embtable.errors import EmbeddingIndexError, EmbeddingTypeError
from embtable.ops._compiled import (
    bucket_ids,
    extension_available,
    fused_update_rows,
    gather_rows,
    pool_bags,
    pool_bags_backward,
    pool_bags_grouped,
)
from embtable.ops._reference import (
    POOL_MAX,
    POOL_MEAN,
    POOL_SUM,
    bag_of_ids,
    bag_sizes,
    frequency_scale,
    opmath_dtype,
    pool_bags_weights_backward,
    renorm_rows_,
    scatter_add_rows,
    sparse_row_grad,
)

__all__ = [
    "POOL_MAX",
    "POOL_MEAN",
    "POOL_SUM",
    "bag_of_ids",
    "bag_sizes",
    "bucket_ids",
    "check_ids",
    "check_id_dtype",
    "extension_available",
    "frequency_scale",
    "fused_update_rows",
    "gather_rows",
    "normalize_padding_idx",
    "opmath_dtype",
    "pool_bags",
    "pool_bags_backward",
    "pool_bags_grouped",
    "pool_bags_weights_backward",
    "renorm_rows_",
    "scatter_add_rows",
    "sparse_row_grad",
]

_ID_DTYPES = (torch.int32, torch.int64)


def check_id_dtype(ids: Tensor, api: str, name: str = "input") -> None:
    """Raise ``TypeError`` unless ``ids`` is an int32 or int64 tensor.

    A tensor of another dtype raises :class:`~embtable.errors.EmbeddingTypeError` (also a
    ``RuntimeError``, as torch raises for float or bool ids).
    """
    if not isinstance(ids, Tensor):
        raise TypeError(f"{api}: {name} must be a tensor of int64 or int32 ids, got {type(ids).__name__}")
    if ids.dtype not in _ID_DTYPES:
        raise EmbeddingTypeError(
            f"{api}: {name} must hold int64 or int32 ids, got dtype {ids.dtype}; "
            f"convert with {name}.long()"
        )


def check_ids(ids: Tensor, num_rows: int, api: str, name: str = "input") -> None:
    """Raise ``TypeError``/``IndexError`` unless every id is an integer in ``[0, num_rows)``.

    O(n) in the number of ids (one min and one max); it runs before any weight is touched.
    The ``IndexError`` is an :class:`~embtable.errors.EmbeddingIndexError` (also a
    ``RuntimeError``, the class torch's bag lookup raises).
    """
    check_id_dtype(ids, api, name)
    if ids.numel() == 0:
        return
    low, high = torch.aminmax(ids)
    low, high = int(low), int(high)
    if low < 0:
        raise EmbeddingIndexError(
            f"{api}: {name} holds the negative id {low}; ids must lie in 0..{num_rows - 1}"
        )
    if high >= num_rows:
        raise EmbeddingIndexError(
            f"{api}: id {high} is out of range for a table of {num_rows} rows "
            f"(valid ids are 0..{num_rows - 1})"
        )


def normalize_padding_idx(
    padding_idx: int | None, num_rows: int, api: str, error: type[ValueError] = ValueError
) -> int | None:
    """``padding_idx`` as a row number in ``[0, num_rows)`` (negative values count from the end).

    Raises:
        ValueError: ``padding_idx`` lies outside ``[-num_rows, num_rows)``, as an instance of
            ``error``: a plain ``ValueError`` where torch only ``assert``s (the modules,
            ``embedding``), :class:`~embtable.errors.EmbeddingValueError` where torch raises
            ``RuntimeError`` (``embedding_bag``).
    """
    if padding_idx is None:
        return None
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, int):
        raise TypeError(f"{api}: padding_idx must be an int or None, got {padding_idx!r}")
    if not -num_rows <= padding_idx < num_rows:
        raise error(
            f"{api}: padding_idx={padding_idx} is outside the table of {num_rows} rows "
            f"(expected -{num_rows} <= padding_idx < {num_rows})"
        )
    return padding_idx + num_rows if padding_idx < 0 else padding_idx
