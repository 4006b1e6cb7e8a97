"""Per-value weights that require a gradient: the sharded collections refuse them on every
rank, before any exchange or update (their exchange is outside autograd, so a gradient to
the weights would otherwise be missing on some ranks and an error on others)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import _dist_harness as _harness  # noqa: E402
import _weights_grad_workers as _workers  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)


def test_weights_needing_a_gradient_are_refused_on_every_rank() -> None:
    _harness.spawn(_workers.weights_needing_grad, 2, timeout_s=30.0)
