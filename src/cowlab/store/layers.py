"""Layers as OCI tar streams: built from a spec, checked on import, applied to a directory.

One applier serves every driver, in one of three whiteout styles:
- "overlay": deletions become 0/0 character devices, opaque dirs get trusted.overlay.opaque=y
  (what overlayfs reads in a lower or upper dir);
- "aufs":    whiteout files (.wh.NAME, .wh..wh..opq) are kept as they are (AUFS's own format);
- "apply":   deletions and opaque dirs are carried out on the tree in place (for drivers that keep
  each layer as a full snapshot of its parent: vfs, btrfs, zfs, device mapper).
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import shutil
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cowlab.base import faults
from cowlab.base.errors import CowlabError
from cowlab.store.content import Content
from cowlab.store.spec import ImageSpec

WH = ".wh."
OPAQUE = ".wh..wh..opq"
STYLES = ("overlay", "aufs", "apply")
_ALLOWED_XATTR = ("user.", "security.capability")


# --- building -----------------------------------------------------------------------------


@dataclass(eq=False)
class Inode:
    type: str  # file, dir, symlink
    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    pattern: str = "random"
    seed: int = 0
    target: str = ""
    source: str = ""
    xattrs: dict = field(default_factory=dict)
    mtime: int = 0  # 0: the spec's mtime


# A layer entry's node: the inode, another name of an inode written earlier in the same layer
# ("link", that name, inode), a whiteout or an opaque marker.
Link = tuple[Literal["link"], str, Inode]
Node = Inode | Link | Literal["whiteout", "opaque"]
Entry = tuple[str, Node]


def file_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")


class _Model:
    """The image tree as the spec describes it so far, so later layers can re-emit entries."""

    def __init__(self, spec: ImageSpec):
        self.spec = spec
        self.tree: dict[str, Inode] = {}
        self.links: dict[int, set[str]] = {}  # id(inode) → its names, for hard-linked files

    def children(self, d: str) -> list[str]:
        pre = d.rstrip("/") + "/"
        return [p for p in self.tree if p.startswith(pre)]

    def layer_entries(self, index: int) -> list[Entry]:
        """Entries of one layer: (path, Inode), (path, ('link', target, Inode)), (path, 'whiteout')
        or (path, 'opaque')."""
        out: list[Entry] = []
        emitted: dict[str, Inode] = {}
        whited: set[str] = set()  # paths deleted in this layer
        where = f"{self.spec.source}, layer {index + 1}"

        def emit(p: str, node: Inode) -> None:
            """An entry, after its parent directories (a union shows a directory's metadata
            from the topmost layer that has it, so every layer carries its entries' parents with
            their current metadata, as Docker's layers do) and followed by the other names of a
            hard-linked file (an inode's metadata belongs to all its names)."""
            ensure_parents(p, where)
            out.append((p, node))
            emitted[p] = node
            if node.type == "file":
                for q in sorted(self.links.get(id(node), ())):
                    if q != p and self.tree.get(q) is node and emitted.get(q) is not node:
                        ensure_parents(q, where)
                        out.append((q, ("link", p, node)))
                        emitted[q] = node

        def purge(pre: str) -> None:
            """Drop this layer's entries under pre (hidden by an opaque dir or a re-creation); a
            hard link elsewhere to a dropped file becomes the file itself."""
            gone = {e[0] for e in out if e[0].startswith(pre)}
            kept: list[Entry] = []
            moved: dict[str, str] = {}  # a dropped file's name → the link that became the file
            for q, node in out:
                if q in gone:
                    continue
                if isinstance(node, tuple) and node[1] in gone:
                    if node[1] in moved:
                        node = ("link", moved[node[1]], node[2])
                    else:
                        moved[node[1]] = q
                        node = node[2]
                kept.append((q, node))
            out[:] = kept
            for q in gone:
                emitted.pop(q, None)
            whited.difference_update([q for q in whited if q.startswith(pre)])

        def recreated(p: str, node: Inode) -> None:
            """p was deleted earlier in this layer and exists again: drop the whiteout and what
            the layer put under p before (an entry in the same layer shadows the lower one
            anyway) and make a directory opaque, so the lower directory's content stays hidden
            in every whiteout style."""
            if p in whited:
                whited.discard(p)
                purge(p + "/")
                out.remove((p, "whiteout"))
                if node.type == "dir":
                    out.append((p, "opaque"))

        def ensure_parents(p: str, w: str) -> None:
            par = posixpath.dirname(p)
            chain = []
            while par != "/":
                chain.append(par)
                par = posixpath.dirname(par)
            for d in reversed(chain):
                node = self.tree.get(d)
                if node is None:
                    node = Inode("dir", 0o755)
                    self.tree[d] = node
                    emit(d, node)
                    recreated(d, node)
                elif node.type != "dir":
                    raise CowlabError(f"{w}: {d} is a {node.type}, not a directory")
                elif emitted.get(d) is not node:
                    emit(d, node)

        def unlink(p: str) -> None:
            node = self.tree.pop(p)
            group = self.links.get(id(node))
            if group is not None:
                group.discard(p)

        def put(p: str, node: Inode, w: str) -> None:
            ensure_parents(p, w)
            old = self.tree.get(p)
            if old is not None and old.type == "dir" and node.type != "dir":
                for c in self.children(p):
                    unlink(c)
            if old is not None:
                unlink(p)
            self.tree[p] = node
            emit(p, node)
            recreated(p, node)

        def need(p: str, w: str) -> Inode:
            if p not in self.tree:
                raise CowlabError(f"{w}: {p} does not exist in the image at this layer")
            return self.tree[p]

        for j, op in enumerate(self.spec.layers[index].ops, 1):
            w, a = f"{where}, op {j} ({op.op})", op.args
            if op.op == "file":
                put(
                    a["path"],
                    Inode(
                        "file",
                        a.get("mode", 0o644),
                        a.get("uid", 0),
                        a.get("gid", 0),
                        a["size"],
                        a.get("pattern", "random"),
                        a.get("seed", file_seed(self.spec.seed, index, a["path"])),
                        xattrs=dict(a.get("xattrs", {})),
                        mtime=a.get("mtime", 0),
                    ),
                    w,
                )
            elif op.op == "files":
                prefix = a.get("prefix", "f")
                for k in range(a["count"]):
                    p = f"{a['dir']}/{prefix}{k:06d}"
                    put(
                        p,
                        Inode(
                            "file",
                            a.get("mode", 0o644),
                            a.get("uid", 0),
                            a.get("gid", 0),
                            a["size"],
                            a.get("pattern", "random"),
                            file_seed(self.spec.seed, index, p),
                        ),
                        w,
                    )
            elif op.op == "copy":
                src = Path(a["source"])
                put(
                    a["path"],
                    Inode(
                        "file",
                        a.get("mode", stat.S_IMODE(src.stat().st_mode)),
                        size=src.stat().st_size,
                        source=str(src),
                    ),
                    w,
                )
            elif op.op == "dir":
                old = self.tree.get(a["path"])
                node = old if old is not None and old.type == "dir" else Inode("dir", 0o755)
                node.mode = a.get("mode", node.mode)
                node.uid, node.gid = a.get("uid", node.uid), a.get("gid", node.gid)
                node.xattrs.update(a.get("xattrs", {}))
                put(a["path"], node, w)
            elif op.op == "symlink":
                put(
                    a["path"],
                    Inode(
                        "symlink", 0o777, a.get("uid", 0), a.get("gid", 0), target=a["target"], mtime=a.get("mtime", 0)
                    ),
                    w,
                )
            elif op.op == "hardlink":
                tnode = need(a["target"], w)
                if tnode.type != "file":
                    raise CowlabError(f"{w}: hard link target {a['target']} is a {tnode.type}")
                if a["path"] == a["target"]:
                    raise CowlabError(f"{w}: a hard link to itself")
                ensure_parents(a["path"], w)
                old = self.tree.get(a["path"])
                if old is not None:
                    for c in self.children(a["path"]) if old.type == "dir" else []:
                        unlink(c)
                    unlink(a["path"])
                self.tree[a["path"]] = tnode
                self.links.setdefault(id(tnode), {a["target"]}).add(a["path"])
                if emitted.get(a["target"]) is not tnode:
                    emit(a["target"], tnode)  # a link can't cross layers: copy the group up
                else:
                    out.append((a["path"], ("link", a["target"], tnode)))
                    emitted[a["path"]] = tnode
                recreated(a["path"], tnode)
            elif op.op == "delete":
                node = need(a["path"], w)
                for c in self.children(a["path"]) if node.type == "dir" else []:
                    unlink(c)
                unlink(a["path"])
                ensure_parents(a["path"], w)
                out.append((a["path"], "whiteout"))
                whited.add(a["path"])
            elif op.op == "opaque":
                node = need(a["path"], w)
                if node.type != "dir":
                    raise CowlabError(f"{w}: {a['path']} is a {node.type}; only directories can be opaque")
                for c in self.children(a["path"]):
                    unlink(c)
                purge(a["path"] + "/")  # what this layer put there before is hidden too
                emit(a["path"], node)
                out.append((a["path"], "opaque"))
            elif op.op in ("chmod", "chown"):
                node = need(a["path"], w)
                targets = [a["path"]]
                if op.op == "chown" and a.get("recursive") and node.type == "dir":
                    targets += sorted(self.children(a["path"]))
                for p in targets:
                    n = self.tree[p]
                    if op.op == "chmod":
                        n.mode = a["mode"]
                    else:
                        n.uid, n.gid = a["uid"], a["gid"]
                    if emitted.get(p) is not n:
                        emit(p, n)
        return out


class _HashWriter:
    def __init__(self, f, progress=None):
        self.f, self.h, self.n, self.progress = f, hashlib.sha256(), 0, progress

    def tell(self):
        return self.n

    def write(self, b):
        self.h.update(b)
        self.n += len(b)
        if self.progress:
            self.progress(len(b))
        return self.f.write(b)


def write_layer_tar(entries: list[Entry], f, mtime: int, progress=None) -> tuple[str, int]:
    """Write one layer as a deterministic PAX tar; returns (sha256 digest, bytes).
    progress(n) is called with each chunk's size."""
    hw = _HashWriter(f, progress)
    # typeshed's tarfile wants a file object that can also read, seek and close; mode "w" on a
    # caller's file object only writes and tells, which is all _HashWriter does.
    with tarfile.open(fileobj=hw, mode="w", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for path, node in entries:
            name = path.lstrip("/")
            ti = tarfile.TarInfo(name)
            ti.mtime, ti.uname, ti.gname = mtime, "", ""
            if node == "whiteout":
                ti.name = posixpath.join(posixpath.dirname(name), WH + posixpath.basename(name))
                tar.addfile(ti)
                continue
            if node == "opaque":
                ti.name = posixpath.join(name, OPAQUE)
                tar.addfile(ti)
                continue
            if isinstance(node, tuple):
                ti.type, ti.linkname = tarfile.LNKTYPE, node[1].lstrip("/")
                tar.addfile(ti)
                continue
            ti.mode, ti.uid, ti.gid = node.mode, node.uid, node.gid
            if node.mtime:
                ti.mtime = node.mtime
            if node.xattrs:
                ti.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in sorted(node.xattrs.items())}
            if node.type == "dir":
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
            elif node.type == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, node.target
                tar.addfile(ti)
            else:
                ti.size = node.size
                if node.source:
                    with open(node.source, "rb") as src:
                        tar.addfile(ti, src)
                else:
                    tar.addfile(ti, Content(node.size, node.pattern, node.seed))
    return "sha256:" + hw.h.hexdigest(), hw.n


def spec_layers(spec: ImageSpec) -> Iterator[list[Entry]]:
    model = _Model(spec)
    for i in range(len(spec.layers)):
        yield model.layer_entries(i)


def spec_bytes(spec: ImageSpec) -> int:
    """Bytes of file content the image's layers carry (for free-space checks before work)."""
    return sum(n.size for entries in spec_layers(spec) for _, n in entries if isinstance(n, Inode))


# --- checking ------------------------------------------------------------------------------


def member_path(name: str, where: str) -> str:
    """A tar member name as a relative path; absolute names and '..' are hostile."""
    if name.startswith("/"):
        raise CowlabError(f"{where}: member {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise CowlabError(f"{where}: member {name!r} climbs out of the layer with '..'")
    if "\0" in name:
        raise CowlabError(f"{where}: member name has a NUL byte")
    return "/".join(parts)


def check_member(m: tarfile.TarInfo, where: str) -> str:
    rel = member_path(m.name, where)
    if posixpath.basename(rel) in (WH + ".", WH + ".."):
        raise CowlabError(f"{where}: {m.name!r} is a whiteout of '.' or '..'")
    if m.issparse():
        raise CowlabError(
            f"{where}: {m.name!r} is a sparse member (it claims {m.size} bytes); cowlab "
            "does not import sparse tar members"
        )
    if m.ischr() or m.isblk():
        raise CowlabError(f"{where}: {m.name!r} is a device node; cowlab does not import device nodes")
    if not (m.isreg() or m.isdir() or m.issym() or m.islnk() or m.isfifo()):
        raise CowlabError(f"{where}: {m.name!r} has unsupported tar type {m.type!r}")
    if m.islnk():
        target = member_path(m.linkname, where + f", hard link {m.name!r}")
    if posixpath.basename(rel).startswith(WH) and not (
        m.isreg() or (m.islnk() and posixpath.basename(target).startswith(WH))
    ):
        # A whiteout is a marker, an empty regular file (AUFS hard-links its whiteouts to one
        # another, which tar records as links between .wh. names): anything else is not one.
        raise CowlabError(f"{where}: whiteout {m.name!r} is not a regular file (tar type {m.type!r})")
    if m.issym() and (not m.linkname or "\0" in m.linkname):
        raise CowlabError(f"{where}: symlink {m.name!r} has an empty or invalid target")
    for k in m.pax_headers:
        if k.startswith("SCHILY.xattr.") and not k[13:].startswith(_ALLOWED_XATTR):
            raise CowlabError(f"{where}: {m.name!r} carries xattr {k[13:]!r}, which cowlab refuses to import")
    return rel


def check_tar(path: Path, where: str) -> int:
    """Read a whole layer tar, checking every member; returns the content bytes it holds.

    Beyond each member on its own: nothing may be written through a symlink the layer itself
    made (`link -> /etc` then `link/passwd`), and the archive must end where tar says it does
    (a tar cut inside a header otherwise reads as a shorter, valid one)."""
    total = 0
    links: set[str] = set()  # paths that are symlinks at this point of the layer
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                rel = check_member(m, where)
                for p in [rel] + ([member_path(m.linkname, where)] if m.islnk() else []):
                    parts = p.split("/")
                    for k in range(1, len(parts)):
                        if "/".join(parts[:k]) in links:
                            raise CowlabError(
                                f"{where}: {m.name!r} would be written through the symlink "
                                f"{'/'.join(parts[:k])!r} of the same layer"
                            )
                base = posixpath.basename(rel)
                if base.startswith(WH):  # a whiteout removes what the name held
                    gone = posixpath.join(posixpath.dirname(rel), base[len(WH) :])
                    links = {x for x in links if x != gone and not x.startswith(gone + "/")}
                elif m.issym():
                    links.add(rel)
                else:
                    links.discard(rel)
                total += m.size if m.isreg() else 0
            end = tar.offset
        _check_end(path, end, where)
    except tarfile.TarError as e:
        raise CowlabError(f"{where}: not a readable tar ({e})") from None
    except EOFError:
        raise CowlabError(f"{where}: tar is truncated") from None
    return total


def _check_end(path, end: int, where: str) -> None:
    """After the last member only zeros (end-of-archive blocks, padding) may follow."""
    with open(path, "rb") as f:
        f.seek(end)
        while chunk := f.read(1 << 16):
            if chunk.strip(b"\0"):
                raise CowlabError(f"{where}: tar is truncated (a partial header or data after its end at byte {end})")


# --- applying ------------------------------------------------------------------------------


def _no_symlink_parents(root: str, rel: str, where: str) -> None:
    """Refuse to write through a symlink: a link to /etc followed by etc/passwd must not escape."""
    cur = root
    for part in rel.split("/")[:-1]:
        cur = os.path.join(cur, part)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur, 0o755)
            continue
        if stat.S_ISLNK(st.st_mode):
            raise CowlabError(f"{where}: {rel!r} would be written through the symlink {cur[len(root) :]!r}")
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(cur)
            os.mkdir(cur, 0o755)


def _remove(path: str, within: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        from cowlab.base.sysutil import safe_rmtree

        safe_rmtree(path, within)
    else:
        os.unlink(path)


def apply_tar(path: Path, dest: Path, style: str, where: str = "") -> None:
    """Apply one layer tar onto dest in the given whiteout style (see module docstring)."""
    if style not in STYLES:
        raise ValueError(style)
    where = where or str(path)
    root = os.fspath(dest)
    created: set[str] = set()
    opaque: list[str] = []
    dirs: list[tuple[str, tarfile.TarInfo, int]] = []  # (path, member, inode number)
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                rel = check_member(m, where)
                if not rel:
                    continue
                base = posixpath.basename(rel)
                parent = posixpath.dirname(rel)
                full = os.path.join(root, rel)
                _no_symlink_parents(root, rel, where)
                if base.startswith(WH) and style != "aufs":
                    pfull = os.path.join(root, parent)
                    if base == OPAQUE:
                        if style == "overlay":
                            os.setxattr(pfull, "trusted.overlay.opaque", b"y")
                        else:
                            opaque.append(parent)
                        continue
                    victim = os.path.join(pfull, base[len(WH) :])
                    _remove(victim, root)
                    if style == "overlay":
                        os.mknod(victim, stat.S_IFCHR | 0o000, os.makedev(0, 0))
                    continue
                if base.startswith(WH) and base != OPAQUE:  # aufs: the whiteout stays a .wh. file, but
                    # the name it hides can't also be in this branch (AUFS: "both of real entry and
                    # whiteout found", EIO), as in every other style the whiteout removes it here
                    _remove(os.path.join(root, parent, base[len(WH) :]), root)
                created.add(rel)
                if m.isdir():
                    if os.path.lexists(full) and not os.path.isdir(full) or os.path.islink(full):
                        os.unlink(full)
                    if not os.path.isdir(full):
                        os.mkdir(full, 0o700)
                    dirs.append((full, m, os.lstat(full).st_ino))
                    _meta(full, m, set_time=False)
                    continue
                _remove(full, root)
                if m.isreg():
                    fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                    with os.fdopen(fd, "wb") as out:
                        src = tar.extractfile(m)
                        assert src is not None  # a regular member always has its data
                        shutil.copyfileobj(src, out, 1 << 20)
                elif m.issym():
                    os.symlink(m.linkname, full)
                elif m.islnk():
                    trel = member_path(m.linkname, where)
                    _no_symlink_parents(root, trel, where)  # the target's parents, not the target
                    tfull = os.path.join(root, trel)
                    if not os.path.lexists(tfull) or os.path.isdir(tfull) and not os.path.islink(tfull):
                        raise CowlabError(
                            f"{where}: hard link {rel!r} points to {m.linkname!r}, which is not a file in the layer"
                        )
                    if os.path.islink(tfull) and style == "apply":
                        raise CowlabError(f"{where}: hard link {rel!r} to a symlink is not supported")
                    os.link(tfull, full, follow_symlinks=False)
                    continue
                elif m.isfifo():
                    os.mkfifo(full, 0o600)
                _meta(full, m)
                faults.point("apply", "member")
            end = tar.offset
        _check_end(path, end, where)
    except tarfile.TarError as e:
        raise CowlabError(f"{where}: not a readable tar ({e})") from None
    except EOFError:
        raise CowlabError(f"{where}: tar is truncated") from None
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise CowlabError(f"{where}: no space left while applying the layer to {dest}") from None
        # anything else a member does that the filesystem refuses is a bad layer: one line
        raise CowlabError(
            f"{where}: cannot apply the layer: {e.strerror or e}"
            + (
                f" ({os.path.relpath(e.filename, root)})"
                if isinstance(e.filename, str) and e.filename.startswith(root)
                else ""
            )
        ) from None

    def prune(dfull: str, d: str) -> None:
        """Under an opaque directory only what this layer made stays, at every depth: a
        directory the layer re-made keeps none of its lower content either."""
        for name in os.listdir(dfull):
            rel, full = posixpath.join(d, name), os.path.join(dfull, name)
            if rel not in created:
                _remove(full, root)
            elif os.path.isdir(full) and not os.path.islink(full):
                prune(full, rel)

    for d in opaque:  # lower content disappears; what this layer added in it stays
        dfull = os.path.join(root, d)
        if not os.path.isdir(dfull) or os.path.islink(dfull):
            continue  # a later member of the layer deleted or replaced it
        prune(dfull, d)
    for full, m, ino in reversed(dirs):  # children change a dir's mtime: set dirs' times last
        try:  # (unless a later member removed or replaced the directory)
            st = os.lstat(full)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_ino == ino:
            os.utime(full, (m.mtime, m.mtime), follow_symlinks=False)


def _meta(full: str, m: tarfile.TarInfo, set_time: bool = True) -> None:
    os.chown(full, m.uid, m.gid, follow_symlinks=False)
    for k, v in m.pax_headers.items():
        if k.startswith("SCHILY.xattr."):
            os.setxattr(full, k[13:], v.encode("utf-8", "surrogateescape"), follow_symlinks=False)
    if not m.issym():
        os.chmod(full, m.mode & 0o7777)  # after chown: chown clears setuid
    if set_time:
        os.utime(full, (m.mtime, m.mtime), follow_symlinks=False)
