"""Layer tars read back: every member checked on import (paths, links, sizes, xattrs), and a
layer applied to a directory in one of three whiteout styles (see cowlab.store.layers, which
builds them and re-exports this API):
- "overlay": deletions become 0/0 character devices, opaque dirs get trusted.overlay.opaque=y;
- "aufs":    whiteout files (.wh.NAME, .wh..wh..opq) are kept as they are (AUFS's own format);
- "apply":   deletions and opaque dirs are carried out on the tree in place.
"""

from __future__ import annotations

import errno
import os
import posixpath
import shutil
import stat
import tarfile
from pathlib import Path

from cowlab.base import faults
from cowlab.base.errors import CowlabError

WH = ".wh."
OPAQUE = ".wh..wh..opq"
STYLES = ("overlay", "aufs", "apply")
ALLOWED_XATTR = ("user.", "security.capability")


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
        if k.startswith("SCHILY.xattr.") and not k[13:].startswith(ALLOWED_XATTR):
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
