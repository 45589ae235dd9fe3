"""pytest-benchmark entry point: a thin adapter over the case runner of `cowlab bench`.

    pytest bench --driver vfs [--quick] [--workload space] [--reps N] --out results

One test per selected workload. A session fixture checks and prepares the BenchSession that
`cowlab bench` uses (nothing is built or imported at collection time); each test runs its
workload through BenchSession.run_workload: the same cases, the same samples (failed and skipped
ones recorded with their reasons, as `cowlab bench` records them) and the same
<out>/<host>/<run_id>/ layout, with run.json's harness "pytest-benchmark". pytest-benchmark
times each workload's whole run (one round: its images imported and every case run), a figure
of the harness; the measurements are the samples.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cowlab.base.errors import CowlabError
from cowlab.measure import workloads as W
from cowlab.run.runner import BenchSession


def pytest_addoption(parser):
    g = parser.getgroup("cowlab")
    g.addoption("--driver", default="overlay2", help="storage driver to benchmark")
    g.addoption("--quick", action="store_true", help="the quick grid")
    g.addoption("--workload", action="append", default=None, help="only these workloads (repeatable)")
    g.addoption("--reps", type=int, default=None, help="override the grid's repetitions")
    g.addoption("--out", "--cowlab-out", dest="cowlab_out", default="results/local", help="results directory")
    g.addoption("--cowlab-root", default=None, help="state root (default $COWLAB_ROOT or /var/lib/cowlab)")


def pytest_generate_tests(metafunc):
    if "workload" in metafunc.fixturenames:
        try:  # an unknown name is an error before any work, as in `cowlab bench`
            names = [w.name for w in W.get(metafunc.config.getoption("--workload"))]
        except CowlabError as e:
            raise pytest.UsageError(str(e)) from None
        metafunc.parametrize("workload", names)


@pytest.fixture(scope="session")
def cowlab_session(request):
    c = request.config
    s = BenchSession(
        c.getoption("--driver"),
        c.getoption("--quick"),
        c.getoption("--workload"),
        Path(c.getoption("cowlab_out")),
        c.getoption("--cowlab-root"),
        argv=["pytest", *sys.argv[1:]],
        reps=c.getoption("--reps"),
        harness="pytest-benchmark",
    )
    try:
        s.check()  # unavailable driver, bad options: one clear reason, nothing built yet
    except CowlabError as e:
        pytest.fail(f"cowlab bench {s.driver_name}: {e}", pytrace=False)
    try:
        s.prepare()
        yield s
    finally:
        stopped = request.session.shouldstop or request.session.shouldfail
        errs = s.finish("interrupted" if stopped else "complete")
        if hasattr(s, "writer"):
            print(f"\ncowlab results: {s.writer.dir}" + (f" (teardown left: {errs})" if errs else ""))
