"""Memory placement (issue 11): EMBTABLE_HUGEPAGES, place_pages, huge_page_fraction.

The oracle is the kernel's own account in /proc/self/smaps (AnonHugePages).  Tests that need
transparent huge pages skip where the kernel has none or refuses the request.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from embtable.ops._memory import huge_page_fraction, hugepages_requested, place_pages

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _thp_mode() -> str | None:
    try:
        text = THP.read_text()
    except OSError:
        return None
    return text[text.index("[") + 1 : text.index("]")]


needs_thp = pytest.mark.skipif(
    sys.platform != "linux" or _thp_mode() in (None, "never"), reason="no transparent huge pages"
)


def test_hugepages_requested_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMBTABLE_HUGEPAGES", raising=False)
    assert hugepages_requested()
    monkeypatch.setenv("EMBTABLE_HUGEPAGES", "0")
    assert not hugepages_requested()
    monkeypatch.setenv("EMBTABLE_HUGEPAGES", "1")
    assert hugepages_requested()


def test_place_pages_rejects_unknown_placement() -> None:
    with pytest.raises(ValueError, match="place_pages: placement must be 'huge' or '4k', got 'big'"):
        place_pages(torch.zeros(4), "big")


def test_huge_page_fraction_of_small_and_empty_tensors() -> None:
    assert huge_page_fraction(torch.zeros(0)) == 0.0
    assert 0.0 <= huge_page_fraction(torch.zeros(16)) <= 1.0


@needs_thp
def test_place_pages_huge_then_fraction_is_high() -> None:
    table = torch.ones(1 << 23)  # 32 MiB, touched on 4 KiB pages (or huge ones in 'always')
    if not place_pages(table, "huge"):
        pytest.skip("the kernel refused MADV_HUGEPAGE / MADV_COLLAPSE")
    assert huge_page_fraction(table) > 0.85  # up to two partial 2 MiB ends stay small
    assert torch.equal(table, torch.ones(1 << 23))  # contents unchanged


@needs_thp
@pytest.mark.skipif(_thp_mode() != "madvise", reason="needs THP mode 'madvise'")
def test_embtable_tables_follow_embtable_hugepages() -> None:
    # Each setting in a fresh process: in this one, glibc may hand the table memory that an
    # earlier test freed after placing it on huge pages (its pages stay huge).
    import os
    import subprocess

    script = (
        "import embtable\n"
        "from embtable.ops._memory import huge_page_fraction\n"
        "print(huge_page_fraction(embtable.Embedding(1 << 17, 64).weight))\n"  # 32 MiB
    )

    def fraction(setting: str) -> float:
        env = dict(os.environ, EMBTABLE_HUGEPAGES=setting)
        run = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
        )
        assert run.returncode == 0, run.stderr
        return float(run.stdout.split()[-1])

    assert fraction("0") < 0.05
    assert fraction("1") > 0.5  # a fragmented machine may refuse some


def _placement_module():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "_placement.py"
    spec = importlib.util.spec_from_file_location("_placement_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_setting_switches_and_restores(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    placement = _placement_module()
    fake = tmp_path / "enabled"
    fake.write_text("always [madvise] never\n")
    monkeypatch.setattr(placement, "THP_ENABLED", str(fake))
    monkeypatch.setattr(placement.os, "geteuid", lambda: 0)
    monkeypatch.setenv("EMBTABLE_HUGEPAGES", "1")
    with placement.setting("4k", system=True):
        assert fake.read_text() == "never"
        assert not hugepages_requested()
    assert fake.read_text() == "madvise"  # the old mode, restored
    assert hugepages_requested()
    with pytest.raises(RuntimeError, match="boom"), placement.setting("huge", system=True):
        assert fake.read_text() == "always"
        raise RuntimeError("boom")
    assert fake.read_text() == "madvise"  # restored after an error too
    with pytest.raises(ValueError, match="placement must be one of"):
        with placement.setting("big"):
            pass
