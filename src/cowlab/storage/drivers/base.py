"""The one interface every storage backend implements.

A workload only ever calls these methods; what a driver is (union mount, snapshot, plain copy)
stays behind them. Optional abilities are named in `capabilities`, never guessed from the name.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

from cowlab.base.errors import CowlabError
from cowlab.base.resources import Handle, Resources
from cowlab.storage.backing import Backing
from cowlab.store.images import Image, ImageStore


@dataclass
class Probe:
    available: bool
    reason: str = ""  # why not, in words a user can act on
    hint: str = ""  # the command that gets it
    details: dict = field(default_factory=dict)


@dataclass
class Container:
    id: str
    image_id: str
    driver: str
    mountpoint: Path
    handles: list[Handle] = field(default_factory=list)


class Driver:
    name: ClassVar[str]
    description: ClassVar[str]
    capabilities: ClassVar[frozenset[str]] = frozenset()
    max_layers: ClassVar[int | None] = None
    # --- the registry: everything else about a backend derives from these (each driver
    # declares them itself; tests/test_registry.py checks). What it needs installed is
    # vagrant/provision/<name>.sh (nox, CI and the Vagrant machines run it).
    color: ClassVar[str]  # its colour in every figure (cowlab.report.figures)
    engine: ClassVar[dict | None]  # dockerd's driver for it: cowlab.measure.engine.drivers.EngineDriver
    #                                      fields (note, backing, docker_name...); None: Docker has none
    vagrant: ClassVar[dict | None]  # its workshop VM (vagrant/machines.json: os, memory, cpus,
    #                                      disk, storage, scripts); None: no machine of its own
    option_names: ClassVar[frozenset[str]] = frozenset()  # driver options a workload may vary
    backing_kinds: ClassVar[tuple[str, ...] | None] = None  # None: any backing filesystem
    services: ClassVar[bool] = False
    # This kernel may lack what the driver needs (its probe then names it in details
    # `kernel_lacks`) while the kernel VM has it: the run layer (cowlab.run.vmroute) routes it there.
    vm_route: ClassVar[bool] = False
    vm_kernel: ClassVar[str] = "6.1"  # the kernel the VM boots for it (a name of cowlab.storage.kernels)
    # Conformance cases where the driver knowingly differs from a plain directory:
    # case → (what it does instead, a regex every difference the suite reports must match).
    # The suite then asserts exactly that deviation, and fails if it stops happening.
    deviations: ClassVar[dict[str, tuple[str, str]]] = {}  # runs a daemon or pool that persistent containers keep alive

    def __init__(
        self, backing: Backing, res: Resources, store: ImageStore, home: Path | None = None, options: dict | None = None
    ):
        self.backing = backing
        self.res = res  # owner of what the driver itself creates (imports, staging)
        self.store = store
        self.home = home or backing.path / self.name
        self.options = dict(options or {})
        self.home.mkdir(parents=True, exist_ok=True)

    @classmethod
    def sweep_strays(cls, state, journal_entries: list[dict]) -> list[str]:
        """`cowlab cleanup`: release what this backend left under the state root that no
        remaining journal entry names (e.g. device mapper devices); lines saying what it did."""
        return []

    @classmethod
    def check_options(cls, options: dict, here: bool = True) -> None:
        """Bad --opt/--device input, found before any work starts. here=False: the run goes to
        the kernel VM, whose guest checks what only it can see (its own disks)."""
        bad = sorted(set(options) - cls.option_names)
        if bad:
            takes = f"its options: {', '.join(sorted(cls.option_names))}" if cls.option_names else "it takes none"
            raise CowlabError(f"{cls.name} has no option {bad[0]!r} ({takes})")

    # --- to implement ----------------------------------------------------------------------
    @classmethod
    def probe(cls) -> Probe:
        raise NotImplementedError

    def _layer(self, chain: str) -> Path:
        """Where a driver keeps a layer by chain id (a layer's form depends on those below it)."""
        from cowlab.storage.drivers._util import chain_key

        return self.home / "layers" / chain_key(chain)

    def _image_file(self, image: Image) -> Path:
        """Where a driver that keeps one record per imported image writes it."""
        return self.home / "images" / f"{image_key(image)}.json"

    def has_image(self, image: Image) -> bool:
        return self._image_file(image).exists()

    def _write_image_record(self, image: Image, rec: dict) -> None:
        """The image's record, whole or not at all (written aside, then renamed into place): its
        existence is what says the image is imported."""
        f = self._image_file(image)
        f.parent.mkdir(exist_ok=True)
        tmp = self.staging()
        tmp.write_text(json.dumps(rec))
        os.replace(tmp, f)

    def _forget_image(self, image: Image, key: str) -> set | None:
        """Drop the image's record; what the remaining images' records still list under `key`
        (the layers they share, which must stay), or None if the image was not imported."""
        f = self._image_file(image)
        if not f.exists():
            return None
        f.unlink()
        return {x for p in f.parent.glob("*.json") for x in json.loads(p.read_text())[key]}

    def import_image(self, image: Image) -> None:
        """Bring an image from the store into the driver's own form (idempotent)."""
        raise NotImplementedError

    def create(self, image: Image, res: Resources, cid: str | None = None) -> Container:
        """A new container: a writable root at container.mountpoint, its resources in res."""
        raise NotImplementedError

    def remove_image(self, image: Image) -> None:
        raise NotImplementedError

    def metadata(self) -> dict:
        return {}

    def used_bytes(self) -> int:
        """Bytes in use where this driver stores data, after writing back. A pool-based driver
        (ZFS, a thin pool) overrides this with the pool's own allocation."""
        return self.backing.used_bytes()

    def inodes_used(self) -> int | None:
        """Inodes in use on the driver's filesystem; None where the notion does not apply."""
        return self.backing.inodes_used()

    def space_needed(self, image: Image) -> int:
        """Bytes a new container costs up front (checked against free space before creating)."""
        return 0

    # --- shared ----------------------------------------------------------------------------
    # A bench sets this: a removed container is unmounted at once, and its directory deleted by
    # Resources.forget_spent() between repetitions, outside the timed remove, as containerd's
    # snapshotter frees space in its Cleanup. Drivers whose container is one journal entry with
    # a "dir" honour it (overlay2); the others delete at once.
    defer_free: bool = False

    def remove(self, container: Container, res: Resources) -> None:
        for h in reversed(container.handles):
            # in a bench (defer_free) the journal entries go with the files, between samples
            res.release(h, lazy=self.defer_free)
        container.handles.clear()

    def engine_storage(self) -> dict:
        """For engine mode, where dockerd's storage driver takes storage cowlab makes (a thin pool,
        a ZFS dataset): make it, in this driver's resources, and say how dockerd gets it:
        {"storage_opts": [...], "path": [dirs dockerd's PATH needs first], "meta": {...}}."""
        raise CowlabError(f"{self.name} makes no storage for dockerd")

    def describe(self) -> dict:
        return {"driver": self.name, **self.backing.metadata(), **self.metadata()}

    @staticmethod
    def new_id() -> str:
        return os.urandom(6).hex()  # 12 hex digits, as Docker shows them

    def staging(self) -> Path:
        """A scratch dir on the same filesystem as home, so results can be renamed into place."""
        d = self.home / "tmp"
        d.mkdir(exist_ok=True)
        return d / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def image_key(image: Image) -> str:
    return image.id.split(":")[-1][:24]


# The methods behind two capabilities, for the workloads that require them (the runner gives
# such a workload only a driver whose `capabilities` name it).
@dataclass(frozen=True)
class BareMount:
    """A driver's container as the kernel sees it, with nothing of cowlab around it: the
    directories made inside the container's own directory (in this order), then one mount(2)
    of `fstype` from `source` on `target` (a name among dirs) with the options data(cdir)
    returns, issued from the directory `cwd` where the options name lower paths relatively."""

    dirs: tuple[str, ...]
    target: str
    source: str
    fstype: str
    data: Callable[[Path], str]
    cwd: Path | None = None


@runtime_checkable
class HasBareMount(Protocol):
    def bare_mount(self, image: Image) -> BareMount:
        """capability "bare_mount": what the kernel must do for one container of this image."""
        ...


@runtime_checkable
class HasPoolStats(Protocol):
    def pool_stats(self) -> dict:
        """capability "pool_stats": the pool's compressratio, dedupratio and what else it reports."""
        ...
