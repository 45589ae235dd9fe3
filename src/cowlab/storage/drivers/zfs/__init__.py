"""zfs: ZFS datasets, snapshots and clones, on zfs-fuse natively or kernel ZFS in the VM."""

from cowlab.storage.drivers.zfs.driver import Zfs

__all__ = ["Zfs"]
