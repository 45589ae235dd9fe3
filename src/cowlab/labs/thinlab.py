"""`cowlab lab thinpool`: what a thin pool does when its data device fills up.

A small pool (default 64 MiB of data) and a thin volume twice that size; `dd oflag=direct` writes
1.5 × the pool into the volume, so the pool runs out of data space half way. What happens next
depends on how the pool was set up (device mapper's thin-provisioning.txt):

  queue    no_space_timeout=0: the pool queues the writes for ever; the writer blocks (D state),
           `dmsetup status` says out_of_data_space. cowlab then grows the data device
           (a bigger sparse file / more of the disk), reloads the pool's table, and the writer
           resumes and finishes.
  error    error_if_no_space: the writes fail at once with ENOSPC.
  timeout  the default behaviour, queue then error, with a short timeout (--timeout, 5 s here;
           the kernel's default is 60 s): the writer blocks, then gets ENOSPC.

Works with any driver that has the `thin_pool` capability (thin_volume, pool_status, grow_pool);
no_space_timeout is a module parameter (global to the kernel): cowlab journals the old value
and puts it back. Writes go to a raw thin volume (no filesystem), so what the writer sees is the
block layer's answer, not a filesystem's way of handling it.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from cowlab.base.errors import CowlabError
from cowlab.base.resources import Resources, spawn
from cowlab.base.state import StateRoot
from cowlab.storage import backing as B
from cowlab.storage import drivers
from cowlab.storage.drivers.devicemapper.thin import PoolStatus
from cowlab.store.images import ImageStore

MODES = ("queue", "error", "timeout")
MiB = 1 << 20


@runtime_checkable
class ThinPool(Protocol):
    """What a driver with capability thin_pool offers this lab (devicemapper's drivers)."""

    def pool_status(self) -> PoolStatus: ...
    def thin_volume(self, res: Resources, size: int | None = None) -> AbstractContextManager[str]: ...
    def grow_pool(self, add_bytes: int) -> None: ...


def run(
    driver_name: str,
    state: StateRoot,
    mode: str,
    timeout: int = 5,
    pool_bytes: int = 64 * MiB,
    options: dict | None = None,
    hold: float = 3.0,
    echo=print,
) -> dict:
    if mode not in MODES:
        raise CowlabError(f"mode {mode!r}: choose {', '.join(MODES)}")
    cls = drivers.get(driver_name)
    if "thin_pool" not in cls.capabilities:
        raise CowlabError(f"{driver_name} has no thin pool (capability thin_pool)")
    from cowlab.run.vmroute import probe

    p = probe(cls)
    if not p.available:
        from cowlab.base.errors import Unavailable

        raise Unavailable(f"driver {driver_name}", p.reason, p.hint)
    opts = dict(options or {})
    opts.update(data_size=pool_bytes, base_size=pool_bytes * 2, low_water_blocks=0)
    if mode == "queue":
        opts["no_space_timeout"] = 0
    elif mode == "error":
        opts["error_if_no_space"] = True
    else:
        opts["no_space_timeout"] = timeout
    state.ensure()
    report: dict = {"driver": driver_name, "mode": mode, "pool_bytes": pool_bytes, "events": []}
    t0 = time.monotonic()

    def event(what: str, **kw) -> None:
        e = {"t": round(time.monotonic() - t0, 3), "event": what, **kw}
        report["events"].append(e)
        echo(f"[{e['t']:7.2f} s] {what}" + "".join(f"  {k}={v}" for k, v in kw.items()))

    with Resources.for_run(state, lab="thinpool") as res:
        home = state.store / f"lab-thinpool-{uuid.uuid4().hex[:8]}"
        res.acquire("dir", lambda: home.mkdir(parents=True), path=str(home))
        drv = cls(B.host(home), res, ImageStore(state), options=opts)
        if not isinstance(drv, ThinPool):
            raise CowlabError(f"{driver_name} declares thin_pool but has no pool_status/thin_volume/grow_pool")
        st = drv.pool_status()
        event(
            "pool created",
            data=f"{st.used_data_blocks}/{st.total_data_blocks} blocks",
            mode=st.mode,
            no_space=st.no_space,
            no_space_timeout=drv.metadata().get("dm_no_space_timeout"),
        )
        with drv.thin_volume(res) as dev:
            count = pool_bytes * 3 // 2 // MiB
            w = spawn(
                res,
                ["dd", "if=/dev/zero", f"of={dev}", "bs=1M", f"count={count}", "oflag=direct", "status=none"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            event("writer started", bytes=count * MiB, device=dev)
            full_at = None
            grown = False
            while w.poll() is None:
                st = drv.pool_status()
                if st.out_of_data_space and full_at is None:
                    full_at = time.monotonic()
                    event("pool full", status=st.mode, data=f"{st.used_data_blocks}/{st.total_data_blocks}")
                if mode == "queue" and full_at and not grown and time.monotonic() - full_at >= hold:
                    event("writer still blocked", status=drv.pool_status().mode)
                    drv.grow_pool(pool_bytes)
                    grown = True
                    st = drv.pool_status()
                    event(
                        "data device grown, table reloaded",
                        data=f"{st.used_data_blocks}/{st.total_data_blocks}",
                        status=st.mode,
                    )
                if time.monotonic() - t0 > max(120, timeout * 4):
                    raise CowlabError("the writer neither finished nor failed in time")
                time.sleep(0.1)
            _, err = w.communicate()
            res.release(w._cowlab_handle)  # type: ignore[attr-defined]
            st = drv.pool_status()
            report["writer_returncode"] = w.returncode
            report["writer_error"] = err.strip()
            report["enospc"] = "No space left on device" in err
            report["blocked_seconds"] = round(time.monotonic() - full_at, 3) if full_at else None
            report["final_status"] = st.as_dict()
            event(
                "writer finished" if w.returncode == 0 else "writer failed",
                rc=w.returncode,
                error=err.strip().splitlines()[-1] if err.strip() else "",
                status=st.mode,
            )
    report["seconds"] = round(time.monotonic() - t0, 3)
    return report
