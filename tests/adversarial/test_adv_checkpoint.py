"""Adversarial checkpoint folders: saves failed or SIGKILLed after each file, lying manifests.

Oracles: the models saved before (their weights and metadata, compared bit for bit), so a
folder must load as the old save or the new one, never new weights with an old
``config.json``; weights filled with the save's number (a SIGKILLed loop: the loaded weights
must all equal the number the loaded ``config.json`` records); hand-broken folders whose only
fault is known.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from _harness import CaseList, case, verdict


def _tmp() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="adv-ckpt-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)  # (the child's exit cleans up)
    return folder


def _model(seed: int):
    from embtable.models import MatrixFactorization

    torch.manual_seed(seed)
    return MatrixFactorization(4, 5, 3, global_mean=float(seed))


def _same(model, other) -> bool:
    a, b = model.state_dict(), other.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


#: Folder states a save may start from: a finished save, a legacy save (no "weights" entry),
#: a save stopped after its manifest (step 2: the manifest names model-next.safetensors) and
#: one stopped after the rename (step 3: it names model-next, which is gone).
_STARTS = ("clean", "legacy", "after_manifest", "after_rename")


def _start(folder: Path, start: str, old) -> None:
    """Leave ``folder`` holding the checkpoint of ``old`` (meta ``{"run": 1}``) in state ``start``."""
    from embtable.models.checkpoint import save_checkpoint

    if start in ("clean", "legacy"):
        save_checkpoint(folder, old, {"run": 1})
        if start == "legacy":
            config = json.loads((folder / "config.json").read_text())
            del config["weights"]
            (folder / "config.json").write_text(json.dumps(config))
        return
    stop = {"after_manifest": 3, "after_rename": 4}[start]  # the os.replace that never happens
    with _bomb(stop, "replace"):
        try:
            save_checkpoint(folder, old, {"run": 1})
        except KeyboardInterrupt:
            pass
    assert (folder / "model-next.safetensors").is_file() == (start == "after_manifest")


class _bomb:
    """Raise ``KeyboardInterrupt`` (a kill) at the ``step``-th ``os.replace`` / ``Path.unlink``."""

    def __init__(self, step: int, what: str = "both") -> None:
        self.step, self.what, self.calls = step, what, 0

    def _tick(self) -> None:
        self.calls += 1
        if self.calls == self.step:
            raise KeyboardInterrupt("killed")

    def __enter__(self):
        self.real = os.replace, Path.unlink
        real_replace, real_unlink = self.real

        def replace(*args, **kwargs):
            self._tick()
            return real_replace(*args, **kwargs)

        def unlink(path, *args, **kwargs):
            if self.what == "both":
                self._tick()
            return real_unlink(path, *args, **kwargs)

        os.replace, Path.unlink = replace, unlink
        return self

    def __exit__(self, *exc) -> None:
        os.replace, Path.unlink = self.real


def _killed_at(start: str, step: int) -> None:
    """Kill a save over a folder in state ``start`` at its ``step``-th rename or unlink: the
    folder loads as the old checkpoint or the new one (weights and metadata together), and
    the next save and load work."""
    from embtable.models.checkpoint import load_checkpoint, save_checkpoint

    folder = _tmp() / "ckpt"
    old, new = _model(1), _model(2)
    _start(folder, start, old)
    with _bomb(step) as bomb:
        try:
            save_checkpoint(folder, new, {"run": 2})
        except KeyboardInterrupt:
            pass
    model, meta = load_checkpoint(folder)
    assert (meta["run"], _same(model, old)) == (1, True) or (meta["run"], _same(model, new)) == (2, True), (
        f"mixed: config.json of run {meta['run']} with other weights (killed at step {step})"
    )
    if bomb.calls < step:  # the save finished: it must be the new one, in canonical form
        assert meta["run"] == 2 and sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    again = _model(3)
    save_checkpoint(folder, again, {"run": 3})
    model, meta = load_checkpoint(folder)
    assert meta["run"] == 3 and _same(model, again)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


_KILL_SCRIPT = """
import sys, torch
from embtable.models import MatrixFactorization
from embtable.models.checkpoint import save_checkpoint
model = MatrixFactorization(40, 50, 16)
i = 0
while True:
    i += 1
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(i))
    save_checkpoint(sys.argv[1], model, {"run": i})
    print(i, flush=True)
"""


def _sigkill_mid_save(delays: tuple[float, ...]) -> None:
    """SIGKILL a process saving checkpoints in a loop (weights filled with the save's number):
    the folder must load whole, weights equal to the number its config.json records."""
    from embtable.models.checkpoint import load_checkpoint

    for delay in delays:
        folder = _tmp() / "ckpt"
        child = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(folder)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        child.stdout.readline()  # one complete save first
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        model, meta = load_checkpoint(folder)
        run = meta["run"]
        assert all(bool(p.eq(float(run)).all()) for p in model.parameters()), (
            f"config.json of save {run} with weights of another save (killed after {delay} s)"
        )


def _broken(kind: str) -> None:
    """A folder whose manifest and weights do not belong together must raise ValueError naming
    the folder, never load."""
    from embtable.models.checkpoint import load_checkpoint, save_checkpoint

    base = _tmp()
    folder, other = base / "ckpt", base / "other"
    save_checkpoint(folder, _model(1), {"run": 1})
    save_checkpoint(other, _model(2), {"run": 2})
    config = json.loads((folder / "config.json").read_text())
    if kind == "weights_missing":
        (folder / "model.safetensors").unlink()
    elif kind == "legacy_weights_missing":
        del config["weights"]
        (folder / "model.safetensors").unlink()
    elif kind == "weights_of_another_save":  # the mix an in-place save killed between files made
        shutil.copy(other / "model.safetensors", folder / "model.safetensors")
    elif kind == "weights_truncated":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif kind == "manifest_names_missing_next":
        config["weights"]["file"] = "model-next.safetensors"
        (folder / "model.safetensors").unlink()
    elif kind in ("manifest_names_other_file", "manifest_weights_not_object", "manifest_digest_not_string"):
        config["weights"] = {
            "manifest_names_other_file": {**config["weights"], "file": "../other/model.safetensors"},
            "manifest_weights_not_object": ["model.safetensors"],
            "manifest_digest_not_string": {**config["weights"], "sha256": 5},
        }[kind]
    elif kind == "manifest_wrong_size":
        config["weights"]["bytes"] += 1
    (folder / "config.json").write_text(json.dumps(config))
    load_checkpoint(folder)


_TRAIN: dict = {}  # the reference runs, made once per child (the cases of a module share one)
_TRAIN_ARGS = ["--dim", "4", "--valid-fraction", "0", "--optimizer", "dense"]


def _train_reference() -> dict:
    """A MovieLens folder, a 1-epoch --out (the old model) and, as the oracle of the new one, a
    2-epoch run into a fresh folder, with the number of renames and unlinks its save made."""
    from test_adv_cli import _movielens, _run

    if not _TRAIN:
        base = _tmp()
        data = _movielens(base / "ml")
        code, _, err = _run(["train", "movielens", "--data", data, *_TRAIN_ARGS, "--out", base / "old", "--epochs", "1"])
        assert code == 0, err
        with _bomb(10**9) as count:  # never fires: counts the save's renames and unlinks
            code, _, err = _run(["train", "movielens", "--data", data, *_TRAIN_ARGS, "--out", base / "new",
                                 "--epochs", "2"])
        assert code == 0, err
        _TRAIN.update(data=data, old=base / "old", new=base / "new", steps=count.calls)
    return _TRAIN


def _train_killed_at(back: int) -> None:
    """``embtable train`` over a previous --out, killed at its ``back``-th last rename or unlink
    (the last steps are the output folder's switch and renames, cli/_model_folder.py): load_checkpoint gives the
    previous model or the new one (an identical run into a fresh folder is the oracle)."""
    from test_adv_cli import _run

    from embtable.models.checkpoint import load_checkpoint

    ref = _train_reference()
    out = _tmp() / "out"
    shutil.copytree(ref["old"], out)
    old, old_meta = load_checkpoint(out)
    new, new_meta = load_checkpoint(ref["new"])
    with _bomb(ref["steps"] - back + 1) as bomb:
        try:  # (the CLI turns the KeyboardInterrupt into an exit status)
            code, _, _ = _run(["train", "movielens", "--data", ref["data"], *_TRAIN_ARGS, "--out", out,
                               "--epochs", "2"])
        except KeyboardInterrupt:
            code = None
    assert bomb.calls >= bomb.step and code != 0, f"the run was not killed at step {bomb.step}"
    model, meta = load_checkpoint(out)
    epochs = meta["train"]["epochs"]
    assert (epochs == 1 and _same(model, old) and meta == old_meta) or (
        epochs == 2 and _same(model, new) and meta["metrics"]["test_rmse"] == new_meta["metrics"]["test_rmse"]
    ), f"mixed: config.json of the {epochs}-epoch run with other weights (killed {back} steps from the end)"


CASES: CaseList = []
for _start_state in _STARTS:
    for _step in range(1, 6):
        CASES.append(case("loss", f"checkpoint_{_start_state}_killed_at_{_step}", _killed_at, _start_state, _step))
CASES.append(case("loss", "checkpoint_sigkill_mid_save", _sigkill_mid_save, (0.0, 0.05), timeout=60))
for _back in range(1, 6):
    CASES.append(case("loss", f"train_killed_{_back}_steps_from_the_end", _train_killed_at, _back, timeout=120))
for _kind, _match in (
    ("weights_missing", r"checkpoint folder .*ckpt is incomplete: config.json names the weights model.safetensors"),
    ("legacy_weights_missing", r"checkpoint folder .*ckpt is incomplete: it has config.json but no model.safetensors"),
    ("weights_of_another_save", r"model.safetensors is corrupt or not the weights config.json names: .*folder .*ckpt"),
    ("weights_truncated", r"model.safetensors is corrupt or not the weights config.json names: .*folder .*ckpt"),
    ("manifest_names_missing_next", r"checkpoint folder .*ckpt is incomplete: .*model-next.safetensors, which is missing"),
    ("manifest_names_other_file", r"ckpt/config.json is corrupt \(its \"weights\" entry"),
    ("manifest_weights_not_object", r"ckpt/config.json is corrupt \(its \"weights\" entry"),
    ("manifest_digest_not_string", r"ckpt/config.json is corrupt \(its \"weights\" entry"),
    ("manifest_wrong_size", r"model.safetensors is corrupt or not the weights config.json names: .*folder .*ckpt"),
):
    CASES.append(case("corruption", f"checkpoint_{_kind}", _broken, _kind, expect=ValueError, match=_match))


@pytest.mark.parametrize("item", CASES, ids=lambda c: c.name)
def test_case(item, outcomes):
    problem = verdict(item, outcomes[item.name])
    assert problem is None, problem
