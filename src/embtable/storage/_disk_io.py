"""Batched record I/O of the disk row store: one ``pread`` / ``pwritev`` per run of
consecutive records, in small tasks over a pool of threads.  Private to
:mod:`embtable.storage.disk`.

A read task reads all its runs in one call of the compiled ``embtable::disk_pread_runs``
(``csrc/cpu/disk_io_cpu.cpp``: a loop of ``pread`` that lets go of the GIL, so the I/O
threads cost no Python per run and do not hold up the training thread); without the
extension its pure-Python twin :func:`pread_runs_reference` runs (the extension's loader
warns once).

Example:
    >>> import os, tempfile, numpy as np
    >>> fd, name = tempfile.mkstemp()
    >>> os.write(fd, bytes(range(16)))
    16
    >>> buffer = np.zeros(5, dtype=np.uint8)
    >>> pread_runs(fd, np.array([2, 10]), np.array([3, 2]), buffer), buffer.tolist()
    ((-1, 0, 0), [2, 3, 4, 10, 11])
    >>> pread_runs(fd, np.array([14]), np.array([4]), np.zeros(4, dtype=np.uint8))  # 2 bytes left
    (0, 0, 2)
    >>> os.close(fd); os.unlink(name)
"""

from __future__ import annotations

import errno
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from embtable.storage._disk_files import runs

__all__ = ["BatchIO", "pread_runs", "pread_runs_reference"]

_FAKE = {"registered": False}
_FAKE_LOCK = threading.Lock()  # the first calls come from several I/O threads at once


def _compiled() -> bool:
    from embtable.ops._compiled import extension_available

    if not extension_available() or not hasattr(torch.ops.embtable, "disk_pread_runs"):
        return False
    if not _FAKE["registered"]:
        with _FAKE_LOCK:
            if not _FAKE["registered"]:

                @torch.library.register_fake("embtable::disk_pread_runs")
                def _disk_pread_runs_fake(fd, offsets, lengths, buffer):
                    return offsets.new_empty((3,))

                _FAKE["registered"] = True
    return True


def pread_runs_reference(fd: int, offsets: np.ndarray, lengths: np.ndarray, buffer: np.ndarray) -> tuple[int, int, int]:
    """Read run ``i`` (bytes ``offsets[i] : offsets[i] + lengths[i]`` of ``fd``) into
    ``buffer`` (contiguous uint8) after the runs before it.  Returns ``(run, errno, bytes)``:
    the first run that failed (-1: none), its ``errno`` (0: the file ended first), and the
    bytes of it read.  The oracle of ``embtable::disk_pread_runs``."""
    view, position = memoryview(buffer).cast("B"), 0
    for run, (offset, length) in enumerate(zip(offsets.tolist(), lengths.tolist())):
        done = 0
        while done < length:
            try:
                got = os.preadv(fd, [view[position + done : position + length]], offset + done)
            except OSError as error:
                return run, error.errno or errno.EIO, done
            if got == 0:
                return run, 0, done
            done += got
        position += length
    return -1, 0, 0


def pread_runs(fd: int, offsets: np.ndarray, lengths: np.ndarray, buffer: np.ndarray) -> tuple[int, int, int]:
    """:func:`pread_runs_reference`, compiled when the extension is there (without the GIL)."""
    if _compiled():
        out = torch.ops.embtable.disk_pread_runs(
            fd, torch.from_numpy(np.ascontiguousarray(offsets, dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(lengths, dtype=np.int64)), torch.from_numpy(buffer),
        )
        failed, error, got = out.tolist()
        return failed, error, got
    return pread_runs_reference(fd, offsets, lengths, buffer)

#: Runs of rows per thread task: below this a batch is read or written by the caller's thread.
_PARALLEL_RUNS = 64
#: A batch's runs are cut into about this many tasks per I/O thread (threads take the next).
_TASKS_PER_THREAD = 8


class BatchIO:
    """Reads and writes records at sorted record numbers of open files, ``threads`` at a time.

    Args:
        path: the table's directory (named in errors).
        threads: the pool's size (the pool starts on first use; 1: the caller's thread).
    """

    def __init__(self, path: Path, threads: int) -> None:
        self.path, self.threads = path, threads
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0  # the process that started the pool

    def _executor(self) -> ThreadPoolExecutor:
        """The pool, started on first use; a forked child starts its own (the parent's
        threads do not exist in it: work given to the parent's pool would never run)."""
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="embtable-disk")
            self._pool_pid = os.getpid()
        return self._pool

    def io(self, fd: int, write: bool, ids: np.ndarray, buffer: np.ndarray, record: int) -> None:
        """preadv / pwritev the records of sorted ``ids`` (record numbers) of ``fd`` from / to
        ``buffer`` rows: one call per run of consecutive records, over ``io_threads`` threads."""
        self.run(self.tasks(fd, write, ids, buffer, record))

    def tasks(self, fd: int, write: bool, ids: np.ndarray, buffer: np.ndarray, record: int) -> list[Callable[[], None]]:
        """The work of :meth:`io` cut into tasks of a few runs each (for :meth:`run`)."""
        starts, lengths = runs(ids)
        if not write:
            return self._read_tasks(fd, ids, buffer, record, starts, lengths)
        view = memoryview(buffer).cast("B")

        def work(first: int, last: int) -> None:
            for start, length in zip(starts[first:last].tolist(), lengths[first:last].tolist()):
                chunk = view[start * record : (start + length) * record]
                offset = int(ids[start]) * record
                done = os.pwritev(fd, [chunk], offset)
                if done != len(chunk):
                    raise OSError(
                        errno.EIO,
                        f"DiskRowStore: short write in {str(self.path)!r} at byte {offset} "
                        f"({done} of {len(chunk)} bytes); a file is truncated",
                    )

        return self._cut(work, len(starts))

    def _cut(self, work: Callable[[int, int], None], count: int) -> list[Callable[[], None]]:
        size = max(_PARALLEL_RUNS // 2, -(-count // (_TASKS_PER_THREAD * self.threads)))
        return [functools.partial(work, i, min(i + size, count)) for i in range(0, count, size)]

    def _read_tasks(
        self, fd: int, ids: np.ndarray, buffer: np.ndarray, record: int, starts: np.ndarray, lengths: np.ndarray
    ) -> list[Callable[[], None]]:
        """Read tasks: each reads its runs with one :func:`pread_runs` call."""
        if not buffer.flags.c_contiguous:  # (reshape would then read into a copy)
            raise ValueError("BatchIO: the read buffer must be C-contiguous")
        flat = buffer.reshape(-1)
        offsets, sizes, places = ids[starts] * record, lengths * record, starts * record

        def work(first: int, last: int) -> None:
            begin, end = places[first], places[last - 1] + sizes[last - 1]
            failed, error, got = pread_runs(fd, offsets[first:last], sizes[first:last], flat[begin:end])
            if failed >= 0:
                offset, size = int(offsets[first + failed]), int(sizes[first + failed])
                if error:
                    raise OSError(
                        error, f"DiskRowStore: reading {str(self.path)!r} at byte {offset} failed: {os.strerror(error)}"
                    )
                raise OSError(
                    errno.EIO,
                    f"DiskRowStore: short read in {str(self.path)!r} at byte {offset} ({got} of {size} "
                    "bytes); a file is truncated",
                )

        return self._cut(work, len(starts))

    def run(self, tasks: list[Callable[[], None]]) -> None:
        """Run I/O tasks on the ``io_threads`` pool (threads take the next task when done,
        so one slow read does not hold a fixed share back), or inline when there are few."""
        if len(tasks) <= 2 or self.threads == 1:
            for task in tasks:
                task()
            return
        pool = self._executor()
        futures = [pool.submit(task) for task in tasks]
        errors = [future.exception() for future in futures]  # every task done before raising
        for error in errors:
            if error is not None:
                raise error

    def submit(self, tasks: list[Callable[[], None]]) -> list[Future[None]]:
        """Start I/O tasks on the pool (always: the caller does not wait); their futures."""
        pool = self._executor()
        return [pool.submit(task) for task in tasks]

    def close(self) -> None:
        if self._pool is not None:
            if self._pool_pid == os.getpid():  # (a forked child has none of its threads to join)
                self._pool.shutdown()
            self._pool = None
