"""rename: renaming a directory that comes from the image, inside a fresh container, by size.

Claim answered: the slides' union filesystems "copy up" whole files; a directory rename is worse.
Without overlayfs's `redirect_dir`, rename(2) of a lower directory returns EXDEV and mv(1) falls
back to copying the whole tree into the container's layer and deleting the original: in
docker/for-linux#379 renaming a 3.3 GB directory took hours. With `redirect_dir=on` (Linux 4.10)
overlayfs records the rename in a trusted.overlay.redirect xattr on a new upper directory and
copies nothing: the cost is flat in the directory's size. Snapshot drivers (btrfs, zfs, device
mapper) and vfs rename inside one filesystem and are flat anyway.

For each directory size (param `dir_bytes`, in `files` files of random content), each repetition
makes a fresh container and renames /tree to /tree-renamed the way mv(1) does: rename(2), and on
EXDEV a copy (cp -a semantics: shutil.copytree with symlinks and metadata) then removal of the
original. Samples:
  rename_seconds  the whole move, timed alone (param `how`: rename, or copy when rename(2) said
                  EXDEV)
  space_bytes     growth of driver.used_bytes() across the move (param event=rename): what the
                  container's layer took
Param `redirect_dir`: the driver option on and off (ctx.variant(redirect_dir=...)) where the
driver has that option (the overlayfs drivers; composefs has it always on and no option), else
None, the driver's only behaviour. Drivers whose files are on the backing filesystem run this on
an ext4 loop filesystem of their own (param backing_fs), so that space_bytes is the move's alone
and not what other processes write to the host's filesystem meanwhile. Compare: docker/for-linux#379 (hours for 3.3 GB with copying;
the redirect makes it milliseconds).
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from functools import partial

from cowlab.base import sysutil
from cowlab.base.errors import CowlabError
from cowlab.measure.workloads.base import Context, GiB, Measured, MiB, Workload, synthetic_image
from cowlab.results import Sample

KiB = 1 << 10
TREE, MOVED = "/tree", "/tree-renamed"
GRID = {
    "full": {"dir_bytes": [MiB, 64 * MiB, 512 * MiB, 2 * GiB], "files": 256, "redirect_dir": [False, True], "reps": 5},
    "quick": {"dir_bytes": [MiB, 64 * MiB], "files": 64, "redirect_dir": [False, True], "reps": 3},
}


def image_name(size: int, files: int) -> str:
    return f"rename-{size}B-{files}f"


def move(src, dst) -> str:
    """mv(1) within one filesystem: rename(2), or on EXDEV copy then delete. Returns how."""
    try:
        os.rename(src, dst)
        return "rename"
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    shutil.copytree(src, dst, symlinks=True, copy_function=shutil.copy2)
    shutil.rmtree(src)
    return "copy"


PRIVATE = "ext4"


def own_fs(ctx: Context, **options) -> Context:
    """The context a case whose space figure must be its own runs in: a driver whose files are
    files on the backing filesystem gets an ext4 loop filesystem of its own (nothing else writes
    there, unlike the host's filesystem); a pool-based driver's used_bytes() is its pool's own
    already. Options that are None are left at the driver's default."""
    opts = {k: v for k, v in options.items() if v is not None}
    if "files_on_backing" in ctx.driver.capabilities:
        return ctx.variant(backing=PRIVATE, **opts)
    return ctx.variant(**opts) if opts else ctx


def backing_fs(ctx: Context) -> str:
    """What own_fs will run on, for the params."""
    return PRIVATE if "files_on_backing" in ctx.driver.capabilities else ctx.backing.mount.fstype


def option_values(ctx: Context, option: str, values: list) -> list:
    """The values of a driver option to vary, or [None] (the driver's own behaviour) for a
    driver that has no such option."""
    return list(values) if option in type(ctx.driver).option_names else [None]


class Rename(Workload):
    name = "rename"
    claim = "Renaming a directory from the image copies it up whole (docker/for-linux#379) unless redirect_dir"
    GRID = GRID

    def specs(self, grid):
        return [
            synthetic_image(
                image_name(s, grid["files"]),
                0,
                1,
                seed=s,
                extra_ops=[{"op": "files", "dir": TREE, "count": grid["files"], "size": max(1, s // grid["files"])}],
            )
            for s in grid["dir_bytes"]
        ]

    def cases(self, ctx: Context):
        g = ctx.grid
        for rd in option_values(ctx, "redirect_dir", g["redirect_dir"]):
            for size in g["dir_bytes"]:
                params = {"dir_bytes": size, "files": g["files"], "redirect_dir": rd, "backing_fs": backing_fs(ctx)}
                yield Measured("rename", params, partial(self.measure, ctx, rd, size, params), reps=g["reps"], unit="s")

    @staticmethod
    def measure(ctx: Context, rd, size: int, params: dict, rep: int) -> list[Sample]:
        v = own_fs(ctx, redirect_dir=rd)
        img = v.image(image_name(size, params["files"]))
        c = v.create(img)
        try:
            root = c.mountpoint
            sysutil.syncfs(root)
            before = v.driver.used_bytes()
            t0 = time.perf_counter()
            how = move(root / TREE.lstrip("/"), root / MOVED.lstrip("/"))
            took = time.perf_counter() - t0
            grew = v.driver.used_bytes() - before
            if not (root / MOVED.lstrip("/")).is_dir() or (root / TREE.lstrip("/")).exists():
                raise CowlabError(f"after the move {TREE} should be gone and {MOVED} there")
        finally:
            v.remove(c)
        p = {**params, "how": how}
        return [
            Sample("rename_seconds", took, "s", p, rep),
            Sample("space_bytes", grew, "B", {**p, "event": "rename"}, rep),
        ]
