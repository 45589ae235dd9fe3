"""The layers of docs/architecture.md hold: `lint-imports` keeps pyproject's layers contract (and
fails on an upward import), no import cycle exists (imports inside functions included), and no
module imports another's private (_underscore) names."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PKG = SRC / "cowlab"


def _lint_imports(src: Path, cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is not installed: pip install -e '.[test]' (import-linter)")
    env = dict(os.environ, PYTHONPATH=str(src))
    return subprocess.run(
        [exe, "--no-cache", "--config", str(REPO / "pyproject.toml")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_layers_contract_is_kept():
    r = _lint_imports(SRC, REPO)
    assert r.returncode == 0, r.stdout + r.stderr


def test_an_upward_import_breaks_the_contract(tmp_path):
    """The contract can fail: the base layer's errors module importing the CLI is refused."""
    shutil.copytree(PKG, tmp_path / "cowlab", ignore=shutil.ignore_patterns("__pycache__"))
    f = tmp_path / "cowlab" / "base" / "errors.py"
    f.write_text(f.read_text() + "\n\ndef _upward():\n    from cowlab.cli import main  # noqa: F401\n")
    r = _lint_imports(tmp_path, tmp_path)
    assert r.returncode != 0 and "cowlab.base.errors -> cowlab.cli.main" in r.stdout, r.stdout + r.stderr


def test_a_module_outside_every_layer_breaks_the_contract(tmp_path):
    """The folders are the layers: a module put directly in cowlab/ sits in none, and fails."""
    shutil.copytree(PKG, tmp_path / "cowlab", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "cowlab" / "stray.py").write_text('"""A module in no layer."""\n')
    r = _lint_imports(tmp_path, tmp_path)
    assert r.returncode != 0 and "cowlab.stray" in r.stdout + r.stderr, r.stdout + r.stderr


def test_the_top_of_the_package_is_its_layers():
    """At most six modules directly in src/cowlab besides __init__ and __main__ (today: none)."""
    loose = sorted(p.name for p in PKG.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(loose) <= 6, loose


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        name = ".".join(p.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def _imports(name: str, path: Path, mods: dict[str, Path]):
    """(imported module, imported names) for every import of a cowlab module in path."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("cowlab."):
                    yield a.name, []
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod == "cowlab" or mod.startswith("cowlab."):
                yield mod, [a.name for a in node.names]


def test_no_import_cycles():
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for mod, names in _imports(m, p, mods):
            for t in [mod] + [f"{mod}.{n}" for n in names]:
                while t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                # a package's __init__ importing its own modules (and them importing a sibling
                # through the package) is how a package is assembled, not a cycle of layers
                if t in mods and t != m and t != "cowlab" and not m.startswith(t + "."):
                    edges[m].add(t)
    cycles, index, low, stack, on, n = [], {}, {}, [], set(), [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in mods:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_imports_anothers_private_names():
    """`from .x import _name` across modules is refused; a package's own private helper module
    (drivers._util) may be imported by the modules of that package."""
    mods = _modules()
    bad = []
    for m, p in mods.items():
        for mod, names in _imports(m, p, mods):
            parts = mod.split(".")
            private_mod = next((i for i, x in enumerate(parts) if x.startswith("_") and x != "__init__"), None)
            if private_mod is not None and not m.startswith(".".join(parts[:private_mod]) + "."):
                bad.append(f"{m} imports {mod}")
            for n in (n for n in names if not n.startswith("__")):  # dunders (__version__) are public
                if n.startswith("_") and f"{mod}.{n}" not in mods and mod != m:
                    bad.append(f"{m} imports {mod}.{n}")
                elif n.startswith("_") and f"{mod}.{n}" in mods and not m.startswith(mod + "."):
                    bad.append(f"{m} imports {mod}.{n}")
    assert not bad, bad


def test_package_data_ships_the_fio_jobs(tmp_path):
    """A build of the package (setuptools' build_py, what a wheel holds) has the io workload's
    job files: the installed library finds them beside its code, not in a source tree."""
    from cowlab.measure.workloads.io import JOBS

    cp = subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py", "-d", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cp.returncode == 0, cp.stderr
    shipped = {p.stem for p in (tmp_path / "cowlab" / "measure" / "workloads" / "fio").glob("*.fio")}
    assert set(JOBS) <= shipped, (sorted(JOBS), sorted(shipped))


def test_every_import_is_a_declared_dependency():
    import tomllib

    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = meta["dependencies"] + [r for extra in meta["optional-dependencies"].values() for r in extra]
    declared = {
        r.split(">")[0].split("=")[0].split("[")[0].split("<")[0].strip().lower().replace("-", "_") for r in reqs
    }
    dist = {"yaml": "pyyaml", "markdown_it": "markdown_it_py"}  # import name → distribution
    missing = set()
    for p in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and not node.level and node.module
                else []
            )
            for n in names:
                top = n.split(".")[0]
                if top in sys.stdlib_module_names or top == "cowlab":
                    continue
                if dist.get(top, top).lower() not in declared:
                    missing.add(f"{top} ({p.relative_to(SRC)})")
    assert not missing, sorted(missing)
