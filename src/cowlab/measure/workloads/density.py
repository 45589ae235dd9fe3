"""density: memory and disk that K containers of one image cost once each of them has read it.

Claim tested: "When starting the same container multiple times: the data is loaded only once
from disk, and cached only once in memory; but dentries will be duplicated."

For K in `containers`, K containers are created from one image holding `files` files of
`set_bytes` in total (spread over a few directories, plus a static busybox). In each, a real
process — busybox, chrooted into the container's root, started with resources.spawn so it is
journaled and ended even after a crash, in a scratch memory cgroup where one can be made —
reads every file of the set, says READY on a shared pipe and then sleeps, like a running
container, while cowlab takes its readings. (What it read is cached, not pinned: its `cat` has
exited, so memory pressure or another process's drop_caches could still evict it.)

  page_cache_bytes   growth of Cached in /proc/meminfo (machine-wide)
  cgroup_memory_bytes what the readers' own memory cgroup was charged (param `stat`: file,
                     anon, kernel); the readers are in a scratch child of cowlab's cgroup, so
                     this is theirs alone. Recorded as skipped, with the reason, where no memory
                     cgroup can be made.
  dentry_count       growth of nr_dentry (/proc/sys/fs/dentry-state)
  slab_objects, slab_bytes  growth of active objects in the dentry, ovl_inode, fuse_inode and
                     backing-fs inode slab caches (param `cache`), from /proc/slabinfo
                     (probes.cache_growth, which engine mode uses too); slab_bytes is that
                     × the object size (the caches' pages themselves grow only once the free
                     slots drop_caches left in them are used up, so they would read 0 at small K)
  inodes_used, disk_bytes   growth of driver.inodes_used() / driver.used_bytes() (statfs of
                     the backing filesystem after syncfs, or a pool's own numbers) since before
                     the K containers were created

Caches are dropped (sync + drop_caches) after the containers are created and before the readers
start, so the memory numbers are what the readers loaded and not what creating the containers
wrote (a copying driver writes K copies through the page cache). Cached, dentry-state, slabinfo
and statfs are machine-wide: anything else running at the same time shows up in them; the
cgroup numbers don't have that problem. A drop_caches by another process between the two
readings (seen in /proc/vmstat drop_pagecache/drop_slab) would make the deltas meaningless, so
the reading is redone (up to 5 times, waiting a little longer each time; then the point fails).
A union driver should show page cache ≈ one set whatever K is, and dentries growing with K; a
copying driver grows both with K.

With Measured reps, each (K, rep) starts from scratch: containers are created, read, measured,
and removed again. If the backing filesystem can't hold K containers (the driver's
space_needed × K, plus 1 GiB), the point is skipped with the reason.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from functools import partial

from cowlab.base import sysutil
from cowlab.base.errors import CowlabError, NotApplicable
from cowlab.base.resources import spawn
from cowlab.base.sysutil import static_busybox  # noqa: F401  (this module's name for it)
from cowlab.base.units import human_bytes
from cowlab.measure import probes
from cowlab.measure.workloads.base import Context, GiB, Measured, MiB, Workload
from cowlab.results import Sample
from cowlab.store.spec import from_dict

GRID = {
    "full": {"containers": [1, 8, 32, 128], "files": 200, "set_bytes": 64 * MiB, "dirs": 4, "reps": 3},
    "quick": {"containers": [1, 8], "files": 200, "set_bytes": 64 * MiB, "dirs": 4, "reps": 2},
}

SET = "/set"  # where the files live in the image: /set/dNN/fNNNNNN
BUSYBOX = "/bin/busybox"  # where the static busybox lives in the image
READY = b"READY\n"
READY_TIMEOUT = 600.0  # seconds for all K readers to finish reading (K × set from disk)
SPACE_MARGIN = GiB  # keep this much free on the backing filesystem
ATTEMPTS = 5  # readings redone when another process drops caches meanwhile

# Outside the chroot ($0 = host busybox): join the cgroup if one is given ($1 = its
# cgroup.procs), then chroot into the container ($2) and run the reader ($3) with its busybox.
OUTER = 'if [ -n "$1" ]; then echo $$ > "$1" || exit 1; fi; exec "$0" chroot "$2" /bin/busybox sh -c "$3"'
# Inside: stdout is /dev/null (opened outside), stderr is the ready pipe. Read every file, say
# READY, close the pipe (so the parent sees EOF once all are ready) and sleep until ended.
INNER = (
    f'if /bin/busybox cat {SET}/*/*; then echo READY >&2; else echo "reader $$: cat failed" >&2; fi; '
    "exec 2>&-; exec /bin/busybox sleep 1000000"
)


def image_name(grid: dict) -> str:
    return f"density-{grid['files']}f-{grid['set_bytes']}B"


def density_image(grid: dict, busybox: str | None):
    files, dirs = grid["files"], grid["dirs"]
    per_file = grid["set_bytes"] // files
    ops: list[dict] = []
    for d in range(dirs):
        count = files // dirs + (1 if d < files % dirs else 0)
        if count:
            ops.append({"op": "files", "dir": f"{SET}/d{d:02d}", "count": count, "size": per_file})
    if busybox:
        ops.append({"op": "copy", "path": BUSYBOX, "source": busybox, "mode": "0755"})
    return from_dict({"name": image_name(grid), "seed": 7, "layers": [{"ops": ops}]}, "<density>")


def settled_snapshot(fstype: str, timeout: float = 3.0) -> dict:
    """A snapshot once the slab caches have stopped shrinking: dentries and inodes that
    drop_caches let go of are freed after an RCU grace period, not at once."""
    prev = probes.cache_snapshot(fstype)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        cur = probes.cache_snapshot(fstype)
        if all(
            abs(cur["slabs"][n].active_objs - s.active_objs) <= max(16, s.active_objs // 100)
            for n, s in prev["slabs"].items()
            if n in cur["slabs"]
        ):
            return cur
        prev = cur
    return prev


class Readers:
    """K busybox readers, one per container root, in a cgroup if given; ended by end()."""

    def __init__(self, ctx: Context, busybox: str, cgroup: probes.MemoryCgroup | None):
        self.ctx, self.busybox, self.cgroup = ctx, busybox, cgroup
        self.procs: list[subprocess.Popen] = []

    def start(self, roots: list) -> None:
        """Start one reader per root and wait until every one has read the whole set."""
        r, w = os.pipe()
        null = os.open(os.devnull, os.O_RDWR)
        try:
            procs = self.cgroup.procs if self.cgroup else ""
            for root in roots:
                self.procs.append(
                    spawn(
                        self.ctx.res,
                        [self.busybox, "sh", "-c", OUTER, self.busybox, str(procs), str(root), INNER],
                        stdin=null,
                        stdout=null,
                        stderr=w,
                        close_fds=True,
                    )
                )
            os.close(w)
            w = -1
            self._wait_ready(r, len(roots))
        finally:
            for fd in (r, w, null):
                if fd >= 0:
                    os.close(fd)

    def _wait_ready(self, r: int, k: int) -> None:
        buf = b""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:  # until EOF: every reader has closed its end (ready, or died)
            left = deadline - time.monotonic()
            if left <= 0:
                raise CowlabError(f"readers not done after {READY_TIMEOUT:.0f} s ({buf.count(READY)} of {k} ready)")
            ready, _, _ = select.select([r], [], [], left)
            if ready:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                buf += chunk
        n = buf.count(READY)
        if n != k:
            why = buf.replace(READY, b"").decode(errors="replace").strip().splitlines()
            raise CowlabError(
                f"only {n} of {k} readers read the set" + (f": {why[0]}" if why else " (a reader died before reading)")
            )

    def end(self) -> None:
        """SIGTERM all first (they die at once), then reap and release each journal entry."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.terminate()
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass  # the releaser escalates to SIGKILL
            self.ctx.res.release(p._cowlab_handle)  # type: ignore[attr-defined]
        self.procs.clear()


class Density(Workload):
    name = "density"
    claim = (
        "When starting the same container multiple times: the data is loaded only once from "
        "disk, and cached only once in memory; but dentries will be duplicated."
    )
    GRID = GRID

    def specs(self, grid):
        return [density_image(grid, static_busybox())]

    def cases(self, ctx: Context):
        g = ctx.grid
        img = ctx.image(image_name(g))
        for k in g["containers"]:
            params = {"containers": k, "files": g["files"], "set_bytes": g["set_bytes"]}
            yield Measured("density", params, partial(self.measure, ctx, img, k, params), reps=g["reps"])

    def measure(self, ctx: Context, img, k: int, params: dict, rep: int) -> list[Sample]:
        busybox = static_busybox()
        if not busybox:
            raise NotApplicable("needs a static busybox (apt-get install busybox-static)")
        b = ctx.backing
        fstype = b.mount.fstype
        containers: list = []
        readers: Readers | None = None
        cgroup: probes.MemoryCgroup | None = None
        out: list[Sample] = []

        def add(metric, value, unit, **extra):
            out.append(Sample(metric, value, unit, {**params, **extra}, rep))

        d = ctx.driver
        used0, inodes0 = d.used_bytes(), d.inodes_used()
        need = d.space_needed(img) * k + SPACE_MARGIN  # what the driver says a container costs
        if need > b.free_bytes():
            raise NotApplicable(
                f"{k} containers need about {human_bytes(need)} on the backing "
                f"filesystem, which has {human_bytes(b.free_bytes())} free"
            )
        try:
            for _ in range(k):
                containers.append(ctx.create(img))
            cg_why = ""
            try:
                cgroup = probes.make_memory_cgroup(ctx.res)
            except NotApplicable as e:
                cg_why = str(e)
            readers = Readers(ctx, busybox, cgroup)
            for attempt in range(ATTEMPTS):
                sysutil.drop_caches()
                drops = probes.drop_count()
                before = settled_snapshot(fstype)
                cg0 = cgroup.stat() if cgroup else {}
                readers.start([c.mountpoint for c in containers])
                after = probes.cache_snapshot(fstype)
                cg1 = cgroup.stat() if cgroup else {}
                if probes.drop_count() == drops:
                    break
                readers.end()  # someone else dropped caches meanwhile: the deltas mean nothing
                time.sleep(1.0 + attempt)  # such drops come in bursts (another benchmark's reps)
            else:
                raise CowlabError(f"another process dropped caches during each of {ATTEMPTS} attempts")
            used1, inodes1 = d.used_bytes(), d.inodes_used()

            for metric, value, unit, extra in probes.cache_growth(before, after):  # as engine mode's
                add(metric, value, unit, **extra)
            if inodes0 is not None and inodes1 is not None:
                add("inodes_used", inodes1 - inodes0, "count")
            add("disk_bytes", used1 - used0, "B")
            if cgroup:
                for stat in sorted(cg1.keys() & cg0.keys()):
                    add("cgroup_memory_bytes", cg1[stat] - cg0[stat], "B", stat=stat, cgroup=f"v{cgroup.version}")
            else:
                out.append(Sample("cgroup_memory_bytes", None, "B", dict(params), rep, status="skipped", error=cg_why))
            return out
        finally:
            if readers:
                readers.end()
            if cgroup and cgroup.handle:
                ctx.res.release(cgroup.handle)
            for c in reversed(containers):
                ctx.remove(c)
