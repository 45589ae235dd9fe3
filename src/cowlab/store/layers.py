"""Layers as OCI tar streams: built from a spec, checked on import, applied to a directory.

One applier serves every driver, in one of three whiteout styles:
- "overlay": deletions become 0/0 character devices, opaque dirs get trusted.overlay.opaque=y
  (what overlayfs reads in a lower or upper dir);
- "aufs":    whiteout files (.wh.NAME, .wh..wh..opq) are kept as they are (AUFS's own format);
- "apply":   deletions and opaque dirs are carried out on the tree in place (for drivers that keep
  each layer as a full snapshot of its parent: vfs, btrfs, zfs, device mapper).
"""

from __future__ import annotations

import hashlib
import posixpath
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cowlab.base.errors import CowlabError
from cowlab.store.content import Content

# Reading and applying layers (extract) is re-exported here: one API for layers, built or read.
from cowlab.store.extract import (  # noqa: F401
    OPAQUE,
    STYLES,
    WH,
    apply_tar,
    check_member,
    check_tar,
    member_path,
)
from cowlab.store.spec import ImageSpec

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
