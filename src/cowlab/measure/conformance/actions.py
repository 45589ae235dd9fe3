"""Container-side actions of the conformance cases, carried out the same way on a container and
on a copy of the oracle (the runner compares their outcomes)."""

from __future__ import annotations

import errno
import os
import shutil

from cowlab.measure.conformance.catalogue import Act


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
            return errno.errorcode.get(e.errno, str(e.errno)) if e.errno is not None else "None"
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


def touched_after(a: Act, touched: set[str]) -> set[str]:
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
                out.add(dst + t[len(src) :])
    return out
