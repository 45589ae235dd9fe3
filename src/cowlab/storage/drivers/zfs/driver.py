"""zfs: datasets, snapshots and clones, as Docker's zfs driver (zfs-fuse's daemon, the tools and
the machine-wide registry that shares the daemon between state roots are in daemon.py).

The base layer is a dataset; every further layer is a clone of its parent's snapshot with the
layer applied, then snapshotted (`<pool>/l-<chain>@layer`); a container is a clone of the top
layer's snapshot, mounted at containers/<id>. Layers are named by chain id.

Implementation: kernel ZFS where /dev/zfs exists (zfsutils-linux); otherwise zfs-fuse, the
userspace ZFS (Debian contrib), whose daemon cowlab starts itself and shares between state roots
(daemon.py): the last state root holding it stops it. `cowlab container create --driver zfs`
holds the daemon and a pool under a persistent journal owner (service-zfs) until its last
container goes or `cowlab cleanup --all`. A zfs-fuse daemon cowlab did not start makes the
driver unavailable: cowlab never uses or stops it.

The pool: a sparse file vdev under the driver's home (or a device, option `device`), named
cowlab-<root tag>-<8 hex> (pool_prefix: the tag is a hash of the state root's path), so that a
root's cleanup only ever touches its own pools, also in a daemon another root shares; created
with cachefile=none so no daemon or boot imports it again; journaled as kind "zpool" (destroyed
on release). Options (ZFS properties, set on the pool's root dataset and inherited): recordsize,
compression, dedup; also `pool_size` (default 16 GiB, sparse) and `device`.

used_bytes() is the pool's `allocated` after forcing a transaction group to disk (kernel:
`zpool sync`; zfs-fuse 0.7 has none, so a snapshot is taken and destroyed, which syncs one).
zfs-fuse prints allocated rounded to 3 significant digits (it has no -p): its space numbers are
that coarse. Pool statistics — compression ratio, dedup ratio, ARC size — are returned by
pool_stats() and recorded as metrics by the `pool_stats` workload (capability "pool_stats");
metadata() carries them too once the pool exists (the variants' metadata, written at the end
of a run; at the start of a run the pool is not made yet, so there it has implementation,
version and properties only). ARC size is readable from kernel
ZFS (/proc/spl/kstat/zfs/arcstats); zfs-fuse only exports its kstats through a FUSE mount at
the fixed path /zfs-kstat, outside cowlab's state root, which cowlab does not make: there the
metric is recorded as skipped, with the configured ARC limit (`--max-arc-size`) in metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

from cowlab.base import sysutil
from cowlab.base.errors import CowlabError, Unavailable
from cowlab.base.resources import Resources, releaser
from cowlab.base.state import StateRoot
from cowlab.base.units import parse_size  # zpool's sizes too (1.50K, 171M)
from cowlab.storage.drivers import _util as U
from cowlab.storage.drivers.base import Container, Driver, Probe, image_key
from cowlab.storage.drivers.zfs import daemon as D
from cowlab.storage.drivers.zfs.daemon import (
    ARC_MAX_MB,
    implementation,
    kernel_tools_ok,
    tool,
    user_lock_acquire,
    user_lock_release,
    zfs_cli,
)
from cowlab.store import layers as L
from cowlab.store.images import Image

POOL_PREFIX = "cowlab-"
DEFAULT_POOL_SIZE = 16 << 30
HINT = "sudo bash vagrant/provision/zfs.sh"
KERNEL_HINT = "sudo bash vagrant/provision/zfs-kernel-vm.sh, then --vm always"


def pool_prefix(state: StateRoot) -> str:
    """The names of this state root's pools start so: pools of every root share one zfs-fuse
    daemon (and kernel ZFS is machine-wide anyway)."""
    return POOL_PREFIX + hashlib.sha256(os.path.realpath(state.path).encode()).hexdigest()[:6] + "-"


def version(impl: str | None) -> str:
    if impl == "kernel":
        try:
            return Path("/sys/module/zfs/version").read_text().strip()
        except OSError:
            return U.tool_version([tool("zfs"), "version"])
    if impl == "fuse":
        cp = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "zfs-fuse"], capture_output=True, text=True)
        return f"zfs-fuse {cp.stdout.strip() or '?'} (pool version 23)"
    return ""


def _no_daemon(cp: subprocess.CompletedProcess) -> bool:
    return implementation() == "fuse" and ("connect:" in cp.stderr or "daemon is running" in cp.stderr)


def parse_size_option(v) -> int:
    return parse_size(v if isinstance(v, int) else str(v))


def _ratio(s: str) -> float:
    return float(s.strip().rstrip("x"))


@releaser("zpool")
def _release_zpool(e: dict, state: StateRoot) -> None:
    pool = e["pool"]
    if not pool.startswith(POOL_PREFIX):
        raise CowlabError(f"journal names pool {pool!r}, which is not cowlab's; not touching it")
    cp = zfs_cli(["zpool", "list", "-H", "-o", "name", pool], check=False)
    if cp.returncode == 0:
        zfs_cli(["zpool", "destroy", "-f", pool])
    # else gone, or its zfs-fuse daemon is (a pool with cachefile=none lives only in one); a
    # daemon that died leaves its FUSE mounts behind, disconnected: unmount them
    home = e.get("home")
    if home and state is not None and state.inside(home):
        for m in sysutil.mounts_under(home):
            if m.fstype.startswith("fuse"):
                sysutil.ignore_enoent(sysutil.umount, m.target, True)


@releaser("zfs_dataset")
def _release_dataset(e: dict, state: StateRoot | None) -> None:
    ds = e["dataset"]
    if not ds.startswith(POOL_PREFIX) or "/" not in ds:
        raise CowlabError(f"journal names dataset {ds!r}, which is not cowlab's; not touching it")
    cp = zfs_cli(["zfs", "list", "-H", "-o", "name", ds], check=False)
    if cp.returncode != 0:
        return
    for attempt in range(30):
        # "busy": zfs-fuse still counts the dataset's files as in use (the kernel releases its
        # FUSE inodes lazily). Unmounting through the kernel first makes it let go of them; after
        # 2 s, force the unmount: the dataset is cowlab's own container or layer, torn down.
        if attempt and e.get("mountpoint") and state is not None and state.inside(e["mountpoint"]):
            with contextlib.suppress(OSError):
                sysutil.umount(e["mountpoint"])
        force = ["-f"] if attempt >= 20 else []
        cp = zfs_cli(["zfs", "destroy", "-r", *force, ds], check=False)
        if cp.returncode == 0 or zfs_cli(["zfs", "list", "-H", ds], check=False).returncode != 0:
            return
        if "busy" not in cp.stderr:
            raise CowlabError(f"zfs destroy {ds}: {cp.stderr.strip()}")
        time.sleep(0.1)
    raise CowlabError(f"zfs destroy {ds}: dataset stays busy (see `fuser -vm` on its mountpoint)")


class Zfs(Driver):
    name = "zfs"
    description = "ZFS datasets, snapshots and clones (Docker's zfs driver); kernel ZFS or zfs-fuse"
    capabilities = frozenset({"snapshot", "pool_stats"})
    # the registry (docs/adding-a-driver.md): figure colour, dockerd's driver, workshop VM
    color = "tab:purple"
    engine = {
        "pool_driver": "zfs",  # Docker's zfs driver on a dataset of a pool cowlab makes
        "note": "a dataset of a pool cowlab makes (zfs.fsname); needs kernel ZFS, not zfs-fuse",
    }
    vagrant = {
        "os": "debian",
        "memory": 3072,
        "cpus": 2,
        "disk": True,
        "storage": "zfs",
        "scripts": ["zfs-kernel.sh"],
    }  # zfs-kernel.sh runs zfs.sh
    option_names = frozenset({"recordsize", "compression", "dedup"})
    services = True

    @classmethod
    def probe(cls) -> Probe:
        impl = implementation()
        if impl == "kernel":
            if any(tool(t) == t for t in ("zfs", "zpool")):  # found neither beside zfs-fuse nor on PATH
                return Probe(False, "kernel ZFS (/dev/zfs) but no zfs/zpool tools (zfsutils-linux)", HINT)
            why = kernel_tools_ok()
            if why:
                return Probe(False, why, KERNEL_HINT)
            return Probe(True, details={"implementation": "kernel", "version": version(impl), "tools": tool("zfs")})
        if impl is None:
            return Probe(False, "no /dev/zfs and zfs-fuse not installed", HINT)
        ok, why = U.has_fuse()
        if not ok:
            return Probe(False, f"zfs-fuse needs FUSE: {why}", "a kernel with CONFIG_FUSE_FS")
        foreign = [p for p, recorded in D.fuse_daemons() if not recorded]
        if foreign:
            return Probe(False, *D.foreign_reason(foreign[0]))
        return Probe(True, details={"implementation": "fuse", "version": version(impl)})

    @classmethod
    def sweep_strays(cls, state: StateRoot, journal_entries: list[dict]) -> list[str]:
        """This root's pools (pool_prefix) that no remaining journal names, in a daemon that
        is up — another root's hold may keep it up — or in kernel ZFS. Nothing is started."""
        impl = implementation()
        if impl is None or (impl == "fuse" and not (D.recorded_daemon() and D.socket_up())):
            return []
        named = {e.get("pool") for e in journal_entries if e.get("kind") == "zpool"}
        pre, done = pool_prefix(state), []
        if impl == "fuse":
            try:  # a live run busy in zfs-fuse holds the lock: don't keep cleanup waiting on it
                user_lock_acquire(wait=10)
            except Unavailable as e:
                return [f"  skipped the sweep of stray zfs pools: {e}"]
        try:
            cp = zfs_cli(["zpool", "list", "-H", "-o", "name"], check=False)
            for pool in cp.stdout.split() if cp.returncode == 0 else []:
                if pool.startswith(pre) and pool not in named:
                    zfs_cli(["zpool", "destroy", "-f", pool], check=False)
                    done.append(f"destroyed stray zfs pool {pool}")
        finally:
            if impl == "fuse":
                user_lock_release()
        return done

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.impl = implementation()
        self.pool: str | None = None
        self._syncs = 0
        self._daemon_journaled = False

    # --- the daemon and the pool (made on first use) ------------------------------------------
    def _pool_file(self) -> Path:
        return self.home / "pool.json"

    def _pool_alive(self, pool: str) -> bool:
        return zfs_cli(["zpool", "list", "-H", "-o", "name", pool], check=False).returncode == 0

    def _daemon(self, start: bool) -> bool:
        if self.impl != "fuse":
            return True
        up, self._daemon_journaled = D.attach(self.res, self.home, start, self._daemon_journaled)
        return up

    def _props(self) -> list[str]:
        out = []
        for k in ("recordsize", "compression", "dedup"):
            if k in self.options:
                out += ["-O", f"{k}={self.options[k]}"]
        return out

    def _ensure(self) -> str:
        if self.pool:
            return self.pool
        if self.impl is None:
            raise Unavailable("driver zfs", "no /dev/zfs and zfs-fuse not installed", HINT)
        if self.impl != "fuse":
            return self._ensure_locked()
        if not self._daemon_journaled:  # this instance's hold, given back by its daemon entry
            user_lock_acquire()
            try:
                return self._ensure_locked()
            except BaseException:
                if not self._daemon_journaled:
                    user_lock_release()
                raise
        return self._ensure_locked()

    def _ensure_locked(self) -> str:
        self._daemon(start=True)
        pf = self._pool_file()
        if pf.exists():
            rec = json.loads(pf.read_text())
            if self._pool_alive(rec["pool"]):
                self.pool = rec["pool"]
                return self.pool
            pf.unlink()  # the pool of a daemon that is gone: its datasets went with it
            for d in ("images", "mnt", "containers"):
                if (self.home / d).exists() and not sysutil.mounts_under(self.home / d):
                    sysutil.safe_rmtree(self.home / d, self.home.parent)
        # a persistent owner's pool is marked so a run's teardown leaves the daemon serving it
        pool = f"{pool_prefix(self.store.state)}{uuid.uuid4().hex[:8]}"
        vdev = self.options.get("device")
        if not vdev:
            vdev = str(self.home / f"{pool}.vdev")
            size = parse_size_option(self.options.get("pool_size", DEFAULT_POOL_SIZE))
            self.res.acquire("file", lambda: sysutil.sparse_file(vdev, size), path=vdev)
        self.res.acquire(
            "zpool",
            lambda: zfs_cli(
                ["zpool", "create", "-f", "-o", "cachefile=none", "-m", "none", *self._props(), pool, vdev]
            ),
            pool=pool,
            vdev=vdev,
            implementation=self.impl,
            home=str(self.home),
        )
        for d in ("mnt", "containers", "images"):
            (self.home / d).mkdir(exist_ok=True)
        pf.write_text(json.dumps({"pool": pool, "vdev": vdev}))
        self.pool = pool
        return pool

    def _attached(self) -> bool:
        """True if this home's pool is there without starting anything (image rm)."""
        if self.pool:
            return True
        pf = self._pool_file()
        if not pf.exists():
            return False
        if not self._daemon(start=False):  # (the caller holds the user lock)
            return False
        rec = json.loads(pf.read_text())
        if self._pool_alive(rec["pool"]):
            self.pool = rec["pool"]
            return True
        return False

    # --- layers ----------------------------------------------------------------------------
    def _ds(self, chain: str) -> str:
        return f"{self.pool}/l-{U.chain_key(chain)}"

    def _image_file(self, image: Image) -> Path:
        return self.home / "images" / f"{image_key(image)}.json"

    def _exists(self, name: str) -> bool:
        return zfs_cli(["zfs", "list", "-H", "-o", "name", name], check=False).returncode == 0

    def has_image(self, image: Image) -> bool:
        if not self._image_file(image).exists():
            return False
        self._ensure()
        rec = json.loads(self._image_file(image).read_text())
        return rec.get("pool") == self.pool

    def import_image(self, image: Image) -> None:
        if self.has_image(image):
            return
        pool = self._ensure()
        chains = U.chain_ids(image)
        parent = None
        for i, (digest, chain) in enumerate(zip(image.layers, chains, strict=True), 1):
            ds = self._ds(chain)
            if not self._exists(f"{ds}@layer"):
                # Layers belong to the pool (journaled, destroyed with it), not to one import;
                # a layer an interrupted import left half made has no @layer and is made anew.
                if self._exists(ds):
                    _release_dataset({"dataset": ds}, None)
                mnt = self.home / "mnt" / ds.split("/")[-1]
                if parent is None:
                    zfs_cli(["zfs", "create", "-o", f"mountpoint={mnt}", ds])
                else:
                    zfs_cli(["zfs", "clone", "-o", f"mountpoint={mnt}", f"{parent}@layer", ds])
                try:
                    L.apply_tar(self.store.layer_path(digest), mnt, "apply", f"{image.name} layer {i}")
                    os.chmod(mnt, 0o755)
                    zfs_cli(["zfs", "snapshot", f"{ds}@layer"])
                    zfs_cli(["zfs", "umount", ds], check=False)  # as Docker: layers stay unmounted
                except BaseException:
                    _release_dataset({"dataset": ds}, None)
                    raise
            parent = ds
        rec = {
            "layers": image.layers,
            "chains": [U.chain_key(c) for c in chains],
            "top": self._ds(chains[-1]),
            "pool": pool,
        }
        self._write_image_record(image, rec)

    def remove_image(self, image: Image) -> None:
        f = self._image_file(image)
        if not f.exists():
            return
        if self.impl == "fuse" and not self._daemon_journaled:
            user_lock_acquire()
            try:
                self._remove_image(image, f)
            finally:
                user_lock_release()
        else:
            self._remove_image(image, f)

    def _remove_image(self, image: Image, f: Path) -> None:
        if not self._attached():
            f.unlink()
            return
        f.unlink()
        used = {c for p in (self.home / "images").glob("*.json") for c in json.loads(p.read_text())["chains"]}
        for chain in reversed(U.chain_ids(image)):  # clones before their origins
            if U.chain_key(chain) not in used and self._exists(self._ds(chain)):
                zfs_cli(["zfs", "destroy", "-r", self._ds(chain)])

    # --- containers ------------------------------------------------------------------------
    def create(self, image: Image, res: Resources, cid: str | None = None) -> Container:
        top = json.loads(self._image_file(image).read_text())["top"]
        cid = cid or self.new_id()
        mnt = self.home / "containers" / cid
        ds = f"{self.pool}/c-{cid}"
        h1 = res.acquire("dir", lambda: mnt.mkdir(), path=str(mnt))
        try:
            h2 = res.acquire(
                "zfs_dataset",
                lambda: zfs_cli(["zfs", "clone", "-o", f"mountpoint={mnt}", f"{top}@layer", ds]),
                dataset=ds,
                mountpoint=str(mnt),
            )
        except BaseException:
            res.release(h1)
            raise
        return Container(cid, image.id, self.name, mnt, [h1, h2])

    # --- accounting --------------------------------------------------------------------------
    def _sync(self) -> None:
        if self.pool is None:  # callers _ensure() the pool first
            raise CowlabError("zfs: no pool to sync yet")
        os.sync()
        if self.impl == "kernel":
            zfs_cli(["zpool", "sync", self.pool])
        else:  # no `zpool sync` in zfs-fuse 0.7: a snapshot commits a transaction group
            self._syncs += 1
            snap = f"{self.pool}@cowlab-sync-{os.getpid()}-{self._syncs}"
            zfs_cli(["zfs", "snapshot", snap])
            zfs_cli(["zfs", "destroy", snap])

    def used_bytes(self) -> int:
        pool = self._ensure()
        self._sync()
        if self.impl == "kernel":
            return int(zfs_cli(["zpool", "list", "-Hp", "-o", "allocated", pool]).stdout.strip())
        return parse_size(zfs_cli(["zpool", "list", "-H", "-o", "allocated", pool]).stdout.strip())

    def inodes_used(self) -> int | None:
        return None  # ZFS allocates dnodes on demand: there is no inode table to run out of

    def pool_stats(self) -> dict:
        """compressratio (root dataset, children included), dedupratio (pool), ARC size where
        readable (None under zfs-fuse, with the reason in 'arc_note')."""
        pool = self._ensure()
        self._sync()
        out = {
            "compressratio": _ratio(zfs_cli(["zfs", "get", "-H", "-o", "value", "compressratio", pool]).stdout),
            "dedupratio": _ratio(zfs_cli(["zpool", "list", "-H", "-o", "dedupratio", pool]).stdout),
            "arc_size_bytes": None,
            "arc_note": "",
        }
        arc = Path("/proc/spl/kstat/zfs/arcstats")
        if arc.exists():
            for line in arc.read_text().splitlines():
                f = line.split()
                if len(f) == 3 and f[0] == "size":
                    out["arc_size_bytes"] = int(f[2])
        else:
            out["arc_note"] = (
                "zfs-fuse exports its ARC statistics only through a FUSE mount at "
                "/zfs-kstat (outside the state root, which cowlab does not make)"
            )
        return out

    def engine_storage(self) -> dict:
        """For engine mode: Docker's zfs driver on a dataset of a pool this driver makes, given as
        zfs.fsname (Docker then makes its layer and container datasets below it, legacy-mounted
        under its data-root). Docker's driver opens /dev/zfs: zfs-fuse can't serve it."""
        if self.impl != "kernel":
            raise CowlabError(
                "dockerd's zfs driver needs kernel ZFS (/dev/zfs); this kernel has only "
                f"zfs-fuse here. Kernel ZFS in the kernel VM: {KERNEL_HINT}"
            )
        pool = self._ensure()
        ds = f"{pool}/docker"
        zfs_cli(["zfs", "create", "-o", "mountpoint=none", ds])  # destroyed with the pool
        return {
            "storage_opts": [f"zfs.fsname={ds}"],
            "path": [os.path.dirname(tool("zfs"))],
            "meta": {"zfs_fsname": ds, **self.metadata()},
        }

    def metadata(self) -> dict:
        m = {
            "zfs_implementation": self.impl,
            "zfs_version": version(self.impl),
            "zfs_properties": {k: self.options[k] for k in ("recordsize", "compression", "dedup") if k in self.options},
            "zfs_pool": self.pool,
            "zfs_vdev": self.options.get("device") or "sparse file in the driver home",
            "used_bytes": "pool allocated" + (" (3 significant digits under zfs-fuse)" if self.impl == "fuse" else ""),
        }
        if self.impl == "fuse":
            m["zfs_fuse_max_arc_mb"] = ARC_MAX_MB
        if self.pool:
            try:
                m["zfs_pool_stats"] = self.pool_stats()
            except CowlabError as e:
                m["zfs_pool_stats"] = {"error": str(e)}
        return m
