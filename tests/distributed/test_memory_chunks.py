"""Rows exchanged in feature chunks (``memory_chunks``, :mod:`embtable.distributed._chunked`)
on 2 gloo processes: the same outputs and tables as one exchange, and as one process."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # the children import _dist_workers by name

import _dist_harness as _harness  # noqa: E402
import _memory_workers as _workers  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)


def test_chunked_exchange_equals_one_exchange() -> None:
    _harness.spawn(_workers.chunked_worker, 2)
