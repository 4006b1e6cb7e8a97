"""Checkpoints: a folder with ``model.safetensors`` (the state dict) and ``config.json``.

No pickle: the weights are a safetensors file, the rest is JSON (the model's class and
constructor arguments, plus whatever metadata the caller adds).

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
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from embtable.models.recsys import MatrixFactorization

__all__ = ["load_checkpoint", "save_checkpoint"]

_CLASSES = {"MatrixFactorization": MatrixFactorization}
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_checkpoint(
    folder: str | os.PathLike[str], model: MatrixFactorization, meta: dict[str, Any] | None = None
) -> None:
    """Write ``model`` (and JSON-serializable ``meta``) into ``folder`` (created if needed).

    Each file is written atomically (``embtable.vectors._atomic.atomic_write``): a killed save
    never leaves a torn file; the weights are replaced before ``config.json``."""
    from safetensors.torch import save

    from embtable.vectors._atomic import atomic_write

    name = type(model).__name__
    if name not in _CLASSES:
        raise TypeError(f"save_checkpoint: cannot save a {name}; expected one of {sorted(_CLASSES)}")
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    config = {**(meta or {}), "model": {"class": name, "kwargs": model.init_kwargs()}}
    text = json.dumps(config, indent=2) + "\n"  # (serialized first: a bad meta writes nothing)
    with atomic_write(path / WEIGHTS) as out:  # each file whole: written beside, synced, renamed
        out.write(save(state))
    with atomic_write(path / CONFIG) as out:
        out.write(text.encode("utf-8"))


def load_checkpoint(folder: str | os.PathLike[str]) -> tuple[MatrixFactorization, dict[str, Any]]:
    """Rebuild the model saved by :func:`save_checkpoint`; returns ``(model, config)``.

    Raises:
        FileNotFoundError: ``folder`` lacks ``model.safetensors`` or ``config.json``.
        ValueError: either file is corrupt or they do not match.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder)
    for name in (WEIGHTS, CONFIG):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"load_checkpoint: {path} has no {name}; is it a folder written by `embtable train`?"
            )
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
        cls = _CLASSES[config["model"]["class"]]
        model = cls(**config["model"]["kwargs"])
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ValueError(f"load_checkpoint: {path / CONFIG} is corrupt ({err!r})") from None
    try:
        state = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"load_checkpoint: {path / WEIGHTS} is corrupt ({err})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ValueError(
            f"load_checkpoint: {path / WEIGHTS} does not match {path / CONFIG} ({first})"
        ) from None
    model.eval()
    return model, config

