"""Where a step's memory goes: live tensors at the step's peak and glibc's own count.

Used by ``benchmarks/sharded.py --memory-account``.  Two sources:

* the torch profiler's allocation events (``profile_memory=True, with_stack=True``): every CPU
  allocation and free of the profiled step in order; replaying them gives the bytes of tensors
  alive at the step's peak, grouped by the Python call chain that allocated them;
* glibc's ``mallinfo2()``: bytes in use (``uordblks`` + ``hblkhd``), free bytes kept inside
  the heap (``fordblks``: freed memory glibc did not return), the main arena's size.

RSS counts both the bytes in use and the free pages glibc keeps, so the difference between
RSS growth and the bytes in use is the heap's fragmentation (and freed memory not returned).
"""

from __future__ import annotations

import ctypes
from collections import defaultdict
from typing import Any

import torch


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]


def heap() -> dict[str, int]:
    """glibc's count (bytes): ``inuse`` (heap + mmapped blocks in use), ``free`` (free bytes
    kept in the heap), ``arena`` (the heap's size), ``mmapped`` (blocks mapped on their own).
    All zero where ``mallinfo2`` is missing (not glibc, or glibc < 2.33)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        call = libc.mallinfo2
    except (OSError, AttributeError):
        return {"inuse": 0, "free": 0, "arena": 0, "mmapped": 0}
    call.restype = _Mallinfo2
    info = call()
    return {
        "inuse": info.uordblks + info.hblkhd,
        "free": info.fordblks,
        "arena": info.arena,
        "mmapped": info.hblkhd,
    }


def profiler() -> torch.profiler.profile:
    """A profiler that records CPU allocations with their Python call chains."""
    return torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True, with_stack=True
    )


def _chain(event: Any, depth: int = 5) -> str:
    """The names of the calls above an allocation (innermost first), without the profiler's
    own frames and built-ins."""
    names: list[str] = []
    parent = event.parent
    while parent is not None and len(names) < depth:
        name = parent.name
        if not name.startswith("<built-in") and "profiler" not in name:
            names.append(name.split("/")[-1][:60])
        parent = parent.parent
    return " <- ".join(names)


def live_at_peak(prof: torch.profiler.profile, top: int = 12) -> dict[str, Any]:
    """Replay the profiled allocations: the peak of the bytes allocated during the profile
    (above what was alive when it started) and the tensors alive at that moment, grouped by
    their call chain, largest first (``top`` groups: ``[chain, bytes, count]``)."""
    from torch._C._profiler import _EventType

    allocations: list[Any] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == "cpu":
            allocations.append(event)
        stack.extend(event.children)
    allocations.sort(key=lambda e: e.start_time_ns)
    if not allocations:
        return {"peak": 0, "live": 0, "groups": []}
    first = allocations[0].extra_fields
    base = first.total_allocated - first.alloc_size
    live: dict[int, tuple[int, Any]] = {}
    peak, at_peak = 0, {}
    for event in allocations:
        fields = event.extra_fields
        if fields.alloc_size > 0:
            live[fields.ptr] = (fields.alloc_size, event)
        else:
            live.pop(fields.ptr, None)
        if fields.total_allocated - base > peak:
            peak, at_peak = fields.total_allocated - base, dict(live)
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for size, event in at_peak.values():
        group = groups[_chain(event)]
        group[0] += size
        group[1] += 1
    ordered = sorted(groups.items(), key=lambda item: -item[1][0])[:top]
    return {
        "peak": peak,
        "live": sum(size for size, _ in at_peak.values()),
        "groups": [[chain, size, count] for chain, (size, count) in ordered],
    }
