"""The native backends of issue 4 (btrfs, zfs, legacy overlay, aufs, fuse-overlayfs,
unionfs-fuse) and the two they are compared with (overlay2, vfs).

One set of layer-semantics checks, written once and run on every registered driver: the
lowest layer's files are visible, a higher layer overrides, deleted files and directories are
hidden, opaque dirs hide lower content, a type change (dir → file → dir) hides what was below,
writes land in the container only and never reach the image, and removal leaves nothing
mounted or running. A driver that cannot run here is skipped with its probe's reason.

Provision first: `bash vagrant/provision/<driver>.sh` for each (btrfs-progs, zfs-fuse,
fuse-overlayfs, unionfs-fuse).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import mounts_under
from cowlab.base import sysutil
from cowlab.base.errors import CowlabError
from cowlab.base.resources import Resources
from cowlab.storage import autobacking
from cowlab.storage import backing as B
from cowlab.storage.drivers import DRIVERS
from cowlab.storage.drivers import _util as U
from cowlab.storage.drivers.unionfs_fuse import HIDETAG, meta_name, translate
from helpers import spec_of, tree_fingerprint

pytestmark = pytest.mark.root

LOOP_SIZE = 2 << 30  # sparse; what a driver that needs its own filesystem gets

LAYERS = [
    [
        {"op": "file", "path": "/etc/base", "size": 1000},
        {"op": "file", "path": "/etc/over", "size": 10},
        {"op": "files", "dir": "/opq", "count": 3, "size": 100},
        {"op": "files", "dir": "/gone/sub", "count": 2, "size": 10},
        {"op": "files", "dir": "/swap", "count": 2, "size": 10},
        {"op": "file", "path": "/data/big", "size": "16KiB"},
        {"op": "symlink", "path": "/lib64", "target": "lib"},
        {"op": "file", "path": "/bin/tool", "size": 50, "mode": 0o755},
        {"op": "hardlink", "path": "/bin/tool-link", "target": "/bin/tool"},
        {"op": "files", "dir": "/re", "count": 2, "size": 5},
    ],
    [
        {"op": "file", "path": "/etc/del", "size": 5},
        {"op": "dir", "path": "/tmp", "mode": 0o1777},
        {"op": "delete", "path": "/swap"},
        {"op": "file", "path": "/swap", "size": 3},  # a dir becomes a file...
    ],
    [
        {"op": "file", "path": "/etc/over", "size": 20},
        {"op": "delete", "path": "/etc/del"},
        {"op": "opaque", "path": "/opq"},
        {"op": "file", "path": "/opq/new", "size": 7},
        {"op": "delete", "path": "/gone"},
        {"op": "delete", "path": "/swap"},
        {"op": "file", "path": "/swap/again", "size": 4},  # ...and a dir again
        {"op": "delete", "path": "/re"},  # deleted and made anew in one layer
        {"op": "dir", "path": "/re"},
        {"op": "file", "path": "/re/b", "size": 3},
    ],
]


def member(store, digest: str, name: str) -> bytes:
    with tarfile.open(store.layer_path(digest)) as t:
        return t.extractfile(name).read()


def _skip_unless_available(name: str):
    cls = DRIVERS[name]
    p = cls.probe()
    if not p.available:
        pytest.skip(f"{name}: {p.reason}" + (f" (to get it: {p.hint})" if p.hint else ""))
    return cls


@pytest.fixture
def make_driver(state, store):
    """make_driver(name) → (driver, res): the driver on the backing it needs (a loop btrfs for
    btrfs when the state root is not on btrfs), everything journaled in res, which the fixture
    closes and checks."""
    made = []

    def make(name: str, backing: str = "host", **options):
        cls = _skip_unless_available(name)
        res = Resources.for_run(state)
        made.append(res)
        kind = autobacking.kind_for(cls, backing, state.path)
        b = B.host(state.store / name) if kind == "host" else B.make_loop(state.backings, res, kind, LOOP_SIZE)
        return cls(b, res, store, options=options), res

    yield make
    for res in reversed(made):
        assert res.close() == []
    assert mounts_under(state.path) == []


def _view(root) -> dict:
    """tree_fingerprint without directory sizes and mtimes (they change with every entry a
    layer adds, and a snapshot's root gets its own: no two correct drivers agree on them)."""
    out = {}
    for rel, fp in tree_fingerprint(root).items():
        if stat.S_ISDIR(fp[0]):
            fp = fp[:3] + (0, 0) + fp[5:]
        out[rel] = fp
    return out


def _daemon_pids(c) -> list[int]:
    return [h.args["pid"] for h in c.handles if h.kind == "process" and h.args.get("pid")]


# ------------------------------------------------------------------------------------------
# The layer-semantics checks, once, for every driver
# ------------------------------------------------------------------------------------------


def check_layer_semantics(drv, res, store) -> None:
    img = store.build(spec_of(LAYERS, name="semantics"))
    drv.import_image(img)
    assert drv.has_image(img)
    drv.import_image(img)  # idempotent
    c = drv.create(img, res)
    mp = c.mountpoint
    # the lowest layer's files are visible, with the layer's bytes
    assert (mp / "etc" / "base").read_bytes() == member(store, img.layers[0], "etc/base")
    assert stat.S_IMODE((mp / "bin" / "tool").stat().st_mode) == 0o755
    assert (mp / "bin" / "tool-link").read_bytes() == (mp / "bin" / "tool").read_bytes()
    assert os.readlink(mp / "lib64") == "lib"
    assert stat.S_IMODE((mp / "tmp").stat().st_mode) == 0o1777
    # a higher layer overrides
    assert (mp / "etc" / "over").read_bytes() == member(store, img.layers[2], "etc/over")
    # deleted files and directories are hidden, from lookups and from listings
    assert not os.path.lexists(mp / "etc" / "del")
    assert sorted(os.listdir(mp / "etc")) == ["base", "over"]
    assert not os.path.lexists(mp / "gone") and not os.path.lexists(mp / "gone" / "sub" / "f000000")
    # an opaque dir hides the lower content and keeps its own
    assert sorted(os.listdir(mp / "opq")) == ["new"]
    assert not os.path.lexists(mp / "opq" / "f000000")
    # dir → file → dir: nothing of the first dir shows through
    assert sorted(os.listdir(mp / "swap")) == ["again"]
    assert not os.path.lexists(mp / "swap" / "f000000")
    assert sorted(os.listdir(mp / "re")) == ["b"]
    # no whiteout or metadata of any format leaks into the container's view
    root = sorted(os.listdir(mp))
    assert root == ["bin", "data", "etc", "lib64", "opq", "re", "swap", "tmp"], root
    view = _view(mp)

    layer_store = drv.home / "layers"
    before = tree_fingerprint(layer_store) if layer_store.is_dir() else None
    # writes: a new file, an append to a lower file (copy-up), a rewrite, a delete, a mkdir, a rename
    (mp / "etc" / "new.conf").write_bytes(b"x" * 1024)
    with open(mp / "data" / "big", "ab") as f:
        f.write(b"appended")
    (mp / "etc" / "over").write_bytes(b"rewritten")
    os.unlink(mp / "etc" / "base")
    os.mkdir(mp / "newdir")
    os.rename(mp / "opq" / "new", mp / "opq" / "renamed")
    assert (mp / "data" / "big").stat().st_size == 16 * 1024 + 8
    assert (mp / "etc" / "over").read_bytes() == b"rewritten"
    assert not os.path.lexists(mp / "etc" / "base")
    assert sorted(os.listdir(mp / "opq")) == ["renamed"]
    # ...never reach the image: its stored layers are unchanged and a new container sees the image
    if before is not None:
        assert tree_fingerprint(layer_store) == before
    c2 = drv.create(img, res)
    assert _view(c2.mountpoint) == view
    # removal: nothing mounted, no daemon left, the mountpoint gone
    pids = _daemon_pids(c) + _daemon_pids(c2)
    drv.remove(c, res)
    drv.remove(c2, res)
    for p in (c.mountpoint, c2.mountpoint):
        assert not sysutil.is_mountpoint(p)
        assert not p.exists()
    for pid in pids:
        assert not sysutil.pid_alive(pid, None), f"FUSE daemon {pid} still running after removal"
    if before is not None:
        assert tree_fingerprint(layer_store) == before
    drv.remove_image(img)
    assert not drv.has_image(img)


@pytest.mark.parametrize("name", sorted(DRIVERS))
def test_layer_semantics(make_driver, store, name):
    drv, res = make_driver(name)
    check_layer_semantics(drv, res, store)


NATIVE = ["btrfs", "zfs", "overlay", "aufs", "fuse-overlayfs", "unionfs-fuse", "erofs", "composefs"]


@pytest.mark.parametrize("name", NATIVE)
def test_registered_with_provisioning_and_nox(name):
    here = Path(__file__).resolve().parent.parent
    cls = DRIVERS[name]
    assert cls.name == name and cls.description
    script = here / "vagrant" / "provision" / f"{name}.sh"
    assert script.exists(), script
    assert "common.sh" in script.read_text() or "host.sh" in script.read_text()
    nox = (here / "noxfile.py").read_text()
    assert "BACKENDS = list(DRIVERS)" in nox  # a bench session per registered driver
    p = cls.probe()
    if not p.available:  # the reason names what is missing, the hint how to get it
        assert p.reason and p.hint


def test_aufs_probe_is_honest():
    from cowlab.storage.drivers.aufs import Aufs

    has = "\taufs\n" in Path("/proc/filesystems").read_text()
    p = Aufs.probe()
    assert p.available == has
    if not has:
        assert "aufs not in this kernel" in p.reason and p.details.get("kernel_lacks") == "aufs"
        assert "nox -s aufs-kernel" in p.hint and "Ubuntu 20.04" in p.hint  # the AUFS kernel, or a machine that has it


def test_drivers_command_lists_every_backend(cli, root_dir):
    cp = cli("drivers", "--json", root=root_dir)
    assert cp.returncode == 0, cp.stderr
    rows = {r["driver"]: r for r in json.loads(cp.stdout)}
    for name in NATIVE:
        assert name in rows
        r = rows[name]
        assert r["available"] or (r["reason"] and r["hint"])
    if rows["zfs"]["available"]:
        assert rows["zfs"]["details"]["implementation"] in ("kernel", "fuse")
        assert rows["zfs"]["details"]["version"]


# ------------------------------------------------------------------------------------------
# Backend specifics
# ------------------------------------------------------------------------------------------


def test_btrfs_gets_a_btrfs_backing(state):
    from cowlab.storage.drivers.btrfs import Btrfs
    from cowlab.storage.drivers.vfs import Vfs

    host_fs = sysutil.mount_of(state.path).fstype
    assert autobacking.kind_for(Btrfs, "host", state.path) == ("host" if host_fs == "btrfs" else "btrfs")
    assert autobacking.kind_for(Btrfs, "btrfs", state.path) == "btrfs"
    assert autobacking.kind_for(Vfs, "host", state.path) == "host"
    with pytest.raises(CowlabError, match="btrfs only"):
        autobacking.kind_for(Btrfs, "ext4", state.path)


def test_btrfs_layers_are_subvolume_snapshots(make_driver, store):
    from cowlab.storage.drivers.btrfs import is_subvolume

    drv, res = make_driver("btrfs")
    img = store.build(spec_of(LAYERS[:2], name="two"))
    drv.import_image(img)
    layers = sorted((drv.home / "layers").iterdir())
    assert len(layers) == 2 and all(is_subvolume(p) for p in layers)
    c = drv.create(img, res)
    assert is_subvolume(c.mountpoint) and not sysutil.is_mountpoint(c.mountpoint)
    assert (c.mountpoint / "etc" / "base").read_bytes() == (layers[0] / "etc" / "base").read_bytes()
    u = drv.fs_usage()
    assert u["device_size"] > 0 and u["data_size"] >= u["data_used"] > 0 and "metadata_used" in u
    drv.remove(c, res)
    assert not c.mountpoint.exists()


def test_legacy_overlay_hard_links_cost_inodes(make_driver, store):
    """The same image: legacy overlay's layers are full trees (new directory inodes per layer,
    files hard-linked), overlay2's are diffs. Files are shared, directories are not."""
    spec = spec_of(
        [[{"op": "files", "dir": f"/d{i:03d}", "count": 2, "size": 10} for i in range(100)]]
        + [[{"op": "file", "path": f"/layer{j}", "size": 1}] for j in range(4)],
        name="inodes",
    )
    img = store.build(spec)
    counts, drvs = {}, {}
    for name in ("overlay", "overlay2"):  # each on its own ext4, so nothing else writes there
        drv, res = make_driver(name, backing="ext4")
        before = drv.inodes_used()
        drv.import_image(img)
        counts[name] = drv.inodes_used() - before
        drvs[name] = drv
    # overlay2: 100 dirs + 200 files + 4 markers (+ layer dirs); overlay: the 101 dirs again per layer
    assert counts["overlay"] >= counts["overlay2"] + 3 * 100, counts
    # and every file of the base layer is one inode with a link per layer tree
    trees = list((drvs["overlay"].home / "layers").glob("*/root/d000/f000000"))
    assert len(trees) == 5 and {p.stat().st_ino for p in trees} == {trees[0].stat().st_ino}
    assert trees[0].stat().st_nlink == 5


def test_unionfs_translation_unit(tmp_path):
    """AUFS-style layer → unionfs-fuse markers, without a mount."""
    low = tmp_path / "low"
    (low / "d" / "sub").mkdir(parents=True)
    (low / "d" / "sub" / "f").write_text("x")
    (low / "t").mkdir()
    (low / "t" / "child").write_text("y")
    (low / "keep").write_text("k")
    up = tmp_path / "up"
    (up / "d").mkdir(parents=True)
    (up / "d" / ".wh..wh..opq").touch()  # opaque d
    (up / "d" / "mine").write_text("m")
    (up / ".wh.keep").touch()  # delete keep
    (up / "t").write_text("now a file")  # type change: dir → file
    made = translate(up, [low])
    assert made == 3
    META = meta_name()
    assert (up / META / f"d{HIDETAG}").exists()
    assert (up / META / f"keep{HIDETAG}").exists()
    assert (up / META / f"t{HIDETAG}").exists()
    assert not (up / "d" / ".wh..wh..opq").exists() and not (up / ".wh.keep").exists()
    assert (up / "d" / "mine").exists()


def test_unionfs_fuse_meta_stays_hidden_and_whiteouts_land_in_upper(make_driver, store):
    drv, res = make_driver("unionfs-fuse")
    img = store.build(spec_of(LAYERS, name="semantics"))
    drv.import_image(img)
    c = drv.create(img, res)
    META = meta_name()
    assert META not in os.listdir(c.mountpoint)
    os.unlink(c.mountpoint / "etc" / "base")
    upper = drv.home / "containers" / c.id / "upper"
    assert (upper / META / "etc" / f"base{HIDETAG}").exists()
    assert sysutil.mount_of(c.mountpoint).fstype.startswith("fuse")
    drv.remove(c, res)


def test_fuse_daemon_killed_if_it_outlives_the_unmount(make_driver, store):
    """A FUSE container's daemon is a journaled child: closing the journal after a crash-like
    stop (daemon alive, mount alive) still unmounts and ends it."""
    drv, res = make_driver("fuse-overlayfs")
    img = store.build(spec_of(LAYERS[:1], name="one"))
    drv.import_image(img)
    c = drv.create(img, res)
    pids = _daemon_pids(c)
    assert len(pids) == 1 and sysutil.pid_alive(pids[0], None)
    assert res.close() == []
    assert not sysutil.is_mountpoint(c.mountpoint)
    assert not sysutil.pid_alive(pids[0], None)


def test_zfs_pool_stats_and_teardown(make_driver, store):
    from cowlab.storage.drivers.zfs import daemon as ZD
    from cowlab.storage.drivers.zfs import driver as Z

    drv, res = make_driver("zfs", compression="gzip" if Z.implementation() == "fuse" else "lz4", dedup="on")
    img = store.build(
        spec_of(
            [
                [
                    {"op": "file", "path": "/z", "size": "1MiB", "pattern": "zero"},
                    {"op": "file", "path": "/r", "size": "256KiB"},
                ]
            ],
            name="zfs-one",
        )
    )
    drv.import_image(img)
    c = drv.create(img, res)
    data = os.urandom(256 << 10)
    for i in range(4):  # the same random block four times: dedup should find it
        (c.mountpoint / f"dup{i}").write_bytes(data)
    (c.mountpoint / "text").write_bytes(b"cowlab " * 100000)
    st = drv.pool_stats()
    assert st["compressratio"] > 1.0
    assert st["dedupratio"] > 1.0
    if Z.implementation() == "fuse":
        assert st["arc_size_bytes"] is None and "zfs-kstat" in st["arc_note"]
    assert drv.used_bytes() > 0
    md = drv.metadata()
    assert md["zfs_implementation"] in ("kernel", "fuse") and md["zfs_version"]
    assert md["zfs_pool"].startswith("cowlab-")
    pool = drv.pool
    drv.remove(c, res)
    assert res.close() == []
    listed = subprocess.run([U.which("zpool") or "zpool", "list", "-H", "-o", "name"], capture_output=True, text=True)
    assert pool not in listed.stdout
    if Z.implementation() == "fuse":
        assert not [p for p, ours in ZD.fuse_daemons() if ours and _is_descendant(p)]


def _is_descendant(pid: int) -> bool:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    # the daemon carries the holder that started it: COWLAB_ZFS_DAEMON=<root>:run-<pid>-<start>
    return f":run-{os.getpid()}-".encode() in env


# ------------------------------------------------------------------------------------------
# The labs' behaviours, from the CLI
# ------------------------------------------------------------------------------------------


def _samples(out: Path) -> list[dict]:
    rows = []
    for f in out.rglob("samples.jsonl"):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return rows


def _bench(cli, root, out, driver, *workloads, extra=()):
    args = ["bench", driver, "--quick", "--mode", "primitive", "--vm", "never", "--out", str(out)]
    for w in workloads:
        args += ["--workload", w]
    cp = cli(*args, *extra, root=root, timeout=900)
    assert cp.returncode == 0, cp.stdout[-3000:] + cp.stderr[-3000:]
    return _samples(out)


def _one(rows, metric, **params):
    hits = [r for r in rows if r["metric"] == metric and all(r["params"].get(k) == v for k, v in params.items())]
    assert hits, f"no {metric} {params} in {sorted({r['metric'] for r in rows})}"
    return hits[0]


def test_btrfs_chunks_lab_from_the_cli(cli, root_dir, tmp_path):
    """ENOSPC with df showing free space, then balance: reproduced, or said so in the results."""
    _skip_unless_available("btrfs")
    rows = _bench(cli, root_dir, tmp_path / "out", "btrfs", "btrfs_chunks")
    repro = _one(rows, "enospc_reproduced")["value"]
    df_at = _one(rows, "df_avail_at_enospc_bytes")
    if repro:
        assert df_at["status"] == "ok" and df_at["value"] > 100 << 20  # lots of "free" space at ENOSPC
        meta_full = _one(rows, "chunk_bytes", stage="metadata_full", what="device_unallocated")["value"]
        assert meta_full <= 8 << 20  # nothing left to allocate a metadata chunk from
    else:
        assert df_at["status"] == "skipped" and "no ENOSPC" in df_at["error"]
    assert _one(rows, "balance_ok_after_freeing")["value"] == 1
    assert _one(rows, "unallocated_reclaimed_bytes")["value"] > 100 << 20
    assert _one(rows, "retry_files_written")["value"] == 2000
    for stage in ("fill", "thinned", "metadata_full", "balanced", "retry"):
        _one(rows, "chunk_bytes", stage=stage, what="data_size")


def test_btrfs_only_workloads_are_skipped_elsewhere(cli, root_dir, tmp_path):
    rows = _bench(cli, root_dir, tmp_path / "out", "overlay2", "btrfs_chunks", "pool_stats")
    for wl, cap in (("btrfs_chunks", "btrfs_chunks"), ("pool_stats", "pool_stats")):
        r = [r for r in rows if r["workload"] == wl]
        assert r and all(x["status"] == "skipped" and cap in x.get("error", "") for x in r)


def test_inodes_lab_legacy_overlay_vs_overlay2(cli, root_dir, tmp_path):
    got, links = {}, {}
    for name in ("overlay", "overlay2"):
        _skip_unless_available(name)
        rows = _bench(cli, root_dir, tmp_path / name, name, "inodes")
        got[name] = _one(rows, "inodes_used", event="import")["value"]
        links[name] = _one(rows, "hard_links", event="import")["value"]
    # quick grid: 200 dirs of 5 files, 4 layers: legacy overlay copies the 201 dirs 3 more times
    # (603 inodes), less the few that overlay2 spends per layer on its own bookkeeping
    assert got["overlay"] >= got["overlay2"] + 500, got
    # and links each of the 1,000 files into the 3 layers above the first (one more name per
    # layer for the files those layers add); overlay2 links nothing
    assert links["overlay2"] == 0 and links["overlay"] >= 3000, links


def test_pool_stats_lab_from_the_cli(cli, root_dir, tmp_path):
    _skip_unless_available("zfs")
    from cowlab.storage.drivers.zfs import daemon as ZD
    from cowlab.storage.drivers.zfs import driver as Z

    rows = _bench(cli, root_dir, tmp_path / "out", "zfs", "pool_stats")
    assert _one(rows, "compressratio", variant="default")["value"] == pytest.approx(1.0, abs=0.05)
    assert _one(rows, "compressratio", variant="compression")["value"] > 1.5  # text shrinks, random does not
    assert _one(rows, "dedupratio", variant="dedup")["value"] > 1.5
    arc = _one(rows, "arc_size_bytes", variant="default")
    if Z.implementation() == "fuse":
        assert arc["status"] == "skipped" and "zfs-kstat" in arc["error"]
    else:
        assert arc["value"] > 0
    assert not [p for p, ours in ZD.fuse_daemons() if ours and _is_descendant(p)]


def test_container_create_btrfs_on_a_persistent_loop_btrfs(cli, root_dir, tmp_path):
    """`cowlab container create --driver btrfs` on a non-btrfs root: a loop btrfs that outlives
    the command, reused by the next container, and released with the last container that uses it
    (so `cleanup --all` finds nothing of it left)."""
    _skip_unless_available("btrfs")
    spec = tmp_path / "s.toml"
    spec.write_text('name = "demo"\n[[layers]]\nops = [{op = "file", path = "/etc/hello", size = 100}]\n')
    assert cli("image", "build", str(spec), root=root_dir).returncode == 0
    made = []
    for _ in range(2):
        cp = cli("container", "create", "demo", "--driver", "btrfs", root=root_dir)
        assert cp.returncode == 0, cp.stderr
        made.append(Path(cp.stdout.strip().splitlines()[-1]))
    from cowlab.storage.drivers.btrfs import is_subvolume

    for mp in made:
        assert is_subvolume(mp) and (mp / "etc" / "hello").stat().st_size == 100
    assert made[0].parent == made[1].parent  # one persistent btrfs for both
    if sysutil.mount_of(root_dir).fstype != "btrfs":
        assert sysutil.mount_of(made[0]).fstype == "btrfs" and sysutil.mount_of(made[0]).target != "/"
    assert cli("container", "rm", str(made[0]), root=root_dir).returncode == 0
    assert mounts_under(root_dir), "the second container still needs the loop btrfs"
    assert cli("container", "rm", str(made[1]), root=root_dir).returncode == 0
    assert mounts_under(root_dir) == [], "the loop btrfs goes with its last container"
    assert cli("image", "rm", "demo", root=root_dir).returncode == 0
    cp = cli("cleanup", "--all", root=root_dir)
    assert cp.returncode == 0 and "backing-btrfs" not in cp.stdout
    assert mounts_under(root_dir) == []


def test_zfs_fuse_user_lock_is_machine_wide_and_dies_with_its_holder():
    """One cowlab process at a time talks to zfs-fuse. The lock is an abstract socket name: no
    file anywhere, and a SIGKILLed holder can't leave it stale."""
    import signal
    import sys
    import time

    from conftest import SRC
    from cowlab.storage.drivers.zfs import daemon as Z

    code = (
        "import sys,time; from cowlab.storage.drivers.zfs import daemon as Z; Z.user_lock_acquire(); "
        "print('held', flush=True); time.sleep(60)"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(SRC)}
    )
    try:
        assert p.stdout.readline().strip() == "held"
        assert Z.lock_holder() == p.pid
        with pytest.raises(Exception, match=f"cowlab process {p.pid} has been using zfs-fuse"):
            Z.user_lock_acquire(wait=0.6)
        p.send_signal(signal.SIGKILL)
        p.wait()
        t0 = time.monotonic()
        Z.user_lock_acquire(wait=10)  # freed by the kernel with the dead holder
        assert time.monotonic() - t0 < 5 and Z.lock_holder() == os.getpid()
        Z.user_lock_release()
        assert Z.lock_holder() is None
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
