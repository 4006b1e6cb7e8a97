"""Disk-backed tables (issue 15): the file store, and the modules against in-RAM tables.

Oracles: an in-RAM ``embtable.Embedding`` / ``EmbeddingBag`` holding the same rows and
trained by the same fused optimizer (results must be bit-identical, whatever the cache
size), a dict of written rows for the store, and hand-built broken files for the errors.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import embtable
from embtable.nn.disk import (
    DiskEmbedding,
    DiskEmbeddingBag,
    DiskEmbeddingBagCollection,
    DiskEmbeddingCollection,
)
from embtable.storage._disk_io import BatchIO
from embtable.storage._disk_log import RowLog, RunIndex, log_files, pages_touched
from embtable.storage.disk import (
    CorruptTableError,
    Disk,
    DiskRowStore,
    TableNotCleanError,
    init_rows,
    restore,
)

# ----------------------------------------------------------------------------- the store


def test_init_rows_deterministic_and_distributed():
    rows = init_rows(5, torch.arange(4000), 32)
    assert torch.equal(rows[[7, 3999]], init_rows(5, torch.tensor([7, 3999]), 32))
    assert not torch.equal(rows[:1], init_rows(6, torch.tensor([0]), 32))
    assert abs(float(rows.mean())) < 0.01 and abs(float(rows.std()) - 1) < 0.01
    uniform = init_rows(5, torch.arange(4000), 32, init="uniform", init_bound=0.25)
    assert float(uniform.min()) >= -0.25 and float(uniform.max()) <= 0.25
    assert abs(float(uniform.std()) - 0.25 / 3**0.5) < 0.005


def test_huge_table_created_sparse(tmp_path):
    store = DiskRowStore.create(tmp_path / "t", num_embeddings=10**9, embedding_dim=64)
    ids = torch.tensor([0, 123_456_789, 10**9 - 1])
    store.write_rows(ids, torch.full((3, 64), 2.0))
    store.flush()
    assert store.disk_usage() < 1 << 20  # 256 GB of rows cost a few blocks
    assert torch.equal(store.read_rows(ids), torch.full((3, 64), 2.0))
    assert torch.equal(store.read_rows(torch.tensor([5])), init_rows(0, [5], 64))
    store.close()


@settings(max_examples=15, deadline=None)
@given(st.lists(st.lists(st.integers(0, 199), min_size=1, max_size=40, unique=True), min_size=1, max_size=4))
def test_store_matches_dict_of_rows(tmp_path_factory, batches):
    path = tmp_path_factory.mktemp("store") / "t"
    store = DiskRowStore.create(path, num_embeddings=200, embedding_dim=3, seed=9, io_threads=2)
    fields = [embtable.storage.disk.StateField("0", torch.float32, (3,)),
              embtable.storage.disk.StateField("1", torch.int64, ())]
    fresh = torch.tensor([0.5, 0.5, 0.5]).numpy().tobytes() + torch.tensor([7]).numpy().tobytes()
    store.bind_state("demo", fields, fresh)
    oracle: dict[int, tuple[torch.Tensor, float]] = {}
    for number, batch in enumerate(batches):
        ids = torch.tensor(batch)
        rows = torch.arange(len(batch) * 3, dtype=torch.float32).reshape(-1, 3) + number * 1000
        state = [rows * 2, ids * 10 + number]
        store.write_rows(ids, rows, state)
        for i, row_id in enumerate(batch):
            oracle[row_id] = (rows[i], int(state[1][i]))
    _check_store(store, oracle)  # rows still in the write-back log (newest record wins)
    store.flush(compact=False)  # the log is durable: named by the manifest, rows untouched
    store.close()
    assert [p.name for p in log_files(path)] == ["log.000001.bin", "log.000001.ids"]
    assert not (path / "rows.bits").read_bytes().strip(b"\0")  # nothing written home yet
    again = DiskRowStore.open(path, read_only=True)  # reads the logged rows from the log
    _check_store(again, oracle)
    again.close()
    again = DiskRowStore.open(path)
    again.flush(compact=True)  # the newest records go to their rows' places, the log is dropped
    assert again._log is None and again.compactions == 1 and not log_files(path)
    again.close()
    again = DiskRowStore.open(path, read_only=True)
    _check_store(again, oracle)
    assert again.state_rule == "demo"
    again.close()


def test_threaded_reads_of_log_and_home_match_the_rows_written(tmp_path):
    """Batches large enough for the I/O pool (log, rows and state files read in one pass)."""
    store = DiskRowStore.create(tmp_path / "t", num_embeddings=20_000, embedding_dim=4, seed=2, io_threads=3)
    store.bind_state("demo", [embtable.storage.disk.StateField("s", torch.float32, ())], bytes(4))
    rows, state = init_rows(2, torch.arange(20_000), 4), torch.zeros(20_000)
    generator = torch.Generator().manual_seed(0)
    batches = []
    for compact in (True, False):  # the first batch goes home, the second stays in the log
        ids = torch.randperm(20_000, generator=generator)[:3000]
        batches.append(set(ids.tolist()))
        rows[ids], state[ids] = torch.randn(3000, 4, generator=generator), torch.rand(3000, generator=generator)
        store.write_rows(ids, rows[ids], [state[ids]])
        store.flush(compact=compact)
    every = torch.randperm(20_000, generator=generator)
    got_rows, got_state = store.read(every)
    assert torch.equal(got_rows, rows[every]) and torch.equal(got_state[0], state[every])
    read_before = store.bytes_read
    assert torch.equal(store.read_state(every)[0], state[every])  # the rows file is not read:
    home_only = len(batches[0] - batches[1])  # rows whose newest record is at home
    assert store.bytes_read - read_before == 3000 * (16 + 4) + home_only * 4  # log records, home state
    assert store._batch._pool is not None  # the pool did the reads
    store.close()


def test_write_rows_refuses_state_of_the_wrong_shape_or_dtype(tmp_path):
    """Nothing is written: the rows read back as before (initializer values)."""
    store = DiskRowStore.create(tmp_path / "t", num_embeddings=10, embedding_dim=2, seed=3)
    store.bind_state("demo", [embtable.storage.disk.StateField("s", torch.float32, (2,))], bytes(8))
    ids, rows = torch.tensor([1, 4]), torch.ones(2, 2)
    for bad in (torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2, 4), torch.zeros(4)):
        with pytest.raises(ValueError, match="state field 's' must be a \\[2, 2\\] torch.float32 tensor"):
            store.write_rows(ids, rows, [bad])
    assert store.rows_written == 0 and torch.equal(store.read_rows(ids), init_rows(3, ids, 2))
    store.close()


def test_log_past_max_log_bytes_moves_home_between_flushes(tmp_path):
    """Past the hard bound a write moves the log home at once: the table is 'writing' (a
    crash now refuses to open) until the next flush; the rows stay right throughout."""
    store = DiskRowStore.create(tmp_path / "t", num_embeddings=50, embedding_dim=2, seed=1)
    expected = init_rows(1, torch.arange(50), 2)
    store.write_rows(torch.tensor([3, 4]), torch.ones(2, 2))
    store.flush()
    store.max_log_bytes = 1
    store.write_rows(torch.tensor([4, 9]), torch.full((2, 2), 2.0))  # moves [3, 4] home first
    expected[3], expected[[4, 9]] = 1.0, 2.0
    assert store.status == "writing" and store.compactions == 1 and len(store._log) == 2
    assert torch.equal(store.read_rows(torch.arange(50)), expected)
    store.max_log_bytes = 1 << 30  # (else this flush would move the new segment home too)
    store.flush()
    assert store.status == "clean" and store.manifest["log"] == {"segment": 2, "records": 2}
    store.close()
    store = DiskRowStore.open(tmp_path / "t")
    assert torch.equal(store.read_rows(torch.arange(50)), expected)
    store.max_log_bytes = 1
    store.write_rows(torch.tensor([0]), torch.zeros(1, 2))
    store.close()  # killed before the next flush: refuses to open
    with pytest.raises(TableNotCleanError, match="being written"):
        DiskRowStore.open(tmp_path / "t")


def _check_store(store, oracle):
    every = torch.randperm(200)
    rows, state = store.read(every)
    for i, row_id in enumerate(every.tolist()):
        if row_id in oracle:
            assert torch.equal(rows[i], oracle[row_id][0])
            assert torch.equal(state[0][i], oracle[row_id][0] * 2)
            assert int(state[1][i]) == oracle[row_id][1]
        else:
            assert torch.equal(rows[i], init_rows(9, [row_id], 3)[0])
            assert torch.equal(state[0][i], torch.full((3,), 0.5)) and int(state[1][i]) == 7


def test_bad_paths(tmp_path):
    assert embtable.storage.Disk is Disk  # the spelling
    with pytest.raises(FileNotFoundError, match="parent directory"):
        DiskRowStore.create(tmp_path / "missing" / "t", num_embeddings=4, embedding_dim=2)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        DiskRowStore.create(tmp_path / "file", num_embeddings=4, embedding_dim=2)
    with pytest.raises(FileNotFoundError, match="no table directory"):
        DiskRowStore.open(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no manifest.json"):
        DiskRowStore.open(tmp_path / "empty")
    with pytest.raises(ValueError, match="exactly one of cache_rows and cache_bytes"):
        Disk(tmp_path / "t")
    with pytest.raises(ValueError, match="policy must be one of"):
        Disk(tmp_path / "t", cache_rows=4, policy="ttl")
    with pytest.raises(ValueError, match="compact_ratio must be a number >= 0, got -1"):
        Disk(tmp_path / "t", cache_rows=4, compact_ratio=-1)
    with pytest.raises(TypeError, match="storage must be an embtable.storage.disk.Disk"):
        DiskEmbedding(4, 2, storage=str(tmp_path))


def test_one_writer_at_a_time(tmp_path):
    first = DiskRowStore.create(tmp_path / "t", num_embeddings=8, embedding_dim=2)
    with pytest.raises(BlockingIOError, match="already open for writing"):
        DiskRowStore.open(tmp_path / "t")
    reader = DiskRowStore.open(tmp_path / "t", read_only=True)  # readers do not lock
    reader.close()
    first.close()
    DiskRowStore.open(tmp_path / "t").close()
    del first
    dropped = DiskRowStore.open(tmp_path / "t")
    del dropped  # garbage collected: the lock goes with it
    DiskRowStore.open(tmp_path / "t").close()


def _table(path, rows=16):
    store = DiskRowStore.create(path, num_embeddings=rows, embedding_dim=4)
    store.write_rows(torch.tensor([1, 2]), torch.ones(2, 4))
    store.flush()
    store.close()


@pytest.mark.parametrize(
    "damage, error, message",
    [
        (lambda p: (p / "manifest.json").write_text("{not json"), CorruptTableError, "not valid JSON"),
        (lambda p: (p / "manifest.json").write_text('{"format": "x"}'), CorruptTableError, "not an embtable-disk"),
        (lambda p: _edit(p, version=99), CorruptTableError, "format version 99"),
        (lambda p: _edit(p, num_embeddings="16"), CorruptTableError, "num_embeddings"),
        (lambda p: os.truncate(p / "rows.bin", 100), CorruptTableError, "truncated"),
        (lambda p: os.remove(p / "rows.bits"), FileNotFoundError, "rows.bits"),
        (lambda p: _edit(p, status="writing"), TableNotCleanError, "being written"),
        (lambda p: _edit(p, log={"segment": 1, "records": 99}), CorruptTableError, "the log is truncated"),
        (lambda p: _edit(p, log={"segment": 7, "records": 1}), CorruptTableError, "named by the manifest is missing"),
        (lambda p: _edit(p, log="log.bin"), CorruptTableError, "invalid write-back log"),
    ],
)
def test_damaged_tables_refuse_to_open(tmp_path, damage, error, message):
    _table(tmp_path / "t")
    damage(tmp_path / "t")
    open_files = len(os.listdir("/proc/self/fd"))
    with pytest.raises(error, match=message):
        DiskRowStore.open(tmp_path / "t")
    assert len(os.listdir("/proc/self/fd")) == open_files  # a refused open closes what it opened
    assert log_files(tmp_path / "t")  # a refused open deletes no log segment


def test_version_1_tables_open_and_are_rewritten_as_version_2(tmp_path):
    """A table written before the log was durable (format 1: no "log" key) still opens."""
    _table(tmp_path / "t")
    store = DiskRowStore.open(tmp_path / "t")
    store.flush(compact=True)  # version 1 tables had every flushed row home
    store.close()
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    for key in ("log", "log_serial"):
        del manifest[key]
    (tmp_path / "t" / "manifest.json").write_text(json.dumps(dict(manifest, version=1)))
    store = DiskRowStore.open(tmp_path / "t")
    expected = init_rows(0, torch.arange(16), 4)
    expected[1:3] = 1.0
    assert torch.equal(store.read_rows(torch.arange(16)), expected)
    store.write_rows(torch.tensor([5]), torch.full((1, 4), 2.0))
    store.flush()
    store.close()
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["version"] == 2 and manifest["log"] == {"segment": 1, "records": 1}


def _edit(path, **changes):
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_read_only(tmp_path):
    _table(tmp_path / "t")
    for name in os.listdir(tmp_path / "t"):
        os.chmod(tmp_path / "t" / name, 0o444)
    with pytest.raises(PermissionError, match="read_only=True"):
        DiskRowStore.open(tmp_path / "t")
    table = DiskEmbedding(16, 4, storage=Disk(tmp_path / "t", cache_rows=4, read_only=True))
    assert not table.weight.requires_grad
    assert torch.equal(table(torch.tensor([2, 1])), torch.ones(2, 4))
    with torch.no_grad():
        table.weight.requires_grad_(True)
        table(torch.tensor([3]))  # lookups under no_grad are fine
    with pytest.raises(RuntimeError, match="open read-only"):
        table(torch.tensor([3]))
    with pytest.raises(OSError, match="read-only") as caught:
        table.store.write_rows(torch.tensor([0]), torch.zeros(1, 4))
    assert caught.value.errno == errno.EROFS


def test_file_size_limit_gives_clear_errors_and_keeps_the_last_flush(tmp_path):
    """A full disk, played by RLIMIT_FSIZE: a failed log append and a failed compaction each
    raise a clear OSError, and the table reopens exactly at its last flush (never a mix)."""
    _table(tmp_path / "t", rows=100)  # 1600 bytes of rows; rows 1 and 2 are ones (in the log)
    script = textwrap.dedent(f"""
        import resource, signal, torch
        from embtable.storage.disk import DiskRowStore
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        store = DiskRowStore.open({str(tmp_path / "t")!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
        try:  # 1,600 bytes of log: past the limit (an append on the log's thread fails)
            store.write_rows(torch.arange(100), torch.full((100, 4), 5.0))
            store.flush()
        except OSError as error:
            print("ERRNO", error.errno, error)
        store.close()
        store = DiskRowStore.open({str(tmp_path / "t")!r})
        try:  # into the log (fits), flushed, then moved home: row 99 lies past the limit
            store.write_rows(torch.tensor([0, 99]), torch.full((2, 4), 7.0))
            store.flush(compact=True)
        except OSError as error:
            print("ERRNO", error.errno, error)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    errors = [line for line in done.stdout.splitlines() if line.startswith(f"ERRNO {errno.EFBIG}")]
    assert len(errors) == 2, done.stdout + done.stderr
    assert "as at its last flush" in errors[0] and "stays at this flush" in errors[1]
    expected = init_rows(0, torch.arange(100), 4)  # no 5.0 anywhere: the failed append is ignored
    expected[1:3] = 1.0
    expected[[0, 99]] = 7.0  # flushed (in the log) before the failed move
    store = DiskRowStore.open(tmp_path / "t")
    assert torch.equal(store.read_rows(torch.arange(100)), expected)
    store.close()


# ----------------------------------------------------------------------------- the modules


def _pair(tmp_path, cls, ram_cls, cache_rows=3, policy="lru", **kwargs):
    disk = cls(40, 4, storage=Disk(tmp_path / "t", cache_rows=cache_rows, seed=3, policy=policy), **kwargs)
    ram = ram_cls.from_pretrained(disk.export_weight(), freeze=False, **kwargs)
    return disk, ram


def test_embedding_lookups_equal_in_ram(tmp_path):
    disk, ram = _pair(tmp_path, DiskEmbedding, embtable.Embedding, padding_idx=5)
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):
        ids = torch.randint(0, 40, (3,), generator=generator)
        ids[0] = 5
        assert torch.equal(disk(ids.reshape(1, 3)), ram(ids.reshape(1, 3)))
    assert torch.equal(disk(torch.tensor([5])), torch.zeros(1, 4))
    assert disk.stats()["evicted"] > 10  # nearly every access missed


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_bags_equal_in_ram(tmp_path, mode):
    disk, ram = _pair(tmp_path, DiskEmbeddingBag, embtable.EmbeddingBag, cache_rows=6, mode=mode, padding_idx=0)
    generator = torch.Generator().manual_seed(1)
    for _ in range(6):
        ids = torch.randint(0, 40, (6,), generator=generator)
        offsets = torch.tensor([0, 2, 2])
        weights = torch.rand(6, generator=generator) if mode == "sum" else None
        assert torch.equal(disk(ids, offsets, weights), ram(ids, offsets, weights))
        assert torch.equal(disk(ids.reshape(2, 3)), ram(ids.reshape(2, 3)))


_OPTIMIZERS = [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
    ("adagrad", {"lr": 0.1, "lr_decay": 0.01}),
    ("rowwise_adagrad", {"lr": 0.1}),
    ("adam", {"lr": 0.05, "bias_correction": "table"}),
    ("adamw", {"lr": 0.05}),
    ("adam", {"lr": 0.05, "state_dtype": "bfloat16"}),
    ("adam", {"lr": 0.05, "state_dtype": "int8_rowwise"}),
]


def _twenty_steps_against_ram(tmp_path, optimizer, options, bag, when=None, seed=2, policy="lru"):
    """20 fused steps of a disk table (cache 8 rows) and an in-RAM twin on the same batches,
    the disk table prefetching each next batch ``when`` (``None``: never); then every row
    and every state entry must be equal."""
    kwargs = {"mode": "mean", "padding_idx": 2} if bag else {"padding_idx": 2}
    classes = (DiskEmbeddingBag, embtable.EmbeddingBag) if bag else (DiskEmbedding, embtable.Embedding)
    disk, ram = _pair(tmp_path, *classes, cache_rows=8, policy=policy, **kwargs)
    disk_opt = embtable.optim.fuse(disk, optimizer, **options)
    ram_opt = embtable.optim.fuse(ram, optimizer, **options)
    generator = torch.Generator().manual_seed(seed)
    batches = [torch.randint(0, 40, (2, 4), generator=generator) for _ in range(21)]
    targets = [torch.randn((2, 4) if bag else (2, 4, 4), generator=generator) for _ in range(20)]
    for step in range(20):
        if when == "before_forward":
            disk.prefetch(batches[step + 1])
        disk_loss = ((disk(batches[step]) - targets[step]) ** 2).sum()
        if when == "before_backward":
            disk.prefetch(batches[step + 1])
        disk_loss.backward()
        ((ram(batches[step]) - targets[step]) ** 2).sum().backward()
        disk_opt.step()
        ram_opt.step()
    assert torch.equal(disk.export_weight(), ram.weight.detach())
    ram_state = ram_opt.rule.state_tensors(ram_opt.state[ram.weight], ram_opt.param_groups[0])
    mask = torch.arange(40) != 2  # the padding row's state is never read
    for mine, theirs in zip(disk.export_state(), ram_state, strict=True):
        assert torch.equal(mine[mask], theirs[mask])
    return disk.stats()


@pytest.mark.parametrize("optimizer, options", _OPTIMIZERS)
@pytest.mark.parametrize("bag", [False, True])
def test_twenty_fused_steps_equal_in_ram(tmp_path, optimizer, options, bag):
    stats = _twenty_steps_against_ram(tmp_path, optimizer, options, bag)
    assert stats["rows_written"] > 0 and stats["rows_prefetched"] == 0


@pytest.mark.parametrize("policy", ["lfu", "clock"])
def test_every_eviction_policy_trains_exactly_as_in_ram(tmp_path, policy):
    stats = _twenty_steps_against_ram(tmp_path, "adam", {"lr": 0.05}, True, "before_backward", policy=policy)
    assert stats["evicted"] > 20


def test_lru_and_lfu_keep_a_hot_set_that_clock_evicts(tmp_path):
    """The benchmark's hot-set stream in small (95% of lookups on 5% of the rows, the cache
    a quarter larger than the hot set): once the cache is full, CLOCK misses ~30% more than
    LRU and LFU, which keep more of the hot rows (at the benchmark's 8 M rows: ~2,800 misses
    per step against LRU's ~2,140; docs/storage.md, "Sizing the cache")."""
    from embtable.storage.slots import SlotMap

    rows, hot = 100_000, 5_000
    misses = {}
    for policy in ("clock", "lru", "lfu"):
        slot_map, generator, missed = SlotMap(6_250, policy=policy), torch.Generator().manual_seed(0), 0
        for step in range(160):
            ranks = torch.randint(0, hot, (512,), generator=generator) * 7919 % rows
            cold = torch.randint(0, rows, (512,), generator=generator)
            ids = torch.where(torch.rand(512, generator=generator) < 0.95, ranks, cold)
            found = slot_map.lookup(ids)
            missed += found.new_ids.numel() if step >= 80 else 0  # past the cache's filling
        misses[policy] = missed
    # ~25 of each step's ~490 distinct ids are never-seen cold ids: every policy misses those
    assert misses["lru"] < 0.85 * misses["clock"] and misses["lfu"] < 0.85 * misses["clock"], misses


@pytest.mark.parametrize(
    "optimizer, options, bag",
    [(*_OPTIMIZERS[3], True), (*_OPTIMIZERS[4], False)],  # row-wise Adagrad bags, Adam rows
)
@pytest.mark.parametrize("when", ["before_backward", "before_forward"])
def test_prefetch_of_the_next_batch_trains_exactly_as_without(tmp_path, optimizer, options, bag, when):
    """20 fused steps, each prefetching the next batch (before this step's backward, or
    before its forward, so that this step's lookup meets a prefetch of other ids and uses
    what it can of it) equal the in-RAM table, as the steps without prefetch do.  (Rows
    written since a prefetch are the store test's below: a module's prefetch skips cached
    rows, and only cached rows are written back before the next lookup.)"""
    stats = _twenty_steps_against_ram(tmp_path, optimizer, options, bag, when, seed=3)
    assert stats["prefetch_used"] > 20 and stats["rows_prefetched"] >= stats["prefetch_used"]


@settings(max_examples=15, deadline=None)
@given(
    prefetched=st.lists(st.integers(0, 99), max_size=40, unique=True),
    written=st.lists(st.integers(0, 99), max_size=30, unique=True),
    wanted=st.lists(st.integers(0, 99), min_size=1, max_size=40, unique=True),
    compact=st.booleans(),
)
def test_store_read_after_prefetch_equals_read_without(tmp_path_factory, prefetched, written, wanted, compact):
    """Prefetch, then writes (and maybe a flush moving the log home), then a read: the same
    rows and state as a read without prefetch; the prefetch serves exactly the rows it read
    that were not written since."""
    path = tmp_path_factory.mktemp("prefetch") / "t"
    store = DiskRowStore.create(path, num_embeddings=100, embedding_dim=3, seed=5, io_threads=2)
    store.bind_state("demo", [embtable.storage.disk.StateField("s", torch.float32, ())], bytes(4))
    first = torch.arange(0, 100, 2)  # half the rows logged, the rest never written
    store.write_rows(first, torch.randn(50, 3), [torch.rand(50)])
    store.flush(compact=False)
    store.prefetch(torch.tensor(prefetched, dtype=torch.int64))
    if written:
        ids = torch.tensor(written)
        store.write_rows(ids, torch.randn(len(ids), 3), [torch.rand(len(ids))])
    if compact:
        store.flush(compact=True)
    ids = torch.tensor(wanted)
    rows, state = store.read(ids)
    assert store.prefetch_used == len(set(prefetched) & set(wanted) - set(written))
    again_rows, again_state = store.read(ids)  # no prefetch now: straight from the files
    assert torch.equal(rows, again_rows) and torch.equal(state[0], again_state[0])
    store.close()


@pytest.mark.parametrize("fail", [False, True])
def test_prefetch_of_records_still_being_appended(tmp_path, monkeypatch, fail):
    """A prefetch of rows whose log records a background append is still writing: its I/O
    tasks wait for that append (not the caller); a failed append fails the prefetch, and
    the read then raises the append's error."""
    import time

    from embtable.storage import _disk_log

    store = DiskRowStore.create(tmp_path / "t", num_embeddings=50, embedding_dim=2, seed=5, io_threads=2)
    write = _disk_log._full_write

    def slow(fd, data, offset):
        time.sleep(0.2)
        if fail:
            raise OSError(errno.ENOSPC, "injected")
        write(fd, data, offset)

    monkeypatch.setattr(_disk_log, "_full_write", slow)
    store.write_rows(torch.arange(0, 40, 2), torch.full((20, 2), 4.0))
    start = time.perf_counter()
    store.prefetch(torch.tensor([2, 4, 5]))
    assert time.perf_counter() - start < 0.15  # the caller did not wait for the append
    if fail:
        with pytest.raises(OSError, match="injected"):
            store.read_rows(torch.tensor([2, 4, 5]))
        store.close()
        return
    rows = store.read_rows(torch.tensor([2, 4, 5]))
    assert torch.equal(rows[:2], torch.full((2, 2), 4.0)) and torch.equal(rows[2], init_rows(5, [5], 2)[0])
    assert store.prefetch_used == 3
    store.close()


@settings(max_examples=25, deadline=None)
@given(
    runs=st.lists(st.tuples(st.integers(0, 1100), st.integers(0, 300)), max_size=12),
)
def test_compiled_pread_runs_equals_its_reference(tmp_path_factory, runs):
    """embtable::disk_pread_runs against pread_runs_reference (and the bytes themselves):
    runs anywhere in a 1,000-byte file, some past its end (short reads report the run)."""
    import numpy as np

    from embtable.storage import _disk_io

    if not _disk_io._compiled():
        pytest.skip("embtable._C is not built")
    path = tmp_path_factory.mktemp("pread") / "f"
    data = np.random.default_rng(len(runs)).integers(0, 256, 1000, dtype=np.uint8)
    path.write_bytes(data.tobytes())
    offsets = np.array([r[0] for r in runs], dtype=np.int64)
    lengths = np.array([r[1] for r in runs], dtype=np.int64)
    fd = os.open(path, os.O_RDONLY)
    try:
        compiled = np.zeros(int(lengths.sum()), dtype=np.uint8)
        reference = np.zeros_like(compiled)
        result = _disk_io.pread_runs(fd, offsets, lengths, compiled)
        assert result == _disk_io.pread_runs_reference(fd, offsets, lengths, reference)
        assert np.array_equal(compiled, reference)
        expected = np.concatenate([data[o : o + n] for o, n in runs] or [np.zeros(0, np.uint8)])
        short = [i for i, (o, n) in enumerate(runs) if o + n > 1000 and n]
        if short:
            first = short[0]
            assert result == (first, 0, max(0, 1000 - runs[first][0]))
            upto = int(lengths[:first].sum()) + result[2]
            assert np.array_equal(compiled[:upto], expected[:upto])
        else:
            assert result == (-1, 0, 0) and np.array_equal(compiled, expected)
    finally:
        os.close(fd)


def test_compiled_pread_runs_opcheck_and_errors(tmp_path):
    from embtable.storage import _disk_io

    if not _disk_io._compiled():
        pytest.skip("embtable._C is not built")
    path = tmp_path / "f"
    path.write_bytes(bytes(range(200)))
    fd = os.open(path, os.O_RDONLY)
    try:
        op = torch.ops.embtable.disk_pread_runs.default
        args = (fd, torch.tensor([5, 100]), torch.tensor([10, 20]), torch.zeros(30, dtype=torch.uint8))
        torch.library.opcheck(op, args)
        with pytest.raises(RuntimeError, match="the runs hold 30 bytes, the buffer 29"):
            op(fd, args[1], args[2], torch.zeros(29, dtype=torch.uint8))
        with pytest.raises(RuntimeError, match="offsets and lengths must be 1-D int64"):
            op(fd, args[1].int(), args[2], args[3])
    finally:
        os.close(fd)
    import numpy as np

    bad = 999_999  # no such descriptor
    for read in (_disk_io.pread_runs, _disk_io.pread_runs_reference):
        assert read(bad, np.array([0]), np.array([4]), np.zeros(4, dtype=np.uint8)) == (0, errno.EBADF, 0)
    batch = _disk_io.BatchIO(tmp_path, 1)
    with pytest.raises(OSError, match="at byte 0 failed: Bad file descriptor"):
        batch.io(bad, False, np.array([0, 1]), np.zeros((2, 4), dtype=np.uint8), 4)


def test_first_reads_from_many_io_threads_at_once(tmp_path):
    """A fresh process whose first reads come from 8 I/O threads at once (the compiled
    read's fake kernel is registered once, under a lock)."""
    script = textwrap.dedent(
        f"""
        import torch
        from embtable.storage.disk import DiskRowStore
        store = DiskRowStore.create({str(tmp_path / "t")!r}, num_embeddings=5000, embedding_dim=2, io_threads=8)
        ids = torch.arange(0, 5000, 2)
        store.write_rows(ids, torch.ones(len(ids), 2))
        store.flush(compact=True)
        assert torch.equal(store.read_rows(ids), torch.ones(len(ids), 2))
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr


def test_failed_prefetch_is_read_again(tmp_path, monkeypatch):
    store = DiskRowStore.create(tmp_path / "t", num_embeddings=50, embedding_dim=2, seed=5)
    store.write_rows(torch.arange(10), torch.full((10, 2), 3.0))
    original = store._batch.submit

    def failing(tasks):
        def boom():
            raise OSError(errno.EIO, "injected")

        return original([boom for _ in tasks] or [boom])

    monkeypatch.setattr(store._batch, "submit", failing)
    store.prefetch(torch.arange(10))
    assert torch.equal(store.read_rows(torch.arange(10)), torch.full((10, 2), 3.0))
    assert store.prefetch_used == 0
    with pytest.raises(IndexError, match="DiskRowStore.prefetch"):
        store.prefetch(torch.tensor([50]))
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_reads_and_writes_with_its_own_io_threads(tmp_path):
    """A store whose I/O threads ran in the parent, forked while a prefetch was still being
    read: the child's reads and writes run on its own threads (they waited for ever on the
    parent's), and the prefetch the parent's threads never finish there is read again."""
    import threading

    store = DiskRowStore.create(tmp_path / "t", num_embeddings=20_000, embedding_dim=2, seed=5, io_threads=4)
    ids = torch.arange(0, 20_000, 2)
    store.write_rows(ids, torch.full((len(ids), 2), 3.0))  # the log's writer thread, then the pool
    assert torch.equal(store.read_rows(ids), torch.full((len(ids), 2), 3.0))
    release, submit = threading.Event(), store._batch.submit

    def held(tasks):
        return submit([lambda: release.wait(30)] + tasks)

    store._batch.submit = held
    store.prefetch(ids[:3000])
    pid = os.fork()
    if pid == 0:  # child: always leaves through os._exit
        code = 1
        try:
            import faulthandler

            faulthandler.dump_traceback_later(30, exit=True)  # never hang the suite
            torch.set_num_threads(1)
            rows = store.read_rows(ids[:5000])
            store.write_rows(ids[:10], torch.full((10, 2), 4.0))
            again = store.read_rows(ids[:20])
            code = 0 if (
                torch.equal(rows, torch.full((5000, 2), 3.0)) and store.prefetch_used == 0
                and torch.equal(again[:10], torch.full((10, 2), 4.0)) and torch.equal(again[10:], torch.full((10, 2), 3.0))
            ) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    release.set()
    assert os.waitstatus_to_exitcode(status) == 0
    assert torch.equal(store.read_rows(ids[:3000]), torch.full((3000, 2), 3.0)) and store.prefetch_used == 3000
    store.close()


def test_waiting_for_a_failed_prefetch_waits_for_all_its_reads():
    """Prefetch.wait (compaction's and close's guard) returns only once every read is done,
    also when an earlier one failed: no read of a dropped prefetch outlives the log file."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from embtable.storage._disk_prefetch import Prefetch

    finished = threading.Event()

    def fail():
        raise OSError(errno.EIO, "injected")

    def slow():
        time.sleep(0.2)
        finished.set()

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(fail), pool.submit(slow)]
        pending = Prefetch(np.arange(2), np.zeros((2, 1), np.uint8), np.zeros((2, 0), np.uint8), False, futures, [])
        assert pending.wait() is False and finished.is_set()


@settings(max_examples=40, deadline=None)
@given(
    ids=st.lists(st.integers(0, 3000), max_size=30).map(sorted),
    record=st.sampled_from([1, 4, 260, 4096, 5000, 9000]),
)
def test_pages_touched_counts_every_dirtied_page_once(ids, record):
    """Against the set of pages each record's bytes fall in (records over a page included)."""
    import numpy as np

    pages = {byte // 4096 for i in ids for byte in (i * record, i * record + record - 1)}
    pages |= {page for i in ids for page in range(i * record // 4096, (i * record + record - 1) // 4096)}
    assert pages_touched(np.array(ids, dtype=np.int64), record) == len(pages)


class _WholeIndexLog:
    """The log index as it was before RunIndex (the oracle): one sorted array of rows and
    their newest record numbers, copied whole (np.insert) on every append."""

    def __init__(self) -> None:
        import numpy as np

        self.ids, self.pos, self.count = np.empty(0, np.int64), np.empty(0, np.int64), 0

    def append(self, sorted_ids):
        import numpy as np

        positions = np.arange(self.count, self.count + len(sorted_ids), dtype=np.int64)
        self.count += len(sorted_ids)
        ids, pos = self.ids, self.pos
        if len(ids):
            at = np.searchsorted(ids, sorted_ids)
            inside = at < len(ids)
            stale = at[inside][ids[at[inside]] == sorted_ids[inside]]
            keep = np.ones(len(ids), dtype=bool)
            keep[stale] = False
            ids, pos = ids[keep], pos[keep]
        where = np.searchsorted(ids, sorted_ids)
        self.ids, self.pos = np.insert(ids, where, sorted_ids), np.insert(pos, where, positions)

    def find(self, sorted_ids):
        import numpy as np

        if not len(self.ids):
            return np.zeros(len(sorted_ids), dtype=bool), np.empty(0, np.int64)
        at = np.searchsorted(self.ids, sorted_ids).clip(max=len(self.ids) - 1)
        found = self.ids[at] == sorted_ids
        return found, self.pos[at[found]]


@settings(max_examples=25, deadline=None)
@given(
    appends=st.lists(st.lists(st.integers(0, 300), min_size=1, max_size=60, unique=True), min_size=1, max_size=30),
    query=st.lists(st.integers(0, 310), max_size=50, unique=True),
)
def test_run_index_log_finds_what_the_whole_index_log_found(tmp_path_factory, appends, query):
    """RowLog's layered index (appends O(new rows)) against the old whole-array index: the
    same rows and newest records after every append, on a reopen, and in its chunks."""
    import numpy as np

    directory = tmp_path_factory.mktemp("log")
    batch = BatchIO(directory, 1)
    log, oracle = RowLog(directory, 1, 4, batch), _WholeIndexLog()
    wanted = np.array(sorted(query), dtype=np.int64)
    for number, rows in enumerate(appends):
        ids = np.array(sorted(rows), dtype=np.int64)
        records = np.full((len(ids), 4), number % 251, dtype=np.uint8)
        records[:, 0] = ids % 256
        log.append(ids, records)
        oracle.append(ids)
        for got, expected in zip(log.find(wanted), oracle.find(wanted)):
            assert np.array_equal(got, expected)
        assert len(log.index.runs) <= 2 + int(np.log2(1 + log.count))  # O(log n) runs
    assert np.array_equal(log.ids, oracle.ids) and np.array_equal(log.pos, oracle.pos)
    assert len(log) == len(oracle.ids)
    log.sync()
    log.close()
    again = RowLog(directory, 1, 4, batch, records=oracle.count, writable=False)
    assert np.array_equal(again.ids, oracle.ids) and np.array_equal(again.pos, oracle.pos)
    chunks = list(again.newest(7))
    if chunks:
        assert np.array_equal(np.concatenate([c[0] for c in chunks]), oracle.ids)
        records = np.concatenate([c[1] for c in chunks])
        assert np.array_equal(records[:, 0], (oracle.ids % 256).astype(np.uint8))
    again.close()


def test_run_index_merges_keep_few_runs_and_copy_each_row_few_times():
    """1,000 appends of 100 rows: at most log2(n) + 1 runs at any time, and the rows the
    merges copy stay within 2 log2(n) per appended row (a whole-index copy per append, as
    before, would copy ~500 per appended row here)."""
    import numpy as np

    index, copied, merge = RunIndex(), [0], RunIndex._merge

    def counting(older, newer):
        copied[0] += len(older[0]) + len(newer[0])
        return merge(older, newer)

    index._merge = counting
    rng = np.random.default_rng(0)
    for number in range(1000):
        ids = np.sort(rng.choice(10**7, 100, replace=False))
        index.add(ids, np.arange(number * 100, number * 100 + 100))
        assert len(index.runs) <= 1 + np.log2(index.runs[0][0].size)
    assert copied[0] <= 2 * np.log2(100_000) * 100_000
    found, positions = index.find(ids)
    assert found.all() and np.array_equal(positions, np.arange(99_900, 100_000))


def test_reads_and_writes_leave_the_log_index_runs_unmerged(tmp_path):
    """Reads and prefetches leave the index's O(log n) runs as they are (a read that merged
    them, as one testing the log's truth value did, costs O(logged rows) per step)."""
    store = DiskRowStore.create(tmp_path / "t", num_embeddings=10_000, embedding_dim=2, seed=1)
    store.write_rows(torch.arange(0, 8000), torch.zeros(8000, 2))
    store.write_rows(torch.arange(100, 200), torch.ones(100, 2))
    runs = len(store._log.index.runs)
    assert runs == 2
    assert torch.equal(store.read_rows(torch.tensor([150, 7000])), torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    store.prefetch(torch.tensor([5, 150]))
    store.read_rows(torch.tensor([5, 150]))
    assert len(store._log.index.runs) == runs and store.prefetch_used == 2
    store.close()


def test_compact_ratio_decides_whether_a_flush_moves_the_log(tmp_path):
    """Ratio 0 moves the log home at every flush, a huge ratio never does; the rows agree."""
    weights = []
    for ratio, moved in ((0.0, True), (1e9, False)):
        table = DiskEmbedding(40, 4, storage=Disk(tmp_path / str(ratio), cache_rows=3, compact_ratio=ratio))
        embtable.optim.fuse(table, "adagrad", lr=0.1)
        for step in range(4):
            table(torch.tensor([step, 7, 30 + step])).sum().backward()
            table.flush()
        assert (table.store.manifest["log"] is None) == moved
        assert table.store.compactions == (4 if moved else 0)
        weights.append(table.export_weight())
        table.close()
    assert torch.equal(weights[0], weights[1])


def test_checkpoint_resume_continues_exactly(tmp_path):
    def batches():
        generator = torch.Generator().manual_seed(4)
        return [torch.randint(0, 40, (6,), generator=generator) for _ in range(12)]

    def train(table, opt, stream):
        for ids in stream:
            table(ids).pow(2).sum().backward()

    disk = DiskEmbedding(40, 4, storage=Disk(tmp_path / "run", cache_rows=7))
    opt = embtable.optim.fuse(disk, "adam", lr=0.05, bias_correction="table")
    train(disk, opt, batches()[:6])
    disk.checkpoint(tmp_path / "ckpt")
    train(disk, opt, batches()[6:])
    expected = disk.export_weight()
    disk.close()
    restore(tmp_path / "ckpt", tmp_path / "resumed")
    restored = json.loads((tmp_path / "resumed" / "manifest.json").read_bytes())
    assert restored["last_checkpoint"] == str((tmp_path / "ckpt").absolute())
    again = DiskEmbedding(40, 4, storage=Disk(tmp_path / "resumed", cache_rows=6, policy="lru"))
    again_opt = embtable.optim.fuse(again, "adam", lr=0.05, bias_correction="table")
    train(again, again_opt, batches()[6:])
    assert torch.equal(again.export_weight(), expected)
    assert again_opt.state[again.weight]["table_step"] == 12
    with pytest.raises(ValueError, match="holds 'adam' state"):
        embtable.optim.unfuse(again)
        embtable.optim.fuse(again, "adagrad")
        again(torch.tensor([1]))


def test_state_dict_export_and_import(tmp_path):
    disk = DiskEmbedding(30, 3, storage=Disk(tmp_path / "t", cache_rows=4))
    disk(torch.tensor([1, 2, 3])).sum().backward()
    ram = torch.nn.Embedding(30, 3)
    ram.load_state_dict(disk.state_dict())
    assert torch.equal(ram.weight.detach(), disk.export_weight())
    new = torch.randn(30, 3)
    disk.load_state_dict({"weight": new})
    assert torch.equal(disk(torch.tensor([29, 1])), new[[29, 1]])
    assert torch.equal(disk.export_weight(), new)
    with pytest.raises(RuntimeError, match="expected"):
        disk.load_state_dict({"weight": torch.zeros(3, 3)})


def test_too_many_lookups_before_backward(tmp_path):
    disk = DiskEmbedding(40, 2, storage=Disk(tmp_path / "t", cache_rows=4))
    first = disk(torch.tensor([0, 1, 2, 3]))
    second = disk(torch.tensor([4, 5, 6, 7]))  # evicts the first lookup's rows
    with pytest.raises(RuntimeError, match="raise cache_rows"):
        (first.sum() + second.sum()).backward()
    with pytest.raises(ValueError):
        disk(torch.arange(5))  # more distinct ids than slots: the slot map refuses


@pytest.mark.parametrize("prefetch", [False, True])
def test_collection_mixing_disk_and_ram_equals_all_ram(tmp_path, prefetch):
    configs = [
        embtable.TableConfig(name="a", num_embeddings=30, embedding_dim=4, pooling="mean", feature_names=["a1", "a2"]),
        embtable.TableConfig(
            name="b", num_embeddings=50, embedding_dim=4, padding_idx=0, feature_names=["b", "b2"],
            storage=Disk(tmp_path / "b", cache_rows=24),
        ),
        embtable.TableConfig(
            name="c", num_embeddings=20, embedding_dim=3, pooling="max", init="uniform",
            storage=Disk(tmp_path / "c", cache_rows=8, seed=2),
        ),
    ]
    mixed = DiskEmbeddingBagCollection(configs)
    ram = embtable.EmbeddingBagCollection([dataclasses.replace(c, storage=None) for c in configs])
    ram.load_state_dict(mixed.state_dict())
    assert list(mixed.state_dict()) == list(ram.state_dict())
    embtable.optim.fuse(mixed, "adagrad", lr=0.1)
    embtable.optim.fuse(ram, "adagrad", lr=0.1)
    generator = torch.Generator().manual_seed(5)

    def bags(rows):
        return [torch.randint(0, rows, (int(n),), generator=generator).tolist() for n in torch.randint(0, 4, (3,), generator=generator)]

    batches = [
        embtable.KeyedJagged.from_dict({"a1": bags(30), "a2": bags(30), "b": bags(50), "b2": bags(50), "c": bags(20)})
        for _ in range(6)
    ]
    for step in range(5):
        outs = [collection(batches[step]).values() for collection in (mixed, ram)]
        assert torch.equal(outs[0], outs[1])
        if prefetch:  # the next batch's disk rows are read during this backward
            mixed.prefetch(batches[step + 1])
        for out in outs:
            out.pow(2).sum().backward()
    for key, value in ram.state_dict().items():
        assert torch.equal(mixed.state_dict()[key], value), key
    used = sum(table.stats()["prefetch_used"] for table in mixed.embedding_bags.values())
    assert (used > 0) == prefetch
    with pytest.raises(TypeError, match="storage must be None or an embtable.storage.disk.Disk"):
        embtable.TableConfig(name="x", num_embeddings=3, embedding_dim=2, storage="/tmp/x")


def test_unpooled_collection_mixing_disk_and_ram_equals_all_ram(tmp_path):
    configs = [
        embtable.TableConfig(name="w", num_embeddings=30, embedding_dim=4, pooling="none", padding_idx=0),
        embtable.TableConfig(
            name="d", num_embeddings=40, embedding_dim=4, pooling="none", feature_names=["d1", "d2"],
            storage=Disk(tmp_path / "d", cache_rows=12),
        ),
    ]
    mixed = DiskEmbeddingCollection(configs)
    ram = embtable.EmbeddingCollection([dataclasses.replace(c, storage=None) for c in configs])
    ram.load_state_dict(mixed.state_dict())
    assert list(mixed.state_dict()) == ["embeddings.w.weight", "embeddings.d.weight"]
    embtable.optim.fuse(mixed, "adam", lr=0.1)
    embtable.optim.fuse(ram, "adam", lr=0.1)
    generator = torch.Generator().manual_seed(6)
    for _ in range(5):
        batch = embtable.KeyedJagged.from_dict({
            f: [torch.randint(0, 30, (2,), generator=generator).tolist() for _ in range(2)] for f in ("w", "d1", "d2")
        })
        outs = [collection(batch) for collection in (mixed, ram)]
        for feature in ("w", "d1", "d2"):
            assert torch.equal(outs[0][feature].values, outs[1][feature].values)
            assert torch.equal(outs[0][feature].lengths, outs[1][feature].lengths)
        for out in outs:
            sum(out[f].values.pow(2).sum() for f in ("w", "d1", "d2")).backward()
    for key, value in ram.state_dict().items():
        assert torch.equal(mixed.state_dict()[key], value), key
    with pytest.raises(ValueError, match="use 'none'"):
        DiskEmbeddingCollection([dataclasses.replace(configs[1], pooling="mean")])


def test_failed_read_leaves_the_table_refusing(tmp_path, monkeypatch):
    table = DiskEmbedding(40, 2, storage=Disk(tmp_path / "t", cache_rows=4))
    table(torch.tensor([1, 2]))

    def failing_read(*args, **kwargs):
        raise OSError(errno.EIO, "simulated read error")

    monkeypatch.setattr(table.store, "read", failing_read)
    with pytest.raises(OSError, match="simulated"):
        table(torch.tensor([3, 4]))
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="unusable after a failed read or write"):
        table(torch.tensor([1]))
    with pytest.raises(RuntimeError, match="unusable"):
        table.flush()


@pytest.mark.parametrize("kind", ["EmbeddingBagCollection", "EmbeddingCollection"])
def test_plain_collections_refuse_disk_tables(kind: str, tmp_path) -> None:
    """A plain collection must not quietly build a RAM table for a config that asks for disk."""
    pooling = "sum" if kind == "EmbeddingBagCollection" else "none"
    config = embtable.TableConfig(name="user", num_embeddings=100, embedding_dim=4, pooling=pooling,
                                  storage=Disk(tmp_path / "user", cache_rows=8))  # fmt: skip
    with pytest.raises(ValueError, match=f"embtable.nn.disk.Disk{kind}"):
        getattr(embtable, kind)([config])
    assert not (tmp_path / "user").exists()
