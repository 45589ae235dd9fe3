"""mount_floor: what the kernel must do for one container, timed beside cowlab doing it.

Not a claim of the slides but a check on cowlab itself. The floor is the container as the kernel
sees it, whoever makes it (Docker's overlay2 driver makes the same directories): mkdir of the
container's directory and of its diff, work and merged; the mount(2) (from the layer directory,
where the options name lower layers relatively); umount(2); rmdir of what the mount left in work
(overlayfs makes work/work), of the four directories and of the container's own. cowlab's side is
a whole container's life: create, remove, and the deferred deletion of its directory (and of its
journal entry where it has one: Resources.forget_spent), so nothing cowlab postpones escapes the
comparison.

Three timings per repetition, in rotating order so that what else loads the machine (an overlay's
umount writes back its upper filesystem, other jobs' dirty data included) falls on all alike:
container_floor_seconds (the floor through Python's os module), container_floor_libc_seconds (the
same syscalls called straight from libc through ctypes: an independent check that the floor does
not drift) and cowlab_container_seconds. Overhead = cowlab ÷ floor. Only drivers that can describe
their bare mount (`bare_mount` capability) have a floor.
"""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path
from types import SimpleNamespace

from cowlab.base import sysutil
from cowlab.measure.workloads.base import Context, Measured, Workload
from cowlab.measure.workloads.creation import Creation, grid_points, image_name
from cowlab.results import Sample
from cowlab.storage.drivers.base import BareMount, HasBareMount

_libc = ctypes.CDLL(None, use_errno=True)
INNER = 8  # containers per sample and side


class Floor:
    """One container's syscalls, made twice over: through os (`python`) and through libc (`libc`),
    each time under a new name, as a new container gets (a name made and removed over and over
    would find the kernel's dentry cache warm: measured 4% cheaper)."""

    def __init__(self, bm: BareMount, home: Path):
        self.bm, self.home = bm, home
        self.made: dict[str, list[str]] = {}  # set by learn(): what the mount itself leaves

    def learn(self) -> None:
        """One untimed pass to see what the mount itself leaves behind (overlayfs: work/work)."""
        c = self._next()
        for d in c.mkdirs:
            d.mkdir()
        self._mount(c)
        sysutil.umount(c.target)
        self.made = {n: sorted(os.listdir(c.cdir / n)) for n in self.bm.dirs}
        for p in self._next(c.cdir).removals:
            os.rmdir(p)

    def _next(self, cdir: Path | None = None) -> SimpleNamespace:
        """The paths and options of the next container (a fresh name), made outside any timing."""
        cdir = cdir or self.home / os.urandom(6).hex()
        rm = [p for n in reversed(self.bm.dirs) for p in [cdir / n / k for k in self.made.get(n, [])] + [cdir / n]]
        c = SimpleNamespace(cdir=cdir, mkdirs=[cdir] + [cdir / n for n in self.bm.dirs], target=cdir / self.bm.target)
        c.data, c.removals = self.bm.data(cdir), rm + [cdir]
        enc = os.fsencode
        c.raw = ([enc(p) for p in c.mkdirs], enc(c.target), c.data.encode(), [enc(p) for p in c.removals])
        return c

    def _mount(self, c: SimpleNamespace) -> None:
        cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY) if self.bm.cwd else -1
        try:
            if self.bm.cwd:
                os.chdir(self.bm.cwd)
            sysutil.mount(self.bm.source, c.target, self.bm.fstype, c.data)
        finally:
            if cwd >= 0:
                os.fchdir(cwd)
                os.close(cwd)

    def python(self) -> float:
        c = self._next()
        t0 = time.perf_counter_ns()
        for d in c.mkdirs:
            os.mkdir(d)
        self._mount(c)
        sysutil.umount(c.target)
        for p in c.removals:
            os.rmdir(p)
        return (time.perf_counter_ns() - t0) / 1e9

    def libc(self) -> float:
        mkdirs, target, data, removals = self._next().raw
        source, fstype = os.fsencode(self.bm.source), os.fsencode(self.bm.fstype)
        cwd = os.fsencode(self.bm.cwd) if self.bm.cwd else None
        c = _libc
        t0 = time.perf_counter_ns()
        for d in mkdirs:
            _ok(c.mkdir(d, 0o777), d)
        if cwd:
            fd = c.open(b".", os.O_RDONLY | os.O_DIRECTORY)
            _ok(c.chdir(cwd), cwd)
        _ok(c.mount(source, target, fstype, 0, data), target)
        if cwd:
            _ok(c.fchdir(fd), b".")
            c.close(fd)
        _ok(c.umount2(target, 0), target)
        for d in removals:
            _ok(c.rmdir(d), d)
        return (time.perf_counter_ns() - t0) / 1e9


def _ok(rc: int, what: bytes) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{os.strerror(e)}: {what.decode(errors='replace')}")


class MountFloor(Workload):
    name = "mount_floor"
    claim = "(reference) the kernel's own cost of a container, without cowlab around it"
    requires = frozenset({"bare_mount"})
    # The same images, so the floor is comparable point by point; more repetitions than
    # creation's, since a ratio of two sub-millisecond medians needs them.
    GRID = {k: {**g, "reps": 3 * g["reps"]} for k, g in Creation.GRID.items()}

    def specs(self, grid):
        return Creation().specs(grid)

    def cases(self, ctx: Context):
        drv = ctx.driver
        assert isinstance(drv, HasBareMount)  # requires = {"bare_mount"}
        # The floor's containers sit beside cowlab's, in the driver's containers/ directory: the
        # kernel's cost of a name in a directory grows with what the directory has held (ext4
        # keeps its blocks), and the creation workload has just made and removed hundreds there.
        home = drv.home / "containers"
        first = True
        for size, layers in grid_points(ctx.grid):
            img = ctx.image(image_name(size, layers))
            params = {"image_size_bytes": size, "layers": layers}
            if first:  # cowlab makes containers/ first, its own way (a bench journals it once)
                ctx.remove(ctx.create(img))
                ctx.res.forget_spent()
                # One entry for every floor container: its releaser unmounts whatever a Ctrl-C
                # left mounted below and deletes the lot (nothing journaled per container).
                ctx.res.acquire("tree", lambda: home.mkdir(exist_ok=True), path=str(home))
                first = False
            bm = drv.bare_mount(img)
            floors = [Floor(bm, home), Floor(bm, home)]

            def cowlab(img=img) -> float:
                t0 = time.perf_counter_ns()
                ctx.remove(ctx.create(img))
                ctx.res.forget_spent()  # the deletion a bench defers is part of the container
                return (time.perf_counter_ns() - t0) / 1e9

            def measure(rep, floors=floors, cowlab=cowlab, params=params):
                py, lc = floors
                if rep == 0:  # learn what the mount leaves; warm up, as Timed cases do
                    py.learn(), lc.learn()
                    py.python(), lc.libc(), cowlab()
                fns = [("container_floor_seconds", py.python), ("container_floor_libc_seconds", lc.libc)]
                fns.append(("cowlab_container_seconds", cowlab))
                t = dict.fromkeys((m for m, _ in fns), 0.0)
                # A sample is the mean of INNER containers each (timeit's `number`): one
                # sub-millisecond op is mostly the machine's noise, a few in a row much less so.
                for i in range(INNER):
                    k = (rep * INNER + i) % 3  # rotate: none always follows another's writeback
                    for metric, fn in fns[k:] + fns[:k]:
                        t[metric] += fn() / INNER
                return [Sample(m, v, "s", dict(params, inner=INNER), rep) for m, v in t.items()]

            yield Measured("container_floor_seconds", params, measure, reps=ctx.grid["reps"], unit="s")
