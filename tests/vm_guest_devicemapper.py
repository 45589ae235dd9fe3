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
    report["steps"].append({"cmd": ["cowlab", *args], "rc": cp.returncode, "seconds": round(time.monotonic() - t0, 2),
                            "stdout": cp.stdout[-3000:], "stderr": cp.stderr[-3000:]})
    print(f"$ cowlab {' '.join(args)} -> {cp.returncode} ({time.monotonic() - t0:.1f} s)", flush=True)
    if check and cp.returncode != 0:
        raise RuntimeError(f"cowlab {' '.join(args)} failed: {cp.stderr.strip()[-500:]}")
    return cp


def sh(*argv: str) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True).stdout


def leftovers() -> dict:
    return {"dm": [n for n in sh("dmsetup", "ls").split() if n.startswith("cowlab-")],
            "loops": sh("losetup", "-a").strip(),
            "mounts": [l for l in Path("/proc/self/mountinfo").read_text().splitlines() if "/store/" in l]}


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
        "lower_size": len(before), "after_size": len(after),
        "prefix_kept": hashlib.sha256(after[:len(before)]).hexdigest() == hashlib.sha256(before).hexdigest(),
        "tail": after[len(before):].decode(errors="replace"),
        "whiteout_hidden": not (mp / "etc" / "shadow").exists(),
        "opaque_listing": sorted(os.listdir(mp / "usr" / "share" / "doc")),
        "mode_of_big": oct(big.stat().st_mode & 0o777),
        "dm_while_up": [n for n in sh("dmsetup", "ls").split() if n.startswith("cowlab-")],
        "fstype": next((l.split(" - ")[1].split()[0] for l in Path("/proc/self/mountinfo").read_text().splitlines()
                        if f" {mp} " in l), None),
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
    cowlab("bench", "devicemapper-loop", "--workload", "space", "--reps", "1", "--out", str(OUT))

    # 3. the thin pool labs: queue (then grow), error_if_no_space, and a 5 s no_space_timeout
    cp = cowlab("lab", "thinpool", "devicemapper-loop", "--mode", "queue", "--mode", "error", "--mode", "timeout",
                "--timeout", "5", "--pool-size", "32M", "--out", str(OUT / "lab"), check=False)
    report["lab_rc"] = cp.returncode
    report["lab"] = [json.loads(p.read_text()) for p in sorted((OUT / "lab").glob("*/*/raw/thinpool.json"))]
    report["param_after"] = Path("/sys/module/dm_thin_pool/parameters/no_space_timeout").read_text().strip()
    report["after_all"] = leftovers()
    report["ok"] = True
except Exception as e:  # the host reads the report and fails the right test
    report["error"] = f"{type(e).__name__}: {e}"
    report["ok"] = False
    report["after_all"] = leftovers()
REPORT.write_text(json.dumps(report, indent=1))
print(f"report: {REPORT}", flush=True)
sys.exit(0 if report["ok"] else 1)
