"""`embtable train movielens --nproc N` refuses the options its sharded demo does not apply
(they used to be ignored silently), before loading any data or starting a process."""

from __future__ import annotations

import pytest

from embtable.cli.main import main


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--optimizer", "sparse"], "--optimizer sparse"),
        (["--folds", "5"], "--folds 5"),
        (["--no-side-features"], "--no-side-features"),
        (["--l2", "0.1", "--topk", "5"], "--l2 0.1, --topk 5"),
        (["--valid-fraction", "0", "--patience", "0"], "--valid-fraction 0.0, --patience 0"),
    ],
)
def test_options_the_sharded_demo_ignores_are_refused(flags, named, tmp_path, capsys) -> None:
    out = tmp_path / "never"
    code = main(["train", "movielens", "--nproc", "2", "--out", str(out), *flags])
    assert code == 1
    err = capsys.readouterr().err
    assert f"--nproc 2: the sharded demo does not apply {named} " in err, err
    assert not out.exists()


def test_fused_optimizer_is_what_it_runs(monkeypatch, capsys) -> None:
    import embtable.distributed.movielens as sharded_demo

    seen = {}
    monkeypatch.setattr(
        sharded_demo, "train_movielens_sharded", lambda options, nproc: seen.update(n=nproc)
    )
    assert main(["train", "movielens", "--nproc", "2", "--optimizer", "fused"]) == 0
    assert seen == {"n": 2}
