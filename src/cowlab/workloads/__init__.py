"""Every workload, by name. Each module's docstring says which claim of the slides it tests."""

from __future__ import annotations

from ..errors import CowlabError
from .base import Context, Measured, Timed, Workload
from .creation import Creation
from .mount_floor import MountFloor
from .space import Space

WORKLOADS: dict[str, type[Workload]] = {w.name: w for w in (Creation, MountFloor, Space)}


def get(names: list[str] | None) -> list[Workload]:
    names = names or list(WORKLOADS)
    bad = [n for n in names if n not in WORKLOADS]
    if bad:
        raise CowlabError(f"unknown workload {bad[0]!r}; workloads: {', '.join(WORKLOADS)}")
    return [WORKLOADS[n]() for n in names]


__all__ = ["WORKLOADS", "Context", "Measured", "Timed", "Workload", "get"]
