"""Where a driver keeps its data: the state root's own filesystem, or a loop-mounted filesystem
image that cowlab makes (ext4, xfs with reflink, btrfs) and removes again."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from cowlab.base import faults, sysutil
from cowlab.base.errors import CowlabError
from cowlab.base.resources import Resources

# Why these mkfs options: ext4 without lazy init so no background thread writes during a
# measurement; xfs with reflink so overlay copy-up can clone (the default since xfsprogs 5.1,
# made explicit); btrfs as it comes.
MKFS = {
    "ext4": ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"],
    "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
}
KINDS = ("host",) + tuple(MKFS)


@dataclass
class Backing:
    kind: str  # host, ext4, xfs, btrfs
    path: Path  # where driver homes go
    loop_device: str = ""
    image_file: str = ""

    @property
    def mount(self) -> sysutil.MountEntry:
        return sysutil.mount_of(self.path)

    def used_bytes(self) -> int:
        """Bytes in use on the backing filesystem, after writing back dirty data."""
        sysutil.syncfs(self.path)
        st = os.statvfs(self.path)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def inodes_used(self) -> int:
        st = os.statvfs(self.path)
        return st.f_files - st.f_ffree

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def metadata(self) -> dict:
        m = self.mount
        return {
            "backing": self.kind,
            "backing_fs": m.fstype,
            "backing_mount_options": m.options,
            "backing_super_options": m.super_options,
            "backing_source": m.source,
            "backing_loop": bool(self.loop_device),
        }


def host(path: Path) -> Backing:
    path.mkdir(parents=True, exist_ok=True)
    return Backing("host", path)


def make_loop(state_backings: Path, res: Resources, fstype: str, size: int) -> Backing:
    """A fresh filesystem of fstype on a sparse file, loop-mounted; all journaled in res."""
    if fstype not in MKFS:
        raise CowlabError(f"unknown backing filesystem {fstype!r} (choose from {', '.join(KINDS)})")
    tool = MKFS[fstype][0]
    if not any(
        os.access(os.path.join(d, tool), os.X_OK)
        for d in os.environ.get("PATH", "").split(":") + ["/sbin", "/usr/sbin"]
    ):
        raise CowlabError(f"{tool} is not installed (run vagrant/provision/host.sh)")
    if fstype not in Path("/proc/filesystems").read_text():
        raise CowlabError(f"this kernel has no {fstype}")
    name = f"{fstype}-{uuid.uuid4().hex[:8]}"
    img = state_backings / f"{name}.img"
    mnt = state_backings / name
    res.acquire("file", lambda: sysutil.sparse_file(img, size), path=str(img))
    sysutil.run(MKFS[fstype] + [str(img)])
    faults.point("loop", "mkfs")
    h = res.add("loop", file=str(img))
    dev = sysutil.run(["losetup", "--find", "--show", str(img)]).stdout.strip()
    faults.point("loop", "attached")
    res.update(h, device=dev)
    res.acquire("dir", lambda: mnt.mkdir(), path=str(mnt))
    res.acquire("mount", lambda: sysutil.mount(dev, mnt, fstype), target=str(mnt))
    return Backing(fstype, mnt, dev, str(img))
