"""unionfs-fuse: a union of branches in a FUSE daemon, one read-write branch on top of
read-only ones — AUFS-like branches for hosts without AUFS (it is not AUFS, and not called so).

A container is `unionfs -f -o cow,hide_meta_files,allow_other upper=RW:lowerN=RO:...:lower1=RO`,
a journaled child; removal unmounts, then makes sure the daemon is gone.

Layer format. unionfs-fuse does not read overlay whiteouts (0/0 devices) or AUFS's `.wh.` files:
deletions are recorded in a meta directory at the branch root that mirrors the tree, as
`.unionfs/<path>_HIDDEN~` (`.unionfs-fuse/` in Debian 12's unionfs-fuse 1.0, whatever its man
page says: meta_name() asks the binary). Such a marker in branch i hides <path> and everything under it in
the branches below i (not in branch i itself). Each layer is therefore applied in AUFS style
(`.wh.` files kept) and translated:

- `D/.wh.NAME`           → `.unionfs/D/NAME_HIDDEN~`    (a deleted entry)
- `D/.wh..wh..opq`       → `.unionfs/D_HIDDEN~`         (an opaque dir: D stays in this layer,
                            lower content of D disappears; for the root, one marker per name
                            found in the lower branches' root)
- a directory over a lower non-directory, or a non-directory over a lower directory
  (a type change) → `.unionfs/<path>_HIDDEN~` as well: unionfs-fuse's readdir would otherwise
  merge the contents of a directory further down through the non-directory.

Type changes depend on the layers below, so layers are stored per chain id.
"""

from __future__ import annotations

import json
import os
import posixpath
import stat
import tarfile
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from cowlab.base import sysutil
from cowlab.base.resources import Resources
from cowlab.storage.drivers import _util as U
from cowlab.storage.drivers.base import Container, Driver, Probe
from cowlab.store import layers as L
from cowlab.store.images import Image

META = ".unionfs"  # upstream's name; Debian 12's unionfs-fuse 1.0 uses ".unionfs-fuse" (meta_name())
HIDETAG = "_HIDDEN~"
_meta_cache: list[str] = []


def meta_name() -> str:
    """The meta directory the installed unionfs reads: its man page says `.unionfs`, but
    builds differ (Debian 12's 1.0 uses `.unionfs-fuse`), so ask the binary itself."""
    if not _meta_cache:
        name = META
        exe = U.which("unionfs")
        if exe:
            try:
                if b".unionfs-fuse\0" in Path(exe).read_bytes():
                    name = ".unionfs-fuse"
            except OSError:
                pass
        _meta_cache.append(name)
    return _meta_cache[0]


def _marker(branch: Path, rel: str, meta: str | None = None) -> Path:
    return branch / (meta or meta_name()) / (rel + HIDETAG)


def hidden_in(branch: Path, rel: str) -> bool:
    """Whether rel, or one of its parents, carries a hide marker in branch."""
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        if os.path.lexists(_marker(branch, "/".join(parts[:i]))):
            return True
    return False


def lower_kind(lowers: list[Path], rel: str) -> str | None:
    """'dir', 'other' or None: what rel is in the union of lowers (top first)."""
    for b in lowers:
        try:
            st = os.lstat(b / rel)
            return "dir" if stat.S_ISDIR(st.st_mode) else "other"
        except (FileNotFoundError, NotADirectoryError):
            pass
        if hidden_in(b, rel):
            return None
    return None


def _hide(branch: Path, rel: str) -> None:
    m = _marker(branch, rel)
    m.parent.mkdir(parents=True, exist_ok=True)
    m.touch()


def deleted_after_creation(tar_path: Path) -> list[str]:
    """Paths a layer tar creates and then whites out (in that order): the AUFS-style extraction
    keeps both the entry and its `.wh.` file, and only the tar's order says which came last.
    (The other order, whiteout then entry, is a delete-and-recreate: the entry stays.)"""
    created: dict[str, int] = {}
    gone: list[str] = []
    with tarfile.open(tar_path, "r:") as tar:
        for i, m in enumerate(tar):
            rel = L.member_path(m.name, str(tar_path))
            base = posixpath.basename(rel)
            if base.startswith(L.WH) and base != L.OPAQUE:
                target = posixpath.join(posixpath.dirname(rel), base[len(L.WH) :])
                if target in created:
                    gone.append(target)
                    del created[target]
            elif rel:
                created[rel] = i
    return gone


def translate(branch: Path, lowers: list[Path], gone: Sequence[str] = ()) -> int:
    """Turn an AUFS-style layer dir into unionfs-fuse's format in place; returns markers made.
    `gone`: entries the layer made and then deleted (deleted_after_creation), removed first."""
    meta = meta_name()
    for rel in gone:
        p = branch / rel
        if os.path.lexists(p):
            sysutil.safe_rmtree(p, branch) if p.is_dir() and not p.is_symlink() else os.unlink(p)
    made = 0
    hidden_dirs: list[str] = []  # below these, nothing of the lower branches shows anyway
    for dirpath, dirnames, filenames in os.walk(branch):
        rel_dir = os.path.relpath(dirpath, branch)
        rel_dir = "" if rel_dir == "." else rel_dir
        if rel_dir == "":
            dirnames[:] = [d for d in dirnames if d != meta]
        under_hidden = any(rel_dir == h or rel_dir.startswith(h + "/") for h in hidden_dirs)
        names = sorted(dirnames + filenames)
        for name in names:
            full = os.path.join(dirpath, name)
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if name == L.OPAQUE:
                os.unlink(full)
                if rel_dir:
                    _hide(branch, rel_dir)
                    made += 1
                    hidden_dirs.append(rel_dir)
                else:  # the root itself can't be hidden: hide every lower root entry instead
                    for low in lowers:
                        for n in os.listdir(low):
                            if n != meta and not os.path.lexists(_marker(branch, n)):
                                _hide(branch, n)
                                made += 1
                continue
            if name.startswith(L.WH):
                os.unlink(full)
                target = name[len(L.WH) :]
                _hide(branch, f"{rel_dir}/{target}" if rel_dir else target)
                made += 1
                continue
            if under_hidden:
                continue
            here = "dir" if os.path.isdir(full) and not os.path.islink(full) else "other"
            below = lower_kind(lowers, rel)
            if below is not None and below != here and not os.path.lexists(_marker(branch, rel)):
                _hide(branch, rel)
                made += 1
                if here == "dir":
                    hidden_dirs.append(rel)
    return made


class UnionfsFuse(Driver):
    name = "unionfs-fuse"
    description = "unionfs-fuse branches (RW on top of RO) in a FUSE daemon, with -o cow"
    capabilities = frozenset({"union", "fuse", "files_on_backing"})
    # the registry (docs/adding-a-driver.md): figure colour, dockerd's driver, workshop VM
    color = "tab:olive"
    engine = None  # Docker has no unionfs-fuse driver
    vagrant = None
    deviations = {
        "chown-lower-tree": (
            "chown of a lower symlink copies it up with the current time as its mtime",
            r"/link: mtime ",
        ),
        "move-and-hardlink": (
            "a hard link made in the container to a lower file is a copy: writes "
            "through one name do not show through the other (unionfs-fuse copies "
            "up per path, it has no hard-link index)",
            r"-link: content differs",
        ),
    }

    @classmethod
    def probe(cls) -> Probe:
        ok, why = U.has_fuse()
        if not ok:
            return Probe(False, why, "a kernel with CONFIG_FUSE_FS (modprobe fuse)")
        if not U.which("unionfs"):
            return Probe(
                False,
                "unionfs-fuse is not installed (no unionfs command)",
                "sudo bash vagrant/provision/unionfs-fuse.sh",
            )
        return Probe(True, details={"version": cls._version()})

    @staticmethod
    def _version() -> str:
        v = U.pkg_version("unionfs-fuse")
        return f"unionfs-fuse {v}" if v else U.tool_version([U.which("unionfs") or "unionfs", "--version"], "unionfs")

    def import_image(self, image: Image) -> None:
        if self.has_image(image):
            return
        for d in ("layers", "images"):
            (self.home / d).mkdir(exist_ok=True)
        chains = U.chain_ids(image)
        below: list[Path] = []  # lower branches of the next layer, top first
        for i, (digest, chain) in enumerate(zip(image.layers, chains, strict=True), 1):
            dst = self._layer(chain)
            if not (dst / "diff").is_dir():
                stage = self.staging()
                h = self.res.acquire("dir", partial((stage / "diff").mkdir, parents=True), path=str(stage))
                tar = self.store.layer_path(digest)
                L.apply_tar(tar, stage / "diff", "aufs", f"{image.name} layer {i}")
                os.chmod(stage / "diff", 0o755)
                translate(stage / "diff", below, deleted_after_creation(tar))
                os.replace(stage, dst)
                self.res.release(h)
            below.insert(0, dst / "diff")
        rec = {"layers": image.layers, "chains": [U.chain_key(c) for c in chains]}
        self._write_image_record(image, rec)

    def remove_image(self, image: Image) -> None:
        used = self._forget_image(image, "chains")
        if used is None:
            return
        for chain in U.chain_ids(image):
            if U.chain_key(chain) not in used:
                sysutil.safe_rmtree(self._layer(chain), self.home)

    # use_ino: inode numbers from the branches, so hard links show as one inode
    OPTIONS = "cow,hide_meta_files,allow_other,use_ino"

    def _branches(self, image: Image, upper: Path) -> str:
        chains = json.loads(self._image_file(image).read_text())["chains"]
        ro = [f"{self.home / 'layers' / c / 'diff'}=RO" for c in reversed(chains)]  # top first
        return ":".join([f"{upper}=RW", *ro])

    def create(self, image: Image, res: Resources, cid: str | None = None) -> Container:
        cid = cid or self.new_id()
        cdir = self.home / "containers" / cid
        # stderr discarded: with hide_meta_files, unionfs-fuse 1.0 prints two debug lines
        # for every directory entry it lists, which would cost time in every readdir.
        merged, hs = U.union_container(
            res,
            cdir,
            ("upper", "merged"),
            lambda upper, merged: U.fuse_mount(
                res,
                [U.which("unionfs") or "unionfs", "-f", "-o", self.OPTIONS, self._branches(image, upper), str(merged)],
                merged,
                None,
            ),
        )
        return Container(cid, image.id, self.name, merged, hs)

    def metadata(self) -> dict:
        return {
            "unionfs_version": self._version(),
            "command": f"unionfs -f -o {self.OPTIONS} <upper>=RW:<layerN>=RO:...:<layer1>=RO <merged>",
            "whiteouts": f"{meta_name()}/<path>{HIDETAG} markers (translated from the layers' .wh. files)",
        }
