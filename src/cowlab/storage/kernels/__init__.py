"""The kernels the kernel VM boots, by the short names users type (`--kernel 6.1`).

One design for "boot this kernel, run this there": every kernel, Debian's packaged ones and the
AUFS kernel cowlab builds, is a `Kernel` (a vmlinuz, its release, where its modules are) found in
one machine-wide cache, shared by every checkout and state root on the machine:
/var/cache/cowlab/kernels (COWLAB_KERNEL_CACHE overrides). `cowlab kernels` lists what is cached,
what can be had and the command that gets it; `cowlab kernels prune` frees the space. The VM
itself (cowlab.storage.vm) boots whichever Kernel it is given.

- debian: Debian's generic amd64 kernels fetched by package name with apt into the cache (the
  host's /boot and /lib/modules are never touched); 6.1 may also come from the host's /boot.
- aufs: Debian's linux-source-6.1 with the AUFS standalone tree patched in, built once.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from cowlab.base.errors import CowlabError

CACHE_ENV = "COWLAB_KERNEL_CACHE"
DEFAULT_CACHE = "/var/cache/cowlab/kernels"
HOST = "host"  # the machine's own kernel: no VM at all


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


@dataclass(frozen=True)
class Kernel:
    name: str  # the short name: 5.10, 6.1, 6.12, aufs
    release: str  # the guest's `uname -r`
    image: Path  # vmlinuz
    modules: Path | None  # a lib/modules/<release> tree outside the host's /lib/modules, or None
    origin: str  # where it came from (a Debian package and version, or the build's inputs)
    features: frozenset[str] = frozenset()  # what sets it apart, e.g. {"aufs"}
    home: Path | None = None  # its directory in the cache (None: the host's /boot)
    info: dict = field(default_factory=dict, compare=False)  # build.json / fetch.json

    def describe(self) -> dict:
        """What run.json records of the guest's kernel (`vm.kernel`)."""
        return {
            "name": self.name,
            "release": self.release,
            "image": str(self.image),
            "origin": self.origin,
            "features": sorted(self.features),
            **{k: self.info[k] for k in ("config_sha256", "key", "aufs_commit") if k in self.info},
        }


def _families():
    from cowlab.storage.kernels import aufs, debian

    return {**{n: debian for n in debian.NAMES}, **{n: aufs for n in aufs.NAMES}}


def names() -> list[str]:
    """Every short name --kernel takes (host: the machine's own kernel, natively)."""
    return [HOST, *_families()]


def find(name: str) -> Kernel | None:
    """The cached (or, for 6.1, installed) kernel of that name, or None."""
    fam = _families()
    if name not in fam:
        raise CowlabError(f"--kernel {name!r}: no such kernel; choose one of {', '.join(names())}")
    return fam[name].find(name)


def how_to_get(name: str) -> str:
    fam = _families()
    if name not in fam:
        raise CowlabError(f"--kernel {name!r}: no such kernel; choose one of {', '.join(names())}")
    return fam[name].how_to_get(name)


def get(name: str) -> Kernel:
    """The kernel of that name, or an error that says how to get it."""
    k = find(name)
    if k is None:
        raise CowlabError(f"kernel {name} is not on this machine; get it with: {how_to_get(name)}")
    return k


def obtain(name: str, echo=print) -> Kernel:
    """The kernel of that name, fetched or built into the cache first when it is not there."""
    fam = _families()
    if name not in fam:
        raise CowlabError(f"no such kernel {name!r}; choose one of {', '.join(fam)}")
    return fam[name].obtain(name, echo=echo)


def dir_bytes(p: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(p):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def listing() -> list[dict]:
    """One row per kernel: name, cached or not, release, disk used, path, how to get it."""
    rows = []
    for n in _families():
        k = find(n)
        rows.append(
            {
                "kernel": n,
                "cached": k is not None,
                "release": k.release if k else None,
                "origin": k.origin if k else None,
                "path": str(k.home or k.image) if k else None,
                "bytes": dir_bytes(k.home) if k and k.home else None,
                "features": sorted(k.features) if k else [],
                "get": how_to_get(n),
            }
        )
    return rows


def prune(which: list[str] | None = None) -> list[str]:
    """Remove cached kernels (all, or those named) from the cache; never the host's /boot."""
    out: list[str] = []
    cache = cache_dir()
    if not cache.is_dir():
        return out
    wanted = set(which or [])
    for d in sorted(cache.iterdir()):
        if wanted and not any(d.name.startswith(p) for w in wanted for p in _prefixes(w)):
            continue
        size = dir_bytes(d) if d.is_dir() else d.stat().st_size
        if d.is_dir() and not d.is_symlink():
            shutil.rmtree(d)
        else:
            d.unlink()
        out.append(f"removed {d} ({size >> 20} MiB)")
    return out


def _prefixes(name: str) -> list[str]:
    fam = _families()
    if name not in fam:
        raise CowlabError(f"no such kernel {name!r}; choose one of {', '.join(fam)}")
    return fam[name].cache_prefixes(name)
