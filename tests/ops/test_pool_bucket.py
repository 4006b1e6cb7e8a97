"""``embtable::pool_bucket`` (bucket_ids and pool_bags_grouped in one pass) against its reference
twin, opcheck, its errors, and the collection forward that runs it without autograd."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import embtable
from embtable import ops
from embtable.ops import _compiled, _reference

pytestmark = pytest.mark.skipif(not ops.extension_available(), reason="embtable._C is not built")


def _bucket(num_features, batch, dim, seed, max_len=4):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 30, (num_features,), generator=g)
    starts = torch.cumsum(sizes, 0) - sizes
    rows = torch.stack([starts, sizes], 1)
    lengths = torch.randint(0, max_len, (num_features * batch,), generator=g)
    counts = lengths.view(num_features, batch).sum(1) if batch else torch.zeros(num_features, dtype=torch.long)
    values = torch.cat([torch.randint(0, int(n), (int(c),), generator=g) for n, c in zip(sizes, counts)])
    weight = torch.randn(int(sizes.sum()), dim, generator=g)
    return weight, values, lengths, rows, sizes, counts


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 5),
    st.integers(0, 6),
    st.sampled_from([16, 64, 256, 5]),  # 5: no compiled row size (the two-pass fallback)
    st.sampled_from([ops.POOL_SUM, ops.POOL_MEAN]),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.integers(0, 2**31),
)
def test_pool_bucket_matches_reference(num_features, batch, dim, pooling, weighted, padded, int32, seed):
    weight, values, lengths, rows, sizes, counts = _bucket(num_features, batch, dim, seed, max_len=40)
    psw = torch.rand(values.numel()) if weighted else None
    pad = int(rows[-1, 0]) if padded else -1  # the first row of the last feature's table
    dtype = torch.int32 if int32 else torch.int64
    got = torch.ops.embtable.pool_bucket(weight, values.to(dtype), lengths.to(dtype), rows, psw, pooling, pad, batch)
    want = _reference.pool_bucket(weight, values, lengths, rows, psw, pooling, pad, batch)
    assert got.shape == (batch, num_features * dim)
    # (the reference sums a bag's up to 39 rows in another order: float32 rounding apart)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the two ops it fuses, compiled, give the same bits
    ids, offsets = torch.ops.embtable.bucket_ids(values, lengths, rows, batch)
    assert torch.equal(got, torch.ops.embtable.pool_bags_grouped(weight, ids, offsets, psw, pooling, pad, num_features))
    if values.numel():
        bad = values.clone()
        f = int(torch.nonzero(counts)[0])
        bad[int(counts[:f].sum())] = int(sizes[f])  # one past the end of its table
        with pytest.raises(RuntimeError, match="embtable::(pool_bucket|bucket_ids): an id lies outside its table"):
            torch.ops.embtable.pool_bucket(weight, bad, lengths, rows, psw, pooling, pad, batch)
        with pytest.raises(IndexError):
            _reference.pool_bucket(weight, bad, lengths, rows, psw, pooling, pad, batch)


def test_pool_bucket_checks_lengths_and_rows_before_reading():
    weight, values, lengths, rows, *_ = _bucket(3, 4, 16, 0)
    args = (None, ops.POOL_SUM, -1, 4)
    too_long = lengths.clone()
    too_long[0] = values.numel() + 1
    with pytest.raises(RuntimeError, match=r"embtable::pool_bucket: lengths\[0\] = .* runs past"):
        torch.ops.embtable.pool_bucket(weight, values, too_long, rows, *args)
    with pytest.raises(RuntimeError, match="embtable::pool_bucket: lengths .* do not match"):
        torch.ops.embtable.pool_bucket(weight, torch.cat([values, values[:1]]), lengths, rows, *args)
    with pytest.raises(RuntimeError, match="embtable::pool_bucket: expected 3 x 4 lengths"):
        torch.ops.embtable.pool_bucket(weight, values, lengths[:-1], rows, *args)
    outside = rows.clone()
    outside[-1, 1] += 1  # the last table would run past the grouped weight
    with pytest.raises(RuntimeError, match="embtable::pool_bucket: feature 2's rows"):
        torch.ops.embtable.pool_bucket(weight, values, lengths, outside, *args)
    with pytest.raises(RuntimeError, match="embtable::pool_bucket: feature 2's rows"):  # D = 5: two passes
        torch.ops.embtable.pool_bucket(weight[:, :5].contiguous(), values, lengths, outside, *args)
    with pytest.raises(RuntimeError, match="pooling must be 1 .sum. or 2 .mean."):
        torch.ops.embtable.pool_bucket(weight, values, lengths, rows, None, ops.POOL_MAX, -1, 4)


def test_opcheck_pool_bucket():
    weight, values, lengths, rows, *_ = _bucket(3, 4, 16, 1)
    for pooling, psw, pad in ((ops.POOL_SUM, torch.rand(values.numel()), 2), (ops.POOL_MEAN, None, -1)):
        torch.library.opcheck(torch.ops.embtable.pool_bucket.default, (weight, values, lengths, rows, psw, pooling, pad, 4))


def test_dispatcher_falls_back_to_reference_off_float32():
    weight, values, lengths, rows, *_ = _bucket(2, 3, 16, 2)
    got = _compiled.pool_bucket(weight.double(), values, lengths, rows, None, ops.POOL_MEAN, -1, 3)
    want = _reference.pool_bucket(weight.double(), values, lengths, rows, None, ops.POOL_MEAN, -1, 3)
    assert got.dtype == torch.float64 and torch.equal(got, want)


def _collection(weighted=False, pooling="sum"):
    tables = [
        embtable.TableConfig(name=f"t{t}", num_embeddings=n, embedding_dim=16, feature_names=[f"f{t}"], pooling=pooling)
        for t, n in enumerate((7, 50, 300))
    ]
    cls = embtable.EmbeddingBagCollection
    return cls(tables, is_weighted=True) if weighted else cls(tables)


@pytest.mark.parametrize("weighted", [False, True])
def test_collection_forward_without_autograd_uses_pool_bucket(monkeypatch, weighted):
    torch.manual_seed(0)
    module = _collection(weighted=weighted)
    lengths = torch.randint(0, 5, (3 * 8,))
    counts = lengths.view(3, 8).sum(1)
    values = torch.cat([torch.randint(0, n, (int(c),)) for n, c in zip((7, 50, 300), counts)])
    weights = torch.rand(values.numel()) if weighted else None
    features = embtable.KeyedJagged(["f0", "f1", "f2"], values, lengths, weights=weights)
    with torch.enable_grad():
        want = module(features).values()  # the autograd path: bucket_ids + pool_features
    calls = []
    fused = _compiled.pool_bucket
    monkeypatch.setattr(_compiled, "pool_bucket", lambda *a: calls.append(1) or fused(*a))
    with torch.no_grad():
        got = module(features).values()
    assert calls == [1]
    # torch's loop over the tables as the oracle
    for t, key in enumerate(["f0", "f1", "f2"]):
        feature = features[key]
        ref = torch.nn.functional.embedding_bag(
            feature.values, module.table_weight(f"t{t}"), feature.offsets, mode="sum",
            per_sample_weights=feature.weights if weighted else None, include_last_offset=True,
        )
        torch.testing.assert_close(got[:, 16 * t : 16 * (t + 1)], ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(got, want.detach())


def test_collection_bad_id_still_names_the_feature_without_autograd():
    module = _collection()
    features = embtable.KeyedJagged(["f0", "f1", "f2"], torch.tensor([1, 50, 2]), torch.tensor([1, 0, 1, 0, 1, 0]))
    with torch.no_grad(), pytest.raises(IndexError) as fused_error:
        module(features)
    with pytest.raises(IndexError) as autograd_error:
        module(features)
    assert str(fused_error.value) == str(autograd_error.value)
    assert "f1" in str(fused_error.value)
