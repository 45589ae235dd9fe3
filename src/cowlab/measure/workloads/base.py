"""What a workload is: a parameter grid declared as data, the images it needs, and cases.

A case is either Timed (setup → op → teardown, the op alone timed, repeated) or Measured (a
function that returns samples, for quantities that are not durations). Workloads receive a
Context and never ask which driver they run on; optional driver abilities are `requires`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from cowlab.base.errors import CowlabError, NotApplicable
from cowlab.base.resources import Resources
from cowlab.base.state import StateRoot
from cowlab.base.units import human_params
from cowlab.results import Sample
from cowlab.storage.backing import Backing, make_loop
from cowlab.storage.drivers.base import Container, Driver
from cowlab.store.images import Image
from cowlab.store.spec import ImageSpec

MiB, GiB = 1 << 20, 1 << 30


@dataclass
class Timed:
    metric: str
    unit = "s"
    params: dict[str, Any]
    op: Callable[[Any], Any]  # op(state) → result; only this is timed
    setup: Callable[[], Any] = lambda: None
    teardown: Callable[[Any, Any], None] = lambda state, result: None
    reps: int = 5
    warmup: int = 1


@dataclass
class Measured:
    name: str
    params: dict[str, Any]
    measure: Callable[[int], list[Sample]]  # repetition → samples
    reps: int = 5
    unit: str = "count"  # the unit a failed or skipped record of this case carries


Case = Timed | Measured


# --- running a case: the one loop `cowlab bench`, engine mode and `pytest bench` share ---------
def run_timed(case: Timed) -> Iterator[Sample]:
    for i in range(case.warmup + case.reps):
        state = case.setup()
        t0 = time.perf_counter_ns()
        result = case.op(state)
        dt = time.perf_counter_ns() - t0
        case.teardown(state, result)
        if i >= case.warmup:
            yield Sample(case.metric, dt / 1e9, "s", dict(case.params), i - case.warmup)


def run_measured(case: Measured) -> Iterator[Sample]:
    for rep in range(case.reps):
        yield from case.measure(rep)


def case_total(case: Case) -> int:
    return case.reps


def case_name(case: Case) -> str:
    return case.metric if isinstance(case, Timed) else case.name


def run_case(
    case: Case,
    record: Callable[[Sample], None],
    rep_done: Callable[[], None] | None = None,
    errors: tuple[type[BaseException], ...] = (CowlabError, OSError),
    why: Callable[[BaseException], str] = str,
    unit: str | None = None,
) -> None:
    """Every sample of one case through record(); rep_done() after each repetition's first
    sample. NotApplicable becomes a skipped sample and an error in `errors` a failed one, with
    the reason: recorded, never dropped. `unit` is what such a record carries (the case's own
    by default)."""
    it = run_timed(case) if isinstance(case, Timed) else run_measured(case)
    unit = unit or case.unit
    try:
        last = None
        for s in it:
            record(s)
            if s.repetition != last:
                last = s.repetition
                if rep_done:
                    rep_done()
    except NotApplicable as e:
        record(Sample(case_name(case), None, unit, dict(case.params), status="skipped", error=str(e)))
    except errors as e:
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        record(Sample(case_name(case), None, unit, dict(case.params), status="failed", error=why(e)))


def describe_params(params: dict) -> str:
    """A case's parameters for a progress line, sizes in human units (units.human_params)."""
    return human_params({k: v for k, v in params.items() if v is not None})


@dataclass
class Context:
    driver: Driver
    res: Resources
    state: StateRoot
    images: dict[str, Image]
    quick: bool
    grid: dict[str, Any] = field(default_factory=dict)
    loop_size: int = 32 << 30
    variants: dict = field(default_factory=dict)  # shared by every context of a run
    record: Callable[[Sample], None] | None = None  # where import_seconds samples go
    raw_dir: Path | None = None  # where a workload keeps raw tool output (results/.../raw/)

    @property
    def backing(self) -> Backing:
        return self.driver.backing

    def image(self, spec_name: str) -> Image:
        """The image built from the named spec, imported into this context's driver."""
        img = self.images[spec_name]
        if not self.driver.has_image(img):
            t0 = time.perf_counter()
            self.driver.import_image(img)
            if self.record:
                self.record(
                    Sample(
                        "import_seconds",
                        time.perf_counter() - t0,
                        "s",
                        {
                            "image": spec_name,
                            "layers": len(img.layers),
                            "content_bytes": img.content_bytes,
                            "backing_fs": self.backing.mount.fstype,
                        },
                    )
                )
        return img

    def create(self, image: Image) -> Container:
        return self.driver.create(image, self.res)

    def remove(self, c: Container) -> None:
        self.driver.remove(c, self.res)

    def variant(self, backing: str | None = None, **options) -> Context:
        """The same driver on another backing filesystem (a loop fs cowlab makes) or with other
        options (e.g. metacopy=True). NotApplicable if the driver can't, which the runner
        records as a skipped case with the reason."""
        cls = type(self.driver)
        bad = sorted(set(options) - cls.option_names)
        if bad:
            raise NotApplicable(f"{cls.name} has no option {bad[0]!r}")
        if backing and cls.backing_kinds is not None and backing not in cls.backing_kinds:
            raise NotApplicable(f"{cls.name} runs on {'/'.join(cls.backing_kinds)}, not {backing}")
        if backing in (None, self.driver.backing.kind) and options == self.driver.options:
            return self
        key = (backing or self.backing.kind, tuple(sorted(options.items())))
        if key not in self.variants:
            b = self.backing
            if key[0] != self.backing.kind:
                loops = self.variants.setdefault(("backing", key[0]), None)
                if loops is None:
                    loops = make_loop(self.state.backings, self.res, key[0], self.loop_size)
                    self.variants[("backing", key[0])] = loops
                b = loops
            tag = "-".join(f"{k}_{v}" for k, v in key[1]) or "default"
            self.variants[key] = cls(b, self.res, self.driver.store, home=b.path / f"{cls.name}-{tag}", options=options)
            self.variants[key].defer_free = self.driver.defer_free
        return replace(self, driver=self.variants[key])

    def variant_metadata(self) -> list[dict]:
        return [d.describe() | {"options": d.options} for k, d in self.variants.items() if k[0] != "backing"]


class Workload:
    name: ClassVar[str]
    claim: ClassVar[str] = ""  # the line of the slides this workload tests
    requires: ClassVar[frozenset[str]] = frozenset()
    GRID: ClassVar[dict[str, dict[str, Any]]] = {"full": {}, "quick": {}}

    @classmethod
    def grid(cls, quick: bool) -> dict[str, Any]:
        return cls.GRID["quick" if quick else "full"]

    def specs(self, grid: dict[str, Any]) -> list[ImageSpec]:
        return []

    def cases(self, ctx: Context) -> Iterator[Case]:
        raise NotImplementedError


def synthetic_image(
    name: str, total_bytes: int, layers: int, file_bytes: int = MiB, seed: int = 1, extra_ops: list[dict] | None = None
) -> ImageSpec:
    """An image of `layers` layers holding `total_bytes` of random content in files of up to
    `file_bytes`, spread evenly; each layer also gets a marker file /layers/NNNN."""
    from cowlab.store.spec import from_dict

    per_layer = total_bytes // layers
    raw = []
    for i in range(layers):
        ops: list[dict] = [{"op": "file", "path": f"/layers/{i:04d}", "size": 64}]
        if per_layer:
            count = max(1, per_layer // file_bytes)
            ops.append({"op": "files", "dir": f"/data/l{i:04d}", "count": count, "size": per_layer // count})
        raw.append({"ops": ops})
    if extra_ops:
        raw[0]["ops"] += extra_ops
    return from_dict({"name": name, "seed": seed, "layers": raw}, f"<{name}>")
