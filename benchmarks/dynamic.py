"""Dynamic vocabularies (issue 16): remap throughput, training step, synthetic CTR quality.

Stream: batches of B x L ids (default 2048 x 20) drawn Zipf-like (rank r with probability
proportional to r**-1.05) over ``--distinct`` ranks, each rank mapped to a random 64-bit id
(``mix64``); the table holds ``--capacity`` rows, D = 64.

1. ``remap`` - correctness first (embtable's SlotMap vs a Python ``OrderedDict`` LRU that
   implements the same rules: same live ids, same slots), then:
   a. embtable alone over the whole stream (``--lookups`` ids): ns per id, one thread,
      admission and eviction included (per-call CPU time, ``time.thread_time``);
   b. paired, same batches after every contender has seen the same warm-up prefix (until
      embtable's table is full, so every timed batch evicts): embtable, the Python dict
      LRU and TorchRec's ``MCHManagedCollisionModule`` (LRU policy) twice: with
      ``eviction_interval=1`` (it evicts every batch, as embtable does) and with
      ``eviction_interval=10`` (it evicts every 10th batch; in between, ids it has not
      admitted read its shared last row), alternating contenders batch by batch; medians of
      the per-batch ns per id, the slowest batch (the stalls) and the share of looked-up ids
      that got the shared row (TorchRec: row ``capacity - 1``; embtable with ``min_count=1``
      and the dict: none, every id gets its own row at once).
2. ``train`` - one fused RowWiseAdagrad step (forward + backward, sum pooling) of a
   ``DynamicEmbeddingBag`` (capacity rows) vs the same step of a static ``EmbeddingBag``
   of capacity + 1 rows fed hashed ids, same batches, alternating, after a warm-up that
   fills the dynamic table; medians of the step's CPU time.
   ``breakdown`` - the same dynamic step with its parts timed (median CPU time per step of the
   SlotMap call, the new rows' initialization with their optimizer-state reset (one compiled
   call), the whole remap, forward and backward), next to the static table's forward and
   backward.
   ``pipeline`` - the prefetch pipeline (``DynamicEmbeddingBag.prefetch``: the lookup of batch
   i+1 runs on a background thread during step i) against the plain dynamic step, the static
   step at one intra-op thread and at two (the pipeline's total thread count); same batches,
   alternating; wall time per step (each pipelined step waits for its background lookup, so
   no background work leaks into the next contender's time) and the main thread's CPU time,
   and the background thread's CPU time per batch.  It checks that the pipelined table starts
   and ends equal to the plain one (rows and map).
   ``floor`` - the floor of the dynamic step's extra work: in the training step's cache state,
   a read-only probe of every position (``SlotMap.find``) and the writes of the batch's new
   rows (values computed ahead) on copies; (static + both) / static is the best one-thread
   ratio a remap through this map's index could reach on this machine (a more compact index,
   or a remap off the step's thread, is not bound by it).
   ``aging`` - the cost of one LFU aging pass (``decay_every``): a full LFU map of
   ``--capacity`` slots, a 1-id call with aging on every call vs the same without aging.
3. ``quality`` - a synthetic click-through task whose true model needs every id: id ``x``
   (Zipf over ``--ctr-distinct``) has a true logit ``theta_x ~ N(0, 1.5**2)``, a click is
   Bernoulli(sigmoid(theta_x)).  One online pass over ``--ctr-train`` examples, then test
   AUC / log loss on the next ``--ctr-test``.  Same embedding memory (``--ctr-rows`` rows of
   D = 8): the dynamic table (LFU, min_count 2), the hashing trick, QR (mult, half the rows
   each).  Each model: row -> Linear(8, 1); fused Adagrad for the tables, Adam for the rest.

Memory placement: every table is a fresh CPU tensor in this process; all contenders see the
same id tensors.  ``--placement 4k`` (default) sets ``EMBTABLE_HUGEPAGES=0`` first, so that
every contender sits on 4 KiB pages (same placement).  ``--placement huge``: embtable's tables
and SlotMap state ask for transparent huge pages (its default); TorchRec's buffers are plain
allocations (they are re-created at every eviction), so the remap comparison is then unequal
(the training step's two tables are both embtable's, so it stays equal).  One thread
(``torch.set_num_threads(1)``) unless ``--threads``.

Usage:
    python benchmarks/dynamic.py [--quick] [--parts remap,train,breakdown,aging,quality]
        [--placement huge|4k]  (parts also: pipeline, aging, floor)
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time

import torch

import embtable
from embtable.nn.dynamic import DynamicEmbeddingBag
from embtable.nn.hashed import HashedEmbeddingBag, QREmbeddingBag, hash_rows, mix64
from embtable.storage.slots import _M, _S, SlotMap

FULL = dict(lookups=50_000_000, distinct=10_000_000, capacity=1_000_000, batch=2048, bag=20,
            paired=20, train_steps=15, ctr_distinct=5_000_000, ctr_rows=1_000_000,
            ctr_train=20_000_000, ctr_test=1_000_000)
QUICK = dict(lookups=2_000_000, distinct=400_000, capacity=40_000, batch=512, bag=20,
             paired=5, train_steps=5, ctr_distinct=200_000, ctr_rows=40_000,
             ctr_train=1_000_000, ctr_test=100_000)


class Stream:
    """Zipf-like ids: rank ~ r**-s over ``distinct`` ranks, as random 64-bit ids."""

    def __init__(self, distinct: int, seed: int, s: float = 1.05) -> None:
        ranks = torch.arange(1, distinct + 1, dtype=torch.float64)
        cdf = torch.cumsum(ranks.pow(-s), 0)
        self.cdf = (cdf / cdf[-1]).contiguous()
        self.gen = torch.Generator().manual_seed(seed)
        self.seed = seed

    def ranks(self, n: int) -> torch.Tensor:
        u = torch.rand(n, generator=self.gen, dtype=torch.float64)
        return torch.searchsorted(self.cdf, u).clamp_(max=self.cdf.numel() - 1)

    def ids(self, n: int) -> torch.Tensor:
        return mix64(self.ranks(n) + 0x1234567)


class DictLRU:
    """The Python baseline: an OrderedDict LRU remapper with SlotMap's rules (min_count 1)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.slot_of: collections.OrderedDict[int, int] = collections.OrderedDict()
        self.evicted = 0

    def lookup(self, ids: torch.Tensor) -> list[int]:
        flat = ids.tolist()
        slot_of = self.slot_of
        seen = dict.fromkeys(flat)
        hits = [k for k in seen if k in slot_of]
        for k in hits:
            slot_of.move_to_end(k)
        for k in seen:
            if k in slot_of:
                continue
            if len(slot_of) < self.capacity:
                slot = len(slot_of)
            else:
                _, slot = slot_of.popitem(last=False)
                self.evicted += 1
            slot_of[k] = slot
        return [slot_of[k] for k in flat]


def make_torchrec(capacity: int, interval: int = 1):
    try:
        from torchrec.modules.mc_modules import LRU_EvictionPolicy, MCHManagedCollisionModule
        from torchrec.sparse.jagged_tensor import JaggedTensor
    except ImportError:
        return None
    module = MCHManagedCollisionModule(
        zch_size=capacity, device=torch.device("cpu"), eviction_policy=LRU_EvictionPolicy(),
        eviction_interval=interval, input_hash_size=(1 << 63) - 1,
    ).train()

    def lookup(ids: torch.Tensor):
        values = ids & ((1 << 63) - 1)  # TorchRec wants non-negative raw ids
        jt = JaggedTensor(values=values, lengths=torch.tensor([values.numel()]))
        return module({"f": jt})["f"].values()

    return lookup


def check_remap(cfg) -> None:
    stream = Stream(cfg["distinct"] // 100 + 1000, seed=1)
    smap, base = SlotMap(cfg["capacity"] // 100 + 100, "lru"), DictLRU(cfg["capacity"] // 100 + 100)
    for _ in range(30):
        ids = stream.ids(cfg["batch"])
        got = smap.lookup(ids).slots.tolist()
        want = base.lookup(ids)
        assert got == want, "SlotMap and the dict LRU disagree"
    ids, slots = smap.items()
    assert dict(zip(ids.tolist(), slots.tolist())) == dict(base.slot_of)
    assert smap.stats()["evicted"] == base.evicted > 0
    print(f"correctness: SlotMap == dict LRU over 30 batches ({base.evicted} evictions)")


def remap(cfg) -> None:
    check_remap(cfg)
    n = cfg["batch"] * cfg["bag"]
    batches = cfg["lookups"] // n
    stream = Stream(cfg["distinct"], seed=0)
    smap = SlotMap(cfg["capacity"], "lru")
    total, full_at, per_batch = 0.0, None, []
    meta = smap._state[_S["meta"]]
    compacted = []  # batches whose call compacted the recency queue (its tail moved back)
    for b in range(batches):
        ids = stream.ids(n)
        tail = int(meta[_M["tail"]])
        t0 = time.thread_time()
        smap.lookup(ids)
        dt = time.thread_time() - t0
        total += dt
        per_batch.append(dt / n * 1e9)
        if int(meta[_M["tail"]]) < tail:
            compacted.append(b)
        if full_at is None and len(smap) == cfg["capacity"]:
            full_at = b + 1
    st = smap.stats()
    print(f"\n1a. embtable SlotMap (LRU) over the whole stream: {batches} batches x {n} ids "
          f"= {batches * n / 1e6:.1f} M lookups over {cfg['distinct'] / 1e6:g} M distinct, "
          f"capacity {cfg['capacity'] / 1e6:g} M")
    print(f"    {total / (batches * n) * 1e9:.1f} ns/id overall ({batches * n / total / 1e6:.1f} M ids/s); "
          f"median batch {statistics.median(per_batch):.1f} ns/id; after the table is full "
          f"(batch {full_at}): median {statistics.median(per_batch[full_at or 0:] or [0]):.1f} ns/id")
    print(f"    admitted {st['admitted']}, evicted {st['evicted']} "
          f"({st['evicted'] / max(batches - (full_at or batches), 1):.0f} per batch once full)")
    if compacted:
        gaps = [b - a for a, b in zip(compacted, compacted[1:], strict=False)]
        skip = set(compacted)
        ms = [per_batch[b] * n / 1e6 for b in compacted]
        rest = [t * n / 1e6 for b, t in enumerate(per_batch) if b >= (full_at or 0) and b not in skip]
        print(f"    recency-queue compactions: {len(compacted)} (first at batch {compacted[0] + 1}, "
              f"then every {statistics.median(gaps or [0]):.0f} batches, median); a batch with "
              f"one: median {statistics.median(ms):.1f} ms, the others once full "
              f"{statistics.median(rest or [0]):.2f} ms")

    # 1b. paired contenders on the same batches, after the same warm-up prefix
    warm = full_at or batches
    stream = Stream(cfg["distinct"], seed=0)
    ours = SlotMap(cfg["capacity"], "lru")
    contenders = {"embtable SlotMap": lambda ids: ours.lookup(ids).slots,
                  "Python dict LRU": DictLRU(cfg["capacity"]).lookup}
    shared_row: dict[str, int | None] = {"embtable SlotMap": -1, "Python dict LRU": None}
    for interval, label in ((1, "evict every batch"), (10, "evict every 10th batch")):
        tr = make_torchrec(cfg["capacity"], interval)
        if tr is not None:
            contenders[f"TorchRec MCH (LRU, {label})"] = tr
            shared_row[f"TorchRec MCH (LRU, {label})"] = cfg["capacity"] - 1
    print(f"\n1b. paired: warm-up {warm} batches (untimed, every contender), then "
          f"{cfg['paired']} batches timed, alternating")
    for _ in range(warm):
        ids = stream.ids(n)
        for lookup in contenders.values():
            lookup(ids)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    shared: dict[str, int] = {name: 0 for name in contenders}
    for _ in range(cfg["paired"]):
        ids = stream.ids(n)
        for name, lookup in contenders.items():
            t0 = time.thread_time()
            out = lookup(ids)
            times[name].append((time.thread_time() - t0) / n * 1e9)
            if shared_row[name] is not None:
                shared[name] += int((out == shared_row[name]).sum())
    base = statistics.median(times["embtable SlotMap"])
    print(f"    {'contender':<44} {'ns/id (median)':>15} {'range':>20} {'x embtable':>11} "
          f"{'slowest batch ms':>17} {'ids on shared row':>18}")
    for name, values in times.items():
        med = statistics.median(values)
        share = f"{shared[name] / (n * cfg['paired']):.1%}"
        print(f"    {name:<44} {med:>15.1f} {min(values):>9.1f}-{max(values):<10.1f} {med / base:>11.1f} "
              f"{max(values) * n / 1e6:>17.1f} {share:>18}")
    print(f"    (embtable: {ours.stats()['default_hits']} default-row lookups in all, min_count=1)")


def _step_pair(cfg):
    """The training-step contenders: a dynamic and a static sum bag table (D = 64, fused
    RowWiseAdagrad), stepped on the same stream until the dynamic one is full (at most
    10,000 steps).  Returns ``(stream, dyn, static, opt_d, opt_s, grad, warm-up steps)``."""
    cap, d, b, length = cfg["capacity"], 64, cfg["batch"], cfg["bag"]
    stream = Stream(cfg["distinct"], seed=2)
    dyn = DynamicEmbeddingBag(cap, d, mode="sum")
    static = embtable.EmbeddingBag(cap + 1, d, mode="sum")
    opt_d = embtable.optim.fuse(dyn, "rowwise_adagrad", lr=0.05)
    opt_s = embtable.optim.fuse(static, "rowwise_adagrad", lr=0.05)
    grad = torch.randn(b, d)
    warm = 0
    while len(dyn.slot_map) < cap and warm < 10_000:
        ids = stream.ids(b * length).reshape(b, length)
        dyn(ids).backward(grad)
        static(hash_rows(ids, cap)).backward(grad)
        warm += 1
    return stream, dyn, static, opt_d, opt_s, grad, warm


def train(cfg) -> None:
    cap, b, length = cfg["capacity"], cfg["batch"], cfg["bag"]
    print("\n2. training step (fused RowWiseAdagrad, sum pooling, D = 64): warm-up until the "
          "dynamic table is full")
    stream, dyn, static, opt_d, opt_s, grad, warm = _step_pair(cfg)

    def step(model, opt, ids):
        model(ids).backward(grad)
        opt.step()

    times = {"dynamic": [], "static": []}
    evicted0 = dyn.stats()["evicted"]
    for _ in range(cfg["train_steps"]):
        ids = stream.ids(b * length).reshape(b, length)
        rows = hash_rows(ids, cap)
        for name, model, opt, x in (("dynamic", dyn, opt_d, ids), ("static", static, opt_s, rows)):
            t0 = time.thread_time()
            step(model, opt, x)
            times[name].append((time.thread_time() - t0) * 1e3)
    ev = (dyn.stats()["evicted"] - evicted0) / cfg["train_steps"]
    md, ms = statistics.median(times["dynamic"]), statistics.median(times["static"])
    print(f"    warm-up {warm} steps; {cfg['train_steps']} timed steps, {ev:.0f} evictions per step")
    print(f"    {'table':<34} {'ms/step (median)':>17} {'range':>16}")
    for name, label in (("dynamic", f"DynamicEmbeddingBag ({cap} rows)"), ("static", f"EmbeddingBag ({cap + 1} rows)")):
        v = times[name]
        print(f"    {label:<34} {statistics.median(v):>17.1f} {min(v):>7.1f}-{max(v):<8.1f}")
    print(f"    ratio dynamic / static: {md / ms:.2f}")


def pipeline(cfg) -> None:
    """The prefetch pipeline: the dynamic table's lookup of batch i+1 runs on the background
    thread during step i (``DynamicEmbeddingBag.prefetch``), against the plain steps and the
    static table at one and at two intra-op threads (the same total thread count)."""
    cap, b, length = cfg["capacity"], cfg["batch"], cfg["bag"]
    print("\n2c. prefetch pipeline (fused RowWiseAdagrad, sum pooling, D = 64): warm-up until the "
          "dynamic table is full")
    stream, dyn, static, opt_d, opt_s, grad, warm = _step_pair(cfg)
    piped = DynamicEmbeddingBag(cap, 64, mode="sum")
    embtable.optim.fuse(piped, "rowwise_adagrad", lr=0.05)
    replay = Stream(cfg["distinct"], seed=2)  # the same warm-up batches
    for _ in range(warm):
        piped(replay.ids(b * length).reshape(b, length)).backward(grad)
    assert torch.equal(piped.weight, dyn.weight), "the pipelined table must start where the plain one is"
    batches = [stream.ids(b * length).reshape(b, length) for _ in range(cfg["train_steps"] + 1)]
    threads = torch.get_num_threads()
    names = ("dynamic, plain", "dynamic, prefetch pipeline", "static", "static, 2 intra-op threads")
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    worker: list[float] = []  # the background thread's CPU time per job (lookup + new rows' values)
    inner = piped.dynamic._lookup_ahead

    def job_timed(*args):
        c0 = time.thread_time()
        out = inner(*args)
        worker.append((time.thread_time() - c0) * 1e3)
        return out

    piped.dynamic._lookup_ahead = job_timed
    piped.prefetch(batches[0])
    piped.dynamic._pending[-1].future.result()
    for i in range(cfg["train_steps"]):
        ids = batches[i]
        rows = hash_rows(ids, cap)
        for name in names:
            torch.set_num_threads(2 if name.endswith("2 intra-op threads") else threads)
            t0, c0 = time.perf_counter(), time.thread_time()
            if name == "dynamic, plain":
                dyn(ids).backward(grad)
            elif name == "dynamic, prefetch pipeline":
                piped.prefetch(batches[i + 1])  # runs during this step
                piped(ids).backward(grad)  # its own lookup ran during the previous step
                piped.dynamic._pending[-1].future.result()  # no background work leaks out
            else:
                static(rows).backward(grad)
            wall[name].append((time.perf_counter() - t0) * 1e3)
            cpu[name].append((time.thread_time() - c0) * 1e3)
    torch.set_num_threads(threads)
    dyn(batches[-1]).backward(grad)  # the pipeline's last prefetched batch
    piped(batches[-1]).backward(grad)
    same = torch.equal(piped.weight, dyn.weight) and piped.stats() == dyn.stats()
    print(f"    warm-up {warm} steps; {cfg['train_steps']} timed steps, alternating; pipelined == plain "
          f"(rows, map): {same}")
    print(f"    {'contender':<30} {'wall ms/step':>13} {'range':>14} {'main-thread CPU ms':>19}")
    for name in names:
        w, c = wall[name], cpu[name]
        cpu_text = "-" if name.endswith("threads") else f"{statistics.median(c):.1f}"
        print(f"    {name:<30} {statistics.median(w):>13.1f} {min(w):>6.1f}-{max(w):<7.1f} {cpu_text:>19}")
    print(f"    (the pipeline's background thread: {statistics.median(worker):.1f} ms CPU per batch for the "
          "lookup and the new rows' values, median, on top of its main thread)")
    crit = statistics.median(cpu["dynamic, prefetch pipeline"]) / statistics.median(cpu["static"])
    print(f"    main-thread CPU ratio, prefetch pipeline / static (1 thread): {crit:.2f}; plain / static: "
          f"{statistics.median(cpu['dynamic, plain']) / statistics.median(cpu['static']):.2f}")
    base = statistics.median(wall["static, 2 intra-op threads"])
    for name in ("dynamic, plain", "dynamic, prefetch pipeline"):
        print(f"    wall ratio {name} / static with 2 threads: {statistics.median(wall[name]) / base:.2f}; "
              f"/ static with 1: {statistics.median(wall[name]) / statistics.median(wall['static']):.2f}")


def breakdown(cfg) -> None:
    import embtable.nn.dynamic as dynamic_mod

    cap, b, length = cfg["capacity"], cfg["batch"], cfg["bag"]
    stream, dyn, static, _, _, grad, _ = _step_pair(cfg)
    parts: dict[str, list[float]] = {}

    def timed(owner, attr, key):
        inner = getattr(owner, attr)

        def wrapper(*args, **kwargs):
            t0 = time.thread_time()
            out = inner(*args, **kwargs)
            parts.setdefault(key, []).append(time.thread_time() - t0)
            return out

        setattr(owner, attr, wrapper)

    timed(dyn.slot_map, "lookup", "dynamic: SlotMap.lookup")
    timed(dynamic_mod, "_fresh_rows", "dynamic: new rows' init + state reset")
    timed(dyn.dynamic, "remap", "dynamic: whole remap")
    for _ in range(cfg["train_steps"]):
        ids = stream.ids(b * length).reshape(b, length)
        rows = hash_rows(ids, cap)
        for name, model, x in (("dynamic", dyn, ids), ("static", static, rows)):
            t0 = time.thread_time()
            out = model(x)
            t1 = time.thread_time()
            out.backward(grad)
            parts.setdefault(f"{name}: forward (incl. remap)", []).append(t1 - t0)
            parts.setdefault(f"{name}: backward + fused update", []).append(time.thread_time() - t1)
    print(f"\n2b. training step broken down ({cfg['train_steps']} steps, median ms per step)")
    for key, values in parts.items():
        print(f"    {key:<40} {statistics.median(values) * 1e3:>8.3f}")


def floor(cfg) -> None:
    """The floor of the dynamic step's extra work: the memory work no remap through this map's
    index (32 MB at 1 M slots) can avoid on the step's thread, timed in the training step's
    cache state.  Each timed step runs, on the same batch: ``SlotMap.find``
    of every position on the dynamic table's map (a read-only probe of each id: no dedup, no
    recency, no admission; it sees the caches the previous steps left, as the dynamic step's
    lookup does), the dynamic step, the static step (as ``train``), then the dynamic step's
    new rows written at their slots into a separate table of the same shape
    (``slot_fresh_rows`` with the values computed ahead: the row copies and the optimizer-state
    reset, no RNG).  Floor ratio = (static + probe + write) / static.  (The probe warms the
    index for the dynamic step that follows, so this part's dynamic step is a little fast:
    ``train`` gives the step ratio.)"""
    from embtable.nn.dynamic import init_rows
    from embtable.ops._memory import empty_table

    cap, b, length = cfg["capacity"], cfg["batch"], cfg["bag"]
    print("\n2d. floor of the dynamic step's extra work (read-only probe of every position + the "
          "new rows' writes), in the training step's cache state")
    stream, dyn, static, opt_d, opt_s, grad, warm = _step_pair(cfg)
    smap = dyn.slot_map
    inner = smap.lookup
    last = []

    def keep(*args, **kwargs):
        last.append(inner(*args, **kwargs))
        return last[-1]

    smap.lookup = keep
    weight = empty_table((cap + 1, 64), torch.float32, "cpu").zero_()  # placed as the tables
    state = empty_table((cap + 1,), torch.float32, "cpu").zero_()
    fresh = [torch.zeros(())]
    seed, std = dyn.dynamic.config.seed, dyn.dynamic.init_std
    times: dict[str, list[float]] = {k: [] for k in ("probe", "dynamic", "static", "write")}
    for _ in range(cfg["train_steps"]):
        ids = stream.ids(b * length).reshape(b, length)
        rows = hash_rows(ids, cap)
        t0 = time.thread_time()
        smap.find(ids)
        times["probe"].append((time.thread_time() - t0) * 1e3)
        for name, model, opt, x in (("dynamic", dyn, opt_d, ids), ("static", static, opt_s, rows)):
            t0 = time.thread_time()
            model(x).backward(grad)
            opt.step()
            times[name].append((time.thread_time() - t0) * 1e3)
        result = last.pop()
        values = init_rows(result.new_ids, 64, seed=seed, std=std)
        t0 = time.thread_time()
        torch.ops.embtable.slot_fresh_rows(weight, 0, result.new_slots, result.new_ids, seed, std,
                                           [state], fresh, values)
        times["write"].append((time.thread_time() - t0) * 1e3)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"    warm-up {warm} steps; {cfg['train_steps']} timed steps; "
          f"{result.new_ids.numel()} new rows in the last one")
    for key, label in (("static", "static step"), ("dynamic", "dynamic step (index warmed)"),
                       ("probe", "floor: SlotMap.find, every position"),
                       ("write", "floor: new rows written (values ahead)")):
        print(f"    {label:<40} {med[key]:>8.3f} ms")
    print(f"    floor (static + probe + write) / static: "
          f"{(med['static'] + med['probe'] + med['write']) / med['static']:.2f}; the 1.3x target "
          f"leaves {0.3 * med['static']:.3f} ms for the remap")


def aging(cfg) -> None:
    cap = cfg["capacity"]
    ids = torch.randint(-(2**62), 2**62, (cap,), generator=torch.Generator().manual_seed(3))
    result = {}
    for label, options in (("no aging", {}), ("decay_every=1", {"decay_every": 1})):
        smap = SlotMap(cap, "lfu", **options)
        for chunk in ids.split(cfg["batch"] * cfg["bag"]):
            smap.lookup(chunk)
        one = ids[:1].clone()
        times = []
        for _ in range(15):
            t0 = time.thread_time()
            smap.lookup(one)
            times.append(time.thread_time() - t0)
        result[label] = statistics.median(times) * 1e3
    print(f"\n4. LFU aging: a full LFU map of {cap} slots, one 1-id call (median of 15, ms): "
          f"{result['no aging']:.3f} without aging, {result['decay_every=1']:.3f} with an aging "
          f"pass; one pass = {result['decay_every=1'] - result['no aging']:.2f} ms")


def _auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    order = torch.argsort(scores)
    ranks = torch.empty_like(order, dtype=torch.float64)
    ranks[order] = torch.arange(1, scores.numel() + 1, dtype=torch.float64)
    pos = labels.bool()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def quality(cfg) -> None:
    d, rows, batch = 8, cfg["ctr_rows"], 4096
    gen = torch.Generator().manual_seed(5)
    theta = torch.randn(cfg["ctr_distinct"], generator=gen) * 1.5
    stream = Stream(cfg["ctr_distinct"], seed=6)

    def sample(n):
        r = stream.ranks(n)
        y = torch.bernoulli(torch.sigmoid(theta[r]), generator=gen)
        return mix64(r + 99).unsqueeze(1), y, r

    torch.manual_seed(0)
    models = {
        "dynamic (LFU, min_count 2)": DynamicEmbeddingBag(rows - 1, d, mode="sum", policy="lfu", min_count=2, init_std=0.01),
        "hashing trick": HashedEmbeddingBag(rows, d, mode="sum"),
        "QR (mult, R = Q = rows / 2)": QREmbeddingBag(rows // 2, rows // 2, d, mode="sum"),
    }
    heads, opts = {}, {}
    for name, table in models.items():
        if isinstance(table, HashedEmbeddingBag):
            with torch.no_grad():
                table.weight.normal_(0, 0.01)
        heads[name] = torch.nn.Linear(d, 1)
        opts[name] = (embtable.optim.fuse(table, "adagrad", lr=0.1), torch.optim.Adam(heads[name].parameters(), lr=1e-2))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    steps = cfg["ctr_train"] // batch
    t0 = time.time()
    for _ in range(steps):
        x, y, _ = sample(batch)
        for name, table in models.items():
            sparse_opt, dense_opt = opts[name]
            loss = loss_fn(heads[name](table(x)).squeeze(1), y)
            loss.backward()
            dense_opt.step()
            dense_opt.zero_grad()
            sparse_opt.step()
    x, y, r = sample(cfg["ctr_test"])
    print(f"\n3. synthetic CTR: {cfg['ctr_distinct']} ids (Zipf), {rows} rows x D = {d} per model, "
          f"{steps} online steps of {batch} ({time.time() - t0:.0f} s), test {cfg['ctr_test']} examples")
    print(f"    {'model':<30} {'test AUC':>9} {'log loss':>9}")
    truth = theta[r]
    ll = float(torch.nn.functional.binary_cross_entropy_with_logits(truth, y))
    print(f"    {'true model (theta known)':<30} {_auc(truth, y):>9.4f} {ll:>9.4f}")
    for name, table in models.items():
        table.eval()
        with torch.no_grad():
            logits = torch.cat([heads[name](table(x[i:i + 65536])).squeeze(1) for i in range(0, x.shape[0], 65536)])
        ll = float(torch.nn.functional.binary_cross_entropy_with_logits(logits, y))
        print(f"    {name:<30} {_auc(logits, y):>9.4f} {ll:>9.4f}")
        if isinstance(table, DynamicEmbeddingBag):
            st = table.stats()
            print(f"      (dynamic: size {st['size']}, admitted {st['admitted']}, evicted {st['evicted']})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small stream (a smoke run)")
    parser.add_argument("--parts", default="remap,train,quality")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--placement", choices=("huge", "4k"), default="4k",
                        help="4k (default): EMBTABLE_HUGEPAGES=0, every contender on 4 KiB pages; "
                        "huge: embtable's default allocation (huge pages for its tables and maps, "
                        "TorchRec's and the dict's memory on 4 KiB pages: unequal for the remap "
                        "comparison, equal for the training step)")
    for key, value in FULL.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, help=f"default {value}")
    args = parser.parse_args(argv)
    if args.placement == "4k":
        os.environ["EMBTABLE_HUGEPAGES"] = "0"
    cfg = dict(QUICK if args.quick else FULL)
    for key in cfg:
        value = getattr(args, key)
        if value is not None:
            cfg[key] = value
    torch.set_num_threads(args.threads)
    if args.placement == "huge":
        print("placement huge: embtable on huge pages, TorchRec and the dict on 4 KiB pages "
              "(the remap comparison is unequal; use --placement 4k for it)")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, placement {args.placement}, "
          f"config {cfg}")
    print("(the machine is shared with other jobs: CPU times per call, medians)")
    parts = args.parts.split(",")
    if "remap" in parts:
        remap(cfg)
    if "train" in parts:
        train(cfg)
    if "pipeline" in parts:
        pipeline(cfg)
    if "breakdown" in parts:
        breakdown(cfg)
    if "floor" in parts:
        floor(cfg)
    if "aging" in parts:
        aging(cfg)
    if "quality" in parts:
        quality(cfg)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
