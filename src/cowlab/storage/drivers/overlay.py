"""overlay: Docker's legacy overlay driver (before overlay2), kept to show what hard links cost.

Each layer is a full tree: the parent layer's tree copied with hard links (`cp -al`: every
directory and symlink is a new inode, every regular file a new link to the parent's inode),
then the layer applied in place ("apply" whiteout style: deletions and opaque directories are
carried out, so no whiteout is left in a tree). A container is an overlay mount with exactly one
lower dir, the top layer's tree. Layers are named by chain id, since a tree depends on every
layer below it.

Compare `inodes_used` with overlay2 on the same image (the `inodes` workload): legacy overlay
spends a directory inode per directory per layer, which is how Docker hosts ran out of inodes
long before they ran out of bytes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from cowlab.base import sysutil
from cowlab.base.resources import Resources
from cowlab.storage.drivers import _util as U
from cowlab.storage.drivers.base import BareMount, Container, Driver, Probe
from cowlab.store import layers as L
from cowlab.store.images import Image


class Overlay(Driver):
    name = "overlay"
    description = "legacy overlay: one lower dir, layers as hard-linked full trees (Docker's overlay)"
    capabilities = frozenset({"bare_mount", "union", "files_on_backing"})
    # the registry (docs/adding-a-driver.md): figure colour, dockerd's driver, workshop VM
    color = "#666666"
    engine = {"note": "legacy overlayfs driver: one lower dir, layers chained by hard links"}
    vagrant = None

    @classmethod
    def probe(cls) -> Probe:
        if "\toverlay\n" not in U.filesystems():
            return Probe(False, "this kernel has no overlayfs", "a kernel with CONFIG_OVERLAY_FS (modprobe overlay)")
        if not shutil.which("cp"):
            return Probe(False, "cp (GNU coreutils) not found", "sudo bash vagrant/provision/overlay.sh")
        return Probe(True)

    def import_image(self, image: Image) -> None:
        if self.has_image(image):
            return
        for d in ("layers", "images"):
            (self.home / d).mkdir(exist_ok=True)
        chains = U.chain_ids(image)
        parent = None
        for i, (digest, chain) in enumerate(zip(image.layers, chains, strict=True), 1):
            dst = self._layer(chain)
            if not (dst / "root").is_dir():
                stage = self.staging()
                h = self.res.acquire("dir", stage.mkdir, path=str(stage))
                if parent is None:
                    (stage / "root").mkdir(0o755)
                else:
                    # Docker's copyDir with hard links: dirs, symlinks copied, files linked.
                    sysutil.run(["cp", "-a", "--link", str(parent / "root"), str(stage / "root")])
                L.apply_tar(self.store.layer_path(digest), stage / "root", "apply", f"{image.name} layer {i}")
                if parent is None:
                    os.chmod(stage / "root", 0o755)
                (stage / "parent").write_text(U.chain_key(chains[i - 2]) if i > 1 else "")
                os.replace(stage, dst)
                self.res.release(h)
            parent = dst
        rec = {"layers": image.layers, "chains": chains, "top": U.chain_key(chains[-1])}
        self._write_image_record(image, rec)

    def remove_image(self, image: Image) -> None:
        used = self._forget_image(image, "chains")
        if used is None:
            return
        for chain in U.chain_ids(image):
            if chain not in used:
                sysutil.safe_rmtree(self._layer(chain), self.home)

    def _lower(self, image: Image) -> Path:
        return self.home / "layers" / json.loads(self._image_file(image).read_text())["top"] / "root"

    @staticmethod
    def _options(lower: Path, upper: Path, work: Path) -> str:
        return f"lowerdir={lower},upperdir={upper},workdir={work},index=off"

    def create(self, image: Image, res: Resources, cid: str | None = None) -> Container:
        lower = self._lower(image)
        cid = cid or self.new_id()
        merged, hs = U.union_container(
            res,
            self.home / "containers" / cid,
            ("upper", "work", "merged"),
            lambda upper, work, merged: [
                res.acquire(
                    "mount",
                    lambda: sysutil.mount("overlay", merged, "overlay", self._options(lower, upper, work)),
                    target=str(merged),
                )
            ],
        )
        return Container(cid, image.id, self.name, merged, hs)

    def bare_mount(self, image: Image) -> BareMount:
        lower = self._lower(image)
        return BareMount(
            ("upper", "work", "merged"),
            "merged",
            "overlay",
            "overlay",
            lambda cdir: self._options(lower, cdir / "upper", cdir / "work"),
        )

    def metadata(self) -> dict:
        from cowlab.storage.drivers.overlay2 import module_params

        redirect = module_params().get("redirect_dir") in ("Y", "on")
        return {
            "overlay_mount_options": self._options(Path("<top layer tree>"), Path("<upper>"), Path("<work>")),
            # as overlay2: renaming a lower directory needs redirect_dir, else EXDEV
            "rename_dir": "rename" if redirect else "exdev",
            "layer_copy": "cp -a --link (directories and symlinks copied, files hard-linked)",
        }
