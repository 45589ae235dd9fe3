"""`cowlab compare A B`: what changed between two results trees (hosts, kernels, commits).

Per driver × mode × workload × metric × parameter point (emulated runs apart from native, each
kernel apart from the others: never pooled), the ratio of medians B ÷ A, marked when the two
sides' p10–p90 ranges do not overlap — the change is outside the noise of both — as asv compare
marks its rows: "+" B is larger, "-" B is smaller.
Whether larger is worse depends on the unit (a time or a size: worse; a bandwidth or a rate:
better), which `better` says.

Kernels pair up per driver × emulation: a kernel both trees measured with itself; the kernels only
one tree has with those only the other has (the reference's 6.18 against my machine's 6.8). Each
row names its two kernels (`kernel_a`, `kernel_b`), so a change is never a mix of kernels.
"""

from __future__ import annotations

import json
import warnings

import pandas as pd

from cowlab import results
from cowlab.base.errors import CowlabError
from cowlab.report.figures import human_x
from cowlab.report.format import fmt_ratio, fmt_value
from cowlab.report.kernels import short, version

HIGHER_IS_BETTER = {"B/s", "1/s"}
GROUP = ["driver", "mode", "emulated_", "workload", "metric", "unit", "pkey"]
KEYS = [*GROUP, "kernel_"]


def _load(path) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = results.load(path)
    if df.empty:
        raise CowlabError(f"{path}: no results (no run.json with samples under it)")
    df = df.assign(
        emulated_=df["emulated"].map(lambda v: v is True or v == True),  # noqa: E712
        pkey=df["params"].map(lambda p: json.dumps(p, sort_keys=True)),
        kernel_=df["kernel"].fillna("?").astype(str) if "kernel" in df else "?",
        value=pd.to_numeric(df["value"], errors="coerce"),
    )
    return df


def params_text(p: str) -> str:
    d = json.loads(p)
    return " ".join(f"{k.removesuffix('_bytes')}={human_x(k, v).replace(' ', '')}" for k, v in sorted(d.items()))


def _summary(df: pd.DataFrame) -> pd.DataFrame:
    g = df.groupby(KEYS, dropna=False)["value"]
    return pd.DataFrame(
        {"median": g.median(), "p10": g.quantile(0.1), "p90": g.quantile(0.9), "n": g.count()}
    ).reset_index()


def compare(a, b) -> list[dict]:
    """Rows for every point both trees measured, sorted by how far the ratio is from 1."""
    sa, sb = _summary(_load(a)), _summary(_load(b))
    pairs = kernel_pairs(sa, sb)
    m = (
        sa.rename(columns={"kernel_": "kernel_a"})
        .merge(pairs, on=["driver", "emulated_", "kernel_a"])
        .merge(sb.rename(columns={"kernel_": "kernel_b"}), on=[*GROUP, "kernel_b"], suffixes=("_a", "_b"))
    )
    several = {d for d, g in pairs.groupby("driver") if len(g) > 1}
    rows = []
    for r in m.itertuples(index=False):
        ratio = r.median_b / r.median_a if r.median_a and r.median_a > 0 and r.median_b >= 0 else None
        mark = "+" if r.p10_b > r.p90_a else "-" if r.p90_b < r.p10_a else ""
        better = None
        if mark:
            larger_better = r.unit in HIGHER_IS_BETTER
            better = (mark == "+") == larger_better
        rows.append(
            {
                "driver": r.driver
                + _kernels_text(r.kernel_a, r.kernel_b, r.driver in several)
                + (" (emulated)" if r.emulated_ else ""),
                "mode": r.mode,
                "driver_name": r.driver,
                "emulated": bool(r.emulated_),
                "kernel_a": r.kernel_a,
                "kernel_b": r.kernel_b,
                "workload": r.workload,
                "metric": r.metric,
                "unit": r.unit,
                "params": params_text(r.pkey),
                "a": r.median_a,
                "b": r.median_b,
                "n_a": int(r.n_a),
                "n_b": int(r.n_b),
                "a_text": fmt_value(r.median_a, r.unit),
                "b_text": fmt_value(r.median_b, r.unit),
                "ratio": ratio,
                "ratio_text": fmt_ratio(ratio) if ratio is not None else "–",
                "mark": mark,
                "better": better,
            }
        )
    rows.sort(key=lambda r: (r["mark"] == "", -abs(_log(r["ratio"])), r["driver"], r["workload"]))
    return rows


def kernel_pairs(sa: pd.DataFrame, sb: pd.DataFrame) -> pd.DataFrame:
    """(driver, emulated_, kernel_a, kernel_b) to compare: per driver × emulation a kernel both
    sides have with itself, the rest of A's with the rest of B's."""
    out = []
    ka = sa.groupby(["driver", "emulated_"])["kernel_"].agg(set)
    kb = sb.groupby(["driver", "emulated_"])["kernel_"].agg(set)
    for key in ka.index.intersection(kb.index):
        a, b = ka[key], kb[key]
        out += [(*key, k, k) for k in sorted(a & b)]
        out += [(*key, x, y) for x in sorted(a - b) for y in sorted(b - a)]
    return pd.DataFrame(out, columns=["driver", "emulated_", "kernel_a", "kernel_b"])


def _pair_text(ka: str, kb: str) -> str:
    return short(ka) if ka == kb else f"{short(ka)}→{short(kb)}"


def _kernels_text(ka: str, kb: str, several: bool) -> str:
    """' [6.18→6.12]' where the kernels differ, ' [6.12]' where the driver has several pairs."""
    return f" [{_pair_text(ka, kb)}]" if ka != kb or several else ""


def kernels_compared(rows: list[dict]) -> str:
    """Which kernels the rows compare, per driver: 'overlay2 6.1→6.12, zfs 6.18'."""
    seen: dict[str, set[tuple[str, str]]] = {}
    for r in rows:
        seen.setdefault(r["driver_name"] + (" (emulated)" if r["emulated"] else ""), set()).add(
            (r["kernel_a"], r["kernel_b"])
        )

    def by_release(p: tuple[str, str]) -> tuple:  # numerically: 5.10 before 6.1 before 6.12
        return version(p[0]), version(p[1])

    return ", ".join(
        f"{d} {' '.join(_pair_text(*p) for p in sorted(ps, key=by_release))}" for d, ps in sorted(seen.items())
    )


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
        t.add_row(
            r["mark"],
            f"{r['driver']} {r['mode'][:4]} {r['workload']} {r['metric']} {r['params']}",
            r["a_text"],
            r["b_text"],
            r["ratio_text"],
            style=style,
        )
    console.print(t)
    n_up = sum(bool(r["mark"]) and r["better"] is False for r in rows)
    n_down = sum(bool(r["mark"]) and r["better"] is True for r in rows)
    console.print(
        f"{len(rows)} points in both; {n_up} worse, {n_down} better outside the noise of both "
        f"sides (p10–p90 apart); {len(rows) - n_up - n_down} within it."
        + ("" if not only_changed else " --all shows every point.")
    )
    console.print(f"Kernels (A→B where they differ): {kernels_compared(rows)}.")
