"""What every command shares: the user-error type, progress bars, vector loading."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["CliError", "detect_format", "load_vectors", "positive_int", "progress", "say", "write_json"]

T = TypeVar("T")

VECTOR_FORMATS = ("native", "word2vec", "word2vec-binary", "glove", "fasttext", "hf")


class CliError(Exception):
    """A problem with the user's input: printed as one line, exit status 1."""


def say(message: str = "") -> None:
    """Print a line to stdout (through tqdm when a bar is live, so the bar is not broken)."""
    try:
        from tqdm import tqdm
    except ImportError:
        print(message, flush=True)
        return
    tqdm.write(message, file=sys.stdout)


def progress(items: Iterable[T], *, total: int | None = None, desc: str = "", leave: bool = False) -> Iterator[T]:
    """``items`` wrapped in a tqdm bar on stderr (a plain iterator when tqdm is missing or
    ``EMBTABLE_NO_PROGRESS`` is set)."""
    if os.environ.get("EMBTABLE_NO_PROGRESS"):
        return iter(items)
    try:
        from tqdm import tqdm
    except ImportError:
        return iter(items)
    return iter(tqdm(items, total=total, desc=desc, leave=leave, file=sys.stderr,
                     dynamic_ncols=True, mininterval=0.5))  # fmt: skip


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (beside, synced, renamed)."""
    from embtable._atomic import atomic_write

    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    with atomic_write(path) as out:
        out.write(text.encode("utf-8"))


def positive_int(text: str) -> int:
    """argparse ``type=`` for an option that must be an integer >= 1 (``-5`` is refused)."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _looks_binary(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(4096)
    if b"\0" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start < len(head) - 4  # a cut multi-byte char at the end is fine
    return False


def _check_regular(path: Path) -> None:
    """``CliError`` for a path that is neither a folder nor a regular file (a FIFO, a device,
    a socket): reading one could block forever or never end."""
    if not (path.is_dir() or path.is_file()):
        raise CliError(f"{path} is not a regular file or a folder (a FIFO, device or socket?)")


def detect_format(path: Path) -> str:
    """Guess the format of a vectors file or folder (one of :data:`VECTOR_FORMATS`).

    Folders: ``vocab.json`` -> native; ``items/vocab.json`` (a model trained by
    ``embtable train``) -> native; ``config.json`` / ``*.safetensors`` / ``vocab.txt`` /
    ``tokenizer.json`` -> hf.  Files: binary content -> word2vec-binary; a first line of
    two integers -> word2vec (``.vec`` -> fasttext); otherwise glove.
    """
    if not path.exists():
        raise CliError(f"{path} does not exist")
    _check_regular(path)
    if path.is_dir():
        if (path / "vocab.json").is_file():
            return "native"
        if (path / "items" / "vocab.json").is_file() or (path / "items-next" / "vocab.json").is_file():
            return "native"  # (items-next: a trained-model folder while a save renames it)
        names = {p.name for p in path.iterdir()}
        if names & {"config.json", "model.safetensors", "pytorch_model.bin", "vocab.txt", "tokenizer.json"}:
            return "hf"
        raise CliError(
            f"{path} is a folder but neither a native vectors folder (vocab.json), a model "
            "trained by `embtable train`, nor a Hugging Face model folder"
        )
    if path.suffix in (".safetensors", ".bin") and (path.parent / "config.json").is_file():
        return "hf"
    if _looks_binary(path):
        return "word2vec-binary"
    with path.open(encoding="utf-8", errors="replace") as f:
        first = f.readline().split()
    if len(first) == 2 and all(x.isdigit() for x in first):
        return "fasttext" if path.suffix == ".vec" else "word2vec"
    if not first:
        raise CliError(f"{path} is empty; expected a word2vec, GloVe or fastText vectors file")
    return "glove"


def load_vectors(path: str | os.PathLike[str], fmt: str | None = None):
    """Open any vectors file or folder as an ``embtable.vectors.Vectors``.

    Raises:
        CliError: missing path, unknown format, or a file the format's reader rejects.
    """
    from embtable.vectors import Vectors

    p = Path(path).expanduser()
    fmt = fmt or detect_format(p)
    if fmt not in VECTOR_FORMATS:
        raise CliError(f"unknown format {fmt!r}; expected one of {', '.join(VECTOR_FORMATS)}")
    if not p.exists():
        raise CliError(f"{p} does not exist")
    _check_regular(p)
    try:
        if fmt == "native" and p.is_dir() and not (p / "vocab.json").is_file():
            from embtable.cli._model_folder import open_model_folder

            p = open_model_folder(p).items  # a model trained by `embtable train`: checked
        if fmt == "native":
            return Vectors.load(p)
        if fmt == "hf":
            return Vectors.load_hf(p)
        if fmt == "word2vec":
            return Vectors.load_word2vec_format(p)
        if fmt == "word2vec-binary":
            return Vectors.load_word2vec_format(p, binary=True)
        if fmt == "glove":
            return Vectors.load_glove(p)
        return Vectors.load_fasttext(p)
    except (ValueError, KeyError, OSError, UnicodeDecodeError) as err:
        text = str(err).strip().strip('"').splitlines()[0] if str(err).strip() else type(err).__name__
        raise CliError(f"cannot read {p} as {fmt} vectors: {text}") from None
