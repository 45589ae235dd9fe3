"""Units: the one size parser every input goes through, and numbers in words: the one formatter of bytes, durations, rates and counts that every output
uses (terminal summary, `cowlab show`, `cowlab status`, figures, notebooks, error messages), so
one size reads the same everywhere: 65548 KiB is "64 MiB" in every place it is printed.

Binary prefixes (KiB, MiB, GiB, TiB) for bytes, up to three significant figures, no trailing
zeros; durations in µs, ms or s.
"""

from __future__ import annotations

import math
import re
from typing import Any

from cowlab.base.errors import CowlabError

_POWER = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5}
_SIZE = re.compile(r"\s*(\d{1,20}(?:\.\d{1,20})?)\s*([KMGTP]?)(I?B?)\s*", re.I)


def parse_size(v: int | str, *, decimal_si: bool = False, fractions: bool = True) -> int:
    """Bytes from an int or a string: 4096, '64K', '64KiB', '512M', '1.5G', '10GiB', '1B'.

    K/M/G/T/P alone or with iB are powers of 1024 (Docker's and zpool's sizes). With a bare B
    ('64KB') they are powers of 1024 too, as Docker reads them, unless decimal_si (image specs,
    where KB is 1000 and KiB 1024). fractions=False refuses '1.5G'. CowlabError if v is no size."""
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    m = _SIZE.fullmatch(v) if isinstance(v, str) else None
    if not m or (m.group(3).upper() == "IB" and not m.group(2)) or (not fractions and "." in m.group(1)):
        raise CowlabError(f"not a size: {v!r} (e.g. 4096, 64K, 512MiB, 10G)")
    num, prefix, suffix = m.group(1), m.group(2).upper(), m.group(3).upper()
    base = 1000 if decimal_si and suffix == "B" and prefix else 1024
    mult = base ** _POWER[prefix]
    return int(num) * mult if "." not in num else int(float(num) * mult)


_BYTE_UNITS = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def number(v: float) -> str:
    """Up to three significant figures, no trailing zeros: 1, 1.5, 0.71, 38.3, 512."""
    if v == 0:
        return "0"
    a = abs(v)
    s = f"{v:.2g}" if a < 1 else f"{v:.2f}" if a < 10 else f"{v:.1f}" if a < 100 else f"{v:.0f}"
    return s.rstrip("0").rstrip(".") if "." in s else s


def count(v: float) -> str:
    """Counts and rates: 1,952 rather than 1952 from a thousand up."""
    return f"{v:,.0f}" if abs(v) >= 1000 else number(v)


def human_bytes(n: float | None) -> str:
    """1048576 -> '1 MiB', 1.5 GiB -> '1.5 GiB', 512 -> '512 B'."""
    if n is None or (isinstance(n, float) and not math.isfinite(n)):
        return "?"
    for unit, div in _BYTE_UNITS:
        if abs(n) >= div:
            return f"{number(n / div)} {unit}"
    return f"{number(n)} B"


def time_scale(max_seconds: float) -> tuple[float, str]:
    """Display factor and unit name for times whose largest value is max_seconds."""
    if not math.isfinite(max_seconds) or max_seconds >= 1:
        return 1.0, "s"
    if max_seconds >= 1e-4:
        return 1e3, "ms"
    return 1e6, "µs"


def human_seconds(s: float | None, like: float | None = None) -> str:
    """0.00071 -> '0.71 ms', 0.0383 -> '38.3 ms', 2.5 -> '2.5 s', 4.5e-5 -> '45 µs'.
    `like`: pick the unit for that value instead (to show two numbers in one unit). Durations of
    a minute and more read as '1 min 52 s'."""
    if s is None or not math.isfinite(s):
        return "?"
    if like is None and abs(s) >= 60:
        m, sec = divmod(round(abs(s)), 60)
        return f"{'-' if s < 0 else ''}{m} min {sec} s" if m < 60 else f"{m // 60} h {m % 60} min"
    f, u = time_scale(abs(s if like is None else like))
    return f"{number(s * f)} {u}"


def human_value(v: float | None, unit: str, like: float | None = None) -> str:
    """A sample's value in its unit (results.UNITS: s, B, B/s, 1/s, count, ratio)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "?"
    if unit == "s":
        return human_seconds(v, like)
    if unit == "B":
        return human_bytes(v)
    if unit == "B/s":
        return human_bytes(v) + "/s"
    if unit == "1/s":
        return f"{count(v)}/s"
    if unit == "count":
        return count(v)
    if unit == "ratio":
        return f"{number(v)}×"
    return number(v)


def param_unit(name: str) -> str:
    """The unit a parameter's name implies: '_bytes' → B, '_seconds' → s."""
    return "B" if name.endswith("_bytes") else "s" if name.endswith("_seconds") else ""


def human_param(name: str, v: Any) -> str:
    """A parameter value as text, e.g. ('image_size_bytes', 1<<30) -> '1 GiB'."""
    u = param_unit(name)
    if u and not isinstance(v, (bool, str)) and v is not None:
        try:
            return human_value(float(v), u)  # numpy integers too
        except (TypeError, ValueError):
            pass
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def param_name(name: str) -> str:
    """A parameter's name without the unit suffix its value now carries."""
    return name.removesuffix("_bytes").removesuffix("_seconds")


def human_params(params: dict, only: set[str] | None = None) -> str:
    """'image_size=64 MiB layers=16'; `only`: just these keys (e.g. the ones that vary)."""
    return " ".join(f"{param_name(k)}={human_param(k, v)}" for k, v in params.items() if only is None or k in only)
