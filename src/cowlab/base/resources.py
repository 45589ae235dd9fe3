"""Journaled resources: every mount, loop device, process... is written down before it exists.

Layout under <root>/journal/<owner>/: owner.json says who owns the entries (a run, by pid and
start time, or a persistent container or backing), and NNNNNNNN.json files are resources in the
order they were acquired. Release runs in reverse order through one releaser per kind, which is
the same code for a normal teardown, a Ctrl-C and `cowlab cleanup` after a crash.

Entries are written without fsync: they must survive the death of the process (SIGKILL), which
the page cache guarantees; a power loss takes the mounts and processes away with it anyway.
A new entry is written in place (create + one write), not aside and renamed: the resource is
created only after add() returns, so an entry a kill left empty or torn names nothing that exists
and is dropped when read. Updates of an existing entry still go aside and are renamed in place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cowlab.base import faults, sysutil
from cowlab.base.errors import CowlabError
from cowlab.base.state import StateRoot

Releaser = Callable[[dict, StateRoot], None]
RELEASERS: dict[str, Releaser] = {}

# Owners released first come first: containers sit on backings, never the other way round.
TIERS = {"run": 0, "container": 1, "image": 2, "backing": 3}


def releaser(kind: str):
    def deco(fn: Releaser) -> Releaser:
        RELEASERS[kind] = fn
        return fn

    return deco


@releaser("dir")
def _release_dir(e: dict, state: StateRoot) -> None:
    sysutil.safe_rmtree(e["path"], state.path)


@releaser("file")
def _release_file(e: dict, state: StateRoot) -> None:
    if not state.inside(e["path"]):
        raise CowlabError(f"journal names {e['path']}, outside the state root; not touching it")
    sysutil.ignore_enoent(os.unlink, e["path"])


def _unmount(target: str) -> None:
    for _ in range(50):
        try:
            sysutil.umount(target)
            return
        except OSError as err:
            if err.errno in (errno.EINVAL, errno.ENOENT):
                return  # not mounted (any more), or never was
            if err.errno != errno.EBUSY:
                raise
            time.sleep(0.1)  # a FUSE daemon or a process that just exited still holds it
    raise CowlabError(f"{target} stays busy: {sysutil.describe_holders(target)}")


@releaser("mount")
def _release_mount(e: dict, state: StateRoot) -> None:
    """Unmount; then, if the entry also names the mount's own directory ("dir": one entry for a
    container's dirs and its mount, one journal write instead of two), remove that directory.
    A lazy release (Resources.release) unmounts now and leaves the directory, with the entry
    naming it, for later, outside any timing, as containerd's snapshotter frees space in its
    Cleanup. (Entries of older versions may carry a "trash" key: the directory is deleted in
    place all the same.)"""
    target = e["target"]
    if target:  # None: the second half of a lazy release (the mount went in the first)
        _unmount(target)
    d = e.get("dir")
    if not d:
        return
    if not state.inside(d):
        raise CowlabError(f"journal names {d}, outside the state root; not touching it")
    sysutil.safe_rmtree(d, state.path)


@releaser("tree")
def _release_tree(e: dict, state: StateRoot) -> None:
    """A directory whose every mount below is ours (a bench run's containers): unmount them,
    deepest first, then the tree goes. Resources acquired with covered_by=<this entry> need no
    entry of their own: this releaser finds what a crash left of them."""
    path = e["path"]
    if not state.inside(path):
        raise CowlabError(f"journal names {path}, outside the state root; not touching it")
    for m in sysutil.mounts_under(path):
        _release_mount({"target": m.target}, state)
    sysutil.safe_rmtree(path, state.path)


@releaser("loop")
def _release_loop(e: dict, state: StateRoot) -> None:
    dev = e.get("device")
    if dev and sysutil.loop_devices().get(dev) == e["file"]:
        sysutil.run(["losetup", "-d", dev])


@releaser("workspace")
def _release_workspace(e: dict, state: StateRoot) -> None:
    """A directory someone else's commands work in (a lab's $LAB): whatever was mounted or
    loop-attached under it by hand is released with it, deepest first, then the tree goes.
    State roots nested inside it (a lab's own COWLAB_ROOT) are swept by cleanup before this runs."""
    path = e["path"]
    if not state.inside(path) or os.path.abspath(path) == os.path.abspath(state.path):
        raise CowlabError(f"journal names workspace {path}, outside the state root; not touching it")
    if e.get("tag"):  # what the session started in the background and that left its group
        for pid in tagged_processes(e["tag"], state):
            sysutil.kill_pid(pid, sysutil.proc_starttime(pid))
    # Cgroups live outside the workspace: a lab names each in .cowlab-cgroups before making it.
    listed = Path(path) / ".cowlab-cgroups"
    if listed.is_file():
        for cg in reversed(listed.read_text().split()):
            procs = Path(cg) / "cgroup.procs"
            if cg.startswith("/sys/fs/cgroup/") and os.path.basename(cg).startswith("cowlab-") and procs.exists():
                for word in procs.read_text().split():  # the lab's own readers, put there by the lab
                    sysutil.kill_pid(int(word), sysutil.proc_starttime(int(word)))
            _release_cgroup({"path": cg}, state)
    for attempt in range(3):
        for m in sysutil.mounts_under(path):
            try:
                sysutil.umount(m.target)
            except OSError as err:
                if err.errno == errno.EBUSY and attempt == 2:
                    sysutil.umount(m.target, detach=True)  # a reader we don't own: let go lazily
                elif err.errno not in (errno.EINVAL, errno.ENOENT, errno.EBUSY):
                    raise
        if not sysutil.mounts_under(path):
            break
        time.sleep(0.2)
    real = os.path.realpath(path)
    for dev, f in sysutil.loop_devices().items():
        if f == real or f.startswith(real + "/"):
            # dm devices made by hand on the workspace's loop devices (a thin pool and its
            # volumes): the loop device can't go while they hold it.
            for name in dm_holders(dev):
                sysutil.run(["dmsetup", "remove", name], check=False)
            sysutil.run(["losetup", "-d", dev], check=False)
    sysutil.safe_rmtree(path, state.path)


def dm_holders(dev: str, sysfs: str = "/sys/class/block") -> list[str]:
    """Names of the device-mapper devices stacked on block device dev, the topmost first (thin
    volumes before their pool), as sysfs's holders/ links show them."""
    out: list[str] = []
    holders = Path(sysfs) / os.path.basename(dev) / "holders"
    if not holders.is_dir():
        return out
    for h in sorted(holders.iterdir()):
        if not h.name.startswith("dm-"):
            continue
        for name in dm_holders(h.name, sysfs):
            if name not in out:
                out.append(name)
        try:
            name = (Path(sysfs) / h.name / "dm" / "name").read_text().strip()
        except OSError:
            continue
        if name and name not in out:
            out.append(name)
    return out


@releaser("process")
def _release_process(e: dict, state: StateRoot) -> None:
    if e.get("pid"):
        sysutil.kill_pid(e["pid"], e.get("starttime"), grace=e.get("grace", 5.0))
    elif e.get("tag"):  # died between fork and journaling the pid: find it by its tag
        for pid in tagged_processes(e["tag"], state):
            sysutil.kill_pid(pid, sysutil.proc_starttime(pid), grace=e.get("grace", 5.0))


@releaser("cgroup")
def _release_cgroup(e: dict, state: StateRoot) -> None:
    """A scratch cgroup (probes.make_memory_cgroup): rmdir, once the processes in it are gone
    (they are journaled after it, so released before it)."""
    p = os.path.abspath(e["path"])
    if not (p.startswith("/sys/fs/cgroup/") and os.path.basename(p).startswith("cowlab-")):
        raise CowlabError(f"journal names cgroup {p}, which cowlab did not make; not touching it")
    for _ in range(50):
        try:
            os.rmdir(p)
            return
        except OSError as err:
            if err.errno == errno.ENOENT:
                return
            if err.errno != errno.EBUSY:
                raise
            time.sleep(0.1)  # a task that was just killed is still being torn down
    raise CowlabError(f"cgroup {p} stays busy; see {p}/cgroup.procs")


@dataclass(eq=False)  # a handle is itself: found in lists by identity, not by comparing args
class Handle:
    seq: int
    kind: str
    args: dict
    path: Path | None  # None: covered by another entry (add(covered_by=...)), never written


@dataclass
class Resources:
    """The resources of one owner, released in reverse order of acquisition."""

    state: StateRoot
    owner: str
    kind: str = "run"
    meta: dict = field(default_factory=dict)
    claim: bool = True  # write owner.json as ours; False when reopening another's journal
    _seq: int = 0
    _live: list[Handle] = field(default_factory=list)
    _spent: list[Handle] = field(default_factory=list)  # released lazily, entry not yet unlinked

    def __post_init__(self):
        self.dir = self.state.journal / self.owner
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.claim or not (self.dir / "owner.json").exists():
            info = {"owner": self.owner, "kind": self.kind, "meta": self.meta, "created": time.time()}
            if self.kind == "run":
                info["pid"] = os.getpid()
                info["starttime"] = sysutil.proc_starttime(os.getpid())
            _write_json(self.dir / "owner.json", info)
        for p in sorted(self.dir.glob("[0-9]*.json")):  # reopened (e.g. `container rm`)
            e = read_entry(p)
            if e is None:  # torn by a kill inside add(): its resource was never created
                sysutil.ignore_enoent(os.unlink, p)
                continue
            self._live.append(Handle(int(p.stem), e.pop("kind"), e, p))
            self._seq = max(self._seq, int(p.stem) + 1)

    @classmethod
    def for_run(cls, state: StateRoot, **meta) -> Resources:
        pid = os.getpid()
        return cls(state, f"run-{pid}-{sysutil.proc_starttime(pid)}", "run", meta)

    @classmethod
    def open(cls, state: StateRoot, owner: str) -> Resources:
        info = json.loads((state.journal / owner / "owner.json").read_text())
        return cls(state, owner, info["kind"], info.get("meta", {}), claim=False)

    # -- acquiring -------------------------------------------------------------------------
    def add(self, kind: str, covered_by: Handle | None = None, **args) -> Handle:
        """Journal a resource that is about to be created (its releaser must be idempotent).
        covered_by: a live "tree" entry whose releaser would release this resource too (a mount
        below its directory): then nothing is written, and the resource is released by this
        process as any other, or by that entry's releaser after a crash."""
        if kind not in RELEASERS:
            raise KeyError(f"no releaser for resource kind {kind!r}")
        if covered_by is not None and (covered_by.kind != "tree" or covered_by not in self._live):
            raise ValueError(f"{kind} can only be covered by a live tree entry of the same journal")
        path = None if covered_by is not None else self.dir / f"{self._seq:08d}.json"
        h = Handle(self._seq, kind, args, path)
        self._seq += 1
        # Live before the entry is written: a Ctrl-C between the two must not leave an entry
        # close() does not know of (releasers are idempotent, so one never written is harmless).
        self._live.append(h)
        if path is not None:
            _write_new(path, {"kind": kind, **args})
        faults.point("journal", kind)
        return h

    def acquire(self, kind: str, create: Callable[[], object], covered_by: Handle | None = None, **args):
        """Journal, then create; if creation fails, release whatever part of it exists."""
        h = self.add(kind, covered_by=covered_by, **args)
        try:
            create()
        except BaseException:
            self.release(h)
            raise
        faults.point("acquired", kind)
        return h

    def update(self, h: Handle, **args) -> None:
        """Record what is only known after creation (a loop device's name, a child's pid).
        A handle already released has no entry left to update."""
        h.args.update(args)
        if h in self._live and h.path is not None:
            _write_json(h.path, {"kind": h.kind, **h.args})

    def handles(self) -> list[Handle]:
        """What this journal holds now, oldest first (a copy)."""
        return list(self._live)

    def forget(self, h: Handle) -> None:
        """Stop journaling h without releasing it (what it made now belongs to something else)."""
        if h.path is not None:
            sysutil.ignore_enoent(os.unlink, h.path)
        if h in self._live:
            self._live.remove(h)

    # -- releasing -------------------------------------------------------------------------
    def release(self, h: Handle, lazy: bool = False) -> None:
        """Release h and drop its entry. lazy: release only what must go now — a mount, not the
        directory its entry also names ("dir") — and leave the rest and the entry itself to
        forget_spent(), outside a timed op. Safe because the entry stays on disk until then and
        every releaser is idempotent: a crash in between makes `cowlab cleanup` replay the whole
        release (the unmount finds nothing mounted, the directory goes)."""
        if lazy:
            RELEASERS[h.kind]({**h.args, "dir": None}, self.state)
            faults.point("release", h.kind)
            self._spent.append(h)
        else:
            RELEASERS[h.kind](h.args, self.state)
            faults.point("release", h.kind)
            if h.path is not None:
                sysutil.ignore_enoent(os.unlink, h.path)
        if h in self._live:
            self._live.remove(h)

    def forget_spent(self) -> None:
        """Finish lazy releases: what they left (a directory) goes, then their entries."""
        while self._spent:
            h = self._spent[0]
            if h.args.get("dir"):  # what release(lazy=True) left: the directory, not the mount
                RELEASERS[h.kind]({**h.args, "target": None}, self.state)
            if h.path is not None:
                sysutil.ignore_enoent(os.unlink, h.path)
            self._spent.pop(0)

    def close(self) -> list[str]:
        """Release everything in reverse; Ctrl-C is held off so teardown itself is not torn."""
        errors = []
        with signals_blocked():
            kept = False
            while self._spent:
                try:
                    self.forget_spent()
                except Exception as e:  # its entry stays for `cowlab cleanup`; go on with the rest
                    h = self._spent.pop(0)
                    errors.append(f"{h.kind} {h.args}: {e}")
                    kept = True
            for h in reversed(list(self._live)):
                try:
                    self.release(h)
                except Exception as e:  # keep going: one stuck resource must not leak the rest
                    errors.append(f"{h.kind} {h.args}: {e}")
            if not self._live and not kept:
                with contextlib.suppress(FileNotFoundError, OSError):
                    for stray in self.dir.glob(".*.json.*"):  # a write a SIGKILL cut short
                        stray.unlink()
                    os.unlink(self.dir / "owner.json")
                    self.dir.rmdir()
        return errors

    def __enter__(self) -> Resources:
        return self

    def __exit__(self, *exc) -> None:
        errs = self.close()
        if errs and exc[0] is None:
            raise CowlabError("teardown left resources behind: " + "; ".join(errs))


OWNER_ENV = "COWLAB_OWNER"
# Owner names are unique per state root only (service-zfs, backing-btrfs, ctr-<id> exist in
# every root that made one): a child carries its state root too, so one root's cleanup never
# ends another root's processes. (Not COWLAB_ROOT, which the user sets for cowlab itself.)
ROOT_ENV = "COWLAB_OWNER_ROOT"


def spawn(res: Resources, argv: list[str], **popen_kw) -> subprocess.Popen:
    """Start a child that cowlab will end: journaled by pid and start time, and tagged in its
    environment so `cowlab cleanup` can find it even if we die before the pid is written."""
    env = dict(popen_kw.pop("env", None) or os.environ)
    env[OWNER_ENV] = res.owner
    env[ROOT_ENV] = os.path.realpath(res.state.path)
    h = res.add("process", pid=None, starttime=None, tag=res.owner)
    try:
        p = subprocess.Popen(argv, env=env, **popen_kw)
    except BaseException:
        res.release(h)
        raise
    faults.point("spawn")
    res.update(h, pid=p.pid, starttime=sysutil.proc_starttime(p.pid))
    p._cowlab_handle = h  # type: ignore[attr-defined]
    return p


def run_tool(res: Resources, argv: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a tool to completion as a journaled child (a crash of cowlab still ends it)."""
    p = spawn(res, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        res.release(p._cowlab_handle)  # type: ignore[attr-defined]
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def processes_with_env(name: str, value: str) -> list[int]:
    """Pids whose environment carries name=value (children tagged by cowlab, even orphans)."""
    needle = f"{name}={value}".encode()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    out.append(int(d))
        except OSError:
            continue
    return sorted(out)


def tagged_processes(owner: str, state: StateRoot | None = None) -> list[int]:
    """Pids whose environment carries COWLAB_OWNER=owner (children of a run, even orphans).
    With state: only those of that state root — tagged with it, or untagged by root but owned
    by a run (run-<pid>-<starttime> names one process on the machine, whatever its root)."""
    pids = processes_with_env(OWNER_ENV, owner)
    if state is None:
        return pids
    want = f"{ROOT_ENV}={os.path.realpath(state.path)}".encode()
    out = []
    for pid in pids:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        tagged = [x for x in env if x.startswith(ROOT_ENV.encode() + b"=")]
        if want in tagged or (not tagged and owner.startswith("run-")):
            out.append(pid)
    return out


def read_entry(path: Path) -> dict | None:
    """A journal entry, or None if it is empty or torn (see the module docstring)."""
    try:
        e = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return e if isinstance(e, dict) and "kind" in e else None


def _write_new(path: Path, obj: dict) -> None:
    # One write(2) of a small buffer into the page cache: a SIGKILL lands before or after it.
    data = json.dumps(obj).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
    try:
        tmp.write_text(json.dumps(obj))
        os.replace(tmp, path)  # a crash mid-write never leaves half an entry
    finally:  # a Ctrl-C/SIGTERM between the two must not leave the temporary file
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def signals_blocked():
    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def owners(state: StateRoot) -> list[dict]:
    out: list[dict] = []
    if not state.journal.exists():
        return out
    for d in state.journal.iterdir():
        p = d / "owner.json"
        try:
            info = json.loads(p.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            info = {"owner": d.name, "kind": "run", "pid": None}  # died while writing owner.json
        info["dir"] = d
        out.append(info)
    return sorted(out, key=lambda i: (TIERS.get(i["kind"], 9), i["owner"]))


def owner_alive(info: dict) -> bool:
    if info["kind"] != "run":
        creating = (info.get("meta") or {}).get("creating")
        if creating:  # a container whose creator died half way never became persistent
            return sysutil.pid_alive(creating.get("pid") or 0, creating.get("starttime"))
        return True  # persistent until removed on purpose
    return bool(info.get("pid")) and sysutil.pid_alive(info["pid"], info.get("starttime"))
