"""Adversarial batches: lengths and offsets that lie, wrap int64 or run past the values.

Oracle: the lengths' true (Python integer) sum, which must equal the number of values; the
kernels must refuse any other batch before reading memory.
"""

from __future__ import annotations

import pytest
import torch
from _harness import CaseList, case, verdict

import embtable
from embtable import KeyedJagged, TableConfig
from embtable.nn.outputs import JaggedRows
from embtable.ops import _reference

BIG = 2**62
MAX = 2**63 - 1

#: (name, lengths, number of values): every one is invalid (true sum != values, or negative).
BAD_LENGTHS = [
    ("wrap_to_1_of_5", [BIG] * 4 + [1, 0, 0, 0], 5),
    ("wrap_to_5_of_5", [BIG] * 4 + [5, 0, 0, 0], 5),
    ("wrap_to_0_of_0", [BIG] * 4 + [0, 0, 0, 0], 0),
    ("max_plus_one", [MAX, 1, 0, 0], 0),
    ("max_plus_max_plus_2", [MAX, MAX, 2, 0], 0),
    ("huge_then_negative", [BIG, -BIG + 3, 0, 0], 3),
    ("negative_first", [-1, 2, 1, 1], 3),
    ("negative_min", [-(2**63), 0, 0, 0], 0),
    ("too_many", [1, 1, 1, 1], 3),
    ("too_few", [1, 1, 0, 0], 3),
    ("one_huge", [0, 0, 0, MAX], 4),
]


def _feature_rows() -> torch.Tensor:
    return torch.tensor([[0, 10], [10, 10]])


def keyed_jagged_refuses(lengths: list[int], count: int, dtype: str) -> None:
    values = torch.arange(count) % 10
    tensor = torch.tensor(lengths, dtype=getattr(torch, dtype))
    KeyedJagged(["a", "b"], values, tensor)


def keyed_jagged_offsets_refuse(lengths: list[int], count: int) -> None:
    offsets = [0]
    for length in lengths:  # int64 arithmetic, as a caller's cumsum would wrap
        offsets.append((offsets[-1] + length + 2**63) % 2**64 - 2**63)
    KeyedJagged(["a", "b"], torch.arange(count) % 10, offsets=torch.tensor(offsets))


def bucket_ids_refuses(lengths: list[int], count: int, compiled: bool) -> None:
    values, tensor = torch.arange(count) % 10, torch.tensor(lengths)
    if compiled:  # the dispatcher: the compiled op when built, else its reference twin
        embtable.ops.bucket_ids(values, tensor, _feature_rows(), len(lengths) // 2)
    else:
        _reference.bucket_ids(values, tensor, _feature_rows(), len(lengths) // 2)


def to_padded_refuses(lengths: list[int], count: int) -> None:
    JaggedRows(torch.ones(count, 3), torch.tensor(lengths[:2])).to_padded(max_length=2)


def unvalidated_collection_survives(lengths: list[int], count: int, pooled: bool) -> None:
    """``validate=False`` on a lying batch: any Python error is fine, a crash is not."""
    config = TableConfig(name="t", num_embeddings=10, embedding_dim=4, feature_names=["a", "b"],
                         pooling="sum" if pooled else "none")
    module = (embtable.EmbeddingBagCollection if pooled else embtable.EmbeddingCollection)([config])
    batch = KeyedJagged(["a", "b"], torch.arange(count) % 10, torch.tensor(lengths), validate=False)
    try:
        out = module(batch)
        if not pooled:
            for key in ("a", "b"):
                out[key].to_padded()
    except (ValueError, IndexError, RuntimeError):
        pass


def valid_wide_lengths() -> None:
    """Counts near the limit that are valid must still pass (no false refusal)."""
    batch = KeyedJagged(["a"], torch.arange(6), torch.tensor([0, 6, 0], dtype=torch.int32))
    assert batch.offsets().tolist() == [0, 0, 6, 6]
    rows = JaggedRows(torch.arange(12.0).reshape(6, 2), torch.tensor([0, 6, 0]))
    assert rows.to_padded().shape == (3, 6, 2)


#: (name, constructor call, expected error type, message pattern): each names the argument.
BAD_BATCHES = [
    ("keys_string", lambda: KeyedJagged("a", torch.arange(2), torch.tensor([2])), TypeError, "keys must be a sequence"),
    ("keys_repeated", lambda: KeyedJagged(["a", "a"], torch.arange(2), torch.tensor([1, 1])), ValueError, "distinct"),
    ("keys_int", lambda: KeyedJagged([1], torch.arange(2), torch.tensor([2])), TypeError, "keys must be strings"),
    ("values_float", lambda: KeyedJagged(["a"], torch.arange(2.0), torch.tensor([2])), TypeError, "values"),
    ("values_2d", lambda: KeyedJagged(["a"], torch.arange(2).view(1, 2), torch.tensor([2])), ValueError, "values must be 1-D"),
    ("lengths_float", lambda: KeyedJagged(["a"], torch.arange(2), torch.tensor([2.0])), TypeError, "lengths"),
    ("lengths_list", lambda: KeyedJagged(["a"], torch.arange(2), [2]), TypeError, "lengths"),
    ("lengths_2d", lambda: KeyedJagged(["a"], torch.arange(2), torch.tensor([[2]])), ValueError, "lengths must be 1-D"),
    ("lengths_not_multiple", lambda: KeyedJagged(["a", "b"], torch.arange(3), torch.tensor([1, 1, 1])), ValueError,
     "lengths has 3 entries"),
    ("weights_shape", lambda: KeyedJagged(["a"], torch.arange(2), torch.tensor([2]), weights=torch.ones(3)), ValueError,
     "weights"),
    ("weights_int", lambda: KeyedJagged(["a"], torch.arange(2), torch.tensor([2]), weights=torch.ones(2).long()),
     TypeError, "weights"),
    ("offsets_start", lambda: KeyedJagged(["a"], torch.arange(2), offsets=torch.tensor([1, 2])), ValueError,
     "offsets must start at 0"),
    ("neither", lambda: KeyedJagged(["a"], torch.arange(2)), ValueError, "exactly one of lengths and offsets"),
    ("from_dict_float", lambda: KeyedJagged.from_dict({"a": [[1.5]]}), TypeError, "ids must be integers"),
    ("from_dict_batches", lambda: KeyedJagged.from_dict({"a": [[1]], "b": [[1], [2]]}), ValueError,
     "same number of examples"),
    ("from_dict_string", lambda: KeyedJagged.from_dict({"a": "x"}), TypeError, "ids\\['a'\\]"),
    ("from_padded_float", lambda: KeyedJagged.from_padded({"a": torch.ones(3, 2)}, 0), TypeError, "padded"),
]


def bad_batch(index: int) -> None:
    BAD_BATCHES[index][1]()


def fused_lookup_error_leaves_state(rule: str, bad_id: int, pooled: bool) -> None:
    """An id outside its table: the error names it; weights and fused state are unchanged."""
    from _harness import clone_state, raises, unchanged

    torch.manual_seed(0)
    config = TableConfig(name="t", num_embeddings=10, embedding_dim=4, feature_names=["a", "b"],
                         pooling="sum" if pooled else "none")
    module = (embtable.EmbeddingBagCollection if pooled else embtable.EmbeddingCollection)([config])
    opt = embtable.optim.fuse(module, rule, lr=0.1)
    good = KeyedJagged.from_dict({"a": [[1, 2], [3]], "b": [[4], []]})
    out = module(good)
    (out.values() if pooled else out["a"].values).sum().backward()
    bad = KeyedJagged.from_dict({"a": [[1, bad_id], [3]], "b": [[4], []]})
    snap = lambda: (clone_state(dict(module.named_parameters())),  # noqa: E731
                    clone_state({i: dict(s) for i, s in enumerate(opt.state.values())}))
    with unchanged(snap):
        raise raises(IndexError, module, bad)


CASES: CaseList = [case("corruption", "valid_wide_lengths", valid_wide_lengths)]
for _i, (_name, _call, _exc, _match) in enumerate(BAD_BATCHES):
    CASES.append(case("error", f"batch_{_name}", bad_batch, _i, expect=_exc, match=_match))
for _rule in ("sgd", "adam", "rowwise_adagrad"):
    for _bad in (10, -1, 2**40):
        for _pooled in (True, False):
            CASES.append(case("loss", f"fused_lookup_error_{_rule}_{_bad}_{'pooled' if _pooled else 'jagged'}",
                              fused_lookup_error_leaves_state, _rule, _bad, _pooled, expect=IndexError,
                              match=str(_bad)))
for _name, _lengths, _count in BAD_LENGTHS:
    CASES += [
        case("crash", f"kj_lengths_{_name}", keyed_jagged_refuses, _lengths, _count, "int64",
             expect=ValueError, match="KeyedJagged: lengths"),
        case("crash", f"kj_offsets_{_name}", keyed_jagged_offsets_refuse, _lengths, _count,
             expect=ValueError, match="KeyedJagged: offsets"),
        case("crash", f"bucket_ids_compiled_{_name}", bucket_ids_refuses, _lengths, _count, True,
             expect=Exception, match="bucket_ids: (lengths|.*lengths\\[)"),
        case("crash", f"bucket_ids_reference_{_name}", bucket_ids_refuses, _lengths, _count, False,
             expect=ValueError, match="bucket_ids: lengths"),
        case("crash", f"to_padded_{_name}", to_padded_refuses, _lengths, _count,
             expect=ValueError, match="JaggedRows.to_padded: lengths"),
        case("crash", f"ebc_unvalidated_{_name}", unvalidated_collection_survives, _lengths, _count, True),
        case("crash", f"ec_unvalidated_{_name}", unvalidated_collection_survives, _lengths, _count, False),
    ]
for _lengths in ([2**30] * 4, [2**31 - 1, 1, 0, 0], [-5, 5, 0, 0]):
    CASES.append(case("crash", f"kj_int32_lengths_{_lengths[0]}_{_lengths[1]}", keyed_jagged_refuses,
                      _lengths, 0, "int32", expect=ValueError, match="KeyedJagged: lengths"))


@pytest.mark.parametrize("item", CASES, ids=lambda c: c.name)
def test_case(item, outcomes):
    problem = verdict(item, outcomes[item.name])
    assert problem is None, problem
