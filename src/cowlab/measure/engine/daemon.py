"""A private Docker Engine for one run: dockerd (and the containerd it starts) with every path
under cowlab's state root, journaled like any other resource.

What is ours, and how each piece is found again after a crash (`cowlab cleanup`):

- dockerd: spawned with resources.spawn (journaled by pid + start time, COWLAB_OWNER in its
  environment) and COWLAB_ENGINE=<id>. Its containerd and the containerd-shims inherit both
  variables (dockerd 20.10 starts its own containerd when not given --containerd; containerd
  starts shims with its own environment), so they are found by tag.
- containers' processes: their environment is the image's, so they are found by cgroup instead:
  dockerd runs with --cgroup-parent=/cowlab-engine-<id> (cgroupfs driver), and the
  "engine-cgroups" releaser kills what is in that subtree and removes it, in every hierarchy.
- mounts: dockerd bind-mounts its data-root onto itself and mounts layers and network
  namespaces below the data-root and exec-root; "engine-mounts" unmounts what is left there.
- files: data-root (on the backing: host, or a loop filesystem) and exec-root (short, under
  <root>/tmp, because unix socket paths are limited to 107 bytes) are journaled "dir"s.
- /run/docker/plugins and /run/containerd/s are paths dockerd 20.10 / containerd 1.6 hard-code
  (plugin discovery; shim sockets): where this run created them they are removed again if empty
  ("engine-rundirs"); they are never touched when they existed before.

Release order is the reverse of acquisition: dockerd (SIGTERM: it stops its containers and its
containerd), then any tagged straggler, then the cgroups, mounts, /run dirs and directories.
Nothing here ever talks to a system dockerd, /var/run/docker.sock or /var/lib/docker.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from cowlab.base import sysutil
from cowlab.base.errors import CowlabError
from cowlab.base.resources import RELEASERS, Handle, Resources, releaser, spawn
from cowlab.base.state import StateRoot
from cowlab.measure.engine.drivers import EngineDriver

ENGINE_ENV = "COWLAB_ENGINE"
CGROUP_PREFIX = "cowlab-engine-"
RUN_DIRS = ("/run/containerd/s", "/run/containerd", "/run/docker/plugins", "/run/docker")
SOCKET_MAX = 107  # sun_path is 108 bytes with the NUL
START_TIMEOUT = 90.0  # seconds for dockerd to answer /_ping
STOP_GRACE = 40.0  # seconds between SIGTERM and SIGKILL for dockerd
SHUTDOWN_TIMEOUT = 5  # dockerd's own wait for a container's SIGTERM before SIGKILL
PATH_EXTRA = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class EngineRefused(CowlabError):
    """dockerd would not start (a driver it refuses, a missing prerequisite): its own words."""


# --- finding what is ours -----------------------------------------------------------------
def engine_processes(engine_id: str) -> list[int]:
    """Pids whose environment carries COWLAB_ENGINE=engine_id (dockerd, containerd, shims)."""
    from cowlab.base.resources import processes_with_env

    return processes_with_env(ENGINE_ENV, engine_id)


def cgroup_dirs(name: str) -> list[Path]:
    """<hierarchy>/<name> in every mounted cgroup hierarchy (v1 controllers, v2, named)."""
    if not name.startswith(CGROUP_PREFIX) or "/" in name:
        raise CowlabError(f"{name!r} is not an engine cgroup cowlab makes; not touching it")
    out = []
    for m in sysutil.mountinfo():
        if m.fstype in ("cgroup", "cgroup2") and m.target.startswith("/sys/fs/cgroup"):
            p = Path(m.target) / name
            if p.is_dir():
                out.append(p)
    return out


def _cgroup_pids(top: Path) -> list[int]:
    pids = []
    for d, _, _ in os.walk(top):
        try:
            pids += [int(x) for x in (Path(d) / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            continue
    return pids


@releaser("engine-procs")
def _release_engine_procs(e: dict, state: StateRoot) -> None:
    """containerd and shims that outlived dockerd: SIGTERM, then SIGKILL (tagged, so ours)."""
    for pid in engine_processes(e["tag"]):
        sysutil.kill_pid(pid, sysutil.proc_starttime(pid), grace=e.get("grace", 5.0))


@releaser("engine-cgroups")
def _release_engine_cgroups(e: dict, state: StateRoot) -> None:
    """Kill whatever still runs in the engine's cgroup subtree (containers' processes; SIGKILL,
    since a container's pid 1 ignores SIGTERM), then remove the subtree, deepest first."""
    dirs = cgroup_dirs(e["name"])
    for top in dirs:
        for pid in _cgroup_pids(top):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for top in dirs:
        subs = sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda p: len(p.parts), reverse=True)
        for d in subs:
            for attempt in range(100):
                try:
                    d.rmdir()
                    break
                except OSError as err:
                    if err.errno == errno.ENOENT:
                        break
                    if err.errno != errno.EBUSY or attempt == 99:
                        raise CowlabError(f"cannot remove cgroup {d}: {err.strerror}") from None
                    time.sleep(0.05)  # killed tasks are still exiting


@releaser("engine-mounts")
def _release_engine_mounts(e: dict, state: StateRoot) -> None:
    """Unmount whatever dockerd left mounted under its data-root and exec-root."""
    for p in e["paths"]:
        if not state.inside(p):
            raise CowlabError(f"journal names {p}, outside the state root; not touching it")
        for m in sysutil.mounts_under(p):
            RELEASERS["mount"]({"target": m.target}, state)


@releaser("engine-dm")
def _release_engine_dm(e: dict, state: StateRoot) -> None:
    """The thin pool and devices dockerd's devicemapper driver left (it deactivates them on a
    clean shutdown; a killed dockerd leaves them): named docker-MAJ:MIN-INODE-* after the
    directory they belong to, which is under our state root. Then its loop devices."""
    d, home = Path(e["dir"]), e["home"]
    if not (state.inside(d) and state.inside(home)):
        raise CowlabError(f"journal names {d}, outside the state root; not touching it")
    from cowlab.storage.drivers.devicemapper import thin as dm

    if d.is_dir() and dm.has_device_mapper():
        st = os.stat(d)
        prefix = f"docker-{os.major(st.st_dev)}:{os.minor(st.st_dev)}-{st.st_ino}-"
        names = [n for n in dm.list_devices() if n.startswith(prefix)]
        for n in sorted(names, key=lambda n: n.endswith("-pool")):  # thin devices, then the pool
            for _attempt in range(50):
                if dm.try_remove(n) or not dm.exists(n):
                    break
                time.sleep(0.1)
            else:
                raise CowlabError(f"dm device {n} (dockerd's) stays busy")
    for dev, f in sysutil.loop_devices().items():
        if f.startswith(home.rstrip("/") + "/"):
            sysutil.run(["losetup", "-d", dev], check=False)


@releaser("engine-rundirs")
def _release_engine_rundirs(e: dict, state: StateRoot) -> None:
    """rmdir (only if empty) the hard-coded /run paths this run's dockerd created."""
    for p in e["paths"]:
        if p not in RUN_DIRS:
            raise CowlabError(f"journal names {p}, not a /run path dockerd creates; not touching it")
        try:
            os.rmdir(p)
        except OSError:
            pass  # not empty (a system docker uses it now) or already gone


def container_security_opts() -> list[str]:
    """`apparmor=unconfined` where the kernel has AppArmor enabled but apparmor_parser is not
    installed (Debian's kernel in cowlab's VM, on a host without the apparmor package): dockerd
    would otherwise refuse to start any container, failing to load its docker-default profile.
    Recorded in run.json (engine.container_security_opt)."""
    try:
        enabled = Path("/sys/module/apparmor/parameters/enabled").read_text().strip() == "Y"
    except OSError:
        enabled = False
    if enabled and not shutil.which("apparmor_parser", path=os.environ.get("PATH", "") + ":" + PATH_EXTRA):
        return ["apparmor=unconfined"]
    return []


def check_socket_room(state: StateRoot) -> None:
    """dockerd's and containerd's sockets live in the exec-root under <root>/tmp: refuse a state
    root whose path leaves no room for them (sun_path holds 107 bytes)."""
    longest = state.tmp / f"{'9' * 7}-engine-{'f' * 8}" / "containerd" / "containerd.sock.ttrpc"
    if len(str(longest)) > SOCKET_MAX:
        raise CowlabError(
            f"the state root {state.path} is too long for dockerd's unix sockets "
            f"({len(str(longest))} of at most {SOCKET_MAX} bytes under it); use a shorter "
            "--root for engine mode, or --mode primitive"
        )


# --- the daemon -----------------------------------------------------------------------------
class PrivateDockerd:
    """One dockerd for one driver. start() → client → stop(); every step journaled in res."""

    def __init__(
        self,
        state: StateRoot,
        res: Resources,
        driver: EngineDriver,
        data_parent: Path,
        storage_opts: list[str] | None = None,
        path_first: list[str] | None = None,
    ):
        self.state, self.res, self.driver = state, res, driver
        self.storage_opts = list(storage_opts or [])  # the run's own (a pool cowlab made)
        self.path_first = list(path_first or [])  # tools dockerd's driver runs (kernel zfs)
        self.id = uuid.uuid4().hex[:8]
        self.cgroup = f"{CGROUP_PREFIX}{self.id}"
        self.home = Path(data_parent) / f"engine-{driver.name}-{self.id}"
        self.data_root = self.home / "data"
        self.exec_root = state.tmp / f"{os.getpid()}-engine-{self.id}"
        self.socket = self.exec_root / "docker.sock"
        self.pidfile = self.exec_root / "dockerd.pid"
        self.log = self.home / "dockerd.log"
        self.config_file = self.home / "daemon.json"
        self.handles: list[Handle] = []
        self.proc: subprocess.Popen | None = None
        self._client = None
        self.argv: list[str] = []
        self.run_dirs_created: list[str] = []

    # -- starting ------------------------------------------------------------------------------
    def command(self) -> list[str]:
        dockerd = shutil.which("dockerd", path=os.environ.get("PATH", "") + ":" + PATH_EXTRA)
        if not dockerd:
            raise CowlabError("dockerd is not installed (run: bash vagrant/provision/engine.sh)")
        argv = [
            dockerd,
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "-H",
            f"unix://{self.socket}",
            "--pidfile",
            str(self.pidfile),
            "--config-file",
            str(self.config_file),
            "--storage-driver",
            self.driver.storage_driver,
            "--bridge=none",
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            "--userland-proxy=false",
            "--exec-opt",
            "native.cgroupdriver=cgroupfs",
            "--cgroup-parent",
            f"/{self.cgroup}",
            "--shutdown-timeout",
            str(SHUTDOWN_TIMEOUT),
        ]
        for o in self.driver.options() + self.storage_opts:
            argv += ["--storage-opt", o]
        return argv

    def start(self, timeout: float = START_TIMEOUT) -> None:
        check_socket_room(self.state)
        self.argv = self.command()
        res = self.res
        self.handles.append(res.acquire("dir", lambda: self.home.mkdir(parents=True), path=str(self.home)))
        self.handles.append(res.acquire("dir", lambda: self.exec_root.mkdir(parents=True), path=str(self.exec_root)))
        self.data_root.mkdir()
        self.config_file.write_text("{}\n")  # never read /etc/docker/daemon.json
        self.run_dirs_created = [p for p in RUN_DIRS if not os.path.lexists(p)]
        self.handles.append(res.add("engine-rundirs", paths=self.run_dirs_created))
        if self.driver.device_mapper:  # released after the mounts and processes below
            self.handles.append(res.add("engine-dm", dir=str(self.data_root / "devicemapper"), home=str(self.home)))
        self.handles.append(res.add("engine-mounts", paths=[str(self.home), str(self.exec_root)]))
        self.handles.append(res.add("engine-cgroups", name=self.cgroup))
        self.handles.append(res.add("engine-procs", tag=self.id))
        env = dict(os.environ)
        env[ENGINE_ENV] = self.id
        env["PATH"] = ":".join([*self.path_first, env.get("PATH", ""), PATH_EXTRA])
        for k in ("DOCKER_HOST", "DOCKER_CONFIG", "NOTIFY_SOCKET"):
            env.pop(k, None)
        with open(self.log, "ab") as logf:
            self.proc = spawn(
                res,
                self.argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        h = self.proc._cowlab_handle  # type: ignore[attr-defined]
        res.update(h, grace=STOP_GRACE, what="dockerd")
        self.handles.append(h)
        self._wait(self.proc, timeout)

    def _wait(self, proc: subprocess.Popen, timeout: float) -> None:
        import docker

        deadline = time.monotonic() + timeout
        api = None
        while True:
            if proc.poll() is not None:
                raise EngineRefused(
                    f"dockerd --storage-driver {self.driver.storage_driver} exited "
                    f"({proc.returncode}): {self.failure()}"
                )
            if self.socket.exists():
                try:
                    api = api or docker.APIClient(base_url=f"unix://{self.socket}", version="1.41", timeout=5)
                    if api.ping():
                        api.close()
                        return
                except Exception:
                    pass
            if time.monotonic() > deadline:
                raise EngineRefused(f"dockerd did not answer within {timeout:.0f} s: {self.failure()}")
            time.sleep(0.05)

    def failure(self) -> str:
        """The daemon's own reason, from the last error lines of its log."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        for key in ("failed to start daemon", "level=fatal", "level=error"):
            hits = [ln for ln in lines if key in ln]
            if hits:
                line = hits[-1]
                if 'msg="' in line:
                    line = line.split('msg="', 1)[1].rsplit('"', 1)[0]
                return line.replace('\\"', '"')
        return (lines[-1] if lines else "no output") + f" (log: {self.log})"

    @property
    def client(self):
        """A docker.DockerClient on the private socket (API version negotiated)."""
        if self._client is None:
            import docker

            self._client = docker.DockerClient(base_url=f"unix://{self.socket}", version="auto", timeout=900)
        return self._client

    # -- describing -----------------------------------------------------------------------------
    def describe(self) -> dict:
        c = self.client
        v, info = c.version(), c.info()
        status = {k: val for k, val in (info.get("DriverStatus") or [])}
        m = sysutil.mount_of(self.home)  # the backing, not dockerd's own bind mount of data-root
        return {
            "driver": info.get("Driver"),
            "requested_driver": self.driver.name,
            "driver_status": status,
            "backing_filesystem": status.get("Backing Filesystem"),
            "supports_d_type": status.get("Supports d_type"),
            "native_overlay_diff": status.get("Native Overlay Diff"),
            "data_root": str(self.data_root),
            "data_root_fs": m.fstype,
            "data_root_mount": m.target,
            "exec_root": str(self.exec_root),
            "socket": str(self.socket),
            "cgroup_parent": f"/{self.cgroup}",
            "dockerd_argv": self.argv,
            "dockerd_pid": self.proc.pid if self.proc else None,
            "server_version": v.get("Version"),
            "api_version": v.get("ApiVersion"),
            "components": {x.get("Name"): x.get("Version") for x in v.get("Components") or []},
            "cgroup_driver": info.get("CgroupDriver"),
            "cgroup_version": info.get("CgroupVersion"),
            "kernel_version": info.get("KernelVersion"),
            "security_options": info.get("SecurityOptions"),
            "default_runtime": info.get("DefaultRuntime"),
            "docker_root_dir": info.get("DockerRootDir"),
            "sdk_version": _sdk_version(),
            "container_security_opt": container_security_opts(),
            "loadavg_at_start": list(os.getloadavg()),  # other work on the machine shows up in timings
        }

    # -- stopping -------------------------------------------------------------------------------
    def stop(self, keep_log: Path | None = None) -> list[str]:
        """Remove our containers, SIGTERM dockerd by pid, then release stragglers, cgroups,
        mounts and directories. Returns what could not be released (never raises)."""
        errors: list[str] = []
        if self.proc is not None and self.proc.poll() is None and self._client is not None:
            try:
                for ctr in self._client.api.containers(all=True, quiet=True):
                    self._client.api.remove_container(ctr["Id"], force=True)
            except Exception as e:  # the releasers below still end everything
                errors.append(f"removing containers: {e}")
        if self._client is not None:
            try:
                self._client.close()
            except Exception:
                pass
            self._client = None
        if keep_log is not None and self.log.exists():
            try:
                shutil.copyfile(self.log, keep_log)
            except OSError as e:
                errors.append(f"copying dockerd log: {e}")
        for h in reversed(self.handles):
            try:
                self.res.release(h)
            except Exception as e:
                errors.append(f"{h.kind} {h.args}: {e}")
        self.handles.clear()
        left = engine_processes(self.id)
        if left:
            errors.append(f"engine processes still running: {left}")
        return errors

    def leftovers(self) -> list[str]:
        """What of this engine still exists (for tests and the end-of-run check)."""
        out = [f"process {p}" for p in engine_processes(self.id)]
        for p in (self.home, self.exec_root):
            out += [f"mount {m.target}" for m in sysutil.mounts_under(p)]
            if p.exists():
                out.append(f"directory {p}")
        out += [f"cgroup {d}" for d in cgroup_dirs(self.cgroup)]
        out += [f"directory {p}" for p in self.run_dirs_created if os.path.isdir(p) and not os.listdir(p)]
        return out


def _sdk_version() -> str | None:
    try:
        import docker

        return docker.__version__
    except ImportError:
        return None


def dockerd_version() -> str | None:
    path = shutil.which("dockerd", path=os.environ.get("PATH", "") + ":" + PATH_EXTRA)
    if not path:
        return None
    try:
        cp = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return cp.stdout.strip() or None


def availability() -> tuple[bool, str]:
    """(True, '') when engine mode can run here, else (False, why and how to fix)."""
    if not shutil.which("dockerd", path=os.environ.get("PATH", "") + ":" + PATH_EXTRA):
        return False, "dockerd is not installed (run: sudo bash vagrant/provision/engine.sh)"
    try:
        import docker  # noqa: F401
    except ImportError:
        return False, "the Docker SDK for Python is not installed (pip install -e '.[engine]')"
    return True, ""


__all__ = [
    "PrivateDockerd",
    "EngineRefused",
    "availability",
    "engine_processes",
    "cgroup_dirs",
    "dockerd_version",
    "ENGINE_ENV",
]
