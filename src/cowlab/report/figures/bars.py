"""Grouped bars per driver: one bar per category, hues for a second parameter."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.ticker import FixedLocator, NullLocator

from cowlab.report.figures.axes import (
    LOG_DECADES,
    axis_label,
    driver_color,
    format_axis,
    no_data,
    pretty_name,
    series_label,
    span_decades,
    value_formatter,
)
from cowlab.report.figures.data import is_emulated, metric_unit, select_rows, summarize
from cowlab.report.figures.panels import auto_log, legend_for
from cowlab.report.figures.sentences import filter_text

HATCHES = ["", "///", "...", "xx", "\\\\\\", "++"]


def bars_by_driver(
    df: pd.DataFrame,
    metric: str,
    category: str,
    hue: str | None = None,
    ax: Axes | None = None,
    filter: Any = None,
    logy: bool | None = None,
    order: Iterable[Any] | None = None,
    hue_order: Iterable[Any] | None = None,
    legend: bool = True,
) -> Axes:
    """Grouped bars: one group per value of `category` (e.g. the fio job), in each group one
    bar per driver (its colour) × value of `hue` (the first solid, the next hatched, …).
    Emulated runs are their own paler, dashed-edged bars labelled "(emulated)". Bar height is
    the median, the whisker p10–p90. logy None: log when the values span > LOG_DECADES
    decades. Returns the Axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4.2))
    sel = select_rows(df, metric, filter)
    if sel.empty or category not in sel.columns or (hue and hue not in sel.columns):
        no_data(ax, f"no {metric} data{filter_text(filter)}")
        ax.set_xticks([])
        ax.set_yticks([])
        return ax
    unit = metric_unit(sel, metric)
    sel = sel.assign(_emulated=is_emulated(sel), _hue=sel[hue] if hue else "")
    s = summarize(sel, [category, "driver", "_emulated", "_hue"])

    def ordered(values, first):
        first = [v for v in (first or []) if v in set(values)]
        return first + sorted((v for v in set(values) if v not in first), key=str)

    cats = ordered(s[category], order)
    hues = ordered(s["_hue"], hue_order)
    series = sorted(
        {(d, bool(e), h) for d, e, h in zip(s["driver"], s["_emulated"], s["_hue"], strict=True)},
        key=lambda k: (k[0], k[1], hues.index(k[2])),
    )
    vals = [float(v) for v in (*s["p10"], *s["p90"], *s["median"]) if pd.notna(v)]
    symlog = False
    if logy is None:
        logy = auto_log(vals)
        pos = [v for v in vals if v > 0]
        # sizes spanning decades with zeros or negative noise among them (disk growth): a
        # symmetric log axis, linear within one 4 KiB block of zero
        symlog = not logy and unit == "B" and len(pos) > 1 and span_decades(pos) > LOG_DECADES
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
        ax.bar(
            xs,
            med,
            width * 0.92,
            yerr=[lo, hi],
            capsize=3,
            label=label,
            color="white" if hatch else color,
            edgecolor=color,
            hatch=hatch,
            alpha=0.5 if em else 1.0,
            linestyle="--" if em else "-",
            linewidth=1.2,
            error_kw={"elinewidth": 1, "ecolor": "0.25"},
        )
        for x, m in zip(xs, med, strict=True):
            if m == 0:  # a bar of height 0 is invisible: say it was measured, and was 0
                ax.annotate(
                    "0",
                    (x, 0),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize="small",
                    color=color,
                )
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels([str(c) for c in cats])
    ax.set_xlim(-0.6, len(cats) - 0.4)
    if symlog:
        top = max(vals) * 2
        ticks = [0.0] + [float(1 << k) for k in range(12, 41, 4) if (1 << k) <= top]
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(value_formatter("B"))
        ax.set_ylabel(pretty_name(metric) + "  [log above 4 KiB]")
        # shrinkage is noise (other writers on a shared filesystem): shown, but cut at -64 KiB
        # so it does not take half the axis
        ax.set_ylim(max(min(0.0, min(vals)), -65536.0), top)
    else:
        su = format_axis(ax.yaxis, unit, logy, vals)
        ax.set_ylabel(axis_label(pretty_name(metric), unit, su) + ("  [log]" if logy else ""))
    if logy:
        pos = [v for v in vals if v > 0]
        if pos:
            ax.set_ylim(min(pos) / 2, max(pos) * 2)
    elif not symlog:
        ax.set_ylim(bottom=0)
    ax.set_xlabel(pretty_name(category))
    ax.grid(True, axis="y", which="major", alpha=0.3)
    if legend:
        legend_for(
            ax, {e for _, e, _ in series}, "median, bars p10–p90", "small", loc="upper left", bbox_to_anchor=(1.01, 1.0)
        )
    return ax
