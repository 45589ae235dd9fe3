"""Thin wrappers over the system calls and tools cowlab needs (mount, loop, processes)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import signal
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cowlab.base.errors import CowlabError

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.syncfs.argtypes = [ctypes.c_int]

MNT_DETACH = 2
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def require_root() -> None:
    if os.geteuid() != 0:
        raise CowlabError("cowlab needs root: it mounts filesystems and sets up loop devices (try sudo)")


def _b(s) -> bytes | None:
    return None if s is None else os.fsencode(s)


def mount(source: str, target: str | os.PathLike, fstype: str, data: str = "", flags: int = 0) -> None:
    """mount(2) directly: no mount(8) process, so timings are the kernel's, not fork's."""
    if len(data.encode()) >= PAGE_SIZE:
        raise CowlabError(
            f"mount options for {target} are {len(data.encode())} bytes, over the kernel's "
            f"one-page limit of {PAGE_SIZE}"
        )
    if _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {fstype} on {target}: {os.strerror(e)}")


def umount(target: str | os.PathLike, detach: bool = False) -> None:
    if _libc.umount2(_b(target), MNT_DETACH if detach else 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"umount {target}: {os.strerror(e)}")


def syncfs(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _libc.syncfs(fd)
    finally:
        os.close(fd)


def drop_caches() -> None:
    """Write back, then drop page cache, dentries and inodes (needs root)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def _unescape(s: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    parent_id: int
    root: str
    target: str
    options: str
    fstype: str
    source: str
    super_options: str


def mountinfo(path: str = "/proc/self/mountinfo") -> list[MountEntry]:
    out = []
    with open(path) as f:
        for line in f:
            left, _, right = line.rstrip("\n").partition(" - ")
            a = left.split()
            b = right.split()
            out.append(
                MountEntry(
                    int(a[0]),
                    int(a[1]),
                    _unescape(a[3]),
                    _unescape(a[4]),
                    a[5],
                    b[0],
                    _unescape(b[1]) if len(b) > 1 else "",
                    b[2] if len(b) > 2 else "",
                )
            )
    return out


def _escape(s: str) -> str:
    return s.replace("\\", "\\134").replace(" ", "\\040").replace("\t", "\\011").replace("\n", "\\012")


def mounts_under(path: str | os.PathLike) -> list[MountEntry]:
    """Mounts at or below path, deepest first (the order to unmount them).

    mountinfo names mounts by their real paths, so a path reached through a symlink (a state
    root given as /var/lib/cowlab -> /data/cowlab) is resolved before comparing: otherwise a
    mount below it would go unseen, and a recursive delete would go through it."""
    p = os.path.abspath(os.fspath(path))
    real = os.path.realpath(p)
    with open("/proc/self/mountinfo") as f:
        text = f.read()
        if _escape(p) not in text and _escape(real) not in text:
            return []  # the common case, without parsing every line
    hits = [m for m in mountinfo() if any(m.target == q or m.target.startswith(q.rstrip("/") + "/") for q in {p, real})]
    return sorted(hits, key=lambda m: m.target.count("/"), reverse=True)


def is_mountpoint(path: str | os.PathLike) -> bool:
    p = os.path.abspath(os.fspath(path))
    return any(m.target == p for m in mountinfo())


def mount_of(path: str | os.PathLike) -> MountEntry:
    """The mount holding path (longest matching target)."""
    p = os.path.realpath(os.fspath(path))
    best = None
    for m in mountinfo():
        t = m.target.rstrip("/") or "/"
        if p == t or p.startswith(t.rstrip("/") + "/") or t == "/":
            if best is None or len(t) >= len(best.target):
                best = m
    if best is None:  # e.g. a chroot whose root is not a mount point: nothing in mountinfo covers it
        raise CowlabError(
            f"no mount in /proc/self/mountinfo holds {p} (a chroot whose root is not a mount "
            f"point?); bind-mount the root onto itself first: mount --bind ROOT ROOT"
        )
    return best


def disk_usage(path: str | os.PathLike) -> int:
    """Bytes allocated under path (st_blocks, so a sparse loop image counts what it holds; a
    hard-linked file once), staying on path's filesystem: what deleting it would give back."""
    top = os.fspath(path)
    try:
        st = os.lstat(top)
    except FileNotFoundError:
        return 0
    total, seen, dev = st.st_blocks * 512, set(), st.st_dev
    if not os.path.isdir(top) or os.path.islink(top):
        return total
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    s = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if s.st_dev != dev:
                    continue  # a mount below (a loop filesystem, a container): counted by its own owner
                if s.st_nlink > 1 and not e.is_dir(follow_symlinks=False):
                    if s.st_ino in seen:
                        continue
                    seen.add(s.st_ino)
                total += s.st_blocks * 512
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return total


def sudo_user() -> tuple[int, int] | None:
    """(uid, gid) of the user who ran us through sudo, when we run as root; else None."""
    if os.geteuid() != 0:
        return None
    uid, gid = os.environ.get("SUDO_UID", ""), os.environ.get("SUDO_GID", "")
    if not uid.isdigit() or int(uid) == 0:
        return None
    return int(uid), int(gid) if gid.isdigit() else int(uid)


def hand_over(path: str | os.PathLike) -> None:
    """Give what we (root, through sudo) wrote at path back to the sudo user: the root-owned
    directories between path and its nearest ancestor the user owns (made by mkdir -p), and
    everything root-owned below path, so a later command without sudo can write beside it
    (`nox -s notebooks` after `sudo nox -s bench-overlay2`). Nothing happens without sudo, or
    where no ancestor is the user's (a directory of root's own choosing stays root's)."""
    who = sudo_user()
    if who is None:
        return
    p = Path(os.path.abspath(os.fspath(path)))
    chain = []
    for a in [p, *p.parents]:
        try:
            st = os.lstat(a)
        except FileNotFoundError:
            continue
        if st.st_uid == who[0]:
            break
        if st.st_uid != 0:
            return  # someone else's: leave it
        chain.append(a)
    else:
        return  # no ancestor is the user's
    for a in chain[1:]:
        os.lchown(a, *who)
    if not os.path.lexists(p):
        return
    if not os.path.isdir(p) or os.path.islink(p):
        if os.lstat(p).st_uid == 0:
            os.lchown(p, *who)
        return
    dev = os.lstat(p).st_dev
    for root, dirs, files in os.walk(p):
        if os.lstat(root).st_dev != dev:
            dirs[:] = []
            continue
        for name in [root, *(os.path.join(root, f) for f in files + dirs)]:
            try:
                st = os.lstat(name)
                if st.st_uid == 0 and st.st_dev == dev:
                    os.lchown(name, *who)
            except FileNotFoundError:
                pass


def holders(path: str | os.PathLike) -> list[tuple[int, str, str]]:
    """Processes using something at or below path, from /proc (no fuser needed): (pid, command,
    how: cwd, root, exe or an open file). Processes we can't inspect are left out."""
    p = os.path.realpath(os.fspath(path)).rstrip("/") or "/"

    def under(link: str) -> bool:
        try:
            t = os.readlink(link)
        except OSError:
            return False
        return t == p or t.startswith(p + "/")

    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        base = f"/proc/{d}"
        how = [w for w in ("cwd", "root", "exe") if under(f"{base}/{w}")]
        if not how:
            try:
                if any(under(f"{base}/fd/{fd}") for fd in os.listdir(f"{base}/fd")):
                    how.append("open file")
            except OSError:
                pass
        if how:
            try:
                with open(f"{base}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                comm = "?"
            out.append((int(d), comm, ", ".join(how)))
    return out


def describe_holders(path: str | os.PathLike) -> str:
    """Who keeps path busy, in words a shell user can act on."""
    hs = holders(path)
    if not hs:
        return (
            f"no process has its working directory or a file there now (a mount below {path}, "
            f"or a process that just ended); see: grep {path} /proc/self/mountinfo"
        )
    return describe_holders_of(hs)


def describe_holders_of(hs: list[tuple[int, str, str]]) -> str:
    listed = "; ".join(f"pid {pid} ({comm}: {how})" for pid, comm, how in hs[:5])
    more = f" and {len(hs) - 5} more" if len(hs) > 5 else ""
    return f"in use by {listed}{more}; leave it (cd elsewhere) or end those processes, then try again"


def safe_rmtree(path: str | os.PathLike, within: str | os.PathLike) -> None:
    """Remove a tree that lies inside `within`, refusing to cross into any mount.

    A recursive delete through a live overlay or bind mount would destroy lower layers or host
    data, so a mount at or below the path is an error, not something to unmount silently. The
    walk asks the kernel first: rmdir(2) of a mountpoint fails with EBUSY before the kernel looks
    at whether the directory is empty (vfs_rmdir), so a directory is entered only when rmdir says
    ENOTEMPTY — never a mountpoint of this mount namespace, with no mount table to read. An empty
    container (diff, work, merged) goes with a handful of rmdirs, as it would by hand.
    """
    p = os.path.abspath(os.fspath(path))
    w = os.path.abspath(os.fspath(within))
    if not (p.startswith(w.rstrip("/") + "/")):
        raise CowlabError(f"refusing to delete {p}: outside {w}")
    stack: list[tuple[str, bool]] = [(p, False)]  # (path, its entries are gone): no recursion limit
    while stack:
        d, emptied = stack.pop()
        try:
            os.rmdir(d)
            continue
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            _unlink_entry(p, d)
            continue
        except OSError as e:
            if e.errno == errno.EBUSY:
                raise CowlabError(f"refusing to delete {p}: {d} is still mounted") from None
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or emptied:
                raise
        stack.append((d, True))
        with os.scandir(d) as it:
            for ent in it:
                if ent.is_dir(follow_symlinks=False):
                    stack.append((ent.path, False))
                else:
                    _unlink_entry(p, ent.path)


def _unlink_entry(top: str, path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno == errno.EBUSY:  # a file bind-mounted over
            raise CowlabError(f"refusing to delete {top}: {path} is still mounted") from None
        raise


def modprobe(*args: str, timeout: float = 120) -> bool:
    """Load a kernel module; False where it can't be (no such module, or no modprobe at all: a
    minimal root or a container has no kmod, and a built-in or missing module is then the
    caller's question, not an error)."""
    try:
        return run(["modprobe", *args], check=False, timeout=timeout).returncode == 0
    except (CowlabError, subprocess.TimeoutExpired):
        return False


def run(cmd: list[str], check: bool = True, timeout: float | None = 600, **kw) -> subprocess.CompletedProcess:
    """Run a tool, capturing output; a failure becomes one readable line."""
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except FileNotFoundError:
        raise CowlabError(f"{cmd[0]} is not installed") from None
    if check and cp.returncode != 0:
        msg = (cp.stderr or cp.stdout).strip().splitlines()
        raise CowlabError(f"{' '.join(cmd[:3])} failed ({cp.returncode}): {msg[-1] if msg else ''}")
    return cp


def proc_starttime(pid: int) -> int | None:
    """Start time of pid in clock ticks since boot, or None if it is gone (guards pid reuse)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(s[s.rindex(")") + 2 :].split()[19])


def pid_alive(pid: int, starttime: int | None) -> bool:
    st = proc_starttime(pid)
    return st is not None and (starttime is None or st == starttime)


def running(pid: int, starttime: int | None = None) -> bool:
    """Alive and not a dead zombie. A zombie that has exited but whose parent has not reaped it
    yet is as good as gone to whoever wants it ended; but a zombie thread-group leader whose other
    threads still run (a multithreaded FUSE daemon mid-exit, or one whose main thread ended) is
    still running: its stat shows Z with num_threads > 1."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return False
    fields = s[s.rindex(")") + 2 :].split()
    if starttime is not None and int(fields[19]) != starttime:
        return False
    return fields[0] not in ("Z", "X") or int(fields[17]) > 1


def _ended(pid: int, starttime: int | None) -> bool:
    """Our child: ended once waitpid has reaped it (a zombie leader whose threads still run is
    not reapable yet, and is not gone). Anyone else's: once it no longer runs."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return bool(done)
    except ChildProcessError:
        return not running(pid, starttime)


def kill_pid(pid: int, starttime: int | None, grace: float = 5.0) -> None:
    """End a process cowlab started: SIGTERM, then SIGKILL; only if pid and start time match.
    Returns once it is gone (reaped, if it is our child), or 5 s after SIGKILL: a process in
    uninterruptible sleep ends only when its I/O returns, which may take a later release (a
    writer blocked on a full thin pool that queues dies once the pool is torn down)."""
    if not pid_alive(pid, starttime):
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)  # a zombie of ours is signalled too, harmlessly, and reaped below
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while not _ended(pid, starttime):
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        else:
            return


def loop_devices() -> dict[str, str]:
    """Loop device → backing file, from sysfs (no losetup process needed)."""
    out = {}
    base = Path("/sys/block")
    for d in base.glob("loop*"):
        bf = d / "loop" / "backing_file"
        if bf.exists():
            out[f"/dev/{d.name}"] = bf.read_text().strip()
    return out


def ignore_enoent(fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.EINVAL):
            raise


def sparse_file(path: str | os.PathLike, size: int) -> None:
    """A new sparse file of `size` bytes (never an existing one: O_EXCL)."""
    with open(path, "xb") as f:
        f.truncate(size)


def static_busybox() -> str | None:
    """A busybox binary that runs in an empty chroot or an image without a dynamic loader (Debian's
    busybox-static): an ELF without a PT_INTERP header. None if this host has none."""
    for cand in ("/bin/busybox", "/usr/bin/busybox", shutil.which("busybox")):
        if cand and os.path.isfile(cand) and is_static_elf(cand):
            return cand
    return None


def is_static_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            ident = f.read(64)
            if ident[:4] != b"\x7fELF":
                return False
            is64, end = ident[4] == 2, "<" if ident[5] == 1 else ">"
            if is64:
                (phoff,) = struct.unpack_from(end + "Q", ident, 32)
                phentsize, phnum = struct.unpack_from(end + "HH", ident, 54)
            else:
                (phoff,) = struct.unpack_from(end + "I", ident, 28)
                phentsize, phnum = struct.unpack_from(end + "HH", ident, 42)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
        # PT_INTERP (3): needs a dynamic loader the chroot doesn't have
        return all(struct.unpack_from(end + "I", table, i * phentsize)[0] != 3 for i in range(phnum))
    except (OSError, struct.error):
        return False
