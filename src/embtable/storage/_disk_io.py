"""Batched record I/O of the disk row store: one ``preadv`` / ``pwritev`` per run of
consecutive records, in small tasks over a pool of threads.  Private to
:mod:`embtable.storage.disk`."""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from embtable.storage._disk_files import runs

__all__ = ["BatchIO"]

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

    def io(self, fd: int, write: bool, ids: np.ndarray, buffer: np.ndarray, record: int) -> None:
        """preadv / pwritev the records of sorted ``ids`` (record numbers) of ``fd`` from / to
        ``buffer`` rows: one call per run of consecutive records, over ``io_threads`` threads."""
        self.run(self.tasks(fd, write, ids, buffer, record))

    def tasks(self, fd: int, write: bool, ids: np.ndarray, buffer: np.ndarray, record: int) -> list[Callable[[], None]]:
        """The work of :meth:`io` cut into tasks of a few runs each (for :meth:`run`)."""
        starts, lengths = runs(ids)
        view = memoryview(buffer).cast("B")

        def work(first: int, last: int) -> None:
            for start, length in zip(starts[first:last].tolist(), lengths[first:last].tolist()):
                chunk = view[start * record : (start + length) * record]
                offset = int(ids[start]) * record
                done = (os.pwritev if write else os.preadv)(fd, [chunk], offset)
                if done != len(chunk):
                    raise OSError(
                        errno.EIO,
                        f"DiskRowStore: short {'write' if write else 'read'} in {str(self.path)!r} at "
                        f"byte {offset} ({done} of {len(chunk)} bytes); a file is truncated",
                    )

        count = len(starts)
        size = max(_PARALLEL_RUNS // 2, -(-count // (_TASKS_PER_THREAD * self.threads)))
        return [functools.partial(work, i, min(i + size, count)) for i in range(0, count, size)]

    def run(self, tasks: list[Callable[[], None]]) -> None:
        """Run I/O tasks on the ``io_threads`` pool (threads take the next task when done,
        so one slow read does not hold a fixed share back), or inline when there are few."""
        if len(tasks) <= 2 or self.threads == 1:
            for task in tasks:
                task()
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="embtable-disk")
        futures = [self._pool.submit(task) for task in tasks]
        errors = [future.exception() for future in futures]  # every task done before raising
        for error in errors:
            if error is not None:
                raise error

    def submit(self, tasks: list[Callable[[], None]]) -> list[Future[None]]:
        """Start I/O tasks on the pool (always: the caller does not wait); their futures."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="embtable-disk")
        return [self._pool.submit(task) for task in tasks]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
