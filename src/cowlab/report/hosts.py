"""Where a sample was measured, as verdicts group them: a Host is (hostname, kernel, emulated) —
emulated (TCG) runs are their own host, never pooled with native ones — and a grid (full,
quick, or a lab run's)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


def flag(v) -> bool | None:
    """A run.json boolean as pandas hands it over (bool or numpy bool); None when it is not one."""
    return bool(v) if isinstance(v, (bool, np.bool_)) else None


@dataclass(frozen=True, order=True)
class Host:
    hostname: str
    kernel: str
    emulated: bool

    @property
    def id(self) -> str:
        return f"{self.hostname}/{self.kernel}/{'emulated' if self.emulated else 'native'}"

    @property
    def label(self) -> str:
        return f"{self.hostname} ({self.kernel}, {'emulated TCG' if self.emulated else 'native'})"

    @property
    def short(self) -> str:
        return f"{self.hostname}{' emulated' if self.emulated else ''}"


def host_of(df: pd.DataFrame) -> pd.Series:
    """The Host of every row (a missing emulated flag counts as native)."""
    # a missing column is a constant Series, not a scalar: zip() would walk "?" by character
    em = df["emulated"].map(lambda v: flag(v) is True) if "emulated" in df else pd.Series(False, index=df.index)
    kern = df["kernel"].fillna("?") if "kernel" in df else pd.Series("?", index=df.index)
    hn = df["hostname"].fillna("?") if "hostname" in df else pd.Series("?", index=df.index)
    return pd.Series(
        [Host(str(h), str(k), bool(e)) for h, k, e in zip(hn, kern, em, strict=True)], index=df.index, dtype=object
    )


GRIDS = ("full", "quick", "lab")  # in the order a verdict prefers them


def grid_of(df: pd.DataFrame) -> pd.Series:
    q = df["quick"] if "quick" in df else pd.Series(False, index=df.index)
    # a lab run (`cowlab lab thinpool`) has no grid: quick is None
    return q.map(lambda v: {True: "quick", False: "full"}.get(flag(v), "lab"))  # type: ignore[arg-type]


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """The frame results.load() returns, with `_host`, `_grid` and a numeric `value`."""
    df = df.copy()
    if df.empty:
        for c in ("_host", "_grid"):
            df[c] = pd.Series(dtype=object)
        return df
    df["_host"] = host_of(df)
    df["_grid"] = grid_of(df)
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    return df
