"""Training loop for :class:`~embtable.models.MatrixFactorization` on explicit ratings.

Loss per mini-batch: mean squared error plus ``l2`` times the mean squared norm of the
tower vectors and biases looked up for the batch.  The penalty only touches the rows
of the batch, so it works with row-sparse optimizers (dense weight decay would shrink
every row on every step).

Optimizers (``FitConfig.optimizer``):

- ``"fused"``: embtable's fused row-sparse Adam (``embtable.optim.fuse``), the
  gradient of a table is never materialized;
- ``"dense"``: ``torch.optim.Adam`` on dense gradients (what most code does);
- ``"sparse"``: the tables emit sparse gradients, ``torch.optim.SparseAdam`` updates them.

Example:
    >>> import torch
    >>> from embtable.models import MatrixFactorization
    >>> from embtable.models.fit import FitConfig, fit_ratings
    >>> _ = torch.manual_seed(0)
    >>> users, items = torch.randint(0, 20, (400,)), torch.randint(0, 30, (400,))
    >>> ratings = ((users % 5) + (items % 3)).float().clamp(1, 5)
    >>> model = MatrixFactorization(20, 30, 4, global_mean=float(ratings.mean()))
    >>> history = fit_ratings(model, users, items, ratings,
    ...                       config=FitConfig(epochs=3, batch_size=50, lr=0.05, optimizer="dense"))
    >>> history[-1].loss < history[0].loss
    True
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from embtable.models.metrics import rmse
from embtable.models.recsys import MatrixFactorization

__all__ = [
    "EpochStats", "FitConfig", "best_epoch", "fit_ratings", "make_optimizer", "predict_ratings", "train_step",
]  # fmt: skip

FeatureFn = Callable[[Tensor, Tensor], Mapping[str, Tensor]]
_OPTIMIZERS = ("fused", "dense", "sparse")


@dataclass(frozen=True, kw_only=True)
class FitConfig:
    """Settings of :func:`fit_ratings`.

    Args:
        epochs: passes over the training ratings.
        batch_size: ratings per step.
        lr: Adam's learning rate.
        l2: weight of the penalty on the batch's vectors and biases.
        optimizer: ``"fused"``, ``"dense"`` or ``"sparse"`` (see the module docstring).
        seed: seeds the shuffling.
        clamp: predictions are clipped to this range when evaluated (``None``: no clipping).
        patience: with a validation set, stop after this many epochs without a new best
            validation RMSE (``None``: run every epoch).
        keep_best: with a validation set, end with the weights of the epoch whose validation
            RMSE was lowest (otherwise the last epoch's).
    """

    epochs: int = 10
    batch_size: int = 512
    lr: float = 0.005
    l2: float = 0.05
    optimizer: str = "fused"
    seed: int = 0
    clamp: tuple[float, float] | None = (1.0, 5.0)
    patience: int | None = None
    keep_best: bool = True

    def __post_init__(self) -> None:
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(
                f"FitConfig: optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}"
            )
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"FitConfig: {name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.l2 < 0:
            raise ValueError(f"FitConfig: need lr > 0 and l2 >= 0, got lr={self.lr}, l2={self.l2}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"FitConfig: patience must be None or >= 1, got {self.patience}")


@dataclass(frozen=True)
class EpochStats:
    """One epoch: mean training MSE (without the penalty), validation RMSE (``nan`` without a
    validation set), wall seconds of the training pass, and whether this epoch is the best
    so far on validation (the one ``keep_best`` restores)."""

    epoch: int
    loss: float
    valid_rmse: float
    seconds: float
    best: bool = False


def best_epoch(history: list[EpochStats]) -> EpochStats:
    """The epoch with the lowest validation RMSE (the last epoch without validation)."""
    if not history:
        raise ValueError("best_epoch: the history is empty")
    scored = [h for h in history if not math.isnan(h.valid_rmse)]
    return min(scored, key=lambda h: h.valid_rmse) if scored else history[-1]


class _Stepper:
    """Zero-grad / step over one or more optimizers (a fused optimizer steps in backward)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()


def _tables(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The lookup tables of ``model``: embtable's, or torch's (benchmarks swap them in)."""
    from embtable.nn import Embedding, EmbeddingBag

    kinds = (Embedding, EmbeddingBag, torch.nn.Embedding, torch.nn.EmbeddingBag)
    return [m for m in model.modules() if isinstance(m, kinds)]


def make_optimizer(model: torch.nn.Module, name: str, lr: float) -> _Stepper:
    """An Adam of kind ``name`` (``"fused"``, ``"dense"``, ``"sparse"``) over ``model``.

    ``"sparse"`` switches the model's tables to ``sparse=True``; ``"fused"`` hands the tables
    to ``embtable.optim.fuse`` and the remaining parameters to ``torch.optim.Adam``.

    Raises:
        ValueError: unknown ``name``.
        ImportError: ``"fused"`` while ``embtable.optim`` is not available.
    """
    tables = _tables(model)
    table_params = {id(t.weight) for t in tables}
    others = [p for p in model.parameters() if id(p) not in table_params and p.requires_grad]
    if name == "dense":
        return _Stepper([torch.optim.Adam(model.parameters(), lr=lr)])
    if name == "sparse":
        for t in tables:
            t.sparse = True
        opts: list[torch.optim.Optimizer] = [
            torch.optim.SparseAdam([t.weight for t in tables], lr=lr)
        ]
        if others:
            opts.append(torch.optim.Adam(others, lr=lr))
        return _Stepper(opts)
    if name == "fused":
        from embtable import optim as fused_optim

        opts = [fused_optim.fuse(model, "adam", lr=lr)]
        rest = [p for p in fused_optim.dense_parameters(model) if p.requires_grad]
        if rest:
            opts.append(torch.optim.Adam(rest, lr=lr))
        return _Stepper(opts)
    raise ValueError(f"make_optimizer: name must be one of {_OPTIMIZERS}, got {name!r}")


def train_step(
    model: MatrixFactorization,
    stepper: _Stepper,
    users: Tensor,
    items: Tensor,
    ratings: Tensor,
    features: Mapping[str, Tensor],
    l2: float,
) -> float:
    """One optimizer step on a mini-batch; returns the batch's MSE (without the penalty)."""
    user_out, item_out = model.user_tower(users, features), model.item_tower(items, features)
    pred = model.score(user_out, item_out)
    mse = torch.mean((pred - ratings) ** 2)
    penalty = (
        user_out[0].pow(2).sum(-1) + item_out[0].pow(2).sum(-1)
        + user_out[1].pow(2) + item_out[1].pow(2)
    ).mean()  # fmt: skip
    stepper.zero_grad()
    (mse + l2 * penalty).backward()
    stepper.step()
    return float(mse.detach())


def _no_features(users: Tensor, items: Tensor) -> dict[str, Tensor]:
    return {}


@torch.no_grad()
def predict_ratings(
    model: MatrixFactorization,
    users: Tensor,
    items: Tensor,
    features: FeatureFn | None = None,
    *,
    clamp: tuple[float, float] | None = (1.0, 5.0),
    batch_size: int = 65536,
) -> Tensor:
    """Predicted ratings of ``(user, item)`` pairs, in evaluation mode, clipped to ``clamp``."""
    features = features or _no_features
    was_training = model.training
    model.eval()
    out = []
    for s in range(0, users.numel(), batch_size):
        u, i = users[s : s + batch_size], items[s : s + batch_size]
        out.append(model(u, i, features(u, i)))
    model.train(was_training)
    pred = torch.cat(out) if out else torch.empty(0)
    return pred.clamp(*clamp) if clamp is not None else pred


def fit_ratings(
    model: MatrixFactorization,
    users: Tensor,
    items: Tensor,
    ratings: Tensor,
    *,
    features: FeatureFn | None = None,
    config: FitConfig = FitConfig(),  # noqa: B008 - frozen dataclass, safe as a default
    valid: tuple[Tensor, Tensor, Tensor] | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    max_steps: int | None = None,
) -> list[EpochStats]:
    """Train ``model`` on ``(user, item, rating)`` triples; return per-epoch statistics.

    Only the validation triples are scored during training: early stopping
    (``config.patience``) and the epoch kept at the end (``config.keep_best``) are decided on
    them alone. The function never sees a test split; score it once afterwards with
    :func:`predict_ratings`.

    Args:
        model: the recommender to train (in place).
        users, items, ratings: ``(N,)`` training triples.
        features: ``features(users, items) -> {name: tensor}`` for the model's side features.
        config: :class:`FitConfig`.
        valid: ``(users, items, ratings)`` held out from the training data, scored after each
            epoch.
        on_epoch: called with each epoch's :class:`EpochStats`.
        progress: called as ``progress(done, total)`` after each step of an epoch.
        max_steps: stop each epoch after this many steps (for quick runs and benchmarks).

    Returns:
        The list of :class:`EpochStats` of the epochs run (fewer than ``config.epochs`` when
        early stopping ends training); :func:`best_epoch` names the one the model holds when
        ``config.keep_best`` is set.

    Example:
        >>> import torch
        >>> from embtable.models import MatrixFactorization
        >>> _ = torch.manual_seed(0)
        >>> users, items = torch.randint(0, 20, (500,)), torch.randint(0, 30, (500,))
        >>> ratings = ((users % 5) + (items % 3)).float().clamp(1, 5)
        >>> model = MatrixFactorization(20, 30, 4, global_mean=float(ratings.mean()))
        >>> config = FitConfig(epochs=30, batch_size=50, lr=0.05, optimizer="dense", patience=2)
        >>> history = fit_ratings(model, users[:400], items[:400], ratings[:400], config=config,
        ...                       valid=(users[400:], items[400:], ratings[400:]))
        >>> best = best_epoch(history)
        >>> best.best and all(h.valid_rmse >= best.valid_rmse for h in history)
        True
    """
    features = features or _no_features
    stepper = make_optimizer(model, config.optimizer, config.lr)
    gen = torch.Generator().manual_seed(config.seed)
    n = users.numel()
    history: list[EpochStats] = []
    best_rmse, best_state, since_best = math.inf, None, 0
    model.train()
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        steps = -(-n // config.batch_size)
        if max_steps is not None:
            steps = min(steps, max_steps)
        total, seen = 0.0, 0
        for step in range(steps):
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            u, i, r = users[idx], items[idx], ratings[idx]
            mse = train_step(model, stepper, u, i, r, features(u, i), config.l2)
            total += mse * idx.numel()
            seen += idx.numel()
            if progress is not None:
                progress(step + 1, steps)
        seconds = time.perf_counter() - start
        valid_rmse, improved = float("nan"), False
        if valid is not None:
            pred = predict_ratings(model, valid[0], valid[1], features, clamp=config.clamp)
            valid_rmse = rmse(pred, valid[2])
            improved = valid_rmse < best_rmse
            if improved:
                best_rmse, since_best = valid_rmse, 0
                if config.keep_best:
                    best_state = copy.deepcopy(model.state_dict())
            else:
                since_best += 1
        stats = EpochStats(epoch, total / max(seen, 1), valid_rmse, seconds, improved)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
        if config.patience is not None and since_best >= config.patience:
            break
    if best_state is not None and not history[-1].best:
        model.load_state_dict(best_state)
    model.eval()
    return history
