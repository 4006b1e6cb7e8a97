"""The harness itself: a segfault, a hang and a huge allocation in a case are recorded as that
case's failure, and the cases after it still run (in a new child)."""

from __future__ import annotations

import ctypes
import time

import pytest
from _harness import CaseList, case, verdict


def _segfault() -> None:
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def _hang() -> None:
    while True:
        time.sleep(0.01)


def _allocate() -> None:
    bytearray(8 << 30)  # beyond the child's RLIMIT_AS: MemoryError


def _fine() -> None:
    assert sum(range(10)) == 45


CASES: CaseList = [
    case("crash", "segfault", _segfault),
    case("crash", "after_segfault", _fine),
    case("crash", "hang", _hang, timeout=2),
    case("crash", "after_hang", _fine),
    case("crash", "allocate", _allocate),
    case("crash", "after_allocate", _fine),
]

EXPECTED = {
    "segfault": "crash: signal 11",
    "hang": "hang: over 2 s",
    "allocate": "expected no error, got MemoryError",
}


@pytest.mark.parametrize("item", CASES, ids=lambda c: c.name)
def test_harness_records(item, outcomes):
    problem = verdict(item, outcomes[item.name])
    if item.name in EXPECTED:
        assert problem is not None and problem.startswith(EXPECTED[item.name]), problem
    else:
        assert problem is None, problem
