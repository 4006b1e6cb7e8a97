"""The manifest of a disk-backed table: format constants, checks, the optimizer-state
layout, the writer's lock and the checkpoint copy.  Private to :mod:`embtable.storage.disk`."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from embtable._atomic import atomic_write_bytes, fsync_dir
from embtable.storage._disk_files import CorruptFileError, copy_sparse
from embtable.storage._disk_log import copy_segment

FORMAT = "embtable-disk"
VERSION = 2  # 2: the write-back log is part of the table (version 1 tables have none)
_READS = (1, 2)
MANIFEST = "manifest.json"
ROWS, ROW_BITS, STATE, STATE_BITS = "rows.bin", "rows.bits", "state.bin", "state.bits"
_DATA_FILES = (ROWS, ROW_BITS, STATE, STATE_BITS)

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int32": torch.int32,
    "int64": torch.int64,
}
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}

class TableNotCleanError(RuntimeError):
    """The table's process stopped between a write and the next flush: rows may mix old and
    new values, so the directory refuses to open.  Restore the last checkpoint."""


class CorruptTableError(CorruptFileError):
    """The manifest is missing, unreadable or inconsistent with the data files."""


def _dtype_name(dtype: torch.dtype, api: str) -> str:
    if dtype not in _DTYPE_NAMES:
        raise TypeError(f"{api}: dtype must be one of {sorted(_DTYPES)}, got {dtype}")
    return _DTYPE_NAMES[dtype]


@dataclass(frozen=True)
class StateField:
    """One optimizer-state tensor of a disk table: its name, dtype and per-row shape."""

    name: str
    dtype: torch.dtype
    row_shape: tuple[int, ...]

    @property
    def row_bytes(self) -> int:
        return math.prod(self.row_shape) * torch.empty((), dtype=self.dtype).element_size()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": _DTYPE_NAMES[self.dtype], "row_shape": list(self.row_shape)}

def state_fields(layout: dict[str, Any]) -> list[StateField]:
    """The fields of a manifest's ``"state"`` layout."""
    return [StateField(f["name"], _DTYPES[f["dtype"]], tuple(f["row_shape"])) for f in layout["fields"]]


def read_manifest(path: Path, api: str) -> dict[str, Any]:
    """The manifest at ``path``, checked (``CorruptTableError`` naming what is wrong)."""
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as error:
        raise CorruptTableError(f"{api}: {str(path)!r} is not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CorruptTableError(f"{api}: {str(path)!r} is not an {FORMAT} manifest")
    if manifest.get("version") not in _READS:
        raise CorruptTableError(
            f"{api}: {str(path)!r} has format version {manifest.get('version')!r}; this "
            f"embtable reads versions {_READS}"
        )
    log = manifest.get("log")
    if log is not None and not (
        isinstance(log, dict) and all(isinstance(log.get(k), int) and log[k] >= 0 for k in ("segment", "records"))
    ):
        raise CorruptTableError(f"{api}: {str(path)!r} names an invalid write-back log {log!r}")
    required = {
        "num_embeddings": int, "embedding_dim": int, "dtype": str, "init": str, "seed": int,
        "status": str, "generation": int, "table_step": int,
    }
    for key, kind in required.items():
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise CorruptTableError(
                f"{api}: {str(path)!r} lacks a valid {key!r} (got {manifest.get(key)!r})"
            )
    if manifest["dtype"] not in _DTYPES or manifest["num_embeddings"] < 1 or manifest["embedding_dim"] < 1:
        raise CorruptTableError(f"{api}: {str(path)!r} describes an invalid table shape or dtype")
    return manifest


def lock_writer(path: Path) -> int:
    """An exclusive ``flock`` on ``path/.lock`` held while the table is open for writing (the
    kernel drops it when the process dies); ``BlockingIOError`` if another writer holds it."""
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BlockingIOError(
            errno.EWOULDBLOCK,
            f"DiskRowStore: the table at {str(path)!r} is already open for writing (by this or "
            "another process); close it first, or open it with read_only=True",
        ) from None
    return fd


_RENAME_EXCHANGE = 2  # renameat2's flag (linux/fs.h)
_AT_FDCWD = -100
_libc: Any = None


def exchange_paths(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)`` via
    ctypes): a process killed at any moment leaves each name holding one complete directory.
    Returns ``False`` (nothing changed) where the C library or the file system lacks it.

    Raises:
        OSError: the call failed for another reason (a missing path, permissions).
    """
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc = False
    call = getattr(_libc, "renameat2", None) if _libc else None
    if call is None:
        return False
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if call(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):  # not here: fall back
        return False
    raise OSError(code, f"renameat2(RENAME_EXCHANGE) of {str(first)!r} and {str(second)!r}: {os.strerror(code)}")


def _replace_directory(temp: Path, target: Path) -> None:
    """Put the complete directory ``temp`` at ``target`` (replacing any directory there):
    one atomic exchange where the system has it, else two renames (a kill between them
    leaves the old copy at the hidden ``.<name>.old-<pid>`` and nothing at ``target``)."""
    if not target.exists():
        os.replace(temp, target)
    elif exchange_paths(temp, target):
        fsync_dir(target.parent)
        shutil.rmtree(temp)  # the old copy, now under the temporary name
    else:
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(temp, target)
        shutil.rmtree(old)


def copy_table(
    source: Path, target: Path, manifest: dict[str, Any], record: int, api: str, last_checkpoint: str | None = None
) -> None:
    """Copy the table at ``source`` (files as ``manifest`` names them, holes kept; ``record``
    bytes per logged record, row and state) to a
    temporary directory beside ``target``, write its manifest (``"clean"``, naming
    ``last_checkpoint``) last and rename it into place (an existing ``target`` is swapped
    out in one atomic exchange where the system has it: :func:`exchange_paths`)."""
    temp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if temp.exists():
        shutil.rmtree(temp)
    temp.mkdir()
    try:
        for name in _DATA_FILES:
            if (source / name).exists():
                copy_sparse(source / name, temp / name)
        log = manifest.get("log")
        if log is not None:
            copy_segment(source, temp, log["segment"], log["records"], record)
        copied = dict(manifest, status="clean", last_checkpoint=last_checkpoint)
        atomic_write_bytes(temp / MANIFEST, json.dumps(copied, indent=1).encode())
        _replace_directory(temp, target)
        fsync_dir(target.parent)
    except OSError as error:
        shutil.rmtree(temp, ignore_errors=True)
        raise type(error)(error.errno, f"{api}: copying the table to {str(target)!r} failed: {error.strerror}") from None


def new_manifest(
    target: Path, api: str, *, num_embeddings: int, embedding_dim: int, dtype: torch.dtype, init: str,
    init_std: float, init_bound: float, padding_idx: int | None, seed: int,
) -> dict[str, Any]:
    """The manifest of a new, empty table at ``target``, after checking the arguments and
    that ``target`` is absent or an empty directory in an existing one."""
    for name, value in (("num_embeddings", num_embeddings), ("embedding_dim", embedding_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{api}: {name} must be a positive int, got {value!r}")
    if init not in ("normal", "uniform"):
        raise ValueError(
            f"{api}: init must be 'normal' or 'uniform' (a disk table initializes each row "
            f"from (seed, row) when first read), got {init!r}"
        )
    if padding_idx is not None and not 0 <= padding_idx < num_embeddings:
        raise ValueError(f"{api}: padding_idx={padding_idx} is outside 0..{num_embeddings - 1}")
    if not target.parent.is_dir():
        raise FileNotFoundError(
            f"{api}: the parent directory of {str(target)!r} does not exist; create it first"
        )
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(
            f"{api}: {str(target)!r} exists and is not an empty directory; open it with "
            "DiskRowStore.open or choose a new path"
        )
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "num_embeddings": num_embeddings,
        "embedding_dim": embedding_dim,
        "dtype": _dtype_name(dtype, api),
        "init": init,
        "init_std": float(init_std),
        "init_bound": float(init_bound),
        "padding_idx": padding_idx,
        "seed": int(seed),
        "state": None,
        "table_step": 0,
        "status": "clean",
        "generation": 0,
        "last_checkpoint": None,
        "log": None,
        "log_serial": 0,
    }
    return manifest


def manifest_for_open(target: Path, read_only: bool, api: str) -> dict[str, Any]:
    """The checked manifest of the table at ``target``, which must be clean (and, unless
    ``read_only``, have writable data files)."""
    manifest_path = target / MANIFEST
    if not target.is_dir():
        raise FileNotFoundError(f"{api}: no table directory at {str(target)!r}")
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{api}: {str(target)!r} has no {MANIFEST}; it is not a disk table (or its "
            "creation was interrupted before the manifest was written)"
        )
    manifest = read_manifest(manifest_path, api)
    if manifest["status"] != "clean":
        last = manifest.get("last_checkpoint")
        hint = f"restore the last checkpoint ({last!r}) with embtable.storage.disk.restore" if last else (
            "no checkpoint was recorded; recreate the table"
        )
        raise TableNotCleanError(
            f"{api}: the table at {str(target)!r} was being written when its process stopped "
            f"(status {manifest['status']!r} after generation {manifest['generation']}), so its "
            f"rows may mix old and new values; {hint}"
        )
    if not read_only:
        for name in _DATA_FILES:
            file = target / name
            if file.exists() and not file.stat().st_mode & 0o222:  # (root passes os.access)
                raise PermissionError(
                    errno.EACCES,
                    f"{api}: {str(file)!r} is read-only; open with read_only=True (Disk(..., "
                    "read_only=True)) to serve lookups from it",
                )
    return manifest
