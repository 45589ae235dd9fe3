"""Debian's generic amd64 kernels, by the short names of the releases that ship them: 5.10
(Debian 11, bullseye), 6.1 (Debian 12, bookworm), 6.12 (Debian 13, trixie; bookworm-backports has
it too).

Fetched by package name with apt — `linux-image-amd64` of that suite names the exact
`linux-image-<release>` — through a private apt configuration in the cache that uses the host's
own mirror and keyring, so the host's sources, /boot and /lib/modules are never touched. The
package is unpacked with `dpkg-deb -x` into the cache; the VM shows the guest that tree's
lib/modules/<release> (the -cloud- flavour lacks 9p and cannot boot this way: only generic).
6.1 may also be the host's own /boot kernel (vagrant/provision/devicemapper.sh installs it),
whose modules are already in the host's /lib/modules.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from cowlab.base.errors import CowlabError
from cowlab.storage.kernels import Kernel, cache_dir

# name -> (suite, the release pattern of its generic kernel, what it is)
SUITES = {  # the security suite carries the newest ABI of a stable release's kernel
    "5.10": ("bullseye", r"5\.10\.0-\d+-amd64", "Debian 11 (bullseye)"),
    "6.1": ("bookworm", r"6\.1\.0-\d+-amd64", "Debian 12 (bookworm)"),
    "6.12": ("trixie", r"6\.12\.\d+\+deb13-amd64", "Debian 13 (trixie)"),
}
NAMES = tuple(SUITES)
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def _version_key(release: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", release)]


def _cached(name: str) -> list[Path]:
    pat = re.compile(rf"debian-({SUITES[name][1]})$")
    c = cache_dir()
    return (
        sorted(
            (d for d in c.glob("debian-*") if pat.match(d.name) and (d / "fetch.json").is_file()),
            key=lambda d: _version_key(d.name),
        )
        if c.is_dir()
        else []
    )


def _from_boot(name: str) -> Kernel | None:
    pat = re.compile(rf"vmlinuz-({SUITES[name][1]})$")
    found = [p for p in Path("/boot").glob("vmlinuz-*") if pat.match(p.name)]
    if not found:
        return None
    img = max(found, key=lambda p: _version_key(p.name))
    release = img.name.removeprefix("vmlinuz-")
    if not Path(f"/lib/modules/{release}").is_dir():
        return None
    return Kernel(name, release, img, None, f"host /boot: linux-image-{release} ({SUITES[name][2]})")


def find(name: str) -> Kernel | None:
    """The host's /boot kernel of that release (6.1), else the newest one in the cache."""
    k = _from_boot(name)
    if k is not None:
        return k
    dirs = _cached(name)
    if not dirs:
        return None
    home = dirs[-1]
    release = home.name.removeprefix("debian-")
    info = json.loads((home / "fetch.json").read_text())
    return Kernel(
        name,
        release,
        home / "boot" / f"vmlinuz-{release}",
        _modules(home, release),
        f"Debian package {info.get('package')} {info.get('version')} ({SUITES[name][2]})",
        frozenset(),
        home,
        info,
    )


def _modules(home: Path, release: str) -> Path:
    """lib/modules/<release> of an unpacked package (trixie's ships it under usr/)."""
    for cand in (home / "lib" / "modules" / release, home / "usr" / "lib" / "modules" / release):
        if cand.is_dir():
            return cand
    return home / "lib" / "modules" / release


def how_to_get(name: str) -> str:
    return f"sudo cowlab kernels get {name}   (apt: {SUITES[name][0]}'s linux-image-amd64, ~60-110 MB)"


def cache_prefixes(name: str) -> list[str]:
    return [f"debian-{SUITES[name][1].split(chr(92))[0]}", f"apt-{SUITES[name][0]}"]


def _mirrors() -> tuple[str, str]:
    """The Debian and Debian security mirrors the host's apt already uses (no other host is
    ever named)."""
    main = security = ""
    for f in [
        *Path("/etc/apt/sources.list.d").glob("*.sources"),
        Path("/etc/apt/sources.list"),
        *Path("/etc/apt/sources.list.d").glob("*.list"),
    ]:
        try:
            text = f.read_text()
        except OSError:
            continue
        uris = re.findall(r"^URIs:\s*(\S+)", text, re.M) + re.findall(
            r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+", text, re.M
        )
        for u in uris:
            u = u.rstrip("/")
            if "security" in u:
                security = security or u
            else:
                main = main or u
    if not main:
        raise CowlabError(
            "no Debian mirror in /etc/apt/sources.list(.d): cowlab fetches kernels through the host's own"
        )
    return main, security


def _apt(suite: str) -> tuple[list[str], Path]:
    """apt-get/apt-cache options for a private configuration that sees only `suite`."""
    d = cache_dir() / f"apt-{suite}"
    for sub in ("lists/partial", "cache/archives/partial"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    main, security = _mirrors()
    lines = [f"deb [signed-by={KEYRING}] {main} {suite} main"]
    if security:
        lines.append(f"deb [signed-by={KEYRING}] {security} {suite}-security main")
    (d / "sources.list").write_text("\n".join(lines) + "\n")
    (d / "status").touch()
    opts = [
        "-o",
        f"Dir::Etc::SourceList={d / 'sources.list'}",
        "-o",
        "Dir::Etc::SourceParts=/nonexistent",
        "-o",
        "Dir::Etc::Preferences=/nonexistent",
        "-o",
        "Dir::Etc::PreferencesParts=/nonexistent",
        "-o",
        f"Dir::State::Lists={d / 'lists'}",
        "-o",
        f"Dir::Cache={d / 'cache'}",
        "-o",
        f"Dir::State::Status={d / 'status'}",
        "-o",
        "APT::Get::List-Cleanup=0",
        "-o",
        "APT::Architecture=amd64",
        "-o",
        "Acquire::Languages=none",
        "-o",
        "APT::Sandbox::User=root",
        "-o",
        "Debug::NoLocking=1",
    ]
    return opts, d


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    cp = subprocess.run(argv, capture_output=True, text=True, cwd=cwd)
    if cp.returncode != 0:
        raise CowlabError(f"{what} failed: {(cp.stderr or cp.stdout).strip().splitlines()[-1:] or cp.returncode}")
    return cp.stdout


def obtain(name: str, echo=print) -> Kernel:
    found = find(name)
    if found is not None:
        echo(f"kernel {name}: {found.release} ({found.origin})")
        return found
    suite, pattern, what = SUITES[name]
    opts, d = _apt(suite)
    t0 = time.monotonic()
    echo(f"kernel {name}: apt update of {suite} (private configuration in {d})")
    _run(["apt-get", *opts, "-qq", "update"], f"apt-get update ({suite})")
    dep = _run(["apt-cache", *opts, "depends", "linux-image-amd64"], f"apt-cache depends linux-image-amd64 ({suite})")
    pkgs = re.findall(rf"Depends:\s*(linux-image-{pattern})\b", dep)
    if not pkgs:
        raise CowlabError(f"{suite}'s linux-image-amd64 depends on no generic linux-image ({dep.strip()[:200]})")
    pkg = pkgs[0]
    release = pkg.removeprefix("linux-image-")
    debs = cache_dir() / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    echo(f"kernel {name}: apt-get download {pkg}")
    _run(["apt-get", *opts, "-qq", "download", pkg], f"apt-get download {pkg}", cwd=debs)
    deb = max(debs.glob(f"{pkg}_*.deb"), key=lambda p: p.stat().st_mtime)
    version = _run(["dpkg-deb", "-f", str(deb), "Version"], "dpkg-deb -f").strip()
    home = cache_dir() / f"debian-{release}"
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=f".debian-{release}-") as tmp:
        _run(["dpkg-deb", "-x", str(deb), tmp], f"dpkg-deb -x {deb.name}")
        if not (Path(tmp) / "boot" / f"vmlinuz-{release}").is_file():
            raise CowlabError(f"{deb.name} has no boot/vmlinuz-{release}")
        # modules.dep for the guest's modprobe (virtme-ng would otherwise run depmod in the cache)
        mods = _modules(Path(tmp), release)
        _run(["depmod", "-a", "-b", str(mods.parents[2]), release], f"depmod {release}")
        (Path(tmp) / "fetch.json").write_text(
            json.dumps(
                {
                    "package": pkg,
                    "version": version,
                    "suite": suite,
                    "deb": deb.name,
                    "deb_bytes": deb.stat().st_size,
                    "fetch_seconds": round(time.monotonic() - t0, 1),
                },
                indent=1,
            )
            + "\n"
        )
        if home.exists():
            shutil.rmtree(home)
        Path(tmp).rename(home)  # complete or absent
    deb.unlink()  # unpacked: the .deb is not needed again
    got = find(name)
    if got is None:
        raise CowlabError(f"kernel {name}: unpacked {pkg} into {home}, but it is not usable there")
    echo(f"kernel {name}: {release} in {home} ({time.monotonic() - t0:.0f} s)")
    return got
