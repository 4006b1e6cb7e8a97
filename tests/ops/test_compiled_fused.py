"""The compiled fused update and row gather against their pure-PyTorch twins.

Covers what tests/ops/test_compiled.py does not: the row sizes compiled as constants
(32 / 64 / 128), compressed optimizer state (bfloat16 and int8_rowwise codes), independence
from the thread count, and ``embtable::gather_rows``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embtable import ops
from embtable.ops import _fused_reference as fref

pytestmark = pytest.mark.skipif(not ops.extension_available(), reason="embtable._C is not built")

HPARAMS = {
    "sgd": (fref.OPT_SGD, [0.1, 0.01, 1, 0.9, 1]),
    "sgd_plain": (fref.OPT_SGD, [0.1, 0.0, 0, 0.0, 0]),
    "adagrad": (fref.OPT_ADAGRAD, [0.1, 0.01, 2, 1e-8]),
    "rowwise": (fref.OPT_ROWWISE_ADAGRAD, [0.1, 0.01, 1, 1e-8]),
    "adam": (fref.OPT_ADAM, [0.01, 0.01, 2, 0.9, 0.999, 1e-8, 0, 0]),
    "adam_l2_table": (fref.OPT_ADAM, [0.01, 0.02, 1, 0.8, 0.99, 1e-6, 1, 0]),
}


def _moment(V: int, D: int, kind: str, signed: bool, g: torch.Generator) -> list[torch.Tensor]:
    """A non-trivial moment ([V, D]) stored as ``kind`` (one tensor, or codes + scales)."""
    values = torch.randn(V, D, generator=g) * 0.1
    if not signed:
        values = values.abs()
    values[: V // 4] = 0.0  # some rows never touched before
    if kind == "int8_rowwise":
        return list(fref.encode_rows(values, signed))
    return [values.to(getattr(torch, kind))]


def _state(name: str, V: int, D: int, kind: str, g: torch.Generator) -> list[torch.Tensor]:
    optimizer, hparams = HPARAMS[name]
    if optimizer == fref.OPT_SGD:
        return _moment(V, D, kind, True, g) if hparams[3] != 0 else []
    if optimizer == fref.OPT_ADAGRAD:
        return _moment(V, D, kind, False, g)
    if optimizer == fref.OPT_ROWWISE_ADAGRAD:
        return [torch.rand(V, generator=g)]
    steps = torch.randint(0, 5, (V,), generator=g)
    return [*_moment(V, D, kind, True, g), *_moment(V, D, kind, False, g), steps]


def _run(name, kind, D, pooling, freq, weighted, steps=3, seed=0, threads=None, compiled=True):
    """Weight and state after ``steps`` fused updates on one kernel path."""
    V, N = 40, 90
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(V, D, generator=g)
    state = _state(name, V, D, kind, g)
    optimizer, hparams = HPARAMS[name]
    offsets = torch.tensor([0, 20, 20, 51, 70, N])
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for step in range(steps):
            ids = (V * torch.rand(N, generator=g) ** 2).long()  # duplicates, and padding row 3
            rows = N if pooling == fref.POOL_NONE else offsets.numel() - 1
            grad = torch.randn(rows, D, generator=g)
            psw = torch.rand(N, generator=g) if weighted else None
            params = list(hparams)
            if optimizer == fref.OPT_ADAM:
                params[7] = step + 1
            args = (ids, offsets, grad, psw, pooling, 3, freq, optimizer, params)
            if compiled:
                torch.ops.embtable.fused_update_rows(weight, state, *args)
            else:
                fref.fused_update_rows(weight, state, *args)
    finally:
        torch.set_num_threads(previous)
    return weight, state


@pytest.mark.parametrize("name", sorted(HPARAMS))
@pytest.mark.parametrize("D", [32, 64, 128, 5])
@pytest.mark.parametrize(
    ("pooling", "freq", "weighted"),
    [(fref.POOL_NONE, False, False), (fref.POOL_NONE, True, True), (fref.POOL_SUM, False, False),
     (fref.POOL_SUM, True, True), (fref.POOL_MEAN, False, False)],
)
def test_float32_state_matches_reference_for_every_row_size(name, D, pooling, freq, weighted):
    weight, state = _run(name, "float32", D, pooling, freq, weighted)
    weight_ref, state_ref = _run(name, "float32", D, pooling, freq, weighted, compiled=False)
    torch.testing.assert_close(weight, weight_ref, rtol=1e-6, atol=1e-6)
    for got, want in zip(state, state_ref):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam", "adam_l2_table"])
@pytest.mark.parametrize("D", [64, 6])
@pytest.mark.parametrize("pooling", [fref.POOL_NONE, fref.POOL_SUM])
def test_bfloat16_state_matches_reference(name, D, pooling):
    weight, state = _run(name, "bfloat16", D, pooling, False, pooling == fref.POOL_SUM)
    weight_ref, state_ref = _run(name, "bfloat16", D, pooling, False, pooling == fref.POOL_SUM, compiled=False)
    torch.testing.assert_close(weight, weight_ref, rtol=1e-5, atol=1e-6)
    for got, want in zip(state, state_ref):
        assert got.dtype == want.dtype
        if got.dtype == torch.bfloat16:  # a float32 difference of an ulp may round either way
            assert (got != want).float().mean() < 0.01
            torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-6)
        else:
            assert torch.equal(got, want)


@pytest.mark.parametrize("name", ["sgd", "adagrad", "adam", "adam_l2_table"])
@pytest.mark.parametrize("D", [128, 7])
@pytest.mark.parametrize("pooling", [fref.POOL_NONE, fref.POOL_MEAN])
def test_int8_rowwise_state_matches_reference(name, D, pooling):
    weight, state = _run(name, "int8_rowwise", D, pooling, True, False)
    weight_ref, state_ref = _run(name, "int8_rowwise", D, pooling, True, False, compiled=False)
    # The moments are equal up to float32 rounding; a code may flip at a rounding boundary.
    torch.testing.assert_close(weight, weight_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(state, state_ref):
        assert got.dtype == want.dtype
        if got.dtype in (torch.int8, torch.uint8):
            difference = (got.int() - want.int()).abs()
            assert int(difference.max()) <= 1 and float((difference > 0).float().mean()) < 0.01
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["rowwise", "adam", "sgd"])
@pytest.mark.parametrize("kind", ["float32", "int8_rowwise"])
def test_result_does_not_depend_on_thread_count(name, kind):
    one = _run(name, kind, 64, fref.POOL_SUM, True, True, threads=1)
    two = _run(name, kind, 64, fref.POOL_SUM, True, True, threads=2)
    assert torch.equal(one[0], two[0])
    assert all(torch.equal(a, b) for a, b in zip(one[1], two[1]))


@pytest.mark.parametrize(
    ("V", "n", "pooling", "weighted"),
    [
        (3000, 600, fref.POOL_SUM, False),  # 2 radix passes, 32-bit keys (12 + 7 bits)
        (3000, 600, fref.POOL_NONE, True),  # 2 passes, 32-bit keys, source = position
        (2**21 + 5, 2**11 + 1, fref.POOL_NONE, False),  # 2 passes, 22 + 12 bits: 64-bit keys
        (2**22 + 5, 4000, fref.POOL_SUM, False),  # 3 passes, 32-bit keys (23 + 8 bits)
        (2**22 + 5, 2**9 + 1, fref.POOL_MEAN, False),  # 3 passes, 23 + 10 bits: 64-bit keys
    ],
)
def test_radix_sort_key_widths_and_pass_counts_match_reference(V, n, pooling, weighted):
    """The sort of large tables: 2 and 3 radix passes, keys of 32 bits (id and source fit
    together) and of 64 bits; skewed ids, so rows repeat (each must be one run of keys)."""
    g = torch.Generator().manual_seed(V + n)
    ids = (V * torch.rand(n, generator=g) ** 4).long().clamp_max(V - 1)
    ids[::7] = 3  # padding
    offsets = torch.cat([torch.tensor([0]), torch.sort(torch.randint(0, n + 1, (n // 16,), generator=g))[0],
                         torch.tensor([n])]) if pooling != fref.POOL_NONE else torch.empty(0, dtype=torch.long)
    rows = n if pooling == fref.POOL_NONE else offsets.numel() - 1
    grad = torch.randn(rows, 1, generator=g)
    psw = torch.rand(n, generator=g) if weighted else None
    weight, state = torch.randn(V, 1, generator=g), torch.rand(V, generator=g)
    before, expected, expected_state = weight.clone(), weight.clone(), state.clone()
    # row-wise Adagrad: a row whose contributions were split over two runs would be updated
    # twice (its state too), unlike the reference
    args = (ids, offsets, grad, psw, pooling, 3, False, fref.OPT_ROWWISE_ADAGRAD, HPARAMS["rowwise"][1])
    torch.ops.embtable.fused_update_rows(weight, [state], *args)
    fref.fused_update_rows(expected, [expected_state], *args)
    torch.testing.assert_close(weight, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(state, expected_state, rtol=1e-6, atol=1e-6)
    assert (weight != before).sum() > 10  # (rows were updated)


def test_mismatched_state_is_refused_before_any_write():
    weight = torch.randn(10, 4)
    before = weight.clone()
    ids, grad = torch.tensor([1, 2]), torch.randn(2, 4)
    no_offsets = torch.empty(0, dtype=torch.long)
    _, hparams = HPARAMS["adam"]
    wrong_sign = [torch.zeros(10, 4, dtype=torch.uint8), torch.zeros(10),
                  torch.zeros(10, 4, dtype=torch.uint8), torch.zeros(10), torch.zeros(10, dtype=torch.long)]
    with pytest.raises(RuntimeError, match="exp_avg codes must be int8"):
        torch.ops.embtable.fused_update_rows(weight, wrong_sign, ids, no_offsets, grad, None, 0, -1, False,
                                             fref.OPT_ADAM, hparams)
    no_scale = [torch.zeros(10, 4, dtype=torch.int8)]
    with pytest.raises(RuntimeError, match="needs its scale tensor"):
        torch.ops.embtable.fused_update_rows(weight, no_scale, ids, no_offsets, grad, None, 0, -1, False,
                                             fref.OPT_SGD, HPARAMS["sgd"][1])
    with pytest.raises(RuntimeError, match="invalid bag offsets"):  # ids outside every bag
        torch.ops.embtable.fused_update_rows(weight, [], ids, torch.tensor([0, 1]), grad[:1], None,
                                             fref.POOL_SUM, -1, False, fref.OPT_SGD, HPARAMS["sgd_plain"][1])
    with pytest.raises(RuntimeError, match="outside the table of 10 rows"):
        torch.ops.embtable.fused_update_rows(weight, [], torch.tensor([1, 10]), no_offsets, grad, None, 0, -1,
                                             False, fref.OPT_SGD, HPARAMS["sgd_plain"][1])
    assert torch.equal(weight, before)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 50), st.sampled_from([1, 3, 16, 32, 64, 128, 256]), st.integers(0, 200),
    st.sampled_from([torch.int32, torch.int64]), st.integers(0, 2**31),
)
def test_gather_rows_equals_index_select(V, D, n, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(V, D, generator=g)
    ids = torch.randint(0, V, (n,), generator=g, dtype=dtype)
    got = torch.ops.embtable.gather_rows(weight, ids)
    assert torch.equal(got, weight.index_select(0, ids))
    assert torch.equal(ops.gather_rows(weight, ids), got)


def test_gather_rows_bad_ids_raise_index_error_and_opcheck():
    weight = torch.randn(6, 4)
    for bad in (torch.tensor([0, 6]), torch.tensor([-1, 2])):
        with pytest.raises(IndexError, match="outside the table of 6 rows"):
            torch.ops.embtable.gather_rows(weight, bad)
        with pytest.raises(IndexError, match="outside the table of 6 rows"):  # a fixed width
            torch.ops.embtable.gather_rows(torch.randn(6, 64), bad)
    torch.library.opcheck(torch.ops.embtable.gather_rows.default, (weight, torch.tensor([5, 0, 5])))
    # Other dtypes keep the reference path (index_select).
    half = weight.half()
    assert torch.equal(ops.gather_rows(half, torch.tensor([1, 1])), half[[1, 1]])
