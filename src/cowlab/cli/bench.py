"""`cowlab bench` and `cowlab show`: run workloads on a driver, and print a run's findings."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.console import Console

from cowlab.base import units
from cowlab.base.errors import CowlabError
from cowlab.cli.common import err, out, steps_progress, vm_option
from cowlab.run import vmroute
from cowlab.run.runner import BenchSession, sigterm_as_interrupt
from cowlab.storage import backing as B

LOCAL_RESULTS = "results/local"  # a user's own runs, kept apart from the committed reference runs


@click.command("bench")
@click.argument("driver_name", metavar="DRIVER")
@click.option("--quick", is_flag=True, help="The quick grid: a first answer in a few minutes.")
@click.option("--workload", "workloads", multiple=True, metavar="NAME", help="Run only these (repeatable).")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=LOCAL_RESULTS,
    show_default=True,
    help="Results directory (runs land in DIR/<host>/<run_id>; results/local is git-ignored, "
    "apart from the committed reference runs in results/<host>).",
)
@click.option(
    "--backing",
    default="host",
    show_default=True,
    type=click.Choice(B.KINDS),
    help="host: the state root's filesystem; ext4/xfs/btrfs: a loop filesystem cowlab makes.",
)
@click.option("--reps", type=int, help="Override the grid's repetitions.")
@click.option("--root", "root", metavar="DIR", help="State directory (same as the global --root).")
@click.option(
    "--backing-size",
    default="32G",
    show_default=True,
    metavar="SIZE",
    help="Size of a loop backing filesystem (sparse), also the one a btrfs-only driver gets.",
)
@click.option(
    "--mode",
    type=click.Choice(["primitive", "engine", "both"]),
    default=None,
    help="primitive: cowlab's own driver; engine: through a private Docker Engine (dockerd) "
    "with that storage driver; both (default when Docker is present).",
)
@vm_option(
    "Run in a throwaway kernel VM (virtme-ng, TCG): when the driver is missing natively (auto), always, or never."
)
@click.option(
    "--kernel",
    metavar="NAME",
    help="Run in the kernel VM on this kernel (5.10, 6.1, 6.12, aufs; host: natively); `cowlab kernels` lists them.",
)
@click.option("--device", metavar="DEV", help="The block device of a driver that takes one (devicemapper-direct).")
@click.option("--force", is_flag=True, help="Use --device even if it carries a filesystem signature.")
@click.option(
    "--opt",
    "opts",
    multiple=True,
    metavar="KEY=VALUE",
    help="A driver option (repeatable), e.g. block_size=128K, fs=ext4, no_space_timeout=5.",
)
@click.pass_context
def bench(
    ctx,
    driver_name,
    quick,
    workloads,
    out,
    backing,
    reps,
    root,
    backing_size,
    mode,
    vm_mode="auto",
    kernel=None,
    device=None,
    force=False,
    opts=(),
):
    """Run workloads on DRIVER and write results/local/<host>/<run_id>/."""
    dopts = dict(o.split("=", 1) if "=" in o else (o, "true") for o in opts)
    if vmroute.bench_route(driver_name, vm_mode, kernel) == "vm":
        sys.exit(
            vmroute.bench_in_vm(
                driver_name,
                root=root or ctx.obj["root"],
                out=Path(out),
                quick=quick,
                workloads=list(workloads),
                backing=backing,
                reps=reps,
                backing_size=backing_size,
                mode=mode,
                options=dopts,
                device=device,
                echo=lambda line: click.echo(line),
                kernel=kernel,
            )
        )
    if device:
        dopts.update(device=device, force=force)
    s = BenchSession(
        driver_name,
        quick,
        list(workloads) or None,
        Path(out),
        root or ctx.obj["root"],
        backing,
        argv=["cowlab", *sys.argv[1:]],
        reps=reps,
        backing_size=units.parse_size(backing_size),
    )
    why = s.resolve_mode(mode)
    s.driver_options = dopts
    s.check()
    err.print(
        f"mode: {s.mode} ({why})", markup=False, highlight=False, soft_wrap=True
    )  # (after check: errors are one line)
    status = "failed"
    with sigterm_as_interrupt(), steps_progress() as prog:
        task = prog.add_task("preparing", total=None)

        def progress(desc, done, total):
            prog.update(task, description=desc, completed=done, total=total)

        try:
            s.prepare(progress)
            s.run(progress)
            status = "complete"
        except KeyboardInterrupt:
            status = "interrupted"
        finally:
            if hasattr(s, "res"):
                errs = s.finish(status)
                for e in errs:
                    err.print(f"[red]teardown:[/] {e}")
    _print_summary(s)
    if status == "interrupted":
        err.print("interrupted: everything torn down; samples measured so far are kept")
        sys.exit(130)


def _print_summary(s: BenchSession) -> None:
    """One screen of findings; the full table goes to a file in the run directory."""
    from cowlab.report import summary

    if not s.records:
        return
    run = s.writer.run
    fallback: list[dict] = []
    note = ""
    if any(r.get("mode") == "engine" for r in s.records) and not any(
        r.get("mode", "primitive") == "primitive" and r["workload"] == "creation" for r in s.records
    ):
        fallback, src = summary.primitive_records_from(s.out, s.driver_name)
        note = f" (primitive from run {src})" if src else " (no primitive run of this driver in --out yet)"
    table = s.writer.dir / TABLE_FILE
    _write_table(table, s.records, fallback, note, run)
    from cowlab.base.sysutil import hand_over

    hand_over(table)
    summary.render_findings(out, s.records, _title(run, s.records), _rel(table), f"cowlab show {_rel(s.writer.dir)}")


TABLE_FILE = "summary.txt"


def _title(run: dict, records: list[dict]) -> str:
    from cowlab.base.units import human_seconds

    took = (
        f" in {human_seconds(run['ended'] - run['started'])}"
        if run.get("ended") is not None and run.get("started") is not None
        else ""
    )
    grid = "quick grid" if run.get("quick") else "full grid"
    return f"{run.get('driver')}, {grid}, {run.get('status', '?')}{took} on {run.get('hostname', '?')} (medians):"


def _rel(p: Path) -> str:
    try:
        r = os.path.relpath(p)
    except ValueError:
        return str(p)
    return r if not r.startswith("../..") else str(p)


def _write_table(path: Path, records: list[dict], fallback: list[dict], note: str, run: dict) -> None:
    from cowlab.report import summary

    with open(path, "w") as f:
        c = Console(file=f, width=110, color_system=None, force_terminal=False)
        summary.render_findings(c, records, _title(run, records), None, None)
        c.print()
        summary.render_table(c, records, title=f"{run.get('driver')}: every median (p10–p90)")
        summary.render_engine_table(c, records, fallback, note, run.get("driver", ""))


def _find_run(ref: str) -> Path:
    """A run directory: a path, or a run id looked up under results/ (local runs first)."""
    p = Path(ref)
    if (p / "samples.jsonl").exists():
        return p
    from cowlab.results import run_dirs

    base = Path("results")
    hits = [d for d in run_dirs([base]) if d.name == ref or d.name.startswith(ref)] if base.exists() else []
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise CowlabError(
            f"{ref!r} names {len(hits)} runs ({', '.join(h.name for h in hits[:3])}...); give more of the id"
        )
    raise CowlabError(
        f"no run {ref!r}: give a run directory (results/local/<host>/<run_id>) or a run id found under ./results"
    )


@click.command("show")
@click.argument("run_ref", metavar="RUN")
@click.option("--findings", "only_findings", is_flag=True, help="Only the findings, not the full table.")
def show_cmd(run_ref, only_findings):
    """Print a run's findings and its full table of medians again, at this terminal's width."""
    from cowlab.report import summary
    from cowlab.results import read_run

    d = _find_run(run_ref)
    run, recs = read_run(d)
    c = Console()
    summary.render_findings(c, recs, _title(run, recs), None, None)
    if not only_findings:
        c.print()
        summary.render_table(c, recs, title=f"{run.get('driver')}: every median (p10–p90), {d.name}")
        summary.render_engine_table(c, recs, [], "", run.get("driver", ""))
