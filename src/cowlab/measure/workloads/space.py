"""space: bytes the backing filesystem gains as a container is created and written to.

Claim tested: "Adding a 1 KB configuration file to a 1 GB container takes 1 KB, not 1 GB."
The image holds a 64 MiB file. Events, each measured as growth of driver.used_bytes() (statfs after syncfs, or a
pool's allocation for pool-based drivers):
`create` (a new container), `write_new_1KiB` (a new 1 KiB file in it), `append_1KiB_to_64MiB`
(1 KiB appended to the image's 64 MiB file: a file-level copy-on-write driver copies all 64 MiB
up, a block-level one allocates a block), and `after_remove` (what is left once it is removed).
Metric space_bytes. On a shared host filesystem other writers add noise: read medians.
"""

from __future__ import annotations

import os

from cowlab.measure.workloads.base import Context, Measured, MiB, Workload, synthetic_image
from cowlab.results import Sample

IMAGE = "space-64MiB"
BIG = "/data/big"


class Space(Workload):
    name = "space"
    claim = "Adding a 1 KB configuration file to a 1 GB container takes 1 KB, not 1 GB."
    GRID = {"full": {"big_file_bytes": 64 * MiB, "reps": 10}, "quick": {"big_file_bytes": 64 * MiB, "reps": 5}}

    def specs(self, grid):
        return [synthetic_image(IMAGE, 0, 1, extra_ops=[{"op": "file", "path": BIG, "size": grid["big_file_bytes"]}])]

    def cases(self, ctx: Context):
        img = ctx.image(IMAGE)
        size = ctx.grid["big_file_bytes"]

        def measure(rep: int) -> list[Sample]:
            b = ctx.driver  # used_bytes(): statfs of the backing fs, or a pool's allocation
            out = []

            def note(event, before):
                now = b.used_bytes()
                out.append(Sample("space_bytes", now - before, "B", {"event": event, "big_file_bytes": size}, rep))
                return now

            u0 = b.used_bytes()
            c = ctx.create(img)
            u1 = note("create", u0)
            with open(c.mountpoint / "etc-new.conf", "wb") as f:
                f.write(os.urandom(1024))
            u2 = note("write_new_1KiB", u1)
            with open(c.mountpoint / BIG.lstrip("/"), "ab") as f:
                f.write(os.urandom(1024))
            note("append_1KiB_to_64MiB", u2)
            ctx.remove(c)
            ctx.res.forget_spent()  # a bench frees removed containers' files outside timed ops: now
            note("after_remove", u0)
            return out

        yield Measured("space", {"big_file_bytes": size}, measure, reps=ctx.grid["reps"], unit="B")
