"""inodes: inodes one image costs a driver, and one container of it.

Claim tested: "Overlay2 storage drivers generally use hard links between layers. This improves
stat() and open() performance, at the expense of inode usage." — strictly, it was Docker's
legacy `overlay` driver that kept each layer as a full tree of hard links to its parent's files
(every directory copied per layer); overlay2 keeps diffs. Run it on both (and any other driver)
and compare.

Measured through driver.inodes_used() (statfs of the backing filesystem): before and after
importing an image made for this workload alone (`dirs` directories of `files_per_dir` files,
then `layers`-1 layers that each add one file), then after creating one container.
Metrics inodes_used (param event: import, create) and hard_links (event import: extra names
of regular files under the driver's own directory, probes.hard_links: what the slide's "hard
links between layers" are, counted rather than inferred from inodes, since a hard link costs
no inode — the legacy driver's inode cost is the directories it copies per layer). On the shared host filesystem other writers
add noise, so when the run's backing is the host the workload uses a loop ext4 of its own where
the driver can run on one (`--backing ext4` does the same for the whole run). Where the notion
does not apply (ZFS allocates dnodes on demand; btrfs reports no inode count in statfs) the
samples are recorded as skipped, with the reason.
"""

from __future__ import annotations

from cowlab.base.errors import NotApplicable
from cowlab.measure import probes
from cowlab.measure.workloads.base import Context, Measured, Workload
from cowlab.results import Sample
from cowlab.store.spec import from_dict


def image_name(g: dict) -> str:
    return f"inodes-{g['dirs']}d-{g['files_per_dir']}f-{g['layers']}L"


class Inodes(Workload):
    name = "inodes"
    claim = "Overlay2 storage drivers generally use hard links between layers ... at the expense of inode usage."
    GRID = {
        "full": {"dirs": 1000, "files_per_dir": 10, "layers": 8, "reps": 1},
        "quick": {"dirs": 200, "files_per_dir": 5, "layers": 4, "reps": 1},
    }

    def specs(self, grid):
        first = [
            {"op": "files", "dir": f"/d{i:05d}", "count": grid["files_per_dir"], "size": 16}
            for i in range(grid["dirs"])
        ]
        layers = [{"ops": first}] + [
            {"ops": [{"op": "file", "path": f"/layer{j:03d}", "size": 16}]} for j in range(1, grid["layers"])
        ]
        return [from_dict({"name": image_name(grid), "seed": 7, "layers": layers}, "<inodes>")]

    def cases(self, ctx: Context):
        g = ctx.grid
        params = {"dirs": g["dirs"], "files_per_dir": g["files_per_dir"], "layers": g["layers"]}
        probe = ctx.driver.inodes_used()
        if probe is None or probe == 0:  # ZFS: dnodes on demand; btrfs: statfs reports no count
            why = (
                f"{ctx.driver.name} has no inode count to measure ("
                f"{'inodes are allocated on demand' if probe is None else 'statfs on this filesystem reports none'})"
            )

            def skipped(rep: int) -> list[Sample]:
                return [
                    Sample("inodes_used", None, "count", {**params, "event": e}, rep, status="skipped", error=why)
                    for e in ("import", "create")
                ]

            yield Measured("inodes", params, skipped, reps=g["reps"])
            return
        if ctx.backing.kind == "host":
            try:
                ctx = ctx.variant(backing="ext4")
            except NotApplicable:
                pass  # a driver with its own filesystem (btrfs) is alone on it anyway

        def inodes() -> int:
            n = ctx.driver.inodes_used()
            assert n is not None  # cases() yields this only for a driver that counts inodes
            return n

        def measure(rep: int) -> list[Sample]:
            drv = ctx.driver
            img = ctx.images[image_name(g)]
            if drv.has_image(img):
                drv.remove_image(img)
            before, links_before = inodes(), probes.hard_links(drv.home)
            drv.import_image(img)
            after, links_after = inodes(), probes.hard_links(drv.home)
            c = drv.create(img, ctx.res)
            with_c = inodes()
            drv.remove(c, ctx.res)
            return [
                Sample("inodes_used", after - before, "count", {**params, "event": "import"}, rep),
                Sample("inodes_used", with_c - after, "count", {**params, "event": "create"}, rep),
                # the slide's "hard links between layers", counted where the driver keeps them
                Sample("hard_links", links_after - links_before, "count", {**params, "event": "import"}, rep),
            ]

        yield Measured("inodes", params, measure, reps=g["reps"])
