"""``Vectors``: a vocabulary bound to an embedding table, with loaders, savers and queries.

Example:
    >>> import torch
    >>> from embtable.vectors import Vectors
    >>> table = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    >>> vectors = Vectors(["cat", "dog", "car", "tac"], table)
    >>> [(t, round(s, 4)) for t, s in vectors.most_similar("cat", topn=2)]
    [('dog', 0.9939), ('car', 0.0)]
    >>> round(vectors.similarity("cat", "tac"), 4)
    -1.0
    >>> vectors.doesnt_match(["cat", "dog", "tac"])
    'tac'
    >>> vectors["car"]
    tensor([0., 1.])
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from embtable.nn import Embedding
from embtable.vectors import query
from embtable.vectors.gensim_calls import GensimCalls
from embtable.vectors.vocab import Vocab

__all__ = ["Vectors"]

Key = str | tuple[str, float] | Tensor | np.ndarray


def _check_tokens(vocab: Vocab) -> None:
    """``TypeError`` for a token that is not a string, ``ValueError`` for a repeated one.

    A vocabulary a loader has checked already (``Vocab._checked``) is not checked again; else
    distinctness is read off the vocabulary's index (built here once, then kept for lookups)."""
    if vocab._checked:
        return
    tokens = vocab.tokens
    if not set(map(type, tokens)) <= {str}:
        bad = next(i for i, t in enumerate(tokens) if type(t) is not str)
        raise TypeError(f"Vectors: tokens must be strings, got {tokens[bad]!r:.80} at row {bad}")
    if len(vocab.index) != len(tokens):
        seen: set[str] = set()
        duplicate = next(t for t in tokens if t in seen or seen.add(t))
        raise ValueError(
            f"Vectors: token {duplicate!r} appears more than once; tokens must be distinct "
            "(one row per token)"
        )


def _load_dtype(dtype: Any, api: str) -> torch.dtype:
    """``dtype=`` of a loader as a torch dtype: float16, float32 or float64 (torch, NumPy or
    a name)."""
    if isinstance(dtype, torch.dtype):
        found = dtype
    else:
        try:
            found = getattr(torch, np.dtype(dtype).name, None)
        except TypeError:
            found = None
    if found not in (torch.float16, torch.float32, torch.float64):
        raise ValueError(f"{api}: dtype must be float16, float32 or float64, got {dtype!r}")
    return found


_as_list = query.key_list


class Vectors(GensimCalls):
    """Tokens bound to the rows of a table (an :class:`embtable.Embedding` or a 2-D tensor).

    Row ``i`` of the table is the vector of ``vocab.tokens[i]``.  The table is shared,
    not copied: queries see in-place updates (norms are recomputed when the weight's
    version changes).  gensim's other calls (``get_mean_vector``, ``distances``,
    ``closer_than``, ``rank``, ``add_vectors``, ``vectors[key] = row``, ...) come from
    :class:`embtable.vectors.gensim_calls.GensimCalls`.

    Args:
        vocab: a :class:`Vocab` or the tokens in row order.
        table: an ``Embedding`` or a ``(len(vocab), dim)`` tensor (NumPy arrays are wrapped).
        counts: optional token frequencies (ignored when ``vocab`` is a ``Vocab``).

    Raises:
        TypeError: ``table`` is neither an ``Embedding`` nor a tensor; a token is not a string.
        ValueError: the table is not 2-D or its row count differs from the vocabulary size;
            a token appears twice.
    """

    def __init__(
        self,
        vocab: Vocab | Sequence[str],
        table: Embedding | Tensor | np.ndarray,
        counts: Sequence[int] | np.ndarray | None = None,
    ):
        if isinstance(table, np.ndarray):
            table = torch.from_numpy(table)
        if not isinstance(table, (Embedding, Tensor)):
            raise TypeError(
                f"Vectors: table must be an embtable.Embedding or a 2-D tensor, "
                f"got {type(table).__name__}"
            )
        weight = table.weight if isinstance(table, Embedding) else table
        if weight.dim() != 2:
            raise ValueError(f"Vectors: table must be 2-D, got shape {tuple(weight.shape)}")
        if not weight.is_floating_point():
            raise TypeError(f"Vectors: the table must be floating (vectors), got {weight.dtype}")
        if isinstance(vocab, (str, bytes)):
            raise TypeError(f"Vectors: vocab must be a list of tokens, got the string {vocab!r:.80}")
        vocab = vocab if isinstance(vocab, Vocab) else Vocab(vocab, counts)
        _check_tokens(vocab)
        if len(vocab) != weight.shape[0]:
            raise ValueError(
                f"Vectors: the vocabulary has {len(vocab)} tokens but the table has "
                f"{weight.shape[0]} rows; they must match one to one"
            )
        self.vocab = vocab
        self.table = table
        self._norms: Tensor | None = None
        self._norms_key: tuple[int, int] | None = None

    # ------------------------------------------------------------------ basics
    @property
    def weight(self) -> Tensor:
        """The table's ``(num_tokens, dim)`` weight, detached from autograd."""
        weight = self.table.weight if isinstance(self.table, Embedding) else self.table
        return weight.detach()

    @property
    def tokens(self) -> list[str]:
        """Tokens in row order."""
        return self.vocab.tokens

    @property
    def dim(self) -> int:
        """Size of each vector."""
        return self.weight.shape[1]

    def __len__(self) -> int:
        return len(self.vocab)

    def __contains__(self, token: object) -> bool:
        return token in self.vocab

    def __getitem__(self, token: str | Sequence[str]) -> Tensor:
        if isinstance(token, str):
            return self.weight[self.vocab[token]]
        return self.weight[torch.tensor(self.vocab.ids(token), dtype=torch.long)]

    def __repr__(self) -> str:
        return f"Vectors({len(self)} tokens, dim={self.dim}, dtype={self.weight.dtype})"

    def norms(self) -> Tensor:
        """The L2 norm of every row (cached until the weight changes)."""
        weight = self.weight
        key = (weight.data_ptr(), weight._version)
        if self._norms is None or self._norms_key != key:
            self._norms = query.row_norms(weight)
            self._norms_key = key
        return self._norms

    def inv_norms(self) -> Tensor:
        """``1 / norms()`` (cached with it)."""
        norms = self.norms()
        if getattr(self, "_inv_for", None) is not norms:
            self._inv, self._inv_for = 1.0 / norms, norms
        return self._inv

    def unit(self, token: str) -> Tensor:
        """The L2-normalized vector of ``token``."""
        return query.normalize_rows(self[token])

    # ----------------------------------------------------------------- queries
    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two tokens' vectors."""
        ua, ub = self.unit(a), self.unit(b)
        return float(ua @ ub)

    def _combine(self, positive: Any, negative: Any, api: str) -> tuple[list[int], list, list]:
        """Row ids, vectors and weights of positive/negative keys (str, (str, w), vector)."""
        exclude, parts, weights = [], [], []
        norms = None
        for items, default in ((_as_list(positive), 1.0), (_as_list(negative), -1.0)):
            for item in items:
                w = default
                if isinstance(item, tuple):
                    item, w = item
                if isinstance(item, str):
                    i = self.vocab.get(item)
                    if i is None:  # fastText builds it from n-grams; others raise KeyError
                        parts.append(query.normalize_rows(self._oov(item)))
                        weights.append(w)
                        continue
                    exclude.append(i)
                    if norms is None:
                        norms = self.norms()
                    parts.append(self.weight[i].float() / norms[i])
                else:  # a vector is used as given, as gensim does (not normalized)
                    parts.append(self._query_array(item, api))
                weights.append(w)
        if not parts:
            raise ValueError(f"{api}: give at least one positive or negative token or vector")
        return exclude, parts, weights

    def _query_array(self, item: Any, api: str) -> Tensor:
        """A vector given in a query, as float32 ``(dim,)``; ``ValueError`` if it has another size."""
        vector = torch.as_tensor(item, dtype=torch.float32).reshape(-1)
        if vector.numel() != self.dim:
            raise ValueError(
                f"{api}: a query vector must have {self.dim} values, got {vector.numel()}"
            )
        return vector

    def _oov(self, token: str) -> Tensor:
        """The vector of a token outside the vocabulary: ``KeyError`` here (fastText overrides)."""
        raise KeyError(self.vocab.missing_message(token))

    def _query_vector(self, positive: Any, negative: Any, api: str) -> tuple[Tensor, list[int]]:
        exclude, parts, weights = self._combine(positive, negative, api)
        mean = (torch.stack(parts) * torch.tensor(weights).unsqueeze(1)).sum(0)
        return query.normalize_rows(mean), exclude

    def most_similar(
        self,
        positive: Key | Sequence[Key] | None = None,
        negative: Key | Sequence[Key] | None = None,
        topn: int | None = 10,
        restrict_vocab: int | None = None,
    ) -> list[tuple[str, float]] | Tensor:
        """Tokens closest (cosine) to the mean of ``positive`` minus ``negative`` (3CosAdd).

        Keys are tokens, ``(token, weight)`` pairs, vectors (used as given, not normalized)
        or a 2-D array of vectors (one positive per row).  The query tokens themselves are
        excluded; ``restrict_vocab`` searches only the first N rows.  Scores equal gensim's
        ``KeyedVectors.most_similar``; ``topn=None`` returns the score of every row (query
        tokens included) as a float32 tensor, as gensim returns its array.
        """
        return self.most_similar_batch([(positive, negative)], topn, restrict_vocab)[0]

    def most_similar_batch(
        self,
        queries: Sequence[Any],
        topn: int | None = 10,
        restrict_vocab: int | None = None,
    ) -> list[list[tuple[str, float]]] | Tensor:
        """:meth:`most_similar` for many queries at once (one matrix product per block).

        Args:
            queries: each a token, a vector, or a ``(positive, negative)`` pair.
            topn: results per query; ``None``: a ``(len(queries), rows)`` tensor of all scores.
        """
        vectors, excludes = [], []
        for q in queries:
            positive, negative = (
                q
                if isinstance(q, tuple) and len(q) == 2 and not (isinstance(q[1], (int, float)))
                else (q, None)
            )
            v, ex = self._query_vector(positive, negative, "most_similar")
            vectors.append(v)
            excludes.append(ex)
        if topn is None:
            batch = torch.stack(vectors) if vectors else torch.zeros(0, self.dim)
            return query.all_scores(self.weight, self.inv_norms(), batch, restrict_vocab)
        if topn < 1 or not vectors:
            return [[] for _ in queries]
        scores, ids = query.top_scores(
            self.weight, self.inv_norms(), torch.stack(vectors), excludes, topn, restrict_vocab
        )
        return self._results(scores, ids)

    def _results(self, scores: Tensor, ids: Tensor) -> list[list[tuple[str, float]]]:
        tokens = self.vocab.tokens
        return [
            [(tokens[i], s) for i, s in zip(row_ids, row_scores) if s != float("-inf")]
            for row_ids, row_scores in zip(ids.tolist(), scores.tolist())
        ]

    def most_similar_cosmul(
        self,
        positive: Key | Sequence[Key] | None = None,
        negative: Key | Sequence[Key] | None = None,
        topn: int | None = 10,
        restrict_vocab: int | None = None,
    ) -> list[tuple[str, float]] | Tensor:
        """Tokens ranked by 3CosMul (gensim's ``most_similar_cosmul`` formula).

        Vectors are used as given (not normalized), as gensim does.  ``topn=None`` returns
        every row's score as a float32 tensor.  Unlike gensim 4.4, ``restrict_vocab`` is
        honoured.
        """
        exclude, parts, weights = self._combine(positive, negative, "most_similar_cosmul")
        pos = [p for p, w in zip(parts, weights) if w > 0]
        neg = [p for p, w in zip(parts, weights) if w <= 0]
        if not pos:
            raise ValueError("most_similar_cosmul: give at least one positive token or vector")
        empty = torch.zeros(0, self.dim)
        if topn is None:
            rows = len(self) if restrict_vocab is None else min(restrict_vocab, len(self))
            table, inv = self.weight[:rows].float(), self.inv_norms()[:rows]
            negs = [torch.stack(neg) if neg else empty]
            return query.cosmul_scores(table, inv, [torch.stack(pos)], negs)[0]
        if topn < 1:
            return []
        scores, ids = query.top_cosmul(
            self.weight,
            self.inv_norms(),
            [torch.stack(pos)],
            [torch.stack(neg) if neg else empty],
            [exclude],
            topn,
            restrict_vocab,
        )
        return self._results(scores, ids)[0]

    def analogy(
        self, a: str, b: str, c: str, topn: int = 1, method: str = "3cosadd"
    ) -> list[tuple[str, float]]:
        """``a`` is to ``b`` as ``c`` is to ...? (``positive=[b, c], negative=[a]``)."""
        return self.analogies([(a, b, c)], topn=topn, method=method)[0]

    def analogies(
        self,
        triples: Sequence[tuple[str, str, str]],
        topn: int = 1,
        method: str = "3cosadd",
        restrict_vocab: int | None = None,
    ) -> list[list[tuple[str, float]]]:
        """:meth:`analogy` for many ``(a, b, c)`` triples in one pass.

        Args:
            method: ``"3cosadd"`` (vector offset, gensim's ``most_similar``) or
                ``"3cosmul"`` (gensim's ``most_similar_cosmul``).

        Raises:
            ValueError: unknown ``method``.
            KeyError: a token is not in the vocabulary.
        """
        if method not in ("3cosadd", "3cosmul"):
            raise ValueError(f'analogies: method must be "3cosadd" or "3cosmul", got {method!r}')
        ids = [self.vocab.ids(t) for t in triples]
        return self._analogy_ids(ids, topn, method, restrict_vocab)

    def _analogy_ids(self, ids, topn, method, restrict_vocab):
        norms = self.norms()
        flat = torch.tensor(ids, dtype=torch.long).reshape(-1, 3)
        unit = self.weight[flat.reshape(-1)].float() / norms[flat.reshape(-1)].unsqueeze(1)
        unit = unit.reshape(-1, 3, self.dim)
        excludes = [list(t) for t in ids]
        if method == "3cosadd":
            q = query.normalize_rows(unit[:, 1] + unit[:, 2] - unit[:, 0])
            scores, top = query.top_scores(
                self.weight, self.inv_norms(), q, excludes, topn, restrict_vocab
            )
        else:
            scores, top = query.top_cosmul(
                self.weight,
                self.inv_norms(),
                list(unit[:, 1:]),
                list(unit[:, :1]),
                excludes,
                topn,
                restrict_vocab,
            )
        return self._results(scores, top)

    def doesnt_match(self, tokens: Sequence[str]) -> str:
        """The token farthest (cosine) from the normalized mean of all of ``tokens``.

        Unknown tokens raise ``KeyError`` (gensim ignores them with a warning).
        """
        if not tokens:
            raise ValueError("doesnt_match: give at least one token")
        ids = self.vocab.ids(tokens)
        unit = self.weight[torch.tensor(ids)].float() / self.norms()[torch.tensor(ids)][:, None]
        mean = query.normalize_rows(unit.mean(0))
        return tokens[int(torch.argmin(unit @ mean))]

    def nearest(
        self, vector: Tensor | np.ndarray, topn: int = 10, restrict_vocab: int | None = None
    ) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:
        """Tokens closest (cosine) to a vector, or to each row of a ``(Q, dim)`` batch."""
        v = torch.as_tensor(vector, dtype=torch.float32)
        if v.dim() not in (1, 2) or v.shape[-1] != self.dim:
            raise ValueError(
                f"nearest: vector must have shape ({self.dim},) or (Q, {self.dim}), "
                f"got {tuple(v.shape)}"
            )
        batch = query.normalize_rows(v.reshape(-1, self.dim))
        scores, ids = query.top_scores(
            self.weight, self.inv_norms(), batch, [[]] * batch.shape[0], topn, restrict_vocab
        )
        results = self._results(scores, ids)
        return results[0] if v.dim() == 1 else results

    # -------------------------------------------------------------- evaluation
    def evaluate_analogies(self, path: str | os.PathLike, **kwargs: Any):
        """See :func:`embtable.vectors.evaluate.evaluate_analogies`."""
        from embtable.vectors.evaluate import evaluate_analogies

        return evaluate_analogies(self, path, **kwargs)

    def evaluate_pairs(self, path: str | os.PathLike, **kwargs: Any):
        """See :func:`embtable.vectors.evaluate.evaluate_pairs`."""
        from embtable.vectors.evaluate import evaluate_pairs

        return evaluate_pairs(self, path, **kwargs)

    # ------------------------------------------------------------ into a model
    def to_embedding(
        self,
        freeze: bool = True,
        padding_token: str | None = None,
        unk_token: str | None = None,
        **kwargs: Any,
    ) -> Embedding:
        """An :class:`embtable.Embedding` over this table (shared, not copied).

        Args:
            freeze: ``weight.requires_grad = not freeze``.
            padding_token: its row becomes ``padding_idx`` (its values are kept, as with
                ``torch.nn.Embedding.from_pretrained``).
            unk_token: checked to be in the vocabulary and remembered as
                ``vectors.unk_token``, so that :meth:`encode` maps unknown tokens to it.
            **kwargs: ``max_norm``, ``norm_type``, ``scale_grad_by_freq``, ``sparse``.

        Raises:
            KeyError: ``padding_token`` or ``unk_token`` is not in the vocabulary; use
                :func:`embtable.vectors.build_from` to add them.
        """
        padding_idx = None
        for name, token in (("padding_token", padding_token), ("unk_token", unk_token)):
            if token is not None and token not in self.vocab:
                raise KeyError(
                    f"to_embedding: {name} {token!r} is not in the vocabulary; add it with "
                    "embtable.vectors.build_from(vectors, vocab, padding_token=..., unk_token=...)"
                )
        if padding_token is not None:
            padding_idx = self.vocab[padding_token]
        self.unk_token = unk_token
        return Embedding.from_pretrained(
            self.weight, freeze=freeze, padding_idx=padding_idx, **kwargs
        )

    def encode(self, tokens: Iterable[str]) -> Tensor:
        """Token ids as an int64 tensor; unknown tokens map to ``unk_token`` when set."""
        unk = getattr(self, "unk_token", None)
        if unk is None:
            return torch.tensor(self.vocab.ids(tokens), dtype=torch.long)
        fallback = self.vocab[unk]
        index = self.vocab.index
        return torch.tensor([index.get(t, fallback) for t in tokens], dtype=torch.long)

    # ------------------------------------------------------------ file formats
    @classmethod
    def load_word2vec_format(
        cls,
        path: str | os.PathLike,
        binary: bool = False,
        no_header: bool = False,
        limit: int | None = None,
        encoding: str = "utf-8",
        errors: str = "strict",
        progress: bool | None = None,
        *,
        unicode_errors: str = "strict",
        dtype: Any = torch.float32,
        fvocab: str | os.PathLike | None = None,
    ) -> Vectors:
        """Read a word2vec text (``binary=False``) or binary file, gensim-style.

        A header that announces fewer rows than the file has: the first ``count`` rows are
        read (as gensim does) with a warning naming the file and both counts.

        Args:
            binary: the C tool's binary layout.
            no_header: the text file has no ``count dim`` line (GloVe).
            limit: read only the first ``limit`` vectors.
            encoding: of the tokens.
            errors: ``"strict"`` raises on the first bad line; ``"skip"`` logs it (logger
                ``embtable.vectors``) and goes on.
            progress: show a tqdm bar (default: when stderr is a terminal).
            unicode_errors: ``"strict"``, ``"replace"`` or ``"ignore"``, how tokens whose
                bytes do not decode are read (gensim's ``unicode_errors``).
            dtype: of the table: float16, float32 (default) or float64 (values are read to
                float32 precision, then cast).
            fvocab: a ``token count`` file (the C tool's ``-save-vocab``): the counts.

        Raises:
            ValueError: ragged rows, bad header counts, non-numeric values, duplicate tokens
                or undecodable tokens, naming the file and line.
            UnicodeDecodeError: (a ``ValueError``) a token that does not decode with
                ``unicode_errors="strict"`` and ``errors="strict"``.
        """
        from embtable.vectors.io_word2vec import check_unicode_errors, read_fvocab, read_word2vec

        api = "load_word2vec_format"
        torch_dtype = _load_dtype(dtype, api)
        check_unicode_errors(unicode_errors, api)
        counts = None if fvocab is None else read_fvocab(fvocab, encoding, unicode_errors, api)
        tokens, matrix = read_word2vec(
            path,
            binary=binary,
            no_header=no_header,
            limit=limit,
            encoding=encoding,
            errors=errors,
            progress=progress,
            unicode_errors=unicode_errors,
        )
        if counts is not None:
            counts = [counts.get(token, 0) for token in tokens]
        return cls(tokens, torch.from_numpy(matrix).to(torch_dtype), counts)

    def save_word2vec_format(
        self,
        path: str | os.PathLike,
        binary: bool = False,
        write_header: bool = True,
        precision: int | None = None,
        encoding: str = "utf-8",
    ) -> None:
        """Write a word2vec text or binary file (``precision`` significant digits, text)."""
        from embtable.vectors.io_word2vec import write_word2vec

        write_word2vec(
            path,
            self.tokens,
            self.weight.float().numpy(),
            binary=binary,
            header=write_header,
            precision=precision,
            encoding=encoding,
        )

    @classmethod
    def load_glove(
        cls, path: str | os.PathLike, *, dtype: Any = torch.float32, **kwargs: Any
    ) -> Vectors:
        """Read a GloVe text file (no header); keywords as :meth:`load_word2vec_format`
        (``limit``, ``encoding``, ``errors``, ``progress``, ``unicode_errors``, ``dtype``)."""
        from embtable.vectors.io_glove import read_glove

        torch_dtype = _load_dtype(dtype, "load_glove")
        tokens, matrix = read_glove(path, **kwargs)
        return cls(tokens, torch.from_numpy(matrix).to(torch_dtype))

    def save_glove(self, path: str | os.PathLike, precision: int | None = None) -> None:
        """Write a GloVe text file (no header)."""
        from embtable.vectors.io_glove import write_glove

        write_glove(path, self.tokens, self.weight.float().numpy(), precision=precision)

    @classmethod
    def load_fasttext(
        cls, path: str | os.PathLike, *, dtype: Any = torch.float32, **kwargs: Any
    ) -> Vectors:
        """Read a fastText ``.vec`` file; keywords as :meth:`load_word2vec_format`.

        A path ending in ``.bin`` is read by :meth:`load_facebook_vectors` (keywords
        ``encoding``, ``unicode_errors``, ``dtype``).
        """
        if os.fspath(path).endswith(".bin"):
            return cls.load_facebook_vectors(path, dtype=dtype, **kwargs)
        from embtable.vectors.io_glove import read_fasttext_vec

        torch_dtype = _load_dtype(dtype, "load_fasttext")
        tokens, matrix = read_fasttext_vec(path, **kwargs)
        return cls(tokens, torch.from_numpy(matrix).to(torch_dtype))

    @staticmethod
    def load_facebook_vectors(
        path: str | os.PathLike,
        *,
        encoding: str = "utf-8",
        unicode_errors: str = "strict",
        dtype: Any = torch.float32,
    ) -> Any:
        """A fastText ``.bin`` model's vectors, with vectors for unknown words built from
        character n-grams (gensim's ``load_facebook_vectors``); no gensim needed.

        Returns:
            A :class:`embtable.vectors.FastTextVectors`.

        See :func:`embtable.vectors.io_fasttext.read_facebook_bin`.
        """
        from embtable.vectors.io_fasttext import FastTextVectors

        return FastTextVectors.load(
            path, encoding=encoding, unicode_errors=unicode_errors, dtype=dtype
        )

    @classmethod
    def load_hf(cls, path: str | os.PathLike, tensor_name: str | None = None) -> Vectors:
        """The input-embedding table and vocabulary of a Hugging Face model folder or file.

        See :func:`embtable.vectors.io_hf.read_hf`.
        """
        from embtable.vectors.io_hf import read_hf

        tokens, weight = read_hf(path, tensor_name=tensor_name)
        return cls(tokens, weight)

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True) -> Vectors:
        """Open the native format written by :meth:`save` (memory-mapped by default)."""
        from embtable.vectors.io_native import read_native

        vocab, weight = read_native(path, mmap=mmap)
        return cls(vocab, weight)

    def quantize(self, fmt: str = "int8", *, search: str = "minmax"):
        """The vectors as row-wise codes (``"int8"``, ``"int4"``, ``"int2"``, ``"fp16"``,
        ``"bf16"``) with neighbour and analogy queries on the codes: a
        :class:`embtable.vectors.quantized.QuantizedVectors` sharing this vocabulary."""
        from embtable.vectors.quantized import QuantizedVectors

        return QuantizedVectors.from_vectors(self, fmt, search=search)

    def save(self, path: str | os.PathLike, format: str = "safetensors") -> None:
        """Write the native format: a folder with the table and ``vocab.json``.

        See :func:`embtable.vectors.io_native.write_native`.
        """
        from embtable.vectors.io_native import write_native

        write_native(path, self.vocab, self.weight, format=format)

    @classmethod
    def from_gensim(cls, keyed_vectors: Any) -> Vectors:
        """Wrap a gensim ``KeyedVectors`` (its array is shared, not copied)."""
        from embtable.vectors.io_gensim import from_gensim

        vocab, weight = from_gensim(keyed_vectors)
        return cls(vocab, weight)

    def to_gensim(self) -> Any:
        """A gensim ``KeyedVectors`` holding a copy of this table (needs gensim)."""
        from embtable.vectors.io_gensim import to_gensim

        return to_gensim(self.vocab, self.weight)
