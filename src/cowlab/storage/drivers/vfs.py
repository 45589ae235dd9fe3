"""vfs: every container is a full copy of its image, what copy-on-write saves us from.

The image is kept as one tree with all layers applied; creating a container copies it with
`cp -a --reflink=never`, so even on xfs or btrfs the baseline is a real copy, not a clone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cowlab.base import sysutil
from cowlab.base.resources import Resources
from cowlab.storage.drivers.base import Container, Driver, Probe, image_key
from cowlab.store import layers as L
from cowlab.store.images import Image


class Vfs(Driver):
    name = "vfs"
    description = "a full copy of the image per container (the baseline)"
    capabilities = frozenset({"xattrs", "files_on_backing"})  # cp -a keeps user.* xattrs (checked by conformance)
    # the registry (docs/adding-a-driver.md): figure colour, dockerd's driver, workshop VM
    color = "tab:orange"
    engine = {"note": "a full copy per layer and per container (no copy-on-write)"}
    vagrant = None
    COPY = ("cp", "-a", "--reflink=never")  # a real copy even on xfs or btrfs

    @classmethod
    def probe(cls) -> Probe:
        if not shutil.which("cp"):
            return Probe(False, "cp (GNU coreutils) not found", "apt-get install coreutils")
        return Probe(True)

    def _rootfs(self, image: Image) -> Path:
        return self.home / "images" / image_key(image)

    def has_image(self, image: Image) -> bool:
        return self._rootfs(image).is_dir()

    def import_image(self, image: Image) -> None:
        if self.has_image(image):
            return
        (self.home / "images").mkdir(exist_ok=True)
        stage = self.staging()
        h = self.res.acquire("dir", lambda: stage.mkdir(), path=str(stage))
        for i, d in enumerate(image.layers, 1):
            L.apply_tar(self.store.layer_path(d), stage, "apply", f"{image.name} layer {i}")
        os.chmod(stage, 0o755)
        os.replace(stage, self._rootfs(image))
        self.res.release(h)

    def remove_image(self, image: Image) -> None:
        sysutil.safe_rmtree(self._rootfs(image), self.home)

    def create(self, image: Image, res: Resources, cid: str | None = None) -> Container:
        cid = cid or self.new_id()
        cdir = self.home / "containers" / cid
        root = cdir / "rootfs"
        h = res.acquire("dir", lambda: cdir.mkdir(parents=True), path=str(cdir))
        try:
            sysutil.run([*self.COPY, str(self._rootfs(image)), str(root)])
        except BaseException:
            res.release(h)
            raise
        return Container(cid, image.id, self.name, root, [h])

    def space_needed(self, image: Image) -> int:
        return image.content_bytes

    def metadata(self) -> dict:
        return {
            "copy_command": " ".join(self.COPY),
            "cp_version": sysutil.run(["cp", "--version"]).stdout.splitlines()[0],
        }
