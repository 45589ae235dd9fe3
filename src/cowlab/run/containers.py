"""Containers a user keeps (`cowlab container create/ls/rm`): made under a persistent owner in the
resources journal, so they outlive the command that made them and `cowlab cleanup` finds a
half-made one."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

from cowlab.base import sysutil
from cowlab.base.errors import CowlabError, Unavailable
from cowlab.base.resources import Resources, owners
from cowlab.base.state import StateRoot
from cowlab.base.units import human_bytes
from cowlab.run import holdings, vmroute
from cowlab.run.runner import require_root
from cowlab.storage import autobacking, drivers
from cowlab.store.images import ImageStore

Status = Callable[[str], AbstractContextManager]


def _no_status(_msg: str) -> AbstractContextManager:
    return nullcontext()


def create(state: StateRoot, image_ref: str, driver_name: str, status: Status = _no_status):
    """Import image_ref into driver_name (once) and create a container of it: (container, image).
    `status(msg)` wraps each slow step (a spinner at the terminal)."""
    cls = drivers.get(driver_name)
    require_root()
    p = vmroute.probe(cls)
    if not p.available:
        raise Unavailable(f"driver {driver_name}", p.reason, p.hint)
    state.ensure()
    store = ImageStore(state)
    img = store.get(image_ref)
    if cls.max_layers and len(img.layers) > cls.max_layers:
        raise CowlabError(
            f"image {img.name} has {len(img.layers)} layers; {driver_name} supports at most {cls.max_layers}"
        )
    with Resources.for_run(state) as imports:
        # A driver with its own daemon or pool (zfs) keeps it under a persistent owner, so the
        # container outlives this command; a btrfs-only driver gets a persistent loop btrfs.
        svc = (
            Resources(state, f"service-{driver_name}", "backing", {"driver": driver_name}) if cls.services else imports
        )
        drv = cls(autobacking.persistent(state, cls), svc, store)
        need = drv.space_needed(img) + (0 if drv.has_image(img) else img.content_bytes)
        if need > drv.backing.free_bytes():
            raise CowlabError(
                f"creating a {driver_name} container of {img.name} needs about {human_bytes(need)}; "
                f"{drv.backing.path} has {human_bytes(drv.backing.free_bytes())} free"
            )
        with status(f"importing {img.name} into {driver_name}"):
            drv.import_image(img)
        cid = drv.new_id()
        # "creating" until created: if we die half way, `cowlab cleanup` releases it
        res = Resources(
            state,
            f"ctr-{cid}",
            "container",
            {
                "id": cid,
                "image": img.name,
                "image_id": img.id,
                "driver": driver_name,
                "creating": {"pid": os.getpid(), "starttime": sysutil.proc_starttime(os.getpid())},
            },
        )
        try:
            with status(f"creating a {driver_name} container"):
                c = drv.create(img, res, cid)
        except BaseException:
            res.close()
            raise
        res.meta["mountpoint"] = str(c.mountpoint)
        res.meta.pop("creating", None)  # complete: persistent from now on
        Resources(state, res.owner, "container", res.meta)  # rewrite owner.json with the mountpoint
    return c, img


def listed(state: StateRoot) -> list[dict]:
    """The containers of this state root: their journal owners (meta: id, image, driver, mountpoint)."""
    return [o for o in owners(state) if o["kind"] == "container"]


def remove(state: StateRoot, ref: str) -> list[str]:
    """Remove the container named by id or mountpoint; the lines to print (what was removed, and
    what its driver released once nothing used it any more)."""
    require_root()
    real = os.path.realpath(ref) if os.path.exists(ref) else None
    for o in listed(state):
        m = o["meta"]
        if ref == m.get("id") or (real and real == m.get("mountpoint")):
            refuse_if_busy(m)
            errs = Resources.open(state, o["owner"]).close()
            if errs:
                raise CowlabError("could not remove everything: " + "; ".join(errs))
            return [f"removed {m['id']}", *holdings.release_unused(state, m.get("driver", ""))]
    raise CowlabError(f"no container {ref!r} (see `cowlab container ls`)")


def refuse_if_busy(meta: dict) -> None:
    """Before anything is released: a shell sitting inside the container (`cd "$mnt"`) or a
    process holding it would make the unmount fail after a wait; say so at once, and who."""
    mp = meta.get("mountpoint")
    if not mp:
        return
    try:
        cwd = os.getcwd()
    except OSError:  # our working directory was removed: it is not inside a live mount
        cwd = ""
    if cwd == mp or cwd.startswith(mp.rstrip("/") + "/"):
        raise CowlabError(
            f"your working directory {cwd} is inside container {meta.get('id')}; "
            f"cd out of it (e.g. `cd ~`), then run `cowlab container rm {meta.get('id')}` again"
        )
    me = {os.getpid(), os.getppid()}  # cowlab (and sudo) inherit the shell's cwd, checked above
    others = [h for h in sysutil.holders(mp) if h[0] not in me]
    if others:
        raise CowlabError(f"container {meta.get('id')} at {mp} is busy: " + sysutil.describe_holders_of(others))
