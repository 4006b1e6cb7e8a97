"""File helpers of the disk row store: sparse copies, bitmaps, runs of rows.  Private to
:mod:`embtable.storage.disk` (the write-back log is in :mod:`embtable.storage._disk_log`)."""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

import numpy as np

__all__ = ["Bits", "CorruptFileError", "copy_range", "copy_sparse", "runs"]


class CorruptFileError(ValueError):
    """A data file whose size does not match the manifest (raised as the store's error)."""


def copy_range(fd_in: int, fd_out: int, start: int, end: int, name: object) -> None:
    """Copy bytes ``start:end`` of ``fd_in`` to the same offsets of ``fd_out`` (``EIO`` naming
    ``name`` if the source ends first)."""
    offset = start
    while offset < end:
        copied = os.copy_file_range(fd_in, fd_out, end - offset, offset, offset)
        if copied == 0:
            raise OSError(errno.EIO, f"{name} ends at byte {offset}, before byte {end}")
        offset += copied


def copy_sparse(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` keeping its holes (SEEK_DATA / SEEK_HOLE), then fsync."""
    size = source.stat().st_size
    with open(source, "rb") as src, open(target, "wb") as dst:
        dst.truncate(size)
        fd_in, fd_out, position = src.fileno(), dst.fileno(), 0
        while position < size:
            try:
                start = os.lseek(fd_in, position, os.SEEK_DATA)
            except OSError as error:
                if error.errno == errno.ENXIO:  # only a hole remains
                    break
                raise
            end = os.lseek(fd_in, start, os.SEEK_HOLE)
            copy_range(fd_in, fd_out, start, end, source)
            position = end
        dst.flush()
        os.fsync(fd_out)


def runs(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start indices and lengths of the runs of consecutive values of sorted ``ids``."""
    if ids.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    cuts = np.flatnonzero(np.diff(ids) != 1) + 1
    starts = np.concatenate(([0], cuts))
    lengths = np.diff(np.concatenate((starts, [ids.size])))
    return starts, lengths


class Bits:
    """A bitmap file mapped in memory (one bit per row), advised MADV_RANDOM."""

    def __init__(self, path: Path, num_rows: int, writable: bool) -> None:
        self.path = path
        size = (num_rows + 7) // 8
        if path.stat().st_size != size:
            raise CorruptFileError(
                f"DiskRowStore: {path} has {path.stat().st_size} bytes, expected {size} "
                f"(one bit for each of {num_rows} rows); the file is truncated or not this table's"
            )
        self._file = open(path, "r+b" if writable else "rb")
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        self._map = mmap.mmap(self._file.fileno(), size, access=access)
        if hasattr(self._map, "madvise") and hasattr(mmap, "MADV_RANDOM"):
            self._map.madvise(mmap.MADV_RANDOM)
        self.bytes = np.frombuffer(self._map, dtype=np.uint8)

    def test(self, ids: np.ndarray) -> np.ndarray:
        return (self.bytes[ids >> 3] >> (ids & 7).astype(np.uint8)) & 1 != 0

    def set(self, ids: np.ndarray) -> None:
        np.bitwise_or.at(self.bytes, ids >> 3, (np.uint8(1) << (ids & 7).astype(np.uint8)))

    def sync(self) -> None:
        self._map.flush()

    def close(self) -> None:
        self.bytes = None  # type: ignore[assignment]
        self._map.close()
        self._file.close()

