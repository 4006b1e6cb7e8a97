"""Evaluation protocol: Surprise's folds, validation carved from training parts, early stopping
and "keep the best epoch" on validation, and a test part that influences nothing."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embtable.models import MatrixFactorization
from embtable.models.crossval import holdout_indices, kfold_indices
from embtable.models.fit import FitConfig, best_epoch, fit_ratings, predict_ratings
from embtable.models.metrics import mae, rmse


def test_folds_are_surprises_folds(tmp_path: Path) -> None:
    """Oracle: Surprise's own KFold on a data set whose raw user ids are the rating indices."""
    surprise = pytest.importorskip("surprise")
    n = 1003
    file = tmp_path / "ratings.txt"
    file.write_text("".join(f"{i} x {1 + i % 5}\n" for i in range(n)))
    reader = surprise.Reader(line_format="user item rating", sep=" ", rating_scale=(1, 5))
    data = surprise.Dataset.load_from_file(str(file), reader)
    for seed in (0, 7):
        theirs = [sorted(int(u) for u, _, _ in test)
                  for _, test in surprise.model_selection.KFold(5, random_state=seed,
                                                                shuffle=True).split(data)]  # fmt: skip
        ours = [sorted(test.tolist()) for _, test in kfold_indices(n, 5, seed=seed)]
        assert ours == theirs


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 300), k=st.integers(2, 12), seed=st.integers(0, 2**31 - 1))
def test_folds_partition_the_examples(n: int, k: int, seed: int) -> None:
    if k > n:
        with pytest.raises(ValueError, match=r"n_splits must lie in \[2, n\]"):
            kfold_indices(n, k, seed=seed)
        return
    folds = kfold_indices(n, k, seed=seed)
    tests = [test.tolist() for _, test in folds]
    assert sorted(i for t in tests for i in t) == list(range(n))  # each tested exactly once
    assert [len(t) for t in tests] == [n // k + (1 if f < n % k else 0) for f in range(k)]
    for train, test in folds:
        assert sorted(train.tolist() + test.tolist()) == list(range(n))
    assert [t.tolist() for _, t in kfold_indices(n, k, seed=seed)] == tests  # deterministic


def test_fold_arguments_are_checked() -> None:
    with pytest.raises(TypeError, match="n_splits must be an int, got 2.0"):
        kfold_indices(10, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fraction must lie in"):
        holdout_indices(torch.arange(10), 1.0)
    with pytest.raises(ValueError, match="at least 2 entries"):
        holdout_indices(torch.arange(1), 0.5)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 500), fraction=st.floats(0.01, 0.99), seed=st.integers(0, 1000))
def test_holdout_stays_inside_the_training_part(n: int, fraction: float, seed: int) -> None:
    train = torch.from_numpy(np.random.RandomState(seed).choice(10 * n, n, replace=False)).long()
    fit, valid = holdout_indices(train, fraction, seed=seed)
    assert set(fit.tolist()).isdisjoint(valid.tolist())
    assert sorted(fit.tolist() + valid.tolist()) == sorted(train.tolist())
    assert len(valid) == min(max(round(n * fraction), 1), n - 1)


def _ratings(seed: int = 0, n: int = 3000):
    gen = torch.Generator().manual_seed(seed)
    users, items = torch.randint(0, 40, (n,), generator=gen), torch.randint(0, 50, (n,), generator=gen)
    pu, qi = torch.randn(40, 3, generator=gen), torch.randn(50, 3, generator=gen)
    ratings = (3 + (pu[users] * qi[items]).sum(1) + 0.3 * torch.randn(n, generator=gen)).clamp(1, 5)
    return users, items, ratings


def test_early_stopping_and_the_kept_epoch_follow_validation() -> None:
    users, items, ratings = _ratings()
    tr, va = slice(0, 2400), slice(2400, 3000)
    torch.manual_seed(0)
    model = MatrixFactorization(40, 50, 8, global_mean=float(ratings[tr].mean()))
    # A large lr overfits quickly, so validation RMSE turns up and early stopping must act.
    config = FitConfig(epochs=60, batch_size=64, lr=0.05, l2=0.0, optimizer="dense", patience=3)
    history = fit_ratings(model, users[tr], items[tr], ratings[tr], config=config,
                          valid=(users[va], items[va], ratings[va]))  # fmt: skip
    best = best_epoch(history)
    assert len(history) == best.epoch + 3 < 60  # stopped exactly `patience` epochs after the best
    assert [h.best for h in history] == [
        h.valid_rmse < min([g.valid_rmse for g in history[: h.epoch - 1]], default=float("inf"))
        for h in history
    ]
    pred = predict_ratings(model, users[va], items[va])
    assert rmse(pred, ratings[va]) == pytest.approx(best.valid_rmse, abs=1e-6)  # best weights kept
    assert history[-1].valid_rmse > best.valid_rmse


def test_without_keep_best_the_last_epoch_stays() -> None:
    users, items, ratings = _ratings(1)
    tr, va = slice(0, 2400), slice(2400, 3000)
    torch.manual_seed(0)
    model = MatrixFactorization(40, 50, 8, global_mean=float(ratings[tr].mean()))
    config = FitConfig(epochs=6, batch_size=64, lr=0.05, l2=0.0, optimizer="dense", keep_best=False)
    history = fit_ratings(model, users[tr], items[tr], ratings[tr], config=config,
                          valid=(users[va], items[va], ratings[va]))  # fmt: skip
    pred = predict_ratings(model, users[va], items[va])
    assert len(history) == 6
    assert rmse(pred, ratings[va]) == pytest.approx(history[-1].valid_rmse, abs=1e-6)


def test_mae_is_the_mean_absolute_error() -> None:
    assert mae(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([2.0, 2.0, 2.0])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        mae(torch.zeros(2), torch.zeros(3))



def test_the_test_part_influences_nothing(movielens, monkeypatch) -> None:
    """Train twice, the second time with the test ratings replaced by noise: the histories
    and weights are identical, and the test part is predicted exactly once, after training."""
    from embtable.cli import train as train_cli
    from embtable.models import fit as fit_module

    monkeypatch.setenv("EMBTABLE_NO_PROGRESS", "1")
    options = train_cli.MovieLensOptions(limit=6000, epochs=3, dim=8, batch_size=512,
                                         valid_fraction=0.1, patience=1)  # fmt: skip
    train_idx, test_idx = movielens.split("random", seed=0)
    train_idx, test_idx = train_cli._limited(movielens, options, train_idx, test_idx)
    calls: list[int] = []
    real = fit_module.predict_ratings

    def spy(model, users, items, *args, **kwargs):
        calls.append(len(users))
        return real(model, users, items, *args, **kwargs)

    monkeypatch.setattr(fit_module, "predict_ratings", spy)
    first = train_cli._fit_split(movielens, train_idx, test_idx, options, lambda *_: None, False)
    n_valid, epochs = first.valid_size, len(first.history)
    assert calls == [n_valid] * epochs + [len(test_idx)]  # test scored once, last

    noisy = copy.copy(movielens)
    ratings = movielens.ratings.clone()
    ratings[test_idx] = torch.randint(1, 6, (len(test_idx),)).float()
    object.__setattr__(noisy, "ratings", ratings)
    second = train_cli._fit_split(noisy, train_idx, test_idx, options, lambda *_: None, False)
    assert [(h.loss, h.valid_rmse) for h in first.history] == [
        (h.loss, h.valid_rmse) for h in second.history
    ]
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, second.model.state_dict()[key]), key


def test_cli_folds_report_per_fold_and_mean(movielens, tmp_path: Path, monkeypatch, capsys) -> None:
    from embtable.cli.main import main

    monkeypatch.setenv("EMBTABLE_NO_PROGRESS", "1")
    code = main(["train", "movielens", "--folds", "3", "--limit", "6000", "--epochs", "2",
                 "--dim", "8", "--batch-size", "512", "--out", str(tmp_path)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "mean " in printed and "fold 3/3" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    rmses = [f["test_rmse"] for f in summary["folds"]]
    assert len(rmses) == 3
    assert summary["test"]["rmse_mean"] == pytest.approx(float(np.mean(rmses)), abs=1e-4)
    assert summary["test"]["rmse_std"] == pytest.approx(float(np.std(rmses)), abs=1e-4)
    assert all(0.5 < r < 1.5 for r in rmses)


def test_cli_rejects_bad_protocol_options(movielens, tmp_path: Path, capsys) -> None:
    from embtable.cli.main import main

    assert main(["train", "movielens", "--folds", "1", "--out", str(tmp_path)]) != 0
    assert "--folds must be >= 2, got 1" in capsys.readouterr().err
    assert main(["train", "movielens", "--valid-fraction", "1.5", "--out", str(tmp_path)]) != 0
    assert "--valid-fraction must lie in [0, 1), got 1.5" in capsys.readouterr().err
