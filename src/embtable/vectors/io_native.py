"""embtable's native vector format: a folder holding the table and its vocabulary.

Layout of ``<folder>/``:

- ``vectors.safetensors`` (one tensor named ``weight``) or ``vectors.npy`` (a save over an
  existing folder alternates with ``vectors-1.safetensors`` / ``vectors-1.npy``);
- ``vocab.json``: ``{"format": "embtable.vectors/1", "tokens": [...], "counts": [...] | null,
  "table": "vectors.safetensors"}``, the manifest: which table file goes with these tokens.

Saves are atomic: the new table is written (beside, synced, renamed) under the name the
current manifest does *not* use, then ``vocab.json`` is replaced, then the old table is
removed.  Killed at any moment, the folder opens as the old save or as the new one.  A
manifest without ``"table"`` (older saves) means ``vectors.safetensors``, else ``vectors.npy``.

The table is opened with a memory map (copy-on-write: writes stay in memory), so
opening costs O(1) in the table size; only the token list is read.  The
safetensors file is written and read here directly (an 8-byte little-endian header
length, a JSON header, then the raw row-major data), which keeps the opening free
of any copy; files from the ``safetensors`` package read the same.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor

from embtable._atomic import atomic_write
from embtable.vectors.vocab import Vocab

__all__ = ["read_native", "write_native"]

FORMAT = "embtable.vectors/1"
_DTYPES = {
    "F32": (np.float32, torch.float32),
    "F16": (np.float16, torch.float16),
    "BF16": (np.int16, torch.bfloat16),
    "F64": (np.float64, torch.float64),
}
_NAMES = {torch_dtype: name for name, (_, torch_dtype) in _DTYPES.items()}


def write_native(
    path: str | os.PathLike, vocab: Vocab, weight: Tensor, format: str = "safetensors"
) -> None:
    """Write ``vocab`` and ``weight`` into the folder ``path`` (created if needed), atomically.

    Raises:
        ValueError: ``format`` is not ``"safetensors"`` or ``"npy"``, the dtype cannot be
            stored, or the vocabulary and the table disagree; nothing is written then.
    """
    if format not in ("safetensors", "npy"):
        raise ValueError(f'Vectors.save: format must be "safetensors" or "npy", got {format!r}')
    if weight.dtype not in _NAMES:
        raise ValueError(
            f"Vectors.save: cannot store dtype {weight.dtype}; convert to float32 first"
        )
    if format == "npy" and weight.dtype == torch.bfloat16:
        raise ValueError('Vectors.save: format="npy" cannot hold bfloat16; use safetensors')
    if weight.dim() != 2 or weight.shape[0] != len(vocab):
        raise ValueError(
            f"Vectors.save: the table has shape {tuple(weight.shape)} for {len(vocab)} tokens"
        )
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    weight = weight.detach().contiguous().cpu()
    counts = None if vocab.counts is None else vocab.counts.tolist()
    current = _current_table(folder)
    name = next(n for n in _TABLE_NAMES[format] if n != current)
    text = json.dumps({"format": FORMAT, "tokens": vocab.tokens, "counts": counts, "table": name})
    array = weight.view(torch.int16).numpy() if weight.dtype == torch.bfloat16 else weight.numpy()
    with atomic_write(folder / name) as out:
        if format == "npy":
            np.lib.format.write_array(out, array, allow_pickle=False)
        else:
            _write_safetensors(out, array, _NAMES[weight.dtype])
    with atomic_write(folder / "vocab.json") as out:  # the manifest, last: the switch
        out.write(text.encode())
    for stale in (*_TABLE_NAMES["safetensors"], *_TABLE_NAMES["npy"]):
        if stale != name:
            (folder / stale).unlink(missing_ok=True)


_UNREAD = object()  # (``_current_table``: the manifest is still to be read)

#: The two file names a table of each format alternates between (see the module docstring).
_TABLE_NAMES = {
    "safetensors": ("vectors.safetensors", "vectors-1.safetensors"),
    "npy": ("vectors.npy", "vectors-1.npy"),
}


def _current_table(folder: Path, named: Any = _UNREAD) -> str | None:
    """The table file the folder's manifest points at (``None``: no readable manifest).

    ``named``: the manifest's ``"table"`` entry when the caller has read it already (the
    manifest is then not parsed again)."""
    if named is _UNREAD:
        try:
            meta = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return None
        named = meta.get("table") if isinstance(meta, dict) else None
    if isinstance(named, str):
        return named
    for name in ("vectors.safetensors", "vectors.npy"):
        if (folder / name).is_file():
            return name
    return None


def _write_safetensors(out: BinaryIO, array: np.ndarray, dtype: str) -> None:
    header = {
        "__metadata__": {"format": "pt", "embtable": FORMAT},
        "weight": {"dtype": dtype, "shape": list(array.shape), "data_offsets": [0, array.nbytes]},
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    out.write(struct.pack("<Q", len(raw)))
    out.write(raw)
    out.write(memoryview(np.ascontiguousarray(array)).cast("B"))


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the file offset where its data start.

    Raises:
        ValueError: not a safetensors file (too short, a header that is not a JSON object
            or runs past the end of the file), naming the file.
    """
    where = f"Vectors.load: {os.fspath(path)}"
    with open(path, "rb") as fin:
        head = fin.read(8)
        if len(head) < 8:
            raise ValueError(f"{where} is not a safetensors file (shorter than 8 bytes)")
        (size,) = struct.unpack("<Q", head)
        if size > min(100_000_000, os.fstat(fin.fileno()).st_size - 8):
            raise ValueError(
                f"{where} has a corrupt safetensors header (it claims {size} bytes; is the "
                "file truncated?)"
            )
        try:
            header = json.loads(fin.read(size))
        except (ValueError, RecursionError) as error:
            raise ValueError(f"{where}: the safetensors header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{where}: the safetensors header is not a JSON object")
    return header, 8 + size


def mmap_safetensor(path: str | os.PathLike, name: str) -> Tensor:
    """Tensor ``name`` of a safetensors file, memory-mapped copy-on-write (no read).

    Raises:
        KeyError: no tensor ``name`` in the file.
        ValueError: a malformed entry (dtype, shape, ``data_offsets`` that do not match the
            shape or run past the end of the file: a truncated file).
    """
    where = f"Vectors.load: {os.fspath(path)}"
    header, start = read_safetensors_header(path)
    if name not in header:
        names = sorted(k for k in header if k != "__metadata__")
        raise KeyError(f"Vectors.load: no tensor {name!r} in {os.fspath(path)}; it has {names}")
    entry = header[name]
    if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
        raise ValueError(f"{where}: tensor {name!r} has a malformed header entry {entry!r:.200}")
    if entry["dtype"] not in _DTYPES:
        raise ValueError(f"Vectors.load: unsupported dtype {entry['dtype']} in {os.fspath(path)}")
    np_dtype, torch_dtype = _DTYPES[entry["dtype"]]
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not (_ints(shape) and len(shape) == 2 and _ints(offsets) and len(offsets) == 2):
        raise ValueError(
            f"{where}: tensor {name!r} needs a 2-D shape and two data_offsets, got shape "
            f"{shape!r:.100} and data_offsets {offsets!r:.100}"
        )
    begin, end = offsets
    nbytes = shape[0] * shape[1] * np.dtype(np_dtype).itemsize
    if end - begin != nbytes:
        raise ValueError(
            f"{where}: tensor {name!r} of shape {shape} {entry['dtype']} needs {nbytes} bytes "
            f"but its data_offsets span {end - begin}"
        )
    size = os.path.getsize(path)
    if start + end > size:
        raise ValueError(
            f"{where}: tensor {name!r} ends at byte {start + end} but the file has {size} bytes "
            "(a truncated file)"
        )
    if nbytes == 0:
        return torch.empty(tuple(shape), dtype=torch_dtype)
    array = np.memmap(path, dtype=np_dtype, mode="c", offset=start + begin, shape=tuple(shape))
    tensor = torch.from_numpy(array)
    return tensor.view(torch_dtype) if torch_dtype == torch.bfloat16 else tensor


def _ints(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    )


def read_native(path: str | os.PathLike, mmap: bool = True) -> tuple[Vocab, Tensor]:
    """Open a folder written by :func:`write_native`.

    Raises:
        FileNotFoundError: the folder, its vocabulary or its table is missing.
        ValueError: a malformed ``vocab.json`` (not JSON, tokens that are not a list of
            distinct strings, counts that are not integers), a malformed or truncated table,
            or a vocabulary and a table that disagree; every message names the file.
    """
    folder = Path(path)
    vocab_file = folder / "vocab.json"
    if not vocab_file.is_file():
        raise FileNotFoundError(
            f"Vectors.load: {os.fspath(path)} has no vocab.json; is it a folder written by "
            "Vectors.save? (for word2vec/GloVe files use load_word2vec_format / load_glove)"
        )
    vocab, named = _read_vocab(vocab_file)
    table = _table_file(folder, vocab_file, named)
    if table.suffix == ".safetensors":
        weight = mmap_safetensor(table, "weight")
    else:
        try:
            array = np.load(table, mmap_mode="c", allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise ValueError(f"Vectors.load: {table}: not a readable .npy table ({error})") from None
        if array.ndim != 2 or array.dtype not in (np.float16, np.float32, np.float64):
            raise ValueError(
                f"Vectors.load: {table} holds a {array.dtype} array of shape {array.shape}; "
                "expected a 2-D float table"
            )
        weight = torch.from_numpy(array)
    if weight.shape[0] != len(vocab):
        raise ValueError(
            f"Vectors.load: {os.fspath(path)} holds {weight.shape[0]} rows but {len(vocab)} tokens"
        )
    if not mmap:
        weight = weight.clone()
    return vocab, weight


def _read_vocab(vocab_file: Path) -> tuple[Vocab, Any]:
    """The checked vocabulary of ``vocab_file`` and the manifest's ``"table"`` entry.

    Each check runs once, in C-level passes where possible (token types through
    ``map(type, ...)``, distinctness through the token -> row dictionary, which the returned
    :class:`Vocab` keeps as its index), so a trusted ``Vectors`` built from it checks nothing
    again."""
    where = f"Vectors.load: {vocab_file}"
    try:
        meta = json.loads(vocab_file.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:  # (UnicodeDecodeError is a ValueError)
        raise ValueError(f"{where} is not valid UTF-8 JSON ({str(error)[:200]})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("tokens"), list):
        got = type(meta.get("tokens")).__name__ if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f'{where}: expected {{"tokens": [strings], ...}}, got tokens of type {got}')
    tokens = meta["tokens"]
    if not set(map(type, tokens)) <= {str}:
        bad = next(i for i, t in enumerate(tokens) if type(t) is not str)
        raise ValueError(f"{where}: token {bad} is {tokens[bad]!r:.80}, not a string")
    counts = meta.get("counts")
    if counts is not None:
        if not isinstance(counts, list) or len(counts) != len(tokens) or not (
            set(map(type, counts)) <= {int}
        ):
            raise ValueError(f"{where}: counts must be null or one integer per token")
        if counts and not (-(2**63) <= min(counts) and max(counts) < 2**63):
            raise ValueError(f"{where}: counts must fit in int64")
    index = dict(zip(tokens, range(len(tokens))))  # built once: the check and the Vocab's index
    if len(index) != len(tokens):
        raise ValueError(f"{where}: token {_first_duplicate(tokens)!r} appears more than once")
    return Vocab._checked_tokens(tokens, index, counts), meta.get("table")


def _first_duplicate(tokens: list[str]) -> str | None:
    seen: set[str] = set()
    for token in tokens:
        if token in seen:
            return token
        seen.add(token)
    return None


def _table_file(folder: Path, vocab_file: Path, named: Any) -> Path:
    """The table file of a folder whose manifest's ``"table"`` entry is ``named``."""
    meta_table = _current_table(folder, named)
    names = {n for pair in _TABLE_NAMES.values() for n in pair}
    if meta_table is not None and meta_table not in names:
        raise ValueError(f"Vectors.load: {vocab_file} names the table {meta_table!r:.80}, expected one of {sorted(names)}")
    if meta_table is None or not (folder / meta_table).is_file():
        raise FileNotFoundError(
            f"Vectors.load: {os.fspath(folder)} has no vectors.safetensors/.npy"
            + (f" (vocab.json names {meta_table})" if meta_table else "")
        )
    return folder / meta_table
