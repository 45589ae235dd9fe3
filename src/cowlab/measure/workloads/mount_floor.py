"""mount_floor: a bare mount(2)+umount(2) of the same overlay, timed in the same run.

Not a claim of the slides but a check on cowlab itself: the gap between this floor and
create+remove is what the harness (directories, journal, Python) adds. Only drivers that can
offer a bare mount (`bare_mount` capability) have a floor. Metrics floor_seconds and
paired_create_remove_seconds: a container create+remove timed alternately with the floor in the
same loop, so that what else loads the machine (an overlay's umount writes back its upper
filesystem, other jobs' dirty data included) falls on both alike and their ratio is the harness's.
"""

from __future__ import annotations

import time
import uuid

from cowlab.measure.workloads.base import Context, Measured, Workload
from cowlab.measure.workloads.creation import Creation, grid_points, image_name
from cowlab.results import Sample
from cowlab.storage.drivers.base import HasBareMount


class MountFloor(Workload):
    name = "mount_floor"
    claim = "(reference) the kernel's own cost of mounting the union, without cowlab around it"
    requires = frozenset({"bare_mount"})
    # The same images, so the floor is comparable point by point; more repetitions than
    # creation's, since a ratio of two sub-millisecond medians needs them (each is ~2 ms).
    GRID = {k: {**g, "reps": 3 * g["reps"]} for k, g in Creation.GRID.items()}

    def specs(self, grid):
        return Creation().specs(grid)

    def cases(self, ctx: Context):
        for size, layers in grid_points(ctx.grid):
            img = ctx.image(image_name(size, layers))
            scratch = ctx.driver.home / "floor" / uuid.uuid4().hex[:8]
            ctx.res.add("dir", path=str(scratch))  # released with the run
            drv = ctx.driver
            assert isinstance(drv, HasBareMount)  # requires = {"bare_mount"}
            mount, umount = drv.bare_mount(img, scratch)
            ctx.res.add("mount", target=str(scratch / "merged"))  # in case a Ctrl-C lands mid-op
            params = {"image_size_bytes": size, "layers": layers}

            def floor(mount=mount, umount=umount):
                t0 = time.perf_counter_ns()
                mount()
                umount()
                return (time.perf_counter_ns() - t0) / 1e9

            def create_remove(img=img):
                t0 = time.perf_counter_ns()
                ctx.remove(ctx.create(img))
                return (time.perf_counter_ns() - t0) / 1e9

            def measure(rep, floor=floor, create_remove=create_remove, params=params):
                if rep == 0:  # warm-up, as Timed cases have
                    floor(), create_remove()
                # Alternate which goes first, so neither always follows the other's writeback.
                order = (floor, create_remove) if rep % 2 == 0 else (create_remove, floor)
                t = {f: f() for f in order}
                return [
                    Sample("floor_seconds", t[floor], "s", dict(params), rep),
                    Sample("paired_create_remove_seconds", t[create_remove], "s", dict(params), rep),
                ]

            yield Measured("floor_seconds", params, measure, reps=ctx.grid["reps"], unit="s")
