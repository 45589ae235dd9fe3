"""pytest-benchmark entry point: the same workloads and cases as `cowlab bench`, timed by
pytest-benchmark's pedantic mode (a fresh setup per round), written as the same samples.

    pytest bench/ --driver overlay2 [--quick] [--workload creation] [--cowlab-out results]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cowlab.runner import BenchSession
from cowlab.workloads.base import Measured, Timed


def pytest_addoption(parser):
    g = parser.getgroup("cowlab")
    g.addoption("--driver", default="overlay2", help="storage driver to benchmark")
    g.addoption("--quick", action="store_true", help="the quick grid")
    g.addoption("--workload", action="append", default=None, help="only these workloads")
    g.addoption("--cowlab-out", default="results/local", help="results directory")
    g.addoption("--cowlab-root", default=None, help="state root (default $COWLAB_ROOT or /var/lib/cowlab)")


def _session(config) -> BenchSession:
    s = getattr(config, "_cowlab_session", None)
    if s is None:
        s = BenchSession(config.getoption("--driver"), config.getoption("--quick"),
                         config.getoption("--workload"), Path(config.getoption("--cowlab-out")),
                         config.getoption("--cowlab-root"), argv=["pytest", *sys.argv[1:]],
                         harness="pytest-benchmark")
        s.check()
        s.prepare()
        s.cases = []
        for wl in s.workloads:
            missing = wl.requires - s.driver.capabilities
            if missing:
                s.cases.append((wl.name, None, f"{s.driver_name} lacks {', '.join(sorted(missing))}"))
                continue
            s.cases += [(wl.name, c, None) for c in wl.cases(s.context(wl))]
        config._cowlab_session = s
    return s


def pytest_generate_tests(metafunc):
    if "cowlab_case" not in metafunc.fixturenames:
        return
    s = _session(metafunc.config)
    want = Timed if metafunc.function.__name__ == "test_timed" else Measured
    cases = [c for c in s.cases if c[1] is None or isinstance(c[1], want)]
    ids = [f"{w}-{c.metric if isinstance(c, Timed) else c.name}-" +
           "-".join(f"{k}={v}" for k, v in c.params.items()) if c else f"{w}-skipped"
           for w, c, _ in cases]
    metafunc.parametrize("cowlab_case", cases, ids=ids)


@pytest.fixture
def cowlab_session(request) -> BenchSession:
    return _session(request.config)


def pytest_unconfigure(config):
    s = getattr(config, "_cowlab_session", None)
    if s is not None:
        s.finish("complete")
        print(f"\ncowlab results: {s.writer.dir}")
