"""Every backend cowlab knows, by the name users know it by."""

from __future__ import annotations

from ..errors import CowlabError
from .base import Container, Driver, Probe
from .overlay2 import Overlay2
from .vfs import Vfs
from .aufs import Aufs
from .btrfs import Btrfs
from .fuse_overlayfs import FuseOverlayfs
from .overlay import Overlay
from .unionfs_fuse import UnionfsFuse
from .zfs import Zfs

DRIVERS: dict[str, type[Driver]] = {d.name: d for d in (Overlay2, Vfs)}
# native backends of issue 4 (device mapper is registered by its own module)
DRIVERS.update({d.name: d for d in (Btrfs, Zfs, Overlay, Aufs, FuseOverlayfs, UnionfsFuse)})
from .devicemapper import DeviceMapperDirect, DeviceMapperLoop  # noqa: E402

DRIVERS.update({d.name: d for d in (DeviceMapperLoop, DeviceMapperDirect)})
from .erofs import Erofs  # noqa: E402
from .composefs import Composefs  # noqa: E402

DRIVERS.update({d.name: d for d in (Erofs, Composefs)})  # issue 15: beyond the slides


def get(name: str) -> type[Driver]:
    try:
        return DRIVERS[name]
    except KeyError:
        raise CowlabError(f"unknown driver {name!r}; drivers: {', '.join(DRIVERS)}") from None


__all__ = ["DRIVERS", "Container", "Driver", "Probe", "get"]
