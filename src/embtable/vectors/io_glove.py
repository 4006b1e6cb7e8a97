"""GloVe text files (``token v1 ... vd`` lines, no header) and fastText ``.vec`` files.

A fastText ``.vec`` file is a word2vec text file whose lines end with a space, which
the shared text reader accepts as it is; GloVe's only difference is the missing
``count dim`` header, so the row count and dimension are found by a first pass.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from embtable.vectors.io_word2vec import read_word2vec, write_word2vec

__all__ = ["read_fasttext_vec", "read_glove", "write_glove"]


def read_glove(
    path: str | os.PathLike,
    *,
    limit: int | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
    progress: bool | None = None,
    unicode_errors: str = "strict",
) -> tuple[list[str], np.ndarray]:
    """Read a GloVe text file (no header) into ``(tokens, float32 matrix)``."""
    return read_word2vec(
        path,
        no_header=True,
        limit=limit,
        encoding=encoding,
        errors=errors,
        progress=progress,
        api="load_glove",
        unicode_errors=unicode_errors,
    )


def read_fasttext_vec(
    path: str | os.PathLike,
    *,
    limit: int | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
    progress: bool | None = None,
    unicode_errors: str = "strict",
) -> tuple[list[str], np.ndarray]:
    """Read a fastText ``.vec`` file (word2vec text with trailing spaces)."""
    return read_word2vec(
        path,
        limit=limit,
        encoding=encoding,
        errors=errors,
        progress=progress,
        api="load_fasttext",
        unicode_errors=unicode_errors,
    )


def write_glove(
    path: str | os.PathLike,
    tokens: Sequence[str],
    matrix: np.ndarray,
    *,
    precision: int | None = None,
    encoding: str = "utf-8",
) -> None:
    """Write a GloVe text file: ``token v1 ... vd`` lines without a header."""
    write_word2vec(path, tokens, matrix, header=False, precision=precision, encoding=encoding)
