"""The kernels the kernel VM boots (cowlab.storage.kernels): names, the machine-wide cache, the
choice of route a --kernel makes, and pruning only what is asked — without booting anything
(tests/test_kernels_vm.py boots them)."""

from __future__ import annotations

import json

import pytest

from cowlab.base.errors import CowlabError
from cowlab.run import vmroute
from cowlab.storage import kernels, vm
from cowlab.storage.drivers.base import Probe
from cowlab.storage.kernels import debian


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path / "kernels"))
    (tmp_path / "kernels").mkdir()
    return tmp_path / "kernels"


def _fake_debian(cache, release: str, package_version: str = "1") -> None:
    home = cache / f"debian-{release}"
    (home / "boot").mkdir(parents=True)
    (home / "boot" / f"vmlinuz-{release}").write_bytes(b"MZ")
    (home / "lib" / "modules" / release).mkdir(parents=True)
    (home / "fetch.json").write_text(json.dumps({"package": f"linux-image-{release}", "version": package_version}))


def test_names_and_unknown_name():
    assert {"host", "5.10", "6.1", "6.12", "aufs"} <= set(kernels.names())
    with pytest.raises(CowlabError, match="no such kernel"):
        kernels.find("4.19")


def test_a_cached_debian_kernel_is_found_with_its_modules(cache, monkeypatch):
    monkeypatch.setattr(debian, "_from_boot", lambda name: None)  # not the host's /boot
    assert kernels.find("5.10") is None
    assert "cowlab kernels get 5.10" in kernels.how_to_get("5.10")
    _fake_debian(cache, "5.10.0-45-amd64")
    _fake_debian(cache, "5.10.0-46-amd64")
    _fake_debian(cache, "6.12.118+deb13-amd64")
    (cache / "debian-6.1.0-3-amd64").mkdir()  # half made: no fetch.json, so not a kernel
    k = kernels.find("5.10")
    assert k is not None and k.release == "5.10.0-46-amd64"  # the newest
    assert k.modules == cache / "debian-5.10.0-46-amd64" / "lib" / "modules" / "5.10.0-46-amd64"
    assert kernels.find("6.12").release == "6.12.118+deb13-amd64"
    assert kernels.find("6.1") is None
    assert vm._module_args(k) == ["--rodir", str(cache / "debian-5.10.0-46-amd64")]


def test_prune_removes_only_the_named_kernel(cache, monkeypatch):
    monkeypatch.setattr(debian, "_from_boot", lambda name: None)
    _fake_debian(cache, "5.10.0-46-amd64")
    _fake_debian(cache, "6.12.118+deb13-amd64")
    lines = kernels.prune(["5.10"])
    assert len(lines) == 1 and "debian-5.10.0-46-amd64" in lines[0]
    assert kernels.find("5.10") is None and kernels.find("6.12") is not None
    kernels.prune()
    assert list(cache.iterdir()) == []


def test_a_kernel_choice_routes_to_the_vm(monkeypatch):
    class Native:
        vm_kernel = "6.1"

        @staticmethod
        def probe():
            return Probe(True)

    asked = []
    monkeypatch.setattr(vm, "why_unavailable", lambda name=None: asked.append(name) or "")
    monkeypatch.setattr(kernels, "find", lambda name: object())
    assert vmroute.choose(Native, "auto", "5.10") == "vm" and asked[-1] == "5.10"
    assert vmroute.choose(Native, "auto", "host") == "native"
    assert vmroute.choose(Native, "auto") == "native"
    with pytest.raises(CowlabError, match="--vm never"):
        vmroute.choose(Native, "never", "6.12")
    monkeypatch.setattr(vm, "why_unavailable", lambda name=None: f"no {name} kernel")
    with pytest.raises(CowlabError, match="no aufs kernel"):
        vmroute.choose(Native, "auto", "aufs")


def test_aufs_is_routed_to_the_aufs_kernel():
    from cowlab.storage.drivers.aufs import Aufs

    assert Aufs.vm_route and Aufs.vm_kernel == "aufs"
    assert vmroute.vm_kernel(Aufs) == "aufs" and vmroute.vm_kernel(Aufs, "6.12") == "6.12"
