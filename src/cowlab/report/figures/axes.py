"""Units and axes: each driver's colour, the words for numbers (cowlab.base.units, one formatter
for every output) and the axis formats and locators every figure shares."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable

import numpy as np
from matplotlib.ticker import FixedLocator, FuncFormatter, Locator, LogLocator, NullFormatter, NullLocator

from cowlab.base import units
from cowlab.storage import drivers as _drivers  # the registry: each driver's colour

# Spans wider than this many decades get a log axis when the scale is left to us.
LOG_DECADES = 1.5

# Each driver's colour, from the registry; other names get a stable colour from their name.
DRIVER_COLORS = {n: cls.color for n, cls in _drivers.DRIVERS.items()}  # each driver declares its own
_SPARE_COLORS = ["tab:olive", "tab:cyan", "#1b9e77", "#7570b3", "#e6ab02", "#a6761d", "#666666", "#e7298a"]
FLOOR_COLOR = "0.55"  # grey: the reference floor is not a driver

EMULATED_NOTE = "emulated (TCG) runs kept apart, dashed: their times are not native times"
ALL_EMULATED_NOTE = "all runs emulated (TCG): times are not native times"


# ---------------------------------------------------------------------------------------------
# Words for numbers

# One formatter for every output: cowlab.base.units (re-exported here, where notebooks find them).
human_bytes, human_seconds, human_value, human_x = (
    units.human_bytes,
    units.human_seconds,
    units.human_value,
    units.human_param,
)
_num, _count, time_scale, x_unit = units.number, units.count, units.time_scale, units.param_unit


# Axis names that the generic rule below would get wrong.
PRETTY_NAMES = {
    "copyup_seconds": "copy-up time",
    "fio_bw_bytes_per_s": "fio bandwidth",
    "fio_iops": "fio IOPS",
    "fio_lat_p50_seconds": "fio median latency",
    "fio_lat_p99_seconds": "fio p99 latency",
}


def no_data(ax, text: str) -> None:
    """An empty panel says what it lacks, in grey, in its middle."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def pretty_name(col: str) -> str:
    """'image_size_bytes' -> 'image size', 'create_seconds' -> 'create time'."""
    if col in PRETTY_NAMES:
        return PRETTY_NAMES[col]
    if col.endswith("_seconds"):
        return col.removesuffix("_seconds").replace("_", " ") + " time"
    return col.removesuffix("_bytes").replace("_", " ")


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


def span_decades(values: Iterable[float]) -> float:
    v = np.asarray([float(x) for x in values if x is not None], dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if len(v) < 2:
        return 0.0
    return float(np.log10(v.max() / v.min()))


def _signed_bytes(v: float) -> str:
    return human_bytes(v) if v > 0 else "0" if v == 0 else "−" + human_bytes(-v)


def value_formatter(unit: str, scale: float = 1.0) -> FuncFormatter:
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
        assert self.axis is not None  # matplotlib attaches the locator (set_axis) before asking it
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


def axis_label(name: str, unit: str, scale_unit: str | None = None) -> str:
    if unit == "s" and scale_unit == "mixed":
        return name  # every tick carries its own unit
    if unit == "s":
        return f"{name} ({scale_unit or 's'})"
    if unit in ("B", "B/s"):
        return name  # the tick labels carry KiB/MiB/GiB
    if unit == "1/s":
        return f"{name} (per second)"
    return name


def format_axis(axis, unit: str, log: bool, values: list[float], ticks_at: list[float] | None = None):
    """Ticks and labels for one axis: times scaled to s/ms/µs, bytes as KiB/MiB/GiB."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    scale, su = time_scale(max((abs(v) for v in vals), default=1.0)) if unit == "s" else (1.0, None)
    fmt = value_formatter(unit, scale)
    if unit == "s" and log and ticks_at is None and span_decades(vals) > MIXED_TIME_DECADES:
        su, fmt = "mixed", FuncFormatter(lambda v, _: human_seconds(v) if v > 0 else "0")
    if ticks_at is not None and 0 < len(ticks_at) <= 12:
        axis.set_major_locator(FixedLocator(sorted(ticks_at)))
        axis.set_minor_locator(NullLocator())
    elif log:
        decades = span_decades(vals)
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
