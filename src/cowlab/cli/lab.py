"""`cowlab lab ...`: the behaviours the labs show, one command each, natively or in the kernel VM."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import click

from cowlab.base import provenance
from cowlab.base.errors import CowlabError
from cowlab.base.state import StateRoot, resolve_root
from cowlab.cli.common import vm_option
from cowlab.results import RunWriter, Sample
from cowlab.storage import drivers


@click.group()
def lab():
    """The workshop: list, replay and check the labs in labs/ (and the thin-pool demonstration)."""


_labs_opt = click.option(
    "--labs",
    "labs_path",
    metavar="DIR",
    envvar="COWLAB_LABS",
    help="The labs directory (default: labs/ of this checkout, or $COWLAB_LABS).",
)


def _state_of(ctx) -> StateRoot:
    return StateRoot(resolve_root((ctx.obj or {}).get("root")))


@lab.command("list")
@_labs_opt
@click.option("--json", "as_json", is_flag=True, help="Machine-readable: id, title, minutes, runnable, reason...")
def lab_list(labs_path, as_json):
    """Every lab: id, title, minutes, what it needs, and whether it runs here (or why not)."""
    from cowlab.labs import lesson, needs

    rows: list[dict] = []  # printed as JSON or as a table: values of mixed types
    for les in lesson.load_all(lesson.labs_dir(labs_path)):
        v = needs.evaluate(les.needs)
        rows.append(
            {
                "id": les.id,
                "title": les.title,
                "minutes": les.minutes,
                "file": les.path.name,
                "needs": les.needs,
                "runnable": v.runnable,
                "route": v.route,
                "reason": v.reason,
                "hint": "; ".join(dict.fromkeys(v.hints)),
                "steps": len(les.body_steps),
                "replay_seconds": les.replay_seconds,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table("id", "lab", "min", "here", box=None, pad_edge=False)
    for r in rows:
        here = (
            ("[green]yes[/]" if r["route"] == "native" else "[yellow]in kernel VM[/]")
            if r["runnable"]
            else f"[red]no[/]: {escape(r['reason'])}" + (f" — {escape(r['hint'])}" if r["hint"] else "")
        )
        t.add_row(r["id"], escape(r["title"]), str(r["minutes"]), here)
    Console().print(t)


@lab.command("scripts")
@click.argument("lab_ids", nargs=-1, metavar="[ID...]")
@_labs_opt
def lab_scripts(lab_ids, labs_path):
    """The provisioning scripts (vagrant/provision/NAME.sh) these labs need (all labs by default),
    one name a line: what `nox -s labs` runs before replaying them."""
    from cowlab.labs import lesson, needs

    d = lesson.labs_dir(labs_path)
    chosen = [lesson.find(d, i) for i in lab_ids] if lab_ids else lesson.load_all(d)
    for name in needs.scripts([les.needs for les in chosen], d.parent):
        click.echo(name)


@lab.command("run")
@click.argument("lab_ids", nargs=-1, metavar="ID...")
@click.option("--all", "run_all", is_flag=True, help="Every lab runnable here (the VM ones in one VM boot).")
@_labs_opt
@vm_option("Labs that need what only the kernel VM has run there (auto); never: skip them.")
@click.option(
    "--kernel",
    metavar="NAME",
    help="Replay in the kernel VM on this kernel (5.10, 6.1, 6.12, aufs; "
    "`cowlab kernels`); a lab that can't hold there says why.",
)
@click.option("--json-report", type=click.Path(dir_okay=False), help="Write the reports as JSON to this file.")
@click.option(
    "--only-vm",
    is_flag=True,
    help="With --all: only the labs that run in the kernel VM (CI replays them beside the native "
    "ones, which `--vm never` selects).",
)
@click.option(
    "--fresh-shells",
    is_flag=True,
    help="Before each step that uses what earlier steps left in the shell, run it in a new shell "
    "too: it must stop and name the step to run (every lab's text is checked for that anyway).",
)
@click.pass_context
def lab_run(ctx, lab_ids, run_all, labs_path, vm_mode, kernel, json_report, only_vm, fresh_shells):
    """Replay labs unattended: every step run as typed, every expectation checked.

    Exits 0 only when every lab asked for ran and held; with --all, labs that can't run here are
    listed with the reason and do not count as passed."""
    from cowlab.labs import lesson, needs, replay
    from cowlab.run.runner import require_root, sigterm_as_interrupt

    d = lesson.labs_dir(labs_path)
    if run_all == bool(lab_ids):
        raise CowlabError("name lab ids (see `cowlab lab list`) or --all, not both")
    if only_vm and (not run_all or vm_mode == "never"):
        raise CowlabError("--only-vm selects among --all, and not with --vm never")
    chosen = lesson.load_all(d) if run_all else [lesson.find(d, i) for i in lab_ids]
    if kernel and kernel != "host":
        from cowlab.storage import kernels

        kernels.find(kernel)  # an unknown name is an error before any work
    require_root()
    state = _state_of(ctx)
    native, skipped = [], []
    in_vm: dict[str | None, list] = {}  # kernel -> labs: one VM boot per kernel
    for les in chosen:
        v = needs.evaluate(les.needs, vm_mode, kernel)
        if not v.runnable:
            if not run_all:
                from cowlab.base.errors import Unavailable

                raise Unavailable(f"lab {les.id} ({les.title})", v.reason, "; ".join(dict.fromkeys(v.hints)))
            skipped.append((les, v))
        elif v.route == "vm":
            in_vm.setdefault(v.kernel, []).append(les)
        elif not only_vm:
            native.append(les)
    reports = []
    with sigterm_as_interrupt():
        for les in native:
            reports.append(replay.run(les, state, echo=click.echo, vm_mode="never", fresh_shells=fresh_shells))
        for k, group in in_vm.items():
            click.echo(f"=== labs {', '.join(les.id for les in group)} in the kernel VM (kernel {k}): one boot ===")
            reports += replay.run_in_vm(group, state, click.echo, d, kernel=k)
    if json_report:
        Path(json_report).write_text(json.dumps([r.as_dict() for r in reports], indent=1))
    click.echo("")
    for r in reports:
        click.echo(
            f"{'PASS' if r.ok else 'FAIL'}  lab {r.id}  {r.title}  ({r.seconds:.0f} s, {r.route})"
            + (f"  {r.skipped}" if r.skipped else "")
        )
        for s in r.steps:
            if not s.ok:
                click.echo(f"        step {s.n} {s.title}: {s.failures[0] if s.failures else 'failed'}")
    for les, v in skipped:
        click.echo(f"SKIP  lab {les.id}  {les.title}: {v.reason}")
    bad = [r for r in reports if not r.ok]
    if bad:
        raise CowlabError(f"{len(bad)} of {len(reports)} lab(s) failed: {', '.join(r.id for r in bad)}")
    if not reports:
        raise CowlabError("no lab could run here")


@lab.command("check")
@click.argument("lab_id", metavar="ID")
@_labs_opt
@click.pass_context
def lab_check(ctx, lab_id, labs_path):
    """For attendees: is my machine where the lab expects it? One line per step, with hints."""
    from cowlab.labs import lesson, replay

    les = lesson.find(lesson.labs_dir(labs_path), lab_id)
    results = replay.check(les, _state_of(ctx))
    if not results:
        raise CowlabError(f"lab {les.id} has no checks")
    notes = replay.shell_notes(les, replay.find_workdir(_state_of(ctx), les.id))
    done = max((i for i, (_, ok, _) in enumerate(results) if ok), default=-1)
    for i, (step, ok, _) in enumerate(results):
        mark = "✓" if ok else ("·" if i > done else "✗")
        click.echo(f"{mark} step {step.n}: {step.label}")
        if not ok and i <= done + 1:
            for h in step.hints or ["redo this step as the lab shows it"]:
                click.echo(f"    hint: {h}")
    for line in notes:
        click.echo(line)
    nxt = results[done + 1][0] if done + 1 < len(results) else None
    if nxt is None:
        click.echo(f"lab {les.id}: every step with a check is done")
    else:
        click.echo(f"lab {les.id}: next is step {nxt.n} ({nxt.label})")
    if any(not ok for i, (_, ok, _) in enumerate(results) if i <= done):
        sys.exit(1)


@lab.command("workdir")
@click.argument("lab_id", metavar="ID")
@click.pass_context
def lab_workdir(ctx, lab_id):
    """Print (and make) the lab's own directory, $LAB: everything the lab makes lives there."""
    from cowlab.labs import replay
    from cowlab.run.runner import require_root

    require_root()
    state = _state_of(ctx)
    home = replay.home_root(state)
    if home.path != state.path and not os.environ.get(replay.WORKDIR_ENV):
        click.echo(
            f"cowlab: {state.path} is an earlier lab's own state root (COWLAB_ROOT is still "
            f"exported); this lab's workspace goes under {home.path}/labs. A fresh `sudo -i` "
            "per lab starts clean",
            err=True,
        )
    click.echo(str(replay.workdir_for(state, lab_id.zfill(2) if lab_id.isdigit() else lab_id)))


@lab.command("reset")
@click.argument("lab_id", metavar="ID")
@click.pass_context
def lab_reset(ctx, lab_id):
    """Release everything the lab's directory holds (mounts, loop devices, cowlab state) and remove it."""
    from cowlab.labs import replay
    from cowlab.run.runner import require_root

    require_root()
    for line in replay.reset(_state_of(ctx), lab_id.zfill(2) if lab_id.isdigit() else lab_id):
        click.echo(line)
    click.echo(f"lab {lab_id}: reset")


@lab.command("thinpool")
@click.argument("driver_name", metavar="DRIVER", default="devicemapper-loop")
@click.option(
    "--mode",
    "modes",
    multiple=True,
    type=click.Choice(["queue", "error", "timeout"]),
    help="queue: no_space_timeout=0, blocks until the pool grows; error: error_if_no_space, "
    "ENOSPC at once; timeout: queue, then ENOSPC after --timeout s (repeatable; default all).",
)
@click.option(
    "--timeout",
    default=5,
    show_default=True,
    type=int,
    help="no_space_timeout for the timeout mode (the kernel's default is 60 s).",
)
@click.option("--pool-size", default="64M", show_default=True, metavar="SIZE", help="Data area of the pool.")
@click.option("--device", help="devicemapper-direct: the block device (everything on it is lost).")
@click.option("--force", is_flag=True, help="Use --device even if it carries a signature.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="results",
    show_default=True,
    help="Results directory (one run per mode, workload thinpool_<mode>).",
)
@vm_option("Run in the kernel VM: when the driver is missing natively (auto), always, or never.")
@click.pass_context
def thinpool(ctx, driver_name, modes, timeout, pool_size, device, force, out, vm_mode):
    """Fill a thin pool and show what the writer sees: blocked, ENOSPC, or blocked then ENOSPC."""
    from cowlab.base.sysutil import require_root
    from cowlab.labs import thinlab
    from cowlab.run import vmroute
    from cowlab.storage import autobacking, vm

    modes = list(modes) or list(thinlab.MODES)
    pool_bytes = autobacking.parse_size(pool_size)
    cls = drivers.get(driver_name)
    root = (ctx.obj or {}).get("root")
    if vmroute.choose(cls, vm_mode) == "vm":
        require_root()
        state = StateRoot(resolve_root(root)).ensure()
        disks, dev_args = vmroute.guest_disks(cls, device, pool_bytes * 4)
        args = [
            "lab",
            "thinpool",
            driver_name,
            "--timeout",
            str(timeout),
            "--pool-size",
            pool_size,
            "--out",
            os.path.abspath(out),
            *dev_args,
            *[x for m in modes for x in ("--mode", m)],
        ]
        args += ["--force"] if force else []
        r = vm.run(state, args, out=Path(out), disks=disks, state_disk=8 << 30)
        click.echo(
            f"cowlab-vm: boot {r.boot_seconds} s (not measured), VM {r.wall_seconds:.1f} s, "
            f"guest kernel {r.guest.get('kernel')}"
        )
        sys.exit(r.returncode)
    require_root()
    state = StateRoot(resolve_root(root))
    opts = {"device": device, "force": force} if device else {}
    bad = 0
    for mode in modes:
        click.echo(f"--- thin pool, mode {mode} ---")
        rep = thinlab.run(driver_name, state, mode, timeout, pool_bytes, opts, echo=click.echo)
        _record(Path(out), driver_name, mode, rep)
        expect_ok = mode == "queue"
        ok = (rep["writer_returncode"] == 0) if expect_ok else rep["enospc"]
        verdict = {
            "queue": "writer blocked, then resumed after the pool grew",
            "error": "writer failed at once with ENOSPC",
            "timeout": f"writer blocked ~{timeout} s, then failed with ENOSPC",
        }[mode]
        click.echo(
            f"=> {verdict}: {'yes' if ok else 'NO'} (blocked {rep['blocked_seconds']} s, "
            f"final pool mode {rep['final_status']['mode']}, "
            f"out_of_data_space {rep['final_status']['out_of_data_space']})"
        )
        bad += not ok
    if bad:
        raise CowlabError(f"{bad} mode(s) did not behave as the kernel documents")


def _record(out: Path, driver: str, mode: str, rep: dict) -> None:
    """One run per mode in the results directory, like a bench run (run.json + samples)."""
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-lab-thinpool-{mode}-{uuid.uuid4().hex[:4]}"
    prov = provenance.collect(["cowlab", *sys.argv[1:]])
    prov.update(driver=driver, harness="cowlab lab thinpool", workloads=[f"thinpool_{mode}"], lab=rep)
    w = RunWriter(out, run_id, prov)
    params = {"pool_mode": mode, "pool_bytes": rep["pool_bytes"]}  # not "mode": that column is primitive|engine
    wl = f"thinpool_{mode}"
    if rep["blocked_seconds"] is not None:
        w.add(Sample("writer_blocked_seconds", rep["blocked_seconds"], "s", params), driver, wl)
    w.add(Sample("writer_failed", int(rep["writer_returncode"] != 0), "count", params), driver, wl)
    w.add(Sample("writer_enospc", int(rep["enospc"]), "count", params), driver, wl)
    w.add(
        Sample(
            "pool_out_of_data_space_seen", int(any(e["event"] == "pool full" for e in rep["events"])), "count", params
        ),
        driver,
        wl,
    )
    w.raw_path("thinpool.json").write_text(json.dumps(rep, indent=1))
    w.close("complete")
