"""The erofs and composefs drivers beyond what the conformance suite checks: what they are made
of (EROFS layer images on loop devices; metacopy stubs over a content-addressed object store
shared by images), their probes' reasons, the idmap option, and nothing left behind."""

from __future__ import annotations

import os

import pytest

from conftest import mounts_under
from cowlab.base import sysutil
from cowlab.base.errors import CowlabError
from cowlab.base.resources import Resources
from cowlab.base.state import StateRoot
from cowlab.storage import backing as B
from cowlab.storage.drivers import composefs as CF
from cowlab.storage.drivers import erofs as ER
from cowlab.storage.drivers import idmap as IM
from cowlab.storage.drivers.overlay2 import Overlay2
from cowlab.store.images import ImageStore
from cowlab.store.spec import from_dict

MiB = 1 << 20


def spec(name, version, extra=()):
    ops = [
        {"op": "files", "dir": "/shared", "count": 4, "size": 64 << 10},
        {"op": "file", "path": "/version", "size": 100, "seed": version},
        *extra,
    ]
    return from_dict({"name": name, "seed": 5, "layers": [{"ops": ops}]}, f"<{name}>")


@pytest.fixture
def env(tmp_path):
    st = StateRoot(tmp_path / "root").ensure()
    store = ImageStore(st)
    res = Resources.for_run(st)
    yield st, store, res
    assert res.close() == []
    assert mounts_under(tmp_path) == []
    assert not [f for f in sysutil.loop_devices().values() if f.startswith(str(tmp_path))]


def need(cls):
    p = cls.probe()
    if not p.available:
        pytest.skip(f"{cls.name} is unavailable here: {p.reason}")


@pytest.mark.root
def test_composefs_stores_shared_files_once_and_drops_unshared_objects(env):
    need(CF.Composefs)
    st, store, res = env
    # an ext4 loop backing: where mkfs.erofs 1.5's chunked mode failed (its /tmp is elsewhere)
    drv = CF.Composefs(B.make_loop(st.backings, res, "ext4", 1 << 30), res, store)
    a = store.build(spec("cf-a", 1))
    b = store.build(spec("cf-b", 2, [{"op": "file", "path": "/only-b", "size": 1000}]))
    drv.import_image(a)
    assert len(list(drv.objects.rglob("*/*"))) == 5  # 4 shared + /version
    drv.import_image(b)
    assert len(list(drv.objects.rglob("*/*"))) == 5 + 2  # + b's /version and /only-b
    c = drv.create(b, res)
    f = c.mountpoint / "shared" / sorted(os.listdir(c.mountpoint / "shared"))[0]
    assert f.stat().st_size == 64 << 10
    # the stub in the metadata image names the object; the object holds the bytes
    stub = drv._meta_dir(b) / "mnt" / "shared" / f.name
    name = os.getxattr(stub, CF.REDIRECT).decode().lstrip("/")
    assert (drv.objects / name).read_bytes() == f.read_bytes()
    assert sysutil.mount_of(drv._meta_dir(b) / "mnt").fstype == "erofs"
    drv.remove(c, res)
    drv.remove_image(a)
    assert len(list(drv.objects.rglob("*/*"))) == 6  # a's /version went, shared stayed
    drv.remove_image(b)
    assert list(drv.objects.rglob("*/*")) == []


@pytest.mark.root
def test_erofs_layers_are_images_on_loop_devices(env):
    need(ER.Erofs)
    st, store, res = env
    drv = ER.Erofs(B.host(st.store / "e"), res, store)
    img = store.build(
        from_dict(
            {
                "name": "er",
                "layers": [
                    {
                        "ops": [
                            {"op": "file", "path": "/d/gone", "size": 10},
                            {"op": "file", "path": "/o/x", "size": 10},
                        ]
                    },
                    {"ops": [{"op": "delete", "path": "/d/gone"}, {"op": "opaque", "path": "/o"}]},
                ],
            },
            "<er>",
        )
    )
    drv.import_image(img)
    top = drv._layer_dir(img.layers[-1])
    assert sorted(os.listdir(top)) == ["layer.erofs", "link", "mnt"]  # no unpacked tree kept
    m = sysutil.mount_of(top / "mnt")
    assert m.fstype == "erofs" and m.source.startswith("/dev/loop")
    wh = os.lstat(top / "mnt" / "d" / "gone")  # the whiteout survived
    assert os.major(wh.st_rdev) == 0 and os.minor(wh.st_rdev) == 0
    assert os.getxattr(top / "mnt" / "o", "trusted.overlay.opaque") == b"y"
    drv.remove_image(img)
    assert not top.exists()


def test_probes_say_why(monkeypatch):
    monkeypatch.setattr(ER, "kernel_version", lambda: (6, 1))
    p = CF.Composefs.probe()
    assert not p.available and "6.5" in p.reason and p.hint
    monkeypatch.setattr(ER, "kernel_version", lambda: (6, 18))
    monkeypatch.setattr(ER.U, "filesystems", lambda: "nodev\toverlay\n\text4\n")
    for cls in (ER.Erofs, CF.Composefs):
        p = cls.probe()
        assert not p.available and "EROFS" in p.reason and "CONFIG_EROFS_FS" in p.hint
    monkeypatch.setattr(ER.U, "filesystems", lambda: "nodev\toverlay\n\terofs\n")
    monkeypatch.setattr(ER.U, "which", lambda tool: None)
    p = ER.Erofs.probe()
    assert not p.available and "mkfs.erofs" in p.reason and "vagrant/provision/erofs.sh" in p.hint


def test_idmap_option_is_checked():
    with pytest.raises(CowlabError, match="INSIDE:OUTSIDE:COUNT"):
        Overlay2.check_options({"idmap": "100000"})
    with pytest.raises(CowlabError, match="say on or off"):
        Overlay2.check_options({"volatile": "sometimes"})
    assert IM.parse("0:100000:65536") == (0, 100000, 65536)


@pytest.mark.root
@pytest.mark.parametrize("name", ["overlay2", "erofs", "composefs"])
def test_idmapped_container_belongs_to_the_mapped_root(env, name):
    from cowlab.storage.drivers import DRIVERS

    cls = DRIVERS[name]
    need(cls)
    if IM.supported():
        pytest.skip(IM.supported())
    st, store, res = env
    drv = cls(B.host(st.store / name), res, store, options={"idmap": "0:200000:65536"})
    img = store.build(
        from_dict(
            {
                "name": "idm",
                "layers": [
                    {
                        "ops": [
                            {"op": "file", "path": "/etc/passwd", "size": 100},
                            {"op": "file", "path": "/home/u/f", "size": 10, "uid": 1000, "gid": 1000},
                        ]
                    }
                ],
            },
            "<idm>",
        )
    )
    drv.import_image(img)
    c = drv.create(img, res)
    own = lambda p: (os.lstat(c.mountpoint / p).st_uid, os.lstat(c.mountpoint / p).st_gid)  # noqa: E731
    assert own(".") == own("etc/passwd") == (200000, 200000)
    assert own("home/u/f") == (201000, 201000)
    with open(c.mountpoint / "etc/passwd", "ab") as f:  # copied up, keeping the mapped owner
        f.write(b"x")
    assert own("etc/passwd") == (200000, 200000)
    drv.remove(c, res)
    drv.remove_image(img)
