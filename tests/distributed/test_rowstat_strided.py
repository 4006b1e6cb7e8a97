"""``embtable::rowstat_reduce_strided`` (the column shards' gradient reduction read in place from
an example-major gradient) against its oracles: the pure-PyTorch
:func:`embtable.distributed._rowstat.reference_bag_rows` on the feature-major copy, and
``embtable::rowstat_reduce`` on that copy (bit for bit; since the s6 review it runs the same
kernel on a contiguous ``[1, bags, D]``: the strided reads against the contiguous ones);
opcheck; errors; the fallback."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embtable.distributed import _rowstat
from embtable.ops import extension_available

pytestmark = pytest.mark.skipif(
    not extension_available() or not hasattr(torch.ops.embtable, "rowstat_reduce_strided"),
    reason="embtable._C not built",
)


def _example_major(seed: int, features: int, bags: int, dim: int, rows: int, longest: int):
    """A bucket of ``features`` x ``bags`` bags (feature-major offsets) and its example-major
    ``[bags, features * dim]`` gradient."""
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(0, longest + 1, (features * bags,), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), sizes.cumsum(0)])
    ids = torch.randint(0, rows, (int(offsets[-1]),), generator=gen)
    grad = torch.randn(bags, features * dim, generator=gen)
    return ids, offsets, grad


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    features=st.integers(1, 4),
    bags=st.integers(0, 40),
    dim=st.sampled_from([1, 3, 8, 32, 64]),
    pooling=st.sampled_from([1, 2]),
    weighted=st.booleans(),
    pad=st.sampled_from([-1, 0, 5]),
)
def test_equals_the_oracles_bit_for_bit(seed, features, bags, dim, pooling, weighted, pad) -> None:
    rows = 11
    ids, offsets, grad = _example_major(seed, features, bags, dim, rows, 6)
    weights = torch.rand(ids.numel(), generator=torch.Generator().manual_seed(seed)) if weighted else None
    view = grad.view(bags, features, dim).transpose(0, 1)  # [F, nb, D], strides (D, F D, 1)
    got = torch.ops.embtable.rowstat_reduce_strided(ids, offsets, view, weights, rows, pooling, pad)
    copy = view.reshape(features * bags, dim)  # the feature-major copy the old path made
    for want in (
        _rowstat.reference_bag_rows(ids, offsets, copy, weights, rows, pooling, pad),
        torch.ops.embtable.rowstat_reduce(ids, offsets, copy, weights, rows, pooling, pad),
    ):
        assert torch.equal(got[0], want[0])
        assert torch.equal(got[1], want[1])
    # the same through bag_rows (3-D: in place; 2-D: the copy), and the fallback on the 3-D view
    assert torch.equal(_rowstat.bag_rows(ids, offsets, view, weights, rows, pooling, pad)[1], got[1])
    assert torch.equal(_rowstat.bag_rows(ids, offsets, copy, weights, rows, pooling, pad)[1], got[1])


def test_hand_computed_and_mean_with_padding() -> None:
    # 2 bags x 2 features, example-major [[1, 10], [2, 20]] (D = 1); bag k = f * 2 + b
    grad = torch.tensor([[1.0, 10.0], [2.0, 20.0]]).view(2, 2, 1).transpose(0, 1)
    ids, offsets = torch.tensor([0, 1, 1, 1, 3]), torch.tensor([0, 1, 2, 3, 5])
    rows, summed = torch.ops.embtable.rowstat_reduce_strided(ids, offsets, grad, None, 4, 1, -1)
    assert rows.tolist() == [0, 1, 3]
    assert summed.flatten().tolist() == [1.0, 32.0, 20.0]
    # mean, padding row 3: the last bag holds one non-padding id (1 / 1), row 3 is left out
    rows, summed = torch.ops.embtable.rowstat_reduce_strided(ids, offsets, grad, None, 4, 2, 3)
    assert rows.tolist() == [0, 1]
    assert summed.flatten().tolist() == [1.0, 32.0]


def test_opcheck_and_errors() -> None:
    ids, offsets = torch.tensor([3, 1, 3, 7]), torch.tensor([0, 1, 4])
    grad = torch.randn(1, 8).view(1, 2, 4).transpose(0, 1)  # [2, 1, 4], strided
    _rowstat.bag_rows(ids, offsets, grad, None, 8, 2, 1)  # registers the fakes
    torch.library.opcheck(
        torch.ops.embtable.rowstat_reduce_strided, (ids, offsets, grad, None, 8, 2, 1)
    )
    with pytest.raises(IndexError, match="id 7 at position 3"):
        torch.ops.embtable.rowstat_reduce_strided(ids, offsets, grad, None, 7, 1, -1)
    with pytest.raises(RuntimeError, match="offsets must hold 3 entries"):
        torch.ops.embtable.rowstat_reduce_strided(ids, torch.tensor([0, 4]), grad, None, 8, 1, -1)
    with pytest.raises(RuntimeError, match="offsets must run from 0 to 4"):
        torch.ops.embtable.rowstat_reduce_strided(ids, torch.tensor([0, 1, 3]), grad, None, 8, 1, -1)
    with pytest.raises(RuntimeError, match="must not decrease"):
        torch.ops.embtable.rowstat_reduce_strided(ids, torch.tensor([0, 5, 4]), grad, None, 8, 1, -1)
    with pytest.raises(RuntimeError, match=r"\[features, bags per feature, D\]"):
        torch.ops.embtable.rowstat_reduce_strided(ids, offsets, grad[0], None, 8, 1, -1)
    with pytest.raises(RuntimeError, match="pooling must be 1"):
        torch.ops.embtable.rowstat_reduce_strided(ids, offsets, grad, None, 8, 3, -1)
    with pytest.raises(RuntimeError, match="num_rows must be in"):
        torch.ops.embtable.rowstat_reduce_strided(ids, offsets, grad, None, 2**31, 1, -1)


def test_fallback_reads_the_view(monkeypatch) -> None:
    ids, offsets, grad = _example_major(3, 3, 5, 4, 9, 4)
    view = grad.view(5, 3, 4).transpose(0, 1)
    want = torch.ops.embtable.rowstat_reduce_strided(ids, offsets, view, None, 9, 1, -1)
    monkeypatch.setattr(_rowstat, "extension_available", lambda: False)
    got = _rowstat.bag_rows(ids, offsets, view, None, 9, 1, -1)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
