"""Every selected workload of `cowlab bench`, one pytest-benchmark test each (see conftest.py)."""

from __future__ import annotations

import pytest


def test_workload(benchmark, cowlab_session, workload):
    s = cowlab_session
    wl = next(w for w in s.workloads if w.name == workload)
    first = len(s.records)
    benchmark.extra_info.update(driver=s.driver_name, workload=workload, results=str(s.writer.dir))
    benchmark.pedantic(s.run_workload, args=(wl,), rounds=1, iterations=1)
    mine = [r for r in s.records[first:] if r["workload"] == workload]
    failed = [f"{r['metric']} {r['params']}: {r['error']}" for r in mine if r["status"] == "failed"]
    if failed:  # recorded in samples.jsonl already; the test says so too
        pytest.fail(f"{len(failed)} case(s) failed: " + "; ".join(failed[:5]), pytrace=False)
    if mine and all(r["status"] == "skipped" for r in mine):
        pytest.skip(mine[0]["error"])
