"""Helpers the native backends share: chain ids, FUSE daemons, tool lookup.

Chain ids: drivers that keep each layer as a full snapshot of its parent (btrfs, zfs, legacy
overlay) or whose layer form depends on what lies below (unionfs-fuse's hide markers) name a
layer by its chain, as Docker's layer store does: chain[0] = digest[0], chain[i] =
sha256(chain[i-1] + " " + digest[i]). Two images share a stored layer only if they share every
layer up to it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from cowlab.base import sysutil
from cowlab.base.errors import CowlabError
from cowlab.base.resources import Handle, Resources, spawn
from cowlab.store.images import Image

SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def chain_ids(image: Image) -> list[str]:
    out: list[str] = []
    for d in image.layers:
        if not out:
            out.append(d)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest())
    return out


def chain_key(chain_id: str) -> str:
    return chain_id.split(":")[-1][:32]


def union_container(
    res: Resources, cdir: Path, names: tuple[str, ...], mount: Callable[..., list[Handle]]
) -> tuple[Path, list[Handle]]:
    """A union container's directories cdir/<names> (the first is the writable upper dir, the
    container's root, made 0755 whatever our umask; the last the mount point), journaled; then
    mount(*dirs) returns the mount's handles. If the mount fails, the directories go again.
    Returns the mount point and every handle."""
    dirs = [cdir / n for n in names]

    def mkdirs():
        for d in dirs:
            d.mkdir(parents=True)
        os.chmod(dirs[0], 0o755)

    h1 = res.acquire("dir", mkdirs, path=str(cdir))
    try:
        hs = mount(*dirs)
    except BaseException:
        res.release(h1)
        raise
    return dirs[-1], [h1, *hs]


def which(tool: str) -> str | None:
    """A tool on PATH or in the sbin directories (root's PATH may lack them under sudo/nox)."""
    found = shutil.which(tool)
    if found:
        return found
    for d in SBIN:
        p = os.path.join(d, tool)
        if os.access(p, os.X_OK):
            return p
    return None


def filesystems() -> str:
    return Path("/proc/filesystems").read_text()


def has_fuse() -> tuple[bool, str]:
    """(usable, reason) for FUSE: the kernel filesystem and the /dev/fuse device."""
    if "\tfuse\n" not in filesystems():
        return False, "this kernel has no FUSE (no fuse in /proc/filesystems)"
    if not os.path.exists("/dev/fuse"):
        return False, "/dev/fuse does not exist"
    return True, ""


def fuse_mount(
    res: Resources, argv: list[str], target: Path, log: Path | None, cwd: str | None = None, timeout: float = 20.0
) -> list[Handle]:
    """Start a FUSE daemon in the foreground as a journaled child and wait for its mount.

    Journal order: the daemon, then the mount, so release unmounts first (the daemon then exits
    by itself) and only then makes sure the daemon is gone (SIGTERM, SIGKILL, by pid). Returns
    the handles; on failure everything started is released and the daemon's last words raised.
    """
    logf = open(log, "ab") if log else open(os.devnull, "wb")
    try:
        p = spawn(res, argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, cwd=cwd)
    finally:
        logf.close()
    hp: Handle = p._cowlab_handle  # type: ignore[attr-defined]
    hm = res.add("mount", target=str(target))
    deadline = time.monotonic() + timeout
    try:
        while not sysutil.is_mountpoint(target):
            if p.poll() is not None:
                raise CowlabError(
                    f"{os.path.basename(argv[0])} exited with {p.returncode} before mounting {target}: {_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise CowlabError(
                    f"{os.path.basename(argv[0])} did not mount {target} within {timeout:.0f} s: {_tail(log)}"
                )
            time.sleep(0.001)
    except BaseException:
        res.release(hm)
        res.release(hp)
        raise
    p.returncode = 0  # reaped by the process releaser (by pid), not by this Popen object
    return [hp, hm]


def _tail(log: Path | None) -> str:
    if log is None:
        return "(its output is discarded)"
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(no output)"


def tool_version(argv: list[str], contains: str = "") -> str:
    """The first line of `tool --version` (that mentions `contains`, if given)."""
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = [line.strip() for line in (cp.stdout + "\n" + cp.stderr).splitlines() if line.strip()]
    if contains:
        text = [line for line in text if contains in line]
    return text[0] if text else ""


def pkg_version(pkg: str) -> str:
    """The installed Debian package's version, or ''."""
    try:
        cp = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return cp.stdout.strip() if cp.returncode == 0 else ""
