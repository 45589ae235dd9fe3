"""The state root: the only directory cowlab writes to (besides results/).

A root is claimed with a marker file; an existing non-empty directory without the marker is
refused, so a typo in --root can never make cowlab delete somebody's files.
"""

from __future__ import annotations

import os
from pathlib import Path

from cowlab.base.errors import CowlabError

DEFAULT_ROOT = Path("/var/lib/cowlab")
MARKER = ".cowlab-root"

# System directories that must never become a state root, whatever the marker says.
_FORBIDDEN = {
    "/",
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/home",
    "/lib",
    "/lib32",
    "/lib64",
    "/media",
    "/mnt",
    "/opt",
    "/proc",
    "/root",
    "/run",
    "/sbin",
    "/srv",
    "/sys",
    "/tmp",
    "/usr",
    "/usr/local",
    "/var",
    "/var/lib",
    "/var/tmp",
    "/var/log",
    "/var/lib/docker",
}


def resolve_root(arg: str | os.PathLike | None = None) -> Path:
    raw = arg or os.environ.get("COWLAB_ROOT") or DEFAULT_ROOT
    root = Path(os.path.abspath(os.fspath(raw)))
    real = Path(os.path.realpath(root))
    if str(root) in _FORBIDDEN or str(real) in _FORBIDDEN:
        raise CowlabError(f"refusing state root {root}: it is a system directory")
    home = os.path.realpath(os.path.expanduser("~"))
    if str(real) == home:
        raise CowlabError(f"refusing state root {root}: it is a home directory")
    return root


class StateRoot:
    """Layout of the state root. Paths only; nothing is created until ensure()."""

    def __init__(self, path: Path):
        self.path = path

    def ensure(self) -> StateRoot:
        p = self.path
        if p.exists():
            if not p.is_dir():
                raise CowlabError(f"state root {p} exists and is not a directory")
            if not (p / MARKER).exists() and any(p.iterdir()):
                raise CowlabError(
                    f"state root {p} is a non-empty directory that cowlab did not create; "
                    "choose an empty or new directory with --root"
                )
        p.mkdir(parents=True, exist_ok=True, mode=0o755)
        (p / MARKER).touch()
        for sub in ("journal", "images", "layers", "store", "backings", "tmp"):
            (p / sub).mkdir(exist_ok=True)
        return self

    @property
    def claimed(self) -> bool:
        return (self.path / MARKER).exists()

    journal = property(lambda self: self.path / "journal")
    images = property(lambda self: self.path / "images")
    layers = property(lambda self: self.path / "layers")
    store = property(lambda self: self.path / "store")  # driver homes on the host filesystem
    backings = property(lambda self: self.path / "backings")
    tmp = property(lambda self: self.path / "tmp")

    def inside(self, path: os.PathLike | str) -> bool:
        """path is the root or below it, as given or once symlinks are resolved (the system
        reports loop files and mounts by real path; the root may be given through a symlink)."""
        p = os.path.abspath(os.fspath(path))
        if p == str(self.path) or p.startswith(str(self.path) + os.sep):
            return True
        real = os.path.realpath(self.path)
        rp = os.path.realpath(p)
        return rp == real or rp.startswith(real + os.sep)
