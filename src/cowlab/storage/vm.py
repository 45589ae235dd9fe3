"""The kernel VM route: run a cowlab command inside a throwaway VM whose kernel has what the
host's lacks (device mapper's thin pool, kernel ZFS).

virtme-ng (PyPI `virtme-ng`, cowlab's `vm` extra) boots Debian 12's generic 6.1 kernel
(/boot/vmlinuz-6.1.0-*-amd64; the -cloud- flavour has no 9p and cannot boot this way) under QEMU
with the host's root filesystem shared read-only, so the guest runs this very cowlab with this
very Python. Emulated (TCG, `--disable-kvm`): KVM guests hang at boot on the machines cowlab is
developed on; COWLAB_VM_ACCEL=kvm tries KVM where it works. No network device at all (QEMU
`-net none`, virtme-ng's default without --network).

What the guest gets:
- the host's root filesystem, read-only (and the host state root's images/ and layers/, so
  images are built natively before the boot, not emulated);
- the results directory and a scratch directory, read-write (9p, `--rwdir`);
- a sparse raw disk (under the host's state root) that the guest formats and mounts as its own
  state root: loop files, pools and containers live on a local block device in the guest, not on
  9p (mounted sync), which would measure 9p instead of the driver;
- for devicemapper-direct, a second sparse raw disk: the "real block device" (/dev/vdX).

The guest runs with COWLAB_VIRTUALIZATION=tcg, so run.json says `virtualization: tcg`,
`emulated: true` and its `kernel` is the guest's. The boot (from starting QEMU to the guest's
first line) is timed on the host and written next to the guest's results as run.json `vm` and a
sample `vm_boot_seconds` of workload `vm`, never inside a measurement. QEMU is a journaled child
of the run: killed by pid on Ctrl-C or error, found by `cowlab cleanup` after a crash.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cowlab import results as _results  # noqa: F401  (the vm_results releaser)
from cowlab.base import provenance, sysutil
from cowlab.base.errors import CowlabError
from cowlab.base.resources import Resources, spawn, tagged_processes
from cowlab.base.state import StateRoot
from cowlab.storage import kernels
from cowlab.storage.kernels import Kernel

DEFAULT_KERNEL = "6.1"  # Debian 12's: device mapper's thin pool and kernel ZFS as modules
IN_VM = "COWLAB_IN_VM"  # set in the guest: never go one VM deeper
UP = "cowlab-vm: guest up"  # the guest's first line; the host times the boot to it
MODES = ("auto", "always", "never")
PROVISION = "sudo bash vagrant/provision/devicemapper.sh"
STATE_SERIAL = "cowlab-state"
GiB = 1 << 30


# --- what the host has -----------------------------------------------------------------------
def kernel(name: str | None = None) -> Kernel | None:
    """The kernel the VM boots: `name` (a short name of cowlab.storage.kernels, default 6.1),
    or the image COWLAB_VM_KERNEL names."""
    forced = os.environ.get("COWLAB_VM_KERNEL")
    if forced and name in (None, DEFAULT_KERNEL):
        p = Path(forced)
        return (
            Kernel(DEFAULT_KERNEL, p.name.removeprefix("vmlinuz-"), p, None, f"COWLAB_VM_KERNEL={forced}")
            if p.exists()
            else None
        )
    return kernels.find(name or DEFAULT_KERNEL)


def find_kernel(name: str | None = None) -> Path | None:
    k = kernel(name)
    return k.image if k else None


def find_vng() -> str | None:
    here = Path(sys.executable).parent / "vng"  # a venv's own, even when not on PATH
    return str(here) if here.exists() else shutil.which("vng")


def find_qemu() -> str | None:
    return shutil.which("qemu-system-x86_64")


def why_unavailable(name: str | None = None, with_hint: bool = True) -> str:
    """'' when the VM route can boot kernel `name` (default 6.1) here, else what is missing (and,
    with_hint, how to get it: callers that print hint() beside it say it once)."""
    if os.environ.get(IN_VM):
        return "already inside cowlab's VM"
    missing = []
    if kernel(name) is None:
        missing.append(f"no {name or DEFAULT_KERNEL} kernel ({kernels.how_to_get(name or DEFAULT_KERNEL)})")
    if not find_qemu():
        missing.append("qemu-system-x86_64 not installed")
    if not find_vng():
        missing.append("virtme-ng not installed (pip install 'cowlab[vm]')")
    if missing:
        return "; ".join(missing) + (f"; run {PROVISION}" if with_hint else "")
    return ""


def available(name: str | None = None) -> bool:
    return not why_unavailable(name)


def hint(name: str | None = None) -> str:
    if name is not None and name != DEFAULT_KERNEL:
        return f"{kernels.how_to_get(name)}, {PROVISION} && pip install 'cowlab[vm]'"
    return f"{PROVISION} && pip install 'cowlab[vm]'"


def accel() -> str:
    return "kvm" if os.environ.get("COWLAB_VM_ACCEL") == "kvm" else "tcg"


def describe(name: str | None = None) -> dict:
    k = kernel(name)
    return {
        "kernel_image": str(k.image) if k else None,
        "kernel": k.release if k else None,
        "kernel_name": name or DEFAULT_KERNEL,
        "accel": accel(),
        "vng": find_vng(),
        "qemu": find_qemu(),
    }


# --- running a command in the VM (host side) -------------------------------------------------
@dataclass
class VMResult:
    returncode: int
    boot_seconds: float | None
    wall_seconds: float
    guest: dict = field(default_factory=dict)
    run_dirs: list[Path] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def run(
    state: StateRoot,
    argv: list[str],
    out: Path | None = None,
    disks: dict[str, int] | None = None,
    memory: str = "2G",
    cpus: int | None = None,
    state_disk: int = 64 * GiB,
    timeout: float | None = None,
    echo=None,
    python_argv: list[str] | None = None,
    kernel_name: str | None = None,
) -> VMResult:
    """Run `cowlab ARGV` (or `python PYTHON_ARGV`) in a fresh VM and wait for it.

    argv may name an extra disk as `{disk:SERIAL}`: disks maps each SERIAL to the size of a sparse
    raw file made for it, which the guest sees as /dev/vdX. Results written under `out` (shared
    read-write) get the VM's boot time added. kernel_name: which kernel boots (default 6.1)."""
    why = why_unavailable(kernel_name)
    if why:
        raise CowlabError(f"the kernel VM can't run here: {why}")
    echo = echo or (lambda line: print(line, flush=True))
    state.ensure()
    disks = dict(disks or {})
    kern = kernel(kernel_name)
    assert kern is not None
    vid = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:4]
    res = Resources.for_run(state, vm=vid)
    t0 = time.perf_counter()
    try:
        scratch = state.backings / f"vm-{vid}"
        res.acquire("dir", lambda: scratch.mkdir(parents=True), path=str(scratch))
        qemu_opts = []
        for serial, size in [(STATE_SERIAL, state_disk), *disks.items()]:
            img = scratch / f"{serial}.img"
            res.acquire("file", functools.partial(sysutil.sparse_file, img, size), path=str(img))
            qemu_opts += [
                "-drive",
                f"if=none,id={serial},file={img},format=raw,cache=unsafe",
                "-device",
                f"virtio-blk-pci,drive={serial},serial={serial}",
            ]
        if out is not None:
            out = Path(os.path.abspath(out))
            out.mkdir(parents=True, exist_ok=True)
        # The guest's hostname names its results directory (results/<host>-vm/): runs on another
        # kernel than the default 6.1 go apart (…-vm-5-10, …-vm-aufs), never pooled with it.
        suffix = "" if kern.name == DEFAULT_KERNEL else "-" + kern.name.replace(".", "-")
        name = (socket.gethostname()[:40] + "-vm" + suffix).replace("_", "-")
        if out is not None:  # whatever the guest leaves "running" is closed once the VM is gone
            res.add("vm_results", out=str(out), hostname=name, before=sorted(_runs(str(out))), vm_id=vid)
        config = {
            "argv": argv,
            "python_argv": python_argv,
            "scratch": str(scratch),
            "vm_id": vid,
            "host_root": str(state.path),
            "images": str(state.images),
            "layers": str(state.layers),
            "disks": sorted(disks),
            "out": str(out) if out else None,
            "host": {"hostname": socket.gethostname(), "kernel": platform.release()},
            "kernel_image": str(kern.image),
            "kernel": kern.describe(),
            "accel": accel(),
            "git_sha": provenance.git_sha(),
        }
        (scratch / "config.json").write_text(json.dumps(config))
        guest_cmd = " ".join(
            shlex.quote(a) for a in [sys.executable, "-m", "cowlab.storage.vm", "guest", str(scratch / "config.json")]
        )
        vng = find_vng()
        if vng is None:  # why_unavailable() found it a moment ago
            raise CowlabError("virtme-ng not installed (pip install 'cowlab[vm]')")
        cmd = [
            vng,
            "--run",
            str(kern.image),
            *_module_args(kern),
            "--memory",
            memory,
            "--cpus",
            str(cpus or os.cpu_count() or 1),
            "--name",
            name,
            "--rwdir",
            str(scratch),
            "--rodir",
            str(state.images),
            "--rodir",
            str(state.layers),
            f"--qemu-opts={' '.join(qemu_opts)}",
            "--exec",
            guest_cmd,
        ]
        if out is not None:
            cmd[-2:-2] = ["--rwdir", str(out)]
        if accel() == "tcg":
            cmd.insert(1, "--disable-kvm")
        # A session of its own: the terminal's Ctrl-C reaches cowlab, which then ends QEMU itself.
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        # vng starts virtme-run, which sits beside it (the venv's bin), on PATH or not.
        env["PATH"] = os.path.dirname(cmd[0]) + os.pathsep + env.get("PATH", "")
        started = time.time()
        p = spawn(
            res,
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=str(scratch),
        )
        boot: list[float] = []
        threading.Thread(target=_journal_qemu, args=(res, p), daemon=True).start()
        expired: list[bool] = []
        timer = None
        if timeout:

            def expire():
                expired.append(True)
                with contextlib.suppress(OSError):
                    os.killpg(p.pid, signal.SIGKILL)  # vng, virtme-run and QEMU: one session

            timer = threading.Timer(timeout, expire)
            timer.daemon = True
            timer.start()
        assert p.stdout is not None
        for raw in _lines(p.stdout):
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith(UP) and not boot:
                boot.append(time.perf_counter() - t0)
                echo(f"cowlab-vm: booted {kern.name} kernel {kern.release} ({accel()}) in {boot[0]:.1f} s")
                continue
            echo(line)
        rc = p.wait()
        if timer:
            timer.cancel()
        if expired:
            raise CowlabError(f"the VM ran over its {timeout:.0f} s and was killed")
        wall = time.perf_counter() - t0
        guest = {}
        gfile = scratch / "guest.json"
        if gfile.exists():
            guest = json.loads(gfile.read_text())
        elif rc == 0:
            rc = 1
        if guest:
            rc = guest.get("returncode", rc)
        boot_seconds = round(boot[0], 3) if boot else None
        info = {
            "boot_seconds": boot_seconds,
            "wall_seconds": round(wall, 3),
            "accel": accel(),
            "kernel_image": str(kern.image),
            "guest_kernel": guest.get("kernel"),
            "kernel": kern.describe(),
            "host_hostname": socket.gethostname(),
            "host_kernel": platform.release(),
            "memory": memory,
            "cpus": cpus or os.cpu_count(),
            "virtme_ng": _vng_version(),
            "qemu": _first_line([find_qemu() or "qemu-system-x86_64", "--version"]),
            "guest_setup_seconds": guest.get("setup_seconds"),
            "network": "none",
            "started": started,
        }
        dirs = _stamp_results(out, guest.get("run_dirs", []), info) if out else []
        for d in dirs:
            sysutil.hand_over(d)  # written by root in the guest: the sudo user's, like native runs
        return VMResult(rc, boot_seconds, wall, guest, dirs, info)
    finally:
        errs = res.close()
        for e in errs:
            echo(f"cowlab-vm: teardown: {e}")


def _module_args(kern: Kernel) -> list[str]:
    """A kernel whose modules are in the cache, not the host's /lib/modules: virtme-ng finds
    lib/modules/<release> beside the image and links it into the guest's /lib/modules, but its
    init puts a tmpfs over /var/cache, so the kernel's cache directory is shared read-only."""
    if kern.modules is None or kern.home is None:
        return []
    return ["--rodir", str(kern.home)]


def _lines(f):
    while True:
        b = f.readline()
        if not b:
            return
        yield b


def _journal_qemu(res: Resources, p: subprocess.Popen) -> None:
    """vng starts QEMU as a grandchild: journal its pid too, so a Ctrl-C ends QEMU first."""
    for _ in range(600):
        if p.poll() is not None:
            return
        for pid in tagged_processes(res.owner, res.state):
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm.startswith("qemu-system"):
                res.add("process", pid=pid, starttime=sysutil.proc_starttime(pid), grace=2.0)
                return
        time.sleep(0.5)


def _stamp_results(out: Path, run_dirs: list[str], info: dict) -> list[Path]:
    """Add the VM's facts to each run the guest wrote: run.json `vm`, and a vm_boot_seconds
    sample in workload `vm` (a separate workload: it is never part of a measurement)."""
    from cowlab.results import SCHEMA_VERSION

    done = []
    for d in map(Path, run_dirs):
        rj = d / "run.json"
        if not rj.exists():
            continue
        run = json.loads(rj.read_text())
        run["vm"] = info
        if info.get("boot_seconds") is not None:
            rec = {
                "schema_version": SCHEMA_VERSION,
                "run_id": run["run_id"],
                "driver": run.get("driver", ""),
                "mode": "primitive",
                "workload": "vm",
                "metric": "vm_boot_seconds",
                "value": info["boot_seconds"],
                "unit": "s",
                "repetition": 0,
                "params": {"accel": info["accel"], "kernel": info.get("guest_kernel") or ""},
                "status": "ok",
            }
            with open(d / "samples.jsonl", "a") as f:
                f.write(json.dumps(rec, sort_keys=True) + "\n")
            counts = run.get("counts") or {}
            counts["ok"] = counts.get("ok", 0) + 1
            run["counts"] = counts
        tmp = d / ".run.json.vm"
        tmp.write_text(json.dumps(run, indent=1, sort_keys=True, default=str) + "\n")
        os.replace(tmp, rj)
        done.append(d)
    return done


def _vng_version() -> str | None:
    v = find_vng()
    return _first_line([v, "--version"]) if v else None


def _first_line(cmd: list[str]) -> str | None:
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    t = (cp.stdout or cp.stderr).strip().splitlines()
    return t[0] if t else None


# --- the guest side ----------------------------------------------------------------------------
def guest_main(config_path: str) -> int:
    """Runs in the VM: prepare a state root on the local disk, then the cowlab command."""
    print(UP, flush=True)
    t0 = time.perf_counter()
    cfg = json.loads(Path(config_path).read_text())
    scratch = Path(cfg["scratch"])
    report: dict = {"kernel": platform.release(), "run_dirs": []}
    rc = 1
    try:
        # Debian's kernel has these as modules; cowlab checks /proc/filesystems before making a
        # loop filesystem, and nothing has loaded them yet in a fresh guest.
        for mod in ("loop", "dm-thin-pool", "ext4", "xfs", "btrfs", "overlay", "erofs", "fuse"):
            sysutil.modprobe(mod)
        disks = _guest_disks()
        if STATE_SERIAL not in disks:
            raise CowlabError(f"no disk with serial {STATE_SERIAL} in the guest (found {disks})")
        disk = Path("/run/cowlab-vm/disk")
        disk.mkdir(parents=True, exist_ok=True)
        sysutil.run(["mkfs.xfs", "-q", "-f", disks[STATE_SERIAL]])
        sysutil.mount(disks[STATE_SERIAL], disk, "xfs")
        root = disk / "root"  # below the mount: cleanup treats mounts under a state root as its own
        root.mkdir()
        # The host's image store, read-only: images are built natively before the boot.
        for sub in ("images", "layers"):
            os.symlink(cfg[sub], root / sub)
        (root / ".cowlab-root").touch()
        env = dict(
            os.environ,
            COWLAB_ROOT=str(root),
            COWLAB_VIRTUALIZATION=cfg["accel"],
            COWLAB_HYPERVISOR=f"QEMU {cfg['accel'].upper()} (virtme-ng), host {cfg['host']['hostname']}",
            PYTHONDONTWRITEBYTECODE="1",
            COWLAB_VM_ID=cfg.get("vm_id", ""),
            **{IN_VM: "1"},
        )
        if cfg.get("git_sha"):
            env["COWLAB_GIT_SHA"] = cfg["git_sha"]
        env.pop("COWLAB_OWNER", None)
        args = [_subst(a, disks) for a in (cfg.get("argv") or [])]
        report["setup_seconds"] = round(time.perf_counter() - t0, 3)
        before = _runs(cfg.get("out"))
        if cfg.get("python_argv"):
            cmd = [sys.executable, *[_subst(a, disks) for a in cfg["python_argv"]]]
        else:
            cmd = [sys.executable, "-m", "cowlab", *args]
        rc = subprocess.run(cmd, env=env).returncode
        # Only this VM's runs: the results directory is shared, and another VM or a native run
        # may start a run in it meanwhile (their run.json carry another vm_id, or none).
        report["run_dirs"] = sorted(d for d in _runs(cfg.get("out")) - before if _vm_id(d) == cfg.get("vm_id"))
    except Exception as e:  # reported to the host, which prints it
        print(f"cowlab-vm: guest setup failed: {type(e).__name__}: {e}", flush=True)
        rc = 1
    report["returncode"] = rc
    (scratch / "guest.json").write_text(json.dumps(report))
    return rc


def _guest_disks() -> dict[str, str]:
    out = {}
    for d in Path("/sys/block").glob("vd*"):
        with_serial = d / "serial"
        if with_serial.exists():
            out[with_serial.read_text().strip()] = f"/dev/{d.name}"
    return out


def _subst(a: str, disks: dict[str, str]) -> str:
    return re.sub(r"\{disk:([\w.-]+)\}", lambda m: disks.get(m.group(1), m.group(0)), a)


def _vm_id(run_dir: str) -> str | None:
    try:
        return json.loads((Path(run_dir) / "run.json").read_text()).get("vm_id")
    except (OSError, ValueError):
        return None


def _runs(out: str | None) -> set[str]:
    if not out or not os.path.isdir(out):
        return set()
    return {str(p.parent) for p in Path(out).glob("*/*/run.json")}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "guest":
        sys.exit(guest_main(sys.argv[2]))
    print("usage: python -m cowlab.storage.vm guest CONFIG.json (run by cowlab inside its VM)", file=sys.stderr)
    sys.exit(2)
