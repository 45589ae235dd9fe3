"""Where `nox -s bench-all` puts a user's runs and report (cowlab.report.places, which the
session calls): under results/local/, git-ignored, never the committed results/ or report/;
and a results tree's local/ is read only when named, so the reference stays the reference."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import helpers
from cowlab.report.places import bench_places, reference_trees

REPO = Path(__file__).resolve().parents[1]


def _run(out: Path, driver: str, ms: float, host: str = "vm") -> None:
    helpers.creation_run(out, driver, {1 << 20: [ms * f for f in (0.9, 1.0, 1.1)]}, host)


def _git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True, env=env).stdout


def test_a_users_runs_and_report_land_under_results_local():
    p = bench_places(REPO)
    local = REPO / "results" / "local"
    assert p.results == local and p.report == local / "report"
    assert p.readme is None  # README.md's claims table is the reference's, not the user's
    assert p.compare_with == REPO / "results"  # "my machine vs the reference"
    ref = bench_places(REPO, reference=True)  # the maintainer's explicit choice
    assert (ref.results, ref.report, ref.readme) == (REPO / "results", REPO / "report", REPO / "README.md")
    with pytest.raises(ValueError):
        bench_places(REPO, "results")  # the reference tree only with --reference
    with pytest.raises(ValueError):
        bench_places(REPO, "/tmp/elsewhere", reference=True)


def test_a_bench_all_leaves_git_status_clean(tmp_path):
    """A fresh clone (the project's .gitignore, a committed reference run): what bench-all writes
    where bench_places says leaves `git status` clean."""
    shutil.copy(REPO / ".gitignore", tmp_path / ".gitignore")
    _run(tmp_path / "results", "overlay2", 1.0)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-q", "-m", "reference")
    p = bench_places(tmp_path)
    _run(p.results, "overlay2", 2.0)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cowlab",
            "report",
            str(p.results),
            "--out",
            str(p.report),
            "--no-figures",
            "--compare-with",
            str(p.compare_with),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert (p.report / "index.html").is_file() and "(A)" in (p.report / "index.html").read_text()
    assert _git(tmp_path, "status", "--porcelain", "--untracked-files=all") == ""


def test_a_trees_local_runs_are_read_only_when_named(tmp_path):
    _run(tmp_path / "results", "overlay2", 1.0)
    _run(tmp_path / "results" / "local", "overlay2", 5.0)
    assert reference_trees(tmp_path / "results") == [tmp_path / "results" / "vm"]
    assert reference_trees(tmp_path / "results" / "local") == [tmp_path / "results" / "local"]
    # the reference report and `cowlab compare` see the reference alone: 1 ms against 5 ms
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cowlab",
            "compare",
            str(tmp_path / "results"),
            str(tmp_path / "results" / "local"),
            "--all",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert r.returncode == 0, r.stderr
    assert "5×" in r.stdout, r.stdout
