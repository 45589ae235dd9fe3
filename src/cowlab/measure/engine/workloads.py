"""The workloads' questions asked through the private Docker Engine (samples with mode "engine").

Same workload names and metric names as primitive mode where the meaning is the same, and the
same parameter points (the grids come from the primitive workloads), so the two line up:

creation  create_seconds   `docker create --network none IMAGE true` (the API call, until it returns)
          start_seconds    `docker start` of a created container until it is running
                           (its command is `sleep`, so it stays running; removed afterwards)
          run_seconds      create + start + wait for exit + remove of `true`: `docker run --rm true`
          remove_seconds   `docker rm` of a created (never started) container
density   K running containers of one image, each reading the whole set then sleeping; the same
          probes as primitive density (page_cache_bytes, dentry_count, slab_bytes/objects,
          inodes_used, disk_bytes), and cgroup_memory_bytes of the engine's cgroup parent
          (every container's cgroup is below it)
space     space_bytes: growth of the data-root's filesystem (statfs after syncfs), or of the
          pool cowlab made for dockerd (run.json engine.space_measured_on; density's disk_bytes
          and inodes_used likewise), at the
          primitive events: create, write_new_1KiB (a 1 KiB file put into the container through
          the API, like `docker cp`), append_1KiB_to_64MiB (the container runs `head -c 1024
          /dev/urandom >> /data/big`; this also counts the few small files a start writes:
          hostname, hosts, resolv.conf, the log), after_remove; and docker_df_bytes: what
          `docker system df` reports at the same events (param `what`: layers, containers_rw)
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Callable, Iterator
from functools import partial

from cowlab.base import sysutil
from cowlab.base.errors import CowlabError, NotApplicable
from cowlab.base.units import human_bytes
from cowlab.measure import probes
from cowlab.measure.engine.daemon import container_security_opts
from cowlab.measure.workloads.base import Case, GiB, Measured, Timed
from cowlab.results import Sample

READY_TIMEOUT = 600.0
SPACE_MARGIN = GiB
LONG_SLEEP = ["sleep", "1000000"]
TRUE = ["true"]


class EngineContext:
    """What an engine workload sees: the daemon's API, the loaded references, the grid."""

    def __init__(
        self, daemon, refs: dict[str, str], load_errors: dict[str, str], grid: dict, quick: bool, storage=None
    ):
        self.daemon, self.refs, self.load_errors, self.grid, self.quick = daemon, refs, load_errors, grid, quick
        self.storage = storage  # the cowlab driver whose pool dockerd's layers live in, if any
        self.api = daemon.client.api
        self.host_config = self.api.create_host_config(
            network_mode="none", security_opt=container_security_opts() or None
        )

    @property
    def data_root(self):
        return self.daemon.data_root

    def used_bytes(self) -> int:
        """Where dockerd's layers and containers take space: the pool cowlab made for it (a thin
        pool, a ZFS pool: the data-root's filesystem holds only metadata then), else the
        data-root's filesystem after syncfs."""
        if self.storage:
            return self.storage.used_bytes()
        return probes.synced_statfs(self.data_root)["used_bytes"]

    def inodes_used(self) -> int | None:
        """Inodes in use where dockerd's layers live; None where the notion does not apply (a
        ZFS or thin pool: the driver says so, and the sample is left out, as in primitive mode)."""
        if self.storage:
            return self.storage.inodes_used()
        return probes.synced_statfs(self.data_root)["inodes_used"]

    def ref(self, spec_name: str) -> str:
        if spec_name in self.load_errors:
            raise CowlabError(self.load_errors[spec_name])
        return self.refs[spec_name]

    def create(self, ref: str, cmd: list[str]) -> str:
        return self.api.create_container(ref, command=cmd, host_config=self.host_config)["Id"]

    def start(self, cid: str) -> None:
        self.api.start(cid)

    def remove(self, cid: str, force: bool = False) -> None:
        self.api.remove_container(cid, force=force)

    def run_true(self, ref: str) -> None:
        cid = self.create(ref, TRUE)
        try:
            self.start(cid)
            code = self.api.wait(cid)["StatusCode"]
        finally:
            self.remove(cid, force=True)
        if code != 0:
            raise CowlabError(f"`true` exited {code} in a container of {ref}")


# --- creation ---------------------------------------------------------------------------------
def creation_cases(ctx: EngineContext) -> Iterator[Case]:
    from cowlab.measure.workloads.creation import grid_points, image_name

    for size, layers in grid_points(ctx.grid):
        if ctx.quick and layers > 1:
            continue  # no claim asks the engine about layers; the quick grid keeps its time for the rest
        yield from _creation_point(ctx, image_name(size, layers), {"image_size_bytes": size, "layers": layers})


def _creation_point(ctx: EngineContext, name: str, params: dict) -> Iterator[Case]:
    # One grid point in a function of its own: the session lists every case before running any,
    # so each closure must hold its own point's image name, not the loop's last.
    reps = ctx.grid["reps"]

    def ref():
        return ctx.ref(name)

    yield Timed(
        "create_seconds",
        params,
        op=lambda _: ctx.create(ref(), TRUE),
        teardown=lambda _, cid: ctx.remove(cid),
        reps=reps,
    )
    yield Timed(
        "start_seconds",
        params,
        setup=lambda: ctx.create(ref(), LONG_SLEEP),
        op=ctx.start,
        teardown=lambda cid, _: ctx.remove(cid, force=True),
        reps=reps,
    )
    yield Timed("run_seconds", params, op=lambda _: ctx.run_true(ref()), reps=reps)
    yield Timed("remove_seconds", params, setup=lambda: ctx.create(ref(), TRUE), op=ctx.remove, reps=reps)


# --- density ----------------------------------------------------------------------------------
def _cgroup_memory(ctx: EngineContext) -> tuple[dict, int] | None:
    """memory.stat of the engine's cgroup parent (hierarchical: every container is below it),
    normalised; None where there is no memory hierarchy to read."""
    from cowlab.measure.engine.daemon import cgroup_dirs

    for d in cgroup_dirs(ctx.daemon.cgroup):
        f = d / "memory.stat"
        if f.exists():
            version = 2 if (d / "memory.current").exists() else 1
            kmem = None
            if version == 1:
                try:
                    kmem = int((d / "memory.kmem.usage_in_bytes").read_text())
                except (OSError, ValueError):
                    pass
            return probes.normalize_memory_stat(probes.parse_memory_stat(f.read_text()), version, kmem), version
    return None


def _wait_ready(ctx: EngineContext, cids: list[str]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    pending = set(cids)
    while pending:
        for cid in list(pending):
            out = ctx.api.logs(cid, stdout=True, stderr=True)
            if b"FAILED" in out:
                raise CowlabError(f"reader in container {cid[:12]} could not read the set: {out[-200:]!r}")
            if b"READY" in out:
                pending.discard(cid)
        if pending:
            if time.monotonic() > deadline:
                raise CowlabError(f"{len(pending)} of {len(cids)} readers not ready after {READY_TIMEOUT:.0f} s")
            time.sleep(0.05)


def density_cases(ctx: EngineContext) -> Iterator[Case]:
    from cowlab.measure.workloads import density as D

    g = ctx.grid
    name = D.image_name(g)
    cmd = ["sh", "-c", f"if cat {D.SET}/*/* > /dev/null; then echo READY; else echo FAILED; fi; exec sleep 1000000"]

    def measure(k: int, params: dict, rep: int) -> list[Sample]:
        ref = ctx.ref(name)
        path = ctx.data_root
        fstype = sysutil.mount_of(path).fstype
        out: list[Sample] = []

        def add(metric, value, unit, **extra):
            out.append(Sample(metric, value, unit, {**params, **extra}, rep))

        cids: list[str] = []
        fs0 = probes.synced_statfs(path)
        used0, inodes0 = ctx.used_bytes(), ctx.inodes_used()
        try:
            for i in range(k):
                cids.append(ctx.create(ref, cmd))
                if i == 0 and k > 1:
                    per = max(probes.synced_statfs(path)["used_bytes"] - fs0["used_bytes"], 0)
                    need = per * (k - 1) + SPACE_MARGIN
                    free = probes.statfs(path)["free_bytes"]
                    if need > free:
                        raise NotApplicable(
                            f"{k} containers need about {human_bytes(need)} on the "
                            f"data-root's filesystem, which has {human_bytes(free)} free"
                        )
            sysutil.drop_caches()
            before = probes.cache_snapshot(fstype)
            cg0 = _cgroup_memory(ctx)
            for cid in cids:
                ctx.start(cid)
            _wait_ready(ctx, cids)
            after = probes.cache_snapshot(fstype)
            cg1 = _cgroup_memory(ctx)
            used1, inodes1 = ctx.used_bytes(), ctx.inodes_used()
            for metric, value, unit, extra in probes.cache_growth(before, after):  # as primitive mode's
                add(metric, value, unit, **extra)
            if inodes0 is not None and inodes1 is not None:
                add("inodes_used", inodes1 - inodes0, "count")
            add("disk_bytes", used1 - used0, "B")
            if cg1 is not None:
                stat1, version = cg1
                stat0 = cg0[0] if cg0 else {}
                for stat in sorted(stat1):
                    add(
                        "cgroup_memory_bytes",
                        stat1[stat] - stat0.get(stat, 0),
                        "B",
                        stat=stat,
                        cgroup=f"v{version}-engine-parent",
                    )
            else:
                out.append(
                    Sample(
                        "cgroup_memory_bytes",
                        None,
                        "B",
                        dict(params),
                        rep,
                        status="skipped",
                        error="no memory cgroup of the engine's cgroup parent to read",
                    )
                )
            return out
        finally:
            for cid in reversed(cids):
                ctx.remove(cid, force=True)

    for k in g["containers"]:
        params = {"containers": k, "files": g["files"], "set_bytes": g["set_bytes"]}
        yield Measured("density", params, partial(measure, k, params), reps=g["reps"])


# --- space ------------------------------------------------------------------------------------
def _one_file_tar(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        ti = tarfile.TarInfo(name)
        ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_700_000_000
        t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def space_cases(ctx: EngineContext) -> Iterator[Case]:
    from cowlab.measure.workloads.space import BIG, IMAGE

    size = ctx.grid["big_file_bytes"]
    append = ["sh", "-c", f"head -c 1024 /dev/urandom >> {BIG}"]

    def df() -> dict[str, int]:
        d = ctx.api.df()
        return {
            "layers": int(d.get("LayersSize") or 0),
            "containers_rw": sum(int(c.get("SizeRw") or 0) for c in d.get("Containers") or []),
        }

    def measure(rep: int) -> list[Sample]:
        ref = ctx.ref(IMAGE)
        out: list[Sample] = []
        last = {"used": ctx.used_bytes()}
        u0 = last["used"]

        def note(event, base=None):
            now = ctx.used_bytes()
            out.append(
                Sample(
                    "space_bytes",
                    now - (last["used"] if base is None else base),
                    "B",
                    {"event": event, "big_file_bytes": size},
                    rep,
                )
            )
            last["used"] = now
            for what, v in df().items():
                out.append(
                    Sample("docker_df_bytes", v, "B", {"event": event, "what": what, "big_file_bytes": size}, rep)
                )

        cid = ctx.create(ref, append)
        try:
            note("create")
            import os

            ctx.api.put_archive(cid, "/", _one_file_tar("etc-new.conf", os.urandom(1024)))
            note("write_new_1KiB")
            ctx.start(cid)
            code = ctx.api.wait(cid)["StatusCode"]
            if code != 0:
                raise CowlabError(f"appending to {BIG} exited {code}: {ctx.api.logs(cid)[-200:]!r}")
            note("append_1KiB_to_64MiB")
        finally:
            ctx.remove(cid, force=True)
        note("after_remove", base=u0)
        return out

    yield Measured("space", {"big_file_bytes": size}, measure, reps=ctx.grid["reps"])


CASES: dict[str, Callable[[EngineContext], Iterator[Case]]] = {
    "creation": creation_cases,
    "density": density_cases,
    "space": space_cases,
}
