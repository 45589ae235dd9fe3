"""Engine mode: a private dockerd (overlay2, vfs) loads cowlab's images and runs containers; its
samples have mode "engine"; afterwards nothing of it is left (no dockerd, containerd or shim, no
mount, socket, cgroup or directory). Plus the parts that need no Docker: the `docker save`
archive writer and the mode default.

The Docker tests skip, naming the command that installs Docker, where docker.io is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from cowlab.base.resources import Resources, tagged_processes
from cowlab.base.state import StateRoot
from cowlab.measure.engine import drivers as ED
from cowlab.measure.engine.daemon import (
    PATH_EXTRA,
    RUN_DIRS,
    PrivateDockerd,
    availability,
    cgroup_dirs,
    engine_processes,
)
from cowlab.measure.engine.session import resolve_mode
from cowlab.run import cleanup
from cowlab.store.images import ImageStore, docker_ref
from cowlab.store.spec import from_dict

MiB = 1 << 20
PROVISION = "sudo bash vagrant/provision/engine.sh"
ENGINE_OK, ENGINE_WHY = availability()
needs_engine = pytest.mark.skipif(not ENGINE_OK, reason=f"{ENGINE_WHY}; install with: {PROVISION}")
IS_ROOT = os.geteuid() == 0


# --- helpers ----------------------------------------------------------------------------------
@pytest.fixture
def short_root(tmp_path_factory) -> Path:
    """A state root with a short path: dockerd's sockets live under it (107-byte limit)."""
    d = tmp_path_factory.mktemp("e")
    if len(str(d)) > 48:  # a long basetemp: fall back to a short directory of our own
        d = Path(tempfile.mkdtemp(prefix="cowlab-e", dir="/tmp"))
        yield d / "root"
        shutil.rmtree(d, ignore_errors=True)
        return
    yield d / "root"


def run_sockets() -> set[str]:
    """Sockets in the /run paths containerd hard-codes (shim sockets)."""
    out = set()
    for d in RUN_DIRS:
        if os.path.isdir(d):
            out |= {os.path.join(d, n) for n in os.listdir(d) if not os.path.isdir(os.path.join(d, n))}
    return out


def processes_mentioning(text: str) -> list[str]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and int(d) != os.getpid():
            out.append(f"{d}: {cmd.strip()}")
    return out


def assert_nothing_left(root: Path, engine: dict, owner: str | None = None, sockets_before=frozenset()):
    """No process, mount, socket, cgroup or directory of this engine (or of the run) is left."""
    exec_root = engine.get("exec_root") or ""
    eid = (engine.get("cgroup_parent") or "/cowlab-engine-").rsplit("-", 1)[-1]
    assert engine_processes(eid) == []
    if exec_root:
        assert processes_mentioning(exec_root) == []  # containerd and shims carry it in argv
        assert not os.path.exists(exec_root)
    if owner:
        assert tagged_processes(owner) == []
    names = " ".join(processes_mentioning("dockerd") + processes_mentioning("containerd"))
    assert str(root) not in names
    with open("/proc/self/mountinfo") as f:
        assert str(root) not in f.read()
    assert cgroup_dirs(f"cowlab-engine-{eid}") == []
    assert run_sockets() <= set(sockets_before)
    if root.exists():
        socks = [p for p in root.rglob("*") if p.is_socket()]
        assert socks == []


def tiny_spec(name="engine-tiny"):
    return from_dict(
        {
            "name": name,
            "seed": 3,
            "layers": [
                {"ops": [{"op": "file", "path": "/data/hello", "size": 4096}]},
                {"ops": [{"op": "files", "dir": "/data/more", "count": 4, "size": "16KiB"}]},
            ],
        },
        "<test>",
    )


# --- no Docker needed -------------------------------------------------------------------------
def test_docker_ref_is_a_valid_reference(store):
    img = store.build(tiny_spec("Creation-1048576B-1L"))
    ref = docker_ref(img)
    repo, tag = ref.rsplit(":", 1)
    assert repo == "cowlab/creation-1048576b-1l" and tag == img.short
    assert repo == repo.lower()


def test_save_archive_round_trips_with_the_same_layer_bytes(store, tmp_path):
    img = store.build(tiny_spec())
    arch = tmp_path / "a.tar"
    with open(arch, "wb") as f:
        image_id = store.save_archive(img, f, "cowlab/x:1", config={"Cmd": ["/bin/sh"]})
    with tarfile.open(arch) as t:
        manifest = json.load(t.extractfile("manifest.json"))
        cfg_raw = t.extractfile(manifest[0]["Config"]).read()
        cfg = json.loads(cfg_raw)
        assert manifest[0]["RepoTags"] == ["cowlab/x:1"]
        assert cfg["rootfs"]["diff_ids"] == img.layers  # sha256 of the plain layer tars
        assert cfg["config"]["Cmd"] == ["/bin/sh"]
        for name, digest in zip(manifest[0]["Layers"], img.layers, strict=True):
            assert t.extractfile(name).read() == store.layer_path(digest).read_bytes()
    import hashlib

    assert image_id == "sha256:" + hashlib.sha256(cfg_raw).hexdigest()
    back = store.import_archive(arch, "round-trip")
    assert back.layers == img.layers and back.content_bytes == img.content_bytes


def test_compose_keeps_the_parts_layers(store):
    a = store.build(tiny_spec("a"))
    b = store.build(from_dict({"name": "b", "layers": [{"ops": [{"op": "file", "path": "/x", "size": 10}]}]}))
    c = store.compose("a-on-b", [b, a])
    assert c.layers == b.layers + a.layers
    assert c.content_bytes == a.content_bytes + b.content_bytes
    assert store.compose("a-on-b", [b, a]).id == c.id


def test_mode_default(monkeypatch):
    import cowlab.measure.engine.session as S

    monkeypatch.setattr(S, "availability", lambda: (True, ""))
    assert resolve_mode(None, "overlay2", {"overlay2": object})[0] == "both"
    assert resolve_mode(None, "overlay", {"overlay2": object})[0] == "engine"
    assert resolve_mode("primitive", "overlay2", {})[0] == "primitive"
    monkeypatch.setattr(S, "availability", lambda: (False, "dockerd is not installed"))
    mode, why = resolve_mode(None, "overlay2", {"overlay2": object})
    assert mode == "primitive" and "dockerd is not installed" in why


def test_engine_releasers_refuse_foreign_paths(state):
    from cowlab.base.errors import CowlabError
    from cowlab.base.resources import RELEASERS

    with pytest.raises(CowlabError):
        RELEASERS["engine-mounts"]({"paths": ["/var/lib/docker"]}, state)
    with pytest.raises(CowlabError):
        RELEASERS["engine-rundirs"]({"paths": ["/var/run/docker.sock"]}, state)
    with pytest.raises(CowlabError):
        RELEASERS["engine-cgroups"]({"name": "docker"}, state)
    with pytest.raises(CowlabError):
        RELEASERS["engine-dm"]({"dir": "/var/lib/docker/devicemapper", "home": "/var/lib/docker"}, state)


# --- a private dockerd --------------------------------------------------------------------------


@pytest.mark.root
@needs_engine
@pytest.mark.parametrize("driver", ["overlay2", "vfs"])
def test_private_dockerd_loads_and_runs(driver, short_root):
    """Start dockerd on the driver, load a cowlab image (busybox base + layers), run a command
    in it, read its output; stop; nothing is left."""
    from cowlab.measure.engine.images import build_engine_images, load

    state = StateRoot(short_root).ensure()
    store = ImageStore(state)
    img = build_engine_images(store, {"tiny": store.build(tiny_spec())})["tiny"]
    sockets_before = run_sockets()
    res = Resources.for_run(state)
    d = PrivateDockerd(state, res, ED.get(driver), state.store)
    try:
        d.start()
        desc = d.describe()
        assert desc["driver"] == driver and desc["data_root"].startswith(str(short_root))
        assert desc["docker_root_dir"] == str(d.data_root)
        ref, seconds = load(d.client, store, img)
        assert seconds > 0
        out = d.client.containers.run(
            ref, ["sh", "-c", "cat /data/hello | wc -c; ls /data/more | wc -l"], network_mode="none", remove=True
        )
        assert out.split() == [b"4096", b"4"]
        # something running while we stop: dockerd must take it down
        c = d.client.containers.run(ref, ["sleep", "1000"], network_mode="none", detach=True)
        assert c.status in ("created", "running")
    finally:
        errs = d.stop()
        errs += res.close()
    assert errs == []
    assert d.leftovers() == []
    assert_nothing_left(short_root, desc, res.owner, sockets_before)


@pytest.mark.root
@needs_engine
@pytest.mark.parametrize("driver", ["overlay2", "vfs"])
def test_bench_session_engine_mode(driver, short_root, tmp_path):
    """BenchSession in engine mode on a one-point creation grid: engine samples, run.json's
    engine section, and nothing left afterwards."""
    from cowlab.run.runner import BenchSession

    sockets_before = run_sockets()
    s = BenchSession(
        driver,
        quick=True,
        workload_names=["creation"],
        out=tmp_path / "out",
        root=str(short_root),
        reps=1,
        mode="engine",
        grid_overrides={"creation": {"image_size_bytes": [MiB], "layers": [1]}},
    )
    s.check()
    try:
        s.prepare()
        s.run()
    finally:
        errs = s.finish("complete")
    assert errs == []
    run = json.loads((s.writer.dir / "run.json").read_text())
    assert run["mode"] == "engine" and run["engine"]["driver"] == driver
    assert run["engine"]["supports_d_type"] in ("true", None)
    eng = [r for r in s.records if r["mode"] == "engine" and r["workload"] == "creation"]
    assert {r["metric"] for r in eng} == {"create_seconds", "start_seconds", "run_seconds", "remove_seconds"}
    assert all(r["status"] == "ok" and r["value"] > 0 for r in eng), eng
    assert all(r["params"] == {"image_size_bytes": MiB, "layers": 1} for r in eng)
    loads = [r for r in s.records if r["workload"] == "import" and r["mode"] == "engine"]
    assert loads and all(r["status"] == "ok" for r in loads)
    assert not [r for r in s.records if r["mode"] == "primitive" and r["workload"] == "creation"]
    assert list((s.writer.dir / "raw").glob("dockerd-*.log"))
    assert_nothing_left(short_root, run["engine"], s.res.owner, sockets_before)


def refused_engine_run(driver: str, root: Path, tmp_path: Path):
    """An engine-mode run of one tiny creation case whose engine does not start: the session
    and its one failed engine_start_seconds sample (the teardown itself must be clean)."""
    from cowlab.run.runner import BenchSession

    s = BenchSession(
        driver,
        quick=True,
        workload_names=["creation"],
        out=tmp_path / "out",
        root=str(root),
        reps=1,
        mode="engine",
        grid_overrides={"creation": {"image_size_bytes": [MiB], "layers": [1]}},
    )
    s.check()
    try:
        s.prepare()
        s.run()
    finally:
        errs = s.finish("complete")
    assert errs == []
    bad = [r for r in s.records if r["metric"] == "engine_start_seconds"]
    assert len(bad) == 1 and bad[0]["status"] == "failed" and bad[0]["mode"] == "engine"
    return s, bad[0]


@pytest.mark.root
@needs_engine
def test_refused_driver_is_recorded(short_root, tmp_path):
    """aufs is not in this kernel: dockerd refuses, the run records dockerd's own reason."""
    s, bad = refused_engine_run("aufs", short_root, tmp_path)
    assert "aufs" in bad["error"].lower() or "driver" in bad["error"].lower()
    run = json.loads((s.writer.dir / "run.json").read_text())
    assert run["engine"]["refused"]
    assert_nothing_left(short_root, {"exec_root": ""}, s.res.owner)


@pytest.mark.root
@needs_engine
def test_zfs_engine_without_kernel_zfs_is_recorded_with_the_way_to_get_it(short_root, tmp_path):
    """Docker's zfs driver opens /dev/zfs: with zfs-fuse only (this host), cowlab says so before
    starting dockerd, and names the kernel VM route; nothing is left."""
    from cowlab.storage.drivers.zfs import driver as zfs

    if zfs.implementation() == "kernel":
        pytest.skip("this host has kernel ZFS: the refusal does not happen here")
    s, bad = refused_engine_run("zfs", short_root, tmp_path)
    assert "needs kernel ZFS" in bad["error"] and "--vm always" in bad["error"]
    run = json.loads((s.writer.dir / "run.json").read_text())
    assert run["engine"]["refused"] and run["engine"]["dockerd_argv"] is None
    assert_nothing_left(short_root, {"exec_root": ""}, s.res.owner)


def test_kernel_zfs_tools_come_before_zfs_fuses(tmp_path, monkeypatch):
    from cowlab.storage.drivers.zfs import daemon as zfs
    from cowlab.storage.drivers.zfs import driver

    sbin = tmp_path / "sbin"
    sbin.mkdir()
    for name, out in (("zfs", "zfs-2.1.11-1\nzfs-kmod-2.1.11-1"), ("zpool", "")):
        (sbin / name).write_text(f"#!/bin/sh\nprintf '{out}\\n'\n")
        (sbin / name).chmod(0o755)
    monkeypatch.setattr(zfs, "KERNEL_TOOLS", tmp_path)
    monkeypatch.setattr(zfs, "implementation", lambda: "kernel")
    assert zfs.tool("zfs") == str(sbin / "zfs") and zfs.tool("zpool") == str(sbin / "zpool")
    assert zfs.kernel_tools_ok() == ""
    (sbin / "zfs").write_text("#!/bin/sh\necho 'unrecognized command version' >&2; exit 1\n")
    assert "not zfsutils-linux's" in zfs.kernel_tools_ok()
    monkeypatch.setattr(zfs, "implementation", lambda: "fuse")  # zfs-fuse's own tools then
    assert zfs.tool("zfs") != str(sbin / "zfs")
    from cowlab.measure.engine.session import engine_only_driver

    assert engine_only_driver("zfs").option_names == driver.Zfs.option_names
    assert ED.get("zfs").pool_driver == "zfs"


CRASHER = r"""
import sys, time
from pathlib import Path
from cowlab.measure.engine import drivers as ED
from cowlab.measure.engine.daemon import PrivateDockerd
from cowlab.measure.engine.images import build_engine_images, load
from cowlab.store.images import ImageStore
from cowlab.base.resources import Resources
from cowlab.store.spec import from_dict
from cowlab.base.state import StateRoot
state = StateRoot(Path(sys.argv[1])).ensure()
store = ImageStore(state)
spec = from_dict({"name": "c", "layers": [{"ops": [{"op": "file", "path": "/x", "size": 10}]}]})
img = build_engine_images(store, {"c": store.build(spec)})["c"]
res = Resources.for_run(state)
d = PrivateDockerd(state, res, ED.get("overlay2"), state.store)
d.start()
ref, _ = load(d.client, store, img)
c = d.client.containers.run(ref, ["sleep", "1000"], network_mode="none", detach=True)
print(d.exec_root, d.cgroup, flush=True)
time.sleep(1000)
"""


@pytest.mark.root
@needs_engine
def test_cleanup_after_a_crash_ends_the_engine(short_root):
    """cowlab dies (SIGKILL) with dockerd and a running container: `cowlab cleanup` (sweep)
    finds dockerd, containerd and the shim by tag, the container by cgroup, and unmounts."""
    sockets_before = run_sockets()
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    p = subprocess.Popen([sys.executable, "-c", CRASHER, str(short_root)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = p.stdout.readline().split()
        assert len(line) == 2, "the crasher did not get its container running"
        exec_root, cg = line
        assert processes_mentioning(exec_root)  # containerd and the shim are up
        assert cgroup_dirs(cg)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
    time.sleep(0.2)
    lines = cleanup.sweep(StateRoot(short_root))
    assert any("ended process" in x for x in lines), lines
    assert_nothing_left(short_root, {"exec_root": exec_root, "cgroup_parent": "/" + cg}, sockets_before=sockets_before)


def test_engine_drivers_cover_the_issue(monkeypatch):
    assert {"overlay2", "overlay", "btrfs", "vfs", "fuse-overlayfs"} <= set(ED.ENGINE_DRIVERS)
    assert ED.get("btrfs").backing == "btrfs"
    # cowlab's devicemapper-loop is Docker's devicemapper in loop-lvm mode (no dm.thinpooldev)
    dm = ED.get("devicemapper-loop")
    assert dm.storage_driver == "devicemapper" and not any("thinpooldev" in o for o in dm.options())
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: False if p == "/run/udev/control" else real_exists(p))
    assert "dm.override_udev_sync_check=true" in dm.options()  # no udevd: a virtme guest
    assert ED.get("overlay2").options() == [] and ED.get("overlay2").storage_driver == "overlay2"
    assert shutil.which("dockerd", path=PATH_EXTRA) or not ENGINE_OK


def test_apparmor_unconfined_only_where_the_kernel_enforces_it_without_a_parser(monkeypatch):
    from cowlab.measure.engine import daemon as D

    real_read = Path.read_text

    def kernel(enabled):
        monkeypatch.setattr(
            Path,
            "read_text",
            lambda self, *a, **k: (
                enabled + "\n" if str(self) == "/sys/module/apparmor/parameters/enabled" else real_read(self, *a, **k)
            ),
        )

    kernel("Y")
    monkeypatch.setattr(D.shutil, "which", lambda name, path=None: None)
    assert D.container_security_opts() == ["apparmor=unconfined"]
    monkeypatch.setattr(D.shutil, "which", lambda name, path=None: "/sbin/apparmor_parser")
    assert D.container_security_opts() == []  # Docker loads its own docker-default profile
    kernel("N")
    monkeypatch.setattr(D.shutil, "which", lambda name, path=None: None)
    assert D.container_security_opts() == []


def test_engine_space_is_measured_on_the_pool_cowlab_made_for_dockerd(tmp_path):
    """dm.thinpooldev and zfs.fsname put dockerd's layers in a pool on another device: its space
    is the pool's, not the data-root filesystem's (which then holds only metadata)."""
    from types import SimpleNamespace

    from cowlab.measure.engine.workloads import EngineContext

    daemon = SimpleNamespace(
        client=SimpleNamespace(api=SimpleNamespace(create_host_config=lambda **kw: kw)), data_root=tmp_path
    )
    pool = SimpleNamespace(used_bytes=lambda: 12345, inodes_used=lambda: None)
    pooled = EngineContext(daemon, {}, {}, {}, True, pool)
    assert pooled.used_bytes() == 12345 and pooled.inodes_used() is None  # a pool has no inode table
    plain = EngineContext(daemon, {}, {}, {}, True)  # statfs of the data-root's fs
    assert plain.used_bytes() > 0 and plain.inodes_used() > 0
