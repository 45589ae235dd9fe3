"""Shared fixtures for cowlab's test suite.

Every test gets a fresh state root under pytest's tmp_path (never /var/lib/cowlab), and after
every test an autouse guard checks that nothing was left behind under pytest's temporary tree:
no mount, no loop device, no child process. If something was left, the guard removes it (so the
next tests are not poisoned) and fails the test that leaked it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cowlab.base.state import StateRoot

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
IS_ROOT = os.geteuid() == 0

try:  # hypothesis: the autouse guard below is function scoped but only looks at the system
    from hypothesis import HealthCheck, settings

    settings.register_profile("cowlab", suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
    settings.load_profile("cowlab")
except ImportError:  # pragma: no cover
    pass


def pytest_collection_modifyitems(config, items):
    if IS_ROOT:
        return
    skip = pytest.mark.skip(
        reason="needs root: mounts overlayfs, creates whiteout device nodes and "
        "trusted.* xattrs (run the suite as root, as CI does)"
    )
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


# --- the leak guard ------------------------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MNT_DETACH = 2


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mounts_under(path: str | os.PathLike) -> list[str]:
    """Mount targets at or under path according to /proc/self/mountinfo, deepest first."""
    p = os.fspath(path).rstrip("/")
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = _unescape(line.split()[4])
            if target == p or target.startswith(p + "/"):
                out.append(target)
    return sorted(out, key=lambda t: t.count("/"), reverse=True)


def loops_under(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(device, backing file) for every loop device `losetup -a` lists with a file under path."""
    p = os.fspath(path).rstrip("/") + "/"
    try:
        cp = subprocess.run(["losetup", "-a"], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return []
    out = []
    for line in cp.stdout.splitlines():
        dev, _, rest = line.partition(":")
        if "(" in rest and rest.rstrip().endswith(")"):
            f = rest[rest.index("(") + 1 : rest.rstrip().rindex(")")]
        else:
            f = rest
        if p in f:
            out.append((dev, f))
    return out


def child_pids() -> list[int]:
    """Live (non-zombie) children of this process."""
    me = os.getpid()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rindex(")") + 2 :].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == me and state != "Z":
            out.append(int(d))
    return out


def _reap_zombies() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


@pytest.fixture(autouse=True)
def no_leftovers(request, tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    before_children = set(child_pids())
    yield
    problems = []
    mounts = mounts_under(base)
    for target in mounts:
        _libc.umount2(os.fsencode(target), MNT_DETACH)
    if mounts:
        problems.append(f"left mounted: {mounts}")
    loops = loops_under(base)
    for dev, _ in loops:
        subprocess.run(["losetup", "-d", dev], capture_output=True)
    if loops:
        problems.append(f"left loop devices: {loops}")
    kids = [p for p in child_pids() if p not in before_children]
    for pid in kids:  # only processes this test started (our own children), by pid
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if kids:
        time.sleep(0.05)
        problems.append(f"left child processes: {kids}")
    _reap_zombies()
    if problems:
        pytest.fail(f"{request.node.nodeid} leaked: " + "; ".join(problems), pytrace=False)


# --- common fixtures -----------------------------------------------------------------------


@pytest.fixture
def root_dir(tmp_path) -> Path:
    """A fresh path for a state root (not created)."""
    return tmp_path / "root"


@pytest.fixture
def state(root_dir) -> StateRoot:
    return StateRoot(root_dir).ensure()


@pytest.fixture
def store(state):
    from cowlab.store.images import ImageStore

    return ImageStore(state)


def run_cli(
    *args: str,
    root: os.PathLike | str | None = None,
    env: dict | None = None,
    timeout: float = 300,
    cwd: str | os.PathLike | None = None,
    prefix: list[str] | None = None,
) -> subprocess.CompletedProcess:
    """`python3 -m cowlab [--root ROOT] ARGS...` in a subprocess, output captured as text."""
    e = {k: v for k, v in os.environ.items() if k not in ("COWLAB_ROOT", "COLUMNS", "COWLAB_DEBUG")}
    e["PYTHONPATH"] = str(SRC) + os.pathsep + e.get("PYTHONPATH", "")
    if env:
        e.update(env)
    argv = list(prefix or []) + [sys.executable, "-m", "cowlab"]
    if root is not None:
        argv += ["--root", str(root)]
    argv += list(args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=e, cwd=cwd or os.getcwd())


@pytest.fixture
def cli():
    return run_cli
