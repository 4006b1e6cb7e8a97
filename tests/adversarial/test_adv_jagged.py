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
    if compiled:
        if not embtable.ops.extension_available():
            raise RuntimeError("embtable::bucket_ids: (extension not built) lengths refused")
        torch.ops.embtable.bucket_ids(values, tensor, _feature_rows(), len(lengths) // 2)
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


CASES: CaseList = [case("corruption", "valid_wide_lengths", valid_wide_lengths)]
for _name, _lengths, _count in BAD_LENGTHS:
    CASES += [
        case("crash", f"kj_lengths_{_name}", keyed_jagged_refuses, _lengths, _count, "int64",
             expect=ValueError, match="KeyedJagged: lengths"),
        case("crash", f"kj_offsets_{_name}", keyed_jagged_offsets_refuse, _lengths, _count,
             expect=ValueError, match="KeyedJagged: offsets"),
        case("crash", f"bucket_ids_compiled_{_name}", bucket_ids_refuses, _lengths, _count, True,
             expect=RuntimeError, match="embtable::bucket_ids: "),
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
