"""Sentences and captions: what a figure says in words (ratios, comparisons, growth), with the
medians and sample counts they rest on; missing data is said, never raised."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from cowlab.report.figures.axes import human_value, human_x, pretty_name, series_label
from cowlab.report.figures.data import (
    is_emulated,
    metric_unit,
    mixed_params_warning,
    param_values,
    select_rows,
    series_rows,
)

# How a metric reads in a sentence ("<phrase> takes 2× as long ...").
METRIC_PHRASES = {
    "create_seconds": "creating a container",
    "remove_seconds": "removing a container",
    "container_floor_seconds": "the kernel's own work for a container",
    "cowlab_container_seconds": "a container's whole life in cowlab",
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
PREPOSITIONS = {"image_size_bytes": "from", "layers": "from", "file_size_bytes": "for", "containers": "with"}


def ratio_text(r: float) -> str:
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
    return f"1/{ratio_text(1 / r)}" if 0 < r < 0.1 else f"{ratio_text(r)}×"


def _comparison(a: pd.Series, b: pd.Series, unit: str, note: str) -> tuple[str, str]:
    ma, mb = a.median(), b.median()
    tail = f"medians of {len(a)} and {len(b)} samples"
    if _overlap(a, b):
        tail += "; their p10–p90 ranges overlap, so the gap is within run-to-run spread"
    if not (mb > 0 and ma >= 0):  # growth deltas can be 0 or negative: no multiple means anything
        return (
            "no meaningful multiple of what it is",
            f"({human_value(ma, unit)} vs {human_value(mb, unit)}: a median ≤ 0 has no ratio; {tail}{note})",
        )
    # one unit for both numbers, unless they are too far apart for it ("2.05 s vs 2 ms")
    like = max(ma, mb) if min(ma, mb) > 0 and max(ma, mb) / min(ma, mb) < 100 else None
    return (
        f"{_times(ma / mb)} {_as(unit)}",
        f"({human_value(ma, unit, like)} vs {human_value(mb, unit, like)}, {tail}{note})",
    )


def ratio_sentence(
    df: pd.DataFrame,
    metric: str,
    x: str,
    lo: Any,
    hi: Any,
    driver: str,
    filter: Any = None,
    emulated: bool | None = None,
    phrase: str | None = None,
    prep: str | None = None,
) -> str:
    """How much larger `metric` is at x=hi than at x=lo for one driver, as a sentence:

    "overlay2: creating a container from a 1 GiB image takes 1.1× as long as from a 1 MiB
    image (0.71 ms vs 0.65 ms, medians of 10 and 10 samples)".

    `filter` narrows rows as in line_by_driver (e.g. {"layers": 1} for the size sweep).
    `emulated`: None = native rows if there are any (a mix is never pooled), True/False = only
    those. When data is missing the sentence says what is missing and what there is.
    `phrase` replaces the metric's words ("a cold PATH miss"), `prep` the word before each
    point ("in": "... in a 32-layer image ... in a 1-layer image").
    """
    sel = select_rows(df, metric, filter)
    sel = sel[sel["driver"] == driver] if "driver" in sel.columns else sel.iloc[0:0]
    if sel.empty or x not in sel.columns:
        return f"{driver}: no {metric} data{filter_text(filter)}, so no ratio."
    sel, suffix, note = _pick_emulated(sel, emulated)
    name = f"{driver}{suffix}"
    if sel.empty:
        return f"{name}: no {metric} data{filter_text(filter)}, so no ratio."
    mixed_params_warning(sel, x, f"ratio_sentence({metric!r}, {driver!r})")
    unit = metric_unit(sel, metric)
    a, b = _point(sel, x, hi), _point(sel, x, lo)
    gone = [human_x(x, v) for v, s in ((lo, b), (hi, a)) if s.empty]
    if gone:
        return (
            f"{name}: no {metric} data at {pretty_name(x)} {' or '.join(gone)}"
            f"{filter_text(filter)} (have: {_have(sel, x)}), so no ratio."
        )
    times, detail = _comparison(a, b, unit, note)
    prep = prep or PREPOSITIONS.get(x, "at")
    return (
        f"{name}: {phrase or _phrase(metric)} {prep} {_at(x, hi)} {_verb(unit, metric)} {times} "
        f"{prep} {_at(x, lo)} {detail}."
    )


def driver_ratio_sentence(
    df: pd.DataFrame,
    metric: str,
    x: str,
    at: Any,
    num: str,
    den: str,
    filter: Any = None,
    emulated: bool | None = None,
    phrase: str | None = None,
) -> str:
    """How much larger `metric` is for driver `num` than for driver `den` at x=at, e.g.
    "At a 1 GiB image, creating a container with vfs takes 55× as long as with overlay2 (…)"."""
    sel = select_rows(df, metric, filter)
    sides = []
    for d in (num, den):
        s = sel[sel["driver"] == d] if "driver" in sel.columns else sel.iloc[0:0]
        s, suffix, note = _pick_emulated(s, emulated) if len(s) else (s, "", "")
        v = _point(s, x, at) if x in s.columns else pd.Series(dtype=float)
        sides.append((d + suffix, s, v, note))
    (na, sa, a, note_a), (nb, sb, b, note_b) = sides
    if a.empty or b.empty:
        missing = [f"{n} (have: {_have(s, x)})" for n, s, v, _ in sides if v.empty]
        return (
            f"{num} vs {den}: no {metric} data at {pretty_name(x)} {human_x(x, at)}"
            f"{filter_text(filter)} for {' and '.join(missing)}, so no ratio."
        )
    unit = metric_unit(pd.concat([sa, sb]), metric)
    times, detail = _comparison(a, b, unit, note_a or note_b)
    return f"At {_at(x, at)}, {phrase or _phrase(metric)} with {na} {_verb(unit, metric)} {times} with {nb} {detail}."


def filter_text(filter: Any) -> str:
    if isinstance(filter, Mapping) and filter:
        parts = [
            f"{pretty_name(k)} = "
            + (", ".join(human_x(k, w) for w in v) if isinstance(v, (list, tuple, set)) else human_x(k, v))
            for k, v in filter.items()
            if not callable(v)
        ]
        return " with " + "; ".join(parts) if parts else ""
    return ""


def compare_sentence(
    df: pd.DataFrame,
    metric: str,
    num: tuple[str, Any],
    den: tuple[str, Any],
    driver: str,
    filter: Any = None,
    emulated: bool | None = None,
    subject: str = "",
) -> str:
    """How `metric` under one condition compares with another, for one driver, as a sentence:

    "overlay2 (ext4, 64 MiB file): the second 1-byte append takes 1/1,800 as long as the first
    (72 µs vs 130 ms, medians of 6 and 6 samples)".

    num, den: (words, filter) for each side; each filter narrows the rows `filter` leaves (e.g.
    ("with metacopy=on", {"metacopy": True})). `subject` follows the driver's name. Emulated rows
    are handled as in ratio_sentence; missing data is said, not raised.
    """
    sel = select_rows(df, metric, filter)
    sel = sel[sel["driver"] == driver] if "driver" in sel.columns else sel.iloc[0:0]
    sel, suffix, note = _pick_emulated(sel, emulated) if len(sel) else (sel, "", "")
    name = f"{driver}{suffix}" + (f" {subject}" if subject else "")
    sides = []
    for words, f in (num, den):
        rows = select_rows(sel, None, f) if len(sel) else sel
        if len(rows):
            mixed_params_warning(rows, "\0", f"compare_sentence({metric!r}, {driver!r}, {words!r})")
        sides.append(
            (
                words,
                rows,
                pd.to_numeric(rows["value"], errors="coerce").dropna() if len(rows) else pd.Series(dtype=float),
            )
        )
    gone = [w for w, _, v in sides if v.empty]
    if gone:
        return f"{name}: no {metric} data for {' or '.join(gone)}{filter_text(filter)}, so no comparison."
    (wa, ra, a), (wb, rb, b) = sides
    unit = metric_unit(pd.concat([ra, rb]), metric)
    times, detail = _comparison(a, b, unit, note)
    return f"{name}: {wa} {_verb(unit, metric)} {times} {wb} {detail}."


def growth_sentence(
    df: pd.DataFrame,
    driver: str,
    emulated: bool,
    metric: str,
    where: Mapping | None,
    phrase: str,
    x: str = "containers",
) -> str:
    """ratio_sentence from the smallest to the largest x measured, and how much x grew."""
    ks = [int(k) for k in param_values(series_rows(df, driver, emulated, metric, **dict(where or {})), x)]
    if len(ks) < 2:
        return f"{series_label(driver, emulated)}: {'one K only' if ks else 'no data'} for {phrase}, so no growth."
    return (
        ratio_sentence(df, metric, x, ks[0], ks[-1], driver, filter=where, emulated=emulated, phrase=phrase)
        + f" K grew {ks[-1] / ks[0]:,.0f}×."
    )


def largest_common_compare(
    df: pd.DataFrame,
    metric: str,
    label_a: str,
    filter_a: Mapping,
    label_b: str,
    filter_b: Mapping,
    driver: str,
    emulated: bool,
    where: Mapping,
    what: str,
    x: str = "file_size_bytes",
) -> str:
    """compare_sentence (label_a's rows against label_b's) at the largest `x` both sides
    measured, e.g. the largest file size."""
    common = set(param_values(series_rows(df, driver, emulated, **where, **filter_a), x)) & set(
        param_values(series_rows(df, driver, emulated, **where, **filter_b), x)
    )
    if not common:
        return f"{series_label(driver, emulated)} [{what}]: no {pretty_name(x)} measured for both, so no comparison."
    at = max(common)
    return compare_sentence(
        df,
        metric,
        (label_a, filter_a),
        (label_b, filter_b),
        driver,
        filter={**where, x: at},
        emulated=emulated,
        subject=f"[{what}, {human_x(x, at)} file]",
    )


def span_sentence(
    df: pd.DataFrame,
    metric: str,
    x: str,
    driver: str,
    emulated: bool,
    where: Mapping,
    phrase: str,
    missing: str,
    grew: str,
    prep: str | None = None,
) -> str:
    """ratio_sentence from the smallest to the largest `x` this series measured under `where`,
    followed by how much x grew (`grew` with {} for the factor, e.g. "The image is {}× as deep.");
    `missing` names the series' point when fewer than two values of x exist."""
    xs = param_values(series_rows(df, driver, emulated, **dict(where)), x)
    if len(xs) < 2:
        only = f"only {pretty_name(x)} = {human_x(x, xs[0])}" if xs else "no data"
        return f"{series_label(driver, emulated)}: {only} for {missing}, so no ratio."
    return (
        ratio_sentence(
            df, metric, x, xs[0], xs[-1], driver, filter=dict(where), emulated=emulated, phrase=phrase, prep=prep
        )
        + " "
        + grew.format(f"{xs[-1] / xs[0]:,.0f}")
    )
