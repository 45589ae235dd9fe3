"""bench/ is a thin adapter: `pytest bench --driver D ... --out DIR` writes the samples
`cowlab bench D ... --out DIR` writes (workload, metric, params keys, status), skipped ones
included, in the same <out>/<host>/<run_id>/ layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# space on vfs: a 64 MiB image, one repetition (seconds); mount_floor: vfs lacks bare_mount,
# so both harnesses must record the workload as skipped with the reason.
ARGS = ["--quick", "--workload", "space", "--workload", "mount_floor", "--reps", "1"]


def _runs(out: Path) -> list[tuple[dict, list[dict]]]:
    return [
        (
            json.loads((d / "run.json").read_text()),
            [json.loads(line) for line in (d / "samples.jsonl").read_text().splitlines()],
        )
        for d in sorted(p.parent for p in out.glob("*/*/run.json"))
    ]


def _keys(samples: list[dict]) -> set:
    return {(s["workload"], s["metric"], tuple(sorted(s["params"])), s["status"]) for s in samples}


@pytest.mark.root
def test_pytest_bench_writes_what_cowlab_bench_writes(tmp_path):
    root = tmp_path / "state"
    pb = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(REPO / "bench"),
            "-q",
            "-p",
            "no:cacheprovider",
            "--driver",
            "vfs",
            *ARGS,
            "--out",
            str(tmp_path / "pytest"),
            "--cowlab-root",
            str(root),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pb.returncode == 0, pb.stdout[-3000:] + pb.stderr[-2000:]
    cb = subprocess.run(
        [
            sys.executable,
            "-m",
            "cowlab",
            "--root",
            str(root),
            "bench",
            "vfs",
            *ARGS,
            "--mode",
            "primitive",
            "--out",
            str(tmp_path / "cowlab"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert cb.returncode == 0, cb.stdout[-2000:] + cb.stderr[-2000:]
    ((prun, psamples),) = _runs(tmp_path / "pytest")
    ((crun, csamples),) = _runs(tmp_path / "cowlab")
    assert prun["harness"] == "pytest-benchmark" and crun["harness"] == "cowlab bench"
    assert prun["status"] == crun["status"] == "complete"
    assert _keys(psamples) == _keys(csamples)
    skipped = [s for s in psamples if s["workload"] == "mount_floor"]
    assert skipped and skipped[0]["status"] == "skipped" and "bare_mount" in skipped[0]["error"]
    assert any(s["workload"] == "space" and s["status"] == "ok" for s in psamples)
