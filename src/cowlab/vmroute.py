"""Where a driver runs: natively, or in the kernel VM (cowlab.vm) when this kernel lacks what
the driver needs. The run layer decides this; a driver's probe only says what the kernel lacks
(details `kernel_lacks`) and declares whether the VM can stand in (`Driver.vm_route`).
"""

from __future__ import annotations

import os
from pathlib import Path

from . import cleanup, drivers, vm
from . import workloads as W
from .drivers.base import Driver, Probe
from .errors import CowlabError
from .images import ImageStore
from .state import StateRoot, resolve_root
from .sysutil import require_root

GiB = 1 << 30
MODES = vm.MODES


def probe(cls: type[Driver]) -> Probe:
    """cls.probe(), saying where the driver would run (details `route`: native, vm, or None)
    and, when the kernel VM could stand in for this kernel, how to get there."""
    p = cls.probe()
    if p.available or not (getattr(cls, "vm_route", False) and p.details.get("kernel_lacks")):
        return p
    if vm.available():
        return Probe(False, p.reason, "cowlab runs it in a kernel VM (--vm auto)",
                     details={**p.details, "route": "vm", "vm": vm.describe()})
    return Probe(False, p.reason, f"{p.hint}, or the kernel VM: {vm.hint()}",
                 details={**p.details, "route": None, "vm_unavailable": vm.why_unavailable()})


def choose(driver_cls: type[Driver], mode: str) -> str:
    """'native' or 'vm' for this driver; raises when `always` can't be honoured."""
    if mode not in MODES:
        raise CowlabError(f"--vm {mode!r}: choose {', '.join(MODES)}")
    if os.environ.get(vm.IN_VM) or mode == "never":
        return "native"
    if mode == "always":
        why = vm.why_unavailable()
        if why:
            raise CowlabError(f"--vm always: the kernel VM can't run here: {why}")
        return "vm"
    return "vm" if probe(driver_cls).details.get("route") == "vm" else "native"


# --- `cowlab bench` and `cowlab lab` through the VM ----------------------------------------------
DIRECT_SERIAL = "cowlab-direct"
ENGINE_SERIAL = "cowlab-engine"   # dockerd's own pool in --mode both


def prebuild(state: StateRoot, workload_names: list[str] | None, quick: bool, reps: int | None,
             echo=None, engine: bool = False) -> None:
    """Build the images the workloads need on the host, natively (the guest reads them), and
    for engine mode the same images with the busybox base layer under them."""
    store = ImageStore(state)
    built = {}
    for wl in W.get(workload_names):
        g = dict(wl.grid(quick))
        if reps is not None:
            g["reps"] = reps
        for spec in wl.specs(g):
            if echo:
                echo(f"cowlab-vm: image {spec.name} (built on the host)")
            built[spec.name] = store.build(spec)
    if engine:
        from .engine.images import build_engine_images, static_busybox
        if static_busybox():  # (without one the guest's engine check says so)
            build_engine_images(store, built)


def guest_disks(driver_cls, device: str | None, size: int, mode: str | None = None,
                options: dict | None = None) -> tuple[dict[str, int], list[str]]:
    """Extra disks and the CLI args naming them, for a driver that needs a block device: one
    for its pool, and in --mode both a second for dockerd's (option engine_device)."""
    if not getattr(driver_cls, "needs_device", False):
        return {}, []
    for given in (device, (options or {}).get("engine_device")):
        if given:
            raise CowlabError(f"{given} names a device of this host, which the VM does not see; in the VM "
                              "cowlab attaches fresh sparse disks of its own (leave --device and engine_device out)")
    disks, args = {DIRECT_SERIAL: size}, ["--device", "{disk:%s}" % DIRECT_SERIAL]
    if mode == "both":
        disks[ENGINE_SERIAL] = size
        args += ["--opt", "engine_device={disk:%s}" % ENGINE_SERIAL]
    return disks, args


def bench_in_vm(driver_name: str, *, root: str | None, out: Path, quick: bool, workloads: list[str],
                backing: str, reps: int | None, backing_size: str, mode: str | None, options: dict,
                device: str | None, disk_size: int = 16 * GiB, echo=None) -> int:
    """`cowlab bench` of a driver the host kernel can't run, in the kernel VM."""
    echo = echo or (lambda line: print(line, flush=True))
    require_root()
    cls = drivers.get(driver_name)
    cls.check_options(options, here=False)  # bad input: refused before anything is built or booted
    disks, dev_args = guest_disks(cls, device, disk_size, mode, options)
    state = StateRoot(resolve_root(root)).ensure()
    for line in cleanup.sweep(state):
        echo(f"cleanup: {line}")
    prebuild(state, workloads or None, quick, reps, echo, engine=mode in ("engine", "both"))
    args = ["bench", driver_name, "--out", os.path.abspath(out), "--backing", backing,
            "--backing-size", backing_size, "--mode", mode or "primitive", *dev_args]
    args += ["--quick"] if quick else []
    args += [x for w in workloads for x in ("--workload", w)]
    args += ["--reps", str(reps)] if reps is not None else []
    args += [x for k, v in options.items() if k not in ("device", "engine_device") for x in ("--opt", f"{k}={v}")]
    why = "is not available natively" if not probe(cls).available else "runs natively too, but --vm always"
    echo(f"cowlab-vm: {driver_name} {why}; running `cowlab {' '.join(args)}` in a "
         f"{vm.accel().upper()} VM ({vm.find_kernel()}); its boot time is reported, not measured")
    r = vm.run(state, args, out=Path(out), disks=disks, echo=echo)
    echo(f"cowlab-vm: boot {r.boot_seconds} s (not part of any measurement), whole VM {r.wall_seconds:.1f} s, "
         f"guest kernel {r.guest.get('kernel')}, exit {r.returncode}")
    for d in r.run_dirs:
        echo(f"cowlab-vm: results {d} (virtualization {vm.accel()}, emulated)")
    return r.returncode
