"""KeyedJagged: layout, constructors, per-key access, validation, TorchRec round trip."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embtable import KeyedJagged
from embtable.jagged import Jagged

# The layout drawn in KeyedJagged's docstring, written out by hand.
KEYS = ["user", "item"]
VALUES = torch.tensor([7, 3, 9, 1, 4, 2, 5, 6])
LENGTHS = torch.tensor([1, 1, 1, 2, 0, 3])
OFFSETS = torch.tensor([0, 1, 2, 3, 5, 5, 8])
NESTED = {"user": [[7], [3], [9]], "item": [[1, 4], [], [2, 5, 6]]}


def test_layout_by_hand():
    batch = KeyedJagged(KEYS, VALUES, LENGTHS)
    assert batch.keys() == KEYS
    assert batch.stride() == 3
    assert torch.equal(batch.offsets(), OFFSETS)
    assert batch.offsets() is batch.offsets()  # cached
    assert batch.length_per_key() == [3, 5]
    assert batch.offset_per_key() == [0, 3, 8]
    assert batch.weights() is None
    assert list(batch) == KEYS and "item" in batch and "price" not in batch


def test_from_offsets_equals_from_lengths():
    batch = KeyedJagged(KEYS, VALUES, offsets=OFFSETS)
    assert torch.equal(batch.lengths(), LENGTHS)
    assert torch.equal(batch.offsets(), OFFSETS)


def test_per_key_access():
    batch = KeyedJagged(KEYS, VALUES, LENGTHS, weights=torch.arange(8.0))
    item = batch["item"]
    assert isinstance(item, Jagged)
    assert torch.equal(item.values, torch.tensor([1, 4, 2, 5, 6]))
    assert torch.equal(item.lengths, torch.tensor([2, 0, 3]))
    assert torch.equal(item.offsets, torch.tensor([0, 2, 2, 5]))
    assert torch.equal(item.weights, torch.tensor([3.0, 4.0, 5.0, 6.0, 7.0]))
    assert list(batch.to_dict()) == KEYS
    with pytest.raises(KeyError, match=r"no feature 'price'; the keys are \['user', 'item'\]"):
        batch["price"]


def test_from_dict_matches_hand_layout():
    batch = KeyedJagged.from_dict(NESTED)
    assert batch.keys() == KEYS
    assert torch.equal(batch.values(), VALUES)
    assert torch.equal(batch.lengths(), LENGTHS)
    assert batch.values().dtype == torch.int64


def test_from_dict_accepts_tensor_examples_and_weights():
    batch = KeyedJagged.from_dict(
        {"a": [torch.tensor([1, 2]), [3]]}, weights={"a": [[0.5, 0.25], torch.tensor([2.0])]}
    )
    assert torch.equal(batch.values(), torch.tensor([1, 2, 3]))
    assert torch.equal(batch.weights(), torch.tensor([0.5, 0.25, 2.0]))


def test_from_dict_errors():
    with pytest.raises(ValueError, match="same number of examples"):
        KeyedJagged.from_dict({"a": [[1], [2]], "b": [[3]]})
    with pytest.raises(TypeError, match="ids must be integers, got values of dtype torch.float32"):
        KeyedJagged.from_dict({"a": [[1.5], [2]]})
    with pytest.raises(ValueError, match="one float per id"):
        KeyedJagged.from_dict({"a": [[1, 2]]}, weights={"a": [[1.0]]})
    with pytest.raises(ValueError, match="weights must have the keys"):
        KeyedJagged.from_dict({"a": [[1, 2]]}, weights={"b": [[1.0, 1.0]]})
    with pytest.raises(TypeError, match="one list of values per example"):
        KeyedJagged.from_dict({"a": [1, 2]})


def test_from_padded_drops_pad_anywhere():
    padded = {
        "words": torch.tensor([[4, 9, 0], [0, 5, 0]]),
        "tags": torch.tensor([[1], [-1]]),
    }
    words = KeyedJagged.from_padded({"words": padded["words"]}, pad_value=0)
    assert torch.equal(words.values(), torch.tensor([4, 9, 5]))
    assert torch.equal(words.lengths(), torch.tensor([2, 1]))
    both = KeyedJagged.from_padded(padded, pad_value=-1)
    assert both.keys() == ["words", "tags"]
    assert torch.equal(both["words"].values, torch.tensor([4, 9, 0, 0, 5, 0]))
    assert torch.equal(both["tags"].lengths, torch.tensor([1, 0]))


def test_from_padded_errors():
    with pytest.raises(ValueError, match="same number of examples"):
        KeyedJagged.from_padded({"a": torch.zeros(2, 3, dtype=torch.long), "b": torch.zeros(3, 1, dtype=torch.long)}, 0)
    with pytest.raises(ValueError, match=r"padded\['a'\] must be 2-D, got shape \(3,\)"):
        KeyedJagged.from_padded({"a": torch.zeros(3, dtype=torch.long)}, 0)
    with pytest.raises(TypeError, match="int64 or int32 ids, got dtype torch.float32"):
        KeyedJagged.from_padded({"a": torch.zeros(2, 2)}, 0)


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        (dict(keys=["a", "b"], values=VALUES, lengths=torch.tensor([8, 0, 0])), ValueError,
         "lengths has 3 entries, expected num_keys \\* batch_size with 2 keys"),
        (dict(keys=["a"], values=VALUES, lengths=torch.tensor([9, -1])), ValueError,
         r"lengths must be >= 0, got lengths\[1\] = -1"),
        (dict(keys=["a"], values=VALUES, lengths=torch.tensor([4, 3])), ValueError,
         "lengths sum to 7 but values holds 8 ids"),
        (dict(keys=["a", "a"], values=VALUES, lengths=LENGTHS), ValueError,
         r"keys must be distinct, got \['a'\] more than once"),
        (dict(keys=[1, 2], values=VALUES, lengths=LENGTHS), TypeError, "keys must be strings, got 1"),
        (dict(keys="ab", values=VALUES, lengths=LENGTHS), TypeError,
         "keys must be a sequence of strings, got the string 'ab'"),
        (dict(keys=KEYS, values=VALUES.float(), lengths=LENGTHS), TypeError,
         "values must hold int64 or int32 ids, got dtype torch.float32"),
        (dict(keys=KEYS, values=VALUES.reshape(2, 4), lengths=LENGTHS), ValueError,
         r"values must be 1-D, got shape \(2, 4\)"),
        (dict(keys=KEYS, values=VALUES, lengths=LENGTHS.float()), TypeError,
         "lengths must be an int64 or int32 tensor, got torch.float32"),
        (dict(keys=KEYS, values=VALUES, lengths=LENGTHS, weights=torch.ones(7)), ValueError,
         r"weights must have the shape of values \(8,\), one weight per id, got \(7,\)"),
        (dict(keys=KEYS, values=VALUES, lengths=LENGTHS, weights=torch.ones(8, dtype=torch.long)),
         TypeError, "weights must be a floating tensor, got torch.int64"),
        (dict(keys=KEYS, values=VALUES), ValueError, "give exactly one of lengths and offsets"),
        (dict(keys=KEYS, values=VALUES, lengths=LENGTHS, offsets=OFFSETS), ValueError,
         "give exactly one of lengths and offsets"),
        (dict(keys=KEYS, values=VALUES, offsets=torch.tensor([1, 1, 2, 3, 5, 5, 8])), ValueError,
         r"offsets must start at 0, got offsets\[0\] = 1"),
        (dict(keys=KEYS, values=VALUES, offsets=torch.tensor([0, 2, 1, 3, 5, 5, 8])), ValueError,
         r"offsets must be non-decreasing, got offsets\[1\] = 2 > offsets\[2\] = 1"),
        (dict(keys=KEYS, values=VALUES, offsets=torch.tensor([0, 1, 2, 3, 5, 5, 7])), ValueError,
         r"offsets must end at len\(values\) = 8, got offsets\[-1\] = 7"),
        (dict(keys=KEYS, values=VALUES, offsets=torch.tensor([0, 1, 2, 8])), ValueError,
         r"offsets has 4 entries, expected num_keys \* batch_size \+ 1 with 2 keys"),
        (dict(keys=[], values=VALUES, lengths=torch.tensor([8])), ValueError,
         "lengths has 1 entries, expected num_keys \\* batch_size with 0 keys"),
    ],
)
def test_validation_errors(kwargs, error, pattern):
    with pytest.raises(error, match="^KeyedJagged: " + pattern):
        KeyedJagged(**kwargs)


def test_validate_false_skips_only_the_linear_checks():
    batch = KeyedJagged(["a"], VALUES, torch.tensor([4, 3]), validate=False)
    assert batch.stride() == 2
    with pytest.raises(TypeError):
        KeyedJagged(["a"], VALUES.float(), torch.tensor([4, 4]), validate=False)


def test_empty_batches():
    no_keys = KeyedJagged([], torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))
    assert no_keys.stride() == 0 and no_keys.length_per_key() == [] and no_keys.offset_per_key() == [0]
    no_examples = KeyedJagged.from_dict({"a": [], "b": []})
    assert no_examples.stride() == 0
    assert no_examples["b"].values.numel() == 0
    assert torch.equal(no_examples.offsets(), torch.tensor([0]))


def test_select_reorders_keys_and_weights():
    batch = KeyedJagged(KEYS, VALUES, LENGTHS, weights=torch.arange(8.0))
    swapped = batch.select(["item", "user"])
    assert swapped.keys() == ["item", "user"]
    assert torch.equal(swapped.values(), torch.tensor([1, 4, 2, 5, 6, 7, 3, 9]))
    assert torch.equal(swapped.lengths(), torch.tensor([2, 0, 3, 1, 1, 1]))
    assert torch.equal(swapped.weights(), torch.tensor([3.0, 4, 5, 6, 7, 0, 1, 2]))
    assert batch.select(KEYS) is batch
    with pytest.raises(KeyError, match="price"):
        batch.select(["price"])


def test_to_device_and_repr():
    batch = KeyedJagged(KEYS, VALUES, LENGTHS.int())
    assert batch.to("cpu") is batch
    assert batch.device == torch.device("cpu")
    assert torch.equal(batch.offsets(), OFFSETS) and batch.offsets().dtype == torch.int64
    assert repr(batch) == "KeyedJagged(keys=['user', 'item'], stride=3, num_values=8)"
    meta = batch.to("meta")
    assert meta.values().device.type == "meta" and meta.lengths().device.type == "meta"


nested_batches = st.integers(0, 4).flatmap(
    lambda batch: st.dictionaries(
        st.text("abcdef", min_size=1, max_size=3),
        st.lists(st.lists(st.integers(0, 50), max_size=4), min_size=batch, max_size=batch),
        max_size=4,
    )
)


@settings(max_examples=40, deadline=None)
@given(nested=nested_batches)
def test_from_dict_per_key_round_trip(nested):
    batch = KeyedJagged.from_dict(nested)
    assert batch.keys() == list(nested)
    for key, examples in nested.items():
        feature = batch[key]
        assert feature.lengths.tolist() == [len(e) for e in examples]
        assert feature.values.tolist() == [i for e in examples for i in e]
        offsets = feature.offsets.tolist()
        assert [feature.values[offsets[b] : offsets[b + 1]].tolist() for b in range(len(examples))] == examples


@settings(max_examples=30, deadline=None)
@given(nested=nested_batches)
def test_from_padded_equals_from_dict(nested):
    pad = -1
    padded = {}
    for key, examples in nested.items():
        width = max([len(e) for e in examples], default=0)
        rows = [e + [pad] * (width - len(e)) for e in examples]
        padded[key] = torch.tensor(rows, dtype=torch.long).reshape(len(examples), width)
    expected = KeyedJagged.from_dict(nested)
    got = KeyedJagged.from_padded(padded, pad_value=pad)
    assert got.keys() == expected.keys()
    assert torch.equal(got.values(), expected.values())
    assert torch.equal(got.lengths(), expected.lengths())


@pytest.fixture
def keyed_jagged_tensor():
    """TorchRec's KeyedJaggedTensor class; the test is skipped without torchrec."""
    pytest.importorskip("torchrec")
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    return KeyedJaggedTensor


def test_torchrec_round_trip(keyed_jagged_tensor):
    weights = torch.linspace(0, 1, 8)
    batch = KeyedJagged(KEYS, VALUES, LENGTHS, weights=weights)
    kjt = batch.to_torchrec()
    assert isinstance(kjt, keyed_jagged_tensor)
    assert kjt.keys() == KEYS and kjt.stride() == 3
    assert torch.equal(kjt.offsets(), OFFSETS)
    assert torch.equal(kjt["item"].values(), batch["item"].values)
    back = KeyedJagged.from_torchrec(kjt)
    assert back.keys() == KEYS
    assert torch.equal(back.values(), VALUES) and torch.equal(back.lengths(), LENGTHS)
    assert torch.equal(back.weights(), weights)


def test_from_torchrec_built_by_torchrec(keyed_jagged_tensor):
    kjt = keyed_jagged_tensor.from_offsets_sync(keys=KEYS, values=VALUES, offsets=OFFSETS)
    batch = KeyedJagged.from_torchrec(kjt)
    assert torch.equal(batch.lengths(), LENGTHS) and batch.weights() is None


def test_from_torchrec_rejects_other_types(keyed_jagged_tensor):
    with pytest.raises(TypeError, match="expected a torchrec KeyedJaggedTensor, got dict"):
        KeyedJagged.from_torchrec({})


def test_from_torchrec_keeps_variable_stride(keyed_jagged_tensor):
    kjt = keyed_jagged_tensor(
        keys=["a", "b"],
        values=torch.tensor([1, 2, 3]),
        lengths=torch.tensor([1, 1, 1]),
        stride_per_key_per_rank=[[1], [2]],
    )
    batch = KeyedJagged.from_torchrec(kjt)
    assert batch.stride_per_key() == kjt.stride_per_key() == [1, 2]
    assert batch.stride() == kjt.stride() == 2
    assert torch.equal(batch["b"].values, kjt["b"].values())


def test_to_torchrec_without_torchrec(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("torchrec"):
            raise ImportError("No module named 'torchrec'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="KeyedJagged.to_torchrec: torchrec is not importable"):
        KeyedJagged(KEYS, VALUES, LENGTHS).to_torchrec()
