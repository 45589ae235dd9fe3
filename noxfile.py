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
BACKENDS = ["overlay2", "vfs"]

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
    _install(session)
    args = list(session.posargs)
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
    _install(session, "test,notebooks")
    session.run("pytest", *(session.posargs or ["tests", "-q", "-rs"]))


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
