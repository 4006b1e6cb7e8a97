"""Similarity queries over a table, batched: many queries share one matrix product.

Scores follow gensim's definitions so results can be compared with it:

- ``most_similar`` (3CosAdd): the query is the unit-normalized weighted mean of the
  unit-normalized positive rows (weight ``+1``) and negative rows (weight ``-1``);
  vectors given in a query are used as given (not normalized), as gensim does;
  the score of row ``i`` is ``cos(row_i, query)``.
- ``most_similar_cosmul`` (3CosMul, Levy & Goldberg 2014, eq. 4 with similarities
  shifted to [0, 1]): ``prod_p (1 + row_i . p / |row_i|) / 2  /
  (prod_n (1 + row_i . n / |row_i|) / 2 + 1e-6)`` with ``p`` / ``n`` the unit rows of
  query tokens and query vectors as given (so a vector of norm 3 scores up to 2.0).

Query rows are excluded from the results.  Work is split into blocks of queries
so that a block's score matrix stays under ~64 MB.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "all_scores",
    "key_list",
    "cosine_similarities",
    "cosmul_scores",
    "normalize_rows",
    "row_norms",
    "top_cosmul",
    "top_scores",
]

_BLOCK_ELEMENTS = 1 << 24
_QUERY_BLOCK = 256


def key_list(items: Any) -> list:
    """Query keys as a list: one key (a token, a ``(token, weight)`` pair, a 1-D vector)
    becomes ``[key]``, a 2-D array one vector per row, ``None`` nothing."""
    if items is None:
        return []
    if isinstance(items, (Tensor, np.ndarray)):
        return list(items) if items.ndim == 2 else [items]  # a 2-D array: one vector per row
    if isinstance(items, str):
        return [items]
    if isinstance(items, tuple) and len(items) == 2 and isinstance(items[1], (int, float)):
        return [items]  # one weighted key: (token, weight)
    return list(items)


def row_norms(weight: Tensor) -> Tensor:
    """L2 norm of every row, float32 (zero rows get norm 1 so they score 0)."""
    norms = torch.linalg.vector_norm(weight.float(), dim=1)
    return torch.where(norms > 0, norms, torch.ones_like(norms))


def normalize_rows(rows: Tensor) -> Tensor:
    """Rows divided by their L2 norm (zero rows stay zero)."""
    rows = rows.float()
    norms = torch.linalg.vector_norm(rows, dim=-1, keepdim=True)
    return rows / torch.where(norms > 0, norms, torch.ones_like(norms))


def _mask(
    scores: Tensor, exclude: Sequence[Sequence[int]], start: int = 0, stop: int | None = None
) -> None:
    """``scores[r, i - start] = -inf`` for every id ``start <= i < stop`` in ``exclude[r]``."""
    stop = start + scores.shape[1] if stop is None else stop
    pairs = [(r, i - start) for r, ex in enumerate(exclude) for i in ex if start <= i < stop]
    if pairs:
        index = torch.tensor(pairs, dtype=torch.long)
        scores[index[:, 0], index[:, 1]] = float("-inf")


def _top_one(
    table: np.ndarray, inv: np.ndarray, q: np.ndarray, exclude: Sequence[int], k: int
) -> tuple[Tensor, Tensor]:
    """One query on a CPU float32 table, all in NumPy: its GEMV is faster than torch's
    here, and no torch op runs whose OpenMP threads would spin against BLAS's."""
    scores = np.dot(table, q)
    scores *= inv
    ex = [i for i in exclude if i < scores.shape[0]]
    scores[ex] = -np.inf
    part = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[0] else np.arange(k)
    order = part[np.argsort(-scores[part], kind="stable")]
    return torch.from_numpy(scores[order][None]), torch.from_numpy(order[None].astype(np.int64))


def top_scores(
    weight: Tensor,
    inv_norms: Tensor,
    queries: Tensor,
    exclude: Sequence[Sequence[int]],
    topn: int,
    restrict: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Best ``topn`` rows by cosine with each query, skipping each query's ``exclude`` ids.

    Queries go in blocks of up to 256 against tiles of the table (at most ~64 MB of
    scores at a time); each tile's best ``topn`` are merged into a running best.

    Returns:
        ``(scores, ids)``, each ``(Q, k)`` with ``k = min(topn, rows - excluded)``; scores
        are float32 cosines, best first.
    """
    rows = weight.shape[0] if restrict is None else min(restrict, weight.shape[0])
    k = min(topn, rows)
    if queries.shape[0] == 1 and weight.dtype == torch.float32 and weight.device.type == "cpu":
        table, inv = weight[:rows].numpy(), inv_norms[:rows].numpy()
        return _top_one(table, inv, queries[0].numpy(), exclude[0], k)
    q_step = min(_QUERY_BLOCK, max(1, queries.shape[0]))
    r_step = max(k, _BLOCK_ELEMENTS // q_step)
    all_scores, all_ids = [], []
    for lo in range(0, queries.shape[0], q_step):
        q = queries[lo : lo + q_step]
        ex = exclude[lo : lo + q.shape[0]]
        best = ids = None
        for r0 in range(0, rows, r_step):
            r1 = min(rows, r0 + r_step)
            scores = q @ weight[r0:r1].float().T
            scores *= inv_norms[r0:r1]
            _mask(scores, ex, r0, r1)
            top, idx = torch.topk(scores, min(k, r1 - r0), dim=1)
            idx += r0
            if best is None:
                best, ids = top, idx
            else:
                merged, pick = torch.topk(torch.cat([best, top], 1), k, dim=1)
                best, ids = merged, torch.gather(torch.cat([ids, idx], 1), 1, pick)
        all_scores.append(best)
        all_ids.append(ids)
    return torch.cat(all_scores), torch.cat(all_ids)


def all_scores(
    weight: Tensor, inv_norms: Tensor, queries: Tensor, restrict: int | None = None
) -> Tensor:
    """Cosine of every row (the first ``restrict`` ones) with each query: ``(Q, rows)``.

    ``queries`` must be unit rows; nothing is excluded (gensim's ``topn=None``).
    """
    rows = weight.shape[0] if restrict is None else min(restrict, weight.shape[0])
    return (queries @ weight[:rows].float().T) * inv_norms[:rows]


def cosmul_scores(
    table: Tensor, inv: Tensor, positive: Sequence[Tensor], negative: Sequence[Tensor]
) -> Tensor:
    """3CosMul score of every row of ``table`` for each query: ``(Q, rows)``.

    Args:
        table: ``(rows, dim)`` float32; ``inv``: ``1 / norm`` of each row.
        positive, negative: per query, a ``(P, dim)`` / ``(N, dim)`` stack of query vectors.
    """
    stacked = torch.cat([*positive, *negative])
    shifted = (1 + (stacked @ table.T) * inv) / 2
    sizes = [p.shape[0] for p in positive] + [n.shape[0] for n in negative]
    parts = torch.split(shifted, sizes)
    n_pos = len(positive)
    return torch.stack([parts[q].prod(0) / (parts[n_pos + q].prod(0) + 1e-6) for q in range(n_pos)])


def top_cosmul(
    weight: Tensor,
    inv_norms: Tensor,
    positive: Sequence[Tensor],
    negative: Sequence[Tensor],
    exclude: Sequence[Sequence[int]],
    topn: int,
    restrict: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Best ``topn`` rows by 3CosMul for each query.

    Args:
        positive, negative: per query, a ``(P, dim)`` / ``(N, dim)`` stack of query vectors
            (unit rows for tokens, vectors as given).
        exclude: per query, the ids to leave out.

    Returns:
        ``(scores, ids)`` as in :func:`top_scores`.
    """
    rows = weight.shape[0] if restrict is None else min(restrict, weight.shape[0])
    table = weight[:rows].float()
    inv = inv_norms[:rows]
    k = min(topn, rows)
    all_scores, all_ids = [], []
    step = max(1, _BLOCK_ELEMENTS // (4 * max(rows, 1)))
    for lo in range(0, len(positive), step):
        pos, neg = positive[lo : lo + step], negative[lo : lo + step]
        scores = cosmul_scores(table, inv, pos, neg)
        _mask(scores, exclude[lo : lo + len(pos)])
        best, idx = torch.topk(scores, k, dim=1)
        all_scores.append(best)
        all_ids.append(idx)
    return torch.cat(all_scores), torch.cat(all_ids)


def cosine_similarities(vector: Tensor, vectors: Tensor) -> Tensor:
    """Cosine of ``vector`` ``(dim,)`` with each row of ``vectors`` ``(n, dim)``, float32.

    As gensim's ``KeyedVectors.cosine_similarities`` (``dot / (|v| |row|)``), except that a
    zero vector or row scores 0 instead of NaN.
    """
    v = vector.float().reshape(-1)
    rows = vectors.float().reshape(-1, v.shape[0])
    return normalize_rows(rows) @ normalize_rows(v)
