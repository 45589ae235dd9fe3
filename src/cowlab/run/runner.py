"""A bench run in PerfKitBenchmarker's stages: check → prepare → run → cleanup.

`cowlab bench` and `pytest bench/` both drive a BenchSession (pytest one workload per test,
through run_workload), so they measure with the same code and write the same samples.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cowlab.base import provenance
from cowlab.base.errors import CowlabError, Unavailable
from cowlab.base.resources import Resources
from cowlab.base.state import StateRoot, resolve_root
from cowlab.base.sysutil import require_root  # noqa: F401  (cli's, labcli's name for it)
from cowlab.base.units import human_bytes
from cowlab.measure import workloads as W
from cowlab.measure.workloads.base import Context, case_name, case_total, describe_params, run_case
from cowlab.results import RunWriter, Sample
from cowlab.run import cleanup, vmroute
from cowlab.storage import autobacking, drivers
from cowlab.storage import backing as B
from cowlab.store.images import ImageStore
from cowlab.store.layers import spec_bytes

Progress = Callable[[str, int, int], None]  # (description, done, total)


@dataclass
class BenchSession:
    driver_name: str
    quick: bool = False
    workload_names: list[str] | None = None
    out: Path = Path("results/local")
    root: str | None = None
    backing_kind: str = "host"
    backing_size: int = 32 << 30
    argv: list[str] = field(default_factory=lambda: list(sys.argv))
    reps: int | None = None
    harness: str = "cowlab bench"
    records: list[dict] = field(default_factory=list)
    grid_overrides: dict[str, dict] = field(default_factory=dict)  # workload → grid keys (tests)
    mode: str = "primitive"  # primitive | engine | both: engine = a private dockerd (cowlab.measure.engine)
    driver_options: dict = field(default_factory=dict)  # --opt/--device (e.g. devicemapper's block_size)

    def resolve_mode(self, mode: str | None) -> str:
        """Set the mode: the one asked for, or the default (both where Docker is present and has
        the driver, engine alone for an engine-only name, else primitive); returns why."""
        from cowlab.measure.engine.session import resolve_mode

        self.mode, why = resolve_mode(mode, self.driver_name, drivers.DRIVERS)
        return why

    # --- check: everything that can be wrong is found before any work ----------------------
    def check(self) -> None:
        if self.mode != "primitive":
            from cowlab.measure.engine.session import EnginePart, engine_only_driver

            self.engine = EnginePart(self)
        self.driver_cls = (
            drivers.get(self.driver_name) if self.mode != "engine" else engine_only_driver(self.driver_name)
        )
        self.workloads = W.get(self.workload_names)
        if self.backing_kind not in B.KINDS:
            raise CowlabError(f"unknown backing {self.backing_kind!r}; choose from {', '.join(B.KINDS)}")
        if self.reps is not None and self.reps < 1:
            raise CowlabError("--reps must be at least 1")
        require_root()
        probe = vmroute.probe(self.driver_cls)
        if not probe.available:
            raise Unavailable(f"driver {self.driver_name}", probe.reason, probe.hint)
        self.driver_cls.check_options(self.driver_options)
        self.state = StateRoot(resolve_root(self.root))
        # A driver that runs only on some filesystems (btrfs) gets a loop one of its kind.
        self.backing_kind = autobacking.kind_for(self.driver_cls, self.backing_kind, self.state.path)
        self.grids = {}
        specs = {}
        for wl in self.workloads:
            g = dict(wl.grid(self.quick))
            g.update(self.grid_overrides.get(wl.name, {}))
            if self.reps is not None:
                g["reps"] = self.reps
            self.grids[wl.name] = g
            for s in wl.specs(g):
                specs[s.name] = s
        limit = self.driver_cls.max_layers
        for s in specs.values():
            if limit and s.layer_count > limit:
                raise CowlabError(
                    f"image {s.name} has {s.layer_count} layers; {self.driver_name} supports at most {limit}"
                )
        self.specs = specs
        self.need_bytes = sum(spec_bytes(s) for s in specs.values()) * 3 + (256 << 20)
        if self.mode != "primitive":
            self.engine.check()
        probe_dir = self.state.path if self.state.path.exists() else self.state.path.parent
        while not probe_dir.exists():
            probe_dir = probe_dir.parent
        st = os.statvfs(probe_dir)
        free = st.f_bavail * st.f_frsize
        if self.need_bytes > free:
            raise CowlabError(
                f"this run needs about {human_bytes(self.need_bytes)} free under "
                f"{self.state.path}, which has {human_bytes(free)}"
            )

    # --- prepare: state, backing, driver, images --------------------------------------------
    def prepare(self, progress: Progress | None = None) -> None:
        self.state.ensure()
        for line in cleanup.sweep(self.state):
            print(f"cleanup: {line}", file=sys.stderr)
        self.run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-{self.driver_name}-{uuid.uuid4().hex[:4]}"
        self.res = Resources.for_run(self.state, run_id=self.run_id)
        try:
            if self.backing_kind == "host":
                home = self.state.store / self.run_id
                self.res.acquire("dir", lambda: home.mkdir(parents=True), path=str(home))
                self.backing = B.host(home)
            else:
                self.backing = B.make_loop(self.state.backings, self.res, self.backing_kind, self.backing_size)
            self.driver = self.driver_cls(
                self.backing, self.res, ImageStore(self.state), options=self.driver_options or None
            )
            self.driver.defer_free = True  # removed containers' files go between samples (_reclaim)
            prov = provenance.collect(self.argv)
            prov.update(
                driver=self.driver_name,
                quick=self.quick,
                harness=self.harness,
                workloads=[w.name for w in self.workloads],
                grids=self.grids,
                driver_metadata=self.driver.describe(),
                started=time.time(),
                state_root=str(self.state.path),
                mode=self.mode,
            )
            self.writer = RunWriter(Path(self.out), self.run_id, prov)
            # So a run killed from here on is closed as "killed" by cleanup, not left "running".
            self._record_h = self.res.add("run_record", path=str(self.writer.dir / "run.json"))
            store = ImageStore(self.state)
            t_prep = time.perf_counter()
            self.images = {}
            for i, (name, spec) in enumerate(self.specs.items()):
                if progress:
                    progress(f"image {name}", i, len(self.specs))
                self.images[name] = store.build(spec)  # imported into a driver on first use
            if self.mode != "primitive":
                self.engine.prepare(progress)  # a busybox base layer under each image
            self._wall("images", t_prep)
        except BaseException:
            self.res.close()
            raise

    def record(self, s: Sample, workload: str) -> None:
        self.records.append(self.writer.add(s, self.driver_name, workload))

    def context(self, wl) -> Context:
        if not hasattr(self, "_variants"):
            self._variants: dict = {}
        return Context(
            self.driver,
            self.res,
            self.state,
            self.images,
            self.quick,
            self.grids[wl.name],
            self.backing_size,
            self._variants,
            lambda s: self.record(s, "import"),
            raw_dir=self.writer.dir / "raw",
        )

    # --- run ---------------------------------------------------------------------------------
    def run(self, progress: Progress | None = None) -> None:
        for wl in self.workloads if self.mode != "engine" else []:
            self.run_workload(wl, progress)
        if self.mode != "primitive":
            self.engine.run(progress)  # after the primitive part, so the two never overlap

    def _wall(self, of: str, t0: float) -> None:
        """Where a run's time goes (the summary's last line), so a slow grid is trimmed from
        facts: the harness's own figure, never a measurement of the driver."""
        self.record(Sample("workload_wall_seconds", round(time.perf_counter() - t0, 3), "s", {"of": of}), "harness")

    def run_workload(self, wl, progress: Progress | None = None) -> None:
        """Every case of one workload, each sample recorded as measured; a failed or
        inapplicable case, or a workload the driver can't run, is recorded with its reason
        (`pytest bench` runs a workload per test through this too)."""
        missing = wl.requires - self.driver.capabilities
        if missing:
            self.record(
                Sample(
                    "workload",
                    None,
                    "count",
                    {},
                    status="skipped",
                    error=f"{self.driver_name} lacks {', '.join(sorted(missing))}",
                ),
                wl.name,
            )
            return
        t_wl = time.perf_counter()
        ctx = self.context(wl)
        cases = list(wl.cases(ctx))
        total = sum(map(case_total, cases))
        done = 0

        def record(s: Sample) -> None:
            self.record(s, wl.name)
            self._reclaim()  # between samples, never inside a timed op

        for case in cases:

            def rep_done(case=case):
                nonlocal done
                done += 1
                if progress:
                    progress(f"{wl.name}: {case_name(case)} {describe_params(case.params)}", done, total)

            run_case(case, record, rep_done)
        self._wall(wl.name, t_wl)  # image imports included

    def _reclaim(self) -> None:
        self.res.forget_spent()  # removed containers' directories and entries (variants share res)

    # --- cleanup -----------------------------------------------------------------------------
    def finish(self, status: str) -> list[str]:
        variants = []
        if hasattr(self, "driver"):  # described while their backings are still mounted
            variants = Context(
                self.driver, self.res, self.state, {}, self.quick, {}, 0, getattr(self, "_variants", {})
            ).variant_metadata()
        if hasattr(self, "_record_h"):  # a kill during teardown still gets the right status
            self.res.update(self._record_h, finishing=status)
        errs = self.engine.close() if getattr(self, "engine", None) else []  # dockerd first
        errs += self.res.close()
        if hasattr(self, "writer"):
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.record(Sample("cowlab_maxrss_bytes", rss, "B", {}), "harness")
            self.writer.close(
                status, ended=time.time(), teardown_errors=errs, variants=variants, loadavg_end=provenance.loadavg()
            )
        return errs


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM tears down like Ctrl-C does."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
