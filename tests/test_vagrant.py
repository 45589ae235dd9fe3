"""vagrant/Vagrantfile: every machine is a backend cowlab knows, has its provisioning script, and
passes `vagrant validate` (offline; skipped where vagrant is not installed)."""

from __future__ import annotations

import ast
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
    """name -> {"scripts": [...], "storage": str} from the MACHINES table of the Vagrantfile."""
    text = VAGRANTFILE.read_text()
    table = text[text.index("MACHINES = {"):]
    table = table[:table.index("\n}\n")]
    out = {}
    for m in re.finditer(r'^\s*"([a-z0-9-]+)" => \{(.*?)^\s*\},', table, re.M | re.S):
        body = m.group(2)
        scripts = re.search(r"scripts: \[([^\]]*)\]", body).group(1)
        out[m.group(1)] = {"scripts": re.findall(r'"([^"]+)"', scripts),
                           "storage": re.search(r'storage: "([^"]+)"', body).group(1)}
    return out


def nox_backends() -> set[str]:
    """noxfile's BACKENDS, plus its PLANNED_BACKENDS if it has one, read without importing nox."""
    names: set[str] = set()
    for node in ast.parse((REPO / "noxfile.py").read_text()).body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if getattr(t, "id", None) in ("BACKENDS", "PLANNED_BACKENDS"):
                    names |= set(ast.literal_eval(node.value))
    return names


def test_machine_table_parses():
    assert set(machines()) == {"aufs", "overlay2", "btrfs", "zfs", "devicemapper-loop", "devicemapper-direct"}


def test_every_machine_is_a_backend():
    """A machine is named after a backend that has a bench session, or one that is planned: a driver
    cowlab registers (cowlab.drivers.DRIVERS) whose session is not in noxfile.py yet."""
    from cowlab import drivers
    known = nox_backends() | set(drivers.DRIVERS)
    unknown = sorted(set(machines()) - known)
    assert not unknown, f"Vagrant machines that are no backend of noxfile.py or cowlab.drivers: {unknown}"


def test_every_machine_has_its_provisioning_script():
    kinds = re.search(r"KIND: ([a-z| -]+)", (PROVISION / "vm-setup.sh").read_text()).group(1)
    kinds = {k.strip() for k in kinds.split("|")}
    for name, m in machines().items():
        assert any((PROVISION / s).exists() for s in m["scripts"]), \
            f"{name}: none of vagrant/provision/{m['scripts']} exists"
        assert m["storage"] in kinds, f"{name}: vm-setup.sh has no kind {m['storage']!r}"


@pytest.mark.parametrize("script", ["vagrant/Vagrantfile"])
def test_vagrant_validate(script, tmp_path):
    if not shutil.which("vagrant"):
        pytest.skip(f"vagrant is not installed; run: {INSTALL}")
    env = dict(os.environ, VAGRANT_CHECKPOINT_DISABLE="1", VAGRANT_HOME=str(tmp_path / "vagrant.d"),
               VAGRANT_DOTFILE_PATH=str(tmp_path / "dot-vagrant"))
    for k in ("COWLAB_VAGRANT_BOX_DEBIAN", "COWLAB_VAGRANT_BOX_UBUNTU", "VAGRANT_DEFAULT_PROVIDER"):
        env.pop(k, None)
    cp = subprocess.run(["vagrant", "validate"], cwd=REPO / "vagrant", env=env, capture_output=True,
                        text=True, timeout=300)
    if cp.returncode != 0 and "vagrant-libvirt" in cp.stdout + cp.stderr and "plugin" in cp.stdout + cp.stderr:
        pytest.skip(f"the vagrant-libvirt plugin is missing; run: {INSTALL}")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "validated successfully" in cp.stdout


def test_provisioning_scripts_parse():
    for p in [*PROVISION.glob("*.sh"), REPO / "vagrant" / "box" / "build.sh"]:
        cp = subprocess.run(["bash", "-n", str(p)], capture_output=True, text=True)
        assert cp.returncode == 0, f"{p}: {cp.stderr}"
