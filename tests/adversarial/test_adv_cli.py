"""Adversarial command lines and data folders: FIFOs, lying files, injected failures, divergence.

Oracles: the exit status and stderr of ``embtable.cli.main.main`` (one line, no traceback,
non-zero; a traceback only with ``--debug``), the bytes of a previous ``--out`` model, and
hand-made MovieLens folders whose only fault is known.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
from _harness import CaseList, case, verdict

from embtable.cli.main import main

GENRES = 19


class Exit(Exception):
    """``"<status>: <stderr>"`` of a command that failed cleanly."""


def _run(argv: list[str]) -> tuple[int, str, str]:
    os.environ["EMBTABLE_NO_PROGRESS"] = "1"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _fails_cleanly(argv: list[str]) -> None:
    code, _, err = _run(argv)
    assert code != 0, f"exit status 0 for {argv}"
    assert err.count("\n") == 1 and "Traceback" not in err, f"not one line: {err!r}"
    raise Exit(f"{code}: {err.strip()}")


def _tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="adv-cli-"))


def _vectors_folder() -> Path:
    from embtable.vectors import Vectors

    folder = _tmp() / "v"
    Vectors(["a", "b", "c"], torch.eye(3)).save(folder)
    return folder


# ---------------------------------------------------------------- crashes and hangs

def _fifo(command: str) -> None:
    folder = _tmp()
    os.mkfifo(folder / "pipe")
    args = {"info": ["info"], "neighbors": ["neighbors"], "convert": ["convert"]}[command]
    tail = {"info": [], "neighbors": ["a"], "convert": [folder / "out", "--to", "word2vec"]}[command]
    _fails_cleanly([*args, folder / "pipe", *tail])


def _fifo_with_format(fmt: str) -> None:
    folder = _tmp()
    os.mkfifo(folder / "pipe")
    _fails_cleanly(["info", folder / "pipe", "--format", fmt])


# ---------------------------------------------------------------- clear errors

def _bad_file(kind: str, command: str) -> None:
    folder = _tmp()
    target = folder / "v.txt"
    if kind == "huge_header":
        target.write_text("100000000000 300\na " + " ".join(["1"] * 300) + "\n")
    elif kind == "huge_dim":
        target.write_text("2 1000000000000\na 1 2\n")
    elif kind == "native_non_string":
        target = _vectors_folder()
        (target / "vocab.json").write_text(json.dumps({"tokens": ["a", 7, "c"], "counts": None}))
    elif kind == "native_tokens_string":
        target = _vectors_folder()
        (target / "vocab.json").write_text(json.dumps({"tokens": "abc", "counts": None}))
    elif kind == "native_table_garbage":
        target = _vectors_folder()
        (target / "vectors.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    elif kind == "hf_pickle":
        target = folder / "hf"
        target.mkdir()
        (target / "vocab.txt").write_text("a\nb\n")
        import pickle

        (target / "pytorch_model.bin").write_bytes(pickle.dumps({"x": Path("a")}))
    elif kind == "hf_safetensors_garbage":
        target = folder / "hf"
        target.mkdir()
        (target / "vocab.txt").write_text("a\nb\n")
        (target / "model.safetensors").write_bytes(b"\xff" * 40)
    elif kind == "hf_tokenizer_non_string":
        target = folder / "hf"
        target.mkdir()
        torch.save({"embeddings.word_embeddings.weight": torch.zeros(3, 2)}, target / "pytorch_model.bin")
        (target / "tokenizer.json").write_text(json.dumps({"model": {"vocab": [[1, 0.0], ["b", 0.0]]}}))
    elif kind == "binary_garbage":
        target.write_bytes(b"\x00\xff" * 50)
    argv = {"info": ["info", target], "neighbors": ["neighbors", target, "a"],
            "convert": ["convert", target, folder / "out.txt", "--to", "word2vec"]}[command]
    _fails_cleanly(argv)


def _injected(error: str, debug: bool) -> None:
    """A loader failing with any exception type: one line (or the traceback with --debug)."""
    from embtable.vectors import Vectors

    folder = _vectors_folder()
    exc = {"MemoryError": MemoryError("cannot allocate"), "OverflowError": OverflowError("int too large"),
           "ZeroDivisionError": ZeroDivisionError("division by zero"),
           "RecursionError": RecursionError("maximum recursion depth exceeded"),
           "UnicodeEncodeError": UnicodeEncodeError("ascii", "é", 0, 1, "ordinal not in range"),
           "AssertionError": AssertionError("library assert")}[error]

    def boom(*args, **kwargs):
        raise exc

    real = Vectors.load
    Vectors.load = classmethod(boom)
    try:
        if debug:
            main(["--debug", "info", str(folder)])
            raise AssertionError("--debug did not raise")
        _fails_cleanly(["info", folder])
    finally:
        Vectors.load = real


def _bad_option(argv: list[str]) -> None:
    folder = _vectors_folder()
    _fails_cleanly([str(a).replace("{v}", str(folder)) for a in argv])


# ---------------------------------------------------------------- MovieLens folders

def _movielens(folder: Path, *, users: int = 12, items: int = 9, user_lines=None, item_lines=None,
               rating_lines=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    user_lines = user_lines or [f"{u}|{20 + u}|{'MF'[u % 2]}|job{u % 3}|0000{u}" for u in range(1, users + 1)]
    flags = lambda i: "|".join("1" if g == i % GENRES else "0" for g in range(GENRES))  # noqa: E731
    item_lines = item_lines or [f"{i}|Movie {i} (199{i % 10})|01-Jan-199{i % 10}||http://x|{flags(i)}"
                                for i in range(1, items + 1)]
    if rating_lines is None:
        rating_lines = [f"{u}\t{i}\t{1 + (u * i) % 5}\t{880000000 + u * 100 + i}"
                        for u in range(1, users + 1) for i in range(1, items + 1) if (u + i) % 3]
    (folder / "u.user").write_text("\n".join(user_lines) + "\n")
    (folder / "u.item").write_text("\n".join(item_lines) + "\n", encoding="latin-1")
    (folder / "u.data").write_text("\n".join(rating_lines) + "\n")
    return folder


def _movielens_repeated(kind: str, position: str) -> None:
    from embtable.data.movielens import load_movielens

    folder = _tmp() / "ml"
    users = [f"{u}|{20 + u}|{'MF'[u % 2]}|job{u % 3}|0000{u}" for u in range(1, 13)]
    items = None
    at = {"first": 1, "middle": 6, "last": 11}[position]
    if kind == "user":
        users.insert(at, f"{at}|99|F|other|99999")  # id `at` again, other side features
    else:
        flags = "|".join(["0"] * GENRES)
        items = [f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|{flags}" for i in range(1, 10)]
        items.insert(min(at, 8), f"{min(at, 8)}|Again (1990)|01-Jan-1990||http://x|{flags}")
    _movielens(folder, user_lines=users, item_lines=items)
    load_movielens(folder)


def _bad_rating_folder(value: str) -> Path:
    """A MovieLens folder whose only fault is the rating ``value`` on line 6 of u.data."""
    lines = [f"{u}\t{i}\t3\t88000000{i}" for u in range(1, 13) for i in range(1, 10)]
    lines[5] = f"1\t7\t{value}\t880000007"
    return _movielens(_tmp() / "ml", rating_lines=lines)


def _movielens_bad_rating(value: str) -> None:
    from embtable.data.movielens import load_movielens

    load_movielens(_bad_rating_folder(value))


def _movielens_cli_rating(value: str) -> None:
    folder = _bad_rating_folder(value)
    _fails_cleanly(["train", "movielens", "--data", folder, "--out", folder.parent / "out", "--epochs", "1"])


def _diverged_run_keeps_model(lr: str) -> None:
    data = _movielens(_tmp() / "ml")
    out = data.parent / "model"
    code, _, err = _run(["train", "movielens", "--data", data, "--out", out, "--epochs", "2", "--dim", "4"])
    assert code == 0, err
    before = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    code, _, err = _run(["train", "movielens", "--data", data, "--out", out, "--epochs", "3", "--dim", "4",
                         "--lr", lr, "--optimizer", "dense", "--valid-fraction", "0"])
    after = {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    assert after == before, "a diverged run changed the previous model"
    assert code == 1 and err.count("\n") == 1 and "diverged" in err, (code, err)
    raise Exit(f"{code}: {err.strip()}")


def _checkpoint_failed_save(how: str) -> None:
    """A save that fails (bad metadata, or killed before the weights are renamed) leaves the
    previous checkpoint loading exactly as before, without temporary files."""
    from embtable.models import MatrixFactorization
    from embtable.models.checkpoint import load_checkpoint, save_checkpoint

    folder = _tmp() / "ckpt"
    torch.manual_seed(0)
    old = MatrixFactorization(4, 5, 3)
    save_checkpoint(folder, old, {"run": 1})
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    torch.manual_seed(1)
    new = MatrixFactorization(4, 5, 3)
    real = os.replace
    try:
        if how == "bad_meta":
            save_checkpoint(folder, new, {"run": object()})
        else:
            def replace(*args, **kwargs):
                raise KeyboardInterrupt("killed")

            os.replace = replace
            save_checkpoint(folder, new, {"run": 2})
    except (TypeError, KeyboardInterrupt):
        pass
    finally:
        os.replace = real
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    model, meta = load_checkpoint(folder)
    assert meta["run"] == 1 and torch.equal(model.item_vectors.weight, old.item_vectors.weight)


CASES: CaseList = []
for _how in ("bad_meta", "killed_before_rename"):
    CASES.append(case("loss", f"checkpoint_failed_save_{_how}", _checkpoint_failed_save, _how))
for _command in ("info", "neighbors", "convert"):
    CASES.append(case("crash", f"fifo_{_command}", _fifo, _command, timeout=30, expect=Exit,
                      match=r"^1: embtable \w+: error: .*not a regular file"))
for _fmt in ("word2vec", "glove", "native", "hf", "word2vec-binary", "fasttext"):
    CASES.append(case("crash", f"fifo_format_{_fmt}", _fifo_with_format, _fmt, timeout=30, expect=Exit,
                      match=r"^1: embtable info: error: .*not a regular file"))
for _kind in ("huge_header", "huge_dim", "native_non_string", "native_tokens_string", "native_table_garbage",
              "hf_pickle", "hf_safetensors_garbage", "hf_tokenizer_non_string", "binary_garbage"):
    for _command in ("info", "neighbors", "convert"):
        CASES.append(case("error", f"cli_{_command}_{_kind}", _bad_file, _kind, _command, expect=Exit,
                          match=r"^1: embtable \w+: error: "))
for _error in ("MemoryError", "OverflowError", "ZeroDivisionError", "RecursionError", "UnicodeEncodeError",
               "AssertionError"):
    CASES.append(case("error", f"injected_{_error}", _injected, _error, False, expect=Exit,
                      match=r"^1: embtable info: error: "))
    CASES.append(case("error", f"injected_{_error}_debug", _injected, _error, True,
                      expect=Exception))
for _argv in (["evaluate", "{v}", "q.txt", "--restrict-vocab", "-5"], ["evaluate", "{v}", "q.txt", "--restrict-vocab", "0"],
              ["neighbors", "{v}", "a", "--topn", "-1"], ["neighbors", "{v}", "a", "--topn", "0"],
              ["analogy", "{v}", "a", "b", "c", "-k", "-3"], ["plot", "{v}", "--limit", "-2"],
              ["neighbors", "{v}", "a", "--topn", "1e9"], ["info"], ["nosuchcommand"]):
    CASES.append(case("error", f"option_{'_'.join(_argv[:1] + _argv[3:])}", _bad_option, _argv, expect=Exit,
                      match=r"^2: embtable"))
for _kind in ("user", "item"):
    for _position in ("first", "middle", "last"):
        CASES.append(case("corruption", f"movielens_repeated_{_kind}_{_position}", _movielens_repeated, _kind,
                          _position, expect=Exception, match=f"u.{_kind} line \\d+: {_kind} id .* defined again"))
for _value in ("inf", "-inf", "nan", "1e999", "three"):
    CASES.append(case("error", f"movielens_rating_{_value}", _movielens_bad_rating, _value, expect=Exception,
                      match="u.data line 6: the rating must be a number"))
for _value in ("inf", "nan"):
    CASES.append(case("error", f"cli_train_rating_{_value}", _movielens_cli_rating, _value, expect=Exit,
                      match=r"^1: embtable train: error: .*u.data line 6"))
CASES.append(case("loss", "diverged_train_keeps_previous_model", _diverged_run_keeps_model, "1e30",
                  timeout=120, expect=Exit, match="^1: embtable train: error: training diverged"))


@pytest.mark.parametrize("item", CASES, ids=lambda c: c.name)
def test_case(item, outcomes):
    problem = verdict(item, outcomes[item.name])
    assert problem is None, problem
