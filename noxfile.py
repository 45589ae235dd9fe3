"""cowlab's sessions. `nox -l` lists them; arguments after `--` go to the command underneath.

Works with Debian 12's own nox (2022.11): `apt install nox`, then `sudo nox -s bench-overlay2`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import nox

HERE = Path(__file__).parent
# One session per backend; each is the same thin layer over `cowlab bench`.
BACKENDS = ["overlay2", "vfs", "btrfs", "zfs", "aufs", "overlay", "fuse-overlayfs", "unionfs-fuse", "erofs", "composefs",
            "devicemapper-loop", "devicemapper-direct"]

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True


def _install(session, extras: str = "test") -> None:
    session.install("-e", f".[{extras}]")


def _provision(session, backend: str) -> None:
    """Install what the backend needs (as root), or stop with the exact command to run."""
    script = HERE / "vagrant" / "provision" / f"{backend}.sh"
    check = subprocess.run(["bash", str(script), "--check"], capture_output=True, text=True)
    if check.returncode == 0:
        return
    if os.geteuid() != 0:
        session.error(f"{check.stdout.strip()}; run: sudo bash {script}")
    session.log(f"provisioning {backend}: {check.stdout.strip()}")
    session.run("bash", str(script), external=True)


def _bench(session, backend: str) -> None:
    _provision(session, backend)
    args = list(session.posargs)
    if any(a in ("--mode=engine", "--mode=both") for a in args) or \
            any(a == "--mode" and b in ("engine", "both") for a, b in zip(args, args[1:])):
        _provision(session, "engine")  # Docker Engine for engine mode (cowlab.engine)
    _install(session, "test,engine,vm")  # vm: virtme-ng, for backends this kernel lacks (cowlab.vm)
    if not any(a == "--out" or a.startswith("--out=") for a in args):
        args += ["--out", str(HERE / "results")]
    session.run("cowlab", "bench", backend, *args)


def _bench_session(backend: str):
    def session_fn(session):
        _bench(session, backend)
    session_fn.__doc__ = (f"Benchmark the {backend} backend into results/ "
                          f"(`-- --quick` for a first answer in minutes).")
    session_fn.__name__ = f"bench_{backend.replace('-', '_')}"
    return nox.session(name=f"bench-{backend}")(session_fn)


for _b in BACKENDS:
    globals()[f"bench_{_b.replace('-', '_')}"] = _bench_session(_b)


@nox.session
def tests(session):
    """The test suite (as root: it mounts filesystems). CI runs this."""
    _provision(session, "host")
    _provision(session, "devicemapper")  # the kernel VM of tests/test_devicemapper_vm.py
    _install(session, "test,notebooks,engine,vm")
    session.run("pytest", *(session.posargs or ["tests", "-q", "-rs"]))


@nox.session
def labs(session):
    """Replay every workshop lab runnable here, checking each expectation (as root; the device
    mapper lab in the kernel VM). `-- 03` replays one; `cowlab lab list` says what runs here."""
    _provision(session, "host")
    _install(session, "test,engine,vm")
    ids = [a for a in session.posargs if not a.startswith("-")]
    # What these labs need, as their front matter says, installed by the same provisioning
    # scripts as the bench sessions (so `-- 01` does not pull in QEMU or Docker).
    needed = session.run("cowlab", "lab", "scripts", *ids, silent=True) or ""
    for script in needed.split():
        _provision(session, script)
    session.run("cowlab", "lab", "run", *(session.posargs or ["--all"]))


@nox.session
def notebooks(session):
    """Execute every notebook in notebooks/ against results/ (fails on any cell error)."""
    _install(session, "notebooks")
    session.run("python", "-m", "cowlab.notebooks", "run", *(session.posargs or ["notebooks"]))


@nox.session
def lab(session):
    """Open Jupyter Lab on notebooks/ with cowlab importable (http://127.0.0.1:8888)."""
    _install(session, "notebooks")
    session.run("jupyter", "lab", "--no-browser", "--ip=127.0.0.1", "--allow-root",
                f"--notebook-dir={HERE / 'notebooks'}", *session.posargs)


@nox.session(name="vagrant-validate", venv_backend="none")
def vagrant_validate(session):
    """`vagrant validate` of every machine of vagrant/Vagrantfile (offline, seconds)."""
    _provision(session, "vagrant-host")
    session.chdir(str(HERE / "vagrant"))
    session.run("vagrant", "validate", external=True, env={"VAGRANT_CHECKPOINT_DISABLE": "1"})


@nox.session(name="vagrant-smoke", venv_backend="none")
def vagrant_smoke(session):
    """Build the local Debian 12 box, `vagrant up btrfs` under TCG in a private network namespace,
    run `nox -s bench-btrfs -- --quick` in it, check the run comes back; tear all down (as root)."""
    _provision(session, "vagrant-host")
    session.run("/usr/bin/python3", "-m", "cowlab.vagrant_smoke", *session.posargs, external=True,
                env={"PYTHONPATH": str(HERE / "src")})


@nox.session
def conformance(session):
    """The conformance suite on every driver available here (device mapper in the kernel VM):
    each driver's containers compared with a plain directory, a driver × case table, non-zero
    exit on any failure (as root).
    `-- --driver NAME` for one driver, `-- --case NAME`, `-- --every-layer`, `-- --list`."""
    _provision(session, "host")
    _install(session)
    session.run("cowlab", "conformance", *session.posargs)
