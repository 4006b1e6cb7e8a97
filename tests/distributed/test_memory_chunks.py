"""Rows exchanged in feature chunks (``memory_chunks``, :mod:`embtable.distributed._chunked`)
on 2 gloo processes: the same outputs and tables as one exchange, and as one process."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(__file__))  # the children import _dist_workers by name

import _dist_harness as _harness  # noqa: E402
import _memory_workers as _workers  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)


def test_chunked_exchange_equals_one_exchange() -> None:
    _harness.spawn(_workers.chunked_worker, 2)


def test_int32_ids_kept_in_place() -> None:
    _harness.spawn(_workers.int32_ids_worker, 2)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(0, 6), st.integers(0, 2**31))
def test_shift_in_place_matches_bucket_ids(num_features, batch, seed) -> None:
    """``_shift_in_place`` (int32 ids shifted where they are) against the reference
    ``bucket_ids`` (a new int64 tensor): the same ids and offsets; the ids are ``values``."""
    from embtable.distributed._base import _shift_in_place
    from embtable.ops import _reference

    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 20, (num_features,), generator=g)
    rows = torch.stack([torch.cumsum(sizes, 0) - sizes, sizes], 1)
    lengths = torch.randint(0, 4, (num_features * batch,), generator=g)
    counts = lengths.view(num_features, batch).sum(1) if batch else torch.zeros(num_features)
    values = torch.cat(
        [torch.randint(0, int(n), (int(c),), generator=g) for n, c in zip(sizes, counts)]
    )
    want_ids, want_offsets = _reference.bucket_ids(values, lengths, rows, batch)
    given_values = values.to(torch.int32)
    ids, offsets = _shift_in_place(given_values, lengths, rows, batch)
    assert ids is given_values and ids.dtype == torch.int32
    assert torch.equal(ids.long(), want_ids) and torch.equal(offsets, want_offsets)
