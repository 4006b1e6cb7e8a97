"""The streaming reader of ``token v1 v2 ... vd`` text files (word2vec text, GloVe, fastText .vec).

The file is read in blocks of whole lines.  Each block is split into fields and
parsed by :mod:`embtable.vectors._floats` at once; only the tokens are handled one
by one in Python.  Rows go straight into a preallocated float32 matrix, so the
peak memory is the matrix plus one block.
"""

from __future__ import annotations

import os
import warnings
from array import array

import numpy as np

from embtable.vectors._errors import BadLines, logger
from embtable.vectors._floats import field_bounds, parse_fields
from embtable.vectors._progress import progress_bar

__all__ = ["read_text_vectors"]

_BLOCK = 1 << 18
#: Header claims up to this many floats are allocated as claimed; larger ones only as far as
#: the file's size allows (a lying header must not cost a huge allocation or a MemoryError).
_TRUSTED_FLOATS = 1 << 24


def _read_header(fin, bad: BadLines) -> tuple[int, int]:
    line = fin.readline()
    parts = line.split()
    try:
        count, dim = (int(p) for p in parts)
        if count < 0 or dim <= 0:
            raise ValueError
    except ValueError:
        bad.fail(
            "line 1",
            f"expected a header 'count dim' of two positive integers, got {line[:80]!r}; "
            "for a file without a header (GloVe) pass no_header=True",
        )
    size = os.fstat(fin.fileno()).st_size
    if count and 2 * dim + 1 > size - len(line):  # not even one row fits in the file
        bad.fail("line 1", f"the header announces rows of {dim} numbers, more than the file's {size} bytes hold")
    return count, dim


def _scan(path: str, bad: BadLines) -> tuple[int, int]:
    """Rows and dimension of a header-less file: non-blank lines, fields of the first one."""
    rows, dim = 0, 0
    with open(path, "rb") as fin:
        for block in iter(lambda: fin.read(_BLOCK), b""):
            rows += block.count(b"\n")
            last = block
        if os.path.getsize(path) and not last.endswith(b"\n"):
            rows += 1
        fin.seek(0)
        for line in fin:
            if line.strip():
                dim = len(line.split()) - 1
                break
    if dim <= 0:
        bad.fail("line 1", "no 'token v1 ... vd' line found: the file is empty or has no numbers")
    return rows, dim


def read_text_vectors(
    path: str | os.PathLike,
    *,
    header: bool,
    limit: int | None,
    encoding: str,
    errors: str,
    progress: bool | None,
    api: str,
    unicode_errors: str = "strict",
) -> tuple[list[str], np.ndarray]:
    """Read a ``token v1 ... vd`` file with or without a ``count dim`` header line.

    A header that announces fewer rows than the file has: the first ``count`` rows are
    read, as gensim does, with a warning naming the file and both counts.  Tokens are
    decoded with ``bytes.decode(encoding, unicode_errors)``; with ``"strict"`` a bad token
    raises ``UnicodeDecodeError`` (a ``ValueError``) naming the file and line, or is
    skipped with ``errors="skip"``.

    Returns:
        ``(tokens, matrix)`` with ``matrix`` of shape ``(len(tokens), dim)``, float32.

    Raises:
        ValueError: a bad header, a row of the wrong length, a non-numeric value, a token
            that does not decode, a duplicate token or a row count that does not match the
            header, naming the file and line (with ``errors="strict"``).
    """
    path = os.fspath(path)
    bad = BadLines(path, errors, api)
    with open(path, "rb") as fin:
        if header:
            count, dim = _read_header(fin, bad)
            line_no = 1
        else:
            count, dim = _scan(path, bad)
            line_no = 0
        capacity = count if limit is None else min(count, limit)
        claimed = capacity
        if header and capacity * dim > _TRUSTED_FLOATS:  # a big claim: a row takes at least
            # 2 * dim + 2 bytes, so allocate no more rows than the file can hold
            capacity = min(capacity, (os.path.getsize(path) - fin.tell() + 1) // (2 * dim + 2))
        out = np.empty((capacity, dim), dtype=np.float32)
        tokens: list[str] = []
        seen: set[str] = set()  # a set, not a dict: no int object per token
        row_line = array("q")  # file line of every row kept, for error messages
        bar = progress_bar(os.path.getsize(path), os.path.basename(path), progress)
        carry = b""
        done = capacity == 0
        extra = 0  # good rows past the header's count
        while not done:
            block = fin.read(_BLOCK)
            bar.update(len(block))
            data = carry + block
            if block:
                cut = data.rfind(b"\n") + 1
                data, carry = data[:cut], data[cut:]
            else:
                carry = b""
                done = True
                if data.strip() and not data.endswith(b"\n"):  # (writers end every line)
                    warnings.warn(
                        f"{api}: {path}: the last line has no newline; the file may be "
                        "truncated (a number cut short reads as a shorter number)",
                        stacklevel=4,
                    )
            if not data:
                continue
            need = capacity - len(tokens)
            if need * (2 * dim + 2) < len(data):  # the block may hold more lines than needed:
                cut = _after_lines(data, need)  # rows past the count are not parsed (gensim)
                if cut < len(data):
                    data, carry = data[:cut], data[cut:] + carry
                    done = False  # come back for the rest if bad lines were skipped
            rows, row_lines, lines = _parse_block(
                data, dim, line_no, (encoding, unicode_errors), bad, tokens, seen, row_line
            )
            line_no += lines
            start = len(tokens) - rows.shape[0]
            if len(tokens) > capacity:
                if limit is None or limit > count:
                    extra = len(tokens) - capacity
                del tokens[capacity:]
                rows = rows[: capacity - start]
            out[start : len(tokens)] = rows
            done = done or len(tokens) == capacity
        bar.close()
        if header and (limit is None or limit > count) and len(tokens) == claimed:
            extra += _count_rows(fin, carry)
            if extra:  # (only when every announced row was read: else it is an error below)
                warnings.warn(
                    f"{api}: {path}: the header announces {count} rows but the file has "
                    f"{count + extra}; read the first {count}, as gensim does",
                    stacklevel=4,
                )
    if header and len(tokens) < claimed:
        text = (
            f"the header announces {count} rows but the file has {len(tokens)} good ones; "
            "fix the header count or the truncated file"
        )
        if errors == "strict":
            bad.fail(f"line {line_no}", text)
        logger.warning("%s: %s, %s", api, path, text)
    if len(tokens) < capacity:
        out = out[: len(tokens)].copy()
    return tokens, out


def _after_lines(data: bytes, n: int) -> int:
    """Offset just after the ``n``-th newline of ``data`` (``len(data)`` if it has fewer)."""
    newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    return int(newlines[n - 1]) + 1 if newlines.size >= n else len(data)


def _count_rows(fin, carry: bytes) -> int:
    """Non-blank lines in ``carry`` plus the rest of ``fin``."""
    n = 0
    for block in iter(lambda: fin.read(_BLOCK), b""):
        data = carry + block
        cut = data.rfind(b"\n") + 1
        n += sum(1 for line in data[:cut].split(b"\n") if line.strip())
        carry = data[cut:]
    return n + sum(1 for line in carry.split(b"\n") if line.strip())


def _parse_block(
    data: bytes,
    dim: int,
    line_no: int,
    codec: tuple[str, str],
    bad: BadLines,
    tokens: list[str],
    seen: set[str],
    row_line: array,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Parse whole lines; append good tokens; return their rows, line numbers, lines read."""
    encoding, unicode_errors = codec
    a = np.frombuffer(data, dtype=np.uint8)
    starts, ends = field_bounds(a)
    newlines = np.flatnonzero(a == 10)
    n_lines = newlines.size + (0 if data.endswith(b"\n") else 1)
    line_starts = np.concatenate(([0], newlines[: n_lines - 1] + 1))
    if starts.size == n_lines * (dim + 1) and np.array_equal(starts[:: dim + 1], line_starts):
        per_line = np.full(n_lines, dim + 1)  # the usual case: every line is complete
    else:
        per_line = np.bincount(np.searchsorted(newlines, starts), minlength=n_lines)
    first_field = np.concatenate(([0], np.cumsum(per_line)[:-1]))
    good = per_line == dim + 1
    for line in np.flatnonzero(~good & (per_line > 0)).tolist():
        bad.report(
            f"line {line_no + line + 1}",
            f"expected a token and {dim} numbers, got {per_line[line] - 1} numbers (ragged row)",
        )
    good_lines = np.flatnonzero(good)
    if good_lines.size == n_lines:  # strided views instead of an index array
        num_starts = starts.reshape(n_lines, dim + 1)[:, 1:].ravel()
        num_ends = ends.reshape(n_lines, dim + 1)[:, 1:].ravel()
    else:
        numeric = (first_field[good_lines][:, None] + np.arange(1, dim + 1)).ravel()
        num_starts, num_ends = starts[numeric], ends[numeric]
    values, unreadable = parse_fields(a, num_starts, num_ends)
    values = values.reshape(-1, dim)
    keep = np.ones(good_lines.size, dtype=bool)
    for field in unreadable.tolist():
        row = field // dim
        if keep[row]:
            text = data[num_starts[field] : num_ends[field]][:40]
            bad.report(
                f"line {line_no + good_lines[row] + 1}",
                f"value {field % dim + 1} is not a number: {text!r}",
            )
            keep[row] = False
    token_fields = first_field[good_lines]
    s_list, e_list = starts[token_fields].tolist(), ends[token_fields].tolist()
    for row, (s, e) in enumerate(zip(s_list, e_list)):
        if not keep[row]:
            continue
        raw = data[s:e]
        try:
            token = raw.decode(encoding, unicode_errors)
        except UnicodeDecodeError as exc:
            where = f"line {line_no + good_lines[row] + 1}"
            problem = (
                f"token {raw[:40]!r} is not valid {encoding} ({exc.reason}); pass the right "
                'encoding=, or unicode_errors="replace" or "ignore"'
            )
            if bad.errors == "strict":  # gensim raises UnicodeDecodeError: so do we
                text = f"{bad.api}: {bad.path}, {where}: {problem}"
                raise UnicodeDecodeError(
                    exc.encoding, exc.object, exc.start, exc.end, text
                ) from None
            bad.report(where, problem)
            keep[row] = False
            continue
        where = line_no + good_lines[row] + 1
        if token in seen:  # (the first line is looked up only to raise: O(1) per skip)
            strict = bad.errors == "strict"
            first = f"first on line {row_line[tokens.index(token)]}" if strict else "the first is kept"
            bad.report(f"line {where}", f"duplicate token {token!r} ({first})")
            keep[row] = False
            continue
        seen.add(token)
        tokens.append(token)
        row_line.append(where)
    if not keep.all():
        values = values[keep]
    return values, line_no + 1 + good_lines[keep], n_lines
