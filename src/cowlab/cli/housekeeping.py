"""`cowlab cleanup` and `cowlab status`: what a state root holds, and releasing what dead runs left."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from cowlab.base.units import human_bytes
from cowlab.cli.common import out, state_of
from cowlab.run import cleanup
from cowlab.run.runner import require_root


@click.command("cleanup")
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Also remove persistent containers, their backings and services, and driver storage.",
)
@click.option("--images", is_flag=True, help="Also remove every image (with --all: the state root is emptied).")
@click.pass_context
def cleanup_cmd(ctx, everything, images):
    """Release what dead runs left behind (mounts, loop devices, processes, files), and say
    what is kept and why."""
    from cowlab.run import holdings

    require_root()
    st = state_of(ctx, ensure=False)
    if not st.claimed:
        click.echo(f"nothing to do: {st.path} is not a cowlab state root")
        return
    before = holdings.total_bytes(st)
    lines = cleanup.sweep(st, everything)
    if images:
        removed, kept = holdings.prune_images(st)
        lines += [f"removed image {r}" for r in removed] + kept
    for line in lines:
        click.echo(line)
    if not lines:
        click.echo("nothing left behind by dead runs")
    for line in holdings.kept(st):
        click.echo(line)
    freed = before - holdings.total_bytes(st)
    click.echo(
        f"{st.path} holds {human_bytes(holdings.total_bytes(st))}"
        + (f" (freed {human_bytes(freed)})" if freed > 0 else "")
        + "; details: cowlab status"
    )


@click.command("status")
@click.pass_context
def status_cmd(ctx):
    """What cowlab holds and where: images, imported layers, containers, backings, daemons, runs."""
    from cowlab.run import holdings

    st = state_of(ctx, ensure=False)
    if not st.claimed:
        click.echo(f"{st.path}: no cowlab state root here (nothing held)")
        return
    require_root()
    held = holdings.survey(st)
    t = Table("what", "name", "where", "disk", "note", title=f"cowlab state root {st.path}")
    t.columns[2].overflow = "fold"  # a path cut short is no use
    for h in held:
        t.add_row(
            h.what, escape(h.name), escape(h.where), "" if h.bytes is None else human_bytes(h.bytes), escape(h.note)
        )
    if held:
        out.print(t)
    out.print(
        f"{st.path} holds {human_bytes(holdings.total_bytes(st))} in all; "
        f"`cowlab cleanup --all --images` frees everything",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
