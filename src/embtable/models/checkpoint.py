"""Checkpoints: a folder with ``model.safetensors`` (the state dict) and ``config.json``.

No pickle: the weights are a safetensors file, the rest is JSON (the model's class and
constructor arguments, plus whatever metadata the caller adds).

The folder is atomic as a whole: ``config.json`` is its manifest, written last, and it names
the weights file and records its size and SHA-256 (``"weights": {"file", "bytes",
"sha256"}``).  A save writes the new weights under the name the current manifest does not use
(``model-next.safetensors``, or ``model.safetensors`` when a previous save stopped with its
manifest naming ``model-next.safetensors``), then the manifest naming them, then renames
``model-next.safetensors`` to ``model.safetensors`` and writes the manifest once more under
that name.  Killed at any moment
(each step is one atomic rename), the folder loads as the old checkpoint or as the new one,
never new weights with an old ``config.json``: the loader reads the file the manifest names
(``model.safetensors`` when the rename has happened since) and checks its digest.  A manifest
without ``"weights"`` (saves before this scheme) means ``model.safetensors``, unchecked.

Example:
    >>> import tempfile, torch
    >>> from embtable.models import MatrixFactorization
    >>> from embtable.models.checkpoint import load_checkpoint, save_checkpoint
    >>> model = MatrixFactorization(5, 7, 3, global_mean=3.5)
    >>> folder = tempfile.mkdtemp()
    >>> save_checkpoint(folder, model, {"note": "demo"})
    >>> again, meta = load_checkpoint(folder)
    >>> torch.equal(again.item_vectors.weight, model.item_vectors.weight), meta["note"]
    (True, 'demo')
    >>> meta["weights"]["file"], sorted(p.name for p in __import__("pathlib").Path(folder).iterdir())
    ('model.safetensors', ['config.json', 'model.safetensors'])
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from embtable.models.recsys import MatrixFactorization

__all__ = ["load_checkpoint", "save_checkpoint"]

_CLASSES = {"MatrixFactorization": MatrixFactorization}
WEIGHTS = "model.safetensors"
#: Where a save writes the new weights first (the name the current manifest does not use).
NEXT = "model-next.safetensors"
CONFIG = "config.json"


def save_checkpoint(
    folder: str | os.PathLike[str], model: MatrixFactorization, meta: dict[str, Any] | None = None
) -> None:
    """Write ``model`` (and JSON-serializable ``meta``) into ``folder`` (created if needed).

    Atomic as a whole (see the module docstring): the weights go under the name the current
    manifest does not use (``model-next.safetensors`` normally), then ``config.json`` (the
    manifest: the weights' name, size and SHA-256) replaces the old one, then the weights are
    renamed to ``model.safetensors`` and the manifest rewritten under that name.  A kill or an error at any step leaves the old checkpoint or the new one.

    ``config.json`` holds ``meta`` plus two entries of its own, which replace keys of the same
    name in ``meta``: ``"model"`` (class and constructor arguments) and ``"weights"``.

    Raises:
        TypeError: ``model`` is not a supported class, or ``meta`` is not JSON-serializable
            (nothing is written then).
    """
    from safetensors.torch import save

    from embtable._atomic import atomic_write, fsync_dir

    name = type(model).__name__
    if name not in _CLASSES:
        raise TypeError(f"save_checkpoint: cannot save a {name}; expected one of {sorted(_CLASSES)}")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    blob = save(state)
    weights = {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    config = {**(meta or {}), "model": {"class": name, "kwargs": model.init_kwargs()}}
    config.pop("weights", None)  # (ours: the manifest's entry)

    def manifest(file: str) -> bytes:
        return (json.dumps({**config, "weights": {"file": file, **weights}}, indent=2) + "\n").encode()

    staged, final = manifest(NEXT), manifest(WEIGHTS)  # (serialized first: a bad meta writes nothing)
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    unused = WEIGHTS if _current_weights(path) == NEXT else NEXT
    with atomic_write(path / unused) as out:  # 1. the new weights, under the unused name
        out.write(blob)
    with atomic_write(path / CONFIG) as out:  # 2. the manifest: the switch to the new save
        out.write(staged if unused == NEXT else final)
    if unused == NEXT:
        os.replace(path / NEXT, path / WEIGHTS)  # 3. the canonical name (the old weights go)
        fsync_dir(path)
        with atomic_write(path / CONFIG) as out:  # 4. the manifest under the canonical name
            out.write(final)
    else:  # (the previous save was interrupted after its manifest: its weights are stale now)
        (path / NEXT).unlink(missing_ok=True)


def _current_weights(path: Path) -> str:
    """The weights file the folder's current manifest uses (``WEIGHTS`` when unreadable).

    A manifest left naming ``model-next.safetensors`` after that file was renamed (a save
    stopped between steps 3 and 4) is first rewritten naming ``model.safetensors``, so that
    the new weights never land under the name the current manifest uses."""
    from embtable._atomic import atomic_write

    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
        entry = config.get("weights")
    except (OSError, ValueError, RecursionError, AttributeError):
        return WEIGHTS
    if not (isinstance(entry, dict) and entry.get("file") == NEXT):
        return WEIGHTS
    if (path / NEXT).is_file():
        return NEXT
    with atomic_write(path / CONFIG) as out:  # (the same save: only the name changes)
        out.write((json.dumps({**config, "weights": {**entry, "file": WEIGHTS}}, indent=2) + "\n").encode())
    return WEIGHTS


def _weights_file(path: Path, config: dict[str, Any]) -> tuple[Path, dict[str, Any] | None]:
    """The weights file ``config`` names (and its ``"weights"`` entry, ``None`` for old saves).

    Raises:
        ValueError: a malformed ``"weights"`` entry, or the file it names is missing.
    """
    entry = config.get("weights")
    if entry is None:  # a save from before the manifest named its weights
        if not (path / WEIGHTS).is_file():
            raise ValueError(
                f"load_checkpoint: the checkpoint folder {path} is incomplete: it has {CONFIG} "
                f"but no {WEIGHTS}"
            )
        return path / WEIGHTS, None
    if (
        not isinstance(entry, dict)
        or entry.get("file") not in (WEIGHTS, NEXT)
        or not isinstance(entry.get("sha256"), str)
        or type(entry.get("bytes")) is not int
    ):
        raise ValueError(
            f"load_checkpoint: {path / CONFIG} is corrupt (its \"weights\" entry {entry!r:.200} "
            f"is not {{'file': {WEIGHTS!r} or {NEXT!r}, 'bytes': int, 'sha256': str}})"
        )
    named = path / entry["file"]
    if named.is_file():
        return named, entry
    if entry["file"] == NEXT and (path / WEIGHTS).is_file():  # renamed since: step 3 was done
        return path / WEIGHTS, entry
    raise ValueError(
        f"load_checkpoint: the checkpoint folder {path} is incomplete: {CONFIG} names the weights "
        f"{entry['file']}, which is missing (deleted, or copied without it?)"
    )


def load_checkpoint(folder: str | os.PathLike[str]) -> tuple[MatrixFactorization, dict[str, Any]]:
    """Rebuild the model saved by :func:`save_checkpoint`; returns ``(model, config)``.

    Raises:
        FileNotFoundError: ``folder`` lacks ``config.json`` (or both files).
        ValueError: either file is corrupt, they do not match, the weights ``config.json``
            names are missing, or their size or SHA-256 differs from the one it records (the
            message names the folder).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(folder)
    if not (path / CONFIG).is_file():
        missing = CONFIG if (path / WEIGHTS).is_file() else WEIGHTS
        raise FileNotFoundError(
            f"load_checkpoint: {path} has no {missing}; is it a folder written by `embtable train`?"
        )
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
        cls = _CLASSES[config["model"]["class"]]
        model = cls(**config["model"]["kwargs"])
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"load_checkpoint: {path / CONFIG} is corrupt ({err!r:.200})") from None
    file, entry = _weights_file(path, config)
    try:
        blob = file.read_bytes()
    except OSError as err:
        raise ValueError(f"load_checkpoint: {file} is unreadable ({err})") from None
    if entry is not None:
        digest = hashlib.sha256(blob).hexdigest()
        if len(blob) != entry["bytes"] or digest != entry["sha256"]:
            raise ValueError(
                f"load_checkpoint: {file} is corrupt or not the weights {CONFIG} names: "
                f"{len(blob)} bytes, sha256 {digest[:16]}..., but the manifest records "
                f"{entry['bytes']} bytes, sha256 {entry['sha256'][:16]}... (the folder {path} "
                "was edited, or copied in part)"
            )
    try:
        state = load(blob)
    except (SafetensorError, ValueError) as err:
        raise ValueError(f"load_checkpoint: {file} is corrupt ({err})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ValueError(
            f"load_checkpoint: {file} does not match {path / CONFIG} ({first})"
        ) from None
    model.eval()
    return model, config
