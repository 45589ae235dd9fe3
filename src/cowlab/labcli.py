"""`cowlab lab ...`: the behaviours the labs show, one command each, natively or in the kernel VM."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import click

from . import drivers, provenance
from .errors import CowlabError
from .results import RunWriter, Sample
from .state import StateRoot, resolve_root


@click.group()
def lab():
    """Lab demonstrations (thin pool exhaustion, ...)."""


@lab.command("thinpool")
@click.argument("driver_name", metavar="DRIVER", default="devicemapper-loop")
@click.option("--mode", "modes", multiple=True, type=click.Choice(["queue", "error", "timeout"]),
              help="queue: no_space_timeout=0, blocks until the pool grows; error: error_if_no_space, "
                   "ENOSPC at once; timeout: queue, then ENOSPC after --timeout s (repeatable; default all).")
@click.option("--timeout", default=5, show_default=True, type=int,
              help="no_space_timeout for the timeout mode (the kernel's default is 60 s).")
@click.option("--pool-size", default="64M", show_default=True, metavar="SIZE", help="Data area of the pool.")
@click.option("--device", help="devicemapper-direct: the block device (everything on it is lost).")
@click.option("--force", is_flag=True, help="Use --device even if it carries a signature.")
@click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True,
              help="Results directory (one run per mode, workload thinpool_<mode>).")
@click.option("--vm", "vm_mode", type=click.Choice(["auto", "always", "never"]), default="auto", show_default=True,
              help="Run in the kernel VM: when the driver is missing natively (auto), always, or never.")
@click.pass_context
def thinpool(ctx, driver_name, modes, timeout, pool_size, device, force, out, vm_mode):
    """Fill a thin pool and show what the writer sees: blocked, ENOSPC, or blocked then ENOSPC."""
    from . import autobacking, thinlab, vm
    from .runner import require_root
    modes = list(modes) or list(thinlab.MODES)
    pool_bytes = autobacking.parse_size(pool_size)
    cls = drivers.get(driver_name)
    root = (ctx.obj or {}).get("root")
    if vm.choose(cls, vm_mode) == "vm":
        require_root()
        state = StateRoot(resolve_root(root)).ensure()
        disks, dev_args = vm.guest_disks(cls, device, pool_bytes * 4)
        args = ["lab", "thinpool", driver_name, "--timeout", str(timeout), "--pool-size", pool_size,
                "--out", os.path.abspath(out), *dev_args, *[x for m in modes for x in ("--mode", m)]]
        args += ["--force"] if force else []
        r = vm.run(state, args, out=Path(out), disks=disks, state_disk=8 << 30)
        click.echo(f"cowlab-vm: boot {r.boot_seconds} s (not measured), VM {r.wall_seconds:.1f} s, "
                   f"guest kernel {r.guest.get('kernel')}")
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
        verdict = {"queue": "writer blocked, then resumed after the pool grew",
                   "error": "writer failed at once with ENOSPC",
                   "timeout": f"writer blocked ~{timeout} s, then failed with ENOSPC"}[mode]
        click.echo(f"=> {verdict}: {'yes' if ok else 'NO'} (blocked {rep['blocked_seconds']} s, "
                   f"final pool mode {rep['final_status']['mode']}, "
                   f"out_of_data_space {rep['final_status']['out_of_data_space']})")
        bad += not ok
    if bad:
        raise CowlabError(f"{bad} mode(s) did not behave as the kernel documents")


def _record(out: Path, driver: str, mode: str, rep: dict) -> None:
    """One run per mode in the results directory, like a bench run (run.json + samples)."""
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + f"-lab-thinpool-{mode}-{uuid.uuid4().hex[:4]}"
    prov = provenance.collect(["cowlab", *sys.argv[1:]])
    prov.update(driver=driver, harness="cowlab lab thinpool", workloads=[f"thinpool_{mode}"], lab=rep)
    w = RunWriter(out, run_id, prov)
    params = {"mode": mode, "pool_bytes": rep["pool_bytes"]}
    wl = f"thinpool_{mode}"
    if rep["blocked_seconds"] is not None:
        w.add(Sample("writer_blocked_seconds", rep["blocked_seconds"], "s", params), driver, wl)
    w.add(Sample("writer_failed", int(rep["writer_returncode"] != 0), "count", params), driver, wl)
    w.add(Sample("writer_enospc", int(rep["enospc"]), "count", params), driver, wl)
    w.add(Sample("pool_out_of_data_space_seen", int(any(e["event"] == "pool full" for e in rep["events"])),
                 "count", params), driver, wl)
    w.raw_path("thinpool.json").write_text(json.dumps(rep, indent=1))
    w.close("complete")
