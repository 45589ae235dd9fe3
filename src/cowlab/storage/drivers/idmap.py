"""Idmapped mounts (mount_setattr with MOUNT_ATTR_IDMAP, Linux 5.12; overlayfs on idmapped
layers since 5.19): what lets a user-namespaced container use an image's files as its own root
without a recursive chown of a copy.

An idmapped mount needs a user namespace to take its mapping from: a child process
(`unshare --user sleep`, journaled like every child cowlab starts) gets one, cowlab writes its
uid_map and gid_map, keeps an fd of /proc/CHILD/ns/user (the fd keeps the namespace alive) and
ends the child. A mount is then cloned (open_tree OPEN_TREE_CLONE), given the mapping, and
attached where asked (move_mount), journaled as a mount.

Overlayfs itself refuses to be idmapped (mount_setattr returns EINVAL on an overlay mount), so
drivers idmap its lower layers instead, as containerd's overlay snapshotter does.
"""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import time
from pathlib import Path

from cowlab.base.errors import CowlabError
from cowlab.base.resources import Handle, Resources, spawn

# x86_64 and aarch64 share the new mount API's syscall numbers
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442
OPEN_TREE_CLONE, OPEN_TREE_CLOEXEC = 1, os.O_CLOEXEC
AT_FDCWD, AT_EMPTY_PATH, AT_RECURSIVE = -100, 0x1000, 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOUNT_ATTR_IDMAP = 0x00100000

_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def parse(mapping: str) -> tuple[int, int, int]:
    """'0:100000:65536' (inside:outside:count, as in uid_map) → the three numbers."""
    try:
        inside, outside, count = (int(x) for x in str(mapping).split(":"))
    except ValueError:
        raise CowlabError(f"idmap {mapping!r}: write INSIDE:OUTSIDE:COUNT, e.g. 0:100000:65536") from None
    if min(inside, outside) < 0 or count < 1:
        raise CowlabError(f"idmap {mapping!r}: ids are >= 0 and the count >= 1")
    return inside, outside, count


def supported() -> str:
    """'' if this machine can make idmapped mounts, else why not."""
    if platform.machine() not in ("x86_64", "aarch64"):
        return f"the new mount API's syscall numbers are not known here ({platform.machine()})"
    rel = os.uname().release.split(".")
    try:
        if (int(rel[0]), int("".join(c for c in rel[1] if c.isdigit()) or 0)) < (5, 19):
            return f"kernel {os.uname().release} is older than 5.19 (overlayfs on idmapped layers)"
    except (IndexError, ValueError):
        return f"cannot read the kernel version {os.uname().release!r}"
    return ""


def userns_fd(res: Resources, mapping: str) -> int:
    """An fd of a new user namespace whose uid and gid maps are `mapping` (the caller closes it)."""
    inside, outside, count = parse(mapping)
    p = spawn(
        res,
        ["unshare", "--user", "sleep", "1000"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    h: Handle = p._cowlab_handle  # type: ignore[attr-defined]
    try:
        mine = os.stat("/proc/self/ns/user").st_ino
        deadline = time.monotonic() + 10
        while os.stat(f"/proc/{p.pid}/ns/user").st_ino == mine:  # not unshared yet
            if p.poll() is not None or time.monotonic() > deadline:
                err = (p.stderr.read() if p.stderr else b"") or b""  # a pipe: stderr=PIPE above
                raise CowlabError(
                    f"unshare --user did not make a user namespace: {err.decode(errors='replace').strip()}"
                )
            time.sleep(0.001)
        for f in ("uid_map", "gid_map"):
            with open(f"/proc/{p.pid}/{f}", "w") as m:
                m.write(f"{inside} {outside} {count}\n")
        return os.open(f"/proc/{p.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        res.release(h)
        if p.stderr:
            p.stderr.close()


def _check(r: int, what: str, path) -> int:
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what} {path}: {os.strerror(e)}")
    return r


def _attach(src: Path, dst: Path, ns_fd: int) -> None:
    fd = _check(
        _libc.syscall(SYS_OPEN_TREE, AT_FDCWD, os.fsencode(src), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC), "open_tree", src
    )
    try:
        attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, ns_fd)
        _check(
            _libc.syscall(
                SYS_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))
            ),
            "mount_setattr (idmap)",
            src,
        )
        _check(
            _libc.syscall(SYS_MOVE_MOUNT, fd, b"", AT_FDCWD, os.fsencode(dst), MOVE_MOUNT_F_EMPTY_PATH),
            "move_mount",
            dst,
        )
    finally:
        os.close(fd)


def idmapped_mount(res: Resources, src: Path, dst: Path, ns_fd: int) -> Handle:
    """An idmapped clone of the mount or directory at src, attached at dst (an existing
    directory), journaled in res."""
    return res.acquire("mount", lambda: _attach(src, dst, ns_fd), target=str(dst))
