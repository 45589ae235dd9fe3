"""README.md stays short and points into docs/; every relative link of the docs resolves."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_readme_is_short_and_links_the_docs():
    text = (REPO / "README.md").read_text()
    # the prose; the claims table between the markers is generated, one row per claim
    head, rest = text.split("<!-- claims:begin", 1)
    prose = head + rest.split("<!-- claims:end -->", 1)[-1]
    assert len(prose.splitlines()) <= 125
    for d in (
        "drivers",
        "adding-a-driver",
        "workloads",
        "engine",
        "devicemapper",
        "reliability",
        "results",
        "architecture",
        "development",
    ):
        assert f"(docs/{d}.md)" in text, d
    assert text.count("<!-- claims:begin") == text.count("<!-- claims:end -->") == 1


def test_relative_links_resolve():
    broken = []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(REPO)} → {target}")
    assert not broken, broken
