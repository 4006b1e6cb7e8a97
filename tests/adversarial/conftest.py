"""The adversarial suite's fixture: each module's ``CASES`` run once, in isolated children."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from _harness import run_cases  # noqa: E402


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest) -> dict:
    """``{case name: outcome}`` for every case of the requesting module."""
    return run_cases(request.module.__file__, request.module.CASES)
