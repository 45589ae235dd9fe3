"""The resource journal: written before the resource exists, released in reverse, by the same
code for a normal teardown and for a sweep after a crash."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from cowlab.base import resources, sysutil
from cowlab.base.errors import CowlabError
from cowlab.base.resources import RELEASERS, Resources


def entries(res: Resources) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(res.dir.glob("[0-9]*.json"))]


def test_owner_and_entries_are_journaled(state):
    res = Resources.for_run(state, purpose="test")
    info = json.loads((res.dir / "owner.json").read_text())
    assert info["kind"] == "run" and info["pid"] == os.getpid()
    assert info["starttime"] == sysutil.proc_starttime(os.getpid())
    assert info["meta"] == {"purpose": "test"}
    d = state.tmp / "thing"
    seen = []

    def create():
        seen.append(entries(res))  # the journal entry exists before the resource does
        d.mkdir()

    res.acquire("dir", create, path=str(d))
    assert seen == [[{"kind": "dir", "path": str(d)}]]
    assert d.is_dir()
    assert res.close() == []
    assert not d.exists() and not res.dir.exists()


def test_failed_creation_is_released(state):
    res = Resources.for_run(state)
    d = state.tmp / "half"

    def create():
        d.mkdir()
        (d / "part").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        res.acquire("dir", create, path=str(d))
    assert not d.exists()
    assert entries(res) == []
    res.close()


def test_reverse_order_and_errors_do_not_stop_teardown(state, monkeypatch):
    order = []

    def rel(e, st):
        order.append(e["n"])
        if e.get("fail"):
            raise OSError("stuck")

    monkeypatch.setitem(RELEASERS, "test-order", rel)
    res = Resources.for_run(state)
    for n in range(4):
        res.add("test-order", n=n, fail=(n == 2))
    errs = res.close()
    assert order == [3, 2, 1, 0]
    assert len(errs) == 1 and "stuck" in errs[0]
    assert [e["n"] for e in entries(res)] == [2]  # what could not be released stays journaled
    assert res.dir.is_dir()


def test_context_manager_raises_on_leftovers(state, monkeypatch):
    monkeypatch.setitem(RELEASERS, "test-stuck", lambda e, st: (_ for _ in ()).throw(OSError("busy")))
    with pytest.raises(CowlabError, match="teardown left resources behind"):
        with Resources.for_run(state) as res:
            res.add("test-stuck")


def test_unknown_kind(state):
    res = Resources.for_run(state)
    with pytest.raises(KeyError):
        res.add("teleporter")
    res.close()


def test_reopen_and_release(state):
    res = Resources(state, "ctr-abc", "container", {"id": "abc"})
    d1, d2 = state.tmp / "1", state.tmp / "2"
    res.acquire("dir", d1.mkdir, path=str(d1))
    res.acquire("dir", d2.mkdir, path=str(d2))
    again = Resources.open(state, "ctr-abc")
    assert again.kind == "container" and again.meta == {"id": "abc"}
    assert [h.args["path"] for h in again._live] == [str(d1), str(d2)]
    h = again.add("dir", path=str(state.tmp / "3"))
    assert h.seq == 2  # numbering continues after the reopened entries
    assert again.close() == []
    assert not d1.exists() and not d2.exists() and not again.dir.exists()


def test_releasers_refuse_paths_outside_the_root(state, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "f").write_text("keep")
    res = Resources.for_run(state)
    res.add("dir", path=str(victim))
    res.add("file", path=str(victim / "f"))
    errs = res.close()
    assert len(errs) == 2 and all("outside" in e for e in errs)
    assert (victim / "f").read_text() == "keep"


def test_release_is_idempotent(state):
    res = Resources.for_run(state)
    d = state.tmp / "d"
    h = res.acquire("dir", d.mkdir, path=str(d))
    os.rmdir(d)  # already gone: release must not fail
    res.release(h)
    res.add("mount", target=str(state.tmp / "never-mounted"))
    res.add("loop", file=str(state.tmp / "no.img"))
    assert res.close() == []


def test_spawn_is_journaled_and_ended(state):
    res = Resources.for_run(state)
    p = resources.spawn(res, ["sleep", "600"])
    e = [x for x in entries(res) if x["kind"] == "process"]
    assert e == [{"kind": "process", "pid": p.pid, "starttime": sysutil.proc_starttime(p.pid), "tag": res.owner}]
    # the tag is in the child's environment once it has exec'd (Popen may return before that)
    deadline = time.monotonic() + 30
    while p.pid not in resources.tagged_processes(res.owner) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert p.pid in resources.tagged_processes(res.owner)
    assert res.close() == []
    assert not sysutil.pid_alive(p.pid, e[0]["starttime"])
    p.wait(timeout=5)


def test_run_tool(state):
    res = Resources.for_run(state)
    cp = resources.run_tool(res, [sys.executable, "-c", "import os; print(os.environ['COWLAB_OWNER'])"])
    assert cp.returncode == 0 and cp.stdout.strip() == res.owner
    assert entries(res) == []
    res.close()


def test_owners_order(state):
    Resources(state, "b-backing", "backing")
    Resources(state, "c-ctr", "container")
    run = Resources.for_run(state)
    kinds = [o["kind"] for o in resources.owners(state)]
    assert kinds == ["run", "container", "backing"]
    assert resources.owner_alive({"kind": "run", "pid": os.getpid(), "starttime": sysutil.proc_starttime(os.getpid())})
    assert not resources.owner_alive({"kind": "run", "pid": os.getpid(), "starttime": 1})  # pid reused
    assert resources.owner_alive({"kind": "container"})
    run.close()


# A process whose main thread has ended while another thread still runs: its /proc stat shows
# the leader as a zombie, but it cannot be reaped yet. (A multithreaded FUSE daemon passes
# through this state as it exits; CI once saw kill_pid return there and leave it running.)
_LEADER_GONE_THREAD_ON = r"""
import ctypes, os, signal, threading, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
def late():
    time.sleep(1.0)
    os._exit(0)
threading.Thread(target=late).start()
ctypes.CDLL(None).pthread_exit(None)
"""


def _stat(pid: int) -> list[str]:
    s = open(f"/proc/{pid}/stat").read()
    return s[s.rindex(")") + 2 :].split()


def test_kill_pid_waits_for_a_zombie_leader_whose_threads_still_run():
    import subprocess

    p = subprocess.Popen([sys.executable, "-c", _LEADER_GONE_THREAD_ON])
    st = sysutil.proc_starttime(p.pid)
    deadline = time.monotonic() + 10
    while _stat(p.pid)[0] != "Z":
        assert time.monotonic() < deadline, "the main thread never ended"
        time.sleep(0.01)
    assert int(_stat(p.pid)[17]) > 1  # the other thread still runs
    assert sysutil.running(p.pid, st)
    t0 = time.monotonic()
    sysutil.kill_pid(p.pid, st, grace=60.0)
    # SIGTERM is ignored: the process ends when its thread does (~1 s), and is reaped, well
    # before the grace would send SIGKILL (the old code returned at once, leaving it running)
    assert 0.3 < time.monotonic() - t0 < 50.0
    assert not sysutil.pid_alive(p.pid, None)
    p.returncode = 0


def test_kill_pid_reaps_a_dead_zombie_child_at_once():
    import subprocess

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    st = sysutil.proc_starttime(p.pid)
    while _stat(p.pid)[0] != "Z":
        time.sleep(0.01)
    assert not sysutil.running(p.pid, st)
    t0 = time.monotonic()
    sysutil.kill_pid(p.pid, st, grace=60.0)
    assert time.monotonic() - t0 < 50.0  # reaped, not waited out to SIGKILL
    assert not sysutil.pid_alive(p.pid, None)
    p.returncode = 0


def test_dm_holders_topmost_first(tmp_path):
    """A thin volume on a pool on a loop device: the workspace releaser removes the volume
    before the pool, then detaches the loop device (sysfs faked: no device mapper needed)."""
    from cowlab.base.resources import dm_holders

    def dev(name, dm_name=None, holders=()):
        d = tmp_path / name
        (d / "holders").mkdir(parents=True)
        if dm_name:
            (d / "dm").mkdir()
            (d / "dm" / "name").write_text(dm_name + "\n")
        for h in holders:
            (d / "holders" / h).symlink_to(tmp_path / h)

    dev("dm-2", "lab09-ctr")
    dev("dm-1", "lab09-image")
    dev("dm-0", "lab09-pool", holders=["dm-1", "dm-2"])
    dev("loop3", holders=["dm-0"])
    dev("loop4", holders=["dm-0"])
    dev("loop5")
    assert dm_holders("/dev/loop3", str(tmp_path)) == ["lab09-image", "lab09-ctr", "lab09-pool"]
    assert dm_holders("/dev/loop5", str(tmp_path)) == []
    assert dm_holders("/dev/loop9", str(tmp_path)) == []


def test_a_lazy_release_keeps_its_entry_until_flushed_and_replaying_it_is_harmless(state):
    """Bench removals unlink their journal entries between samples (release(lazy=True)): until
    then the entry stays, and a cleanup that replays it (after a kill) finds nothing to do."""
    from cowlab.base.resources import RELEASERS, Resources

    res = Resources.for_run(state)
    d = state.tmp / "lazy-dir"
    h = res.acquire("dir", lambda: d.mkdir(), path=str(d))
    entry = h.path
    res.release(h, lazy=True)
    assert not d.exists() and entry.exists(), "released now, its entry unlinked later"
    RELEASERS["dir"](dict(h.args), state)  # what `cowlab cleanup` would do after a kill: nothing
    res.forget_spent()
    assert not entry.exists()
    h2 = res.acquire("dir", lambda: d.mkdir(), path=str(d))
    res.release(h2, lazy=True)
    assert res.close() == [] and not h2.path.exists() and not res.dir.exists()
