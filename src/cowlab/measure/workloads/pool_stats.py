"""pool_stats: ZFS's "optional data compression and deduplication" and its "high memory usage",
as numbers: the pool's compression ratio, dedup ratio and ARC size.

Only for drivers with the `pool_stats` capability (zfs: pool_stats() → compressratio,
dedupratio, arc_size_bytes). For each property set in `variants` (default first, then
compression on, then dedup on: each a pool of its own, see Context.variant), one container
gets `copies` copies of one random block of `block_bytes` (dedup can share them) and
`text_bytes` of repetitive text (compression can shrink it). Metrics compressratio and
dedupratio (unit ratio) and arc_size_bytes (B); the ARC is read from kernel ZFS's arcstats and
is recorded as skipped under zfs-fuse, with the reason.
"""

from __future__ import annotations

import os

from cowlab.measure.workloads.base import Context, Measured, MiB, Workload, synthetic_image
from cowlab.results import Sample
from cowlab.storage.drivers.base import HasPoolStats

IMAGE = "pool-stats-base"


def _compression_on(driver) -> str:
    # zfs-fuse (pool version 23) has no lz4; kernel ZFS has
    return "gzip" if getattr(driver, "impl", "") == "fuse" else "lz4"


class PoolStats(Workload):
    name = "pool_stats"
    claim = "ZFS: optional data compression and deduplication; high memory usage."
    requires = frozenset({"pool_stats"})
    GRID = {
        "full": {
            "variants": ["default", "compression", "dedup"],
            "block_bytes": MiB,
            "copies": 8,
            "text_bytes": 16 * MiB,
            "reps": 3,
        },
        "quick": {
            "variants": ["default", "compression", "dedup"],
            "block_bytes": MiB,
            "copies": 4,
            "text_bytes": 4 * MiB,
            "reps": 1,
        },
    }

    def specs(self, grid):
        return [synthetic_image(IMAGE, 0, 1)]

    def cases(self, ctx: Context):
        g = ctx.grid
        for v in g["variants"]:
            opts = (
                {}
                if v == "default"
                else {"compression": _compression_on(ctx.driver)}
                if v == "compression"
                else {"dedup": "on"}
            )
            params = {
                "variant": v,
                **{f"zfs_{k}": val for k, val in opts.items()},
                "block_bytes": g["block_bytes"],
                "copies": g["copies"],
                "text_bytes": g["text_bytes"],
            }

            def measure(rep: int, opts=opts, params=params) -> list[Sample]:
                vctx = ctx.variant(**opts) if opts else ctx
                img = vctx.image(IMAGE)
                c = vctx.create(img)
                try:
                    block = os.urandom(g["block_bytes"])
                    for i in range(g["copies"]):
                        (c.mountpoint / f"dup{i}").write_bytes(block)
                    line = b"copy-on-write is everywhere: fork(), snapshots, VMs and containers\n"
                    (c.mountpoint / "text").write_bytes(line * (g["text_bytes"] // len(line)))
                    drv = vctx.driver
                    assert isinstance(drv, HasPoolStats)  # requires = {"pool_stats"}
                    st = drv.pool_stats()
                finally:
                    vctx.remove(c)
                out = [
                    Sample("compressratio", st["compressratio"], "ratio", params, rep),
                    Sample("dedupratio", st["dedupratio"], "ratio", params, rep),
                ]
                if st["arc_size_bytes"] is None:
                    out.append(Sample("arc_size_bytes", None, "B", params, rep, status="skipped", error=st["arc_note"]))
                else:
                    out.append(Sample("arc_size_bytes", st["arc_size_bytes"], "B", params, rep))
                return out

            yield Measured("pool_stats", params, measure, reps=g["reps"])
