"""The `cowlab` command: a thin layer over the library."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cowlab import __version__
from cowlab.storage import autobacking, drivers
from cowlab.run import cleanup, vmroute
from cowlab.store import spec
from cowlab.base import units
from cowlab.base.units import human_bytes
from cowlab.storage import backing as B
from cowlab.base.errors import CowlabError, Unavailable
from cowlab.store.images import ImageStore
from cowlab.base.resources import Resources, owners
from cowlab.run.runner import BenchSession, require_root, sigterm_as_interrupt
from cowlab.base.state import StateRoot, resolve_root

out = Console()  # the terminal's width: the summary is written to fit 80 columns
err = Console(stderr=True)


def _state(ctx, ensure=True) -> StateRoot:
    st = StateRoot(resolve_root(ctx.obj["root"]))
    if ensure:
        require_root()  # the state root is root's: one clear line instead of a PermissionError
    return st.ensure() if ensure else st


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", envvar="COWLAB_ROOT", metavar="DIR",
              help="State directory (default /var/lib/cowlab, or $COWLAB_ROOT).")
@click.version_option(__version__)
@click.pass_context
def cli(ctx, root):
    """Measure what copy-on-write storage under container engines really costs."""
    ctx.obj = {"root": root}


# --- drivers ---------------------------------------------------------------------------------
@cli.command("drivers")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def drivers_cmd(as_json):
    """Every backend: available here, or why not and how to get it."""
    rows = []
    for name, cls in drivers.DRIVERS.items():
        p = vmroute.probe(cls)
        rows.append({"driver": name, "available": p.available,
                     "route": "native" if p.available else p.details.get("route"),
                     "reason": p.reason, "hint": p.hint, "description": cls.description,
                     "max_layers": cls.max_layers, "details": p.details})
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


# --- images ----------------------------------------------------------------------------------
@cli.group()
def image():
    """Build, import, list and remove images."""


@image.command("build")
@click.argument("spec_file", metavar="SPEC.toml", type=click.Path(dir_okay=False))
@click.option("--name", help="Image name (default: the spec's name).")
@click.pass_context
def image_build(ctx, spec_file, name):
    """Build an image from a declarative spec (see `python -m pydoc cowlab.store.spec`)."""
    sp = spec.load(spec_file)          # spec errors come before any state is touched
    from cowlab.store.layers import spec_bytes
    total = spec_bytes(sp)
    with _bytes_progress(f"building {name or sp.name}", total) as advance:
        img = ImageStore(_state(ctx)).build(sp, name, progress=advance)
    click.echo(f"{img.name} {img.short} {len(img.layers)} layer(s) {img.content_bytes} bytes")


@image.command("import")
@click.argument("archive", type=click.Path(dir_okay=False))
@click.option("--name", help="Image name (default: the archive's tag).")
@click.pass_context
def image_import(ctx, archive, name):
    """Import a `docker save` archive or an OCI image layout tar."""
    img = ImageStore(_state(ctx)).import_archive(archive, name)
    click.echo(f"{img.name} {img.short} {len(img.layers)} layer(s) {img.content_bytes} bytes")


@image.command("ls")
@click.pass_context
def image_ls(ctx):
    """List images."""
    t = Table("name", "id", "layers", "content", "source")
    for img in ImageStore(_state(ctx)).list():
        t.add_row(img.name, img.short, str(len(img.layers)), human_bytes(img.content_bytes), img.source)
    out.print(t)


@image.command("rm")
@click.argument("name")
@click.pass_context
def image_rm(ctx, name):
    """Remove an image (refused while a container uses it)."""
    from cowlab.run import holdings
    require_root()
    state = _state(ctx)
    click.echo(f"removed {holdings.remove_image(state, ImageStore(state), name)}")


@image.command("prune")
@click.pass_context
def image_prune(ctx):
    """Remove every image no container uses, with its layers and imported copies (frees the disk)."""
    from cowlab.run import holdings
    require_root()
    state = _state(ctx)
    before = holdings.total_bytes(state)
    removed, kept = holdings.prune_images(state)
    for line in [f"removed {r}" for r in removed] + kept:
        click.echo(line)
    click.echo(f"freed {human_bytes(max(0, before - holdings.total_bytes(state)))}; "
               f"{state.path} now holds {human_bytes(holdings.total_bytes(state))}")


# --- containers ------------------------------------------------------------------------------
@cli.group()
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
    cls = drivers.get(driver_name)
    require_root()
    p = vmroute.probe(cls)
    if not p.available:
        raise Unavailable(f"driver {driver_name}", p.reason, p.hint)
    state = _state(ctx)
    store = ImageStore(state)
    img = store.get(image_ref)
    if cls.max_layers and len(img.layers) > cls.max_layers:
        raise CowlabError(f"image {img.name} has {len(img.layers)} layers; {driver_name} supports at most {cls.max_layers}")
    with Resources.for_run(state) as imports:
        # A driver with its own daemon or pool (zfs) keeps it under a persistent owner, so the
        # container outlives this command; a btrfs-only driver gets a persistent loop btrfs.
        svc = Resources(state, f"service-{driver_name}", "backing", {"driver": driver_name}) if cls.services else imports
        drv = cls(autobacking.persistent(state, cls), svc, store)
        need = drv.space_needed(img) + (0 if drv.has_image(img) else img.content_bytes)
        if need > drv.backing.free_bytes():
            raise CowlabError(f"creating a {driver_name} container of {img.name} needs about {human_bytes(need)}; "
                              f"{drv.backing.path} has {human_bytes(drv.backing.free_bytes())} free")
        with err.status(f"importing {img.name} into {driver_name}"):
            drv.import_image(img)
        cid = drv.new_id()
        res = Resources(state, f"ctr-{cid}", "container", {"id": cid, "image": img.name, "image_id": img.id,
                                                           "driver": driver_name,
                                                           # until created: if we die half way,
                                                           # `cowlab cleanup` releases it
                                                           "creating": {"pid": os.getpid(),
                                                                        "starttime": _starttime()}})
        try:
            with err.status(f"creating a {driver_name} container"):
                c = drv.create(img, res, cid)
        except BaseException:
            res.close()
            raise
        res.meta["mountpoint"] = str(c.mountpoint)
        res.meta.pop("creating", None)  # complete: persistent from now on
        Resources(state, res.owner, "container", res.meta)  # rewrite owner.json with the mountpoint
    # Only the mountpoint goes to stdout, so `mnt=$(cowlab container create ...) && cd "$mnt"`
    # gets the path or, when create fails, a non-zero status (and an empty $mnt) to stop on.
    err.print(f"created {c.id} ({driver_name}, image {img.name}); remove it with: cowlab container rm {c.id}",
              markup=False, highlight=False, soft_wrap=True)
    click.echo(str(c.mountpoint))


from contextlib import contextmanager


@contextmanager
def _bytes_progress(desc: str, total: int):
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeElapsedColumn(), console=err, transient=True) as prog:
        task = prog.add_task(desc, total=max(total, 1))
        yield lambda n: prog.advance(task, n)


def _starttime():
    from cowlab.base.sysutil import proc_starttime
    return proc_starttime(os.getpid())


def _containers(state):
    return [o for o in owners(state) if o["kind"] == "container"]


@container.command("ls")
@click.pass_context
def container_ls(ctx):
    """List containers."""
    t = Table("id", "image", "driver", "mountpoint")
    for o in _containers(_state(ctx)):
        m = o["meta"]
        t.add_row(m.get("id", "?"), m.get("image", "?"), m.get("driver", "?"), m.get("mountpoint", "?"))
    out.print(t)


@container.command("rm")
@click.argument("ref", metavar="ID_OR_MOUNTPOINT")
@click.pass_context
def container_rm(ctx, ref):
    """Remove a container by id or mountpoint."""
    require_root()
    state = _state(ctx)
    real = os.path.realpath(ref) if os.path.exists(ref) else None
    for o in _containers(state):
        m = o["meta"]
        if ref == m.get("id") or (real and real == m.get("mountpoint")):
            _refuse_if_busy(m)
            errs = Resources.open(state, o["owner"]).close()
            if errs:
                raise CowlabError("could not remove everything: " + "; ".join(errs))
            click.echo(f"removed {m['id']}")
            from cowlab.run import holdings
            for line in holdings.release_unused(state, m.get("driver", "")):
                click.echo(line)
            return
    raise CowlabError(f"no container {ref!r} (see `cowlab container ls`)")


def _refuse_if_busy(meta: dict) -> None:
    """Before anything is released: a shell sitting inside the container (`cd "$mnt"`) or a
    process holding it would make the unmount fail after a wait; say so at once, and who."""
    from cowlab.base import sysutil
    mp = meta.get("mountpoint")
    if not mp:
        return
    try:
        cwd = os.getcwd()
    except OSError:  # our working directory was removed: it is not inside a live mount
        cwd = ""
    if cwd == mp or cwd.startswith(mp.rstrip("/") + "/"):
        raise CowlabError(f"your working directory {cwd} is inside container {meta.get('id')}; "
                          f"cd out of it (e.g. `cd ~`), then run `cowlab container rm {meta.get('id')}` again")
    me = {os.getpid(), os.getppid()}  # cowlab (and sudo) inherit the shell's cwd, checked above
    others = [h for h in sysutil.holders(mp) if h[0] not in me]
    if others:
        raise CowlabError(f"container {meta.get('id')} at {mp} is busy: " + sysutil.describe_holders_of(others))


# --- bench -----------------------------------------------------------------------------------
LOCAL_RESULTS = "results/local"  # a user's own runs, kept apart from the committed reference runs

@cli.command()
@click.argument("driver_name", metavar="DRIVER")
@click.option("--quick", is_flag=True, help="The quick grid: a first answer in a few minutes.")
@click.option("--workload", "workloads", multiple=True, metavar="NAME", help="Run only these (repeatable).")
@click.option("--out", type=click.Path(file_okay=False), default=LOCAL_RESULTS, show_default=True,
              help="Results directory (runs land in DIR/<host>/<run_id>; results/local is git-ignored, "
                   "apart from the committed reference runs in results/<host>).")
@click.option("--backing", default="host", show_default=True, type=click.Choice(B.KINDS),
              help="host: the state root's filesystem; ext4/xfs/btrfs: a loop filesystem cowlab makes.")
@click.option("--reps", type=int, help="Override the grid's repetitions.")
@click.option("--root", "root", metavar="DIR", help="State directory (same as the global --root).")
@click.option("--backing-size", default="32G", show_default=True, metavar="SIZE",
              help="Size of a loop backing filesystem (sparse), also the one a btrfs-only driver gets.")
@click.option("--mode", type=click.Choice(["primitive", "engine", "both"]), default=None,
              help="primitive: cowlab's own driver; engine: through a private Docker Engine (dockerd) "
                   "with that storage driver; both (default when Docker is present).")
@click.option("--vm", "vm_mode", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="Run in a throwaway kernel VM (virtme-ng, TCG): when the driver is missing natively (auto), "
                   "always, or never.")
@click.option("--device", metavar="DEV", help="The block device of a driver that takes one (devicemapper-direct).")
@click.option("--force", is_flag=True, help="Use --device even if it carries a filesystem signature.")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE",
              help="A driver option (repeatable), e.g. block_size=128K, fs=ext4, no_space_timeout=5.")
@click.pass_context
def bench(ctx, driver_name, quick, workloads, out, backing, reps, root, backing_size, mode,
          vm_mode="auto", device=None, force=False, opts=()):
    """Run workloads on DRIVER and write results/local/<host>/<run_id>/."""
    dopts = dict(o.split("=", 1) if "=" in o else (o, "true") for o in opts)
    if vmroute.bench_route(driver_name, vm_mode) == "vm":
        sys.exit(vmroute.bench_in_vm(driver_name, root=root or ctx.obj["root"], out=Path(out), quick=quick,
                                     workloads=list(workloads), backing=backing, reps=reps,
                                     backing_size=backing_size, mode=mode, options=dopts, device=device,
                                     echo=lambda line: click.echo(line)))
    if device:
        dopts.update(device=device, force=force)
    s = BenchSession(driver_name, quick, list(workloads) or None, Path(out), root or ctx.obj["root"], backing,
                     argv=["cowlab", *sys.argv[1:]], reps=reps,
                     backing_size=units.parse_size(backing_size))
    why = s.resolve_mode(mode)
    s.driver_options = dopts
    s.check()
    err.print(f"mode: {s.mode} ({why})", markup=False, highlight=False, soft_wrap=True)  # (after check: errors are one line)
    status = "failed"
    with sigterm_as_interrupt(), Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                          TimeElapsedColumn(), console=err, transient=True) as prog:
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
    fallback, note = [], ""
    if any(r.get("mode") == "engine" for r in s.records) and not any(
            r.get("mode", "primitive") == "primitive" and r["workload"] == "creation" for r in s.records):
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
    took = (f" in {human_seconds(run['ended'] - run['started'])}"
            if run.get("ended") is not None and run.get("started") is not None else "")
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
        raise CowlabError(f"{ref!r} names {len(hits)} runs ({', '.join(h.name for h in hits[:3])}...); give more of the id")
    raise CowlabError(f"no run {ref!r}: give a run directory (results/local/<host>/<run_id>) or a run id found under ./results")


@cli.command("show")
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


# --- cleanup ---------------------------------------------------------------------------------
@cli.command("cleanup")
@click.option("--all", "everything", is_flag=True,
              help="Also remove persistent containers, their backings and services, and driver storage.")
@click.option("--images", is_flag=True, help="Also remove every image (with --all: the state root is emptied).")
@click.pass_context
def cleanup_cmd(ctx, everything, images):
    """Release what dead runs left behind (mounts, loop devices, processes, files), and say
    what is kept and why."""
    from cowlab.run import holdings
    require_root()
    st = _state(ctx, ensure=False)
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
    click.echo(f"{st.path} holds {human_bytes(holdings.total_bytes(st))}" +
               (f" (freed {human_bytes(freed)})" if freed > 0 else "") + "; details: cowlab status")


@cli.command("status")
@click.pass_context
def status_cmd(ctx):
    """What cowlab holds and where: images, imported layers, containers, backings, daemons, runs."""
    from cowlab.run import holdings
    st = _state(ctx, ensure=False)
    if not st.claimed:
        click.echo(f"{st.path}: no cowlab state root here (nothing held)")
        return
    require_root()
    held = holdings.survey(st)
    t = Table("what", "name", "where", "disk", "note", title=f"cowlab state root {st.path}")
    t.columns[2].overflow = "fold"  # a path cut short is no use
    for h in held:
        t.add_row(h.what, escape(h.name), escape(h.where), "" if h.bytes is None else human_bytes(h.bytes),
                  escape(h.note))
    if held:
        out.print(t)
    out.print(f"{st.path} holds {human_bytes(holdings.total_bytes(st))} in all; "
              f"`cowlab cleanup --all --images` frees everything", markup=False, highlight=False, soft_wrap=True)


from cowlab.cli.lab import lab as _lab  # noqa: E402

cli.add_command(_lab)
from cowlab.cli.report import compare_cmd as _compare, report_cmd as _report  # noqa: E402

cli.add_command(_report), cli.add_command(_compare)


# --- conformance -----------------------------------------------------------------------------
@cli.command("conformance")
@click.option("--driver", "driver_names", multiple=True, metavar="NAME",
              help="Only this driver (repeatable; default: every driver, unavailable ones listed).")
@click.option("--case", "case_names", multiple=True, metavar="NAME", help="Only this case (repeatable).")
@click.option("--every-layer", is_flag=True, help="Compare images of every depth of deep cases (slower).")
@click.option("--list", "list_cases", is_flag=True, help="List the cases and exit.")
@click.option("--vm", "vm_mode", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="Drivers this kernel lacks (device mapper) run in the kernel VM (emulated).")
@click.option("--device", default=None, metavar="DEV",
              help="devicemapper-direct's block device (everything on it is lost; the VM brings its own).")
@click.option("--json", "json_out", default=None, metavar="FILE", help="Also write the results as JSON.")
@click.pass_context
def conformance_cmd(ctx, driver_names, case_names, every_layer, list_cases, vm_mode, device, json_out):
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
        drivers.get("devicemapper-direct").check_options(options["devicemapper-direct"],
                                                         here=vmroute.choose(drivers.get("devicemapper-direct"),
                                                                             vm_mode) == "native")
    require_root()
    state = _state(ctx)
    with sigterm_as_interrupt(), Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                          TimeElapsedColumn(), console=err, transient=True) as prog:
        task = prog.add_task("conformance", total=None)
        results = C.run_suite(state, list(driver_names) or None, [c.name for c in chosen],
                              every_layer=every_layer, options=options, keep_images=bool(os.environ.get(vm.IN_VM)),
                              probe=vmroute.probe, progress=lambda d, i, n: prog.update(task, description=d, completed=i, total=n))
    in_vm = [d for d in dict.fromkeys(r.driver for r in results if r.status == "unavailable")
             if vmroute.choose(drivers.get(d), vm_mode) == "vm"]
    if in_vm:
        results = vmroute.conformance_in_vm(state, results, in_vm, [c.name for c in chosen], every_layer, device,
                                            echo=lambda line: err.print(line, markup=False, highlight=False))
    if json_out:
        Path(json_out).write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=1) + "\n")
    names = list(dict.fromkeys(r.driver for r in results))
    style = {"pass": "[green]pass[/]", "fail": "[bold red]FAIL[/]", "error": "[bold red]ERROR[/]",
             "skip": "[yellow]skip[/]", "unavailable": "[dim]unavailable[/]",
             "deviation": "[cyan]deviation[/]"}
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
    out.print(f"{passed} of {len(ran)} case run(s) passed on {len({r.driver for r in ran})} available "
              f"driver(s); {sum(r.status == 'deviation' for r in ran)} documented deviation(s); "
              f"{len(bad)} failed; {sum(r.status == 'skip' for r in ran)} skipped")
    missing = [d for d in driver_names if by[(d, chosen[0].name)].status == "unavailable"]
    if missing:
        err.print(f"cowlab: error: driver {missing[0]} is unavailable: {by[(missing[0], chosen[0].name)].details[0]}",
                  markup=False, highlight=False, soft_wrap=True)
    if bad or missing:
        sys.exit(1)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except CowlabError as e:
        err.print(f"cowlab: error: {e}", markup=False, highlight=False, soft_wrap=True)  # one line
        sys.exit(1)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # a bug: one line, and the traceback on request
        if os.environ.get("COWLAB_DEBUG"):
            raise
        err.print(f"cowlab: internal error: {type(e).__name__}: {e} (COWLAB_DEBUG=1 shows the traceback)",
                  markup=False, highlight=False, soft_wrap=True)
        sys.exit(3)


if __name__ == "__main__":
    main()
