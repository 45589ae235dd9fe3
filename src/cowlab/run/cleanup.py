"""Find and release what dead runs left: from the journals first, then from the system's own
lists (mountinfo, loop devices), restricted to paths under the state root."""

from __future__ import annotations

import os

from cowlab.base import sysutil
from cowlab.base.resources import RELEASERS, Resources, owner_alive, owners, read_entry, tagged_processes
from cowlab.base.state import StateRoot


def sweep(state: StateRoot, everything: bool = False) -> list[str]:
    """Release dead runs' resources (and with everything=True, persistent ones too).

    Returns one line per action, for the user to read. Live runs are never touched.
    """
    import cowlab.measure.engine.daemon  # noqa: F401  (a private dockerd's releasers)
    import cowlab.results  # noqa: F401  (a killed run's run.json record)
    import cowlab.storage.drivers  # noqa: F401  (registers every driver's releasers)

    done: list[str] = []
    protected: set[str] = set()
    retry: list[Resources] = []
    for info in owners(state):
        live = owner_alive(info) and not (everything and info["kind"] != "run")
        entries = _entries(info["dir"])
        if live:
            protected.update(_paths(entries))
            continue
        for e in entries:  # a lab's workspace may hold a state root of its own: sweep it first
            if e.get("kind") == "workspace":
                for nested in nested_roots(e["path"]):
                    done += [f"{nested}: {line}" for line in sweep(StateRoot(nested), everything=True)]
        res = Resources.open(state, info["owner"]) if (info["dir"] / "owner.json").exists() else None
        if res is None:
            res = Resources(state, info["owner"], "run", claim=False)
        for pid in tagged_processes(info["owner"], state):  # children first: they may hold mounts busy
            sysutil.kill_pid(pid, sysutil.proc_starttime(pid))
            done.append(f"ended process {pid} of {info['owner']}")
        errs = res.close()
        done.append(f"released {len(entries)} resource(s) of {info['owner']}")
        done += [f"  could not release {e}" for e in errs]
        if errs:
            retry.append(res)

    # Mounts and loop devices under the root that no journal names: a crash between the
    # kernel call and the journal can't produce these (we journal first), but an older
    # cowlab or a manual experiment can.
    for m in sysutil.mounts_under(state.path):
        if m.target == os.path.realpath(state.path):
            continue  # the state root may itself be a mount (a disk given to cowlab): not ours
        if in_nested_root(state, m.target):
            continue  # another state root's (one made inside this one): its own cleanup's
        if m.target not in protected and not any(m.target.startswith(p + "/") for p in protected):
            try:
                sysutil.umount(m.target)
                done.append(f"unmounted stray {m.target}")
            except OSError as e:
                done.append(f"  could not unmount {m.target}: {e}")
    # What a backend keeps outside the filesystem that no remaining journal names (device
    # mapper's devices with this state root's prefix), before the loop devices a stray pool may
    # hold: each registered driver's own sweep, once per implementation.
    from cowlab.storage.drivers import DRIVERS

    entries = [e for info in owners(state) for e in _entries(info["dir"])]
    sweepers: dict = {}
    for cls in DRIVERS.values():
        # a classmethod bound to cls has __func__; mypy types the bound method as a plain Callable
        sweepers.setdefault(cls.sweep_strays.__func__, cls)  # type: ignore[attr-defined]
    for cls in sweepers.values():
        done += cls.sweep_strays(state, entries)
    for dev, f in sysutil.loop_devices().items():
        if state.inside(f) and f not in protected and not in_nested_root(state, f):
            sysutil.run(["losetup", "-d", dev], check=False)
            done.append(f"detached stray {dev} ({f})")

    # What failed above because of a mount nobody journaled (e.g. a dataset a killed FUSE
    # daemon had mounted) may go now that strays are unmounted: one more pass, so a single
    # `cowlab cleanup` leaves nothing.
    for res in retry:
        errs = res.close()
        done.append(f"retried {res.owner}: " + ("everything released" if not errs else f"{len(errs)} left"))
        done += [f"  could not release {e}" for e in errs]

    # Staging directories of dead runs (an extraction interrupted half way).
    if state.tmp.exists():
        for d in state.tmp.iterdir():
            staging_pid = _staging_pid(d.name)
            if everything or staging_pid is None or not sysutil.pid_alive(staging_pid, None):
                if d.is_dir() and not d.is_symlink():
                    sysutil.safe_rmtree(d, state.path)
                else:
                    os.unlink(d)
                done.append(f"removed staging {d.name}")
    if everything:

        def in_use(p: str) -> bool:  # a live run's data (a vfs home has no mount to show it)
            return any(q == p or q.startswith(p + "/") or p.startswith(q + "/") for q in protected)

        for sub in (state.store, state.backings):
            if not sub.exists():
                continue
            for child in sub.iterdir():
                if in_use(str(child)) or sysutil.mounts_under(child):
                    continue
                sysutil.safe_rmtree(child, state.path)
                done.append(f"removed {child}")
    return done


def in_nested_root(state: StateRoot, path: str) -> bool:
    """path lies in another state root made inside this one (its marker in a directory between
    the two): that root's journal, not this one's sweep, owns what is there."""
    from pathlib import Path

    from cowlab.base.state import MARKER

    top = os.path.realpath(state.path)
    p = Path(os.path.realpath(path))
    while str(p).startswith(top + "/"):
        if (p / MARKER).exists():
            return True
        p = p.parent
    return False


def nested_roots(path: str) -> list:
    """State roots cowlab commands made inside a workspace (a lab's `COWLAB_ROOT=$LAB/...`), at
    most two levels down: deeper would mean walking through whatever the lab mounted."""
    from pathlib import Path

    from cowlab.base.state import MARKER

    base = Path(path)
    if not base.is_dir():
        return []
    return sorted({m.parent for pat in (f"*/{MARKER}", f"*/*/{MARKER}") for m in base.glob(pat)})


def _entries(d) -> list[dict]:
    out = []
    for p in sorted(d.glob("[0-9]*.json")):
        try:
            e = read_entry(p)
        except OSError:
            continue
        if e is not None:
            out.append(e)
    return out


def _paths(entries: list[dict]) -> set[str]:
    """Paths a live journal names, also by their real paths (mountinfo and sysfs report those)."""
    out = {str(v) for e in entries for k, v in e.items() if k in ("target", "path", "file")}
    return out | {os.path.realpath(p) for p in out}


def _staging_pid(name: str) -> int | None:
    # staging dirs are named <pid>-<anything>
    head = name.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def kinds() -> list[str]:
    return sorted(RELEASERS)


__all__ = ["sweep", "kinds", "nested_roots"]
