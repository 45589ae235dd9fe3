"""The AUFS kernel: Debian's linux-source-6.1 with the AUFS standalone tree (branch aufs6.1,
pinned commit) patched in, CONFIG_AUFS_FS=y, built once per machine and cached by a key over its
inputs (the linux-source package version, the AUFS commit, the config fragment, cowlab's port
patch and the build script), so it is rebuilt only when one of them changes.

No Debian kernel has AUFS (bookworm 6.1, bullseye 5.10, the 6.12 kernels): the AUFS project's own
way is its standalone tree patched into a kernel source, which recipe/build-aufs-kernel.sh does;
recipe/aufs6.1-port.patch ports the hunks that no longer apply to Debian's 6.1 (each hunk says
what moved upstream). The AUFS sources are not part of cowlab: the build takes a local copy
(COWLAB_AUFS_SRC, or the vendor/ copy beside a checkout) or clones the upstream repository at the
pinned commit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from importlib import resources
from pathlib import Path

from cowlab.base.errors import CowlabError
from cowlab.storage.kernels import Kernel, cache_dir

NAMES = ("aufs",)
AUFS_BRANCH = "aufs6.1"
AUFS_COMMIT = "bfd38ec4"  # "6.1 20240701" on branch aufs6.1
AUFS_URL = "https://github.com/sfjro/aufs-standalone.git"
SRC_ENV = "COWLAB_AUFS_SRC"
LINUX_TARBALL = "/usr/src/linux-source-6.1.tar.xz"
PROVISION = "sudo bash vagrant/provision/aufs-kernel.sh"  # linux-source-6.1 and the build tools
BUILD = "sudo nox -s aufs-kernel"


def _files() -> dict[str, Path]:
    d = Path(str(resources.files("cowlab.storage.kernels") / "recipe"))
    return {"script": d / "build-aufs-kernel.sh", "fragment": d / "aufs.config", "port": d / "aufs6.1-port.patch"}


def aufs_source() -> str:
    """Where the AUFS tree comes from: $COWLAB_AUFS_SRC, a vendor/ copy beside this checkout
    (../shared/vendor or ./vendor), or the upstream repository (needs the network)."""
    if os.environ.get(SRC_ENV):
        return os.environ[SRC_ENV]
    here = Path(__file__).resolve()
    for parent in here.parents:
        for cand in (
            parent / "shared" / "vendor" / f"aufs-standalone-{AUFS_BRANCH}",
            parent / "vendor" / f"aufs-standalone-{AUFS_BRANCH}",
        ):
            if (cand / "aufs6-base.patch").is_file():
                return str(cand)
    return AUFS_URL


def _args(src: str) -> list[str]:
    f = _files()
    return [
        "bash",
        str(f["script"]),
        "--aufs",
        src,
        "--commit",
        AUFS_COMMIT,
        "--fragment",
        str(f["fragment"]),
        "--port-patch",
        str(f["port"]),
    ]


def missing_inputs() -> str:
    """'' when the build can start here, else what is missing and how to get it."""
    if not Path(LINUX_TARBALL).is_file():
        return f"no {LINUX_TARBALL} (Debian's linux-source-6.1): {PROVISION}"
    for tool in ("make", "gcc", "flex", "bison", "bc", "patch"):
        if not shutil.which(tool):
            return f"{tool} is not installed: {PROVISION}"
    return ""


def key() -> str | None:
    """The cache key over the build's inputs (the script computes it: one definition)."""
    if missing_inputs():
        return None
    cp = subprocess.run([*_args(aufs_source()), "--print-key"], capture_output=True, text=True)
    return cp.stdout.strip() if cp.returncode == 0 else None


def cache_prefixes(_name: str) -> list[str]:
    return ["aufs-6.1-"]


def _home(k: str) -> Path:
    return cache_dir() / f"aufs-6.1-{k}"


def find(_name: str = "aufs") -> Kernel | None:
    k = key()
    home = _home(k) if k else None
    if home is None or not (home / "vmlinuz").is_file():
        return None
    import json

    info = json.loads((home / "build.json").read_text()) if (home / "build.json").is_file() else {}
    info["key"] = k
    return Kernel(
        "aufs",
        info.get("kernel_release") or info.get("release") or "6.1-aufs",
        home / "vmlinuz",
        None,
        f"linux-source-6.1 {info.get('linux_source', '')} + aufs-standalone {AUFS_BRANCH} {AUFS_COMMIT}".strip(),
        frozenset({"aufs"}),
        home,
        info,
    )


def how_to_get(_name: str = "aufs") -> str:
    return BUILD


def obtain(_name: str = "aufs", echo=print) -> Kernel:
    return build(echo=echo)


def build(jobs: int | None = None, echo=print) -> Kernel:
    """Build the AUFS kernel into the cache (or find it there). Minutes on two cores; a failed
    build says which step failed, and leaves nothing in the cache."""
    why = missing_inputs()
    if why:
        raise CowlabError(f"can't build the AUFS kernel: {why}")
    found = find()
    if found:
        echo(f"aufs kernel: cached at {found.home} (key {found.info.get('key')}; inputs unchanged)")
        return found
    k = key()
    if not k:
        raise CowlabError("can't compute the AUFS kernel's cache key (recipe/build-aufs-kernel.sh --print-key failed)")
    home = _home(k)
    cache_dir().mkdir(parents=True, exist_ok=True)
    log = cache_dir() / f"aufs-6.1-{k}.log"
    src = aufs_source()
    echo(
        f"aufs kernel: building {home.name} from {LINUX_TARBALL} and {src} @ {AUFS_COMMIT} "
        f"(log: {log}); minutes on {os.cpu_count()} cores"
    )
    t0 = time.monotonic()
    with open(log, "w") as f:
        cp = subprocess.run(
            ["nice", "-n", "5", *_args(src), "--out", str(home), "--jobs", str(jobs or os.cpu_count() or 1)],
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    if cp.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:]
        step = next(
            (ln for ln in reversed(tail) if "step" in ln.lower() and "fail" in ln.lower()), tail[-1] if tail else ""
        )
        raise CowlabError(f"the AUFS kernel build failed ({step.strip()}); nothing was cached; log: {log}")
    echo(f"aufs kernel: built in {time.monotonic() - t0:.0f} s: {home}")
    got = find()
    if got is None:
        raise CowlabError(f"the AUFS kernel build finished but {home}/vmlinuz is missing; log: {log}")
    return got
