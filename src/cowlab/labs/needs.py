"""What a lab needs, checked before any step runs: `needs:` in its front matter.

    needs:
      features: [overlay, xfs, btrfs, dm-thin]   # named below, each with its check and its hint
      drivers: [overlay2, vfs]                   # cowlab drivers that must be available
      commands: [getfattr]                       # executables on PATH

A feature the running kernel lacks but the kernel VM has (device mapper's thin pool) makes the lab
run in the kernel VM, as `cowlab bench` does for the dm drivers; anything else missing makes the
lab unrunnable here, with the reason and the way to get it.
"""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cowlab.base.errors import CowlabError

PROVISION = "vagrant/provision"


def _fs(name: str) -> bool:
    try:
        return any(line.split()[-1] == name for line in Path("/proc/filesystems").read_text().splitlines())
    except OSError:
        return False


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        parts = platform.release().split(".")
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (ValueError, IndexError):
        return False


def _dm_thin() -> bool:
    if Path("/sys/module/dm_thin_pool").exists():
        return True
    import subprocess

    try:
        cp = subprocess.run(["dmsetup", "targets"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return cp.returncode == 0 and "thin-pool" in cp.stdout


def _docker() -> bool:
    if not (shutil.which("dockerd") and shutil.which("docker")):
        return False
    try:
        import docker  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class Feature:
    check: Callable[[], bool]
    what: str  # said when missing
    hint: str  # how to get it
    in_vm: str | None = None  # the kernel (cowlab.storage.kernels) on which the kernel VM has it
    script: str | None = None  # vagrant/provision/<script>.sh installs what it takes, if a package can


FEATURES: dict[str, Feature] = {
    "overlay": Feature(
        lambda: _fs("overlay"),
        "the kernel has no overlay filesystem",
        "a kernel with CONFIG_OVERLAY_FS (every distribution kernel has it)",
    ),
    "metacopy": Feature(
        lambda: Path("/sys/module/overlay/parameters/metacopy").exists(),
        "overlayfs here has no metacopy option (kernel < 4.19)",
        "a kernel ≥ 4.19",
    ),
    "data-only-lower": Feature(
        lambda: _fs("overlay") and _kernel_at_least(6, 5),
        "overlayfs data-only lower layers need kernel ≥ 6.5",
        "a kernel ≥ 6.5",
    ),
    "idmap": Feature(lambda: _kernel_at_least(5, 19), "idmapped overlay mounts need kernel ≥ 5.19", "a kernel ≥ 5.19"),
    "ext4": Feature(
        lambda: _fs("ext4") and bool(shutil.which("mkfs.ext4")),
        "no ext4 or mkfs.ext4",
        f"sudo bash {PROVISION}/host.sh",
        script="host",
    ),
    "xfs": Feature(
        lambda: _fs("xfs") and bool(shutil.which("mkfs.xfs")),
        "no xfs in the kernel or no mkfs.xfs",
        f"sudo bash {PROVISION}/host.sh (xfsprogs)",
        script="host",
    ),
    "btrfs": Feature(
        lambda: _fs("btrfs") and bool(shutil.which("btrfs")),
        "no btrfs in the kernel or no btrfs-progs",
        f"sudo bash {PROVISION}/btrfs.sh",
        script="btrfs",
    ),
    "erofs": Feature(
        lambda: _fs("erofs") and bool(shutil.which("mkfs.erofs")),
        "no erofs in the kernel or no mkfs.erofs",
        "sudo apt-get install erofs-utils (and a kernel with CONFIG_EROFS_FS)",
        script="erofs",
    ),
    "dm-thin": Feature(
        _dm_thin,
        "the running kernel has no device-mapper thin-pool target",
        f"sudo bash {PROVISION}/devicemapper.sh (then the lab runs in the kernel VM), "
        "or the Vagrant devicemapper-loop machine",
        in_vm="6.1",
        script="devicemapper",
    ),
    "aufs": Feature(
        lambda: _fs("aufs"),
        "the running kernel has no aufs (no Debian kernel has it)",
        "sudo nox -s aufs-kernel (cowlab's AUFS kernel; then the lab runs in the kernel VM), "
        "or the Vagrant `aufs` machine (Ubuntu 20.04's kernel ships aufs)",
        in_vm="aufs",
        script="aufs",
    ),
    "docker": Feature(
        _docker,
        "Docker Engine (dockerd, docker) or the Docker SDK is not installed",
        f"sudo bash {PROVISION}/engine.sh; pip install 'cowlab[engine]' (the nox sessions do)",
        script="engine",
    ),
    "fuse": Feature(
        lambda: Path("/dev/fuse").exists() and _fs("fuse"),
        "no FUSE in this kernel",
        "a kernel with CONFIG_FUSE_FS and /dev/fuse",
        script="host",
    ),
    "cgroup-memory": Feature(
        lambda: (
            Path("/sys/fs/cgroup/memory").is_dir()
            or "memory"
            in (
                Path("/sys/fs/cgroup/cgroup.controllers").read_text()
                if Path("/sys/fs/cgroup/cgroup.controllers").exists()
                else ""
            )
        ),
        "no memory cgroup controller",
        "a kernel with the memory controller enabled",
    ),
}

NEEDS_KEYS = {"features", "drivers", "commands"}


def check_needs_spec(path, needs: dict) -> None:
    """Refuse a lab whose needs name nothing we know: a typo must not make a lab unrunnable."""
    if not isinstance(needs, dict):
        raise CowlabError(f"{path}: needs must be a mapping")
    unknown = set(needs) - NEEDS_KEYS
    if unknown:
        raise CowlabError(f"{path}: unknown needs key(s) {sorted(unknown)}; known: {sorted(NEEDS_KEYS)}")
    for f in needs.get("features", []):
        if f not in FEATURES:
            raise CowlabError(f"{path}: unknown feature {f!r}; known: {', '.join(sorted(FEATURES))}")
    if needs.get("drivers"):
        from cowlab.storage import drivers

        for d in needs["drivers"]:
            drivers.get(d)  # raises with the list of drivers


@dataclass
class Verdict:
    route: str | None  # "native", "vm", or None when it can't run here
    missing: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)
    kernel: str | None = None  # with route "vm": the kernel the VM boots

    @property
    def runnable(self) -> bool:
        return self.route is not None

    @property
    def reason(self) -> str:
        return "; ".join(self.missing)


def scripts(needs_list: list[dict], root: Path | None = None) -> list[str]:
    """The provisioning scripts (vagrant/provision/NAME.sh) that install what these labs need,
    host first; only scripts that exist in the checkout are named."""
    out = ["host"]
    for n in needs_list:
        out += [s for f in n.get("features", []) if (s := FEATURES[f].script)]
        if n.get("drivers"):
            from cowlab.storage import drivers

            out += [drivers.get(d).name for d in n["drivers"]]  # vagrant/provision/<driver>.sh
        if "dm-thin" in n.get("features", []) or any(d.startswith("devicemapper") for d in n.get("drivers", [])):
            out.append("devicemapper")  # the kernel VM: QEMU, virtme-ng's kernel
    out = list(dict.fromkeys(s for s in out if s))
    if root is not None:
        out = [s for s in out if (root / PROVISION / f"{s}.sh").exists()]
    return out


def evaluate(needs: dict, vm_mode: str = "auto", kernel: str | None = None) -> Verdict:
    """Can this lab run here, natively or in the kernel VM (and on which kernel), and if not,
    why. With `kernel` (not host) the lab runs in the VM on that kernel, whose own replay
    then says what it lacks."""
    missing, hints, vm_only = [], [], []
    kernels_needed: dict[str, str] = {}  # what needs the VM -> on which kernel
    if os.geteuid() != 0:
        missing.append("needs root (it mounts filesystems)")
        hints.append("run it as root, e.g. with sudo")
    forced = kernel not in (None, "host")
    for name in needs.get("features", []):
        f = FEATURES[name]
        if forced or f.check():
            continue
        if f.in_vm:
            vm_only.append(name)
            kernels_needed[name] = f.in_vm
        else:
            missing.append(f"{name}: {f.what}")
            hints.append(f.hint)
    for cmd in needs.get("commands", []):
        if not shutil.which(cmd):
            missing.append(f"command {cmd} not found")
            hints.append(f"sudo bash {PROVISION}/host.sh")
    if needs.get("drivers") and not forced:
        from cowlab.storage import drivers

        for d in needs["drivers"]:
            cls = drivers.get(d)
            p = cls.probe()
            if p.available:
                continue
            if getattr(cls, "vm_route", False) and p.details.get("kernel_lacks"):
                vm_only.append(d)
                kernels_needed[d] = cls.vm_kernel
            else:
                missing.append(f"driver {d}: {p.reason}")
                hints.append(p.hint)
    from cowlab.storage import vm

    in_guest = bool(os.environ.get(vm.IN_VM))
    if missing:
        return Verdict(None, missing, hints)
    if vm_only and vm_mode == "never" or vm_only and in_guest:
        return Verdict(
            None,
            [f"{n}: {FEATURES[n].what}" if n in FEATURES else f"{n} needs the kernel VM" for n in vm_only],
            [FEATURES[n].hint if n in FEATURES else vm.hint() for n in vm_only],
        )
    wanted = set(kernels_needed.values())
    if len(wanted) > 1:
        return Verdict(None, [f"needs kernels {', '.join(sorted(wanted))} at once ({kernels_needed})"], [])
    k = kernel if forced else (wanted.pop() if wanted else None)
    if vm_only or vm_mode == "always" or forced:
        why = vm.why_unavailable(k, with_hint=False)  # the hint below names the command once
        if why:
            return Verdict(
                None,
                [f"{', '.join(vm_only) or 'the lab'} needs the kernel VM, which can't run here: {why}"],
                [vm.hint(k)],
            )
        return Verdict("vm", kernel=k)
    return Verdict("native")
