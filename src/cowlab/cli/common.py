"""What every command module of the CLI shares: the consoles, the state root of a command, and
its progress bars."""

from __future__ import annotations

import os
from contextlib import contextmanager

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cowlab.base.state import StateRoot, resolve_root
from cowlab.run.runner import require_root
from cowlab.storage.vm import MODES

out = Console()  # the terminal's width: the summary is written to fit 80 columns
err = Console(stderr=True)


def vm_option(help: str):
    """`--vm auto|always|never` (into `vm_mode`): where a command that can use the kernel VM runs."""
    return click.option("--vm", "vm_mode", type=click.Choice(list(MODES)), default="auto", show_default=True, help=help)


def state_of(ctx, ensure=True) -> StateRoot:
    st = StateRoot(resolve_root((ctx.obj or {}).get("root")))
    if ensure:
        require_root()  # the state root is root's: one clear line instead of a PermissionError
    return st.ensure() if ensure else st


def steps_progress() -> Progress:
    """A bar of steps (description, n of m, time) on stderr that disappears when done."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


@contextmanager
def bytes_progress(desc: str, total: int):
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as prog:
        task = prog.add_task(desc, total=max(total, 1))
        yield lambda n: prog.advance(task, n)


def starttime():
    from cowlab.base.sysutil import proc_starttime

    return proc_starttime(os.getpid())
