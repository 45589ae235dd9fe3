"""The zfs-fuse daemon: the tools that talk to ZFS, the machine-wide user lock, and one daemon
shared by every state root through a registry (the driver itself is in driver.py).

zfs-fuse listens on a fixed socket (/var/run/zfs/zfs_socket): one daemon serves the machine,
whichever state roots use it. So it is shared, with a clear owner and reference counting:

- REGISTRY (/run/cowlab/zfs-fuse, tmpfs: a reboot takes it with the daemon) holds daemon.json
  (pid, start time, and the state root and journal owner that started it) and one file per
  holder under holders/ — a (state root, journal owner) pair that uses the daemon, written when
  the owner attaches and removed by its "zfs_fuse_daemon" journal entry's release.
- The last holder to let go stops the daemon, whichever root started it. A holder is stale when
  its state root's journal no longer has its owner, or its run is dead: it holds nothing then.
- Pools carry their state root's tag (driver.pool_prefix), so a root only ever names, destroys
  or sweeps its own pools in the shared daemon.
- A zfs-fuse daemon the registry does not record (not started by cowlab, or by a cowlab that
  predates the registry) makes the driver unavailable, with its pid and, when it carries one,
  the state root it was started for.

Every registry change happens under the user lock: one cowlab process at a time uses zfs-fuse
(user_lock_acquire: zfs-fuse 0.7 was seen to deadlock with three busy clients).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from cowlab.base import sysutil
from cowlab.base.errors import CowlabError, Unavailable
from cowlab.base.resources import OWNER_ENV, Resources, processes_with_env, releaser
from cowlab.base.state import StateRoot
from cowlab.storage.drivers import _util as U

FUSE_SOCKET = "/var/run/zfs/zfs_socket"
ARC_MAX_MB = 256  # zfs-fuse's ARC limit (its package default is 100 MiB)
REGISTRY = Path(os.environ.get("COWLAB_ZFS_REGISTRY", "/run/cowlab/zfs-fuse"))
# The daemon's tag: "<state root>:<owner>" of the holder that started it. Not COWLAB_OWNER: a
# cleanup ends every process carrying its owners' names, and this one outlives its starter
# while another holder uses it.
DAEMON_ENV = "COWLAB_ZFS_DAEMON"

# zfsutils-linux unpacked beside zfs-fuse (the packages conflict; both ship /sbin/zfs and
# /sbin/zpool): where the kernel VM gets kernel ZFS (vagrant/provision/zfs-kernel-vm.sh).
KERNEL_TOOLS = Path(os.environ.get("COWLAB_ZFS_KERNEL_TOOLS", "/opt/cowlab-zfs"))


def _kernel_tool(name: str) -> str | None:
    for d in ("sbin", "usr/sbin"):
        p = KERNEL_TOOLS / d / name
        if os.access(p, os.X_OK):
            return str(p)
    return None


def tool(name: str) -> str:
    """zfs and zpool talk to kernel ZFS or to zfs-fuse's daemon, whichever ships them: with
    kernel ZFS, the kernel tools unpacked in KERNEL_TOOLS come first."""
    if name in ("zfs", "zpool") and implementation() == "kernel":
        return _kernel_tool(name) or U.which(name) or name
    return U.which(name) or name


def kernel_tools_ok() -> str:
    """'' if the zfs tool found for kernel ZFS is zfsutils-linux's, else why not (zfs-fuse's
    own zfs has no `version` subcommand and talks only to its daemon's socket)."""
    cp = subprocess.run([tool("zfs"), "version"], capture_output=True, text=True)
    if cp.returncode != 0 or "zfs-" not in cp.stdout:
        return (
            f"kernel ZFS (/dev/zfs) but {tool('zfs')} is not zfsutils-linux's zfs "
            f"(zfs-fuse's?); zfsutils-linux belongs in {KERNEL_TOOLS} or on PATH"
        )
    return ""


def zfs_cli(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    return sysutil.run([tool(args[0]), *args[1:]], check=check, timeout=300)


_modprobed: list[bool] = []


def implementation() -> str | None:
    if not os.path.exists("/dev/zfs") and not _modprobed:
        # a zfs module built for this kernel but not loaded (the kernel VM's: zfs-dkms for
        # Debian's 6.1); where there is none, modprobe just fails
        _modprobed.append(True)
        sysutil.modprobe("-q", "zfs")
    if os.path.exists("/dev/zfs"):
        return "kernel"
    if U.which("zfs-fuse"):
        return "fuse"
    return None


# --- the registry ---------------------------------------------------------------------------
def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    return dict(x.decode(errors="replace").split("=", 1) for x in raw if b"=" in x)


def recorded_daemon() -> dict | None:
    """The daemon the registry records, if it still runs (same pid and start time)."""
    try:
        rec = json.loads((REGISTRY / "daemon.json").read_text())
    except (OSError, ValueError):
        return None
    return rec if sysutil.running(rec["pid"], rec.get("starttime")) else None


def fuse_daemons() -> list[tuple[int, bool]]:
    """(pid, recorded in the registry) of every running zfs-fuse daemon."""
    rec = recorded_daemon()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if Path(f"/proc/{d}/comm").read_text().strip() != "zfs-fuse":
                continue
        except OSError:
            continue
        if sysutil.running(int(d)):
            out.append((int(d), rec is not None and rec["pid"] == int(d)))
    return out


def foreign_reason(pid: int) -> tuple[str, str]:
    """Why a zfs-fuse daemon the registry does not record can't be used, and what to do."""
    env = _environ(pid)
    if OWNER_ENV in env or DAEMON_ENV in env:
        root, _, owner = env.get(DAEMON_ENV, f"?:{env.get(OWNER_ENV)}").rpartition(":")
        return (
            f"a zfs-fuse daemon (pid {pid}) started by cowlab for state root {root} (owner "
            f"{owner}) is running, but {REGISTRY} does not record it (an older cowlab?): "
            "cowlab shares only daemons its registry records",
            f"`COWLAB_ROOT={root} cowlab cleanup --all`, or end pid {pid} once nothing uses it",
        )
    return (
        f"a zfs-fuse daemon that cowlab did not start is running (pid {pid}); its socket is the "
        "only one, and cowlab does not use or stop daemons it did not start",
        "stop that daemon (e.g. `service zfs-fuse stop`)",
    )


def _holder_file(root: str, owner: str) -> Path:
    key = hashlib.sha256(f"{root}\0{owner}".encode()).hexdigest()[:16]
    return REGISTRY / "holders" / f"{key}.json"


def _root_of(state: StateRoot) -> str:
    return os.path.realpath(state.path)


def hold(state: StateRoot, owner: str) -> None:
    (REGISTRY / "holders").mkdir(parents=True, exist_ok=True)
    _holder_file(_root_of(state), owner).write_text(json.dumps({"root": _root_of(state), "owner": owner}))


def unhold(state: StateRoot, owner: str) -> None:
    sysutil.ignore_enoent(os.unlink, _holder_file(_root_of(state), owner))


def _holder_live(h: dict) -> bool:
    """A holder holds while its root's journal still has its owner, and (a run) it lives."""
    info_p = Path(h["root"]) / "journal" / h["owner"] / "owner.json"
    try:
        info = json.loads(info_p.read_text())
    except (OSError, ValueError):
        return False
    if info.get("kind") == "run":
        return bool(info.get("pid")) and sysutil.pid_alive(info["pid"], info.get("starttime"))
    return True


def holders() -> list[dict]:
    """The live holders of the daemon; stale holder files are dropped on the way."""
    out = []
    d = REGISTRY / "holders"
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            h = json.loads(p.read_text())
        except (OSError, ValueError):
            h = None
        if h and _holder_live(h):
            out.append(h)
        else:
            sysutil.ignore_enoent(os.unlink, p)
    return out


# --- the user lock -------------------------------------------------------------------------
# A machine-wide mutex that is no file: an abstract unix socket name (Linux), bound by the
# process that holds it and gone with it, so a SIGKILL can't leave a stale lock. (Abstract
# names are per network namespace, as a machine's one zfs-fuse socket is not: runs in other
# namespaces are not serialised against this one.)
LOCK_NAME = b"\0cowlab-zfs-fuse-user"
USER_WAIT = 900.0
_user: dict = {"sock": None, "refs": 0}


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
                    print(
                        f"cowlab: waiting for cowlab process {holder} to finish with zfs-fuse",
                        file=sys.stderr,
                        flush=True,
                    )
                    told = True
                if time.monotonic() > deadline:
                    sock.close()
                    raise Unavailable(
                        "driver zfs",
                        f"cowlab process {holder} has been using zfs-fuse for over "
                        f"{wait:.0f} s (one process at a time: zfs-fuse deadlocks under several)",
                        "wait for it to finish",
                    ) from e
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


# --- start, attach, stop -------------------------------------------------------------------
@releaser("zfs_fuse_daemon")
def _release_daemon(e: dict, state: StateRoot) -> None:
    """Let go of the daemon for this entry's (state root, owner); the last holder stops it,
    whichever root started it. Pools of stale holders go with it (cachefile=none: no daemon
    imports them again; their roots' cleanup unmounts what is left)."""
    owner = e.get("owner") or ""
    ours = e.get("lock_pid") == os.getpid() and _user["refs"] > 0
    if not ours:
        user_lock_acquire()  # a dead run's or a persistent owner's entry: wait for the live user
    try:
        unhold(state, owner)
        if holders():
            return  # another owner, of this root or another, still uses it
        rec = recorded_daemon()
        pids = [(rec["pid"], rec.get("starttime"))] if rec else []
        # started by this entry's owner but never recorded (killed between fork and registry)
        pids += [
            (p, sysutil.proc_starttime(p))
            for p in processes_with_env(DAEMON_ENV, f"{_root_of(state)}:{owner}")
            if Path(f"/proc/{p}/comm").read_text().strip() == "zfs-fuse"
        ]
        for pid, st in dict(pids).items():
            if sysutil.running(pid, st):
                sysutil.kill_pid(pid, st, e.get("grace", 30.0))
        if rec or pids:
            sysutil.ignore_enoent(os.unlink, REGISTRY / "daemon.json")
    finally:
        user_lock_release()


def socket_up() -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(FUSE_SOCKET)
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_socket(pid: int, log: Path) -> bool:
    deadline = time.monotonic() + 30
    while not socket_up():
        if not sysutil.running(pid):
            raise CowlabError(f"zfs-fuse (pid {pid}) exited before opening {FUSE_SOCKET}; see {log}")
        if time.monotonic() > deadline:
            raise CowlabError(f"zfs-fuse did not open {FUSE_SOCKET} within 30 s")
        time.sleep(0.05)
    return True


_told_join: set[int] = set()


def attach(res: Resources, home: Path, start: bool, journaled: bool) -> tuple[bool, bool]:
    """Make sure zfs-fuse serves this owner: join the daemon the registry records, or (start)
    start one. Called with the user lock held. Returns (daemon up, journaled now): the
    "zfs_fuse_daemon" entry is this owner's hold, released with its journal."""
    daemons = fuse_daemons()
    foreign = [p for p, recorded in daemons if not recorded]
    if foreign:
        raise Unavailable("driver zfs", *foreign_reason(foreign[0]))
    rec = recorded_daemon()
    if rec:
        if not start:
            return socket_up(), journaled
        wait_socket(rec["pid"], home / "zfs-fuse.log")
        if not journaled:
            res.add(
                "zfs_fuse_daemon",
                pid=rec["pid"],
                starttime=rec.get("starttime"),
                grace=30.0,
                lock_pid=os.getpid(),
                owner=res.owner,
                joined=True,
            )
            hold(res.state, res.owner)
        if rec["root"] != _root_of(res.state) and rec["pid"] not in _told_join:
            _told_join.add(rec["pid"])
            print(
                f"cowlab: zfs-fuse serves one socket per machine: joining its daemon (pid {rec['pid']}), "
                f"started for state root {rec['root']}; it stops when the last state root using it lets go",
                file=sys.stderr,
                flush=True,
            )
        return True, True
    if not start:
        return False, journaled
    # zfs-fuse takes a few seconds to end on SIGTERM: grace 30 s (its pools are gone by then).
    h = res.add("zfs_fuse_daemon", pid=None, starttime=None, grace=30.0, lock_pid=os.getpid(), owner=res.owner)
    hold(res.state, res.owner)
    env = {k: v for k, v in os.environ.items() if k != OWNER_ENV}
    env[DAEMON_ENV] = f"{_root_of(res.state)}:{res.owner}"
    log_path = home / "zfs-fuse.log"
    log = open(log_path, "ab")
    try:  # its own session: a Ctrl-C meant for cowlab must not reach it before teardown
        proc = subprocess.Popen(
            [
                tool("zfs-fuse"),
                "--no-daemon",
                "--no-kstat-mount",
                "--pidfile",
                str(home / "zfs-fuse.pid"),
                "--max-arc-size",
                str(ARC_MAX_MB),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    except BaseException:
        res.release(h)
        raise
    finally:
        log.close()
    st = sysutil.proc_starttime(proc.pid)
    res.update(h, pid=proc.pid, starttime=st)
    (REGISTRY / "daemon.json").write_text(
        json.dumps({"pid": proc.pid, "starttime": st, "root": _root_of(res.state), "owner": res.owner})
    )
    proc.returncode = 0  # reaped by the releaser, by pid
    return wait_socket(proc.pid, log_path), True
