"""The backing a driver gets when it only runs on some filesystems (Driver.backing_kinds).

btrfs keeps layers as subvolumes, so it needs a btrfs under its home. When the user asks for
the host backing and the state root's filesystem is not one the driver runs on, cowlab makes a
loop filesystem of the driver's first kind instead: for a bench run it belongs to the run; for
`cowlab container create` it is persistent (journal owner `backing-<fstype>`, kind "backing"),
shared by every container that needs it and removed by `cowlab cleanup --all`.
"""

from __future__ import annotations

from pathlib import Path

from cowlab.base import sysutil
from cowlab.base.errors import CowlabError
from cowlab.base.resources import Resources, owners
from cowlab.base.state import StateRoot
from cowlab.base.units import parse_size  # noqa: F401  (the CLI's sizes; one parser: cowlab.base.units)
from cowlab.storage import backing as B

DEFAULT_SIZE = 32 << 30  # sparse: costs what is written


def _existing_dir(p: Path) -> Path:
    while not p.exists():
        p = p.parent
    return p


def kind_for(driver_cls, requested: str, where: Path) -> str:
    """The backing kind to use: `requested`, or for "host" the driver's own kind when the
    filesystem at `where` is not one it runs on. Raises if the user asked for one it can't."""
    kinds = driver_cls.backing_kinds
    if kinds is None:
        return requested
    if requested == "host":
        fs = sysutil.mount_of(_existing_dir(where)).fstype
        return "host" if fs in kinds else kinds[0]
    if requested not in kinds:
        raise CowlabError(
            f"{driver_cls.name} runs on {'/'.join(kinds)} only, not on a {requested} backing "
            f"(leave --backing at host and cowlab makes a {kinds[0]} loop filesystem)"
        )
    return requested


def existing_persistent(state: StateRoot, driver_cls) -> B.Backing | None:
    """The persistent loop backing of driver_cls's kind if it exists and is mounted; never makes one."""
    kinds = driver_cls.backing_kinds or ()
    for info in owners(state):
        m = info.get("meta", {})
        if (
            info["kind"] == "backing"
            and m.get("fstype") in kinds
            and m.get("mount")
            and sysutil.is_mountpoint(m["mount"])
        ):
            return B.Backing(m["fstype"], Path(m["mount"]), m.get("device", ""), m.get("image_file", ""))
    return None


def persistent(state: StateRoot, driver_cls, size: int = DEFAULT_SIZE) -> B.Backing:
    """The backing for persistent containers of driver_cls: the host store, or a loop
    filesystem of the driver's kind that outlives this command (made once, then reused)."""
    kind = kind_for(driver_cls, "host", state.store)
    if kind == "host":
        return B.host(state.store / "persistent")
    owner = f"backing-{kind}"
    for info in owners(state):
        if info["owner"] == owner:
            m = info.get("meta", {})
            if m.get("mount") and sysutil.is_mountpoint(m["mount"]):
                return B.Backing(kind, Path(m["mount"]), m.get("device", ""), m.get("image_file", ""))
            errs = Resources.open(state, owner).close()  # gone (a reboot): release and make anew
            if errs:
                raise CowlabError(f"stale persistent {kind} backing could not be released: {'; '.join(errs)}")
    res = Resources(state, owner, "backing", {"fstype": kind})
    try:
        b = B.make_loop(state.backings, res, kind, size)
    except BaseException:
        res.close()
        raise
    res.meta.update(mount=str(b.path), device=b.loop_device, image_file=b.image_file)
    Resources(state, owner, "backing", res.meta)  # rewrite owner.json with where it is
    return b
