"""Dynamic tables vs static tables (no eviction: identical rows), eviction resets, admission,
checkpoints mid-stream, export, errors."""

from __future__ import annotations

import copy
import os

import pytest
import torch

import embtable
from embtable.config import DynamicConfig
from embtable.nn.dynamic import DynamicEmbedding, DynamicEmbeddingBag, init_rows
from embtable.storage.slots import _compiled_available


def _batches(seed, steps, vocab, batch=6, width=4, offset=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, width), generator=g) + offset for _ in range(steps)]


@pytest.mark.parametrize(
    "optimizer,options",
    [
        ("sgd", {"lr": 0.1}),
        ("adagrad", {"lr": 0.1}),
        ("rowwise_adagrad", {"lr": 0.1}),
        ("adam", {"lr": 0.01}),
        ("adam", {"lr": 0.01, "state_dtype": "bfloat16"}),
        ("adamw", {"lr": 0.01, "weight_decay": 0.1, "state_dtype": "int8_rowwise"}),
    ],
)
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_matches_a_static_table_without_eviction(optimizer, options, mode):
    vocab, dim, offset = 40, 8, 10**12  # raw ids far outside any static range
    dynamic = DynamicEmbeddingBag(vocab, dim, mode=mode, seed=3)
    static = embtable.EmbeddingBag(vocab, dim, mode=mode)
    with torch.no_grad():
        static.weight.copy_(init_rows(torch.arange(vocab) + offset, dim, seed=3))
    opt_d = embtable.optim.fuse(dynamic, optimizer, **options)
    opt_s = embtable.optim.fuse(static, optimizer, **options)
    target = torch.randn(6, dim, generator=torch.Generator().manual_seed(0))
    for ids in _batches(1, 12, vocab):
        for model, opt, x in ((dynamic, opt_d, ids + offset), (static, opt_s, ids)):
            (model(x) * target).sum().backward()
            opt.step()
    ids, rows = dynamic.live()
    torch.testing.assert_close(rows, static.weight.detach()[ids - offset], rtol=0, atol=1e-6)
    assert dynamic.stats()["evicted"] == 0


def test_evicted_row_never_reaches_the_new_id():
    dim = 4
    seen = []
    table = DynamicEmbedding(3, dim, policy="lru", on_evict=lambda i, r: seen.append((i, r)))
    opt = embtable.optim.fuse(table, "adam", lr=0.1)
    for ids in ([1, 2, 3], [1, 2, 3]):  # trained rows with Adam state
        table(torch.tensor(ids)).sum().backward()
        opt.step()
    trained = table.weight.detach()[:3].clone()
    state = opt.state[table.weight]
    out = table(torch.tensor([1, 2, 99]))  # 3 is evicted, 99 takes its row
    slot = int(table.slot_map.find(torch.tensor([99])))
    assert torch.equal(table.weight.detach()[slot], init_rows(torch.tensor([99]), dim)[0])
    assert torch.equal(out[2].detach(), init_rows(torch.tensor([99]), dim)[0])
    assert state["exp_avg"][slot].abs().sum() == 0 and state["exp_avg_sq"][slot].abs().sum() == 0
    assert int(state["row_step"][slot]) == 0
    assert len(seen) == 1 and seen[0][0].tolist() == [3]
    assert torch.equal(seen[0][1][0], trained[slot])  # the exported row is the trained one


def test_admission_default_rows_get_no_gradient():
    for default in ("zeros", "row"):
        table = DynamicEmbeddingBag(10, 4, mode="sum", min_count=3, exact_counts=True, default=default)
        opt = embtable.optim.fuse(table, "sgd", lr=1.0)
        before = table.weight.detach()[10].clone()
        for _ in range(2):
            table(torch.tensor([[5, 6]])).sum().backward()
            opt.step()
        assert table.stats()["size"] == 0 and table.stats()["default_hits"] == 4
        out = table(torch.tensor([[5, 6]]))  # third sight: admitted
        assert table.stats()["size"] == 2
        torch.testing.assert_close(out[0], init_rows(torch.tensor([5, 6]), 4).sum(0))
        table(torch.tensor([[7]])).sum().backward()  # a default hit, trained
        table(torch.tensor([[8]]))
        assert torch.equal(table.weight.detach()[10], before)


def test_default_row_values_in_embedding():
    table = DynamicEmbedding(4, 3, min_count=2, default="row")
    out = table(torch.tensor([1, 2]))
    assert torch.equal(out[0], out[1]) and out[0].abs().sum() > 0
    zeros = DynamicEmbedding(4, 3, min_count=2)
    assert zeros(torch.tensor([1])).abs().sum() == 0


@pytest.mark.parametrize(
    "policy,extra",
    [("lru", {}), ("lfu", {"min_count": 2}), ("lfu", {"decay_every": 3}), ("ttl", {"ttl": 1}), ("clock", {})],
)
def test_checkpoint_mid_stream_resumes_exactly(policy, extra):
    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(DynamicEmbeddingBag(20, 4, mode="sum", policy=policy, **extra),
                                    torch.nn.Linear(4, 1))
        return model, embtable.optim.fuse(model, "rowwise_adagrad", lr=0.1)

    batches = _batches(7, 16, 60, batch=4, width=3, offset=-(2**62))
    a, opt_a = make()
    for i, ids in enumerate(batches):
        if i == 8:
            saved = copy.deepcopy((a.state_dict(), opt_a.state_dict()))
        a(ids).sum().backward()
        opt_a.step()
    b, opt_b = make()
    b.load_state_dict(saved[0])
    opt_b.load_state_dict(saved[1])
    for ids in batches[8:]:
        b(ids).sum().backward()
        opt_b.step()
    assert a[0].stats() == b[0].stats() and a[0].stats()["evicted"] > 0
    for (ia, ra), (ib, rb) in [(a[0].live(), b[0].live())]:
        assert torch.equal(ia, ib)
        torch.testing.assert_close(ra, rb, rtol=0, atol=0)


def test_eval_mode_changes_nothing_and_export():
    table = DynamicEmbedding(8, 2, keep_evicted=True)
    table(torch.tensor([4, 5]))
    table.eval()
    before = table.state_dict()
    out = table(torch.tensor([4, 6]))
    assert out[1].abs().sum() == 0
    after = table.state_dict()
    assert all(torch.equal(before["_extra_state"][k], after["_extra_state"][k]) for k in before["_extra_state"])
    vectors = table.to_vectors()
    assert vectors.tokens == ["4", "5"]
    torch.testing.assert_close(vectors["5"], init_rows(torch.tensor([5]), 2)[0])
    ids, rows = table.evicted()
    assert ids.numel() == 0 and rows.shape == (0, 2)


def test_keep_evicted_buffer():
    table = DynamicEmbedding(2, 2, keep_evicted=True)
    table(torch.tensor([1, 2]))
    table(torch.tensor([3]))
    ids, rows = table.evicted()
    assert ids.tolist() == [1] and torch.equal(rows[0], init_rows(torch.tensor([1]), 2)[0])
    assert table.evicted()[0].numel() == 0


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(capacity=0, embedding_dim=2), ValueError, "capacity must be an int >= 1, got 0"),
        (dict(capacity=4, embedding_dim=2, min_count=0), ValueError, "min_count must be an int >= 1"),
        (dict(capacity=4, embedding_dim=2, policy="ttl"), ValueError, "ttl must be given"),
        (dict(capacity=4, embedding_dim=2, default="mean"), ValueError, "default must be"),
        (dict(capacity=4, embedding_dim=2, decay_every=2), ValueError, "needs policy='lfu'"),
        (dict(capacity=4, embedding_dim=2, policy="lfu", decay_every=0), ValueError, "decay_every must be"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        DynamicEmbedding(**kwargs)


def test_bad_ids_change_nothing():
    table = DynamicEmbedding(2, 2)
    table(torch.tensor([1]))
    before = copy.deepcopy(table.state_dict())
    with pytest.raises(TypeError, match="ids must be an integer tensor"):
        table(torch.tensor([1.5]))
    with pytest.raises(ValueError, match="capacity=2 distinct admitted ids, got 3"):
        table(torch.tensor([7, 8, 9]))
    after = table.state_dict()
    assert torch.equal(before["weight"], after["weight"])
    assert all(torch.equal(before["_extra_state"][k], after["_extra_state"][k]) for k in before["_extra_state"])


def test_lfu_aging_lets_an_old_heavy_hitter_leave():
    """An id used heavily early, then never again: plain LFU keeps its row for good, with
    ``decay_every`` its count halves until newcomers evict it (and its row is reset)."""

    def run(**kw):
        table = DynamicEmbedding(3, 2, policy="lfu", **kw)
        table(torch.full((50,), 10**15))
        for i in range(40):
            table(torch.tensor([i, i + 1000]))
        return table.lookup_rows(torch.tensor([10**15])).item()

    assert run() != 3  # still has its own row
    assert run(decay_every=4) == 3  # evicted: reads the default row


def test_config_object_and_repr():
    table = DynamicEmbeddingBag(5, 3, mode="sum", config=DynamicConfig(policy="ttl", ttl=2))
    assert repr(table) == "DynamicEmbeddingBag(capacity=5, 3, policy='ttl', ttl=2, mode='sum')"
    assert table.weight.shape == (6, 3)
    aged = DynamicEmbedding(5, 3, policy="lfu", decay_every=100)
    assert repr(aged) == "DynamicEmbedding(capacity=5, 3, policy='lfu', decay_every=100)"


@pytest.mark.skipif(not _compiled_available(), reason="embtable._C (slot ops) is not built")
def test_init_rows_compiled_matches_reference_bit_for_bit():
    from embtable.nn.dynamic import init_rows_reference

    ids = torch.cat([torch.randint(-(2**63), 2**63 - 1, (200,)), torch.arange(-3, 3)])
    torch.testing.assert_close(init_rows(ids, 33, seed=5, std=0.3), init_rows_reference(ids, 33, seed=5, std=0.3),
                               rtol=0, atol=0)
    table = torch.zeros(10, 33)
    torch.ops.embtable.slot_init_rows_into(table, torch.tensor([4, 1]), ids[:2], 5, 0.3)
    assert torch.equal(table[[4, 1]], init_rows_reference(ids[:2], 33, seed=5, std=0.3))
    assert table[[0, 2, 3]].abs().sum() == 0
    rows = init_rows_reference(torch.arange(4000), 64)
    assert abs(float(rows.mean())) < 0.01 and abs(float(rows.std()) - 1) < 0.01


@pytest.mark.skipif(not _compiled_available(), reason="embtable._C (slot ops) is not built")
def test_fresh_rows_compiled_matches_reference():
    """slot_fresh_rows (new rows + optimizer-state reset in one pass) == its PyTorch twin, for
    state tensors of several shapes and dtypes; bad arguments write nothing; opcheck."""
    from embtable.nn.dynamic import fresh_rows_reference

    g = torch.Generator().manual_seed(4)
    rows, dim, offset = 30, 7, 5

    def tables():
        return (torch.randn(rows, dim, generator=g), torch.randn(rows, generator=g),
                torch.randn(rows, dim, generator=g).to(torch.bfloat16),
                torch.randint(-100, 100, (rows, dim), generator=g, dtype=torch.int8),
                torch.randint(0, 9, (rows,), generator=g))

    fresh = [torch.tensor(0.25), torch.full((dim,), 1.5, dtype=torch.bfloat16),
             torch.arange(dim, dtype=torch.int8), torch.tensor(0)]
    slots, ids = torch.tensor([0, 24, 3, 11]), torch.tensor([7, -(2**62), 10**15, 0])
    got = tables()
    want = tuple(t.clone() for t in got)
    torch.ops.embtable.slot_fresh_rows(got[0], offset, slots, ids, 9, 0.3, list(got[1:]), fresh)
    fresh_rows_reference(want[0], offset, slots, ids, 9, 0.3, list(want[1:]), fresh)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    values = torch.randn(4, dim, generator=g)  # rows computed ahead (the prefetch thread)
    torch.ops.embtable.slot_fresh_rows(got[0], offset, slots, ids, 9, 0.3, list(got[1:]), fresh, values)
    fresh_rows_reference(want[0], offset, slots, ids, 9, 0.3, list(want[1:]), fresh, values)
    assert torch.equal(got[0][offset + slots], values) and torch.equal(got[0], want[0])
    before = tuple(t.clone() for t in got)
    with pytest.raises(RuntimeError, match="outside 30 rows"):
        torch.ops.embtable.slot_fresh_rows(got[0], offset, torch.tensor([1, 25]), ids[:2], 9, 0.3,
                                           list(got[1:]), fresh)
    with pytest.raises(RuntimeError, match=r"values must be a contiguous float32 \[4, 7\]"):
        torch.ops.embtable.slot_fresh_rows(got[0], offset, slots, ids, 9, 0.3, list(got[1:]), fresh,
                                           values[:3])
    with pytest.raises(RuntimeError, match="fresh row 0 must be one contiguous row"):
        torch.ops.embtable.slot_fresh_rows(got[0], offset, slots, ids, 9, 0.3, list(got[1:]),
                                           [torch.zeros(2), *fresh[1:]])
    for a, b in zip(got, before, strict=True):
        assert torch.equal(a, b)
    torch.library.opcheck(
        torch.ops.embtable.slot_fresh_rows.default,
        (got[0], offset, slots, ids, 9, 0.3, list(got[1:]), fresh, values),
        test_utils=("test_schema", "test_faketensor"),
    )


@pytest.mark.parametrize("policy,extra", [("lru", {}), ("lfu", {"min_count": 2}), ("ttl", {"ttl": 1}),
                                          ("clock", {})])
def test_prefetch_pipeline_equals_sequential_training(policy, extra):
    """prefetch(next batch) before each step (lookup on the background thread) gives the same
    rows, optimizer state, map and exported evictions as plain training, also when a batch's
    lookup evicts rows of the batch still in flight (capacity below two batches)."""
    seen = {"seq": [], "pipe": []}
    tables = {
        name: DynamicEmbeddingBag(7, 3, mode="sum", policy=policy, keep_evicted=True, default="row",
                                  on_evict=lambda i, r, name=name: seen[name].append((i, r)), **extra)
        for name in ("seq", "pipe")
    }
    opts = {name: embtable.optim.fuse(t, "adam", lr=0.05) for name, t in tables.items()}
    batches = _batches(5, 14, 12, batch=3, width=2)
    target = torch.randn(3, 3, generator=torch.Generator().manual_seed(1))
    for ids in batches:
        (tables["seq"](ids) * target).sum().backward()
        opts["seq"].step()
    pipe = tables["pipe"]
    pipe.prefetch(batches[0])
    for i, ids in enumerate(batches):
        if i + 1 < len(batches):
            pipe.prefetch(batches[i + 1])
        (pipe(ids) * target).sum().backward()
        opts["pipe"].step()
    seq = tables["seq"]
    assert seq.stats() == pipe.stats() and seq.stats()["evicted"] > 0
    assert torch.equal(seq.weight, pipe.weight)
    for key, value in opts["seq"].state[seq.weight].items():
        other = opts["pipe"].state[pipe.weight][key]
        assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, key
    for a, b in zip(seq.live(), pipe.live(), strict=True):
        assert torch.equal(a, b)
    assert len(seen["seq"]) == len(seen["pipe"])
    for (ia, ra), (ib, rb) in zip(seen["seq"], seen["pipe"], strict=True):
        assert torch.equal(ia, ib) and torch.equal(ra, rb)
    for a, b in zip(seq.evicted(), pipe.evicted(), strict=True):
        assert torch.equal(a, b)


def test_prefetch_pending_is_flushed_by_any_other_use():
    """A pending prefetch is committed, in order, before a checkpoint, a copy, an eval or a
    different batch; prefetch in eval mode and non-integer ids raise (nothing pending)."""
    ref, table = DynamicEmbedding(4, 2), DynamicEmbedding(4, 2)
    a, b = torch.tensor([1, 2, 3]), torch.tensor([4, 5])
    for ids in (a, b, torch.tensor([9])):
        ref(ids)
    table.prefetch(a)
    copied = copy.deepcopy(table)  # flushes: a is in the copy's map and rows
    assert copied.stats()["size"] == 3
    table.prefetch(b)
    with pytest.warns(UserWarning, match="not prefetched, while 1 prefetched lookup"):
        table(torch.tensor([9]))  # not the prefetched tensor: a and b first, then 9
    assert torch.equal(table.weight, ref.weight) and table.stats() == ref.stats()
    table.prefetch(torch.tensor([7]))
    saved = copy.deepcopy(table.state_dict())  # flushes: 7 is in the checkpoint
    ref(torch.tensor([7]))
    for key, value in ref.state_dict()["_extra_state"].items():
        assert torch.equal(saved["_extra_state"][key], value), key
    assert torch.equal(saved["weight"], ref.weight)
    pending = torch.tensor([1, 2])  # pending at reset_parameters: committed before the zeroing
    reset_ref, reset = DynamicEmbedding(4, 2), DynamicEmbedding(4, 2)
    reset_ref(pending)
    reset_ref.reset_parameters()
    reset.prefetch(pending)
    reset.reset_parameters()
    assert reset.stats() == reset_ref.stats() and torch.equal(reset.weight, reset_ref.weight)
    table.prefetch(torch.tensor([11, 12]))  # pending while a checkpoint is loaded: committed
    table.load_state_dict(saved)  # first, so the loaded rows stay as saved
    assert torch.equal(table.weight, saved["weight"]) and table.stats() == ref.stats()
    table.prefetch(torch.tensor([1, 2, 3, 4, 5]))  # more distinct ids than rows
    with pytest.raises(ValueError, match="at most capacity=4"), pytest.warns(UserWarning, match="not prefetched"):
        table(torch.tensor([6]))  # commits the pending lookup first: its error, nothing changed
    assert torch.equal(table.weight, saved["weight"]) and table.stats() == ref.stats()
    with pytest.raises(TypeError, match="ids must be an integer tensor"):
        table.prefetch(torch.tensor([1.5]))
    table.eval()
    with pytest.raises(ValueError, match="eval mode"):
        table.prefetch(a)
    assert not table.dynamic._pending


@pytest.mark.parametrize("collection_type", ["bag", "seq"])
def test_dynamic_table_in_a_collection_matches_static(collection_type):
    from embtable import (
        DynamicConfig,
        EmbeddingBagCollection,
        EmbeddingCollection,
        KeyedJagged,
        TableConfig,
    )

    vocab, dim, offset = 30, 4, 10**13
    make = EmbeddingBagCollection if collection_type == "bag" else EmbeddingCollection
    pooling = "sum" if collection_type == "bag" else "none"

    def tables(dynamic):
        user = TableConfig(name="user", num_embeddings=vocab, embedding_dim=dim, pooling=pooling,
                           feature_names=["user", "friend"], dynamic=DynamicConfig(seed=2) if dynamic else None)
        return [user, TableConfig(name="item", num_embeddings=10, embedding_dim=dim, pooling=pooling)]

    torch.manual_seed(0)
    dyn = make(tables(True))
    torch.manual_seed(0)
    static = make(tables(False))
    with torch.no_grad():
        static.table_weight("user").copy_(init_rows(torch.arange(vocab) + offset, dim, seed=2))
        static.table_weight("item").copy_(dyn.table_weight("item"))
    opts = [embtable.optim.fuse(m, "adagrad", lr=0.2) for m in (dyn, static)]
    g = torch.Generator().manual_seed(3)
    for _ in range(6):
        users = torch.randint(0, vocab, (5, 3), generator=g)
        items = torch.randint(0, 10, (5, 1), generator=g)
        batch = {"user": users[:, :2].tolist(), "friend": users[:, 2:].tolist(), "item": items.tolist()}
        shifted = {**batch, "user": (users[:, :2] + offset).tolist(), "friend": (users[:, 2:] + offset).tolist()}
        for model, opt, b in ((dyn, opts[0], shifted), (static, opts[1], batch)):
            out = model(KeyedJagged.from_dict(b))
            values = out.values() if collection_type == "bag" else torch.cat([out[f].values for f in out.keys()])
            (values * torch.linspace(-1, 1, values.shape[-1])).sum().backward()
            opt.step()
    state = dyn.dynamic_tables["user"].rows
    ids, slots = state.slot_map.items()
    torch.testing.assert_close(dyn.table_weight("user")[slots], static.table_weight("user")[ids - offset],
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(dyn.table_weight("item"), static.table_weight("item"), rtol=0, atol=1e-6)
    copy_ = make(tables(True))
    copy_.load_state_dict(dyn.state_dict())
    assert copy_.dynamic_tables["user"].rows.slot_map.stats() == state.slot_map.stats()
    assert torch.equal(copy_.table_weight("user"), dyn.table_weight("user"))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_prefetch_in_a_forked_child():
    """A forked child gets its own prefetch thread (the parent's does not exist there: a
    shared executor left the child waiting for ever)."""
    table = DynamicEmbedding(10, 2)
    first = torch.tensor([1])
    table.prefetch(first)
    table(first)  # the parent's prefetch thread exists now
    pid = os.fork()
    if pid == 0:  # child: always leaves through os._exit
        code = 1
        try:
            import faulthandler

            faulthandler.dump_traceback_later(30, exit=True)  # never hang the suite
            torch.set_num_threads(1)  # no OpenMP pool inherited across fork
            second = torch.tensor([2])
            table.prefetch(second)
            table(second)
            code = 0 if table.stats()["size"] == 2 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_prefetch_still_running_at_a_fork_raises_in_the_child():
    """A lookup still running on the parent's thread when the process forks: the child's
    forward raises RuntimeError (it waited for ever before); the parent's completes."""
    import threading

    table = DynamicEmbedding(10, 2)
    release = threading.Event()
    inner = table.dynamic._lookup_ahead

    def held(*args):
        release.wait(30)
        return inner(*args)

    table.dynamic._lookup_ahead = held
    ids = torch.tensor([3, 4])
    table.prefetch(ids)
    pid = os.fork()
    if pid == 0:  # child: always leaves through os._exit
        code = 1
        try:
            import faulthandler

            faulthandler.dump_traceback_later(30, exit=True)  # never hang the suite
            try:
                table(ids)
            except RuntimeError as error:
                code = 0 if "still running when this process was forked" in str(error) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    release.set()
    assert os.waitstatus_to_exitcode(status) == 0
    table(ids)
    assert table.stats()["size"] == 2


def test_collection_prefetch_pipeline_equals_sequential_training():
    """prefetch_batch on a collection (two dynamic tables, one static, fused Adam, a capacity
    below two batches) gives the same rows, states and maps as plain training; a TorchRec
    KeyedJaggedTensor batch is recognized too; eval mode raises."""
    from embtable import DynamicConfig, EmbeddingBagCollection, KeyedJagged, TableConfig
    from embtable.nn.dynamic import prefetch_batch

    def make():
        torch.manual_seed(0)
        return EmbeddingBagCollection([
            TableConfig(name="user", num_embeddings=10, embedding_dim=3, feature_names=["user", "friend"],
                        dynamic=DynamicConfig(policy="lru")),
            TableConfig(name="item", num_embeddings=5, embedding_dim=3),
            TableConfig(name="query", num_embeddings=6, embedding_dim=3, dynamic=DynamicConfig(policy="lfu")),
        ])

    g = torch.Generator().manual_seed(8)
    batches = []
    for _ in range(8):
        u = torch.randint(0, 12, (3, 3), generator=g) * 10**12
        batches.append(KeyedJagged.from_dict({
            "user": u[:, :2].tolist(), "friend": u[:, 2:].tolist(),
            "item": torch.randint(0, 5, (3, 1), generator=g).tolist(),
            "query": (torch.randint(0, 9, (3, 2), generator=g) - 4).tolist(),
        }))
    seq, pipe = make(), make()
    opts = {id(m): embtable.optim.fuse(m, "adam", lr=0.05) for m in (seq, pipe)}
    for b in batches:
        seq(b).values().sum().backward()
        opts[id(seq)].step()
    prefetch_batch(pipe, batches[0])
    for i, b in enumerate(batches):
        if i + 1 < len(batches):
            prefetch_batch(pipe, batches[i + 1])
        pipe(b).values().sum().backward()
        opts[id(pipe)].step()
    for name in ("user", "query"):
        a, b = seq.dynamic_tables[name].rows, pipe.dynamic_tables[name].rows
        assert a.slot_map.stats() == b.slot_map.stats() and a.slot_map.stats()["evicted"] > 0
    for w_seq, w_pipe in zip(seq.grouped_weights, pipe.grouped_weights, strict=True):
        assert torch.equal(w_seq, w_pipe)
        for key, value in opts[id(seq)].state[w_seq].items():
            other = opts[id(pipe)].state[w_pipe][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
    pytest.importorskip("torchrec")
    kjt = batches[0].to_torchrec()
    prefetch_batch(pipe, kjt)
    assert len(pipe.dynamic_tables["user"].rows._pending) == 1
    pipe(kjt)  # takes the prefetched lookups (matched by the values tensor)
    assert not pipe.dynamic_tables["user"].rows._pending
    pipe.eval()
    with pytest.raises(ValueError, match="eval mode"):
        prefetch_batch(pipe, batches[0])


def test_table_config_dynamic_rejects_padding():
    from embtable import DynamicConfig, TableConfig

    with pytest.raises(ValueError, match="a dynamic table has no padding_idx"):
        TableConfig(name="u", num_embeddings=4, embedding_dim=2, padding_idx=0, dynamic=DynamicConfig())


def test_hashed_table_in_a_collection():
    from embtable import EmbeddingBagCollection, KeyedJagged, TableConfig
    from embtable.nn.hashed import hash_rows

    collection = EmbeddingBagCollection([TableConfig(name="q", num_embeddings=11, embedding_dim=3, hashed=True)])
    ids = [[10**17, -4], [5]]
    out = collection(KeyedJagged.from_dict({"q": ids}))
    weight = collection.table_weight("q")
    rows = hash_rows(torch.tensor([10**17, -4, 5]), 11)
    torch.testing.assert_close(out.values(), torch.stack([weight[rows[:2]].sum(0), weight[rows[2]]]))
    with pytest.raises(ValueError, match="a hashed table has no dynamic options"):
        TableConfig(name="q", num_embeddings=11, embedding_dim=3, hashed=True, padding_idx=0)


def test_dynamic_table_without_the_extension(monkeypatch):
    from embtable.nn.dynamic import init_rows_reference
    from embtable.ops import _compiled

    monkeypatch.setitem(_compiled._STATE, "loaded", False)
    table = DynamicEmbedding(3, 5, policy="clock")
    assert not table.slot_map._compiled
    out = table(torch.tensor([[8, 9], [9, 10**14]]))
    torch.testing.assert_close(out[1, 1], init_rows_reference(torch.tensor([10**14]), 5)[0])
    table(torch.tensor([11]))
    assert table.stats()["evicted"] == 1 and len(table.slot_map) == 3
