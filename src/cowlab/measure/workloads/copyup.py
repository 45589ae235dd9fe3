"""copyup: how long the first write to an image file takes in a fresh container, by file size.

Claim tested: "That copy-up operation can take a while if the file is big!" A file-level
copy-on-write driver (overlay2) copies the whole file from the image layer into the container's
layer the first time the file is opened for writing, so a 1-byte append to a 1 GiB file pays for
1 GiB of copying (and, in overlayfs, an fsync of the copy); a block-level scheme or a backing
filesystem that can clone (xfs with reflink, btrfs: overlayfs tries FICLONE first) pays a
constant. Metric copyup_seconds: the one operation, timed alone, in a fresh container.

Operations (param `op`), each on a fresh container:
  append_1B         open(O_WRONLY|O_APPEND), write 1 byte, close
  write_middle_4B   open(O_RDWR), pwrite 4 bytes at size/2, close (containerd's benchmark uses
                    this write to contrast file-level and block-level copy-on-write)
  open_rdwr         open(O_RDWR), close without writing: a union filesystem copies up at open
  chmod             metadata only; with overlay metacopy=on no data should be copied. Run with
                    the driver option metacopy on and off (ctx.variant(metacopy=...)); a driver
                    without that option records the case as skipped (param metacopy True/False)
  truncate          truncate to size-1
  second_append_1B  (control) the same append once the file is already up: setup does a first
                    append, so only the second is timed; it should be flat and tiny
Cache (param `cache`): `cold` drops page cache, dentries and inodes after the container is made
(the copy must read the file from disk); `warm` writes back the container's filesystem (vfs's
fresh copy is otherwise still dirty) and reads the file once through the container first.
Backing (param `backing_fs`): ext4, xfs (reflink=1) and btrfs loop filesystems cowlab makes with
ctx.variant(backing=...); expect copy-up cost to grow with size on ext4 and stay ~flat on xfs and
btrfs, where the copy is a clone. Only for drivers whose containers' files are files on the
backing filesystem (capability files_on_backing: the union drivers and vfs); the others copy
inside a filesystem of their own and are measured once, on the run's backing. Param metacopy is
None for every op but chmod.

Trimming, so the full grid stays a few minutes on overlay2 (every repetition is a new container,
and on ext4 each first write at 1 GiB copies and fsyncs 1 GiB): `cold` only for append_1B and
write_middle_4B (the ones whose copy has to read data; the others differ from them only in what
the syscall is), everything else warm; metacopy on/off only for chmod. See OPS below.

One image per file size (each holding one file of random content), not one image with every
size: a driver that copies the image per container (vfs) would otherwise copy 1.3 GiB for every
repetition of every case, which measures nothing this workload is about.
"""

from __future__ import annotations

import os

from cowlab.base import sysutil
from cowlab.measure.workloads.base import Context, GiB, MiB, Timed, Workload, synthetic_image

KiB = 1 << 10
FILE = "/data/file"

# op → the caches it runs with (the trimming of op × cache, stated in the docstring).
OPS = {
    "append_1B": ["cold", "warm"],
    "write_middle_4B": ["cold", "warm"],
    "open_rdwr": ["warm"],
    "chmod": ["warm"],
    "truncate": ["warm"],
    "second_append_1B": ["warm"],
}
BACKINGS = ["ext4", "xfs", "btrfs"]
METACOPY = {"chmod": [True, False]}  # ops not named here run with the driver's default (None)

GRID = {
    "full": {
        "file_size_bytes": [4 * KiB, MiB, 64 * MiB, 256 * MiB, GiB],
        "backing_fs": BACKINGS,
        "ops": OPS,
        "metacopy": METACOPY,
        "reps": 5,
    },
    "quick": {
        "file_size_bytes": [4 * KiB, MiB, 64 * MiB],
        "backing_fs": BACKINGS,
        "ops": OPS,
        "metacopy": METACOPY,
        "reps": 3,
    },
}


def image_name(size: int) -> str:
    return f"copyup-{size}B"


def _append(path, size):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"+")
    finally:
        os.close(fd)


def _write_middle(path, size):
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, b"cow!", size // 2)
    finally:
        os.close(fd)


def _open_rdwr(path, size):
    os.close(os.open(path, os.O_RDWR))


def _chmod(path, size):
    os.chmod(path, 0o600)  # the image has it 0644


def _truncate(path, size):
    os.truncate(path, size - 1)


OPERATIONS = {
    "append_1B": _append,
    "write_middle_4B": _write_middle,
    "open_rdwr": _open_rdwr,
    "chmod": _chmod,
    "truncate": _truncate,
    "second_append_1B": _append,
}


def read_all(path) -> None:
    """Read a file once, so its pages (in overlay2: the lower file's) are cached."""
    buf = bytearray(MiB)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


class Copyup(Workload):
    name = "copyup"
    claim = "That copy-up operation can take a while if the file is big!"
    GRID = GRID

    def specs(self, grid):
        return [
            synthetic_image(
                image_name(s), 0, 1, seed=s, extra_ops=[{"op": "file", "path": FILE, "size": s, "mode": "0644"}]
            )
            for s in grid["file_size_bytes"]
        ]

    def cases(self, ctx: Context):
        g = ctx.grid
        synced: set = set()

        def where(fs, metacopy, size):
            """The driver variant and image for a case; made on first use, inside setup, so a
            driver that can't (NotApplicable) or a missing mkfs is recorded against the case."""
            v = ctx.variant(backing=fs) if metacopy is None else ctx.variant(backing=fs, metacopy=metacopy)
            img = v.image(image_name(size))
            key = (id(v.driver), img.id)
            if key not in synced:  # the import's writeback must not land inside a timing
                sysutil.syncfs(v.backing.path)
                synced.add(key)
            return v, img

        backings = g["backing_fs"]
        if "files_on_backing" not in ctx.driver.capabilities:
            # The copy happens inside the driver's own filesystem (a thin device's, a dataset's,
            # a subvolume's), which the backing filesystem does not change: measured once, on
            # the run's own backing, and param backing_fs says which that is.
            backings = [None]
        for fs in backings:
            for size in g["file_size_bytes"]:
                for op, caches in g["ops"].items():
                    for mc in g["metacopy"].get(op, [None]):
                        for cache in caches:
                            params = {
                                "file_size_bytes": size,
                                "op": op,
                                "cache": cache,
                                "backing_fs": fs or ctx.backing.mount.fstype,
                                "metacopy": mc,
                            }
                            yield self._case(where, fs, mc, size, op, cache, params, g["reps"])

    @staticmethod
    def _case(where, fs, mc, size, op, cache, params, reps) -> Timed:
        do = OPERATIONS[op]

        def setup():
            v, img = where(fs, mc, size)
            c = v.create(img)
            try:
                path = c.mountpoint / FILE.lstrip("/")
                if op == "second_append_1B":
                    _append(path, size)  # the first append: the copy-up happens here
                if cache == "cold":
                    sysutil.drop_caches()
                else:  # clean too: a copying driver's fresh copy is still dirty in the cache
                    sysutil.syncfs(c.mountpoint)
                    read_all(path)
            except BaseException:
                v.remove(c)
                raise
            return v, c, path

        def teardown(state, result):
            v, c, _ = state
            v.remove(c)

        return Timed(
            "copyup_seconds", params, op=lambda state: do(state[2], size), setup=setup, teardown=teardown, reps=reps
        )
