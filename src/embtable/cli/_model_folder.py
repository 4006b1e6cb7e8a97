"""The folder ``embtable train`` writes, saved atomically as a whole and checked when read.

Layout of ``--out``::

    config.json          the manifest (written last): model class and arguments, the run's
                         summary, "weights" (models.checkpoint) and "files": every other
                         part's name, size and SHA-256
    model.safetensors    the weights
    summary.json         the run's summary (also inside config.json)
    items/               the item table (embtable vectors: vocab.json + rows) and genres.json

A save writes ``summary.json`` and ``items/`` under names the current manifest does not use
(``summary-next.json``, ``items-next/``), then the checkpoint, whose ``config.json`` naming
them with their digests is the switch from the old run to the new one; then it renames them
to their places and writes ``config.json`` once more under those names.  Each step is one
atomic rename (or the removal of a part the manifest no longer names), so a kill at any
moment leaves a folder that reads as the old run or the new one, complete.  A save first
finishes the renames of a save killed after its switch and removes the staged parts of one
killed before it.

:func:`open_model_folder` reads the manifest, finds each part where it names it (or at its
place, once renamed) and checks its size and digest: a part of another run, edited or cut
short raises ``ValueError`` naming the file.  A folder whose ``config.json`` has no
``"files"`` (saves before this scheme) is read unchecked.

Example:
    >>> import tempfile, torch
    >>> from embtable.cli._model_folder import open_model_folder, save_model_folder
    >>> from embtable.models import MatrixFactorization
    >>> from embtable.vectors import Vectors
    >>> out = tempfile.mkdtemp()
    >>> save_model_folder(out, MatrixFactorization(3, 2, 4), {"run": 1},
    ...                   Vectors(["a", "b"], torch.zeros(2, 4)), {"genre_names": []})
    >>> folder = open_model_folder(out)
    >>> folder.summary.name, folder.items.name, folder.checked
    ('summary.json', 'items', True)
    >>> _ = (folder.items / "genres.json").write_text('{"genre_names": ["edited"]}')
    >>> open_model_folder(out)
    Traceback (most recent call last):
    ...
    ValueError: embtable train folder .../items/genres.json is not the file .../config.json names: ...
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ModelFolder", "open_model_folder", "save_model_folder"]

CONFIG = "config.json"
SUMMARY = "summary.json"
ITEMS = "items"
#: Where a save writes each part before its manifest names it.
STAGED = {SUMMARY: "summary-next.json", ITEMS: "items-next"}
_API = "embtable train folder"


@dataclass(frozen=True, kw_only=True)
class ModelFolder:
    """Where the parts of a trained-model folder are (see :func:`open_model_folder`).

    Attributes:
        path: the folder.
        summary: the run's ``summary.json`` (``summary-next.json`` while a save is renaming).
        items: the item table's folder (``items-next`` while a save is renaming).
        checked: whether every part was checked against the manifest's digests (``False``
            for folders saved before the manifest named them).
    """

    path: Path
    summary: Path
    items: Path
    checked: bool


def save_model_folder(
    out: str | os.PathLike[str],
    model: Any,
    summary: dict[str, Any],
    vectors: Any,
    genres: dict[str, Any],
) -> None:
    """Write a trained model's folder atomically as a whole (see the module docstring).

    Args:
        out: the folder (created if needed); a previous run's folder is replaced.
        model: the :class:`~embtable.models.MatrixFactorization` to checkpoint.
        summary: the run's summary: ``summary.json``, and the metadata of ``config.json``.
        vectors: the item table (:class:`~embtable.vectors.Vectors`) for ``items/``.
        genres: JSON data for ``items/genres.json``.

    Raises:
        TypeError: ``summary`` or ``genres`` is not JSON-serializable (nothing is replaced).
    """
    from embtable._atomic import atomic_write_bytes, fsync_dir
    from embtable.models.checkpoint import save_checkpoint

    summary_bytes, genres_bytes = _json_bytes(summary), _json_bytes(genres)  # (checked first)
    path = Path(out).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    _settle(path)  # the previous save's parts at their places; staged leftovers removed
    staged_items = path / STAGED[ITEMS]
    vectors.save(staged_items)
    atomic_write_bytes(staged_items / "genres.json", genres_bytes)
    atomic_write_bytes(path / STAGED[SUMMARY], summary_bytes)
    fsync_dir(path)
    files = {SUMMARY: _entry(path, STAGED[SUMMARY])}
    for part in sorted(p.name for p in staged_items.iterdir() if p.is_file()):
        files[f"{ITEMS}/{part}"] = _entry(path, f"{STAGED[ITEMS]}/{part}")
    save_checkpoint(path, model, {**summary, "files": files})  # its config.json: the switch
    _settle(path)


def open_model_folder(out: str | os.PathLike[str]) -> ModelFolder:
    """Find and check the parts of a folder written by :func:`save_model_folder`.

    Returns:
        Where ``summary.json`` and ``items/`` are; every part the manifest names has been
        read and matched against its size and SHA-256.

    Raises:
        ValueError: ``config.json`` is corrupt, a part it names is missing, or a part's size
            or digest differs from the one it records (a part of another run, edited, or
            cut short).
    """
    path = Path(out).expanduser()
    plain = ModelFolder(path=path, summary=path / SUMMARY, items=path / ITEMS, checked=False)
    if not (path / CONFIG).is_file():
        return plain
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise ValueError(f"{_API} {path / CONFIG} is unreadable or corrupt ({err!r:.200})") from None
    files = config.get("files") if isinstance(config, dict) else None
    if files is None:
        return plain
    _check_files_entry(files, path)
    where = {part: _located(path, part, files) for part in (SUMMARY, ITEMS)}
    for key, entry in files.items():
        file = where[key.split("/")[0]] / key.split("/", 1)[1] if "/" in key else where[key]
        try:
            blob = file.read_bytes()
        except OSError as err:
            raise ValueError(
                f"{_API} {path} is incomplete: {CONFIG} names {entry['file']}, which is "
                f"unreadable ({err.strerror}); train again into a fresh --out"
            ) from None
        digest = hashlib.sha256(blob).hexdigest()
        if len(blob) != entry["bytes"] or digest != entry["sha256"]:
            raise ValueError(
                f"{_API} {file} is not the file {path / CONFIG} names: {len(blob)} bytes, "
                f"sha256 {digest[:16]}..., but the manifest records {entry['bytes']} bytes, "
                f"sha256 {entry['sha256'][:16]}... (a part of another run, edited, or cut "
                "short); train again into a fresh --out"
            )
    return ModelFolder(path=path, summary=where[SUMMARY], items=where[ITEMS], checked=True)


def _located(path: Path, part: str, files: dict[str, Any]) -> Path:
    """Where ``part`` (``summary.json`` or ``items``) is: its staged name while the manifest
    names it and it is there, else its place (renamed since, or never staged)."""
    named_staged = any(
        entry["file"].split("/")[0] == STAGED[part]
        for key, entry in files.items()
        if key.split("/")[0] == part
    )
    staged = path / STAGED[part]
    return staged if named_staged and staged.exists() else path / part


def _check_files_entry(files: Any, path: Path) -> None:
    """``ValueError`` unless ``files`` maps each part to ``{"file", "bytes", "sha256"}``, the
    file being the part's place or its staged name (never a path elsewhere)."""

    def allowed(key: str) -> tuple[str, ...]:
        if key == SUMMARY:
            return SUMMARY, STAGED[SUMMARY]
        top, _, name = key.partition("/")
        if top != ITEMS or not name or "/" in name or name.startswith("."):
            return ()
        return key, f"{STAGED[ITEMS]}/{name}"

    good = isinstance(files, dict) and SUMMARY in files and f"{ITEMS}/vocab.json" in files
    for key, entry in files.items() if good else ():
        if not (
            isinstance(entry, dict)
            and entry.get("file") in allowed(key)
            and type(entry.get("bytes")) is int
            and isinstance(entry.get("sha256"), str)
        ):
            good = False
    if not good:
        raise ValueError(
            f"{_API} {path / CONFIG} is corrupt: its \"files\" entry {files!r:.200} is not "
            f"{{'summary.json' and 'items/<name>': {{'file', 'bytes': int, 'sha256': str}}}}"
        )


def _settle(path: Path) -> None:
    """Finish a save killed after its switch (rename its staged parts to their places, then
    rewrite the manifest naming those), or drop the staged parts of one killed before."""
    from embtable._atomic import atomic_write_bytes, fsync_dir

    for leftover in path.glob(".*.tmp"):  # (temporary files of a killed atomic write)
        leftover.unlink(missing_ok=True)
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
        files = config["files"]
        _check_files_entry(files, path)
    except (OSError, ValueError, RecursionError, TypeError, KeyError):
        config = files = None
    if files is None or all(entry["file"] == key for key, entry in files.items()):
        (path / STAGED[SUMMARY]).unlink(missing_ok=True)  # (not named: a save killed early)
        shutil.rmtree(path / STAGED[ITEMS], ignore_errors=True)
        return
    if (path / STAGED[SUMMARY]).exists():
        os.replace(path / STAGED[SUMMARY], path / SUMMARY)
    if (path / STAGED[ITEMS]).is_dir():
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path / ITEMS)  # (the old run's: the manifest names the staged one)
        os.replace(path / STAGED[ITEMS], path / ITEMS)
    fsync_dir(path)
    config["files"] = {key: {**entry, "file": key} for key, entry in files.items()}
    atomic_write_bytes(path / CONFIG, (json.dumps(config, indent=2) + "\n").encode())


def _entry(path: Path, name: str) -> dict[str, Any]:
    """The manifest's record of ``path / name`` as written: its name, size and SHA-256."""
    blob = (path / name).read_bytes()
    return {"file": name, "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


def _json_bytes(data: Any) -> bytes:
    """``data`` as the indented UTF-8 JSON the CLI writes (``TypeError`` if it cannot be)."""
    try:
        return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    except (TypeError, ValueError) as err:
        raise TypeError(f"save_model_folder: not JSON-serializable ({err})") from None
