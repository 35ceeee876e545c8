"""The docs stay true to the code: every test docs/reliability.md cites exists, and its counts add up."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RELIABILITY = REPO / "docs" / "reliability.md"


def test_every_test_the_reliability_page_cites_exists():
    text = RELIABILITY.read_text()
    cited = set(re.findall(r"tests/(test_\w+)\.py::(test_\w+)", text))
    assert len(cited) > 100
    missing = [
        f"tests/{module}.py::{name}"
        for module, name in sorted(cited)
        if not re.search(rf"^def {name}\(", (REPO / "tests" / f"{module}.py").read_text(), re.M)
    ]
    assert missing == []


def test_the_reliability_summary_counts_the_rows_of_each_section():
    text = RELIABILITY.read_text()
    summary = dict(re.findall(r"^\| \[([A-Z])\. [^]]+\]\([^)]+\) \| (\d+) \|", text, re.M))
    assert summary, "no summary table found"
    rows = re.findall(r"^\| ([A-Z])\d+ \|", text, re.M)
    counted = {section: rows.count(section) for section in summary}
    assert counted == {section: int(count) for section, count in summary.items()}
    total = re.search(r"^\| \*\*total\*\* \| \*\*(\d+)\*\*", text, re.M)
    assert total and int(total.group(1)) == sum(counted.values())
