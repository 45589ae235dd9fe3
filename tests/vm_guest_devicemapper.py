"""Runs INSIDE cowlab's kernel VM (tests/test_devicemapper_vm.py boots it once): the device
mapper smoke test and the thin pool labs, through the CLI, with a JSON report for the host.

usage (guest): python vm_guest_devicemapper.py OUT_DIR     (COWLAB_ROOT is the guest's state root)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(sys.argv[1])
REPORT = OUT / "guest-report.json"
report: dict = {"steps": []}


def cowlab(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    cp = subprocess.run([sys.executable, "-m", "cowlab", *args], capture_output=True, text=True)
    report["steps"].append(
        {
            "cmd": ["cowlab", *args],
            "rc": cp.returncode,
            "seconds": round(time.monotonic() - t0, 2),
            "stdout": cp.stdout[-3000:],
            "stderr": cp.stderr[-3000:],
        }
    )
    print(f"$ cowlab {' '.join(args)} -> {cp.returncode} ({time.monotonic() - t0:.1f} s)", flush=True)
    if check and cp.returncode != 0:
        raise RuntimeError(f"cowlab {' '.join(args)} failed: {cp.stderr.strip()[-500:]}")
    return cp


def sh(*argv: str) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True).stdout


def leftovers() -> dict:
    return {
        "dm": [n for n in sh("dmsetup", "ls").split() if n.startswith("cowlab-")],
        "loops": sh("losetup", "-a").strip(),
        "mounts": [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if "/store/" in line],
    }


BENCH = [
    "bench",
    "devicemapper-loop",
    "--workload",
    "space",
    "--reps",
    "1",
    "--mode",
    "primitive",
    "--out",
    str(OUT / "kill"),
]
LAB = ["lab", "thinpool", "devicemapper-loop", "--mode", "queue", "--pool-size", "32M", "--out", str(OUT / "kill-lab")]
KILLS = [  # (what the run was doing, COWLAB_KILLPOINT, argv)
    ("pool: a loop device journaled, not attached", "journal.loop:1", BENCH),
    ("pool: thin-pool device made", "acquired.dm:1", BENCH),
    ("base: thin volume created in the pool", "acquired.dm_thin:1", BENCH),
    ("base: thin device active, not mounted", "acquired.dm:2", BENCH),
    ("import: a layer's snapshot mounted", "acquired.mount:2", BENCH),
    ("container: snapshot of the top layer made", "acquired.dm_thin:3", BENCH),
    ("between samples", "sample:2", BENCH),
    ("teardown: a dm device removed, entry left", "release.dm:1", BENCH),
    ("lab: a writer filling a 32 MiB pool that queues forever", "spawn:1", LAB),
]


def tagged(prefix: str) -> list[int]:
    out = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            env = Path(f"/proc/{d}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(e.startswith(f"COWLAB_OWNER={prefix}".encode()) for e in env):
            out.append(int(d))
    return out


def kill_then_cleanup(what: str, point: str, argv: list[str]) -> dict:
    t0 = time.monotonic()
    before = {str(p) for p in OUT.glob("kill*/*/*/run.json")}
    p = subprocess.Popen(
        [sys.executable, "-m", "cowlab", *argv],
        env={**os.environ, "COWLAB_KILLPOINT": point},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, err = p.communicate(timeout=900)
    if point == "spawn:1":
        time.sleep(8)  # let the orphaned writer fill the pool and block on it
    cp = cowlab("cleanup", check=False)
    runs = [json.loads(Path(r).read_text()) for r in map(str, OUT.glob("kill*/*/*/run.json")) if r not in before]
    rec = {
        "what": what,
        "point": point,
        "rc": p.returncode,
        "stderr": err[-800:],
        "cleanup_rc": cp.returncode,
        "cleanup": cp.stdout[-1500:],
        "left": leftovers(),
        "tagged": tagged(f"run-{p.pid}-"),
        "run_status": [r["status"] for r in runs],
        "seconds": round(time.monotonic() - t0, 1),
        "param": Path("/sys/module/dm_thin_pool/parameters/no_space_timeout").read_text().strip(),
    }
    print(f"kill {point}: rc {p.returncode}, cleanup {cp.returncode}, left {rec['left']}", flush=True)
    return rec


try:
    # 1. the smoke test: a container of the 2-layer demo image (built on the host)
    mp = Path(cowlab("container", "create", "demo", "--driver", "devicemapper-loop").stdout.strip().splitlines()[-1])
    cid = mp.parent.name
    big = mp / "data" / "big"
    before = big.read_bytes()
    with open(big, "ab") as f:  # copy-up: append to a file of the lower layer
        f.write(b"cowlab-copyup")
    after = big.read_bytes()
    report["smoke"] = {
        "mountpoint": str(mp),
        "lower_size": len(before),
        "after_size": len(after),
        "prefix_kept": hashlib.sha256(after[: len(before)]).hexdigest() == hashlib.sha256(before).hexdigest(),
        "tail": after[len(before) :].decode(errors="replace"),
        "whiteout_hidden": not (mp / "etc" / "shadow").exists(),
        "opaque_listing": sorted(os.listdir(mp / "usr" / "share" / "doc")),
        "mode_of_big": oct(big.stat().st_mode & 0o777),
        "dm_while_up": [n for n in sh("dmsetup", "ls").split() if n.startswith("cowlab-")],
        "fstype": next(
            (
                line.split(" - ")[1].split()[0]
                for line in Path("/proc/self/mountinfo").read_text().splitlines()
                if f" {mp} " in line
            ),
            None,
        ),
    }
    # a second container of the same image does not see the first one's write
    mp2 = Path(cowlab("container", "create", "demo", "--driver", "devicemapper-loop").stdout.strip().splitlines()[-1])
    report["smoke"]["second_container_size"] = (mp2 / "data" / "big").stat().st_size
    cowlab("container", "rm", mp2.parent.name)
    cowlab("container", "rm", cid)
    report["smoke"]["container_gone"] = not mp.exists()
    cowlab("cleanup", "--all")
    report["smoke"]["after_teardown"] = leftovers()

    # 2. a bench run (results with run.json, virtualization tcg)
    cowlab("bench", "devicemapper-loop", "--workload", "space", "--reps", "1", "--mode", "primitive", "--out", str(OUT))

    # 3. the thin pool labs: queue (then grow), error_if_no_space, and a 5 s no_space_timeout
    cp = cowlab(
        "lab",
        "thinpool",
        "devicemapper-loop",
        "--mode",
        "queue",
        "--mode",
        "error",
        "--mode",
        "timeout",
        "--timeout",
        "5",
        "--pool-size",
        "32M",
        "--out",
        str(OUT / "lab"),
        check=False,
    )
    report["lab_rc"] = cp.returncode
    report["lab"] = [json.loads(p.read_text()) for p in sorted((OUT / "lab").glob("*/*/raw/thinpool.json"))]
    report["param_after"] = Path("/sys/module/dm_thin_pool/parameters/no_space_timeout").read_text().strip()

    # 4. the conformance suite on devicemapper-loop (its images were built on the host)
    cp = cowlab(
        "conformance",
        "--driver",
        "devicemapper-loop",
        "--vm",
        "never",
        "--json",
        str(OUT / "conformance.json"),
        check=False,
    )
    report["conformance_rc"] = cp.returncode
    report["conformance"] = (
        json.loads((OUT / "conformance.json").read_text()) if (OUT / "conformance.json").exists() else []
    )
    report["after_conformance"] = leftovers()

    # 5. SIGKILL at points inside device mapper work, each followed by `cowlab cleanup`
    report["kills"] = [kill_then_cleanup(*k) for k in KILLS]
    report["after_all"] = leftovers()
    report["ok"] = True
except Exception as e:  # the host reads the report and fails the right test
    report["error"] = f"{type(e).__name__}: {e}"
    report["ok"] = False
    report["after_all"] = leftovers()
REPORT.write_text(json.dumps(report, indent=1))
print(f"report: {REPORT}", flush=True)
sys.exit(0 if report["ok"] else 1)
