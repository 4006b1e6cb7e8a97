"""Backing files of tables bigger than memory: the disk row store (DESIGN.md, "Storage").

A disk-backed table is a directory::

    manifest.json   format, shape, dtype, initializer, seed, optimizer-state layout,
                    status ("clean" / "writing"), generation; written last, atomically
    rows.bin        num_embeddings records of embedding_dim values (a sparse file)
    rows.bits       one bit per row: set once the row has been written
    state.bin       one optimizer-state record per row (created when an optimizer is bound)
    state.bits      one bit per row: set once the row's state has been written
    log.<n>.bin     the write-back log: whole records (row + state) appended in batches
    log.<n>.ids     the row number of each logged record (int64)

A row never written costs no disk (a hole of the sparse files) and reads as the table's
initializer evaluated at ``(seed, row)`` (:func:`init_rows`), so a table of a billion rows
is created instantly and every row has the same start value wherever it is first read.
Reads and writes go through :class:`DiskRowStore` in batches of ids sorted by row, one
``preadv`` / ``pwritev`` per run of consecutive rows, spread over a few threads; the data
files are opened with ``POSIX_FADV_RANDOM`` (no read-ahead) and the bitmaps, which are
mapped, with ``MADV_RANDOM``.

Durability: written rows (with their state) are appended to the write-back log, which
is part of the table: :meth:`DiskRowStore.flush` fsyncs the log and then writes the
manifest naming the log segment and its length, so records appended after a flush (or
half-appended when the process was killed) are ignored when the table is reopened, and
the rows and state files are not touched between flushes.  A row's newest logged record
is its value (an in-RAM index finds it).  Once the log outgrows the pages its records
would dirty at home (``compact_ratio``), a flush moves the newest records to their home
places in row order (each page written once), fsyncs them and writes a manifest without
the log last: a process killed during that move leaves the previous manifest, whose log
still shadows every row being moved.  Writes that go straight home (rows without their
state, a log past ``max_log_bytes`` between flushes) first flip the manifest to
``"writing"``; a directory found ``"writing"`` refuses to open with
:class:`TableNotCleanError` naming the last checkpoint.  So a killed process leaves the
table at its last flush or refusing to open, never a silent mix of old and new rows.
:meth:`DiskRowStore.checkpoint` flushes and copies the directory (holes kept) to a new
directory whose manifest is written last and which appears by one rename (an existing
checkpoint there is swapped out by one ``renameat2(RENAME_EXCHANGE)`` where Linux has it, so a
kill leaves the old or the new checkpoint at the path, never none);
:func:`restore` copies a checkpoint back.

The table-level object users pass around is the :class:`Disk` spec
(``storage=embtable.storage.disk.Disk(path, cache_rows=...)``); the modules that use it,
with a :class:`~embtable.storage.slots.SlotMap` as the row cache, are in
:mod:`embtable.nn.disk`.

Example:
    >>> import tempfile, torch
    >>> from embtable.storage.disk import DiskRowStore
    >>> path = tempfile.mkdtemp() + "/table"
    >>> store = DiskRowStore.create(path, num_embeddings=10**9, embedding_dim=4, seed=7)
    >>> ids = torch.tensor([5, 999_999_999])
    >>> first = store.read_rows(ids)               # never written: the initializer at (7, row)
    >>> store.write_rows(ids, torch.ones(2, 4))
    >>> store.flush()
    >>> store.close()
    >>> again = DiskRowStore.open(path, read_only=True)
    >>> again.read_rows(ids)
    tensor([[1., 1., 1., 1.],
            [1., 1., 1., 1.]])
    >>> again.read_rows(torch.tensor([6])).shape, again.status
    (torch.Size([1, 4]), 'clean')
"""

from __future__ import annotations

import errno
import functools
import json
import os
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from embtable._atomic import atomic_write_bytes
from embtable.storage._disk_files import Bits, CorruptFileError
from embtable.storage._disk_io import BatchIO
from embtable.storage._disk_log import (
    CorruptLogError,
    RowLog,
    log_files,
    pages_touched,
)
from embtable.storage._disk_manifest import (
    _DATA_FILES,
    _DTYPE_NAMES,
    _DTYPES,
    MANIFEST,
    ROW_BITS,
    ROWS,
    STATE,
    STATE_BITS,
    VERSION,
    CorruptTableError,
    StateField,
    TableNotCleanError,
    copy_table,
    lock_writer,
    manifest_for_open,
    new_manifest,
    state_fields,
)
from embtable.storage._disk_prefetch import Prefetch, PrefetchMixin
from embtable.storage._disk_spec import Disk, init_rows

__all__ = [
    "Disk",
    "DiskRowStore",
    "StateField",
    "TableNotCleanError",
    "CorruptTableError",
    "init_rows",
    "restore",
]

#: Default hard bound of the write-back log between flushes (``DiskRowStore.max_log_bytes``).
_MAX_LOG_BYTES = 8 << 30
#: Default ``DiskRowStore.compact_ratio``: a flush moves the log home once the log's bytes
#: reach this multiple of the bytes that moving it would write (whole pages).
_COMPACT_RATIO = 2.0
#: Records moved from the log to their home places per batch.
_COMPACT_ROWS = 1 << 16


# ---------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------


class DiskRowStore(PrefetchMixin):
    """The files of one disk-backed table: batched row and optimizer-state I/O.

    Build with :meth:`create` or :meth:`open` (or :meth:`open_or_create`).  Ids passed to
    the read and write methods are distinct row numbers (any order; they are sorted
    here); rows are ``[n, embedding_dim]`` tensors of the table's dtype.

    Counters (``rows_read``, ``rows_written``, ``bytes_read``, ``bytes_written``,
    ``rows_initialized``, ``compactions``) accumulate since the store was opened;
    ``compact_ratio`` and ``max_log_bytes`` set when the write-back log is moved home.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], read_only: bool, io_threads: int) -> None:
        self.path = path
        self.manifest = manifest
        self.read_only = read_only
        self.num_embeddings: int = manifest["num_embeddings"]
        self.embedding_dim: int = manifest["embedding_dim"]
        self.dtype: torch.dtype = _DTYPES[manifest["dtype"]]
        self.row_bytes = self.embedding_dim * torch.empty((), dtype=self.dtype).element_size()
        self._io_threads = io_threads
        self._batch = BatchIO(path, io_threads)
        self._io = self._batch.io
        self._fds: dict[str, int] = {}
        self._bits: dict[str, Bits] = {}
        self.state_fields: list[StateField] = []
        self.state_row_bytes = 0
        self._fresh_state = b""
        self.rows_read = self.rows_written = self.rows_initialized = 0
        self.rows_prefetched = self.prefetch_used = 0
        self._prefetch: Prefetch | None = None
        self.bytes_read = self.bytes_written = 0
        #: a flush moves the log to the rows' home places once the log's bytes reach this
        #: multiple of the page bytes the move writes (amortised writes per logged record
        #: at most ``(1 + 1 / compact_ratio)`` records)
        self.compact_ratio = _COMPACT_RATIO
        #: hard bound of the log: past it, a write moves the log home at once (the table
        #: is then ``"writing"`` until the next flush)
        self.max_log_bytes = _MAX_LOG_BYTES
        self.compactions = 0
        self._log: RowLog | None = None
        self._lock_fd: int | None = None
        if not read_only:
            self._lock_fd = lock_writer(path)
            self._unlock = weakref.finalize(self, os.close, self._lock_fd)  # also when dropped
        try:
            self._open_data(ROWS, ROW_BITS, self.row_bytes)
            if manifest.get("state"):
                self._load_state_layout(manifest["state"])
            self._open_log()
        except BaseException:
            self.close()  # the files opened so far, and the writer's lock
            raise

    def _open_log(self) -> None:
        """Load the log segment the manifest names; when writable, delete other segments'
        files (a killed compaction's or a never-flushed segment's leftovers)."""
        entry = self.manifest.get("log")
        if entry is not None:
            try:
                self._log = RowLog(
                    self.path, entry["segment"], self.row_bytes + self.state_row_bytes, self._batch,
                    records=entry["records"], writable=not self.read_only, background=self._io_threads > 1,
                )
            except CorruptLogError as error:
                raise CorruptTableError(str(error)) from None
        if not self.read_only:  # only once the named segment has opened
            keep = None if entry is None else f"log.{entry['segment']:06d}."
            for file in log_files(self.path):
                if keep is None or not file.name.startswith(keep):
                    file.unlink()

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        num_embeddings: int,
        embedding_dim: int,
        dtype: torch.dtype = torch.float32,
        init: str = "normal",
        init_std: float = 1.0,
        init_bound: float = 1.0,
        padding_idx: int | None = None,
        seed: int = 0,
        io_threads: int = 4,
    ) -> DiskRowStore:
        """Create an empty table (sparse files, nothing written) at the directory ``path``.

        Raises:
            FileExistsError: ``path`` exists and is not an empty directory.
            FileNotFoundError: the parent directory does not exist.
            OSError: the files cannot be created (permissions, file-size limit, full disk).
            ValueError: a size < 1, an unknown ``init``, ``padding_idx`` outside the table.
        """
        api = "DiskRowStore.create"
        target = Path(path)
        manifest = new_manifest(
            target, api, num_embeddings=num_embeddings, embedding_dim=embedding_dim, dtype=dtype, init=init,
            init_std=init_std, init_bound=init_bound, padding_idx=padding_idx, seed=seed,
        )
        row_bytes = embedding_dim * torch.empty((), dtype=dtype).element_size()
        try:
            target.mkdir(exist_ok=True)
            cls._make_sparse(target / ROWS, num_embeddings * row_bytes)
            cls._make_sparse(target / ROW_BITS, (num_embeddings + 7) // 8)
            atomic_write_bytes(target / MANIFEST, json.dumps(manifest, indent=1).encode())
        except OSError as error:
            raise type(error)(
                error.errno,
                f"{api}: cannot create the table files in {str(target)!r} "
                f"({num_embeddings * row_bytes} bytes of rows, sparse): {error.strerror}",
            ) from None
        return cls(target, manifest, read_only=False, io_threads=io_threads)

    @staticmethod
    def _make_sparse(path: Path, size: int) -> None:
        with open(path, "wb") as handle:
            handle.truncate(size)
            handle.flush()
            os.fsync(handle.fileno())

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, read_only: bool = False, io_threads: int = 4
    ) -> DiskRowStore:
        """Open the table at ``path``.

        Raises:
            FileNotFoundError: no table at ``path``.
            CorruptTableError: the manifest is unreadable, of another format or version, or
                does not match the data files' sizes (truncation).
            TableNotCleanError: the table was being written when its process stopped.
            PermissionError: ``read_only=False`` on files that cannot be written.
        """
        api = "DiskRowStore.open"
        target = Path(path)
        manifest = manifest_for_open(target, read_only, api)
        return cls(target, manifest, read_only=read_only, io_threads=io_threads)

    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike[str],
        *,
        num_embeddings: int,
        embedding_dim: int,
        dtype: torch.dtype = torch.float32,
        read_only: bool = False,
        io_threads: int = 4,
        **create_options: Any,
    ) -> DiskRowStore:
        """:meth:`open` the table at ``path`` if there is one (checking its shape and dtype),
        else :meth:`create` it (``read_only`` then raises ``FileNotFoundError``)."""
        api = "DiskRowStore.open_or_create"
        target = Path(path)
        if (target / MANIFEST).exists() or read_only:
            store = cls.open(target, read_only=read_only, io_threads=io_threads)
            found = (store.num_embeddings, store.embedding_dim, store.dtype)
            if found != (num_embeddings, embedding_dim, dtype):
                store.close()
                raise ValueError(
                    f"{api}: the table at {str(target)!r} holds {found[0]} rows of {found[1]} "
                    f"{_DTYPE_NAMES[found[2]]} values, but {num_embeddings} rows of {embedding_dim} "
                    f"{_DTYPE_NAMES.get(dtype, dtype)} values were asked for"
                )
            return store
        return cls.create(
            target, num_embeddings=num_embeddings, embedding_dim=embedding_dim, dtype=dtype,
            io_threads=io_threads, **create_options,
        )

    def _open_data(self, name: str, bits_name: str, record_bytes: int) -> None:
        path = self.path / name
        expected = self.num_embeddings * record_bytes
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise CorruptTableError(f"DiskRowStore: {str(path)!r} is missing") from None
        if size != expected:
            raise CorruptTableError(
                f"DiskRowStore: {str(path)!r} has {size} bytes, expected {expected} "
                f"({self.num_embeddings} records of {record_bytes} bytes); the file is truncated "
                "or not this table's"
            )
        fd = os.open(path, os.O_RDONLY if self.read_only else os.O_RDWR)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        self._fds[name] = fd
        try:
            self._bits[bits_name] = Bits(self.path / bits_name, self.num_embeddings, not self.read_only)
        except CorruptFileError as error:
            raise CorruptTableError(str(error)) from None

    # -- properties ----------------------------------------------------------------------------

    @property
    def status(self) -> str:
        """``"clean"`` (on-disk state complete) or ``"writing"`` (writes since the last flush)."""
        return self.manifest["status"]

    @property
    def table_step(self) -> int:
        """The optimizer's table step saved at the last flush."""
        return self.manifest["table_step"]

    @property
    def state_rule(self) -> str | None:
        """The optimizer rule whose state the state file holds, or ``None``."""
        state = self.manifest.get("state")
        return state["rule"] if state else None

    def init_rows(self, ids: Tensor) -> Tensor:
        """The initial values of rows ``ids`` (the padding row is zeros)."""
        m = self.manifest
        rows = init_rows(
            m["seed"], ids, self.embedding_dim, init=m["init"], init_std=m.get("init_std", 1.0),
            init_bound=m.get("init_bound", 1.0), dtype=self.dtype,
        )
        pad = m.get("padding_idx")
        if pad is not None:
            rows[ids == pad] = 0
        return rows

    # -- optimizer state layout --------------------------------------------------------------

    def bind_state(self, rule: str, fields: Sequence[StateField], fresh: bytes) -> None:
        """Declare the optimizer state stored per row (creating ``state.bin`` on first use).

        ``fresh`` is the record (``state_row_bytes`` bytes, the fields' bytes in order) of a
        row whose state was never written.  An existing layout must match.

        Raises:
            ValueError: the table already holds state of another rule or layout.
            OSError: read-only table without state, or the file cannot be created.
        """
        api = "DiskRowStore.bind_state"
        layout = {
            "rule": rule,
            "fields": [field.to_json() for field in fields],
            "fresh": fresh.hex(),
        }
        current = self.manifest.get("state")
        if current:
            if current["rule"] != rule or current["fields"] != layout["fields"]:
                raise ValueError(
                    f"{api}: the table at {str(self.path)!r} holds {current['rule']!r} state "
                    f"{current['fields']}, but the optimizer now needs {rule!r} state "
                    f"{layout['fields']}; use the same optimizer and state_dtype, or export the "
                    "rows to a new table"
                )
            return
        if self.read_only:
            raise OSError(errno.EROFS, f"{api}: the table at {str(self.path)!r} is open read-only")
        record = sum(field.row_bytes for field in fields)
        if len(fresh) != record:
            raise ValueError(f"{api}: fresh holds {len(fresh)} bytes, the layout needs {record}")
        self._drop_prefetch()  # its records have the old layout
        if record:
            self._begin_write()
            self._compact_now()  # logged records have the old layout
            self._make_sparse(self.path / STATE, self.num_embeddings * record)
            self._make_sparse(self.path / STATE_BITS, (self.num_embeddings + 7) // 8)
        self.manifest["state"] = layout
        self._load_state_layout(layout)

    def _load_state_layout(self, layout: dict[str, Any]) -> None:
        self.state_fields = state_fields(layout)
        self.state_row_bytes = sum(field.row_bytes for field in self.state_fields)
        self._fresh_state = bytes.fromhex(layout["fresh"])
        if self.state_row_bytes and STATE not in self._fds:
            self._open_data(STATE, STATE_BITS, self.state_row_bytes)

    # -- batched I/O ---------------------------------------------------------------------------

    def _check_ids(self, ids: Tensor, api: str) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(ids, Tensor) or ids.dim() != 1 or ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{api}: ids must be a 1-D int64 tensor of distinct rows")
        flat = ids.to(torch.int64).numpy()
        order = np.argsort(flat, kind="stable")
        sorted_ids = flat[order]
        if sorted_ids.size:
            if sorted_ids[0] < 0 or sorted_ids[-1] >= self.num_embeddings:
                raise IndexError(
                    f"{api}: ids must lie in 0..{self.num_embeddings - 1}, got "
                    f"{int(sorted_ids[0])}..{int(sorted_ids[-1])}"
                )
            if (np.diff(sorted_ids) == 0).any():
                raise ValueError(f"{api}: ids must be distinct")
        return sorted_ids, order

    def read(self, ids: Tensor, *, with_state: bool = True, with_rows: bool = True) -> tuple[Tensor, list[Tensor]]:
        """Rows ``ids`` (``[n, embedding_dim]``, the table's dtype) and, ``with_state``, their
        optimizer state (one ``[n, *row_shape]`` tensor per field), in the order of ``ids``.
        ``with_rows=False`` reads the state only (the rows file is not read; the first item
        is then ``[0, embedding_dim]``).

        A row's latest record comes from the write-back log if it has one there, else from
        its home place; rows never written are the initializer's values and fresh state.
        Each file is read in one sorted pass (one ``preadv`` per run of consecutive records).
        Rows of a pending :meth:`prefetch` not written since are taken from it (the
        prefetch is then used up).
        """
        sorted_ids, order = self._check_ids(ids, "DiskRowStore.read")
        n = len(sorted_ids)
        with_state = with_state and self.state_row_bytes > 0
        rows = np.empty((n, self.row_bytes), dtype=np.uint8)
        state = np.empty((n, self.state_row_bytes if with_state else 0), dtype=np.uint8)
        covered = self._use_prefetch(sorted_ids, rows, state, with_state)
        if covered is None:
            self._read_into(sorted_ids, rows, state, with_state, with_rows)
        elif not covered.all():  # the rest: read into parts, then put in place
            todo = np.flatnonzero(~covered)
            part_rows, part_state = rows[todo], state[todo]
            self._read_into(sorted_ids[todo], part_rows, part_state, with_state, with_rows)
            rows[todo], state[todo] = part_rows, part_state
        out_rows = torch.empty((n if with_rows else 0, self.embedding_dim), dtype=self.dtype)
        if with_rows:
            out_rows[torch.from_numpy(order)] = torch.from_numpy(rows).view(self.dtype).view(n, self.embedding_dim)
        if not with_state:
            return out_rows, []
        unsorted = np.empty_like(state)
        unsorted[order] = state
        return out_rows, self._split_state(unsorted)

    def _read_into(
        self, sorted_ids: np.ndarray, rows: np.ndarray, state: np.ndarray, with_state: bool, with_rows: bool
    ) -> None:
        """Read the records of ``sorted_ids`` into ``rows`` / ``state`` now (:meth:`_plan_read`)."""
        tasks, finish = self._plan_read(sorted_ids, rows, state, with_state, with_rows)
        self._batch.run(tasks)
        for step in finish:
            step()

    def _plan_read(
        self, sorted_ids: np.ndarray, rows: np.ndarray, state: np.ndarray, with_state: bool, with_rows: bool,
        wait: bool = True,
    ) -> tuple[list[Callable[[], None]], list[Callable[[], None]]]:
        """``(tasks, finish)``: once the I/O ``tasks`` have run (on any thread) and then the
        ``finish`` steps (on the caller's), ``rows`` / ``state`` (``[n, bytes]`` uint8) hold
        the records of ``sorted_ids``: every file read in one pass over the pool (``wait``:
        log appends still being written are waited for now, else by the tasks)."""
        n, row_bytes = len(sorted_ids), self.row_bytes
        in_log, positions = self._log.find(sorted_ids) if self._log is not None else (np.zeros(n, dtype=bool), None)
        tasks: list[Callable[[], None]] = []
        finish: list[Callable[[], None]] = []
        if in_log.any():
            log_tasks, logged = self._log.read_tasks(positions, wait=wait)
            tasks += log_tasks

            def from_log() -> None:
                records = logged()
                rows[in_log] = records[:, :row_bytes]
                if with_state:
                    state[in_log] = records[:, row_bytes:]
                self.rows_read += len(records)
                self.bytes_read += records.nbytes

            finish.append(from_log)
        home = ~in_log
        if home.any():
            home_ids = sorted_ids[home]
            files = [(ROWS, ROW_BITS, row_bytes, None, rows)] if with_rows else []
            if with_state:
                files.append((STATE, STATE_BITS, self.state_row_bytes, self._fresh_state, state))
            for name, bits_name, record, fresh, target in files:
                out, more, done = self._home_tasks(home_ids, name, bits_name, record, fresh)
                tasks += more
                finish.append(functools.partial(self._put, target, home, out, done))
        return tasks, finish

    @staticmethod
    def _put(target: np.ndarray, where: np.ndarray, out: np.ndarray, done: Callable[[], None]) -> None:
        done()
        target[where] = out

    def _home_tasks(
        self, ids: np.ndarray, name: str, bits_name: str, record: int, fresh: bytes | None
    ) -> tuple[np.ndarray, list[Callable[[], None]], Callable[[], None]]:
        """``(out, tasks, done)``: the home records of sorted ``ids`` go to ``out`` once the
        I/O ``tasks`` have run and ``done`` was called; rows never written are fresh
        (``fresh`` bytes, or for rows the initializer)."""
        out = np.empty((len(ids), record), dtype=np.uint8)
        written = self._bits[bits_name].test(ids)
        if (~written).any():
            if fresh is None:
                values = self.init_rows(torch.from_numpy(ids[~written]))
                out[~written] = values.contiguous().view(torch.uint8).numpy().reshape(-1, record)
                self.rows_initialized += int((~written).sum())
            else:
                out[~written] = np.frombuffer(fresh, dtype=np.uint8)
        if not written.any():
            return out, [], lambda: None
        buffer = np.empty((int(written.sum()), record), dtype=np.uint8)

        def done() -> None:
            out[written] = buffer
            self.bytes_read += buffer.nbytes
            if name == ROWS:
                self.rows_read += len(buffer)

        return out, self._batch.tasks(self._fds[name], False, ids[written], buffer, record), done

    def read_rows(self, ids: Tensor) -> Tensor:
        """Rows ``ids`` only (see :meth:`read`)."""
        return self.read(ids, with_state=False)[0]

    def read_state(self, ids: Tensor) -> list[Tensor]:
        """The optimizer state of rows ``ids`` only (see :meth:`read`)."""
        if not self.state_row_bytes:
            return []
        return self.read(ids, with_rows=False)[1]

    def _split_state(self, records: np.ndarray) -> list[Tensor]:
        fields, column = [], 0
        for field in self.state_fields:
            part = np.ascontiguousarray(records[:, column : column + field.row_bytes])
            column += field.row_bytes
            fields.append(torch.from_numpy(part).view(field.dtype).reshape(len(records), *field.row_shape))
        return fields

    def write_rows(self, ids: Tensor, rows: Tensor, state: Sequence[Tensor] | None = None) -> None:
        """Write rows ``ids`` and their optimizer state (one tensor per field).

        With the state (or when the table stores none) the records are appended to the
        write-back log in one sequential write (durable at the next :meth:`flush`; until
        then a reopened table ignores them).  Rows without their state go straight to their
        home places: the table is ``"writing"`` until the next flush.

        Raises:
            OSError: read-only table; the disk is full or a file-size limit is reached (a
                failed log append leaves the table as at its last flush; a failed home
                write leaves it ``"writing"``: it refuses to open until restored).
            ValueError / TypeError: shapes or dtypes that do not match the table.
        """
        api = "DiskRowStore.write_rows"
        if self.read_only:
            raise OSError(errno.EROFS, f"{api}: the table at {str(self.path)!r} is open read-only")
        sorted_ids, order = self._check_ids(ids, api)
        if tuple(rows.shape) != (len(sorted_ids), self.embedding_dim) or rows.dtype != self.dtype:
            raise ValueError(
                f"{api}: rows must be a [{len(sorted_ids)}, {self.embedding_dim}] {self.dtype} tensor, "
                f"got {tuple(rows.shape)} {rows.dtype}"
            )
        states = None
        if state is not None and self.state_row_bytes:
            if len(state) != len(self.state_fields):
                raise ValueError(f"{api}: state has {len(state)} tensors, the table stores {len(self.state_fields)}")
            for field, tensor in zip(self.state_fields, state):
                if tuple(tensor.shape) != (len(sorted_ids), *field.row_shape) or tensor.dtype != field.dtype:
                    raise ValueError(
                        f"{api}: state field {field.name!r} must be a {[len(sorted_ids), *field.row_shape]} "
                        f"{field.dtype} tensor, got {list(tensor.shape)} {tensor.dtype}"
                    )
            parts = [t.detach().contiguous().view(torch.uint8).reshape(len(sorted_ids), -1) for t in state]
            states = torch.cat(parts, dim=1).numpy()[order]
        if not len(sorted_ids):
            return
        if self._prefetch is not None:  # its records of these rows are now old
            self._prefetch.invalidate(sorted_ids)
        buffer = rows.detach().contiguous().view(torch.uint8).numpy()[order]
        logged = states is not None or not self.state_row_bytes
        overflow = self._log is not None and self._log.nbytes > self.max_log_bytes
        if not logged or overflow:
            try:
                self._begin_write()
            except OSError as error:
                raise type(error)(
                    error.errno,
                    f"{api}: could not mark the table at {str(self.path)!r} as being written "
                    f"({error.strerror}); nothing was written, the table is as at its last flush",
                ) from None
        try:
            if logged:
                if overflow:
                    self._compact_now()
                records = buffer if states is None else np.concatenate([buffer, states], axis=1)
                self._log_append(sorted_ids, records)
            else:
                self._compact_now()  # older records of these rows may sit in the log
                self._write_home(sorted_ids, buffer, None)
        except OSError as error:
            left = (
                "the table is left in status 'writing' and will refuse to open: free space (or "
                "raise the file-size limit) and restore the last checkpoint"
                if self.status == "writing"
                else "the table's files are as at its last flush (the log's partial tail is ignored)"
            )
            raise type(error)(
                error.errno,
                f"{api}: writing {len(sorted_ids)} rows to {str(self.path)!r} failed: {error.strerror}; {left}",
            ) from None
        self.rows_written += len(sorted_ids)

    def _log_append(self, sorted_ids: np.ndarray, records: np.ndarray) -> None:
        if self._log is None:
            self.manifest["log_serial"] = self.manifest.get("log_serial", 0) + 1
            self._log = RowLog(
                self.path, self.manifest["log_serial"], self.row_bytes + self.state_row_bytes, self._batch,
                background=self._io_threads > 1,
            )
        self._log.append(sorted_ids, records)
        self.bytes_written += records.nbytes + 8 * len(sorted_ids)

    def _write_home(self, sorted_ids: np.ndarray, rows: np.ndarray, states: np.ndarray | None) -> None:
        self._io(self._fds[ROWS], True, sorted_ids, np.ascontiguousarray(rows), self.row_bytes)
        self._bits[ROW_BITS].set(sorted_ids)
        self.bytes_written += rows.nbytes
        if states is not None:
            self._io(self._fds[STATE], True, sorted_ids, np.ascontiguousarray(states), self.state_row_bytes)
            self._bits[STATE_BITS].set(sorted_ids)
            self.bytes_written += states.nbytes

    def _move_log_home(self) -> None:
        """Write every logged row's newest record to its home place (sorted by row, each page
        once) and fsync the home files; the log itself is left for the caller to drop."""
        if self._log is None:
            return
        self.wait_prefetch()  # its reads of the log are done before the log goes
        for ids, records in self._log.newest(_COMPACT_ROWS):
            states = records[:, self.row_bytes :] if self.state_row_bytes else None
            self._write_home(ids, records[:, : self.row_bytes], states)
        self._sync_home()
        self.compactions += 1

    def _drop_log(self) -> None:
        if self._log is not None:
            self._log.close(remove=True)
            self._log = None

    def _compact_now(self) -> None:
        """Move the log home between flushes (the table must be ``"writing"`` already)."""
        if self._log is not None:
            self._move_log_home()
            self.manifest["log"] = None
            self._drop_log()

    def _sync_home(self) -> None:
        for bits in self._bits.values():
            bits.sync()
        for fd in self._fds.values():
            os.fsync(fd)

    def compaction_bytes(self) -> int:
        """Bytes (whole 4 KiB pages of the rows, state and bitmap files) that moving the
        write-back log to its rows' home places would write now."""
        if self._log is None or not self._log.count:
            return 0
        ids = self._log.ids
        return 4096 * (
            pages_touched(ids, self.row_bytes) + pages_touched(ids, self.state_row_bytes)
            + pages_touched(ids >> 3, 1) * (2 if self.state_row_bytes else 1)
        )

    def _should_compact(self) -> bool:
        log = self._log
        if log is None or not log.count:
            return False
        return log.nbytes > self.max_log_bytes or log.nbytes >= self.compact_ratio * self.compaction_bytes()

    # -- durability ----------------------------------------------------------------------------

    def _write_manifest(self) -> None:
        self.manifest["version"] = VERSION
        atomic_write_bytes(self.path / MANIFEST, json.dumps(self.manifest, indent=1).encode())

    def _begin_write(self) -> None:
        if self.manifest["status"] != "writing":
            self.manifest["status"] = "writing"
            self._write_manifest()

    def flush(self, *, table_step: int | None = None, compact: bool | None = None) -> None:
        """Make the on-disk table complete: fsync the write-back log (and any home writes),
        then write a ``"clean"`` manifest naming the log and its length (and ``table_step``,
        the optimizer's step count, when given).

        Then, if ``compact`` (``None``: when the log's bytes reach ``compact_ratio`` times
        the page bytes the move writes, or ``max_log_bytes``), move the log's newest records
        to their home places in row order, fsync them and write a manifest without the log
        (a kill during the move leaves the first manifest, whose log shadows those rows).

        Raises:
            OSError: the disk is full or a file cannot be written (the table is then as at
                its previous flush, or refuses to open if it was ``"writing"``).
        """
        if self.read_only:
            return
        api = "DiskRowStore.flush"
        try:
            if self._log is not None:
                self.manifest["log"] = self._log.sync()
            if self.status == "writing":
                self._sync_home()
        except OSError as error:
            raise type(error)(
                error.errno, f"{api}: syncing the files of {str(self.path)!r} failed: {error.strerror}; "
                "the table is as at its last flush (or refuses to open if it was 'writing')",
            ) from None
        if table_step is not None:
            self.manifest["table_step"] = int(table_step)
        self.manifest["status"] = "clean"
        self.manifest["generation"] += 1
        self._write_manifest()
        if not (self._should_compact() if compact is None else compact and self._log is not None):
            return
        try:
            self._move_log_home()
        except OSError as error:
            raise type(error)(
                error.errno, f"{api}: moving the write-back log of {str(self.path)!r} to its rows "
                f"failed: {error.strerror}; the table stays at this flush (its log still holds the rows)",
            ) from None
        self.manifest["log"] = None
        self.manifest["generation"] += 1
        self._write_manifest()
        self._drop_log()

    def checkpoint(self, path: str | os.PathLike[str], *, table_step: int | None = None) -> Path:
        """Flush, then copy the table (holes kept) to the directory ``path``.

        The copy is built in a temporary directory beside ``path``, its manifest written
        last, and renamed into place (an existing checkpoint at ``path`` is replaced only
        once the new one is complete, by one atomic exchange where the system has
        ``renameat2``, else by two renames).  Returns the checkpoint's path.
        """
        api = "DiskRowStore.checkpoint"
        target = Path(path).absolute()
        if target == self.path.absolute():
            raise ValueError(f"{api}: path must differ from the table's own directory {str(self.path)!r}")
        if not target.parent.is_dir():
            raise FileNotFoundError(f"{api}: the parent directory of {str(target)!r} does not exist")
        self.flush(table_step=table_step)
        copy_table(self.path, target, self.manifest, self.row_bytes + self.state_row_bytes, api)
        if not self.read_only:
            self.manifest["last_checkpoint"] = str(target)
            self._write_manifest()
        return target

    def close(self) -> None:
        """Close the files (without flushing: call :meth:`flush` first to keep the writes)."""
        if self._lock_fd is not None:
            self._unlock()  # closes the lock file: releases the writer's lock
            self._lock_fd = None
        if getattr(self, "_prefetch", None) is not None:
            self._drop_prefetch()
        self._batch.close()
        if self._log is not None:
            self._log.close()  # part of the table (records past its manifest length are cut on open)
            self._log = None
        for fd in self._fds.values():
            os.close(fd)
        for bits in self._bits.values():
            bits.close()
        self._fds.clear()
        self._bits.clear()

    def disk_usage(self) -> int:
        """Bytes the table's files occupy on disk (allocated blocks; holes are free)."""
        files = [self.path / n for n in _DATA_FILES if (self.path / n).exists()] + log_files(self.path)
        return sum(file.stat().st_blocks * 512 for file in files)

    def __repr__(self) -> str:
        mode = ", read_only=True" if self.read_only else ""
        return (
            f"DiskRowStore({str(self.path)!r}, {self.num_embeddings} x {self.embedding_dim} "
            f"{_DTYPE_NAMES[self.dtype]}, status={self.status!r}{mode})"
        )


def restore(checkpoint: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Replace the table at ``path`` (clean, ``"writing"`` or absent) by a copy of
    ``checkpoint``; the copy appears by one rename once complete.

    Raises:
        FileNotFoundError / CorruptTableError / TableNotCleanError: ``checkpoint`` is not a
            complete table.
    """
    source = Path(checkpoint)
    store = DiskRowStore.open(source, read_only=True)
    manifest, record = store.manifest, store.row_bytes + store.state_row_bytes
    store.close()
    copy_table(source, Path(path).absolute(), manifest, record, "restore", last_checkpoint=str(source.absolute()))
