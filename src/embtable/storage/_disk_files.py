"""File helpers of the disk row store: atomic writes, sparse copies, bitmaps, the
write-back log.  Private to :mod:`embtable.storage.disk`."""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

__all__ = ["Bits", "RowLog", "copy_sparse", "runs"]


class CorruptFileError(ValueError):
    """A data file whose size does not match the manifest (raised as the store's error)."""


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
            offset = start
            while offset < end:
                copied = os.copy_file_range(fd_in, fd_out, end - offset, offset, offset)
                if copied == 0:
                    break
                offset += copied
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




#: ``io(fd, write, positions, buffer, record)``: pread / pwrite the records at sorted
#: ``positions`` (record numbers) from / to the rows of ``buffer``.
RecordIO = Callable[[int, bool, np.ndarray, np.ndarray, int], None]


class RowLog:
    """Append-only log of whole records (row + optimizer state) written back since the last
    flush: one sequential write per batch instead of one read-modify-write of a 4 KiB page
    per row.  An in-RAM index (sorted ids and their record numbers, newest wins) finds a
    row's latest record; :meth:`drain` hands the records back in id order so that the store
    can write them to their home places, after which the log is empty.
    """

    def __init__(self, path: Path, record: int, io: RecordIO) -> None:
        self.path, self.record, self._io = path, record, io
        self.fd: int | None = None
        self.count = 0  # records appended (the file's length in records)
        self.ids = np.empty(0, np.int64)
        self.pos = np.empty(0, np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        return self.count * self.record

    def append(self, sorted_ids: np.ndarray, records: np.ndarray) -> None:
        """Append ``records`` (``[n, record]`` uint8, rows of ``sorted_ids``) in one write."""
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)
        view, offset = memoryview(np.ascontiguousarray(records)).cast("B"), self.count * self.record
        while len(view):
            done = os.pwrite(self.fd, view, offset)
            view, offset = view[done:], offset + done
        positions = np.arange(self.count, self.count + len(sorted_ids), dtype=np.int64)
        self.count += len(sorted_ids)
        ids, pos = self.ids, self.pos
        if len(ids):  # drop the older records of rewritten ids
            at = np.searchsorted(ids, sorted_ids)
            inside = at < len(ids)
            stale = at[inside][ids[at[inside]] == sorted_ids[inside]]
            if len(stale):
                keep = np.ones(len(ids), dtype=bool)
                keep[stale] = False
                ids, pos = ids[keep], pos[keep]
        where = np.searchsorted(ids, sorted_ids)
        self.ids = np.insert(ids, where, sorted_ids)
        self.pos = np.insert(pos, where, positions)

    def find(self, sorted_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(in_log, positions)``: which of ``sorted_ids`` have a record, and its number."""
        if not len(self.ids):
            return np.zeros(len(sorted_ids), dtype=bool), np.empty(0, np.int64)
        at = np.searchsorted(self.ids, sorted_ids).clip(max=len(self.ids) - 1)
        found = self.ids[at] == sorted_ids
        return found, self.pos[at[found]]

    def read(self, positions: np.ndarray) -> np.ndarray:
        """The records at ``positions`` (any order), ``[n, record]`` uint8, in that order."""
        order = np.argsort(positions, kind="stable")
        buffer = np.empty((len(positions), self.record), dtype=np.uint8)
        self._io(self.fd, False, positions[order], buffer, self.record)
        out = np.empty_like(buffer)
        out[order] = buffer
        return out

    def drain(self, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(sorted ids, their records)`` in chunks of ``chunk`` ids; then empties the log."""
        for first in range(0, len(self.ids), chunk):
            yield self.ids[first : first + chunk], self.read(self.pos[first : first + chunk])
        self.ids, self.pos, self.count = np.empty(0, np.int64), np.empty(0, np.int64), 0
        if self.fd is not None:
            os.ftruncate(self.fd, 0)

    def close(self, remove: bool) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if remove and self.path.exists():
            self.path.unlink()
