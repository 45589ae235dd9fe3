"""`cowlab container ...`: create, list and remove containers (cowlab.run.containers)."""

from __future__ import annotations

import click
from rich.table import Table

from cowlab.cli.common import err, out, state_of
from cowlab.run import containers


@click.group()
def container():
    """Create, list and remove containers (writable roots you can cd into)."""


@container.command("create")
@click.argument("image_ref", metavar="IMAGE")
@click.option("--driver", "driver_name", required=True, help="Storage driver (see `cowlab drivers`).")
@click.pass_context
def container_create(ctx, image_ref, driver_name):
    """Create a container; its mountpoint is printed on stdout (the only thing printed there):

    mnt=$(cowlab container create IMAGE --driver overlay2) && cd "$mnt"
    """
    c, img = containers.create(state_of(ctx, ensure=False), image_ref, driver_name, status=err.status)
    # Only the mountpoint goes to stdout, so `mnt=$(cowlab container create ...) && cd "$mnt"`
    # gets the path or, when create fails, a non-zero status (and an empty $mnt) to stop on.
    err.print(
        f"created {c.id} ({driver_name}, image {img.name}); remove it with: cowlab container rm {c.id}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    click.echo(str(c.mountpoint))


@container.command("ls")
@click.pass_context
def container_ls(ctx):
    """List containers."""
    t = Table("id", "image", "driver", "mountpoint")
    for o in containers.listed(state_of(ctx)):
        m = o["meta"]
        t.add_row(m.get("id", "?"), m.get("image", "?"), m.get("driver", "?"), m.get("mountpoint", "?"))
    out.print(t)


@container.command("rm")
@click.argument("ref", metavar="ID_OR_MOUNTPOINT")
@click.pass_context
def container_rm(ctx, ref):
    """Remove a container by id or mountpoint."""
    for line in containers.remove(state_of(ctx), ref):
        click.echo(line)
