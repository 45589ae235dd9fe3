"""The oracle of the conformance suite: the spec ops applied to a plain directory.

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
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from cowlab.base.errors import CowlabError
from cowlab.store.content import Content
from cowlab.store.layers import file_seed
from cowlab.store.spec import ImageSpec


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
            raise CowlabError(f"oracle: {cur[len(root) :]} is not a directory")


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
        _new_file(
            P(a["path"]),
            Content(a["size"], a.get("pattern", "random"), seed),
            a.get("mode", 0o644),
            a.get("uid", 0),
            a.get("gid", 0),
            a.get("xattrs", {}),
            a.get("mtime", spec.mtime),
        )
    elif kind == "files":
        _parents(root, a["dir"] + "/x")
        for k in range(a["count"]):
            p = f"{a['dir']}/{a.get('prefix', 'f')}{k:06d}"
            _new_file(
                P(p),
                Content(a["size"], a.get("pattern", "random"), file_seed(spec.seed, index, p)),
                a.get("mode", 0o644),
                a.get("uid", 0),
                a.get("gid", 0),
                {},
                spec.mtime,
            )
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
