"""idmap: making an image's files a user-namespaced container's own, by an idmapped mount or by
a recursive chown, against the number of files.

Claim answered: the slides' containers all run as the host's root. A container in a user
namespace (root inside = uid 100000 outside) needs its root filesystem owned by the mapped ids.
Without idmapped mounts a runtime chowns a copy of the tree, every file (for overlay2 that is a
copy-up of every file, data and all, unless metacopy); with them (mount_setattr with
MOUNT_ATTR_IDMAP, Linux 5.12; overlayfs on idmapped layers, 5.19) the kernel maps ids at the
mount, whatever the tree's size. containerd measured 0.135 s against 4.96 s (busybox) and 0.143 s
against 38.8 s (fedora) in PR #5888.

Ops (param `op`), each timed alone, per repetition, on a fresh container of an image of `files`
files of `file_bytes` under /tree/dNN:
  idmapped  create a container with the driver option idmap=0:100000:65536 (each lower layer an
            idmapped mount, the overlay on top: see cowlab/drivers/idmap.py); a driver without
            that option records the case as skipped
  chown     create a plain container, then lchown every entry of its root from id to
            100000 + id (what a runtime does without idmapped mounts)
Metric idmap_seconds. Teardown checks that the container's root and a file of the tree are owned
by the mapped ids, so the two ops are known to produce the same thing.
"""

from __future__ import annotations

import os

from cowlab.base.errors import CowlabError, NotApplicable
from cowlab.measure.workloads.base import Context, Timed, Workload, synthetic_image
from cowlab.storage.drivers.idmap import supported

KiB = 1 << 10
MAP = "0:100000:65536"
OUTSIDE = 100000
TREE = "/tree"
DIRS = 16
GRID = {
    "full": {"files": [500, 5000, 50000], "file_bytes": 4 * KiB, "ops": ["idmapped", "chown"], "reps": 5},
    "quick": {"files": [100, 1000], "file_bytes": 4 * KiB, "ops": ["idmapped", "chown"], "reps": 2},
}


def image_name(files: int, size: int) -> str:
    return f"idmap-{files}f-{size}B"


def shift_tree(root, by: int) -> int:
    """lchown every entry under root (and root) from id to by + id. Returns entries."""
    n = 0
    for dp, dns, fns in os.walk(root):
        for name in dns + fns:
            p = os.path.join(dp, name)
            st = os.lstat(p)
            os.lchown(p, by + st.st_uid, by + st.st_gid)
            n += 1
    st = os.lstat(root)
    os.lchown(root, by + st.st_uid, by + st.st_gid)
    return n + 1


class Idmap(Workload):
    name = "idmap"
    claim = "An idmapped mount makes an image a user namespace's own in constant time (containerd PR #5888)"
    GRID = GRID

    def specs(self, grid):
        out = []
        for n in grid["files"]:
            ops = [
                {
                    "op": "files",
                    "dir": f"{TREE}/d{d:02d}",
                    "count": n // DIRS + (1 if d < n % DIRS else 0),
                    "size": grid["file_bytes"],
                }
                for d in range(DIRS)
                if n // DIRS + (1 if d < n % DIRS else 0)
            ]
            out.append(synthetic_image(image_name(n, grid["file_bytes"]), 0, 1, seed=n, extra_ops=ops))
        return out

    def cases(self, ctx: Context):
        g = ctx.grid
        for n in g["files"]:
            for op in g["ops"]:
                yield self._case(ctx, n, op, {"files": n, "file_bytes": g["file_bytes"], "op": op}, g["reps"])

    @staticmethod
    def _case(ctx: Context, n: int, op: str, params: dict, reps: int) -> Timed:
        if op not in ("idmapped", "chown"):
            raise CowlabError(f"unknown idmap op {op!r} (ops: idmapped, chown)")
        name = image_name(n, params["file_bytes"])

        def setup():
            if op == "idmapped":
                why = supported()
                if why:
                    raise NotApplicable(why)
                v = ctx.variant(idmap=MAP)  # NotApplicable where the driver has no idmap option
            else:
                v = ctx
            return v, v.image(name)

        def run(state):
            v, img = state
            c = v.create(img)
            if op == "chown":
                shift_tree(c.mountpoint, OUTSIDE)
            return c

        def teardown(state, c):
            v, _ = state
            try:
                probe = next((c.mountpoint / TREE.lstrip("/")).glob("d*/*"))
                for p in (c.mountpoint, probe):
                    st = os.lstat(p)
                    if (st.st_uid, st.st_gid) != (OUTSIDE, OUTSIDE):
                        raise CowlabError(
                            f"{op}: {p} is owned by {st.st_uid}:{st.st_gid}, not the mapped root {OUTSIDE}:{OUTSIDE}"
                        )
            finally:
                v.remove(c)

        return Timed("idmap_seconds", params, op=run, setup=setup, teardown=teardown, reps=reps)
