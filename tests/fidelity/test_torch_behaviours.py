"""Behaviours PyTorch's ``test/nn/test_embedding.py`` checks that its OpInfo samples miss.

Written in our own words from a reading of that file (torch 2.13 era), each against torch
itself as the oracle: the same call on ``torch.nn`` and on embtable, compared.
"""

from __future__ import annotations

import itertools
import os
import sys

import pytest
import torch

import embtable
from embtable import functional

sys.path.insert(0, os.path.dirname(__file__))
import _torch_samples as ts  # noqa: E402

F = torch.nn.functional


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int64, torch.float64])
def test_from_pretrained_any_dtype(dtype: torch.dtype) -> None:
    """Pretrained tables of integer dtypes look up like float ones (no gradient involved)."""
    table = torch.tensor([[1, 2, 3], [4, 5, 6]], dtype=dtype)
    ours = embtable.Embedding.from_pretrained(table)
    assert torch.equal(ours(torch.tensor([1, 0])), torch.nn.Embedding.from_pretrained(table)(torch.tensor([1, 0])))


def test_from_pretrained_options_renormalize_in_place() -> None:
    """max_norm with a fractional norm_type renormalizes the given tensor itself, as torch."""
    results = []
    for module in (torch.nn.Embedding, embtable.Embedding):
        weight = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
        table = module.from_pretrained(weight, max_norm=2.0, norm_type=0.5, sparse=True)
        results.append((table(torch.tensor([0, 1])), weight))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])
    for bag in (torch.nn.EmbeddingBag, embtable.EmbeddingBag):
        weight = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
        out = bag.from_pretrained(weight, max_norm=2.0, norm_type=0.5, mode="max")(torch.tensor([[0, 1]]))
        results.append((out, weight))
    assert torch.equal(results[2][0], results[3][0]) and torch.equal(results[2][1], results[3][1])


def test_padding_rows() -> None:
    """Padding rows: looked up as stored (even after being changed), negative padding_idx,
    never a gradient, also with 1000 repeats and through a double backward."""
    torch.manual_seed(0)
    for padding_idx, sparse in itertools.product((2, -2), (False, True)):
        theirs = torch.nn.Embedding(10, 4, padding_idx=padding_idx, sparse=sparse)
        ours = embtable.Embedding(10, 4, padding_idx=padding_idx, sparse=sparse)
        ours.load_state_dict(theirs.state_dict())
        with torch.no_grad():
            theirs.weight[padding_idx] = 7.0
            ours.weight[padding_idx] = 7.0
        ids = torch.tensor([[0, 2, 8, 5], [8, 8, 2, 9]])
        assert torch.equal(ours(ids), theirs(ids))
    for n, others in itertools.product((1, 1000), ([], [1, 3])):
        grads = []
        for module in (torch.nn.Embedding, embtable.Embedding):
            torch.manual_seed(1)
            table = module(5, 2, padding_idx=0).double()
            ids = torch.tensor(others + [0] * n)
            total = table(ids).sum()
            (first,) = torch.autograd.grad(total, list(table.parameters()), create_graph=True)
            (first.sum() + total).backward()  # double backward
            grads.append(table.weight.grad)
        assert torch.equal(grads[0], grads[1]) and not grads[1][0].any()


def test_dense_gradient_gradcheck_and_gradgradcheck() -> None:
    ids = torch.tensor([[0, 1, 1, 2], [3, 5, 7, 11]])
    weight = torch.randn(20, 5, dtype=torch.float64, requires_grad=True)
    fn = lambda w: functional.embedding(ids, w)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (weight,))
    assert torch.autograd.gradgradcheck(fn, (weight,))
    bag = lambda w: functional.embedding_bag(ids, w, mode="mean", padding_idx=1)  # noqa: E731
    assert torch.autograd.gradcheck(bag, (weight,))


def test_sparse_gradients_accumulate_by_concatenation() -> None:
    """Two backwards into a sparse gradient concatenate indices and values (uncoalesced)."""
    grads = []
    for module in (torch.nn.Embedding, embtable.Embedding):
        table = module(10, 3, sparse=True).double()
        ids = torch.tensor([7, 1, 3])
        table(ids).sum().backward()
        table(torch.tensor([8, 1, 3])).sum().backward()
        grads.append(table.weight.grad)
    assert torch.equal(grads[0]._indices(), grads[1]._indices())
    assert torch.equal(grads[0]._values(), grads[1]._values())
    assert grads[1]._indices().tolist() == [[7, 1, 3, 8, 1, 3]]


def test_max_norm_gradient_counts_repeats() -> None:
    weight = torch.randn(4, 4) * 2
    for f in (F.embedding, functional.embedding):
        w = weight.clone().requires_grad_(True)
        f(torch.tensor([0, 1, 2, 2]), w, max_norm=1.0).sum().backward()
        assert w.grad[:, 0].tolist() == [1.0, 1.0, 2.0, 0.0]


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("include_last_offset", [False, True])
def test_bag_1d_padding_equals_2d_padded(mode: str, include_last_offset: bool) -> None:
    """Bags cut by offsets equal the same bags written as rows filled up with padding ids."""
    gen = torch.Generator().manual_seed(0)
    sizes = [3, 0, 10, 1, 5]
    ids = torch.randint(0, 100, (sum(sizes),), generator=gen)
    starts = torch.tensor([0, *itertools.accumulate(sizes)][:-1])
    offsets = torch.cat([starts, torch.tensor([ids.numel()])]) if include_last_offset else starts
    rows = torch.full((len(sizes), 10), 100)
    for b, (start, size) in enumerate(zip(starts.tolist(), sizes)):
        rows[b, :size] = ids[start : start + size]
    weight = torch.randn(101, 3, generator=gen)
    for sparse in (False, True) if mode != "max" else (False,):
        cut = ts.run(functional.embedding_bag, ids, weight, dict(offsets=offsets, mode=mode, sparse=sparse, include_last_offset=include_last_offset))
        padded = ts.run(functional.embedding_bag, rows, weight, dict(mode=mode, sparse=sparse, padding_idx=100))
        theirs = ts.run(F.embedding_bag, ids, weight, dict(offsets=offsets, mode=mode, sparse=sparse, include_last_offset=include_last_offset))
        torch.testing.assert_close(cut.out, padded.out)
        torch.testing.assert_close(cut.out, theirs.out)
        torch.testing.assert_close(cut.grad.to_dense(), theirs.grad.to_dense())


def test_include_last_offset_last_bag_runs_to_the_end() -> None:
    """pytorch issue 89677: with include_last_offset the last bag ends at the input's end."""
    torch.manual_seed(0)
    theirs = torch.nn.EmbeddingBag(100, 3, include_last_offset=True, padding_idx=61)
    ours = embtable.EmbeddingBag(100, 3, include_last_offset=True, padding_idx=61)
    ours.load_state_dict(theirs.state_dict())
    ids = torch.tensor([0, 1, 2, 3])
    for offsets in (torch.tensor([0, 3, 3]), torch.tensor([0, 3, 4])):
        assert torch.equal(ours(ids, offsets), theirs(ids, offsets))


@pytest.mark.parametrize(("id_dtype", "offset_dtype"), list(itertools.product((torch.int32, torch.int64), repeat=2)))
def test_int32_and_int64_ids_and_offsets_mix(id_dtype: torch.dtype, offset_dtype: torch.dtype) -> None:
    """Known example of torch's suite, every mix of id / offset dtypes, empty bags included."""
    weight = torch.arange(1, 11, dtype=torch.float64).view(5, 2)
    ids = torch.tensor([3, 1, 1, 1, 4, 0], dtype=id_dtype)
    offsets = torch.tensor([0, 0, 3, 3, 6], dtype=offset_dtype)
    for mode, weighted in (("sum", False), ("sum", True), ("mean", False), ("max", False)):
        kwargs = {"offsets": offsets, "mode": mode}
        if weighted:
            kwargs["per_sample_weights"] = torch.linspace(-1, 2, 6, dtype=torch.float64).requires_grad_(True)
        # float64 weighted sums: torch uses FMAs (see test_opinfo._exact), so to rounding
        theirs, ours = ts.run(F.embedding_bag, ids, weight, kwargs), ts.run(functional.embedding_bag, ids, weight, kwargs)
        ts.assert_same_run(theirs, ours, f"{mode} {weighted}", exact=not weighted)
        empty = {"offsets": torch.tensor([0, 0], dtype=offset_dtype), "mode": mode}
        nothing = torch.tensor([], dtype=id_dtype)
        ts.assert_same_run(ts.run(F.embedding_bag, nothing, weight, empty), ts.run(functional.embedding_bag, nothing, weight, empty), f"empty {mode}")
    with pytest.raises(RuntimeError):
        functional.embedding_bag(torch.tensor([[-1, 1]], dtype=id_dtype), weight, mode="sum")
    with pytest.raises(RuntimeError):
        functional.embedding_bag(torch.tensor([[11, 8]], dtype=id_dtype), weight, padding_idx=0)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_bag_equals_embedding_then_reduction(mode: str) -> None:
    """EmbeddingBag over fixed-length bags equals Embedding followed by the reduction, also
    with max_norm (both renormalize the same rows in place)."""
    for max_norm, (n, d, b, length) in itertools.product((None, 3.0), [(2, 1, 2, 2), (37, 5, 4, 6)]):
        torch.manual_seed(n)
        bag = embtable.EmbeddingBag(n, d, mode=mode, max_norm=max_norm).double()
        table = embtable.Embedding(n, d, max_norm=max_norm).double()
        table.weight.data.copy_(bag.weight)
        ids = torch.randint(n, (b, length))
        reduce = {"sum": lambda x: x.sum(1), "mean": lambda x: x.mean(1), "max": lambda x: x.max(1)[0]}[mode]
        out = bag(ids.view(-1), torch.arange(0, b * length, length))
        torch.testing.assert_close(out, reduce(table(ids)))
        torch.testing.assert_close(bag.weight, table.weight)


def test_non_contiguous_weight_and_per_sample_weights_grad_flags() -> None:
    weight = torch.randn(3, 4)[:, :3]
    assert not weight.is_contiguous()
    for mode in ("sum", "mean", "max"):
        args = (torch.tensor([0, 1, 2]), weight, torch.tensor([0, 2]))
        assert torch.equal(functional.embedding_bag(*args, mode=mode), F.embedding_bag(*args, mode=mode))
    for bag_grad, weights_grad in itertools.product((True, False), repeat=2):
        bag = embtable.EmbeddingBag(256, 8, mode="sum").requires_grad_(bag_grad)
        w = torch.rand(3, 4, requires_grad=weights_grad)
        out = bag(torch.arange(1, 5).expand(3, -1), per_sample_weights=F.softmax(w, dim=-1))
        assert out.requires_grad == (bag_grad or weights_grad)


def test_illegal_combinations_raise_torchs_classes() -> None:
    bag = embtable.EmbeddingBag(10, 20, mode="sum")
    ids = torch.ones(3, 4, dtype=torch.long)
    with pytest.raises(ValueError):
        bag(ids, torch.arange(0, 3))
    with pytest.raises(ValueError):
        bag(ids.view(-1))
    with pytest.raises(RuntimeError):
        bag(ids.view(-1), torch.tensor([1, 1, 2]))
    with pytest.raises(RuntimeError):
        bag(ids.view(-1), torch.tensor([0, 1, 100]))
    with pytest.raises((ValueError, RuntimeError), match="1-D"):
        functional.embedding_bag(torch.full((2, 0, 0, 6, 6), 2), torch.zeros(2, 6), torch.zeros(2, dtype=torch.long))
