"""The catalogue accounts for every line of the slides, line by line: a claim (or a line its rule
also decides), an [[undecidable]] entry with why, or a heading or shell output; every rule reads
a metric some workload records; and the page and README say how many lines the results decide."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pytest

from cowlab.report import catalogue, render, verdicts

REPO = Path(__file__).resolve().parents[1]
SLIDES = sorted(Path(os.environ.get("COWLAB_SLIDES", "/work/shared/reference")).glob("000_*.txt"))


def _norm(s: str) -> str:
    return " ".join(s.split())


def _slide_lines() -> list[str]:
    return [_norm(line.strip().lstrip("•")) for line in SLIDES[0].read_text().splitlines() if line.strip()]


@pytest.mark.skipif(not SLIDES, reason="slide text not found (set COWLAB_SLIDES to the directory of 000_*.txt)")
def test_every_slide_line_is_a_claim_an_undecidable_entry_or_a_heading():
    cs, us = catalogue.claims(), catalogue.undecidable()
    headings, code = catalogue.slide_furniture()
    claimed = {_norm(q) for c in cs for q in c.lines}
    why_not = {_norm(u.quote) for u in us}
    furniture = {_norm(x) for x in headings + code}
    left_out = [line for line in _slide_lines() if line not in claimed | why_not | furniture]
    assert left_out == [], "slide lines with no claim and no [[undecidable]] entry"
    # and no line is both claimed and called undecidable, nor invented
    assert claimed & why_not == set()
    text = _norm(SLIDES[0].read_text())
    assert [q for q in claimed | why_not | furniture if q not in text] == []


def test_every_undecidable_line_says_why_and_a_testable_one_what_would_decide_it():
    us = catalogue.undecidable()
    assert len({u.quote for u in us}) == len(us)
    for u in us:
        assert len(u.why) >= 8, u.quote
        if u.testable:
            assert re.search(r"would decide|would show", u.why), u.quote


def test_every_rule_reads_a_metric_some_workload_or_lab_records():
    """A claim's metrics are named (as a string) by the code that measures: a workload, a probe,
    the engine's workloads or the thin-pool lab; a rule over a metric nothing records would stay
    "not measured" for ever."""
    cowlab = REPO / "src" / "cowlab"
    measuring = [*(cowlab / "measure").rglob("*.py"), *(cowlab / "labs").rglob("*.py"), cowlab / "cli" / "lab.py"]
    src = "\n".join(p.read_text() for p in measuring)
    for c in catalogue.claims():
        metrics = {
            c.metric,
            *(f["metric"] for f in c.fallback),
            *(s["metric"] for s in (c.rule.num, c.rule.den) if "metric" in s),
        }
        assert [m for m in metrics if f'"{m}"' not in src] == [], c.id


def test_the_report_says_how_many_slide_lines_it_decides():
    cs = catalogue.claims()
    none = verdicts.evaluate(cs, pd.DataFrame(), drivers=["overlay2"])
    cov = catalogue.coverage(cs, none)
    testable = {_norm(q) for c in cs for q in c.lines} | {_norm(u.quote) for u in catalogue.undecidable() if u.testable}
    assert cov["decided"] == 0 and cov["testable"] == len(testable)
    md = render.summary_markdown(cs, none)
    assert md.startswith(f"**Decided 0 of {len(testable)} slide lines**")
    # a line is decided once one of its claims holds, fails or depends somewhere
    one = [{"claim": "own-copy", "verdict": "fails"}]
    assert catalogue.coverage(cs, one)["decided"] == 1 + len(next(c for c in cs if c.id == "own-copy").also)
    assert catalogue.coverage(cs, [{"claim": "own-copy", "verdict": "inconclusive"}])["decided"] == 0
