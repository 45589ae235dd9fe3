"""`cowlab kernels`: the kernels the kernel VM boots — what is cached, what can be had and how,
getting one, and freeing the space."""

from __future__ import annotations

import json

import click
from rich.markup import escape
from rich.table import Table

from cowlab.base.units import human_bytes
from cowlab.cli.common import err, out
from cowlab.run.runner import require_root
from cowlab.storage import kernels


@click.group("kernels", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable listing.")
@click.pass_context
def kernels_cmd(ctx, as_json):
    """The kernels `--kernel NAME` boots in the kernel VM (cache: /var/cache/cowlab/kernels)."""
    if ctx.invoked_subcommand is not None:
        return
    rows = kernels.listing()
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    t = Table("kernel", "status", "release", "disk", "where / how to get it", title=f"kernels ({kernels.cache_dir()})")
    t.columns[4].overflow = "fold"
    for r in rows:
        t.add_row(
            r["kernel"],
            "[green]cached[/]" if r["cached"] else "[dim]not here[/]",
            r["release"] or "",
            human_bytes(r["bytes"]) if r["bytes"] else "",
            escape(r["path"] if r["cached"] else r["get"]),
        )
    out.print(t)
    out.print("host: the machine's own kernel, natively (no VM)", highlight=False)


@kernels_cmd.command("get")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
def kernels_get(names):
    """Fetch (Debian's, by package name with apt) or build (aufs) these kernels into the cache."""
    for n in names:
        kernels.how_to_get(n)  # an unknown name is an error before any work
    require_root()
    for n in names:
        k = kernels.obtain(n, echo=lambda line: err.print(line, markup=False, highlight=False, soft_wrap=True))
        click.echo(f"{n}: {k.release} at {k.home or k.image}")


@kernels_cmd.command("prune")
@click.argument("names", nargs=-1, metavar="[NAME...]")
def kernels_prune(names):
    """Remove cached kernels (every one, or those named) and free their space."""
    require_root()
    lines = kernels.prune(list(names) or None)
    for line in lines:
        click.echo(line)
    if not lines:
        click.echo(f"nothing cached in {kernels.cache_dir()}")
