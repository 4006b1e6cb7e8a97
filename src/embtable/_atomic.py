"""Atomic file writes: a file is written beside its target, synced, then renamed over it.

A reader (or a process killed half way through a save) sees either the old file, intact, or
the new one, complete: never a prefix.  The one implementation every saver uses (vectors,
model checkpoints, quantized tables, disk-table and sharded-checkpoint manifests, plans, the
CLI's JSON files); a multi-file artifact writes its manifest last through it.  Imports nothing
from embtable, so every layer may use it.

Example:
    >>> import os, tempfile
    >>> from embtable._atomic import atomic_write
    >>> folder = tempfile.mkdtemp()
    >>> with atomic_write(os.path.join(folder, "a.txt")) as out:
    ...     _ = out.write(b"complete")
    >>> open(os.path.join(folder, "a.txt"), "rb").read(), os.listdir(folder)
    (b'complete', ['a.txt'])
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_bytes", "fsync_dir"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to write that replaces ``path`` only when the block ends without error.

    The data go to a temporary file in the same folder (``.<name>.<random>.tmp``), which is
    flushed and fsynced, then renamed over ``path`` (``os.replace``: atomic on POSIX), and
    the folder is synced so that the rename survives a power cut.  On an error the temporary
    file is removed and ``path`` is left as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (:func:`atomic_write` in one call)."""
    with atomic_write(path) as out:
        out.write(data)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Sync a folder's entries (renames, new files) to disk; best effort where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
