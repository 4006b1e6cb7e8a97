"""The durable write-back log of a disk-backed table.  Private to :mod:`embtable.storage.disk`.

A log segment is two files: ``log.<n>.bin`` (whole records: row bytes then optimizer-state
bytes) and ``log.<n>.ids`` (the row number of each record, int64).  Records are only ever
appended.  The manifest names the segment and how many of its records belong to the table
(``{"segment": n, "records": N}``); records past ``N`` (appended after the last flush, or
a half-written append of a killed process) are ignored and cut off when the table is next
opened for writing.  A row's newest record within those ``N`` is its value: an in-RAM index
(:class:`RunIndex`: sorted runs of row numbers and their record numbers, 16 bytes per entry;
each run at least twice the next newer one, so at most 32 bytes per logged row while older
runs still hold rows that newer ones rewrote) finds it.  An append adds a run and merges runs of similar size (the logarithmic
method), so it costs O(new rows) amortised (times log of the log's rows) instead of a copy of
the whole index; a lookup searches the O(log) runs newest first.
"""

from __future__ import annotations

import errno
import functools
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from embtable.storage._disk_files import copy_range
from embtable.storage._disk_io import BatchIO

__all__ = ["RowLog", "RunIndex", "copy_segment", "log_files", "pages_touched"]

PAGE = 4096
_NAME = re.compile(r"log\.(\d+)\.(bin|ids)$")


def segment_paths(directory: Path, segment: int) -> tuple[Path, Path]:
    """The data and ids files of log segment ``segment``."""
    return directory / f"log.{segment:06d}.bin", directory / f"log.{segment:06d}.ids"


def log_files(directory: Path) -> list[Path]:
    """Every log file (of any segment) in ``directory``."""
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def pages_touched(sorted_ids: np.ndarray, record: int) -> int:
    """Distinct 4 KiB pages that writing the records of sorted ``sorted_ids`` (``record``
    bytes each, at ``id * record``; repeats allowed) dirties, records over a page included."""
    if not len(sorted_ids) or not record:
        return 0
    first = sorted_ids * record // PAGE
    last = (sorted_ids * record + record - 1) // PAGE  # both non-decreasing: one linear pass
    if len(last) > 1:  # a page a previous record already dirtied is not counted again
        first[1:] = np.maximum(first[1:], last[:-1] + 1)
    return int(np.maximum(last - first + 1, 0).sum())


def _full_write(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        done = os.pwrite(fd, data, offset)
        data, offset = data[done:], offset + done


def copy_segment(source: Path, target: Path, segment: int, records: int, record: int) -> None:
    """Copy the first ``records`` records of segment ``segment`` from the table directory
    ``source`` to ``target`` (both files), then fsync the copies."""
    for src, dst, size in zip(segment_paths(source, segment), segment_paths(target, segment), (record, 8)):
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            copy_range(fin.fileno(), fout.fileno(), 0, records * size, src)
            fout.flush()
            os.fsync(fout.fileno())


class RunIndex:
    """Row number -> record number of a log's newest record per row, as sorted runs.

    Each :meth:`add` appends a run (the distinct sorted rows of one append and their record
    numbers, newer than every record before); while the run before the last is less than
    twice the last one's size, the two are merged (the older run loses the rows the newer
    one rewrote).  So run sizes at least halve from oldest to newest: O(log n) runs, and each
    row is copied O(log n) times over its life, never the whole index per append.

    Example:
        >>> import numpy as np
        >>> index = RunIndex()
        >>> index.add(np.array([1, 5, 9]), np.array([0, 1, 2]))
        >>> index.add(np.array([5]), np.array([3]))
        >>> found, positions = index.find(np.array([0, 5, 9]))
        >>> found.tolist(), positions.tolist()
        ([False, True, True], [3, 2])
        >>> index.collapse()[0].tolist(), index.collapse()[1].tolist()
        ([1, 5, 9], [0, 3, 2])
    """

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []  # oldest first

    @staticmethod
    def _merge(older: tuple[np.ndarray, np.ndarray], newer: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        (ids, pos), (new_ids, new_pos) = older, newer
        if len(ids) and len(new_ids):  # drop the older records of rewritten rows
            at = np.searchsorted(ids, new_ids).clip(max=len(ids) - 1)  # (the newer run is the smaller)
            stale = at[ids[at] == new_ids]
            if len(stale):
                keep = np.ones(len(ids), dtype=bool)
                keep[stale] = False
                ids, pos = ids[keep], pos[keep]
        where = np.searchsorted(ids, new_ids)
        return np.insert(ids, where, new_ids), np.insert(pos, where, new_pos)

    def add(self, sorted_ids: np.ndarray, positions: np.ndarray) -> None:
        """Add the records ``positions`` of distinct ``sorted_ids`` (newer than all before)."""
        if not len(sorted_ids):
            return
        self.runs.append((np.asarray(sorted_ids, dtype=np.int64), np.asarray(positions, dtype=np.int64)))
        while len(self.runs) > 1 and len(self.runs[-2][0]) < 2 * len(self.runs[-1][0]):
            newer = self.runs.pop()
            self.runs.append(self._merge(self.runs.pop(), newer))

    def find(self, sorted_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(found, positions)``: which of ``sorted_ids`` have a record, and the newest's
        number (in the order of ``sorted_ids[found]``)."""
        found = np.zeros(len(sorted_ids), dtype=bool)
        out = np.empty(len(sorted_ids), dtype=np.int64)
        for ids, pos in reversed(self.runs):
            if not len(ids):
                continue
            todo = np.flatnonzero(~found)
            if not len(todo):
                break
            wanted = sorted_ids[todo]
            at = np.searchsorted(ids, wanted).clip(max=len(ids) - 1)
            hit = ids[at] == wanted
            found[todo[hit]] = True
            out[todo[hit]] = pos[at[hit]]
        return found, out[found]

    def collapse(self) -> tuple[np.ndarray, np.ndarray]:
        """Merge every run into one: ``(sorted distinct rows, their newest record numbers)``."""
        while len(self.runs) > 1:
            newer = self.runs.pop()
            self.runs.append(self._merge(self.runs.pop(), newer))
        return self.runs[0] if self.runs else (np.empty(0, np.int64), np.empty(0, np.int64))

    def __len__(self) -> int:
        """Distinct rows (merges every run)."""
        return len(self.collapse()[0])


class RowLog:
    """One log segment: append, find, read, and hand the newest records back for compaction.

    Args:
        directory: the table's directory.
        segment: the segment number (its file names).
        record: bytes per record (row + state).
        batch: the store's batched record I/O (its thread pool reads the log too).
        records: records already in the table (from the manifest); 0 for a new segment.
        writable: open for appending (a new segment's files are created; an existing
            segment's unflushed tail is cut off).
        background: write appended records on a background thread, so that the caller's
            reads overlap them (reads of records still being written wait for them; a failed
            background write makes every later call raise, and is never named by a manifest).

    Raises:
        CorruptLogError (a ``ValueError``): the files hold fewer records than ``records``.
    """

    def __init__(self, directory: Path, segment: int, record: int, batch: BatchIO, *, records: int = 0,
                 writable: bool = True, background: bool = False) -> None:
        self.segment, self.record, self._batch = segment, record, batch
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="embtable-log") if background and writable else None
        self._pid = os.getpid()  # the writer's process (a forked child writes on its own thread)
        self._pending: list[tuple[int, Future[None]]] = []  # (first record, its write)
        self._failed: BaseException | None = None
        self.paths = segment_paths(directory, segment)
        self.count = records  # records in the segment (durable ones and those appended since)
        self.durable = records  # records covered by the last flush
        if records == 0 and writable:
            flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC
        else:
            flags = os.O_RDWR if writable else os.O_RDONLY
        try:
            self.fd = os.open(self.paths[0], flags, 0o644)
            self.ids_fd = os.open(self.paths[1], flags, 0o644)
        except FileNotFoundError:
            raise CorruptLogError(f"DiskRowStore: the write-back log {self.paths[0].name} named by the manifest is missing") from None
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)
        sizes = (os.fstat(self.fd).st_size, os.fstat(self.ids_fd).st_size)
        if sizes[0] < records * record or sizes[1] < records * 8:
            self.close()
            raise CorruptLogError(
                f"DiskRowStore: the write-back log {self.paths[0].name} holds {sizes[0] // record} records "
                f"and {sizes[1] // 8} ids, but the manifest names {records}; the log is truncated"
            )
        if writable and (sizes[0] > records * record or sizes[1] > records * 8):
            os.ftruncate(self.fd, records * record)  # an unflushed tail: not part of the table
            os.ftruncate(self.ids_fd, records * 8)
        self.index = RunIndex()
        if records:
            logged = np.empty(records, dtype=np.int64)
            view = memoryview(logged).cast("B")
            done = 0
            while done < len(view):
                done += os.preadv(self.ids_fd, [view[done:]], done)
            newest_first = logged[::-1]
            ids, first = np.unique(newest_first, return_index=True)
            self.index.add(ids, (records - 1 - first).astype(np.int64))

    def __len__(self) -> int:
        """Distinct logged rows (merges the index's runs: test ``count`` for emptiness)."""
        return len(self.index)

    def __bool__(self) -> bool:  # an open log is true, however many rows it holds (no merge)
        return True

    @property
    def ids(self) -> np.ndarray:
        """The logged rows, sorted (merges the index's runs)."""
        return self.index.collapse()[0]

    @property
    def pos(self) -> np.ndarray:
        """The newest record number of each of :attr:`ids`."""
        return self.index.collapse()[1]

    @property
    def nbytes(self) -> int:
        """Bytes appended to the segment (records and ids, stale ones included)."""
        return self.count * (self.record + 8)

    def append(self, sorted_ids: np.ndarray, records: np.ndarray) -> None:
        """Append ``records`` (``[n, record]`` uint8, rows of distinct ``sorted_ids``): one
        write to each file (on the background thread if there is one).  Not durable until
        :meth:`sync`."""
        self._check()
        data, ids64, first = np.ascontiguousarray(records), np.ascontiguousarray(sorted_ids, dtype=np.int64), self.count

        def write() -> None:
            _full_write(self.fd, memoryview(data).cast("B"), first * self.record)
            _full_write(self.ids_fd, memoryview(ids64).cast("B"), first * 8)

        if self._writer is None or self._pid != os.getpid():
            write()
        else:
            self._pending.append((first, self._writer.submit(write)))
        positions = np.arange(self.count, self.count + len(sorted_ids), dtype=np.int64)
        self.count += len(sorted_ids)
        self.index.add(ids64, positions)  # O(new rows) amortised: no copy of the whole index

    def wait(self, upto: int | None = None) -> None:
        """Wait until the records up to number ``upto`` (all: ``None``) are written.

        Raises:
            OSError: a background write failed (now or earlier).
            RuntimeError: in a process forked while an append was being written (the
                parent's writer thread is not here).
        """
        if self._pid != os.getpid() and not all(future.done() for _, future in self._pending):
            raise RuntimeError(
                f"DiskRowStore: an append to the write-back log {self.paths[0].name} was still being "
                "written when this process was forked; flush the table before forking"
            )
        keep = []
        for first, future in self._pending:
            if upto is None or first <= upto:
                error = future.exception()
                if error is not None and self._failed is None:
                    self._failed = error
            else:
                keep.append((first, future))
        self._pending = keep
        self._check()

    def _check(self) -> None:
        if self._failed is not None:
            error = self._failed
            raise OSError(
                getattr(error, "errno", None) or errno.EIO,
                f"DiskRowStore: an append to the write-back log {self.paths[0].name} failed ({error}); "
                "the table's files are as at its last flush: close and reopen it",
            )

    def sync(self) -> dict[str, int]:
        """Wait for pending appends, fsync both files; returns the manifest entry naming the
        segment and its records."""
        self.wait()
        os.fsync(self.fd)
        os.fsync(self.ids_fd)
        self.durable = self.count
        return {"segment": self.segment, "records": self.count}

    def find(self, sorted_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(in_log, positions)``: which of ``sorted_ids`` have a record, and its number."""
        return self.index.find(sorted_ids)

    def read(self, positions: np.ndarray) -> np.ndarray:
        """The records at ``positions`` (any order), ``[n, record]`` uint8, in that order."""
        tasks, records = self.read_tasks(positions)
        self._batch.run(tasks)
        return records()

    def read_tasks(
        self, positions: np.ndarray, *, wait: bool = True
    ) -> tuple[list[Callable[[], None]], Callable[[], np.ndarray]]:
        """``(tasks, records)``: once the I/O ``tasks`` have run (:meth:`BatchIO.run`, maybe
        with other files' tasks), ``records()`` is what :meth:`read` returns.  Records still
        being appended are waited for here, or (``wait=False``) by the tasks themselves, on
        the I/O threads (a failed append then fails the tasks)."""
        appends: list[Future[None]] = []
        if len(positions):
            upto = int(positions.max())
            if wait or self._pid != os.getpid():  # (a forked child: appends of the parent's raise)
                self.wait(upto)
            else:
                appends = [future for first, future in self._pending if first <= upto]
        order = np.argsort(positions, kind="stable")
        buffer = np.empty((len(positions), self.record), dtype=np.uint8)

        def records() -> np.ndarray:
            out = np.empty_like(buffer)
            out[order] = buffer
            return out

        tasks = self._batch.tasks(self.fd, False, positions[order], buffer, self.record)
        if appends:
            tasks = [functools.partial(_after, appends, task) for task in tasks]
        return tasks, records

    def newest(self, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(sorted ids, their newest records)`` in chunks of ``chunk`` ids (the log is
        left as it is: the caller drops it once the records are safely home)."""
        ids, pos = self.index.collapse()
        for first in range(0, len(ids), chunk):
            yield ids[first : first + chunk], self.read(pos[first : first + chunk])

    def close(self, remove: bool = False) -> None:
        """Close the files (after any pending append; its error is dropped: the records it
        held were never named by a manifest)."""
        writer = getattr(self, "_writer", None)
        if writer is not None:
            if self._pid == os.getpid():  # (a forked child has none of its threads to join)
                writer.shutdown(wait=True)
            self._writer = None
        for name in ("fd", "ids_fd"):
            fd = getattr(self, name, None)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)
        if remove:
            for path in self.paths:
                path.unlink(missing_ok=True)


def _after(appends: list[Future[None]], task: Callable[[], None]) -> None:
    for future in appends:
        future.result()
    task()


class CorruptLogError(ValueError):
    """The log segment named by the manifest is missing or shorter than the manifest says."""
