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
    bag_of_ids_batchable,
    bag_sizes,
    embedding_backward_batchable,
    embedding_backward_half,
    frequency_scale,
    is_half,
    opmath_dtype,
    pool_bags_backward_batchable,
    pool_bags_backward_half,
    pool_bags_weights_backward,
    pool_bags_weights_backward_batchable,
    renorm_rows_,
    scatter_add_rows,
    sparse_row_grad,
)

__all__ = [
    "POOL_MAX",
    "POOL_MEAN",
    "POOL_SUM",
    "bag_of_ids",
    "bag_of_ids_batchable",
    "bag_sizes",
    "batched",
    "bucket_ids",
    "check_ids",
    "check_id_dtype",
    "embedding_backward_batchable",
    "embedding_backward_half",
    "extension_available",
    "frequency_scale",
    "fused_update_rows",
    "gather_rows",
    "is_half",
    "normalize_padding_idx",
    "opmath_dtype",
    "pool_bags",
    "pool_bags_backward",
    "pool_bags_backward_batchable",
    "pool_bags_backward_half",
    "pool_bags_grouped",
    "pool_bags_weights_backward",
    "pool_bags_weights_backward_batchable",
    "plain",
    "renorm_rows_",
    "scatter_add_rows",
    "sparse_row_grad",
]

_ID_DTYPES = (torch.int32, torch.int64)
_functorch = torch._C._functorch


def batched(*tensors: Tensor | None) -> bool:
    """Whether any of ``tensors`` is batched by ``torch.func.vmap`` (at any level).

    Such tensors have no single value per element, so data-dependent checks read them
    through :func:`plain`, and the autograd Functions of :mod:`embtable.functional` take
    their vmap-safe paths.  ``False`` while ``torch.compile`` traces (it cannot call into
    functorch's wrappers; nothing is batched there).
    """
    if torch.compiler.is_compiling():
        return False
    for t in tensors:
        while t is not None and _functorch.is_functorch_wrapped_tensor(t):
            if _functorch.is_batchedtensor(t):
                return True
            t = _functorch.get_unwrapped(t)
    return False


def plain(t: Tensor) -> Tensor:
    """The ordinary tensor under ``torch.func`` wrappers, every vmap batch dim moved to the front.

    For a tensor outside any transform this is ``t`` itself.  Inside ``vmap`` the result holds
    the values of every example, ``[*batch, *t.shape]``, so O(n) checks (ids in range, offsets
    non-decreasing) can read data that the batched view cannot turn into Python numbers.

    Example:
        >>> import torch
        >>> from embtable import ops
        >>> torch.func.vmap(lambda t: tuple(ops.plain(t).shape), in_dims=1, out_dims=None)(torch.zeros(2, 3))
        (3, 2)
    """
    if torch.compiler.is_compiling():
        return t
    bdims = []
    while _functorch.is_functorch_wrapped_tensor(t):
        bdims.append(_functorch.maybe_get_bdim(t) if _functorch.is_batchedtensor(t) else -1)
        t = _functorch.get_unwrapped(t)
    front = 0
    for bdim in reversed(bdims):  # outermost vmap first: its bdim indexes the physical dims
        if bdim >= 0:
            t = t.movedim(front + bdim, front)
            front += 1
    return t


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
    Ids on the ``meta`` device (shapes only) pass.
    The ``IndexError`` is an :class:`~embtable.errors.EmbeddingIndexError` (also a
    ``RuntimeError``, the class torch's bag lookup raises).
    """
    check_id_dtype(ids, api, name)
    ids = plain(ids)
    if ids.numel() == 0 or ids.device.type == "meta":  # meta tensors have shapes, no values
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
