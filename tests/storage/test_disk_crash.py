"""Crash tests of disk-backed tables (issue 15): ``kill -9`` a training process at random
moments, then reopen.

The oracle is an in-RAM ``EmbeddingBag`` started from the same rows and trained by the same
fused optimizer on the same batches.  After each kill: the table's own directory either
refuses to open (``TableNotCleanError``) or opens at exactly the state of its last flush
(the last checkpoint); every complete checkpoint opens at exactly the oracle's state for its
step; and training resumed from the newest checkpoint continues exactly as the oracle.
"""

from __future__ import annotations

import json
import os
import random
import select
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
    table.store.compact_ratio = 0.1  # some checkpoints keep the log, others move it home
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


# ------------------------------------------------------------ kills at chosen points of the log

STORE_ROWS, STORE_DIM = 400, 8


def _store_batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``count`` batches of (distinct ids, rows, one float of state per row)."""
    generator = torch.Generator().manual_seed(4)
    out = []
    for _ in range(count):
        ids = torch.randperm(STORE_ROWS, generator=generator)[:120]
        out.append((ids, torch.randn(120, STORE_DIM, generator=generator), torch.rand(120, generator=generator)))
    return out


def _store_oracle(batches, flushes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and state after the first ``flushes`` flushes (two batches each)."""
    rows, state = init_rows(4, torch.arange(STORE_ROWS), STORE_DIM), torch.zeros(STORE_ROWS)
    for ids, values, states in batches[: 2 * flushes]:
        rows[ids], state[ids] = values, states
    return rows, state


def _die_on(calls: int, action=None):
    """A wrapper that, on its ``calls``-th call, runs ``action`` (if any) and kills the process."""
    count = [0]

    def wrap(function):
        def inner(*args, **kwargs):
            count[0] += 1
            if count[0] == calls:
                if action is not None:
                    action(*args, **kwargs)
                os.kill(os.getpid(), signal.SIGKILL)
            return function(*args, **kwargs)

        return inner

    return wrap


@pytest.mark.parametrize(
    "point, survives",
    [
        ("mid-log-append", 4),  # half of an append after flush 4 (a new segment after the move)
        ("mid-log-append-on-its-thread", 4),  # the same, written by the log's background thread
        ("mid-compaction", 3),  # the move of flush 3: some records home, the log still named
        ("before-compacted-manifest", 3),  # all records home, the manifest still names the log
        ("before-flush-manifest", 4),  # flush 5's log is synced, its manifest not yet written
    ],
)
def test_kill_at_log_states_reopens_at_last_flush(tmp_path, point, survives):
    """A store flushed every two batches, moving its log home at flush 3 only, is killed
    (SIGKILL, in a forked child) at one point of the log's life; the directory then opens at
    exactly the last completed flush, and keeps working from there."""
    from embtable.storage import _disk_log, disk

    batches = _store_batches(12)
    path = tmp_path / "t"
    pid = os.fork()
    if pid == 0:  # the child: train the store until the planted kill
        try:
            threads = 2 if point.endswith("thread") else 1  # > 1: appends on a background thread
            store = DiskRowStore.create(
                path, num_embeddings=STORE_ROWS, embedding_dim=STORE_DIM, seed=4, io_threads=threads
            )
            store.bind_state("demo", [disk.StateField("s", torch.float32, ())], bytes(4))
            disk._COMPACT_ROWS = 50  # the move of ~400 rows takes several writes
            if point.startswith("mid-log-append"):
                half = lambda fd, data, offset: os.pwrite(fd, data[: len(data) // 2], offset)  # noqa: E731
                _disk_log._full_write = _die_on(2 * 8 + 1, half)(_disk_log._full_write)  # 2 files x 8 batches
            elif point == "mid-compaction":
                store._write_home = _die_on(3)(store._write_home)
            elif point == "before-compacted-manifest":
                disk.atomic_write_bytes = _die_on(3 + 1)(disk.atomic_write_bytes)  # after flush 3's first
            else:
                disk.atomic_write_bytes = _die_on(5 + 1)(disk.atomic_write_bytes)  # flushes 1-5 + the move's
            for number, (ids, rows, state) in enumerate(batches, 1):
                store.write_rows(ids, rows, [state])
                if number % 2 == 0:
                    store.flush(table_step=number // 2, compact=number == 6)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(3)  # the kill did not happen
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"child exited: {status}"
    manifest = json.loads((path / "manifest.json").read_text())  # the planted state was reached
    home = int.from_bytes((path / "rows.bits").read_bytes(), "little").bit_count()
    logged = manifest["log"] and (path / f"log.{manifest['log']['segment']:06d}.ids").stat().st_size // 8
    expect = {
        "mid-log-append": manifest["log"] and (path / f"log.{manifest['log']['segment']:06d}.bin").stat().st_size
        > manifest["log"]["records"] * (4 * STORE_DIM + 4),  # a torn record tail, no ids for it
        "mid-compaction": logged and 0 < home < STORE_ROWS,  # some of the log's rows home
        "before-compacted-manifest": logged and home > 300,  # all the log's rows home
        "before-flush-manifest": logged and logged > manifest["log"]["records"],
    }
    expect["mid-log-append-on-its-thread"] = expect["mid-log-append"]
    assert expect[point], (manifest, home, logged)
    store = DiskRowStore.open(path)  # never refuses: the log's unflushed part is cut off
    assert store.table_step == survives
    rows, state = store.read(torch.arange(STORE_ROWS))
    expected_rows, expected_state = _store_oracle(batches, survives)
    assert torch.equal(rows, expected_rows) and torch.equal(state[0], expected_state)
    ids, values, states = batches[-1]  # keeps working: one more batch, flushed and moved home
    store.write_rows(ids, values, [states])
    store.flush(compact=True)
    store.close()
    store = DiskRowStore.open(path, read_only=True)
    expected_rows[ids], expected_state[ids] = values, states
    rows, state = store.read(torch.arange(STORE_ROWS))
    assert torch.equal(rows, expected_rows) and torch.equal(state[0], expected_state)
    assert store.manifest["log"] is None
    store.close()


# ------------------------------------------------------------ replacing an existing checkpoint


@pytest.mark.parametrize("point", ["before-exchange", "after-exchange", "mid-removal-of-old", "random"])
def test_kill_while_replacing_a_checkpoint_leaves_old_or_new(tmp_path, point):
    """A checkpoint written over an existing one (``renameat2(RENAME_EXCHANGE)``): a process
    killed before the swap leaves the old checkpoint at the path, one killed after it the
    new one; never nothing (the two renames used before left nothing between them)."""
    from embtable.storage import _disk_manifest

    probe = tmp_path / "probe"
    (probe / "a").mkdir(parents=True)
    (probe / "b").mkdir()
    if not _disk_manifest.exchange_paths(probe / "a", probe / "b"):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    ckpt, rng = tmp_path / "ckpt", random.Random(point)
    ready, ready_w = os.pipe()  # the child's first checkpoint exists (before a random kill)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready)
            store = DiskRowStore.create(tmp_path / "t", num_embeddings=STORE_ROWS, embedding_dim=STORE_DIM, seed=4)
            store.write_rows(torch.arange(10), torch.full((10, STORE_DIM), 1.0))
            store.checkpoint(ckpt, table_step=1)  # the old checkpoint
            store.write_rows(torch.arange(10), torch.full((10, STORE_DIM), 2.0))
            if point == "before-exchange":
                _disk_manifest.exchange_paths = _die_on(1)(_disk_manifest.exchange_paths)
            elif point == "after-exchange":
                _disk_manifest.fsync_dir = _die_on(1)(_disk_manifest.fsync_dir)  # right after the swap
            elif point == "mid-removal-of-old":
                _disk_manifest.os.unlink = _die_on(2)(os.unlink)  # some of the old files removed
            else:  # many replacements, killed from outside at a random moment
                os.write(ready_w, b"go")
                for step in range(2, 10**6):
                    store.write_rows(torch.arange(10), torch.full((10, STORE_DIM), float(step)))
                    store.checkpoint(ckpt, table_step=step)
            store.checkpoint(ckpt, table_step=2)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(3)
    os.close(ready_w)
    if point == "random":
        if select.select([ready], [], [], 120)[0] and os.read(ready, 2) == b"go":  # (else: the child died)
            time.sleep(rng.uniform(0.05, 1.0))
        os.kill(pid, signal.SIGKILL)
    os.close(ready)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"child exited: {status}"
    store = DiskRowStore.open(ckpt, read_only=True)  # never missing, never half-written
    rows, step = store.read_rows(torch.arange(10)), store.table_step
    store.close()
    expected = {"before-exchange": 1, "after-exchange": 2, "mid-removal-of-old": 2}.get(point)
    if expected is not None:
        assert step == expected
    assert step >= 1 and torch.equal(rows, torch.full((10, STORE_DIM), float(step)))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".ckpt")]
    assert len(leftovers) <= 1  # at most one hidden, complete copy (the other of old and new)


def test_checkpoint_replaces_by_two_renames_without_exchange(tmp_path, monkeypatch):
    """Where renameat2 is missing, replacing a checkpoint falls back to two renames."""
    from embtable.storage import _disk_manifest

    monkeypatch.setattr(_disk_manifest, "exchange_paths", lambda first, second: False)
    store = DiskRowStore.create(tmp_path / "t", num_embeddings=50, embedding_dim=2, seed=4)
    for value in (1.0, 2.0):
        store.write_rows(torch.arange(3), torch.full((3, 2), value))
        store.checkpoint(tmp_path / "ckpt")
    store.close()
    again = DiskRowStore.open(tmp_path / "ckpt", read_only=True)
    assert torch.equal(again.read_rows(torch.arange(3)), torch.full((3, 2), 2.0))
    again.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "t"]
