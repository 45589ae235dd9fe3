"""lookup: the cost of finding a name in a search path of many directories, against layers.

Claim tested: "open() is expensive ... when searching many directories (PATH, classpath, etc.)
over many layers". A union filesystem resolves a name in a merged directory by asking each layer
in turn; once resolved, the dentry cache hides it. So cold lookups should grow with the number
of layers on overlay2, warm ones should not, and vfs (one flat tree) should be flat throughout.

Image (one per `layers` × `path_dirs`): every layer has /opt (with a marker file in it, as real
layers each install something under a common tree, so /opt is merged over all layers); PATH
directory i, /opt/pNNN, lives in layer i*layers//D and holds one `libNNN.jar`; a static busybox
named `true` lives only in the LAST PATH directory (without a static busybox on the host, a
0755 stand-in: the lookups still work, `exec` is skipped).

Kinds (param `kind`), metric lookup_seconds:
  hit   one execvp-style resolution of `true`: access(dir/true, X_OK) for each PATH dir in order
        until found (D lookups, the last one hits). Done in-process with faccessat relative to
        an fd on the container root, which is the same kernel path walk as an absolute path
        after chroot(2), without the cost and noise of a fork. Value: seconds per resolution.
  miss  the same for a name in no directory (all D lookups fail, as execvp's ENOENT)
  scan  classpath-like: stat N names spread over the D directories, D of them present, the
        rest missing (stat relative to the root fd). Value: seconds per scan of N names.
  exec  one real fork + chroot + execvp + exit: coreutils chroot(8) into the container root
        runs `true` with PATH set to the D directories (glibc's execvp tries each in order), a
        static busybox runs and exits. Timed whole, from the parent; for `cold` the host's
        chroot binary and libc are re-read after the drop, so only the container side is cold.
Cache (param `cache`): `cold` drops page cache, dentries and inodes right before the one timed
resolution (repeats 1: only a first lookup is cold); `warm` does one untimed pass, then times
`repeats` resolutions and reports the mean (the grid's `repeats`).

Each repetition is a fresh container. Beyond the grid's layer counts, the full grid adds a point
at the driver's own layer limit (driver.max_layers: overlayfs' 500); a driver without a limit
has no such point. That image is built when the case first runs, since the limit belongs to the
driver, which specs() does not see.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from functools import partial

from cowlab.base import sysutil
from cowlab.base.errors import CowlabError, NotApplicable
from cowlab.base.sysutil import static_busybox
from cowlab.measure.workloads.base import Context, Measured, Timed, Workload
from cowlab.results import Sample
from cowlab.store.images import ImageStore
from cowlab.store.spec import ImageSpec, from_dict

TARGET = "true"  # the hit: busybox picks the applet from argv[0], so it is named true
MISSING = "no-such-cmd"  # the miss: in no PATH directory
BUSYBOX = ("/bin/busybox", "/usr/bin/busybox")

GRID = {
    "full": {
        "layers": [1, 8, 32, 64, 128],
        "layer_limit": True,
        "path_dirs": [32],
        "kinds": ["hit", "miss", "scan", "exec"],
        "caches": ["cold", "warm"],
        "scan_names": 256,
        "repeats": 200,
        "reps": 10,
    },
    "quick": {
        "layers": [1, 8, 32],
        "layer_limit": False,
        "path_dirs": [32],
        # The kinds the claims read (report/claims.toml): scan and exec, half of the workload's
        # time (most of it on FUSE drivers, where a cold lookup is a daemon's round trip), are
        # the full grid's.
        "kinds": ["hit", "miss"],
        "caches": ["cold", "warm"],
        "scan_names": 256,
        "repeats": 200,
        "reps": 5,
    },
}


def image_name(layers: int, dirs: int) -> str:
    return f"lookup-{layers}L-{dirs}D"


def path_dirs(dirs: int) -> list[str]:
    return [f"/opt/p{i:03d}" for i in range(dirs)]


def scan_names(dirs: int, n: int) -> list[str]:
    """n classpath entries, name j in directory j % dirs; only the first `dirs` exist."""
    return [f"opt/p{j % dirs:03d}/lib{j:03d}.jar" for j in range(n)]


def lookup_spec(layers: int, dirs: int, busybox: str | None) -> ImageSpec:
    raw = [
        {"ops": [{"op": "dir", "path": "/opt"}, {"op": "file", "path": f"/opt/.layer-{i:04d}", "size": 64}]}
        for i in range(layers)
    ]
    for i, d in enumerate(path_dirs(dirs)):
        raw[i * layers // dirs]["ops"] += [
            {"op": "dir", "path": d},
            {"op": "file", "path": f"{d}/lib{i:03d}.jar", "size": 64},
        ]
    last = raw[(dirs - 1) * layers // dirs]["ops"]
    target = f"{path_dirs(dirs)[-1]}/{TARGET}"
    last.append(
        {"op": "copy", "path": target, "source": busybox, "mode": "0755"}
        if busybox
        else {"op": "file", "path": target, "size": 64, "mode": "0755"}
    )
    return from_dict({"name": image_name(layers, dirs), "seed": 1, "layers": raw}, f"<{image_name(layers, dirs)}>")


def resolve(root: int, dirs: list[str], name: str) -> bool:
    """execvp's search, as lookups relative to the container root fd."""
    for d in dirs:
        if os.access(f"{d}/{name}", os.X_OK, dir_fd=root):
            return True
    return False


def scan(root: int, names: list[str]) -> int:
    found = 0
    for n in names:
        try:
            os.stat(n, dir_fd=root)
            found += 1
        except FileNotFoundError:
            pass
    return found


class Lookup(Workload):
    name = "lookup"
    claim = "open() is expensive ... when searching many directories (PATH, classpath, etc.) over many layers"
    GRID = GRID

    def specs(self, grid):
        bb = static_busybox()
        return [lookup_spec(n, d, bb) for n in grid["layers"] for d in grid["path_dirs"]]

    def cases(self, ctx: Context):
        g = ctx.grid
        layer_counts = list(g["layers"])
        limit = ctx.driver.max_layers
        if g.get("layer_limit") and limit and limit not in layer_counts:
            layer_counts.append(limit)

        def image(layers, dirs):
            name = image_name(layers, dirs)
            if name not in ctx.images:  # the layer-limit point: built on first use
                ctx.images[name] = ImageStore(ctx.state).build(lookup_spec(layers, dirs, static_busybox()))
            return ctx.image(name)

        for layers in layer_counts:
            for dirs in g["path_dirs"]:
                for kind in g["kinds"]:
                    for cache in g["caches"]:
                        params = {"layers": layers, "path_dirs": dirs, "kind": kind, "cache": cache}
                        get = partial(image, layers, dirs)
                        if kind == "exec":
                            yield self._exec_case(ctx, get, dirs, cache, params, g["reps"])
                        else:
                            yield self._lookup_case(ctx, get, dirs, kind, cache, params, g)

    @staticmethod
    def _lookup_case(ctx, get_image, dirs, kind, cache, params, g) -> Measured:
        rel_dirs = [d.lstrip("/") for d in path_dirs(dirs)]
        names = scan_names(dirs, g["scan_names"])
        expect_found = min(dirs, len(names))  # lib{j} exists in p{j} for j < dirs
        fn: Callable[[int], object]  # the lookup, on the container root's fd
        ok: Callable[[object], bool]  # whether its answer is the one the image was built for
        if kind == "hit":
            fn, ok = (lambda fd: resolve(fd, rel_dirs, TARGET)), (lambda r: r is True)
        elif kind == "miss":
            fn, ok = (lambda fd: resolve(fd, rel_dirs, MISSING)), (lambda r: r is False)
        elif kind == "scan":
            fn, ok = (lambda fd: scan(fd, names)), (lambda r: r == expect_found)
        else:
            raise CowlabError(f"lookup: unknown kind {kind!r}")
        repeats = 1 if cache == "cold" else g["repeats"]

        def measure(rep: int) -> list[Sample]:
            img = get_image()
            c = ctx.create(img)
            try:
                fd = os.open(c.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    if cache == "cold":
                        sysutil.drop_caches()
                    else:
                        fn(fd)
                    t0 = time.perf_counter_ns()
                    for _ in range(repeats):
                        r = fn(fd)
                    dt = time.perf_counter_ns() - t0
                finally:
                    os.close(fd)
            finally:
                ctx.remove(c)
            if not ok(r):
                raise CowlabError(
                    f"lookup {kind} in image {img.name} gave {r!r}: the image is not what this workload built"
                )
            return [Sample("lookup_seconds", dt / repeats / 1e9, "s", dict(params), rep)]

        return Measured("lookup_seconds", params, measure, reps=g["reps"], unit="s")

    @staticmethod
    def _exec_case(ctx, get_image, dirs, cache, params, reps) -> Timed:
        env = {"PATH": ":".join(path_dirs(dirs))}
        chroot = shutil.which("chroot")
        busybox = static_busybox()  # the same answer specs() got: the image has it iff this

        def run(c):
            assert chroot is not None  # setup() skips the case without it
            return subprocess.run(
                [chroot, os.fspath(c.mountpoint), TARGET],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=60,
            )

        def setup():
            if not busybox:
                raise NotApplicable(
                    "no statically linked busybox on this host to exec in the "
                    "container (apt-get install busybox-static)"
                )
            if not chroot:
                raise NotApplicable("chroot(8) not found (GNU coreutils)")
            img = get_image()
            c = ctx.create(img)
            try:
                if cache == "cold":
                    sysutil.drop_caches()
                    sysutil.run([chroot, "--version"])  # the host side (chroot, libc) warm again
                else:
                    _check(run(c))
            except BaseException:
                ctx.remove(c)
                raise
            return c

        def teardown(c, cp):
            ctx.remove(c)
            _check(cp)

        return Timed("lookup_seconds", params, op=run, setup=setup, teardown=teardown, reps=reps)


def _check(cp: subprocess.CompletedProcess) -> None:
    if cp.returncode != 0:
        raise CowlabError(
            f"exec of {TARGET} in the container failed ({cp.returncode}): {cp.stderr.decode(errors='replace').strip()}"
        )
