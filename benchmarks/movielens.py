"""MovieLens benchmark: the demo's recommender trained with three optimizers.

Variants (same model, same initial weights, same batches):

- ``embtable fused Adam``: embtable tables, ``embtable.optim.fuse(model, "adam")``;
- ``torch dense Adam``: the tables swapped for ``torch.nn.Embedding`` /
  ``torch.nn.EmbeddingBag`` holding the same weights, ``torch.optim.Adam``;
- ``torch SparseAdam``: the torch tables with ``sparse=True``, ``torch.optim.SparseAdam``.

Workloads:

(a) MovieLens-100K (random 80/20 split, seed 0): ``--epochs`` full epochs each; the median
    epoch time and the test RMSE after the last epoch.
(b) synthetic, the same schema (age, gender, occupation, release year, genre bag) with
    1,000,000 users and 200,000 items and ``--ratings`` interactions (ids skewed like
    real traffic, ratings from a planted low-rank model): ``--steps`` timed steps after
    warm-up steps (a subset of an epoch), reported as ms/step and projected s/epoch.

(c) ``--folds K`` (issue 18): the evaluation protocol of Surprise's published table on
    MovieLens-100K. K shuffled folds built exactly as Surprise's ``KFold(K, random_state=seed)``
    (``embtable.models.crossval.kfold_indices``); on each fold, embtable's demo model (settings
    chosen on validation, ``benchmarks/movielens_search.py``; 10 % of the training part held
    out for early stopping) and Surprise's ``SVD`` and ``SVDpp`` (their default settings, the
    ones behind the published 0.934 / 0.920) train on the same training ratings and are scored
    on the same test ratings: RMSE, MAE and training seconds per fold, then mean +- std.

Correctness first: the torch-table model must give the embtable model's predictions.

    python benchmarks/movielens.py            # workloads (a) and (b) (about 10 minutes on 2 cores)
    python benchmarks/movielens.py --quick    # small sizes, for a smoke test
    python benchmarks/movielens.py --folds 5  # (c): embtable vs Surprise SVD / SVD++ (~20 min)
    python benchmarks/movielens.py --folds 5 --peers svd   # (c) without the slow SVD++
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import embtable
from embtable.data.movielens import load_movielens
from embtable.models import MatrixFactorization
from embtable.models.fit import FitConfig, fit_ratings, make_optimizer, predict_ratings, train_step
from embtable.models.metrics import rmse

VARIANTS = (("embtable fused Adam", "fused", False), ("torch dense Adam", "dense", True),
            ("torch SparseAdam", "sparse", True))  # fmt: skip


def torch_tables(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` whose embtable tables are torch modules with the same weights."""
    twin = copy.deepcopy(model)
    for parent in list(twin.modules()):
        for name, child in list(parent.named_children()):
            w = getattr(child, "weight", None)
            if isinstance(child, embtable.Embedding):
                new = torch.nn.Embedding(*w.shape, padding_idx=child.padding_idx)
            elif isinstance(child, embtable.EmbeddingBag):
                new = torch.nn.EmbeddingBag(*w.shape, mode=child.mode, padding_idx=child.padding_idx)
            else:
                continue
            with torch.no_grad():
                new.weight.copy_(w)
            setattr(parent, name, new)
    return twin


def build(num_users: int, num_items: int, sizes: dict, mean: float, seed: int) -> MatrixFactorization:
    torch.manual_seed(seed)
    return MatrixFactorization(num_users, num_items, 32, global_mean=mean, **sizes)


def check_parity(model: MatrixFactorization, users, items, features) -> None:
    twin = torch_tables(model)
    with torch.no_grad():
        a = model(users, items, features(users, items))
        b = twin(users, items, features(users, items))
    if not torch.allclose(a, b, atol=1e-5):
        raise SystemExit(f"parity check failed: max diff {float((a - b).abs().max())}")


def movielens_100k(epochs: int, seed: int) -> list[dict]:
    data = load_movielens()
    tr, te = data.split("random", seed=seed)
    train = (data.users[tr], data.items[tr], data.ratings[tr])
    test = (data.users[te], data.items[te], data.ratings[te])
    mean = float(train[2].mean())
    base = build(data.num_users, data.num_items, data.cardinalities(), mean, seed)
    check_parity(base, test[0][:512], test[1][:512], data.features)
    rows = []
    for label, optimizer, use_torch in VARIANTS:
        model = torch_tables(base) if use_torch else copy.deepcopy(base)
        config = FitConfig(epochs=epochs, batch_size=256, lr=0.005, l2=0.05, optimizer=optimizer,
                           seed=seed)  # fmt: skip
        steps, last = [], [time.perf_counter()]

        def tick(done: int, total: int, steps=steps, last=last) -> None:
            now = time.perf_counter()
            if done > 1:  # the first step of an epoch also pays for the shuffle
                steps.append(now - last[0])
            last[0] = now

        history = fit_ratings(model, *train, features=data.features, config=config,
                              progress=tick)  # fmt: skip
        pred = predict_ratings(model, test[0], test[1], data.features)
        seconds = [h.seconds for h in history]
        rows.append({"workload": f"ML-100K ({len(tr):,} ratings, bs 256)", "variant": label,
                     "ms_step": 1000 * statistics.median(steps), "ms_min": 1000 * min(steps),
                     "s_epoch": statistics.median(seconds), "rmse": rmse(pred, test[2]),
                     "epochs": epochs})  # fmt: skip
    return rows


def synthetic(num_users: int, num_items: int, ratings: int, steps: int, seed: int,
              batch_size: int = 1024) -> list[dict]:  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    skew = lambda n, k: (n * torch.rand(k, generator=gen) ** 2).long()  # noqa: E731
    users, items = skew(num_users, ratings), skew(num_items, ratings)
    age = torch.randint(0, 7, (num_users,), generator=gen)
    gender = torch.randint(0, 2, (num_users,), generator=gen)
    occupation = torch.randint(0, 21, (num_users,), generator=gen)
    year = torch.randint(0, 17, (num_items,), generator=gen)
    genres = torch.full((num_items, 6), 19)
    count = torch.randint(1, 4, (num_items,), generator=gen)
    for j in range(3):
        pick = torch.randint(0, 19, (num_items,), generator=gen)
        genres[:, j] = torch.where(count > j, pick, genres[:, j])
    pu = torch.randn(num_users, 4, generator=gen) * 0.5
    qi = torch.randn(num_items, 4, generator=gen) * 0.5
    score = 3.5 + (pu[users] * qi[items]).sum(1) + 0.3 * torch.randn(ratings, generator=gen)
    values = score.round().clamp(1, 5)
    sizes = {"user_features": {"age": 7, "gender": 2, "occupation": 21},
             "item_features": {"year": 17}, "item_bags": {"genres": 19}}  # fmt: skip

    def features(u, i):
        return {"age": age[u], "gender": gender[u], "occupation": occupation[u], "year": year[i],
                "genres": genres[i]}  # fmt: skip

    base = build(num_users, num_items, sizes, float(values.mean()), seed)
    check_parity(base, users[:512], items[:512], features)
    steps_per_epoch = -(-ratings // batch_size)
    warm = max(3, steps // 5)
    order = torch.randperm(ratings, generator=gen)[: (warm + steps) * batch_size]
    rows = []
    for label, optimizer, use_torch in VARIANTS:
        model = torch_tables(base) if use_torch else copy.deepcopy(base)
        stepper = make_optimizer(model, optimizer, 0.005)
        times = []
        for k in range(warm + steps):
            idx = order[k * batch_size : (k + 1) * batch_size]
            u, i = users[idx], items[idx]
            start = time.perf_counter()
            train_step(model, stepper, u, i, values[idx], features(u, i), 0.05)
            if k >= warm:
                times.append(time.perf_counter() - start)
        ms = 1000 * statistics.median(times)
        rows.append({"workload": f"synthetic {num_users // 1000:,}K users x {num_items // 1000:,}K "
                                 f"items, bs {batch_size}", "variant": label, "ms_step": ms,
                     "ms_min": 1000 * min(times),
                     "s_epoch": ms * steps_per_epoch / 1000, "rmse": None})  # fmt: skip
        del model, stepper
    print(f"(b) {ratings:,} interactions = {steps_per_epoch:,} steps/epoch; timed {steps} steps "
          f"after {warm} warm-up steps per variant; s/epoch projected from the median step")
    return rows


def cross_validation(n_splits: int, seed: int, peers: list[str], limit: int | None) -> None:
    """(c): embtable's model and Surprise's algorithms on the same K folds."""
    import statistics as stats

    from embtable.cli.train import MovieLensOptions, _fit_split
    from embtable.models.crossval import kfold_indices
    from embtable.models.metrics import mae

    data = load_movielens()
    n = len(data) if limit is None else min(limit, len(data))
    folds = kfold_indices(n, n_splits, seed=seed)
    options = MovieLensOptions(seed=seed, limit=limit)
    algorithms = {}
    if peers:
        try:
            import surprise
        except ImportError as error:
            print(f"Surprise unavailable ({error}); only embtable runs")
        else:
            algorithms = {"Surprise SVD": surprise.SVD, "Surprise SVD++": surprise.SVDpp}
            algorithms = {k: v for k, v in algorithms.items()
                          if {"Surprise SVD": "svd", "Surprise SVD++": "svdpp"}[k] in peers}  # fmt: skip
            reader = surprise.Reader(rating_scale=(1, 5))
            raw = [(str(u), str(i), float(r), None) for u, i, r in
                   zip(data.users[:n].tolist(), data.items[:n].tolist(), data.ratings[:n].tolist())]  # fmt: skip
            dataset = surprise.Dataset(reader)  # the ratings in embtable's order, same indices
            dataset.raw_ratings = raw
    results: dict[str, list[tuple[float, float, float]]] = {}
    for k, (train_idx, test_idx) in enumerate(folds, 1):
        run = _fit_split(data, train_idx, test_idx, options, lambda *_: None, False)
        results.setdefault("embtable (demo model)", []).append(
            (run.test_rmse, run.test_mae, run.train_seconds))
        for name, algo_class in algorithms.items():
            trainset = dataset.construct_trainset([raw[i] for i in train_idx.tolist()])
            testset = dataset.construct_testset([raw[i] for i in test_idx.tolist()])
            algo = algo_class(random_state=seed)
            start = time.perf_counter()
            algo.fit(trainset)
            seconds = time.perf_counter() - start
            predictions = algo.test(testset)
            est = torch.tensor([p.est for p in predictions], dtype=torch.float64)
            true = torch.tensor([p.r_ui for p in predictions], dtype=torch.float64)
            results.setdefault(name, []).append((rmse(est, true), mae(est, true), seconds))
        line = "  ".join(f"{name} {r[-1][0]:.4f}" for name, r in results.items())
        print(f"fold {k}/{n_splits}: test RMSE  {line}", flush=True)
    print(f"\n(c) MovieLens-100K, {n:,} ratings, {n_splits} folds (Surprise KFold, shuffled, "
          f"random_state={seed}); same training and test ratings for every contender; "
          f"{torch.get_num_threads()} thread(s)\n")  # fmt: skip
    print("| model | " + " | ".join(f"fold {k} RMSE" for k in range(1, n_splits + 1))
          + " | mean RMSE | std | mean MAE | std | train s / fold |")  # fmt: skip
    print("|---|" + "---:|" * (n_splits + 5))
    for name, rows in results.items():
        rm, ma, sec = zip(*rows)
        print(f"| {name} | " + " | ".join(f"{r:.4f}" for r in rm)
              + f" | **{stats.mean(rm):.4f}** | {stats.pstdev(rm):.4f} | {stats.mean(ma):.4f} | "
              f"{stats.pstdev(ma):.4f} | {stats.median(sec):.1f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--ratings", type=int, default=5_000_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("a", "b"))
    parser.add_argument("--folds", type=int, help="run (c), K-fold cross-validation, instead")
    parser.add_argument("--peers", default="svd,svdpp", help="Surprise algorithms for (c)")
    parser.add_argument("--limit", type=int, help="(c) on the first N ratings only (smoke test)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.folds:
        cross_validation(args.folds, args.seed, [p for p in args.peers.split(",") if p], args.limit)
        return
    users, items = 1_000_000, 200_000
    if args.quick:
        args.epochs, args.steps, args.ratings, users, items = 1, 10, 200_000, 100_000, 20_000
    print(f"torch {torch.__version__}, {args.threads} threads, embtable compiled kernels: "
          f"{embtable.ops.extension_available()}")  # fmt: skip
    rows = []
    if args.only in (None, "a"):
        rows += movielens_100k(args.epochs, args.seed)
    if args.only in (None, "b"):
        rows += synthetic(users, items, args.ratings, args.steps, args.seed)
    report(rows)


def report(rows: list[dict]) -> None:
    print(f"\n{'workload':<38} {'variant':<20} {'ms/step':>8} {'min ms':>7} {'s/epoch':>8} "
          f"{'test RMSE':>9} {'vs dense':>8} {'vs sparse':>9}")  # fmt: skip
    for workload in dict.fromkeys(r["workload"] for r in rows):
        group = [r for r in rows if r["workload"] == workload]
        ref = {r["variant"]: r["ms_step"] for r in group}
        for r in group:
            rm = f"{r['rmse']:.4f}" if r.get("rmse") is not None else "-"
            dense = ref["torch dense Adam"] / r["ms_step"]
            sparse = ref["torch SparseAdam"] / r["ms_step"]
            print(f"{workload:<38} {r['variant']:<20} {r['ms_step']:>8.2f} {r['ms_min']:>7.2f} "
                  f"{r['s_epoch']:>8.1f} {rm:>9} {dense:>7.2f}x {sparse:>8.2f}x")  # fmt: skip
    print("ms/step: median step (wall clock); min ms: fastest step; vs dense / vs sparse: how "
          "many times faster than that variant (median steps); ML-100K s/epoch: median epoch")


if __name__ == "__main__":
    main()
