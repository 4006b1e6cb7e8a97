"""Evaluation splits that keep the test data out of every choice.

- :func:`kfold_indices`: K shuffled folds, each example tested exactly once, built exactly as
  Surprise's ``KFold(n_splits, random_state=seed, shuffle=True)`` builds them (a NumPy
  ``RandomState(seed)`` shuffles ``arange(n)``; fold ``i`` is the ``i``-th consecutive slice,
  the first ``n % n_splits`` folds one longer), so embtable and Surprise score the same folds.
- :func:`holdout_indices`: a validation part carved from a *training* index set only; the
  model's settings, early stopping and "keep the best epoch" are decided on it, and the test
  part is scored once, at the end.

Example:
    >>> from embtable.models.crossval import holdout_indices, kfold_indices
    >>> folds = kfold_indices(10, n_splits=3, seed=0)
    >>> [len(test) for _, test in folds]
    [4, 3, 3]
    >>> sorted(int(i) for _, test in folds for i in test) == list(range(10))
    True
    >>> train, test = folds[0]
    >>> fit, valid = holdout_indices(train, 0.25, seed=0)
    >>> len(fit), len(valid), set(valid.tolist()) <= set(train.tolist())
    (4, 2, True)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["holdout_indices", "kfold_indices"]


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def kfold_indices(n: int, n_splits: int = 5, *, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """``n_splits`` ``(train_index, test_index)`` pairs over ``n`` examples, as Surprise's KFold.

    Args:
        n: number of examples (ratings).
        n_splits: number of folds, ``2 <= n_splits <= n``.
        seed: seeds the shuffle (NumPy ``RandomState``, as Surprise's ``random_state``).

    Returns:
        A list of ``n_splits`` pairs of int64 tensors; the test parts are disjoint and cover
        ``range(n)``; each training part is the rest, sorted.

    Raises:
        ValueError: ``n_splits`` outside ``[2, n]``.
        TypeError: ``n``, ``n_splits`` or ``seed`` is not an int.
    """
    for name, value in (("n", n), ("n_splits", n_splits), ("seed", seed)):
        if not _is_int(value):
            raise TypeError(f"kfold_indices: {name} must be an int, got {value!r}")
    if not 2 <= n_splits <= n:
        raise ValueError(
            f"kfold_indices: n_splits must lie in [2, n] = [2, {n}], got {n_splits}"
        )
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    folds, start = [], 0
    for fold in range(n_splits):
        stop = start + n // n_splits + (1 if fold < n % n_splits else 0)
        test = torch.from_numpy(order[start:stop].copy()).long()
        mask = torch.ones(n, dtype=torch.bool)
        mask[test] = False
        folds.append((torch.nonzero(mask).flatten(), test))
        start = stop
    return folds


def holdout_indices(indices: Tensor, fraction: float, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Split ``indices`` (a training part) into ``(fit, valid)``: a random ``fraction`` for
    validation, rounded to the nearest count, at least one example on each side.

    Args:
        indices: 1-D int64 tensor of example indices (the training part only).
        fraction: in ``(0, 1)``.
        seed: the same seed gives the same split.

    Returns:
        Two sorted int64 tensors, disjoint, whose union is ``indices``.

    Raises:
        ValueError: ``fraction`` outside ``(0, 1)`` or fewer than 2 indices.
    """
    if not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout_indices: fraction must lie in (0, 1), got {fraction!r}")
    if indices.dim() != 1 or indices.numel() < 2:
        raise ValueError(
            f"holdout_indices: need a 1-D index tensor of at least 2 entries, got shape "
            f"{tuple(indices.shape)}"
        )
    n = indices.numel()
    n_valid = min(max(round(n * fraction), 1), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    valid = indices[order[:n_valid]].sort().values
    fit = indices[order[n_valid:]].sort().values
    return fit, valid
