"""Several state roots on one machine (a workshop's attendees, a team's benches): each root's
cleanup ends, unmounts and destroys only what that root owns, also where the thing itself is
machine-wide (the one zfs-fuse daemon, process tags, roots made inside other roots)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import mounts_under
from cowlab.base import resources as R
from cowlab.base import sysutil
from cowlab.base.state import StateRoot
from cowlab.run import cleanup

SPEC = 'name = "demo"\n[[layers]]\nops = [{op = "file", path = "/etc/hello", size = 100}]\n'


def test_persistent_owner_names_repeat_across_roots_but_their_processes_do_not(tmp_path):
    """service-zfs, backing-btrfs... exist in every root that made one: B's cleanup --all must
    not end the process A's service-x owns, though both owners have the same name."""
    a, b = StateRoot(tmp_path / "a").ensure(), StateRoot(tmp_path / "b").ensure()
    ra = R.Resources(a, "service-x", "backing", {"driver": "x"})
    rb = R.Resources(b, "service-x", "backing", {"driver": "x"})
    child = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
    pa = R.spawn(ra, child, stdout=subprocess.PIPE, text=True)
    pb = R.spawn(rb, child, stdout=subprocess.PIPE, text=True)
    try:
        # Popen returns once exec has begun, before the kernel has laid out the new environment:
        # /proc/PID/environ reads empty for that moment. A child that has printed is past it.
        assert pa.stdout.readline() == pb.stdout.readline() == "up\n"
        assert R.tagged_processes("service-x", a) == [pa.pid]
        assert R.tagged_processes("service-x", b) == [pb.pid]
        done = cleanup.sweep(b, everything=True)
        assert pb.wait(timeout=30) is not None
        assert pa.poll() is None, done
        assert not any(str(pa.pid) in line for line in done), done
    finally:
        ra.close()
        rb.close()
        for p in (pa, pb):
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()


def test_cleanup_leaves_a_root_made_inside_it_alone(tmp_path):
    """A lab's COWLAB_ROOT sits inside the default root: the outer root's sweep of stray mounts
    must not unmount what the inner root's live journal holds."""
    outer = StateRoot(tmp_path / "outer").ensure()
    inner = StateRoot(outer.path / "labs" / "06" / "cowlab").ensure()
    mnt = inner.path / "store" / "m"
    mnt.mkdir(parents=True)
    res = R.Resources.for_run(inner)
    res.acquire("mount", lambda: sysutil.mount("tmpfs", mnt, "tmpfs"), target=str(mnt))
    try:
        done = cleanup.sweep(outer, everything=True)
        assert sysutil.is_mountpoint(mnt), done
        assert cleanup.in_nested_root(outer, str(mnt)) and not cleanup.in_nested_root(inner, str(mnt))
    finally:
        assert res.close() == []
    assert mounts_under(outer.path) == []


def _zfs_or_skip():
    from cowlab.storage.drivers import DRIVERS
    from cowlab.storage.drivers.zfs import daemon as D

    if D.implementation() != "fuse":
        pytest.skip("needs zfs-fuse (kernel ZFS has no daemon to share): sudo bash vagrant/provision/zfs.sh")
    p = DRIVERS["zfs"].probe()
    if not p.available:
        pytest.skip(f"zfs: {p.reason}")


@pytest.mark.root
def test_two_roots_share_zfs_fuse_and_keep_their_containers(cli, tmp_path):
    """Two roots, one zfs-fuse daemon: each root's containers and pool survive the other's
    `container create` and `cleanup --all`; the last root to let go stops the daemon."""
    _zfs_or_skip()
    from cowlab.storage.drivers.zfs import daemon as D
    from cowlab.storage.drivers.zfs.driver import pool_prefix

    a, b = tmp_path / "a", tmp_path / "b"
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC)
    zpool = D.tool("zpool")

    def pools() -> str:
        return subprocess.run([zpool, "list", "-H", "-o", "name"], capture_output=True, text=True).stdout

    def create(root):
        cp = cli("container", "create", "demo", "--driver", "zfs", root=root, timeout=600)
        assert cp.returncode == 0, cp.stderr
        return Path(cp.stdout.strip().splitlines()[-1]), cp.stderr

    for root in (a, b):
        assert cli("image", "build", str(spec), root=root).returncode == 0
    try:
        mnt_a, _ = create(a)
        (mnt_a / "mine").write_text("a's")
        daemon = D.recorded_daemon()
        assert daemon and daemon["root"] == str(a.resolve())
        mnt_b, err_b = create(b)  # joins A's daemon, and says so
        assert "joining its daemon" in err_b and str(a.resolve()) in err_b
        assert D.recorded_daemon()["pid"] == daemon["pid"]
        assert pool_prefix(StateRoot(a)) != pool_prefix(StateRoot(b))

        cp = cli("cleanup", "--all", root=b, timeout=600)
        assert cp.returncode == 0, cp.stderr
        assert f"ended process {daemon['pid']}" not in cp.stdout
        assert sysutil.running(daemon["pid"], daemon["starttime"]), cp.stdout
        assert (mnt_a / "mine").read_text() == "a's" and (mnt_a / "etc" / "hello").stat().st_size == 100
        assert pool_prefix(StateRoot(a)) in pools() and pool_prefix(StateRoot(b)) not in pools()
        assert not mounts_under(b)

        mnt_b, _ = create(b)  # B again, A's daemon still up; now A lets go first
        (mnt_b / "mine").write_text("b's")
        cp = cli("cleanup", "--all", root=a, timeout=600)
        assert cp.returncode == 0, cp.stderr
        assert sysutil.running(daemon["pid"], daemon["starttime"]), "B still holds the daemon A started"
        assert (mnt_b / "mine").read_text() == "b's"
        assert pool_prefix(StateRoot(a)) not in pools() and not mounts_under(a)
        ls = cli("container", "ls", root=b)
        assert mnt_b.name in ls.stdout

        cp = cli("cleanup", "--all", root=b, timeout=600)  # the last holder: the daemon goes
        assert cp.returncode == 0, cp.stderr
        assert not sysutil.running(daemon["pid"], daemon["starttime"])
        assert D.recorded_daemon() is None
    finally:
        for root in (a, b):
            cli("cleanup", "--all", root=root, timeout=600)
    assert not mounts_under(tmp_path)
