"""The verdicts' confidence intervals (cowlab.report.intervals): a bootstrap interval across the
threshold is "inconclusive" with what would decide it, more samples of the same distribution
decide it, equal samples are exact, and the same samples give the same interval every time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import helpers
from cowlab import results
from cowlab.report import catalogue, intervals, verdicts
from cowlab.report.catalogue import Rule

MiB, GiB = 1 << 20, 1 << 30


def spread(median: float, n: int, rel: float = 0.3) -> list[float]:
    """n samples of one normal distribution (median `median`, sd rel × median), taken at evenly
    spaced quantiles: more samples, the same spread."""
    return [median * (1 + rel * stats.norm.ppf((i + 0.5) / n)) for i in range(n)]


def creation_run(out: Path, small_ms: list[float], big_ms: list[float], driver: str = "overlay2") -> None:
    helpers.creation_run(out, driver, {MiB: small_ms, GiB: big_ms})


def create_free(path: Path) -> dict:
    vs = verdicts.evaluate(catalogue.claims(), results.load(path), drivers=[])
    (v,) = [v for v in vs if v["claim"] == "create-free" and v["driver"] == "overlay2"]
    return v


def test_an_interval_across_the_threshold_is_inconclusive_and_more_samples_decide_it(tmp_path):
    # create-free holds when the 1 GiB image costs at most 2x the 1 MiB one: the medians say
    # 1.6x, but three samples a side with a 30% spread cannot tell 1.6x from 2x
    creation_run(tmp_path / "few", spread(10, 3), spread(16, 3))
    few = create_free(tmp_path / "few")
    assert few["verdict"] == "inconclusive"
    assert few["ci_low"] < 2.0 < few["ci_high"] and few["value"] == pytest.approx(1.6)
    assert not few["exact"] and few["near_threshold"]
    need = int(few["command"].rsplit("--reps ", 1)[1])
    assert need > 3 and f"about {need} samples per side (now 3)" in few["decide"]
    assert few["command"].startswith("sudo nox -s bench-overlay2 -- --workload creation --quick")
    # the estimate, taken at its word: that many samples of the same distribution decide it
    creation_run(tmp_path / "enough", spread(10, need), spread(16, need))
    enough = create_free(tmp_path / "enough")
    assert enough["verdict"] == "holds" and enough["ci_high"] < 2.0
    assert enough["decide"] == "" and not enough["near_threshold"]
    # and a clear case needs no more than the three
    creation_run(tmp_path / "clear", spread(10, 3, 0.02), spread(40, 3, 0.02))
    assert create_free(tmp_path / "clear")["verdict"] == "fails"


def test_equal_samples_are_exact_not_resampled():
    rule = Rule(kind="value", holds_if="above", why="", threshold=1.0)
    iv = intervals.median_interval([1.0, 1.0, 1.0])
    assert iv == intervals.Interval(1.0, 1.0, True) and intervals.decide(rule, iv) == "holds"
    assert intervals.median_interval([0.0]).exact  # one outcome (ENOSPC or not): exact
    r = intervals.ratio_interval([3003.0], [1.0])  # a count of hard links against one
    assert (r.low, r.high, r.exact) == (3003.0, 3003.0, True)
    assert intervals.reps_to_decide(rule, 1.0, iv, 3) is None


def test_a_side_of_one_sample_is_held_fixed_and_the_other_resampled():
    # a run cut short leaves one sample at a point: its side resamples to itself
    iv = intervals.ratio_interval([2.0], [0.9, 1.0, 1.1, 1.2, 0.8])
    assert not iv.exact and iv.low < 2.0 < iv.high and iv.low >= 2.0 / 1.2 and iv.high <= 2.0 / 0.8
    iv = intervals.ratio_interval([0.9, 1.0, 1.1, 1.2, 0.8], [2.0])
    assert not iv.exact and 0.8 / 2.0 <= iv.low < 0.5 < iv.high <= 1.2 / 2.0


def test_the_same_samples_give_the_same_interval():
    a, b = spread(16, 7), spread(10, 7)
    assert intervals.ratio_interval(a, b) == intervals.ratio_interval(a, b)
    iv = intervals.median_interval(np.array(spread(5, 9)))
    assert iv.low < 5 < iv.high


def test_between_rules_hold_inside_fail_outside_and_are_inconclusive_across_a_bound():
    rule = Rule(kind="value", holds_if="between", why="", low=60.0, high=70.0)
    assert intervals.decide(rule, intervals.Interval(62, 68, False)) == "holds"
    assert intervals.decide(rule, intervals.Interval(71, 80, False)) == "fails"
    assert intervals.decide(rule, intervals.Interval(55, 65, False)) == "inconclusive"
    need = intervals.reps_to_decide(rule, 62.0, intervals.Interval(56, 65, False), 4)
    assert need == 36  # the low side: width 6 against a distance of 2 -> (6/2)^2 x 4
