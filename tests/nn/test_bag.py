"""embtable.EmbeddingBag against torch.nn.EmbeddingBag (torch 2.13): construction, state, training."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import embtable
from embtable.testing import assert_same_grad


def _pair(*args, seed: int = 0, **kwargs) -> tuple[embtable.EmbeddingBag, torch.nn.EmbeddingBag]:
    torch.manual_seed(seed)
    ours = embtable.EmbeddingBag(*args, **kwargs)
    torch.manual_seed(seed)
    theirs = torch.nn.EmbeddingBag(*args, **kwargs)
    return ours, theirs


ATTRIBUTES = ("num_embeddings", "embedding_dim", "max_norm", "norm_type", "scale_grad_by_freq",
              "mode", "sparse", "include_last_offset", "padding_idx")


@settings(max_examples=40, deadline=None)
@given(
    num=st.integers(1, 50),
    dim=st.integers(1, 9),
    padding=st.one_of(st.none(), st.integers(-1, 0)),
    max_norm=st.one_of(st.none(), st.floats(0.5, 2.0)),
    norm_type=st.sampled_from([1.0, 2.0, 3.5]),
    mode=st.sampled_from(["sum", "mean", "max"]),
    scale=st.booleans(),
    sparse=st.booleans(),
    last=st.booleans(),
    dtype=st.sampled_from([None, torch.float64]),
    seed=st.integers(0, 1000),
)
def test_same_seed_same_weights_repr_and_attributes(
    num, dim, padding, max_norm, norm_type, mode, scale, sparse, last, dtype, seed
):
    ours, theirs = _pair(
        num, dim, padding_idx=padding, max_norm=max_norm, norm_type=norm_type, mode=mode,
        scale_grad_by_freq=scale and mode != "max", sparse=sparse, include_last_offset=last,
        dtype=dtype, seed=seed,
    )
    assert torch.equal(ours.weight, theirs.weight)
    assert ours.weight.dtype == theirs.weight.dtype
    assert repr(ours) == repr(theirs)
    for name in ATTRIBUTES:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert set(ours.__constants__) == set(theirs.__constants__)


def test_default_init_is_standard_normal_with_zero_padding_row() -> None:
    torch.manual_seed(0)
    bag = embtable.EmbeddingBag(20000, 64, padding_idx=-2)
    weight = bag.weight.detach()
    assert bag.padding_idx == 19998
    assert torch.equal(weight[19998], torch.zeros(64))
    assert abs(weight.mean().item()) < 0.01
    assert abs(weight.std().item() - 1.0) < 0.01
    assert bag.weight.requires_grad and isinstance(bag.weight, torch.nn.Parameter)


def test_reset_parameters_uses_the_rng_like_torch() -> None:
    ours, theirs = _pair(6, 4, padding_idx=2)
    torch.manual_seed(7)
    ours.reset_parameters()
    torch.manual_seed(7)
    theirs.reset_parameters()
    assert torch.equal(ours.weight, theirs.weight)


def test_state_dict_round_trips_both_ways() -> None:
    ours, theirs = _pair(8, 3, mode="sum", padding_idx=1, seed=3)
    torch.manual_seed(99)
    fresh_torch = torch.nn.EmbeddingBag(8, 3, mode="sum", padding_idx=1)
    fresh_torch.load_state_dict(ours.state_dict())
    assert torch.equal(fresh_torch.weight, ours.weight)
    fresh_ours = embtable.EmbeddingBag(8, 3, mode="sum", padding_idx=1)
    fresh_ours.load_state_dict(torch.nn.EmbeddingBag(8, 3).state_dict())
    fresh_ours.load_state_dict(theirs.state_dict())
    assert torch.equal(fresh_ours.weight, theirs.weight)
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "sum"},
        {"mode": "mean", "padding_idx": 0, "max_norm": 1.0},
        {"mode": "max", "include_last_offset": True},
        {"mode": "sum", "scale_grad_by_freq": False, "sparse": True, "norm_type": 1.0, "max_norm": 2.0},
    ],
)
def test_forward_and_training_steps_match_torch(kwargs: dict) -> None:
    ours, theirs = _pair(12, 5, seed=1, **kwargs)
    gen = torch.Generator().manual_seed(2)
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.1)
    for _ in range(3):
        ids = torch.randint(0, 12, (10,), generator=gen)
        offsets = torch.tensor([0, 3, 3, 7, 10] if kwargs.get("include_last_offset") else [0, 3, 3, 7])
        psw = torch.rand(10, generator=gen) if kwargs["mode"] == "sum" else None
        target = torch.randn(4, 5, generator=gen)
        for module, opt in ((ours, opt_ours), (theirs, opt_theirs)):
            opt.zero_grad()
            loss = ((module(ids, offsets, per_sample_weights=psw) - target) ** 2).sum()
            loss.backward()
            opt.step()
        assert_same_grad(ours.weight.grad, theirs.weight.grad)
        torch.testing.assert_close(ours.weight, theirs.weight)
    assert ours(torch.tensor([[1, 2], [3, 4]])).shape == (2, 5)


def test_from_pretrained_matches_torch_and_shares_the_tensor() -> None:
    weight = torch.tensor([[1.0, 2.3, 3.0], [4.0, 5.1, 6.3], [0.5, 0.5, 0.5]])
    ours = embtable.EmbeddingBag.from_pretrained(weight, mode="max", padding_idx=2)
    theirs = torch.nn.EmbeddingBag.from_pretrained(weight, mode="max", padding_idx=2)
    ids = torch.tensor([[1, 0, 2]])
    torch.testing.assert_close(ours(ids), theirs(ids))
    assert ours.weight.data_ptr() == weight.data_ptr()
    assert not ours.weight.requires_grad
    assert torch.equal(ours.weight[2], torch.full((3,), 0.5))  # not zeroed
    assert embtable.EmbeddingBag.from_pretrained(weight, freeze=False).weight.requires_grad
    assert repr(ours) == repr(theirs)


@pytest.mark.parametrize(
    ("call", "text"),
    [
        (lambda: embtable.EmbeddingBag(5, 2, padding_idx=5), "padding_idx=5"),
        (lambda: embtable.EmbeddingBag(5, 2, padding_idx=-6), "padding_idx=-6"),
        (lambda: embtable.EmbeddingBag(-1, 2), "num_embeddings"),
        (lambda: embtable.EmbeddingBag(5, 2, mode="avg"), "'avg'"),
        (lambda: embtable.EmbeddingBag(5, 2, mode="max", scale_grad_by_freq=True), "scale_grad_by_freq"),
        (lambda: embtable.EmbeddingBag(5, 2, _weight=torch.zeros(4, 2)), "(4, 2)"),
        (lambda: embtable.EmbeddingBag.from_pretrained(torch.zeros(4)), "(4,)"),
    ],
)
def test_invalid_constructor_arguments_raise_value_error(call, text) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert text in str(info.value)
    assert str(info.value).startswith("EmbeddingBag")


def test_max_mode_sparse_gradient_is_accepted() -> None:
    bag = embtable.EmbeddingBag(6, 3, mode="max", sparse=True)
    bag(torch.tensor([[0, 1], [1, 5]])).sum().backward()
    assert bag.weight.grad.is_sparse
    assert bag.weight.grad.coalesce().to_dense().sum().item() == 6.0


def test_pooling_mode_enum_is_accepted_as_its_string() -> None:
    bag = embtable.EmbeddingBag(4, 2, mode=embtable.PoolingMode.MAX)
    assert type(bag.mode) is str and repr(bag) == "EmbeddingBag(4, 2, mode='max')"
    ids = torch.tensor([[0, 3]])
    expected = torch.maximum(bag.weight[0], bag.weight[3]).detach()
    torch.testing.assert_close(bag(ids)[0].detach(), expected)


def test_big_dense_gradient_behaves_like_torchs() -> None:
    """A dense gradient of >= 32 MiB is a lazily zeroed mapping (csrc/cpu/rows_cpu.cpp): it must
    equal torch's, accumulate, save, and resize to a bigger shape as torch's gradient does."""
    import io

    ids = torch.tensor([[0, 5, 5], [199_999, 7, 0]])
    ours = embtable.EmbeddingBag(200_000, 48, mode="sum")  # 36.6 MiB of float32
    theirs = torch.nn.EmbeddingBag(200_000, 48, mode="sum")
    theirs.weight.data.copy_(ours.weight.data)
    for _ in range(2):  # the second backward accumulates into the first gradient
        ours(ids).sum().backward()
        theirs(ids).sum().backward()
    assert torch.equal(ours.weight.grad, theirs.weight.grad)
    buffer = io.BytesIO()
    torch.save(ours.weight.grad, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer), theirs.weight.grad)
    for grad in (ours.weight.grad, theirs.weight.grad):
        grad.resize_(300_000, 48)
        grad[200_000:] = 1.0
    assert torch.equal(ours.weight.grad[:200_000], theirs.weight.grad[:200_000])
    assert torch.equal(ours.weight.grad, theirs.weight.grad)
