"""`nox -s vagrant-smoke`: bring one machine of vagrant/Vagrantfile up for real and bench in it.

On a machine like the CI one (no KVM that works, no network but the package registries), as root:

1. a network namespace with a unique name; libvirtd and virtlogd started inside it with their own
   pid files, and inside a private mount namespace whose /etc/libvirt, /run/libvirt,
   /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt are directories of this run: they
   never meet a system libvirt, and libvirt's bridge, its dnsmasq and its NAT rules exist only in
   the namespace (the host's `ip -br link` / `ip -br addr` are compared before and after);
2. a small Debian 12 libvirt box built by vagrant/box/build.sh (debootstrap, generic kernel, the
   project's provisioning scripts run in the image, a wheelhouse of cowlab's Python dependencies
   since the VM cannot reach PyPI), cached in build/vagrant-box/ (or $COWLAB_VAGRANT_BOX_CACHE)
   under the hash of its inputs, and
   `vagrant box add`ed under a local name into a VAGRANT_HOME of this run;
3. `vagrant up MACHINE` (default btrfs, with its second disk) with libvirt's `qemu` driver (TCG
   emulation), `vagrant ssh MACHINE -c 'cd /cowlab && sudo nox -s bench-MACHINE -- --quick'`,
   and a check that the run came back to the host through the Vagrantfile's results trigger and
   says `virtualization: tcg`;
4. `vagrant destroy -f`, the box removed, the daemons (and any QEMU or dnsmasq they left) stopped
   by their recorded pids, the namespace deleted: in a `finally`, whatever failed.

The run's results land in a scratch directory (emulated timings are not comparable with native
ones and do not belong in results/); `--keep-results DIR` copies them somewhere. Durations of
each phase are printed at the end and written to SCRATCH/timings.json (`--timings FILE` too).

    sudo python3 -m cowlab.cli.vagrant_smoke [--machine btrfs] [--rebuild-box] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
VAGRANT_DIR = REPO / "vagrant"
BUILD_SH = VAGRANT_DIR / "box" / "build.sh"
PROVISION = VAGRANT_DIR / "provision"
# The built box, by input hash. A fresh clone starts empty: point this somewhere that outlives
# clones (e.g. /var/cache/cowlab-vagrant-box in CI) to build only when the inputs change.
CACHE = Path(os.environ.get("COWLAB_VAGRANT_BOX_CACHE") or REPO / "build" / "vagrant-box")
# The machine's own script first: the box must make `<machine>.sh --check` pass offline.
BOX_SCRIPTS = {"btrfs": ["host.sh", "btrfs.sh"], "overlay2": ["host.sh", "overlay2.sh"]}
# libvirt state of this run, bind-mounted over the system paths in the daemons' mount namespace.
LIBVIRT_DIRS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}
QEMU_CONF = """
# cowlab vagrant-smoke: QEMU as root without per-VM namespaces or relabelling (a throwaway
# libvirt inside a network namespace, on a machine that has no systemd, AppArmor or SELinux).
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = [ ]
"""


def log(msg: str) -> None:
    print(f"[vagrant-smoke {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class SmokeError(Exception):
    pass


def run(
    cmd: list[str],
    *,
    check: bool = True,
    timeout: float | None = None,
    env: dict | None = None,
    capture: bool = False,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    cp = subprocess.run(
        cmd,
        env=env,
        cwd=cwd,
        timeout=timeout,
        text=True,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
    )
    if check and cp.returncode != 0:
        out = (cp.stdout or "")[-3000:] if capture else ""
        raise SmokeError(f"{' '.join(cmd[:6])}... exited {cp.returncode}\n{out}")
    return cp


def host_network() -> tuple[str, str]:
    link = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    addr = subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True).stdout
    # Link state and counters move on their own; names and addresses must not.
    names = "\n".join(sorted(line.split()[0] for line in link.splitlines() if line.strip()))
    addrs = "\n".join(
        sorted(" ".join([line.split()[0], *line.split()[2:]]) for line in addr.splitlines() if line.strip())
    )
    return names, addrs


def box_extras() -> list[str]:
    """Every optional dependency group except the notebooks (Jupyter is not needed in a VM)."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    return sorted(k for k in meta["project"].get("optional-dependencies", {}) if k != "notebooks")


def box_key(scripts: list[str], extras: list[str]) -> str:
    """Hash of what the box is made of: the build script, the provisioning scripts run in it (and
    common.sh + host.sh, which they all use), cowlab's Python dependencies (pyproject.toml, the
    extras baked in as wheels) and the build knobs."""
    h = hashlib.sha256()
    files = [BUILD_SH, PROVISION / "common.sh", PROVISION / "host.sh", *(PROVISION / s for s in scripts)]
    for p in dict.fromkeys(files):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    # Only what decides the wheelhouse, not the rest of pyproject.toml (pytest markers...).
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    deps = {
        "build": meta.get("build-system", {}).get("requires"),
        "python": meta["project"].get("requires-python"),
        "deps": meta["project"].get("dependencies"),
        "extras": {k: v for k, v in meta["project"].get("optional-dependencies", {}).items() if k in extras},
    }
    h.update(
        json.dumps(
            {
                "scripts": scripts,
                "extras": extras,
                "pyproject": deps,
                "mirror": os.environ.get("COWLAB_BOX_MIRROR", ""),
                "size": os.environ.get("COWLAB_BOX_SIZE", ""),
            }
        ).encode()
    )
    return h.hexdigest()[:16]


def nox_backends() -> list[str]:
    """noxfile.py's bench sessions: one per driver of the registry."""
    from cowlab.storage.drivers import DRIVERS

    return list(DRIVERS)


class Smoke:
    def __init__(self, args):
        self.args = args
        self.machine = args.machine
        self.scratch = Path(tempfile.mkdtemp(prefix="cowlab-vsmoke-", dir=args.tmpdir))
        self.ns = f"cowlab-vs-{os.getpid()}-{secrets.token_hex(3)}"
        self.ns_made = False
        self.pids: dict[str, int] = {}
        self.box_name: str | None = None
        self.vm_created = False
        self.timings: dict[str, float] = {}
        self.lv = {k: self.scratch / "libvirt" / k for k in LIBVIRT_DIRS}
        self.results = self.scratch / "results"
        self.socket = self.lv["run"] / "libvirt-sock"

    # --- 1. namespace and daemons ------------------------------------------------------------
    def start_libvirt(self) -> None:
        t0 = time.monotonic()
        for d in self.lv.values():
            d.mkdir(parents=True, exist_ok=True)
        shutil.copytree("/etc/libvirt", self.lv["etc"], dirs_exist_ok=True, symlinks=True)
        # No network of the distribution's config (its `default` would be autostarted).
        nets = self.lv["etc"] / "qemu" / "networks"
        if nets.exists():
            shutil.rmtree(nets)
        (nets / "autostart").mkdir(parents=True)
        with open(self.lv["etc"] / "qemu.conf", "a") as f:
            f.write(QEMU_CONF)
        run(["ip", "netns", "add", self.ns])
        self.ns_made = True
        run(["ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up"])
        mounts = "\n".join(
            f"mkdir -p {sys_path} && mount --bind {self.lv[k]} {sys_path}"
            for k, sys_path in LIBVIRT_DIRS.items()
            if k != "run"
        )
        script = f"""set -e
# /run of the host stays untouched: a tmpfs of this namespace takes its place.
mount -t tmpfs -o mode=755 cowlab-smoke-run /run
mkdir -p /run/libvirt && mount --bind {self.lv["run"]} /run/libvirt
{mounts}
virtlogd --daemon --pid-file {self.scratch}/virtlogd.pid
libvirtd --daemon --pid-file {self.scratch}/libvirtd.pid
"""
        run(["ip", "netns", "exec", self.ns, "unshare", "--mount", "--propagation", "private", "sh", "-c", script])
        for name in ("virtlogd", "libvirtd"):
            pidfile = self.scratch / f"{name}.pid"
            for _ in range(100):
                if pidfile.exists() and pidfile.read_text().strip():
                    break
                time.sleep(0.1)
            self.pids[name] = int(pidfile.read_text().strip())
        log(f"namespace {self.ns}: virtlogd {self.pids['virtlogd']}, libvirtd {self.pids['libvirtd']}")
        for _ in range(120):
            cp = subprocess.run(["virsh", "-c", self.uri, "version"], capture_output=True, text=True)
            if cp.returncode == 0:
                break
            time.sleep(0.5)
        else:
            raise SmokeError(f"libvirtd does not answer on {self.socket}: {cp.stderr.strip()}")
        self.timings["libvirt_start_s"] = round(time.monotonic() - t0, 1)

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"

    # --- 2. the box ----------------------------------------------------------------------------
    def box(self) -> Path:
        scripts = BOX_SCRIPTS.get(self.machine, ["host.sh"])
        scripts = [s for s in scripts if (PROVISION / s).exists()]
        extras = box_extras()
        key = box_key(scripts, extras)
        CACHE.mkdir(parents=True, exist_ok=True)
        box = CACHE / f"cowlab-debian12-{key}.box"
        if box.exists() and not self.args.rebuild_box:
            log(f"box: cached {box.name} (inputs unchanged)")
            self.timings["box_build_s"] = 0.0
            self.timings["box_cached"] = True
        else:
            log(f"box: building {box.name} (provisioning {' '.join(scripts)}, wheels of cowlab[{','.join(extras)}])")
            t0 = time.monotonic()
            env = dict(
                os.environ,
                COWLAB_BOX_PROVISION=" ".join(scripts),
                COWLAB_BOX_EXTRAS=",".join(extras),
                TMPDIR=str(self.scratch),
            )
            with open(self.scratch / "box-build.log", "w") as f:
                cp = subprocess.run(
                    ["bash", str(BUILD_SH), str(box)],
                    env=env,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    timeout=self.args.timeout,
                )
            if cp.returncode != 0:
                raise SmokeError("box build failed:\n" + (self.scratch / "box-build.log").read_text()[-4000:])
            self.timings["box_build_s"] = round(time.monotonic() - t0, 1)
            self.timings["box_cached"] = False
            for old in CACHE.glob("cowlab-debian12-*.box"):
                if old != box:
                    old.unlink()
        self.timings["box_bytes"] = box.stat().st_size
        return box

    def vagrant_env(self) -> dict:
        return dict(
            os.environ,
            VAGRANT_HOME=str(self.scratch / "vagrant.d"),
            VAGRANT_DOTFILE_PATH=str(self.scratch / "dot-vagrant"),
            VAGRANT_CWD=str(VAGRANT_DIR),
            VAGRANT_CHECKPOINT_DISABLE="1",
            VAGRANT_BOX_UPDATE_CHECK_DISABLE="1",
            VAGRANT_DEFAULT_PROVIDER="libvirt",
            LIBVIRT_DEFAULT_URI=self.uri,
            COWLAB_VAGRANT_BOX_DEBIAN=self.box_name or "",
            COWLAB_VAGRANT_LIBVIRT_DRIVER="qemu",
            COWLAB_VAGRANT_RESULTS=str(self.results),
            COWLAB_VAGRANT_CONSOLE_DIR=str(self.scratch / "console"),
            COWLAB_VAGRANT_DISK_GB=str(self.args.disk_gb),
            COWLAB_VAGRANT_MEMORY=str(self.args.memory),
            COWLAB_VAGRANT_CPUS=str(self.args.cpus),
        )

    def vagrant(
        self, *argv: str, timeout: float | None = None, check: bool = True, capture: bool = False
    ) -> subprocess.CompletedProcess:
        """vagrant inside the namespace: the VM's address is only reachable from there."""
        return run(
            ["ip", "netns", "exec", self.ns, "vagrant", *argv],
            env=self.vagrant_env(),
            timeout=timeout or self.args.timeout,
            check=check,
            capture=capture,
        )

    # --- 3. up, bench, check -------------------------------------------------------------------
    def session_for(self) -> list[str]:
        extra = [a for w in self.args.workloads for a in ("--workload", w)]
        if self.machine in nox_backends():
            return [f"bench-{self.machine}", "--quick", *extra]
        log(f"no bench-{self.machine} session in noxfile.py: bench-overlay2 with --backing btrfs instead")
        return ["bench-overlay2", "--quick", "--backing", "btrfs", *extra]

    def up_and_bench(self) -> dict:
        (self.scratch / "console").mkdir(exist_ok=True)
        self.results.mkdir(exist_ok=True)
        t0 = time.monotonic()
        self.vm_created = True
        self.vagrant("up", self.machine, "--provider=libvirt", "--no-provision")
        self.timings["boot_s"] = round(time.monotonic() - t0, 1)
        self.check_host_network("after boot")
        t0 = time.monotonic()
        self.vagrant("provision", self.machine)
        self.timings["provision_s"] = round(time.monotonic() - t0, 1)
        probe = self.vagrant(
            "ssh",
            self.machine,
            "-c",
            "systemd-detect-virt; grep -m1 'model name' /proc/cpuinfo; uname -r; "
            "echo COWLAB_ROOT=$COWLAB_ROOT; findmnt -no SOURCE,FSTYPE -T ${COWLAB_ROOT:-/var/lib/cowlab}",
            capture=True,
            check=False,
        )
        self.guest_probe = "\n".join(
            line for line in (probe.stdout or "").splitlines() if line.strip() and not line.startswith("==>")
        ).strip()
        log("guest says:\n" + self.guest_probe)
        session = self.session_for()
        cmd = f"cd /cowlab && sudo nox -s {session[0]} -- {' '.join(session[1:])}"
        log(f"bench: vagrant ssh {self.machine} -c '{cmd}'")
        t0 = time.monotonic()
        self.vagrant("ssh", self.machine, "-c", cmd)
        self.timings["bench_s"] = round(time.monotonic() - t0, 1)
        return self.check_results()

    def check_results(self) -> dict:
        # results/local/<host>/<run> (the bench's default --out), or <host>/<run> from an older cowlab
        runs = sorted(self.results.rglob("run.json"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise SmokeError(f"no run came back to {self.results} (the Vagrantfile's results trigger)")
        run_json = runs[-1]
        meta = json.loads(run_json.read_text())
        prov = meta.get("provenance", meta)
        virt = prov.get("virtualization")
        log(f"run {run_json.relative_to(self.results)}: backing={prov.get('backing')!r}")
        log(
            f"run {run_json.relative_to(self.results)}: virtualization={virt!r}, "
            f"cpu={prov.get('cpu_model')!r}, hypervisor={prov.get('hypervisor')!r}, status={meta.get('status')!r}"
        )
        if virt != "tcg":
            raise SmokeError(f"{run_json} says virtualization={virt!r}, expected 'tcg'")
        if self.args.keep_results:
            dest = Path(self.args.keep_results)
            shutil.copytree(self.results, dest, dirs_exist_ok=True)
            log(f"results copied to {dest}")
        return {
            "run": str(run_json.relative_to(self.results)),
            "virtualization": virt,
            "cpu_model": prov.get("cpu_model"),
            "status": meta.get("status"),
        }

    def check_host_network(self, when: str) -> None:
        now = host_network()
        if now != self.net_before:
            raise SmokeError(f"the host's network changed {when}:\nbefore:\n{self.net_before}\nnow:\n{now}")

    # --- 4. teardown ---------------------------------------------------------------------------
    def _alive(self, pid: int, expect: str) -> bool:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return False
        return expect in cmdline

    def _stop(self, pid: int, expect: str, what: str) -> None:
        """SIGTERM a process this run started (checked by its command line), SIGKILL if it stays."""
        if not self._alive(pid, expect):
            return
        os.kill(pid, signal.SIGTERM)
        for _ in range(150):
            if not self._alive(pid, expect):
                return
            time.sleep(0.1)
        log(f"{what} {pid} ignored SIGTERM: SIGKILL")
        os.kill(pid, signal.SIGKILL)

    def teardown(self) -> None:
        if self.vm_created:
            try:
                self.vagrant("destroy", "-f", self.machine, timeout=900, check=False)
            except Exception as e:  # noqa: BLE001 - teardown goes on
                log(f"vagrant destroy: {e}")
        if self.box_name:
            try:
                run(
                    ["vagrant", "box", "remove", "--force", "--all", self.box_name],
                    env=self.vagrant_env(),
                    check=False,
                    timeout=300,
                )
            except Exception as e:  # noqa: BLE001
                log(f"vagrant box remove: {e}")
        # QEMU and dnsmasq that libvirtd started, by the pid files it wrote in this run's /run/libvirt.
        for sub, expect in (("qemu", "qemu-system"), ("network", "dnsmasq")):
            for pf in (self.lv["run"] / sub).glob("*.pid"):
                try:
                    self._stop(int(pf.read_text().strip()), expect, sub)
                except (OSError, ValueError):
                    pass
        for name in ("libvirtd", "virtlogd"):
            if name in self.pids:
                self._stop(self.pids[name], name, name)
        if self.ns_made:
            # Whatever still lives in this run's namespace was started by this run.
            left = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True, text=True).stdout.split()
            for p in left:
                log(f"ending leftover {p} in {self.ns}")
                self._stop(int(p), "", "leftover")
            run(["ip", "netns", "del", self.ns], check=False)
        if not self.args.keep:
            shutil.rmtree(self.scratch, ignore_errors=True)

    # --- all -----------------------------------------------------------------------------------
    def main(self) -> int:
        t_all = time.monotonic()
        self.net_before = host_network()
        ok = False
        summary: dict = {}
        try:
            self.start_libvirt()
            box = self.box()
            self.box_name = f"cowlab-smoke/debian12-{box.stem.rsplit('-', 1)[-1]}-{os.getpid()}"
            t0 = time.monotonic()
            run(
                ["vagrant", "box", "add", "--force", "--name", self.box_name, str(box)],
                env=self.vagrant_env(),
                capture=True,
            )
            self.timings["box_add_s"] = round(time.monotonic() - t0, 1)
            summary = self.up_and_bench()
            ok = True
        except (SmokeError, subprocess.TimeoutExpired) as e:
            log(f"FAILED: {e}")
            console = self.scratch / "console" / f"{self.machine}.log"
            if console.exists():
                log(
                    "last lines of the VM's console:\n"
                    + "\n".join(console.read_text(errors="replace").splitlines()[-40:])
                )
        finally:
            t0 = time.monotonic()
            self.teardown()
            self.timings["teardown_s"] = round(time.monotonic() - t0, 1)
        after = host_network()
        if after != self.net_before:
            log(f"FAILED: the host's network differs after the run:\nbefore:\n{self.net_before}\nafter:\n{after}")
            ok = False
        self.timings["total_s"] = round(time.monotonic() - t_all, 1)
        report = {
            "ok": ok,
            "machine": self.machine,
            "timings": self.timings,
            **summary,
            "guest": getattr(self, "guest_probe", None),
        }
        text = json.dumps(report, indent=2)
        if self.args.timings:
            Path(self.args.timings).write_text(text + "\n")
        if self.args.keep:
            (self.scratch / "timings.json").write_text(text + "\n")
            log(f"kept {self.scratch}")
        print(text)
        log("PASSED" if ok else "FAILED")
        return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cowlab.cli.vagrant_smoke", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--machine",
        default="btrfs",
        choices=["btrfs", "overlay2"],
        help="a Debian 12 machine of the Vagrantfile (default btrfs: its second disk too)",
    )
    ap.add_argument(
        "--workload",
        dest="workloads",
        action="append",
        default=[],
        metavar="NAME",
        help="bench only this workload (repeatable; default: the whole --quick grid)",
    )
    ap.add_argument("--rebuild-box", action="store_true", help="ignore the cached box")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, console)")
    ap.add_argument("--keep-results", metavar="DIR", help="copy the VM's results here")
    ap.add_argument("--timings", metavar="FILE", help="write the report (JSON) here")
    ap.add_argument("--tmpdir", default="/tmp", help="where the scratch directory goes")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds for any one step")
    ap.add_argument("--memory", type=int, default=2048, help="VM memory, MiB")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--disk-gb", type=int, default=16, help="the second disk (sparse)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("vagrant-smoke: run as root (network namespace, libvirtd)", file=sys.stderr)
        return 2
    check = subprocess.run(["bash", str(PROVISION / "vagrant-host.sh"), "--check"], capture_output=True, text=True)
    if check.returncode != 0:
        print(f"vagrant-smoke: {check.stdout.strip()}; run: sudo bash {PROVISION / 'vagrant-host.sh'}", file=sys.stderr)
        return 2
    return Smoke(args).main()


if __name__ == "__main__":
    sys.exit(main())
