"""KeyedJagged against TorchRec's KeyedJaggedTensor as the oracle: permute, split, concat,
to_dict, variable batch size per key, empty batches, pin_memory (issue 12)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embtable import KeyedJagged

torchrec = pytest.importorskip("torchrec", reason="torchrec is not installed (the peer oracle)")
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor  # noqa: E402


def assert_same(batch: KeyedJagged, kjt: KeyedJaggedTensor) -> None:
    """Every accessor of ``batch`` equals TorchRec's, dtypes included."""
    assert batch.keys() == kjt.keys()
    assert batch.stride() == kjt.stride()
    assert batch.stride_per_key() == kjt.stride_per_key()
    assert batch.variable_stride_per_key() == kjt.variable_stride_per_key()
    for got, want in ((batch.values(), kjt.values()), (batch.lengths(), kjt.lengths())):
        assert got.dtype == want.dtype and got.tolist() == want.tolist()
    want_weights = kjt.weights_or_none()
    if want_weights is None:
        assert batch.weights() is None
    else:
        assert torch.equal(batch.weights(), want_weights)
    assert batch.length_per_key() == kjt.length_per_key()
    assert batch.offset_per_key() == kjt.offset_per_key()
    assert batch.offsets().tolist() == kjt.offsets().tolist()
    got_dict = batch.to_dict()
    if kjt.stride() == 0:  # TorchRec 1.8's to_dict raises IndexError there; its [key] works
        want_dict = {key: kjt[key] for key in kjt.keys()}
    else:
        want_dict = kjt.to_dict()
    assert list(got_dict) == list(want_dict)
    for key, jagged in got_dict.items():
        assert jagged.values.tolist() == want_dict[key].values().tolist()
        assert jagged.lengths.tolist() == want_dict[key].lengths().tolist()
        assert jagged.offsets.tolist() == want_dict[key].offsets().tolist()
        if want_weights is not None:
            assert torch.equal(jagged.weights, want_dict[key].weights())


@st.composite
def batches(draw, variable=None):
    """The same random batch as (KeyedJagged, KeyedJaggedTensor); maybe weighted, int32 lengths,
    or a batch size per key."""
    num_keys = draw(st.integers(1, 4))
    keys = [f"f{i}" for i in range(num_keys)]
    if variable is None:
        variable = draw(st.booleans())
    if variable:
        strides = draw(st.lists(st.integers(0, 4), min_size=num_keys, max_size=num_keys))
    else:
        strides = [draw(st.integers(0, 4))] * num_keys
    lengths = draw(st.lists(st.integers(0, 3), min_size=sum(strides), max_size=sum(strides)))
    dtype = draw(st.sampled_from([torch.int64, torch.int32]))
    lengths = torch.tensor(lengths, dtype=dtype)
    values = torch.randint(0, 100, (int(lengths.sum()),), generator=torch.Generator().manual_seed(len(lengths)))
    weights = torch.rand(values.shape, dtype=torch.float64) if draw(st.booleans()) else None
    if variable:
        batch = KeyedJagged(keys, values, lengths, weights=weights, stride_per_key=strides)
        kjt = KeyedJaggedTensor(keys=keys, values=values, lengths=lengths, weights=weights,
                                stride_per_key_per_rank=[[s] for s in strides])
    else:
        batch = KeyedJagged(keys, values, lengths, weights=weights, stride=strides[0])
        kjt = KeyedJaggedTensor(keys=keys, values=values, lengths=lengths, weights=weights,
                                stride=strides[0])
    return batch, kjt


@settings(max_examples=25, deadline=None)
@given(pair=batches(), data=st.data())
def test_permute_matches_torchrec_repeats_included(pair, data):
    batch, kjt = pair
    assert_same(batch, kjt)
    num_keys = len(batch.keys())
    indices = data.draw(st.lists(st.integers(0, num_keys - 1), max_size=5))
    if not indices and kjt.variable_stride_per_key():
        indices = [0]  # TorchRec's variable-stride permute cannot make a batch without keys
    got, want = batch.permute(indices), kjt.permute(indices)
    if len(set(indices)) == len(indices):
        assert_same(got, want)
    else:  # TorchRec's to_dict and [key] map a repeated key to its last block: so does embtable
        assert got.keys() == want.keys() and got.lengths().tolist() == want.lengths().tolist()
        assert got.values().tolist() == want.values().tolist()
        assert got.length_per_key() == want.length_per_key()
        assert got.stride_per_key() == want.stride_per_key()
        for key in set(indices):
            name = batch.keys()[key]
            assert got[name].values.tolist() == want[name].values().tolist()
    again = KeyedJagged.from_torchrec(want)  # a permuted KeyedJaggedTensor converts back
    assert again.keys() == got.keys() and torch.equal(again.values(), got.values())


@settings(max_examples=25, deadline=None)
@given(pair=batches(), data=st.data())
def test_split_matches_torchrec_and_keeps_the_stride(pair, data):
    batch, kjt = pair
    num_keys = len(batch.keys())
    cuts = sorted(data.draw(st.lists(st.integers(0, num_keys), max_size=3)))
    segments = [b - a for a, b in zip([0] + cuts, cuts + [num_keys])]
    got, want = batch.split(segments), kjt.split(segments)
    assert len(got) == len(want) == len(segments)
    for part, oracle in zip(got, want):
        assert part.keys() == oracle.keys() and part.stride() == oracle.stride()
        assert part.values().tolist() == oracle.values().tolist()
        assert part.lengths().tolist() == oracle.lengths().tolist()
        if part.keys():
            assert_same(part, oracle)


@settings(max_examples=20, deadline=None)
@given(first=batches(variable=False), data=st.data())
def test_concat_matches_torchrec(first, data):
    batch, kjt = first
    other, other_kjt = batch.permute([0]), kjt.permute([0])  # same stride and weighting
    got = KeyedJagged.concat([batch, other])
    want = KeyedJaggedTensor.concat([kjt, other_kjt])
    assert got.keys() == want.keys() == batch.keys() + [batch.keys()[0]]
    assert got.values().tolist() == want.values().tolist()
    assert got.lengths().tolist() == want.lengths().tolist()
    assert got.stride() == want.stride() and got.length_per_key() == want.length_per_key()
    if kjt.weights_or_none() is not None:
        assert torch.equal(got.weights(), want.weights())


def test_variable_stride_round_trips_and_per_key_access():
    lengths = torch.tensor([1, 2, 0, 1, 1])
    batch = KeyedJagged(["a", "b"], torch.arange(5), lengths, stride_per_key=[2, 3])
    assert batch.stride() == 3 and batch.lengths_offset_per_key() == [0, 2, 5]
    assert batch["b"].lengths.tolist() == [0, 1, 1] and batch["b"].values.tolist() == [3, 4]
    kjt = batch.to_torchrec()
    assert kjt.stride_per_key() == [2, 3] and kjt["b"].values().tolist() == [3, 4]
    assert_same(KeyedJagged.from_torchrec(kjt), kjt)
    assert repr(batch) == "KeyedJagged(keys=['a', 'b'], stride=3, stride_per_key=[2, 3], num_values=5)"


def test_inverse_indices_as_torchrec():
    keys, inverse = ["a", "b"], torch.tensor([[0, 1, 0], [0, 0, 0]])
    kjt = KeyedJaggedTensor(keys=keys, values=torch.arange(3), lengths=torch.tensor([1, 1, 1]),
                            stride_per_key_per_rank=[[2], [1]], inverse_indices=(keys, inverse))
    batch = KeyedJagged.from_torchrec(kjt)
    assert batch.stride() == kjt.stride() == 3 and batch.stride_per_key() == [2, 1]
    got_keys, got_rows = batch.inverse_indices_or_none()
    assert got_keys == keys and got_rows is inverse
    back = batch.to_torchrec()
    assert back.inverse_indices()[0] == keys and back.stride() == 3
    both = KeyedJagged.concat([batch, batch])
    want = KeyedJaggedTensor.concat([kjt, kjt])
    assert both.inverse_indices_or_none()[0] == want.inverse_indices()[0]
    assert torch.equal(both.inverse_indices_or_none()[1], want.inverse_indices()[1])
    assert batch.permute([1, 0]).inverse_indices_or_none() is None  # dropped, as TorchRec
    assert kjt.permute([1, 0]).inverse_indices_or_none() is None
    values, lengths = torch.arange(3), torch.tensor([1, 1, 1])
    with pytest.raises(ValueError, match=r"inverse_indices for 'a' holds 2, but the feature has 2 "
                                         r"examples \(valid: 0..1\)"):
        KeyedJagged(keys, values, lengths, stride_per_key=[2, 1],
                    inverse_indices=(keys, torch.tensor([[0, 2, 0], [0, 0, 0]])))
    with pytest.raises(ValueError, match=r"must have shape \[2, B\]"):
        KeyedJagged(keys, values, lengths, stride_per_key=[2, 1], inverse_indices=(keys, inverse[0]))
    with pytest.raises(TypeError, match="inverse_indices must be a pair"):
        KeyedJagged(keys, values, lengths, stride_per_key=[2, 1], inverse_indices=inverse)
    with pytest.raises(TypeError, match=r"inverse_indices\[1\] must be an int64 or int32 tensor"):
        KeyedJagged(keys, values, lengths, stride_per_key=[2, 1], inverse_indices=(keys, inverse.float()))


def test_empty_batch_given_as_empty_float_tensors():
    keys = ["a", "b"]
    want = KeyedJaggedTensor(keys=keys, values=torch.tensor([]), offsets=torch.tensor([]))
    got = KeyedJagged(keys, torch.tensor([]), offsets=torch.tensor([]))
    assert got.stride() == want.stride() == 0
    # one count per key; TorchRec 1.8 answers [] or [0, 0] here depending on what was asked first
    assert got.length_per_key() == [0, 0]
    assert got.lengths().tolist() == want.lengths().tolist() == []
    assert got.values().dtype == torch.int64 and got["b"].values.numel() == 0
    by_lengths = KeyedJagged(keys, torch.tensor([]), torch.tensor([]))
    assert by_lengths.stride() == 0 and by_lengths.offsets().tolist() == [0]


def test_select_and_split_keep_the_batch_size():
    batch = KeyedJagged.from_dict({"a": [[1], [], [2, 3]], "b": [[4], [5], []]})
    kjt = batch.to_torchrec()
    assert batch.select([]).stride() == 3
    assert batch.select([]).keys() == []
    empty, both = batch.split([0, 2])
    assert empty.stride() == kjt.split([0, 2])[0].stride() == 3
    assert both is batch
    assert KeyedJagged([], torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long),
                       stride=5).stride() == 5


def test_pin_memory_like_torch():
    batch = KeyedJagged.from_dict({"a": [[1], [2, 3]]}, weights={"a": [[0.5], [1.0, 2.0]]})
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError) as expected:
            torch.ones(1).pin_memory()
        with pytest.raises(RuntimeError, match=str(expected.value)[:30]):
            batch.pin_memory()
        return
    pinned = batch.pin_memory()  # pragma: no cover - needs an accelerator
    assert pinned.is_pinned() and pinned.weights().is_pinned() and pinned.lengths().is_pinned()
    assert torch.equal(pinned.values(), batch.values()) and pinned.keys() == batch.keys()


@pytest.mark.parametrize(
    ("call", "error", "pattern"),
    [
        (lambda b: b.permute([2]), IndexError, r"permute: index 2 is outside the 2 keys"),
        (lambda b: b.permute([-1]), IndexError, r"index -1 is outside"),
        (lambda b: b.permute(["a"]), TypeError, "indices must be ints, got 'a'"),
        (lambda b: b.split([1, 2]), ValueError, r"segments \[1, 2\] add up to 3 keys, but the batch has 2"),
        (lambda b: b.split([-1]), ValueError, "segments must be ints >= 0, got -1"),
        (lambda b: KeyedJagged.concat([]), ValueError, "at least one KeyedJagged"),
        (lambda b: KeyedJagged.concat([b, b.to_torchrec()]), TypeError, "got KeyedJaggedTensor"),
        (lambda b: KeyedJagged.concat([b, KeyedJagged.from_dict({"c": [[1]]})]), ValueError,
         r"one batch size, got strides \[2, 1\]"),
        (lambda b: KeyedJagged.concat([b, KeyedJagged.from_dict({"c": [[1], []]}, weights={"c": [[1.0], []]})]),
         ValueError, r"weighted and unweighted batches \(weighted: \[False, True\]\)"),
        (lambda b: KeyedJagged(["a"], torch.arange(2), torch.tensor([1, 1]), stride=3), ValueError,
         r"stride=3 but lengths has 2 entries for 1 keys, i.e. a batch of 2"),
        (lambda b: KeyedJagged(["a", "b"], torch.arange(2), torch.tensor([1, 1]), stride_per_key=[1, 2]),
         ValueError, r"lengths has 2 entries, expected sum\(stride_per_key\) = 3"),
        (lambda b: KeyedJagged(["a", "b"], torch.arange(2), torch.tensor([1, 1]), stride_per_key=[2]),
         ValueError, r"stride_per_key has 1 entries, expected one per key \(2\)"),
        (lambda b: KeyedJagged(["a"], torch.arange(2), torch.tensor([1, 1]), stride_per_key=[-2]),
         ValueError, "stride_per_key must hold ints >= 0, got -2"),
        (lambda b: KeyedJagged(["a"], torch.arange(2), torch.tensor([1, 1]), stride=-1),
         ValueError, "stride must be an int >= 0, got -1"),
    ],
)
def test_errors_name_the_value(call, error, pattern):
    batch = KeyedJagged.from_dict({"a": [[1], [2, 3]], "b": [[4], []]})
    with pytest.raises(error, match=pattern):
        call(batch)
    assert batch.keys() == ["a", "b"] and batch.values().tolist() == [1, 2, 3, 4]  # unchanged


def test_permute_takes_tensor_and_numpy_indices():
    np = pytest.importorskip("numpy")
    batch = KeyedJagged.from_dict({"a": [[1]], "b": [[2, 3]]})
    kjt = batch.to_torchrec()
    assert batch.permute(torch.tensor([1, 0])).keys() == kjt.permute([1, 0]).keys()
    assert batch.permute(np.array([1, 1])).values().tolist() == [2, 3, 2, 3]


def test_torchrec_constructor_names_and_accessors():
    keys, values, lengths = ["a", "b"], torch.tensor([1, 2, 3]), torch.tensor([1, 0, 2, 0])
    weights = torch.tensor([0.5, 1.0, 2.0])
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=keys, values=values, lengths=lengths, weights=weights)
    assert_same(KeyedJagged.from_lengths_sync(keys, values, lengths, weights), kjt)
    offsets = torch.tensor([0, 1, 1, 3, 3])
    kjt = KeyedJaggedTensor.from_offsets_sync(keys=keys, values=values, offsets=offsets)
    batch = KeyedJagged.from_offsets_sync(keys, values, offsets)
    assert_same(batch, kjt)
    assert batch.weights_or_none() is None and batch.index_per_key() == kjt._key_indices()
    assert list(batch.to_dict(compute_offsets=False)) == list(kjt.to_dict(compute_offsets=False))
