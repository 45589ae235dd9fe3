"""The figure functions every question uses: one metric against a parameter per driver (lines,
one panel or a grid), bars per category, the legend and its emulation note."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from itertools import pairwise
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from cowlab.report.figures.axes import (
    ALL_EMULATED_NOTE,
    EMULATED_NOTE,
    FLOOR_COLOR,
    LOG_DECADES,
    axis_label,
    driver_color,
    format_axis,
    human_bytes,
    no_data,
    pretty_name,
    series_label,
    span_decades,
    time_scale,
    value_formatter,
    x_unit,
)
from cowlab.report.figures.data import is_emulated, metric_unit, mixed_params_warning, select_rows, summarize
from cowlab.report.figures.sentences import filter_text, ratio_text


def line_by_driver(
    df: pd.DataFrame,
    x: str,
    metric: str,
    ax: Axes | None = None,
    logx: bool | None = False,
    logy: bool | None = None,
    filter: Any = None,
) -> Axes:
    """`metric` against parameter `x`: one series per driver (emulated runs a separate, dashed
    series), medians with p10–p90 error bars.

    filter: {column: value | [values] | callable} or a callable frame -> mask, applied after
    picking the metric. logx/logy: True, False, or None for "log when the values span more than
    LOG_DECADES decades". Returns the Axes.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.2))
    sel = select_rows(df, metric, filter)
    if x in sel.columns:
        sel = sel[sel[x].notna()]
    if sel.empty or x not in sel.columns or "driver" not in sel.columns:
        no_data(ax, f"no {metric} data{filter_text(filter)}")
        ax.set_xlabel(pretty_name(x))
        ax.set_ylabel(pretty_name(metric))
        ax.set_xticks([])
        ax.set_yticks([])
        return ax
    unit = metric_unit(sel, metric)
    mixed_params_warning(sel, x, f"line_by_driver({metric!r})")
    sel = sel.assign(_emulated=is_emulated(sel))
    s = summarize(sel, ["driver", "_emulated", x]).sort_values(["driver", "_emulated", x])

    ys = [*s["p10"], *s["p90"], *s["median"]]
    xs = list(s[x].astype(float))
    if logy is None:
        logy = span_decades(ys) > LOG_DECADES
    if logx is None:
        logx = span_decades(xs) > LOG_DECADES
    if logx:
        ax.set_xscale("log", base=2 if x_unit(x) == "B" else 10)
    if logy:
        ax.set_yscale("log")

    for (driver, em), g in s.groupby(["driver", "_emulated"], sort=True):
        med = g["median"].to_numpy(float)
        err = np.vstack([med - g["p10"].to_numpy(float), g["p90"].to_numpy(float) - med])
        ax.errorbar(
            g[x].to_numpy(float),
            med,
            yerr=np.clip(err, 0, None),
            color=driver_color(driver),
            linestyle="--" if em else "-",
            marker="s" if em else "o",
            markersize=5,
            capsize=4,
            linewidth=1.6,
            label=series_label(driver, bool(em)),
        )
        few = g["n"].to_numpy() < FEW_SAMPLES
        if few.any():  # hollow: a median of fewer than FEW_SAMPLES samples
            ax.plot(
                g[x].to_numpy(float)[few],
                med[few],
                linestyle="none",
                marker="s" if em else "o",
                markersize=6,
                markerfacecolor="white",
                markeredgecolor=driver_color(driver),
                zorder=3,
            )
            ax._cowlab_few = True  # type: ignore[attr-defined]  # our mark on this Axes, read by the legends

    xunit = x_unit(x)
    format_axis(ax.xaxis, xunit, logx, xs, ticks_at=sorted(set(xs)))
    su = format_axis(ax.yaxis, unit, logy, ys)
    ax.set_xlabel(axis_label(pretty_name(x), xunit))
    ax.set_ylabel(axis_label(pretty_name(metric), unit, su) + ("  [log]" if logy else ""))
    if logx:
        ax.set_xlabel(ax.get_xlabel() + "  [log]")
    if not logy and unit in ("s", "B") and (s["p10"] >= 0).all():
        ax.set_ylim(bottom=0)
    ax.grid(True, which="major", alpha=0.3)

    # outside the axes: a legend never covers data
    legend_for(ax, set(s["_emulated"]), _what(ax), "small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
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


def legend_for(ax: Axes, flags: set, what: str, size: str, **kw):
    note = emulation_note(flags)
    leg = ax.legend(
        title=f"{what}\n⚠ {note}" if note else what, fontsize=size, title_fontsize=size, alignment="left", **kw
    )
    if note:
        leg.get_title().set_color("firebrick")
    return leg


COWLAB, FLOOR, LIBC = "cowlab_container_seconds", "container_floor_seconds", "container_floor_libc_seconds"


def overhead_bars(df: pd.DataFrame, ax: Axes | None = None, filter: Any = None) -> Axes:
    """cowlab's whole container (create, remove, the deferred deletion) next to the kernel's
    floor for the same container (mkdirs, mount, umount, rmdirs), per grid point (image size,
    layers) and per driver that has a floor; a tick on the floor bar marks the same syscalls
    timed from libc. The gap is what the harness adds. Both come from the same runs (mount_floor
    times them in turn)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.2))
    sel = select_rows(df, None, filter)
    need = {"metric", "driver", "image_size_bytes", "layers"}
    floor = sel[sel["metric"] == FLOOR] if need <= set(sel.columns) else sel.iloc[0:0]
    if floor.empty:
        no_data(ax, "no mount_floor data (only drivers with a bare mount have one)")
        ax.set_xticks([])
        ax.set_yticks([])
        return ax
    sel = sel.assign(_emulated=is_emulated(sel))
    keys = ["driver", "_emulated", "image_size_bytes", "layers"]
    s = summarize(sel[sel["metric"].isin([COWLAB, FLOOR, LIBC])], ["metric", *keys])
    fl = s[s["metric"] == FLOOR]
    groups = list(fl.groupby(["driver", "_emulated"], sort=True))
    points = sorted({(r.image_size_bytes, r.layers) for r in fl.itertuples()}, key=lambda p: (p[1], p[0]))
    width = 0.8 / (2 * len(groups))
    ymax = 0.0
    seen: set[str] = set()

    def once(label: str) -> str | None:  # one legend entry per series and part
        if label in seen:
            return None
        seen.add(label)
        return label

    def get(metric, driver, em, size, layers):
        r = s[
            (s["metric"] == metric)
            & (s["driver"] == driver)
            & (s["_emulated"] == em)
            & (s["image_size_bytes"] == size)
            & (s["layers"] == layers)
        ]
        return r.iloc[0] if len(r) else None

    def bar(x, row, label, **kw):
        ax.bar(
            x,
            row["median"],
            width,
            yerr=[[row["median"] - row["p10"]], [row["p90"] - row["median"]]],
            capsize=3,
            label=label,
            **kw,
        )

    for gi, ((driver, em), _) in enumerate(groups):
        c = driver_color(driver)
        for pi, (size, layers) in enumerate(points):
            cw, f, lc = (get(m, driver, em, size, layers) for m in (COWLAB, FLOOR, LIBC))
            x0 = pi - 0.4 + (2 * gi + 0.5) * width
            if cw is not None:
                bar(x0, cw, once(f"{series_label(driver, em)}: cowlab's container"), color=c, alpha=0.55 if em else 1)
                if f is not None and f["median"] > 0:
                    ax.text(
                        x0,
                        cw["p90"],
                        f"{ratio_text(cw['median'] / f['median'])}×",
                        ha="center",
                        va="bottom",
                        fontsize="small",
                    )
                ymax = max(ymax, cw["p90"])
            if f is not None:
                bar(
                    x0 + width,
                    f,
                    once(f"{series_label(driver, em)}: the kernel's floor"),
                    color=FLOOR_COLOR,
                    alpha=0.55 if em else 1,
                    edgecolor=c,
                    linewidth=1.5,
                )
                ymax = max(ymax, f["p90"])
            if lc is not None:
                ax.plot(
                    [x0 + width / 2, x0 + 1.5 * width],
                    [lc["median"]] * 2,
                    color="black",
                    linewidth=1.5,
                    label=once("the floor's syscalls from libc (check)"),
                )
    ax.set_xticks(range(len(points)))
    ax.set_xticklabels([f"{human_bytes(sz)}\n{int(n)} layer{'s' if n != 1 else ''}" for sz, n in points])
    scale, su = time_scale(ymax)
    ax.yaxis.set_major_formatter(value_formatter("s", scale))
    ax.set_ylabel(f"median time per container ({su})")
    ax.set_ylim(0, ymax * 1.2)
    ax.grid(True, axis="y", alpha=0.3)
    legend_for(
        ax,
        {em for (_, em), _ in groups},
        "medians, p10–p90; label: cowlab ÷ floor",
        "small",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    return ax


def reference_line(ax: Axes, xs: Iterable[float], ys: Iterable[float], label: str, linestyle: str = ":") -> None:
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


def auto_log(vals: list[float]) -> bool:
    return bool(vals) and min(vals) > 0 and span_decades(vals) > LOG_DECADES


BLANK = object()  # a line_panels panel spec: leave this cell of the grid empty


def _mixed_kinds(df: pd.DataFrame, metric: str, items: list) -> bool:
    """Whether the panels' rows hold both native and emulated runs."""
    kinds: set = set()
    for _, spec in items:
        if spec is BLANK:
            continue
        m, f = spec if isinstance(spec, tuple) else (metric, spec)
        sel = select_rows(df, m, f)
        kinds |= {bool(v) for v in is_emulated(sel)}
    return kinds == {True, False}


def _kind_spec(spec: Any, metric: str, emulated: bool) -> Any:
    """A panel spec narrowed to native or to emulated rows."""
    if spec is BLANK:
        return spec
    m, f = spec if isinstance(spec, tuple) else (metric, spec)

    def only(sel: pd.DataFrame, f=f):
        keep = select_rows(sel, None, f).index if f is not None else sel.index
        return sel.index.isin(keep) & (is_emulated(sel) == emulated).to_numpy()

    return (m, only)


def line_panels(
    df: pd.DataFrame,
    x: str,
    metric: str,
    panels: Mapping[str, Any],
    ncols: int = 3,
    share: str | None = "all",
    logx: bool | None = False,
    logy: bool | None = None,
    title: str | None = None,
    panel_size: tuple[float, float] = (4.2, 3.2),
    each: Any = None,
    fit: str = "spread",
    ylabel: str | None = None,
    split_emulated: bool = True,
):
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
        items = (
            [(k, _kind_spec(v, metric, False)) for k, v in items]
            + [(f"\0pad{i}", BLANK) for i in range(full - len(items))]
            + [(f"{k} · emulated (TCG)", _kind_spec(v, metric, True)) for k, v in items]
        )
    n = max(len(items), 1)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, squeeze=False, figsize=(panel_size[0] * ncols + 2.2, panel_size[1] * nrows + 0.6)
    )

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
        sel = select_rows(df, m, f)
        if x in sel.columns:
            sel = sel[sel[x].notna()]
        else:
            sel = sel.iloc[0:0]
        specs.append((i // ncols, i % ncols, name, m, f, sel))
    gvals: dict[Any, list[float]] = {}
    for r, c, _, _, _, sel in specs:
        gvals.setdefault(group(r, c), []).extend(_summary_values(sel, ["driver", x]))
    glog = {g: (logy if logy is not None else auto_log(v)) for g, v in gvals.items()}

    handles: dict[str, Any] = {}
    flags: set = set()
    for r, c, name, m, f, sel in specs:
        ax = axes[r][c]
        line_by_driver(df, x, m, ax=ax, logx=logx, logy=glog[group(r, c)], filter=f)
        ax.set_title(name, fontsize="medium")
        if sel.empty:  # the title says what is missing; a long note would not fit the panel
            for t in list(ax.texts):
                t.remove()
            no_data(ax, "no data")
            ax.set_ylabel("")
        if each is not None:
            each(ax, name, sel)
        leg = ax.get_legend()
        if leg is not None:
            leg.remove()
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
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
        unit = metric_unit(pd.concat([sel for *_, sel in members]), metric)
        for r, c, m, _ in members:
            ax = axes[r][c]
            ax.set_ylim(lo, hi)
            su = format_axis(ax.yaxis, unit, glog[g], gvals[g])
            label = axis_label(ylabel or pretty_name(m), unit, su) + ("  [log]" if glog[g] else "")
            ax.set_ylabel(label if (c == 0 or share in ("col",)) else "")
    fig.tight_layout()
    for r, c, *_ in specs:
        declutter_xticks(axes[r][c])
    if handles:
        note = emulation_note(flags)
        what = _what(*[a for row in axes for a in row])
        leg = fig.legend(
            list(handles.values()),
            list(handles.keys()),
            loc="upper left",
            bbox_to_anchor=(1.0, 0.93),
            fontsize="small",
            title_fontsize="small",
            title=f"{what}\n⚠ {note}" if note else what,
            alignment="left",
        )
        if note:
            leg.get_title().set_color("firebrick")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def declutter_xticks(ax: Axes) -> None:
    """Tilt the x tick labels when neighbours would overlap (e.g. 64 MiB, 256 MiB, 1 GiB on a
    log axis in a narrow panel)."""
    try:
        # Agg's canvas has get_renderer, FigureCanvasBase has not: the except below covers that
        renderer = ax.figure.canvas.get_renderer()  # type: ignore[attr-defined]
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
    except Exception:  # a backend without a renderer: leave the labels as they are
        return
    boxes.sort(key=lambda b: b.x0)
    if any(a.x1 + 2 > b.x0 for a, b in pairwise(boxes)):
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
