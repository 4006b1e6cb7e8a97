"""Crash tests of disk-backed tables (issue 15): ``kill -9`` a training process at random
moments, then reopen.

The oracle is an in-RAM ``EmbeddingBag`` started from the same rows and trained by the same
fused optimizer on the same batches.  After each kill: the table's own directory either
refuses to open (``TableNotCleanError``) or opens at exactly the state of its last flush
(the last checkpoint); every complete checkpoint opens at exactly the oracle's state for its
step; and training resumed from the newest checkpoint continues exactly as the oracle.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import embtable
from embtable.nn.disk import DiskEmbeddingBag
from embtable.storage.disk import Disk, DiskRowStore, TableNotCleanError, init_rows, restore

ROWS, DIM, CACHE, EVERY = 300, 4, 24, 3
OPTIONS = {"lr": 0.05, "bias_correction": "table"}

CHILD = textwrap.dedent(
    """
    import sys, torch, embtable
    from embtable.nn.disk import DiskEmbeddingBag
    from embtable.storage.disk import Disk
    sys.path.insert(0, {here!r})
    from test_disk_crash import batch, ROWS, DIM, CACHE, EVERY, OPTIONS
    work, checkpoints = sys.argv[1], sys.argv[2]
    table = DiskEmbeddingBag(ROWS, DIM, mode="sum", storage=Disk(work, cache_rows=CACHE, seed=1))
    opt = embtable.optim.fuse(table, "adam", **OPTIONS)
    print("ready", flush=True)
    for step in range(1, 10**6):
        ids, offsets = batch(step)
        table(ids, offsets).pow(2).sum().backward()
        if step % EVERY == 0:
            table.checkpoint(f"{{checkpoints}}/step_{{step:06d}}")
            print("checkpoint", step, flush=True)
    """
)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training batch of ``step`` (1-based): 4 bags of 5 ids."""
    generator = torch.Generator().manual_seed(step)
    return torch.randint(0, ROWS, (20,), generator=generator), torch.arange(0, 20, 5)


class Oracle:
    """The in-RAM twin, advanced step by step."""

    def __init__(self) -> None:
        self.table = embtable.EmbeddingBag.from_pretrained(
            init_rows(1, torch.arange(ROWS), DIM), freeze=False, mode="sum"
        )
        embtable.optim.fuse(self.table, "adam", **OPTIONS)
        self.step = 0

    def at(self, step: int) -> torch.Tensor:
        assert step >= self.step
        while self.step < step:
            self.step += 1
            ids, offsets = batch(self.step)
            self.table(ids, offsets).pow(2).sum().backward()
        return self.table.weight.detach().clone()


def _weights(path: Path) -> tuple[torch.Tensor, int]:
    store = DiskRowStore.open(path, read_only=True)
    try:
        return store.read_rows(torch.arange(ROWS)), store.table_step
    finally:
        store.close()


def _run_and_kill(work: Path, checkpoints: Path, delay: float) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD.format(here=str(Path(__file__).parent)), str(work), str(checkpoints)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = child.stdout.readline()
        assert line.startswith("ready"), line + child.stderr.read()
        line = child.stdout.readline()  # the first checkpoint exists: kill at a random moment after
        assert line.startswith("checkpoint"), line + child.stderr.read()
        time.sleep(delay)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)


def test_kill_during_training_leaves_checkpoint_or_clear_error(tmp_path):
    rng = random.Random(15)
    oracle = Oracle()
    for attempt in range(2):
        work, checkpoints = tmp_path / f"work{attempt}", tmp_path / f"ckpt{attempt}"
        checkpoints.mkdir()
        _run_and_kill(work, checkpoints, delay=rng.uniform(0.0, 1.2))
        complete = sorted(p for p in checkpoints.iterdir() if p.name.startswith("step_"))
        newest = complete[-1]
        step = int(newest.name.split("_")[1])
        fresh = Oracle() if step < oracle.step else oracle
        oracle = fresh
        weights, table_step = _weights(newest)
        assert table_step == step
        assert torch.equal(weights, oracle.at(step)), f"checkpoint {newest.name} differs from the oracle"
        try:
            own, own_step = _weights(work)
        except TableNotCleanError as error:
            assert "restore the last checkpoint" in str(error)
        else:  # killed between a flush and the next write: exactly the last flush
            assert own_step >= step
            assert torch.equal(own, Oracle().at(own_step))
        resumed = tmp_path / f"resumed{attempt}"
        restore(newest, resumed)
        table = DiskEmbeddingBag(ROWS, DIM, mode="sum", storage=Disk(resumed, cache_rows=CACHE, seed=1))
        embtable.optim.fuse(table, "adam", **OPTIONS)
        for more in range(step + 1, step + 4):
            ids, offsets = batch(more)
            table(ids, offsets).pow(2).sum().backward()
        assert torch.equal(table.export_weight(), oracle.at(step + 3))
        table.close()


def test_kill_during_checkpoint_copy_keeps_previous(tmp_path):
    """A half-built checkpoint is a hidden temporary directory: the named one is intact."""
    table = DiskEmbeddingBag(ROWS, DIM, mode="sum", storage=Disk(tmp_path / "t", cache_rows=CACHE, seed=1))
    table.checkpoint(tmp_path / "ckpt")
    before, _ = _weights(tmp_path / "ckpt")
    (tmp_path / ".ckpt.tmp-999").mkdir()  # what a kill during the next copy leaves
    (tmp_path / ".ckpt.tmp-999" / "rows.bin").write_bytes(b"partial")
    after, _ = _weights(tmp_path / "ckpt")
    assert torch.equal(before, after)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        DiskRowStore.open(tmp_path / ".ckpt.tmp-999")
    table.close()
