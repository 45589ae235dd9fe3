"""Every backend cowlab knows, by the name users know it by."""

from __future__ import annotations

from ..errors import CowlabError
from .base import Container, Driver, Probe
from .overlay2 import Overlay2
from .vfs import Vfs

DRIVERS: dict[str, type[Driver]] = {d.name: d for d in (Overlay2, Vfs)}


def get(name: str) -> type[Driver]:
    try:
        return DRIVERS[name]
    except KeyError:
        raise CowlabError(f"unknown driver {name!r}; drivers: {', '.join(DRIVERS)}") from None


__all__ = ["DRIVERS", "Container", "Driver", "Probe", "get"]
