"""aufs: the original union filesystem of Docker, where the kernel has it.

Layers are extracted once each in AUFS's own format ("aufs" whiteout style: `.wh.NAME` files
for deletions, `.wh..wh..opq` for opaque directories), shared by every image that has them. A
container is `mount -t aufs -o br:<upper>=rw:<layerN>=ro+wh:...:<layer1>=ro+wh` (one writable
branch on top, read-only branches below that may hold whiteouts), with branches that do not fit
in the page of mount options added by `remount,append:` one at a time, as Docker's aufs driver
does. Options after the branches: `dio` and an xino file on a tmpfs of the container's own (as
Docker's driver kept it on /dev/shm: AUFS refuses xino files on xfs, btrfs and overlay).

No Debian kernel has aufs (nor this project's development kernel): the probe then says what the
kernel lacks, and the run layer (cowlab.run.vmroute) runs the driver in the kernel VM on the AUFS
kernel cowlab builds (cowlab.storage.kernels.aufs, `sudo nox -s aufs-kernel`), emulated. The
Vagrant `aufs` machine (Ubuntu 20.04, whose kernel ships aufs) runs it natively.
"""

from __future__ import annotations

import json
import os
import platform
from functools import partial
from pathlib import Path

from cowlab.base import sysutil
from cowlab.base.resources import Resources
from cowlab.storage.drivers import _util as U
from cowlab.storage.drivers.base import Container, Driver, Probe
from cowlab.store import layers as L
from cowlab.store.images import Image

MS_REMOUNT = 32
HINT = (
    "cowlab's AUFS kernel in the kernel VM: `sudo nox -s aufs-kernel` (builds it once, minutes), or the "
    "Vagrant aufs machine (Ubuntu 20.04, whose kernel ships aufs): `cd vagrant && vagrant up aufs`"
)


class Aufs(Driver):
    name = "aufs"
    description = "AUFS branches (rw on top, ro+wh below) with .wh. whiteouts (Docker's aufs driver)"
    # rename_dir_exdev: renaming a directory that exists in a read-only branch returns EXDEV
    # (AUFS's `dirren` option lifts that; Docker's driver never set it), as overlay without
    # redirect_dir: `mv` then copies the tree.
    capabilities = frozenset({"union", "files_on_backing", "rename_dir_exdev"})
    # the registry (docs/adding-a-driver.md): figure colour, dockerd's driver, workshop VM
    color = "tab:green"
    engine = {"note": "needs a kernel with AUFS"}
    vagrant = {
        "os": "ubuntu",
        "memory": 2048,
        "cpus": 2,
        "disk": False,
        "storage": "none",
        "scripts": ["aufs-focal.sh"],
    }  # aufs-focal.sh runs aufs.sh
    max_layers = 127  # aufs's default branch limit (CONFIG_AUFS_BRANCH_MAX_127)
    vm_route = True  # where the kernel has no aufs, the kernel VM on the AUFS kernel has it
    vm_kernel = "aufs"

    @classmethod
    def probe(cls) -> Probe:
        if "\taufs\n" not in U.filesystems():
            return Probe(
                False,
                f"aufs not in this kernel ({platform.release()}; no Debian kernel has it)",
                HINT,
                details={"kernel_lacks": "aufs"},
            )
        return Probe(True, details={"aufs_version": _aufs_version()})

    def _layer(self, digest: str) -> Path:
        return self.home / "layers" / digest.split(":")[-1]

    def import_image(self, image: Image) -> None:
        if self.has_image(image):
            return
        for d in ("layers", "images"):
            (self.home / d).mkdir(exist_ok=True)
        for i, digest in enumerate(image.layers, 1):
            dst = self._layer(digest)
            if (dst / "diff").is_dir():
                continue
            stage = self.staging()
            h = self.res.acquire("dir", partial((stage / "diff").mkdir, parents=True), path=str(stage))
            L.apply_tar(self.store.layer_path(digest), stage / "diff", "aufs", f"{image.name} layer {i}")
            os.chmod(stage / "diff", 0o755)
            os.replace(stage, dst)
            self.res.release(h)
        self._write_image_record(image, {"layers": image.layers})

    def remove_image(self, image: Image) -> None:
        used = self._forget_image(image, "layers")
        if used is None:
            return
        for d in image.layers:
            if d not in used:
                sysutil.safe_rmtree(self._layer(d), self.home)

    def _mount(self, upper: Path, lowers: list[Path], target: Path, xino: Path) -> None:
        """br: with as many branches as fit in one page, then remount,append: for the rest."""
        tail = f",dio,xino={xino}"
        data = f"br:{upper}=rw"
        rest = list(lowers)
        while rest and len(data) + len(f":{rest[0]}=ro+wh") + len(tail) < sysutil.PAGE_SIZE - 1:
            data += f":{rest.pop(0)}=ro+wh"
        sysutil.mount("none", target, "aufs", data + tail)
        for b in rest:
            sysutil.mount("none", target, "aufs", f"append:{b}=ro+wh", MS_REMOUNT)

    def _mounts(self, res: Resources, lowers: list[Path], upper: Path, xdir: Path, merged: Path) -> list:
        """The xino file (AUFS's inode-number table) can't live on xfs or btrfs (AUFS refuses
        their i_size handling) nor on overlay; Docker's driver kept it on tmpfs (/dev/shm). Each
        container gets a small tmpfs of its own inside its directory, then the union."""
        hx = res.acquire(
            "mount", partial(sysutil.mount, "tmpfs", xdir, "tmpfs", "size=64m,mode=0700"), target=str(xdir)
        )
        try:
            return [
                hx,
                res.acquire("mount", partial(self._mount, upper, lowers, merged, xdir / "xino"), target=str(merged)),
            ]
        except BaseException:
            res.release(hx)
            raise

    def create(self, image: Image, res: Resources, cid: str | None = None) -> Container:
        layers = json.loads(self._image_file(image).read_text())["layers"]
        # Top layer first. A layer that is in the image twice (two identical layers: cowlab keeps a
        # layer once per digest) is one branch, at its topmost place: AUFS refuses a branch given
        # twice, and the lower copy adds nothing the upper one does not (Docker's layer ids were
        # per position, so it never met this).
        lowers = list(dict.fromkeys(self._layer(d) / "diff" for d in reversed(layers)))
        cid = cid or self.new_id()
        cdir = self.home / "containers" / cid
        merged, hs = U.union_container(res, cdir, ("diff", "xino", "mnt"), partial(self._mounts, res, lowers))
        return Container(cid, image.id, self.name, merged, hs)

    def metadata(self) -> dict:
        return {
            "aufs_mount": "br:<upper>=rw:<layerN>=ro+wh:...,dio,xino=<container>/xino/xino on tmpfs "
            "(+ remount,append:)",
            "aufs_version": _aufs_version(),
        }


def _aufs_version() -> str:
    try:
        return Path("/sys/module/aufs/version").read_text().strip()
    except OSError:
        return ""
