"""``embtable train movielens``: a recommender with side features on MovieLens-100K."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from embtable.cli._common import CliError, say, write_json

NAME = "train"
HELP = "train a model on a data set (movielens: MovieLens-100K ratings with side features)"
EXAMPLES = """\
  embtable train movielens                          # fetches the data on first use
  embtable train movielens --epochs 5 --out runs/ml --optimizer dense
  embtable train movielens --data ~/data/ml-100k    # a local copy (u.data/u.user/u.item)
  embtable train movielens --split time --no-side-features
  embtable train movielens --folds 5                # 5-fold cross-validation (Surprise's folds)
  embtable train movielens --valid-fraction 0.1 --patience 3
  embtable train movielens --nproc 2 --epochs 3     # tables sharded over 2 processes
"""

DATASETS = ("movielens",)


@dataclass(frozen=True, kw_only=True)
class MovieLensOptions:
    """Settings of :func:`train_movielens` (the defaults are the demo settings, chosen on
    validation data only)."""

    data: str | None = None
    out: str = "movielens-model"
    split: str = "random"
    test_fraction: float = 0.2
    valid_fraction: float = 0.1
    patience: int | None = 3
    folds: int | None = None
    seed: int = 0
    # dim, lr and l2 won a grid search scored on validation only (benchmarks/movielens_search.py,
    # docs/models.md); epochs is a ceiling: early stopping on validation decides.
    dim: int = 16
    epochs: int = 40
    batch_size: int = 256
    lr: float = 0.002
    l2: float = 0.05
    optimizer: str = "auto"
    side_features: bool = True
    limit: int | None = None
    topk: int = 10


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = MovieLensOptions()
    p.add_argument("dataset", choices=DATASETS, help="what to train on")
    p.add_argument("--data", help="folder with the data (default: fetch into the cache)")
    p.add_argument("--out", default=d.out, help=f"output folder (default {d.out})")
    p.add_argument("--split", choices=("random", "user", "time"), default=d.split,
                   help="random 80/20 of ratings, 80/20 of each user's ratings, or by time")  # fmt: skip
    p.add_argument("--test-fraction", type=float, default=d.test_fraction)
    p.add_argument("--valid-fraction", type=float, default=d.valid_fraction,
                   help="share of the TRAINING ratings held out for validation: per-epoch "
                        "scores, early stopping and the epoch kept are decided on it alone; "
                        f"0 disables it (default {d.valid_fraction})")  # fmt: skip
    p.add_argument("--patience", type=int, default=d.patience,
                   help="stop after this many epochs without a better validation RMSE "
                        f"(default {d.patience}; 0 = never stop early)")  # fmt: skip
    p.add_argument("--folds", type=int, default=None,
                   help="K-fold cross-validation instead of one split: K shuffled folds built "
                        "as Surprise's KFold(K, random_state=--seed); each fold is tested once "
                        "by a model trained on the others; prints per-fold and mean +- std "
                        "RMSE / MAE")  # fmt: skip
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--dim", type=int, default=d.dim, help=f"vector size (default {d.dim})")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"default {d.epochs}")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default {d.batch_size}")
    p.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default {d.lr})")
    p.add_argument("--l2", type=float, default=d.l2, help=f"penalty on looked-up rows (default {d.l2})")
    p.add_argument("--optimizer", choices=("auto", "fused", "dense", "sparse"), default=d.optimizer,
                   help="auto = embtable's fused Adam when available, else dense Adam")  # fmt: skip
    p.add_argument("--no-side-features", dest="side_features", action="store_false",
                   help="plain biased matrix factorization (user and item ids only)")  # fmt: skip
    p.add_argument("--limit", type=int, help="use only the first N ratings (quick runs)")
    p.add_argument("--topk", type=int, default=d.topk, help="k of Recall@k and NDCG@k")
    p.add_argument("--nproc", type=int, default=1,
                   help="train with the tables sharded over N local gloo processes (sharded "
                        "collection + DDP head; docs/distributed.md); --batch-size is per process; "
                        "no validation split, early stopping, --folds, --l2, --optimizer, "
                        "--no-side-features or --topk then")  # fmt: skip


def _resolve_optimizer(name: str) -> str:
    if name != "auto":
        return name
    try:
        import embtable.optim  # noqa: F401
    except ImportError:
        return "dense"
    return "fused"


def _check(options: MovieLensOptions) -> None:
    for name in ("dim", "epochs", "batch_size", "topk"):
        if getattr(options, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(options, name)}")
    if options.limit is not None and options.limit < 100:
        raise CliError(f"--limit must be >= 100 ratings, got {options.limit}")
    if not 0 < options.test_fraction < 1:
        raise CliError(f"--test-fraction must lie in (0, 1), got {options.test_fraction}")
    if not 0 <= options.valid_fraction < 1:
        raise CliError(f"--valid-fraction must lie in [0, 1), got {options.valid_fraction}")
    if options.patience is not None and options.patience < 0:
        raise CliError(f"--patience must be >= 0, got {options.patience}")
    if options.folds is not None and options.folds < 2:
        raise CliError(f"--folds must be >= 2, got {options.folds}")
    if not options.lr > 0 or options.l2 < 0:
        raise CliError(f"need --lr > 0 and --l2 >= 0, got {options.lr} and {options.l2}")


def item_vectors(model, data) -> torch.Tensor:
    """The item tower's vector of every item (id row + year + mean genre row)."""
    items = torch.arange(data.num_items)
    users = torch.zeros_like(items)
    with torch.no_grad():
        return model.item_tower(items, data.features(users, items))[0].detach().clone()


def score_matrix(model, data) -> torch.Tensor:
    """``(num_users, num_items)`` predicted ratings of every pair."""
    users, items = torch.arange(data.num_users), torch.arange(data.num_items)
    with torch.no_grad():
        u = model.user_tower(users, data.features(users, torch.zeros_like(users)))
        i = model.item_tower(items, data.features(torch.zeros_like(items), items))
        return model.global_mean + u[1][:, None] + i[1][None, :] + u[0] @ i[0].T


@dataclass
class _FitRun:
    """One model trained on a training part (validation carved from it) and scored once on
    its test part."""

    model: Any
    history: list
    train: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    valid_size: int
    optimizer: str
    mean: float
    test_rmse: float
    test_mae: float
    train_seconds: float


def _fit_split(data, train_idx: torch.Tensor, test_idx: torch.Tensor, options: MovieLensOptions,
               log, verbose: bool) -> _FitRun:  # fmt: skip
    """Carve the validation part from ``train_idx`` only, train with early stopping and
    "keep the best epoch" decided on it, then score ``test_idx`` once."""
    from embtable.models import MatrixFactorization
    from embtable.models.crossval import holdout_indices
    from embtable.models.fit import FitConfig, fit_ratings, predict_ratings
    from embtable.models.metrics import mae, rmse

    valid = None
    if options.valid_fraction > 0:
        train_idx, valid_idx = holdout_indices(train_idx, options.valid_fraction, seed=options.seed)
        valid = (data.users[valid_idx], data.items[valid_idx], data.ratings[valid_idx])
    tr = (data.users[train_idx], data.items[train_idx], data.ratings[train_idx])
    mean = float(tr[2].mean())
    side = data.cardinalities() if options.side_features else {}
    torch.manual_seed(options.seed)
    model = MatrixFactorization(data.num_users, data.num_items, options.dim, global_mean=mean, **side)
    optimizer = _resolve_optimizer(options.optimizer)
    patience = options.patience if valid is not None and options.patience else None
    config = FitConfig(epochs=options.epochs, batch_size=options.batch_size, lr=options.lr,
                       l2=options.l2, optimizer=optimizer, seed=options.seed,
                       patience=patience)  # fmt: skip
    features = data.features if options.side_features else None

    bar_state: dict[str, Any] = {}

    def on_step(done: int, total: int) -> None:
        bar = bar_state.get("bar")
        if bar is None:
            bar = bar_state["bar"] = _Bar(total, f"epoch {bar_state.get('epoch', 1)}")
        bar.update(done)

    def on_epoch(stats) -> None:
        bar = bar_state.pop("bar", None)
        if bar is not None:
            bar.close()
        bar_state["epoch"] = stats.epoch + 1
        scored = f"valid RMSE {stats.valid_rmse:.4f}{' *' if stats.best else ''}" if valid else ""
        log(f"epoch {stats.epoch:>3}/{options.epochs}  loss {stats.loss:.4f}  {scored}  "
            f"{stats.seconds:.1f} s")  # fmt: skip

    start = time.perf_counter()
    history = fit_ratings(model, *tr, features=features, config=config, valid=valid,
                          on_epoch=on_epoch, progress=on_step if verbose else None)  # fmt: skip
    train_seconds = time.perf_counter() - start
    # The test part is read here, once, after every choice has been made.
    te = (data.users[test_idx], data.items[test_idx], data.ratings[test_idx])
    pred = predict_ratings(model, te[0], te[1], features)
    return _FitRun(model, history, tr, te, 0 if valid is None else len(valid[0]), optimizer, mean,
                   rmse(pred, te[2]), mae(pred, te[2]), train_seconds)  # fmt: skip


def _limited(data, options: MovieLensOptions, *parts: torch.Tensor) -> list[torch.Tensor]:
    if options.limit is None:
        return list(parts)
    keep = torch.arange(min(options.limit, len(data)))
    return [p[torch.isin(p, keep)] for p in parts]


def _history_rows(history) -> list[dict[str, Any]]:
    return [{"epoch": h.epoch, "loss": round(h.loss, 4), "valid_rmse": round(h.valid_rmse, 4),
             "best": h.best, "seconds": round(h.seconds, 2)} for h in history]  # fmt: skip


def cross_validate_movielens(options: MovieLensOptions, *, verbose: bool = True) -> dict[str, Any]:
    """K-fold cross-validation (``options.folds``): Surprise's folds, a validation part carved
    from each training part, each fold's test part scored once. Writes
    ``<out>/summary.json`` and returns it."""
    import statistics

    from embtable.data.movielens import load_movielens
    from embtable.models.crossval import kfold_indices

    _check(options)
    log = say if verbose else (lambda *_: None)
    data = load_movielens(options.data)
    n = len(data) if options.limit is None else min(options.limit, len(data))
    folds = kfold_indices(n, options.folds, seed=options.seed)
    log(f"MovieLens-100K: {n:,} ratings in {options.folds} folds (Surprise's KFold, "
        f"random_state={options.seed}); validation {options.valid_fraction:.0%} of each "
        f"training part")  # fmt: skip
    rows = []
    for k, (train_idx, test_idx) in enumerate(folds, 1):
        log(f"fold {k}/{options.folds}: {len(train_idx):,} training / {len(test_idx):,} test")
        run = _fit_split(data, train_idx, test_idx, options, log, verbose)
        best = max((h for h in run.history if h.best), key=lambda h: h.epoch, default=None)
        rows.append({"fold": k, "test_rmse": round(run.test_rmse, 4),
                     "test_mae": round(run.test_mae, 4),
                     "best_epoch": best.epoch if best else len(run.history),
                     "valid_rmse": round(best.valid_rmse, 4) if best else None,
                     "train_seconds": round(run.train_seconds, 1)})  # fmt: skip
        log(f"fold {k}: test RMSE {run.test_rmse:.4f}  MAE {run.test_mae:.4f}")
    rmses, maes = [r["test_rmse"] for r in rows], [r["test_mae"] for r in rows]
    summary = {
        "dataset": "movielens-100k",
        "protocol": f"{options.folds}-fold cross-validation (Surprise KFold, shuffled, "
                    f"random_state={options.seed}); validation carved from training parts only; "
                    "test parts scored once",
        "train": {**asdict(options), "optimizer": _resolve_optimizer(options.optimizer)},
        "folds": rows,
        "test": {"rmse_mean": round(statistics.mean(rmses), 4),
                 "rmse_std": round(statistics.pstdev(rmses), 4),
                 "mae_mean": round(statistics.mean(maes), 4),
                 "mae_std": round(statistics.pstdev(maes), 4)},
    }  # fmt: skip
    log("")
    log("fold  test RMSE  test MAE  best epoch (valid RMSE)")
    for r in rows:
        log(f"{r['fold']:>4}  {r['test_rmse']:.4f}     {r['test_mae']:.4f}    "
            f"{r['best_epoch']} ({r['valid_rmse']})")  # fmt: skip
    t = summary["test"]
    log(f"mean  {t['rmse_mean']:.4f} +- {t['rmse_std']:.4f}   MAE {t['mae_mean']:.4f} +- "
        f"{t['mae_std']:.4f}")  # fmt: skip
    out = Path(options.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary)
    log(f"wrote {out}/summary.json")
    return summary


def train_movielens(options: MovieLensOptions, *, verbose: bool = True) -> dict[str, Any]:
    """Train, evaluate and save; return the summary (also written to ``<out>/config.json`` and
    ``<out>/summary.json``). With ``options.folds`` set, runs :func:`cross_validate_movielens`.

    The folder is written atomically as a whole: a run killed while saving leaves the previous
    run's folder or the new one (:mod:`embtable.cli._model_folder`; read it back with
    :func:`~embtable.cli._model_folder.open_model_folder`, which checks every part).

    The validation part comes from the training ratings only; the test part is scored once,
    after training, and influences nothing."""
    if options.folds is not None:
        return cross_validate_movielens(options, verbose=verbose)
    from embtable.cli._model_folder import save_model_folder
    from embtable.data.movielens import load_movielens
    from embtable.models.metrics import ranking_metrics, rmse
    from embtable.vectors import Vectors

    _check(options)
    log = say if verbose else (lambda *_: None)
    data = load_movielens(options.data)
    train_idx, test_idx = data.split(options.split, test_fraction=options.test_fraction,
                                     seed=options.seed)  # fmt: skip
    train_idx, test_idx = _limited(data, options, train_idx, test_idx)
    n_valid = round(len(train_idx) * options.valid_fraction) if options.valid_fraction else 0
    log(f"MovieLens-100K: {len(train_idx) - n_valid:,} training / {n_valid:,} validation / "
        f"{len(test_idx):,} test ratings ({options.split} split), {data.num_users} users, "
        f"{data.num_items} items")  # fmt: skip
    log(f"model: biased MF, dim {options.dim}, side features "
        f"{'age, gender, occupation, year, genres (bag)' if options.side_features else 'none'}; "
        f"optimizer: {_resolve_optimizer(options.optimizer)} Adam (lr {options.lr}, "
        f"l2 {options.l2})")  # fmt: skip
    run = _fit_split(data, train_idx, test_idx, options, log, verbose)
    model, history, tr, te, mean = run.model, run.history, run.train, run.test, run.mean
    optimizer, test_rmse, train_seconds = run.optimizer, run.test_rmse, run.train_seconds

    baseline_rmse = rmse(torch.full_like(te[2], mean), te[2])
    relevant = te[2] >= 4
    rank_args = {"test_users": te[0][relevant], "test_items": te[1][relevant], "k": options.topk,
                 "train_users": tr[0], "train_items": tr[1]}  # fmt: skip
    scores = score_matrix(model, data)
    ours = ranking_metrics(scores, **rank_args)
    popularity = torch.bincount(tr[1], minlength=data.num_items).float()
    popular = ranking_metrics(popularity.expand(data.num_users, -1), **rank_args)
    k = options.topk
    log("")
    kept = max((h for h in history if h.best), key=lambda h: h.epoch, default=None)
    if kept is not None:
        log(f"kept epoch {kept.epoch} (best validation RMSE {kept.valid_rmse:.4f})")
    log(f"test RMSE {test_rmse:.4f}  MAE {run.test_mae:.4f}   (scored once, after training; "
        f"global-mean baseline {baseline_rmse:.4f})")
    log(f"Recall@{k} {ours['recall']:.4f}  NDCG@{k} {ours['ndcg']:.4f}   (popularity baseline: "
        f"Recall@{k} {popular['recall']:.4f}  NDCG@{k} {popular['ndcg']:.4f}; relevant = test "
        f"ratings >= 4, {ours['users']} users)")  # fmt: skip

    out = Path(options.out).expanduser()
    summary = {
        "dataset": "movielens-100k",
        "train": {**asdict(options), "optimizer": optimizer},
        "metrics": {
            "test_rmse": round(test_rmse, 4),
            "test_mae": round(run.test_mae, 4),
            "valid_rmse": None if kept is None else round(kept.valid_rmse, 4),
            "best_epoch": None if kept is None else kept.epoch,
            "valid_ratings": run.valid_size,
            "global_mean_rmse": round(baseline_rmse, 4),
            f"recall@{k}": ours["recall"], f"ndcg@{k}": ours["ndcg"],
            f"popularity_recall@{k}": popular["recall"], f"popularity_ndcg@{k}": popular["ndcg"],
            "ranking_users": ours["users"],
            "train_seconds": round(train_seconds, 1),
        },
        "history": _history_rows(history),
        "notes": "valid_* and history[].valid_rmse: validation ratings carved from the training "
                 "part (choices: early stopping, kept epoch); test_*: the test part, scored once "
                 "at the end",
    }  # fmt: skip
    if not math.isfinite(test_rmse) or not all(bool(p.isfinite().all()) for p in model.parameters()):
        raise CliError(  # before any write: a diverged run never replaces a good model in --out
            f"training diverged (test RMSE {test_rmse}, or non-finite weights); nothing was "
            f"written to {out}; lower --lr"
        )
    # Atomic as a whole (cli/_model_folder.py): summary.json and items/ are staged under unused
    # names, config.json (the manifest naming them with their digests) is written last.
    genres = data.item_genres
    vectors = Vectors(data.item_labels(), item_vectors(model, data))
    save_model_folder(out, model, summary, vectors, {
        "genre_names": list(data.genre_names),
        "item_genres": [[g for g in row if g < data.genre_padding] for row in genres.tolist()],
        "rating_counts": torch.bincount(data.items, minlength=data.num_items).tolist(),
    })  # fmt: skip
    log(f"saved the model to {out}/ (model.safetensors, config.json) and the item table to "
        f"{out}/items/ (embtable vectors: `embtable neighbors {out} \"Toy Story\"`)")  # fmt: skip
    return summary


class _Bar:
    """A per-epoch tqdm bar on stderr driven by ``update(done)``; silent without tqdm or with
    ``EMBTABLE_NO_PROGRESS`` set."""

    def __init__(self, total: int, desc: str) -> None:
        self._done = 0
        self._bar = None
        if os.environ.get("EMBTABLE_NO_PROGRESS"):
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total, desc=desc, leave=False, file=sys.stderr,
                         dynamic_ncols=True, mininterval=0.5)  # fmt: skip

    def update(self, done: int) -> None:
        if self._bar is not None:
            self._bar.update(done - self._done)
        self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


#: Options the sharded demo (``--nproc N``) does not apply: it trains the tables with side
#: features by fused Adam and scores the test split once (no validation split, early
#: stopping, folds, L2 penalty or top-k metrics); setting one of them with --nproc is refused.
_NOT_SHARDED = ("valid_fraction", "patience", "folds", "l2", "optimizer", "side_features", "topk")


def _check_sharded(options: MovieLensOptions, nproc: int) -> None:
    defaults = MovieLensOptions()
    flags = {"side_features": "--no-side-features"}
    if options.patience is None:  # (--patience 0)
        flags["patience"] = "--patience 0"
    unused = [
        flags.get(name, f"--{name.replace('_', '-')} {getattr(options, name)}")
        for name in _NOT_SHARDED
        if getattr(options, name) != getattr(defaults, name)
        and not (name == "optimizer" and options.optimizer == "fused")
    ]
    if unused:
        raise CliError(
            f"--nproc {nproc}: the sharded demo does not apply {', '.join(unused)} (it trains "
            f"the tables with side features by fused Adam and scores the test split once: no "
            f"validation split, early stopping, folds, L2 penalty or top-k metrics); drop them"
        )


def run(args: argparse.Namespace) -> int:
    options = MovieLensOptions(
        data=args.data, out=args.out, split=args.split, test_fraction=args.test_fraction,
        valid_fraction=args.valid_fraction,
        patience=args.patience if args.patience else None, folds=args.folds,
        seed=args.seed, dim=args.dim, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, l2=args.l2, optimizer=args.optimizer, side_features=args.side_features,
        limit=args.limit, topk=args.topk,
    )  # fmt: skip
    if getattr(args, "nproc", 1) != 1:
        if args.nproc < 1:
            raise CliError(f"--nproc must be >= 1, got {args.nproc}")
        _check_sharded(options, args.nproc)
        from embtable.distributed.movielens import train_movielens_sharded

        _check(options)
        train_movielens_sharded(options, args.nproc)
        return 0
    train_movielens(options)
    return 0
