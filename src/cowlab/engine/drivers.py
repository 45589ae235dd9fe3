"""The storage drivers a private dockerd is asked to run, and what each needs from cowlab.

Engine mode only needs a driver's name and the daemon options; it never imports cowlab's own
(primitive) driver modules. Where a driver cannot run here, dockerd itself is still asked: its
own error is what the run records (a failed `engine_start` sample), so the reason a user reads
is Docker's, not a guess.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EngineDriver:
    name: str                      # --storage-driver
    backing: str | None = None     # a backing filesystem the data-root must be on (loop made if not)
    storage_opts: tuple[str, ...] = ()
    binaries: tuple[str, ...] = ()  # host programs the driver runs (checked, for a clear reason)
    note: str = ""
    extra: dict = field(default_factory=dict)

    def missing(self) -> list[str]:
        return [b for b in self.binaries if not shutil.which(b)]


ENGINE_DRIVERS: dict[str, EngineDriver] = {d.name: d for d in (
    EngineDriver("overlay2", note="overlayfs, up to 128 lower layers per mount (multi-lower)"),
    EngineDriver("overlay", note="legacy overlayfs driver: one lower dir, layers chained by hard links"),
    EngineDriver("btrfs", backing="btrfs", note="a subvolume per layer, snapshots for containers"),
    EngineDriver("vfs", note="a full copy per layer and per container (no copy-on-write)"),
    EngineDriver("fuse-overlayfs", binaries=("fuse-overlayfs",),
                 note="overlay in userspace through FUSE"),
    # Known to Docker 20.10 but not runnable natively on this kind of host: dockerd is still
    # started, and its refusal is recorded.
    EngineDriver("devicemapper", note="needs device-mapper in the kernel (dm-thin-pool)"),
    EngineDriver("zfs", note="needs the data-root on a ZFS dataset (not made natively here)"),
    EngineDriver("aufs", note="needs a kernel with AUFS"),
)}


def get(name: str) -> EngineDriver | None:
    return ENGINE_DRIVERS.get(name)
