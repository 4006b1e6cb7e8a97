"""Memory placement for big tables: transparent huge pages.

Embedding rows (and optimizer-state rows) are read at random; with 4 KiB pages nearly every
row costs a TLB miss, and a 2 MiB page covers 8,192 rows of 64 floats.  With Linux's
transparent huge pages in ``madvise`` mode a region is backed by huge pages only when it
asks before it is first touched.

``EMBTABLE_HUGEPAGES=0`` in the environment (read at each allocation) turns embtable's own
request off, so that its tables sit on the same 4 KiB pages as everybody else's (the
benchmarks' ``--placement 4k``).  :func:`place_pages` moves any tensor (a peer's table, an
optimizer's state) onto huge pages or keeps it off them, and :func:`huge_page_fraction`
reads back what the kernel actually did.
"""

from __future__ import annotations

import ctypes
import os
import sys

import torch
from torch import Tensor

__all__ = [
    "advise_hugepages",
    "empty_table",
    "huge_page_fraction",
    "hugepages_requested",
    "place_pages",
]

_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_MADV_NOHUGEPAGE = 15
_MADV_COLLAPSE = 25  # Linux >= 6.1: back the range with huge pages now (synchronous)
_HUGEPAGE_MIN_BYTES = 16 << 20


def hugepages_requested() -> bool:
    """Whether embtable asks for huge pages (``EMBTABLE_HUGEPAGES`` is not ``0``).

    Example:
        >>> import os
        >>> hugepages_requested() == (os.environ.get("EMBTABLE_HUGEPAGES", "1") != "0")
        True
    """
    return os.environ.get("EMBTABLE_HUGEPAGES", "1").strip() != "0"


def _aligned_range(tensor: Tensor) -> tuple[int, int]:
    start = (tensor.data_ptr() + _HUGE_PAGE - 1) & ~(_HUGE_PAGE - 1)
    end = (tensor.data_ptr() + tensor.nbytes) & ~(_HUGE_PAGE - 1)
    return start, end


def _madvise(start: int, end: int, advice: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), advice) == 0
    except (OSError, AttributeError):
        return False


def advise_hugepages(tensor: Tensor) -> None:
    """Ask Linux to back ``tensor``'s (not yet touched) memory with 2 MiB pages.

    Optimizer state rows are read at random; with 4 KiB pages nearly every row costs a TLB
    miss.  Best effort: silently does nothing where ``madvise`` is unavailable or refuses,
    for tensors under 16 MiB, and when ``EMBTABLE_HUGEPAGES=0``.
    """
    if sys.platform != "linux" or tensor.device.type != "cpu" or tensor.nbytes < _HUGEPAGE_MIN_BYTES:
        return
    if not hugepages_requested():
        return
    start, end = _aligned_range(tensor)
    if end > start:
        _madvise(start, end, _MADV_HUGEPAGE)


def place_pages(tensor: Tensor, placement: str) -> bool:
    """Put ``tensor``'s memory on huge pages now (``"huge"``) or keep it off them (``"4k"``).

    ``"huge"`` marks the range ``MADV_HUGEPAGE`` and collapses its touched pages into 2 MiB
    pages at once (``MADV_COLLAPSE``); ``"4k"`` marks it ``MADV_NOHUGEPAGE`` (so that no huge
    page is made later; pages that are already huge stay huge: check with
    :func:`huge_page_fraction`).  Only whole 2 MiB pages inside the tensor are affected.

    Args:
        tensor: a CPU tensor (others, and tensors under 2 MiB, are left alone).
        placement: ``"huge"`` or ``"4k"``.

    Returns:
        Whether the kernel accepted every request (``False`` off Linux or where refused).

    Raises:
        ValueError: ``placement`` is neither ``"huge"`` nor ``"4k"``.

    Example:
        >>> import torch
        >>> place_pages(torch.zeros(4), "4k")  # too small: nothing to do
        False
    """
    if placement not in ("huge", "4k"):
        raise ValueError(f"place_pages: placement must be 'huge' or '4k', got {placement!r}")
    if sys.platform != "linux" or tensor.device.type != "cpu":
        return False
    start, end = _aligned_range(tensor)
    if end <= start:
        return False
    if placement == "4k":
        return _madvise(start, end, _MADV_NOHUGEPAGE)
    return _madvise(start, end, _MADV_HUGEPAGE) and _madvise(start, end, _MADV_COLLAPSE)


def huge_page_fraction(tensor: Tensor) -> float:
    """The fraction of ``tensor``'s bytes that Linux backs with transparent huge pages.

    Read from ``/proc/self/smaps`` (``AnonHugePages`` of the mappings the tensor overlaps,
    counted only where they overlap it, in proportion); ``0.0`` where that file is missing
    or for non-CPU or empty tensors.

    Example:
        >>> import torch
        >>> huge_page_fraction(torch.zeros(0))
        0.0
    """
    if tensor.device.type != "cpu" or tensor.nbytes == 0:
        return 0.0
    lo, hi = tensor.data_ptr(), tensor.data_ptr() + tensor.nbytes
    huge = 0.0
    region: tuple[int, int] | None = None
    try:
        with open("/proc/self/smaps") as smaps:
            for line in smaps:
                head = line.split(maxsplit=1)[0]
                if "-" in head and not head.endswith(":"):
                    a, b = (int(x, 16) for x in head.split("-"))
                    region = (a, b) if a < hi and b > lo else None
                elif region is not None and head == "AnonHugePages:":
                    kib = int(line.split()[1])
                    a, b = region
                    overlap = min(b, hi) - max(a, lo)
                    huge += kib * 1024 * overlap / (b - a)
    except OSError:
        return 0.0
    return min(huge / tensor.nbytes, 1.0)


def empty_table(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
    """``torch.empty(shape)``, on huge pages where possible (large CPU tensors)."""
    tensor = torch.empty(shape, dtype=dtype, device=device)
    advise_hugepages(tensor)
    return tensor
