"""pool_bags / pool_bags_grouped at every row size with a compiled fixed-D path (16 .. 256,
issue 11) against the pure-PyTorch twins: sum, mean, weighted sum, padding, empty bags."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embtable import ops
from embtable.ops import _reference

pytestmark = pytest.mark.skipif(not ops.extension_available(), reason="embtable._C is not built")


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from([16, 32, 64, 128, 256]), st.sampled_from([ops.POOL_SUM, ops.POOL_MEAN]),
    st.booleans(), st.integers(1, 3), st.integers(0, 2**31),
)
def test_fixed_dims_match_reference(dim, pooling, weighted, num_features, seed):
    g = torch.Generator().manual_seed(seed)
    V, batch = 300, 7
    # bags of up to 70 ids: longer than the prefetch distances (24 and 48 ids ahead)
    lengths = torch.randint(0, 70, (num_features * batch,), generator=g)
    offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64)
    torch.cumsum(lengths, 0, out=offsets[1:])
    ids = torch.randint(0, V, (int(lengths.sum()),), generator=g)
    weight = torch.randn(V, dim, generator=g)
    psw = torch.rand(ids.numel(), generator=g) if weighted else None
    padding = int(ids[0]) if ids.numel() else -1
    if num_features == 1:
        got, _ = torch.ops.embtable.pool_bags(weight, ids, offsets, psw, pooling, padding)
        want, _ = _reference.pool_bags(weight, ids, offsets, psw, pooling, padding)
    else:
        got = torch.ops.embtable.pool_bags_grouped(weight, ids, offsets, psw, pooling, padding, num_features)
        want = _reference.pool_bags_grouped(weight, ids, offsets, psw, pooling, padding, num_features)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dim", [16, 256])
def test_fixed_dims_refuse_an_id_outside_the_table(dim):
    weight = torch.randn(5, dim)
    with pytest.raises(RuntimeError, match="an id lies outside the table of 5 rows"):
        torch.ops.embtable.pool_bags(weight, torch.tensor([1, 5]), torch.tensor([0, 2]), None, ops.POOL_SUM, -1)
