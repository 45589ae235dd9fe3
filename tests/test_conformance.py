"""The conformance suite (cowlab.measure.conformance) on every driver, and checks that the suite itself can
tell a broken driver from a good one.

One test per driver in cowlab.storage.drivers.DRIVERS (a new driver is covered by registering it): every
case, compared with a plain directory. Unavailable drivers are skipped with their probe's reason.
Here the 128-layer case is compared at depths 1, 2, 64 and 128; `cowlab conformance` compares a
wider spread and `--every-layer` all 128.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import mounts_under
from cowlab.base import sysutil
from cowlab.base.errors import CowlabError
from cowlab.base.state import StateRoot
from cowlab.measure import conformance as C
from cowlab.storage.drivers import DRIVERS
from cowlab.storage.drivers.base import Container, Probe
from cowlab.storage.drivers.overlay2 import Overlay2
from cowlab.storage.drivers.vfs import Vfs
from cowlab.store import layers
from cowlab.store.images import ImageStore

DEPTHS = (1, 2, 64, 128)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """One state root and image cache for the module: images are built once, for every driver."""
    st_ = StateRoot(tmp_path_factory.mktemp("conformance") / "root").ensure()
    images = C.ImageCache(ImageStore(st_))
    yield st_, images
    images.close()


def _report(results) -> str:
    lines = []
    for r in results:
        if r.status in ("fail", "error"):
            lines.append(f"{r.driver} / {r.case}: {r.status}")
            lines += [f"    {d}" for d in r.details[:25]]
    return "\n".join(lines)


# --- the suite, on every driver ----------------------------------------------------------------

DEEP = "128-layers"
DEEP_BUDGET = 45.0  # seconds the other cases may take on a driver before its deep case is left to the CLI
_elapsed: dict[str, float] = {}


def _run(driver, suite, names):
    state, images = suite
    cls, why = C.available([driver])[0]
    if why:
        pytest.skip(f"{driver} is unavailable here: {why}")
    results = C.run_driver(state, cls, C.cases(names), images, depths=DEPTHS)
    assert [r.case for r in results] == names
    assert not [r for r in results if r.status in ("fail", "error")], _report(results)
    for r in results:  # a skip always says why, and only for a reason the driver gives
        assert r.status in ("pass", "skip", "deviation"), r
        if r.status == "deviation":  # only where the driver documents it, with its reason
            assert r.case in cls.deviations and r.notes
        if r.status == "skip":
            assert r.details and cls.name in r.details[0]
    assert mounts_under(state.path) == []
    assert os.listdir(state.journal) == [] and os.listdir(state.tmp) == []
    return results


@pytest.mark.root
@pytest.mark.parametrize("driver", list(DRIVERS))
def test_conformance(driver, suite):
    """Every case but the deep one."""
    results = _run(driver, suite, [c.name for c in C.CASES if c.name != DEEP])
    _elapsed[driver] = sum(r.seconds for r in results)


@pytest.mark.root
@pytest.mark.parametrize("driver", list(DRIVERS))
def test_conformance_128_layers(driver, suite):
    """The deep case at depths 1, 2, 64 and 128 (where the driver is quick enough for a test run;
    `cowlab conformance --driver NAME --case 128-layers` runs it anywhere)."""
    took = _elapsed.get(driver)
    if took is not None and took > DEEP_BUDGET:
        pytest.skip(
            f"{driver} took {took:.0f} s for the other cases; its 128-layer case is left to "
            f"`cowlab conformance --driver {driver} --case {DEEP}` (nox -s conformance)"
        )
    _run(driver, suite, [DEEP])


def test_every_driver_is_in_the_table():
    rows = {cls.name: why for cls, why in C.available()}
    assert set(rows) == set(DRIVERS)
    for name, why in rows.items():  # unavailable means a reason, never a silent pass
        assert why is None or why.strip(), name


def test_unavailable_driver_is_never_a_pass(suite, monkeypatch):
    state, images = suite
    monkeypatch.setattr(
        Vfs, "probe", classmethod(lambda cls: Probe(False, "switched off for this test", "nothing to do"))
    )
    results = C.run_suite(state, ["vfs"], ["basic", "root-mode"])
    assert [r.status for r in results] == ["unavailable", "unavailable"]
    assert all("switched off for this test" in r.details[0] for r in results)
    assert not any(r.ok and r.status == "pass" for r in results)


# --- the suite tells broken drivers apart ---------------------------------------------------------


class CopyWithoutMetadata(Vfs):
    """A 'vfs' that copies with cp -r: modes (setuid, sticky), owners, hard links and mtimes go."""

    name = "broken-cp-r"

    def create(self, image, res, cid=None):
        cid = cid or self.new_id()
        cdir = self.home / "containers" / cid
        h = res.acquire("dir", lambda: cdir.mkdir(parents=True), path=str(cdir))
        sysutil.run(["cp", "-r", str(self._rootfs(image)), str(cdir / "rootfs")])
        return Container(cid, image.id, self.name, cdir / "rootfs", [h])


class SharedImage(Vfs):
    """A 'vfs' whose containers are bind mounts of the image itself: writes land in the image."""

    name = "broken-shared"

    def create(self, image, res, cid=None):
        cid = cid or self.new_id()
        target = self.home / "containers" / cid
        h1 = res.acquire("dir", lambda: target.mkdir(parents=True), path=str(target))
        h2 = res.acquire(
            "mount", lambda: sysutil.mount(str(self._rootfs(image)), target, "", "", 4096), target=str(target)
        )  # MS_BIND
        return Container(cid, image.id, self.name, target, [h1, h2])


class OverlayWhiteoutsAsFiles(Vfs):
    """A 'vfs' that imports layers in overlay style (0/0 whiteout devices) onto one tree."""

    name = "broken-whiteouts"

    def import_image(self, image):
        if self.has_image(image):
            return
        (self.home / "images").mkdir(exist_ok=True)
        stage = self.staging()
        h = self.res.acquire("dir", lambda: stage.mkdir(), path=str(stage))
        for d in image.layers:
            layers.apply_tar(self.store.layer_path(d), stage, "overlay")
        os.chmod(stage, 0o755)
        os.replace(stage, self._rootfs(image))
        self.res.release(h)


class UndeclaredExdev(Overlay2):
    name = "overlay2-undeclared"

    def metadata(self):
        return {**super().metadata(), "rename_dir": "rename"}


class FalselyDeclaredExdev(Vfs):
    name = "vfs-false-exdev"
    capabilities = Vfs.capabilities | {C.CAP_RENAME_DIR_EXDEV}


def _one(state, images, cls, case):
    r = C.run_driver(state, cls, C.cases([case]), images)[0]
    assert mounts_under(state.path) == []
    return r


@pytest.mark.root
@pytest.mark.parametrize(
    "case, needles",
    [
        (
            "sticky-setuid-base",
            ["/a subdir: owner 0:0, expected 1:2", "/a file: mode 0222, expected 4222", "/a file: mtime"],
        ),
        ("hardlink-groups", ["hard links: /h/a, /h/b, /h/c should be one inode"]),
        ("file-update-mtime", ["/etc/hosts: mtime"]),
        ("chown-lower-tree", ["/opt/app/bin: owner 0:0, expected 1000:1000"]),
    ],
)
def test_suite_catches_lost_metadata(suite, case, needles):
    state, images = suite
    r = _one(state, images, CopyWithoutMetadata, case)
    assert r.status == "fail", r
    text = "\n".join(r.details)
    for n in needles:
        assert n in text, text


@pytest.mark.root
def test_suite_catches_writes_into_the_image(suite):
    state, images = suite
    r = _one(state, images, SharedImage, "readonly-layers")
    assert r.status == "fail", r
    text = "\n".join(r.details)
    assert "image data on disk after writes in a container: images/" in text, text
    assert "a sibling container, after writes in another: /big: content differs" in text, text


@pytest.mark.root
def test_suite_catches_leaked_whiteouts(suite):
    state, images = suite
    r = _one(state, images, OverlayWhiteoutsAsFiles, "deleted-stays-deleted")
    assert r.status == "fail", r
    assert any("unexpected in container: /foobar (chr 0:0, a whiteout leaked" in d for d in r.details), r.details


@pytest.mark.root
def test_exdev_must_be_declared(suite):
    state, images = suite
    if not Overlay2.probe().available:
        pytest.skip("no overlayfs here")
    if Path("/sys/module/overlay/parameters/redirect_dir").read_text().strip() == "Y":
        pytest.skip("this kernel's overlayfs renames lower directories (redirect_dir=Y)")
    r = _one(state, images, UndeclaredExdev, "rename")
    assert r.status == "fail"
    assert any("rename returned EXDEV, which overlay2-undeclared does not declare" in d for d in r.details), r.details
    ok = _one(state, images, Overlay2, "rename")
    assert ok.status == "pass", ok.details
    assert any("returned EXDEV, as overlay2 declares" in n for n in ok.notes)


@pytest.mark.root
def test_declared_exdev_that_renames_fails(suite):
    state, images = suite
    r = _one(state, images, FalselyDeclaredExdev, "rename")
    assert r.status == "fail"
    assert any("declares EXDEV" in d and "succeeded" in d for d in r.details), r.details


# --- compare() and scan() on hand-made trees ------------------------------------------------------


def _tree(root: Path):
    root.mkdir()
    (root / "d").mkdir(mode=0o755)
    (root / "d" / "f").write_bytes(b"data")
    os.link(root / "d" / "f", root / "d" / "g")
    os.symlink("f", root / "d" / "l")
    os.utime(root / "d" / "f", (1_600_000_000, 1_600_000_000))
    os.utime(root / "d" / "l", (1_600_000_000, 1_600_000_000), follow_symlinks=False)
    return root


def test_compare_equal_and_each_kind_of_difference(tmp_path):
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    assert C.compare(a, b) == []
    os.chmod(b / "d", 0o1755)
    os.unlink(b / "d" / "g")
    (b / "d" / "g").write_bytes(b"data")
    os.utime(b / "d" / "g", (1_600_000_000, 1_600_000_000))
    os.unlink(b / "d" / "l")
    os.symlink("g", b / "d" / "l")
    os.utime(b / "d" / "l", (1_600_000_000, 1_600_000_000), follow_symlinks=False)
    os.utime(b / "d" / "f", (1_600_000_001, 1_600_000_001))
    (b / "extra").write_bytes(b"")
    os.setxattr(b / "d" / "f", "user.k", b"v")
    diffs = "\n".join(C.compare(a, b))
    assert "/d: mode 1755, expected 0755" in diffs
    assert "hard links: /d/f, /d/g should be one inode; in the container they are separate inodes" in diffs
    assert "/d/l: symlink to 'g', expected 'f'" in diffs
    assert "/d/f: mtime 2020-09-13T12:26:41, expected 2020-09-13T12:26:40" in diffs
    assert "unexpected in container: /extra (file)" in diffs
    assert "/d/f: user xattrs {'user.k': b'v'}, expected {}" in diffs
    assert C.compare(a, b, mtimes=False, xattrs=False).count("/d/f: mtime") == 0
    (a / "gone").write_bytes(b"x")
    assert "missing in container: /gone (file)" in C.compare(a, b)


@pytest.mark.root
def test_compare_device_and_owner(tmp_path):
    a, b = _tree(tmp_path / "a"), _tree(tmp_path / "b")
    os.mknod(b / "wh", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    os.chown(b / "d" / "f", 5, 6)
    diffs = "\n".join(C.compare(a, b))
    assert "/wh (chr 0:0, a whiteout leaked into the container)" in diffs
    assert "/d/f: owner 5:6, expected 0:0" in diffs


def test_unknown_case_is_an_error():
    with pytest.raises(CowlabError, match="unknown conformance case 'nope'; cases: basic"):
        C.cases(["nope"])


def test_case_depths():
    deep = C.cases(["128-layers"])[0]
    assert deep.ks(depths=DEPTHS) == [1, 2, 64, 128]
    assert deep.ks(every_layer=True) == list(range(1, 129))
    assert 127 in deep.ks() and 128 in deep.ks()
    assert C.cases(["empty-layer"])[0].ks() == [1, 2, 3, 4]


# --- the two implementations of the spec agree on random specs ------------------------------------
# The oracle (reference_apply: spec ops as system calls) against the pipeline every snapshot driver
# uses (spec model → layer tars → apply_tar "apply"). Generated specs are valid by construction.

NAMES = ["/a", "/b", "/a/x", "/a/y", "/b/x", "/a/x/p", "/a/x/q", "/b/x/p"]


@st.composite
def specs(draw):
    kinds: dict[str, str] = {}  # path → file/dir/symlink, as the spec says so far

    def parent_ok(p):
        par = p.rsplit("/", 1)[0]
        while par:
            if kinds.get(par, "dir") != "dir":
                return False
            par = par.rsplit("/", 1)[0]
        return True

    def drop(p):
        for q in [q for q in kinds if q == p or q.startswith(p + "/")]:
            del kinds[q]

    def make_parents(p):
        par = p.rsplit("/", 1)[0]
        while par:
            kinds.setdefault(par, "dir")
            par = par.rsplit("/", 1)[0]

    layers_ = []
    for _ in range(draw(st.integers(1, 4))):
        ops = []
        for _ in range(draw(st.integers(0, 5))):
            kind = draw(
                st.sampled_from(
                    ["file", "file", "dir", "symlink", "hardlink", "delete", "opaque", "chmod", "chown", "chown"]
                )
            )
            existing = sorted(kinds)
            if kind in ("delete", "chmod", "chown", "opaque", "hardlink") and not existing:
                kind = "file"
            if kind == "file":
                p = draw(st.sampled_from(NAMES))
                if not parent_ok(p):
                    continue
                op = {
                    "op": "file",
                    "path": p,
                    "size": draw(st.integers(0, 300)),
                    "mode": draw(st.sampled_from(["0644", "0600", "4755", "2711", "0444"])),
                    "uid": draw(st.integers(0, 3)),
                    "gid": draw(st.integers(0, 3)),
                }
                if draw(st.booleans()):
                    op["mtime"] = draw(st.integers(1_500_000_000, 1_600_000_000))
                drop(p), make_parents(p)
                kinds[p] = "file"
            elif kind == "dir":
                p = draw(st.sampled_from(NAMES))
                if not parent_ok(p):
                    continue
                op = {
                    "op": "dir",
                    "path": p,
                    "mode": draw(st.sampled_from(["0755", "0700", "1777", "2750"])),
                    "uid": draw(st.integers(0, 3)),
                }
                if kinds.get(p) != "dir":
                    drop(p)
                make_parents(p)
                kinds[p] = "dir"
            elif kind == "symlink":
                p = draw(st.sampled_from(NAMES))
                if not parent_ok(p):
                    continue
                op = {"op": "symlink", "path": p, "target": draw(st.sampled_from(["x", "/a", "../b", "nowhere"]))}
                drop(p), make_parents(p)
                kinds[p] = "symlink"
            elif kind == "hardlink":
                files = [q for q in existing if kinds[q] == "file"]
                p = draw(st.sampled_from(NAMES))
                if not files or not parent_ok(p):
                    continue
                t = draw(st.sampled_from(files))
                if t == p or t.startswith(p + "/"):
                    continue
                op = {"op": "hardlink", "path": p, "target": t}
                drop(p), make_parents(p)
                kinds[p] = "file"
            elif kind == "delete":
                p = draw(st.sampled_from(existing))
                op = {"op": "delete", "path": p}
                drop(p)
            elif kind == "opaque":
                dirs = [q for q in existing if kinds[q] == "dir"]
                if not dirs:
                    continue
                p = draw(st.sampled_from(dirs))
                op = {"op": "opaque", "path": p}
                drop(p)
                kinds[p] = "dir"
            elif kind == "chmod":
                p = draw(st.sampled_from(existing))
                op = {"op": "chmod", "path": p, "mode": draw(st.sampled_from(["0600", "0755", "4711", "1700"]))}
            else:
                p = draw(st.sampled_from(existing))
                op = {
                    "op": "chown",
                    "path": p,
                    "uid": draw(st.integers(0, 3)),
                    "gid": draw(st.integers(0, 3)),
                    "recursive": draw(st.booleans()),
                }
            ops.append(op)
        layers_.append({"ops": ops})
    return {"name": "fuzz", "seed": draw(st.integers(0, 3)), "layers": layers_}


@pytest.mark.root
@settings(max_examples=60, deadline=None)
@given(specs())
def test_reference_and_layer_pipeline_agree(tmp_path_factory, d):
    from cowlab.store.spec import from_dict

    sp = from_dict(d, "<fuzz>")
    base = tmp_path_factory.mktemp("agree")
    state = StateRoot(base / "root").ensure()
    img = ImageStore(state).build(sp)
    applied = base / "applied"
    applied.mkdir()
    os.chmod(applied, 0o755)
    for digest in img.layers:
        layers.apply_tar(ImageStore(state).layer_path(digest), applied, "apply")
    oracle = base / "oracle"
    oracle.mkdir()
    C.reference_apply(sp, oracle)
    assert C.compare(oracle, applied) == [], d
