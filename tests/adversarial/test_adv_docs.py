"""docs/reliability.md's table of adversarial cases by class matches the cases in the code."""

from __future__ import annotations

import collections
import importlib.util
import re
from pathlib import Path

from _harness import KINDS, check_names

HERE = Path(__file__).parent
DOC = HERE.parent.parent / "docs" / "reliability.md"


def _cases():
    cases = []
    for file in sorted(HERE.glob("test_adv_*.py")):
        if file.name == Path(__file__).name:
            continue
        spec = importlib.util.spec_from_file_location(f"adv_count_{file.stem}", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        cases += module.CASES
    return cases


def test_counts_in_docs_match_the_cases():
    cases = _cases()
    check_names([c for c in cases])  # names are unique within modules; across is fine too
    counts = collections.Counter(c.kind for c in cases)
    text = DOC.read_text(encoding="utf-8")
    table = text.split("<!-- adversarial-counts -->")[1].split("<!-- /adversarial-counts -->")[0]
    documented = dict(re.findall(r"^\| ([a-z ]+) \| (\d+) \|$", table, re.MULTILINE))
    expected = {label: str(counts[kind]) for kind, label in KINDS.items()}
    expected["total"] = str(len(cases))
    assert documented == expected
    assert all(counts[kind] >= 20 for kind in KINDS), counts  # every class has many cases
