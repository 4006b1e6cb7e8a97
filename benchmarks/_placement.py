"""Equal memory placement for every contender of a benchmark (issue 11).

embtable asks for transparent huge pages for its big tables and optimizer state
(``embtable.ops._memory``); torch's modules, the torch loop and FBGEMM's tables do not.  A
benchmark that compares them must put every contender on the same pages.  Two settings:

* ``4k``: ``EMBTABLE_HUGEPAGES=0`` while the contenders are built (embtable asks for nothing,
  so with the system's THP mode ``madvise`` every table is on 4 KiB pages) and
  ``MADV_NOHUGEPAGE`` on every big anonymous mapping of the process before timing (no page is
  collapsed later by ``khugepaged``).
* ``huge``: after the contenders are built and warmed up (lazy optimizer state exists), every
  big anonymous mapping of the process (every contender's tables and state, whoever allocated
  them) is marked ``MADV_HUGEPAGE`` and collapsed into 2 MiB pages (``MADV_COLLAPSE``).

Either way the benchmark prints the share of each contender's table that the kernel really
backs with huge pages (``/proc/self/smaps``), so a figure's placement is measured, not assumed.
Memory allocated during a timed step (gradients, temporaries) gets what a fresh allocation
gets in THP mode ``madvise``: 4 KiB pages, for every contender alike.

``--thp-system`` (root only) instead writes ``never`` / ``always`` to
``/sys/kernel/mm/transparent_hugepage/enabled`` around the run and restores the old value in a
``finally``.  It is off by default: the setting is machine-wide, and on a shared machine it
changes the placement of everybody else's processes too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator

import torch

from embtable.ops._memory import (
    _MADV_COLLAPSE,
    _MADV_HUGEPAGE,
    _MADV_NOHUGEPAGE,
    _madvise,
    huge_page_fraction,
)

PLACEMENTS = ("4k", "huge")
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
_MIN_REGION = 4 << 20
_HUGE = 2 << 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--placement", choices=("4k", "huge", "both"), default="both",
                        help="memory placement for every contender (default: both, one after the other)")
    parser.add_argument("--thp-system", action="store_true",
                        help="as root, switch the machine-wide THP mode (never/always) around each "
                             "setting instead of madvise on the process's mappings")


def chosen(args: argparse.Namespace) -> list[str]:
    return list(PLACEMENTS) if args.placement == "both" else [args.placement]


def thp_mode() -> str:
    try:
        with open(THP_ENABLED) as f:
            text = f.read()
        if "[" in text:  # sysfs marks the active mode: "always [madvise] never"
            return text[text.index("[") + 1 : text.index("]")]
        return text.strip() or "unavailable"
    except (OSError, ValueError):
        return "unavailable"


@contextlib.contextmanager
def setting(placement: str, system: bool = False) -> Iterator[None]:
    """Build the contenders inside this block: embtable's own request follows ``placement``.

    With ``system``, the machine-wide THP mode is ``never`` (4k) / ``always`` (huge) inside
    the block and restored after it.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"setting: placement must be one of {PLACEMENTS}, got {placement!r}")
    old_env = os.environ.get("EMBTABLE_HUGEPAGES")
    old_mode = None
    os.environ["EMBTABLE_HUGEPAGES"] = "1" if placement == "huge" else "0"
    try:
        if system:
            if os.geteuid() != 0:
                raise PermissionError("--thp-system needs root")
            old_mode = thp_mode()
            with open(THP_ENABLED, "w") as f:
                f.write("always" if placement == "huge" else "never")
        yield
    finally:
        if old_mode is not None and old_mode != "unavailable":
            with open(THP_ENABLED, "w") as f:
                f.write(old_mode)
        if old_env is None:
            os.environ.pop("EMBTABLE_HUGEPAGES", None)
        else:
            os.environ["EMBTABLE_HUGEPAGES"] = old_env


def _anonymous_regions() -> list[tuple[int, int]]:
    regions = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            path = parts[5] if len(parts) > 5 else ""
            if "rw" not in parts[1] or path not in ("", "[heap]"):
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            start, end = (start + _HUGE - 1) & ~(_HUGE - 1), end & ~(_HUGE - 1)
            if end - start >= _MIN_REGION:
                regions.append((start, end))
    return regions


def apply(placement: str) -> int:
    """Place every big anonymous mapping of this process (all contenders' tables and state).

    Call after the contenders are built and warmed up, before timing.  Returns the bytes
    placed.
    """
    total = 0
    for start, end in _anonymous_regions():
        if placement == "huge":
            _madvise(start, end, _MADV_HUGEPAGE)
            _madvise(start, end, _MADV_COLLAPSE)
        else:
            _madvise(start, end, _MADV_NOHUGEPAGE)
        total += end - start
    return total


def describe(placement: str, tables: dict[str, list[torch.Tensor]], system: bool = False) -> str:
    """One line: the setting and, per contender, the share of its tables on huge pages."""
    shares = []
    for name, tensors in tables.items():
        size = sum(t.nbytes for t in tensors)
        huge = sum(huge_page_fraction(t) * t.nbytes for t in tensors)
        shares.append(f"{name} {100 * huge / max(size, 1):.0f}%")
    how = (f"THP mode switched to {'always' if placement == 'huge' else 'never'}" if system
           else f"THP mode {thp_mode()}, every big mapping "
                + ("madvise(HUGEPAGE)+MADV_COLLAPSE" if placement == "huge"
                   else "madvise(NOHUGEPAGE), EMBTABLE_HUGEPAGES=0"))
    return f"placement {placement} ({how}); tables on huge pages: " + ", ".join(shares)


def unequal(tables: dict[str, list[torch.Tensor]], placement: str) -> list[str]:
    """Contenders whose tables are not where ``placement`` says (share < 90% / > 10%)."""
    wrong = []
    for name, tensors in tables.items():
        size = sum(t.nbytes for t in tensors)
        share = sum(huge_page_fraction(t) * t.nbytes for t in tensors) / max(size, 1)
        if (placement == "huge" and share < 0.9) or (placement == "4k" and share > 0.1):
            wrong.append(f"{name} {100 * share:.0f}%")
    return wrong
