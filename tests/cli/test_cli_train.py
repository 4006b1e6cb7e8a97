"""`embtable train movielens` on real data (a subset, 2 short epochs) and the demo's report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from embtable.cli.main import main


def test_short_training_run_beats_the_global_mean(movielens, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("EMBTABLE_NO_PROGRESS", "1")
    out = tmp_path / "ml"
    code = main(["train", "movielens", "--epochs", "2", "--limit", "30000", "--out", str(out),
                 "--lr", "0.01", "--batch-size", "512"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    assert "epoch   1/2" in printed and "test RMSE" in printed and "Recall@10" in printed
    config = json.loads((out / "config.json").read_text())
    history, metrics = config["history"], config["metrics"]
    assert history[1]["loss"] < history[0]["loss"]
    assert metrics["test_rmse"] < metrics["global_mean_rmse"]
    assert 0 <= metrics["recall@10"] <= 1 and 0 <= metrics["popularity_ndcg@10"] <= 1
    assert (out / "model.safetensors").is_file()
    code = main(["neighbors", str(out), "Toy Story", "-k", "3", "--json"])
    near = json.loads(capsys.readouterr().out)
    assert code == 0 and list(near) == ["Toy Story (1995)"] and len(near["Toy Story (1995)"]) == 3
    from embtable.models.checkpoint import load_checkpoint

    model, _ = load_checkpoint(out)
    from embtable.cli.train import MovieLensOptions

    dim = MovieLensOptions().dim
    assert model.item_vectors.weight.shape == (movielens.num_items, dim + 1)  # + bias column
    assert torch.isfinite(model.user_vectors.weight).all()


def test_demo_report_without_the_word_part(movielens, tmp_path: Path, monkeypatch, capsys) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    monkeypatch.setenv("EMBTABLE_NO_PROGRESS", "1")
    out = tmp_path / "report"
    code = main(["demo", "--out", str(out), "--epochs", "1", "--limit", "20000",
                 "--movies", "150", "--skip-words"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "report: " in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["movielens"]["toy_story_neighbours"]["query"] == "Toy Story (1995)"
    png = out / "movies_tsne.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 20000
    assert "movies_tsne.png" in (out / "index.html").read_text()
