"""Figures for one question each: one panel per host (native and emulated runs never share an
axis), what a container costs on disk, engine vs storage, fio, density guides."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from cowlab.report.figures.axes import (
    axis_label,
    driver_color,
    format_axis,
    human_bytes,
    human_seconds,
    human_x,
    pretty_name,
    series_label,
)
from cowlab.report.figures.bars import bars_by_driver
from cowlab.report.figures.data import is_emulated, select_rows, summarize
from cowlab.report.figures.panels import BLANK, declutter_xticks, line_panels, reference_line

# ---------------------------------------------------------------------------------------------
# Figures with one panel per host: native and emulated runs never share an axis


def hosts_in(df: pd.DataFrame) -> list[tuple[str, bool]]:
    """(hostname, emulated) of every host in `df`, native first."""
    if df.empty or "hostname" not in df.columns:
        return []
    pairs = {(str(h), bool(e)) for h, e in zip(df["hostname"], is_emulated(df), strict=True)}
    return sorted(pairs, key=lambda p: (p[1], p[0]))


def _host_title(host: tuple[str, bool], many: bool, df: pd.DataFrame | None = None) -> str:
    """'vm-vm-5-10 (5.10) · emulated (TCG)': the kernel named, as a driver may be on several."""
    kind = "emulated (TCG)" if host[1] else "native"
    ks = ""
    if df is not None and {"hostname", "kernel"} <= set(df.columns):
        rel = df.loc[df["hostname"].astype(str) == host[0], "kernel"].dropna().astype(str)
        # the release's major.minor, as in the report's kernel axis (cowlab.report.kernels.short)
        ks = ", ".join(sorted({(re.match(r"\d+\.\d+", k) or [k])[0] for k in rel}))
    name = f"{host[0]} ({ks})" if ks else host[0]
    return f"{name} · {kind}" if many else (f"{ks} · {kind}" if ks else kind)


def host_panels(
    df: pd.DataFrame,
    x: str,
    metric: str,
    filter: Any = None,
    split: str | None = None,
    logx: bool | None = None,
    logy: bool | None = None,
    title: str | None = None,
):
    """`metric` against `x` per driver, one row of panels per host (emulated hosts get their own
    rows and y scale) and one column per value of `split` (e.g. backing_fs, cache). Returns the
    Figure."""
    sel = select_rows(df, metric, filter)
    if x in sel.columns:
        sel = sel[sel[x].notna()]
    hosts = hosts_in(sel)
    many = len({p[0] for p in hosts}) > 1
    em = is_emulated(sel) if len(sel) else pd.Series(dtype=bool)
    rows = []  # per host: the split values it has data for
    for h in hosts:
        mine = sel[(sel["hostname"].astype(str) == h[0]) & (em == h[1])]
        vals = sorted({v for v in mine[split].dropna()}, key=str) if split and split in mine.columns else [None]
        rows.append((h, vals or [None]))
    ncols = max((len(v) for _, v in rows), default=1)
    panels: dict[str, Any] = {}
    for h, vals in rows:
        for v in vals:
            f = {**dict(filter or {}), "hostname": h[0], "emulated": h[1]}
            name = _host_title(h, many, sel)
            if split is not None and v is not None:  # v is None when there is no split
                f[split] = v
                name += f" · {v if split == 'backing_fs' else human_x(split, v)}"
            panels[name] = f
        for k in range(ncols - len(vals)):
            panels[f"\0blank {h} {k}"] = BLANK
    if not panels:
        panels["no data"] = dict(filter or {})
    return line_panels(
        df,
        x,
        metric,
        panels,
        ncols=ncols,
        share="row",
        logx=logx,
        logy=logy,
        title=title,
        panel_size=(3.6, 2.8),
        split_emulated=False,
    )  # split here already


def bars_panels(
    df: pd.DataFrame,
    metric: str,
    category: str,
    hue: str | None = None,
    filter: Any = None,
    by: str | None = None,
    title: str | None = None,
    order: Iterable[Any] | None = None,
):
    """Grouped bars per driver (bars_by_driver), one panel per host and per value of `by`
    (e.g. mode: primitive / engine). Returns the Figure."""
    sel = select_rows(df, metric, filter)
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
            ax.set_title(_host_title(h, many, sel) + (f" · {b}" if b is not None else ""), fontsize="medium")
            for hd, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                handles.setdefault(lab, hd)
            i += 1
    for j in range(i, nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    fig.tight_layout()
    for r in axes:
        for ax in r:
            if ax.get_visible():
                declutter_xticks(ax)
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles.keys()),
            loc="upper left",
            bbox_to_anchor=(1.0, 0.93),
            fontsize="small",
            title="median, bars p10–p90",
            title_fontsize="small",
            alignment="left",
        )
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def space_figure(df: pd.DataFrame):
    """The space workload for every driver: growth of the backing storage after each event
    (create, a new 1 KiB file, 1 KiB appended to a 64 MiB image file, remove), primitive and
    engine mode side by side, one panel per host."""
    return bars_panels(
        df,
        "space_bytes",
        "event",
        filter={"workload": "space"},
        by="mode",
        title="space: what a container costs on disk",
        order=SPACE_EVENTS,
    )


SPACE_EVENTS = ["create", "write_new_1KiB", "append_1KiB_to_64MiB", "after_remove"]


# ---------------------------------------------------------------------------------------------
# Engine vs storage (notebook 06 and the report): how much of `docker run` is the driver

ENGINE_OPS = {"create_seconds": "docker create", "run_seconds": "docker run --rm true"}


def engine_split(df: pd.DataFrame) -> pd.DataFrame:
    """Per driver × host kind × image: each engine op's median next to the primitive create
    median for the same image (the storage driver's own work), what the engine adds, and the
    storage share. Emulated rows are split only against emulated primitive rows; the driver
    column then reads "<driver> (emulated)"."""
    cols = [
        "driver",
        "emulated",
        "image_size_bytes",
        "layers",
        "engine_op",
        "engine_median",
        "storage",
        "engine_adds",
        "storage_share",
    ]
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
            out.append(
                {
                    "driver": series_label(r.driver, bool(r.emulated_)),
                    "emulated": bool(r.emulated_),
                    "image_size_bytes": r.image_size_bytes,
                    "layers": r.layers,
                    "engine_op": metric,
                    "engine_median": r.median,
                    "storage": p,
                    "engine_adds": r.median - p if p == p else np.nan,
                    "storage_share": p / r.median if p == p and r.median else np.nan,
                }
            )
    return pd.DataFrame(out, columns=cols)


def engine_split_figure(split: pd.DataFrame, layers: int = 1):
    """Storage (hatched) beside the whole engine op (solid) per driver and image size, on a log
    axis so a 1 ms storage part stays visible next to a 1 s `docker run`; the storage share is
    written above each pair. One row of panels per host kind (native, emulated)."""
    one = split[split["layers"] == layers] if len(split) else split
    kinds = sorted(set(one["emulated"])) if len(one) else [False]
    fig, axes = plt.subplots(len(kinds), 2, squeeze=False, figsize=(12, 3.8 * len(kinds) + 0.4))
    for row, em in enumerate(kinds):
        for ax, (metric, words) in zip(axes[row], ENGINE_OPS.items(), strict=True):
            part = one[(one["engine_op"] == metric) & (one["emulated"] == em)] if len(one) else one
            part = part.sort_values(["driver", "image_size_bytes"]) if len(part) else part
            ax.set_title(f"{words} · {'emulated (TCG)' if em else 'native'}", fontsize="medium")
            if part.empty:
                ax.text(0.5, 0.5, f"no {words} data", ha="center", va="center", transform=ax.transAxes)
                ax.set_xticks([])
                continue
            xs = np.arange(len(part))
            for x, r in zip(xs, part.itertuples(), strict=True):
                c = driver_color(r.driver.removesuffix(" (emulated)"))
                ax.bar(x + 0.2, r.engine_median, 0.38, color=c, alpha=0.55 if em else 1)
                if r.storage == r.storage:
                    ax.bar(x - 0.2, r.storage, 0.38, color="white", edgecolor=c, hatch="///")
                    ax.text(
                        x,
                        r.engine_median * 1.15,
                        f"{100 * r.storage_share:.1f}%",
                        ha="center",
                        va="bottom",
                        fontsize="x-small",
                    )
            ax.set_yscale("log")
            vals = [v for v in (*part["engine_median"], *part["storage"]) if v == v and v > 0]
            ax.set_ylim(min(vals) / 2, max(vals) * 4)
            su = format_axis(ax.yaxis, "s", True, vals)
            ax.set_ylabel(axis_label("median time", "s", su) + "  [log]")
            ax.set_xticks(xs)
            ax.set_xticklabels([human_bytes(r.image_size_bytes) for r in part.itertuples()], fontsize="small")
            for t, r in zip(ax.get_xticklabels(), part.itertuples(), strict=True):
                t.set_color(driver_color(r.driver.removesuffix(" (emulated)")))
            ax.set_xlabel("image size (one layer), coloured by driver")
            ax.grid(True, axis="y", alpha=0.3)
    from matplotlib.patches import Patch

    names = sorted({d.removesuffix(" (emulated)") for d in one["driver"]}) if len(one) else []
    fig.legend(
        [
            Patch(facecolor="white", edgecolor="0.3", hatch="///"),
            Patch(facecolor="0.4"),
            *[Patch(facecolor=driver_color(d)) for d in names],
        ],
        ["storage: cowlab's own create", "the whole engine op", *names],
        loc="upper left",
        bbox_to_anchor=(1.0, 0.93),
        fontsize="small",
        title="medians; % = storage share",
        title_fontsize="small",
    )
    fig.tight_layout(h_pad=2.0)
    for r in axes:
        for ax in r:
            declutter_xticks(ax)
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
    return show.drop(columns=["emulated"]).rename(
        columns={
            "engine_op": "engine op",
            "engine_median": "engine median",
            "storage": "storage (primitive create)",
            "engine_adds": "engine adds",
            "storage_share": "storage share of the engine op",
            "image_size_bytes": "image size",
        }
    )


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
        bars_by_driver(
            df,
            metric,
            "job_label",
            hue="target",
            ax=ax,
            filter={"job_label": jobs},
            order=jobs,
            hue_order=["container", "volume"],
            legend=(i == ncols - 1 or len(metrics) == 1),
        )
        ax.set_title(pretty_name(metric).replace("fio ", ""), fontsize="medium")
        ax.set_xlabel("")
    for i in range(len(metrics), nrows * ncols):
        axes[i // ncols][i % ncols].set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
