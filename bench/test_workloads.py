"""Every case of every selected workload, one pytest-benchmark test each."""

from __future__ import annotations

import pytest

from cowlab.errors import NotApplicable
from cowlab.results import Sample
from cowlab.runner import run_measured


def test_timed(benchmark, cowlab_case, cowlab_session):
    workload, case, skipped = cowlab_case
    if case is None:
        pytest.skip(skipped)
    results = []

    def setup():
        return (case.setup(),), {}

    def target(state):
        results.append(case.op(state))

    def teardown(state):
        case.teardown(state, results.pop())

    try:
        benchmark.pedantic(target, setup=setup, teardown=teardown, rounds=case.reps,
                           warmup_rounds=case.warmup, iterations=1)
    except NotApplicable as e:
        cowlab_session.record(Sample(case.metric, None, "s", dict(case.params), status="skipped",
                                     error=str(e)), workload)
        pytest.skip(str(e))
    benchmark.extra_info.update(case.params)
    for i, t in enumerate(benchmark.stats.stats.data):  # one sample per timed round
        cowlab_session.record(Sample(case.metric, t, "s", dict(case.params), i), workload)


def test_measured(cowlab_case, cowlab_session):
    workload, case, skipped = cowlab_case
    if case is None:
        pytest.skip(skipped)
    try:
        samples = list(run_measured(case))
    except NotApplicable as e:
        pytest.skip(str(e))
    assert samples, "a measured case must produce samples"
    for s in samples:
        cowlab_session.record(s, workload)
