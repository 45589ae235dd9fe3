"""Confidence intervals for the verdicts: a bootstrap of the statistic a rule tests (a median, or
a ratio of two medians) with scipy.stats.bootstrap, and the decision they carry.

A claim holds or fails only when the whole interval is on one side of its threshold; otherwise it
is "inconclusive", and `reps_to_decide` estimates how many repetitions per point would narrow
the interval enough, assuming the spread stays as measured (the interval narrows as 1/√n).
Samples that are all equal on every side (a deterministic outcome: ENOSPC or not, a count of
hard links, a single sample) are exact: no resampling, the interval is the value itself.
The random seed is fixed, so the same samples give the same interval and the report rebuilds
byte for byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from cowlab.report.catalogue import Rule

LEVEL = 0.95  # the intervals' confidence level
RESAMPLES = 2000  # bootstrap resamples: the percentile bounds move by well under 1% beyond this
SEED = 23  # fixed: a report is reproducible (and 23 is the issue that asked for it)
MAX_REPS = 1000  # beyond this, "what would decide it" says the medians sit too close to the line


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    exact: bool  # every side's samples were equal: the value itself, no resampling

    def text(self, fmt) -> str:
        if self.exact:
            return "exact: every sample equal"
        return f"{LEVEL:.0%} CI {fmt(self.low)}–{fmt(self.high)}"


def _clean(v) -> np.ndarray:
    a = np.asarray(v, dtype=float)
    return a[np.isfinite(a)]


def _constant(a: np.ndarray) -> bool:
    return a.size > 0 and bool(np.all(a == a[0]))


def _bootstrap(samples: tuple[np.ndarray, ...], statistic) -> tuple[float, float]:
    from scipy import stats

    res = stats.bootstrap(
        samples,
        statistic,
        vectorized=True,
        paired=False,
        confidence_level=LEVEL,
        n_resamples=RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(SEED),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def median_interval(values) -> Interval:
    """The bootstrap interval of the median of `values`."""
    a = _clean(values)
    if a.size == 0:
        raise ValueError("no samples")
    if _constant(a):
        return Interval(float(a[0]), float(a[0]), True)
    lo, hi = _bootstrap((a,), lambda x, axis: np.median(x, axis=axis))
    return Interval(lo, hi, False)


def _ratio(x, y, axis):
    den = np.median(y, axis=axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        # a resample whose denominator median is not positive has no ratio: +inf, so an
        # interval that reaches it is unbounded above (and decides nothing it would cross)
        return np.where(den > 0, np.median(x, axis=axis) / np.where(den > 0, den, 1.0), np.inf)


def ratio_interval(num, den) -> Interval:
    """The bootstrap interval of median(num) ÷ median(den), each side resampled on its own."""
    a, b = _clean(num), _clean(den)
    if a.size == 0 or b.size == 0:
        raise ValueError("no samples")
    if _constant(a) and _constant(b):
        r = float(a[0] / b[0]) if b[0] > 0 else (1.0 if a[0] == b[0] == 0 else math.inf)
        return Interval(r, r, True)
    # a side all of one value (one sample of a run cut short, or a deterministic outcome)
    # resamples to itself: hold it fixed and resample the other (scipy refuses a 1-sample side)
    if _constant(a):
        lo, hi = _bootstrap((b,), lambda y, axis: _ratio(np.full(y.shape, a[0]), y, axis))
    elif _constant(b):
        lo, hi = _bootstrap((a,), lambda x, axis: _ratio(x, np.full(x.shape, b[0]), axis))
    else:
        lo, hi = _bootstrap((a, b), _ratio)
    return Interval(lo, hi, False)


def decide(rule: Rule, iv: Interval) -> str:
    """holds / fails when the whole interval is on one side of the rule's threshold(s), else
    inconclusive."""
    lo_ok, hi_ok = rule.passes(iv.low), rule.passes(iv.high)
    if rule.holds_if == "between":
        if lo_ok and hi_ok:
            return "holds"
        if rule.low is not None and rule.high is not None and (iv.high < rule.low or iv.low > rule.high):
            return "fails"
        return "inconclusive"
    if lo_ok and hi_ok:
        return "holds"
    if not lo_ok and not hi_ok:
        return "fails"
    return "inconclusive"


def _crossed(rule: Rule, iv: Interval) -> list[float]:
    bounds = [rule.low, rule.high] if rule.holds_if == "between" else [rule.threshold]
    return [b for b in bounds if b is not None and (iv.low < b < iv.high or b in (iv.low, iv.high))]


def reps_to_decide(rule: Rule, estimate: float, iv: Interval, n: int, log: bool = False) -> int | None:
    """Repetitions per point that would put the interval on one side of every threshold it now
    crosses, if the spread stays as measured (width ∝ 1/√n); ratios in log space. None when the
    estimate sits on a threshold (no n decides it) or the sides are not positive for a log."""
    if n <= 0 or iv.exact:
        return None
    f = (lambda x: math.log(x)) if log else (lambda x: x)
    if log and (estimate <= 0 or iv.low <= 0):
        return None
    try:
        m, lo, hi = f(estimate), f(iv.low), f(iv.high) if math.isfinite(iv.high) else math.inf
    except ValueError:
        return None
    need = 1.0
    for b in _crossed(rule, iv):
        if b <= 0 and log:
            return None
        d = abs(m - f(b))
        if d == 0:
            return None
        width = (m - lo) if f(b) < m else (hi - m)
        if not math.isfinite(width):
            return None
        need = max(need, (width / d) ** 2)
    return max(n + 1, math.ceil(n * need))
