"""The claims catalogue (claims.toml) and the published reference figures (references.toml),
loaded and checked: data, not prose in code. The catalogue accounts for every line of the
slides: a claim's quote (or one of its `also` lines, decided by the same rule), an
[[undecidable]] entry saying why no measurement decides it, or a heading or shell output."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

from cowlab.base.errors import CowlabError

KINDS = {"ratio", "value", "param"}
HOLDS_IF = {"above", "below", "between"}
FIGURE_KINDS = {"line", "bars"}


@dataclass(frozen=True)
class Rule:
    kind: str
    holds_if: str
    why: str
    threshold: float | None = None
    low: float | None = None
    high: float | None = None
    num: dict = field(default_factory=dict)
    den: dict = field(default_factory=dict)
    at: dict = field(default_factory=dict)
    split: tuple[str, ...] = ()
    param: str = ""  # kind "param": the largest value of this parameter among the samples

    def passes(self, v: float) -> bool:
        # the loader (_need) insists on threshold for above/below and on low and high for between
        if self.holds_if == "above":
            assert self.threshold is not None
            return v >= self.threshold
        if self.holds_if == "below":
            assert self.threshold is not None
            return v <= self.threshold
        assert self.low is not None and self.high is not None
        return self.low <= v <= self.high

    def test_text(self, fmt) -> str:
        """'≤ 2×', '≥ 10×', '64 KiB – 128 KiB': the condition under which the claim holds."""
        if self.holds_if == "between":
            return f"{fmt(self.low)} – {fmt(self.high)}"
        return f"{'≥' if self.holds_if == 'above' else '≤'} {fmt(self.threshold)}"


@dataclass(frozen=True)
class Claim:
    id: str
    section: str
    quote: str
    mechanism: str
    workload: str
    metric: str
    rule: Rule
    mode: str = "primitive"
    applies_to: tuple[str, ...] = ()
    where: dict = field(default_factory=dict)
    command: str = ""
    figure: dict = field(default_factory=dict)
    fallback: tuple = ()  # ({metric, where}, ...): what decides where the preferred metric is missing
    also: tuple[str, ...] = ()  # more slide lines the same rule decides (their exact words)

    @property
    def lines(self) -> tuple[str, ...]:
        return (self.quote, *self.also)

    def variants(self) -> list[Claim]:
        """The claim with its preferred metric, then with each fallback metric."""
        return [
            self,
            *(replace(self, metric=f["metric"], where=dict(f.get("where", {})), fallback=()) for f in self.fallback),
        ]

    def measure_command(self, driver: str) -> str:
        if self.command:
            return self.command.format(driver=driver)
        mode = " --mode engine" if self.mode == "engine" else ""
        return f"sudo nox -s bench-{driver} --{mode} --workload {self.workload}"

    def applies(self, driver: str) -> bool:
        return not self.applies_to or driver in self.applies_to


@dataclass(frozen=True)
class Undecidable:
    """A slide line no claim decides, and why: `testable` says a measurement could decide it
    (no workload records one yet: it counts among the lines to decide) or not (a heading's
    lead-in, a definition, history, a metaphor, advice)."""

    quote: str
    section: str
    why: str
    testable: bool


@dataclass(frozen=True)
class Reference:
    id: str
    claim: str
    what: str
    value: float | None
    unit: str
    source: str
    url: str
    verified: str
    ours: dict = field(default_factory=dict)


def _text(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _need(d: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise CowlabError(f"{where}: missing {', '.join(missing)}")


def parse_claims(text: str, origin: str = "claims.toml") -> list[Claim]:
    """Claims from TOML text; bad entries are an error naming the claim and the field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise CowlabError(f"{origin}: {e}") from None
    out, seen = [], set()
    for i, c in enumerate(data.get("claim", [])):
        where = f"{origin}: claim {c.get('id', f'#{i + 1}')}"
        _need(c, ("id", "section", "quote", "mechanism", "workload", "metric", "rule"), where)
        if c["id"] in seen:
            raise CowlabError(f"{where}: duplicate id")
        seen.add(c["id"])
        r = dict(c["rule"])
        _need(r, ("kind", "holds_if", "why"), f"{where} rule")
        if r["kind"] not in KINDS:
            raise CowlabError(f"{where}: rule kind {r['kind']!r} is not one of {sorted(KINDS)}")
        if r["holds_if"] not in HOLDS_IF:
            raise CowlabError(f"{where}: holds_if {r['holds_if']!r} is not one of {sorted(HOLDS_IF)}")
        if r["holds_if"] == "between":
            _need(r, ("low", "high"), f"{where} rule")
        else:
            _need(r, ("threshold",), f"{where} rule")
        if r["kind"] == "ratio":
            _need(r, ("num", "den"), f"{where} rule")
        if r["kind"] == "param":
            _need(r, ("param",), f"{where} rule")
        r["split"] = tuple(r.get("split", ()))
        fig = dict(c.get("figure", {}))
        if fig and fig.get("kind") not in FIGURE_KINDS:
            raise CowlabError(f"{where}: figure kind {fig.get('kind')!r} is not one of {sorted(FIGURE_KINDS)}")
        out.append(
            Claim(
                id=c["id"],
                section=c["section"],
                quote=c["quote"],
                mechanism=c["mechanism"],
                workload=c["workload"],
                metric=c["metric"],
                rule=Rule(**r),
                mode=c.get("mode", "primitive"),
                applies_to=tuple(c.get("applies_to", ())),
                where=dict(c.get("where", {})),
                command=c.get("command", ""),
                figure=fig,
                fallback=tuple(dict(f) for f in c.get("fallback", ())),
                also=tuple(c.get("also", ())),
            )
        )
    if not out:
        raise CowlabError(f"{origin}: no [[claim]] entries")
    return out


def claims() -> list[Claim]:
    return parse_claims(_text("claims.toml"))


def undecidable(text: str | None = None) -> list[Undecidable]:
    """The [[undecidable]] entries: slide lines no measurement decides (or none does yet)."""
    data = tomllib.loads(text if text is not None else _text("claims.toml"))
    out = []
    for i, u in enumerate(data.get("undecidable", [])):
        _need(u, ("quote", "section", "why", "testable"), f"claims.toml: undecidable #{i + 1}")
        out.append(Undecidable(quote=u["quote"], section=u["section"], why=u["why"], testable=bool(u["testable"])))
    return out


def slide_furniture(text: str | None = None) -> tuple[list[str], list[str]]:
    """(headings and list labels, shell lines) of the slides: lines that state nothing."""
    s = tomllib.loads(text if text is not None else _text("claims.toml")).get("slides", {})
    return list(s.get("headings", [])), list(s.get("code", []))


def coverage(cs: list[Claim], verdicts: list[dict]) -> dict:
    """How many of the slide lines a measurement can decide these verdicts decide: the lines
    of every claim plus the testable [[undecidable]] ones; a line is decided when one of its
    claims has a holds, fails or depends verdict."""
    words = {"holds", "fails", "depends"}
    decided_claims = {v["claim"] for v in verdicts if v["verdict"] in words}
    lines: dict[str, bool] = {}
    for c in cs:
        for q in c.lines:
            lines[" ".join(q.split())] = lines.get(" ".join(q.split()), False) or c.id in decided_claims
    waiting = [u for u in undecidable() if u.testable]
    for u in waiting:
        lines.setdefault(" ".join(u.quote.split()), False)
    return {
        "decided": sum(lines.values()),
        "testable": len(lines),
        "claimed": len({" ".join(q.split()) for c in cs for q in c.lines}),
        "no_workload": len(waiting),
        "not_decidable": sum(not u.testable for u in undecidable()),
    }


def references() -> list[Reference]:
    data = tomllib.loads(_text("references.toml"))
    out = []
    for r in data.get("reference", []):
        _need(r, ("id", "claim", "what", "unit", "source", "url", "verified"), f"references.toml: {r.get('id')}")
        out.append(
            Reference(
                id=r["id"],
                claim=r["claim"],
                what=r["what"],
                value=r.get("value"),
                unit=r["unit"],
                source=r["source"],
                url=r["url"],
                verified=r["verified"],
                ours=dict(r.get("ours", {})),
            )
        )
    return out


def as_dict(c: Claim) -> dict[str, Any]:
    return {
        "id": c.id,
        "section": c.section,
        "quote": c.quote,
        "workload": c.workload,
        "metric": c.metric,
        "mode": c.mode,
        "applies_to": list(c.applies_to),
    }
