"""The column shards' compiled row-wise Adagrad ops (``embtable::rowstat_*``) against their
pure-PyTorch oracles in :mod:`embtable.distributed._rowstat`, opcheck, and the fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embtable import ops
from embtable.distributed import _rowstat
from embtable.ops import extension_available

pytestmark = pytest.mark.skipif(
    not extension_available() or not hasattr(torch.ops.embtable, "rowstat_square"),
    reason="embtable._C not built",
)


def _case(seed: int, rows: int, dim: int, count: int):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, dim, generator=gen)
    accumulator = torch.rand(rows, generator=gen)
    ids = torch.unique(torch.randint(0, rows, (count,), generator=gen))
    grad = torch.randn(ids.numel(), dim, generator=gen) * 10.0 ** torch.randint(-3, 3, (1,), generator=gen)
    return weight, accumulator, ids, grad


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    dim=st.sampled_from([1, 3, 8, 13, 32, 64]),
    count=st.integers(0, 40),
    decay=st.sampled_from([(0.0, 0), (0.01, 1), (0.01, 2), (0.3, 1)]),
)
def test_square_within_a_few_ulp_of_the_oracle(seed, dim, count, decay) -> None:
    weight, _, ids, grad = _case(seed, 30, dim, count)
    got = _rowstat.row_square(weight, ids, grad, *decay)
    want = _rowstat.reference_row_square(weight, ids, grad, *decay)
    # a sum of dim non-negative terms in another order: |error| <= 2 (dim - 1) ulp of the sum
    torch.testing.assert_close(got, want, rtol=2 * dim * 2.0**-24, atol=0)


def _float32_steps(weight, accumulator, ids, grad, square, full_dim, lr, wd, mode, eps):
    """The update in numpy float32 scalars, one operation at a time (``np.sqrt`` is
    correctly rounded): the exact float32 oracle."""
    f = np.float32
    w, a, g, sq = weight.numpy().copy(), accumulator.numpy().copy(), grad.numpy(), square.numpy()
    for i, r in enumerate(ids.tolist()):
        total = a[r] + sq[i] / f(full_dim)
        a[r] = total
        m = f(lr) / (np.sqrt(total) + f(eps))
        c = f(1.0) - m * f(wd) if mode == 1 else (f(1.0) - f(lr) * f(wd) if mode == 2 else f(1.0))
        w[r] = c * w[r] - m * g[i]
    return torch.from_numpy(w), torch.from_numpy(a)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    dim=st.sampled_from([1, 3, 8, 13, 32, 64]),
    full=st.integers(0, 64),
    count=st.integers(0, 40),
    decay=st.sampled_from([(0.0, 0), (0.01, 1), (0.01, 2), (0.3, 1), (0.3, 2)]),
    eps=st.sampled_from([1e-8, 1e-3]),
)
def test_update_against_the_oracles(seed, dim, full, count, decay, eps) -> None:
    weight, accumulator, ids, grad = _case(seed, 30, dim, count)
    # the square as the other shards' sum would make it: any non-negative float32
    square = _rowstat.reference_row_square(weight, ids, grad, *decay) * 1.7 + 0.25
    tensors = [(weight.clone(), accumulator.clone()) for _ in range(2)]
    args = (ids, grad, square, dim + full, 0.05, decay[0], decay[1], eps)
    torch.ops.embtable.rowstat_rowwise_adagrad_(tensors[0][0], tensors[0][1], *args)
    _rowstat.reference_rowwise_adagrad_rows(tensors[1][0], tensors[1][1], *args)
    # bit for bit with the float32 operations one at a time
    exact = _float32_steps(weight, accumulator, *args)
    assert torch.equal(tensors[0][0], exact[0]) and torch.equal(tensors[0][1], exact[1])
    # the torch formula: the same accumulator; torch's AVX-512 sqrt is not always correctly
    # rounded (1 ulp), so the multiplier m, and with it the new row, may differ by 1 ulp of m
    assert torch.equal(tensors[0][1], tensors[1][1])
    total = tensors[0][1].index_select(0, ids)
    m = (0.05 / (total.sqrt() + eps)).unsqueeze(1)
    w = weight.index_select(0, ids)
    bound = 2.0**-22 * (m * (grad.abs() + decay[0] * w.abs())) + 2.0**-23 * w.abs()
    diff = (tensors[0][0] - tensors[1][0]).index_select(0, ids).abs()
    assert bool((diff <= bound).all())
    untouched = ~torch.isin(torch.arange(30), ids)
    assert torch.equal(tensors[0][0][untouched], weight[untouched])
    assert torch.equal(tensors[0][1][untouched], accumulator[untouched])


def test_rowwise_adagrad_hand_computed() -> None:
    weight = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    accumulator = torch.tensor([1.0, 0.0])
    rows, grad = torch.tensor([1]), torch.tensor([[0.5, -1.0]])
    square = torch.tensor([12.0])  # another shard's columns add 10.75 to this shard's 1.25
    _rowstat.rowwise_adagrad_rows(weight, accumulator, rows, grad, square, 4, 0.5, 0.0, 0, 0.0)
    assert accumulator.tolist() == [1.0, 3.0]  # 12 / 4
    m = 0.5 / 3.0**0.5
    torch.testing.assert_close(weight, torch.tensor([[1.0, 2.0], [3.0 - m * 0.5, 4.0 + m]]))


def test_opcheck() -> None:
    weight, accumulator, ids, grad = _case(3, 12, 8, 9)
    square = _rowstat.reference_row_square(weight, ids, grad, 0.01, 1)
    _rowstat.row_square(weight, ids, grad, 0.01, 1)  # registers the fakes
    torch.library.opcheck(torch.ops.embtable.rowstat_square, (weight, ids, grad, 0.01, 1))
    torch.library.opcheck(
        torch.ops.embtable.rowstat_rowwise_adagrad_,
        (weight, accumulator, ids, grad, square, 16, 0.1, 0.01, 1, 1e-8),
    )


def test_bad_rows_raise_before_any_write() -> None:
    weight, accumulator = torch.zeros(4, 2), torch.zeros(4)
    rows, grad = torch.tensor([1, 4]), torch.ones(2, 2)
    with pytest.raises(IndexError, match="row 4 at position 1"):
        _rowstat.row_square(weight, rows, grad, 0.0, 0)
    with pytest.raises(IndexError, match="outside the table's 4 rows"):
        _rowstat.rowwise_adagrad_rows(weight, accumulator, rows, grad, torch.ones(2), 2, 0.1, 0.0, 0, 0.0)
    assert not weight.any() and not accumulator.any()


def test_fallback_runs_the_oracle(monkeypatch) -> None:
    weight, accumulator, ids, grad = _case(5, 20, 6, 15)
    square = torch.rand(ids.numel())
    want = (weight.clone(), accumulator.clone())
    _rowstat.reference_rowwise_adagrad_rows(*want, ids, grad, square, 12, 0.1, 0.0, 0, 1e-8)
    monkeypatch.setattr(_rowstat, "extension_available", lambda: False)
    calls = []
    monkeypatch.setattr(torch.ops.embtable, "rowstat_rowwise_adagrad_", lambda *a: calls.append(a), raising=False)
    _rowstat.rowwise_adagrad_rows(weight, accumulator, ids, grad, square, 12, 0.1, 0.0, 0, 1e-8)
    assert not calls
    assert torch.equal(weight, want[0]) and torch.equal(accumulator, want[1])
    # non-float32 tables take the oracle too
    double = weight.double()
    got = _rowstat.row_square(double, ids, grad.double(), 0.0, 0)
    assert got.dtype == torch.float32


@settings(max_examples=20, deadline=None)
@given(ids=st.lists(st.integers(0, 49), max_size=30), extra=st.integers(0, 2000))
def test_distinct_rows_equal_torch_unique(ids, extra) -> None:
    tensor = torch.tensor(ids, dtype=torch.int64)
    rows, inverse = _rowstat.distinct_rows(tensor, 50 + extra)  # compiled or the sort
    want = torch.unique(tensor, sorted=True, return_inverse=True)
    assert torch.equal(rows, want[0]) and torch.equal(inverse, want[1])
    compiled = torch.ops.embtable.rowstat_distinct(tensor, 50 + extra)
    assert torch.equal(compiled[0], want[0]) and torch.equal(compiled[1], want[1])
    reference = _rowstat.reference_distinct_rows(tensor, 50)
    assert torch.equal(reference[0], want[0]) and torch.equal(reference[1], want[1])


def test_distinct_rows_opcheck_and_bad_id() -> None:
    ids = torch.tensor([3, 1, 3, 7])
    _rowstat.distinct_rows(ids, 8)  # registers the fakes
    torch.library.opcheck(torch.ops.embtable.rowstat_distinct, (ids, 8))
    with pytest.raises(IndexError, match="id 7 at position 3"):
        torch.ops.embtable.rowstat_distinct(ids, 7)


def _pure_bag_rows(ids, offsets, grad, weights, num_rows, pooling, pad):
    """The pure-PyTorch oracle: torch.unique + the reference pool_bags_backward."""
    from embtable.ops import _reference

    dense = _reference.pool_bags_backward(
        grad, ids, offsets, weights, torch.empty(0, dtype=torch.int64), num_rows, pooling, pad,
        False, False,
    )
    rows = torch.unique(ids[ids != pad]) if pad >= 0 else torch.unique(ids)
    return rows, dense[rows]


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    sizes=st.lists(st.integers(0, 6), min_size=0, max_size=12),
    dim=st.sampled_from([1, 5, 8, 32]),
    pooling=st.sampled_from([1, 2]),
    weighted=st.booleans(),
    pad=st.sampled_from([-1, 0, 3]),
)
def test_bag_rows_equal_the_oracles(seed, sizes, dim, pooling, weighted, pad) -> None:
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.tensor([0, *sizes]).cumsum(0)
    ids = torch.randint(0, 9, (int(offsets[-1]),), generator=gen)
    grad = torch.randn(len(sizes), dim, generator=gen)
    weights = torch.rand(ids.numel(), generator=gen) if weighted else None
    got = torch.ops.embtable.rowstat_reduce(ids, offsets, grad, weights, 9, pooling, pad)
    # the compiled pool_bags_backward (the path before) may use FMAs: 1 ulp per addition
    rows, compact = torch.unique(ids, return_inverse=True)
    where = int((rows == pad).nonzero().flatten()[0]) if bool((rows == pad).any()) else -1
    before = ops.pool_bags_backward(
        grad, compact, offsets, weights, torch.empty(0, dtype=torch.int64), rows.numel(),
        pooling, where, False, False,
    )[rows != pad]
    torch.testing.assert_close(got[1], before, rtol=1e-6, atol=1e-6)
    for want in (
        _rowstat.reference_bag_rows(ids, offsets, grad, weights, 9, pooling, pad),
        _pure_bag_rows(ids, offsets, grad, weights, 9, pooling, pad),
    ):
        assert torch.equal(got[0], want[0])
        torch.testing.assert_close(got[1], want[1], rtol=0, atol=0)


def test_bag_rows_opcheck_and_errors() -> None:
    ids, offsets, grad = torch.tensor([3, 1, 3, 7]), torch.tensor([0, 1, 4]), torch.randn(2, 4)
    _rowstat.bag_rows(ids, offsets, grad, None, 8, 2, 1)  # registers the fakes
    torch.library.opcheck(torch.ops.embtable.rowstat_reduce, (ids, offsets, grad, None, 8, 2, 1))
    with pytest.raises(IndexError, match="id 7 at position 3"):
        _rowstat.bag_rows(ids, offsets, grad, None, 7, 1, -1)
    with pytest.raises(RuntimeError, match="offsets must run from 0 to 4"):
        torch.ops.embtable.rowstat_reduce(ids, torch.tensor([0, 1, 3]), grad, None, 8, 1, -1)
    for no_bags in (torch.tensor([0]), torch.empty(0, dtype=torch.long)):  # ids in no bag
        with pytest.raises(RuntimeError, match="offsets must run from 0 to 4"):
            torch.ops.embtable.rowstat_reduce(ids, no_bags, torch.randn(0, 4), None, 8, 1, -1)
