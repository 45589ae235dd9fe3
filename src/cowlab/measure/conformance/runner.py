"""Running the conformance cases on a driver: a driver session per driver, a case's containers
and oracles, the extra checks, and the suite over every available driver.

Container-side actions run on the container and on a copy of the oracle; their outcomes (success
or errno) must agree. One documented exception: a driver may declare that renaming a directory
that comes from an image layer fails with EXDEV (overlayfs without `redirect_dir`), by the
capability `rename_dir_exdev` or by `metadata()["rename_dir"] == "exdev"`. The suite then asserts
exactly that (EXDEV, nothing changed), moves the directory as mv(1) does after EXDEV (`cp -a`,
then remove the source) and the trees must agree again. A driver that returns EXDEV without
declaring it fails, and so does one that declares it but renames.

Every case also checks that the container root is mode 0755 owned by 0:0. The suite runs the
driver under umask 0 (as containerd's suite does): a driver must set modes itself, not inherit
them from whoever runs cowlab.

`cowlab conformance [--driver NAME ...]` runs it on every driver available here; drivers come
from `cowlab.storage.drivers.DRIVERS` and their probe(), so a new driver is covered by registering it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cowlab.base import sysutil
from cowlab.base.errors import CowlabError
from cowlab.base.resources import Resources
from cowlab.base.state import StateRoot
from cowlab.measure.conformance.actions import Actor, touched_after
from cowlab.measure.conformance.catalogue import CAP_RENAME_DIR_EXDEV, CAP_XATTRS, Act, Case, cases
from cowlab.measure.conformance.compare import KINDS, compare, sha256, xattrs_of
from cowlab.measure.conformance.oracle import reference_apply
from cowlab.storage import backing as B
from cowlab.storage.drivers import DRIVERS
from cowlab.storage.drivers.base import Container, Driver, Probe
from cowlab.store.images import Image, ImageStore

MAX_DIFFS = 12  # differences reported per comparison
LOOP_SIZE = 4 << 30  # sparse loop filesystem for drivers that need their own backing


@dataclass
class Result:
    driver: str
    case: str
    status: str  # pass, fail, error, skip, unavailable
    details: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "skip", "unavailable", "deviation")

    def summary(self) -> str:
        if self.status in ("skip", "unavailable"):
            return f"{self.status}: {self.details[0] if self.details else ''}"
        return self.status


class ImageCache:
    """Images built once per suite run (shared by every driver) and removed from the store at
    the end, so `cowlab image ls` does not fill up with conformance images."""

    def __init__(self, store: ImageStore, keep: bool = False):
        self.store = store
        self.keep = keep  # kept: built on the host for a kernel VM, whose store is read-only
        self.built: dict[str, Image] = {}

    def get(self, case: Case, k: int) -> Image:
        sp = case.spec(k)
        if sp.name not in self.built:
            self.built[sp.name] = self.store.build(sp)
        return self.built[sp.name]

    def close(self) -> None:
        for name in list(self.built) if not self.keep else []:
            with contextlib.suppress(CowlabError):
                self.store.remove(name)
        self.built.clear()


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def declares_rename_dir_exdev(drv: Driver) -> bool:
    if CAP_RENAME_DIR_EXDEV in drv.capabilities:
        return True
    try:
        return drv.metadata().get("rename_dir") == "exdev"
    except Exception:  # metadata is informational; a failing one is not a declaration
        return False


def pick_backing(cls: type[Driver], state: StateRoot, res: Resources, tag: str) -> B.Backing:
    """The host's filesystem, or the loop filesystem the driver needs (e.g. btrfs)."""
    kinds = cls.backing_kinds
    if kinds is None or "host" in kinds:
        d = state.store / tag
        res.acquire("dir", lambda: d.mkdir(parents=True), path=str(d))
        return B.host(d)
    for k in kinds:
        if k in B.MKFS:
            return B.make_loop(state.backings, res, k, LOOP_SIZE)
    raise CowlabError(f"{cls.name} runs on {'/'.join(kinds)}, which cowlab cannot make")


class DriverSession:
    """One driver instance (its backing, and its pool or daemon if it has one) shared by the
    cases run on it, with its own journal owner: `cowlab cleanup` releases it all if this
    process dies."""

    def __init__(
        self, state: StateRoot, cls: type[Driver], images: ImageCache, umask: int = 0o000, options: dict | None = None
    ):
        self.state, self.cls, self.images, self.umask = state, cls, images, umask
        self.options = options or None

    def __enter__(self) -> DriverSession:
        pid = os.getpid()
        self.tag = f"conformance-{pid}-{uuid.uuid4().hex[:6]}"
        self.res = Resources(
            self.state,
            f"run-{pid}-{sysutil.proc_starttime(pid)}-{self.tag}",
            "run",
            {"purpose": f"conformance {self.cls.name}"},
        )
        try:
            self.scratch = self.state.tmp / f"{pid}-{self.tag}"  # swept as staging if we die
            self.res.acquire("dir", lambda: self.scratch.mkdir(), path=str(self.scratch))
            self.backing = pick_backing(self.cls, self.state, self.res, self.tag)
            with _umask(self.umask):
                self.drv = self.cls(
                    self.backing,
                    self.res,
                    self.images.store,
                    home=self.backing.path / self.cls.name,
                    options=self.options,
                )
        except BaseException:
            self.res.close()
            raise
        self.xattrs = CAP_XATTRS in self.drv.capabilities
        return self

    def close(self) -> list[str]:
        errs = [f"teardown of {self.cls.name}: {e}" for e in self.res.close()]
        left = sysutil.mounts_under(self.backing.path) if self.backing.path.exists() else []
        if left:
            errs.append(f"teardown of {self.cls.name}: still mounted: {', '.join(m.target for m in left)}")
        return errs

    def __exit__(self, *exc) -> None:
        self.errors = self.close()

    def run(self, case: Case, every_layer: bool = False, depths: Iterable[int] | None = None) -> Result:
        """One case; never raises for what the driver does (that is the result)."""
        t0 = time.monotonic()
        missing = case.needs - self.cls.capabilities
        if missing:
            return Result(
                self.cls.name, case.name, "skip", [f"{self.cls.name} does not declare {', '.join(sorted(missing))}"]
            )
        if self.cls.max_layers and len(case.layers) > self.cls.max_layers:
            return Result(
                self.cls.name,
                case.name,
                "skip",
                [f"{len(case.layers)} layers; {self.cls.name} supports at most {self.cls.max_layers}"],
            )
        run = _Run(self, case)
        status = "pass"
        try:
            run.run(every_layer, depths)
        except Exception as e:  # the driver (or the oracle) blew up: an error, in one line
            status = "error"
            run.diffs.insert(0, f"{type(e).__name__}: {e}")
        finally:
            try:
                run.teardown()
            except Exception as e:
                run.diffs.append(f"teardown: {type(e).__name__}: {e}")
        if status == "pass" and run.diffs:
            status = "fail"
        declared = self.cls.deviations.get(case.name)
        if declared and status in ("pass", "fail"):
            what, pattern = declared
            if status == "pass":  # like a strict xfail: a deviation that went away is news
                status = "fail"
                run.diffs.append(
                    f"{self.cls.name} declares a deviation here ({what}) but behaved "
                    "like a plain directory: remove the declaration"
                )
            elif all(re.search(pattern, d) for d in run.diffs):
                status = "deviation"
                run.notes.append(f"documented deviation: {what}")
        return Result(self.cls.name, case.name, status, run.diffs, run.notes, time.monotonic() - t0)


class _Run:
    """One case on a driver session: the containers and images it made, its oracle's scratch."""

    def __init__(self, session: DriverSession, case: Case):
        self.session, self.case = session, case
        self.cls, self.drv, self.res = session.cls, session.drv, session.res
        self.images, self.umask, self.xattrs = session.images, session.umask, session.xattrs
        self.diffs: list[str] = []
        self.notes: list[str] = []
        self.containers: list[Container] = []
        self.imported: list[Image] = []
        self.scratch = session.scratch / f"{case.name}-{uuid.uuid4().hex[:6]}"
        self.scratch.mkdir()

    def teardown(self) -> None:
        for c in list(self.containers):
            self.remove(c)
        for img in self.imported:
            try:
                self.drv.remove_image(img)
            except Exception as e:
                self.diffs.append(f"teardown: remove_image({img.name}) failed: {e}")
        shutil.rmtree(self.scratch)

    def oracle(self, k: int, label: str) -> Path:
        d = self.scratch / f"{label}-{k}"
        d.mkdir()
        reference_apply(self.case.spec(k), d)
        return d

    def image(self, k: int) -> Image:
        img = self.images.get(self.case, k)
        if not self.drv.has_image(img):
            with _umask(self.umask):
                self.drv.import_image(img)
        if img not in self.imported:
            self.imported.append(img)
        return img

    def create(self, img: Image) -> Container:
        with _umask(self.umask):
            c = self.drv.create(img, self.res)
        self.containers.append(c)
        return c

    def remove(self, c: Container) -> None:
        self.containers.remove(c)
        self.drv.remove(c, self.res)

    def diff(self, where: str, lines: list[str]) -> None:
        if not lines:
            return
        shown = lines[:MAX_DIFFS]
        self.diffs += [f"{where}: {x}" for x in shown]
        if len(lines) > MAX_DIFFS:
            self.diffs.append(f"{where}: ... and {len(lines) - MAX_DIFFS} more difference(s)")

    # -- the case -----------------------------------------------------------------------------
    def run(self, every_layer: bool, depths: Iterable[int] | None = None) -> None:
        case = self.case
        n = len(case.layers)
        final_oracle = None
        for k in case.ks(every_layer, depths):
            img = self.image(k)
            o = self.oracle(k, "image")
            c = self.create(img)  # ("/" is compared too: the root must be 0755, 0:0)
            self.diff(f"image of {k}/{n} layer(s)", compare(o, c.mountpoint, xattrs=self.xattrs))
            self.remove(c)
            if k == n:
                final_oracle = o
            else:
                shutil.rmtree(o)
        assert final_oracle is not None
        img = self.image(n)
        for name in case.checks:
            CHECKS[name](self, img, final_oracle)
        if case.actions or case.readable:
            self.actions(img, final_oracle, case.actions)

    def _root_ok(self, c: Container, where: str) -> None:
        st = os.lstat(c.mountpoint)
        if not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o755 or (st.st_uid, st.st_gid) != (0, 0):
            self.diffs.append(
                f"{where}: container root is {KINDS.get(stat.S_IFMT(st.st_mode))} mode "
                f"{stat.S_IMODE(st.st_mode):04o} owner {st.st_uid}:{st.st_gid}, expected a "
                "directory of mode 0755 owned by 0:0"
            )

    def actions(self, img: Image, image_oracle: Path, acts: list[Act]) -> None:
        c = self.create(img)
        o = self.scratch / "container-oracle"
        o.mkdir()
        reference_apply(self.case.spec(), o)
        for p in self.case.readable:
            self._read(c, image_oracle, p)
        mine, ref = Actor(c.mountpoint), Actor(o)
        touched: set[str] = set()
        exdev = None
        for i, a in enumerate(acts, 1):
            where = f"container, after action {i} {a}"
            if a.op == "check":
                self.diff(where, compare(o, c.mountpoint, skip_mtime=touched, xattrs=self.xattrs))
                continue
            if a.op == "tick":
                time.sleep(1.0 - time.time() % 1.0 + 0.01)
                continue
            if a.args.get("needs") and a.args["needs"] not in self.drv.capabilities:
                continue
            with _umask(self.umask):
                got = mine.run(a)
            if a.op == "rename" and a.args.get("lower_dir"):
                if exdev is None:
                    exdev = declares_rename_dir_exdev(self.drv)
                if got == "EXDEV" and exdev:
                    self.notes.append(
                        f"renaming a directory from the image returned EXDEV, as "
                        f"{self.cls.name} declares; moved with cp -a + rm like mv(1)"
                    )
                    self.diff(
                        where + " (after EXDEV, before the fallback)",
                        compare(o, c.mountpoint, skip_mtime=touched, xattrs=self.xattrs),
                    )
                    self._mv_fallback(c, a)
                    got = None
                elif got is None and exdev:
                    self.diffs.append(
                        f"{where}: the driver declares EXDEV for renaming a directory "
                        "from the image, but the rename succeeded"
                    )
                elif got == "EXDEV":
                    self.diffs.append(
                        f"{where}: rename returned EXDEV, which {self.cls.name} does not "
                        f"declare (capability {CAP_RENAME_DIR_EXDEV!r} or "
                        "metadata()['rename_dir'] == 'exdev')"
                    )
                    continue
            with _umask(self.umask):
                want = ref.run(a)
            if got != want:
                self.diffs.append(
                    f"{where}: {'failed with ' + got if got else 'succeeded'} in the "
                    f"container, {'failed with ' + want if want else 'succeeded'} in the oracle"
                )
            touched = touched_after(a, touched)
        self.diff("container, after all actions", compare(o, c.mountpoint, skip_mtime=touched, xattrs=self.xattrs))
        self.remove(c)

    def _mv_fallback(self, c: Container, a: Act) -> None:
        src, dst = (os.path.join(c.mountpoint, a.args[k].lstrip("/")) for k in ("path", "dst"))
        sysutil.run(["cp", "-a", "--", src, dst])
        shutil.rmtree(src)

    def _read(self, c: Container, oracle: Path, path: str) -> None:
        full = os.path.join(c.mountpoint, path.lstrip("/"))
        try:
            got = sha256(full)
        except OSError as e:
            self.diffs.append(f"reading {path} through the container: {e.strerror}")
            return
        want = sha256(os.path.join(oracle, path.lstrip("/")))
        if got != want:
            self.diffs.append(f"reading {path} through the container: sha256 {got[:12]}, expected {want[:12]}")


# -- extra checks -------------------------------------------------------------------------------


def _check_root_mode(run: _Run, img: Image, oracle: Path) -> None:
    for mask in (0o077, 0o000, 0o022):
        with _umask(mask):
            c = run.drv.create(img, run.res)
        run.containers.append(c)
        run._root_ok(c, f"created under umask {mask:03o}")
        run.remove(c)


def home_fingerprint(drv: Driver, skip_names: set[str]) -> dict[str, tuple]:
    """What the driver keeps on disk under its home, container data left out (any directory
    named after a live container, any mount): type, mode, owner, content, link target and every
    xattr (trusted.* included: overlay's opaque markers are image data)."""
    home = os.fspath(drv.home)
    mounts = {m.target for m in sysutil.mounts_under(home)}
    working = _working_storage(home)
    out: dict[str, tuple] = {}
    for dp, dns, fns in os.walk(home):
        dns[:] = [d for d in dns if d not in skip_names and os.path.join(dp, d) not in mounts]
        for name in dns + fns:
            full = os.path.join(dp, name)
            if full in working:
                continue
            st = os.lstat(full)
            kind = KINDS.get(stat.S_IFMT(st.st_mode), "?")
            extra = (
                sha256(full)
                if kind == "file"
                else os.readlink(full)
                if kind == "symlink"
                else (os.major(st.st_rdev), os.minor(st.st_rdev))
                if kind in ("chr", "blk")
                else None
            )
            out[os.path.relpath(full, home)] = (
                kind,
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                st.st_size if kind == "file" else None,
                extra,
                xattrs_of(full, None),
            )
    return out


def _working_storage(home: str) -> set[str]:
    """Files under home that back a loop device or that a process holds open (a zpool's vdev,
    a thin pool's data file, a daemon's log): a pool's working storage, whose bytes change with
    any write, not image data. For such drivers the sibling and new-container checks carry the
    read-only claim."""
    pre = home.rstrip("/") + "/"
    out = {f for f in sysutil.loop_devices().values() if f.startswith(pre)}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(pre):
                out.add(target)
    return out


def _check_image_readonly(run: _Run, img: Image, oracle: Path) -> None:
    """Writes in one container change nothing a sibling or a new container sees, nor the
    driver's image data on disk."""
    sib = run.create(img)
    work = run.create(img)
    skip = {c.id for c in run.containers}
    before = home_fingerprint(run.drv, skip)
    o = run.scratch / "readonly-oracle"
    o.mkdir()
    reference_apply(run.case.spec(), o)
    mine, ref = Actor(work.mountpoint), Actor(o)
    for a in run.case.actions:
        if a.op in ("check", "tick") or (a.args.get("needs") and a.args["needs"] not in run.drv.capabilities):
            continue
        with _umask(run.umask):
            if mine.run(a) is None:  # (what the actions themselves do is checked in actions())
                ref.run(a)
    os.sync()
    after = home_fingerprint(run.drv, skip)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    run.diff(
        "image data on disk after writes in a container",
        [f"{p} {'appeared' if p not in before else 'vanished' if p not in after else 'changed'}" for p in changed],
    )
    run.diff("the container that was written to", compare(o, work.mountpoint, mtimes=False, xattrs=run.xattrs))
    run.diff("a sibling container, after writes in another", compare(oracle, sib.mountpoint, xattrs=run.xattrs))
    run.remove(work)
    run.remove(sib)
    fresh = run.create(img)
    run.diff("a new container, after writes in another", compare(oracle, fresh.mountpoint, xattrs=run.xattrs))
    run.remove(fresh)


CHECKS: dict[str, Callable[[_Run, Image, Path], None]] = {
    "root_mode": _check_root_mode,
    "image_readonly": _check_image_readonly,
}


def run_case(
    state: StateRoot,
    cls: type[Driver],
    case: Case,
    images: ImageCache,
    *,
    every_layer: bool = False,
    umask: int = 0o000,
) -> Result:
    """One case on a driver session of its own."""
    try:
        with DriverSession(state, cls, images, umask) as session:
            r = session.run(case, every_layer)
    except Exception as e:
        return Result(cls.name, case.name, "error", [f"setting up {cls.name}: {type(e).__name__}: {e}"])
    if session.errors:
        r.details += session.errors
        r.status = "fail" if r.status == "pass" else r.status
    return r


def available(
    names: Iterable[str] | None = None, probe: Callable[[type[Driver]], Probe] | None = None
) -> list[tuple[type[Driver], str | None]]:
    """(driver class, None if available else the reason) for the named drivers or all of them.
    probe: how to ask (the run layer's, which also names the kernel VM; the driver's own by default)."""
    from cowlab.storage.drivers import get

    out = []
    for name in names or list(DRIVERS):
        cls = get(name)
        try:
            p = probe(cls) if probe else cls.probe()
            why = None if p.available else p.reason + (f" (to get it: {p.hint})" if p.hint else "")
        except Exception as e:
            why = f"probe failed: {type(e).__name__}: {e}"
        out.append((cls, why))
    return out


def prebuild(state: StateRoot, case_names: Iterable[str] | None = None, every_layer: bool = False) -> int:
    """Build every image the chosen cases compare (for a kernel VM, whose store is the host's,
    read-only); returns how many."""
    state.ensure()
    cache = ImageCache(ImageStore(state), keep=True)
    for case in cases(case_names):
        for k in case.ks(every_layer):
            cache.get(case, k)
    return len(cache.built)


def _shifted(progress: Callable[[str, int, int], None], base: int, total: int) -> Callable[[str, int, int], None]:
    """One driver's progress (case i of n) as the whole suite's (case base + i of total)."""
    return lambda d, i, n: progress(d, base + i, total)


def run_suite(
    state: StateRoot,
    driver_names: Iterable[str] | None = None,
    case_names: Iterable[str] | None = None,
    *,
    every_layer: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    options: dict[str, dict] | None = None,
    keep_images: bool = False,
    probe: Callable[[type[Driver]], Probe] | None = None,
) -> list[Result]:
    """Every case on every driver (or the named ones); unavailable drivers yield one
    'unavailable' result per case with the reason, never a pass. options: per driver name
    (e.g. devicemapper-direct's device)."""
    state.ensure()
    chosen = cases(case_names)
    drivers = available(driver_names, probe)
    images = ImageCache(ImageStore(state), keep=keep_images)
    results: list[Result] = []
    total = len(drivers) * len(chosen)
    try:
        for cls, why in drivers:
            if why:
                results += [Result(cls.name, case.name, "unavailable", [why]) for case in chosen]
                continue
            results += run_driver(
                state,
                cls,
                chosen,
                images,
                every_layer=every_layer,
                options=(options or {}).get(cls.name),
                progress=_shifted(progress, len(results), total) if progress else None,
            )
    finally:
        images.close()
    return results


def run_driver(
    state: StateRoot,
    cls: type[Driver],
    chosen: list[Case],
    images: ImageCache,
    *,
    every_layer: bool = False,
    depths: Iterable[int] | None = None,
    umask: int = 0o000,
    progress: Callable[[str, int, int], None] | None = None,
    options: dict | None = None,
) -> list[Result]:
    """Every chosen case on one (available) driver, sharing one driver session."""
    out: list[Result] = []
    try:
        with DriverSession(state, cls, images, umask, options) as session:
            for case in chosen:
                if progress:
                    progress(f"{cls.name}: {case.name}", len(out), len(chosen))
                out.append(session.run(case, every_layer, depths))
    except Exception as e:  # the session itself could not be set up
        why = f"setting up {cls.name}: {type(e).__name__}: {e}"
        return out + [Result(cls.name, c.name, "error", [why]) for c in chosen[len(out) :]]
    if session.errors and out:
        out[-1].details += session.errors
        out[-1].status = "fail" if out[-1].status == "pass" else out[-1].status
    return out
