"""Engine mode inside a BenchSession: check → prepare → run → close, after (or instead of) the
primitive part. The runner calls these; all samples go to the same samples.jsonl with mode
"engine", the daemon's description to run.json under "engine"."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

from cowlab.base import sysutil
from cowlab.base.errors import CowlabError, Unavailable
from cowlab.measure.engine import drivers as ED
from cowlab.measure.engine.daemon import EngineRefused, PrivateDockerd, availability, check_socket_room
from cowlab.measure.engine.images import build_engine_images, load, static_busybox
from cowlab.measure.engine.workloads import CASES, EngineContext
from cowlab.measure.workloads.base import Timed, case_name, case_total, describe_params, run_case
from cowlab.results import Sample
from cowlab.storage import backing as B
from cowlab.storage.drivers.base import Driver, Probe
from cowlab.store.images import ImageStore

Progress = Callable[[str, int, int], None]
MODES = ("primitive", "engine", "both")
HINT = "sudo bash vagrant/provision/engine.sh"


def engine_only_driver(name: str) -> type[Driver]:
    """A stand-in for BenchSession when only the engine runs: it has no containers of its own;
    it gives the run a backing (a btrfs loop for the btrfs engine driver) and a description."""
    ed = ED.get(name)
    if ed is None:
        raise CowlabError(f"unknown engine storage driver {name!r}; engine drivers: {', '.join(ED.ENGINE_DRIVERS)}")

    backing = ed.backing
    # the options of the cowlab driver that makes dockerd's pool (checked in EnginePart.check)
    pool_options = _pool_cls(ed).option_names if ed.pool_driver else frozenset()

    class EngineOnly(Driver):
        description = f"Docker Engine storage driver {name} (engine mode only)"
        backing_kinds = (backing,) if backing else None
        option_names = pool_options

        @classmethod
        def probe(cls) -> Probe:
            ok, why = availability()
            return Probe(ok, why, "" if ok else HINT)

        def metadata(self) -> dict:
            return {"engine_only": True}

    EngineOnly.name = name
    return EngineOnly


def resolve_mode(mode: str | None, driver_name: str, primitive_drivers) -> tuple[str, str]:
    """(mode, why): the user's choice, or the default — both when Docker is present (engine
    alone when cowlab has no primitive driver of that name), else primitive."""
    if mode:
        if mode not in MODES:
            raise CowlabError(f"--mode must be one of {', '.join(MODES)}")
        return mode, "as asked"
    ok, why = availability()
    prim = driver_name in primitive_drivers
    if ok and ED.get(driver_name):
        if prim:
            return "both", "Docker is present (--mode primitive skips the engine)"
        return "engine", f"cowlab has no primitive {driver_name} driver; Docker does"
    if not ok:
        return "primitive", f"engine mode unavailable: {why}"
    return "primitive", f"Docker has no {driver_name} storage driver"


class EnginePart:
    def __init__(self, session):
        self.s = session
        self.daemon: PrivateDockerd | None = None
        self.refs: dict[str, str] = {}
        self.load_errors: dict[str, str] = {}
        self.pool_meta: dict | None = None
        self.pool_drv: Driver | None = None  # the cowlab driver whose pool dockerd uses

    # -- check ----------------------------------------------------------------------------------
    def check(self) -> None:
        s = self.s
        driver = ED.get(s.driver_name)
        if driver is None:
            raise CowlabError(
                f"Docker has no storage driver {s.driver_name!r} that cowlab knows; "
                f"engine drivers: {', '.join(ED.ENGINE_DRIVERS)}"
            )
        self.driver: ED.EngineDriver = driver
        ok, why = availability()
        if not ok:
            raise Unavailable("engine mode", why, HINT)
        if not static_busybox():
            raise Unavailable("engine mode", "no static busybox for containers to run", HINT)
        self.workloads = [w for w in s.workloads if w.name in CASES]
        check_socket_room(s.state)
        if self.driver.pool_driver:
            _pool_cls(self.driver).check_options(self.pool_options(), here=True)
        # Docker holds a second copy of every image (its own layer store), and vfs one per container.
        s.need_bytes += sum(_spec_bytes(sp) for sp in s.specs.values()) * 2

    def pool_options(self) -> dict:
        """Options of the driver that makes dockerd's storage: the run's, but on engine_device
        when the run's own device already holds cowlab's pool (mode both)."""
        opts = dict(self.s.driver_options)
        eng = opts.pop("engine_device", None)
        if self.s.mode == "both" and "device" in opts and not eng:
            raise CowlabError(
                f"--mode both on {self.s.driver_name} needs a second spare device for "
                "dockerd's storage: --opt engine_device=/dev/YYY (--device holds cowlab's "
                "own pool); or run --mode primitive and --mode engine one after the other"
            )
        if eng:
            opts["device"] = eng
        return opts

    def _storage(self) -> dict:
        """dockerd's storage where its driver takes storage cowlab makes (pool_driver): made by
        cowlab's own driver code in the run's resources, so it goes only after dockerd stops."""
        if not self.driver.pool_driver:
            return {"storage_opts": [], "path": [], "meta": None}
        s = self.s
        home = s.backing.path / f"engine-pool-{self.driver.name}"
        self.pool_drv = _pool_cls(self.driver)(
            s.backing, s.res, ImageStore(s.state), home=home, options=self.pool_options()
        )
        return self.pool_drv.engine_storage()

    # -- prepare --------------------------------------------------------------------------------
    def prepare(self, progress: Progress | None = None) -> None:
        s = self.s
        if progress:
            progress("engine images", 0, 1)
        store = ImageStore(s.state)
        wanted = {
            n: img
            for n, img in s.images.items()
            if any(sp.name == n for w in self.workloads for sp in w.specs(s.grids[w.name]))
        }
        self.images = build_engine_images(store, wanted)

    # -- run ------------------------------------------------------------------------------------
    def record(self, sample: Sample, workload: str) -> None:
        self.s.records.append(self.s.writer.add(sample, self.s.driver_name, workload, mode="engine"))

    def _data_parent(self):
        s, need = self.s, self.driver.backing
        path = s.backing.path
        if need and sysutil.mount_of(path).fstype != need:
            loop = B.make_loop(s.state.backings, s.res, need, s.backing_size)
            path = loop.path
        return path

    def run(self, progress: Progress | None = None) -> None:
        s = self.s
        for w in s.workloads:
            if w.name not in CASES:
                self.record(
                    Sample(
                        "workload", None, "count", {}, status="skipped", error=f"{w.name} has no engine counterpart"
                    ),
                    w.name,
                )
        if not self.workloads:
            return
        if progress:
            progress(f"engine: starting dockerd --storage-driver {self.driver.name}", 0, 1)
        t_start = time.perf_counter()
        self.pool_meta = None
        try:
            st = self._storage()
            self.pool_meta = st["meta"]
            self.daemon = PrivateDockerd(
                s.state, s.res, self.driver, self._data_parent(), st["storage_opts"], st["path"]
            )
            t0 = time.perf_counter()
            self.daemon.start()
        except Exception as e:  # EngineRefused (dockerd's own words), or anything on the way
            why = str(e) if isinstance(e, EngineRefused) else _why(e)
            if self.driver.missing():
                why += f" (missing: {', '.join(self.driver.missing())}; run {HINT})"
            self.record(
                Sample(
                    "engine_start_seconds", None, "s", {"storage_driver": self.driver.name}, status="failed", error=why
                ),
                "engine",
            )
            s.writer.write_run(
                engine={
                    "requested_driver": self.driver.name,
                    "refused": why,
                    "dockerd_argv": self.daemon.argv if self.daemon else None,
                    "storage": self.pool_meta,
                }
            )
            self.close()
            return
        self.record(
            Sample("engine_start_seconds", time.perf_counter() - t0, "s", {"storage_driver": self.driver.name}),
            "engine",
        )
        desc = self.daemon.describe()
        if self.pool_meta:
            desc["storage"] = self.pool_meta  # what cowlab made for dockerd (pool_driver)
        desc["space_measured_on"] = (
            f"the {self.pool_drv.name} pool cowlab made for dockerd (used_bytes)"
            if self.pool_drv
            else "the data-root's filesystem (statfs after syncfs)"
        )
        desc["images"] = {
            n: {"name": img.name, "layers": len(img.layers), "content_bytes": img.content_bytes, "base_layers": 1}
            for n, img in self.images.items()
        }
        s.writer.write_run(engine=desc)
        self._load(self.daemon, progress)
        s._wall("engine start+load", t_start)
        for w in self.workloads:
            t_wl = time.perf_counter()
            ctx = EngineContext(self.daemon, self.refs, self.load_errors, s.grids[w.name], s.quick, self.pool_drv)
            cases = list(CASES[w.name](ctx))
            total, done = sum(map(case_total, cases)), 0
            for case in cases:

                def rep_done(case=case, w=w, total=total):
                    nonlocal done
                    done += 1
                    if progress:
                        progress(f"engine {w.name}: {case_name(case)} {describe_params(case.params)}", done, total)

                # CowlabError, OSError, the daemon's APIError: all recorded as failed samples
                run_case(
                    case,
                    partial(self.record, workload=w.name),
                    rep_done,
                    errors=(Exception,),
                    why=_why,
                    unit="s" if isinstance(case, Timed) else "B",
                )
            s._wall(f"engine {w.name}", t_wl)
        errs = self.close()
        if errs:
            s.writer.write_run(engine_teardown_errors=errs)

    def _load(self, daemon: PrivateDockerd, progress: Progress | None) -> None:
        items = list(self.images.items())
        for i, (name, img) in enumerate(items):
            if progress:
                progress(f"engine: docker load {img.name}", i, len(items))
            prim = self.s.images[name]  # params as in primitive mode; the base layer is in run.json
            params = {
                "image": name,
                "layers": len(prim.layers),
                "image_size_bytes": prim.content_bytes,
                "backing_fs": sysutil.mount_of(daemon.data_root).fstype,
            }
            try:
                ref, dt = load(daemon.client, ImageStore(self.s.state), img)
            except Exception as e:
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                why = _why(e)
                self.load_errors[name] = why if why.startswith("docker load") else f"docker load of {img.name}: {why}"
                self.record(
                    Sample("import_seconds", None, "s", params, status="failed", error=self.load_errors[name]), "import"
                )
                continue
            self.refs[name] = ref
            self.record(Sample("import_seconds", dt, "s", params), "import")

    # -- close ----------------------------------------------------------------------------------
    def close(self) -> list[str]:
        """Stop the daemon (idempotent); what could not be released, as lines."""
        if self.daemon is None:
            return []
        from cowlab.base.resources import signals_blocked

        d, self.daemon = self.daemon, None
        keep = None
        if hasattr(self.s, "writer"):
            keep = self.s.writer.raw_path(f"dockerd-{d.driver.name}-{d.id}.log")
        with signals_blocked():
            errs = d.stop(keep_log=keep)
            left = d.leftovers()
        return errs + [f"engine left {x}" for x in left]


def _pool_cls(ed: ED.EngineDriver) -> type[Driver]:
    from cowlab.storage import drivers

    return drivers.get(ed.pool_driver)


def _spec_bytes(spec) -> int:
    from cowlab.store.layers import spec_bytes

    return spec_bytes(spec)


def _why(e: BaseException) -> str:
    expl = getattr(e, "explanation", None)
    if expl:
        return f"{type(e).__name__}: {expl}"
    return str(e) or type(e).__name__
