"""`cowlab compare A B`: what changed between two results trees (hosts, kernels, commits).

Per driver × mode × workload × metric × parameter point (emulated runs apart from native), the
ratio of medians B ÷ A, marked when the two sides' p10–p90 ranges do not overlap — the change
is outside the noise of both — as asv compare marks its rows: "+" B is larger, "-" B is smaller.
Whether larger is worse depends on the unit (a time or a size: worse; a bandwidth or a rate:
better), which `better` says.
"""

from __future__ import annotations

import json
import warnings

import pandas as pd

from cowlab import results
from cowlab.base.errors import CowlabError
from cowlab.report.figures import human_x
from cowlab.report.format import fmt_ratio, fmt_value

HIGHER_IS_BETTER = {"B/s", "1/s"}
KEYS = ["driver", "mode", "emulated_", "workload", "metric", "unit", "pkey"]


def _load(path) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = results.load(path)
    if df.empty:
        raise CowlabError(f"{path}: no results (no run.json with samples under it)")
    df = df.assign(emulated_=df["emulated"].map(lambda v: v is True or v == True),  # noqa: E712
                   pkey=df["params"].map(lambda p: json.dumps(p, sort_keys=True)),
                   value=pd.to_numeric(df["value"], errors="coerce"))
    return df


def params_text(p: str) -> str:
    d = json.loads(p)
    return " ".join(f"{k.removesuffix('_bytes')}={human_x(k, v).replace(' ', '')}" for k, v in sorted(d.items()))


def _summary(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby(KEYS, dropna=False)["value"]
    return pd.DataFrame({"median": g.median(), "p10": g.quantile(0.1), "p90": g.quantile(0.9),
                         "n": g.count()}).reset_index()


def compare(a, b) -> list[dict]:
    """Rows for every point both trees measured, sorted by how far the ratio is from 1."""
    sa, sb = _summary(_load(a)), _summary(_load(b))
    m = sa.merge(sb, on=KEYS, suffixes=("_a", "_b"))
    rows = []
    for r in m.itertuples(index=False):
        ratio = r.median_b / r.median_a if r.median_a and r.median_a > 0 and r.median_b >= 0 else None
        mark = "+" if r.p10_b > r.p90_a else "-" if r.p90_b < r.p10_a else ""
        better = None
        if mark:
            larger_better = r.unit in HIGHER_IS_BETTER
            better = (mark == "+") == larger_better
        rows.append({"driver": r.driver + (" (emulated)" if r.emulated_ else ""), "mode": r.mode,
                     "workload": r.workload, "metric": r.metric, "unit": r.unit,
                     "params": params_text(r.pkey),
                     "a": r.median_a, "b": r.median_b, "n_a": int(r.n_a), "n_b": int(r.n_b),
                     "a_text": fmt_value(r.median_a, r.unit), "b_text": fmt_value(r.median_b, r.unit),
                     "ratio": ratio, "ratio_text": fmt_ratio(ratio) if ratio is not None else "–",
                     "mark": mark, "better": better})
    rows.sort(key=lambda r: (r["mark"] == "", -abs(_log(r["ratio"])), r["driver"], r["workload"]))
    return rows


def _log(r):
    import math

    return math.log(r) if r and r > 0 else 0.0


def print_table(rows: list[dict], console, only_changed: bool = True, limit: int | None = None) -> None:
    """An 80-column table: one row per point (benchmark words wrap), A, B, B ÷ A and the mark."""
    from rich.table import Table

    shown = [r for r in rows if r["mark"]] if only_changed else rows
    if limit:
        shown = shown[:limit]
    t = Table(show_lines=False, pad_edge=False, box=None, header_style="bold")
    t.add_column("", width=1, no_wrap=True)
    t.add_column("benchmark", ratio=1, overflow="fold")
    t.add_column("A", justify="right", no_wrap=True)
    t.add_column("B", justify="right", no_wrap=True)
    t.add_column("B÷A", justify="right", no_wrap=True)
    for r in shown:
        style = "" if not r["mark"] else ("green" if r["better"] else "red")
        t.add_row(r["mark"], f"{r['driver']} {r['mode'][:4]} {r['workload']} {r['metric']} {r['params']}",
                  r["a_text"], r["b_text"], r["ratio_text"], style=style)
    console.print(t)
    n_up = sum(bool(r["mark"]) and r["better"] is False for r in rows)
    n_down = sum(bool(r["mark"]) and r["better"] is True for r in rows)
    console.print(f"{len(rows)} points in both; {n_up} worse, {n_down} better outside the noise of both "
                  f"sides (p10–p90 apart); {len(rows) - n_up - n_down} within it."
                  + ("" if not only_changed else " --all shows every point."))
