"""What cowlab holds between commands, and where: images, imported layers, persistent
containers, their backings and services (a zfs-fuse daemon and its pool, a loop btrfs), runs
still going, staging. `cowlab status` prints it; `cowlab cleanup` names what it keeps and why;
`cowlab image prune` and `cowlab cleanup --all --images` give the disk back.

A persistent backing or service (owner `backing-<fstype>`, `service-<driver>`) exists only for
persistent containers: release_unused() lets it go with the last container that needs it.
"""

from __future__ import annotations

from dataclasses import dataclass

from cowlab.base import sysutil
from cowlab.base.errors import CowlabError
from cowlab.base.resources import Resources, owner_alive, owners
from cowlab.base.state import StateRoot
from cowlab.base.units import human_bytes
from cowlab.storage import drivers
from cowlab.store.images import ImageStore


@dataclass
class Held:
    what: str  # images, layers, container, backing, service, run, store, staging
    name: str
    where: str
    bytes: int | None
    note: str = ""
    file: str = ""  # a loop backing's image file


def containers(state: StateRoot) -> list[dict]:
    return [o for o in owners(state) if o["kind"] == "container"]


def _backing_fstypes(driver_name: str) -> tuple[str, ...]:
    cls = drivers.DRIVERS.get(driver_name)
    return (cls.backing_kinds or ()) if cls else ()


def survey(state: StateRoot) -> list[Held]:
    """Everything under the state root that outlives a command, with the bytes it takes."""
    out: list[Held] = []
    if not state.path.exists():
        return out
    store = ImageStore(state)
    imgs = store.list() if state.images.exists() else []
    if imgs:
        out.append(
            Held(
                "images",
                f"{len(imgs)} image(s)",
                str(state.layers),
                sysutil.disk_usage(state.layers) + sysutil.disk_usage(state.images),
                "layer tars; free with `cowlab image prune`",
            )
        )
    for info in owners(state):
        m = info.get("meta") or {}
        if info["kind"] == "container":
            out.append(
                Held(
                    "container",
                    m.get("id", info["owner"]),
                    m.get("mountpoint", "?"),
                    None,
                    f"{m.get('driver', '?')}, image {m.get('image', '?')}; "
                    f"remove with `cowlab container rm {m.get('id', '')}`",
                )
            )
        elif info["kind"] == "backing" and info["owner"].startswith("backing-"):
            f = m.get("image_file", "")
            out.append(
                Held(
                    "backing",
                    f"loop {m.get('fstype', '?')}",
                    m.get("mount", "?"),
                    sysutil.disk_usage(f) if f else None,
                    f"{m.get('device', '')} over {f}; kept for {m.get('fstype')} containers",
                    file=f,
                )
            )
        elif info["kind"] == "backing":
            d = m.get("driver", info["owner"].removeprefix("service-"))
            out.append(Held("service", d, str(info["dir"]), None, _service_note(info)))
        elif info["kind"] == "run":
            alive = owner_alive(info)
            out.append(
                Held(
                    "run",
                    info["owner"],
                    str(info["dir"]),
                    None,
                    "running" if alive else "dead: `cowlab cleanup` releases what it left",
                )
            )
    if state.store.exists():
        for child in sorted(state.store.iterdir()):
            if child.name == "persistent":
                for d in sorted(child.iterdir()) if child.is_dir() else []:
                    out.append(
                        Held(
                            "store",
                            d.name,
                            str(d),
                            sysutil.disk_usage(d),
                            "images imported into this driver for persistent containers",
                        )
                    )
            else:
                out.append(Held("store", child.name, str(child), sysutil.disk_usage(child), "a run's driver home"))
    kept_files = {h.file for h in out if h.file}
    if state.backings.exists():
        for f in sorted(state.backings.iterdir()):
            if str(f) not in kept_files:
                out.append(
                    Held(
                        "backing file",
                        f.name,
                        str(f),
                        sysutil.disk_usage(f),
                        "a run's loop filesystem image (a live run, or `cowlab cleanup`)",
                    )
                )
    if state.tmp.exists():
        n = sum(1 for _ in state.tmp.iterdir())
        if n:
            out.append(Held("staging", f"{n} item(s)", str(state.tmp), sysutil.disk_usage(state.tmp), ""))
    return out


def _service_note(info: dict) -> str:
    from cowlab.base.resources import read_entry

    parts = []
    for p in sorted(info["dir"].glob("[0-9]*.json")):
        e = read_entry(p) or {}
        k = e.get("kind")
        if k in ("zfs_fuse_daemon", "process") and e.get("pid"):
            parts.append(f"daemon pid {e['pid']}")
        elif k == "zpool":
            parts.append(f"pool {e.get('pool', '?')}")
        elif k == "file":
            parts.append(f"file {e.get('path')} ({human_bytes(sysutil.disk_usage(e.get('path', '')))})")
        elif k == "dm":
            parts.append(f"dm {e.get('name', '?')}")
    return ", ".join(parts) or "kept for persistent containers"


def kept(state: StateRoot) -> list[str]:
    """What `cowlab cleanup` leaves on purpose, and why (one line each)."""
    lines = []
    for h in survey(state):
        if h.what == "container":
            lines.append(
                f"kept container {h.name} ({h.note.split(';')[0]}) at {h.where}: still registered; "
                f"`cowlab container rm {h.name}` or `cowlab cleanup --all` removes it"
            )
        elif h.what in ("backing", "service"):
            lines.append(
                f"kept {h.what} {h.name} ({h.note}): persistent containers use it; "
                f"it goes with the last of them, or with `cowlab cleanup --all`"
            )
        elif h.what == "images":
            lines.append(
                f"kept {h.name} ({human_bytes(h.bytes)}): `cowlab image prune` or "
                f"`cowlab cleanup --all --images` frees them"
            )
    return lines


def release_unused(state: StateRoot, driver_name: str) -> list[str]:
    """After a container of driver_name is removed: release the driver's persistent service
    (its daemon and pool) and the persistent loop backing of its kind when no remaining
    container needs them. Returns what was released, in words."""
    left = containers(state)
    done = []
    if not any((o.get("meta") or {}).get("driver") == driver_name for o in left):
        owner = f"service-{driver_name}"
        if (state.journal / owner / "owner.json").exists():
            errs = Resources.open(state, owner).close()
            if errs:
                raise CowlabError(f"could not release {driver_name}'s service: {'; '.join(errs)}")
            home = state.store / "persistent" / driver_name  # records of images in the pool just destroyed
            if home.exists():
                sysutil.safe_rmtree(home, state.path)
            done.append(f"released {driver_name}'s pool and daemon: no container uses them any more")
    for kind in _backing_fstypes(driver_name):
        if any(kind in _backing_fstypes((o.get("meta") or {}).get("driver", "")) for o in left):
            continue
        owner = f"backing-{kind}"
        if (state.journal / owner / "owner.json").exists():
            errs = Resources.open(state, owner).close()
            if errs:
                raise CowlabError(f"could not release the persistent {kind} backing: {'; '.join(errs)}")
            done.append(f"unmounted and removed the persistent {kind} loop filesystem: no container uses it any more")
    return done


def remove_image(state: StateRoot, store: ImageStore, ref: str) -> str:
    """Remove an image from the store and from every driver's persistent home; refused while a
    container uses it. Returns its name and id."""
    from cowlab.storage import autobacking
    from cowlab.storage import backing as B

    img = store.get(ref)
    users = [o for o in containers(state) if (o.get("meta") or {}).get("image_id") == img.id]
    if users:
        raise CowlabError(f"image {img.name} is used by container {users[0]['meta']['id']}; remove it first")
    with Resources.for_run(state) as res:
        for cls in drivers.DRIVERS.values():
            home = state.store / "persistent" / cls.name
            if home.exists():
                cls(B.host(state.store / "persistent"), res, store).remove_image(img)
            elif cls.backing_kinds:  # on the persistent loop filesystem of its kind (btrfs)
                b = autobacking.existing_persistent(state, cls)
                if b is not None and (b.path / cls.name).exists():
                    cls(b, res, store).remove_image(img)
    store.remove(ref)
    return f"{img.name} {img.short}"


def prune_images(state: StateRoot) -> tuple[list[str], list[str]]:
    """Remove every image no container uses: (removed, kept with why)."""
    store = ImageStore(state)
    removed, kept_ = [], []
    used = {(o.get("meta") or {}).get("image_id") for o in containers(state)}
    for img in store.list():
        if img.id in used:
            kept_.append(f"kept image {img.name}: a container uses it")
            continue
        removed.append(remove_image(state, store, img.id))
    return removed, kept_


def total_bytes(state: StateRoot) -> int:
    return sysutil.disk_usage(state.path)


__all__ = ["Held", "survey", "kept", "release_unused", "remove_image", "prune_images", "total_bytes"]
