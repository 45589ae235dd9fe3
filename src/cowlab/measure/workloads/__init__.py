"""Every workload, by name. Each module's docstring says which claim of the slides it tests."""

from __future__ import annotations

from cowlab.base.errors import CowlabError
from cowlab.measure.workloads.base import Context, Measured, Timed, Workload
from cowlab.measure.workloads.btrfs_chunks import BtrfsChunks
from cowlab.measure.workloads.chown import Chown
from cowlab.measure.workloads.copyup import Copyup
from cowlab.measure.workloads.creation import Creation
from cowlab.measure.workloads.density import Density
from cowlab.measure.workloads.idmap import Idmap
from cowlab.measure.workloads.inodes import Inodes
from cowlab.measure.workloads.io import IO
from cowlab.measure.workloads.lookup import Lookup
from cowlab.measure.workloads.mount_floor import MountFloor
from cowlab.measure.workloads.pool_stats import PoolStats
from cowlab.measure.workloads.rename import Rename
from cowlab.measure.workloads.sharing import Sharing
from cowlab.measure.workloads.space import Space
from cowlab.measure.workloads.volatile import Volatile

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
