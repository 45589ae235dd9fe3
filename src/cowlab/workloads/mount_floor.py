"""mount_floor: a bare mount(2)+umount(2) of the same overlay, timed in the same run.

Not a claim of the slides but a check on cowlab itself: the gap between this floor and
create+remove is what the harness (directories, journal, Python) adds. Only drivers that can
offer a bare mount (`bare_mount` capability) have a floor. Metric floor_seconds.
"""

from __future__ import annotations

import uuid

from .base import Context, Timed, Workload
from .creation import Creation, grid_points, image_name


class MountFloor(Workload):
    name = "mount_floor"
    claim = "(reference) the kernel's own cost of mounting the union, without cowlab around it"
    requires = frozenset({"bare_mount"})
    GRID = Creation.GRID  # the same images, so the floor is comparable point by point

    def specs(self, grid):
        return Creation().specs(grid)

    def cases(self, ctx: Context):
        for size, layers in grid_points(ctx.grid):
            img = ctx.image(image_name(size, layers))
            scratch = ctx.driver.home / "floor" / uuid.uuid4().hex[:8]
            ctx.res.add("dir", path=str(scratch))  # released with the run
            mount, umount = ctx.driver.bare_mount(img, scratch)
            ctx.res.add("mount", target=str(scratch / "merged"))  # in case a Ctrl-C lands mid-op

            def op(_, mount=mount, umount=umount):
                mount()
                umount()
            yield Timed("floor_seconds", {"image_size_bytes": size, "layers": layers}, op=op,
                        reps=ctx.grid["reps"])
