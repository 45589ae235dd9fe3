"""cleanup.sweep: what a dead run left (SIGKILL: no finally, no atexit) is released from its
journal; live runs and persistent containers are left alone."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import SRC, mounts_under
from cowlab.base import sysutil
from cowlab.base.resources import Resources, owners
from cowlab.run import cleanup
from cowlab.store.images import ImageStore
from helpers import spec_of

PRELUDE = """
import json, sys, time
from pathlib import Path
from cowlab.base.state import StateRoot
from cowlab.store.images import ImageStore
from cowlab.base.resources import Resources, spawn
from cowlab.storage import backing
state = StateRoot(Path(sys.argv[1])).ensure()
res = Resources.for_run(state)
out = {"owner": res.owner}
"""
EPILOGUE = """
print(json.dumps(out), flush=True)
time.sleep(600)
"""


class Child:
    """A python child that acquires resources in a run-owned journal, reports them as one JSON
    line, then sleeps until the test kills it with SIGKILL."""

    def __init__(self, root: Path, body: str):
        script = PRELUDE + textwrap.dedent(body) + EPILOGUE
        env = dict(os.environ, PYTHONPATH=str(SRC))
        self.p = subprocess.Popen(
            [sys.executable, "-c", script, str(root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        line = self.p.stdout.readline()
        if not line:
            self.p.wait(timeout=30)
            raise AssertionError(f"child failed: {self.p.stderr.read()}")
        self.out = json.loads(line)

    def kill(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(timeout=30)  # reaped: its pid is really gone, not a zombie
        self.p.stdout.close()
        self.p.stderr.close()
        assert self.p.returncode == -signal.SIGKILL


def test_sweep_releases_dead_run(state):
    c = Child(
        state.path,
        """
        d = state.store / "work"
        res.acquire("dir", d.mkdir, path=str(d))
        f = state.backings / "x.img"
        res.acquire("file", lambda: f.write_bytes(b"0" * 10), path=str(f))
        out["paths"] = [str(d), str(f)]
    """,
    )
    paths = [Path(p) for p in c.out["paths"]]
    assert all(p.exists() for p in paths)
    assert cleanup.sweep(state) == []  # alive: not touched
    assert all(p.exists() for p in paths)
    c.kill()
    lines = cleanup.sweep(state)
    assert f"released 2 resource(s) of {c.out['owner']}" in lines
    assert not any(p.exists() for p in paths)
    assert owners(state) == [] and os.listdir(state.journal) == []
    assert cleanup.sweep(state) == []  # nothing left the second time


def test_sweep_leaves_live_runs_and_containers(state):
    live = Resources.for_run(state)
    d = state.store / "live"
    live.acquire("dir", d.mkdir, path=str(d))
    ctr = Resources(state, "ctr-1", "container", {"id": "1"})
    cd = state.store / "ctr"
    ctr.acquire("dir", cd.mkdir, path=str(cd))
    assert cleanup.sweep(state) == []
    assert d.is_dir() and cd.is_dir()
    assert live.close() == []
    lines = cleanup.sweep(state, everything=True)
    assert "released 1 resource(s) of ctr-1" in lines
    assert not cd.exists() and os.listdir(state.journal) == []


def test_sweep_all_spares_live_run_store(state):
    live = Resources.for_run(state)
    home = state.store / "run-live"
    live.acquire("dir", home.mkdir, path=str(home))
    (home / "image-data").write_text("in use")
    try:
        cleanup.sweep(state, everything=True)
        assert (home / "image-data").read_text() == "in use"
    finally:
        live.close()


def test_sweep_staging_of_dead_runs(state):
    p = subprocess.Popen(["true"])
    p.wait()
    dead = state.tmp / f"{p.pid}-deadbeef.tar"
    dead.write_bytes(b"half a layer")
    dead_dir = state.tmp / f"{p.pid}-cafe"
    dead_dir.mkdir()
    (dead_dir / "f").write_text("x")
    mine = state.tmp / f"{os.getpid()}-0001.tar"
    mine.write_bytes(b"in progress")
    odd = state.tmp / "no-pid-here"
    odd.write_bytes(b"?")
    cleanup.sweep(state)
    if sysutil.pid_alive(p.pid, None):  # pid reused in the meantime: nothing to assert
        pytest.skip("pid reused")
    assert not dead.exists() and not dead_dir.exists() and not odd.exists()
    assert mine.exists()


def test_sweep_owner_without_owner_json(state):
    """A run killed while writing owner.json: its entries are still released."""
    d = state.tmp / "x"
    d.mkdir()
    jd = state.journal / "run-1-1"
    jd.mkdir()
    (jd / "00000000.json").write_text(json.dumps({"kind": "dir", "path": str(d)}))
    lines = cleanup.sweep(state)
    assert not d.exists() and not jd.exists(), lines


def _set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_CHILD_SUBREAPER = 36
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0


def test_sweep_ends_orphaned_children_of_dead_run(state):
    # The orphan is re-parented to this process (a subreaper) so that ending it also reaps it.
    _set_subreaper(True)
    try:
        c = Child(
            state.path,
            """
            p = spawn(res, ["sleep", "600"])
            out["pid"] = p.pid
        """,
        )
        pid = c.out["pid"]
        start = sysutil.proc_starttime(pid)
        c.kill()
        assert sysutil.pid_alive(pid, start)  # the orphan outlived its run
        lines = cleanup.sweep(state)
        assert not sysutil.pid_alive(pid, start), lines
        assert os.listdir(state.journal) == []
    finally:
        _set_subreaper(False)


# --- with real mounts --------------------------------------------------------------------------


@pytest.mark.root
def test_sweep_after_sigkill_with_containers(state):
    store = ImageStore(state)
    store.build(
        spec_of(
            [[{"op": "file", "path": "/etc/hello", "size": 100}], [{"op": "file", "path": "/etc/two", "size": 10}]],
            name="img",
        )
    )
    c = Child(
        state.path,
        """
        from cowlab.storage.drivers.overlay2 import Overlay2
        from cowlab.storage.drivers.vfs import Vfs
        store = ImageStore(state)
        img = store.get("img")
        mps = []
        for cls in (Overlay2, Vfs):
            drv = cls(backing.host(state.store / "run"), res, store)
            drv.import_image(img)
            for _ in range(2):
                mps.append(str(drv.create(img, res).mountpoint))
        out["mountpoints"] = mps
    """,
    )
    mps = [Path(p) for p in c.out["mountpoints"]]
    assert len(mounts_under(state.path)) == 2  # two overlay containers
    assert all((p / "etc" / "hello").stat().st_size == 100 for p in mps)
    c.kill()
    assert len(mounts_under(state.path)) == 2  # SIGKILL unmounts nothing
    lines = cleanup.sweep(state)
    assert mounts_under(state.path) == [], lines
    assert not any(p.exists() for p in mps)
    for drv in ("overlay2", "vfs"):
        assert os.listdir(state.store / "run" / drv / "containers") == []
    assert os.listdir(state.journal) == []


@pytest.mark.root
def test_sweep_unmounts_strays_but_not_live_mounts(state):
    live = Resources.for_run(state)
    keep = state.store / "live"
    live.acquire("dir", keep.mkdir, path=str(keep))
    live.acquire("mount", lambda: sysutil.mount("tmpfs", keep, "tmpfs", "size=1m"), target=str(keep))
    stray = state.store / "stray"
    stray.mkdir()
    sysutil.mount("tmpfs", stray, "tmpfs", "size=1m")  # nobody journaled this one
    try:
        lines = cleanup.sweep(state)
        assert f"unmounted stray {stray}" in lines
        assert mounts_under(state.path) == [str(keep)]
    finally:
        if sysutil.is_mountpoint(stray):
            sysutil.umount(stray)
        assert live.close() == []
    assert mounts_under(state.path) == []


@pytest.mark.root
def test_sweep_after_sigkill_with_a_loop_backing(state):
    from conftest import loops_under

    store = ImageStore(state)
    store.build(spec_of([[{"op": "file", "path": "/etc/hello", "size": 100}]], name="img"))
    c = Child(
        state.path,
        """
        from cowlab.storage.drivers.overlay2 import Overlay2
        b = backing.make_loop(state.backings, res, "ext4", 64 << 20)
        drv = Overlay2(b, res, ImageStore(state))
        img = drv.store.get("img")
        drv.import_image(img)
        out["mountpoint"] = str(drv.create(img, res).mountpoint)
        out["image_file"] = b.image_file
    """,
    )
    assert Path(c.out["mountpoint"], "etc", "hello").stat().st_size == 100
    assert [f for _, f in loops_under(state.path)] == [c.out["image_file"]]
    c.kill()
    lines = cleanup.sweep(state)
    # the container is unmounted before the filesystem under it, then the loop device is detached
    assert mounts_under(state.path) == [], lines
    assert loops_under(state.path) == [], lines
    assert os.listdir(state.backings) == [] and os.listdir(state.journal) == []
