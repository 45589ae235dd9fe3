"""composefs: one EROFS metadata image per container image over a shared, content-addressed
object store, mounted by overlayfs with the store as a data-only lower layer (kernel >= 6.5).

Built by hand from what Debian 12 has (the composefs tools, mkcomposefs and mount.composefs, are
not packaged for it), the way composefs itself works:

- Import: every layer of the image is applied, in order, to one staging tree (whiteouts and
  opaque directories applied, so the tree is the image's final filesystem). Each regular file
  with data is then moved into the object store under its sha256, objects/ab/cdef... (if that
  object already exists, from this image or any other, the copy is dropped: identical content
  is stored once on disk across all images), and replaced in the tree by a metacopy stub: a
  sparse file of the same size, owner, mode, times and user xattrs carrying
  trusted.overlay.metacopy (empty) and trusted.overlay.redirect=/ab/cdef... The stub tree is
  packed with `mkfs.erofs -zlz4` (the stubs' holes compress to almost nothing; mkfs.erofs 1.5
  keeps trusted.* xattrs).
- Mount: the metadata image on a read-only loop device, once per image; a container is
  overlayfs `lowerdir=META::OBJECTS,metacopy=on,redirect_dir=on` with its upper dir on top.
  Overlayfs takes metadata from META and data from the object the redirect names, so every
  image's copy of a file is one inode in the page cache (the claim of the composefs README that
  the `sharing` workload measures).

fs-verity digests in trusted.overlay.metacopy (and overlay's verity=require) are not used: they
need a backing filesystem with fs-verity enabled, which cowlab's backings are not.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from cowlab.base import sysutil
from cowlab.base.resources import Handle, Resources
from cowlab.storage.drivers import _util as U
from cowlab.storage.drivers.base import BareMount, Container, Probe, image_key
from cowlab.storage.drivers.erofs import (
    MKFS,
    erofs_probe,
    kernel_version,
    make_image,
    mkfs_version,
    mount_image,
    unmount_image,
)
from cowlab.storage.drivers.overlay2 import Overlay2
from cowlab.store import layers as L
from cowlab.store.images import Image

MIN_KERNEL = (6, 5)  # overlayfs data-only lower layers ("lowerdir=A::B")
METACOPY = "trusted.overlay.metacopy"
REDIRECT = "trusted.overlay.redirect"
# The stubs' holes read as zeros, which lz4 packs into a few bytes per block (64 MiB of stub ≈
# 300 KiB of image). Not --chunksize, which would store holes as index entries only: erofs-utils
# 1.5 stages chunked data in an O_TMPFILE under a hard-coded /tmp and copy_file_range()s it into
# the image, which fails (EXDEV, printed as "Could not format the device: EIO") whenever the image
# is on another filesystem than /tmp, as on cowlab's loop backings.
STUBS = ["-zlz4"]


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(1 << 20)
        while n := f.readinto(buf):
            h.update(memoryview(buf)[:n])
    return h.hexdigest()


def _kept_xattrs(path: str) -> dict[str, bytes]:
    return {
        k: os.getxattr(path, k, follow_symlinks=False)
        for k in os.listxattr(path, follow_symlinks=False)
        if k.startswith(("user.", "security."))
    }


def stub_tree(tree: Path, objects: Path) -> list[str]:
    """Turn every regular file with data under tree into a metacopy stub whose data lives in
    objects/<sha[:2]>/<sha[2:]>; returns the object names the tree refers to. Hard links stay
    hard links (of the stub), and every directory keeps its times."""
    dir_times = {}
    groups: dict[int, list[str]] = {}  # inode → its paths, found before any of them changes
    for dp, _dns, fns in os.walk(tree):
        st = os.lstat(dp)
        dir_times[dp] = (st.st_atime_ns, st.st_mtime_ns)
        for fn in fns:
            p = os.path.join(dp, fn)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_size > 0:
                groups.setdefault(st.st_ino, []).append(p)
    used: set[str] = set()
    for paths in groups.values():
        p = paths[0]
        st = os.lstat(p)
        digest = _sha256(p)
        name = f"{digest[:2]}/{digest[2:]}"
        xattrs = _kept_xattrs(p)
        obj = objects / name
        if obj.exists():
            os.unlink(p)
        else:
            obj.parent.mkdir(exist_ok=True)
            os.rename(p, obj)
            # the object is data only: overlayfs takes metadata from the stub
            os.chown(obj, 0, 0)
            os.chmod(obj, 0o644)
            for k in xattrs:
                os.removexattr(obj, k)
        used.add(name)
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.ftruncate(fd, st.st_size)
            os.fchown(fd, st.st_uid, st.st_gid)
            for k, v in xattrs.items():
                os.setxattr(fd, k, v)
            os.setxattr(fd, METACOPY, b"")
            os.setxattr(fd, REDIRECT, f"/{name}".encode())
            os.fchmod(fd, stat.S_IMODE(st.st_mode))  # after chown, which clears setuid
        finally:
            os.close(fd)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        for other in paths[1:]:  # the other hard links: to the stub
            os.unlink(other)
            os.link(p, other)
    for dp, t in dir_times.items():
        os.utime(dp, ns=t, follow_symlinks=False)
    return sorted(used)


class Composefs(Overlay2):
    name = "composefs"
    # the registry (docs/adding-a-driver.md)
    color = "#000080"
    engine = None  # composefs is podman/containers-storage's and containerd's, not dockerd's
    vagrant = None  # no workshop VM of its own: the overlay2 machine has the tools
    description = (
        "an EROFS metadata image per image over a shared content-addressed object store, "
        "overlayfs with a data-only lower layer (composefs by hand)"
    )
    capabilities = frozenset({"bare_mount", "union", "xattrs", "files_on_backing"})
    max_layers = None  # the image is flattened into one metadata image
    services = True  # the metadata mounts: kept containers need them after the command that made them
    # metacopy and redirect_dir are what composefs is made of: always on, not options
    option_names = frozenset({"volatile", "idmap"})

    @classmethod
    def probe(cls) -> Probe:
        bad = erofs_probe(MIN_KERNEL)
        if bad:
            if "older than" in bad.reason:
                bad.reason += " (overlayfs data-only lower layers, lowerdir=A::B, came in 6.5)"
            return bad
        return Probe(True, details={"mkfs_erofs": mkfs_version(), "kernel": os.uname().release})

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._mounted: dict[str, list[Handle]] = {}
        self.objects = self.home / "objects"
        self.objects.mkdir(exist_ok=True)

    def _meta_dir(self, image: Image) -> Path:
        return self.home / "meta" / image_key(image)

    def import_image(self, image: Image) -> None:
        if self.has_image(image):
            self._ensure_mounted(image)
            return
        (self.home / "meta").mkdir(exist_ok=True)
        stage = self.staging()
        h = self.res.acquire("dir", lambda: (stage / "tree").mkdir(parents=True), path=str(stage))
        try:
            for d in image.layers:
                L.apply_tar(self.store.layer_path(d), stage / "tree", "apply")
            used = stub_tree(stage / "tree", self.objects)
            make_image(stage / "tree", stage / "meta.erofs", STUBS)
            sysutil.safe_rmtree(stage / "tree", stage)
            (stage / "mnt").mkdir()
            mdir = self._meta_dir(image)
            if mdir.exists():  # a record-less leftover of an interrupted import
                unmount_image(mdir / "mnt", mdir / "meta.erofs")
                sysutil.safe_rmtree(mdir, self.home)
            os.replace(stage, mdir)
        finally:
            self.res.release(h)
        self._write_image_record(image, {"layers": image.layers, "objects": used})
        self._ensure_mounted(image)

    def _ensure_mounted(self, image: Image) -> Path:
        mdir = self._meta_dir(image)
        key = image_key(image)
        if key not in self._mounted and not sysutil.is_mountpoint(mdir / "mnt"):
            self._mounted[key] = mount_image(self.res, mdir / "meta.erofs", mdir / "mnt")
        return mdir / "mnt"

    def remove_image(self, image: Image) -> None:
        f = self._image_file(image)
        if not f.exists():
            return
        mine = set(json.loads(f.read_text())["objects"])
        used = self._forget_image(image, "objects") or set()
        mdir = self._meta_dir(image)
        hs = self._mounted.pop(image_key(image), None)
        if hs:
            for h in reversed(hs):
                self.res.release(h)
        else:
            unmount_image(mdir / "mnt", mdir / "meta.erofs")
        sysutil.safe_rmtree(mdir, self.home)
        for name in mine - used:  # objects no remaining image refers to
            sysutil.ignore_enoent(os.unlink, self.objects / name)

    def _options(self, lower: str, upper: str | Path, work: str | Path) -> str:
        """lower: "META::OBJECTS" (the object store a data-only lower layer)."""
        opts = [
            f"lowerdir={lower}",
            f"upperdir={upper}",
            f"workdir={work}",
            "metacopy=on",
            "redirect_dir=on",
            "index=off",
        ]
        if self.options.get("volatile"):
            opts.append("volatile")
        return ",".join(opts)

    def create(self, image: Image, res: Resources, cid: str | None = None) -> Container:
        meta = self._ensure_mounted(image)
        cid = cid or self.new_id()
        cdir = self.home / "containers" / cid

        def mount(upper, work, merged):
            hs, where, lower = [], self.home, f"{meta}::{self.objects}"
            if self.options.get("idmap"):
                _, hs = self._idmapped_lowers(res, cdir, [meta, self.objects], upper)
                where, lower = cdir / "ids", "0::1"
            try:
                hs.append(
                    res.acquire(
                        "mount",
                        lambda: self._mount(self._options(lower, upper, work), merged, where),
                        target=str(merged),
                    )
                )
            except BaseException:
                for h in reversed(hs):
                    res.release(h)
                raise
            return hs

        merged, hs = U.union_container(res, cdir, ("diff", "work", "merged"), mount)
        return Container(cid, image.id, self.name, merged, hs)

    def bare_mount(self, image: Image) -> BareMount:
        meta = self._ensure_mounted(image)
        return BareMount(
            ("diff", "work", "merged"),
            "merged",
            "overlay",
            "overlay",
            lambda cdir: self._options(f"{meta}::{self.objects}", cdir / "diff", cdir / "work"),
        )

    def objects_bytes(self) -> int:
        return sum(e.stat().st_blocks * 512 for e in self.objects.rglob("*") if e.is_file())

    def metadata(self) -> dict:
        return {
            "overlay_mount_options": self._options("<meta>::<objects>", Path("<upper>"), Path("<work>")),
            "mkfs_erofs": mkfs_version(),
            "mkfs_erofs_options": " ".join(MKFS + STUBS),
            "kernel": ".".join(map(str, kernel_version())),
            "rename_dir": "rename",  # redirect_dir=on
            "fs_verity": False,
        }
