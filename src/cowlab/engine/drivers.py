"""The storage drivers a private dockerd is asked to run, and what each needs from cowlab.

Engine mode only needs a driver's name and the daemon options; it never imports cowlab's own
(primitive) driver modules. Where a driver cannot run here, dockerd itself is still asked: its
own error is what the run records (a failed `engine_start` sample), so the reason a user reads
is Docker's, not a guess.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EngineDriver:
    name: str                      # cowlab's name for it (the bench's DRIVER)
    backing: str | None = None     # a backing filesystem the data-root must be on (loop made if not)
    storage_opts: tuple[str, ...] = ()
    binaries: tuple[str, ...] = ()  # host programs the driver runs (checked, for a clear reason)
    note: str = ""
    extra: dict = field(default_factory=dict)
    docker_name: str = ""          # --storage-driver, where it differs from name
    device_mapper: bool = False    # libdevmapper inside dockerd: udev sync, dm devices to sweep
    # A cowlab driver whose engine_storage() makes what dockerd's driver is given (a thin pool
    # as dm.thinpooldev, a ZFS dataset as zfs.fsname): cowlab's, journaled like its own pools.
    pool_driver: str = ""

    @property
    def storage_driver(self) -> str:
        return self.docker_name or self.name

    def missing(self) -> list[str]:
        return [b for b in self.binaries if not shutil.which(b)]

    def options(self) -> list[str]:
        opts = list(self.storage_opts)
        if self.device_mapper and not os.path.exists("/run/udev/control"):
            # No udevd (a virtme guest, a container): libdevmapper makes its nodes itself and
            # dockerd would refuse to run without udev sync unless told this is intended.
            opts.append("dm.override_udev_sync_check=true")
        return opts


ENGINE_DRIVERS: dict[str, EngineDriver] = {d.name: d for d in (
    EngineDriver("overlay2", note="overlayfs, up to 128 lower layers per mount (multi-lower)"),
    EngineDriver("overlay", note="legacy overlayfs driver: one lower dir, layers chained by hard links"),
    EngineDriver("btrfs", backing="btrfs", note="a subvolume per layer, snapshots for containers"),
    EngineDriver("vfs", note="a full copy per layer and per container (no copy-on-write)"),
    EngineDriver("fuse-overlayfs", binaries=("fuse-overlayfs",),
                 note="overlay in userspace through FUSE"),
    # Docker's devicemapper in its old default mode (loop-lvm: sparse data and metadata files
    # on loop devices, 100G/2G, 10G base, xfs), as cowlab's devicemapper-loop builds it; through
    # the kernel VM where this kernel has no device mapper.
    EngineDriver("devicemapper-loop", docker_name="devicemapper", device_mapper=True,
                 note="Docker's loop-lvm: a thin pool on loop devices over sparse files"),
    # Docker's direct-lvm without LVM: a pristine pool cowlab makes on a block device (in mode
    # both a second one, option engine_device: the first holds cowlab's own pool).
    EngineDriver("devicemapper-direct", docker_name="devicemapper", device_mapper=True,
                 pool_driver="devicemapper-direct",
                 note="dm.thinpooldev: a thin pool cowlab makes on a block device (direct-lvm without LVM)"),
    # Known to Docker 20.10 but not runnable natively on this kind of host: dockerd is still
    # started, and its refusal is recorded.
    EngineDriver("devicemapper", device_mapper=True, note="needs device-mapper in the kernel (dm-thin-pool)"),
    # Docker's zfs driver on a dataset of a pool cowlab makes; it needs kernel ZFS (/dev/zfs):
    # through the kernel VM (--vm always) where the host has only zfs-fuse.
    EngineDriver("zfs", pool_driver="zfs",
                 note="a dataset of a pool cowlab makes (zfs.fsname); needs kernel ZFS, not zfs-fuse"),
    EngineDriver("aufs", note="needs a kernel with AUFS"),
)}


def get(name: str) -> EngineDriver | None:
    return ENGINE_DRIVERS.get(name)
