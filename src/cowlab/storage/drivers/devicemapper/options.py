"""Docker's dm.* options as cowlab's device mapper drivers read them: their defaults (Docker's),
the mkfs and mount options of the thin volumes, and one parser for the values a user gives."""

from __future__ import annotations

from cowlab.base.units import parse_size
from cowlab.storage.drivers.devicemapper.thin import GiB, KiB

DEFAULTS = {
    "block_size": 64 * KiB,  # Docker: dm.blocksize=64K
    "fs": "xfs",  # Docker: dm.fs (xfs where available, since 1.13)
    "base_size": 10 * GiB,  # Docker: dm.basesize=10G
    "data_size": 100 * GiB,  # Docker: dm.loopdatasize=100G (sparse)
    "metadata_size": 2 * GiB,  # Docker: dm.loopmetadatasize=2G (sparse)
    "zero_blocks": False,  # Docker: skip_block_zeroing
    "error_if_no_space": False,  # the kernel's default: queue_if_no_space
    "no_space_timeout": None,  # module parameter; None leaves it as it is (60 s by default)
    "low_water_blocks": 32768,  # Docker's lowWaterMark, capped below the pool size
}
MKFS = {
    "xfs": ["mkfs.xfs", "-q", "-f", "-K"],  # -K / nodiscard: Docker's dm.mkfsarg defaults
    "ext4": ["mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0"],
}
MOUNT_OPTS = {"xfs": "nouuid", "ext4": ""}  # every snapshot of an xfs volume has the base's UUID


def value(options: dict, key: str):
    """Option `key` as the driver uses it: given, else Docker's default; sizes in binary units."""
    v = options.get(key, DEFAULTS.get(key))
    if key in ("block_size", "base_size", "data_size", "metadata_size"):
        return parse_size(v)  # binary units, as Docker reads its dm options
    if key in ("zero_blocks", "error_if_no_space", "force"):
        return as_bool(v) if v is not None else False
    if key in ("no_space_timeout", "low_water_blocks"):
        return None if v in (None, "") else int(v)
    return v


def as_bool(v) -> bool:
    if isinstance(v, bool):
        return v
    return str(v).lower() in ("1", "true", "yes", "on")
