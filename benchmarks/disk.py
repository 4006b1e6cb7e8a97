"""Tables bigger than memory (issue 15): a disk-backed EmbeddingBag under a memory limit.

Workload: ``DiskEmbeddingBag(V, 64)`` (float32, 256-byte rows) trained by fused
RowWiseAdagrad (4 bytes of state per row) on B = 2048 bags of L = 20 ids, sum pooling,
with the ids either skewed (``floor(V * u**3)``, u uniform) or uniform.  The training
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
table uses) is measured in the same script, inside the same limit.

Correctness first: a small disk table with a tiny cache and an in-RAM table give equal
weights after 5 fused steps.  Every run is its own subprocess with
``torch.set_num_threads(1)``; the table file is written once (rows of N(0, 1) values) and
its pages dropped from the page cache before every disk run.

Usage (as root for the cgroup; otherwise the limit is replaced by RLIMIT_AS and dropping
the file's pages, and the script says so):
    python benchmarks/disk.py [--rows 8000000] [--cache-rows 500000] [--limit-mib 768]
                              [--steps 10] [--warmup 20] [--dir /var/tmp/embtable_disk_bench] [--quick]
"""

from __future__ import annotations

import argparse
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


def batch(kind: str, rows: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    u = torch.rand(BAGS * BAG_SIZE, generator=generator, dtype=torch.float64)
    ids = (rows * (u**3 if kind == "skewed" else u)).long().clamp_(max=rows - 1)
    return ids, torch.arange(0, BAGS * BAG_SIZE, BAG_SIZE)


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
    return {"rows_per_s": sum(done) / elapsed, "threads": args["io_threads"]}


def child_train(args: dict) -> dict:
    import embtable
    from embtable.nn.disk import DiskEmbeddingBag
    from embtable.storage.disk import Disk

    torch.set_num_threads(1)
    rows, kind = args["rows"], args["ids"]
    if args["table"] == "disk":
        table = DiskEmbeddingBag(
            rows, DIM, mode="sum",
            storage=Disk(Path(args["dir"]) / "table", cache_rows=args["cache_rows"], io_threads=args["io_threads"]),
        )
    else:
        table = embtable.EmbeddingBag(rows, DIM, mode="sum")
    embtable.optim.fuse(table, "rowwise_adagrad", lr=0.01)
    generator = torch.Generator().manual_seed(0)
    times, updated, updated_all, before, first = [], 0, 0, None, write_bytes()
    for step in range(args["warmup"] + args["steps"]):
        ids, offsets = batch(kind, rows, generator)
        if step == args["warmup"]:
            before = (table.stats() if args["table"] == "disk" else {}, write_bytes())
        start = time.perf_counter()
        table(ids, offsets).sum().backward()
        times.append(time.perf_counter() - start)
        distinct = int(torch.unique(ids).numel())
        updated_all += distinct
        if step >= args["warmup"]:
            updated += distinct
    result = {"step_s": statistics.median(times[args["warmup"]:]), "rows_updated": updated / args["steps"]}
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
        table.flush()  # moves the write-back log (all steps' evicted rows) to the rows' places
        flush = time.perf_counter() - start
        result.update(
            flush_s=flush,
            amortized_step_s=(sum(times) + flush) / len(times),  # every step, and the flush
            page_bytes_per_updated_with_flush=(write_bytes() - first) / updated_all,
        )
        table.store.close()
    result["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["cgroup_peak_mib"] = (cgroup_peak(args.get("cgroup")) or 0) / 2**20
    return result


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
    jobs = {"rate": child_disk_rate, "train": child_train, "vectors": child_vectors}
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


def check_correctness() -> None:
    import embtable
    from embtable.nn.disk import DiskEmbeddingBag
    from embtable.storage.disk import Disk

    with tempfile.TemporaryDirectory() as tmp:
        disk = DiskEmbeddingBag(5000, DIM, mode="sum", storage=Disk(Path(tmp) / "t", cache_rows=700))
        ram = embtable.EmbeddingBag.from_pretrained(disk.export_weight(), freeze=False, mode="sum")
        for table in (disk, ram):
            embtable.optim.fuse(table, "rowwise_adagrad", lr=0.01)
        generator = torch.Generator().manual_seed(0)
        for _ in range(5):
            ids, offsets = batch("uniform", 5000, generator)
            ids, offsets = ids[:640], offsets[:32]
            for table in (disk, ram):
                table(ids, offsets).pow(2).sum().backward()
        assert torch.equal(disk.export_weight(), ram.weight.detach()), "disk table differs from RAM"
        disk.store.close()
    print("correctness: a 5000-row disk table with a 700-row cache equals the in-RAM table after 5 fused steps")


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
    store.flush()
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
    parser.add_argument("--io-threads", type=int, default=4)
    parser.add_argument("--dir", default="/var/tmp/embtable_disk_bench")
    parser.add_argument("--vector-words", type=int, default=2_000_000, help="0: skip the Vectors check")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the table file for the next run")
    opts = parser.parse_args()
    if opts.child:
        child_main(opts.child)
        return
    if opts.quick:
        opts.rows, opts.cache_rows, opts.limit_mib, opts.steps, opts.warmup = 1_000_000, 100_000, 400, 4, 2
        opts.vector_words = 200_000
    directory = Path(opts.dir)
    directory.mkdir(parents=True, exist_ok=True)
    check_correctness()
    built = build_table(directory, opts.rows)
    table_bytes = opts.rows * (DIM * 4 + 4)
    limit = opts.limit_mib << 20
    kind, group = make_cgroup(limit)
    print(
        f"table: {opts.rows:,} rows x {DIM} float32 + 4 B row-wise state = {table_bytes / 2**30:.2f} GiB "
        f"(written in {built:.0f} s); cache {opts.cache_rows:,} rows; memory limit {opts.limit_mib} MiB "
        f"via {'cgroup ' + kind if group else 'RLIMIT_AS (no cgroup available: page cache not limited)'}"
    )
    common = {
        "dir": str(directory), "rows": opts.rows, "cache_rows": opts.cache_rows, "io_threads": opts.io_threads,
        "steps": opts.steps, "warmup": opts.warmup, "cgroup": str(group) if group else None,
    }
    try:
        rate = run_child({**common, "job": "rate", "limit": limit, "seconds": 3.0})
        results = {}
        for ids in ("skewed", "uniform"):
            results["ram", ids] = run_child({**common, "job": "train", "table": "ram", "ids": ids})
            if group:  # a fresh cgroup per run, so its peak is the run's own
                group.rmdir()
                kind, group = make_cgroup(limit)
                common["cgroup"] = str(group)
            results["disk", ids] = run_child({**common, "job": "train", "table": "disk", "ids": ids, "limit": limit})
        if opts.vector_words:
            build_vectors(directory, opts.vector_words)
            if group:
                group.rmdir()
                kind, group = make_cgroup(limit)
                common["cgroup"] = str(group)
            served = run_child({**common, "job": "vectors", "limit": limit, "words": opts.vector_words})
    finally:
        if group:
            group.rmdir()
    print(f"disk random reads (1 row each, {rate['threads']} threads, cold file): {rate['rows_per_s']:,.0f} rows/s")
    print(
        "| ids | table | steps/s | step ratio vs RAM | hit rate | rows read/step | rows read/s | "
        "rows written/step | bytes written/updated row (pages; logical; pages incl. flush) | "
        "row+state bytes | flush s | steps/s incl. flush | peak cgroup MiB | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for ids in ("skewed", "uniform"):
        ram, disk = results["ram", ids], results["disk", ids]
        print(f"| {ids} | RAM | {1 / ram['step_s']:.2f} | 1.00 | - | - | - | - | - | - | - | - | - | {ram['maxrss_mib']:.0f} |")
        print(
            f"| {ids} | disk | {1 / disk['step_s']:.2f} | {ram['step_s'] / disk['step_s']:.2f} | "
            f"{disk['hit_rate']:.3f} | {disk['rows_read']:,.0f} | {disk['rows_read'] / disk['step_s']:,.0f} | "
            f"{disk['rows_written']:,.0f} | {disk['page_bytes_per_updated']:.0f}; "
            f"{disk['logical_bytes_per_updated']:.0f}; {disk['page_bytes_per_updated_with_flush']:.0f} | "
            f"{disk['record_bytes']} | {disk['flush_s']:.1f} | {1 / disk['amortized_step_s']:.2f} | "
            f"{disk['cgroup_peak_mib']:.0f} | {disk['maxrss_mib']:.0f} |"
        )
    uniform = results["disk", "uniform"]
    print(
        f"uniform: rows read/s = {uniform['rows_read'] / uniform['step_s'] / rate['rows_per_s']:.2f}x the disk's "
        f"random-read rate; skewed step rate = {results['ram', 'skewed']['step_s'] / results['disk', 'skewed']['step_s']:.2f}x RAM"
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
