"""Metrics for recommenders: RMSE of ratings, Recall@k and NDCG@k of top-k lists.

Example:
    >>> import torch
    >>> round(rmse(torch.tensor([3.0, 4.0]), torch.tensor([4.0, 4.0])), 4)
    0.7071
    >>> scores = torch.tensor([[0.9, 0.8, 0.1, 0.5], [0.1, 0.2, 0.3, 0.4]])
    >>> ranking_metrics(scores, test_users=torch.tensor([0, 1]), test_items=torch.tensor([1, 0]),
    ...                 k=2, train_users=torch.tensor([0]), train_items=torch.tensor([0]))
    {'recall': 0.5, 'ndcg': 0.5, 'users': 2}
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["mae", "ranking_metrics", "rmse"]


def rmse(predicted: Tensor, target: Tensor) -> float:
    """Root mean squared error of two equal-shape tensors."""
    if predicted.shape != target.shape:
        raise ValueError(
            f"rmse: predicted has shape {tuple(predicted.shape)} but target has {tuple(target.shape)}"
        )
    return float(torch.sqrt(torch.mean((predicted.double() - target.double()) ** 2)))


def mae(predicted: Tensor, target: Tensor) -> float:
    """Mean absolute error of two equal-shape tensors.

    Example:
        >>> import torch
        >>> mae(torch.tensor([3.0, 5.0]), torch.tensor([4.0, 4.5]))
        0.75
    """
    if predicted.shape != target.shape:
        raise ValueError(
            f"mae: predicted has shape {tuple(predicted.shape)} but target has {tuple(target.shape)}"
        )
    return float(torch.mean((predicted.double() - target.double()).abs()))


def ranking_metrics(
    scores: Tensor,
    *,
    test_users: Tensor,
    test_items: Tensor,
    k: int = 10,
    train_users: Tensor | None = None,
    train_items: Tensor | None = None,
) -> dict[str, float]:
    """Mean Recall@k and NDCG@k over the users that have at least one relevant test item.

    Each user's items are ranked by ``scores`` (higher first); items the user met in
    training are removed from the ranking.  Recall@k = hits in the top k / relevant items;
    NDCG@k = DCG of the hits (gain ``1 / log2(rank + 1)``) / the best possible DCG.

    Args:
        scores: ``(num_users, num_items)`` scores.
        test_users, test_items: the relevant ``(user, item)`` pairs (e.g. test ratings >= 4).
        k: list length.
        train_users, train_items: pairs to exclude from the rankings.

    Returns:
        ``{"recall": ..., "ndcg": ..., "users": number of users evaluated}``.
    """
    scores = scores.detach().clone().float()
    if train_users is not None and train_items is not None:
        scores[train_users, train_items] = -math.inf
    users = torch.unique(test_users)
    if users.numel() == 0:
        return {"recall": 0.0, "ndcg": 0.0, "users": 0}
    relevant = torch.zeros_like(scores, dtype=torch.bool)
    relevant[test_users, test_items] = True
    top = torch.topk(scores[users], k=min(k, scores.shape[1]), dim=1).indices
    hits = torch.gather(relevant[users], 1, top).double()
    n_relevant = relevant[users].sum(dim=1).double()
    discounts = 1.0 / torch.log2(torch.arange(2, top.shape[1] + 2, dtype=torch.float64))
    dcg = (hits * discounts).sum(dim=1)
    ideal = torch.cumsum(discounts, 0)[(n_relevant.clamp(max=top.shape[1]) - 1).long()]
    return {
        "recall": round(float((hits.sum(dim=1) / n_relevant).mean()), 6),
        "ndcg": round(float((dcg / ideal).mean()), 6),
        "users": int(users.numel()),
    }
