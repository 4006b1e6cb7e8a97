"""Errors torch code can still catch: for every bad input, torch 2.13 is the oracle.

Where torch raises class ``C`` (``RuntimeError``, ``NotImplementedError``, ``IndexError``,
``ValueError``, ``TypeError``), embtable's error must be an instance of ``C`` *and* of the
precise builtin class embtable documents, with embtable's message naming the API and the
value.  Where torch only ``assert``s, embtable raises a plain ``ValueError`` (departure 4).
"""

from __future__ import annotations

import warnings

import pytest
import torch

import embtable
from embtable import errors, functional

F = torch.nn.functional
W = torch.randn(5, 3)
IDS = torch.tensor([0, 1])
OFF = torch.tensor([0])

# name -> (call taking the functional module, embtable's documented builtin class, text in message)
CASES = {
    "float ids": (lambda f: f.embedding(torch.tensor([0.0, 1.0]), W), TypeError, "int64 or int32"),
    "bool ids": (lambda f: f.embedding(torch.tensor([True]), W), TypeError, "torch.bool"),
    "id past the table": (lambda f: f.embedding(torch.tensor([5]), W), IndexError, "id 5"),
    "negative id": (lambda f: f.embedding(torch.tensor([-1]), W), IndexError, "-1"),
    "1-D weight": (lambda f: f.embedding(IDS, torch.randn(5)), ValueError, "(5,)"),
    "3-D weight": (lambda f: f.embedding(IDS, torch.randn(5, 3, 2)), ValueError, "(5, 3, 2)"),
    "ids not a tensor": (lambda f: f.embedding([0], W), TypeError, "list"),
    "bag float ids": (lambda f: f.embedding_bag(torch.tensor([0.0, 1.0]), W, OFF), TypeError, "float32"),
    "offsets not from 0": (lambda f: f.embedding_bag(IDS, W, torch.tensor([1])), ValueError, "offsets[0]=1"),
    "offsets decrease": (
        lambda f: f.embedding_bag(torch.tensor([0, 1, 2]), W, torch.tensor([0, 2, 1])),
        ValueError,
        "offsets[1]=2 > offsets[2]=1",
    ),
    "offsets past the input": (lambda f: f.embedding_bag(IDS, W, torch.tensor([0, 3])), ValueError, "offsets[-1]=3"),
    "bag id past the table": (lambda f: f.embedding_bag(torch.tensor([0, 5]), W, OFF), IndexError, "id 5"),
    "bag negative id": (lambda f: f.embedding_bag(torch.tensor([0, -1]), W, OFF), IndexError, "-1"),
    "per_sample_weights with mean": (
        lambda f: f.embedding_bag(IDS, W, OFF, mode="mean", per_sample_weights=torch.ones(2)),
        ValueError,
        "mode='mean'",
    ),
    "per_sample_weights with max": (
        lambda f: f.embedding_bag(IDS, W, OFF, mode="max", per_sample_weights=torch.ones(2)),
        ValueError,
        "mode='max'",
    ),
    "per_sample_weights shape": (
        lambda f: f.embedding_bag(IDS, W, OFF, mode="sum", per_sample_weights=torch.ones(3)),
        ValueError,
        "(3,)",
    ),
    "per_sample_weights dtype": (
        lambda f: f.embedding_bag(IDS, W, OFF, mode="sum", per_sample_weights=torch.ones(2).double()),
        TypeError,
        "float64",
    ),
    "bag 1-D weight": (lambda f: f.embedding_bag(IDS, torch.randn(5), OFF), ValueError, "(5,)"),
    "bag 3-D weight": (lambda f: f.embedding_bag(IDS, torch.randn(5, 3, 2), OFF), ValueError, "(5, 3, 2)"),
    "bag padding_idx outside": (lambda f: f.embedding_bag(IDS, W, OFF, padding_idx=9), ValueError, "padding_idx=9"),
    "bag bad mode": (lambda f: f.embedding_bag(IDS, W, OFF, mode="median"), ValueError, "'median'"),
    "1-D input without offsets": (lambda f: f.embedding_bag(IDS, W), ValueError, "offsets"),
    "2-D input with offsets": (lambda f: f.embedding_bag(IDS.view(1, 2), W, OFF), ValueError, "offsets"),
    "3-D input": (lambda f: f.embedding_bag(IDS.view(1, 1, 2), W), ValueError, "(1, 1, 2)"),
    "float offsets": (lambda f: f.embedding_bag(IDS, W, torch.tensor([0.0])), TypeError, "float32"),
    "2-D offsets": (lambda f: f.embedding_bag(IDS, W, torch.tensor([[0]])), ValueError, "(1, 1)"),
    "integer bag weight": (lambda f: f.embedding_bag(IDS, W.long(), OFF), TypeError, "int64"),
    "max with scale_grad_by_freq": (
        lambda f: f.embedding_bag(IDS, W, OFF, mode="max", scale_grad_by_freq=True),
        ValueError,
        "scale_grad_by_freq",
    ),
    "include_last_offset without offsets": (
        lambda f: f.embedding_bag(IDS, W, torch.tensor([], dtype=torch.long), include_last_offset=True),
        ValueError,
        "include_last_offset",
    ),
    "negative num_embeddings": (lambda f: _module(f)(-1, 3), ValueError, "-1"),
}

# Departures: torch only asserts (or accepts); embtable raises a plain ValueError.
DEPARTURES = {
    "padding_idx outside (embedding)": (
        lambda f: f.embedding(IDS, W, padding_idx=7),
        (AssertionError,),
        "padding_idx=7",
    ),
    "padding_idx outside (Embedding)": (lambda f: _module(f)(5, 3, padding_idx=-6), (AssertionError,), "-6"),
    "padding_idx outside (EmbeddingBag)": (
        lambda f: _bag_module(f)(5, 3, padding_idx=5),
        (AssertionError,),
        "padding_idx=5",
    ),
    "from_pretrained 1-D": (lambda f: _module(f).from_pretrained(torch.ones(3)), (AssertionError,), "(3,)"),
    "negative max_norm": (lambda f: f.embedding(IDS, W.clone(), max_norm=-1.0), (), "max_norm"),
}


def _module(f):
    return torch.nn.Embedding if f is F else embtable.Embedding


def _bag_module(f):
    return torch.nn.EmbeddingBag if f is F else embtable.EmbeddingBag


def _raised(call, f):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            call(f)
        except Exception as error:  # noqa: BLE001 - the class is what is compared
            return error
    return None


@pytest.mark.parametrize("case", sorted(CASES))
def test_error_is_an_instance_of_torchs_class(case: str) -> None:
    call, builtin, text = CASES[case]
    theirs = _raised(call, F)
    ours = _raised(call, functional)
    assert theirs is not None, f"torch 2.13 accepts {case}"
    assert isinstance(ours, type(theirs)), f"{case}: torch {type(theirs).__name__}, embtable {ours!r}"
    assert isinstance(ours, builtin), f"{case}: {ours!r} is not a {builtin.__name__}"
    assert text in str(ours), f"{case}: message {ours} does not name {text!r}"
    if isinstance(theirs, RuntimeError) and not isinstance(theirs, (ValueError, TypeError, IndexError)):
        assert isinstance(ours, errors.EmbeddingError)


@pytest.mark.parametrize("case", sorted(DEPARTURES))
def test_assert_only_cases_raise_plain_value_error(case: str) -> None:
    call, torch_classes, text = DEPARTURES[case]
    theirs = _raised(call, F)
    ours = _raised(call, functional)
    assert (theirs is None) if not torch_classes else isinstance(theirs, torch_classes)
    assert type(ours) is ValueError, f"{case}: {ours!r}"
    assert text in str(ours)


def test_except_clauses_written_for_torch_keep_working() -> None:
    weight = torch.randn(4, 2)
    for f in (F, functional):
        caught = []
        for bad in (torch.tensor([1]), torch.tensor([0, 2, 1])):
            try:
                f.embedding_bag(torch.tensor([0, 1, 3]), weight, bad)
            except RuntimeError as error:
                caught.append(type(error))
        assert len(caught) == 2
    with pytest.raises(NotImplementedError):
        functional.embedding_bag(IDS, W, OFF, mode="mean", per_sample_weights=torch.ones(2))
    with pytest.raises(ValueError):
        functional.embedding_bag(IDS, W, OFF, mode="mean", per_sample_weights=torch.ones(2))


def test_error_classes() -> None:
    assert issubclass(errors.EmbeddingValueError, ValueError)
    assert issubclass(errors.EmbeddingValueError, RuntimeError)
    assert issubclass(errors.EmbeddingTypeError, TypeError)
    assert issubclass(errors.EmbeddingTypeError, RuntimeError)
    assert issubclass(errors.EmbeddingIndexError, IndexError)
    assert issubclass(errors.EmbeddingIndexError, RuntimeError)
    assert issubclass(errors.EmbeddingNotImplementedError, NotImplementedError)
    assert issubclass(errors.EmbeddingNotImplementedError, ValueError)
    assert all(issubclass(c, errors.EmbeddingError) for c in (
        errors.EmbeddingValueError, errors.EmbeddingTypeError, errors.EmbeddingIndexError,
        errors.EmbeddingNotImplementedError,
    ))


def test_a_failing_call_modifies_nothing() -> None:
    """The checks run before max_norm touches a row (torch renormalizes some rows first)."""
    weight = torch.full((5, 3), 10.0)
    before = weight.clone()
    with pytest.raises(RuntimeError):
        functional.embedding_bag(torch.tensor([0, 1, 7]), weight, torch.tensor([0]), max_norm=1.0)
    assert torch.equal(weight, before)
