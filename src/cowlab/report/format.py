"""Numbers in words for the report, the README table and `cowlab compare`: one place, built on the
figure library's unit formatting so a value reads the same in a figure and in a table."""

from __future__ import annotations

import math
from typing import Any

from cowlab.report.figures import human_value, human_x, pretty_name


def fmt_value(v: float | None, unit: str | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if unit == "ratio":
        return fmt_ratio(v)
    if unit == "share":  # a published fraction of a whole (Slacker's 76%)
        return f"{100 * v:.3g}%"
    return human_value(float(v), unit or "")


def fmt_ratio(r: float | None) -> str:
    """1.1×, 56×, 1,234×, 0.05× — two significant figures below 10."""
    if r is None or not math.isfinite(r):
        return "–"
    if r == 0:
        return "0×"
    a = abs(r)
    if 0 < r < 0.01:  # 1/14,000× rather than 6.9e-05×
        return f"1/{1 / r:,.0f}×"
    s = f"{r:.2g}" if a < 10 else f"{r:,.0f}"
    return f"{s}×"


def fmt_param(k: str, v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return f"{pretty_name(k)} {'/'.join(human_x(k, x) for x in v)}"
    if v in ("max", "min"):  # a rule's "largest/smallest present"
        return f"{'largest' if v == 'max' else 'smallest'} {pretty_name(k)}"
    if isinstance(v, bool):
        return f"{pretty_name(k)} {'on' if v else 'off'}"
    return f"{pretty_name(k)} {human_x(k, v)}"
