"""fuse-overlayfs: overlayfs semantics in a FUSE daemon (Docker's fuse-overlayfs driver, the
rootless engines' choice before unprivileged overlay mounts).

Layers are stored exactly as overlay2 stores them (one dir per layer, whiteouts as 0/0 character
devices, opaque dirs with trusted.overlay.opaque, which fuse-overlayfs reads), so the two can be
compared on the same bytes. A container is a `fuse-overlayfs -f` daemon that cowlab starts as a
journaled child; removing it unmounts, after which the daemon exits (and is ended by pid if not).
"""

from __future__ import annotations

import json
from pathlib import Path

from cowlab.base.resources import Resources
from cowlab.storage.drivers import _util as U
from cowlab.storage.drivers.base import Container, Probe
from cowlab.storage.drivers.overlay2 import Overlay2
from cowlab.store.images import Image


class FuseOverlayfs(Overlay2):
    name = "fuse-overlayfs"
    description = "overlay semantics in a FUSE daemon (Docker's fuse-overlayfs driver)"
    capabilities = frozenset({"union", "fuse", "files_on_backing"})
    # the registry (docs/adding-a-driver.md): figure colour, dockerd's driver, workshop VM
    color = "tab:pink"
    engine = {"binaries": ("fuse-overlayfs",), "note": "overlay in userspace through FUSE"}
    vagrant = None
    deviations = {
        "chown-lower-tree": (
            "chown of a lower symlink copies it up with the current time as its mtime "
            "(fuse-overlayfs 1.10 does not carry the symlink's mtime over)",
            r"/link: mtime ",
        )
    }
    option_names = frozenset()

    @classmethod
    def probe(cls) -> Probe:
        ok, why = U.has_fuse()
        if not ok:
            return Probe(False, why, "a kernel with CONFIG_FUSE_FS (modprobe fuse)")
        if not U.which("fuse-overlayfs"):
            return Probe(False, "fuse-overlayfs is not installed", "sudo bash vagrant/provision/fuse-overlayfs.sh")
        return Probe(True, details={"version": cls._version()})

    @staticmethod
    def _version() -> str:
        return U.tool_version(
            [U.which("fuse-overlayfs") or "fuse-overlayfs", "--version"], "fuse-overlayfs"
        ) or U.pkg_version("fuse-overlayfs")

    def _lowers(self, image: Image) -> str:
        shorts = json.loads(self._image_file(image).read_text())["lower"].split(":")
        return ":".join(str(self.home / "l" / s) for s in shorts)  # top layer first

    def _fuse_options(self, lower: str, upper: Path, work: Path) -> str:
        return f"lowerdir={lower},upperdir={upper},workdir={work}"

    def create(self, image: Image, res: Resources, cid: str | None = None) -> Container:
        lower = self._lowers(image)
        cid = cid or self.new_id()
        cdir = self.home / "containers" / cid
        merged, hs = U.union_container(
            res,
            cdir,
            ("diff", "work", "merged"),
            lambda upper, work, merged: U.fuse_mount(
                res,
                [
                    U.which("fuse-overlayfs") or "fuse-overlayfs",
                    "-f",
                    "-o",
                    self._fuse_options(lower, upper, work),
                    str(merged),
                ],
                merged,
                cdir / "daemon.log",
            ),
        )
        return Container(cid, image.id, self.name, merged, hs)

    def metadata(self) -> dict:
        return {
            "fuse_overlayfs_version": self._version(),
            # fuse-overlayfs returns EXDEV for renaming a directory from a lower layer
            # (mv(1) then copies), as kernel overlayfs without redirect_dir does
            "rename_dir": "exdev",
            "command": "fuse-overlayfs -f -o " + self._fuse_options("<lower>", Path("<upper>"), Path("<work>")),
        }
