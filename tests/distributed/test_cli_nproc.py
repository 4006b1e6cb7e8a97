"""`embtable train movielens --nproc 2`: the demo recommender on tables sharded over 2 processes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from embtable.cli.main import main


def test_two_processes_beat_the_global_mean(movielens, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ml"
    code = main(["train", "movielens", "--nproc", "2", "--epochs", "2", "--limit", "20000",
                 "--out", str(out), "--lr", "0.01", "--batch-size", "256"])  # fmt: skip
    assert code == 0
    assert "test RMSE" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nproc"] == 2
    history = summary["history"]
    assert history[1]["train_rmse"] < history[0]["train_rmse"]
    # the oracle: predicting the training mean for every test rating (same split, same limit)
    train_idx, test_idx = movielens.split("random", test_fraction=0.2, seed=0)
    keep = torch.arange(20000)
    train_idx, test_idx = train_idx[torch.isin(train_idx, keep)], test_idx[torch.isin(test_idx, keep)]
    mean = movielens.ratings[train_idx].mean()
    baseline = float((movielens.ratings[test_idx] - mean).pow(2).mean().sqrt())
    assert summary["test"]["ratings"] == len(test_idx)
    assert summary["test"]["rmse"] < baseline
    # the sharded tables' checkpoint loads as plain tensors with the collection's keys
    from embtable.distributed import load_tables

    tables = load_tables(out / "tables")
    assert tables["embedding_bags.user.weight"].shape == (movielens.num_users, 17)
    assert tables["embedding_bags.item.weight"].shape == (movielens.num_items, 17)
    # summary.json names the checkpoint it describes (a run killed between the two is caught)
    manifest = (out / "tables" / "embtable_manifest.json").read_bytes()
    assert summary["tables_manifest_sha256"] == hashlib.sha256(manifest).hexdigest()
    from embtable.distributed.movielens import read_summary

    assert read_summary(out) == summary
    # tables of another run beside this summary: refused
    (out / "tables" / "embtable_manifest.json").write_bytes(manifest + b" ")
    with pytest.raises(RuntimeError, match="does not describe the checkpoint"):
        read_summary(out)


def test_nproc_below_one_is_refused(capsys) -> None:
    assert main(["train", "movielens", "--nproc", "0"]) == 1
    assert "--nproc must be >= 1, got 0" in capsys.readouterr().err
