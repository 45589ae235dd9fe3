"""sharing: two different images that share most of their files, K containers of each reading
them; the page cache and the disk the second image adds.

Claim tested: "the data is loaded only once from disk, and cached only once in memory" — true
within one image, whose containers share its layers. Two images built separately (two versions
of one base, each a single layer: the same files, byte for byte, plus one file that differs) have
different layers, so overlay2 stores and caches the shared files once per image (different
layer directories, different inodes); so do the erofs driver (different layer images) and the
snapshot drivers. composefs stores each distinct file once in its content-addressed object store
and overlayfs reads every image's copy from that one inode: the composefs README's claim that
identical files are cached once across images. (For btrfs, LSFMM 2022 discussed that even
reflinked copies are cached once per file.)

Images: `sharing-a` and `sharing-b`, one layer each, `files` files of `shared_bytes` in total
under /shared generated from one seed (identical content), plus /version, which differs.
Each repetition starts with neither image imported (removed if an earlier repetition left them),
then:
  space_bytes        growth of driver.used_bytes() as image a is imported (event import_first),
                     then image b (event import_second). A driver whose files are files on the
                     backing filesystem runs this workload on an ext4 loop filesystem of its own
                     (param backing_fs), so that nothing else writing to the host's filesystem
                     shows up in these figures
  page_cache_bytes   K containers of each image are created, caches are dropped, then one
                     reader (cat, a journaled child in a scratch memory cgroup) reads every
                     shared file of image a's K containers (param image=first), then another
                     those of image b's (image=second): the page cache each read added, as
                     the cgroup was charged for it (param source=cgroup: pages another process
                     already had cached are not charged again), or where no memory cgroup can be
                     made, as the growth of Cached in /proc/meminfo (source=meminfo, machine-wide)
Expect image=second ≈ shared_bytes for overlay2 and erofs and ≈ 0 for composefs; image=first ≈
shared_bytes for every union driver whatever K is.
"""

from __future__ import annotations

import time
from functools import partial

from cowlab.base import sysutil
from cowlab.base.errors import CowlabError, NotApplicable
from cowlab.base.resources import run_tool
from cowlab.measure import probes
from cowlab.measure.workloads.base import Context, Measured, MiB, Workload
from cowlab.measure.workloads.rename import backing_fs, own_fs
from cowlab.results import Sample
from cowlab.storage.drivers.base import Container
from cowlab.store.spec import from_dict

SHARED = "/shared"
IMAGES = ("sharing-a", "sharing-b")
ATTEMPTS = 5  # as density: drops by other processes come in bursts
GRID = {
    "full": {"containers": [1, 8], "files": 256, "shared_bytes": 256 * MiB, "reps": 3},
    "quick": {"containers": [2], "files": 64, "shared_bytes": 64 * MiB, "reps": 2},
}


def sharing_spec(name: str, grid: dict, version: int):
    per = max(1, grid["shared_bytes"] // grid["files"])
    ops = [
        {"op": "files", "dir": SHARED, "count": grid["files"], "size": per},
        {"op": "file", "path": "/version", "size": 64, "seed": version},
    ]
    return from_dict({"name": name, "seed": 11, "layers": [{"ops": ops}]}, f"<{name}>")


def _read(ctx: Context, paths: list[str], cgroup) -> None:
    """cat every path to /dev/null from a child that first joins the cgroup (if any)."""
    script = 'if [ -n "$1" ]; then echo $$ > "$1" || exit 1; fi; shift; exec cat -- "$@" > /dev/null'
    cp = run_tool(ctx.res, ["sh", "-c", script, "sh", str(cgroup.procs) if cgroup else "", *paths], timeout=600)
    if cp.returncode != 0:
        raise CowlabError(f"reading the shared files failed: {(cp.stderr or '').strip()[-300:]}")


class Sharing(Workload):
    name = "sharing"
    claim = "cached only once in memory — across two images that share most files (composefs README)"
    GRID = GRID

    def specs(self, grid):
        return [sharing_spec(n, grid, i + 1) for i, n in enumerate(IMAGES)]

    def cases(self, ctx: Context):
        g = ctx.grid
        for k in g["containers"]:
            params = {
                "containers": k,
                "files": g["files"],
                "shared_bytes": g["shared_bytes"],
                "backing_fs": backing_fs(ctx),
            }
            yield Measured("sharing", params, partial(self.measure, ctx, k, params), reps=g["reps"], unit="B")

    @staticmethod
    def measure(ctx: Context, k: int, params: dict, rep: int) -> list[Sample]:
        ctx = own_fs(ctx)  # so the disk figures are the imports' alone
        drv = ctx.driver
        out: list[Sample] = []
        for n in IMAGES:  # each repetition imports both afresh: the disk figure is the import's
            if drv.has_image(ctx.images[n]):
                drv.remove_image(ctx.images[n])
        for n, event in zip(IMAGES, ("import_first", "import_second"), strict=True):
            u0 = drv.used_bytes()
            ctx.image(n)
            out.append(Sample("space_bytes", drv.used_bytes() - u0, "B", {**params, "event": event}, rep))
        containers: dict[str, list[Container]] = {n: [] for n in IMAGES}
        cgroup = None
        try:
            for n in IMAGES:
                for _ in range(k):
                    containers[n].append(ctx.create(ctx.images[n]))
            try:
                cgroup = probes.make_memory_cgroup(ctx.res)
            except NotApplicable:
                cgroup = None
            files = {
                n: sorted(str(p) for c in containers[n] for p in (c.mountpoint / SHARED.lstrip("/")).iterdir())
                for n in IMAGES
            }
            for attempt in range(ATTEMPTS):
                sysutil.drop_caches()
                drops = probes.drop_count()
                got = []
                for n, which in zip(IMAGES, ("first", "second"), strict=True):
                    before = cgroup.stat()["file"] if cgroup else probes.meminfo()["Cached"]
                    _read(ctx, files[n], cgroup)
                    after = cgroup.stat()["file"] if cgroup else probes.meminfo()["Cached"]
                    got.append((which, after - before))
                if probes.drop_count() == drops:
                    break
                time.sleep(1.0 + attempt)  # another process dropped caches meanwhile: redo
            else:
                raise CowlabError(f"another process dropped caches during each of {ATTEMPTS} attempts")
            src = "cgroup" if cgroup else "meminfo"
            for which, v in got:
                out.append(Sample("page_cache_bytes", v, "B", {**params, "image": which, "source": src}, rep))
        finally:
            if cgroup and cgroup.handle:
                ctx.res.release(cgroup.handle)
            for cs in containers.values():
                for c in cs:
                    ctx.remove(c)
        return out
