"""Conformance: does a driver's container root behave like a plain directory?

A benchmark of a union is only worth its numbers if the union behaves like a container's root
filesystem. This suite, in the spirit of containerd's snapshotter test suite and moby's
graphdriver tests (written from their ideas, not their code), builds images from spec ops, lets a
driver import them and create containers, and compares what the container shows with an oracle:
a plain directory on the host's filesystem.

The oracle
----------
Each case is data: a list of layers (spec op dicts, built with `spec.from_dict` and
`ImageStore.build`, exactly as a user's spec is) plus container-side actions. The oracle applies
the *spec ops themselves* to a plain directory with ordinary system calls (`reference_apply`
below: mkdir, open/write, link, rename, chmod, chown, setxattr, utime; deletions and opaque
directories carried out in place). It does not read the layer tars.

Why not `layers.apply_tar(style="apply")` on the same tars? Because then the oracle would share
everything that can be wrong before a driver sees a byte: the spec model that decides which
entries a layer carries, the tar writer, whiteout and opaque translation, hard-link emission and
the applier itself, which is *also* how the vfs driver (and every snapshot driver) builds its
images. A bug there would make vfs agree with the oracle by construction and would be invisible.
An independent reference implementation of the spec's meaning checks the whole pipeline
(spec → model → tar → import → mount) end to end; what the two share is only the definition of
file content (`content.Content`) and of default seeds, which are the spec's meaning. The price
is that the reference has to state the spec's semantics exactly, which is documented here:

- every op replaces what is at its path (a file over a directory removes the directory);
  missing parent directories are created 0755, owned 0:0; the image root is 0755, 0:0;
- `file` makes a new inode (other hard links to the old one keep the old content);
- `chmod`/`chown` edit metadata of the inode (all of its hard links see it), and modes are kept
  exactly as declared: a spec states the image's metadata, so `chown` does not clear setuid the
  way chown(2) does;
- `delete` removes a path (recursively); `opaque` empties a directory.

What is compared
----------------
Every path of both trees: type, permission bits including setuid/setgid/sticky, uid/gid, size
and content (sha256) of files, symlink targets, device numbers, the mtime of non-directories
(directory mtimes change with every entry a layer adds, so no two correct implementations agree
on them), user.* xattrs when the driver declares the `xattrs` capability, and hard-link groups:
paths that share an inode in the oracle must share one in the container and vice versa (st_nlink
itself is not compared: a union reports the link count of the lower inode, which counts links the
union hides).

Container-side actions run on the container and on a copy of the oracle; their outcomes (success
or errno) must agree. One documented exception: a driver may declare that renaming a directory
that comes from an image layer fails with EXDEV (overlayfs without `redirect_dir`), by the
capability `rename_dir_exdev` or by `metadata()["rename_dir"] == "exdev"`. The suite then asserts
exactly that (EXDEV, nothing changed), moves the directory as mv(1) does after EXDEV (`cp -a`,
then remove the source) and the trees must agree again. A driver that returns EXDEV without
declaring it fails, and so does one that declares it but renames.

Every case also checks that the container root is mode 0755 owned by 0:0. The suite runs the
driver under umask 0 (as containerd's suite does): a driver must set modes itself, not inherit
them from whoever runs cowlab.

`cowlab conformance [--driver NAME ...]` runs it on every driver available here; drivers come
from `cowlab.storage.drivers.DRIVERS` and their probe(), so a new driver is covered by registering it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import stat
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from cowlab.storage import backing as B
from cowlab.base import sysutil
from cowlab.store.content import Content
from cowlab.storage.drivers import DRIVERS
from cowlab.storage.drivers.base import Container, Driver, Probe
from cowlab.base.errors import CowlabError
from cowlab.store.images import Image, ImageStore
from cowlab.store.layers import file_seed
from cowlab.base.resources import Resources
from cowlab.store.spec import ImageSpec, from_dict
from cowlab.base.state import StateRoot

T0 = 1_600_000_000          # base mtime of the cases' ops
SPEC_MTIME = 1_700_000_000  # the spec's own mtime (spec.from_dict default)
MAX_DIFFS = 12              # differences reported per comparison
LOOP_SIZE = 4 << 30         # sparse loop filesystem for drivers that need their own backing
CAP_XATTRS = "xattrs"
CAP_RENAME_DIR_EXDEV = "rename_dir_exdev"


# ================================================================================================
# Cases as data
# ================================================================================================

@dataclass
class Act:
    """A container-side action: op is a method of Actor (write, append, mkdir, remove, rename,
    link, symlink, chmod, chown, chown_r, setxattr, utime, truncate), or "check" (compare now),
    or "tick" (sleep to the next second boundary)."""
    op: str
    args: dict = field(default_factory=dict)

    def __str__(self) -> str:
        a = ", ".join(f"{k}={v!r}" if not isinstance(v, bytes) else f"{k}=<{len(v)} bytes>"
                      for k, v in self.args.items())
        return f"{self.op}({a})"


def act(op: str, **args) -> Act:
    return Act(op, args)


@dataclass
class Case:
    name: str
    doc: str
    layers: list[list[dict]]
    actions: list[Act] = field(default_factory=list)
    prefixes: tuple[int, ...] | None = None  # images of the first k layers to compare; None: auto
    checks: tuple[str, ...] = ()             # extra checks by name (see CHECKS)
    readable: tuple[str, ...] = ()           # paths read fully through the final container
    needs: frozenset[str] = frozenset()      # driver capabilities without which the case is skipped

    def spec(self, k: int | None = None) -> ImageSpec:
        n = len(self.layers) if k is None else k
        return from_dict({"name": f"conformance-{self.name}-{n}of{len(self.layers)}", "seed": 5,
                          "mtime": SPEC_MTIME,
                          "layers": [{"ops": ops} for ops in self.layers[:n]]}, f"<conformance {self.name}>")

    def ks(self, every_layer: bool = False, depths: Iterable[int] | None = None) -> list[int]:
        """Depths k (images of the first k layers) compared: every one for short cases (or
        with every_layer), a spread for deep ones (`depths` overrides the spread)."""
        n = len(self.layers)
        if self.prefixes is not None and not every_layer:
            return sorted({k for k in self.prefixes if 1 <= k <= n} | {n})
        if every_layer or n <= 8:
            return list(range(1, n + 1))
        spread = depths or (1, 2, 3, 4, 8, 16, 32, 64, n // 2, n - 1, n)
        return sorted({k for k in spread if 1 <= k <= n} | {n})


def _f(path: str, size: int = 16, **kw) -> dict:
    return {"op": "file", "path": path, "size": size, **kw}


def _d(path: str, **kw) -> dict:
    return {"op": "dir", "path": path, **kw}


def _many_layers(n: int = 128) -> list[list[dict]]:
    """moby's deep-layer idea: every layer overwrites one file, adds one and replaces a directory."""
    out = []
    for i in range(n):
        ops = []
        if i == 0:
            ops += [_d("/base"), _f("/base/keep", 4096 + 7, pattern="text", mode="0444")]
        ops += [_f("/top-id", 16, seed=1000 + i, mtime=T0 + i),          # overwritten
                _f(f"/files/f-{i:03d}", 32 + i)]                         # added
        if i:
            ops.append({"op": "delete", "path": "/cur"})                 # replaced
        ops += [_d("/cur", mode="0750" if i % 2 else "0755", uid=i), _f(f"/cur/from-{i:03d}", 8)]
        out.append(ops)
    return out


CASES: list[Case] = [
    Case("basic", "files, dirs and a symlink in a base layer; an upper layer adds, overwrites and "
         "deletes a subtree; the container writes, appends, deletes and recreates",
         [[_f("/foo", 4, mode="0777"), _d("/a"), _d("/a/b"), _d("/a/b/c"), _f("/a/b/c/deep", 100),
           {"op": "symlink", "path": "/lnk", "target": "foo"}],
          [_f("/bar", 4, mode="0777"), _f("/foo", 4, mode="0777", seed=2), {"op": "delete", "path": "/a/b"}]],
         [act("write", path="/new", data=b"hello\n"), act("append", path="/foo", data=b"x"),
          act("remove", path="/bar"), act("check"),
          act("mkdir", path="/a/b", mode=0o755), act("write", path="/a/b/x", data=b"again"),
          act("remove", path="/lnk")]),

    Case("file-update-mtime", "a file overwritten in three upper layers with the same size, across "
         "second boundaries and twice within one second; then twice in the container across a real "
         "second boundary",
         [[_d("/etc"), _f("/etc/hosts", 20, seed=1, mtime=T0)],
          [_f("/etc/hosts", 20, seed=2, mtime=T0 + 1)],
          [_f("/etc/hosts", 20, seed=3, mtime=T0 + 2)],
          [_f("/etc/hosts", 20, seed=4, mtime=T0 + 2)]],
         [act("write", path="/etc/hosts", data=b"mydomain 10.0.0.1 \n"), act("check"), act("tick"),
          act("write", path="/etc/hosts", data=b"mydomain 10.0.0.2 \n"), act("check"),
          act("utime", path="/etc/hosts", t=T0 + 3)]),

    Case("dir-recreated", "a directory removed in a lower layer and recreated with new content "
         "two layers up: the old content stays hidden; the container does it again",
         [[_d("/lib"), _f("/lib/a"), _f("/lib/b"), _d("/lib/sub"), _f("/lib/sub/c")],
          [{"op": "delete", "path": "/lib"}],
          [_d("/lib", mode="0750"), _f("/lib/a", 16, seed=9), _f("/lib/new")]],
         [act("remove", path="/lib"), act("mkdir", path="/lib", mode=0o700),
          act("write", path="/lib/b", data=b"fresh")]),

    Case("dir-recreated-same-layer", "a directory deleted and recreated within one layer (what "
         "`rm -rf /lib && mkdir /lib` produces): the lower content stays hidden",
         [[_d("/lib"), _f("/lib/a"), _f("/lib/b"), _d("/lib/sub"), _f("/lib/sub/c")],
          [{"op": "delete", "path": "/lib"}, _d("/lib"), _f("/lib/a", 16, seed=9)]]),

    Case("chown-lower-tree", "an upper layer chowns a lower directory tree (a setuid file in it keeps "
         "its mode); the container chowns it again (chown(2) clears setuid there, on both sides)",
         [[_d("/opt"), _d("/opt/app"), _f("/opt/app/bin", 64, mode="4755"), _f("/opt/app/conf", mode="0640"),
           _d("/opt/app/data", mode="0700"), _f("/opt/app/data/x"),
           {"op": "symlink", "path": "/opt/app/link", "target": "conf"}],
          [{"op": "chown", "path": "/opt/app", "uid": 1000, "gid": 1000, "recursive": True}]],
         [act("chown_r", path="/opt", uid=2000, gid=2001)]),

    Case("dir-perms-3-layers", "directory permissions and owners across three layers of chown, "
         "chmod, delete and recreate (setgid and sticky included)",
         [[_d("/d1", mode="0700", uid=1, gid=1), _f("/d1/f", mode="0600", uid=1, gid=1),
           _d("/d2", mode="0750", uid=2, gid=2), _d("/d3")],
          [{"op": "chown", "path": "/d1", "uid": 3, "gid": 3}, {"op": "chmod", "path": "/d1", "mode": "0711"},
           {"op": "delete", "path": "/d2"}, _d("/d3/sub", mode="2770", uid=5, gid=6)],
          [_d("/d2", mode="1777", uid=4, gid=4), {"op": "chmod", "path": "/d1", "mode": "0755"},
           {"op": "chown", "path": "/d3", "uid": 7, "gid": 7, "recursive": True},
           {"op": "chmod", "path": "/d3/sub", "mode": "0700"}]],
         [act("chmod", path="/d1", mode=0o700), act("chown", path="/d2", uid=9, gid=9),
          act("mkdir", path="/d2/n", mode=0o705), act("chmod", path="/d3/sub", mode=0o2755)]),

    Case("deleted-stays-deleted", "a file and a directory deleted in layer 2 stay deleted through "
         "an empty layer and a layer that adds something else",
         [[_f("/foo"), _f("/foobar"), _d("/dir"), _f("/dir/x")],
          [{"op": "delete", "path": "/foobar"}, {"op": "delete", "path": "/dir"}],
          [],
          [_f("/other")]],
         [act("remove", path="/foo")]),

    Case("move-and-hardlink", "a file moved to a new directory, another hard linked there and its "
         "source deleted (containerd's MoveFileFromLowerLayer); the container links and appends",
         [[_d("/dir1", mode="0700"), _f("/dir1/f1", 5, seed=11), _d("/dir2", mode="0700"), _f("/dir2/f2", 3)],
          [_d("/dir3", mode="0700"), _f("/dir3/f1", 5, seed=11), {"op": "delete", "path": "/dir1"},
           {"op": "hardlink", "path": "/dir3/f2", "target": "/dir2/f2"}, {"op": "delete", "path": "/dir2/f2"}]],
         [act("link", path="/dir3/f2", dst="/dir3/f2-link"), act("append", path="/dir3/f2", data=b"more"),
          act("check"), act("link", path="/dir3/f1", dst="/dir2/f1-link")]),

    Case("rename", "in the container: rename a file, overwrite a file by rename, rename a directory "
         "from the image (EXDEV where the driver declares it), rename a directory made in the container",
         [[_d("/dir1"), _f("/dir1/f1"), _d("/dir1/sub"), _f("/dir1/sub/deep"),
           _d("/dir2"), _f("/dir2/f1"), _f("/dir2/f2", 10), _f("/dir2/f3", 30)],
          [_f("/dir2/f4")]],
         [act("rename", path="/dir2/f1", dst="/dir2/f1-renamed"),
          act("rename", path="/dir2/f2", dst="/dir2/f3"), act("check"),
          act("rename", path="/dir1", dst="/dir4", lower_dir=True), act("check"),
          act("mkdir", path="/dir5", mode=0o755), act("write", path="/dir5/x", data=b"x"),
          act("rename", path="/dir5", dst="/dir6"),
          act("rename", path="/dir2/f4", dst="/dir6/f4")]),

    Case("readonly-layers", "writes of every kind in a container (append to a 1 MiB file, truncate, "
         "chmod, chown, delete, link, symlink, xattr) never change the image: the driver's image "
         "data hashes the same, a sibling container still sees the image, so does a new one",
         [[_d("/etc"), _f("/etc/passwd", 200, pattern="text"), _f("/big", (1 << 20) + 123),
           _d("/var"), _f("/var/log", 10)],
          [_f("/etc/group", 40), {"op": "chmod", "path": "/big", "mode": "0600"}]],
         [act("append", path="/big", data=b"appended"), act("write", path="/etc/passwd", data=b"root::0:0\n"),
          act("chmod", path="/etc/group", mode=0o600), act("chown", path="/var/log", uid=1, gid=1),
          act("truncate", path="/etc/group", size=3), act("remove", path="/var"),
          act("symlink", path="/newlink", target="/etc"), act("link", path="/big", dst="/big2"),
          act("setxattr", path="/etc/passwd", name="user.test", value=b"x", needs=CAP_XATTRS)],
         checks=("image_readonly",)),

    Case("root-mode", "the container root is a directory of mode 0755 owned by 0:0, whatever the "
         "umask of the process that creates it (0, 077)",
         [[_d("/etc"), _f("/etc/x")]], checks=("root_mode",)),

    Case("empty-layer", "empty layers at the bottom, in the middle and on top (an image of only an "
         "empty layer included)",
         [[], [_f("/a")], [], []],
         [act("write", path="/b", data=b"b")]),

    Case("sticky-setuid-base", "moby's base layer: a sticky 0705 directory owned 1:2 and a setuid "
         "0222 file (names with spaces)",
         [[_d("/a subdir", mode="1705", uid=1, gid=2), _f("/a file", 9, mode="4222")],
          [_f("/a subdir/inner")]],
         [act("write", path="/a subdir/new", data=b"n"), act("chmod", path="/a subdir", mode=0o1705)]),

    Case("opaque", "an opaque directory hides lower content and what its own layer put there before "
         "it became opaque; what is added after, in its layer and later ones, shows",
         [[_d("/o"), _f("/o/a"), _d("/o/sub"), _f("/o/sub/b")],
          [_f("/o/early"), _f("/o/sub/early2"), {"op": "opaque", "path": "/o"}, _f("/o/c")],
          [_f("/o/d")]]),

    Case("types-replaced", "symlinks (absolute, relative, dangling) replaced by files and "
         "directories and back, across layers",
         [[_d("/etc"), _f("/etc/passwd"), {"op": "symlink", "path": "/abs", "target": "/etc/passwd"},
           {"op": "symlink", "path": "/rel", "target": "../x", "mtime": T0},
           {"op": "symlink", "path": "/dangling", "target": "/nonexistent"}],
          [_f("/abs"), {"op": "delete", "path": "/etc/passwd"},
           {"op": "symlink", "path": "/etc/passwd", "target": "/abs"}, _d("/dangling"), _f("/dangling/x")],
          [{"op": "delete", "path": "/dangling"}, {"op": "symlink", "path": "/dangling", "target": "/etc"}]],
         [act("symlink", path="/c-link", target="/nowhere"), act("remove", path="/rel"),
          act("remove", path="/abs"), act("mkdir", path="/abs", mode=0o755)]),

    Case("xattrs", "user.* xattrs on files and directories, replaced and added in an upper layer and "
         "in the container",
         [[_f("/x", xattrs={"user.a": "1", "user.b": "two"}), _d("/d", xattrs={"user.dir": "y"})],
          [_f("/x", xattrs={"user.a": "3"}), _d("/d", xattrs={"user.more": "z"})]],
         [act("setxattr", path="/x", name="user.c", value=b"c"),
          act("setxattr", path="/d", name="user.dd", value=b"dd")],
         needs=frozenset({CAP_XATTRS})),

    Case("hardlink-groups", "hard-link groups across layers: a group extended in an upper layer, a "
         "linked file chmodded in an upper layer (one inode: every link sees it)",
         [[_d("/h"), _f("/h/a", 10), {"op": "hardlink", "path": "/h/b", "target": "/h/a"},
           _f("/h/m", 10), {"op": "hardlink", "path": "/h/n", "target": "/h/m"}],
          [{"op": "hardlink", "path": "/h/c", "target": "/h/a"},
           {"op": "chmod", "path": "/h/m", "mode": "0600"}]]),

    Case("128-layers", "128 layers, each overwriting one file, adding one and replacing a "
         "directory, compared at many depths (every depth with --every-layer) and in the final "
         "container; a base-layer file read through all of them",
         _many_layers(128),
         [act("append", path="/base/keep", data=b"+"), act("write", path="/top-id", data=b"top"),
          act("remove", path="/cur"), act("write", path="/files/f-000", data=b"zero")],
         readable=("/base/keep", "/top-id", "/files/f-127")),
]


def cases(names: Iterable[str] | None = None) -> list[Case]:
    if not names:
        return list(CASES)
    by = {c.name: c for c in CASES}
    bad = [n for n in names if n not in by]
    if bad:
        raise CowlabError(f"unknown conformance case {bad[0]!r}; cases: {', '.join(by)}")
    return [by[n] for n in names]


# ================================================================================================
# The oracle: the spec ops applied to a plain directory
# ================================================================================================

def reference_apply(spec: ImageSpec, dest: Path, upto: int | None = None) -> None:
    """Apply the first `upto` layers of spec to the plain directory dest (see module docstring)."""
    root = os.fspath(dest)
    os.chown(root, 0, 0)
    os.chmod(root, 0o755)
    for i, layer in enumerate(spec.layers[:upto]):
        for op in layer.ops:
            _ref_op(root, spec, i, op.op, op.args)


def _clear(full: str) -> None:
    try:
        st = os.lstat(full)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(full)
    else:
        os.unlink(full)


def _parents(root: str, path: str) -> None:
    cur = root
    for part in path.strip("/").split("/")[:-1]:
        cur = os.path.join(cur, part)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur)
            os.chown(cur, 0, 0)
            os.chmod(cur, 0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise CowlabError(f"oracle: {cur[len(root):]} is not a directory")


def _new_file(full: str, data_src, mode: int, uid: int, gid: int, xattrs: dict, mtime: int) -> None:
    _clear(full)
    fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        shutil.copyfileobj(data_src, f, 1 << 20)
    os.chown(full, uid, gid)
    os.chmod(full, mode)
    for k, v in xattrs.items():
        os.setxattr(full, k, v.encode())
    os.utime(full, (mtime, mtime))


def _ref_op(root: str, spec: ImageSpec, index: int, kind: str, a: dict) -> None:
    P = lambda p: os.path.join(root, p.lstrip("/"))  # noqa: E731
    if "path" in a:
        _parents(root, a["path"])
    if kind == "file":
        seed = a.get("seed", file_seed(spec.seed, index, a["path"]))
        _new_file(P(a["path"]), Content(a["size"], a.get("pattern", "random"), seed), a.get("mode", 0o644),
                  a.get("uid", 0), a.get("gid", 0), a.get("xattrs", {}), a.get("mtime", spec.mtime))
    elif kind == "files":
        _parents(root, a["dir"] + "/x")
        for k in range(a["count"]):
            p = f"{a['dir']}/{a.get('prefix', 'f')}{k:06d}"
            _new_file(P(p), Content(a["size"], a.get("pattern", "random"), file_seed(spec.seed, index, p)),
                      a.get("mode", 0o644), a.get("uid", 0), a.get("gid", 0), {}, spec.mtime)
    elif kind == "copy":
        st = os.stat(a["source"])
        with open(a["source"], "rb") as src:
            _new_file(P(a["path"]), src, a.get("mode", stat.S_IMODE(st.st_mode)), 0, 0, {}, spec.mtime)
    elif kind == "dir":
        full = P(a["path"])
        if not (os.path.isdir(full) and not os.path.islink(full)):
            _clear(full)
            os.mkdir(full)
            os.chown(full, 0, 0)
            os.chmod(full, 0o755)
        st = os.lstat(full)
        os.chown(full, a.get("uid", st.st_uid), a.get("gid", st.st_gid))
        os.chmod(full, a.get("mode", stat.S_IMODE(st.st_mode)))
        for k, v in a.get("xattrs", {}).items():
            os.setxattr(full, k, v.encode())
    elif kind == "symlink":
        full = P(a["path"])
        _clear(full)
        os.symlink(a["target"], full)
        os.chown(full, a.get("uid", 0), a.get("gid", 0), follow_symlinks=False)
        t = a.get("mtime", spec.mtime)
        os.utime(full, (t, t), follow_symlinks=False)
    elif kind == "hardlink":
        full = P(a["path"])
        _clear(full)
        os.link(P(a["target"]), full, follow_symlinks=False)
    elif kind == "delete":
        full = P(a["path"])
        if not os.path.lexists(full):
            raise CowlabError(f"oracle: delete of missing {a['path']}")
        _clear(full)
    elif kind == "opaque":
        full = P(a["path"])
        for name in os.listdir(full):
            _clear(os.path.join(full, name))
    elif kind == "chmod":
        full = P(a["path"])
        if not os.path.islink(full):
            os.chmod(full, a["mode"])
    elif kind == "chown":
        full = P(a["path"])
        todo = [full]
        if a.get("recursive") and os.path.isdir(full) and not os.path.islink(full):
            for dp, dns, fns in os.walk(full):
                todo += [os.path.join(dp, n) for n in dns + fns]
        for p in todo:
            st = os.lstat(p)
            os.chown(p, a["uid"], a["gid"], follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(p, stat.S_IMODE(st.st_mode))  # the spec keeps modes as declared
    else:
        raise CowlabError(f"oracle: no reference for op {kind!r}")


# ================================================================================================
# Trees and their comparison
# ================================================================================================

_KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFIFO: "fifo",
          stat.S_IFCHR: "chr", stat.S_IFBLK: "blk", stat.S_IFSOCK: "socket"}


@dataclass(frozen=True)
class Node:
    kind: str
    mode: int
    uid: int
    gid: int
    size: int | None = None
    digest: str | None = None
    target: str | None = None
    rdev: tuple[int, int] | None = None
    mtime_ns: int | None = None
    xattrs: tuple = ()


def _sha(path: str) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _xattrs(full: str, prefix: str | None = "user.") -> tuple:
    try:
        names = os.listxattr(full, follow_symlinks=False)
    except OSError:
        return ()
    out = []
    for n in sorted(names):
        if prefix is None or n.startswith(prefix):
            try:
                out.append((n, os.getxattr(full, n, follow_symlinks=False)))
            except OSError:
                continue
    return tuple(out)


def scan(root: os.PathLike | str, xattrs: bool = True) -> tuple[dict[str, Node], set[frozenset[str]]]:
    """Every path under root ("/" is root itself) → Node, and the hard-link groups (sets of paths
    sharing an inode, two or more)."""
    root = os.fspath(root)
    nodes: dict[str, Node] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    stack = ["/"]
    while stack:
        rel = stack.pop()
        full = root if rel == "/" else root + rel
        st = os.lstat(full)
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "?")
        n = Node(kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                 size=st.st_size if kind == "file" else None,
                 digest=_sha(full) if kind == "file" else None,
                 target=os.readlink(full) if kind == "symlink" else None,
                 rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("chr", "blk") else None,
                 mtime_ns=None if kind == "dir" else st.st_mtime_ns,
                 xattrs=_xattrs(full) if xattrs else ())
        nodes[rel] = n
        if kind == "dir":
            for name in sorted(os.listdir(full), reverse=True):
                stack.append(("" if rel == "/" else rel) + "/" + name)
        else:
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
    groups = {frozenset(v) for v in inodes.values() if len(v) > 1}
    return nodes, groups


def _describe(n: Node) -> str:
    if n.kind == "chr" and n.rdev == (0, 0):
        return "chr 0:0, a whiteout leaked into the container"
    return n.kind


def compare(oracle: os.PathLike | str, other: os.PathLike | str, *, mtimes: bool = True,
            skip_mtime: Iterable[str] = (), xattrs: bool = True) -> list[str]:
    """Differences between two trees, one readable line each (empty: equal)."""
    a, ga = scan(oracle, xattrs)
    b, gb = scan(other, xattrs)
    skip = set(skip_mtime)
    for g in ga:  # a write through one hard link touches them all
        if g & skip:
            skip |= g
    out: list[str] = []
    for p in sorted(a.keys() - b.keys()):
        out.append(f"missing in container: {p} ({a[p].kind})")
    for p in sorted(b.keys() - a.keys()):
        what = _describe(b[p])
        if os.path.basename(p).startswith(".wh."):
            what += ", an OCI whiteout name leaked into the container"
        out.append(f"unexpected in container: {p} ({what})")
    for p in sorted(a.keys() & b.keys()):
        x, y = a[p], b[p]
        if x.kind != y.kind:
            out.append(f"{p}: is a {y.kind}, expected a {x.kind}")
            continue
        if x.mode != y.mode and x.kind != "symlink":
            out.append(f"{p}: mode {y.mode:04o}, expected {x.mode:04o}")
        if (x.uid, x.gid) != (y.uid, y.gid):
            out.append(f"{p}: owner {y.uid}:{y.gid}, expected {x.uid}:{x.gid}")
        if x.kind == "file" and (x.size, x.digest) != (y.size, y.digest):
            out.append(f"{p}: content differs ({y.size} bytes sha256 {y.digest[:12]}, expected "
                       f"{x.size} bytes sha256 {x.digest[:12]})")
        if x.target != y.target:
            out.append(f"{p}: symlink to {y.target!r}, expected {x.target!r}")
        if x.rdev != y.rdev:
            out.append(f"{p}: device {y.rdev}, expected {x.rdev}")
        if mtimes and x.kind != "dir" and p not in skip and x.mtime_ns != y.mtime_ns:
            out.append(f"{p}: mtime {_t(y.mtime_ns)}, expected {_t(x.mtime_ns)}")
        if xattrs and x.xattrs != y.xattrs:
            out.append(f"{p}: user xattrs {dict(y.xattrs)}, expected {dict(x.xattrs)}")
    common = a.keys() & b.keys()
    ga = {g & common for g in ga if len(g & common) > 1}
    gb = {g & common for g in gb if len(g & common) > 1}
    for g in sorted(ga - gb, key=sorted):
        out.append(f"hard links: {', '.join(sorted(g))} should be one inode; in the container "
                   f"{_groups_of(g, gb)}")
    for g in sorted(gb - ga, key=sorted):
        if not any(g <= h for h in ga):
            out.append(f"hard links: {', '.join(sorted(g))} share an inode in the container but not "
                       f"in the oracle")
    return out


def _groups_of(g: frozenset, groups: set) -> str:
    parts = [", ".join(sorted(h & g)) for h in groups if len(h & g) > 1]
    return ("only " + "; ".join(parts) + " are linked") if parts else "they are separate inodes"


def _t(ns: int | None) -> str:
    if ns is None:
        return "-"
    s, frac = divmod(ns, 10**9)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s)) + (f".{frac:09d}" if frac else "")


# ================================================================================================
# Container-side actions
# ================================================================================================

class Actor:
    """Carries out an Act under one root; returns None or the errno name it failed with."""

    def __init__(self, root: os.PathLike | str):
        self.root = os.fspath(root)

    def p(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def run(self, a: Act) -> str | None:
        try:
            getattr(self, "do_" + a.op)(**{k: v for k, v in a.args.items() if k not in ("lower_dir", "needs")})
        except OSError as e:
            return errno.errorcode.get(e.errno, str(e.errno))
        return None

    def do_write(self, path, data: bytes, mode: int = 0o644):
        fd = os.open(self.p(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    def do_append(self, path, data: bytes):
        with open(self.p(path), "ab") as f:
            f.write(data)

    def do_truncate(self, path, size: int):
        os.truncate(self.p(path), size)

    def do_mkdir(self, path, mode: int = 0o755):
        os.mkdir(self.p(path), mode)

    def do_remove(self, path):
        full = self.p(path)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.unlink(full)

    def do_rename(self, path, dst):
        os.rename(self.p(path), self.p(dst))

    def do_link(self, path, dst):
        os.link(self.p(path), self.p(dst), follow_symlinks=False)

    def do_symlink(self, path, target):
        os.symlink(target, self.p(path))

    def do_chmod(self, path, mode: int):
        os.chmod(self.p(path), mode)

    def do_chown(self, path, uid: int, gid: int):
        os.chown(self.p(path), uid, gid, follow_symlinks=False)

    def do_chown_r(self, path, uid: int, gid: int):
        full = self.p(path)
        os.chown(full, uid, gid, follow_symlinks=False)
        for dp, dns, fns in os.walk(full):
            for n in dns + fns:
                os.chown(os.path.join(dp, n), uid, gid, follow_symlinks=False)

    def do_setxattr(self, path, name: str, value: bytes):
        os.setxattr(self.p(path), name, value, follow_symlinks=False)

    def do_utime(self, path, t: int):
        os.utime(self.p(path), (t, t), follow_symlinks=False)


def _touched(a: Act, touched: set[str]) -> set[str]:
    """The paths whose mtime is 'now' after the action (not comparable between two trees)."""
    out = set(touched)
    if a.op in ("write", "append", "truncate", "symlink", "mkdir"):
        out.add(a.args["path"])
    elif a.op == "utime":
        out.discard(a.args["path"])
    elif a.op == "rename":  # what was touched moves with its name
        src, dst = a.args["path"], a.args["dst"]
        for t in touched:
            if t == src or t.startswith(src + "/"):
                out.add(dst + t[len(src):])
    return out


# ================================================================================================
# Running a case on a driver
# ================================================================================================

@dataclass
class Result:
    driver: str
    case: str
    status: str                      # pass, fail, error, skip, unavailable
    details: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "skip", "unavailable", "deviation")

    def summary(self) -> str:
        if self.status in ("skip", "unavailable"):
            return f"{self.status}: {self.details[0] if self.details else ''}"
        return self.status


class ImageCache:
    """Images built once per suite run (shared by every driver) and removed from the store at
    the end, so `cowlab image ls` does not fill up with conformance images."""

    def __init__(self, store: ImageStore, keep: bool = False):
        self.store = store
        self.keep = keep  # kept: built on the host for a kernel VM, whose store is read-only
        self.built: dict[str, Image] = {}

    def get(self, case: Case, k: int) -> Image:
        sp = case.spec(k)
        if sp.name not in self.built:
            self.built[sp.name] = self.store.build(sp)
        return self.built[sp.name]

    def close(self) -> None:
        for name in list(self.built) if not self.keep else []:
            with contextlib.suppress(CowlabError):
                self.store.remove(name)
        self.built.clear()


@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def declares_rename_dir_exdev(drv: Driver) -> bool:
    if CAP_RENAME_DIR_EXDEV in drv.capabilities:
        return True
    try:
        return drv.metadata().get("rename_dir") == "exdev"
    except Exception:  # metadata is informational; a failing one is not a declaration
        return False


def pick_backing(cls: type[Driver], state: StateRoot, res: Resources, tag: str) -> B.Backing:
    """The host's filesystem, or the loop filesystem the driver needs (e.g. btrfs)."""
    kinds = cls.backing_kinds
    if kinds is None or "host" in kinds:
        d = state.store / tag
        res.acquire("dir", lambda: d.mkdir(parents=True), path=str(d))
        return B.host(d)
    for k in kinds:
        if k in B.MKFS:
            return B.make_loop(state.backings, res, k, LOOP_SIZE)
    raise CowlabError(f"{cls.name} runs on {'/'.join(kinds)}, which cowlab cannot make")


class DriverSession:
    """One driver instance (its backing, and its pool or daemon if it has one) shared by the
    cases run on it, with its own journal owner: `cowlab cleanup` releases it all if this
    process dies."""

    def __init__(self, state: StateRoot, cls: type[Driver], images: ImageCache, umask: int = 0o000,
                 options: dict | None = None):
        self.state, self.cls, self.images, self.umask = state, cls, images, umask
        self.options = options or None

    def __enter__(self) -> "DriverSession":
        pid = os.getpid()
        self.tag = f"conformance-{pid}-{uuid.uuid4().hex[:6]}"
        self.res = Resources(self.state, f"run-{pid}-{sysutil.proc_starttime(pid)}-{self.tag}", "run",
                             {"purpose": f"conformance {self.cls.name}"})
        try:
            self.scratch = self.state.tmp / f"{pid}-{self.tag}"  # swept as staging if we die
            self.res.acquire("dir", lambda: self.scratch.mkdir(), path=str(self.scratch))
            self.backing = pick_backing(self.cls, self.state, self.res, self.tag)
            with _umask(self.umask):
                self.drv = self.cls(self.backing, self.res, self.images.store,
                                    home=self.backing.path / self.cls.name, options=self.options)
        except BaseException:
            self.res.close()
            raise
        self.xattrs = CAP_XATTRS in self.drv.capabilities
        return self

    def close(self) -> list[str]:
        errs = [f"teardown of {self.cls.name}: {e}" for e in self.res.close()]
        left = sysutil.mounts_under(self.backing.path) if self.backing.path.exists() else []
        if left:
            errs.append(f"teardown of {self.cls.name}: still mounted: {', '.join(m.target for m in left)}")
        return errs

    def __exit__(self, *exc) -> None:
        self.errors = self.close()

    def run(self, case: Case, every_layer: bool = False, depths: Iterable[int] | None = None) -> Result:
        """One case; never raises for what the driver does (that is the result)."""
        t0 = time.monotonic()
        missing = case.needs - self.cls.capabilities
        if missing:
            return Result(self.cls.name, case.name, "skip",
                          [f"{self.cls.name} does not declare {', '.join(sorted(missing))}"])
        if self.cls.max_layers and len(case.layers) > self.cls.max_layers:
            return Result(self.cls.name, case.name, "skip",
                          [f"{len(case.layers)} layers; {self.cls.name} supports at most {self.cls.max_layers}"])
        run = _Run(self, case)
        status = "pass"
        try:
            run.run(every_layer, depths)
        except Exception as e:  # the driver (or the oracle) blew up: an error, in one line
            status = "error"
            run.diffs.insert(0, f"{type(e).__name__}: {e}")
        finally:
            try:
                run.teardown()
            except Exception as e:
                run.diffs.append(f"teardown: {type(e).__name__}: {e}")
        if status == "pass" and run.diffs:
            status = "fail"
        declared = self.cls.deviations.get(case.name)
        if declared and status in ("pass", "fail"):
            what, pattern = declared
            if status == "pass":  # like a strict xfail: a deviation that went away is news
                status = "fail"
                run.diffs.append(f"{self.cls.name} declares a deviation here ({what}) but behaved "
                                 "like a plain directory: remove the declaration")
            elif all(re.search(pattern, d) for d in run.diffs):
                status = "deviation"
                run.notes.append(f"documented deviation: {what}")
        return Result(self.cls.name, case.name, status, run.diffs, run.notes, time.monotonic() - t0)


class _Run:
    """One case on a driver session: the containers and images it made, its oracle's scratch."""

    def __init__(self, session: DriverSession, case: Case):
        self.session, self.case = session, case
        self.cls, self.drv, self.res = session.cls, session.drv, session.res
        self.images, self.umask, self.xattrs = session.images, session.umask, session.xattrs
        self.diffs: list[str] = []
        self.notes: list[str] = []
        self.containers: list[Container] = []
        self.imported: list[Image] = []
        self.scratch = session.scratch / f"{case.name}-{uuid.uuid4().hex[:6]}"
        self.scratch.mkdir()

    def teardown(self) -> None:
        for c in list(self.containers):
            self.remove(c)
        for img in self.imported:
            try:
                self.drv.remove_image(img)
            except Exception as e:
                self.diffs.append(f"teardown: remove_image({img.name}) failed: {e}")
        shutil.rmtree(self.scratch)

    def oracle(self, k: int, label: str) -> Path:
        d = self.scratch / f"{label}-{k}"
        d.mkdir()
        reference_apply(self.case.spec(k), d)
        return d

    def image(self, k: int) -> Image:
        img = self.images.get(self.case, k)
        if not self.drv.has_image(img):
            with _umask(self.umask):
                self.drv.import_image(img)
        if img not in self.imported:
            self.imported.append(img)
        return img

    def create(self, img: Image) -> Container:
        with _umask(self.umask):
            c = self.drv.create(img, self.res)
        self.containers.append(c)
        return c

    def remove(self, c: Container) -> None:
        self.containers.remove(c)
        self.drv.remove(c, self.res)

    def diff(self, where: str, lines: list[str]) -> None:
        if not lines:
            return
        shown = lines[:MAX_DIFFS]
        self.diffs += [f"{where}: {x}" for x in shown]
        if len(lines) > MAX_DIFFS:
            self.diffs.append(f"{where}: ... and {len(lines) - MAX_DIFFS} more difference(s)")

    # -- the case -----------------------------------------------------------------------------
    def run(self, every_layer: bool, depths: Iterable[int] | None = None) -> None:
        case = self.case
        n = len(case.layers)
        final_oracle = None
        for k in case.ks(every_layer, depths):
            img = self.image(k)
            o = self.oracle(k, "image")
            c = self.create(img)  # ("/" is compared too: the root must be 0755, 0:0)
            self.diff(f"image of {k}/{n} layer(s)", compare(o, c.mountpoint, xattrs=self.xattrs))
            self.remove(c)
            if k == n:
                final_oracle = o
            else:
                shutil.rmtree(o)
        assert final_oracle is not None
        img = self.image(n)
        for name in case.checks:
            CHECKS[name](self, img, final_oracle)
        if case.actions or case.readable:
            self.actions(img, final_oracle, case.actions)

    def _root_ok(self, c: Container, where: str) -> None:
        st = os.lstat(c.mountpoint)
        if not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o755 or (st.st_uid, st.st_gid) != (0, 0):
            self.diffs.append(f"{where}: container root is {_KINDS.get(stat.S_IFMT(st.st_mode))} mode "
                              f"{stat.S_IMODE(st.st_mode):04o} owner {st.st_uid}:{st.st_gid}, expected a "
                              "directory of mode 0755 owned by 0:0")

    def actions(self, img: Image, image_oracle: Path, acts: list[Act]) -> None:
        c = self.create(img)
        o = self.scratch / "container-oracle"
        o.mkdir()
        reference_apply(self.case.spec(), o)
        for p in self.case.readable:
            self._read(c, image_oracle, p)
        mine, ref = Actor(c.mountpoint), Actor(o)
        touched: set[str] = set()
        exdev = None
        for i, a in enumerate(acts, 1):
            where = f"container, after action {i} {a}"
            if a.op == "check":
                self.diff(where, compare(o, c.mountpoint, skip_mtime=touched, xattrs=self.xattrs))
                continue
            if a.op == "tick":
                time.sleep(1.0 - time.time() % 1.0 + 0.01)
                continue
            if a.args.get("needs") and a.args["needs"] not in self.drv.capabilities:
                continue
            with _umask(self.umask):
                got = mine.run(a)
            if a.op == "rename" and a.args.get("lower_dir"):
                if exdev is None:
                    exdev = declares_rename_dir_exdev(self.drv)
                if got == "EXDEV" and exdev:
                    self.notes.append(f"renaming a directory from the image returned EXDEV, as "
                                      f"{self.cls.name} declares; moved with cp -a + rm like mv(1)")
                    self.diff(where + " (after EXDEV, before the fallback)",
                              compare(o, c.mountpoint, skip_mtime=touched, xattrs=self.xattrs))
                    self._mv_fallback(c, a)
                    got = None
                elif got is None and exdev:
                    self.diffs.append(f"{where}: the driver declares EXDEV for renaming a directory "
                                      "from the image, but the rename succeeded")
                elif got == "EXDEV":
                    self.diffs.append(f"{where}: rename returned EXDEV, which {self.cls.name} does not "
                                      f"declare (capability {CAP_RENAME_DIR_EXDEV!r} or "
                                      "metadata()['rename_dir'] == 'exdev')")
                    continue
            with _umask(self.umask):
                want = ref.run(a)
            if got != want:
                self.diffs.append(f"{where}: {'failed with ' + got if got else 'succeeded'} in the "
                                  f"container, {'failed with ' + want if want else 'succeeded'} in the oracle")
            touched = _touched(a, touched)
        self.diff("container, after all actions",
                  compare(o, c.mountpoint, skip_mtime=touched, xattrs=self.xattrs))
        self.remove(c)

    def _mv_fallback(self, c: Container, a: Act) -> None:
        src, dst = (os.path.join(c.mountpoint, a.args[k].lstrip("/")) for k in ("path", "dst"))
        sysutil.run(["cp", "-a", "--", src, dst])
        shutil.rmtree(src)

    def _read(self, c: Container, oracle: Path, path: str) -> None:
        full = os.path.join(c.mountpoint, path.lstrip("/"))
        try:
            got = _sha(full)
        except OSError as e:
            self.diffs.append(f"reading {path} through the container: {e.strerror}")
            return
        want = _sha(os.path.join(oracle, path.lstrip("/")))
        if got != want:
            self.diffs.append(f"reading {path} through the container: sha256 {got[:12]}, expected {want[:12]}")


# -- extra checks -------------------------------------------------------------------------------

def _check_root_mode(run: _Run, img: Image, oracle: Path) -> None:
    for mask in (0o077, 0o000, 0o022):
        with _umask(mask):
            c = run.drv.create(img, run.res)
        run.containers.append(c)
        run._root_ok(c, f"created under umask {mask:03o}")
        run.remove(c)


def home_fingerprint(drv: Driver, skip_names: set[str]) -> dict[str, tuple]:
    """What the driver keeps on disk under its home, container data left out (any directory
    named after a live container, any mount): type, mode, owner, content, link target and every
    xattr (trusted.* included: overlay's opaque markers are image data)."""
    home = os.fspath(drv.home)
    mounts = {m.target for m in sysutil.mounts_under(home)}
    working = _working_storage(home)
    out: dict[str, tuple] = {}
    for dp, dns, fns in os.walk(home):
        dns[:] = [d for d in dns if d not in skip_names and os.path.join(dp, d) not in mounts]
        for name in dns + fns:
            full = os.path.join(dp, name)
            if full in working:
                continue
            st = os.lstat(full)
            kind = _KINDS.get(stat.S_IFMT(st.st_mode), "?")
            extra = _sha(full) if kind == "file" else os.readlink(full) if kind == "symlink" else \
                (os.major(st.st_rdev), os.minor(st.st_rdev)) if kind in ("chr", "blk") else None
            out[os.path.relpath(full, home)] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                                                st.st_size if kind == "file" else None, extra,
                                                _xattrs(full, None))
    return out


def _working_storage(home: str) -> set[str]:
    """Files under home that back a loop device or that a process holds open (a zpool's vdev,
    a thin pool's data file, a daemon's log): a pool's working storage, whose bytes change with
    any write, not image data. For such drivers the sibling and new-container checks carry the
    read-only claim."""
    pre = home.rstrip("/") + "/"
    out = {f for f in sysutil.loop_devices().values() if f.startswith(pre)}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(pre):
                out.add(target)
    return out


def _check_image_readonly(run: _Run, img: Image, oracle: Path) -> None:
    """Writes in one container change nothing a sibling or a new container sees, nor the
    driver's image data on disk."""
    sib = run.create(img)
    work = run.create(img)
    skip = {c.id for c in run.containers}
    before = home_fingerprint(run.drv, skip)
    o = run.scratch / "readonly-oracle"
    o.mkdir()
    reference_apply(run.case.spec(), o)
    mine, ref = Actor(work.mountpoint), Actor(o)
    for a in run.case.actions:
        if a.op in ("check", "tick") or (a.args.get("needs") and a.args["needs"] not in run.drv.capabilities):
            continue
        with _umask(run.umask):
            if mine.run(a) is None:  # (what the actions themselves do is checked in actions())
                ref.run(a)
    os.sync()
    after = home_fingerprint(run.drv, skip)
    changed = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    run.diff("image data on disk after writes in a container",
             [f"{p} {'appeared' if p not in before else 'vanished' if p not in after else 'changed'}"
              for p in changed])
    run.diff("the container that was written to", compare(o, work.mountpoint, mtimes=False, xattrs=run.xattrs))
    run.diff("a sibling container, after writes in another",
             compare(oracle, sib.mountpoint, xattrs=run.xattrs))
    run.remove(work)
    run.remove(sib)
    fresh = run.create(img)
    run.diff("a new container, after writes in another", compare(oracle, fresh.mountpoint, xattrs=run.xattrs))
    run.remove(fresh)


CHECKS: dict[str, Callable[[_Run, Image, Path], None]] = {
    "root_mode": _check_root_mode,
    "image_readonly": _check_image_readonly,
}


def run_case(state: StateRoot, cls: type[Driver], case: Case, images: ImageCache, *,
             every_layer: bool = False, umask: int = 0o000) -> Result:
    """One case on a driver session of its own."""
    try:
        with DriverSession(state, cls, images, umask) as session:
            r = session.run(case, every_layer)
    except Exception as e:
        return Result(cls.name, case.name, "error", [f"setting up {cls.name}: {type(e).__name__}: {e}"])
    if session.errors:
        r.details += session.errors
        r.status = "fail" if r.status == "pass" else r.status
    return r


def available(names: Iterable[str] | None = None,
              probe: Callable[[type[Driver]], Probe] | None = None) -> list[tuple[type[Driver], str | None]]:
    """(driver class, None if available else the reason) for the named drivers or all of them.
    probe: how to ask (the run layer's, which also names the kernel VM; the driver's own by default)."""
    from cowlab.storage.drivers import get
    out = []
    for name in (names or list(DRIVERS)):
        cls = get(name)
        try:
            p = probe(cls) if probe else cls.probe()
            why = None if p.available else p.reason + (f" (to get it: {p.hint})" if p.hint else "")
        except Exception as e:
            why = f"probe failed: {type(e).__name__}: {e}"
        out.append((cls, why))
    return out


def prebuild(state: StateRoot, case_names: Iterable[str] | None = None, every_layer: bool = False) -> int:
    """Build every image the chosen cases compare (for a kernel VM, whose store is the host's,
    read-only); returns how many."""
    state.ensure()
    cache = ImageCache(ImageStore(state), keep=True)
    for case in cases(case_names):
        for k in case.ks(every_layer):
            cache.get(case, k)
    return len(cache.built)


def run_suite(state: StateRoot, driver_names: Iterable[str] | None = None,
              case_names: Iterable[str] | None = None, *, every_layer: bool = False,
              progress: Callable[[str, int, int], None] | None = None,
              options: dict[str, dict] | None = None, keep_images: bool = False,
              probe: Callable[[type[Driver]], Probe] | None = None) -> list[Result]:
    """Every case on every driver (or the named ones); unavailable drivers yield one
    'unavailable' result per case with the reason, never a pass. options: per driver name
    (e.g. devicemapper-direct's device)."""
    state.ensure()
    chosen = cases(case_names)
    drivers = available(driver_names, probe)
    images = ImageCache(ImageStore(state), keep=keep_images)
    results: list[Result] = []
    total = len(drivers) * len(chosen)
    try:
        for cls, why in drivers:
            if why:
                results += [Result(cls.name, case.name, "unavailable", [why]) for case in chosen]
                continue
            results += run_driver(state, cls, chosen, images, every_layer=every_layer,
                                  options=(options or {}).get(cls.name),
                                  progress=progress and (lambda d, i, n, base=len(results):
                                                         progress(d, base + i, total)))
    finally:
        images.close()
    return results


def run_driver(state: StateRoot, cls: type[Driver], chosen: list[Case], images: ImageCache, *,
               every_layer: bool = False, depths: Iterable[int] | None = None, umask: int = 0o000,
               progress: Callable[[str, int, int], None] | None = None,
               options: dict | None = None) -> list[Result]:
    """Every chosen case on one (available) driver, sharing one driver session."""
    out: list[Result] = []
    try:
        with DriverSession(state, cls, images, umask, options) as session:
            for case in chosen:
                if progress:
                    progress(f"{cls.name}: {case.name}", len(out), len(chosen))
                out.append(session.run(case, every_layer, depths))
    except Exception as e:  # the session itself could not be set up
        why = f"setting up {cls.name}: {type(e).__name__}: {e}"
        return out + [Result(cls.name, c.name, "error", [why]) for c in chosen[len(out):]]
    if session.errors and out:
        out[-1].details += session.errors
        out[-1].status = "fail" if out[-1].status == "pass" else out[-1].status
    return out


__all__ = ["CASES", "Case", "Act", "Result", "DriverSession", "compare", "scan", "reference_apply",
           "run_case", "run_driver", "run_suite", "prebuild", "cases", "available", "declares_rename_dir_exdev"]
