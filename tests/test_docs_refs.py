"""docs/reliability.md names the test behind each guarantee: every test it names must exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_named_in_reliability_md_exists():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    defined = set()
    for file in (ROOT / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_\w+)", file.read_text(), flags=re.M))
    named = set(re.findall(r"(?<![\w/.])(test_\w+)(?=[`\[(]|::| \()", doc))
    named = {n for n in named if not (ROOT / "tests" / f"{n}.py").exists()}  # module names are not tests
    assert len(named) > 60  # the doc's tables, not an accident of the pattern
    assert sorted(named - defined) == []
