"""``TableConfig(scale_grad_by_freq=True)`` in the collections: exactly a loop of torch modules.

Oracle: one ``torch.nn.functional.embedding`` call per FEATURE with ``scale_grad_by_freq``
on that table's weight, pooled as ``torch.nn.EmbeddingBag`` pools (a shared table counts its ids per feature),
for the autograd path; the same loop's gradient + the documented fused rule (numpy,
``tests/optim/fused_oracle.py``) on the touched rows for the fused path.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import embtable
from embtable import EmbeddingBagCollection, EmbeddingCollection, KeyedJagged, TableConfig

sys.path.insert(0, str(Path(__file__).parent / "optim"))  # for fused_oracle
from fused_oracle import LazyAdam, MomentumSGD, RowWiseAdagrad  # noqa: E402

D = 3
SIZES = {"a": 6, "b": 5, "c": 7}


def _tables(pool_a: str, pad_a: int | None, pad_c: int | None, pooled: bool = True) -> list[TableConfig]:
    none = "none"
    return [
        TableConfig(name="a", num_embeddings=6, embedding_dim=D, feature_names=["a1", "a2"],
                    pooling=pool_a if pooled else none, padding_idx=pad_a, scale_grad_by_freq=True),
        TableConfig(name="b", num_embeddings=5, embedding_dim=D, pooling="sum" if pooled else none),
        TableConfig(name="c", num_embeddings=7, embedding_dim=D, feature_names=["c"],
                    pooling="sum" if pooled else none, padding_idx=pad_c, scale_grad_by_freq=True),
    ]


FEATURES = {"a1": "a", "a2": "a", "b": "b", "c": "c"}


@st.composite
def batches(draw, weighted_ok: bool = True):
    size = draw(st.integers(1, 3))
    bags = {
        f: [draw(st.lists(st.integers(0, SIZES[t] - 1), max_size=4)) for _ in range(size)]
        for f, t in FEATURES.items()
    }
    return bags


def _kjt(bags: dict[str, list[list[int]]], weighted: bool, seed: int) -> KeyedJagged:
    kjt = KeyedJagged.from_dict(bags)
    if not weighted:
        return kjt
    gen = torch.Generator().manual_seed(seed)
    weights = torch.rand(kjt.values().numel(), generator=gen) + 0.5
    return KeyedJagged(kjt.keys(), kjt.values(), kjt.lengths(), weights=weights)


def _loop_of_torch(weights, tables, bags, kjt, weighted, pooled):
    """{feature: output} of one torch call per feature (the oracle), on ``weights`` {table: W}."""
    configs = {c.name: c for c in tables}
    out, start = {}, 0
    all_w = kjt.weights()
    for f in kjt.keys():
        config = configs[FEATURES[f]]
        ids = torch.tensor([i for bag in bags[f] for i in bag], dtype=torch.int64)
        w = None
        if weighted:
            w = all_w[start : start + ids.numel()]
        start += ids.numel()
        rows = torch.nn.functional.embedding(
            ids, weights[config.name], padding_idx=config.padding_idx,
            scale_grad_by_freq=config.scale_grad_by_freq,
        )
        out[f] = _pool_like_embedding_bag(rows, ids, bags[f], w, config) if pooled else rows
    return out


def _pool_like_embedding_bag(rows, ids, bags, w, config):
    """``torch.nn.EmbeddingBag``'s pooling of the rows of one ``torch.nn.Embedding`` call.

    (torch 2.13's CPU ``embedding_bag`` divides by a wrong count with ``scale_grad_by_freq``,
    pytorch #190063, docs/bags.md; ``torch.nn.functional.embedding`` counts right.)
    """
    keep = torch.ones(ids.numel()) if config.padding_idx is None else (ids != config.padding_idx).float()
    coeff = keep if w is None else keep * w
    bag_of = torch.repeat_interleave(torch.arange(len(bags)), torch.tensor([len(b) for b in bags], dtype=torch.long))
    out = rows.new_zeros((len(bags), rows.shape[1])).index_add(0, bag_of, rows * coeff.unsqueeze(1))
    if config.pooling.value == "mean":
        count = torch.zeros(len(bags)).index_add(0, bag_of, keep)
        out = out / count.clamp(min=1).unsqueeze(1)
    return out


def _coeffs(outs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return {f: torch.randn(o.shape, generator=gen, dtype=torch.float64).float() for f, o in outs.items()}


def _oracle_grads(collection, tables, bags, kjt, weighted, pooled):
    weights = {
        name: w.detach().clone().requires_grad_(True) for name, w in collection.table_weights().items()
    }
    outs = _loop_of_torch(weights, tables, bags, kjt, weighted, pooled)
    coeffs = _coeffs(outs)
    sum((outs[f] * coeffs[f]).sum() for f in outs).backward()
    return outs, coeffs, {name: w.grad for name, w in weights.items()}


def _result(result, feature, pooled):
    return result[feature] if pooled else result[feature].values


pools = st.sampled_from(["sum", "mean"])
pads_a = st.one_of(st.none(), st.integers(0, 5))
pads_c = st.one_of(st.none(), st.integers(0, 6))


@settings(max_examples=25, deadline=None)
@given(batches(), pools, pads_a, pads_c, st.booleans(), st.booleans())
def test_bag_collection_gradient_is_a_loop_of_torch_modules(bags, pool_a, pad_a, pad_c, weighted, a_scaled):
    if weighted:
        pool_a = "sum"  # per-value weights apply to sum tables
    tables = _tables(pool_a, pad_a, pad_c)
    if not a_scaled:  # c alone in its flagged bucket: the kernels' own count is per feature
        tables[0] = dataclasses.replace(tables[0], scale_grad_by_freq=False)
    torch.manual_seed(0)
    collection = EmbeddingBagCollection(tables, is_weighted=weighted)
    kjt = _kjt(bags, weighted, seed=1)
    outs, coeffs, grads = _oracle_grads(collection, tables, bags, kjt, weighted, pooled=True)
    result = collection(kjt)
    for f in outs:
        torch.testing.assert_close(result[f], outs[f].detach(), rtol=1e-6, atol=1e-6)
    sum((result[f] * coeffs[f]).sum() for f in outs).backward()
    for name, grad in grads.items():
        torch.testing.assert_close(collection.table_grad(name), grad, rtol=1e-5, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(batches(), pads_a, pads_c, st.booleans())
def test_embedding_collection_gradient_is_a_loop_of_torch_modules(bags, pad_a, pad_c, a_scaled):
    tables = _tables("sum", pad_a, pad_c, pooled=False)
    if not a_scaled:  # c alone in its flagged bucket: the kernels' own count is per feature
        tables[0] = dataclasses.replace(tables[0], scale_grad_by_freq=False)
    torch.manual_seed(0)
    collection = EmbeddingCollection(tables)
    kjt = _kjt(bags, False, seed=1)
    outs, coeffs, grads = _oracle_grads(collection, tables, bags, kjt, False, pooled=False)
    result = collection(kjt)
    for f in outs:
        torch.testing.assert_close(result[f].values, outs[f].detach())
    sum((result[f].values * coeffs[f]).sum() for f in outs).backward()
    for name, grad in grads.items():
        torch.testing.assert_close(collection.table_grad(name), grad, rtol=1e-5, atol=1e-6)


def test_shared_table_counts_per_feature_not_per_call():
    """Hand-computed: id 1 twice in a1 and once in a2 -> gradient 2/2 + 1/1 = 2 per unit of output."""
    collection = EmbeddingBagCollection(_tables("sum", None, None))
    kjt = KeyedJagged.from_dict({"a1": [[1, 1]], "a2": [[1]], "b": [[0]], "c": [[3, 3, 3]]})
    collection(kjt).values().sum().backward()
    assert collection.table_grad("a")[1].tolist() == [2.0] * D  # counted per call: 3/3 = 1
    assert collection.table_grad("c")[3].tolist() == [1.0] * D
    assert collection.table_grad("b")[0].tolist() == [1.0] * D  # no flag: unscaled


RULES = {
    "sgd": ({"lr": 0.1}, lambda w: MomentumSGD(w, 0.1, 0.0)),
    "rowwise_adagrad": ({"lr": 0.1}, lambda w: RowWiseAdagrad(w, lr=0.1, eps=1e-8)),
    "adam": (
        {"lr": 0.05, "betas": (0.9, 0.99), "bias_correction": "row"},
        lambda w: LazyAdam(w, 0.05, (0.9, 0.99), 1e-8),
    ),
}


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("pooled", [True, False])
@settings(max_examples=6, deadline=None)
@given(steps=st.lists(batches(), min_size=2, max_size=2), pool_a=pools, pad_a=pads_a, pad_c=pads_c,
       a_scaled=st.booleans())
def test_fused_steps_are_the_loops_gradient_and_the_rule(rule, pooled, steps, pool_a, pad_a, pad_c,
                                                          a_scaled):
    options, make_oracle = RULES[rule]
    tables = _tables(pool_a, pad_a, pad_c, pooled=pooled)
    if not a_scaled:  # c alone in its flagged bucket: the fused kernels' own count
        tables[0] = dataclasses.replace(tables[0], scale_grad_by_freq=False)
    torch.manual_seed(0)
    collection = (EmbeddingBagCollection if pooled else EmbeddingCollection)(tables)
    oracles = {n: make_oracle(w.detach().double().numpy()) for n, w in collection.table_weights().items()}
    embtable.optim.fuse(collection, rule, **options)
    configs = {c.name: c for c in tables}
    for bags in steps:
        kjt = _kjt(bags, False, seed=1)
        outs, coeffs, grads = _oracle_grads(collection, tables, bags, kjt, False, pooled)
        result = collection(kjt)
        sum((_result(result, f, pooled) * coeffs[f]).sum() for f in outs).backward()
        for name, oracle in oracles.items():
            pad = configs[name].padding_idx
            touched = {i for f, t in FEATURES.items() if t == name for bag in bags[f] for i in bag}
            oracle.update({r: grads[name][r].double().numpy() for r in sorted(touched - {pad})})
    for name, oracle in oracles.items():
        np.testing.assert_allclose(collection.table_weight(name).detach().numpy(), oracle.w, rtol=1e-5, atol=1e-6)
    assert all(w.grad is None for w in collection.grouped_weights)


def test_config_validation_and_torchrec_refusal():
    with pytest.raises(TypeError, match="scale_grad_by_freq must be a bool"):
        TableConfig(name="t", num_embeddings=3, embedding_dim=2, scale_grad_by_freq=1)
    with pytest.raises(ValueError, match="pooling='max' does not support scale_grad_by_freq"):
        TableConfig(name="t", num_embeddings=3, embedding_dim=2, pooling="max", scale_grad_by_freq=True)
    pytest.importorskip("torchrec")
    collection = EmbeddingBagCollection(_tables("sum", None, None)[1:])
    with pytest.raises(ValueError, match="table 'c' has scale_grad_by_freq=True"):
        collection.to_torchrec()
    with pytest.raises(ValueError, match="table 'a' has scale_grad_by_freq=True"):
        EmbeddingCollection(_tables("sum", None, None, pooled=False)).to_torchrec()


def test_flagged_tables_do_not_share_a_call_with_unflagged_ones():
    collection = EmbeddingBagCollection(_tables("sum", None, None))
    got = [(b.features, b.scale_grad_by_freq) for b in collection.plan.buckets]
    assert got == [(("a1", "a2", "c"), True), (("b",), False)]
    assert "scale_grad_by_freq=True" in repr(collection)


def test_disk_tables_refuse_the_flag_ram_tables_keep_it(tmp_path):
    from embtable.nn.disk import DiskEmbeddingBagCollection
    from embtable.storage.disk import Disk

    on_disk = TableConfig(name="u", num_embeddings=10, embedding_dim=D, scale_grad_by_freq=True,
                          storage=Disk(tmp_path / "u", cache_rows=4))
    with pytest.raises(ValueError, match="table 'u' on disk has scale_grad_by_freq=True.*DiskEmbeddingBag"):
        DiskEmbeddingBagCollection([on_disk])
    from embtable.nn.disk import DiskEmbeddingCollection

    unpooled = dataclasses.replace(on_disk, pooling="none", storage=Disk(tmp_path / "w", cache_rows=4))
    with pytest.raises(ValueError, match=r"on disk has scale_grad_by_freq=True.*disk\.DiskEmbedding\)"):
        DiskEmbeddingCollection([unpooled])
    ram = _tables("sum", None, None)[2]  # table c, in RAM, flagged
    disk = TableConfig(name="u", num_embeddings=10, embedding_dim=D, storage=Disk(tmp_path / "v", cache_rows=4))
    collection = DiskEmbeddingBagCollection([ram, disk])
    collection(KeyedJagged.from_dict({"c": [[3, 3]], "u": [[1]]})).values().sum().backward()
    assert collection.ram.table_grad("c")[3].tolist() == [1.0] * D  # 2 ids / count 2


def test_torch_func_grad_works_and_vmap_is_refused():
    from torch.func import functional_call, grad, vmap

    from embtable.func import KeyedJaggedStack

    torch.manual_seed(0)
    collection = EmbeddingBagCollection(_tables("mean", 2, None))
    batch = KeyedJagged.from_dict({"a1": [[1, 1, 2], [1]], "a2": [[1], [2, 2]], "b": [[0], [1]], "c": [[3, 3], []]})
    params = {k: v.detach() for k, v in collection.named_parameters()}

    def loss(p, kjt):
        return functional_call(collection, p, (kjt,)).values().pow(2).sum()

    got = grad(loss)(params, batch)["grouped_weight_0"]
    loss(dict(collection.named_parameters()), batch).backward()
    torch.testing.assert_close(got, collection.grouped_weights[0].grad)
    with pytest.raises(ValueError, match="scale_grad_by_freq=True cannot be looked up inside torch.func.vmap"):
        even = KeyedJagged.from_dict({"a1": [[1, 1], [2, 1]], "a2": [[1], [2]], "b": [[0], [1]], "c": [[3], [3]]})
        vmap(grad(loss), in_dims=(None, 0))(params, KeyedJaggedStack.from_batch(even))


@settings(max_examples=10, deadline=None)
@given(st.data(), pools, pads_a)
def test_a_batch_size_per_feature_counts_per_feature(data, pool_a, pad_a):
    tables = _tables(pool_a, pad_a, None)
    torch.manual_seed(0)
    collection = EmbeddingBagCollection(tables)
    strides = data.draw(st.lists(st.integers(0, 3), min_size=4, max_size=4))
    bags = {f: [data.draw(st.lists(st.integers(0, SIZES[t] - 1), max_size=4)) for _ in range(s)]
            for (f, t), s in zip(FEATURES.items(), strides)}
    values = torch.tensor([i for b in bags.values() for bag in b for i in bag], dtype=torch.long)
    lengths = torch.tensor([len(bag) for b in bags.values() for bag in b], dtype=torch.long)
    kjt = KeyedJagged(list(bags), values, lengths, stride_per_key=strides)
    outs, coeffs, grads = _oracle_grads(collection, tables, bags, kjt, False, pooled=True)
    result = collection(kjt)
    sum((result[f] * coeffs[f]).sum() for f in outs).backward()
    for name, grad in grads.items():
        torch.testing.assert_close(collection.table_grad(name), grad, rtol=1e-5, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(batches(), pools, pads_a)
def test_float64_tables_keep_float64_precision(bags, pool_a, pad_a):
    """The per-feature counts' factors are float64 for a float64 table, as torch's are."""
    tables = [dataclasses.replace(t, dtype=torch.float64) for t in _tables(pool_a, pad_a, None)]
    torch.manual_seed(0)
    collection = EmbeddingBagCollection(tables)
    kjt = _kjt(bags, False, seed=1)
    outs, coeffs, grads = _oracle_grads(collection, tables, bags, kjt, False, pooled=True)
    result = collection(kjt)
    sum((result[f] * coeffs[f]).sum() for f in outs).backward()
    for name, grad in grads.items():
        torch.testing.assert_close(collection.table_grad(name), grad, rtol=1e-12, atol=1e-14)


def test_the_flag_leaves_the_other_tables_steps_alone():
    """A flagged table is grouped apart: an unflagged table of the same dim keeps one fused
    step per training step (Adam's ``bias_correction="table"`` counts them), so its training
    does not change when another table gets the flag."""
    trained = {}
    for flag in (False, True):
        torch.manual_seed(0)
        collection = EmbeddingBagCollection([
            TableConfig(name="a", num_embeddings=5, embedding_dim=D, scale_grad_by_freq=flag),
            TableConfig(name="b", num_embeddings=5, embedding_dim=D),
        ])
        opt = embtable.optim.fuse(collection, "adam", lr=0.1, bias_correction="table")
        for step in range(3):
            kjt = KeyedJagged.from_dict({"a": [[1, 1], [step]], "b": [[2], [2, step]]})
            collection(kjt).values().pow(2).sum().backward()
        b_weight = collection.grouped_weights[collection.plan.tables["b"].group]
        assert opt.state[b_weight]["table_step"] == 3, flag
        trained[flag] = collection.table_weight("b").detach()
    assert torch.equal(trained[True], trained[False])


def test_per_value_weights_get_torch_loops_gradient():
    """Weights that require a gradient, on a shared flagged table with padding (the
    per-feature call): their gradient and the table's equal the torch loop's."""
    tables = [TableConfig(name="a", num_embeddings=5, embedding_dim=D, feature_names=["a1", "a2"],
                          padding_idx=4, scale_grad_by_freq=True)]
    bags = {"a1": [[1, 1, 2], [1, 4]], "a2": [[2, 2], [3, 1, 1]]}
    torch.manual_seed(0)
    collection = EmbeddingBagCollection(tables, is_weighted=True)
    with torch.no_grad():
        collection.table_weight("a")[4] = 1.0  # (a padding row that is not zero)
    kjt = KeyedJagged.from_dict(bags)
    weights = (torch.rand(kjt.values().numel(), generator=torch.Generator().manual_seed(2)) + 0.5)
    ours = weights.clone().requires_grad_(True)
    theirs = weights.clone().requires_grad_(True)
    table = collection.table_weight("a").detach().clone().requires_grad_(True)
    oracle = _loop_of_torch({"a": table}, tables, bags,
                            KeyedJagged(kjt.keys(), kjt.values(), kjt.lengths(), weights=theirs),
                            True, True)
    coeffs = _coeffs(oracle)
    sum((oracle[f] * coeffs[f]).sum() for f in bags).backward()
    result = collection(KeyedJagged(kjt.keys(), kjt.values(), kjt.lengths(), weights=ours))
    sum((result[f] * coeffs[f]).sum() for f in bags).backward()
    torch.testing.assert_close(collection.table_grad("a"), table.grad)
    torch.testing.assert_close(ours.grad, theirs.grad)
