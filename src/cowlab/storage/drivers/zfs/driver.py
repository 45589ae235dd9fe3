"""zfs: datasets, snapshots and clones, as Docker's zfs driver.

The base layer is a dataset; every further layer is a clone of its parent's snapshot with the
layer applied, then snapshotted (`<pool>/l-<chain>@layer`); a container is a clone of the top
layer's snapshot, mounted at containers/<id>. Layers are named by chain id.

Implementation: kernel ZFS where /dev/zfs exists (zfsutils-linux); otherwise zfs-fuse, the
userspace ZFS (Debian contrib), whose daemon cowlab starts itself (`zfs-fuse --no-daemon`,
journaled as kind "zfs_fuse_daemon") and stops again. zfs-fuse listens on a fixed socket
(/var/run/zfs/zfs_socket), so one daemon serves a machine, and one cowlab process at a time
uses it (user_lock_acquire: zfs-fuse 0.7 was seen to deadlock with three busy clients). The
daemon is stopped when the journal entry of the owner that started it is released (or a later
user's, once that owner is dead), unless it still serves the pool of a persistent container: `cowlab container create --driver zfs` keeps the daemon and a
cowlab-keep-* pool under a persistent journal owner (service-zfs); the next cowlab process joins
that daemon, and `cowlab cleanup --all` stops it. A zfs-fuse daemon cowlab did not start makes
the driver unavailable: cowlab never uses or stops it.

The pool: a sparse file vdev under the driver's home (or a device, option `device`), named
cowlab-<8 hex> so that cleanup only ever touches its own, created with cachefile=none so no
daemon or boot imports it again; journaled as kind "zpool" (destroyed on release).
Options (ZFS properties, set on the pool's root dataset and inherited): recordsize,
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
import errno
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from cowlab.store import layers as L
from cowlab.base import sysutil
from cowlab.base.errors import CowlabError, Unavailable
from cowlab.store.images import Image
from cowlab.base.resources import OWNER_ENV, Resources, releaser, tagged_processes
from cowlab.base.state import StateRoot
from cowlab.base.units import parse_size  # zpool's sizes too (1.50K, 171M)
from cowlab.storage.drivers import _util as U
from cowlab.storage.drivers.base import Container, Driver, Probe, image_key

FUSE_SOCKET = "/var/run/zfs/zfs_socket"
POOL_PREFIX = "cowlab-"
DEFAULT_POOL_SIZE = 16 << 30
ARC_MAX_MB = 256            # zfs-fuse's ARC limit (its package default is 100 MiB)
HINT = "sudo bash vagrant/provision/zfs.sh"


# zfsutils-linux unpacked beside zfs-fuse (the packages conflict; both ship /sbin/zfs and
# /sbin/zpool): where the kernel VM gets kernel ZFS (vagrant/provision/zfs-kernel-vm.sh).
KERNEL_TOOLS = Path(os.environ.get("COWLAB_ZFS_KERNEL_TOOLS", "/opt/cowlab-zfs"))
KERNEL_HINT = "sudo bash vagrant/provision/zfs-kernel-vm.sh, then --vm always"


def _kernel_tool(name: str) -> str | None:
    for d in ("sbin", "usr/sbin"):
        p = KERNEL_TOOLS / d / name
        if os.access(p, os.X_OK):
            return str(p)
    return None


def _tool(name: str) -> str:
    """zfs and zpool talk to kernel ZFS or to zfs-fuse's daemon, whichever ships them: with
    kernel ZFS, the kernel tools unpacked in KERNEL_TOOLS come first."""
    if name in ("zfs", "zpool") and implementation() == "kernel":
        return _kernel_tool(name) or U.which(name) or name
    return U.which(name) or name


def kernel_tools_ok() -> str:
    """'' if the zfs tool found for kernel ZFS is zfsutils-linux's, else why not (zfs-fuse's
    own zfs has no `version` subcommand and talks only to its daemon's socket)."""
    cp = subprocess.run([_tool("zfs"), "version"], capture_output=True, text=True)
    if cp.returncode != 0 or "zfs-" not in cp.stdout:
        return (f"kernel ZFS (/dev/zfs) but {_tool('zfs')} is not zfsutils-linux's zfs "
                f"(zfs-fuse's?); zfsutils-linux belongs in {KERNEL_TOOLS} or on PATH")
    return ""


def _zfs_cli(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    return sysutil.run([_tool(args[0]), *args[1:]], check=check, timeout=300)


_modprobed: list[bool] = []


def implementation() -> str | None:
    if not os.path.exists("/dev/zfs") and not _modprobed:
        # a zfs module built for this kernel but not loaded (the kernel VM's: zfs-dkms for
        # Debian's 6.1); where there is none, modprobe just fails
        _modprobed.append(True)
        with contextlib.suppress(CowlabError):  # (no modprobe at all)
            sysutil.run(["modprobe", "-q", "zfs"], check=False, timeout=120)
    if os.path.exists("/dev/zfs"):
        return "kernel"
    if U.which("zfs-fuse"):
        return "fuse"
    return None


def version(impl: str | None) -> str:
    if impl == "kernel":
        try:
            return Path("/sys/module/zfs/version").read_text().strip()
        except OSError:
            return U.tool_version([_tool("zfs"), "version"])
    if impl == "fuse":
        cp = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "zfs-fuse"], capture_output=True, text=True)
        return f"zfs-fuse {cp.stdout.strip() or '?'} (pool version 23)"
    return ""


def fuse_daemons() -> list[tuple[int, bool]]:
    """(pid, started by cowlab) of every running zfs-fuse daemon."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if Path(f"/proc/{d}/comm").read_text().strip() != "zfs-fuse":
                continue
            env = Path(f"/proc/{d}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if sysutil.running(int(d)):
            out.append((int(d), any(e.startswith(OWNER_ENV.encode() + b"=") for e in env)))
    return out


# A machine-wide mutex that is no file: an abstract unix socket name (Linux), bound by the
# process that holds it and gone with it, so nothing is written outside the state root and a
# SIGKILL can't leave a stale lock. (Abstract names are per network namespace, as a machine's
# one zfs-fuse socket is not: runs in other namespaces are not serialised against this one.)
LOCK_NAME = b"\0cowlab-zfs-fuse-user"
USER_WAIT = 900.0
KEEP_PREFIX = POOL_PREFIX + "keep-"   # pools of persistent containers (owner service-zfs)
_user = {"sock": None, "refs": 0}


def user_lock_acquire(wait: float = USER_WAIT) -> None:
    """One cowlab process at a time uses zfs-fuse. Its single daemon (one fixed socket per
    machine) is shared by whoever talks to it, and zfs-fuse 0.7 was seen to deadlock — every
    FUSE request of every client hanging — with three cowlab processes busy in it at once.
    Held from the driver's first use until its daemon entry is released (counted, so several
    driver instances of one process share it); another process waits for it, saying so."""
    if _user["sock"] is None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        deadline, told = time.monotonic() + wait, False
        while True:
            try:
                sock.bind(LOCK_NAME)
                break
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    sock.close()
                    raise
                holder = lock_holder() or "?"
                if not told:
                    print(f"cowlab: waiting for cowlab process {holder} to finish with zfs-fuse",
                          file=sys.stderr, flush=True)
                    told = True
                if time.monotonic() > deadline:
                    sock.close()
                    raise Unavailable("driver zfs", f"cowlab process {holder} has been using zfs-fuse for over "
                                      f"{wait:.0f} s (one process at a time: zfs-fuse deadlocks under several)",
                                      "wait for it to finish")
                time.sleep(0.5)
        _user["sock"] = sock
    _user["refs"] += 1


def lock_holder() -> int | None:
    """The pid holding the lock: its socket's inode from /proc/net/unix, then whose fd it is."""
    want = "@" + LOCK_NAME[1:].decode()
    inode = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            f = line.split()
            if len(f) >= 8 and f[7] == want:
                inode = f[6]
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for d in os.listdir("/proc"):
        if d.isdigit():
            with contextlib.suppress(OSError):
                for fd in os.listdir(f"/proc/{d}/fd"):
                    with contextlib.suppress(OSError):
                        if os.readlink(f"/proc/{d}/fd/{fd}") == target:
                            return int(d)
    return None


def user_lock_release() -> None:
    if _user["refs"] > 0:
        _user["refs"] -= 1
    if _user["refs"] == 0 and _user["sock"] is not None:
        sock, _user["sock"] = _user["sock"], None
        sock.close()


def _daemon_owner(pid: int) -> str:
    """The journal owner that started a cowlab zfs-fuse daemon (from its environment)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return ""
    key = OWNER_ENV.encode() + b"="
    return next((x[len(key):].decode() for x in env if x.startswith(key)), "")


def _owner_gone(owner: str) -> bool:
    """A run owner (run-<pid>-<starttime>) whose process is dead; persistent owners never are."""
    parts = owner.split("-")
    if len(parts) < 3 or parts[0] != "run" or not parts[1].isdigit():
        return False
    try:
        return not sysutil.pid_alive(int(parts[1]), int(parts[2]))
    except ValueError:
        return False


@releaser("zfs_fuse_daemon")
def _release_daemon(e: dict, state: StateRoot) -> None:
    """Stop a zfs-fuse daemon that cowlab started, unless it still serves a persistent
    container's pool (cowlab-keep-*, owner service-zfs): `cowlab cleanup --all` stops it then.
    Pools of dead runs go with it (cachefile=none: no daemon imports them again)."""
    pids = [(e["pid"], e.get("starttime"))] if e.get("pid") else \
        [(p, sysutil.proc_starttime(p)) for p in tagged_processes(e.get("tag", "-"))
         if Path(f"/proc/{p}/comm").read_text().strip() == "zfs-fuse"]
    ours = e.get("lock_pid") == os.getpid() and _user["refs"] > 0
    if not ours:
        user_lock_acquire()  # a dead run's or a persistent owner's entry: wait for the live user
    try:
        for pid, st in pids:
            if not sysutil.running(pid, st):
                continue
            starter = _daemon_owner(pid)
            if starter not in (e.get("tag"), e.get("owner")) and not _owner_gone(starter):
                continue  # joined: the (live) cowlab process or persistent owner that started it stops it
            cp = _zfs_cli(["zpool", "list", "-H", "-o", "name"], check=False)
            if cp.returncode == 0 and any(n.startswith(KEEP_PREFIX) for n in cp.stdout.split()):
                continue  # serves persistent containers
            sysutil.kill_pid(pid, st, e.get("grace", 30.0))
    finally:
        user_lock_release()


def _socket_up() -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(FUSE_SOCKET)
        return True
    except OSError:
        return False
    finally:
        s.close()


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
    cp = _zfs_cli(["zpool", "list", "-H", "-o", "name", pool], check=False)
    if cp.returncode == 0:
        _zfs_cli(["zpool", "destroy", "-f", pool])
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
    cp = _zfs_cli(["zfs", "list", "-H", "-o", "name", ds], check=False)
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
        cp = _zfs_cli(["zfs", "destroy", "-r", *force, ds], check=False)
        if cp.returncode == 0 or _zfs_cli(["zfs", "list", "-H", ds], check=False).returncode != 0:
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
    engine = {"pool_driver": "zfs",  # Docker's zfs driver on a dataset of a pool cowlab makes
              "note": "a dataset of a pool cowlab makes (zfs.fsname); needs kernel ZFS, not zfs-fuse"}
    vagrant = {"os": "debian", "memory": 3072, "cpus": 2, "disk": True, "storage": "zfs",
               "scripts": ["zfs-kernel.sh"]}  # zfs-kernel.sh runs zfs.sh
    option_names = frozenset({"recordsize", "compression", "dedup"})
    services = True

    @classmethod
    def probe(cls) -> Probe:
        impl = implementation()
        if impl == "kernel":
            if any(_tool(t) == t for t in ("zfs", "zpool")):  # found neither beside zfs-fuse nor on PATH
                return Probe(False, "kernel ZFS (/dev/zfs) but no zfs/zpool tools (zfsutils-linux)", HINT)
            why = kernel_tools_ok()
            if why:
                return Probe(False, why, KERNEL_HINT)
            return Probe(True, details={"implementation": "kernel", "version": version(impl),
                                        "tools": _tool("zfs")})
        if impl is None:
            return Probe(False, "no /dev/zfs and zfs-fuse not installed", HINT)
        ok, why = U.has_fuse()
        if not ok:
            return Probe(False, f"zfs-fuse needs FUSE: {why}", "a kernel with CONFIG_FUSE_FS")
        foreign = [p for p, ours in fuse_daemons() if not ours]
        if foreign:
            return Probe(False, f"a zfs-fuse daemon that cowlab did not start is running (pid {foreign[0]}); "
                                "its socket is the only one, and cowlab does not use or stop daemons it "
                                "did not start", "stop that daemon (e.g. `service zfs-fuse stop`)")
        return Probe(True, details={"implementation": "fuse", "version": version(impl)})

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
        return _zfs_cli(["zpool", "list", "-H", "-o", "name", pool], check=False).returncode == 0

    def _daemon(self, start: bool) -> bool:
        if self.impl != "fuse":
            return True
        # (called with the user lock held)
        daemons = fuse_daemons()
        if any(not ours for _, ours in daemons):
            p = self.probe()
            raise Unavailable("driver zfs", p.reason, p.hint)
        if daemons:  # another cowlab run's, or this one's: join it (its last user stops it)
            if not start:
                return _socket_up()
            pid = daemons[0][0]
            self._wait_socket(pid)
            if not self._daemon_journaled:
                self.res.add("zfs_fuse_daemon", pid=pid, starttime=sysutil.proc_starttime(pid), grace=30.0,
                             lock_pid=os.getpid(), owner=self.res.owner, joined=True)
                self._daemon_journaled = True
            return True
        if not start:
            return False
        # zfs-fuse takes a few seconds to end on SIGTERM: grace 30 s (its pools are gone by then).
        h = self.res.add("zfs_fuse_daemon", pid=None, starttime=None, tag=self.res.owner, grace=30.0,
                         lock_pid=os.getpid())
        self._daemon_journaled = True
        env = dict(os.environ, **{OWNER_ENV: self.res.owner})
        log = open(self.home / "zfs-fuse.log", "ab")
        try:  # its own session: a Ctrl-C meant for cowlab must not reach it before teardown
            proc = subprocess.Popen([_tool("zfs-fuse"), "--no-daemon", "--no-kstat-mount",
                                     "--pidfile", str(self.home / "zfs-fuse.pid"),
                                     "--max-arc-size", str(ARC_MAX_MB)], env=env,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        except BaseException:
            self.res.release(h)
            raise
        finally:
            log.close()
        self.res.update(h, pid=proc.pid, starttime=sysutil.proc_starttime(proc.pid))
        proc.returncode = 0  # reaped by the releaser, by pid
        return self._wait_socket(proc.pid)

    def _wait_socket(self, pid: int) -> bool:
        deadline = time.monotonic() + 30
        while not _socket_up():
            if not sysutil.running(pid):
                raise CowlabError(f"zfs-fuse (pid {pid}) exited before opening {FUSE_SOCKET}; "
                                  f"see {self.home / 'zfs-fuse.log'}")
            if time.monotonic() > deadline:
                raise CowlabError(f"zfs-fuse did not open {FUSE_SOCKET} within 30 s")
            time.sleep(0.05)
        return True

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
        pool = f"{KEEP_PREFIX if self.res.kind == 'backing' else POOL_PREFIX}{uuid.uuid4().hex[:8]}"
        vdev = self.options.get("device")
        if not vdev:
            vdev = str(self.home / f"{pool}.vdev")
            size = parse_size_option(self.options.get("pool_size", DEFAULT_POOL_SIZE))
            self.res.acquire("file", lambda: sysutil.sparse_file(vdev, size), path=vdev)
        self.res.acquire("zpool", lambda: _zfs_cli(
            ["zpool", "create", "-f", "-o", "cachefile=none", "-m", "none", *self._props(), pool, vdev]),
            pool=pool, vdev=vdev, implementation=self.impl, home=str(self.home))
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
        return _zfs_cli(["zfs", "list", "-H", "-o", "name", name], check=False).returncode == 0

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
        for i, (digest, chain) in enumerate(zip(image.layers, chains), 1):
            ds = self._ds(chain)
            if not self._exists(f"{ds}@layer"):
                # Layers belong to the pool (journaled, destroyed with it), not to one import;
                # a layer an interrupted import left half made has no @layer and is made anew.
                if self._exists(ds):
                    _release_dataset({"dataset": ds}, None)
                mnt = self.home / "mnt" / ds.split("/")[-1]
                if parent is None:
                    _zfs_cli(["zfs", "create", "-o", f"mountpoint={mnt}", ds])
                else:
                    _zfs_cli(["zfs", "clone", "-o", f"mountpoint={mnt}", f"{parent}@layer", ds])
                try:
                    L.apply_tar(self.store.layer_path(digest), mnt, "apply", f"{image.name} layer {i}")
                    os.chmod(mnt, 0o755)
                    _zfs_cli(["zfs", "snapshot", f"{ds}@layer"])
                    _zfs_cli(["zfs", "umount", ds], check=False)  # as Docker: layers stay unmounted
                except BaseException:
                    _release_dataset({"dataset": ds}, None)
                    raise
            parent = ds
        rec = {"layers": image.layers, "chains": [U.chain_key(c) for c in chains], "top": self._ds(chains[-1]),
               "pool": pool}
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
                _zfs_cli(["zfs", "destroy", "-r", self._ds(chain)])

    # --- containers ------------------------------------------------------------------------
    def create(self, image: Image, res: Resources, cid: str | None = None) -> Container:
        top = json.loads(self._image_file(image).read_text())["top"]
        cid = cid or self.new_id()
        mnt = self.home / "containers" / cid
        ds = f"{self.pool}/c-{cid}"
        h1 = res.acquire("dir", lambda: mnt.mkdir(), path=str(mnt))
        try:
            h2 = res.acquire("zfs_dataset", lambda: _zfs_cli(["zfs", "clone", "-o", f"mountpoint={mnt}",
                                                              f"{top}@layer", ds]), dataset=ds, mountpoint=str(mnt))
        except BaseException:
            res.release(h1)
            raise
        return Container(cid, image.id, self.name, mnt, [h1, h2])

    # --- accounting --------------------------------------------------------------------------
    def _sync(self) -> None:
        os.sync()
        if self.impl == "kernel":
            _zfs_cli(["zpool", "sync", self.pool])
        else:  # no `zpool sync` in zfs-fuse 0.7: a snapshot commits a transaction group
            self._syncs += 1
            snap = f"{self.pool}@cowlab-sync-{os.getpid()}-{self._syncs}"
            _zfs_cli(["zfs", "snapshot", snap])
            _zfs_cli(["zfs", "destroy", snap])

    def used_bytes(self) -> int:
        self._ensure()
        self._sync()
        if self.impl == "kernel":
            return int(_zfs_cli(["zpool", "list", "-Hp", "-o", "allocated", self.pool]).stdout.strip())
        return parse_size(_zfs_cli(["zpool", "list", "-H", "-o", "allocated", self.pool]).stdout.strip())

    def inodes_used(self) -> int | None:
        return None  # ZFS allocates dnodes on demand: there is no inode table to run out of

    def pool_stats(self) -> dict:
        """compressratio (root dataset, children included), dedupratio (pool), ARC size where
        readable (None under zfs-fuse, with the reason in 'arc_note')."""
        self._ensure()
        self._sync()
        out = {"compressratio": _ratio(_zfs_cli(["zfs", "get", "-H", "-o", "value", "compressratio",
                                                 self.pool]).stdout),
               "dedupratio": _ratio(_zfs_cli(["zpool", "list", "-H", "-o", "dedupratio", self.pool]).stdout),
               "arc_size_bytes": None, "arc_note": ""}
        arc = Path("/proc/spl/kstat/zfs/arcstats")
        if arc.exists():
            for line in arc.read_text().splitlines():
                f = line.split()
                if len(f) == 3 and f[0] == "size":
                    out["arc_size_bytes"] = int(f[2])
        else:
            out["arc_note"] = ("zfs-fuse exports its ARC statistics only through a FUSE mount at "
                               "/zfs-kstat (outside the state root, which cowlab does not make)")
        return out

    def engine_storage(self) -> dict:
        """For engine mode: Docker's zfs driver on a dataset of a pool this driver makes, given as
        zfs.fsname (Docker then makes its layer and container datasets below it, legacy-mounted
        under its data-root). Docker's driver opens /dev/zfs: zfs-fuse can't serve it."""
        if self.impl != "kernel":
            raise CowlabError("dockerd's zfs driver needs kernel ZFS (/dev/zfs); this kernel has only "
                              f"zfs-fuse here. Kernel ZFS in the kernel VM: {KERNEL_HINT}")
        pool = self._ensure()
        ds = f"{pool}/docker"
        _zfs_cli(["zfs", "create", "-o", "mountpoint=none", ds])  # destroyed with the pool
        return {"storage_opts": [f"zfs.fsname={ds}"], "path": [os.path.dirname(_tool("zfs"))],
                "meta": {"zfs_fsname": ds, **self.metadata()}}

    def metadata(self) -> dict:
        m = {"zfs_implementation": self.impl, "zfs_version": version(self.impl),
             "zfs_properties": {k: self.options[k] for k in ("recordsize", "compression", "dedup")
                                if k in self.options},
             "zfs_pool": self.pool, "zfs_vdev": self.options.get("device") or "sparse file in the driver home",
             "used_bytes": "pool allocated" + (" (3 significant digits under zfs-fuse)" if self.impl == "fuse" else "")}
        if self.impl == "fuse":
            m["zfs_fuse_max_arc_mb"] = ARC_MAX_MB
        if self.pool:
            try:
                m["zfs_pool_stats"] = self.pool_stats()
            except CowlabError as e:
                m["zfs_pool_stats"] = {"error": str(e)}
        return m
