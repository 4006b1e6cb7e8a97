"""``scale_grad_by_freq`` across shards (issue 17 item 2): 2 gloo processes on 127.0.0.1.

Owners of row-, table- and column-wise shards receive every id of their rows from the whole
global batch, so counting ids per feature over the received bags is counting them over the
global batch: the tables after 3 fused steps (SGD, row-wise Adagrad) equal the one-process
collection on the concatenated global batches; data-parallel replicas see their own rank's
ids only and sum the counts over the ranks first.  Workers: ``_dist_scale_workers.py``.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # the children import the workers by name

import _dist_harness as _harness  # noqa: E402
import _dist_scale_workers as _workers  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)


def test_scale_grad_by_freq_on_two_ranks_equals_one_process() -> None:
    _harness.spawn(_workers.check_scaled, 2)
