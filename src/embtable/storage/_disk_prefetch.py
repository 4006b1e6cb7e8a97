"""Prefetch for the disk row store: the next batch's records read on the I/O threads while
the current step computes.  Private to :mod:`embtable.storage.disk` (``DiskRowStore`` mixes
:class:`PrefetchMixin` in; it supplies ``_check_ids``, ``_plan_read``, ``_batch``,
``state_row_bytes``, ``row_bytes`` and the counters)."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["Prefetch", "PrefetchMixin"]


class Prefetch:
    """A read started by :meth:`DiskRowStore.prefetch`: its I/O futures, the records they
    fill, the steps that finish them, and which rows were written since (stale)."""

    def __init__(
        self, ids: np.ndarray, rows: np.ndarray, state: np.ndarray, with_state: bool,
        futures: list[Future[None]], finish: list[Callable[[], None]],
    ) -> None:
        self.ids, self.rows, self.state, self.with_state = ids, rows, state, with_state
        self.futures, self.finish = futures, finish
        self.stale = np.zeros(len(ids), dtype=bool)
        self.pid = os.getpid()  # the process whose I/O threads read it

    def invalidate(self, sorted_ids: np.ndarray) -> None:
        at = np.searchsorted(self.ids, sorted_ids).clip(max=len(self.ids) - 1)
        self.stale[at[self.ids[at] == sorted_ids]] = True

    def wait(self) -> bool:
        """Wait for every read (all of them, also past a failed one); ``True`` if all succeeded.
        In a process forked while reads were pending, those never finish: ``False`` at once."""
        if self.pid != os.getpid() and not all(future.done() for future in self.futures):
            return False
        errors = [future.exception() for future in self.futures]
        return all(error is None for error in errors)

    def complete(self) -> bool:
        """Wait, then finish the records (on the caller's thread); ``False`` if a read failed."""
        if not self.wait():
            return False
        for step in self.finish:
            step()
        return True

    def take(self, sorted_ids: np.ndarray, rows: np.ndarray, state: np.ndarray, with_state: bool) -> np.ndarray | None:
        """Wait, finish, and copy the records of ``sorted_ids`` not written since into
        ``rows`` / ``state``; returns which ids were copied (``None``: the prefetch failed,
        or lacks the state asked for)."""
        if not self.complete() or (with_state and not self.with_state):
            return None
        at = np.searchsorted(self.ids, sorted_ids).clip(max=len(self.ids) - 1)
        covered = (self.ids[at] == sorted_ids) & ~self.stale[at]
        rows[covered] = self.rows[at[covered]]
        if with_state:
            state[covered] = self.state[at[covered]]
        return covered


class PrefetchMixin:
    """:meth:`prefetch`, :meth:`wait_prefetch` and the read path's use of a prefetch."""

    _prefetch: Prefetch | None
    rows_prefetched: int
    prefetch_used: int
    row_bytes: int
    state_row_bytes: int
    _batch: Any

    def prefetch(self, ids: Tensor, *, with_state: bool = True) -> None:
        """Start reading rows ``ids`` (and, ``with_state``, their optimizer state) on the I/O
        threads and return at once; the next :meth:`read` takes the prefetched records of
        the rows it asks for, waiting for them if they are still being read.

        The records are as of this call: a row written (:meth:`write_rows`) after it is read
        again by that :meth:`read`, so a prefetch never changes what a read returns.  A new
        prefetch replaces a pending one; one that failed is dropped (the read reads again and
        raises if the files are at fault).  ``rows_prefetched`` and ``prefetch_used`` count
        the rows prefetched and the rows reads took from a prefetch.

        Raises:
            TypeError / IndexError / ValueError: as :meth:`read` (nothing is started).
        """
        sorted_ids, _ = self._check_ids(ids, "DiskRowStore.prefetch")
        self._drop_prefetch()
        if not len(sorted_ids):
            return
        with_state = with_state and self.state_row_bytes > 0
        rows = np.empty((len(sorted_ids), self.row_bytes), dtype=np.uint8)
        state = np.empty((len(sorted_ids), self.state_row_bytes if with_state else 0), dtype=np.uint8)
        tasks, finish = self._plan_read(sorted_ids, rows, state, with_state, True, wait=False)
        self._prefetch = Prefetch(sorted_ids, rows, state, with_state, self._batch.submit(tasks), finish)
        self.rows_prefetched += len(sorted_ids)

    def wait_prefetch(self) -> None:
        """Wait until a pending :meth:`prefetch` has read everything (its errors are kept
        for the next :meth:`read`, which then reads again)."""
        if self._prefetch is not None:
            self._prefetch.wait()

    def _drop_prefetch(self) -> None:
        if self._prefetch is not None:
            self._prefetch.wait()  # no read of it may outlive the files it reads
            self._prefetch = None

    def _use_prefetch(
        self, sorted_ids: np.ndarray, rows: np.ndarray, state: np.ndarray, with_state: bool
    ) -> np.ndarray | None:
        """Copy the pending prefetch's records of ``sorted_ids`` into ``rows`` / ``state``
        and drop the prefetch; returns which ids it held (``None``: no usable prefetch)."""
        pending, self._prefetch = self._prefetch, None
        covered = None if pending is None else pending.take(sorted_ids, rows, state, with_state)
        if covered is not None:
            self.prefetch_used += int(covered.sum())
        return covered
