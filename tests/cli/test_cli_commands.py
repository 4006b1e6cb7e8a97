"""The `embtable` command on small files written by the test: each command and error paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from embtable.cli.main import main

pytest.importorskip("safetensors")

VECTORS = """6 3
cat 1.0 0.1 0.0
dog 0.9 0.2 0.0
king 0.0 1.0 0.1
queen 0.1 0.9 0.9
man 0.1 0.8 -0.6
woman 0.2 0.7 0.4
"""


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBTABLE_NO_PROGRESS", "1")


@pytest.fixture()
def vec(tmp_path: Path) -> Path:
    path = tmp_path / "small.txt"
    path.write_text(VECTORS)
    return path


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_command(capsys) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for name in ("train", "demo", "neighbors", "analogy", "plot", "evaluate", "convert", "info"):
        assert f"embtable {name}" in out
    code, out, _ = run(["neighbors", "--help"], capsys)
    assert code == 0 and "examples:" in out and "--topn" in out


def test_console_script_help_and_error_exit_codes(tmp_path: Path) -> None:
    env = {**os.environ, "EMBTABLE_NO_PROGRESS": "1"}
    cmd = [sys.executable, "-c", "import sys; from embtable.cli.main import main; sys.exit(main())"]
    ok = subprocess.run([*cmd, "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0 and "usage: embtable" in ok.stdout
    bad = subprocess.run([*cmd, "info", str(tmp_path / "nope.txt")], capture_output=True,
                         text=True, env=env, timeout=120)  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0 and "Traceback" not in bad.stderr
    assert "nope.txt does not exist" in bad.stderr


def test_info_neighbors_analogy(vec: Path, capsys) -> None:
    code, out, _ = run(["info", vec], capsys)
    assert code == 0 and "word2vec" in out and "tokens  6" in out and "dim     3" in out
    code, out, _ = run(["neighbors", vec, "cat", "-k", "2", "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and [t for t, _ in result["cat"]] == ["dog", "woman"]
    w = torch.tensor([[float(x) for x in line.split()[1:]] for line in VECTORS.splitlines()[1:]])
    unit = w / w.norm(dim=1, keepdim=True)
    assert result["cat"][0][1] == pytest.approx(float(unit[0] @ unit[1]), abs=1e-4)
    code, out, _ = run(["analogy", vec, "king", "man", "woman", "--json"], capsys)
    answers = json.loads(out)
    q = unit[2] - unit[4] + unit[5]
    cos = (unit @ q) / q.norm()
    cos[[2, 4, 5]] = -2
    assert code == 0 and answers[0][0] == ["cat", "dog", "king", "queen", "man", "woman"][int(cos.argmax())]
    code, out, _ = run(["neighbors", vec, "QUE"], capsys)  # a unique prefix, any case
    assert code == 0 and out.startswith("queen:")


def test_convert_round_trips_every_format(vec: Path, tmp_path: Path, capsys) -> None:
    native = tmp_path / "native"
    assert run(["convert", vec, native], capsys)[0] == 0
    for fmt, name in (("word2vec-binary", "v.bin"), ("glove", "v.glove"), ("word2vec", "v.w2v")):
        assert run(["convert", native, tmp_path / name, "--to", fmt], capsys)[0] == 0
        code, out, _ = run(["info", tmp_path / name, "--json"], capsys)
        facts = json.loads(out)
        assert code == 0 and facts["tokens"] == 6 and facts["dim"] == 3
        assert facts["first_tokens"][:2] == ["cat", "dog"]
    code, _, err = run(["convert", vec, native], capsys)
    assert code == 1 and "exists; pass --force" in err


def test_plot_png_and_html(vec: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    png = tmp_path / "map.png"
    code, out, _ = run(["plot", vec, "-o", png, "--method", "pca"], capsys)
    assert code == 0 and png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    html = tmp_path / "map.html"
    code, _, _ = run(["plot", vec, "-o", html, "--tokens", "cat", "dog", "king", "queen",
                      "--method", "tsne", "--perplexity", "2"], capsys)  # fmt: skip
    assert code == 0 and "queen" in html.read_text()


def test_evaluate_analogies_and_pairs(vec: Path, tmp_path: Path, capsys) -> None:
    questions = tmp_path / "questions.txt"
    questions.write_text(": royal\nman king woman queen\nking man queen woman\n")
    code, out, _ = run(["evaluate", vec, questions, "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and result["kind"] == "analogies"
    assert result["sections"]["royal"]["total"] == 2
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("cat\tdog\t9.0\nking\tqueen\t8.0\ncat\tking\t1.0\nman\twoman\t7.0\n")
    code, out, _ = run(["evaluate", vec, pairs, "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and result["kind"] == "pairs" and result["pairs"] == 4
    assert -1 <= result["spearman"] <= 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["neighbors", "{vec}", "zebra"], "unknown token 'zebra'"),
        (["neighbors", "{tmp}/missing.txt", "cat"], "missing.txt does not exist"),
        (["info", "{tmp}/garbage.txt"], "cannot read"),
        (["analogy", "{vec}", "king", "man", "womann"], "did you mean 'woman'"),
        (["info", "{tmp}/empty.txt"], "is empty"),
        (["neighbors", "{tmp}/ckpt", "cat"], "neither a native vectors folder"),
        (["evaluate", "{vec}", "{tmp}/missing.tsv"], "missing.tsv does not exist"),
        (["plot", "{vec}", "-o", "{tmp}/x.gif"], "must end in .png or .html"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(args, message, vec: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "garbage.txt").write_text("2 3\ncat 1 2\ndog x y z\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.pt").write_bytes(b"junk")
    args = [a.format(vec=vec, tmp=tmp_path) for a in args]
    code, _, err = run(args, capsys)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith(f"embtable {args[0]}: error: ")
    assert message in err and "Traceback" not in err


def test_unknown_command_and_bad_option(capsys) -> None:
    code, _, err = run(["frobnicate"], capsys)
    assert code == 2 and err.count("\n") == 1 and "invalid choice: 'frobnicate'" in err
    code, _, err = run(["neighbors", "x", "cat", "-k", "many"], capsys)
    assert code == 2 and err.count("\n") == 1 and "expected an integer >= 1" in err


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="does not exist"):
        main(["--debug", "info", str(tmp_path / "nope.txt")])


def test_corrupt_checkpoint_is_one_line(tmp_path: Path, capsys) -> None:
    from embtable.models import MatrixFactorization
    from embtable.models.checkpoint import save_checkpoint
    from embtable.vectors import Vectors

    folder = tmp_path / "model"
    save_checkpoint(folder, MatrixFactorization(2, 3, 2), {})
    Vectors(["a", "b", "c"], torch.eye(3)[:, :2].contiguous()).save(folder / "items")
    code, out, _ = run(["info", folder], capsys)
    assert code == 0 and "MatrixFactorization" in out
    (folder / "items" / "vectors.safetensors").write_bytes(b"\xff" * 16)
    code, _, err = run(["neighbors", folder, "a"], capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err


def test_corrupt_model_weights_are_one_line(tmp_path: Path, capsys) -> None:
    from embtable.models import MatrixFactorization
    from embtable.models.checkpoint import save_checkpoint
    from embtable.vectors import Vectors

    folder = tmp_path / "model"
    save_checkpoint(folder, MatrixFactorization(2, 3, 2), {})
    Vectors(["a", "b", "c"], torch.eye(3)[:, :2].contiguous()).save(folder / "items")
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    code, _, err = run(["info", folder], capsys)
    assert code == 1 and err.count("\n") == 1 and "model.safetensors" in err
