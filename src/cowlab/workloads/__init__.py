"""Every workload, by name. Each module's docstring says which claim of the slides it tests."""

from __future__ import annotations

from ..errors import CowlabError
from .base import Context, Measured, Timed, Workload
from .copyup import Copyup
from .creation import Creation
from .density import Density
from .io import IO
from .lookup import Lookup
from .mount_floor import MountFloor
from .space import Space
from .btrfs_chunks import BtrfsChunks
from .inodes import Inodes
from .pool_stats import PoolStats
from .rename import Rename
from .chown import Chown
from .sharing import Sharing
from .volatile import Volatile
from .idmap import Idmap

WORKLOADS: dict[str, type[Workload]] = {w.name: w for w in (Creation, MountFloor, Space, Density, IO, Copyup, Lookup)}
WORKLOADS.update({w.name: w for w in (BtrfsChunks, Inodes, PoolStats)})  # issue 4: native backends
# issue 15: what answered the slides' complaints since
WORKLOADS.update({w.name: w for w in (Rename, Chown, Sharing, Volatile, Idmap)})


def get(names: list[str] | None) -> list[Workload]:
    names = names or list(WORKLOADS)
    bad = [n for n in names if n not in WORKLOADS]
    if bad:
        raise CowlabError(f"unknown workload {bad[0]!r}; workloads: {', '.join(WORKLOADS)}")
    return [WORKLOADS[n]() for n in names]


__all__ = ["WORKLOADS", "Context", "Measured", "Timed", "Workload", "get"]
