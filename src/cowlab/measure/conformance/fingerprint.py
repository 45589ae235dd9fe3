"""What a driver keeps on disk under its home, fingerprinted: the image data a container must
never change (conformance's readonly-layers case), told apart from a pool's working storage."""

from __future__ import annotations

import os
import stat

from cowlab.base import sysutil
from cowlab.measure.conformance.compare import KINDS, sha256, xattrs_of
from cowlab.storage.drivers.base import Driver


def home_fingerprint(drv: Driver, skip_names: set[str]) -> dict[str, tuple]:
    """What the driver keeps on disk under its home, container data left out (any directory
    named after a live container, any mount): type, mode, owner, content, link target and every
    xattr (trusted.* included: overlay's opaque markers are image data)."""
    home = os.fspath(drv.home)
    mounts = {m.target for m in sysutil.mounts_under(home)}
    working = working_storage(home)
    out: dict[str, tuple] = {}
    for dp, dns, fns in os.walk(home):
        dns[:] = [d for d in dns if d not in skip_names and os.path.join(dp, d) not in mounts]
        for name in dns + fns:
            full = os.path.join(dp, name)
            if full in working:
                continue
            st = os.lstat(full)
            kind = KINDS.get(stat.S_IFMT(st.st_mode), "?")
            extra = (
                sha256(full)
                if kind == "file"
                else os.readlink(full)
                if kind == "symlink"
                else (os.major(st.st_rdev), os.minor(st.st_rdev))
                if kind in ("chr", "blk")
                else None
            )
            out[os.path.relpath(full, home)] = (
                kind,
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                st.st_size if kind == "file" else None,
                extra,
                xattrs_of(full, None),
            )
    return out


def working_storage(home: str) -> set[str]:
    """Files under home that back a loop device or that a process holds open (a zpool's vdev,
    a thin pool's data file, a daemon's log): a pool's working storage, whose bytes change with
    any write, not image data. For such drivers the sibling and new-container checks carry the
    read-only claim."""
    pre = home.rstrip("/") + "/"
    out = {f for f in sysutil.loop_devices().values() if f.startswith(pre)}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(pre):
                out.add(target)
    return out
