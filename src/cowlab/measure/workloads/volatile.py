"""volatile: fsync-heavy writes in the container's own layer, with and without overlayfs's
`volatile` mount option.

Claim answered: the slides say container I/O should go to volumes; what about the writes that
must happen in the container, such as a package install? Each fsync(2) there reaches the backing
filesystem's journal. Overlayfs's `volatile` option (Linux 5.10) drops every sync on the upper
layer (a crash then loses the container, which a build or a CI job can afford). containerd PR
#4785 reported an install going from ~55 s to ~30 s with it.

Jobs (param `job`), each in a fresh container per repetition:
  fsync-write   fio's src/cowlab/measure/workloads/fio/fsync-write.fio: 4 KiB writes to a new file, fsync after each
                (samples as the io workload's: fio_bw_bytes_per_s, fio_iops, fio latencies)
  unpack-small  an unpack of `files` small files (`file_bytes` each) in the container's layer,
                each written and fsync'ed as dpkg does (sample unpack_seconds)
Param `volatile`: the driver option on and off where the driver has it (ctx.variant), else None
(the driver's only behaviour: syncs always go through).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from functools import partial

from cowlab.base import sysutil
from cowlab.base.errors import CowlabError, NotApplicable
from cowlab.base.resources import run_tool
from cowlab.measure.workloads.base import Context, Measured, MiB, Workload, synthetic_image
from cowlab.measure.workloads.io import FIO_TIMEOUT, fio_argv, job_dir, load_fio_json, parse_fio
from cowlab.measure.workloads.rename import option_values
from cowlab.results import Sample

KiB = 1 << 10
IMAGE = "volatile-base"
GRID = {
    "full": {
        "jobs": ["fsync-write", "unpack-small"],
        "size_bytes": 32 * MiB,
        "runtime_s": 10,
        "files": 2000,
        "file_bytes": 4 * KiB,
        "volatile": [False, True],
        "reps": 3,
    },
    "quick": {
        "jobs": ["fsync-write", "unpack-small"],
        "size_bytes": 8 * MiB,
        "runtime_s": 3,
        "files": 500,
        "file_bytes": 4 * KiB,
        "volatile": [False, True],
        "reps": 2,
    },
}


def unpack_small(where, files: int, size: int) -> None:
    data = os.urandom(size)
    for i in range(files):
        fd = os.open(os.path.join(where, f"f{i:06d}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


class Volatile(Workload):
    name = "volatile"
    claim = "fsync-heavy writes in the container layer, overlay volatile on/off (containerd PR #4785: ~55 s → ~30 s)"
    GRID = GRID

    def specs(self, grid):
        return [synthetic_image(IMAGE, 0, 1, extra_ops=[{"op": "dir", "path": "/work"}])]

    def cases(self, ctx: Context):
        g = ctx.grid
        for vol in option_values(ctx, "volatile", g["volatile"]):
            for job in g["jobs"]:
                params = {"job": job, "volatile": vol}
                if job == "fsync-write":
                    params["size_bytes"] = g["size_bytes"]
                else:
                    params.update(files=g["files"], file_bytes=g["file_bytes"])
                yield Measured(
                    job,
                    params,
                    partial(self.measure, ctx, vol, job, params),
                    reps=g["reps"],
                    unit="s" if job == "unpack-small" else "B/s",
                )

    @staticmethod
    def measure(ctx: Context, vol, job: str, params: dict, rep: int) -> list[Sample]:
        g = ctx.grid
        v = ctx if vol is None else ctx.variant(volatile=vol)
        img = v.image(IMAGE)
        c = v.create(img)
        try:
            where = c.mountpoint / "work"
            sysutil.syncfs(v.backing.path)
            if job == "unpack-small":
                t0 = time.perf_counter()
                unpack_small(where, g["files"], g["file_bytes"])
                return [Sample("unpack_seconds", time.perf_counter() - t0, "s", params, rep)]
            if job != "fsync-write":
                raise CowlabError(f"unknown volatile job {job!r}")
            if not shutil.which("fio"):
                raise NotApplicable("fio is not installed (apt-get install fio)")
            if ctx.raw_dir is not None:
                ctx.raw_dir.mkdir(parents=True, exist_ok=True)
                output = ctx.raw_dir / f"fio-volatile-{vol}-r{rep}-{uuid.uuid4().hex[:6]}.json"
            else:
                output = where / "fio.json"
            argv = fio_argv(job_dir() / "fsync-write.fio", where, g["size_bytes"], g["runtime_s"], output)
            try:
                cp = run_tool(ctx.res, argv, timeout=FIO_TIMEOUT)
            except subprocess.TimeoutExpired:
                raise CowlabError(f"fio fsync-write did not finish in {FIO_TIMEOUT:.0f} s") from None
            if cp.returncode != 0:
                msg = (cp.stderr or cp.stdout).strip().splitlines()
                raise CowlabError(f"fio fsync-write failed ({cp.returncode}): {msg[-1] if msg else ''}")
            return parse_fio(load_fio_json(output.read_text()), params, rep)
        finally:
            v.remove(c)
