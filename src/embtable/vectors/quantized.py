r"""Quantized pretrained vectors: neighbour and analogy queries on the codes.

:meth:`embtable.vectors.Vectors.quantize` stores a vocabulary's table as row-wise codes of
:mod:`embtable.storage.codecs` (``"int8"`` by default; ``"int4"``, ``"int2"``, ``"fp16"``,
``"bf16"`` too): ``dim + 4`` bytes a row for int8 instead of ``4 * dim``.  Queries never
decode the table.  A row is ``x = s * (c - m) + b'`` with centred codes ``c - m``
(``m = 2**(bits - 1)``: int8 codes become int8 numbers) and ``b' = b + s * m``; for a unit
query ``q`` (as in :meth:`~embtable.vectors.Vectors.most_similar`)

    ``q . x = s * (q . (c - m)) + b' * sum(q)``

so one matrix product of the queries with a block of codes, scaled per row, gives the dot
products; dividing by the decoded rows' norms gives the cosines.  The codes are widened to
float32 once per block of 32,768 rows for that product: on this project's CPUs torch's int8
GEMM (``torch._int_mm``, which would also need the query rounded to int8) measured slower
than the float32 one at one thread.  Float formats use their values as the
"codes" (scale 1, bias 0).  Results are the same rules as :class:`~embtable.vectors.Vectors`
(3CosAdd, query tokens excluded); their agreement with the float32 vectors is measured by
:meth:`topn_overlap` (``benchmarks/quantized_quality.py``: MiniLM top-10 overlap).

:meth:`save` writes a folder (``vectors.quantized.safetensors``: the packed rows, row norms,
format in its metadata; ``vocab.json``) that :meth:`load` opens by memory map.

Example:
    >>> import torch
    >>> from embtable.vectors import Vectors
    >>> _ = torch.manual_seed(0)
    >>> vectors = Vectors([f"w{i}" for i in range(500)], torch.randn(500, 32))
    >>> small = vectors.quantize("int8")
    >>> small
    QuantizedVectors(500 tokens, dim 32, format='int8', 36 bytes per row)
    >>> [t for t, _ in small.most_similar("w7", topn=3)] == [t for t, _ in vectors.most_similar("w7", topn=3)]
    True
    >>> small.topn_overlap(vectors, ["w1", "w2", "w3"], topn=10) >= 0.9
    True
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from embtable._atomic import atomic_write_bytes
from embtable.nn.quantized import load_packed, save_packed
from embtable.storage import codecs
from embtable.vectors import query
from embtable.vectors.vocab import Vocab

__all__ = ["QuantizedVectors"]

FORMAT = "embtable.quantized-vectors/1"
# The rows file: a save writes the name the current vocab.json does not use (see save).
_FILES = ("vectors.quantized.safetensors", "vectors.quantized.next.safetensors")


def _rows_file(folder: Path) -> str | None:
    """The rows file ``folder/vocab.json`` names (folders from before the manifest named it:
    the first name); ``None`` without a readable vocab.json, or naming something else."""
    try:
        manifest = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = manifest.get("table", _FILES[0]) if isinstance(manifest, dict) else None
    return name if name in _FILES else None
_ROWS_PER_BLOCK = 1 << 15
_QUERY_CHUNK = 256


class QuantizedVectors:
    """Tokens bound to the rows of a quantized table, with cosine queries on the codes.

    Build with :meth:`embtable.vectors.Vectors.quantize` or :meth:`from_vectors`; open a
    saved folder with :meth:`load`.

    Args:
        vocab: a :class:`~embtable.vectors.vocab.Vocab` or the tokens in row order.
        packed: ``uint8 [len(vocab), row_bytes]`` rows in format ``fmt``.
        fmt: the row format.
        dim: the vector size.
        norms: the decoded rows' L2 norms (computed when not given).

    Raises:
        ValueError: sizes that do not match, an unknown format.
    """

    def __init__(
        self,
        vocab: Vocab | Sequence[str],
        packed: Tensor,
        fmt: str,
        dim: int,
        norms: Tensor | None = None,
    ) -> None:
        api = "QuantizedVectors"
        spec = codecs.codec(fmt, api)
        self.vocab = vocab if isinstance(vocab, Vocab) else Vocab(list(vocab))
        expected = (len(self.vocab), spec.row_bytes(dim))
        if packed.dtype != torch.uint8 or tuple(packed.shape) != expected:
            raise ValueError(
                f"{api}: packed rows must be uint8 {expected} for {len(self.vocab)} tokens, format "
                f"{spec.name!r} and dim {dim}; got {packed.dtype} {tuple(packed.shape)}"
            )
        self.format = spec.name
        self.packed = packed
        self.dim = dim
        if spec.integer:
            scale, bias = codecs.scale_bias(packed, spec, dim)
            middle = float(1 << (spec.bits - 1))
            self._scale, self._shift = scale, bias + scale * middle
        if norms is None:
            norms = torch.cat([
                query.row_norms(self._decode(lo, lo + _ROWS_PER_BLOCK))
                for lo in range(0, max(len(self.vocab), 1), _ROWS_PER_BLOCK)
            ]) if len(self.vocab) else torch.ones(0)
        self.norms = norms

    @classmethod
    def from_vectors(cls, vectors: Any, fmt: str = "int8", *, search: str = "minmax") -> QuantizedVectors:
        """Quantize a :class:`~embtable.vectors.Vectors` (its vocabulary is shared)."""
        packed = codecs.quantize_rows(vectors.weight.float(), fmt, search=search)
        return cls(vectors.vocab, packed, fmt, vectors.dim)

    # ------------------------------------------------------------------ basics

    @property
    def tokens(self) -> list[str]:
        """Tokens in row order."""
        return self.vocab.tokens

    def __len__(self) -> int:
        return len(self.vocab)

    def __contains__(self, token: object) -> bool:
        return token in self.vocab

    def __getitem__(self, token: str) -> Tensor:
        """The decoded float32 vector of ``token`` (``KeyError`` for an unknown token)."""
        i = self.vocab[token]
        return self._decode(i, i + 1)[0]

    def __repr__(self) -> str:
        return (
            f"QuantizedVectors({len(self)} tokens, dim {self.dim}, format={self.format!r}, "
            f"{self.packed.shape[1]} bytes per row)"
        )

    def nbytes(self) -> int:
        """Bytes of the packed table (the per-row norms add 4 bytes a row in memory)."""
        return self.packed.numel()

    def dequantize(self) -> Tensor:
        """The decoded float32 table."""
        return self._decode(0, len(self))

    def _decode(self, lo: int, hi: int) -> Tensor:
        return codecs.dequantize_rows(self.packed[lo:hi], self.format, self.dim)

    # ------------------------------------------------------------------ scores on the codes

    def _signed_codes(self, lo: int, hi: int) -> Tensor:
        """Rows ``lo .. hi - 1`` as centred int8 codes ``c - 2**(bits - 1)``."""
        spec = codecs.codec(self.format)
        codes = codecs.unpack_codes(self.packed[lo:hi], spec, self.dim)
        if spec.bits == 8:
            return (codes ^ 0x80).view(torch.int8)  # c - 128 in two's complement
        return (codes.to(torch.int16) - (1 << (spec.bits - 1))).to(torch.int8)

    def _block_codes(self, lo: int, hi: int) -> Tensor:
        """Rows ``lo .. hi - 1`` as float32 ``[D, hi - lo]``: the centred codes of an integer
        format (exact small integers), the values of a float format."""
        if not codecs.codec(self.format).integer:
            return self._decode(lo, hi).T
        return self._signed_codes(lo, hi).T.float()

    def _block_dots(self, queries: Tensor, codes: Tensor, lo: int, hi: int) -> Tensor:
        """``queries @ x_i`` for rows ``lo .. hi - 1`` from their codes: ``[Q, hi - lo]``."""
        dots = queries @ codes
        if codecs.codec(self.format).integer:
            dots *= self._scale[lo:hi]
            dots += queries.sum(1, keepdim=True) * self._shift[lo:hi]
        return dots

    def top_scores(
        self, queries: Tensor, exclude: Sequence[Sequence[int]], topn: int, restrict_vocab: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Best ``topn`` rows by cosine with each (unit) query, skipping ``exclude[q]``.

        Rows go in blocks of 32,768 whose codes are widened once; queries in chunks of 256.
        Returns ``(scores, ids)``, each ``(Q, k)``, best first.
        """
        rows = len(self) if restrict_vocab is None else min(restrict_vocab, len(self))
        k = min(topn, rows)
        queries = queries.float()
        chunks = [(a, min(a + _QUERY_CHUNK, queries.shape[0])) for a in range(0, queries.shape[0], _QUERY_CHUNK)]
        best: list[tuple[Tensor, Tensor] | None] = [None] * len(chunks)
        for lo in range(0, rows, _ROWS_PER_BLOCK):
            hi = min(rows, lo + _ROWS_PER_BLOCK)
            codes = self._block_codes(lo, hi)
            inverse = 1.0 / self.norms[lo:hi]
            for c, (a, b) in enumerate(chunks):
                scores = self._block_dots(queries[a:b], codes, lo, hi) * inverse
                for r, ex in enumerate(exclude[a:b]):
                    inside = [i - lo for i in ex if lo <= i < hi]
                    if inside:
                        scores[r, inside] = float("-inf")
                top, ids = scores.topk(min(k, hi - lo), dim=1)
                ids += lo
                if best[c] is not None:
                    top, order = torch.cat([best[c][0], top], 1).topk(k, dim=1)
                    ids = torch.cat([best[c][1], ids], 1).gather(1, order)
                best[c] = (top, ids)
        if not chunks or best[0] is None:
            empty = torch.empty((queries.shape[0], 0))
            return empty, empty.long()
        return torch.cat([b[0] for b in best]), torch.cat([b[1] for b in best])

    def _unit(self, ids: Sequence[int]) -> Tensor:
        index = torch.tensor(list(ids), dtype=torch.long)
        rows = codecs.dequantize_rows(self.packed.index_select(0, index), self.format, self.dim)
        return rows / self.norms[index].unsqueeze(1)

    def _results(self, scores: Tensor, ids: Tensor) -> list[list[tuple[str, float]]]:
        tokens = self.tokens
        return [
            [(tokens[i], float(s)) for s, i in zip(row_scores, row_ids) if s != float("-inf")]
            for row_scores, row_ids in zip(scores.tolist(), ids.tolist())
        ]

    # ------------------------------------------------------------------ queries

    def most_similar(
        self,
        positive: str | Sequence[str] | None = None,
        negative: str | Sequence[str] | None = None,
        topn: int = 10,
        restrict_vocab: int | None = None,
    ) -> list[tuple[str, float]]:
        """Tokens closest (cosine, on the codes) to the normalized mean of the unit
        ``positive`` rows minus the unit ``negative`` rows; the query tokens are excluded.

        Raises:
            KeyError: an unknown token.
            ValueError: no token given.
        """
        pos, neg = query.key_list(positive), query.key_list(negative)
        if not pos and not neg:
            raise ValueError("most_similar: give at least one positive or negative token")
        ids = [self.vocab[t] for t in pos + neg]
        unit = self._unit(ids)
        signs = torch.tensor([1.0] * len(pos) + [-1.0] * len(neg)).unsqueeze(1)
        mean = query.normalize_rows((unit * signs).sum(0, keepdim=True))
        scores, top = self.top_scores(mean, [ids], topn, restrict_vocab)
        return self._results(scores, top)[0]

    def most_similar_batch(
        self, tokens: Sequence[str], topn: int = 10, restrict_vocab: int | None = None
    ) -> list[list[tuple[str, float]]]:
        """:meth:`most_similar` of each token in ``tokens``, in one pass."""
        ids = [self.vocab[t] for t in tokens]
        scores, top = self.top_scores(self._unit(ids), [[i] for i in ids], topn, restrict_vocab)
        return self._results(scores, top)

    def analogies(
        self, triples: Sequence[tuple[str, str, str]], topn: int = 1, restrict_vocab: int | None = None
    ) -> list[list[tuple[str, float]]]:
        """For each ``(a, b, c)``: the tokens ``d`` with ``a : b = c : d`` (3CosAdd, as
        :meth:`embtable.vectors.Vectors.analogies`), best first; ``a``, ``b``, ``c`` excluded."""
        ids = [[self.vocab[t] for t in triple] for triple in triples]
        if not ids:
            return []
        unit = self._unit([i for triple in ids for i in triple]).reshape(-1, 3, self.dim)
        queries = query.normalize_rows(unit[:, 1] + unit[:, 2] - unit[:, 0])
        scores, top = self.top_scores(queries, ids, topn, restrict_vocab)
        return self._results(scores, top)

    def topn_overlap(self, reference: Any, tokens: Sequence[str], topn: int = 10) -> float:
        """Mean fraction of each token's ``topn`` neighbours (query excluded) that these codes
        share with ``reference`` (a float :class:`~embtable.vectors.Vectors`)."""
        mine = self.most_similar_batch(tokens, topn)
        theirs = reference.most_similar_batch(list(tokens), topn)
        shared = [len({t for t, _ in a} & {t for t, _ in b}) / max(len(b), 1) for a, b in zip(mine, theirs)]
        return sum(shared) / max(len(shared), 1)

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike) -> None:
        """Write a folder: the packed rows and norms, then ``vocab.json`` (the manifest, naming
        the rows file) last.

        The rows go under the file name the current ``vocab.json`` does not use, so a save
        killed at any moment leaves the folder opening as the old vectors or the new ones,
        never new rows under old tokens; the unused file is removed at the end.
        """
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        current = _rows_file(folder)
        name = _FILES[1] if current == _FILES[0] else _FILES[0]
        save_packed(
            folder / name, {"packed": self.packed, "norms": self.norms.float()},
            {"format": FORMAT, "row_format": self.format, "dim": self.dim},
        )
        counts = None if self.vocab.counts is None else self.vocab.counts.tolist()
        manifest = {"format": "embtable.vectors/1", "tokens": self.tokens, "counts": counts,
                    "table": name}  # fmt: skip
        atomic_write_bytes(folder / "vocab.json", json.dumps(manifest).encode())
        with contextlib.suppress(FileNotFoundError):
            (folder / (_FILES[1] if name == _FILES[0] else _FILES[0])).unlink()

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = True) -> QuantizedVectors:
        """Open a folder written by :meth:`save` (``embtable convert --quantize``); the rows
        are memory-mapped (copy-on-write) unless ``mmap=False``.

        Raises:
            FileNotFoundError: the folder has no quantized table or vocabulary.
            ValueError: the files disagree.
        """
        folder = Path(path)
        name = _rows_file(folder)
        if name is None or not (folder / name).is_file():
            raise FileNotFoundError(
                f"QuantizedVectors.load: {os.fspath(path)} needs vocab.json and the rows file it "
                f"names ({name or _FILES[0]}) (written by QuantizedVectors.save or "
                "`embtable convert --quantize`)"
            )
        tensors, meta = load_packed(folder / name, mmap=mmap)
        if meta.get("format") != FORMAT:
            raise ValueError(f"QuantizedVectors.load: {os.fspath(path)} is not {FORMAT} ({meta.get('format')})")
        words = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        vocab = Vocab(words["tokens"], words.get("counts"))
        return cls(vocab, tensors["packed"], meta["row_format"], int(meta["dim"]), tensors["norms"])
