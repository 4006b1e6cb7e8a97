"""Adversarial ``embtable train`` output folders: saves killed at every step or SIGKILLed at
random moments, and folders whose parts do not belong together.

Oracle: every part of a save is filled with the save's number (weights, item vectors,
``summary.json``, ``items/genres.json``, the metadata of ``config.json``), so a folder that
reads back must show one number everywhere (the old save or the new one, complete); hand-broken
folders whose only fault is known must raise ``ValueError`` naming the part.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
import torch
from _harness import CaseList, case, verdict

_LAYOUT = (["config.json", "items", "model.safetensors", "summary.json"],
           ["genres.json", "vectors.safetensors", "vocab.json"])  # fmt: skip


def _tmp() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="adv-train-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # (the child's exit cleans up)
    return folder


def _parts(run: int) -> tuple:
    """The arguments of ``save_model_folder`` for save number ``run``: all filled with it."""
    from embtable.models import MatrixFactorization
    from embtable.vectors import Vectors

    model = MatrixFactorization(6, 5, 4)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(run))
    vectors = Vectors([f"movie {i}" for i in range(5)], torch.full((5, 4), float(run)))
    return model, {"run": run}, vectors, {"run": run}


def _save(folder: Path, run: int) -> None:
    """``save_model_folder`` without ``os.fsync`` (a kill, not a power cut, is what these cases
    simulate: syncing only makes them slow)."""
    from embtable.cli._model_folder import save_model_folder

    fsync, os.fsync = os.fsync, lambda fd: None
    try:
        save_model_folder(folder, *_parts(run))
    finally:
        os.fsync = fsync


def _read(folder: Path) -> int:
    """The save number the folder reads as, after checking that every part shows it."""
    from embtable.cli._model_folder import open_model_folder
    from embtable.models.checkpoint import load_checkpoint
    from embtable.vectors import Vectors

    parts = open_model_folder(folder)  # (raises on a part of another save)
    assert parts.checked
    model, meta = load_checkpoint(folder)
    run = meta["run"]
    summary = json.loads(parts.summary.read_text())
    genres = json.loads((parts.items / "genres.json").read_text())
    vectors = Vectors.load(parts.items, mmap=False)
    seen = {
        "summary.json": summary["run"],
        "genres.json": genres["run"],
        "vectors": sorted({float(v) for v in vectors.weight.flatten()}),
        "weights": sorted({float(v) for p in model.parameters() for v in p.flatten()}),
    }
    assert seen == {"summary.json": run, "genres.json": run, "vectors": [run], "weights": [run]}, (
        f"mixed folder: config.json of save {run}, parts {seen}"
    )
    return run


def _layout(folder: Path) -> tuple[list[str], list[str]]:
    return sorted(p.name for p in folder.iterdir()), sorted(p.name for p in (folder / "items").iterdir())


class _bomb:
    """Raise ``KeyboardInterrupt`` (a kill) at the ``step``-th rename or removal (``os.replace``,
    ``os.rename``, ``os.unlink``, ``os.rmdir``; inside ``shutil.rmtree`` too)."""

    NAMES = ("replace", "rename", "unlink", "rmdir")

    def __init__(self, step: int) -> None:
        self.step, self.calls = step, 0

    def __enter__(self):
        self.real = {name: getattr(os, name) for name in self.NAMES}

        def wrap(real):
            def call(*args, **kwargs):
                self.calls += 1
                if self.calls == self.step:
                    raise KeyboardInterrupt("killed")
                return real(*args, **kwargs)

            return call

        for name, real in self.real.items():
            setattr(os, name, wrap(real))
        return self

    def __exit__(self, *exc) -> None:
        for name, real in self.real.items():
            setattr(os, name, real)


_OLD: dict = {}


def _killed_at(step: int) -> None:
    """Save 2 over save 1, killed at its ``step``-th rename or removal: the folder reads as
    save 1 or save 2, whole; the next save finishes or clears what the killed one left and
    leaves exactly the canonical layout."""
    if not _OLD:
        _OLD["folder"] = _tmp() / "old"
        _save(_OLD["folder"], 1)
    folder = _tmp() / "out"
    shutil.copytree(_OLD["folder"], folder)
    with _bomb(step) as bomb:
        try:
            _save(folder, 2)
        except KeyboardInterrupt:
            pass
    finished = bomb.calls < step  # (a kill counts the clean-up's removals after it too)
    assert not finished or bomb.calls >= 10, f"a save made only {bomb.calls} renames or removals"
    run = _read(folder)
    if finished:  # the new save, in canonical form
        assert run == 2 and _layout(folder) == _LAYOUT, (run, _layout(folder))
    _save(folder, 3)
    assert _read(folder) == 3 and _layout(folder) == _LAYOUT, _layout(folder)


def _killed_after_killed_switch(step: int) -> None:
    """Save 2 stopped right after its switch (config.json names the staged parts, the old ones
    still in place), then save 3 killed at its ``step``-th rename or removal: the folder reads
    as save 2 or save 3, whole, and save 4 leaves the canonical layout."""
    from embtable.cli import _model_folder

    folder = _tmp() / "out"
    _save(folder, 1)
    settle, calls = _model_folder._settle, []

    def stop_second(path):
        calls.append(path)
        if len(calls) == 2:  # (the renames after the switch)
            raise KeyboardInterrupt("killed")
        settle(path)

    _model_folder._settle = stop_second
    try:
        _save(folder, 2)
    except KeyboardInterrupt:
        pass
    finally:
        _model_folder._settle = settle
    assert (folder / "summary-next.json").is_file() and (folder / "items-next").is_dir()
    assert _read(folder) == 2
    with _bomb(step):
        try:
            _save(folder, 3)
        except KeyboardInterrupt:
            pass
    assert _read(folder) in (2, 3)
    _save(folder, 4)
    assert _read(folder) == 4 and _layout(folder) == _LAYOUT, _layout(folder)


def _sigkill_mid_save(seed: int, kills: int) -> None:
    """SIGKILL a forked process saving folders in a loop at random moments (no clean-up
    runs): the folder reads as one save, whole, and the next save works."""
    rng = random.Random(seed)
    for _ in range(kills):
        folder = _tmp() / "out"
        done, report = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: save 1, 2, 3, ... until killed
            try:
                os.close(done)
                for run in range(1, 10**6):
                    _save(folder, run)
                    os.write(report, b"%d\n" % run)
            finally:
                os._exit(1)
        os.close(report)
        with os.fdopen(done, "rb") as progress:
            progress.readline()  # one complete save first
            delay = rng.uniform(0.0, 0.25)
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        run = _read(folder)
        assert run >= 1, f"killed after {delay:.3f} s"
        _save(folder, 1000)
        assert _read(folder) == 1000 and _layout(folder) == _LAYOUT


def _broken(kind: str) -> None:
    """A folder with one part that is not the save's must raise ValueError naming it."""
    from embtable.cli._model_folder import open_model_folder

    base = _tmp()
    folder, other = base / "out", base / "other"
    _save(folder, 1)
    _save(other, 2)
    config = json.loads((folder / "config.json").read_text())
    if kind == "summary_of_another_run":  # what an in-place write killed before config.json left
        shutil.copy(other / "summary.json", folder / "summary.json")
    elif kind == "items_of_another_run":
        shutil.rmtree(folder / "items")
        shutil.copytree(other / "items", folder / "items")
    elif kind == "genres_edited":
        (folder / "items" / "genres.json").write_text('{"run": 1}')
    elif kind == "rows_truncated":
        rows = folder / "items" / "vectors.safetensors"
        rows.write_bytes(rows.read_bytes()[:-8])
    elif kind == "items_missing":
        shutil.rmtree(folder / "items")
    elif kind == "entry_names_a_path_elsewhere":
        config["files"]["summary.json"]["file"] = "../other/summary.json"
    elif kind == "entry_not_an_object":
        config["files"]["items/vocab.json"] = "items/vocab.json"
    elif kind == "entry_without_vocab":
        del config["files"]["items/vocab.json"]
    (folder / "config.json").write_text(json.dumps(config))
    open_model_folder(folder)


def _cli_refuses_mixed_folder() -> None:
    """``embtable neighbors`` / ``info`` (``load_vectors``) refuse a folder with items of
    another run, with the CLI's error."""
    from embtable.cli._common import load_vectors

    base = _tmp()
    _save(base / "out", 1)
    _save(base / "other", 2)
    shutil.copy(base / "other" / "items" / "genres.json", base / "out" / "items" / "genres.json")
    load_vectors(base / "out")


def _legacy_folder_reads_unchecked() -> None:
    """A folder saved before config.json named its parts (no "files") reads as before."""
    from embtable.cli._model_folder import open_model_folder

    folder = _tmp() / "out"
    _save(folder, 1)
    config = json.loads((folder / "config.json").read_text())
    del config["files"]
    (folder / "config.json").write_text(json.dumps(config))
    parts = open_model_folder(folder)
    assert not parts.checked and parts.items == folder / "items" and parts.summary == folder / "summary.json"
    _save(folder, 2)  # and a new save over it is checked again
    assert _read(folder) == 2 and _layout(folder) == _LAYOUT


CASES: CaseList = []
for _step in range(1, 21):  # a save over a finished one makes 19 renames or removals
    CASES.append(case("loss", f"train_folder_killed_at_{_step}", _killed_at, _step))
for _step in range(1, 10):  # its first seven steps finish the stopped save's renames
    CASES.append(case("loss", f"train_folder_after_switch_killed_at_{_step}", _killed_after_killed_switch, _step))
CASES.append(case("loss", "train_folder_sigkill_mid_save", _sigkill_mid_save, 0, 4, timeout=60))
_MISMATCH = r"embtable train folder .*out/{} is not the file .*out/config.json names: .*another run"
for _kind, _match in (
    ("summary_of_another_run", _MISMATCH.format("summary.json")),
    ("items_of_another_run", _MISMATCH.format("items/genres.json")),
    ("genres_edited", _MISMATCH.format("items/genres.json")),
    ("rows_truncated", _MISMATCH.format("items/vectors.safetensors")),
    ("items_missing", r"embtable train folder .*out is incomplete: config.json names items/genres.json"),
    ("entry_names_a_path_elsewhere", r"embtable train folder .*out/config.json is corrupt: its \"files\""),
    ("entry_not_an_object", r"embtable train folder .*out/config.json is corrupt: its \"files\""),
    ("entry_without_vocab", r"embtable train folder .*out/config.json is corrupt: its \"files\""),
):
    CASES.append(case("corruption", f"train_folder_{_kind}", _broken, _kind, expect=ValueError, match=_match))


def _cli_error():
    from embtable.cli._common import CliError

    return CliError


CASES.append(case("corruption", "train_folder_cli_refuses_mixed", _cli_refuses_mixed_folder,
                  expect=_cli_error(), match=r"cannot read .*out as native vectors: embtable train "
                  r"folder .*genres.json is not the file"))  # fmt: skip
CASES.append(case("loss", "train_folder_legacy_reads_unchecked", _legacy_folder_reads_unchecked))


@pytest.mark.parametrize("item", CASES, ids=lambda c: c.name)
def test_case(item, outcomes):
    problem = verdict(item, outcomes[item.name])
    assert problem is None, problem
