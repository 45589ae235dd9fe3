"""The conformance cases, as data: each a list of layers (spec op dicts, built with
`spec.from_dict` and `ImageStore.build`, exactly as a user's spec is) plus container-side actions
and extra checks by name. What a case means is stated by the oracle (oracle.py); runner.py runs
them on a driver."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cowlab.base.errors import CowlabError
from cowlab.store.spec import ImageSpec, from_dict

T0 = 1_600_000_000  # base mtime of the cases' ops
SPEC_MTIME = 1_700_000_000  # the spec's own mtime (spec.from_dict default)
CAP_XATTRS = "xattrs"
CAP_RENAME_DIR_EXDEV = "rename_dir_exdev"


@dataclass
class Act:
    """A container-side action: op is a method of Actor (write, append, mkdir, remove, rename,
    link, symlink, chmod, chown, chown_r, setxattr, utime, truncate), or "check" (compare now),
    or "tick" (sleep to the next second boundary)."""

    op: str
    args: dict = field(default_factory=dict)

    def __str__(self) -> str:
        a = ", ".join(
            f"{k}={v!r}" if not isinstance(v, bytes) else f"{k}=<{len(v)} bytes>" for k, v in self.args.items()
        )
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
    checks: tuple[str, ...] = ()  # extra checks by name (see runner.CHECKS)
    readable: tuple[str, ...] = ()  # paths read fully through the final container
    needs: frozenset[str] = frozenset()  # driver capabilities without which the case is skipped

    def spec(self, k: int | None = None) -> ImageSpec:
        n = len(self.layers) if k is None else k
        return from_dict(
            {
                "name": f"conformance-{self.name}-{n}of{len(self.layers)}",
                "seed": 5,
                "mtime": SPEC_MTIME,
                "layers": [{"ops": ops} for ops in self.layers[:n]],
            },
            f"<conformance {self.name}>",
        )

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
        ops += [
            _f("/top-id", 16, seed=1000 + i, mtime=T0 + i),  # overwritten
            _f(f"/files/f-{i:03d}", 32 + i),
        ]  # added
        if i:
            ops.append({"op": "delete", "path": "/cur"})  # replaced
        ops += [_d("/cur", mode="0750" if i % 2 else "0755", uid=i), _f(f"/cur/from-{i:03d}", 8)]
        out.append(ops)
    return out


CASES: list[Case] = [
    Case(
        "basic",
        "files, dirs and a symlink in a base layer; an upper layer adds, overwrites and "
        "deletes a subtree; the container writes, appends, deletes and recreates",
        [
            [
                _f("/foo", 4, mode="0777"),
                _d("/a"),
                _d("/a/b"),
                _d("/a/b/c"),
                _f("/a/b/c/deep", 100),
                {"op": "symlink", "path": "/lnk", "target": "foo"},
            ],
            [_f("/bar", 4, mode="0777"), _f("/foo", 4, mode="0777", seed=2), {"op": "delete", "path": "/a/b"}],
        ],
        [
            act("write", path="/new", data=b"hello\n"),
            act("append", path="/foo", data=b"x"),
            act("remove", path="/bar"),
            act("check"),
            act("mkdir", path="/a/b", mode=0o755),
            act("write", path="/a/b/x", data=b"again"),
            act("remove", path="/lnk"),
        ],
    ),
    Case(
        "file-update-mtime",
        "a file overwritten in three upper layers with the same size, across "
        "second boundaries and twice within one second; then twice in the container across a real "
        "second boundary",
        [
            [_d("/etc"), _f("/etc/hosts", 20, seed=1, mtime=T0)],
            [_f("/etc/hosts", 20, seed=2, mtime=T0 + 1)],
            [_f("/etc/hosts", 20, seed=3, mtime=T0 + 2)],
            [_f("/etc/hosts", 20, seed=4, mtime=T0 + 2)],
        ],
        [
            act("write", path="/etc/hosts", data=b"mydomain 10.0.0.1 \n"),
            act("check"),
            act("tick"),
            act("write", path="/etc/hosts", data=b"mydomain 10.0.0.2 \n"),
            act("check"),
            act("utime", path="/etc/hosts", t=T0 + 3),
        ],
    ),
    Case(
        "dir-recreated",
        "a directory removed in a lower layer and recreated with new content "
        "two layers up: the old content stays hidden; the container does it again",
        [
            [_d("/lib"), _f("/lib/a"), _f("/lib/b"), _d("/lib/sub"), _f("/lib/sub/c")],
            [{"op": "delete", "path": "/lib"}],
            [_d("/lib", mode="0750"), _f("/lib/a", 16, seed=9), _f("/lib/new")],
        ],
        [act("remove", path="/lib"), act("mkdir", path="/lib", mode=0o700), act("write", path="/lib/b", data=b"fresh")],
    ),
    Case(
        "dir-recreated-same-layer",
        "a directory deleted and recreated within one layer (what "
        "`rm -rf /lib && mkdir /lib` produces): the lower content stays hidden",
        [
            [_d("/lib"), _f("/lib/a"), _f("/lib/b"), _d("/lib/sub"), _f("/lib/sub/c")],
            [{"op": "delete", "path": "/lib"}, _d("/lib"), _f("/lib/a", 16, seed=9)],
        ],
    ),
    Case(
        "chown-lower-tree",
        "an upper layer chowns a lower directory tree (a setuid file in it keeps "
        "its mode); the container chowns it again (chown(2) clears setuid there, on both sides)",
        [
            [
                _d("/opt"),
                _d("/opt/app"),
                _f("/opt/app/bin", 64, mode="4755"),
                _f("/opt/app/conf", mode="0640"),
                _d("/opt/app/data", mode="0700"),
                _f("/opt/app/data/x"),
                {"op": "symlink", "path": "/opt/app/link", "target": "conf"},
            ],
            [{"op": "chown", "path": "/opt/app", "uid": 1000, "gid": 1000, "recursive": True}],
        ],
        [act("chown_r", path="/opt", uid=2000, gid=2001)],
    ),
    Case(
        "dir-perms-3-layers",
        "directory permissions and owners across three layers of chown, "
        "chmod, delete and recreate (setgid and sticky included)",
        [
            [
                _d("/d1", mode="0700", uid=1, gid=1),
                _f("/d1/f", mode="0600", uid=1, gid=1),
                _d("/d2", mode="0750", uid=2, gid=2),
                _d("/d3"),
            ],
            [
                {"op": "chown", "path": "/d1", "uid": 3, "gid": 3},
                {"op": "chmod", "path": "/d1", "mode": "0711"},
                {"op": "delete", "path": "/d2"},
                _d("/d3/sub", mode="2770", uid=5, gid=6),
            ],
            [
                _d("/d2", mode="1777", uid=4, gid=4),
                {"op": "chmod", "path": "/d1", "mode": "0755"},
                {"op": "chown", "path": "/d3", "uid": 7, "gid": 7, "recursive": True},
                {"op": "chmod", "path": "/d3/sub", "mode": "0700"},
            ],
        ],
        [
            act("chmod", path="/d1", mode=0o700),
            act("chown", path="/d2", uid=9, gid=9),
            act("mkdir", path="/d2/n", mode=0o705),
            act("chmod", path="/d3/sub", mode=0o2755),
        ],
    ),
    Case(
        "deleted-stays-deleted",
        "a file and a directory deleted in layer 2 stay deleted through "
        "an empty layer and a layer that adds something else",
        [
            [_f("/foo"), _f("/foobar"), _d("/dir"), _f("/dir/x")],
            [{"op": "delete", "path": "/foobar"}, {"op": "delete", "path": "/dir"}],
            [],
            [_f("/other")],
        ],
        [act("remove", path="/foo")],
    ),
    Case(
        "move-and-hardlink",
        "a file moved to a new directory, another hard linked there and its "
        "source deleted (containerd's MoveFileFromLowerLayer); the container links and appends",
        [
            [_d("/dir1", mode="0700"), _f("/dir1/f1", 5, seed=11), _d("/dir2", mode="0700"), _f("/dir2/f2", 3)],
            [
                _d("/dir3", mode="0700"),
                _f("/dir3/f1", 5, seed=11),
                {"op": "delete", "path": "/dir1"},
                {"op": "hardlink", "path": "/dir3/f2", "target": "/dir2/f2"},
                {"op": "delete", "path": "/dir2/f2"},
            ],
        ],
        [
            act("link", path="/dir3/f2", dst="/dir3/f2-link"),
            act("append", path="/dir3/f2", data=b"more"),
            act("check"),
            act("link", path="/dir3/f1", dst="/dir2/f1-link"),
        ],
    ),
    Case(
        "rename",
        "in the container: rename a file, overwrite a file by rename, rename a directory "
        "from the image (EXDEV where the driver declares it), rename a directory made in the container",
        [
            [
                _d("/dir1"),
                _f("/dir1/f1"),
                _d("/dir1/sub"),
                _f("/dir1/sub/deep"),
                _d("/dir2"),
                _f("/dir2/f1"),
                _f("/dir2/f2", 10),
                _f("/dir2/f3", 30),
            ],
            [_f("/dir2/f4")],
        ],
        [
            act("rename", path="/dir2/f1", dst="/dir2/f1-renamed"),
            act("rename", path="/dir2/f2", dst="/dir2/f3"),
            act("check"),
            act("rename", path="/dir1", dst="/dir4", lower_dir=True),
            act("check"),
            act("mkdir", path="/dir5", mode=0o755),
            act("write", path="/dir5/x", data=b"x"),
            act("rename", path="/dir5", dst="/dir6"),
            act("rename", path="/dir2/f4", dst="/dir6/f4"),
        ],
    ),
    Case(
        "readonly-layers",
        "writes of every kind in a container (append to a 1 MiB file, truncate, "
        "chmod, chown, delete, link, symlink, xattr) never change the image: the driver's image "
        "data hashes the same, a sibling container still sees the image, so does a new one",
        [
            [
                _d("/etc"),
                _f("/etc/passwd", 200, pattern="text"),
                _f("/big", (1 << 20) + 123),
                _d("/var"),
                _f("/var/log", 10),
            ],
            [_f("/etc/group", 40), {"op": "chmod", "path": "/big", "mode": "0600"}],
        ],
        [
            act("append", path="/big", data=b"appended"),
            act("write", path="/etc/passwd", data=b"root::0:0\n"),
            act("chmod", path="/etc/group", mode=0o600),
            act("chown", path="/var/log", uid=1, gid=1),
            act("truncate", path="/etc/group", size=3),
            act("remove", path="/var"),
            act("symlink", path="/newlink", target="/etc"),
            act("link", path="/big", dst="/big2"),
            act("setxattr", path="/etc/passwd", name="user.test", value=b"x", needs=CAP_XATTRS),
        ],
        checks=("image_readonly",),
    ),
    Case(
        "root-mode",
        "the container root is a directory of mode 0755 owned by 0:0, whatever the "
        "umask of the process that creates it (0, 077)",
        [[_d("/etc"), _f("/etc/x")]],
        checks=("root_mode",),
    ),
    Case(
        "empty-layer",
        "empty layers at the bottom, in the middle and on top (an image of only an empty layer included)",
        [[], [_f("/a")], [], []],
        [act("write", path="/b", data=b"b")],
    ),
    Case(
        "sticky-setuid-base",
        "moby's base layer: a sticky 0705 directory owned 1:2 and a setuid 0222 file (names with spaces)",
        [[_d("/a subdir", mode="1705", uid=1, gid=2), _f("/a file", 9, mode="4222")], [_f("/a subdir/inner")]],
        [act("write", path="/a subdir/new", data=b"n"), act("chmod", path="/a subdir", mode=0o1705)],
    ),
    Case(
        "opaque",
        "an opaque directory hides lower content and what its own layer put there before "
        "it became opaque; what is added after, in its layer and later ones, shows",
        [
            [_d("/o"), _f("/o/a"), _d("/o/sub"), _f("/o/sub/b")],
            [_f("/o/early"), _f("/o/sub/early2"), {"op": "opaque", "path": "/o"}, _f("/o/c")],
            [_f("/o/d")],
        ],
    ),
    Case(
        "types-replaced",
        "symlinks (absolute, relative, dangling) replaced by files and directories and back, across layers",
        [
            [
                _d("/etc"),
                _f("/etc/passwd"),
                {"op": "symlink", "path": "/abs", "target": "/etc/passwd"},
                {"op": "symlink", "path": "/rel", "target": "../x", "mtime": T0},
                {"op": "symlink", "path": "/dangling", "target": "/nonexistent"},
            ],
            [
                _f("/abs"),
                {"op": "delete", "path": "/etc/passwd"},
                {"op": "symlink", "path": "/etc/passwd", "target": "/abs"},
                _d("/dangling"),
                _f("/dangling/x"),
            ],
            [{"op": "delete", "path": "/dangling"}, {"op": "symlink", "path": "/dangling", "target": "/etc"}],
        ],
        [
            act("symlink", path="/c-link", target="/nowhere"),
            act("remove", path="/rel"),
            act("remove", path="/abs"),
            act("mkdir", path="/abs", mode=0o755),
        ],
    ),
    Case(
        "xattrs",
        "user.* xattrs on files and directories, replaced and added in an upper layer and in the container",
        [
            [_f("/x", xattrs={"user.a": "1", "user.b": "two"}), _d("/d", xattrs={"user.dir": "y"})],
            [_f("/x", xattrs={"user.a": "3"}), _d("/d", xattrs={"user.more": "z"})],
        ],
        [
            act("setxattr", path="/x", name="user.c", value=b"c"),
            act("setxattr", path="/d", name="user.dd", value=b"dd"),
        ],
        needs=frozenset({CAP_XATTRS}),
    ),
    Case(
        "hardlink-groups",
        "hard-link groups across layers: a group extended in an upper layer, a "
        "linked file chmodded in an upper layer (one inode: every link sees it)",
        [
            [
                _d("/h"),
                _f("/h/a", 10),
                {"op": "hardlink", "path": "/h/b", "target": "/h/a"},
                _f("/h/m", 10),
                {"op": "hardlink", "path": "/h/n", "target": "/h/m"},
            ],
            [{"op": "hardlink", "path": "/h/c", "target": "/h/a"}, {"op": "chmod", "path": "/h/m", "mode": "0600"}],
        ],
    ),
    Case(
        "128-layers",
        "128 layers, each overwriting one file, adding one and replacing a "
        "directory, compared at many depths (every depth with --every-layer) and in the final "
        "container; a base-layer file read through all of them",
        _many_layers(128),
        [
            act("append", path="/base/keep", data=b"+"),
            act("write", path="/top-id", data=b"top"),
            act("remove", path="/cur"),
            act("write", path="/files/f-000", data=b"zero"),
        ],
        readable=("/base/keep", "/top-id", "/files/f-127"),
    ),
]


def cases(names: Iterable[str] | None = None) -> list[Case]:
    if not names:
        return list(CASES)
    by = {c.name: c for c in CASES}
    bad = [n for n in names if n not in by]
    if bad:
        raise CowlabError(f"unknown conformance case {bad[0]!r}; cases: {', '.join(by)}")
    return [by[n] for n in names]
