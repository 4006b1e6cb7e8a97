"""word2vec files: text (``count dim`` header, then ``token v1 ... vd`` lines) and binary.

The binary format is the C tool's: the same header line, then for every token its
UTF-8 bytes, a space and ``dim`` little-endian float32 values (optionally followed
by a newline).  These are private parsers behind :class:`embtable.vectors.Vectors`'
``load_word2vec_format`` / ``save_word2vec_format`` pair.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np

from embtable._atomic import atomic_write
from embtable.vectors._errors import BadLines, check_errors
from embtable.vectors._progress import progress_bar
from embtable.vectors._textparse import read_text_vectors

__all__ = ["check_unicode_errors", "read_fvocab", "read_word2vec", "write_word2vec"]

_BLOCK = 1 << 20


def read_word2vec(
    path: str | os.PathLike,
    *,
    binary: bool = False,
    no_header: bool = False,
    limit: int | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
    progress: bool | None = None,
    api: str = "load_word2vec_format",
    unicode_errors: str = "strict",
) -> tuple[list[str], np.ndarray]:
    """Read a word2vec text or binary file into ``(tokens, float32 matrix)``.

    A header announcing fewer rows than the file holds: the first ``count`` are read
    with a warning (text and binary, as gensim reads them).

    Raises:
        ValueError: a malformed file (see :func:`embtable.vectors._textparse.read_text_vectors`),
            naming the file and the line (text) or the vector number (binary).
        UnicodeDecodeError: a token that does not decode, with ``unicode_errors="strict"``
            and ``errors="strict"``.
    """
    check_errors(errors, api)
    check_unicode_errors(unicode_errors, api)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"{api}: limit must be None or a non-negative int, got {limit!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{api}: no such file {os.fspath(path)!r}")
    if binary:
        if no_header:
            raise ValueError(f"{api}: binary word2vec files always have a header; drop no_header")
        return _read_binary(path, limit, (encoding, unicode_errors), errors, progress, api)
    return read_text_vectors(
        path,
        header=not no_header,
        limit=limit,
        encoding=encoding,
        errors=errors,
        progress=progress,
        api=api,
        unicode_errors=unicode_errors,
    )


def check_unicode_errors(unicode_errors: str, api: str) -> None:
    """``ValueError`` unless ``unicode_errors`` is ``"strict"``, ``"replace"`` or ``"ignore"``."""
    if unicode_errors not in ("strict", "replace", "ignore"):
        raise ValueError(
            f'{api}: unicode_errors must be "strict", "replace" or "ignore", got {unicode_errors!r}'
        )


def read_fvocab(
    path: str | os.PathLike, encoding: str, unicode_errors: str, api: str
) -> dict[str, int]:
    """The ``token count`` lines of a word2vec vocabulary file (the C tool's ``-save-vocab``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{api}: no such fvocab file {os.fspath(path)!r}")
    counts: dict[str, int] = {}
    with open(path, "rb") as fin:
        for number, line in enumerate(fin, 1):
            parts = line.decode(encoding, unicode_errors).split()
            if not parts:
                continue
            try:
                token, count = parts
                counts[token] = int(count)
            except ValueError:
                raise ValueError(
                    f"{api}: {os.fspath(path)}, line {number}: expected 'token count', "
                    f"got {line[:80]!r}"
                ) from None
    return counts


def _count_records(fin, data: bytes, width: int) -> int:
    """Whole ``token vector`` records (and a final partial one) in ``data`` + the rest of ``fin``."""
    n, pos = 0, 0
    while True:
        space = data.find(b" ", pos)
        if space < 0 or space + 1 + width > len(data):
            more = fin.read(_BLOCK)
            if not more:
                return n + (1 if data[pos:].strip() else 0)
            data, pos = data[pos:] + more, 0
            continue
        n += 1
        pos = space + 1 + width
        if pos < len(data) and data[pos] == 10:
            pos += 1


def _read_binary(path, limit, codec, errors, progress, api):
    encoding, unicode_errors = codec
    path = os.fspath(path)
    bad = BadLines(path, errors, api)
    with open(path, "rb") as fin:
        line = fin.readline()
        try:
            count, dim = (int(p) for p in line.split())
            if count < 0 or dim <= 0:
                raise ValueError
        except ValueError:
            bad.fail("line 1", f"expected a header 'count dim', got {line[:80]!r}")
        capacity = count if limit is None else min(count, limit)
        if capacity and 4 * dim + 1 > os.path.getsize(path) - len(line):
            bad.fail(
                "line 1",
                f"the header announces vectors of {dim} float32, more than the file's "
                f"{os.path.getsize(path)} bytes hold",
            )
        claimed = capacity  # a big claim: allocate no more than the file can hold
        if capacity * dim > 1 << 24:  # (a space + dim floats a record)
            capacity = min(capacity, (os.path.getsize(path) - len(line)) // (4 * dim + 1))
        out = np.empty((capacity, dim), dtype=np.float32)
        width = 4 * dim
        tokens: list[str] = []
        seen: set[str] = set()
        bar = progress_bar(os.path.getsize(path), os.path.basename(path), progress)
        data = b""
        offset = len(line)  # file offset of data[0]
        record = 0
        eof = False
        while record < capacity and not eof:
            block = fin.read(_BLOCK)
            bar.update(len(block))
            eof = not block
            data += block
            pos = 0
            end = len(data)
            starts = []  # offsets of the vectors kept from this block
            while record < capacity:
                space = data.find(b" ", pos)
                if space < 0 or space + 1 + width > end:
                    break
                raw = data[pos:space].lstrip(b"\n")
                record += 1
                keep = True
                try:
                    token = raw.decode(encoding, unicode_errors)
                except UnicodeDecodeError as exc:
                    where = f"vector {record} (byte {offset + pos})"
                    problem = f"token {raw[:40]!r} is not valid {encoding} ({exc.reason})"
                    if errors == "strict":  # as gensim: a UnicodeDecodeError (a ValueError)
                        text = f"{api}: {path}, {where}: {problem}"
                        raise UnicodeDecodeError(
                            exc.encoding, exc.object, exc.start, exc.end, text
                        ) from None
                    bad.report(where, problem)
                    keep = False
                if keep and token in seen:
                    where = f"vector {record} (byte {offset + pos})"
                    bad.report(where, f"duplicate token {token!r}")
                    keep = False
                if keep:
                    starts.append(space + 1)
                    tokens.append(token)
                    seen.add(token)
                pos = space + 1 + width
                if pos < end and data[pos] == 10:
                    pos += 1
            if starts:  # one gather of whole rows (unaligned offsets: copy bytes, then view)
                rows = np.lib.stride_tricks.sliding_window_view(
                    np.frombuffer(data, np.uint8), width
                )[starts]
                out[len(tokens) - len(starts) : len(tokens)] = rows.view(np.float32)
            offset += pos
            data = data[pos:]
        if record == claimed and (limit is None or limit > count):
            extra = _count_records(fin, data, width)
            if extra:
                warnings.warn(
                    f"{api}: {path}: the header announces {count} vectors but the file has "
                    f"{count + extra}; read the first {count}, as gensim does",
                    stacklevel=4,
                )
        bar.close()
    if record < claimed:
        bad.fail(
            f"vector {record + 1} (byte {offset})",
            f"the header announces {count} vectors of {dim} float32 but the file ends after "
            f"{record}; fix the header count or the truncated file",
        )
    if len(tokens) < capacity:
        out = out[: len(tokens)].copy()
    return tokens, out


def check_tokens_writable(tokens: Sequence[str], encoding: str, path: str) -> None:
    """``ValueError`` for a token a whitespace-separated vector file cannot hold.

    A token must be a non-empty string without whitespace or control characters (a reader
    splits lines on them) that ``encoding`` can encode.
    """
    for i, token in enumerate(tokens):
        if not isinstance(token, str):
            raise ValueError(f"save: {path}: token {i} is {token!r}, not a string")
        if not (token.isprintable() and token.split() == [token]):
            raise ValueError(
                f"save: {path}: token {i} ({token!r}) is empty or holds whitespace or a "
                "control character, which the file could not hold (readers split on them); "
                "rename it first"
            )
        try:
            token.encode(encoding)
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"save: {path}: token {i} ({token!r}) cannot be encoded as {encoding} "
                f"({exc.reason}); pass another encoding="
            ) from None


def write_word2vec(
    path: str | os.PathLike,
    tokens: Sequence[str],
    matrix: np.ndarray,
    *,
    binary: bool = False,
    header: bool = True,
    precision: int | None = None,
    encoding: str = "utf-8",
) -> None:
    """Write ``tokens`` and their rows as a word2vec text or binary file.

    Text values are written with ``precision`` significant digits (``None``: 9, which
    reads back to the same float32).  Binary files are written as gensim writes them
    (no newline after each vector).  The write is atomic (``embtable._atomic.atomic_write``): a
    failed or killed save leaves the previous file as it was.

    Raises:
        ValueError: a token that could not be read back (empty, or holding whitespace or
            a control character) or that ``encoding`` cannot encode; nothing is written.
    """
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    n, dim = matrix.shape
    check_tokens_writable(tokens, encoding, os.fspath(path))
    with atomic_write(path) as fout:
        if header:
            fout.write(f"{n} {dim}\n".encode())
        if binary:
            for token, row in zip(tokens, matrix):
                fout.write(token.encode(encoding) + b" " + row.tobytes())
            return
        fmt = " ".join([f"%.{9 if precision is None else precision}g"] * dim)
        step = 4096
        for lo in range(0, n, step):
            rows = matrix[lo : lo + step].tolist()
            lines = [f"{t} {fmt % tuple(r)}\n" for t, r in zip(tokens[lo : lo + step], rows)]
            fout.write("".join(lines).encode(encoding))
