"""The storage drivers a private dockerd is asked to run, and what each needs from cowlab.

Engine mode only needs a driver's name and the daemon options, which each cowlab driver declares
(Driver.engine, the registry); it never uses a primitive driver to run a container. Where a driver cannot run here, dockerd itself is still asked: its
own error is what the run records (a failed `engine_start` sample), so the reason a user reads
is Docker's, not a guess.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EngineDriver:
    name: str  # cowlab's name for it (the bench's DRIVER)
    backing: str | None = None  # a backing filesystem the data-root must be on (loop made if not)
    storage_opts: tuple[str, ...] = ()
    binaries: tuple[str, ...] = ()  # host programs the driver runs (checked, for a clear reason)
    note: str = ""
    extra: dict = field(default_factory=dict)
    docker_name: str = ""  # --storage-driver, where it differs from name
    device_mapper: bool = False  # libdevmapper inside dockerd: udev sync, dm devices to sweep
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


def _registered() -> dict[str, EngineDriver]:
    """Every cowlab driver that declares a dockerd counterpart (Driver.engine, the registry)."""
    from cowlab.storage import drivers

    return {n: EngineDriver(n, **cls.engine) for n, cls in drivers.DRIVERS.items() if cls.engine is not None}


ENGINE_DRIVERS: dict[str, EngineDriver] = _registered()
# Engine-only: known to Docker 20.10 but without a cowlab driver of that name, and not runnable
# natively on this kind of host: dockerd is still started, and its refusal is recorded.
ENGINE_DRIVERS["devicemapper"] = EngineDriver(
    "devicemapper", device_mapper=True, note="needs device-mapper in the kernel (dm-thin-pool)"
)


def get(name: str) -> EngineDriver | None:
    return ENGINE_DRIVERS.get(name)
