"""What a run.json says about where its numbers come from."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from cowlab import __version__

# The first line of `TOOL --version` (or the given args) for every external tool cowlab may use.
TOOLS = {
    "cp": ["cp", "--version"],
    "util-linux (mount)": ["mount", "--version"],
    "losetup": ["losetup", "--version"],
    "fio": ["fio", "--version"],
    "mkfs.ext4": ["mkfs.ext4", "-V"],
    "mkfs.xfs": ["mkfs.xfs", "-V"],
    "mkfs.btrfs": ["mkfs.btrfs", "--version"],
}


def tool_version(cmd: list[str]) -> str | None:
    if not shutil.which(cmd[0]) and not any(Path(d, cmd[0]).exists() for d in ("/sbin", "/usr/sbin")):
        return None
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (cp.stdout or cp.stderr).strip().splitlines()
    return text[0] if text else None


def git_sha() -> str | None:
    if os.environ.get("COWLAB_GIT_SHA"):  # the kernel VM's guest: the host's, same checkout
        return os.environ["COWLAB_GIT_SHA"]  # (git in an emulated guest can take longer than 5 s)
    here = Path(__file__).resolve().parent
    try:
        cp = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        sha = cp.stdout.strip() if cp.returncode == 0 else None
        if sha:
            dirty = subprocess.run(
                ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return None


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def virtualization() -> tuple[str, str]:
    """('none' | 'hw' | 'tcg', hypervisor detail). 'hw' is a hardware-assisted VM (KVM and kin),
    whose timings are close to native; 'tcg' is QEMU's emulation, whose timings are not."""
    forced = os.environ.get("COWLAB_VIRTUALIZATION")
    if forced:
        return forced, os.environ.get("COWLAB_HYPERVISOR", forced)
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    vendor = ""
    for p in ("/sys/class/dmi/id/sys_vendor", "/sys/hypervisor/type"):
        try:
            vendor = Path(p).read_text().strip()
            break
        except OSError:
            continue
    if " hypervisor" not in flags:
        return "none", vendor
    if "QEMU Virtual CPU" in _cpu_model() or "QEMU TCG CPU" in _cpu_model() or "TCG" in vendor.upper():
        return "tcg", vendor or "qemu"
    # A named CPU model (libvirt's default host-model gives e.g. "AMD EPYC Processor" under TCG too)
    # hides emulation from /proc/cpuinfo; the hypervisor's CPUID signature does not:
    # systemd-detect-virt says "qemu" for TCG ("TCGTCGTCGTCG") and "kvm" for KVM.
    if _detect_virt() == "qemu":
        return "tcg", vendor or "qemu"
    return "hw", vendor or "unknown hypervisor"


def _detect_virt() -> str:
    try:
        cp = subprocess.run(["systemd-detect-virt", "--vm"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return cp.stdout.strip()


def collect(argv: list[str], tools: list[str] | None = None) -> dict:
    virt, hyper = virtualization()
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    names = tools if tools is not None else list(TOOLS)
    return {
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "kernel_version": platform.version(),
        "distribution": _os_release(),
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": mem,
        "virtualization": virt,
        "hypervisor": hyper,
        "emulated": virt == "tcg",
        "vm_id": os.environ.get("COWLAB_VM_ID") or None,  # which cowlab kernel VM ran it (None: natively)
        "cowlab_version": __version__,
        "git_sha": git_sha(),
        "python": sys.version.split()[0],
        "tool_versions": {n: tool_version(TOOLS[n]) for n in names if n in TOOLS},
        "command": argv,
        "loadavg_start": loadavg(),
    }


def loadavg() -> list[float] | None:
    """1, 5 and 15 minute load averages: a busy machine makes noisy timings, so runs say so."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None
