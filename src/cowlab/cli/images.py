"""`cowlab image ...`: build, import, list and remove images."""

from __future__ import annotations

import click
from rich.table import Table

from cowlab.base.units import human_bytes
from cowlab.cli.common import bytes_progress, out, state_of
from cowlab.run.runner import require_root
from cowlab.store import spec
from cowlab.store.images import ImageStore


@click.group()
def image():
    """Build, import, list and remove images."""


@image.command("build")
@click.argument("spec_file", metavar="SPEC.toml", type=click.Path(dir_okay=False))
@click.option("--name", help="Image name (default: the spec's name).")
@click.pass_context
def image_build(ctx, spec_file, name):
    """Build an image from a declarative spec (see `python -m pydoc cowlab.store.spec`)."""
    sp = spec.load(spec_file)  # spec errors come before any state is touched
    from cowlab.store.layers import spec_bytes

    total = spec_bytes(sp)
    with bytes_progress(f"building {name or sp.name}", total) as advance:
        img = ImageStore(state_of(ctx)).build(sp, name, progress=advance)
    click.echo(f"{img.name} {img.short} {len(img.layers)} layer(s) {img.content_bytes} bytes")


@image.command("import")
@click.argument("archive", type=click.Path(dir_okay=False))
@click.option("--name", help="Image name (default: the archive's tag).")
@click.pass_context
def image_import(ctx, archive, name):
    """Import a `docker save` archive or an OCI image layout tar."""
    img = ImageStore(state_of(ctx)).import_archive(archive, name)
    click.echo(f"{img.name} {img.short} {len(img.layers)} layer(s) {img.content_bytes} bytes")


@image.command("ls")
@click.pass_context
def image_ls(ctx):
    """List images."""
    t = Table("name", "id", "layers", "content", "source")
    for img in ImageStore(state_of(ctx)).list():
        t.add_row(img.name, img.short, str(len(img.layers)), human_bytes(img.content_bytes), img.source)
    out.print(t)


@image.command("rm")
@click.argument("name")
@click.pass_context
def image_rm(ctx, name):
    """Remove an image (refused while a container uses it)."""
    from cowlab.run import holdings

    require_root()
    state = state_of(ctx)
    click.echo(f"removed {holdings.remove_image(state, ImageStore(state), name)}")


@image.command("prune")
@click.pass_context
def image_prune(ctx):
    """Remove every image no container uses, with its layers and imported copies (frees the disk)."""
    from cowlab.run import holdings

    require_root()
    state = state_of(ctx)
    before = holdings.total_bytes(state)
    removed, kept = holdings.prune_images(state)
    for line in [f"removed {r}" for r in removed] + kept:
        click.echo(line)
    click.echo(
        f"freed {human_bytes(max(0, before - holdings.total_bytes(state)))}; "
        f"{state.path} now holds {human_bytes(holdings.total_bytes(state))}"
    )
