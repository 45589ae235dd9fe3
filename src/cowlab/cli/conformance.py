"""`cowlab conformance`: each driver's containers compared with a plain directory."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import click
from rich.table import Table

from cowlab.cli.common import err, out, state_of, steps_progress, vm_option
from cowlab.run import vmroute
from cowlab.run.runner import require_root, sigterm_as_interrupt
from cowlab.storage import drivers, kernels


@click.command("conformance")
@click.option(
    "--driver",
    "driver_names",
    multiple=True,
    metavar="NAME",
    help="Only this driver (repeatable; default: every driver, unavailable ones listed).",
)
@click.option("--case", "case_names", multiple=True, metavar="NAME", help="Only this case (repeatable).")
@click.option("--every-layer", is_flag=True, help="Compare images of every depth of deep cases (slower).")
@click.option("--list", "list_cases", is_flag=True, help="List the cases and exit.")
@vm_option("Drivers this kernel lacks (device mapper) run in the kernel VM (emulated).")
@click.option(
    "--device",
    default=None,
    metavar="DEV",
    help="devicemapper-direct's block device (everything on it is lost; the VM brings its own).",
)
@click.option("--kernel", metavar="NAME", help="Run every driver in the kernel VM on this kernel (`cowlab kernels`).")
@click.option("--json", "json_out", default=None, metavar="FILE", help="Also write the results as JSON.")
@click.pass_context
def conformance_cmd(ctx, driver_names, case_names, every_layer, list_cases, vm_mode, device, kernel, json_out):
    """Compare each driver's containers with a plain directory (the conformance suite).

    Prints a driver × case table; exits non-zero if any case fails on any driver (or a driver
    named with --driver is unavailable)."""
    from cowlab.measure import conformance as C
    from cowlab.storage import vm

    chosen = C.cases(case_names)
    if list_cases:
        t = Table("case", "layers", "what it checks")
        for c in chosen:
            t.add_row(c.name, str(len(c.layers)), c.doc)
        out.print(t)
        return
    for n in driver_names:
        drivers.get(n)  # an unknown name is an error before any work
    options = {"devicemapper-direct": {"device": device}} if device else {}
    if device:
        drivers.get("devicemapper-direct").check_options(
            options["devicemapper-direct"], here=vmroute.choose(drivers.get("devicemapper-direct"), vm_mode) == "native"
        )
    require_root()
    state = state_of(ctx)
    echo = lambda line: err.print(line, markup=False, highlight=False)  # noqa: E731
    if kernel and kernel != kernels.HOST:  # every driver asked for, in the VM on that kernel
        names = list(driver_names) or list(drivers.DRIVERS)
        for n in names:
            vmroute.choose(drivers.get(n), vm_mode, kernel)  # the VM and the kernel are there, or an error now
        results = [
            C.Result(n, c.name, "unavailable", [f"runs in the kernel VM ({kernel})"]) for n in names for c in chosen
        ]
        results = vmroute.conformance_in_vm(
            state, results, names, [c.name for c in chosen], every_layer, device, echo=echo, kernel=kernel
        )
    else:
        with sigterm_as_interrupt(), steps_progress() as prog:
            task = prog.add_task("conformance", total=None)
            results = C.run_suite(
                state,
                list(driver_names) or None,
                [c.name for c in chosen],
                every_layer=every_layer,
                options=options,
                keep_images=bool(os.environ.get(vm.IN_VM)),
                probe=vmroute.probe,
                progress=lambda d, i, n: prog.update(task, description=d, completed=i, total=n),
            )
        in_vm = [
            d
            for d in dict.fromkeys(r.driver for r in results if r.status == "unavailable")
            if vmroute.choose(drivers.get(d), vm_mode) == "vm"
        ]
        if in_vm:
            results = vmroute.conformance_in_vm(
                state, results, in_vm, [c.name for c in chosen], every_layer, device, echo=echo
            )
    if json_out:
        Path(json_out).write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=1) + "\n")
    names = list(dict.fromkeys(r.driver for r in results))
    style = {
        "pass": "[green]pass[/]",
        "fail": "[bold red]FAIL[/]",
        "error": "[bold red]ERROR[/]",
        "skip": "[yellow]skip[/]",
        "unavailable": "[dim]unavailable[/]",
        "deviation": "[cyan]deviation[/]",
    }
    t = Table("case", *names, title="conformance: driver × case (oracle: a plain directory)")
    by = {(r.driver, r.case): r for r in results}
    for c in chosen:
        t.add_row(c.name, *(style[by[(d, c.name)].status] for d in names))
    out.print(t)
    for d in names:
        rs = [r for r in results if r.driver == d]
        if rs and rs[0].status == "unavailable":
            out.print(f"[dim]{d}: unavailable: {rs[0].details[0]}[/]", highlight=False)
    for r in results:
        if r.status == "skip":
            out.print(f"[yellow]{r.driver} / {r.case}: skipped: {r.details[0]}[/]", highlight=False)
        for note in dict.fromkeys(r.notes):
            out.print(f"{r.driver} / {r.case}: note: {note}", highlight=False, markup=False)
    bad = [r for r in results if r.status in ("fail", "error")]
    for r in bad:
        out.print(f"[red]{r.driver} / {r.case}: {r.status}[/]", highlight=False)
        for line in r.details[:40]:
            out.print(f"    {line}", highlight=False, markup=False)
    ran = [r for r in results if r.status != "unavailable"]
    passed = sum(r.status == "pass" for r in ran)
    out.print(
        f"{passed} of {len(ran)} case run(s) passed on {len({r.driver for r in ran})} available "
        f"driver(s); {sum(r.status == 'deviation' for r in ran)} documented deviation(s); "
        f"{len(bad)} failed; {sum(r.status == 'skip' for r in ran)} skipped"
    )
    missing = [d for d in driver_names if by[(d, chosen[0].name)].status == "unavailable"]
    if missing:
        err.print(
            f"cowlab: error: driver {missing[0]} is unavailable: {by[(missing[0], chosen[0].name)].details[0]}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if bad or missing:
        sys.exit(1)
