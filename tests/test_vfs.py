"""vfs: every container is a full, independent copy of the image."""

from __future__ import annotations

import os
import stat

import pytest

from conftest import mounts_under
from cowlab.base.resources import Resources
from cowlab.storage import backing
from cowlab.storage.drivers.vfs import Vfs
from helpers import listing, spec_of, tree_fingerprint
from test_overlay2 import BASE

pytestmark = pytest.mark.root


@pytest.fixture
def env(state, store):
    res = Resources.for_run(state)
    drv = Vfs(backing.host(state.store / "t"), res, store)
    yield drv, res, store
    assert res.close() == []
    assert mounts_under(state.path) == []


def test_probe():
    assert Vfs.probe().available


def test_image_is_applied(env):
    drv, res, store = env
    img = store.build(spec_of(BASE, name="base"))
    drv.import_image(img)
    c = drv.create(img, res)
    mp = c.mountpoint
    assert mp == drv.home / "containers" / c.id / "rootfs"
    assert (mp / "etc" / "base").stat().st_size == 1000
    assert (mp / "etc" / "over").stat().st_size == 20
    assert (mp / "etc" / "base-link").stat().st_ino == (mp / "etc" / "base").stat().st_ino
    assert not os.path.lexists(mp / "etc" / "del")
    assert sorted(os.listdir(mp / "opq")) == ["new"]
    assert not os.path.lexists(mp / "gone")
    assert stat.S_IMODE((mp / "tmp").stat().st_mode) == 0o1777
    for p in listing(mp):  # no whiteout in any form: they were carried out
        assert not os.path.basename(p).startswith(".wh.")
        assert not stat.S_ISCHR(os.lstat(mp / p).st_mode)
    assert mounts_under(drv.home) == []  # vfs mounts nothing


def test_containers_are_independent_copies(env):
    drv, res, store = env
    img = store.build(spec_of(BASE, name="base"))
    drv.import_image(img)
    rootfs = drv.home / "images"
    image_before = tree_fingerprint(rootfs)
    c1, c2 = drv.create(img, res), drv.create(img, res)
    c2_before = tree_fingerprint(c2.mountpoint)
    assert c2_before == tree_fingerprint(c1.mountpoint)
    assert (c1.mountpoint / "etc" / "base").stat().st_ino != (c2.mountpoint / "etc" / "base").stat().st_ino
    (c1.mountpoint / "etc" / "base").write_bytes(b"changed")
    with open(c1.mountpoint / "data" / "big", "r+b") as f:
        f.write(b"\0" * 100)
    os.unlink(c1.mountpoint / "etc" / "over")
    (c1.mountpoint / "new").write_text("hello")
    os.chmod(c1.mountpoint / "tmp", 0o700)
    assert (c1.mountpoint / "etc" / "base").read_bytes() == b"changed"
    assert tree_fingerprint(c2.mountpoint) == c2_before
    assert tree_fingerprint(rootfs) == image_before
    c3 = drv.create(img, res)
    assert tree_fingerprint(c3.mountpoint) == c2_before


def test_remove_containers_and_image(env, state):
    drv, res, store = env
    img = store.build(spec_of(BASE, name="base"))
    drv.import_image(img)
    cs = [drv.create(img, res) for _ in range(3)]
    for c in cs:
        drv.remove(c, res)
        assert not (drv.home / "containers" / c.id).exists()
    assert os.listdir(drv.home / "containers") == []
    drv.remove_image(img)
    assert not drv.has_image(img) and os.listdir(drv.home / "images") == []


def test_resources_close_removes_all_containers(state, store):
    img = store.build(spec_of(BASE, name="base"))
    res = Resources.for_run(state)
    drv = Vfs(backing.host(state.store / "t"), res, store)
    drv.import_image(img)
    for _ in range(4):
        drv.create(img, res)
    assert len(os.listdir(drv.home / "containers")) == 4
    assert res.close() == []
    assert os.listdir(drv.home / "containers") == []
    assert drv.has_image(img)
