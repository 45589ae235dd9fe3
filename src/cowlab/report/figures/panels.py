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
from matplotlib.ticker import (FixedLocator, FuncFormatter, Locator, LogLocator,  # noqa: E402
                               NullFormatter, NullLocator)

from cowlab.storage import drivers as _drivers  # noqa: E402  (the registry: each driver's colour)
from cowlab.base import units  # noqa: E402

# Spans wider than this many decades get a log axis when the scale is left to us.
LOG_DECADES = 1.5

# Each driver's colour, from the registry; other names get a stable colour from their name.
DRIVER_COLORS = {n: cls.color for n, cls in _drivers.DRIVERS.items()}  # each driver declares its own
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
    "copyup_seconds": "the first write (copy-up)",
    "lookup_seconds": "one lookup",
    "page_cache_bytes": "the growth of the page cache (Cached)",
    "cgroup_memory_bytes": "the memory charged to the readers' cgroup",
    "dentry_count": "the growth in dentries",
    "slab_objects": "the growth in slab objects",
    "slab_bytes": "the growth in slab memory",
    "inodes_used": "the growth in inodes used",
    "disk_bytes": "the growth in disk used",
    "fio_bw_bytes_per_s": "fio bandwidth",
    "fio_iops": "fio IOPS",
    "fio_lat_p50_seconds": "fio's median completion latency",
    "fio_lat_p99_seconds": "fio's p99 completion latency",
}

# How a parameter point is introduced in a sentence ("... from a 1 GiB image", "... for a 64 MiB
# file", "... with 8 containers"); other parameters read "at <name> = <value>".
PREPOSITIONS = {"image_size_bytes": "from", "layers": "from", "file_size_bytes": "for",
                "containers": "with"}


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
    pkg_root = Path(__file__).resolve().parents[3]
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

# One formatter for every output: cowlab.base.units (re-exported here, where notebooks find them).
human_bytes, human_seconds, human_value, human_x = (units.human_bytes, units.human_seconds,
                                                    units.human_value, units.human_param)
_num, _count, _time_scale, _x_unit = units.number, units.count, units.time_scale, units.param_unit


# Axis names that the generic rule below would get wrong.
PRETTY_NAMES = {
    "copyup_seconds": "copy-up time",
    "fio_bw_bytes_per_s": "fio bandwidth",
    "fio_iops": "fio IOPS",
    "fio_lat_p50_seconds": "fio median latency",
    "fio_lat_p99_seconds": "fio p99 latency",
}


def pretty_name(col: str) -> str:
    """'image_size_bytes' -> 'image size', 'create_seconds' -> 'create time'."""
    if col in PRETTY_NAMES:
        return PRETTY_NAMES[col]
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
    if x == "file_size_bytes":
        return f"a {human_x(x, v)} file"
    if x == "containers":
        n = human_x(x, v)
        return f"{n} container{'' if n == '1' else 's'}"
    return f"{pretty_name(x)} = {human_x(x, v)}"


def _phrase(metric: str) -> str:
    return METRIC_PHRASES.get(metric, pretty_name(metric))


def _verb(unit: str, metric: str = "") -> str:
    return "takes" if unit == "s" and "_lat_" not in metric else "is"


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


def _times(r: float) -> str:
    """A ratio as a multiplier: '1.1×', '56×', and '1/1,800' rather than '0.00056×'."""
    return f"1/{_ratio(1 / r)}" if 0 < r < 0.1 else f"{_ratio(r)}×"


def _comparison(a: pd.Series, b: pd.Series, unit: str, note: str) -> tuple[str, str]:
    ma, mb = a.median(), b.median()
    tail = f"medians of {len(a)} and {len(b)} samples"
    if _overlap(a, b):
        tail += "; their p10–p90 ranges overlap, so the gap is within run-to-run spread"
    if not (mb > 0 and ma >= 0):  # growth deltas can be 0 or negative: no multiple means anything
        return ("no meaningful multiple of what it is",
                f"({human_value(ma, unit)} vs {human_value(mb, unit)}: a median ≤ 0 has no ratio; "
                f"{tail}{note})")
    # one unit for both numbers, unless they are too far apart for it ("2.05 s vs 2 ms")
    like = max(ma, mb) if min(ma, mb) > 0 and max(ma, mb) / min(ma, mb) < 100 else None
    return (f"{_times(ma / mb)} {_as(unit)}",
            f"({human_value(ma, unit, like)} vs {human_value(mb, unit, like)}, {tail}{note})")


def ratio_sentence(df: pd.DataFrame, metric: str, x: str, lo: Any, hi: Any, driver: str,
                   filter: Any = None, emulated: bool | None = None, phrase: str | None = None,
                   prep: str | None = None) -> str:
    """How much larger `metric` is at x=hi than at x=lo for one driver, as a sentence:

    "overlay2: creating a container from a 1 GiB image takes 1.1× as long as from a 1 MiB
    image (0.71 ms vs 0.65 ms, medians of 10 and 10 samples)".

    `filter` narrows rows as in line_by_driver (e.g. {"layers": 1} for the size sweep).
    `emulated`: None = native rows if there are any (a mix is never pooled), True/False = only
    those. When data is missing the sentence says what is missing and what there is.
    `phrase` replaces the metric's words ("a cold PATH miss"), `prep` the word before each
    point ("in": "... in a 32-layer image ... in a 1-layer image").
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
    prep = prep or PREPOSITIONS.get(x, "at")
    return (f"{name}: {phrase or _phrase(metric)} {prep} {_at(x, hi)} {_verb(unit, metric)} {times} "
            f"{prep} {_at(x, lo)} {detail}.")


def driver_ratio_sentence(df: pd.DataFrame, metric: str, x: str, at: Any, num: str, den: str,
                          filter: Any = None, emulated: bool | None = None,
                          phrase: str | None = None) -> str:
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
    return (f"At {_at(x, at)}, {phrase or _phrase(metric)} with {na} {_verb(unit, metric)} {times} "
            f"with {nb} {detail}.")


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
    """The colour of a driver in every notebook: the one its module declares (the registry),
    else (an engine-only name) a stable one from its name."""
    cls = _drivers.DRIVERS.get(driver)
    if cls is not None:
        return cls.color
    return _SPARE_COLORS[zlib.crc32(driver.encode()) % len(_SPARE_COLORS)]


def series_label(driver: str, emulated: bool) -> str:
    return f"{driver} (emulated)" if emulated else driver


def _span_decades(values: Iterable[float]) -> float:
    v = np.asarray([float(x) for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if len(v) < 2:
        return 0.0
    return float(np.log10(v.max() / v.min()))


def _signed_bytes(v: float) -> str:
    return human_bytes(v) if v > 0 else "0" if v == 0 else "−" + human_bytes(-v)


def _value_formatter(unit: str, scale: float = 1.0) -> FuncFormatter:
    if unit == "s":
        return FuncFormatter(lambda v, _: _num(v * scale))
    if unit == "B":
        return FuncFormatter(lambda v, _: _signed_bytes(v))
    if unit == "B/s":
        return FuncFormatter(lambda v, _: _signed_bytes(v) + "/s" if v else "0")
    if unit in ("count", "1/s"):
        return FuncFormatter(lambda v, _: _count(v))
    return FuncFormatter(lambda v, _: _num(v))


class _BinaryLocator(Locator):
    """Linear ticks for byte axes at multiples of a power of two (0, 128 MiB, 256 MiB, …), so
    the labels read as round sizes rather than 95.4 MiB, 191 MiB."""

    def __init__(self, nbins: int = 6):
        self.nbins = nbins

    def __call__(self):
        vmin, vmax = self.axis.get_view_interval()
        return self.tick_values(vmin, vmax)

    def tick_values(self, vmin, vmax):
        vmin, vmax = sorted((float(vmin), float(vmax)))
        span = vmax - vmin
        if not math.isfinite(span) or span <= 0:
            return [vmin]
        step = 2.0 ** max(0, math.ceil(math.log2(span / self.nbins)))
        start = math.ceil(vmin / step) * step
        return list(np.arange(start, vmax + step * 1e-9, step))


# Log time axes spanning more decades than this label each tick in its own unit (10 µs, 1 ms,
# 1 s) instead of one unit for the axis (which would read 1e-05 … 1).
MIXED_TIME_DECADES = 3.5


def _axis_label(name: str, unit: str, scale_unit: str | None = None) -> str:
    if unit == "s" and scale_unit == "mixed":
        return name  # every tick carries its own unit
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
    if unit == "s" and log and ticks_at is None and _span_decades(vals) > MIXED_TIME_DECADES:
        su, fmt = "mixed", FuncFormatter(lambda v, _: human_seconds(v) if v > 0 else "0")
    if ticks_at is not None and 0 < len(ticks_at) <= 12:
        axis.set_major_locator(FixedLocator(sorted(ticks_at)))
        axis.set_minor_locator(NullLocator())
    elif log:
        decades = _span_decades(vals)
        subs = (1.0, 2.0, 5.0) if decades <= 3 else (1.0,)
        if unit in ("B", "B/s"):
            axis.set_major_locator(LogLocator(base=2.0, numticks=12))
        else:
            axis.set_major_locator(LogLocator(base=10.0, subs=subs, numticks=12))
        axis.set_minor_formatter(NullFormatter())
    elif unit in ("B", "B/s"):
        axis.set_major_locator(_BinaryLocator())
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
        few = g["n"].to_numpy() < FEW_SAMPLES
        if few.any():  # hollow: a median of fewer than FEW_SAMPLES samples
            ax.plot(g[x].to_numpy(float)[few], med[few], linestyle="none", marker="s" if em else "o",
                    markersize=6, markerfacecolor="white", markeredgecolor=driver_color(driver), zorder=3)
            ax._cowlab_few = True  # read by the legends

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

    # outside the axes: a legend never covers data
    _legend(ax, set(s["_emulated"]), _what(ax), "small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


FEW_SAMPLES = 5  # medians of fewer samples are drawn hollow


def _what(*axes: Axes) -> str:
    """The legend's title: what a point and a bar are, and the hollow-marker note when used."""
    what = "median, bars p10–p90"
    if any(getattr(a, "_cowlab_few", False) for a in axes):
        what += f"\nhollow: fewer than {FEW_SAMPLES} samples"
    return what


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


# ---------------------------------------------------------------------------------------------
# Notebook plumbing shared by the workload notebooks (02–05)

BENCH_DRIVERS = ("overlay2", "vfs")


def workload_data(workloads: str | Iterable[str], where: str | Path | None = None,
                  mode: str = "primitive", include_failed: bool = False) -> pd.DataFrame:
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
    return (f"No {workload} results under {where}.\n"
            f"Produce some (as root) with:\n{cmds}\n"
            f"(add --quick before --workload for the short grid), or point the COWLAB_RESULTS "
            f"environment variable at a results directory.\nThe cells below skip their plots.")


def driver_series(df: pd.DataFrame) -> list[tuple[str, bool]]:
    """(driver, emulated) of every series in `df`, sorted: native before emulated per driver.
    A notebook loops over these so emulated runs get their own sentences."""
    if df.empty or "driver" not in df.columns:
        return []
    pairs = set(zip(df["driver"], is_emulated(df).map(bool)))
    return sorted(pairs)


def drivers_text(df: pd.DataFrame, workload: str) -> str:
    """'drivers: overlay2, vfs', plus what is missing for a comparison and whether any runs
    are emulated."""
    drivers = sorted(set(df["driver"])) if not df.empty else []
    lines = [f"drivers: {', '.join(drivers) or 'none'}"]
    if len(drivers) == 1:
        other = [d for d in BENCH_DRIVERS if d != drivers[0]]
        hint = f" (e.g. {bench_command(other[0], workload)})" if other else ""
        lines.append(f"Only {drivers[0]} has results: the driver comparison needs "
                     f"{' and '.join(BENCH_DRIVERS)}{hint}.")
    em = is_emulated(df)
    if em.any():
        lines.append("Some runs are emulated (TCG): they are plotted as separate, dashed series "
                     "and get their own sentences; they are never pooled with native runs.")
    return "\n".join(lines)


def runs_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run in `df`: driver, host, kernel, emulated, backing filesystem(s), quick
    grid or not, number of samples."""
    if df.empty:
        return pd.DataFrame(columns=["driver", "hostname", "kernel", "emulated", "backing_fs",
                                     "quick", "samples"])

    def values(s: pd.Series) -> str:
        return ", ".join(sorted({str(v) for v in s.dropna()})) or "?"

    d = df.assign(emulated=is_emulated(df))
    cols = {"driver": ("driver", "first"), "hostname": ("hostname", "first"),
            "kernel": ("kernel", "first"), "emulated": ("emulated", "first"),
            "backing_fs": ("backing_fs", values), "quick": ("quick", "first"),
            "samples": ("value", "size")}
    cols = {k: v for k, v in cols.items() if v[0] in d.columns}
    return d.groupby("run_id").agg(**cols)


def compare_sentence(df: pd.DataFrame, metric: str, num: tuple[str, Any], den: tuple[str, Any],
                     driver: str, filter: Any = None, emulated: bool | None = None,
                     subject: str = "") -> str:
    """How `metric` under one condition compares with another, for one driver, as a sentence:

    "overlay2 (ext4, 64 MiB file): the second 1-byte append takes 1/1,800 as long as the first
    (72 µs vs 130 ms, medians of 6 and 6 samples)".

    num, den: (words, filter) for each side; each filter narrows the rows `filter` leaves (e.g.
    ("with metacopy=on", {"metacopy": True})). `subject` follows the driver's name. Emulated rows
    are handled as in ratio_sentence; missing data is said, not raised.
    """
    sel = _select(df, metric, filter)
    sel = sel[sel["driver"] == driver] if "driver" in sel.columns else sel.iloc[0:0]
    sel, suffix, note = _pick_emulated(sel, emulated) if len(sel) else (sel, "", "")
    name = f"{driver}{suffix}" + (f" {subject}" if subject else "")
    sides = []
    for words, f in (num, den):
        rows = _select(sel, None, f) if len(sel) else sel
        if len(rows):
            _mixed_params_warning(rows, "\0", f"compare_sentence({metric!r}, {driver!r}, {words!r})")
        sides.append((words, rows, pd.to_numeric(rows["value"], errors="coerce").dropna()
                      if len(rows) else pd.Series(dtype=float)))
    gone = [w for w, _, v in sides if v.empty]
    if gone:
        return (f"{name}: no {metric} data for {' or '.join(gone)}{_filter_text(filter)}, "
                f"so no comparison.")
    (wa, ra, a), (wb, rb, b) = sides
    unit = _unit(pd.concat([ra, rb]), metric)
    times, detail = _comparison(a, b, unit, note)
    return f"{name}: {wa} {_verb(unit, metric)} {times} {wb} {detail}."


def reference_line(ax: Axes, xs: Iterable[float], ys: Iterable[float], label: str,
                   linestyle: str = ":") -> None:
    """A grey guide line (e.g. "one copy of the file set", "K copies"), not a driver's data;
    the y limits grow to show it."""
    xs, ys = list(map(float, xs)), list(map(float, ys))
    if not xs:
        return
    ax.plot(xs, ys, color=FLOOR_COLOR, linestyle=linestyle, linewidth=1.4, label=label, zorder=1)
    lo, hi = ax.get_ylim()
    log = ax.get_yscale() == "log"
    pos = [y for y in ys if y > 0]
    new_lo = min(lo, min(pos) / 1.5) if log and pos else min(lo, min(ys))
    new_hi = max(hi, max(ys) * (1.5 if log else 1.08))
    ax.set_ylim(new_lo, new_hi)


def _summary_values(sel: pd.DataFrame, keys: list[str]) -> list[float]:
    if sel.empty:
        return []
    s = summarize(sel.assign(_emulated=is_emulated(sel)), [*keys, "_emulated"])
    return [float(v) for v in (*s["p10"], *s["p90"], *s["median"]) if pd.notna(v)]


def _auto_log(vals: list[float]) -> bool:
    return bool(vals) and min(vals) > 0 and _span_decades(vals) > LOG_DECADES


BLANK = object()  # a line_panels panel spec: leave this cell of the grid empty


def _mixed_kinds(df: pd.DataFrame, metric: str, items: list) -> bool:
    """Whether the panels' rows hold both native and emulated runs."""
    kinds: set = set()
    for _, spec in items:
        if spec is BLANK:
            continue
        m, f = spec if isinstance(spec, tuple) else (metric, spec)
        sel = _select(df, m, f)
        kinds |= {bool(v) for v in is_emulated(sel)}
    return kinds == {True, False}


def _kind_spec(spec: Any, metric: str, emulated: bool) -> Any:
    """A panel spec narrowed to native or to emulated rows."""
    if spec is BLANK:
        return spec
    m, f = spec if isinstance(spec, tuple) else (metric, spec)

    def only(sel: pd.DataFrame, f=f):
        keep = _select(sel, None, f).index if f is not None else sel.index
        return sel.index.isin(keep) & (is_emulated(sel) == emulated).to_numpy()
    return (m, only)


def line_panels(df: pd.DataFrame, x: str, metric: str, panels: Mapping[str, Any], ncols: int = 3,
                share: str | None = "all", logx: bool | None = False, logy: bool | None = None,
                title: str | None = None, panel_size: tuple[float, float] = (4.2, 3.2),
                each: Any = None, fit: str = "spread", ylabel: str | None = None,
                split_emulated: bool = True):
    """A grid of line_by_driver panels, one per entry of `panels`, with one legend.

    panels: {title: filter} (the filter as in line_by_driver), or {title: (metric, filter)} to
    plot another metric in that panel. share: "all", "row", "col" or None: panels in one group
    get one y scale (log or linear for all of them, chosen from all their values when logy is
    None and every value is > 0), the same limits and the same time unit, so a flat line and a
    steep one can be told apart by eye. each(ax, title, rows): called per panel after its
    lines are drawn (e.g. to add a reference_line); its labelled artists join the legend.
    fit: "spread" (y limits take in every p10–p90 bar) or "medians" (limits from the medians
    and guide lines; a bar reaching further runs off the panel, which says so). Use "medians"
    when a few wild samples would squash every line flat. ylabel: words for the y axis instead
    of the metric's name (the unit is added), e.g. when the panels plot different metrics.
    When the rows hold both native and emulated (TCG) runs, every panel is drawn twice: native
    rows first, then the same panels for the emulated runs in rows of their own, with a y scale
    of their own (split_emulated=False draws them dashed on the same axes instead).
    Returns the Figure.
    """
    items = list(panels.items())
    ncols = max(1, min(ncols, max(len(items), 1)))
    emu_row = None  # the first row of the emulated block, when there is one
    if split_emulated and _mixed_kinds(df, metric, items):
        full = -(-len(items) // ncols) * ncols
        emu_row = full // ncols
        items = ([(k, _kind_spec(v, metric, False)) for k, v in items]
                 + [(f"\0pad{i}", BLANK) for i in range(full - len(items))]
                 + [(f"{k} · emulated (TCG)", _kind_spec(v, metric, True)) for k, v in items])
    n = max(len(items), 1)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False,
                             figsize=(panel_size[0] * ncols + 2.2, panel_size[1] * nrows + 0.6))

    def group(r: int, c: int):
        g = {"all": 0, "row": r, "col": c}.get(share or "", (r, c))
        return (emu_row is not None and r >= emu_row, g)

    specs = []
    blank = set()
    for i, (name, spec) in enumerate(items):
        if spec is BLANK:  # a cell left empty (e.g. to start the next host on a new row)
            blank.add((i // ncols, i % ncols))
            continue
        m, f = spec if isinstance(spec, tuple) else (metric, spec)
        sel = _select(df, m, f)
        if x in sel.columns:
            sel = sel[sel[x].notna()]
        else:
            sel = sel.iloc[0:0]
        specs.append((i // ncols, i % ncols, name, m, f, sel))
    gvals: dict[Any, list[float]] = {}
    for r, c, _, _, _, sel in specs:
        gvals.setdefault(group(r, c), []).extend(_summary_values(sel, ["driver", x]))
    glog = {g: (logy if logy is not None else _auto_log(v)) for g, v in gvals.items()}

    handles: dict[str, Any] = {}
    flags: set = set()
    for r, c, name, m, f, sel in specs:
        ax = axes[r][c]
        line_by_driver(df, x, m, ax=ax, logx=logx, logy=glog[group(r, c)], filter=f)
        ax.set_title(name, fontsize="medium")
        if sel.empty:  # the title says what is missing; a long note would not fit the panel
            for t in list(ax.texts):
                t.remove()
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes,
                    color="0.4")
            ax.set_ylabel("")
        if each is not None:
            each(ax, name, sel)
        leg = ax.get_legend()
        if leg is not None:
            leg.remove()
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
        if len(sel):
            flags |= {bool(v) for v in is_emulated(sel)}
        below = (r + 1) * ncols + c
        if below < len(items) and (r + 1, c) not in blank:  # a panel below carries the x label
            ax.set_xlabel("")
    for i in range(len(items), nrows * ncols):
        axes[i // ncols][i % ncols].set_visible(False)
    for r, c in blank:
        axes[r][c].set_visible(False)

    for g in gvals:  # one scale per group: limits, unit, label
        members = [(r, c, m, sel) for r, c, _, m, _, sel in specs if group(r, c) == g and len(sel)]
        if not members:
            continue
        if fit == "medians":
            lo, hi = _median_span([axes[r][c] for r, c, _, _ in members], glog[g])
        else:
            lims = [axes[r][c].get_ylim() for r, c, _, _ in members]
            lo, hi = min(v[0] for v in lims), max(v[1] for v in lims)
        if not share:
            for r, c, _, _ in members:
                axes[r][c].set_ylim(lo, hi)
            continue
        unit = _unit(pd.concat([sel for *_, sel in members]), metric)
        for r, c, m, _ in members:
            ax = axes[r][c]
            ax.set_ylim(lo, hi)
            su = _format_axis(ax.yaxis, unit, glog[g], gvals[g])
            label = _axis_label(ylabel or pretty_name(m), unit, su) + ("  [log]" if glog[g] else "")
            ax.set_ylabel(label if (c == 0 or share in ("col",)) else "")
    fig.tight_layout()
    for r, c, *_ in specs:
        _declutter_xticks(axes[r][c])
    if handles:
        note = emulation_note(flags)
        what = _what(*[a for row in axes for a in row])
        leg = fig.legend(list(handles.values()), list(handles.keys()), loc="upper left",
                         bbox_to_anchor=(1.0, 0.93), fontsize="small", title_fontsize="small",
                         title=f"{what}\n⚠ {note}" if note else what, alignment="left")
        if note:
            leg.get_title().set_color("firebrick")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _declutter_xticks(ax: Axes) -> None:
    """Tilt the x tick labels when neighbours would overlap (e.g. 64 MiB, 256 MiB, 1 GiB on a
    log axis in a narrow panel)."""
    try:
        renderer = ax.figure.canvas.get_renderer()
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
    except Exception:  # a backend without a renderer: leave the labels as they are
        return
    boxes.sort(key=lambda b: b.x0)
    if any(a.x1 + 2 > b.x0 for a, b in zip(boxes, boxes[1:])):
        for t in ax.get_xticklabels():
            t.set_rotation(35)
            t.set_horizontalalignment("right")
            t.set_rotation_mode("anchor")


def _median_span(axs: list[Axes], log: bool) -> tuple[float, float]:
    """y limits that take in the drawn medians and guide lines, not the error-bar caps."""
    ys = []
    for ax in axs:
        for line in ax.lines:
            if line.get_marker() == "_":  # an error bar's cap
                continue
            ys += [float(y) for y in np.asarray(line.get_ydata(), dtype=float) if math.isfinite(y)]
    if log:
        ys = [y for y in ys if y > 0]
    if not ys:
        return axs[0].get_ylim()
    lo, hi = min(ys), max(ys)
    if log:
        return lo / 1.4, hi * 1.4
    pad = 0.08 * (hi - lo) or abs(hi) * 0.1 or 1.0
    return min(0.0, lo - pad), hi + pad


HATCHES = ["", "///", "...", "xx", "\\\\\\", "++"]


def bars_by_driver(df: pd.DataFrame, metric: str, category: str, hue: str | None = None,
                   ax: Axes | None = None, filter: Any = None, logy: bool | None = None,
                   order: Iterable[Any] | None = None, hue_order: Iterable[Any] | None = None,
                   legend: bool = True) -> Axes:
    """Grouped bars: one group per value of `category` (e.g. the fio job), in each group one
    bar per driver (its colour) × value of `hue` (the first solid, the next hatched, …).
    Emulated runs are their own paler, dashed-edged bars labelled "(emulated)". Bar height is
    the median, the whisker p10–p90. logy None: log when the values span > LOG_DECADES
    decades. Returns the Axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.2))
    sel = _select(df, metric, filter)
    if sel.empty or category not in sel.columns or (hue and hue not in sel.columns):
        ax.text(0.5, 0.5, f"no {metric} data{_filter_text(filter)}", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
        ax.set_xticks([])
        ax.set_yticks([])
        return ax
    unit = _unit(sel, metric)
    sel = sel.assign(_emulated=is_emulated(sel), _hue=sel[hue] if hue else "")
    s = summarize(sel, [category, "driver", "_emulated", "_hue"])

    def ordered(values, first):
        first = [v for v in (first or []) if v in set(values)]
        return first + sorted((v for v in set(values) if v not in first), key=str)

    cats = ordered(s[category], order)
    hues = ordered(s["_hue"], hue_order)
    series = sorted({(d, bool(e), h) for d, e, h in zip(s["driver"], s["_emulated"], s["_hue"])},
                    key=lambda k: (k[0], k[1], hues.index(k[2])))
    vals = [float(v) for v in (*s["p10"], *s["p90"], *s["median"]) if pd.notna(v)]
    symlog = False
    if logy is None:
        logy = _auto_log(vals)
        pos = [v for v in vals if v > 0]
        # sizes spanning decades with zeros or negative noise among them (disk growth): a
        # symmetric log axis, linear within one 4 KiB block of zero
        symlog = not logy and unit == "B" and len(pos) > 1 and _span_decades(pos) > LOG_DECADES
    if logy:
        ax.set_yscale("log")
    if symlog:
        ax.set_yscale("symlog", linthresh=4096, base=2)
    width = 0.8 / max(len(series), 1)
    for si, (driver, em, h) in enumerate(series):
        color = driver_color(driver)
        hatch = HATCHES[hues.index(h) % len(HATCHES)]
        rows = s[(s["driver"] == driver) & (s["_emulated"] == em) & (s["_hue"] == h)]
        xs, med, lo, hi = [], [], [], []
        for ci, cat in enumerate(cats):
            r = rows[rows[category] == cat]
            if r.empty:
                continue
            r = r.iloc[0]
            xs.append(ci - 0.4 + (si + 0.5) * width)
            med.append(r["median"])
            lo.append(max(r["median"] - r["p10"], 0))
            hi.append(max(r["p90"] - r["median"], 0))
        label = series_label(driver, em) + (f" · {h}" if hue else "")
        ax.bar(xs, med, width * 0.92, yerr=[lo, hi], capsize=3, label=label,
               color="white" if hatch else color, edgecolor=color, hatch=hatch,
               alpha=0.5 if em else 1.0, linestyle="--" if em else "-", linewidth=1.2,
               error_kw={"elinewidth": 1, "ecolor": "0.25"})
        for x, m in zip(xs, med):
            if m == 0:  # a bar of height 0 is invisible: say it was measured, and was 0
                ax.annotate("0", (x, 0), xytext=(0, 2), textcoords="offset points", ha="center",
                            va="bottom", fontsize="small", color=color)
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels([str(c) for c in cats])
    ax.set_xlim(-0.6, len(cats) - 0.4)
    if symlog:
        top = max(vals) * 2
        ticks = [0.0] + [float(1 << k) for k in range(12, 41, 4) if (1 << k) <= top]
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(_value_formatter("B"))
        ax.set_ylabel(pretty_name(metric) + "  [log above 4 KiB]")
        # shrinkage is noise (other writers on a shared filesystem): shown, but cut at -64 KiB
        # so it does not take half the axis
        ax.set_ylim(max(min(0.0, min(vals)), -65536.0), top)
    else:
        su = _format_axis(ax.yaxis, unit, logy, vals)
        ax.set_ylabel(_axis_label(pretty_name(metric), unit, su) + ("  [log]" if logy else ""))
    if logy:
        pos = [v for v in vals if v > 0]
        if pos:
            ax.set_ylim(min(pos) / 2, max(pos) * 2)
    elif not symlog:
        ax.set_ylim(bottom=0)
    ax.set_xlabel(pretty_name(category))
    ax.grid(True, axis="y", which="major", alpha=0.3)
    if legend:
        _legend(ax, {e for _, e, _ in series}, "median, bars p10–p90", "small",
                loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


# ---------------------------------------------------------------------------------------------
# Figures with one panel per host: native and emulated runs never share an axis

def hosts_in(df: pd.DataFrame) -> list[tuple[str, bool]]:
    """(hostname, emulated) of every host in `df`, native first."""
    if df.empty or "hostname" not in df.columns:
        return []
    pairs = {(str(h), bool(e)) for h, e in zip(df["hostname"], is_emulated(df))}
    return sorted(pairs, key=lambda p: (p[1], p[0]))


def _host_title(host: tuple[str, bool], many: bool) -> str:
    kind = "emulated (TCG)" if host[1] else "native"
    return f"{host[0]} · {kind}" if many else kind


def host_panels(df: pd.DataFrame, x: str, metric: str, filter: Any = None, split: str | None = None,
                logx: bool | None = None, logy: bool | None = None, title: str | None = None):
    """`metric` against `x` per driver, one row of panels per host (emulated hosts get their own
    rows and y scale) and one column per value of `split` (e.g. backing_fs, cache). Returns the
    Figure."""
    sel = _select(df, metric, filter)
    if x in sel.columns:
        sel = sel[sel[x].notna()]
    hosts = hosts_in(sel)
    many = len({p[0] for p in hosts}) > 1
    em = is_emulated(sel) if len(sel) else pd.Series(dtype=bool)
    rows = []  # per host: the split values it has data for
    for h in hosts:
        mine = sel[(sel["hostname"].astype(str) == h[0]) & (em == h[1])]
        vals = (sorted({v for v in mine[split].dropna()}, key=str)
                if split and split in mine.columns else [None])
        rows.append((h, vals or [None]))
    ncols = max((len(v) for _, v in rows), default=1)
    panels: dict[str, Any] = {}
    for h, vals in rows:
        for v in vals:
            f = {**dict(filter or {}), "hostname": h[0], "emulated": h[1]}
            name = _host_title(h, many)
            if v is not None:
                f[split] = v
                name += f" · {v if split == 'backing_fs' else human_x(split, v)}"
            panels[name] = f
        for k in range(ncols - len(vals)):
            panels[f"\0blank {h} {k}"] = BLANK
    if not panels:
        panels["no data"] = dict(filter or {})
    return line_panels(df, x, metric, panels, ncols=ncols, share="row", logx=logx, logy=logy,
                       title=title, panel_size=(3.6, 2.8), split_emulated=False)  # split here already


def bars_panels(df: pd.DataFrame, metric: str, category: str, hue: str | None = None,
                filter: Any = None, by: str | None = None, title: str | None = None,
                order: Iterable[Any] | None = None):
    """Grouped bars per driver (bars_by_driver), one panel per host and per value of `by`
    (e.g. mode: primitive / engine). Returns the Figure."""
    sel = _select(df, metric, filter)
    hosts = hosts_in(sel) or [("", False)]
    bys = sorted({v for v in sel[by].dropna()}, key=str) if by and by in sel.columns else [None]
    n = len(hosts) * len(bys)
    ncols = min(n, 2)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=(5.2 * ncols + 2.4, 3.4 * nrows + 0.4))
    many = len({h[0] for h in hosts}) > 1
    handles: dict[str, Any] = {}
    i = 0
    for h in hosts:
        for b in bys:
            ax = axes[i // ncols][i % ncols]
            f = dict(filter or {})
            if h[0]:
                f.update({"hostname": h[0], "emulated": h[1]})
            if b is not None:
                f[by] = b
            bars_by_driver(df, metric, category, hue=hue, ax=ax, filter=f, legend=False, order=order)
            ax.set_title(_host_title(h, many) + (f" · {b}" if b is not None else ""), fontsize="medium")
            for hd, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, hd)
            i += 1
    for j in range(i, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    fig.tight_layout()
    for r in axes:
        for ax in r:
            if ax.get_visible():
                _declutter_xticks(ax)
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="upper left",
                   bbox_to_anchor=(1.0, 0.93), fontsize="small", title="median, bars p10–p90",
                   title_fontsize="small", alignment="left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def space_figure(df: pd.DataFrame):
    """The space workload for every driver: growth of the backing storage after each event
    (create, a new 1 KiB file, 1 KiB appended to a 64 MiB image file, remove), primitive and
    engine mode side by side, one panel per host."""
    return bars_panels(df, "space_bytes", "event", filter={"workload": "space"}, by="mode",
                       title="space: what a container costs on disk", order=SPACE_EVENTS)


SPACE_EVENTS = ["create", "write_new_1KiB", "append_1KiB_to_64MiB", "after_remove"]


# ---------------------------------------------------------------------------------------------
# Engine vs storage (notebook 06 and the report): how much of `docker run` is the driver

ENGINE_OPS = {"create_seconds": "docker create", "run_seconds": "docker run --rm true"}


def engine_split(df: pd.DataFrame) -> pd.DataFrame:
    """Per driver × host kind × image: each engine op's median next to the primitive create
    median for the same image (the storage driver's own work), what the engine adds, and the
    storage share. Emulated rows are split only against emulated primitive rows; the driver
    column then reads "<driver> (emulated)"."""
    cols = ["driver", "emulated", "image_size_bytes", "layers", "engine_op", "engine_median",
            "storage", "engine_adds", "storage_share"]
    if df.empty or "mode" not in df.columns:
        return pd.DataFrame(columns=cols)
    c = df[(df["workload"] == "creation")]
    c = c.assign(emulated_=is_emulated(c))
    by = ["driver", "emulated_", "image_size_bytes", "layers"]
    prim = c[(c["mode"] == "primitive") & (c["metric"] == "create_seconds")]
    pc = summarize(prim, by).set_index(by)["median"] if len(prim) else pd.Series(dtype=float)
    out = []
    for metric in ENGINE_OPS:
        eng = c[(c["mode"] == "engine") & (c["metric"] == metric)]
        if eng.empty:
            continue
        for r in summarize(eng, by).itertuples(index=False):
            key = (r.driver, r.emulated_, r.image_size_bytes, r.layers)
            p = pc.get(key, np.nan)
            out.append({"driver": series_label(r.driver, bool(r.emulated_)), "emulated": bool(r.emulated_),
                        "image_size_bytes": r.image_size_bytes, "layers": r.layers, "engine_op": metric,
                        "engine_median": r.median, "storage": p,
                        "engine_adds": r.median - p if p == p else np.nan,
                        "storage_share": p / r.median if p == p and r.median else np.nan})
    return pd.DataFrame(out, columns=cols)


def engine_split_figure(split: pd.DataFrame, layers: int = 1):
    """Storage (hatched) beside the whole engine op (solid) per driver and image size, on a log
    axis so a 1 ms storage part stays visible next to a 1 s `docker run`; the storage share is
    written above each pair. One row of panels per host kind (native, emulated)."""
    one = split[split["layers"] == layers] if len(split) else split
    kinds = sorted(set(one["emulated"])) if len(one) else [False]
    fig, axes = plt.subplots(len(kinds), 2, squeeze=False, figsize=(12, 3.8 * len(kinds) + 0.4))
    for row, em in enumerate(kinds):
        for ax, (metric, words) in zip(axes[row], ENGINE_OPS.items()):
            part = one[(one["engine_op"] == metric) & (one["emulated"] == em)] if len(one) else one
            part = part.sort_values(["driver", "image_size_bytes"]) if len(part) else part
            ax.set_title(f"{words} · {'emulated (TCG)' if em else 'native'}", fontsize="medium")
            if part.empty:
                ax.text(0.5, 0.5, f"no {words} data", ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([])
                continue
            xs = np.arange(len(part))
            for x, r in zip(xs, part.itertuples()):
                c = driver_color(r.driver.removesuffix(" (emulated)"))
                ax.bar(x + 0.2, r.engine_median, 0.38, color=c, alpha=0.55 if em else 1)
                if r.storage == r.storage:
                    ax.bar(x - 0.2, r.storage, 0.38, color="white", edgecolor=c, hatch="///")
                    ax.text(x, r.engine_median * 1.15, f"{100 * r.storage_share:.1f}%", ha="center",
                            va="bottom", fontsize="x-small")
            ax.set_yscale("log")
            vals = [v for v in (*part["engine_median"], *part["storage"]) if v == v and v > 0]
            ax.set_ylim(min(vals) / 2, max(vals) * 4)
            su = _format_axis(ax.yaxis, "s", True, vals)
            ax.set_ylabel(_axis_label("median time", "s", su) + "  [log]")
            ax.set_xticks(xs)
            ax.set_xticklabels([human_bytes(r.image_size_bytes) for r in part.itertuples()], fontsize="small")
            for t, r in zip(ax.get_xticklabels(), part.itertuples()):
                t.set_color(driver_color(r.driver.removesuffix(" (emulated)")))
            ax.set_xlabel("image size (one layer), coloured by driver")
            ax.grid(True, axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    names = sorted({d.removesuffix(" (emulated)") for d in one["driver"]}) if len(one) else []
    fig.legend([Patch(facecolor="white", edgecolor="0.3", hatch="///"), Patch(facecolor="0.4"),
                *[Patch(facecolor=driver_color(d)) for d in names]],
               ["storage: cowlab's own create", "the whole engine op", *names], loc="upper left",
               bbox_to_anchor=(1.0, 0.93), fontsize="small", title="medians; % = storage share",
               title_fontsize="small")
    fig.tight_layout(h_pad=2.0)
    for r in axes:
        for ax in r:
            _declutter_xticks(ax)
    return fig


def engine_split_sentences(split: pd.DataFrame, layers: int = 1) -> list[str]:
    """One line per driver (emulated drivers too) × image × op: the engine time and its storage part."""
    out = []
    one = split[split["layers"] == layers] if len(split) else split
    for r in one.sort_values(["driver", "engine_op", "image_size_bytes"]).itertuples() if len(one) else []:
        op = ENGINE_OPS[r.engine_op]
        head = f"{r.driver} at {human_bytes(r.image_size_bytes)}: {op} {human_seconds(r.engine_median)}"
        if r.storage == r.storage:
            out.append(f"{head}, of which storage {human_seconds(r.storage)} ({100 * r.storage_share:.1f}%)")
        else:
            out.append(f"{head}; no primitive result on the same kind of host to split it")
    return out


def engine_split_table(split: pd.DataFrame) -> pd.DataFrame:
    """engine_split's frame in words (times in s/ms/µs, sizes in MiB, the share in %)."""
    show = split.sort_values(["engine_op", "driver", "layers", "image_size_bytes"]).reset_index(drop=True)
    for c in ("engine_median", "storage", "engine_adds"):
        show[c] = show[c].map(lambda v: "—" if v != v else human_seconds(v))
    show["storage_share"] = show["storage_share"].map(lambda v: "—" if v != v else f"{100 * v:.1f}%")
    show["image_size_bytes"] = show["image_size_bytes"].map(human_bytes)
    show["engine_op"] = show["engine_op"].map(ENGINE_OPS)
    return show.drop(columns=["emulated"]).rename(columns={
        "engine_op": "engine op", "engine_median": "engine median", "storage": "storage (primitive create)",
        "engine_adds": "engine adds", "storage_share": "storage share of the engine op",
        "image_size_bytes": "image size"})


# ---------------------------------------------------------------------------------------------
# Helpers the workload notebooks share (they used to define these themselves)

def series_rows(df: pd.DataFrame, driver: str, emulated: bool, metric: str | None = None,
                **where: Any) -> pd.DataFrame:
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


def per_extra(df: pd.DataFrame, driver: str, emulated: bool, metric: str, where: Mapping | None = None,
              x: str = "containers") -> tuple[float, int, int] | None:
    """(what each step of x beyond the smallest added, x lo, x hi) from the medians at the two
    ends, or None when fewer than two values of x were measured."""
    rows = series_rows(df, driver, emulated, metric, **dict(where or {}))
    s = summarize(rows, x).sort_values(x) if len(rows) else rows
    if len(s) < 2:
        return None
    lo, hi = s.iloc[0], s.iloc[-1]
    return (hi["median"] - lo["median"]) / (hi[x] - lo[x]), int(lo[x]), int(hi[x])


def growth_sentence(df: pd.DataFrame, driver: str, emulated: bool, metric: str, where: Mapping | None,
                    phrase: str, x: str = "containers") -> str:
    """ratio_sentence from the smallest to the largest x measured, and how much x grew."""
    ks = [int(k) for k in param_values(series_rows(df, driver, emulated, metric, **dict(where or {})), x)]
    if len(ks) < 2:
        return (f"{series_label(driver, emulated)}: {'one K only' if ks else 'no data'} for "
                f"{phrase}, so no growth.")
    return (ratio_sentence(df, metric, x, ks[0], ks[-1], driver, filter=where, emulated=emulated,
                           phrase=phrase) + f" K grew {ks[-1] / ks[0]:,.0f}×.")


def density_guides(set_bytes: int, files: int):
    """A line_panels `each`: reference lines from the density workload's parameters (one copy
    and K copies of the file set for byte panels, one object per file per container for counts)."""
    def guides(ax: Axes, title: str, rows: pd.DataFrame) -> None:
        if rows.empty:
            return
        ks = sorted(int(k) for k in set(rows["containers"]))
        if (rows["unit"] == "B").all():
            reference_line(ax, ks, [set_bytes] * len(ks), "one copy of the file set", "--")
            reference_line(ax, ks, [set_bytes * k for k in ks], "K copies of the file set", ":")
        else:
            reference_line(ax, ks, [files * k for k in ks], "one per file per container", ":")
    return guides


def io_figure(df: pd.DataFrame, jobs: list[str], metrics: list[str], title: str, ncols: int = 2):
    """fio results per job: container root against a volume, one panel per metric."""
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, 3.6 * nrows), squeeze=False)
    for i, metric in enumerate(metrics):
        ax = axes[i // ncols][i % ncols]
        bars_by_driver(df, metric, "job_label", hue="target", ax=ax, filter={"job_label": jobs},
                       order=jobs, hue_order=["container", "volume"],
                       legend=(i == ncols - 1 or len(metrics) == 1))
        ax.set_title(pretty_name(metric).replace("fio ", ""), fontsize="medium")
        ax.set_xlabel("")
    for i in range(len(metrics), nrows * ncols):
        axes[i // ncols][i % ncols].set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def largest_common_compare(df: pd.DataFrame, metric: str, label_a: str, filter_a: Mapping, label_b: str,
                           filter_b: Mapping, driver: str, emulated: bool, where: Mapping, what: str,
                           x: str = "file_size_bytes") -> str:
    """compare_sentence (label_a's rows against label_b's) at the largest `x` both sides
    measured, e.g. the largest file size."""
    common = (set(param_values(series_rows(df, driver, emulated, **where, **filter_a), x))
              & set(param_values(series_rows(df, driver, emulated, **where, **filter_b), x)))
    if not common:
        return f"{series_label(driver, emulated)} [{what}]: no {pretty_name(x)} measured for both, so no comparison."
    at = max(common)
    return compare_sentence(df, metric, (label_a, filter_a), (label_b, filter_b), driver,
                            filter={**where, x: at}, emulated=emulated,
                            subject=f"[{what}, {human_x(x, at)} file]")


def span_sentence(df: pd.DataFrame, metric: str, x: str, driver: str, emulated: bool, where: Mapping,
                  phrase: str, missing: str, grew: str, prep: str | None = None) -> str:
    """ratio_sentence from the smallest to the largest `x` this series measured under `where`,
    followed by how much x grew (`grew` with {} for the factor, e.g. "The image is {}× as deep.");
    `missing` names the series' point when fewer than two values of x exist."""
    xs = param_values(series_rows(df, driver, emulated, **dict(where)), x)
    if len(xs) < 2:
        only = f"only {pretty_name(x)} = {human_x(x, xs[0])}" if xs else "no data"
        return f"{series_label(driver, emulated)}: {only} for {missing}, so no ratio."
    return (ratio_sentence(df, metric, x, xs[0], xs[-1], driver, filter=dict(where), emulated=emulated,
                           phrase=phrase, prep=prep) + " " + grew.format(f"{xs[-1] / xs[0]:,.0f}"))
