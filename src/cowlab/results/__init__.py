"""Results: run.json (provenance) + samples.jsonl (one JSON object per measured value).

Layout: <out>/<hostname>/<run_id>/{run.json, samples.jsonl, raw/}. The schema is documented in
results/README.md; SCHEMA_VERSION changes when a field changes meaning. `load()` is the one reader.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cowlab.base import faults, sysutil
from cowlab.base.resources import releaser

SCHEMA_VERSION = 1
LOCAL_DIR = "local"  # results/local/<host>/<run_id>: a user's own runs, apart from the committed ones
UNITS = {"s", "B", "count", "B/s", "1/s", "ratio"}
STATUSES = {"ok", "failed", "skipped"}
REQUIRED = {
    "schema_version": int,
    "run_id": str,
    "driver": str,
    "mode": str,
    "workload": str,
    "metric": str,
    "unit": str,
    "repetition": int,
    "params": dict,
    "status": str,
}
# Run-level fields copied onto every sample row by load(), so a row carries its provenance.
ROW_PROVENANCE = (
    "hostname",
    "kernel",
    "virtualization",
    "emulated",
    "distribution",
    "cpu_model",
    "backing",
    "backing_fs",
    "backing_mount_options",
    "cowlab_version",
    "git_sha",
    "run_status",
    "quick",
    "harness",
)


@dataclass
class Sample:
    metric: str
    value: float | None
    unit: str
    params: dict[str, Any] = field(default_factory=dict)
    repetition: int = 0
    status: str = "ok"
    error: str = ""

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"unit {self.unit!r} is not one of {sorted(UNITS)}")


class RunWriter:
    """Appends samples as they are measured, flushing each, so a crash keeps what was measured."""

    def __init__(self, out: Path, run_id: str, provenance: dict):
        self.dir = out / provenance["hostname"] / run_id
        self.dir.mkdir(parents=True, exist_ok=False)
        sysutil.hand_over(self.dir)  # under sudo: the user's results stay the user's
        self.run_id = run_id
        self.run = {"schema_version": SCHEMA_VERSION, "run_id": run_id, "status": "running", **provenance}
        self.write_run()
        self._f = open(self.dir / "samples.jsonl", "a", buffering=1)
        self.counts = {"ok": 0, "failed": 0, "skipped": 0}

    def write_run(self, **updates) -> None:
        self.run.update(updates)
        tmp = self.dir / ".run.json.tmp"
        tmp.write_text(json.dumps(self.run, indent=1, sort_keys=True, default=str) + "\n")
        os.replace(tmp, self.dir / "run.json")

    def add(self, s: Sample, driver: str, workload: str, mode: str = "primitive") -> dict:
        rec = {
            "schema_version": SCHEMA_VERSION,
            "run_id": self.run_id,
            "driver": driver,
            "mode": mode,
            "workload": workload,
            "metric": s.metric,
            "value": s.value,
            "unit": s.unit,
            "repetition": s.repetition,
            "params": s.params,
            "status": s.status,
        }
        if s.error:
            rec["error"] = s.error
        self._f.write(json.dumps(rec, sort_keys=True) + "\n")
        self._f.flush()
        faults.point("sample")
        self.counts[s.status] += 1
        return rec

    def raw_path(self, name: str) -> Path:
        d = self.dir / "raw"
        d.mkdir(exist_ok=True)
        return d / name

    def close(self, status: str, **updates) -> None:
        self._f.close()
        self.write_run(status=status, counts=self.counts, **updates)
        sysutil.hand_over(self.dir)


KILLED = "killed"


@releaser("run_record")
def _close_record(e: dict, state) -> None:
    """A run's run.json still says "running" when its process died unannounced (SIGKILL, power
    loss): `cowlab cleanup` closes the record so nobody reads it as in progress. In a normal
    teardown this runs too, just before RunWriter.close() rewrites run.json from memory."""
    close_if_running(
        Path(e["path"]),
        e.get("finishing") or KILLED,
        "the run's process died before it finished (SIGKILL or power loss); `cowlab cleanup` "
        "closed this record; samples.jsonl has what was measured",
    )
    sysutil.hand_over(Path(e["path"]).parent)


@releaser("vm_results")
def _close_vm_runs(e: dict, state) -> None:
    """Runs a kernel VM's guest started under out/<hostname>/: once the VM is gone, none of
    them can still be running (the VM was killed, timed out, or its guest cowlab died)."""
    d = Path(e["out"]) / e["hostname"]
    if not d.is_dir():
        return
    before = set(e.get("before") or [])
    for rj in d.glob("*/run.json"):
        if str(rj.parent) not in before and _vm_of(rj) in (e.get("vm_id"), None):
            close_if_running(
                rj,
                KILLED,
                "the kernel VM ended before this run finished; "
                "closed by cowlab on the host; samples.jsonl has what was measured",
            )


def _vm_of(run_json: Path) -> str | None:
    """The kernel VM a run was made in (run.json vm_id), so one VM's end never closes another's run."""
    try:
        return json.loads(run_json.read_text()).get("vm_id")
    except (OSError, ValueError):
        return None


def close_if_running(p: Path, status: str, why: str) -> bool:
    try:
        run = json.loads(p.read_text())
    except (OSError, ValueError):
        return False  # gone or never written: nothing to close
    if run.get("status") != "running":
        return False
    run["status"] = status
    run["closed_by_cleanup"] = why
    tmp = p.with_name(".run.json.cleanup")
    tmp.write_text(json.dumps(run, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, p)
    return True


def validate(rec: Any) -> str | None:
    """Why a samples.jsonl record breaks the schema, or None."""
    if not isinstance(rec, dict):
        return "not an object"
    for k, t in REQUIRED.items():
        if k not in rec:
            return f"missing {k}"
        if not isinstance(rec[k], t) or (t is int and isinstance(rec[k], bool)):
            return f"{k} is not {t.__name__}"
    if rec["status"] not in STATUSES:
        return f"unknown status {rec['status']!r}"
    if rec["unit"] not in UNITS:
        return f"unknown unit {rec['unit']!r}"
    v = rec.get("value")
    if rec["status"] == "ok" and (
        not isinstance(v, (int, float))
        or isinstance(v, bool)
        or (isinstance(v, int) and abs(v) > 2**1023)
        or not math.isfinite(v)
    ):
        return "ok sample without a finite value"
    return None


def run_dirs(paths: Iterable[str | Path] | str | Path | None = None) -> list[Path]:
    if paths is None:
        paths = [Path("results")]
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out = []
    for p in map(Path, paths):
        if not p.exists():
            warnings.warn(f"{p}: no such results directory", stacklevel=3)
            continue
        if (p / "run.json").exists():
            out.append(p)
        else:
            out += sorted(q.parent for q in p.rglob("run.json"))
    return out


def read_run(d: Path) -> tuple[dict, list[dict]]:
    run = json.loads((d / "run.json").read_text())
    recs = []
    f = d / "samples.jsonl"
    lines = f.read_text().splitlines() if f.exists() else []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:  # JSONDecodeError, or an integer too long to convert
            where = "last line (a run cut short?)" if i == len(lines) else f"line {i}"
            warnings.warn(f"{f}: {where} is not valid JSON; ignored", stacklevel=2)
            continue
        why = validate(rec)
        if why:
            warnings.warn(f"{f}: line {i} breaks the schema ({why}); ignored", stacklevel=2)
            continue
        recs.append(rec)
    return run, recs


def load(paths: Iterable[str | Path] | str | Path | None = None, include_failed: bool = False):
    """Every sample under paths as a pandas DataFrame, one row per sample.

    Columns: the sample fields, each param as its own column, and the run's provenance
    (ROW_PROVENANCE). Failed and skipped records are left out unless include_failed.
    """
    import pandas as pd

    rows = []
    for d in run_dirs(paths):
        run, recs = read_run(d)
        prov = {k: run.get(k) for k in ROW_PROVENANCE}
        prov.update(
            {
                k: run.get("driver_metadata", {}).get(k, prov.get(k))
                for k in ("backing", "backing_fs", "backing_mount_options")
            }
        )
        # A user's own run (results/local/..., git-ignored) or a committed reference run.
        prov["local"] = LOCAL_DIR in d.parts
        prov["emulated"] = bool(run.get("emulated", False))
        prov.update(run_status=run.get("status"), quick=run.get("quick"), harness=run.get("harness"))
        for r in recs:
            if r["status"] != "ok" and not include_failed:
                continue
            # A param is more specific than the run (e.g. a workload's own backing_fs), so it wins.
            row = {
                **prov,
                **{k: v for k, v in r.items() if k != "params"},
                **r["params"],
                "params": r["params"],
                "run_dir": str(d),
            }
            rows.append(row)
    cols = list(REQUIRED) + ["value", "error", *ROW_PROVENANCE]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    for c in df.columns:  # integer params stay integers even where some rows lack them
        if c != "value" and df[c].dtype == float and df[c].dropna().apply(float.is_integer).all():
            df[c] = df[c].astype("Int64")
    return df
