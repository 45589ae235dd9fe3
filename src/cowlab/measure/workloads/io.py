"""io: fio inside a container's writable root vs on a volume bind-mounted into the container.

Claim tested: "data should always be stored in volumes anyway!" — I/O on a volume goes straight
to the backing filesystem; I/O in the container's root goes through the storage driver (the
union, copy-up on first write to an image file), or through a full copy for vfs.

Each (job, target, repetition) gets a fresh container. Targets (param `target`):
  container  a directory in the container's root: /fio, which holds the image's file /fio/data
  volume     a fresh directory on the backing filesystem (under the driver's home), bind-mounted
             at /volume inside the container (journaled "mount"), so the path goes through the
             container's mount as in Docker
Jobs (param `job`) are the job files in src/cowlab/measure/workloads/fio/ (package data) (see their header comments): seq-read-1m,
rand-read-4k and rand-write-4k use an existing file `data` — the image's own file in the
container (reads go through the union; the first open for writing copies it up), a copy cowlab
makes of that same file in the volume; seq-write-1m and first-write write new files.

All jobs are buffered (direct=0): overlayfs honours O_DIRECT only on recent kernels, so
direct=1 would not mean the same thing on every driver. Reads start cold (fio's invalidate=1,
after a syncfs), writes end with end_fsync=1. Size and time are passed through fio's ${VAR}
substitution (FIO_DIR, FIO_SIZE, FIO_RUNTIME); random jobs are time_based. fio runs as a
journaled child (resources.run_tool); its JSON output is kept in the run's raw/ directory, and
`parse_fio` (a pure function) turns it into samples: fio_bw_bytes_per_s (B/s), fio_iops (1/s),
fio_lat_p50_seconds and fio_lat_p99_seconds (completion latency, s), with param `direction`
(read or write) besides `job` and `target`, and the fio version as param `fio_version`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

from cowlab.base import sysutil
from cowlab.base.errors import CowlabError, NotApplicable
from cowlab.base.resources import run_tool
from cowlab.measure.workloads.base import Context, Measured, MiB, Workload, synthetic_image
from cowlab.results import Sample

JOBS = ["seq-read-1m", "seq-write-1m", "rand-read-4k", "rand-write-4k", "first-write"]
TARGETS = ["container", "volume"]
GRID = {
    # runtime_s bounds every job; the random ones run for exactly that long (time_based).
    "full": {"jobs": JOBS, "targets": TARGETS, "size_bytes": 256 * MiB, "runtime_s": 10, "reps": 3},
    "quick": {"jobs": JOBS, "targets": TARGETS, "size_bytes": 64 * MiB, "runtime_s": 3, "reps": 2},
}
USES_DATA = {"seq-read-1m", "rand-read-4k", "rand-write-4k"}  # jobs on the existing file `data`
DATA = "/fio/data"
VOLUME = "/volume"
FIO_TIMEOUT = 900.0
MS_BIND = 4096  # <sys/mount.h>


def job_dir() -> Path:
    """cowlab/fio/: the job files, package data (installed with the wheel, versioned with the code)."""
    d = Path(str(resources.files("cowlab.measure.workloads") / "fio"))
    if not d.is_dir():  # (a zipped install: fio needs real files)
        raise CowlabError(f"the fio job files are not a directory here ({d}): reinstall cowlab unzipped")
    return d


def image_name(grid: dict) -> str:
    return f"io-{grid['size_bytes']}B"


# --- parsing (pure) ----------------------------------------------------------------------------
def _percentile(sec: dict, p: float) -> float | None:
    pct = (sec.get("clat_ns") or {}).get("percentile") or {}
    v = pct.get(f"{p:.6f}")
    return None if v is None else v / 1e9


def parse_fio(doc: dict, params: dict[str, Any], repetition: int = 0) -> list[Sample]:
    """fio --output-format=json → samples, one set per direction that did any I/O.

    bw: fio's bw_bytes (B/s; older fio only has bw, in KiB/s); iops as is; latency: completion
    latency (clat) percentiles, reported in ns, as seconds."""
    ver = doc.get("fio version", "")
    out: list[Sample] = []
    jobs = doc.get("jobs") or []
    if not jobs:
        raise CowlabError("fio output has no jobs")
    for job in jobs:
        if job.get("error"):
            raise CowlabError(f"fio job {job.get('jobname')} failed with error {job['error']}")
        for direction in ("read", "write"):
            sec = job.get(direction) or {}
            if not sec.get("total_ios") and not sec.get("io_bytes"):
                continue
            p = {**params, "direction": direction, "fio_version": ver}
            if len(jobs) > 1:
                p["fio_job"] = job.get("jobname")
            bw = sec["bw_bytes"] if "bw_bytes" in sec else sec["bw"] * 1024
            out.append(Sample("fio_bw_bytes_per_s", float(bw), "B/s", dict(p), repetition))
            out.append(Sample("fio_iops", float(sec["iops"]), "1/s", dict(p), repetition))
            for name, q in (("fio_lat_p50_seconds", 50.0), ("fio_lat_p99_seconds", 99.0)):
                v = _percentile(sec, q)
                if v is not None:
                    out.append(Sample(name, v, "s", dict(p), repetition))
    if not out:
        raise CowlabError("fio did no I/O")
    return out


def load_fio_json(text: str) -> dict:
    """fio's JSON, skipping any notes fio printed before it."""
    start = text.find("{")
    if start < 0:
        raise CowlabError("fio wrote no JSON")
    return json.loads(text[start:])


# --- running -----------------------------------------------------------------------------------
def fio_argv(jobfile: Path, directory: Path, size: int, runtime: int, output: Path) -> list[str]:
    """The command, as `env VAR=… fio …` so it can be pasted to run the same job by hand."""
    return [
        "env",
        f"FIO_DIR={directory}",
        f"FIO_SIZE={size}",
        f"FIO_RUNTIME={runtime}",
        "fio",
        "--output-format=json",
        f"--output={output}",
        str(jobfile),
    ]


class IO(Workload):
    name = "io"
    claim = "data should always be stored in volumes anyway!"
    GRID = GRID

    def specs(self, grid):
        return [
            synthetic_image(
                image_name(grid), 0, 1, extra_ops=[{"op": "file", "path": DATA, "size": grid["size_bytes"]}]
            )
        ]

    def cases(self, ctx: Context):
        g = ctx.grid
        img = ctx.image(image_name(g))
        for job in g["jobs"]:
            for target in g["targets"]:
                params = {"job": job, "target": target, "size_bytes": g["size_bytes"]}
                yield Measured("fio", params, partial(self.measure, ctx, img, job, target, params), reps=g["reps"])

    def measure(self, ctx: Context, img, job: str, target: str, params: dict, rep: int) -> list[Sample]:
        if not shutil.which("fio"):
            raise NotApplicable("fio is not installed (apt-get install fio)")
        jobfile = job_dir() / f"{job}.fio"
        if not jobfile.is_file():
            raise CowlabError(f"no fio job file {jobfile}")
        g = ctx.grid
        res = ctx.res
        c = ctx.create(img)
        handles = []
        tmp_out = None
        try:
            if target == "container":
                where = (c.mountpoint / DATA.lstrip("/")).parent
            elif target == "volume":
                vol = ctx.driver.home / "volumes" / uuid.uuid4().hex[:12]
                handles.append(res.acquire("dir", lambda: vol.mkdir(parents=True), path=str(vol)))
                if job in USES_DATA:  # the same bytes as the image's file, as a populated volume
                    shutil.copyfile(c.mountpoint / DATA.lstrip("/"), vol / "data")
                where = c.mountpoint / VOLUME.lstrip("/")
                where.mkdir()
                handles.append(
                    res.acquire("mount", lambda: sysutil.mount(str(vol), where, "", flags=MS_BIND), target=str(where))
                )
            else:
                raise CowlabError(f"unknown io target {target!r} (targets: {', '.join(TARGETS)})")
            if ctx.raw_dir is not None:
                ctx.raw_dir.mkdir(parents=True, exist_ok=True)
                output = ctx.raw_dir / f"fio-{job}-{target}-r{rep}.json"
            else:
                output = tmp_out = ctx.state.tmp / f"{os.getpid()}-fio-{uuid.uuid4().hex[:8]}.json"
            sysutil.syncfs(ctx.backing.path)  # dirty pages can't be invalidated: write them first
            argv = fio_argv(jobfile, where, g["size_bytes"], g["runtime_s"], output)
            try:
                cp = run_tool(res, argv, timeout=FIO_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise CowlabError(f"fio {job} did not finish in {FIO_TIMEOUT:.0f} s") from None
            if cp.returncode != 0:
                msg = (cp.stderr or cp.stdout).strip().splitlines()
                raise CowlabError(f"fio {job} on {target} failed ({cp.returncode}): {msg[-1] if msg else ''}")
            return parse_fio(load_fio_json(output.read_text()), params, rep)
        finally:
            if tmp_out is not None:
                sysutil.ignore_enoent(os.unlink, tmp_out)
            for h in reversed(handles):
                res.release(h)
            ctx.remove(c)
