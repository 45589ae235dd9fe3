"""Where a driver runs: natively, or in the kernel VM (cowlab.storage.vm) when this kernel lacks what
the driver needs. The run layer decides this; a driver's probe only says what the kernel lacks
(details `kernel_lacks`) and declares whether the VM can stand in (`Driver.vm_route`).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from cowlab.base.errors import CowlabError
from cowlab.base.state import StateRoot, resolve_root
from cowlab.base.sysutil import require_root
from cowlab.measure import workloads as W
from cowlab.run import cleanup
from cowlab.storage import drivers, kernels, vm
from cowlab.storage.drivers.base import Driver, Probe
from cowlab.store.images import ImageStore

GiB = 1 << 30
MODES = vm.MODES


def vm_kernel(cls: type[Driver], kernel: str | None = None) -> str:
    """The kernel a VM run of this driver boots: the one asked for, else the driver's own."""
    return kernel if kernel and kernel != kernels.HOST else cls.vm_kernel


def probe(cls: type[Driver]) -> Probe:
    """cls.probe(), saying where the driver would run (details `route`: native, vm, or None)
    and, when the kernel VM could stand in for this kernel, how to get there."""
    p = cls.probe()
    if p.available or not (getattr(cls, "vm_route", False) and p.details.get("kernel_lacks")):
        return p
    if vm.available(cls.vm_kernel):
        return Probe(
            False,
            p.reason,
            f"cowlab runs it in a kernel VM (--vm auto, kernel {cls.vm_kernel})",
            details={**p.details, "route": "vm", "vm": vm.describe(cls.vm_kernel)},
        )
    return Probe(
        False,
        p.reason,
        f"{p.hint}, or the kernel VM: {vm.hint(cls.vm_kernel)}",
        details={**p.details, "route": None, "vm_unavailable": vm.why_unavailable(cls.vm_kernel)},
    )


def choose(driver_cls: type[Driver], mode: str, kernel: str | None = None) -> str:
    """'native' or 'vm' for this driver; raises when `always` (or a --kernel other than the
    host's) can't be honoured."""
    if mode not in MODES:
        raise CowlabError(f"--vm {mode!r}: choose {', '.join(MODES)}")
    if kernel is not None and kernel != kernels.HOST:
        kernels.find(kernel)  # an unknown name is an error before any work
    if os.environ.get(vm.IN_VM) or mode == "never" or kernel == kernels.HOST:
        if kernel and kernel != kernels.HOST and mode == "never":
            raise CowlabError(f"--kernel {kernel} runs in the kernel VM; it can't go with --vm never")
        return "native"
    if mode == "always" or kernel:
        k = vm_kernel(driver_cls, kernel)
        why = vm.why_unavailable(k)
        if why:
            raise CowlabError(
                f"{'--kernel ' + kernel if kernel else '--vm always'}: the kernel VM can't run here: {why}"
            )
        return "vm"
    return "vm" if probe(driver_cls).details.get("route") == "vm" else "native"


def bench_route(driver_name: str, mode: str, kernel: str | None = None) -> str:
    """'native' or 'vm' for `cowlab bench DRIVER`: a backend this kernel lacks goes to the kernel
    VM in every mode (dockerd's devicemapper needs the same kernel as cowlab's), and so does any
    driver with --kernel K; an engine-only name (e.g. devicemapper) stays here, where dockerd is
    asked and its answer recorded."""
    if driver_name not in drivers.DRIVERS:
        if mode not in MODES:
            raise CowlabError(f"--vm {mode!r}: choose {', '.join(MODES)}")
        if kernel and kernel != kernels.HOST:
            raise CowlabError(f"--kernel {kernel}: {driver_name} is not a cowlab driver (engine-only names run here)")
        return "native"
    return choose(drivers.get(driver_name), mode, kernel)


# --- `cowlab bench` and `cowlab lab` through the VM ----------------------------------------------
DIRECT_SERIAL = "cowlab-direct"
ENGINE_SERIAL = "cowlab-engine"  # dockerd's own pool in --mode both


def prebuild(
    state: StateRoot, workload_names: list[str] | None, quick: bool, reps: int | None, echo=None, engine: bool = False
) -> None:
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
        from cowlab.measure.engine.images import build_engine_images, static_busybox

        if static_busybox():  # (without one the guest's engine check says so)
            build_engine_images(store, built)


def guest_disks(
    driver_cls, device: str | None, size: int, mode: str | None = None, options: dict | None = None
) -> tuple[dict[str, int], list[str]]:
    """Extra disks and the CLI args naming them, for a driver that needs a block device: one
    for its pool, and in --mode both a second for dockerd's (option engine_device)."""
    if not getattr(driver_cls, "needs_device", False):
        return {}, []
    for given in (device, (options or {}).get("engine_device")):
        if given:
            raise CowlabError(
                f"{given} names a device of this host, which the VM does not see; in the VM "
                "cowlab attaches fresh sparse disks of its own (leave --device and engine_device out)"
            )
    disks, args = {DIRECT_SERIAL: size}, ["--device", f"{{disk:{DIRECT_SERIAL}}}"]
    if mode == "both":
        disks[ENGINE_SERIAL] = size
        args += ["--opt", f"engine_device={{disk:{ENGINE_SERIAL}}}"]
    return disks, args


def bench_in_vm(
    driver_name: str,
    *,
    root: str | None,
    out: Path,
    quick: bool,
    workloads: list[str],
    backing: str,
    reps: int | None,
    backing_size: str,
    mode: str | None,
    options: dict,
    device: str | None,
    disk_size: int = 16 * GiB,
    echo=None,
    kernel: str | None = None,
) -> int:
    """`cowlab bench` of a driver the host kernel can't run (or on the kernel asked for), in the kernel VM."""
    echo = echo or (lambda line: print(line, flush=True))
    require_root()
    cls = drivers.get(driver_name)
    cls.check_options(options, here=False)  # bad input: refused before anything is built or booted
    disks, dev_args = guest_disks(cls, device, disk_size, mode, options)
    state = StateRoot(resolve_root(root)).ensure()
    for line in cleanup.sweep(state):
        echo(f"cleanup: {line}")
    prebuild(state, workloads or None, quick, reps, echo, engine=mode in ("engine", "both"))
    args = [
        "bench",
        driver_name,
        "--out",
        os.path.abspath(out),
        "--backing",
        backing,
        "--backing-size",
        backing_size,
        "--mode",
        mode or "primitive",
        *dev_args,
    ]
    args += ["--quick"] if quick else []
    args += [x for w in workloads for x in ("--workload", w)]
    args += ["--reps", str(reps)] if reps is not None else []
    args += [x for k, v in options.items() if k not in ("device", "engine_device") for x in ("--opt", f"{k}={v}")]
    k = vm_kernel(cls, kernel)
    why = (
        "is not available natively"
        if not probe(cls).available
        else f"--kernel {kernel}"
        if kernel
        else "runs natively too, but --vm always"
    )
    echo(
        f"cowlab-vm: {driver_name} {why}; running `cowlab {' '.join(args)}` in a "
        f"{vm.accel().upper()} VM (kernel {k}: {vm.find_kernel(k)}); its boot time is reported, not measured"
    )
    r = vm.run(state, args, out=Path(out), disks=disks, echo=echo, kernel_name=k)
    echo(
        f"cowlab-vm: boot {r.boot_seconds} s (not part of any measurement), whole VM {r.wall_seconds:.1f} s, "
        f"guest kernel {r.guest.get('kernel')}, exit {r.returncode}"
    )
    for d in r.run_dirs:
        echo(f"cowlab-vm: results {d} (virtualization {vm.accel()}, emulated)")
    return r.returncode


def conformance_in_vm(
    state: StateRoot,
    results: list,
    names: list[str],
    case_names: list[str],
    every_layer: bool,
    device: str | None,
    echo=None,
    kernel: str | None = None,
) -> list:
    """Run the conformance suite for `names` in kernel VMs, one per kernel the drivers need
    (images built here first: the guest reads this store), and put their results in place of
    the 'unavailable' ones, marked as emulated."""
    from cowlab.measure import conformance as C

    echo = echo or (lambda line: print(line, flush=True))
    if device:
        raise CowlabError(
            f"--device {device} names a device of this host, which the VM does not see; "
            "in the VM cowlab attaches a fresh sparse disk of its own (leave --device out)"
        )
    C.prebuild(state, case_names, every_layer)
    by_kernel: dict[str, list[str]] = {}
    for n in names:
        by_kernel.setdefault(vm_kernel(drivers.get(n), kernel), []).append(n)
    got_all: dict = {}
    for k, group in by_kernel.items():
        echo(f"conformance: {', '.join(group)} in a {vm.accel().upper()} VM (kernel {k}: {vm.find_kernel(k)})")
        args = ["conformance", "--vm", "never", *[a for c in case_names for a in ("--case", c)]]
        args += ["--every-layer"] if every_layer else []
        disks: dict = {}
        for n in group:
            d, dev_args = guest_disks(drivers.get(n), None, 16 * GiB)
            disks.update(d)
            args += ["--driver", n, *dev_args]
        with tempfile.TemporaryDirectory(dir=state.tmp, prefix=f"{os.getpid()}-vmconf-") as tmp:
            args += ["--json", f"{tmp}/conformance.json"]
            r = vm.run(state, args, out=Path(tmp), disks=disks, echo=echo, kernel_name=k)
            f = Path(tmp) / "conformance.json"
            if not f.exists():
                raise CowlabError(f"the kernel VM wrote no conformance results (exit {r.returncode})")
            got = [C.Result(**x) for x in json.loads(f.read_text())]
        note = f"ran in the kernel VM ({r.guest.get('kernel')}, {vm.accel()}, emulated; boot {r.boot_seconds} s)"
        for x in got:
            x.notes.append(note)
            got_all[(x.driver, x.case)] = x
    return [got_all.get((x.driver, x.case), x) if x.driver in names else x for x in results]
