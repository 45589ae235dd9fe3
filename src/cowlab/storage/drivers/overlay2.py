"""overlay2: kernel overlayfs with one lower dir per image layer, as Docker's overlay2 driver.

Each layer is extracted once (whiteouts as 0/0 character devices, opaque dirs as the
trusted.overlay.opaque xattr) and shared by every image that has it. Lower dirs are named by
short links in home/l and the mount is made from inside that directory, Docker's trick to fit
many layers into the one page of mount options: 500 layers need 3.5 KiB.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import ClassVar

from cowlab.base import sysutil
from cowlab.base.errors import CowlabError
from cowlab.base.resources import Resources
from cowlab.storage.drivers import _util as U
from cowlab.storage.drivers import idmap as IM
from cowlab.storage.drivers.base import BareMount, Container, Driver, Probe
from cowlab.store import layers as L
from cowlab.store.images import Image

# fs/overlayfs/params.h: OVL_MAX_STACK. The kernel refuses more lower layers than this.
OVL_MAX_STACK = 500


class Overlay2(Driver):
    name = "overlay2"
    description = "kernel overlayfs, one lower dir per layer (Docker's overlay2)"
    capabilities = frozenset({"bare_mount", "union", "xattrs", "files_on_backing"})  # xattrs: user.* kept (conformance)
    # the registry (docs/adding-a-driver.md): figure colour, dockerd's driver, workshop VM
    # (typed as Driver's, which mypy would otherwise narrow to these values: erofs, composefs
    # and fuse-overlayfs derive from this class and set None)
    color = "tab:blue"
    engine: ClassVar[dict | None] = {"note": "overlayfs, up to 128 lower layers per mount (multi-lower)"}
    vagrant: ClassVar[dict | None] = {
        "os": "debian",
        "memory": 2048,
        "cpus": 2,
        "disk": False,
        "storage": "none",
        "scripts": ["overlay2.sh"],
    }
    max_layers: ClassVar[int | None] = OVL_MAX_STACK
    # Overlay features a workload may switch (ctx.variant(redirect_dir=True)); None or absent
    # leaves the kernel's default (the module parameters).
    # idmap=INSIDE:OUTSIDE:COUNT: containers on idmapped lower layers (see drivers/idmap.py).
    option_names = frozenset({"metacopy", "redirect_dir", "volatile", "idmap"})
    LAYER_ROOT = "diff"  # what a short link names inside a layer's dir

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        # --opt metacopy=off arrives as the string "off": make every feature flag a bool
        self.options = {k: _flag(k, v) if k in FLAGS else v for k, v in self.options.items()}

    @classmethod
    def check_options(cls, options: dict, here: bool = True) -> None:
        super().check_options(options, here)
        for k in FLAGS & set(options):
            _flag(k, options[k])
        if options.get("idmap"):
            IM.parse(options["idmap"])
            why = IM.supported()
            if why:
                raise CowlabError(f"option idmap: {why}")

    @classmethod
    def probe(cls) -> Probe:
        if "\toverlay\n" not in Path("/proc/filesystems").read_text():
            return Probe(False, "this kernel has no overlayfs", "a kernel with CONFIG_OVERLAY_FS (modprobe overlay)")
        return Probe(True, details={"params": module_params()})

    # --- layers ----------------------------------------------------------------------------
    def _layer_dir(self, digest: str) -> Path:
        return self.home / "layers" / digest.split(":")[-1]

    def _short(self, digest: str) -> str:
        # 6 chars from the digest; on a clash (another layer took the name) slide the window.
        h = hashlib.sha256(digest.encode()).hexdigest()
        links = self.home / "l"
        for i in range(0, 58):
            s = h[i : i + 6]
            p = links / s
            want = f"../layers/{digest.split(':')[-1]}/{self.LAYER_ROOT}"
            if not os.path.lexists(p) or os.readlink(p) == want:
                return s
        raise CowlabError("no free short link name")  # 58 clashes in a row: not going to happen

    def _import_layer(self, digest: str) -> str:
        ldir = self._layer_dir(digest)
        link_file = ldir / "link"
        if link_file.exists():
            return link_file.read_text()
        (self.home / "layers").mkdir(exist_ok=True)
        (self.home / "l").mkdir(exist_ok=True)
        stage = self.staging()
        h = self.res.acquire("dir", lambda: stage.mkdir(parents=True), path=str(stage))
        self._unpack_layer(digest, stage)
        short = self._short(digest)
        (stage / "link").write_text(short)
        os.replace(stage, ldir)
        self.res.release(h)
        lnk = self.home / "l" / short
        if not os.path.lexists(lnk):
            os.symlink(f"../layers/{digest.split(':')[-1]}/{self.LAYER_ROOT}", lnk)
        return short

    def _unpack_layer(self, digest: str, stage: Path) -> None:
        """The layer in this driver's own form inside its staging dir: here the tree, as diff/."""
        (stage / "diff").mkdir()
        L.apply_tar(self.store.layer_path(digest), stage / "diff", "overlay")

    def import_image(self, image: Image) -> None:
        if self.has_image(image):
            return
        if len(image.layers) > OVL_MAX_STACK:
            raise CowlabError(
                f"image {image.name} has {len(image.layers)} layers; overlayfs stacks at "
                f"most {OVL_MAX_STACK} lower layers (OVL_MAX_STACK)"
            )
        shorts = [self._import_layer(d) for d in image.layers]
        (self.home / "images").mkdir(exist_ok=True)
        # Top layer first. A layer listed twice (e.g. two empty layers, which have one digest)
        # would be the same lower dir twice, which overlayfs refuses (ELOOP); only its topmost
        # occurrence matters, since an identical layer above shadows everything the lower copy
        # does, so the others are dropped.
        rec = {"layers": image.layers, "lower": ":".join(dict.fromkeys(reversed(shorts)))}
        self._write_image_record(image, rec)

    def remove_image(self, image: Image) -> None:
        self.__dict__.get("_lower_cache", {}).pop(image.id, None)
        used = self._forget_image(image, "layers")
        if used is None:
            return
        for d in image.layers:
            if d in used:
                continue
            ldir = self._layer_dir(d)
            if (ldir / "link").exists():
                sysutil.ignore_enoent(os.unlink, self.home / "l" / (ldir / "link").read_text())
            sysutil.safe_rmtree(ldir, self.home)

    # --- containers ------------------------------------------------------------------------
    def _options(self, lower: str, upper: str | Path, work: str | Path) -> str:
        opts = [f"lowerdir={lower}", f"upperdir={upper}", f"workdir={work}"]
        # index=off as Docker sets it: layers are shared by many mounts at once.
        opts.append("index=off")
        return ",".join(opts + self._feature_options())

    def _feature_options(self) -> list[str]:
        """The overlay features this instance's options switch on or off."""
        out = []
        for k in ("redirect_dir", "metacopy"):
            if self.options.get(k) is not None:
                out.append(f"{k}={'on' if self.options[k] else 'off'}")
        if self.options.get("volatile"):
            out.append("volatile")  # no syncs reach the upper filesystem (kernel 5.10+)
        return out

    def _mount(self, data: str, target: str | Path, where: Path | None = None) -> None:
        cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.chdir(where or self.home / "l")  # lower dirs are relative to here
            sysutil.mount("overlay", target, "overlay", data)
        finally:
            os.fchdir(cwd)
            os.close(cwd)

    def _lower(self, image: Image) -> str:
        # Cached: an image's record never changes while it is imported (remove_image forgets it).
        cache = self.__dict__.setdefault("_lower_cache", {})
        if image.id not in cache:
            cache[image.id] = json.loads(self._image_file(image).read_text())["lower"]
        return cache[image.id]

    def create(self, image: Image, res: Resources, cid: str | None = None) -> Container:
        lower = self._lower(image)
        cid = cid or self.new_id()
        if not self.options.get("idmap"):
            # Paths as strings: pathlib's joins cost more than the mkdirs on this path.
            c = f"{self.home}/containers/{cid}"
            up, wk, mg = f"{c}/diff", f"{c}/work", f"{c}/merged"
            data = self._options(lower, up, wk)

            def make():
                os.mkdir(c)
                os.mkdir(up, 0o755)  # the container's root: 0755 whatever the umask leaves...
                os.mkdir(wk)
                os.mkdir(mg)
                if os.stat(up).st_mode & 0o777 != 0o755:  # ...and a chmod (an inode write) only
                    os.chmod(up, 0o755)  # where the umask took bits away (e.g. 077)
                self._mount(data, mg)

            # One entry for the directories and the mount (its releaser unmounts, then removes the
            # directory), and in a bench none at all: the run's containers/ tree covers it
            # (_containers). mount_floor measures what is left against the kernel's floor.
            h = res.acquire("mount", make, target=mg, dir=c, covered_by=self._containers(res))
            return Container(cid, image.id, self.name, Path(mg), [h])

        # idmap: each lower layer an idmapped mount of its own, then the overlay over them
        cdir = self.home / "containers" / cid

        def mount(upper, work, merged):
            ids, hs = self._idmapped_lowers(res, cdir, [self.home / "l" / s for s in lower.split(":")], upper)
            try:
                hs.append(
                    res.acquire(
                        "mount",
                        lambda: self._mount(self._options(ids, upper, work), merged, cdir / "ids"),
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

    def _containers(self, res: Resources):
        """Make home/containers once. In a bench (defer_free: this driver's home is the run's
        own) it is journaled as one "tree" whose releaser unmounts and deletes whatever is
        below it, so a container needs no journal entry of its own: no file written and
        unlinked per container, and none for the umount's writeback of the upper filesystem to
        flush (mount_floor measured that as most of cowlab's cost). Returns that entry, or None."""
        tree = self.__dict__.setdefault("_trees", {})
        if id(res) not in tree:
            d = self.home / "containers"
            if self.defer_free and not d.exists():
                tree[id(res)] = res.acquire("tree", lambda: d.mkdir(), path=str(d))
            else:
                d.mkdir(exist_ok=True)
                tree[id(res)] = None
        return tree[id(res)]

    def _idmapped_lowers(self, res: Resources, cdir: Path, lowers: list[Path], upper: Path):
        """Option idmap: each lower layer cloned as an idmapped mount under cdir/ids/N (overlayfs
        itself cannot be idmapped), and the empty upper dir owned by the mapped root, so the
        container's root is the user namespace's. Returns (lowerdir relative to cdir/ids, handles)."""
        if getattr(self, "_userns", None) is None:
            self._userns = IM.userns_fd(self.res, self.options["idmap"])
        inside, outside, _ = IM.parse(self.options["idmap"])
        ids = cdir / "ids"
        ids.mkdir()
        hs = []
        try:
            for i, p in enumerate(lowers):
                (ids / str(i)).mkdir()
                hs.append(IM.idmapped_mount(res, p, ids / str(i), self._userns))
            os.chown(upper, outside - inside, outside - inside)
        except BaseException:
            for h in reversed(hs):
                res.release(h)
            raise
        return ":".join(str(i) for i in range(len(lowers))), hs

    # --- bare mount, for the harness floor -------------------------------------------------
    def bare_mount(self, image: Image) -> BareMount:
        lower = self._lower(image)
        return BareMount(
            ("diff", "work", "merged"),
            "merged",
            "overlay",
            "overlay",
            lambda cdir: self._options(lower, cdir / "diff", cdir / "work"),
            cwd=self.home / "l",  # lower dirs are relative to here, as in _mount
        )

    def metadata(self) -> dict:
        params = module_params()
        return {
            "overlay_mount_options": self._options("<lower>", Path("<upper>"), Path("<work>")),
            "overlay_params": params,
            # Renaming a directory that comes from a lower layer needs redirect_dir; without it
            # overlayfs returns EXDEV (and mv(1) falls back to copy + delete). The conformance
            # suite checks this declaration.
            "rename_dir": "rename" if self._redirect_dir(params) else "exdev",
        }

    def _redirect_dir(self, params: dict) -> bool:
        """Whether this instance's mounts rename lower directories (metacopy=on implies it)."""
        if self.options.get("redirect_dir") is not None:
            return bool(self.options["redirect_dir"])
        return bool(self.options.get("metacopy")) or params.get("redirect_dir") in ("Y", "on")


FLAGS = frozenset({"metacopy", "redirect_dir", "volatile"})
_ON, _OFF = ("on", "true", "yes", "1", "y"), ("off", "false", "no", "0", "n")


def _flag(name: str, v) -> bool | None:
    if v is None or isinstance(v, bool):
        return v
    t = str(v).strip().lower()
    if t in _ON or t in _OFF:
        return t in _ON
    raise CowlabError(f"option {name}={v!r}: say on or off")


def module_params() -> dict:
    d = Path("/sys/module/overlay/parameters")
    out = {}
    if d.is_dir():
        for p in sorted(d.iterdir()):
            try:
                out[p.name] = p.read_text().strip()
            except OSError:
                pass
    return out
