"""Every backend cowlab knows, by the name users know it by: the one registry.

A driver module declares everything about its backend once (Driver: name, description,
capabilities, color, engine, vagrant), and vagrant/provision/<name>.sh installs what it needs.
noxfile.py's bench sessions, vagrant/machines.json (the Vagrantfile's machines), engine mode's
driver list, figure colours, `cowlab cleanup` and the table of docs/drivers.md derive from it
(`python -m cowlab.storage.drivers --write` regenerates the two files; tests/test_registry.py checks).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path

from cowlab.base.errors import CowlabError
from cowlab.storage.drivers.base import Container, Driver, Probe


def _discover() -> dict[str, type[Driver]]:
    """Every Driver with a name of its own in a module (or a backend's sub-package) of this package (not _private, not base),
    by name: adding a backend is adding its module (and vagrant/provision/<name>.sh)."""
    found: dict[str, type[Driver]] = {}
    for m in pkgutil.iter_modules(__path__):
        if m.name.startswith("_") or m.name == "base":
            continue
        mod = importlib.import_module(f"{__name__}.{m.name}")
        for obj in vars(mod).values():
            own = obj.__module__ == mod.__name__ if isinstance(obj, type) else False
            if hasattr(mod, "__path__") and isinstance(obj, type):  # a backend's own package
                own = obj.__module__.startswith(mod.__name__ + ".")
            if own and issubclass(obj, Driver) and "name" in vars(obj):
                if obj.name in found:
                    raise ImportError(f"two drivers named {obj.name!r}: {found[obj.name]} and {obj}")
                found[obj.name] = obj
    return dict(sorted(found.items()))


DRIVERS: dict[str, type[Driver]] = _discover()


def get(name: str) -> type[Driver]:
    try:
        return DRIVERS[name]
    except KeyError:
        raise CowlabError(f"unknown driver {name!r}; drivers: {', '.join(DRIVERS)}") from None


# What every driver declares itself (or a family base of its own module, not another driver).
DECLARED = ("name", "description", "capabilities", "color", "engine", "vagrant")
PROVISION_DIR = "vagrant/provision"


def provision_script(name: str) -> str:
    """The script that installs what backend `name` needs, relative to the project root."""
    return f"{PROVISION_DIR}/{name}.sh"


def undeclared(cls: type[Driver]) -> list[str]:
    """The registry fields cls does not declare itself (inheriting another driver's is not
    declaring: fuse-overlayfs is an Overlay2 but its colour is its own)."""
    registered = {c for c in DRIVERS.values() if c is not cls} | {Driver}
    out = []
    for f in DECLARED:
        owner = next((k for k in cls.__mro__ if f in vars(k)), None)
        if owner is None or owner in registered:
            out.append(f)
    return out


def machines() -> dict[str, dict]:
    """vagrant/machines.json: one workshop VM per driver that declares one, named after it."""
    return {n: dict(cls.vagrant) for n, cls in DRIVERS.items() if cls.vagrant is not None}


def machines_json() -> str:
    return json.dumps(machines(), indent=2) + "\n"


DOC_BEGIN, DOC_END = "<!-- drivers:begin (python -m cowlab.storage.drivers --write) -->", "<!-- drivers:end -->"


def doc_table() -> str:
    """The table of docs/drivers.md."""
    rows = [
        "| driver | what it is | capabilities | engine mode (dockerd) | Vagrant machine | installs |",
        "|---|---|---|---|---|---|",
    ]
    for n, cls in DRIVERS.items():
        eng = "—" if cls.engine is None else (cls.engine.get("docker_name") or n)
        vm = "—" if cls.vagrant is None else f"`vagrant up {n}`"
        rows.append(
            f"| `{n}` | {cls.description} | {', '.join(sorted(cls.capabilities)) or '—'} | {eng} | "
            f"{vm} | `{provision_script(n)}` |"
        )
    return "\n".join(rows)


def with_doc_table(text: str) -> str:
    """text with the part between DOC_BEGIN and DOC_END replaced by doc_table()."""
    a, b = text.index(DOC_BEGIN) + len(DOC_BEGIN), text.index(DOC_END)
    return text[:a] + "\n" + doc_table() + "\n" + text[b:]


def write(root: Path) -> list[Path]:
    """Regenerate vagrant/machines.json and the table of docs/drivers.md under project root."""
    m, d = root / "vagrant" / "machines.json", root / "docs" / "drivers.md"
    m.write_text(machines_json())
    d.write_text(with_doc_table(d.read_text()))
    return [m, d]


__all__ = ["DRIVERS", "Container", "Driver", "Probe", "get", "machines", "provision_script", "undeclared"]
