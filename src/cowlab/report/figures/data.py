"""The samples behind the figures: where the results are, medians and p10–p90, which rows
are emulated, and the notebooks' data plumbing (a workload's rows, one series' rows)."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

# ---------------------------------------------------------------------------------------------
# Where the results are


def results_dir(start: str | Path | None = None) -> Path:
    """The results directory a notebook should read.

    $COWLAB_RESULTS if set; else `results/` of the cowlab checkout found by walking up from
    `start` (default: the current directory, so notebooks/ and the repo root both work); else
    the checkout cowlab is installed from (editable install); else ./results.
    """
    env = os.environ.get("COWLAB_RESULTS")
    if env:
        return Path(env).expanduser()
    here = Path(start or Path.cwd()).resolve()
    for base in (here, *here.parents):
        if (base / "pyproject.toml").is_file() and (base / "src" / "cowlab").is_dir():
            return base / "results"
    pkg_root = Path(__file__).resolve().parents[4]  # src/cowlab/report/figures/data.py
    if (pkg_root / "pyproject.toml").is_file():
        return pkg_root / "results"
    return here / "results"


# ---------------------------------------------------------------------------------------------
# Numbers


def summarize(df: pd.DataFrame, by: str | Iterable[str]) -> pd.DataFrame:
    """Median, p10, p90 and n of `value` per group of `by` (one row per group, `by` as columns).

    Groups with a missing key (NaN) are kept, not silently dropped. Quantiles interpolate
    linearly (pandas' default), as the end-of-run table does.
    """
    by = [by] if isinstance(by, str) else list(by)
    cols = [*by, "median", "p10", "p90", "n"]
    if df.empty:
        return pd.DataFrame(columns=cols)
    missing = [c for c in by if c not in df.columns]
    if missing:
        raise KeyError(f"summarize: no column(s) {missing} in the frame")
    g = df.assign(value=pd.to_numeric(df["value"], errors="coerce")).groupby(by, dropna=False)["value"]
    out = pd.DataFrame(
        {
            "median": g.median(),
            "p10": g.quantile(0.1),
            "p90": g.quantile(0.9),
            "n": g.count(),
        }
    ).reset_index()
    return out[cols]


def select_rows(df: pd.DataFrame, metric: str | None = None, filter: Any = None) -> pd.DataFrame:
    """Rows of `metric`, narrowed by `filter`: a mapping column -> value (a list, tuple or set
    means "any of"; a callable gets the column and returns a mask), or a callable frame -> mask."""
    if df.empty or "metric" not in df.columns:
        return df.iloc[0:0]
    sel = df if metric is None else df[df["metric"] == metric]
    if filter is None:
        return sel
    if callable(filter):
        return sel[filter(sel)]
    for col, want in dict(filter).items():
        if col not in sel.columns:
            return sel.iloc[0:0]
        if callable(want):
            sel = sel[want(sel[col])]
        elif isinstance(want, (list, tuple, set, frozenset)):
            sel = sel[sel[col].isin(list(want))]
        else:
            sel = sel[sel[col] == want]
    return sel


def is_emulated(df: pd.DataFrame) -> pd.Series:
    """True for rows from an emulated run; a missing flag counts as native."""
    if "emulated" not in df.columns:
        return pd.Series(False, index=df.index)
    return df["emulated"].map(lambda v: v is True or v == True)  # noqa: E712 (numpy bools too)


def metric_unit(sel: pd.DataFrame, metric: str) -> str:
    units = sorted(set(sel["unit"].dropna())) if "unit" in sel.columns else []
    if len(units) > 1:
        raise ValueError(f"{metric} comes in several units {units}; filter to one first")
    return units[0] if units else ""


def mixed_params_warning(sel: pd.DataFrame, x: str, where: str) -> None:
    """Warn when rows at one x (and driver) differ in another parameter: their median would
    pool different measurements (e.g. all layer counts at one image size)."""
    if "params" not in sel.columns or sel.empty:
        return
    keys = sel["params"].map(
        lambda p: json.dumps({k: v for k, v in (p or {}).items() if k != x}, sort_keys=True, default=str)
    )
    groups = [c for c in ("driver", x) if c in sel.columns]
    n = keys.groupby([sel[c] for c in groups], dropna=False).nunique()
    if (n > 1).any():
        other = sorted({k for p in sel["params"] for k in (p or {}) if k != x})
        warnings.warn(
            f"{where}: samples at one {x} differ in {', '.join(other)}; "
            f"their medians pool different measurements. Pass filter= to pick one.",
            stacklevel=3,
        )


# ---------------------------------------------------------------------------------------------
# Notebook plumbing shared by the workload notebooks (02–05)

BENCH_DRIVERS = ("overlay2", "vfs")


def workload_data(
    workloads: str | Iterable[str],
    where: str | Path | None = None,
    mode: str = "primitive",
    include_failed: bool = False,
) -> pd.DataFrame:
    """The samples of `workloads` in one `mode` ("primitive": cowlab's own drivers; "engine":
    through dockerd) under `where` (default: results_dir()). No directory, no rows: an empty
    frame with the usual columns, never an error. include_failed: also the failed and skipped
    records (column `status`, reason in `error`)."""
    from cowlab import results as _results

    path = Path(where) if where is not None else results_dir()
    df = _results.load(path, include_failed=include_failed) if path.exists() else _results.load([])
    ws = [workloads] if isinstance(workloads, str) else list(workloads)
    if df.empty:
        return df
    return df[df["workload"].isin(ws) & (df["mode"] == mode)]


def bench_command(driver: str, workload: str, quick: bool = False) -> str:
    return f"nox -s bench-{driver} -- {'--quick ' if quick else ''}--workload {workload}"


def no_results_text(workload: str, where: str | Path) -> str:
    """What a notebook prints when `where` holds no results of `workload`: how to make some."""
    cmds = "\n".join(f"    {bench_command(d, workload)}" for d in BENCH_DRIVERS)
    return (
        f"No {workload} results under {where}.\n"
        f"Produce some (as root) with:\n{cmds}\n"
        f"(add --quick before --workload for the short grid), or point the COWLAB_RESULTS "
        f"environment variable at a results directory.\nThe cells below skip their plots."
    )


def driver_series(df: pd.DataFrame) -> list[tuple[str, bool]]:
    """(driver, emulated) of every series in `df`, sorted: native before emulated per driver.
    A notebook loops over these so emulated runs get their own sentences."""
    if df.empty or "driver" not in df.columns:
        return []
    pairs = set(zip(df["driver"], is_emulated(df).map(bool), strict=True))
    return sorted(pairs)


def drivers_text(df: pd.DataFrame, workload: str) -> str:
    """'drivers: overlay2, vfs', plus what is missing for a comparison and whether any runs
    are emulated."""
    drivers = sorted(set(df["driver"])) if not df.empty else []
    lines = [f"drivers: {', '.join(drivers) or 'none'}"]
    if len(drivers) == 1:
        other = [d for d in BENCH_DRIVERS if d != drivers[0]]
        hint = f" (e.g. {bench_command(other[0], workload)})" if other else ""
        lines.append(f"Only {drivers[0]} has results: the driver comparison needs {' and '.join(BENCH_DRIVERS)}{hint}.")
    em = is_emulated(df)
    if em.any():
        lines.append(
            "Some runs are emulated (TCG): they are plotted as separate, dashed series "
            "and get their own sentences; they are never pooled with native runs."
        )
    return "\n".join(lines)


def runs_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run in `df`: driver, host, kernel, emulated, backing filesystem(s), quick
    grid or not, number of samples."""
    if df.empty:
        return pd.DataFrame(columns=["driver", "hostname", "kernel", "emulated", "backing_fs", "quick", "samples"])

    def values(s: pd.Series) -> str:
        return ", ".join(sorted({str(v) for v in s.dropna()})) or "?"

    d = df.assign(emulated=is_emulated(df))
    cols = {
        "driver": ("driver", "first"),
        "hostname": ("hostname", "first"),
        "kernel": ("kernel", "first"),
        "emulated": ("emulated", "first"),
        "backing_fs": ("backing_fs", values),
        "quick": ("quick", "first"),
        "samples": ("value", "size"),
    }
    cols = {k: v for k, v in cols.items() if v[0] in d.columns}
    return d.groupby("run_id").agg(**cols)


# ---------------------------------------------------------------------------------------------
# Helpers the workload notebooks share (they used to define these themselves)


def series_rows(df: pd.DataFrame, driver: str, emulated: bool, metric: str | None = None, **where: Any) -> pd.DataFrame:
    """The rows of one series (driver, native or emulated), optionally one metric, narrowed by
    column = value; a column the frame lacks selects nothing."""
    if df.empty or "driver" not in df.columns:
        return df.iloc[0:0]
    rows = df[(df["driver"] == driver) & (is_emulated(df) == emulated)]
    if metric is not None:
        rows = rows[rows["metric"] == metric]
    for col, v in where.items():
        rows = rows[rows[col] == v] if col in rows.columns else rows.iloc[0:0]
    return rows


def param_values(rows: pd.DataFrame, x: str) -> list:
    """The values of parameter `x` present in `rows`, sorted."""
    return sorted(set(rows[x].dropna())) if x in rows.columns else []


def per_extra(
    df: pd.DataFrame, driver: str, emulated: bool, metric: str, where: Mapping | None = None, x: str = "containers"
) -> tuple[float, int, int] | None:
    """(what each step of x beyond the smallest added, x lo, x hi) from the medians at the two
    ends, or None when fewer than two values of x were measured."""
    rows = series_rows(df, driver, emulated, metric, **dict(where or {}))
    s = summarize(rows, x).sort_values(x) if len(rows) else rows
    if len(s) < 2:
        return None
    lo, hi = s.iloc[0], s.iloc[-1]
    return (hi["median"] - lo["median"]) / (hi[x] - lo[x]), int(lo[x]), int(hi[x])
