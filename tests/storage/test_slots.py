"""SlotMap (compiled) against its pure-Python oracle, decision by decision; checkpoints; errors."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embtable.ops import _compiled
from embtable.storage import slots as slots_mod
from embtable.storage._slots_reference import ReferenceSlotMap, splitmix64
from embtable.storage.slots import SlotMap

needs_ext = pytest.mark.skipif(
    not slots_mod._compiled_available(), reason="embtable._C (slot ops) is not built"
)
FIELDS = ("slots", "new_ids", "new_slots", "evicted_ids", "evicted_slots")


def _pair(capacity, policy, **kw):
    compiled = SlotMap(capacity, policy, **kw)
    ref = ReferenceSlotMap(
        capacity, policy, ttl=kw.get("ttl"), min_count=kw.get("min_count", 1),
        exact_counts=kw.get("exact_counts", False), seed=kw.get("seed", 0),
        sketch_width=compiled.sketch_width, sketch_depth=compiled.sketch_depth,
        decay_every=kw.get("decay_every"),
    )
    return compiled, ref


def _stream(rng: random.Random, capacity: int, calls: int, universe: int):
    """Batches mixing a small hot universe (hits, evictions) with arbitrary int64 values."""
    for _ in range(calls):
        n = rng.randint(0, 2 * capacity)
        ids = [
            rng.randint(-universe, universe) if rng.random() < 0.9 else rng.randint(-(2**63), 2**63 - 1)
            for _ in range(n)
        ]
        yield torch.tensor(ids, dtype=torch.int64).reshape(-1, 1) if n % 2 else torch.tensor(ids, dtype=torch.int64)


def _canonical(sd):
    return {k: v for k, v in sd.items() if k != "config"}


def _same_state(smap, ref):
    """The compiled map's canonical state equals the oracle's (counts, clocks, recency, counters)."""
    sd, want = smap.state_dict(), ref.state_dict()
    if not ref.listed:
        want["recency"] = torch.zeros(0, dtype=torch.int64)
    for key, value in want.items():
        assert torch.equal(sd[key], value.reshape(sd[key].shape).to(sd[key].dtype)), key


def _run_against_oracle(smap, ref, rng, calls, universe, reload_every=0):
    for t, ids in enumerate(_stream(rng, smap.capacity, calls, universe)):
        try:
            got = smap.lookup(ids)
        except ValueError as error:
            before = ref.state_dict()
            with pytest.raises(ValueError):
                ref.lookup(ids)
            assert "capacity" in str(error)
            for key, value in ref.state_dict().items():  # the failed call changed nothing
                assert torch.equal(value, before[key]), key
            continue
        want = ref.lookup(ids)
        for name, a, b in zip(FIELDS, got, want, strict=True):
            assert torch.equal(a, b), (t, name, a, b)
        assert smap.stats() == ref.stats()
        if rng.random() < 0.3:
            smap.step()
            ref.step()
        if reload_every and t % reload_every == reload_every - 1:
            _same_state(smap, ref)
            sd = smap.state_dict()
            fresh = SlotMap(
                smap.capacity, smap.policy, ttl=smap.ttl, min_count=smap.min_count,
                exact_counts=smap.exact_counts, seed=smap.seed, sketch_width=smap.sketch_width,
                decay_every=smap.decay_every,
            )
            fresh.load_state_dict(sd)
            smap = fresh
    ids_a, slots_a = smap.items()
    ids_b, slots_b = ref.items()
    assert torch.equal(ids_a, ids_b) and torch.equal(slots_a, slots_b)
    return smap


POLICY_KW = st.sampled_from(
    [("lru", {}), ("lfu", {}), ("clock", {}), ("ttl", {"ttl": 0}), ("ttl", {"ttl": 2}),
     ("lfu", {"decay_every": 1}), ("lfu", {"decay_every": 3})]
)


@needs_ext
@settings(max_examples=40, deadline=None)
@given(
    policy_kw=POLICY_KW,
    capacity=st.integers(1, 12),
    min_count=st.integers(1, 3),
    exact=st.booleans(),
    universe=st.integers(2, 40),
    seed=st.integers(0, 2**16),
)
def test_decisions_match_the_oracle(policy_kw, capacity, min_count, exact, universe, seed):
    policy, kw = policy_kw
    smap, ref = _pair(capacity, policy, min_count=min_count, exact_counts=exact, sketch_width=16, seed=seed, **kw)
    _run_against_oracle(smap, ref, random.Random(seed), calls=25, universe=universe, reload_every=7)


@needs_ext
@pytest.mark.parametrize(
    "policy,kw",
    [("lru", {}), ("lfu", {}), ("ttl", {"ttl": 3}), ("clock", {}), ("lfu", {"decay_every": 4})],
)
def test_larger_stream_matches_the_oracle(policy, kw):
    smap, ref = _pair(120, policy, min_count=2, **kw)
    rng = random.Random(5)
    for _ in range(30):
        ids = torch.tensor([int(600 * rng.random() ** 2) for _ in range(100)], dtype=torch.int64)
        got, want = smap.lookup(ids), ref.lookup(ids)
        for name, a, b in zip(FIELDS, got, want, strict=True):
            assert torch.equal(a, b), name
        smap.step()
        ref.step()
    assert smap.stats()["evicted"] > 0 and smap.stats() == ref.stats()


def test_reference_rules_by_hand():
    """Hand-computed decisions of each policy (the oracle is the specification)."""
    lru = ReferenceSlotMap(2, "lru")
    lru.lookup(torch.tensor([1, 2]))
    lru.lookup(torch.tensor([1]))
    out = lru.lookup(torch.tensor([3]))
    assert out[0].tolist() == [1] and out[3].tolist() == [2]  # 2 was least recently used
    lfu = ReferenceSlotMap(2, "lfu")
    lfu.lookup(torch.tensor([1, 1, 2]))
    lfu.lookup(torch.tensor([2]))
    lfu.lookup(torch.tensor([2]))
    assert lfu.lookup(torch.tensor([3]))[3].tolist() == [1]  # freq(1) = 2 < freq(2) = 3
    ttl = ReferenceSlotMap(1, "ttl", ttl=1)
    ttl.lookup(torch.tensor([1]))
    ttl.step()
    assert ttl.lookup(torch.tensor([2]))[0].tolist() == [-1]  # age 1 is not > ttl
    ttl.step()
    assert ttl.lookup(torch.tensor([2]))[3].tolist() == [1]  # age 2: expired
    clock = ReferenceSlotMap(2, "clock")
    clock.lookup(torch.tensor([1, 2]))  # both ref bits set; the hand clears both, takes slot 0
    assert clock.lookup(torch.tensor([3]))[3].tolist() == [1]
    assert clock.lookup(torch.tensor([4]))[3].tolist() == [2]  # slot 1's bit was cleared


def test_sketch_hash_is_splitmix64():
    assert splitmix64(0) == 0xE220A8397B1DCDAF
    assert splitmix64(1) == 0x910A2DEC89025CC1


@needs_ext
def test_admission_counts_and_default_hits():
    smap = SlotMap(4, "lru", min_count=3, exact_counts=True)
    assert smap.lookup(torch.tensor([7, 7])).slots.tolist() == [-1, -1]
    out = smap.lookup(torch.tensor([7, 8]))
    assert out.slots.tolist() == [0, -1] and out.new_ids.tolist() == [7]
    assert smap.stats() == dict(size=1, admitted=1, evicted=0, default_hits=3, lookups=4)


@needs_ext
def test_one_call_never_evicts_its_own_ids():
    smap = SlotMap(3, "lru")
    smap.lookup(torch.tensor([1, 2, 3]))
    out = smap.lookup(torch.tensor([3, 4, 5]))
    assert set(out.evicted_ids.tolist()) == {1, 2}
    assert smap.find(torch.tensor([3, 4, 5])).ge(0).all()
    assert set(out.evicted_slots.tolist()) <= set(out.new_slots.tolist())


@needs_ext
def test_find_has_no_side_effects():
    smap = SlotMap(2, "lru")
    smap.lookup(torch.tensor([1, 2]))
    before = smap.state_dict()
    assert smap.find(torch.tensor([[2, 9], [1, 1]])).tolist() == [[1, -1], [0, 0]]
    after = smap.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@needs_ext
def test_thread_count_independence():
    ids = torch.randint(-(10**6), 10**6, (4000,))
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            smap = SlotMap(1000, "lfu", min_count=2)
            results.append([smap.lookup(ids[i : i + 500]) for i in range(0, 4000, 500)])
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*results, strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@needs_ext
def test_exact_counter_table_grows():
    smap, ref = _pair(50, "lru", min_count=2, exact_counts=True)
    for start in range(0, 600, 40):  # 600 distinct ids, each seen once: the table must grow
        ids = torch.arange(start, start + 40)
        assert torch.equal(smap.lookup(ids).slots, ref.lookup(ids)[0])
    assert smap.state_dict()["exact_ids"].numel() == 600


def test_reference_fallback_without_extension(monkeypatch):
    monkeypatch.setitem(_compiled._STATE, "loaded", False)
    smap = SlotMap(2, "lru")
    assert not smap._compiled
    out = smap.lookup(torch.tensor([5, 6, 5]))
    assert out.slots.tolist() == [0, 1, 0] and len(smap) == 2
    sd = smap.state_dict()
    other = SlotMap(2, "lru")
    other.load_state_dict(sd)
    assert other.lookup(torch.tensor([7])).evicted_ids.tolist() == [5]  # first occurrence order


@pytest.mark.parametrize(
    "kw,exc,match",
    [
        (dict(capacity=0), ValueError, "capacity must be >= 1, got 0"),
        (dict(capacity=2.0), TypeError, "capacity must be an int"),
        (dict(capacity=2, min_count=0), ValueError, "min_count must be >= 1, got 0"),
        (dict(capacity=2, policy="fifo"), ValueError, "policy must be one of"),
        (dict(capacity=2, policy="ttl"), ValueError, "needs ttl"),
        (dict(capacity=2, ttl=3), ValueError, "only used with policy='ttl'"),
        (dict(capacity=2, min_count=2, sketch_width=100), ValueError, "power of two"),
    ],
)
def test_bad_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        SlotMap(**kw)


@pytest.mark.parametrize("ids", [torch.tensor([1.0, 2.0]), torch.tensor([True]), [1, 2]])
def test_bad_ids_change_nothing(ids):
    smap = SlotMap(4)
    smap.lookup(torch.tensor([3]))
    before = smap.state_dict()
    with pytest.raises(TypeError, match="SlotMap.lookup: ids must be"):
        smap.lookup(ids)
    after = smap.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_overflow_raises_and_changes_nothing():
    smap = SlotMap(3, "lfu", min_count=2)
    smap.lookup(torch.tensor([1, 2, 3, 4]))  # counted, none admitted
    before = smap.state_dict()
    with pytest.raises(ValueError, match="capacity=3 distinct admitted ids, got 4"):
        smap.lookup(torch.tensor([1, 2, 3, 4]))
    after = smap.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_load_state_dict_of_another_config_raises():
    smap = SlotMap(4, "lru")
    with pytest.raises(ValueError, match="config"):
        SlotMap(4, "lfu").load_state_dict(smap.state_dict())
    with pytest.raises(KeyError, match="missing keys"):
        smap.load_state_dict({})
    smap.lookup(torch.tensor([1, 2]))
    bad = smap.state_dict()
    bad["recency"] = torch.tensor([0, 0])
    with pytest.raises(ValueError, match="recency must list each"):
        SlotMap(4, "lru").load_state_dict(bad)
    bad = smap.state_dict()
    bad["slot_ids"][1] = bad["slot_ids"][0]
    with pytest.raises(ValueError, match="live in two slots"):
        SlotMap(4, "lru").load_state_dict(bad)


def test_int32_ids_and_shape():
    smap = SlotMap(8)
    out = smap.lookup(torch.tensor([[4, 5], [5, 4]], dtype=torch.int32))
    assert out.slots.tolist() == [[0, 1], [1, 0]] and out.slots.dtype == torch.int64


@needs_ext
def test_opcheck():
    smap = SlotMap(16, "lfu", min_count=2)
    ids = torch.randint(0, 40, (30,))
    state = [t.clone() for t in smap._state]
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(
        torch.ops.embtable.slot_lookup.default, (ids, state, smap._config_ints()), test_utils=utils
    )
    torch.library.opcheck(
        torch.ops.embtable.slot_find.default, (ids, smap._state[slots_mod._S["index"]]), test_utils=utils
    )
    torch.library.opcheck(
        torch.ops.embtable.slot_table_build.default, (torch.tensor([5, 9]), torch.tensor([0, 1]), 8),
        test_utils=utils,
    )
    torch.library.opcheck(torch.ops.embtable.slot_init_rows.default, (ids, 4, 3, 0.5), test_utils=utils)
    torch.library.opcheck(
        torch.ops.embtable.slot_init_rows_into.default,
        (torch.zeros(50, 4), torch.tensor([3, 7]), torch.tensor([10, -2]), 3, 0.5), test_utils=utils,
    )


@needs_ext
@pytest.mark.parametrize("dim", [1, 8, 15, 64, 67])
def test_new_rows_bit_for_bit_at_every_width(dim):
    """The compiled new rows (eight columns per vector step, then a scalar tail) have the bits
    of the PyTorch twin below, at and across the vector width, in slot_init_rows and in
    slot_fresh_rows (which also resets the state rows and leaves the other rows alone)."""
    from embtable.nn.dynamic import init_rows_reference

    g = torch.Generator().manual_seed(dim)
    ids = torch.cat([torch.randint(-(2**63), 2**63 - 1, (50,), generator=g), torch.arange(-2, 2)])
    want = init_rows_reference(ids, dim, seed=11, std=0.02)
    assert torch.equal(torch.ops.embtable.slot_init_rows(ids, dim, 11, 0.02), want)
    table, state = torch.zeros(60, dim), torch.ones(60)
    slots = torch.randperm(58, generator=g)[:54]
    torch.ops.embtable.slot_fresh_rows(table, 2, slots, ids, 11, 0.02, [state], [torch.tensor(0.0)])
    assert torch.equal(table[slots + 2], want)
    untouched = torch.ones(60, dtype=torch.bool)
    untouched[slots + 2] = False
    assert table[untouched].abs().sum() == 0 and state[untouched].eq(1).all()
    assert state[slots + 2].eq(0).all()


def test_lfu_aging_by_hand():
    """Hand-computed: without aging an old heavy hitter keeps its row for good; with
    ``decay_every=2`` its count halves every second call and it is evicted."""

    def run(**kw):
        smap = SlotMap(2, "lfu", **kw)
        smap.lookup(torch.tensor([7] * 8))  # call 1: id 7 seen 8 times (freq 8)
        evicted = []
        for call in range(2, 8):  # ids 1, 2, 3, ... once each: they only compete with 7
            out = smap.lookup(torch.tensor([call - 1]))
            evicted += out.evicted_ids.tolist()
        return evicted, smap.find(torch.tensor([7])).item()

    # No aging: 7 (freq 8) stays; the newcomers (freq 1) evict each other.
    assert run() == ([1, 2, 3, 4, 5], 0)
    # decay_every=2: freq of 7 is 8 -> 4 (call 2) -> 2 (call 4) -> 1 (call 6), then ties
    # go to the least recent (last_call 1): 7 is evicted at call 6 by id 5.
    evicted, slot = run(decay_every=2)
    assert 7 in evicted and slot == -1
    assert evicted == [1, 2, 3, 4, 7]  # by hand, as docs/dynamic.md shows
    ref = ReferenceSlotMap(2, "lfu", decay_every=2)
    ref.lookup(torch.tensor([7] * 8))
    want = []
    for call in range(2, 8):
        want += ref.lookup(torch.tensor([call - 1]))[3].tolist()
    assert evicted == want


def test_missing_value():
    smap = SlotMap(2, "lru", min_count=2, exact_counts=True)
    out = smap.lookup(torch.tensor([4, 5, 5]), missing=2)
    assert out.slots.tolist() == [2, 0, 0]
    assert smap.stats()["default_hits"] == 1
    with pytest.raises(TypeError, match="missing must be an int"):
        smap.lookup(torch.tensor([4]), missing=1.5)


@pytest.mark.parametrize(
    "kw,match",
    [(dict(policy="lru", decay_every=3), "needs policy='lfu'"), (dict(policy="lfu", decay_every=0), ">= 1")],
)
def test_bad_decay(kw, match):
    with pytest.raises(ValueError, match=match):
        SlotMap(4, **kw)


def test_decay_is_part_of_the_config():
    """A state saved with aging does not load into a map without it (and vice versa);
    a map without aging keeps the earlier 8-entry config."""
    assert SlotMap(4, "lfu").state_dict()["config"].numel() == 8
    aged = SlotMap(4, "lfu", decay_every=5)
    aged.lookup(torch.tensor([1, 2]))
    assert repr(aged) == "SlotMap(capacity=4, policy='lfu', decay_every=5, size=2)"
    with pytest.raises(ValueError, match="config"):
        SlotMap(4, "lfu").load_state_dict(aged.state_dict())
    again = SlotMap(4, "lfu", decay_every=5)
    again.load_state_dict(aged.state_dict())
    assert again.find(torch.tensor([1, 2])).tolist() == [0, 1]


def _lookup_both(smap, ref, ids, missing=-1):
    """One call on both maps: the five outputs (``missing`` where the oracle says -1), the
    stats and the whole state agree; an overflow raises in both and changes nothing."""
    before = smap.state_dict()
    try:
        got = smap.lookup(ids, missing=missing)
    except ValueError:
        with pytest.raises(ValueError, match="capacity"):
            ref.lookup(ids)
        after = smap.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        _same_state(smap, ref)
        return None
    want = ref.lookup(ids)
    want = (torch.where(want[0] < 0, missing, want[0]), *want[1:])
    for name, a, b in zip(FIELDS, got, want, strict=True):
        assert torch.equal(a, b), (name, a, b)
    assert smap.stats() == ref.stats()
    _same_state(smap, ref)
    return got


@needs_ext
@settings(max_examples=25, deadline=None)
@given(
    policy_kw=POLICY_KW,
    capacity=st.integers(17, 60),
    min_count=st.integers(1, 3),
    exact=st.booleans(),
    missing_kind=st.sampled_from(["default", "row", "zero"]),
    seed=st.integers(0, 2**16),
)
def test_one_pass_and_dedup_paths_match_the_oracle(policy_kw, capacity, min_count, exact, missing_kind, seed):
    """Calls longer than the kernel's prefetch lag (16) and distance (32): n = capacity,
    capacity +- 1 (the one-pass / dedup boundary), shorter and longer calls; one hot id makes
    up ~30 % of each call (a hit repeated many times, or a miss admitted and met again later
    in the call); ``missing`` -1, the default row's index, or 0 (a real slot). The whole state
    is compared after every call, not only the outputs."""
    policy, kw = policy_kw
    smap, ref = _pair(capacity, policy, min_count=min_count, exact_counts=exact, sketch_width=16, seed=seed, **kw)
    missing = {"default": -1, "row": capacity, "zero": 0}[missing_kind]
    rng = random.Random(seed)
    universe = rng.randint(capacity // 2, 3 * capacity)
    for _ in range(12):
        n = rng.choice([capacity, capacity - 1, capacity + 1, rng.randint(0, capacity), rng.randint(capacity, 2 * capacity)])
        hot = rng.randint(-universe, universe)
        ids = [hot if rng.random() < 0.3 else rng.randint(-universe, universe) for _ in range(n)]
        _lookup_both(smap, ref, torch.tensor(ids, dtype=torch.int64), missing)
        if rng.random() < 0.3:
            smap.step()
            ref.step()


@needs_ext
def test_one_pass_edge_cases_by_hand():
    """Hand-computed, and each call against the oracle: hits reach the recency order in
    first-occurrence order across the prefetch lag; a hit's count grows per occurrence; a miss
    admitted in a call and met again later in it reads its new slot everywhere; capacity 1."""
    # n == capacity == 40: all hits, first occurrences reversed; then 40 new ids evict in that order.
    smap, ref = _pair(40, "lru")
    _lookup_both(smap, ref, torch.arange(40))
    _lookup_both(smap, ref, torch.arange(39, -1, -1))
    out = _lookup_both(smap, ref, torch.arange(100, 140))
    assert out.evicted_ids.tolist() == list(range(39, -1, -1)) == out.new_slots.tolist()
    # LFU: a miss repeated 35 times is admitted with count 35 (all its positions read its slot);
    # then a hit repeated 39 times across the lag: 35 + 39.
    smap, ref = _pair(40, "lfu")
    out = _lookup_both(smap, ref, torch.tensor([1, 2, 3, 4, 5] + [7] * 35))
    assert out.slots.tolist() == [0, 1, 2, 3, 4] + [5] * 35
    out = _lookup_both(smap, ref, torch.tensor([7] * 20 + [8] + [7] * 19), missing=40)
    assert out.slots.tolist() == [5] * 20 + [6] + [5] * 19
    assert smap.state_dict()["freq"][5] == 35 + 39
    # Capacity 1: a hit repeated past the lag; two distinct admitted ids overflow (nothing
    # changes); a longer call of one new id (the dedup path, no overflow) evicts the old one.
    smap, ref = _pair(1, "clock")
    assert _lookup_both(smap, ref, torch.tensor([5] * 40)).slots.eq(0).all()
    assert _lookup_both(smap, ref, torch.tensor([6, 6, 5])) is None
    out = _lookup_both(smap, ref, torch.tensor([6] * 20))
    assert out.evicted_ids.tolist() == [5] and out.slots.eq(0).all()
    assert smap.stats() == dict(size=1, admitted=2, evicted=1, default_hits=0, lookups=60)
