"""Layers: deterministic content and tars, whiteout styles, and hostile tars refused."""

from __future__ import annotations

import filecmp
import os
import stat
import tarfile

import pytest

from cowlab.base.errors import CowlabError
from cowlab.base.state import StateRoot
from cowlab.store import content, layers
from cowlab.store.images import ImageStore
from helpers import (
    APPLY_MISSES,
    CHECK_MISSES,
    HOSTILE,
    box_setup,
    box_untouched,
    hostile_layer,
    is_whiteout,
    listing,
    spec_of,
    tar_bytes,
    ti,
)

KiB = 1024

RICH = [
    [
        {"op": "file", "path": "/data/rand", "size": 64 * KiB},
        {"op": "file", "path": "/data/zero", "size": 16 * KiB, "pattern": "zero"},
        {"op": "file", "path": "/data/text", "size": 3000, "pattern": "text"},
        {"op": "file", "path": "/data/rep", "size": 5000, "pattern": "repeat", "mode": "0600"},
        {"op": "files", "dir": "/etc/conf.d", "count": 4, "size": "1KiB"},
        {"op": "dir", "path": "/tmp", "mode": "1777"},
        {"op": "symlink", "path": "/lib64", "target": "lib"},
        {"op": "hardlink", "path": "/data/rand-link", "target": "/data/rand"},
        {"op": "file", "path": "/x/attr", "size": 10, "xattrs": {"user.colour": "blue"}},
    ],
    [
        {"op": "delete", "path": "/data/zero"},
        {"op": "opaque", "path": "/etc/conf.d"},
        {"op": "file", "path": "/etc/conf.d/new", "size": 100},
        {"op": "chmod", "path": "/data/rand", "mode": "0640"},
        {"op": "chown", "path": "/x", "uid": 1000, "gid": 1000, "recursive": True},
    ],
]


# --- content ---------------------------------------------------------------------------------


def test_random_pattern_is_not_zero_and_blocks_differ():
    data = content.generate(256 * KiB + 123, "random", 42)
    assert len(data) == 256 * KiB + 123
    blocks = [data[i : i + 4096] for i in range(0, 256 * KiB, 4096)]
    assert all(b.count(0) < 4096 for b in blocks)
    assert len(set(blocks)) == len(blocks)
    assert data == content.generate(256 * KiB + 123, "random", 42)
    assert data != content.generate(256 * KiB + 123, "random", 43)


def test_random_pattern_across_chunks():
    data = content.generate(content.CHUNK * 2 + 10, "random", 1)
    a, b = data[: content.CHUNK], data[content.CHUNK : 2 * content.CHUNK]
    assert a != b  # every MiB chunk differs too (no dedup across chunks)
    assert data[:4096] == content.generate(4096, "random", 1)  # a prefix of the same stream


def test_zero_text_repeat_patterns():
    assert content.generate(10000, "zero", 5) == bytes(10000)
    t = content.generate(5000, "text", 5)
    assert len(t) == 5000 and t.startswith(b"cowlab seed 5 line")
    r = content.generate(3 * content.REPEAT_UNIT, "repeat", 9)
    u = content.REPEAT_UNIT
    assert r[:u] == r[u : 2 * u] == r[2 * u :] and r[:u].count(0) < u
    with pytest.raises(ValueError):
        content.generate(1, "pi", 0)


def test_content_stream_reads_in_small_pieces():
    c = content.Content(3 * content.CHUNK // 2, "random", 3)
    parts = []
    while chunk := c.read(70001):
        parts.append(chunk)
    assert b"".join(parts) == content.generate(3 * content.CHUNK // 2, "random", 3)


# --- deterministic builds --------------------------------------------------------------------


def test_two_builds_in_two_roots_are_byte_identical(tmp_path):
    sp = spec_of(RICH, name="rich", seed=3)
    a = ImageStore(StateRoot(tmp_path / "a").ensure()).build(sp)
    b_store = ImageStore(StateRoot(tmp_path / "b").ensure())
    b = b_store.build(spec_of(RICH, name="rich", seed=3, source="/elsewhere/rich.toml"))
    assert a.layers == b.layers and a.id == b.id
    assert a.layer_bytes == b.layer_bytes and a.content_bytes == b.content_bytes
    for d in a.layers:
        pa = tmp_path / "a" / "layers" / (d.replace(":", "-") + ".tar")
        pb = b_store.layer_path(d)
        assert pa.is_file() and pb.is_file()
        assert filecmp.cmp(pa, pb, shallow=False)
        assert layers.check_tar(pa, "t") >= 0


def test_digest_depends_on_seed_and_mtime(tmp_path):
    s = ImageStore(StateRoot(tmp_path / "r").ensure())
    one = s.build(spec_of(RICH, name="one", seed=3))
    other_seed = s.build(spec_of(RICH, name="two", seed=4))
    assert one.layers[0] != other_seed.layers[0]
    from cowlab.store import spec

    raw = {"name": "three", "seed": 3, "mtime": 1, "layers": [{"ops": o} for o in RICH]}
    other_mtime = s.build(spec.from_dict(raw))
    assert one.layers[0] != other_mtime.layers[0]


def test_layer_tar_content(tmp_path, store):
    img = store.build(spec_of(RICH, name="rich", seed=3))
    with tarfile.open(store.layer_path(img.layers[0])) as t:
        m = {x.name: x for x in t.getmembers()}
        assert {
            "data",
            "data/rand",
            "data/zero",
            "etc",
            "etc/conf.d",
            "etc/conf.d/f000000",
            "tmp",
            "lib64",
            "data/rand-link",
            "x",
            "x/attr",
        } <= set(m)
        rand = t.extractfile(m["data/rand"]).read()
        assert len(rand) == 64 * KiB and rand.count(0) < len(rand) // 100
        blocks = {rand[i : i + 4096] for i in range(0, len(rand), 4096)}
        assert len(blocks) == 16
        assert t.extractfile(m["data/zero"]).read() == bytes(16 * KiB)
        assert m["data/rep"].mode == 0o600
        assert m["tmp"].isdir() and m["tmp"].mode == 0o1777
        assert m["lib64"].issym() and m["lib64"].linkname == "lib"
        assert m["data/rand-link"].islnk() and m["data/rand-link"].linkname == "data/rand"
        assert m["x/attr"].pax_headers.get("SCHILY.xattr.user.colour") == "blue"
        assert all(x.mtime == 1_700_000_000 and x.uname == "" for x in m.values())
        # every file of `files` gets its own content
        confs = [t.extractfile(m[f"etc/conf.d/f{i:06d}"]).read() for i in range(4)]
        assert len(set(confs)) == 4
    with tarfile.open(store.layer_path(img.layers[1])) as t:
        names = t.getnames()
        assert "data/.wh.zero" in names
        assert "etc/conf.d/.wh..wh..opq" in names
        assert names.index("etc/conf.d/.wh..wh..opq") < names.index("etc/conf.d/new")
        m = {x.name: x for x in t.getmembers()}
        assert m["data/rand"].mode == 0o640  # chmod re-emits the file in the upper layer
        assert (m["x"].uid, m["x/attr"].uid, m["x/attr"].gid) == (1000, 1000, 1000)


@pytest.mark.parametrize(
    "ops,needle",
    [
        ([[{"op": "delete", "path": "/nope"}]], "does not exist"),
        ([[{"op": "file", "path": "/f", "size": 1}, {"op": "file", "path": "/f/g", "size": 1}]], "not a directory"),
        ([[{"op": "file", "path": "/f", "size": 1}, {"op": "opaque", "path": "/f"}]], "only directories"),
        (
            [[{"op": "symlink", "path": "/s", "target": "x"}, {"op": "hardlink", "path": "/h", "target": "/s"}]],
            "symlink",
        ),
    ],
)
def test_model_errors_name_layer_and_op(store, ops, needle):
    sp = spec_of(ops, source="m.toml")
    with pytest.raises(CowlabError, match=needle) as ei:
        store.build(sp)
    assert str(ei.value).startswith("m.toml, layer 1, op ")
    assert store.list() == []


# --- whiteout styles --------------------------------------------------------------------------

WHITEOUT_SPEC = [
    [
        {"op": "file", "path": "/etc/a", "size": 100},
        {"op": "file", "path": "/etc/keep", "size": 100},
        {"op": "files", "dir": "/opq", "count": 2, "size": 10},
        {"op": "files", "dir": "/gone/sub", "count": 1, "size": 10},
    ],
    [
        {"op": "delete", "path": "/etc/a"},
        {"op": "opaque", "path": "/opq"},
        {"op": "file", "path": "/opq/new", "size": 50},
        {"op": "delete", "path": "/gone"},
    ],
]


@pytest.fixture
def wimg(store):
    img = store.build(spec_of(WHITEOUT_SPEC, name="wh"))
    return [store.layer_path(d) for d in img.layers]


def _all_names(root):
    return {os.path.basename(p) for p in listing(root)}


@pytest.mark.root
def test_overlay_style(tmp_path, wimg):
    dest = tmp_path / "upper"
    dest.mkdir()
    layers.apply_tar(wimg[1], dest, "overlay")
    assert is_whiteout(dest / "etc" / "a")
    assert is_whiteout(dest / "gone")
    assert os.getxattr(dest / "opq", "trusted.overlay.opaque") == b"y"
    assert (dest / "opq" / "new").stat().st_size == 50
    assert not any(n.startswith(".wh.") for n in _all_names(dest))
    assert "trusted.overlay.opaque" not in os.listxattr(dest / "etc")
    # the lower layer in overlay style is plain content
    low = tmp_path / "lower"
    low.mkdir()
    layers.apply_tar(wimg[0], low, "overlay")
    assert sorted(os.listdir(low / "opq")) == ["f000000", "f000001"]
    assert (low / "etc" / "a").stat().st_size == 100


@pytest.mark.root
def test_aufs_style_keeps_whiteout_files(tmp_path, wimg):
    dest = tmp_path / "aufs"
    dest.mkdir()
    layers.apply_tar(wimg[1], dest, "aufs")
    assert (dest / "etc" / ".wh.a").is_file()
    assert (dest / ".wh.gone").is_file()
    assert (dest / "opq" / ".wh..wh..opq").is_file()
    assert (dest / "opq" / "new").is_file()
    assert not (dest / "etc" / "a").exists()
    assert "trusted.overlay.opaque" not in os.listxattr(dest / "opq")


@pytest.mark.root
def test_apply_style_carries_out_deletions(tmp_path, wimg):
    dest = tmp_path / "tree"
    dest.mkdir()
    for p in wimg:
        layers.apply_tar(p, dest, "apply")
    assert not os.path.lexists(dest / "etc" / "a")
    assert (dest / "etc" / "keep").stat().st_size == 100
    assert sorted(os.listdir(dest / "opq")) == ["new"]  # lower children gone, this layer's new file kept
    assert (dest / "opq" / "new").stat().st_size == 50
    assert not os.path.lexists(dest / "gone")
    assert not any(n.startswith(".wh.") for n in _all_names(dest))
    for p in listing(dest):
        st = os.lstat(dest / p)
        assert not stat.S_ISCHR(st.st_mode)
    assert "trusted.overlay.opaque" not in os.listxattr(dest / "opq")


NO_LINK = [[op for op in ops if op["op"] != "hardlink"] for ops in RICH]


@pytest.mark.root
def test_apply_style_metadata(tmp_path, store):
    img = store.build(spec_of(NO_LINK, name="rich", seed=3))
    dest = tmp_path / "tree"
    dest.mkdir()
    for d in img.layers:
        layers.apply_tar(store.layer_path(d), dest, "apply")
    rand = dest / "data" / "rand"
    assert stat.S_IMODE(rand.stat().st_mode) == 0o640
    assert rand.stat().st_size == 64 * KiB
    assert stat.S_IMODE((dest / "data" / "rep").stat().st_mode) == 0o600
    assert stat.S_IMODE((dest / "tmp").stat().st_mode) == 0o1777
    assert os.readlink(dest / "lib64") == "lib"
    assert (dest / "x" / "attr").stat().st_uid == 1000 and (dest / "x").stat().st_gid == 1000
    assert os.getxattr(dest / "x" / "attr", "user.colour") == b"blue"
    assert rand.stat().st_mtime == 1_700_000_000
    assert (dest / "etc").stat().st_mtime == 1_700_000_000  # dirs' times set after their children
    assert sorted(os.listdir(dest / "etc" / "conf.d")) == ["new"]
    assert not (dest / "data" / "zero").exists()
    with tarfile.open(store.layer_path(img.layers[0])) as t:
        assert rand.read_bytes() == t.extractfile("data/rand").read()


@pytest.mark.root
@pytest.mark.parametrize("style", ["overlay", "apply", "aufs"])
def test_hardlink_in_a_layer(tmp_path, style):
    # Regression: apply_tar used to check the link *target* as if it were a parent directory,
    # replacing the target file by an empty directory and failing with EPERM.
    p = tmp_path / "l.tar"
    p.write_bytes(
        tar_bytes(
            [
                (ti("d", type=tarfile.DIRTYPE, mode=0o755), None),
                (ti("d/a"), b"content"),
                (ti("d/b", type=tarfile.LNKTYPE, linkname="d/a"), None),
            ]
        )
    )
    dest = tmp_path / "dest"
    dest.mkdir()
    layers.apply_tar(p, dest, style)
    assert (dest / "d" / "a").read_bytes() == b"content"
    assert (dest / "d" / "a").stat().st_ino == (dest / "d" / "b").stat().st_ino
    assert (dest / "d" / "a").stat().st_nlink == 2


@pytest.mark.root
def test_aufs_style_whiteout_removes_the_name_from_its_own_layer(tmp_path):
    """containerd's MoveFileFromLowerLayer: a layer links d/b to d/a, then whites d/a out. In an
    AUFS branch d/a and d/.wh.a can't both be (AUFS: EIO, "both of real entry and whiteout
    found"): the whiteout stays, the name goes, the link keeps the data."""
    p = tmp_path / "l.tar"
    p.write_bytes(
        tar_bytes(
            [
                (ti("d", type=tarfile.DIRTYPE, mode=0o755), None),
                (ti("d/a"), b"content"),
                (ti("d/b", type=tarfile.LNKTYPE, linkname="d/a"), None),
                (ti("d/.wh.a"), b""),
            ]
        )
    )
    dest = tmp_path / "dest"
    dest.mkdir()
    layers.apply_tar(p, dest, "aufs")
    assert sorted(os.listdir(dest / "d")) == [".wh.a", "b"]
    assert (dest / "d" / "b").read_bytes() == b"content"


@pytest.mark.root
def test_hardlink_from_spec(tmp_path, store):
    img = store.build(
        spec_of(
            [
                [
                    {"op": "file", "path": "/bin/busybox", "size": 1000},
                    {"op": "hardlink", "path": "/bin/sh", "target": "/bin/busybox"},
                    {"op": "hardlink", "path": "/sbin/init", "target": "/bin/busybox"},
                ]
            ],
            name="hl",
        )
    )
    dest = tmp_path / "tree"
    dest.mkdir()
    layers.apply_tar(store.layer_path(img.layers[0]), dest, "apply")
    inos = {(dest / p).stat().st_ino for p in ("bin/busybox", "bin/sh", "sbin/init")}
    assert len(inos) == 1 and (dest / "bin" / "sh").stat().st_nlink == 3


def test_unknown_style(tmp_path, wimg):
    with pytest.raises(ValueError):
        layers.apply_tar(wimg[0], tmp_path, "btrfs")


# --- hostile tars --------------------------------------------------------------------------------


def _xfail_if(case, table):
    return [pytest.mark.xfail(strict=True, reason=table[case])] if case in table else []


@pytest.mark.parametrize("case", [pytest.param(c, marks=_xfail_if(c, CHECK_MISSES)) for c in HOSTILE])
def test_check_tar_refuses(tmp_path, case):
    box = tmp_path / "box"
    box_setup(box)
    p = tmp_path / "layer.tar"
    p.write_bytes(hostile_layer(case, box))
    with pytest.raises(CowlabError) as ei:
        layers.check_tar(p, "hostile.tar")
    assert str(ei.value).startswith("hostile.tar"), str(ei.value)
    box_untouched(box)


@pytest.mark.root
@pytest.mark.parametrize("style", ["overlay", "apply"])
@pytest.mark.parametrize("case", [pytest.param(c, marks=_xfail_if(c, APPLY_MISSES)) for c in HOSTILE])
def test_apply_tar_refuses(tmp_path, case, style):
    box = tmp_path / "box"
    box_setup(box)
    p = tmp_path / "layer.tar"
    p.write_bytes(hostile_layer(case, box))
    with pytest.raises(CowlabError) as ei:
        layers.apply_tar(p, box / "dest", style, "hostile.tar")
    assert str(ei.value).startswith("hostile.tar"), str(ei.value)
    box_untouched(box)


DOT_WHITEOUT = (
    "src bug: a whiteout of '.' or '..' (member '.wh..' or '.wh...') is not refused by "
    "layers.check_member; apply_tar then deletes the whiteout's own parent directory and "
    "fails with FileNotFoundError/OSError instead of CowlabError (safe_rmtree keeps it "
    "inside the destination). Fix: in check_member, refuse basenames '.wh..' and '.wh...'"
)


@pytest.mark.root
@pytest.mark.parametrize("name", [".wh...", "d/.wh..", "d/.wh...", "d/e/.wh..."])
@pytest.mark.parametrize("style", ["apply", "overlay"])
def test_whiteout_of_dot_or_dotdot_stays_inside(tmp_path, name, style):
    box = tmp_path / "box"
    box_setup(box)
    p = tmp_path / "layer.tar"
    p.write_bytes(
        tar_bytes(
            [
                (ti("d", type=tarfile.DIRTYPE, mode=0o755), None),
                (ti("d/e", type=tarfile.DIRTYPE, mode=0o755), None),
                (ti(name), b""),
            ]
        )
    )
    try:
        layers.apply_tar(p, box / "dest", style)
    except (CowlabError, OSError):
        pass
    box_untouched(box)


# (DOT_WHITEOUT fixed: check_member refuses '.wh..' and '.wh...')
@pytest.mark.parametrize("name", [".wh...", "d/.wh..", "d/.wh..."])
def test_whiteout_of_dot_or_dotdot_refused(tmp_path, name):
    p = tmp_path / "layer.tar"
    p.write_bytes(tar_bytes([(ti("d", type=tarfile.DIRTYPE, mode=0o755), None), (ti(name), b"")]))
    with pytest.raises(CowlabError):
        layers.check_tar(p, "w")


def test_member_path():
    assert layers.member_path("./a//b/", "w") == "a/b"
    assert layers.member_path("a/./b", "w") == "a/b"
    for bad in ("/etc/passwd", "../x", "a/../../x", "a/.."):
        with pytest.raises(CowlabError, match="^w: member"):
            layers.member_path(bad, "w")


def test_check_tar_counts_content(tmp_path):
    p = tmp_path / "ok.tar"
    p.write_bytes(
        tar_bytes(
            [
                (ti("d", type=tarfile.DIRTYPE, mode=0o755), None),
                (ti("d/a"), b"x" * 1000),
                (ti("d/b"), b"y" * 24),
                (ti("d/l", type=tarfile.SYMTYPE, linkname="/etc"), None),
                (ti("d/h", type=tarfile.LNKTYPE, linkname="d/a"), None),
                (ti("d/fifo", type=tarfile.FIFOTYPE), None),
                (ti("d/cap", pax_headers={"SCHILY.xattr.security.capability": "\x01"}), b""),
                (ti("d/u", pax_headers={"SCHILY.xattr.user.x": "1"}), b""),
            ]
        )
    )
    assert layers.check_tar(p, "ok") == 1024
