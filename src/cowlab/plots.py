"""Plot and summary helpers shared by the notebooks (one place, so every notebook agrees).

All helpers take the frame `cowlab.results.load()` returns (one row per sample). They:

* summarise with medians and p10–p90 (`summarize`), never means;
* give each driver the same colour everywhere (`driver_color`);
* never pool emulated (TCG) rows with native ones: emulated rows become their own series,
  dashed and labelled "<driver> (emulated)", and the legend says so;
* say when data is missing instead of failing (`ratio_sentence` returns a sentence, a plot
  without data shows "no data").

Importable without a display: outside a Jupyter kernel, matplotlib gets the Agg backend (unless
MPLBACKEND chooses one). Nothing here calls plt.show().
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
import zlib
from pathlib import Path
from typing import Any, Iterable, Mapping

import matplotlib

if ("matplotlib.pyplot" not in sys.modules and "ipykernel" not in sys.modules
        and not os.environ.get("MPLBACKEND")):
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator  # noqa: E402

# Spans wider than this many decades get a log axis when the scale is left to us.
LOG_DECADES = 1.5

# Fixed colours for the drivers we know of; others get a stable colour from their name.
DRIVER_COLORS = {
    "overlay2": "tab:blue",
    "vfs": "tab:orange",
    "aufs": "tab:green",
    "btrfs": "tab:red",
    "zfs": "tab:purple",
    "devicemapper": "tab:brown",
    "fuse-overlayfs": "tab:pink",
}
_SPARE_COLORS = ["tab:olive", "tab:cyan", "#1b9e77", "#7570b3", "#e6ab02", "#a6761d",
                 "#666666", "#e7298a"]
FLOOR_COLOR = "0.55"  # grey: the reference floor is not a driver

EMULATED_NOTE = "emulated (TCG) runs kept apart, dashed: their times are not native times"
ALL_EMULATED_NOTE = "all runs emulated (TCG): times are not native times"

# How a metric reads in a sentence ("<phrase> takes 2× as long ...").
METRIC_PHRASES = {
    "create_seconds": "creating a container",
    "remove_seconds": "removing a container",
    "floor_seconds": "a bare mount+umount",
    "import_seconds": "importing an image",
}


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
    pkg_root = Path(__file__).resolve().parents[2]
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
    out = pd.DataFrame({
        "median": g.median(),
        "p10": g.quantile(0.1),
        "p90": g.quantile(0.9),
        "n": g.count(),
    }).reset_index()
    return out[cols]


def _select(df: pd.DataFrame, metric: str | None = None, filter: Any = None) -> pd.DataFrame:
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


def _unit(sel: pd.DataFrame, metric: str) -> str:
    units = sorted(set(sel["unit"].dropna())) if "unit" in sel.columns else []
    if len(units) > 1:
        raise ValueError(f"{metric} comes in several units {units}; filter to one first")
    return units[0] if units else ""


def _mixed_params_warning(sel: pd.DataFrame, x: str, where: str) -> None:
    """Warn when rows at one x (and driver) differ in another parameter: their median would
    pool different measurements (e.g. all layer counts at one image size)."""
    if "params" not in sel.columns or sel.empty:
        return
    keys = sel["params"].map(lambda p: json.dumps({k: v for k, v in (p or {}).items() if k != x},
                                                  sort_keys=True, default=str))
    groups = [c for c in ("driver", x) if c in sel.columns]
    n = keys.groupby([sel[c] for c in groups], dropna=False).nunique()
    if (n > 1).any():
        other = sorted({k for p in sel["params"] for k in (p or {}) if k != x})
        warnings.warn(f"{where}: samples at one {x} differ in {', '.join(other)}; "
                      f"their medians pool different measurements. Pass filter= to pick one.",
                      stacklevel=3)


# ---------------------------------------------------------------------------------------------
# Words for numbers

def human_bytes(n: float) -> str:
    """1048576 -> '1 MiB', 1.5 GiB -> '1.5 GiB', 512 -> '512 B'."""
    if n is None or (isinstance(n, float) and not math.isfinite(n)):
        return "?"
    for unit, div in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= div:
            return f"{_num(n / div)} {unit}"
    return f"{_num(n)} B"


def _num(v: float) -> str:
    """Up to three significant figures, no trailing zeros: 1, 1.5, 0.71, 38.3, 512."""
    if v == 0:
        return "0"
    a = abs(v)
    s = f"{v:.2g}" if a < 1 else f"{v:.2f}" if a < 10 else f"{v:.1f}" if a < 100 else f"{v:.0f}"
    return s.rstrip("0").rstrip(".") if "." in s else s


def _time_scale(max_seconds: float) -> tuple[float, str]:
    """Display factor and unit name for times whose largest value is max_seconds."""
    if not math.isfinite(max_seconds) or max_seconds >= 1:
        return 1.0, "s"
    if max_seconds >= 1e-4:
        return 1e3, "ms"
    return 1e6, "µs"


def human_seconds(s: float, like: float | None = None) -> str:
    """0.00071 -> '0.71 ms', 0.0383 -> '38.3 ms', 2.5 -> '2.5 s', 4.5e-5 -> '45 µs'.
    `like`: pick the unit for that value instead (to show two numbers in one unit)."""
    if s is None or not math.isfinite(s):
        return "?"
    f, u = _time_scale(abs(s if like is None else like))
    return f"{_num(s * f)} {u}"


def human_value(v: float, unit: str, like: float | None = None) -> str:
    if unit == "s":
        return human_seconds(v, like)
    if unit == "B":
        return human_bytes(v)
    if unit == "B/s":
        return human_bytes(v) + "/s"
    if unit == "1/s":
        return f"{_num(v)}/s"
    return _num(v)


def _x_unit(x: str) -> str:
    return "B" if x.endswith("_bytes") else "s" if x.endswith("_seconds") else ""


def human_x(x: str, v: Any) -> str:
    """A parameter value as text, e.g. ('image_size_bytes', 1<<30) -> '1 GiB'."""
    u = _x_unit(x)
    if u:
        return human_value(float(v), u)
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def pretty_name(col: str) -> str:
    """'image_size_bytes' -> 'image size', 'create_seconds' -> 'create time'."""
    if col.endswith("_seconds"):
        return col.removesuffix("_seconds").replace("_", " ") + " time"
    return col.removesuffix("_bytes").replace("_", " ")


def _ratio(r: float) -> str:
    """0.83, 1.1, 7.1, 56, 1,234: two significant figures below 10, whole numbers above."""
    s = f"{r:.2f}" if r < 1 else f"{r:.1f}" if r < 10 else f"{r:,.0f}"
    return s.rstrip("0").rstrip(".") if "." in s else s


def _at(x: str, v: Any) -> str:
    """How a parameter point reads: 'a 1 GiB image', 'a 16-layer image', 'layers=3'."""
    if x == "image_size_bytes":
        return f"a {human_x(x, v)} image"
    if x == "layers":
        n = human_x(x, v)
        return f"a {n}-layer image"
    return f"{pretty_name(x)} = {human_x(x, v)}"


def _phrase(metric: str) -> str:
    return METRIC_PHRASES.get(metric, pretty_name(metric))


def _verb(unit: str) -> str:
    return "takes" if unit == "s" else "is"


def _as(unit: str) -> str:
    return "as long as" if unit == "s" else "as large as"


def _pick_emulated(sel: pd.DataFrame, emulated: bool | None) -> tuple[pd.DataFrame, str, str]:
    """(rows, label suffix, note). With emulated=None and a mix, native rows win and the note
    says what was left out; nothing is pooled across the two."""
    em = is_emulated(sel)
    if emulated is True:
        return sel[em], " (emulated)", ""
    if emulated is False:
        return sel[~em], "", ""
    if em.all() and len(sel):
        return sel, " (emulated)", ""
    if em.any():
        return sel[~em], "", f"; native runs only, {int(em.sum())} emulated samples left out"
    return sel, "", ""


def _point(sel: pd.DataFrame, x: str, v: Any) -> pd.Series:
    return pd.to_numeric(sel.loc[sel[x] == v, "value"], errors="coerce").dropna()


def _have(sel: pd.DataFrame, x: str) -> str:
    vals = sorted(set(sel[x].dropna())) if x in sel.columns else []
    return ", ".join(human_x(x, v) for v in vals) or "none"


def _overlap(a: pd.Series, b: pd.Series) -> bool:
    return a.quantile(0.1) <= b.quantile(0.9) and b.quantile(0.1) <= a.quantile(0.9)


def _comparison(a: pd.Series, b: pd.Series, unit: str, note: str) -> tuple[str, str]:
    ma, mb = a.median(), b.median()
    tail = f"medians of {len(a)} and {len(b)} samples"
    if _overlap(a, b):
        tail += "; their p10–p90 ranges overlap, so the gap is within run-to-run spread"
    # one unit for both numbers, unless they are too far apart for it ("2.05 s vs 2 ms")
    like = max(ma, mb) if min(ma, mb) > 0 and max(ma, mb) / min(ma, mb) < 100 else None
    return (f"{_ratio(ma / mb)}× {_as(unit)}",
            f"({human_value(ma, unit, like)} vs {human_value(mb, unit, like)}, {tail}{note})")


def ratio_sentence(df: pd.DataFrame, metric: str, x: str, lo: Any, hi: Any, driver: str,
                   filter: Any = None, emulated: bool | None = None) -> str:
    """How much larger `metric` is at x=hi than at x=lo for one driver, as a sentence:

    "overlay2: creating a container from a 1 GiB image takes 1.1× as long as from a 1 MiB
    image (0.71 ms vs 0.65 ms, medians of 10 and 10 samples)".

    `filter` narrows rows as in line_by_driver (e.g. {"layers": 1} for the size sweep).
    `emulated`: None = native rows if there are any (a mix is never pooled), True/False = only
    those. When data is missing the sentence says what is missing and what there is.
    """
    sel = _select(df, metric, filter)
    sel = sel[sel["driver"] == driver] if "driver" in sel.columns else sel.iloc[0:0]
    if sel.empty or x not in sel.columns:
        return f"{driver}: no {metric} data{_filter_text(filter)}, so no ratio."
    sel, suffix, note = _pick_emulated(sel, emulated)
    name = f"{driver}{suffix}"
    if sel.empty:
        return f"{name}: no {metric} data{_filter_text(filter)}, so no ratio."
    _mixed_params_warning(sel, x, f"ratio_sentence({metric!r}, {driver!r})")
    unit = _unit(sel, metric)
    a, b = _point(sel, x, hi), _point(sel, x, lo)
    gone = [human_x(x, v) for v, s in ((lo, b), (hi, a)) if s.empty]
    if gone:
        return (f"{name}: no {metric} data at {pretty_name(x)} {' or '.join(gone)}"
                f"{_filter_text(filter)} (have: {_have(sel, x)}), so no ratio.")
    times, detail = _comparison(a, b, unit, note)
    prep = "from" if x in ("image_size_bytes", "layers") else "at"
    return f"{name}: {_phrase(metric)} {prep} {_at(x, hi)} {_verb(unit)} {times} {prep} {_at(x, lo)} {detail}."


def driver_ratio_sentence(df: pd.DataFrame, metric: str, x: str, at: Any, num: str, den: str,
                          filter: Any = None, emulated: bool | None = None) -> str:
    """How much larger `metric` is for driver `num` than for driver `den` at x=at, e.g.
    "At a 1 GiB image, creating a container with vfs takes 55× as long as with overlay2 (…)"."""
    sel = _select(df, metric, filter)
    sides = []
    for d in (num, den):
        s = sel[sel["driver"] == d] if "driver" in sel.columns else sel.iloc[0:0]
        s, suffix, note = _pick_emulated(s, emulated) if len(s) else (s, "", "")
        v = _point(s, x, at) if x in s.columns else pd.Series(dtype=float)
        sides.append((d + suffix, s, v, note))
    (na, sa, a, note_a), (nb, sb, b, note_b) = sides
    if a.empty or b.empty:
        missing = [f"{n} (have: {_have(s, x)})" for n, s, v, _ in sides if v.empty]
        return (f"{num} vs {den}: no {metric} data at {pretty_name(x)} {human_x(x, at)}"
                f"{_filter_text(filter)} for {' and '.join(missing)}, so no ratio.")
    unit = _unit(pd.concat([sa, sb]), metric)
    times, detail = _comparison(a, b, unit, note_a or note_b)
    return f"At {_at(x, at)}, {_phrase(metric)} with {na} {_verb(unit)} {times} with {nb} {detail}."


def _filter_text(filter: Any) -> str:
    if isinstance(filter, Mapping) and filter:
        parts = [f"{pretty_name(k)} = " + (", ".join(human_x(k, w) for w in v)
                                           if isinstance(v, (list, tuple, set)) else human_x(k, v))
                 for k, v in filter.items() if not callable(v)]
        return " with " + "; ".join(parts) if parts else ""
    return ""


# ---------------------------------------------------------------------------------------------
# Plots

def driver_color(driver: str) -> str:
    """The colour of a driver in every notebook: fixed for known drivers, else from its name."""
    if driver in DRIVER_COLORS:
        return DRIVER_COLORS[driver]
    return _SPARE_COLORS[zlib.crc32(driver.encode()) % len(_SPARE_COLORS)]


def series_label(driver: str, emulated: bool) -> str:
    return f"{driver} (emulated)" if emulated else driver


def _span_decades(values: Iterable[float]) -> float:
    v = np.asarray([float(x) for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if len(v) < 2:
        return 0.0
    return float(np.log10(v.max() / v.min()))


def _value_formatter(unit: str, scale: float = 1.0) -> FuncFormatter:
    if unit == "s":
        return FuncFormatter(lambda v, _: _num(v * scale))
    if unit == "B":
        return FuncFormatter(lambda v, _: human_bytes(v) if v > 0 else "0")
    if unit == "B/s":
        return FuncFormatter(lambda v, _: human_bytes(v) + "/s" if v > 0 else "0")
    return FuncFormatter(lambda v, _: _num(v))


def _axis_label(name: str, unit: str, scale_unit: str | None = None) -> str:
    if unit == "s":
        return f"{name} ({scale_unit or 's'})"
    if unit in ("B", "B/s"):
        return name  # the tick labels carry KiB/MiB/GiB
    if unit == "1/s":
        return f"{name} (per second)"
    return name


def _format_axis(axis, unit: str, log: bool, values: list[float], ticks_at: list[float] | None = None):
    """Ticks and labels for one axis: times scaled to s/ms/µs, bytes as KiB/MiB/GiB."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    scale, su = _time_scale(max((abs(v) for v in vals), default=1.0)) if unit == "s" else (1.0, None)
    fmt = _value_formatter(unit, scale)
    if ticks_at is not None and 0 < len(ticks_at) <= 12:
        axis.set_major_locator(FixedLocator(sorted(ticks_at)))
        axis.set_minor_locator(NullLocator())
    elif log:
        decades = _span_decades(vals)
        subs = (1.0, 2.0, 5.0) if decades <= 3 else (1.0,)
        if unit == "B":
            axis.set_major_locator(LogLocator(base=2.0, numticks=12))
        else:
            axis.set_major_locator(LogLocator(base=10.0, subs=subs, numticks=12))
        axis.set_minor_formatter(NullFormatter())
    axis.set_major_formatter(fmt)
    return su


def line_by_driver(df: pd.DataFrame, x: str, metric: str, ax: Axes | None = None,
                   logx: bool | None = False, logy: bool | None = None, filter: Any = None) -> Axes:
    """`metric` against parameter `x`: one series per driver (emulated runs a separate, dashed
    series), medians with p10–p90 error bars.

    filter: {column: value | [values] | callable} or a callable frame -> mask, applied after
    picking the metric. logx/logy: True, False, or None for "log when the values span more than
    LOG_DECADES decades". Returns the Axes.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.2))
    sel = _select(df, metric, filter)
    if x in sel.columns:
        sel = sel[sel[x].notna()]
    if sel.empty or x not in sel.columns or "driver" not in sel.columns:
        ax.text(0.5, 0.5, f"no {metric} data{_filter_text(filter)}", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
        ax.set_xlabel(pretty_name(x))
        ax.set_ylabel(pretty_name(metric))
        ax.set_xticks([])
        ax.set_yticks([])
        return ax
    unit = _unit(sel, metric)
    _mixed_params_warning(sel, x, f"line_by_driver({metric!r})")
    sel = sel.assign(_emulated=is_emulated(sel))
    s = summarize(sel, ["driver", "_emulated", x]).sort_values(["driver", "_emulated", x])

    ys = [*s["p10"], *s["p90"], *s["median"]]
    xs = list(s[x].astype(float))
    if logy is None:
        logy = _span_decades(ys) > LOG_DECADES
    if logx is None:
        logx = _span_decades(xs) > LOG_DECADES
    if logx:
        ax.set_xscale("log", base=2 if _x_unit(x) == "B" else 10)
    if logy:
        ax.set_yscale("log")

    for (driver, em), g in s.groupby(["driver", "_emulated"], sort=True):
        med = g["median"].to_numpy(float)
        err = np.vstack([med - g["p10"].to_numpy(float), g["p90"].to_numpy(float) - med])
        ax.errorbar(g[x].to_numpy(float), med, yerr=np.clip(err, 0, None),
                    color=driver_color(driver), linestyle="--" if em else "-",
                    marker="s" if em else "o", markersize=5, capsize=4, linewidth=1.6,
                    label=series_label(driver, bool(em)))

    xunit = _x_unit(x)
    _format_axis(ax.xaxis, xunit, logx, xs, ticks_at=sorted(set(xs)))
    su = _format_axis(ax.yaxis, unit, logy, ys)
    ax.set_xlabel(_axis_label(pretty_name(x), xunit))
    ax.set_ylabel(_axis_label(pretty_name(metric), unit, su)
                  + ("  [log]" if logy else ""))
    if logx:
        ax.set_xlabel(ax.get_xlabel() + "  [log]")
    if not logy and unit in ("s", "B") and (s["p10"] >= 0).all():
        ax.set_ylim(bottom=0)
    ax.grid(True, which="major", alpha=0.3)

    _legend(ax, set(s["_emulated"]), "median, bars p10–p90", "small")
    return ax


def emulation_note(flags: set) -> str | None:
    """The warning a plot carries when its series include emulated runs."""
    flags = {bool(f) for f in flags}
    return EMULATED_NOTE if flags == {True, False} else ALL_EMULATED_NOTE if flags == {True} else None


def _legend(ax: Axes, flags: set, what: str, size: str, **kw):
    note = emulation_note(flags)
    leg = ax.legend(title=f"{what}\n⚠ {note}" if note else what, fontsize=size,
                    title_fontsize=size, alignment="left", **kw)
    if note:
        leg.get_title().set_color("firebrick")
    return leg


def overhead_bars(df: pd.DataFrame, ax: Axes | None = None, filter: Any = None) -> Axes:
    """create + remove (stacked medians) next to the bare mount+umount floor, per grid point
    (image size, layers) and per driver that has a floor. The gap is what the harness adds.
    Only runs that measured the floor are used, so both sides come from the same runs."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.2))
    sel = _select(df, None, filter)
    need = {"metric", "driver", "image_size_bytes", "layers"}
    floor = sel[sel["metric"] == "floor_seconds"] if need <= set(sel.columns) else sel.iloc[0:0]
    if floor.empty:
        ax.text(0.5, 0.5, "no mount_floor data (only drivers with a bare mount have one)",
                ha="center", va="center", transform=ax.transAxes, color="0.4")
        ax.set_xticks([])
        ax.set_yticks([])
        return ax
    if "run_id" in sel.columns:  # the floor is timed in the same run: compare within runs
        sel = sel[sel["run_id"].isin(set(floor["run_id"]))]
    sel = sel.assign(_emulated=is_emulated(sel))
    keys = ["driver", "_emulated", "image_size_bytes", "layers"]
    s = summarize(sel[sel["metric"].isin(["create_seconds", "remove_seconds", "floor_seconds"])],
                  ["metric", *keys])
    fl = s[s["metric"] == "floor_seconds"]
    groups = list(fl.groupby(["driver", "_emulated"], sort=True))
    points = sorted({(r.image_size_bytes, r.layers) for r in fl.itertuples()},
                    key=lambda p: (p[1], p[0]))
    width = 0.8 / (2 * len(groups))
    ymax = 0.0
    seen: set[str] = set()

    def once(label: str) -> str | None:  # one legend entry per series and part
        return None if label in seen or seen.add(label) else label

    for gi, ((driver, em), _) in enumerate(groups):
        c = driver_color(driver)
        for pi, (size, layers) in enumerate(points):
            def get(metric):
                r = s[(s["metric"] == metric) & (s["driver"] == driver) & (s["_emulated"] == em)
                      & (s["image_size_bytes"] == size) & (s["layers"] == layers)]
                return r.iloc[0] if len(r) else None
            cr, rm, f = get("create_seconds"), get("remove_seconds"), get("floor_seconds")
            x0 = pi - 0.4 + (2 * gi + 0.5) * width
            if cr is not None and rm is not None:
                ax.bar(x0, cr["median"], width, color=c, edgecolor=c, alpha=0.55 if em else 1,
                       label=once(f"{series_label(driver, em)}: create"))
                ax.bar(x0, rm["median"], width, bottom=cr["median"], color="white", edgecolor=c,
                       hatch="///", label=once(f"{series_label(driver, em)}: remove"))
                total = cr["median"] + rm["median"]
                if f is not None and f["median"] > 0:
                    ax.text(x0 + width / 2, total, f"{_ratio(total / f['median'])}× floor",
                            ha="center", va="bottom", fontsize="small")
                ymax = max(ymax, total)
            if f is not None:
                ax.bar(x0 + width, f["median"], width, color=FLOOR_COLOR, alpha=0.55 if em else 1,
                       edgecolor=c, linewidth=1.5,
                       yerr=[[f["median"] - f["p10"]], [f["p90"] - f["median"]]], capsize=3,
                       label=once(f"{series_label(driver, em)}: bare mount+umount"))
                ymax = max(ymax, f["p90"])
    ax.set_xticks(range(len(points)))
    ax.set_xticklabels([f"{human_bytes(sz)}\n{int(n)} layer{'s' if n != 1 else ''}" for sz, n in points])
    scale, su = _time_scale(ymax)
    ax.yaxis.set_major_formatter(_value_formatter("s", scale))
    ax.set_ylabel(f"median time ({su})")
    ax.set_ylim(0, ymax * 1.2)
    ax.grid(True, axis="y", alpha=0.3)
    _legend(ax, {em for (_, em), _ in groups}, "medians; floor bars p10–p90", "small",
            loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax
