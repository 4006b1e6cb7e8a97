"""gensim's ``KeyedVectors`` calls beyond the queries: mean vectors, distances, ranks, and
a growing table (``add_vectors``, ``vectors[key] = row``), as a mixin of
:class:`embtable.vectors.Vectors`.

Each call follows gensim 4.4's definition, so that code moved from gensim gets the same
answers; tensors stand where gensim returns NumPy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from embtable.nn import Embedding
from embtable.vectors import query

__all__ = ["GensimCalls"]


class GensimCalls:
    """gensim-style calls of :class:`embtable.vectors.Vectors` (needs its ``vocab``,
    ``table``, ``weight``, ``dim``, ``__getitem__``, ``similarity``, ``_oov`` and
    ``_query_array``)."""

    def _key_rows(self, keys: Sequence[Any], api: str) -> list[Tensor | None]:
        """Each key's raw float32 vector (tokens, OOV tokens of fastText, vectors); None if
        the token is unknown."""
        out: list[Tensor | None] = []
        for key in keys:
            if isinstance(key, str):
                i = self.vocab.get(key)
                if i is not None:
                    out.append(self.weight[i].float())
                    continue
                try:
                    out.append(self._oov(key).float())
                except KeyError:
                    out.append(None)
            else:
                out.append(self._query_array(key, api))
        return out

    def get_mean_vector(
        self,
        keys: Sequence[Any],
        weights: Sequence[float] | np.ndarray | Tensor | None = None,
        pre_normalize: bool = True,
        post_normalize: bool = False,
        ignore_missing: bool = True,
    ) -> Tensor:
        """The weighted mean of the keys' vectors, as gensim's ``get_mean_vector``.

        ``sum_k w_k x_k / sum_k |w_k|`` over the keys found, where ``x_k`` is a token's row
        (unit length when ``pre_normalize``) or a vector as given; the mean is scaled to
        unit length when ``post_normalize``.

        Args:
            keys: tokens and/or vectors (a 2-D array: one vector per row).
            weights: one per key (default 1).
            ignore_missing: skip unknown tokens (else ``KeyError``).

        Returns:
            A float32 ``(dim,)`` tensor (zeros when no key was found).

        Raises:
            ValueError: no keys, or ``weights`` of another length than ``keys``.
            KeyError: an unknown token with ``ignore_missing=False``.

        Example:
            >>> from embtable.vectors import Vectors
            >>> v = Vectors(["a", "b"], torch.tensor([[3.0, 0.0], [0.0, 1.0]]))
            >>> v.get_mean_vector(["a", "b"], weights=[1.0, 3.0])
            tensor([0.2500, 0.7500])
        """
        keys = query.key_list(keys)
        if not keys:
            raise ValueError("get_mean_vector: give at least one key")
        w = torch.ones(len(keys)) if weights is None else torch.as_tensor(weights).float()
        if w.reshape(-1).shape[0] != len(keys):
            raise ValueError(
                f"get_mean_vector: weights must have one entry per key ({len(keys)}), "
                f"got shape {tuple(w.shape)}"
            )
        w = w.reshape(-1)
        rows = self._key_rows(keys, "get_mean_vector")
        used = []
        for key, row in zip(keys, rows):
            if row is None and not ignore_missing:
                raise KeyError(self.vocab.missing_message(key))
            used.append(row is not None)
        mean = torch.zeros(self.dim)
        if any(used):
            picked = [
                query.normalize_rows(r) if pre_normalize and isinstance(k, str) else r
                for k, r, u in zip(keys, rows, used)
                if u
            ]
            wu = w[torch.tensor(used)]
            mean = (torch.stack(picked) * wu[:, None]).sum(0) / wu.abs().sum()
        return query.normalize_rows(mean) if post_normalize else mean

    def n_similarity(self, ws1: Sequence[str], ws2: Sequence[str]) -> float:
        """Cosine of the plain means of two sets of tokens (gensim's ``n_similarity``).

        Unknown tokens are skipped, as in gensim.

        Raises:
            ValueError: either set is empty (gensim raises ``ZeroDivisionError``).

        Example:
            >>> from embtable.vectors import Vectors
            >>> v = Vectors(["a", "b", "c"], torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
            >>> round(v.n_similarity(["a", "b"], ["c"]), 4)
            1.0
        """
        if not (len(ws1) and len(ws2)):
            raise ValueError("n_similarity: both ws1 and ws2 need at least one token")
        m1 = self.get_mean_vector(ws1, pre_normalize=False)
        m2 = self.get_mean_vector(ws2, pre_normalize=False)
        return float(query.normalize_rows(m1) @ query.normalize_rows(m2))

    @staticmethod
    def cosine_similarities(vector_1: Tensor | np.ndarray, vectors_all: Any) -> Tensor:
        """Cosine of ``vector_1`` with each row of ``vectors_all`` (a float32 tensor).

        Example:
            >>> from embtable.vectors import Vectors
            >>> Vectors.cosine_similarities(torch.tensor([1.0, 0.0]),
            ...                             torch.tensor([[2.0, 0.0], [1.0, 1.0]]))
            tensor([1.0000, 0.7071])
        """
        others = torch.as_tensor(
            np.asarray(vectors_all) if isinstance(vectors_all, list) else vectors_all
        )
        return query.cosine_similarities(torch.as_tensor(vector_1), others)

    def distances(self, word_or_vector: Any, other_words: Sequence[str] = ()) -> Tensor:
        """Cosine distances ``1 - cos`` from a token or vector to ``other_words`` (default:
        every row, itself included), as gensim's ``distances``; a float32 tensor.

        Example:
            >>> from embtable.vectors import Vectors
            >>> v = Vectors(["a", "b"], torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
            >>> v.distances("a")
            tensor([0., 1.])
        """
        if isinstance(word_or_vector, str):
            vector = self[word_or_vector]
        else:
            vector = self._query_array(word_or_vector, "distances")
        others = self[list(other_words)] if len(other_words) else self.weight
        return 1 - query.cosine_similarities(vector, others)

    def distance(self, w1: str, w2: str) -> float:
        """``1 - similarity(w1, w2)``."""
        return 1 - self.similarity(w1, w2)

    def closer_than(self, key1: str, key2: str) -> list[str]:
        """Tokens closer (cosine) to ``key1`` than ``key2`` is, ``key1`` left out, in row order.

        Example:
            >>> from embtable.vectors import Vectors
            >>> v = Vectors(["a", "b", "c"], torch.tensor([[1.0, 0.0], [1.0, 0.2], [0.0, 1.0]]))
            >>> v.closer_than("a", "c"), v.rank("a", "c")
            (['b'], 2)
        """
        i1, i2 = self.vocab[key1], self.vocab[key2]
        dist = self.distances(key1)
        closer = dist < dist[i2]
        closer[i1] = False
        tokens = self.vocab.tokens
        return [tokens[i] for i in torch.nonzero(closer).flatten().tolist()]

    def rank(self, key1: str, key2: str) -> int:
        """``len(closer_than(key1, key2)) + 1``: 1 for the nearest token (gensim's ``rank``)."""
        return len(self.closer_than(key1, key2)) + 1

    def most_similar_to_given(self, key1: str, keys_list: Sequence[str]) -> str:
        """The token of ``keys_list`` most similar to ``key1``."""
        if not keys_list:
            raise ValueError("most_similar_to_given: keys_list is empty")
        sims = query.cosine_similarities(self[key1], self[list(keys_list)])
        return keys_list[int(torch.argmax(sims))]

    # ---------------------------------------------------------- growing the table
    def add_vectors(
        self,
        keys: str | Sequence[str],
        weights: Tensor | np.ndarray | Sequence[Any],
        replace: bool = False,
    ) -> None:
        """Append tokens and their rows; the vocabulary and the table grow together.

        Tokens already present keep their row unless ``replace``; a token given twice
        takes its last row.  Rows are cast to the table's dtype.  A tensor table grows
        with spare capacity (amortized O(1) per row; it is no longer shared with the
        tensor given at construction); an ``Embedding`` gets a new, larger weight
        (rebuild optimizers that held the old one).

        Raises:
            TypeError: a key is not a string.
            ValueError: ``weights`` is not ``(len(keys), dim)`` (or ``(dim,)`` for one key).

        Example:
            >>> from embtable.vectors import Vectors
            >>> v = Vectors(["a"], torch.tensor([[1.0, 0.0]]))
            >>> v.add_vectors(["b", "a"], [[0.0, 1.0], [5.0, 5.0]])
            >>> v.tokens, v["a"]
            (['a', 'b'], tensor([1., 0.]))
            >>> v["a"] = [2.0, 2.0]
            >>> v["a"]
            tensor([2., 2.])
        """
        single = isinstance(keys, str)
        keys = [keys] if single else list(keys)
        for key in keys:
            if not isinstance(key, str):
                raise TypeError(f"add_vectors: keys must be strings, got {type(key).__name__}")
        rows = torch.as_tensor(np.asarray(weights) if isinstance(weights, list) else weights)
        if single or (rows.dim() == 1 and len(keys) == 1):
            rows = rows.reshape(1, -1)
        if rows.dim() != 2 or rows.shape != (len(keys), self.dim):
            raise ValueError(
                f"add_vectors: weights must have shape ({len(keys)}, {self.dim}), "
                f"got {tuple(rows.shape)}"
            )
        rows = rows.to(self.weight.dtype)
        index = self.vocab.index
        new: dict[str, int] = {}
        update: dict[int, int] = {}
        for r, key in enumerate(keys):
            i = index.get(key)
            if i is None:
                new[key] = r
            elif replace:
                update[i] = r
        if new:
            self._grow(rows[list(new.values())])
            self.vocab.append(list(new))
        if update:
            with torch.no_grad():
                weight = self.table.weight if isinstance(self.table, Embedding) else self.table
                weight[list(update)] = rows[list(update.values())]
        self._norms = None

    def add_vector(self, key: str, vector: Tensor | np.ndarray | Sequence[float]) -> int:
        """Add one token (kept if present, as gensim's ``add_vector``); returns its row."""
        self.add_vectors([key], torch.as_tensor(np.asarray(vector)).reshape(1, -1))
        return self.vocab[key]

    def __setitem__(self, keys: str | Sequence[str], weights: Any) -> None:
        """``vectors[key] = row`` (or lists of both): add or replace rows, as gensim."""
        self.add_vectors(keys, weights, replace=True)

    def _grow(self, rows: Tensor) -> None:
        """Append ``rows`` to the table."""
        n, k = len(self), rows.shape[0]
        if isinstance(self.table, Embedding):
            old = self.table.weight
            with torch.no_grad():
                grown = torch.cat([old.detach(), rows.to(old.device)])
            self.table.weight = torch.nn.Parameter(grown, requires_grad=old.requires_grad)
            self.table.num_embeddings = n + k
            return
        buffer = getattr(self, "_buffer", None)
        if buffer is None or self.table.data_ptr() != buffer.data_ptr() or buffer.shape[0] < n + k:
            spare = max(k, n // 8, 16)
            buffer = self.table.new_empty((n + spare, self.dim))
            buffer[:n] = self.table
            self._buffer = buffer
        buffer[n : n + k] = rows.to(buffer.device)
        self.table = buffer[: n + k]

    # ------------------------------------------------------------- less common calls
    def relative_cosine_similarity(self, wa: str, wb: str, topn: int = 10) -> float:
        """``similarity(wa, wb)`` over the sum of the ``topn`` scores of
        ``most_similar(wa)`` (Leeuwenberg et al.'s synonym measure, gensim's definition).

        Raises:
            ValueError: ``most_similar(wa, topn)`` finds nothing.

        Example:
            >>> from embtable.vectors import Vectors
            >>> v = Vectors(["a", "b", "c"], torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]))
            >>> round(v.relative_cosine_similarity("a", "b", topn=2), 4)
            1.0
        """
        sims = self.most_similar(wa, topn=topn)
        if not sims:
            raise ValueError(
                f"relative_cosine_similarity: most_similar({wa!r}, topn={topn}) found no token"
            )
        return self.similarity(wa, wb) / sum(s for _, s in sims)

    def vectors_for_all(
        self, keys: Sequence[str], allow_inference: bool = True, copy_vecattrs: bool = False
    ) -> Any:
        """A new :class:`~embtable.vectors.Vectors` (a copy) with the keys found, in their
        order, duplicates dropped (gensim's ``vectors_for_all``).

        Args:
            allow_inference: keep unknown words that the vectors can build (fastText).
            copy_vecattrs: copy the counts (else the new vocabulary has none).

        Example:
            >>> from embtable.vectors import Vectors
            >>> v = Vectors(["a", "b"], torch.tensor([[1.0, 0.0], [0.0, 1.0]]), counts=[5, 3])
            >>> w = v.vectors_for_all(["b", "zzz", "b"], copy_vecattrs=True)
            >>> w.tokens, w.vocab.count("b")
            (['b'], 3)
        """
        from embtable.vectors.vectors import Vectors

        found, seen = [], set()
        for key in keys:
            if key in seen:
                continue
            seen.add(key)
            if key in self.vocab:
                found.append(key)
            elif allow_inference and isinstance(key, str):
                try:
                    self._oov(key)
                    found.append(key)
                except KeyError:
                    pass
        rows = self[found].clone() if found else self.weight[:0].clone()
        counts = None
        if copy_vecattrs and self.vocab.counts is not None:
            counts = [self.vocab.count(k) if k in self.vocab else 0 for k in found]
        return Vectors(found, rows, counts)
