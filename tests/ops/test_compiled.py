"""The compiled kernels (embtable._C) against their pure-PyTorch twins, opcheck, and the fallback."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embtable import ops
from embtable.ops import _compiled, _reference
from embtable.ops import _fused_reference as fref

pytestmark = pytest.mark.skipif(not ops.extension_available(), reason="embtable._C is not built")

HPARAMS = {
    fref.OPT_SGD: [0.1, 0.01, 1, 0.9, 1],
    fref.OPT_ADAGRAD: [0.1, 0.01, 2, 1e-8],
    fref.OPT_ROWWISE_ADAGRAD: [0.1, 0.01, 1, 1e-8],
    fref.OPT_ADAM: [0.01, 0.01, 2, 0.9, 0.999, 1e-8, 0, 0],
}


def _state(optimizer: int, V: int, D: int) -> list[torch.Tensor]:
    if optimizer == fref.OPT_SGD:
        return [torch.zeros(V, D)]
    if optimizer == fref.OPT_ADAGRAD:
        return [torch.full((V, D), 0.1)]
    if optimizer == fref.OPT_ROWWISE_ADAGRAD:
        return [torch.zeros(V)]
    return [torch.zeros(V, D), torch.zeros(V, D), torch.zeros(V, dtype=torch.int64)]


@st.composite
def bags(draw):
    V = draw(st.integers(1, 30))
    D = draw(st.integers(1, 9))
    lengths = draw(st.lists(st.integers(0, 6), min_size=0, max_size=6))
    n = sum(lengths)
    ids = draw(st.lists(st.integers(0, V - 1), min_size=n, max_size=n))
    padding = draw(st.one_of(st.just(-1), st.integers(0, V - 1)))
    offsets = torch.tensor([0, *lengths]).cumsum(0)
    return V, D, torch.tensor(ids, dtype=torch.int64), offsets, padding


@settings(max_examples=60, deadline=None)
@given(bags(), st.sampled_from([ops.POOL_SUM, ops.POOL_MEAN, ops.POOL_MAX]), st.booleans())
def test_pool_bags_matches_reference(case, pooling, weighted):
    V, D, ids, offsets, padding = case
    weight = torch.randn(V, D)
    psw = torch.rand(ids.numel()) if weighted and pooling == ops.POOL_SUM else None
    out, max_ids = torch.ops.embtable.pool_bags(weight, ids, offsets, psw, pooling, padding)
    ref_out, ref_max = _reference.pool_bags(weight, ids, offsets, psw, pooling, padding)
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)
    if pooling == ops.POOL_MAX:
        assert torch.equal(max_ids, ref_max)


def test_pool_bags_max_keeps_first_nan_like_reference():
    nan = float("nan")
    weight = torch.tensor([[nan, 1.0], [2.0, nan], [3.0, 0.0]])
    for order in ([0, 1, 2], [1, 0, 2], [2, 1, 0]):
        ids, offsets = torch.tensor(order), torch.tensor([0, 3])
        got = torch.ops.embtable.pool_bags(weight, ids, offsets, None, ops.POOL_MAX, -1)
        want = _reference.pool_bags(weight, ids, offsets, None, ops.POOL_MAX, -1)
        torch.testing.assert_close(got[0], want[0], equal_nan=True)
        assert torch.equal(got[1], want[1])


@pytest.mark.parametrize(
    ("ids", "offsets"),
    [
        ([0, 1, 7], [0, 1, 3]),  # id 7 outside a table of 5 rows
        ([0, -1, 2], [0, 1, 3]),  # negative id
        ([0, 1, 2], [1, 3]),  # first offset not 0
        ([0, 1, 2], [0, 2, 1, 3]),  # decreasing
        ([0, 1, 2], [0, 2, 4]),  # past the end of the ids
    ],
)
@pytest.mark.parametrize("dim", [3, 64])
def test_pool_bags_rejects_bad_ids_and_offsets(ids, offsets, dim):
    weight = torch.randn(5, dim)
    for pooling in (ops.POOL_SUM, ops.POOL_MEAN, ops.POOL_MAX):
        with pytest.raises(RuntimeError, match="embtable::pool_bags"):
            torch.ops.embtable.pool_bags(weight, torch.tensor(ids), torch.tensor(offsets), None, pooling, -1)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 4), st.integers(0, 5), st.sampled_from([3, 32, 64, 128]),
    st.sampled_from([ops.POOL_SUM, ops.POOL_MEAN]), st.booleans(), st.integers(0, 2**31),
)
def test_pool_bags_grouped_matches_reference(num_features, batch, dim, pooling, weighted, seed):
    g = torch.Generator().manual_seed(seed)
    V = 40
    lengths = torch.randint(0, 5, (num_features * batch,), generator=g)
    offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    ids = torch.randint(0, V, (int(lengths.sum()),), generator=g)
    weight = torch.randn(V, dim, generator=g)
    psw = torch.rand(ids.numel(), generator=g) if weighted and pooling == ops.POOL_SUM else None
    got = torch.ops.embtable.pool_bags_grouped(weight, ids, offsets, psw, pooling, 3, num_features)
    want = _reference.pool_bags_grouped(weight, ids, offsets, psw, pooling, 3, num_features)
    assert got.shape == (batch, num_features * dim)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(0, 6), st.integers(0, 2**31), st.booleans())
def test_bucket_ids_matches_reference(num_features, batch, seed, int32):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 20, (num_features,), generator=g)
    starts = torch.cumsum(sizes, 0) - sizes
    rows = torch.stack([starts, sizes], 1)
    lengths = torch.randint(0, 4, (num_features * batch,), generator=g)
    counts = lengths.view(num_features, batch).sum(1) if batch else torch.zeros(num_features, dtype=torch.long)
    values = torch.cat([torch.randint(0, int(n), (int(c),), generator=g) for n, c in zip(sizes, counts)])
    dtype = torch.int32 if int32 else torch.int64
    got = torch.ops.embtable.bucket_ids(values.to(dtype), lengths.to(dtype), rows, batch)
    want = _reference.bucket_ids(values.to(dtype), lengths.to(dtype), rows, batch)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert got[0].dtype == want[0].dtype == torch.int64
    if values.numel():
        f = int(torch.nonzero(counts)[0])
        for wrong in (int(sizes[f]), -1):  # one past the end of its table; negative
            bad = values.clone()
            bad[int(counts[:f].sum())] = wrong
            bad = bad.to(dtype)  # (int32 ids are bounds-checked as read, not widened first)
            with pytest.raises(RuntimeError, match="embtable::bucket_ids"):
                torch.ops.embtable.bucket_ids(bad, lengths, rows, batch)
            with pytest.raises(IndexError):
                _reference.bucket_ids(bad, lengths, rows, batch)


@settings(max_examples=50, deadline=None)
@given(bags(), st.sampled_from([ops.POOL_SUM, ops.POOL_MEAN]), st.booleans(), st.sampled_from([0, 32, 64]))
def test_pool_bags_backward_matches_reference(case, pooling, weighted, wide):
    V, D, ids, offsets, padding = case
    D = wide or D
    grad = torch.randn(offsets.numel() - 1, D)
    psw = torch.rand(ids.numel()) if weighted else None
    got = torch.ops.embtable.pool_bags_backward(grad, ids, offsets, psw, V, pooling, padding)
    want = _reference.pool_bags_backward(grad, ids, offsets, psw, ids.new_empty(0), V, pooling, padding, False, False)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_opcheck_pool_bags_grouped_and_bucket_ids():
    weight = torch.randn(10, 4)
    ids, offsets = torch.tensor([1, 2, 2, 9, 0]), torch.tensor([0, 1, 4, 4, 5])
    for pooling, psw in ((ops.POOL_SUM, torch.rand(5)), (ops.POOL_MEAN, None)):
        torch.library.opcheck(
            torch.ops.embtable.pool_bags_grouped.default, (weight, ids, offsets, psw, pooling, 2, 2)
        )
    grad = torch.randn(4, 4)
    torch.library.opcheck(
        torch.ops.embtable.pool_bags_backward.default, (grad, ids, offsets, torch.rand(5), 10, ops.POOL_SUM, 2)
    )
    torch.library.opcheck(torch.ops.embtable.pool_bags_backward.default, (grad, ids, offsets, None, 10, ops.POOL_MEAN, -1))
    rows = torch.tensor([[0, 4], [4, 6]])
    for dtype in (torch.int64, torch.int32):  # (int32 ids are read as they are; int64 out)
        values = torch.tensor([1, 3, 0, 5, 2], dtype=dtype)
        torch.library.opcheck(torch.ops.embtable.bucket_ids.default, (values, torch.tensor([2, 0, 1, 2]), rows, 2))
        assert torch.ops.embtable.bucket_ids(values, torch.tensor([2, 0, 1, 2]), rows, 2)[0].dtype == torch.int64


@pytest.mark.parametrize("optimizer", sorted(HPARAMS))
@pytest.mark.parametrize("pooling", [fref.POOL_NONE, fref.POOL_SUM, fref.POOL_MEAN])
@pytest.mark.parametrize("freq", [False, True])
def test_fused_update_rows_matches_reference(optimizer, pooling, freq):
    V, D, N = 50, 7, 60
    g = torch.Generator().manual_seed(optimizer * 10 + pooling)
    weight = torch.randn(V, D, generator=g)
    state = _state(optimizer, V, D)
    weight_ref, state_ref = weight.clone(), [s.clone() for s in state]
    offsets = torch.tensor([0, 10, 10, 35, N])
    for step in range(4):
        ids = (V * torch.rand(N, generator=g) ** 3).long()
        rows = N if pooling == fref.POOL_NONE else offsets.numel() - 1
        grad = torch.randn(rows, D, generator=g)
        psw = torch.rand(N, generator=g) if pooling != fref.POOL_MEAN else None
        hparams = list(HPARAMS[optimizer])
        if optimizer == fref.OPT_ADAM:
            hparams[7] = step + 1
        args = (ids, offsets, grad, psw, pooling, 3, freq, optimizer, hparams)
        torch.ops.embtable.fused_update_rows(weight, state, *args)
        fref.fused_update_rows(weight_ref, state_ref, *args)
    torch.testing.assert_close(weight, weight_ref, rtol=1e-6, atol=1e-6)
    for got, want in zip(state, state_ref):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_fused_update_rows_touches_only_batch_rows():
    weight = torch.randn(20, 4)
    before = weight.clone()
    state = _state(fref.OPT_ADAM, 20, 4)
    ids = torch.tensor([3, 5, 3, 7])
    torch.ops.embtable.fused_update_rows(
        weight, state, ids, torch.empty(0, dtype=torch.long), torch.randn(4, 4), None,
        fref.POOL_NONE, 7, False, fref.OPT_ADAM, HPARAMS[fref.OPT_ADAM],
    )
    changed = (weight != before).any(1).nonzero().flatten().tolist()
    assert changed == [3, 5]  # 7 is the padding row
    assert state[2].tolist()[3] == 1 and state[2].tolist()[5] == 1 and int(state[2].sum()) == 2


def test_opcheck_pool_bags():
    weight = torch.randn(10, 3)
    ids, offsets = torch.tensor([1, 2, 2, 9]), torch.tensor([0, 1, 4])
    for pooling, psw in ((ops.POOL_SUM, torch.rand(4)), (ops.POOL_MEAN, None), (ops.POOL_MAX, None)):
        torch.library.opcheck(torch.ops.embtable.pool_bags.default, (weight, ids, offsets, psw, pooling, 2))


@pytest.mark.parametrize("optimizer", sorted(HPARAMS))
def test_opcheck_fused_update_rows(optimizer):
    weight = torch.randn(10, 3)
    args = (
        weight, _state(optimizer, 10, 3), torch.tensor([1, 2, 2, 9]), torch.tensor([0, 1, 4]),
        torch.randn(2, 3), None, fref.POOL_SUM, 2, True, optimizer, HPARAMS[optimizer],
    )
    torch.library.opcheck(torch.ops.embtable.fused_update_rows.default, args)


def test_missing_extension_warns_once_and_falls_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "embtable._C", None)  # makes `import embtable._C` fail
    monkeypatch.setitem(_compiled._STATE, "loaded", None)
    monkeypatch.setitem(_compiled._STATE, "warned", False)
    with pytest.warns(UserWarning, match="pure-PyTorch reference kernels"):
        assert not _compiled.extension_available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monkeypatch.setitem(_compiled._STATE, "loaded", None)
        assert not _compiled.extension_available()
        weight = torch.arange(6.0).reshape(3, 2)
        out, _ = ops.pool_bags(weight, torch.tensor([0, 2]), torch.tensor([0, 2]), None, ops.POOL_SUM, -1)
    assert out.tolist() == [[4.0, 6.0]]


def test_embtable_no_ext_forces_reference():
    code = (
        "import warnings; warnings.simplefilter('error'); import embtable.ops as o; "
        "print(o.extension_available())"
    )
    env = {**os.environ, "EMBTABLE_NO_EXT": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
