"""Verdicts: each claim of the catalogue decided from samples, per claim × driver × host.

A host is (hostname, kernel, emulated): emulated (TCG) runs are their own host and never pooled
with native ones. Within a host the full grid decides when it has the data, else the quick grid;
the two are never pooled, and the verdict says which one it used and what it left out.

The five verdicts: "holds" and "fails" (the statistic's bootstrap confidence interval lies wholly
on one side of the rule's threshold: cowlab.report.intervals), "inconclusive" (the interval
straddles it; `decide` says what would decide it: about how many repetitions), "depends" (split
values decided differently; `condition` says where it holds and where it fails) and "not
measured" (`why`, and `command`: what would measure it). Samples all equal on every side (a
deterministic outcome) are exact, not resampled.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from cowlab.report import intervals
from cowlab.report.catalogue import Claim, Rule
from cowlab.report.format import fmt_param, fmt_ratio, fmt_value
from cowlab.report.hosts import GRIDS, Host, grid_of, host_of, prepare  # noqa: F401  (verdicts' API)
from cowlab.storage.drivers import DRIVERS

VERDICTS = ("holds", "fails", "depends", "inconclusive", "not measured")
DECIDED = ("holds", "fails")
FEW = 5  # fewer samples than this on a side are flagged (the "fewer than 5 samples")
SPECIAL = ("max", "min")


def _mask(rows: pd.DataFrame, col: str, want: Any) -> pd.Series:
    if col not in rows.columns:
        return pd.Series(False, index=rows.index)
    s = rows[col]
    if isinstance(want, (list, tuple, set)):
        mask = s.isin(list(want))
    elif isinstance(want, bool):
        mask = s.map(lambda v: v is want or v == want)
    else:
        mask = s == want
    return mask.fillna(False).astype(bool)


def select(rows: pd.DataFrame, filt: dict) -> tuple[pd.DataFrame, dict]:
    """Rows matching `filt`; "max"/"min" values resolve last, to the extremes present. Returns
    the rows and the filter with those values resolved (what the verdict reports)."""
    resolved = {}
    mask = pd.Series(True, index=rows.index)
    for k, v in filt.items():
        if isinstance(v, str) and v in SPECIAL:
            continue
        mask &= _mask(rows, k, v)
        resolved[k] = v
    for k, v in filt.items():
        if isinstance(v, str) and v in SPECIAL:
            present = rows.loc[mask, k].dropna() if k in rows.columns else pd.Series(dtype=float)
            if present.empty:
                return rows.iloc[0:0], resolved
            pick = present.max() if v == "max" else present.min()
            mask &= rows[k] == pick
            resolved[k] = pick.item() if hasattr(pick, "item") else pick
    return rows.loc[mask], resolved


def _base(claim: Claim, driver: str) -> dict:
    f = {"workload": claim.workload, "metric": claim.metric, "driver": driver}
    if claim.mode != "any":
        f["mode"] = claim.mode
    return f


def _stats(v: pd.Series) -> dict:
    v = v.dropna().astype(float)
    return {"median": float(v.median()), "p10": float(v.quantile(0.1)), "p90": float(v.quantile(0.9)), "n": int(len(v))}


WARMUP = 3.0  # a first repetition this many times the rest's median is flagged as a warm-up


def warmup_outlier(rows: pd.DataFrame) -> bool:
    """True when, in some run, repetition 0 took WARMUP× the median of the later repetitions
    (a cold cache or a first mount): the median resists it, but the reader should know."""
    if rows.empty or "repetition" not in rows.columns or str(rows["unit"].iloc[0]) != "s":
        return False
    for _, g in rows.groupby("run_id"):
        first, rest = g[g["repetition"] == 0]["value"], g[g["repetition"] > 0]["value"]
        if len(rest) >= 3 and len(first) and (first > WARMUP * rest.median()).any():
            return True
    return False


def _describe(filt: dict, skip: Iterable[str] = ()) -> str:
    parts = [fmt_param(k, v) for k, v in filt.items() if k not in ("workload", "metric", "mode", *skip)]
    return ", ".join(parts)


def _evaluate_once(claim: Claim, rows: pd.DataFrame, driver: str, extra: dict) -> dict | None:
    """One evaluation of the rule on `rows` (one host, one grid); None when a side has no data."""
    r: Rule = claim.rule
    base = {**_base(claim, driver), **claim.where, **extra}
    if r.kind == "param":  # the largest parameter value measured: exact, nothing to resample
        a, fa = select(rows, {**base, **r.at})
        a = a[a["value"].notna()]
        if r.param not in a.columns or a[r.param].dropna().empty:
            return None
        top = float(pd.to_numeric(a[r.param], errors="coerce").max())
        iv = intervals.Interval(top, top, True)
        text = (
            f"largest {r.param} measured: {fmt_param(r.param, top)} (exact); holds if {r.test_text(lambda x: f'{x:g}')}"
        )
        return {
            "verdict": intervals.decide(r, iv),
            "value": top,
            "unit": "count",
            "p10": top,
            "p90": top,
            "n": int(len(a)),
            "few_samples": False,
            **_ci(iv, r, top, int(len(a)), log=False),
            "detail": text,
            "at": _describe(fa, ("driver",)),
            "warmup": False,
            "runs": sorted(set(a["run_id"])),
        }
    if r.kind == "value":
        a, fa = select(rows, {**base, **r.at})
        if a["value"].dropna().empty:
            return None
        unit = str(a["unit"].iloc[0])
        s = _stats(a["value"])
        iv = intervals.median_interval(a["value"])
        verdict = intervals.decide(r, iv)
        text = (
            f"{fmt_value(s['median'], unit)} (p10–p90 {fmt_value(s['p10'], unit)}–"
            f"{fmt_value(s['p90'], unit)}, n={s['n']}; {iv.text(lambda x: fmt_value(x, unit))}); "
            f"holds if {r.test_text(lambda x: fmt_value(x, unit))}"
        )
        if unit == "B" and s["p10"] < 0:
            text += "; some samples are negative: other writers on the shared backing filesystem"
        return {
            "verdict": verdict,
            "value": s["median"],
            "unit": unit,
            "warmup": warmup_outlier(a),
            **_ci(iv, r, s["median"], s["n"], log=False),
            "p10": s["p10"],
            "p90": s["p90"],
            "n": s["n"],
            "few_samples": s["n"] < FEW,
            "detail": text,
            "at": _describe(fa, ("driver",)),
            "runs": sorted(set(a["run_id"])),
        }
    a, fa = select(rows, {**base, **r.num})
    b, fb = select(rows, {**base, **r.den})
    if a["value"].dropna().empty or b["value"].dropna().empty:
        return None
    sa, sb = _stats(a["value"]), _stats(b["value"])
    ua, ub = str(a["unit"].iloc[0]), str(b["unit"].iloc[0])
    # nothing on either side (a rename that copies nothing at any size; ZFS's lagging space
    # count may show a stray block in one sample): no growth with the parameter, ratio 1
    zero = sa["median"] == sb["median"] == 0 and min(sa["p10"], sb["p10"]) >= 0
    if not zero and (sb["median"] <= 0 or sb["p10"] <= 0 or sa["median"] < 0):
        return {
            "verdict": "not measured",
            "value": None,
            "unit": "ratio",
            "n": sa["n"] + sb["n"],
            "why": f"the denominator's median is {fmt_value(sb['median'], ub)}: no ratio",
            "detail": "",
            "runs": sorted(set(a["run_id"]) | set(b["run_id"])),
        }
    ratio, lo, hi = (
        (1.0, 1.0, 1.0) if zero else (sa["median"] / sb["median"], sa["p10"] / sb["p90"], sa["p90"] / sb["p10"])
    )
    iv = intervals.Interval(1.0, 1.0, True) if zero else intervals.ratio_interval(a["value"], b["value"])
    skip = [k for k in base if fa.get(k) == fb.get(k)]
    na = _describe(fa, skip) or f"{fa.get('mode', claim.mode)} {fa['metric']}"
    nb = _describe(fb, skip) or f"{fb.get('mode', claim.mode)} {fb['metric']}"
    text = (
        f"{na}: {fmt_value(sa['median'], ua)} (n={sa['n']}) ÷ {nb}: "
        f"{fmt_value(sb['median'], ub)} (n={sb['n']}) = {fmt_ratio(ratio)} "
        + (
            "(median 0 on both sides: no growth)"
            if zero
            else f"(from p10/p90 {fmt_ratio(lo)}–{fmt_ratio(hi)}; {iv.text(fmt_ratio)})"
        )
        + f"; holds if {r.test_text(fmt_ratio)}"
    )
    return {
        "verdict": intervals.decide(r, iv),
        "value": ratio,
        "unit": "ratio",
        "p10": lo,
        "p90": hi,
        "n": sa["n"] + sb["n"],
        "n_num": sa["n"],
        "n_den": sb["n"],
        **_ci(iv, r, ratio, min(sa["n"], sb["n"]), log=True),
        "num": {"median": sa["median"], "unit": ua, "at": na},
        "den": {"median": sb["median"], "unit": ub, "at": nb},
        "few_samples": min(sa["n"], sb["n"]) < FEW,
        "warmup": warmup_outlier(a) or warmup_outlier(b),
        "detail": text,
        "runs": sorted(set(a["run_id"]) | set(b["run_id"])),
    }


def _ci(iv: intervals.Interval, r: Rule, estimate: float, n: int, log: bool) -> dict:
    """The interval's fields of a verdict part: its bounds, whether it is exact, and for an
    interval across the threshold the samples per side that would decide it (None: none would)."""
    out: dict[str, Any] = {
        "ci_low": iv.low,
        "ci_high": iv.high,
        "exact": iv.exact,
        "near_threshold": intervals.decide(r, iv) == "inconclusive",
        "n_side": n,
    }
    if out["near_threshold"]:
        out["reps_needed"] = intervals.reps_to_decide(r, estimate, iv, n, log=log)
    return out


def _split_values(claim: Claim, rows: pd.DataFrame, driver: str) -> list[dict]:
    """Every combination of the rule's split params present for this claim and driver."""
    if not claim.rule.split:
        return [{}]
    sel, _ = select(rows, {k: v for k, v in {**_base(claim, driver), **claim.where}.items()})
    # a param the driver does not have at all (vfs has no redirect_dir: None) splits nothing
    cols = [c for c in claim.rule.split if c in sel.columns and sel[c].notna().any()]
    if not cols or sel.empty:
        return [{}]
    combos = sel[cols].dropna().drop_duplicates()
    return [
        dict(zip(cols, (x.item() if hasattr(x, "item") else x for x in t), strict=True))
        for t in combos.itertuples(index=False, name=None)
    ]


def _cond_text(extra: dict) -> str:
    return ", ".join(
        f"{v}" if k in ("backing_fs", "cache", "job", "kind", "op") else fmt_param(k, v) for k, v in extra.items()
    )


def evaluate_one(claim: Claim, rows: pd.DataFrame, driver: str) -> dict | None:
    """The verdict of one claim for one driver on one host's rows of one grid, or None."""
    parts = []
    for extra in _split_values(claim, rows, driver):
        got = _evaluate_once(claim, rows, driver, extra)
        if got is not None:
            parts.append({**got, "condition": _cond_text(extra), "split": extra})
    if not parts:
        return None
    # a part that is "not measured" (no ratio) decides nothing; an inconclusive one keeps the
    # claim from holding or failing as a whole, unless others already decided both ways
    weighed = [p for p in parts if p["verdict"] in (*DECIDED, "inconclusive")]
    if not weighed:
        return {**parts[0], "parts": parts}
    words = {p["verdict"] for p in weighed}
    if len(words) == 1:
        main = weighed[0] if len(weighed) == 1 else _combine(weighed)
        cond = ", ".join(p["condition"] for p in weighed if p["condition"])
        out = {**main, "parts": parts if len(parts) > 1 else []}
        out["condition"] = f"on {cond}" if cond else ""
        return out
    by = {w: [p["condition"] for p in weighed if p["verdict"] == w] for w in VERDICTS}
    word = "depends" if set(DECIDED) <= words else "inconclusive"
    main = max(weighed, key=lambda p: p["n"])
    out = {
        **main,
        "verdict": word,
        "value": None,
        "condition": "; ".join(f"{w} on {', '.join(by[w])}" for w in (*DECIDED, "inconclusive") if by[w]),
        "parts": parts,
        "n": sum(p["n"] for p in weighed),
        "runs": sorted({r for p in weighed for r in p["runs"]}),
        "detail": "; ".join(f"{p['condition']}: {p['verdict']}, {p['detail']}" for p in weighed),
    }
    if word == "inconclusive":  # what decides it: the most repetitions any undecided part needs
        out["reps_needed"] = _most_reps([p.get("reps_needed") for p in weighed if p["verdict"] == "inconclusive"])
    return out


def _most_reps(need: list[int | None]) -> int | None:
    """The repetitions that decide every undecided part: the most any needs; None when one of
    them no number decides (or there is none)."""
    known = [n for n in need if n is not None]
    return max(known) if need and len(known) == len(need) else None


def _combine(parts: list[dict]) -> dict:
    """Split values that agree: the verdict with the range of values and all samples."""
    vals = [p["value"] for p in parts if p["value"] is not None]
    first = parts[0]
    return {
        **first,
        "value": float(np.median(vals)) if vals else None,
        "p10": min(p.get("p10", np.nan) for p in parts),
        "p90": max(p.get("p90", np.nan) for p in parts),
        "ci_low": min(p.get("ci_low", np.nan) for p in parts),
        "ci_high": max(p.get("ci_high", np.nan) for p in parts),
        "exact": all(p.get("exact") for p in parts),
        "reps_needed": _most_reps([p.get("reps_needed") for p in parts if p["verdict"] == "inconclusive"]),
        "n": sum(p["n"] for p in parts),
        "few_samples": any(p.get("few_samples") for p in parts),
        "near_threshold": any(p.get("near_threshold") for p in parts),
        "warmup": any(p.get("warmup") for p in parts),
        "runs": sorted({r for p in parts for r in p["runs"]}),
        "detail": "; ".join(f"{p['condition']}: {p['detail']}" for p in parts),
    }


def evaluate(claims: list[Claim], df: pd.DataFrame, drivers: Iterable[str] = ()) -> list[dict]:
    """Every claim × driver × host. `drivers`: drivers to report even without any results
    (they get "not measured" rows with the command that would measure them)."""
    df = prepare(df)
    present = sorted(set(df["driver"].dropna())) if not df.empty else []
    all_drivers = list(dict.fromkeys([*present, *drivers]))
    hosts = sorted(set(df["_host"]), key=lambda h: (h.emulated, h.hostname, h.kernel)) if not df.empty else []
    by_host = {h: g for h, g in df.groupby("_host", sort=False)} if not df.empty else {}
    drivers_on = {h: set(g["driver"]) for h, g in by_host.items()}
    out = []
    for c in claims:
        # every rule reads one workload (sides may differ in metric, mode or driver)
        cols = _columns(c)
        wl = {h: g.loc[g["workload"] == c.workload, [k for k in g.columns if k in cols]] for h, g in by_host.items()}
        for d in all_drivers:
            if not c.applies(d):
                continue
            d_hosts = [h for h in hosts if d in drivers_on[h]]
            if not d_hosts:
                out.append(_not_measured(c, d, None, f"no results for {d} in this results tree"))
                continue
            for h in d_hosts:
                out.append(_for_host(c, d, h, wl[h]))
    return out


def _columns(c: Claim) -> set[str]:
    r = c.rule
    return {
        "workload",
        "metric",
        "mode",
        "driver",
        "value",
        "unit",
        "run_id",
        "_grid",
        "_host",
        "repetition",
        *c.where,
        *r.num,
        *r.den,
        *r.at,
        *r.split,
        *(k for f in c.fallback for k in f.get("where", {})),
        *([r.param] if r.param else []),
    }


def _for_host(c: Claim, d: str, h: Host, rows: pd.DataFrame) -> dict:
    grids = [g for g in GRIDS if (rows["_grid"] == g).any()]
    for variant in c.variants():
        for g in grids:
            got = evaluate_one(variant, rows[rows["_grid"] == g], d)
            if got is None:
                continue
            others = [o for o in grids if o != g and evaluate_one(variant, rows[rows["_grid"] == o], d) is not None]
            v = _record(c, d, h, got, g)
            v["metric"] = variant.metric
            if variant is not c:
                v["notes"].append(f"decided by {variant.metric}: no {c.metric} samples here")
            if others:
                v["notes"].append(f"the {others[0]} grid's samples were left out, not pooled with the {g} grid")
            return v
    mine = rows[(rows["driver"] == d) & (rows["workload"] == c.workload)]
    modes = {m for m in (c.mode, c.rule.num.get("mode"), c.rule.den.get("mode")) if m and m != "any"}
    lacking = sorted(m for m in modes if "mode" in mine.columns and not (mine["mode"] == m).any())
    if mine.empty:
        why = f"no {c.workload} samples for {d} on this host"
    elif lacking:
        why = f"no {lacking[0]}-mode {c.workload} samples for {d} here"
        if lacking[0] == "engine":
            cls = DRIVERS.get(d)
            why += (
                ": Docker has no storage driver for it"
                if cls is not None and cls.engine is None
                else " (when dockerd refused the driver, its runs' run.json `engine` says why)"
            )
    else:
        why = f"the {c.workload} samples for {d} here lack the points the rule needs ({_rule_points(c)})"
    return _not_measured(c, d, h, why)


def _rule_points(c: Claim) -> str:
    r = c.rule
    sides = [r.at] if r.kind in ("value", "param") else [r.num, r.den]
    return "; ".join(_describe({**c.where, **s}) or c.metric for s in sides)


def _common(c: Claim, d: str, h: Host | None) -> dict:
    return {
        "claim": c.id,
        "quote": c.quote,
        "section": c.section,
        "driver": d,
        "host": h.id if h else None,
        "host_label": h.label if h else "no results",
        "hostname": h.hostname if h else None,
        "kernel": h.kernel if h else None,
        "emulated": h.emulated if h else None,
        "workload": c.workload,
        "metric": c.metric,
        "mode": c.mode,
    }


def _not_measured(c: Claim, d: str, h: Host | None, why: str) -> dict:
    return {
        **_common(c, d, h),
        "verdict": "not measured",
        "condition": "",
        "value": None,
        "unit": None,
        "p10": None,
        "p90": None,
        "n": 0,
        "grid": None,
        "why": why,
        "command": c.measure_command(d),
        "detail": "",
        "runs": [],
        "notes": [],
        "parts": [],
        "decide": "",
    }


def _record(c: Claim, d: str, h: Host, got: dict, grid: str) -> dict:
    notes = []
    if got.get("few_samples"):
        notes.append(f"fewer than {FEW} samples on a side")
    if got.get("warmup") or any(p.get("warmup") for p in got.get("parts", [])):
        notes.append(f"a first repetition took over {WARMUP:g}× the later ones' median (warm-up)")
    v = {
        **_common(c, d, h),
        "verdict": got["verdict"],
        "condition": got.get("condition", ""),
        "value": got.get("value"),
        "unit": got.get("unit"),
        "p10": got.get("p10"),
        "p90": got.get("p90"),
        "n": got.get("n", 0),
        "grid": grid,
        "detail": got.get("detail", ""),
        "ci_low": got.get("ci_low"),
        "ci_high": got.get("ci_high"),
        "exact": bool(got.get("exact")),
        "runs": got.get("runs", []),
        "notes": notes,
        "parts": [_slim(p) for p in got.get("parts", [])],
        "few_samples": bool(got.get("few_samples")),
        "near_threshold": bool(got.get("near_threshold")),
        "why": got.get("why", ""),
        "command": "",
        "decide": "",
    }
    if got["verdict"] == "inconclusive":
        reps = got.get("reps_needed")
        practical = reps if reps is not None and reps <= intervals.MAX_REPS else None
        v["command"] = _reps_command(c.measure_command(d), grid, practical)
        v["decide"] = _decide_text(got)
    if got.get("num"):
        v["num"], v["den"] = got["num"], got["den"]
    return v


def _reps_command(cmd: str, grid: str, reps: int | None) -> str:
    """The claim's measuring command with the repetitions that would decide it (a bench only:
    a lab's command has no --reps)."""
    if reps is None:
        return cmd
    out = []
    for part in cmd.split("; "):  # a claim comparing two drivers measures both
        if "bench" in part:
            quick = " --quick" if grid == "quick" and "--quick" not in part else ""
            sep = "" if " -- " in part or "nox" not in part else " --"
            part = f"{part}{sep}{quick} --reps {min(reps, intervals.MAX_REPS)}"
        out.append(part)
    return "; ".join(out)


def _decide_text(got: dict) -> str:
    """What would decide an inconclusive verdict, in words (the command is the verdict's own)."""
    reps, n = got.get("reps_needed"), got.get("n_side")
    level = f"{intervals.LEVEL:.0%}"
    if reps is None:
        return (
            f"the estimate sits on the threshold (or the interval is unbounded): more samples "
            f"narrow the {level} interval but may never clear it"
        )
    if reps > intervals.MAX_REPS:
        return (
            f"over {intervals.MAX_REPS:,} samples per side (now {n}): the medians sit too close to "
            f"the threshold for a practical run"
        )
    return (
        f"about {reps} samples per side (now {n}) would put the {level} interval on one side of "
        f"the threshold, if the spread stays as measured"
    )


def _slim(p: dict) -> dict:
    return {
        k: p.get(k)
        for k in ("condition", "verdict", "value", "unit", "p10", "p90", "n", "detail", "ci_low", "ci_high", "exact")
    }


def matrix(verdicts: list[dict]) -> tuple[list[str], list[str], dict]:
    """(claim ids, drivers, {(claim, driver): [verdicts]}) for the drivers × claims view."""
    claims = list(dict.fromkeys(v["claim"] for v in verdicts))
    drivers = sorted(set(v["driver"] for v in verdicts), key=_driver_order)
    cells: dict = {}
    for v in verdicts:
        cells.setdefault((v["claim"], v["driver"]), []).append(v)
    return claims, drivers, cells


_ORDER = [
    "overlay2",
    "overlay",
    "aufs",
    "fuse-overlayfs",
    "unionfs-fuse",
    "btrfs",
    "zfs",
    "devicemapper-loop",
    "devicemapper-direct",
    "erofs",
    "composefs",
    "vfs",
]


def _driver_order(d: str) -> tuple[int, str]:
    return (_ORDER.index(d) if d in _ORDER else len(_ORDER), d)
