"""chown: a recursive chown of a tree from the image, inside a fresh container, by file size.

Claim answered: the slides' "copy-up can take a while if the file is big" hits even when nothing
but the owner changes: without overlayfs's `metacopy` a chown copies every file's data up
(docker/for-linux#388: a `chown -R` in a Dockerfile or an entrypoint doubles the image and takes
minutes). With `metacopy=on` (Linux 4.19) overlayfs copies up only the metadata, marked by a
trusted.overlay.metacopy xattr, and the data stays in the lower layer until a write: the cost
is flat in the files' size. composefs has metacopy always on; snapshot drivers and vfs change
the owner in place.

For each file size (param `file_bytes`, `files` files of random content under /tree), each
repetition makes a fresh container and chowns /tree and everything in it to uid:gid 1000:1000
(lchown, as chown -R does). Samples:
  chown_seconds   the whole recursive chown, timed alone
  space_bytes     growth of driver.used_bytes() across it (param event=chown)
Param `metacopy`: the driver option on and off where the driver has it (ctx.variant), else None.
As in `rename`, drivers whose files are on the backing filesystem run on an ext4 loop filesystem
of their own (param backing_fs), so that space_bytes is the chown's alone.
Compare: docker/for-linux#388 (a recursive chown copying the whole tree up).
"""

from __future__ import annotations

import os
import time
from functools import partial

from cowlab.base import sysutil
from cowlab.measure.workloads.base import Context, Measured, MiB, Workload, synthetic_image
from cowlab.measure.workloads.rename import backing_fs, option_values, own_fs
from cowlab.results import Sample

KiB = 1 << 10
TREE = "/tree"
UID = GID = 1000
GRID = {
    "full": {"file_bytes": [4 * KiB, MiB, 16 * MiB, 128 * MiB], "files": 8, "metacopy": [False, True], "reps": 5},
    "quick": {"file_bytes": [4 * KiB, MiB, 16 * MiB], "files": 8, "metacopy": [False, True], "reps": 3},
}


def image_name(size: int, files: int) -> str:
    return f"chown-{size}B-{files}f"


def chown_r(top, uid: int, gid: int) -> int:
    """chown -R: every entry under top and top itself, symlinks themselves. Returns entries."""
    n = 0
    for dp, dns, fns in os.walk(top):
        for name in dns + fns:
            os.lchown(os.path.join(dp, name), uid, gid)
            n += 1
    os.lchown(top, uid, gid)
    return n + 1


class Chown(Workload):
    name = "chown"
    claim = "A recursive chown copies every file up (docker/for-linux#388) unless metacopy"
    GRID = GRID

    def specs(self, grid):
        return [
            synthetic_image(
                image_name(s, grid["files"]),
                0,
                1,
                seed=s,
                extra_ops=[{"op": "files", "dir": TREE, "count": grid["files"], "size": s}],
            )
            for s in grid["file_bytes"]
        ]

    def cases(self, ctx: Context):
        g = ctx.grid
        for mc in option_values(ctx, "metacopy", g["metacopy"]):
            for size in g["file_bytes"]:
                params = {"file_bytes": size, "files": g["files"], "metacopy": mc, "backing_fs": backing_fs(ctx)}
                yield Measured("chown", params, partial(self.measure, ctx, mc, size, params), reps=g["reps"], unit="s")

    @staticmethod
    def measure(ctx: Context, mc, size: int, params: dict, rep: int) -> list[Sample]:
        v = own_fs(ctx, metacopy=mc)
        img = v.image(image_name(size, params["files"]))
        c = v.create(img)
        try:
            top = c.mountpoint / TREE.lstrip("/")
            sysutil.syncfs(c.mountpoint)
            before = v.driver.used_bytes()
            t0 = time.perf_counter()
            chown_r(top, UID, GID)
            took = time.perf_counter() - t0
            grew = v.driver.used_bytes() - before
        finally:
            v.remove(c)
        return [
            Sample("chown_seconds", took, "s", params, rep),
            Sample("space_bytes", grew, "B", {**params, "event": "chown"}, rep),
        ]
