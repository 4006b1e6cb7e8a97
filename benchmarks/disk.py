"""Tables bigger than memory (issue 15): a disk-backed EmbeddingBag under a memory limit.

Workload: ``DiskEmbeddingBag(V, 64)`` (float32, 256-byte rows) trained by fused
RowWiseAdagrad (4 bytes of state per row) on B = 2048 bags of L = 20 ids, sum pooling,
with the ids skewed (``floor(V * u**3)``, u uniform), "hot" (95% of the lookups uniform
over a fixed 5% of the rows, scattered over the file by a multiplicative hash; the other 5%
uniform over all rows) or uniform.  The training
process runs inside a cgroup memory limit (cgroup v1 ``/sys/fs/cgroup/memory/``, else v2
``memory.max``; page cache included) smaller than the table, so the table truly does not
fit.  Reported per workload: steps/s (median step wall time; the disk runs are I/O-bound,
so wall time, not CPU time, is the measure), the cache hit rate (ids found in the cache /
ids looked up), rows read from the file and rows written back per step, bytes written per
updated row (bytes the process dirtied in the page cache, ``/proc/self/io`` write_bytes,
i.e. whole 4 KiB pages, over the distinct rows the optimizer updated), the row + state
size for comparison, and the peak memory of the cgroup (RSS + page cache) and of the
process (``ru_maxrss``).  The same table in RAM (``embtable.EmbeddingBag`` with the same
fused optimizer, no limit) is the baseline.  The disk's random-read rate (preads of one
256-byte row at random rows of the cold file, with the same number of I/O threads as the
table uses) is measured in the same script, inside the same limit, and again interleaved
with the timed steps of each disk run: a 0.3 s burst of ``O_DIRECT`` 4 KiB reads at random
pages of the same rows file (no page cache, so the bursts neither warm nor evict the
table's pages), with the same threads, before the first timed step and after every timed
step; each step's rows read per second is divided by the mean of the bursts on its two
sides ("per step pair").

Bytes written per updated row with flushes and compactions amortised: a separate run on a
smaller table (``--amortised-rows``, uniform ids, no memory limit: the measure is bytes
written, not speed) flushes every ``--flush-every`` steps with the default ``compact_ratio``
until the log has been moved home ``--compactions`` times; ``/proc/self/io`` write_bytes
over the whole run, over every updated row.

Each disk run draws its own ids (a seed per run, and for the hot stream its own hot rows), from
the same distributions: with one seed for every run, each run read the rows the run before it
had written last, which this virtual disk serves from its host's cache, several times faster
than random reads (the uniform stream then read 4-7x faster than the disk's measured rate).

Correctness first: a small disk table with a tiny cache and an in-RAM table give equal
weights after 5 fused steps.  Every run is its own subprocess with
``torch.set_num_threads(1)``; the table file is written once (rows of N(0, 1) values) and
its pages dropped from the page cache before every disk run.

Usage (as root for the cgroup; otherwise the limit is replaced by RLIMIT_AS and dropping
the file's pages, and the script says so):
    python benchmarks/disk.py [--rows 8000000] [--cache-rows 500000] [--limit-mib 768]
                              [--steps 10] [--warmup 20] [--hot-warmup 60] [--burst-s 0.3]
                              [--io-threads 4] [--prefetch] [--kinds skewed,hot,uniform]
                              [--policy lru | --policy clock,lru,lfu]
                              [--amortised-rows 500000] [--flush-every 5] [--compactions 2]
                              [--dir /var/tmp/embtable_disk_bench] [--quick]
    python benchmarks/disk.py --log-index     # only the write-back log's index timing
    python benchmarks/disk.py --policy-misses # only the row cache's misses per eviction policy
    python benchmarks/disk.py --read-path     # only the batched read calls, compiled vs Python
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DIM, BAGS, BAG_SIZE = 64, 2048, 20
VECTOR_DIM = 256
CGROUP_V1 = Path("/sys/fs/cgroup/memory")
CGROUP_V2 = Path("/sys/fs/cgroup")


# ------------------------------------------------------------------------------ limits


def make_cgroup(limit_bytes: int) -> tuple[str, Path | None]:
    """A memory cgroup limited to ``limit_bytes``: ("v1" | "v2", its path), or ("none", None)."""
    name = f"embtable_disk_bench_{os.getpid()}"
    if (CGROUP_V1 / "memory.limit_in_bytes").exists():
        group = CGROUP_V1 / name
        try:
            group.mkdir()
            (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
            return "v1", group
        except OSError:
            pass
    if (CGROUP_V2 / "cgroup.controllers").exists():
        group = CGROUP_V2 / name
        try:
            group.mkdir()
            (group / "memory.max").write_text(str(limit_bytes))
            return "v2", group
        except OSError:
            pass
    return "none", None


def join_cgroup(group: str | None, limit_bytes: int) -> None:
    if group:
        (Path(group) / "cgroup.procs").write_text(str(os.getpid()))
    else:  # fallback: address-space limit (page cache is then not limited)
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes * 4, limit_bytes * 4))


def cgroup_peak(group: str | None) -> int | None:
    if not group:
        return None
    for name in ("memory.max_usage_in_bytes", "memory.peak"):
        file = Path(group) / name
        if file.exists():
            return int(file.read_text())
    return None


def drop_pages(path: Path) -> None:
    for file in path.iterdir():
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


# ------------------------------------------------------------------------------ children


HOT_SHARE, HOT_FRACTION = 0.95, 0.05
KINDS = ("skewed", "hot", "uniform")


def batch(kind: str, rows: int, generator: torch.Generator, shift: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's ids and offsets; ``shift`` moves the hot set to other rows (a run's own)."""
    u = torch.rand(BAGS * BAG_SIZE, generator=generator, dtype=torch.float64)
    if kind == "hot":  # 95% on a fixed 5% of the rows (hot rank k -> row k * 0x9E3779B1 + shift mod V)
        hot_rows = max(1, int(rows * HOT_FRACTION))
        rank = (u * hot_rows).long().clamp_(max=hot_rows - 1)
        hot = (rank * 0x9E3779B1 + shift * 0x632BE5AB) % rows
        cold = (torch.rand(len(u), generator=generator, dtype=torch.float64) * rows).long().clamp_(max=rows - 1)
        pick = torch.rand(len(u), generator=generator) < HOT_SHARE
        return torch.where(pick, hot, cold), torch.arange(0, BAGS * BAG_SIZE, BAG_SIZE)
    ids = (rows * (u**3 if kind == "skewed" else u)).long().clamp_(max=rows - 1)
    return ids, torch.arange(0, BAGS * BAG_SIZE, BAG_SIZE)


class DirectReads:
    """Random 4 KiB ``O_DIRECT`` reads of a file (the page cache neither helps nor changes),
    ``threads`` at a time: the disk's random-read rate, measured between training steps."""

    def __init__(self, path: Path, threads: int) -> None:
        import mmap
        from concurrent.futures import ThreadPoolExecutor

        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
        self.pages = os.fstat(self.fd).st_size // 4096
        self.threads = threads
        self.buffers = [mmap.mmap(-1, 4096) for _ in range(threads)]  # page-aligned
        self.pool = ThreadPoolExecutor(threads)
        self.rng = np.random.default_rng(1)

    def burst(self, seconds: float) -> float:
        """Reads per second over ``seconds``."""
        deadline = time.perf_counter() + seconds

        def work(worker: int) -> int:
            pages, buffer, done = self.rng.integers(0, self.pages, 100_000), self.buffers[worker], 0
            for page in pages.tolist():
                os.preadv(self.fd, [buffer], page * 4096)
                done += 1
                if done % 16 == 0 and time.perf_counter() > deadline:
                    break
            return done

        start = time.perf_counter()
        total = sum(self.pool.map(work, range(self.threads)))
        return total / (time.perf_counter() - start)

    def close(self) -> None:
        self.pool.shutdown()
        os.close(self.fd)


def child_disk_rate(args: dict) -> dict:
    """Random 1-row preads of the cold rows file with ``io_threads`` threads for ~3 s."""
    from concurrent.futures import ThreadPoolExecutor

    path = Path(args["dir"]) / "table" / "rows.bin"
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    row_bytes = DIM * 4
    rng = np.random.default_rng(0)
    done = [0] * args["io_threads"]

    def work(worker: int, deadline: float) -> None:
        rows = rng.integers(0, args["rows"], 200_000)
        for i, row in enumerate(rows.tolist()):
            os.pread(fd, row_bytes, row * row_bytes)
            if i % 64 == 0 and time.perf_counter() > deadline:
                done[worker] = i + 1
                return
        done[worker] = len(rows)

    start = time.perf_counter()
    deadline = start + args["seconds"]
    with ThreadPoolExecutor(args["io_threads"]) as pool:
        list(pool.map(work, range(args["io_threads"]), [deadline] * args["io_threads"]))
    elapsed = time.perf_counter() - start
    direct = DirectReads(path, args["io_threads"])
    direct_rate = direct.burst(args["seconds"])
    direct.close()
    return {"rows_per_s": sum(done) / elapsed, "threads": args["io_threads"], "direct_per_s": direct_rate}


def child_train(args: dict) -> dict:
    import embtable
    from embtable.nn.disk import DiskEmbeddingBag
    from embtable.storage.disk import Disk

    torch.set_num_threads(1)
    rows, kind = args["rows"], args["ids"]
    if args["table"] == "disk":
        table = DiskEmbeddingBag(
            rows, DIM, mode="sum",
            storage=Disk(Path(args["dir"]) / "table", cache_rows=args["cache_rows"], io_threads=args["io_threads"],
                         policy=args.get("policy", "lru")),
        )
    else:
        table = embtable.EmbeddingBag(rows, DIM, mode="sum")
    embtable.optim.fuse(table, "rowwise_adagrad", lr=0.01)
    seed = args.get("seed", 0)  # each disk run its own ids: none reads what an earlier run wrote last
    generator = torch.Generator().manual_seed(seed)
    times, updated, updated_all, before, first = [], 0, 0, None, write_bytes()
    probe = DirectReads(Path(args["dir"]) / "table" / "rows.bin", args["io_threads"]) if args.get("bursts") else None
    bursts, step_reads = [], []
    prefetch = args.get("prefetch", False)
    following = batch(kind, rows, generator, seed)
    for step in range(args["warmup"] + args["steps"]):
        (ids, offsets), following = following, batch(kind, rows, generator, seed)
        if step == args["warmup"]:
            before = (table.stats() if args["table"] == "disk" else {}, write_bytes())
            if probe:
                bursts.append(probe.burst(args["bursts"]))
        read_before = table.stats()["rows_read"] if probe else 0
        start = time.perf_counter()
        loss = table(ids, offsets).sum()
        if prefetch:  # the next step's misses are read while this step's backward computes
            table.prefetch(following[0])
        loss.backward()
        if prefetch and probe:  # ... and finish inside this step, not during the burst after it
            table.store.wait_prefetch()
        times.append(time.perf_counter() - start)
        if probe and step >= args["warmup"]:
            step_reads.append(table.stats()["rows_read"] - read_before)
            bursts.append(probe.burst(args["bursts"]))
        distinct = int(torch.unique(ids).numel())
        updated_all += distinct
        if step >= args["warmup"]:
            updated += distinct
    result = {"step_s": statistics.median(times[args["warmup"]:]), "rows_updated": updated / args["steps"]}
    if probe:
        probe.close()
        timed = times[args["warmup"]:]
        result["pairs"] = [
            {"rows_per_s": n / t, "disk_per_s": (a + b) / 2, "ratio": n / t / ((a + b) / 2)}
            for n, t, a, b in zip(step_reads, timed, bursts, bursts[1:])
        ]
    if args["table"] == "disk":
        stats, dirtied = table.stats(), write_bytes() - before[1]  # (before the final flush)
        s0, steps = before[0], args["steps"]
        misses = stats["admitted"] - s0["admitted"]
        distinct = updated
        result.update(
            hit_rate=1 - misses / distinct,
            rows_read=(stats["rows_read"] - s0["rows_read"] + stats["rows_initialized"] - s0["rows_initialized"]) / steps,
            rows_written=(stats["rows_written"] - s0["rows_written"]) / steps,
            logical_bytes_per_updated=(stats["bytes_written"] - s0["bytes_written"]) / updated,
            page_bytes_per_updated=dirtied / updated,
            record_bytes=table.store.row_bytes + table.store.state_row_bytes,
        )
        start = time.perf_counter()
        table.flush()  # writes the cache's dirty rows to the log, fsyncs it, writes the manifest
        flush = time.perf_counter() - start
        result["compactions"] = table.store.compactions
        result.update(
            flush_s=flush,
            amortized_step_s=(sum(times) + flush) / len(times),  # every step, and the flush
            page_bytes_per_updated_with_flush=(write_bytes() - first) / updated_all,
        )
        table.store.close()
    result["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["cgroup_peak_mib"] = (cgroup_peak(args.get("cgroup")) or 0) / 2**20
    return result


def child_amortised(args: dict) -> dict:
    """Uniform steps on a fresh table, a flush every ``flush_every`` steps, until the flushes
    have moved the log home ``compactions`` times: bytes written over every updated row."""
    import embtable
    from embtable.nn.disk import DiskEmbeddingBag
    from embtable.storage.disk import Disk

    torch.set_num_threads(1)
    rows, path = args["rows"], Path(args["dir"]) / "amortised"
    shutil.rmtree(path, ignore_errors=True)
    table = DiskEmbeddingBag(rows, DIM, mode="sum", storage=Disk(path, cache_rows=args["cache_rows"],
                                                                 io_threads=args["io_threads"]))
    embtable.optim.fuse(table, "rowwise_adagrad", lr=0.01)
    generator = torch.Generator().manual_seed(0)
    first, updated, steps, start = write_bytes(), 0, 0, time.perf_counter()
    while table.store.compactions < args["compactions"] and steps < args["max_steps"]:
        ids, offsets = batch("uniform", rows, generator)
        table(ids, offsets).sum().backward()
        updated += int(torch.unique(ids).numel())
        steps += 1
        if steps % args["flush_every"] == 0:
            table.flush()
    table.flush()
    written, log_records = write_bytes() - first, table.store.rows_written
    table.store.close()
    shutil.rmtree(path)
    return {
        "steps": steps, "updated": updated, "compactions": table.store.compactions, "bytes": written,
        "per_updated": written / updated, "logged_per_updated": log_records / updated,
        "seconds": time.perf_counter() - start,
    }


def child_vectors(args: dict) -> dict:
    """Serve a memory-mapped native ``Vectors`` file larger than the limit: lookups and
    ``most_similar`` (its first call streams the whole file once for the row norms)."""
    from embtable.vectors import Vectors

    torch.set_num_threads(1)
    start = time.perf_counter()
    vectors = Vectors.load(Path(args["dir"]) / "vectors")
    opened = time.perf_counter() - start
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in rng.integers(0, args["words"], 1000).tolist()]
    start = time.perf_counter()
    rows = [vectors[w] for w in words]
    lookup = (time.perf_counter() - start) / len(rows)
    times = []
    for word in words[:3]:
        start = time.perf_counter()
        best = vectors.most_similar(word, topn=5)
        times.append(time.perf_counter() - start)
    return {
        "open_s": opened, "lookup_us": lookup * 1e6, "first_query_s": times[0], "query_s": statistics.median(times[1:]),
        "best": best[0][0], "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cgroup_peak_mib": (cgroup_peak(args.get("cgroup")) or 0) / 2**20,
    }


def build_vectors(directory: Path, words: int) -> None:
    from embtable.vectors import Vectors

    path = directory / "vectors"
    if path.exists():
        return
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(words, VECTOR_DIM, generator=generator)
    Vectors([f"w{i}" for i in range(words)], weight).save(path)


def child_main(payload: str) -> None:
    args = json.loads(payload)
    if args.get("limit"):
        join_cgroup(args.get("cgroup"), args["limit"])
        drop_pages(Path(args["dir"]) / ("vectors" if args["job"] == "vectors" else "table"))
    jobs = {"rate": child_disk_rate, "train": child_train, "vectors": child_vectors, "amortised": child_amortised}
    result = jobs[args["job"]](args)
    print("RESULT " + json.dumps(result), flush=True)


def run_child(args: dict) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(args)], capture_output=True, text=True, timeout=3600
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"child {args['job']} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")


# ------------------------------------------------------------------------------ parent


def print_disk_row(ids: str, contender: str, ram: dict, disk: dict) -> None:
    print(
        f"| {ids} | {contender} | {1 / disk['step_s']:.2f} | {ram['step_s'] / disk['step_s']:.2f} | "
        f"{disk['hit_rate']:.3f} | {disk['rows_read']:,.0f} | {disk['rows_read'] / disk['step_s']:,.0f} | "
        f"{disk['rows_written']:,.0f} | {disk['page_bytes_per_updated']:.0f}; "
        f"{disk['logical_bytes_per_updated']:.0f}; {disk['page_bytes_per_updated_with_flush']:.0f} | "
        f"{disk['record_bytes']} | {disk['flush_s']:.1f} | {1 / disk['amortized_step_s']:.2f} | "
        f"{disk['cgroup_peak_mib']:.0f} | {disk['maxrss_mib']:.0f} |"
    )


def policy_misses(rows: int, cache_rows: int, steps: int = 240) -> None:
    """The row cache alone (a ``SlotMap`` of ``cache_rows``, no files): misses per step of
    each eviction policy on the hot-set stream, over the second half of ``steps`` steps (the
    cache full), split into never-seen cold ids and hot-set rows; thread CPU time per lookup."""
    from embtable.storage.slots import SlotMap

    torch.set_num_threads(1)
    hot_rows = max(1, int(rows * HOT_FRACTION))
    is_hot = torch.zeros(rows, dtype=torch.bool)
    is_hot[torch.arange(hot_rows) * 0x9E3779B1 % rows] = True
    print(f"hot-set stream, {rows:,} rows, cache {cache_rows:,}, {BAGS} x {BAG_SIZE} ids, steps {steps // 2}-{steps}:")
    print("| policy | misses/step | of them hot-set rows | lookup ms (thread CPU) |")
    print("|---|---|---|---|")
    for policy in ("clock", "lru", "lfu"):
        slot_map, generator = SlotMap(cache_rows, policy=policy), torch.Generator().manual_seed(0)
        missed = hot = 0
        spent = 0.0
        for step in range(steps):
            ids, _ = batch("hot", rows, generator)
            begin = time.thread_time()
            found = slot_map.lookup(ids)
            spent += time.thread_time() - begin
            if step >= steps // 2:
                missed += found.new_ids.numel()
                hot += int(is_hot[found.new_ids].sum())
        half = steps - steps // 2
        print(f"| {policy} | {missed / half:,.0f} | {hot / half:,.0f} | {spent / steps * 1e3:.2f} |")


def read_path_timing(directory: Path, rows: int = 1_000_000, batch_rows: int = 38_308, repeats: int = 5) -> None:
    """The store's batched read path on a file in the page cache (no disk: the cost of the
    calls themselves): ``BatchIO`` reads of ``batch_rows`` sorted random 256-byte records,
    each task's runs by one compiled ``embtable::disk_pread_runs`` call (without the GIL) or
    by its Python twin (one ``preadv`` per run), at 1 and 8 threads, alternated; medians of
    wall time and of the process's CPU time (all threads)."""
    from unittest import mock

    from embtable.storage import _disk_io

    path = directory / "read_path.bin"
    record = DIM * 4
    if not path.exists() or path.stat().st_size != rows * record:
        path.write_bytes(np.random.default_rng(0).integers(0, 256, rows * record, dtype=np.uint8).tobytes())
    fd = os.open(path, os.O_RDONLY)
    os.pread(fd, rows * record, 0)  # into the page cache
    rng = np.random.default_rng(1)
    batches = [np.sort(rng.choice(rows, batch_rows, replace=False)) for _ in range(repeats)]
    print(f"read path: {batch_rows:,} sorted random {record}-byte records of a {rows:,}-record file in the page cache")
    print("| threads | path | wall ms | CPU ms (all threads) |")
    print("|---|---|---|---|")
    for threads in (1, 8):
        batch_io = _disk_io.BatchIO(directory, threads)
        times: dict[str, list[tuple[float, float]]] = {"compiled": [], "Python": []}
        for ids in batches:
            for name in times:
                buffer = np.empty((len(ids), record), dtype=np.uint8)
                with mock.patch.object(_disk_io, "_compiled", lambda: False) if name == "Python" else contextlib.nullcontext():
                    wall, cpu = time.perf_counter(), time.process_time()
                    batch_io.io(fd, False, ids, buffer, record)
                    times[name].append(((time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3))
        batch_io.close()
        for name, runs in times.items():
            print(f"| {threads} | {name} | {statistics.median(r[0] for r in runs):.1f} | {statistics.median(r[1] for r in runs):.1f} |")
    os.close(fd)
    path.unlink()


def log_index_timing(rows: int = 8_000_000, logged: int = 2_000_000, batch_rows: int = 4_000, appends: int = 200) -> None:
    """Thread CPU time of the write-back log's index: ``appends`` appends of ``batch_rows``
    distinct random rows onto an index of ~``logged`` rows, then finds of such batches, for
    the layered ``RunIndex`` and the whole-array index it replaced (the oracle of
    tests/storage/test_disk.py, which copies the whole index on every append); alternated,
    twice each, one thread."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "storage"))
    from test_disk import _WholeIndexLog

    from embtable.storage._disk_log import RunIndex

    rng = np.random.default_rng(0)
    start = np.unique(rng.integers(0, rows, logged))
    batches = [np.unique(rng.integers(0, rows, batch_rows)) for _ in range(appends)]
    print(f"log index: {appends} appends of ~{batch_rows:,} rows onto {len(start):,} logged rows (of {rows:,})")
    print("| index | append ms (median of 2 runs) | find ms |")
    print("|---|---|---|")
    timings: dict[str, list[tuple[float, float]]] = {"whole array (before)": [], "RunIndex (layered)": []}
    for _ in range(2):
        for name in timings:
            if name.startswith("whole"):
                index = _WholeIndexLog()
                index.append(start)
                add = index.append
            else:
                index, count = RunIndex(), [len(start)]
                index.add(start, np.arange(len(start)))

                def add(ids: np.ndarray, index: RunIndex = index, count: list[int] = count) -> None:
                    index.add(ids, np.arange(count[0], count[0] + len(ids)))
                    count[0] += len(ids)

            begin = time.thread_time()
            for ids in batches:
                add(ids)
            appended = (time.thread_time() - begin) / appends
            begin = time.thread_time()
            for ids in batches[:50]:
                index.find(ids)
            timings[name].append((appended * 1e3, (time.thread_time() - begin) / 50 * 1e3))
    for name, runs in timings.items():
        print(f"| {name} | {statistics.median(r[0] for r in runs):.2f} | {statistics.median(r[1] for r in runs):.2f} |")


def check_correctness(prefetch: bool = False) -> None:
    import embtable
    from embtable.nn.disk import DiskEmbeddingBag
    from embtable.storage.disk import Disk

    with tempfile.TemporaryDirectory() as tmp:
        disk = DiskEmbeddingBag(5000, DIM, mode="sum", storage=Disk(Path(tmp) / "t", cache_rows=700))
        ram = embtable.EmbeddingBag.from_pretrained(disk.export_weight(), freeze=False, mode="sum")
        for table in (disk, ram):
            embtable.optim.fuse(table, "rowwise_adagrad", lr=0.01)
        generator = torch.Generator().manual_seed(0)
        batches = [batch("uniform", 5000, generator) for _ in range(6)]
        for step in range(5):
            ids, offsets = batches[step][0][:640], batches[step][1][:32]
            for table in (disk, ram):
                loss = table(ids, offsets).pow(2).sum()
                if prefetch and table is disk:
                    disk.prefetch(batches[step + 1][0][:640])
                loss.backward()
        assert torch.equal(disk.export_weight(), ram.weight.detach()), "disk table differs from RAM"
        assert not prefetch or disk.stats()["prefetch_used"] > 0
        disk.store.close()
    print(
        "correctness: a 5000-row disk table with a 700-row cache equals the in-RAM table after 5 fused steps"
        + (" (prefetching each next batch)" if prefetch else "")
    )


def build_table(directory: Path, rows: int) -> float:
    from embtable.storage.disk import DiskRowStore

    path = directory / "table"
    if (path / "manifest.json").exists():
        if json.loads((path / "manifest.json").read_text())["status"] == "clean":
            return 0.0
        shutil.rmtree(path)  # an interrupted earlier run
    start = time.perf_counter()
    store = DiskRowStore.create(path, num_embeddings=rows, embedding_dim=DIM, seed=0)
    generator = torch.Generator().manual_seed(1)
    chunk = 1 << 18
    for first in range(0, rows, chunk):
        ids = torch.arange(first, min(first + chunk, rows))
        store.write_rows(ids, torch.randn(len(ids), DIM, generator=generator))
    store.flush(compact=True)  # every row at its home place (no log)
    store.close()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child")
    parser.add_argument("--rows", type=int, default=8_000_000)
    parser.add_argument("--cache-rows", type=int, default=500_000)
    parser.add_argument("--limit-mib", type=int, default=768)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=20, help="steps before timing (fill the cache)")
    parser.add_argument("--hot-warmup", type=int, default=60, help="the hot stream's (fill the cache past the hot set)")
    parser.add_argument("--io-threads", type=int, default=4)
    parser.add_argument("--dir", default="/var/tmp/embtable_disk_bench")
    parser.add_argument("--vector-words", type=int, default=2_000_000, help="0: skip the Vectors check")
    parser.add_argument("--burst-s", type=float, default=0.3, help="disk-rate burst between timed steps")
    parser.add_argument("--amortised-rows", type=int, default=500_000, help="0: skip the amortised run")
    parser.add_argument("--amortised-cache", type=int, default=50_000)
    parser.add_argument("--flush-every", type=int, default=5)
    parser.add_argument("--compactions", type=int, default=2)
    parser.add_argument("--prefetch", action="store_true",
                        help="also train each stream with table.prefetch(next batch) (after the run without)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="the id streams to run (comma-separated)")
    parser.add_argument("--policy", default="lru",
                        help="the disk table's eviction policy; several (comma-separated): one disk run each")
    parser.add_argument("--log-index", action="store_true",
                        help="only time the write-back log's index: appends and finds, layered vs whole")
    parser.add_argument("--policy-misses", action="store_true",
                        help="only simulate the row cache's misses per eviction policy on the hot stream")
    parser.add_argument("--read-path", action="store_true",
                        help="only time the batched read calls (compiled vs Python) on a file in the page cache")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the table file for the next run")
    opts = parser.parse_args()
    if opts.child:
        child_main(opts.child)
        return
    if opts.log_index:
        log_index_timing()
        return
    if opts.policy_misses:
        policy_misses(opts.rows, opts.cache_rows)
        return
    if opts.read_path:
        Path(opts.dir).mkdir(parents=True, exist_ok=True)
        read_path_timing(Path(opts.dir))
        return
    kinds = [k for k in opts.kinds.split(",") if k]
    if not kinds or any(k not in KINDS for k in kinds):
        parser.error(f"--kinds must name some of {KINDS}, got {opts.kinds!r}")
    policies = [p for p in opts.policy.split(",") if p]
    if not policies or any(p not in ("lru", "lfu", "clock") for p in policies):
        parser.error(f"--policy must name some of lru, lfu, clock, got {opts.policy!r}")
    disks = [  # (name, eviction policy, prefetch)
        (f"disk{'+prefetch' if prefetch else ''}{f' {policy}' if len(policies) > 1 else ''}", policy, prefetch)
        for policy in policies for prefetch in ([False, True] if opts.prefetch else [False])
    ]
    if opts.quick:
        opts.rows, opts.cache_rows, opts.limit_mib, opts.steps, opts.warmup = 1_000_000, 100_000, 400, 4, 2
        opts.hot_warmup = 4
        opts.vector_words, opts.amortised_rows = 200_000, 100_000
    directory = Path(opts.dir)
    directory.mkdir(parents=True, exist_ok=True)
    check_correctness()
    if opts.prefetch:
        check_correctness(prefetch=True)
    built = build_table(directory, opts.rows)
    table_bytes = opts.rows * (DIM * 4 + 4)
    limit = opts.limit_mib << 20
    kind, group = make_cgroup(limit)
    print(
        f"table: {opts.rows:,} rows x {DIM} float32 + 4 B row-wise state = {table_bytes / 2**30:.2f} GiB "
        f"(written in {built:.0f} s); cache {opts.cache_rows:,} rows ({opts.policy}); memory limit {opts.limit_mib} MiB "
        f"via {'cgroup ' + kind if group else 'RLIMIT_AS (no cgroup available: page cache not limited)'}"
    )
    common = {
        "dir": str(directory), "rows": opts.rows, "cache_rows": opts.cache_rows, "io_threads": opts.io_threads,
        "steps": opts.steps, "warmup": opts.warmup, "cgroup": str(group) if group else None,
    }
    try:
        rate = run_child({**common, "job": "rate", "limit": limit, "seconds": 3.0})
        results = {}
        seed = 0
        for ids in kinds:
            warm = {"warmup": opts.hot_warmup if ids == "hot" else opts.warmup}
            results["ram", ids] = run_child({**common, **warm, "job": "train", "table": "ram", "ids": ids, "seed": seed + 1})
            for contender, policy, prefetch in disks:
                seed += 1
                if group:  # a fresh cgroup per run, so its peak is the run's own
                    group.rmdir()
                    kind, group = make_cgroup(limit)
                    common["cgroup"] = str(group)
                results[contender, ids] = run_child({
                    **common, **warm, "job": "train", "table": "disk", "ids": ids, "limit": limit,
                    "bursts": opts.burst_s, "prefetch": prefetch, "policy": policy, "seed": seed,
                })
        if opts.vector_words:
            build_vectors(directory, opts.vector_words)
            if group:
                group.rmdir()
                kind, group = make_cgroup(limit)
                common["cgroup"] = str(group)
            served = run_child({**common, "job": "vectors", "limit": limit, "words": opts.vector_words})
        if opts.amortised_rows:
            amortised = run_child({
                **common, "job": "amortised", "rows": opts.amortised_rows, "cache_rows": opts.amortised_cache,
                "flush_every": opts.flush_every, "compactions": opts.compactions, "max_steps": 400,
            })
    finally:
        if group:
            group.rmdir()
    print(
        f"disk random reads ({rate['threads']} threads, cold file): 1 row each {rate['rows_per_s']:,.0f} rows/s; "
        f"O_DIRECT 4 KiB {rate['direct_per_s']:,.0f} reads/s"
    )
    print(
        "| ids | table | steps/s | step ratio vs RAM | hit rate | rows read/step | rows read/s | "
        "rows written/step | bytes written/updated row (pages; logical; pages incl. flush) | "
        "row+state bytes | flush s | steps/s incl. flush | peak cgroup MiB | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for ids in kinds:
        ram = results["ram", ids]
        print(f"| {ids} | RAM | {1 / ram['step_s']:.2f} | 1.00 | - | - | - | - | - | - | - | - | - | {ram['maxrss_mib']:.0f} |")
        for contender, _, _ in disks:
            print_disk_row(ids, contender, ram, results[contender, ids])
    print("rows read/s of each timed step over the mean O_DIRECT rate of the bursts before and after it:")
    print("| ids | table | " + " | ".join(f"pair {i + 1}" for i in range(opts.steps)) + " | median |")
    print("|---|---|" + "---|" * (opts.steps + 1))
    for ids in kinds:
        for contender, _, _ in disks:
            pairs = results[contender, ids]["pairs"]
            cells = [f"{p['ratio']:.2f} ({p['rows_per_s'] / 1e3:.0f}k/{p['disk_per_s'] / 1e3:.0f}k)" for p in pairs]
            print(f"| {ids} | {contender} | " + " | ".join(cells) + f" | {statistics.median(p['ratio'] for p in pairs):.2f} |")
    for contender, _, _ in disks:
        summary = [f"{k} step rate = {results['ram', k]['step_s'] / results[contender, k]['step_s']:.2f}x RAM"
                   for k in kinds if k != "uniform"]
        if "uniform" in kinds:
            uniform = results[contender, "uniform"]
            summary.insert(0, f"uniform rows read/s = {uniform['rows_read'] / uniform['step_s'] / rate['rows_per_s']:.2f}x "
                           "the disk's random-read rate measured before the runs")
        print(f"{contender}: " + "; ".join(summary))
    if opts.amortised_rows:
        a = amortised
        print(
            f"amortised: {opts.amortised_rows:,}-row table, cache {opts.amortised_cache:,}, uniform ids, flush every "
            f"{opts.flush_every} steps: {a['steps']} steps, {a['compactions']} compactions, {a['bytes'] / 2**20:,.0f} MiB "
            f"written for {a['updated']:,} updated rows = {a['per_updated']:.0f} B per updated row "
            f"({a['logged_per_updated']:.2f} logged records each; row+state {DIM * 4 + 4} B; {a['seconds']:.0f} s)"
        )
    if opts.vector_words:
        size = opts.vector_words * VECTOR_DIM * 4 / 2**30
        print(
            f"vectors: {opts.vector_words:,} words x {VECTOR_DIM} float32 ({size:.2f} GiB, native format, "
            f"memory-mapped) under the {opts.limit_mib} MiB limit: open {served['open_s']:.1f} s, "
            f"lookup {served['lookup_us']:.0f} us/word, most_similar first {served['first_query_s']:.1f} s "
            f"(row norms), then {served['query_s']:.1f} s; peak cgroup {served['cgroup_peak_mib']:.0f} MiB, "
            f"peak RSS {served['maxrss_mib']:.0f} MiB"
        )
    if not opts.keep:
        shutil.rmtree(directory / "table")


if __name__ == "__main__":
    main()
