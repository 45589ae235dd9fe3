"""devicemapper-loop through the kernel VM: one VM boot runs the smoke test (2-layer image,
container, copy-up by appending to a lower file, content checked, torn down), a bench run and
the thin pool labs; the tests below read its report and results.

Skipped, with the reason, where the VM can't run (no Debian 6.1 kernel in /boot, no QEMU, no
virtme-ng): `sudo bash vagrant/provision/devicemapper.sh` and `pip install -e '.[vm]'` (the nox
`tests` session installs the vm extra). Takes a few minutes: QEMU emulates (TCG).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from cowlab.base.state import StateRoot
from cowlab.run import vmroute
from cowlab.storage import vm
from cowlab.store import spec
from cowlab.store.images import ImageStore

HERE = Path(__file__).resolve().parent
DEMO = HERE.parent / "bench" / "specs" / "demo.toml"

pytestmark = [pytest.mark.root, pytest.mark.vm]


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root (the VM's guest mounts and makes dm devices; QEMU reads /boot)")
    why = vm.why_unavailable()
    if why:
        pytest.skip(f"kernel VM unavailable: {why}")
    base = tmp_path_factory.mktemp("dmvm")
    state = StateRoot(base / "root").ensure()
    ImageStore(state).build(spec.load(DEMO))  # natively, before the boot (the guest's store is read-only)
    vmroute.prebuild(state, ["space"], quick=False, reps=1)
    from cowlab.measure import conformance

    conformance.prebuild(state)  # every case's images: the guest's store is this one, read-only
    out = base / "results"
    lines: list[str] = []
    r = vm.run(
        state,
        [],
        out=out,
        python_argv=[str(HERE / "vm_guest_devicemapper.py"), str(out)],
        echo=lines.append,
        timeout=40 * 60,
        state_disk=16 << 30,
    )
    rep_file = out / "guest-report.json"
    rep = json.loads(rep_file.read_text()) if rep_file.exists() else {}
    if os.environ.get("COWLAB_VM_REPORT") and rep_file.exists():  # kept for the README's figures
        Path(os.environ["COWLAB_VM_REPORT"]).write_text(rep_file.read_text())
    return {"result": r, "report": rep, "out": out, "log": "\n".join(lines[-80:]), "state": state}


def _ok(g):
    assert g["report"], f"the guest wrote no report; VM output:\n{g['log']}"
    assert g["report"].get("ok"), (
        f"guest failed: {g['report'].get('error')}\n{json.dumps(g['report']['steps'][-1:], indent=1)}"
    )


def test_smoke_copy_up_and_teardown(guest):
    _ok(guest)
    s = guest["report"]["smoke"]
    assert s["fstype"] == "xfs"
    assert s["after_size"] == s["lower_size"] + len("cowlab-copyup")
    assert s["prefix_kept"] and s["tail"] == "cowlab-copyup"
    assert s["whiteout_hidden"]  # layer 2 deleted /etc/shadow
    assert s["opaque_listing"] == ["new"]  # layer 2 made /usr/share/doc opaque
    assert s["mode_of_big"] == "0o600"  # layer 2's chmod
    assert s["second_container_size"] == s["lower_size"]  # writes never reach the image
    assert any(n.endswith("-pool") for n in s["dm_while_up"])
    assert s["container_gone"]
    assert s["after_teardown"] == {"dm": [], "loops": "", "mounts": []}


def test_results_came_back_emulated(guest):
    _ok(guest)
    r = guest["result"]
    runs = [d for d in r.run_dirs if (d / "run.json").exists() and "lab" not in d.parts]
    assert runs, f"no bench run came back: {r.run_dirs}"
    run = json.loads((runs[0] / "run.json").read_text())
    assert run["virtualization"] == "tcg" and run["emulated"] is True
    assert run["kernel"].startswith("6.1.0-") and run["driver"] == "devicemapper-loop"
    assert run["vm"]["boot_seconds"] > 0 and run["vm"]["network"] == "none"
    samples = [json.loads(line) for line in (runs[0] / "samples.jsonl").read_text().splitlines()]
    boot = [s for s in samples if s["metric"] == "vm_boot_seconds"]
    assert boot and boot[0]["workload"] == "vm"  # reported apart, never inside a measurement
    space = {s["params"]["event"]: s["value"] for s in samples if s["metric"] == "space_bytes"}
    # block-level copy-on-write: appending 1 KiB to a 64 MiB file costs a pool block, not 64 MiB
    assert 0 < space["append_1KiB_to_64MiB"] <= 1 << 20


def _lab(guest, mode):
    _ok(guest)
    reps = [x for x in guest["report"]["lab"] if x["mode"] == mode]
    assert reps, f"no lab report for {mode}: rc {guest['report'].get('lab_rc')}"
    return reps[0]


def test_thinpool_queue_blocks_then_resumes_after_grow(guest):
    rep = _lab(guest, "queue")
    events = [e["event"] for e in rep["events"]]
    assert "pool full" in events and "data device grown, table reloaded" in events
    assert events.index("pool full") < events.index("data device grown, table reloaded")
    assert rep["writer_returncode"] == 0 and rep["final_status"]["mode"] == "rw"


def test_thinpool_error_if_no_space_fails_at_once(guest):
    rep = _lab(guest, "error")
    assert rep["writer_returncode"] != 0 and rep["enospc"]
    assert rep["final_status"]["out_of_data_space"] and rep["final_status"]["no_space"] == "error_if_no_space"


def test_thinpool_timeout_queues_then_errors(guest):
    # no_space_timeout=5 s here (the kernel's default is 60 s): blocked about that long, then ENOSPC
    rep = _lab(guest, "timeout")
    assert rep["enospc"] and rep["blocked_seconds"] is not None and rep["blocked_seconds"] >= 3
    assert guest["report"]["param_after"] == "60"  # the module parameter was put back


def test_conformance_suite_passes_on_devicemapper_loop(guest):
    """The same oracle as every native driver (a plain directory), on thin snapshots."""
    _ok(guest)
    res = guest["report"]["conformance"]
    from cowlab.measure import conformance

    assert {r["case"] for r in res} == {c.name for c in conformance.CASES}, "not every case ran"
    bad = [(r["case"], r["status"], r["details"][:5]) for r in res if r["status"] not in ("pass", "skip")]
    assert bad == [], bad
    skipped = [r for r in res if r["status"] == "skip"]
    assert all(r["details"] for r in skipped)  # a skip says why (e.g. no xattrs declared)
    assert guest["report"]["conformance_rc"] == 0
    assert guest["report"]["after_conformance"] == {"dm": [], "loops": "", "mounts": []}


def test_sigkill_inside_the_vm_then_cleanup_leaves_nothing(guest):
    """Kill points inside device mapper work (pool, thin volumes, snapshots, teardown, a writer
    blocked on a full pool), each followed by `cowlab cleanup` in the same guest."""
    _ok(guest)
    kills = guest["report"]["kills"]
    assert len(kills) >= 9
    for k in kills:
        assert k["rc"] == -9, f"{k['point']} was not reached ({k['what']}): rc {k['rc']}\n{k['stderr']}"
        assert k["cleanup_rc"] == 0, k
        assert k["left"] == {"dm": [], "loops": "", "mounts": []}, k
        assert k["tagged"] == [], k  # the writer too, once its pool let it go
        assert "running" not in k["run_status"], k  # closed as killed (or as teardown had it)
        assert k["param"] == "60", k  # a dm-thin module parameter changed is put back
    assert any("killed" in k["run_status"] for k in kills)


def test_nothing_left_behind(guest):
    _ok(guest)
    assert guest["report"]["after_all"] == {"dm": [], "loops": "", "mounts": []}
    qemu = subprocess.run(["pgrep", "-f", str(guest["state"].path)], capture_output=True, text=True).stdout
    assert not qemu.strip()
    assert not list(guest["state"].backings.glob("vm-*"))  # the VM's scratch and disks are gone
