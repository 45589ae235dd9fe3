"""vagrant/Vagrantfile: every machine is a backend cowlab knows, has its provisioning script, and
passes `vagrant validate` (offline; skipped where vagrant is not installed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VAGRANTFILE = REPO / "vagrant" / "Vagrantfile"
PROVISION = REPO / "vagrant" / "provision"
INSTALL = "sudo bash vagrant/provision/vagrant-host.sh"


def machines() -> dict[str, dict]:
    """name -> {"scripts": [...], "storage": str, ...}: vagrant/machines.json, the Vagrantfile's
    machine list (derived from the driver registry; tests/test_registry.py checks it is current)."""
    return json.loads((REPO / "vagrant" / "machines.json").read_text())


def test_vagrantfile_reads_its_machines_from_the_json():
    text = VAGRANTFILE.read_text()
    assert 'JSON.parse(File.read(File.join(HERE, "machines.json")))' in text
    assert "MACHINES.each do |name, m|" in text


def test_machine_table_parses():
    assert set(machines()) == {"aufs", "overlay2", "btrfs", "zfs", "devicemapper-loop", "devicemapper-direct"}
    for name, m in machines().items():
        assert m["os"] in ("debian", "ubuntu") and m["memory"] > 0 and m["cpus"] > 0, name
        assert isinstance(m["disk"], bool) and m["scripts"], name


def test_every_machine_is_a_backend():
    """A machine is named after a driver of the registry (so it has a bench session too)."""
    from cowlab.storage import drivers

    unknown = sorted(set(machines()) - set(drivers.DRIVERS))
    assert not unknown, f"Vagrant machines that are no driver of cowlab.storage.drivers: {unknown}"


def test_every_machine_has_its_provisioning_script():
    kinds = re.search(r"KIND: ([a-z| -]+)", (PROVISION / "vm-setup.sh").read_text()).group(1)
    kinds = {k.strip() for k in kinds.split("|")}
    for name, m in machines().items():
        assert any((PROVISION / s).exists() for s in m["scripts"]), (
            f"{name}: none of vagrant/provision/{m['scripts']} exists"
        )
        assert m["storage"] in kinds, f"{name}: vm-setup.sh has no kind {m['storage']!r}"


@pytest.mark.parametrize("script", ["vagrant/Vagrantfile"])
def test_vagrant_validate(script, tmp_path):
    if not shutil.which("vagrant"):
        pytest.skip(f"vagrant is not installed; run: {INSTALL}")
    env = dict(
        os.environ,
        VAGRANT_CHECKPOINT_DISABLE="1",
        VAGRANT_HOME=str(tmp_path / "vagrant.d"),
        VAGRANT_DOTFILE_PATH=str(tmp_path / "dot-vagrant"),
    )
    for k in ("COWLAB_VAGRANT_BOX_DEBIAN", "COWLAB_VAGRANT_BOX_UBUNTU", "VAGRANT_DEFAULT_PROVIDER"):
        env.pop(k, None)
    cp = subprocess.run(
        ["vagrant", "validate"], cwd=REPO / "vagrant", env=env, capture_output=True, text=True, timeout=300
    )
    if cp.returncode != 0 and "vagrant-libvirt" in cp.stdout + cp.stderr and "plugin" in cp.stdout + cp.stderr:
        pytest.skip(f"the vagrant-libvirt plugin is missing; run: {INSTALL}")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "validated successfully" in cp.stdout


def test_provisioning_scripts_parse():
    for p in [*PROVISION.glob("*.sh"), REPO / "vagrant" / "box" / "build.sh"]:
        cp = subprocess.run(["bash", "-n", str(p)], capture_output=True, text=True)
        assert cp.returncode == 0, f"{p}: {cp.stderr}"
