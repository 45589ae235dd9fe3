"""creation: how long creating and removing a container takes, against image size and layers.

Claim tested: "Creating a new container (from an existing image) is 'free'" and "AUFS mount() is
fast, so creation of containers is quick". A copy-on-write driver should not care about image
size; vfs (a plain copy) should grow with it. Metrics create_seconds, remove_seconds.
"""

from __future__ import annotations

from collections.abc import Iterator

from cowlab.measure.workloads.base import Context, GiB, MiB, Timed, Workload, synthetic_image
from cowlab.store.images import Image


def image_name(size: int, layers: int) -> str:
    return f"creation-{size}B-{layers}L"


def grid_points(grid: dict) -> list[tuple[int, int]]:
    """A size sweep at one layer and a layer sweep at the smallest size (not the full cross:
    a 128-layer 1 GiB image teaches nothing the two sweeps don't)."""
    small = min(grid["image_size_bytes"])
    pts = [(s, 1) for s in grid["image_size_bytes"]] + [(small, n) for n in grid["layers"]]
    return list(dict.fromkeys(pts))


class Creation(Workload):
    name = "creation"
    claim = "Creating a new container (from an existing image) is 'free'."
    GRID = {
        "full": {"image_size_bytes": [MiB, 64 * MiB, GiB], "layers": [1, 16, 64, 128], "reps": 10},
        "quick": {"image_size_bytes": [MiB, 64 * MiB], "layers": [1, 16], "reps": 5},
    }

    def specs(self, grid):
        return [synthetic_image(image_name(s, n), s, n) for s, n in grid_points(grid)]

    def cases(self, ctx: Context):
        for size, layers in grid_points(ctx.grid):
            yield from self.point_cases(
                ctx, ctx.image(image_name(size, layers)), {"image_size_bytes": size, "layers": layers}
            )

    @staticmethod
    def point_cases(ctx: Context, img: Image, params: dict) -> Iterator[Timed]:
        # One grid point in a function of its own: the runner lists every case before running
        # any, so each closure must hold its own point's image, not the loop's last.
        reps = ctx.grid["reps"]
        yield Timed(
            "create_seconds", params, op=lambda _: ctx.create(img), teardown=lambda _, c: ctx.remove(c), reps=reps
        )
        yield Timed("remove_seconds", params, setup=lambda: ctx.create(img), op=ctx.remove, reps=reps)
