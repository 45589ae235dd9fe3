"""Hostile and bad input, beyond what test_layers.py / test_images.py / test_cli.py already cover
(their hostile member list: absolute and '..' paths, symlink and hard-link escapes inside one
layer, device nodes, truncated or non-tar data, forbidden xattrs, malformed manifests).

Here: absurd sizes (a header claiming 1 TiB, a sparse member claiming 1 TiB), escapes that span
two layers, imported and then unpacked by every driver; hypothesis fuzzing of the archive importer
(mutated docker-save and OCI archives) and of layer tars (random hostile members); and the CLI's
error paths of the foundation issue ("Bad input") for every driver. Each must end in one readable
error (CowlabError / one line, no traceback) with nothing written outside the state root and no
mount, loop device or staging file left.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import loops_under, mounts_under, run_cli
from cowlab.base.errors import CowlabError
from cowlab.base.state import StateRoot
from cowlab.measure import conformance as C
from cowlab.storage.drivers import DRIVERS
from cowlab.store import layers
from cowlab.store.images import ImageStore
from helpers import box_setup, box_untouched, docker_archive, oci_archive, simple_layer, tar_bytes, ti, tree_fingerprint

TiB = 1 << 40


def _nothing_imported(state: StateRoot) -> None:
    assert os.listdir(state.tmp) == [], os.listdir(state.tmp)
    assert os.listdir(state.layers) == [], os.listdir(state.layers)
    assert os.listdir(state.images) == []


# --- absurd sizes ----------------------------------------------------------------------------


def sparse_layer(realsize: int = TiB) -> bytes:
    """A PAX (GNU 0.1) sparse member: 10 bytes of data claiming `realsize` bytes once unpacked."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = ti("big")
        info.size = 10
        info.pax_headers = {"GNU.sparse.size": str(realsize), "GNU.sparse.map": "0,10"}
        t.addfile(info, io.BytesIO(b"x" * 10))
    return buf.getvalue()


def huge_header_layer() -> bytes:
    """A member whose PAX header claims 1 TiB, followed by 4 KiB of data and nothing else."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = ti("huge")
        info.size = 4096
        info.pax_headers = {"size": str(TiB)}
        t.addfile(info, io.BytesIO(b"y" * 4096))
    return buf.getvalue()


@pytest.mark.parametrize(
    "make, needle", [(sparse_layer, "sparse member"), (huge_header_layer, "")], ids=["sparse 1 TiB", "header 1 TiB"]
)
def test_absurd_size_in_a_layer(tmp_path, store, state, make, needle):
    box = tmp_path / "box"
    box_setup(box)
    p = tmp_path / "l.tar"
    p.write_bytes(make())
    with pytest.raises(CowlabError, match=needle) as ei:
        layers.check_tar(p, "huge.tar")
    assert str(ei.value).startswith("huge.tar")
    arch = tmp_path / "a.tar"
    arch.write_bytes(docker_archive([simple_layer({"ok": b"fine"}), make()]))
    with pytest.raises(CowlabError) as ei:
        store.import_archive(arch)
    assert str(ei.value).startswith(str(arch))
    _nothing_imported(state)  # the good first layer was stored, then taken back
    if os.geteuid() == 0:
        for style in ("overlay", "apply"):
            with pytest.raises(CowlabError):
                layers.apply_tar(p, box / "dest", style, "huge.tar")
    box_untouched(box)
    assert sum(f.stat().st_size for f in (box / "dest").rglob("*") if f.is_file()) < 1 << 20


def test_archive_member_claiming_1_tib(tmp_path, store, state):
    """The outer archive's layer member says 1 TiB: refused up front by the space check (or as
    truncated), without copying anything."""
    good = docker_archive([simple_layer({"a": b"1"})])
    buf = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(good)) as src,
        tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as dst,
    ):
        for m in src:
            data = src.extractfile(m).read() if m.isreg() else None
            if m.name.endswith("layer.tar"):
                m.pax_headers = {"size": str(TiB)}
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    arch = tmp_path / "a.tar"
    arch.write_bytes(buf.getvalue())
    with pytest.raises(CowlabError) as ei:
        store.import_archive(arch)
    assert str(ei.value).startswith(str(arch))
    assert "MiB" in str(ei.value) or "truncated" in str(ei.value) or "corrupt" in str(ei.value)
    _nothing_imported(state)


# --- escapes that span two layers, unpacked by every driver --------------------------------------


def _two_layer_escapes(box: Path) -> dict[str, list[bytes]]:
    return {
        "symlink out, then a file through it a layer up": [
            tar_bytes([(ti("link", type=tarfile.SYMTYPE, linkname=str(box / "outside")), None)]),
            tar_bytes([(ti("link", type=tarfile.DIRTYPE, mode=0o755), None), (ti("link/pwned"), b"evil")]),
        ],
        "relative symlink out, then a file through it": [
            tar_bytes(
                [
                    (ti("d", type=tarfile.DIRTYPE, mode=0o755), None),
                    (
                        ti(
                            "d/up",
                            type=tarfile.SYMTYPE,
                            linkname="../../../../../../../../../../" + str(box / "outside").lstrip("/"),
                        ),
                        None,
                    ),
                ]
            ),
            tar_bytes([(ti("d/up/pwned"), b"evil")]),
        ],
        "hard link to a lower layer's file": [
            simple_layer({"etc/a": b"lower"}),
            tar_bytes([(ti("x", type=tarfile.LNKTYPE, linkname="etc/a"), None)]),
        ],
        "hard link through a lower symlink": [
            tar_bytes([(ti("link", type=tarfile.SYMTYPE, linkname=str(box)), None)]),
            tar_bytes([(ti("h", type=tarfile.LNKTYPE, linkname="link/x"), None)]),
        ],
    }


ESCAPES = list(_two_layer_escapes(Path("/x")))


@pytest.mark.root
@pytest.mark.parametrize("driver", list(DRIVERS))
def test_two_layer_escapes_on_every_driver(tmp_path, driver):
    cls, why = C.available([driver])[0]
    if why:
        pytest.skip(f"{driver} is unavailable here: {why}")
    box = tmp_path / "box"
    box_setup(box)
    state = StateRoot(tmp_path / "root").ensure()
    images = C.ImageCache(ImageStore(state))
    outcomes = {}
    with C.DriverSession(state, cls, images) as s:
        for case, layer_list in _two_layer_escapes(box).items():
            arch = tmp_path / f"{abs(hash(case))}.tar"
            arch.write_bytes(docker_archive(layer_list))
            try:
                img = images.store.import_archive(arch, name=f"evil-{abs(hash(case))}")
            except CowlabError as e:
                outcomes[case] = f"refused at import: {e}"
                continue
            try:  # refused, or unpacked (e.g. a dir over a lower symlink) inside the container
                s.drv.import_image(img)
                c = s.drv.create(img, s.res)
                s.drv.remove(c, s.res)
                outcomes[case] = "unpacked inside the container"
            except CowlabError as e:
                outcomes[case] = f"refused by the driver: {e}"
            finally:
                if s.drv.has_image(img):
                    s.drv.remove_image(img)
                images.store.remove(img.name)
            box_untouched(box)
    assert s.errors == []
    box_untouched(box)
    assert mounts_under(tmp_path) == [] and loops_under(tmp_path) == []
    assert os.listdir(state.tmp) == [] and os.listdir(state.journal) == []
    assert "evil" not in "".join(os.listdir(box / "outside"))


# --- fuzz: the archive importer ------------------------------------------------------------------


def _base_archives() -> list[bytes]:
    l1 = simple_layer({"etc/a": b"a" * 700, "usr/b": b"b" * 1300})
    l2 = tar_bytes(
        [
            (ti("etc/.wh.a"), b""),
            (ti("usr", type=tarfile.DIRTYPE, mode=0o755), None),
            (ti("usr/.wh..wh..opq"), b""),
            (ti("usr/c"), b"c" * 10),
        ]
    )
    return [
        docker_archive([l1, l2]),
        oci_archive([l1, l2], gzip_layers={1}, ref="fz:1"),
        oci_archive([l1], nested_index=True),
    ]


BASES = None


def _bases():
    global BASES
    if BASES is None:
        BASES = _base_archives()
    return BASES


JUNK_JSON = [
    b"[]",
    b"{}",
    b"null",
    b"[1]",
    b'[{"Layers": 5}]',
    b'[{"Layers": [1, 2]}]',
    b'[{"Layers": ["../../x"]}]',
    b'[{"Layers": ["/etc/passwd"]}]',
    b'[{"RepoTags": 7, "Layers": []}]',
    b'{"manifests": [5]}',
    b'{"manifests": [{"digest": 5}]}',
    b'{"manifests": "x"}',
    b"\xff\xfe",
    b'[{"Layers": ["manifest.json"]}]',
    b'{"manifests": [{"digest": "sha256:' + b"a" * 64 + b'"}]}',
]


@st.composite
def mutated_archives(draw):
    raw = bytearray(draw(st.sampled_from(_bases())))
    how = draw(st.sampled_from(["truncate", "flip", "junk-json", "insert", "zero-block"]))
    if how == "truncate":
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(raw) - 1))
            raw[i] = draw(st.integers(0, 255))
    elif how == "junk-json":  # replace manifest.json / index.json with junk of the same tar layout
        junk = draw(st.sampled_from(JUNK_JSON))
        name = "manifest.json" if b"manifest.json" in raw[: 512 * 4] else "index.json"
        src = tarfile.open(fileobj=io.BytesIO(bytes(raw)))
        members = [(m, src.extractfile(m).read() if m.isreg() else None) for m in src]
        out = []
        for m, data in members:
            if m.name == name:
                data = junk
            out.append((m, data))
        raw = bytearray(tar_bytes(out))
    elif how == "insert":  # a hostile member appended to the outer archive
        kind = draw(st.sampled_from(["dotdot", "abs", "symlink", "hardlink", "dev"]))
        src = tarfile.open(fileobj=io.BytesIO(bytes(raw)))
        members = [(m, src.extractfile(m).read() if m.isreg() else None) for m in src]
        extra = {
            "dotdot": (ti("../evil"), b"x"),
            "abs": (ti("/tmp/evil-abs"), b"x"),
            "symlink": (ti("manifest.json", type=tarfile.SYMTYPE, linkname="/etc/passwd"), None),
            "hardlink": (ti("l2", type=tarfile.LNKTYPE, linkname="/etc/passwd"), None),
            "dev": (ti("null", type=tarfile.CHRTYPE, devmajor=1, devminor=3), None),
        }[kind]
        pos = draw(st.integers(0, len(members)))
        members.insert(pos, extra)
        raw = bytearray(tar_bytes(members))
    else:
        i = draw(st.integers(0, max(0, len(raw) // 512 - 1)))
        raw[i * 512 : (i + 1) * 512] = bytes(512)
    return bytes(raw)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(data=mutated_archives())
def test_fuzz_importer(tmp_path_factory, data):
    base = tmp_path_factory.mktemp("fz")
    box = base / "box"
    box_setup(box)
    state = StateRoot(base / "root").ensure()
    store = ImageStore(state)
    arch = base / "a.tar"
    arch.write_bytes(data)
    before = tree_fingerprint(box)
    try:
        img = store.import_archive(arch)
    except CowlabError as e:
        assert str(e).startswith(str(arch)), str(e)
        assert "\n" not in str(e)
        _nothing_imported(state)
    else:  # whatever got in passed every check: its layers are readable tars without escapes
        assert os.listdir(state.tmp) == []
        for d in img.layers:
            layers.check_tar(store.layer_path(d), "stored")
    assert tree_fingerprint(box) == before
    assert not os.path.lexists("/tmp/evil-abs")
    shutil.rmtree(base)


# --- fuzz: layer tars with hostile members -------------------------------------------------------

NAMES = [
    "a",
    "a/b",
    "a/b/c",
    "..",
    "../x",
    "a/../../x",
    "/abs",
    "./a",
    "a//b",
    ".wh.a",
    "a/.wh.b",
    "a/.wh..wh..opq",
    ".wh..wh..opq",
    "l",
    "l/x",
    "l/x/y",
    "a/l",
    "a/l/z",
    ".wh..",
    "a/.wh...",
    "",
]
LINKS = ["a", "a/b", "../outside", "/", "/etc/passwd", "l", "l/x", "", "../../x"]


@st.composite
def hostile_tars(draw):
    members = []
    for _ in range(draw(st.integers(1, 7))):
        name = draw(st.sampled_from(NAMES))
        kind = draw(st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo", "chr", "file"]))
        info = ti(name or "x")
        if kind == "file":
            members.append((info, draw(st.binary(max_size=40))))
            continue
        info.type = {
            "dir": tarfile.DIRTYPE,
            "symlink": tarfile.SYMTYPE,
            "hardlink": tarfile.LNKTYPE,
            "fifo": tarfile.FIFOTYPE,
            "chr": tarfile.CHRTYPE,
        }[kind]
        info.mode = 0o755
        if kind in ("symlink", "hardlink"):
            info.linkname = draw(st.sampled_from(LINKS))
        members.append((info, None))
    raw = tar_bytes(members)
    if draw(st.integers(0, 5)) == 0:
        raw = raw[: draw(st.integers(1, len(raw)))]
    return raw


@pytest.mark.root
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=hostile_tars(), style=st.sampled_from(["overlay", "apply", "aufs"]))
def test_fuzz_layer_apply(tmp_path_factory, data, style):
    base = tmp_path_factory.mktemp("lz")
    box = base / "box"
    box_setup(box)
    (box / "dest" / "l").symlink_to(box / "outside")  # a symlink from a lower layer (apply style)
    p = base / "l.tar"
    p.write_bytes(data)
    checked = True
    try:
        layers.check_tar(p, "fz")
    except CowlabError:
        checked = False
    try:
        layers.apply_tar(p, box / "dest", style, "fz")
    except CowlabError as e:
        assert str(e).startswith("fz")
    else:
        assert checked, "apply_tar took a layer check_tar refuses"
    box_untouched(box, extra=set())
    shutil.rmtree(base)


# --- the CLI's error paths, for every driver -----------------------------------------------------


def assert_one_line_error(cp: subprocess.CompletedProcess, *needles: str) -> None:
    assert cp.returncode != 0, (cp.stdout, cp.stderr)
    assert "Traceback" not in cp.stderr + cp.stdout, cp.stderr
    assert "internal error" not in cp.stderr, cp.stderr
    lines = [x for x in cp.stderr.splitlines() if x.strip() and not x.startswith("mode: ")]
    assert len(lines) == 1 and lines[0].startswith("cowlab: error: "), cp.stderr
    for n in needles:
        assert "".join(n.split()) in "".join(cp.stderr.split()), (n, cp.stderr)


@pytest.fixture
def tiny_root(tmp_path):
    """A state root on a 160 MiB ext4 loop filesystem: little free space to run out of."""
    if not shutil.which("mkfs.ext4") and not os.path.exists("/sbin/mkfs.ext4"):
        pytest.skip("mkfs.ext4 is not installed")
    img, mnt = tmp_path / "tiny.img", tmp_path / "tiny"
    with open(img, "wb") as f:
        f.truncate(160 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True, capture_output=True)
    mnt.mkdir()
    dev = subprocess.run(
        ["losetup", "--find", "--show", str(img)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        subprocess.run(["mount", dev, str(mnt)], check=True, capture_output=True)
        try:
            yield mnt / "root"
        finally:
            subprocess.run(["umount", str(mnt)], check=True, capture_output=True)
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


BIG_SPEC = """\
name = "too-big"
[[layers]]
ops = [{ op = "file", path = "/big", size = "400MiB" }]
"""


_HELP = None


def _bench_args(driver: str) -> list[str]:
    global _HELP
    if _HELP is None:
        _HELP = run_cli("bench", "--help").stdout
    extra = ["--mode", "primitive"] if "--mode" in _HELP else []
    extra += ["--vm", "never"] if "--vm" in _HELP else []
    return ["bench", driver, "--quick", *extra]


@pytest.mark.root
def test_unknown_driver_lists_the_drivers(root_dir):
    for args in (
        ["bench", "nope", "--quick"],
        ["container", "create", "x", "--driver", "nope"],
        ["conformance", "--driver", "nope"],
    ):
        cp = run_cli(*args, root=root_dir)
        assert_one_line_error(cp, "unknown driver 'nope'", *list(DRIVERS)[:3])
    assert not root_dir.exists()


@pytest.mark.root
def test_cli_error_paths_for_every_driver(tmp_path, tiny_root):
    """For every driver: unavailable → reason and hint; a run larger than the free space (a tiny
    loop filesystem as state root); an image over the driver's layer limit. Each is one line,
    before any work, with nothing left behind. (An image larger than the free space is refused
    by `image build`, whatever the driver.)"""
    spec = tmp_path / "big.toml"
    spec.write_text(BIG_SPEC)
    cp = run_cli("image", "build", str(spec), root=tiny_root)
    assert_one_line_error(cp, "building too-big needs about", "MiB")
    st = StateRoot(tiny_root)
    assert os.listdir(st.layers) == [] and os.listdir(st.tmp) == [] and os.listdir(st.images) == []
    limits = sorted({cls.max_layers for cls in DRIVERS.values() if cls.max_layers and cls.max_layers < 600})
    for n in limits:  # one image per distinct limit, one layer over it
        many = tmp_path / f"many{n}.toml"
        many.write_text(
            f'name = "many{n}"\n'
            + "".join(f'[[layers]]\nops = [{{ op = "file", path = "/l{i}", size = 1 }}]\n' for i in range(n + 1))
        )
        cp = run_cli("image", "build", str(many), root=tiny_root)
        assert cp.returncode == 0, cp.stderr
    before = tree_fingerprint(tiny_root)
    seen = {}
    for driver, cls in DRIVERS.items():
        probe = cls.probe()
        if not probe.available:
            cp = run_cli("container", "create", "x", "--driver", driver, root=tiny_root)
            assert_one_line_error(cp, f"driver {driver} is unavailable", probe.reason[:30])
            # (--vm never: where the kernel VM could run it, `auto` would boot one; this checks
            # the error a driver that can't run here gives)
            cp = run_cli("conformance", "--driver", driver, "--case", "basic", "--vm", "never", root=tiny_root)
            assert cp.returncode == 1 and "unavailable" in cp.stdout + cp.stderr, cp.stderr
            seen[driver] = "unavailable"
            continue
        cp = run_cli(*_bench_args(driver), root=tiny_root)  # the whole run cannot fit
        assert_one_line_error(cp, "needs about", "MiB")
        seen[driver] = "no space"
        if cls.max_layers and cls.max_layers < 600:
            n = cls.max_layers + 1
            cp = run_cli("container", "create", f"many{cls.max_layers}", "--driver", driver, root=tiny_root)
            assert_one_line_error(cp, f"has {n} layers", f"at most {cls.max_layers}")
            seen[driver] += ", over the layer limit"
        assert not any(p.name.startswith("ctr-") for p in st.journal.iterdir()), driver
        assert [m for m in mounts_under(tiny_root)] == [], driver
        assert loops_under(tiny_root) == [], driver
    assert set(seen) == set(DRIVERS)
    after = tree_fingerprint(tiny_root)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    # nothing but the marker (touched), the journal (made and emptied) and persistent driver homes
    assert all(k.split("/")[0] in (".", ".cowlab-root", "journal", "store") for k in changed), changed
    assert not any(k.startswith("journal/") for k in after), after.keys()


@pytest.mark.parametrize("style", ["overlay", "apply", "aufs"])
def test_whiteout_that_is_not_a_marker_is_refused(tmp_path, style):
    """Found by test_fuzz_layer_apply: an opaque marker recorded as a hard link to another path
    was taken by apply_tar (which only looks at the name) while check_tar refused it. A whiteout
    is an empty regular file (or, from AUFS, a hard link to another whiteout); anything else is
    refused the same way by both."""

    def layer(kind):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            d = tarfile.TarInfo("a")
            d.type, d.mode = tarfile.DIRTYPE, 0o755
            t.addfile(d)
            f = tarfile.TarInfo("a/b")
            t.addfile(f, io.BytesIO(b""))
            w = tarfile.TarInfo("a/.wh..wh..opq")
            if kind == "link":
                w.type, w.linkname = tarfile.LNKTYPE, "a/b"
            elif kind == "symlink":
                w.type, w.linkname = tarfile.SYMTYPE, "b"
            t.addfile(w, io.BytesIO(b"") if kind == "file" else None)
        p = tmp_path / f"{kind}.tar"
        p.write_bytes(buf.getvalue())
        return p

    for kind in ("link", "symlink"):
        p = layer(kind)
        with pytest.raises(CowlabError, match="is not a regular file"):
            layers.check_tar(p, "t")
        dest = tmp_path / f"dest-{kind}-{style}"
        dest.mkdir()
        with pytest.raises(CowlabError, match="is not a regular file"):
            layers.apply_tar(p, dest, style, "t")
    layers.check_tar(layer("file"), "t")  # the ordinary marker still passes
