"""Small readers of kernel counters that workloads share: /proc/meminfo, /proc/slabinfo,
/proc/sys/fs/dentry-state, cgroup memory.stat (v1 or v2) and statfs.

Every reader returns plain data (dicts, tuples, ints) and has a `parse_*` twin that takes the
text, so the parsing is unit-tested against captured text. Also here: a scratch memory cgroup
(`MemoryCgroup`) a workload can put its children in, to see what *they* were charged for rather
than what the whole machine did meanwhile. It is journaled as a resource of kind "cgroup"
(released by rmdir, see resources.py), because cgroups live outside the state root.
"""

from __future__ import annotations

import errno
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cowlab.base import sysutil
from cowlab.base.errors import NotApplicable
from cowlab.base.resources import Handle, Resources

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# --- /proc/meminfo ---------------------------------------------------------------------------
def parse_meminfo(text: str) -> dict[str, int]:
    """'Cached:  1234 kB' → {'Cached': 1263616}: values in bytes; unitless ones (HugePages_*)
    are counts and kept as they are."""
    out = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        parts = rest.split()
        if not parts:
            continue
        n = int(parts[0])
        if len(parts) > 1 and parts[1].lower() == "kb":
            n *= 1024
        out[key.strip()] = n
    return out


def meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    return parse_meminfo(Path(path).read_text())


# --- "name value" counters: /proc/vmstat, cgroup memory.stat ---------------------------------
def parse_counters(text: str) -> dict[str, int]:
    """'name 1234' lines → dict of ints (/proc/vmstat; memory.stat: 'cache 1234\\nrss 0' in v1,
    'anon 0\\nfile 1234' in v2); other lines are ignored."""
    out = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) == 2 and f[1].lstrip("-").isdigit():
            out[f[0]] = int(f[1])
    return out


parse_vmstat = parse_counters


def vmstat(path: str = "/proc/vmstat") -> dict[str, int]:
    return parse_vmstat(Path(path).read_text())


def drop_count(path: str = "/proc/vmstat") -> int:
    """How many times anyone has written to /proc/sys/vm/drop_caches since boot (drop_pagecache
    plus drop_slab): a change during a measurement means another process dropped caches."""
    v = vmstat(path)
    return v.get("drop_pagecache", 0) + v.get("drop_slab", 0)


# --- /proc/slabinfo --------------------------------------------------------------------------
class Slab(NamedTuple):
    active_objs: int
    num_objs: int
    objsize: int
    bytes: int  # memory the cache holds: num_slabs × pagesperslab × PAGE_SIZE


def parse_slabinfo(text: str, page_size: int = PAGE_SIZE) -> dict[str, Slab]:
    """slabinfo 2.x: name → Slab. `bytes` counts whole slabs (what the cache takes from the page
    allocator), not just live objects, so it is what a growing cache really costs."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith(("slabinfo", "#")):
            continue
        head, _, rest = line.partition(":")
        f = head.split()
        if len(f) < 6:
            continue
        name, active, num, objsize, _perslab, pages = f[0], *map(int, f[1:6])
        slabdata = rest.partition("slabdata")[2].split()
        num_slabs = int(slabdata[1]) if len(slabdata) >= 2 else 0
        out[name] = Slab(active, num, objsize, num_slabs * pages * page_size)
    return out


def slabinfo(path: str = "/proc/slabinfo") -> dict[str, Slab]:
    """Needs root (the file is 0400) and a kernel with CONFIG_SLUB_DEBUG; {} if unreadable."""
    try:
        return parse_slabinfo(Path(path).read_text())
    except (PermissionError, FileNotFoundError):
        return {}


# The inode cache of each backing filesystem, as /proc/slabinfo names it.
FS_INODE_CACHE = {
    "ext4": "ext4_inode_cache",
    "xfs": "xfs_inode",
    "btrfs": "btrfs_inode",
    "tmpfs": "shmem_inode_cache",
    "ext3": "ext4_inode_cache",
    "ext2": "ext4_inode_cache",
    "f2fs": "f2fs_inode_cache",
    "zfs": "zfs_znode_cache",
}


def fs_inode_cache(fstype: str) -> str | None:
    return FS_INODE_CACHE.get(fstype)


# --- what density reads: one definition for engine and primitive mode --------------------------
DENSITY_SLABS = ("dentry", "ovl_inode", "fuse_inode")


def density_slab_caches(fstype: str) -> list[str]:
    """The slab caches density watches: dentries, overlayfs's and FUSE's inodes, and the inode
    cache of the backing filesystem."""
    fs = fs_inode_cache(fstype)
    return [*DENSITY_SLABS] + ([fs] if fs else [])


def cache_snapshot(fstype: str) -> dict:
    """Every machine-wide memory reading density takes, together: Cached, nr_dentry, slabs."""
    slabs = slabinfo()
    return {
        "cached": meminfo()["Cached"],
        "dentries": dentry_state()["nr_dentry"],
        "slabs": {n: slabs[n] for n in density_slab_caches(fstype) if n in slabs},
    }


def cache_growth(before: dict, after: dict) -> list[tuple[str, int, str, dict]]:
    """(metric, value, unit, extra params) between two cache_snapshots: page_cache_bytes,
    dentry_count, and per slab cache (param `cache`) slab_bytes and slab_objects. slab_bytes
    is the growth of active objects × the object size: a cache's pages grow only once the free
    slots drop_caches left in them are used up, so whole pages would read 0 at small K."""
    out: list[tuple[str, int, str, dict]] = [
        ("page_cache_bytes", after["cached"] - before["cached"], "B", {}),
        ("dentry_count", after["dentries"] - before["dentries"], "count", {}),
    ]
    for cache, s1 in after["slabs"].items():
        s0 = before["slabs"].get(cache)
        if s0 is not None:
            objs = s1.active_objs - s0.active_objs
            out.append(("slab_bytes", objs * s1.objsize, "B", {"cache": cache}))
            out.append(("slab_objects", objs, "count", {"cache": cache}))
    return out


# --- /proc/sys/fs/dentry-state ---------------------------------------------------------------
DENTRY_FIELDS = ("nr_dentry", "nr_unused", "age_limit", "want_pages", "nr_negative", "dummy")


def parse_dentry_state(text: str) -> dict[str, int]:
    vals = [int(x) for x in text.split()]
    return dict(zip(DENTRY_FIELDS, vals, strict=False))  # a field a newer kernel adds is left out


def dentry_state(path: str = "/proc/sys/fs/dentry-state") -> dict[str, int]:
    return parse_dentry_state(Path(path).read_text())


# --- cgroup memory.stat ----------------------------------------------------------------------
parse_memory_stat = parse_counters


def normalize_memory_stat(stat: dict[str, int], version: int, kmem: int | None = None) -> dict[str, int]:
    """The few numbers workloads compare, under one set of names for v1 and v2:
    file (page cache charged), anon, kernel (slab and other kernel memory; v1 has it only in
    memory.kmem.usage_in_bytes, passed as kmem), slab (v2 only)."""
    if version == 1:
        out = {"file": stat.get("total_cache", stat.get("cache", 0)), "anon": stat.get("total_rss", stat.get("rss", 0))}
        if kmem is not None:
            out["kernel"] = kmem
        return out
    out = {"file": stat.get("file", 0), "anon": stat.get("anon", 0)}
    if "kernel" in stat:
        out["kernel"] = stat["kernel"]
    if "slab" in stat:
        out["slab"] = stat["slab"]
    return out


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/<pid>/cgroup → controller → path ('' for the v2 unified hierarchy)."""
    out = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrls, path = parts
        for c in ctrls.split(",") if ctrls else [""]:
            out[c] = path
    return out


def _cgroup_mounts() -> tuple[str | None, str | None]:
    """(v1 memory hierarchy mount, v2 mount)."""
    v1 = v2 = None
    for m in sysutil.mountinfo():
        if m.fstype == "cgroup" and "memory" in m.super_options.split(","):
            v1 = v1 or m.target
        elif m.fstype == "cgroup2":
            v2 = v2 or m.target
    return v1, v2


@dataclass
class MemoryCgroup:
    """A scratch memory cgroup, a child of cowlab's own (so every limit above still applies)."""

    path: Path
    version: int
    handle: Handle | None = None  # its journal entry; res.release(handle) removes it

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def stat(self) -> dict[str, int]:
        """memory.stat normalised (see normalize_memory_stat)."""
        raw = parse_memory_stat((self.path / "memory.stat").read_text())
        kmem = None
        if self.version == 1:
            try:
                kmem = int((self.path / "memory.kmem.usage_in_bytes").read_text())
            except (OSError, ValueError):
                pass
        return normalize_memory_stat(raw, self.version, kmem)


def make_memory_cgroup(res: Resources) -> MemoryCgroup:
    """Create (journaled, kind "cgroup") a child memory cgroup of this process's own.

    NotApplicable, with the reason, where there is none to make: no memory controller, v2
    without memory enabled for our subtree (enabling it would mean moving processes we don't
    own), or no permission."""
    v1, v2 = _cgroup_mounts()
    mine = parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
    if v1 and "memory" in mine:
        parent, version = Path(v1) / mine["memory"].lstrip("/"), 1
    elif v2 and "" in mine:
        parent, version = Path(v2) / mine[""].lstrip("/"), 2
        try:
            enabled = (parent / "cgroup.subtree_control").read_text().split()
        except OSError as e:
            raise NotApplicable(f"cannot read {parent}/cgroup.subtree_control: {e.strerror}") from None
        if "memory" not in enabled:
            raise NotApplicable(
                f"cgroup v2: memory is not enabled in {parent}/cgroup.subtree_control "
                "(cowlab does not reorganise cgroups it does not own)"
            )
    else:
        raise NotApplicable("no memory cgroup controller mounted (neither v1 memory nor v2)")
    if not str(parent).startswith("/sys/fs/cgroup/"):
        raise NotApplicable(f"cgroups are mounted at {parent}, not under /sys/fs/cgroup")
    # The "cowlab-" name and the /sys/fs/cgroup place are what the releaser checks before rmdir.
    path = parent / f"cowlab-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        h = res.acquire("cgroup", lambda: path.mkdir(), path=str(path))
    except OSError as e:
        why = e.strerror or (errno.errorcode.get(e.errno, str(e)) if e.errno is not None else str(e))
        raise NotApplicable(f"cannot create a memory cgroup under {parent}: {why}") from None
    return MemoryCgroup(path, version, h)


# --- statfs ----------------------------------------------------------------------------------
def statfs(path: str | os.PathLike) -> dict[str, int]:
    """Used/free bytes and inodes of the filesystem holding path (no sync: see synced_statfs)."""
    st = os.statvfs(path)
    return {
        "used_bytes": (st.f_blocks - st.f_bfree) * st.f_frsize,
        "free_bytes": st.f_bavail * st.f_frsize,
        "total_bytes": st.f_blocks * st.f_frsize,
        "inodes_used": st.f_files - st.f_ffree,
        "inodes_free": st.f_ffree,
        "block_size": st.f_frsize,
    }


def synced_statfs(path: str | os.PathLike) -> dict[str, int]:
    """statfs after syncfs, so delayed allocation has been done and used_bytes is settled."""
    sysutil.syncfs(path)
    return statfs(path)


def hard_links(root: str | os.PathLike) -> int:
    """Extra names of the regular files under root (Σ st_nlink − 1 over their inodes), on
    root's filesystem only (mounts below it are not walked). A tree copied with hard links
    (`cp -al`, Docker's legacy overlay layers) adds one per file; a copy or a diff adds none."""
    root = os.fspath(root)
    dev = os.lstat(root).st_dev
    links: dict[int, int] = {}
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                if st.st_dev != dev:
                    continue
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.is_file(follow_symlinks=False) and st.st_nlink > 1:
                    links[st.st_ino] = st.st_nlink
    return sum(n - 1 for n in links.values())


def delta(after: dict, before: dict) -> dict:
    """after − before for every numeric key in both (tuples of numbers element-wise)."""
    out = {}
    for k in after.keys() & before.keys():
        a, b = after[k], before[k]
        if isinstance(a, tuple):
            out[k] = (
                type(a)(*(x - y for x, y in zip(a, b, strict=True)))
                if hasattr(a, "_fields")
                else tuple(x - y for x, y in zip(a, b, strict=True))
            )
        elif isinstance(a, (int, float)):
            out[k] = a - b
    return out
