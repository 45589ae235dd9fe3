"""The driver registry: each driver module declares everything about its backend once, and nox
sessions, engine mode, figure colours, cleanup, the Vagrant machines and the docs derive from it.
Adding a driver is one module plus one provisioning script (docs/adding-a-driver.md)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
from matplotlib.colors import is_color_like

from cowlab.measure.engine import drivers as ED
from cowlab.run import cleanup
from cowlab.storage import drivers
from cowlab.storage.drivers import DRIVERS
from cowlab.storage.drivers.vfs import Vfs

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(DRIVERS))
def test_every_driver_declares_its_backend(name):
    cls = DRIVERS[name]
    assert drivers.undeclared(cls) == [], f"{name} does not declare {drivers.undeclared(cls)} itself"
    assert cls.name == name and cls.description and isinstance(cls.capabilities, frozenset)
    assert is_color_like(cls.color), cls.color
    if cls.engine is not None:
        assert ED.EngineDriver(name, **cls.engine).storage_driver
    if cls.vagrant is not None:
        assert set(cls.vagrant) == {"os", "memory", "cpus", "disk", "storage", "scripts"}
        assert any((REPO / drivers.PROVISION_DIR / s).exists() for s in cls.vagrant["scripts"])
    script = REPO / drivers.provision_script(name)
    assert script.exists(), f"{name}: no provisioning script {script}"
    text = script.read_text()
    assert "common.sh" in text or "host.sh" in text or re.search(r'exec bash "\$here/[\w-]+\.sh" "\$@"', text)
    cp = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr


def test_colours_are_distinct():
    colours = [cls.color for cls in DRIVERS.values()]
    assert len(set(colours)) == len(colours), colours


def test_a_missing_declaration_is_caught():
    class Incomplete(Vfs):  # inherits vfs's colour, engine and machine: not declared
        name = "incomplete"
        description = "a driver that forgot the registry"
        capabilities = frozenset()

    assert drivers.undeclared(Incomplete) == ["color", "engine", "vagrant"]


def test_generated_files_are_current():
    """vagrant/machines.json and the table of docs/drivers.md are what the registry says
    (regenerate: python -m cowlab.storage.drivers --write)."""
    assert (REPO / "vagrant" / "machines.json").read_text() == drivers.machines_json()
    doc = (REPO / "docs" / "drivers.md").read_text()
    assert doc == drivers.with_doc_table(doc)


def test_engine_mode_derives_its_drivers():
    declared = {n for n, cls in DRIVERS.items() if cls.engine is not None}
    assert set(ED.ENGINE_DRIVERS) - {"devicemapper"} == declared  # + Docker's engine-only name
    assert ED.ENGINE_DRIVERS["devicemapper-direct"].pool_driver == "devicemapper-direct"
    assert ED.ENGINE_DRIVERS["devicemapper-loop"].storage_driver == "devicemapper"


def test_figures_derive_their_colours():
    from cowlab.report import figures

    for n, cls in DRIVERS.items():
        assert figures.driver_color(n) == cls.color
    assert is_color_like(figures.driver_color("devicemapper"))  # engine-only: a stable spare colour


def test_nox_has_a_bench_session_per_driver(monkeypatch):
    """noxfile.py, executed with a stand-in for nox that records the sessions it declares."""
    names = []
    fake = types.ModuleType("nox")
    fake.options = types.SimpleNamespace()

    def session(fn=None, name=None, **kw):
        def deco(f):
            names.append(name or f.__name__)
            return f

        return deco(fn) if callable(fn) else deco

    fake.session = session
    monkeypatch.setitem(sys.modules, "nox", fake)
    exec(compile((REPO / "noxfile.py").read_text(), "noxfile.py", "exec"), {"__file__": str(REPO / "noxfile.py")})
    assert {f"bench-{n}" for n in DRIVERS} <= set(names)


def test_cleanup_runs_every_drivers_sweep(state, monkeypatch):
    class Sweeping(Vfs):
        name = "sweeping"
        description = "a driver whose cleanup hook reports what it saw"
        capabilities = frozenset()
        color, engine, vagrant = "black", None, None

        @classmethod
        def sweep_strays(cls, st, entries):
            return [f"swept {st.path} with {len(entries)} journal entries"]

    monkeypatch.setitem(DRIVERS, "sweeping", Sweeping)
    assert f"swept {state.path} with 0 journal entries" in cleanup.sweep(state)


def _example_module() -> str:
    doc = (REPO / "docs" / "adding-a-driver.md").read_text()
    return re.search(r"```python\n(.*?)```", doc, re.S).group(1)


def test_adding_a_driver_is_one_module(tmp_path):
    """The module of docs/adding-a-driver.md, dropped into a copy of the package, is a driver:
    registered, in engine mode's list or not as it declares, coloured in figures, complete."""
    shutil.copytree(REPO / "src" / "cowlab", tmp_path / "cowlab", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "cowlab" / "storage" / "drivers" / "reflink.py").write_text(_example_module())
    code = (
        "import json; from cowlab.storage import drivers; from cowlab.report import figures; "
        "from cowlab.measure.engine import drivers as ED; "
        "c = drivers.get('reflink'); "
        "print(json.dumps({'undeclared': drivers.undeclared(c), 'color': figures.driver_color('reflink'), "
        "'engine': 'reflink' in ED.ENGINE_DRIVERS, 'machine': 'reflink' in drivers.machines(), "
        "'copy': c.COPY, 'module': c.__module__, 'table': '`reflink`' in drivers.doc_table()}))"
    )
    cp = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert cp.returncode == 0, cp.stderr
    got = json.loads(cp.stdout)
    assert got == {
        "undeclared": [],
        "color": "#1b9e77",
        "engine": False,
        "machine": False,
        "copy": ["cp", "-a", "--reflink=always"],
        "module": "cowlab.storage.drivers.reflink",
        "table": True,
    }
