"""`cowlab drivers`: every backend, available here or why not and how to get it."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from cowlab.cli.common import out
from cowlab.run import vmroute
from cowlab.storage import drivers


@click.command("drivers")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def drivers_cmd(as_json):
    """Every backend: available here, or why not and how to get it."""
    rows: list[dict[str, Any]] = []  # what --json prints
    for name, cls in drivers.DRIVERS.items():
        p = vmroute.probe(cls)
        rows.append(
            {
                "driver": name,
                "available": p.available,
                "route": "native" if p.available else p.details.get("route"),
                "reason": p.reason,
                "hint": p.hint,
                "description": cls.description,
                "max_layers": cls.max_layers,
                "details": p.details,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    t = Table("driver", "status", "reason / how to get it", "what it is")
    for r in rows:
        st = "[green]available[/]" if r["available"] else "[red]unavailable[/]"
        if not r["available"] and r.get("route") == "vm":  # e.g. devicemapper on a kernel without it
            st = "[yellow]in kernel VM[/]"
        why = "" if r["available"] else f"{r['reason']}" + (f" — {r['hint']}" if r["hint"] else "")
        if r["available"] and r.get("details"):  # e.g. zfs: implementation and version
            why = ", ".join(f"{k}: {v}" for k, v in r["details"].items() if isinstance(v, (str, int)) and v != "")
        # Reasons and hints are plain text: `pip install 'cowlab[vm]'` must not lose "[vm]" to markup.
        t.add_row(r["driver"], st, escape(why), escape(r["description"]))
    out.print(t)
