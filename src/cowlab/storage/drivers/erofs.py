"""erofs: each layer a read-only EROFS image, loop-mounted, stacked by overlayfs (the design of
containerd's EROFS snapshotter, built from what Debian 12 has).

Import: a layer tar is applied to a staging directory exactly as overlay2 applies it (whiteouts
as 0/0 character devices, opaque directories as trusted.overlay.opaque; mkfs.erofs 1.5 keeps
both, and keeps trusted.* xattrs by default), then packed with `mkfs.erofs --preserve-mtime`
(uncompressed, as containerd makes them) into one image file, and the staging tree goes away:
a layer costs its image file only. `import_seconds` therefore includes the tar apply and the
mkfs, which is what containerd's "unpack" of an EROFS layer is (containerd's docs report
unpacking ~14% faster for the WordPress image with erofs-utils 1.8.2; its differ writes the
image straight from the tar with `mkfs.erofs --tar`, which erofs-utils 1.5 does not have).

Each layer image is attached to a read-only loop device and mounted once, shared by every
container that has the layer (one mount, so one page cache per layer, as with overlay2's
directories); the loop and mount are journaled in the driver's resources, which for
`cowlab container create` are a persistent owner (services), so kept containers keep them.
A container is an overlay of the layer mounts (Docker's short links, as overlay2) with its own
upper dir on the backing filesystem on top.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from cowlab.base import sysutil
from cowlab.base.errors import CowlabError
from cowlab.base.resources import Handle, Resources
from cowlab.storage.drivers import _util as U
from cowlab.storage.drivers.base import BareMount, Container, Probe
from cowlab.storage.drivers.overlay2 import OVL_MAX_STACK, Overlay2
from cowlab.store import layers as L
from cowlab.store.images import Image

MS_RDONLY = 1
MKFS = ["--quiet", "--preserve-mtime"]


def kernel_version() -> tuple[int, int]:
    rel = os.uname().release
    parts = rel.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return 0, 0


def erofs_probe(min_kernel: tuple[int, int] = (5, 4)) -> Probe | None:
    """An unavailable Probe if this host cannot make and mount EROFS images, else None."""
    fs = U.filesystems()
    if "\toverlay\n" not in fs:
        return Probe(False, "this kernel has no overlayfs", "a kernel with CONFIG_OVERLAY_FS (modprobe overlay)")
    if kernel_version() < min_kernel:
        return Probe(
            False,
            f"kernel {os.uname().release} is older than {min_kernel[0]}.{min_kernel[1]}",
            f"a kernel >= {min_kernel[0]}.{min_kernel[1]} (e.g. Debian 12's backports kernel)",
        )
    if "\terofs\n" not in fs:
        return Probe(
            False,
            "this kernel has no EROFS (no erofs in /proc/filesystems)",
            "a kernel with CONFIG_EROFS_FS (modprobe erofs)",
        )
    if not U.which("mkfs.erofs"):
        return Probe(False, "mkfs.erofs is not installed", "sudo bash vagrant/provision/erofs.sh")
    if not U.which("losetup"):
        return Probe(False, "losetup is not installed", "sudo apt-get install mount")
    return None


def mkfs_version() -> str:
    return U.tool_version([U.which("mkfs.erofs") or "mkfs.erofs"], "mkfs.erofs") or U.pkg_version("erofs-utils")


def make_image(tree: Path, out: Path, extra: Sequence[str] = ()) -> None:
    """mkfs.erofs of tree into out (a new file)."""
    cp = sysutil.run([U.which("mkfs.erofs") or "mkfs.erofs", *MKFS, *extra, str(out), str(tree)], check=False)
    if cp.returncode != 0:
        raise CowlabError(f"mkfs.erofs failed for {tree}: {(cp.stderr or cp.stdout).strip()[-400:]}")


def mount_image(res: Resources, image_file: Path, target: Path) -> list[Handle]:
    """Attach image_file to a read-only loop device and mount its EROFS at target (an existing
    directory), both journaled in res: released, the mount goes first, then the loop."""
    hl = res.add("loop", file=str(image_file))
    try:
        dev = sysutil.run(["losetup", "--find", "--show", "--read-only", str(image_file)]).stdout.strip()
        res.update(hl, device=dev)
        hm = res.acquire("mount", lambda: sysutil.mount(dev, target, "erofs", "", MS_RDONLY), target=str(target))
    except BaseException:
        res.release(hl)
        raise
    return [hl, hm]


def unmount_image(target: Path, image_file: Path) -> None:
    """Undo mount_image when its handles are not at hand (another command journaled them under a
    persistent owner): unmount, then detach the loop of exactly this file. The journal entries
    left behind release as no-ops."""
    if sysutil.is_mountpoint(target):
        sysutil.umount(target)
    for dev, f in sysutil.loop_devices().items():
        if f == str(image_file):
            sysutil.run(["losetup", "-d", dev], check=False)


class Erofs(Overlay2):
    name = "erofs"
    # the registry (docs/adding-a-driver.md)
    color = "#1b9e77"
    engine = None  # containerd's EROFS snapshotter, not a dockerd storage driver
    vagrant = None  # no workshop VM of its own: the overlay2 machine has the tools
    description = "each layer an EROFS image on a loop device, stacked by overlayfs (containerd's EROFS snapshotter)"
    capabilities = frozenset({"bare_mount", "union", "xattrs", "files_on_backing"})
    max_layers = OVL_MAX_STACK
    services = True  # the layer mounts: kept containers need them after the command that made them
    LAYER_ROOT = "mnt"

    @classmethod
    def probe(cls) -> Probe:
        bad = erofs_probe()
        if bad:
            return bad
        return Probe(True, details={"mkfs_erofs": mkfs_version(), "kernel": os.uname().release})

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._mounted: dict[str, list[Handle]] = {}

    def _unpack_layer(self, digest: str, stage: Path) -> None:
        """The layer as an EROFS image (and the dir it is mounted on); the tree it is made from
        goes once packed."""
        (stage / "tree").mkdir()
        L.apply_tar(self.store.layer_path(digest), stage / "tree", "overlay")
        make_image(stage / "tree", stage / "layer.erofs")
        sysutil.safe_rmtree(stage / "tree", stage)
        (stage / "mnt").mkdir()

    def _ensure_mounted(self, digests) -> None:
        for d in dict.fromkeys(digests):
            mnt = self._layer_dir(d) / "mnt"
            if d in self._mounted or sysutil.is_mountpoint(mnt):
                continue  # (mounted by an earlier command, under the persistent owner)
            self._mounted[d] = mount_image(self.res, self._layer_dir(d) / "layer.erofs", mnt)

    def import_image(self, image: Image) -> None:
        super().import_image(image)
        self._ensure_mounted(image.layers)  # part of making the layers usable, so of import_seconds

    def remove_image(self, image: Image) -> None:
        used = self._forget_image(image, "layers")
        if used is None:
            return
        for d in image.layers:
            if d in used:
                continue
            ldir = self._layer_dir(d)
            hs = self._mounted.pop(d, None)
            if hs:
                for h in reversed(hs):
                    self.res.release(h)
            else:
                unmount_image(ldir / "mnt", ldir / "layer.erofs")
            if (ldir / "link").exists():
                sysutil.ignore_enoent(os.unlink, self.home / "l" / (ldir / "link").read_text())
            sysutil.safe_rmtree(ldir, self.home)

    def create(self, image: Image, res: Resources, cid: str | None = None) -> Container:
        self._ensure_mounted(json.loads(self._image_file(image).read_text())["layers"])
        return super().create(image, res, cid)

    def bare_mount(self, image: Image) -> BareMount:
        self._ensure_mounted(json.loads(self._image_file(image).read_text())["layers"])
        return super().bare_mount(image)

    def metadata(self) -> dict:
        return super().metadata() | {
            "mkfs_erofs": mkfs_version(),
            "mkfs_erofs_options": " ".join(MKFS),
            "layer_mount": "erofs on a read-only loop device, one per layer",
        }
