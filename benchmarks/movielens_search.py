"""Choose the demo model's settings on validation data only (issue 18).

The demo's split (random 80/20 of MovieLens-100K, seed 0) is split again: 10 % of the
*training* ratings become the validation part (``embtable.models.crossval.holdout_indices``,
as ``embtable train`` does). Every setting of a small grid is trained on the rest with early
stopping on validation (patience 3, the best epoch kept) and scored on validation only. The
test part is never loaded into a tensor here: this script cannot look at it.

    python benchmarks/movielens_search.py            # the grid below (~5-10 min on 2 cores)
    python benchmarks/movielens_search.py --quick    # 2 settings, for a smoke test

Prints one row per setting (validation RMSE, the epoch kept, seconds) sorted by validation RMSE;
the winner becomes ``MovieLensOptions``' defaults (docs/models.md records the table).
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from embtable.data.movielens import load_movielens
from embtable.models import MatrixFactorization
from embtable.models.crossval import holdout_indices
from embtable.models.fit import FitConfig, best_epoch, fit_ratings

GRID = {"dim": (16, 32, 64), "lr": (0.002, 0.005, 0.01), "l2": (0.02, 0.05, 0.1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--max-epochs", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_movielens()
    train_idx, _ = data.split("random", test_fraction=0.2, seed=0)  # the test part is dropped
    fit_idx, valid_idx = holdout_indices(train_idx, 0.1, seed=0)
    tr = (data.users[fit_idx], data.items[fit_idx], data.ratings[fit_idx])
    va = (data.users[valid_idx], data.items[valid_idx], data.ratings[valid_idx])
    grid = list(itertools.product(*GRID.values()))
    if args.quick:
        grid = grid[:2]
    rows = []
    for dim, lr, l2 in grid:
        torch.manual_seed(0)
        model = MatrixFactorization(data.num_users, data.num_items, dim,
                                    global_mean=float(tr[2].mean()), **data.cardinalities())  # fmt: skip
        config = FitConfig(epochs=args.max_epochs, batch_size=256, lr=lr, l2=l2,
                           optimizer="fused", seed=0, patience=3)  # fmt: skip
        start = time.perf_counter()
        history = fit_ratings(model, *tr, features=data.features, config=config, valid=va)
        best = best_epoch(history)
        rows.append((best.valid_rmse, dim, lr, l2, best.epoch, time.perf_counter() - start))
        print(f"dim {dim:>3}  lr {lr:<6}  l2 {l2:<5}  valid RMSE {best.valid_rmse:.4f}  "
              f"epoch {best.epoch:>2}  {rows[-1][-1]:.1f} s", flush=True)  # fmt: skip
    print(f"\n{len(fit_idx):,} training / {len(valid_idx):,} validation ratings; "
          "batch 256, fused Adam, patience 3, best epoch kept\n")  # fmt: skip
    print("| dim | lr | l2 | validation RMSE | epoch kept | s |")
    print("|---:|---:|---:|---:|---:|---:|")
    for valid_rmse, dim, lr, l2, epoch, seconds in sorted(rows):
        print(f"| {dim} | {lr} | {l2} | {valid_rmse:.4f} | {epoch} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
