"""hash_ids, the hashing trick and QR embeddings against hand-computed / pure-Python oracles."""

from __future__ import annotations

import hashlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import embtable
from embtable.nn.hashed import (
    HashedEmbedding,
    HashedEmbeddingBag,
    QREmbedding,
    QREmbeddingBag,
    hash_ids,
    hash_rows,
    mix64,
)
from embtable.storage._slots_reference import MASK64

_MIX_CONSTANTS = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)


def _mix_py(x: int) -> int:
    """splitmix64's finalizer on Python ints (the oracle of mix64)."""
    z = x & MASK64
    z = ((z ^ (z >> 30)) * _MIX_CONSTANTS[0]) & MASK64
    z = ((z ^ (z >> 27)) * _MIX_CONSTANTS[1]) & MASK64
    return z ^ (z >> 31)


def _signed(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=20), st.integers(1, 10**9))
def test_mix64_and_hash_rows_match_python(ids, rows):
    t = torch.tensor(ids, dtype=torch.int64)
    assert mix64(t).tolist() == [_signed(_mix_py(x)) for x in ids]
    assert hash_rows(t, rows).tolist() == [_signed(_mix_py(x)) % rows for x in ids]


def test_hash_ids_is_blake2b():
    keys = ["user:42", "", "é"]
    want = [int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little", signed=True) for k in keys]
    assert hash_ids(keys).tolist() == want
    assert hash_ids("user:42").item() == want[0]
    with pytest.raises(TypeError, match="hash_ids: keys must be str or bytes, got int"):
        hash_ids([1])


def test_hashed_bag_equals_a_static_bag_on_hashed_rows():
    torch.manual_seed(0)
    hashed = HashedEmbeddingBag(13, 4, mode="mean")
    static = embtable.EmbeddingBag(13, 4, mode="mean", _weight=hashed.weight.detach().clone())
    ids = torch.tensor([10**15, -7, 3, 10**15])
    offsets = torch.tensor([0, 1])
    torch.testing.assert_close(hashed(ids, offsets), static(hash_rows(ids, 13), offsets))
    table = HashedEmbedding(13, 4)
    torch.testing.assert_close(table(ids), table.weight[hash_rows(ids, 13)])


@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
def test_qr_rows_and_combination(operation):
    torch.manual_seed(0)
    qr = QREmbedding(7, 5, 4, operation=operation)
    ids = torch.tensor([0, 1, 10**18, -(2**63)])
    r, q = qr.rows(ids)
    for x, ri, qi in zip(ids.tolist(), r.tolist(), q.tolist(), strict=True):
        h = _mix_py(x)  # unsigned
        assert (ri, qi) == (h % 7, (h // 7) % 5)
    a, b = qr.remainder.weight[r], qr.quotient.weight[q]
    want = {"mult": a * b, "add": a + b, "concat": torch.cat([a, b], 1)}[operation]
    torch.testing.assert_close(qr(ids), want)


def test_qr_bag_pools_combined_rows():
    torch.manual_seed(0)
    bags = QREmbeddingBag(7, 5, 4, mode="mean")
    ids = torch.tensor([1, 2, 3, 9])
    out = bags(ids, torch.tensor([0, 3]))
    rows = QREmbedding.forward(bags, ids)
    torch.testing.assert_close(out, torch.stack([rows[:3].mean(0), rows[3]]))
    torch.testing.assert_close(bags(ids.reshape(2, 2)), rows.reshape(2, 2, 4).mean(1))


def test_qr_trains_fused():
    qr = QREmbedding(7, 5, 4)
    opt = embtable.optim.fuse(qr, "sgd", lr=0.5)
    before = qr.remainder.weight.detach().clone()
    qr(torch.tensor([3])).sum().backward()
    opt.step()
    assert not torch.equal(before, qr.remainder.weight.detach())
    assert sorted(g["name"] for g in opt.param_groups) == ["quotient", "remainder"]


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: QREmbedding(0, 5, 4), "num_remainder must be an int >= 1, got 0"),
        (lambda: QREmbedding(5, 5, 3, operation="concat"), "even embedding_dim"),
        (lambda: QREmbedding(5, 5, 4, operation="max"), "operation must be one of"),
        (lambda: HashedEmbeddingBag(0, 4), "num_embeddings must be an int >= 1"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_float_ids_raise():
    with pytest.raises(TypeError, match="ids must be an integer tensor"):
        HashedEmbedding(5, 2)(torch.tensor([1.0]))
