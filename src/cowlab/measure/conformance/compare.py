"""Trees and their comparison: what the conformance suite holds a container to.

Every path of both trees: type, permission bits including setuid/setgid/sticky, uid/gid, size
and content (sha256) of files, symlink targets, device numbers, the mtime of non-directories
(directory mtimes change with every entry a layer adds, so no two correct implementations agree
on them), user.* xattrs when the driver declares the `xattrs` capability, and hard-link groups:
paths that share an inode in the oracle must share one in the container and vice versa (st_nlink
itself is not compared: a union reports the link count of the lower inode, which counts links the
union hides).
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass

KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chr",
    stat.S_IFBLK: "blk",
    stat.S_IFSOCK: "socket",
}


@dataclass(frozen=True)
class Node:
    kind: str
    mode: int
    uid: int
    gid: int
    size: int | None = None
    digest: str | None = None
    target: str | None = None
    rdev: tuple[int, int] | None = None
    mtime_ns: int | None = None
    xattrs: tuple = ()


def sha256(path: str) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def xattrs_of(full: str, prefix: str | None = "user.") -> tuple:
    try:
        names = os.listxattr(full, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for n in sorted(names):
        if prefix is None or n.startswith(prefix):
            try:
                out.append((n, os.getxattr(full, n, follow_symlinks=False)))
            except OSError:
                continue
    return tuple(out)


def scan(root: os.PathLike | str, xattrs: bool = True) -> tuple[dict[str, Node], set[frozenset[str]]]:
    """Every path under root ("/" is root itself) → Node, and the hard-link groups (sets of paths
    sharing an inode, two or more)."""
    root = os.fspath(root)
    nodes: dict[str, Node] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    stack = ["/"]
    while stack:
        rel = stack.pop()
        full = root if rel == "/" else root + rel
        st = os.lstat(full)
        kind = KINDS.get(stat.S_IFMT(st.st_mode), "?")
        n = Node(
            kind,
            stat.S_IMODE(st.st_mode),
            st.st_uid,
            st.st_gid,
            size=st.st_size if kind == "file" else None,
            digest=sha256(full) if kind == "file" else None,
            target=os.readlink(full) if kind == "symlink" else None,
            rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("chr", "blk") else None,
            mtime_ns=None if kind == "dir" else st.st_mtime_ns,
            xattrs=xattrs_of(full) if xattrs else (),
        )
        nodes[rel] = n
        if kind == "dir":
            for name in sorted(os.listdir(full), reverse=True):
                stack.append(("" if rel == "/" else rel) + "/" + name)
        else:
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
    groups = {frozenset(v) for v in inodes.values() if len(v) > 1}
    return nodes, groups


def _describe(n: Node) -> str:
    if n.kind == "chr" and n.rdev == (0, 0):
        return "chr 0:0, a whiteout leaked into the container"
    return n.kind


def compare(
    oracle: os.PathLike | str,
    other: os.PathLike | str,
    *,
    mtimes: bool = True,
    skip_mtime: Iterable[str] = (),
    xattrs: bool = True,
) -> list[str]:
    """Differences between two trees, one readable line each (empty: equal)."""
    a, ga = scan(oracle, xattrs)
    b, gb = scan(other, xattrs)
    skip = set(skip_mtime)
    for g in ga:  # a write through one hard link touches them all
        if g & skip:
            skip |= g
    out: list[str] = []
    for p in sorted(a.keys() - b.keys()):
        out.append(f"missing in container: {p} ({a[p].kind})")
    for p in sorted(b.keys() - a.keys()):
        what = _describe(b[p])
        if os.path.basename(p).startswith(".wh."):
            what += ", an OCI whiteout name leaked into the container"
        out.append(f"unexpected in container: {p} ({what})")
    for p in sorted(a.keys() & b.keys()):
        x, y = a[p], b[p]
        if x.kind != y.kind:
            out.append(f"{p}: is a {y.kind}, expected a {x.kind}")
            continue
        if x.mode != y.mode and x.kind != "symlink":
            out.append(f"{p}: mode {y.mode:04o}, expected {x.mode:04o}")
        if (x.uid, x.gid) != (y.uid, y.gid):
            out.append(f"{p}: owner {y.uid}:{y.gid}, expected {x.uid}:{x.gid}")
        if x.kind == "file" and (x.size, x.digest) != (y.size, y.digest):
            assert x.digest is not None and y.digest is not None  # scan() hashes every file
            out.append(
                f"{p}: content differs ({y.size} bytes sha256 {y.digest[:12]}, expected "
                f"{x.size} bytes sha256 {x.digest[:12]})"
            )
        if x.target != y.target:
            out.append(f"{p}: symlink to {y.target!r}, expected {x.target!r}")
        if x.rdev != y.rdev:
            out.append(f"{p}: device {y.rdev}, expected {x.rdev}")
        if mtimes and x.kind != "dir" and p not in skip and x.mtime_ns != y.mtime_ns:
            out.append(f"{p}: mtime {_t(y.mtime_ns)}, expected {_t(x.mtime_ns)}")
        if xattrs and x.xattrs != y.xattrs:
            out.append(f"{p}: user xattrs {dict(y.xattrs)}, expected {dict(x.xattrs)}")
    common = a.keys() & b.keys()
    ga = {g & common for g in ga if len(g & common) > 1}
    gb = {g & common for g in gb if len(g & common) > 1}
    for g in sorted(ga - gb, key=sorted):
        out.append(f"hard links: {', '.join(sorted(g))} should be one inode; in the container {_groups_of(g, gb)}")
    for g in sorted(gb - ga, key=sorted):
        if not any(g <= h for h in ga):
            out.append(f"hard links: {', '.join(sorted(g))} share an inode in the container but not in the oracle")
    return out


def _groups_of(g: frozenset, groups: set) -> str:
    parts = [", ".join(sorted(h & g)) for h in groups if len(h & g) > 1]
    return ("only " + "; ".join(parts) + " are linked") if parts else "they are separate inodes"


def _t(ns: int | None) -> str:
    if ns is None:
        return "-"
    s, frac = divmod(ns, 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + (f".{frac:09d}" if frac else "")
