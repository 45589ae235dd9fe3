"""overlay2 with real overlayfs mounts: visibility, whiteouts, opaque dirs, copy-up into the
upper dir only, the 500-layer limit, and teardown that leaves nothing mounted."""

from __future__ import annotations

import os
import shutil
import stat
import tarfile

import pytest

from conftest import mounts_under
from cowlab.base import sysutil
from cowlab.base.errors import CowlabError
from cowlab.base.resources import Resources
from cowlab.measure.workloads.base import synthetic_image
from cowlab.storage import backing
from cowlab.storage.drivers import DRIVERS, get
from cowlab.storage.drivers.overlay2 import OVL_MAX_STACK, Overlay2
from helpers import is_whiteout, spec_of, tree_fingerprint

pytestmark = pytest.mark.root

BASE = [
    [
        {"op": "file", "path": "/etc/base", "size": 1000},
        {"op": "file", "path": "/etc/over", "size": 10},
        {"op": "files", "dir": "/opq", "count": 3, "size": 100},
        {"op": "files", "dir": "/gone/sub", "count": 2, "size": 10},
        {"op": "file", "path": "/data/big", "size": "16KiB"},
        {"op": "symlink", "path": "/lib64", "target": "lib"},
        {"op": "hardlink", "path": "/etc/base-link", "target": "/etc/base"},
    ],
    [
        {"op": "file", "path": "/etc/del", "size": 5},
        {"op": "dir", "path": "/tmp", "mode": "1777"},
    ],
    [
        {"op": "file", "path": "/etc/over", "size": 20},
        {"op": "delete", "path": "/etc/del"},
        {"op": "opaque", "path": "/opq"},
        {"op": "file", "path": "/opq/new", "size": 7},
        {"op": "delete", "path": "/gone"},
    ],
]


@pytest.fixture
def env(state, store):
    res = Resources.for_run(state)
    drv = Overlay2(backing.host(state.store / "t"), res, store)
    yield drv, res, store
    assert res.close() == []
    assert mounts_under(state.path) == []


def member(store, digest: str, name: str) -> bytes:
    with tarfile.open(store.layer_path(digest)) as t:
        return t.extractfile(name).read()


def test_registered_and_probed():
    assert get("overlay2") is Overlay2 and "overlay2" in DRIVERS
    p = Overlay2.probe()
    assert p.available, p.reason
    assert Overlay2.max_layers == OVL_MAX_STACK == 500


def test_layout_and_lower_layer_visible(env):
    drv, res, store = env
    img = store.build(spec_of(BASE, name="base"))
    drv.import_image(img)
    assert drv.has_image(img)
    c = drv.create(img, res)
    cdir = drv.home / "containers" / c.id
    assert c.mountpoint == cdir / "merged"
    assert sorted(os.listdir(cdir)) == ["diff", "merged", "work"]
    assert sysutil.is_mountpoint(c.mountpoint)
    m = sysutil.mount_of(c.mountpoint)
    assert m.fstype == "overlay" and f"upperdir={cdir / 'diff'}" in m.super_options
    assert (c.mountpoint / "etc" / "base").read_bytes() == member(store, img.layers[0], "etc/base")
    assert (c.mountpoint / "etc" / "over").read_bytes() == member(store, img.layers[2], "etc/over")
    assert (c.mountpoint / "etc" / "over").stat().st_size == 20  # the top layer wins
    assert os.readlink(c.mountpoint / "lib64") == "lib"
    assert (c.mountpoint / "etc" / "base-link").read_bytes() == (c.mountpoint / "etc" / "base").read_bytes()
    assert stat.S_IMODE((c.mountpoint / "tmp").stat().st_mode) == 0o1777
    assert os.listdir(cdir / "diff") == []  # reading copies nothing up
    drv.remove(c, res)
    assert not cdir.exists() and not sysutil.is_mountpoint(c.mountpoint)


def test_image_whiteouts_and_opaque_dir(env):
    drv, res, store = env
    img = store.build(spec_of(BASE, name="base"))
    drv.import_image(img)
    c = drv.create(img, res)
    mp = c.mountpoint
    assert not os.path.lexists(mp / "etc" / "del")  # deleted by a higher layer
    assert "del" not in os.listdir(mp / "etc")
    assert sorted(os.listdir(mp / "opq")) == ["new"]  # the opaque dir hides the lower files
    assert not os.path.lexists(mp / "gone")
    assert not any(n.startswith(".wh.") for n in os.listdir(mp / "etc"))
    # in the layer dirs, the top layer holds the overlay-style whiteouts
    top = drv.home / "layers" / img.layers[2].split(":")[1] / "diff"
    assert is_whiteout(top / "etc" / "del") and is_whiteout(top / "gone")
    assert os.getxattr(top / "opq", "trusted.overlay.opaque") == b"y"


def test_delete_in_container_leaves_whiteout_in_upper(env):
    drv, res, store = env
    img = store.build(spec_of(BASE, name="base"))
    drv.import_image(img)
    c = drv.create(img, res)
    upper = drv.home / "containers" / c.id / "diff"
    os.unlink(c.mountpoint / "etc" / "base")
    assert not os.path.lexists(c.mountpoint / "etc" / "base")
    assert is_whiteout(upper / "etc" / "base")
    lower = drv.home / "layers" / img.layers[0].split(":")[1] / "diff" / "etc" / "base"
    assert lower.stat().st_size == 1000  # the image still has it
    # a new container of the same image still sees it
    c2 = drv.create(img, res)
    assert (c2.mountpoint / "etc" / "base").stat().st_size == 1000


def test_writes_land_in_upper_only(env):
    drv, res, store = env
    img = store.build(spec_of(BASE, name="base"))
    drv.import_image(img)
    layers_dir = drv.home / "layers"
    before = tree_fingerprint(layers_dir)
    c = drv.create(img, res)
    mp = c.mountpoint
    upper = drv.home / "containers" / c.id / "diff"
    (mp / "etc" / "new.conf").write_bytes(b"x" * 1024)
    with open(mp / "data" / "big", "ab") as f:  # copy-up of a lower file
        f.write(b"appended")
    (mp / "etc" / "over").write_bytes(b"rewritten")
    os.chmod(mp / "etc" / "base", 0o600)
    os.chown(mp / "opq" / "new", 1234, 1234)
    os.unlink(mp / "lib64")
    os.mkdir(mp / "newdir")
    os.rename(mp / "opq" / "new", mp / "opq" / "renamed")
    os.setxattr(mp / "etc" / "new.conf", "user.k", b"v")
    os.symlink("/nowhere", mp / "link")
    # the container sees its writes
    assert (mp / "data" / "big").stat().st_size == 16 * 1024 + 8
    assert (mp / "etc" / "over").read_bytes() == b"rewritten"
    # the writes are in the upper dir...
    assert (upper / "etc" / "new.conf").read_bytes() == b"x" * 1024
    assert (upper / "data" / "big").stat().st_size == 16 * 1024 + 8
    assert stat.S_IMODE((upper / "etc" / "base").stat().st_mode) == 0o600
    assert is_whiteout(upper / "lib64")
    assert (upper / "newdir").is_dir() and os.readlink(upper / "link") == "/nowhere"
    # ...and never in the image's layers
    assert tree_fingerprint(layers_dir) == before
    # a second container of the image sees none of it
    c2 = drv.create(img, res)
    assert not (c2.mountpoint / "etc" / "new.conf").exists()
    assert (c2.mountpoint / "data" / "big").stat().st_size == 16 * 1024
    assert (c2.mountpoint / "opq" / "new").exists()
    drv.remove(c, res)
    drv.remove(c2, res)
    assert tree_fingerprint(layers_dir) == before


def test_128_layers_every_marker_reads_back(env):
    drv, res, store = env
    img = store.build(synthetic_image("l128", 0, 128))
    assert len(img.layers) == 128
    drv.import_image(img)
    c = drv.create(img, res)
    markers = sorted(os.listdir(c.mountpoint / "layers"))
    assert markers == [f"{i:04d}" for i in range(128)]
    for i, d in enumerate(img.layers):
        assert (c.mountpoint / "layers" / f"{i:04d}").read_bytes() == member(store, d, f"layers/{i:04d}")
    assert len({(c.mountpoint / "layers" / m).read_bytes() for m in markers}) == 128


def test_500_layers_mount_and_501_refused(env, state):
    drv, res, store = env
    img500 = store.build(synthetic_image("l500", 0, 500))
    img501 = store.build(synthetic_image("l501", 0, 501))
    assert img501.layers[:500] == img500.layers  # layers are shared, not rebuilt
    drv.import_image(img500)
    c = drv.create(img500, res)
    assert len(os.listdir(c.mountpoint / "layers")) == 500
    assert (c.mountpoint / "layers" / "0000").read_bytes() == member(store, img500.layers[0], "layers/0000")
    assert (c.mountpoint / "layers" / "0499").read_bytes() == member(store, img500.layers[499], "layers/0499")
    drv.remove(c, res)
    assert mounts_under(state.path) == []
    with pytest.raises(CowlabError, match=r"501 layers.*500.*OVL_MAX_STACK"):
        drv.import_image(img501)
    assert not drv.has_image(img501)
    assert mounts_under(state.path) == []
    assert os.listdir(drv.home / "containers") == []


def test_remove_containers_and_images(env, state):
    drv, res, store = env
    a = store.build(spec_of(BASE[:1], name="a"))
    b = store.build(spec_of(BASE, name="b"))
    assert b.layers[0] == a.layers[0]
    drv.import_image(a)
    drv.import_image(b)
    assert len(os.listdir(drv.home / "layers")) == 3
    ca, cb = drv.create(a, res), drv.create(b, res)
    drv.remove(ca, res)
    assert not (drv.home / "containers" / ca.id).exists()
    assert mounts_under(state.path) == [str(cb.mountpoint)]
    drv.remove_image(a)
    assert not drv.has_image(a)
    assert len(os.listdir(drv.home / "layers")) == 3  # b still uses the shared layer
    assert (cb.mountpoint / "etc" / "base").stat().st_size == 1000
    drv.remove(cb, res)
    drv.remove_image(b)
    assert os.listdir(drv.home / "containers") == []
    assert os.listdir(drv.home / "layers") == []
    assert os.listdir(drv.home / "l") == []  # no dangling short links
    assert os.listdir(drv.home / "images") == []
    assert mounts_under(state.path) == []
    store.remove("a")
    store.remove("b")
    assert os.listdir(state.layers) == []


def test_resources_close_unmounts_everything(state, store):
    img = store.build(spec_of(BASE, name="base"))
    res = Resources.for_run(state)
    drv = Overlay2(backing.host(state.store / "t"), res, store)
    drv.import_image(img)
    cs = [drv.create(img, res) for _ in range(5)]
    for c in cs:
        (c.mountpoint / "scratch").write_text(c.id)
    assert len(mounts_under(state.path)) == 5
    assert res.close() == []
    assert mounts_under(state.path) == []
    assert os.listdir(drv.home / "containers") == []
    assert not res.dir.exists()
    assert drv.has_image(img)  # the imported image is the driver's, not the run's


def test_containers_are_independent(env):
    drv, res, store = env
    img = store.build(spec_of(BASE, name="base"))
    drv.import_image(img)
    c1, c2 = drv.create(img, res), drv.create(img, res)
    (c1.mountpoint / "etc" / "base").write_bytes(b"changed")
    os.unlink(c1.mountpoint / "etc" / "over")
    assert (c2.mountpoint / "etc" / "base").stat().st_size == 1000
    assert (c2.mountpoint / "etc" / "over").exists()


def test_import_is_idempotent(env):
    drv, res, store = env
    img = store.build(spec_of(BASE, name="base"))
    drv.import_image(img)
    before = tree_fingerprint(drv.home / "layers")
    drv.import_image(img)
    assert tree_fingerprint(drv.home / "layers") == before
    assert os.listdir(drv.home / "tmp") == []  # no staging left behind


# --- on loop filesystems cowlab makes ------------------------------------------------------------

LOOP_SIZE = {"ext4": 64 << 20, "xfs": 320 << 20, "btrfs": 160 << 20}  # sparse: costs what is written


@pytest.mark.parametrize("fstype", ["ext4", "xfs", "btrfs"])
def test_on_a_loop_backing(state, store, fstype):
    from conftest import loops_under

    if not shutil.which(backing.MKFS[fstype][0]) and not os.path.exists("/sbin/" + backing.MKFS[fstype][0]):
        pytest.skip(f"{backing.MKFS[fstype][0]} is not installed")
    img = store.build(spec_of(BASE, name="base"))
    res = Resources.for_run(state)
    try:
        b = backing.make_loop(state.backings, res, fstype, LOOP_SIZE[fstype])
        assert b.mount.fstype == fstype and b.loop_device
        assert [f for _, f in loops_under(state.path)] == [b.image_file]
        drv = Overlay2(b, res, store)
        drv.import_image(img)
        c = drv.create(img, res)
        (c.mountpoint / "etc" / "base").write_bytes(b"changed")
        assert is_whiteout(drv.home / "layers" / img.layers[2].split(":")[1] / "diff" / "etc" / "del")
        assert (drv.home / "containers" / c.id / "diff" / "etc" / "base").read_bytes() == b"changed"
        assert sysutil.mount_of(drv.home / "containers" / c.id / "diff").fstype == fstype
        assert len(mounts_under(state.path)) == 2  # the loop fs and the container on it
    finally:
        assert res.close() == []
    assert mounts_under(state.path) == []
    assert loops_under(state.path) == []
    assert os.listdir(state.backings) == []  # image file and mount dir are gone too
