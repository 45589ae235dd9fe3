"""Notebooks 02–05 executed against a tiny synthetic results dir, and against an empty one.

The results are written with cowlab.results.RunWriter, as `cowlab bench` writes them: a few
samples per workload for overlay2 and vfs (plus an emulated overlay2 run, and a vfs copy-up run
that does not say its backing filesystem), with values chosen so the sentences the notebooks
print are known in advance. All executions share one kernel (its namespace reset between
notebooks) to keep the whole module well under a minute.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cowlab.results import RunWriter, Sample

KiB, MiB = 1 << 10, 1 << 20
REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = {n: REPO / "notebooks" / f"{n}.ipynb" for n in ("02-copy-up", "03-deep-lookup", "04-density", "05-io")}
SPREAD = [0.95, 1.0, 1.05]  # three repetitions around each median: the median is exact

SIZES = [4 * KiB, MiB, 64 * MiB]
FSES = ["ext4", "xfs", "btrfs"]
OPS = {
    "append_1B": ["cold", "warm"],
    "write_middle_4B": ["cold", "warm"],
    "open_rdwr": ["warm"],
    "chmod": ["warm"],
    "truncate": ["warm"],
    "second_append_1B": ["warm"],
}
LAYERS = [1, 8, 32]
KINDS = ["hit", "miss", "scan", "exec"]
FILES, SET = 200, 64 * MiB
JOBS = ["seq-read-1m", "seq-write-1m", "rand-read-4k", "rand-write-4k", "first-write"]


def prov(driver, host="hostA", emulated=False, backing_fs="ext4"):
    p = {
        "hostname": host,
        "kernel": "6.1.0-test",
        "virtualization": "tcg" if emulated else "none",
        "emulated": emulated,
        "cowlab_version": "0.1.0",
        "driver": driver,
        "quick": True,
    }
    if backing_fs:
        p["backing_fs"] = backing_fs
    return p


def add(w, driver, workload, metric, value, unit, params):
    for rep, f in enumerate(SPREAD):
        w.add(Sample(metric, value * f, unit, params, rep), driver, workload)


# --- copyup: overlay2 copies at open on ext4 (1 ms + 1 ms per 4 MiB), clones elsewhere ---------


def copyup_ms(driver, fs, op, cache, size, metacopy):
    if driver == "vfs":
        return 0.03
    if op == "second_append_1B":
        return 0.02
    if op == "chmod" and metacopy:
        return 0.1
    base = 1.0 + size / (4 * MiB) if fs == "ext4" else 0.3
    return base * (1.5 if cache == "cold" else 1.0)


def write_copyup(out, run_id, driver, emulated=False, fses=FSES, ops=OPS, with_fs=True):
    w = RunWriter(out, run_id, prov(driver, emulated=emulated, backing_fs="ext4" if with_fs else None))
    for fs in fses:
        for op, caches in ops.items():
            for cache in caches:
                for metacopy in [True, False] if op == "chmod" else [None]:
                    for size in SIZES:
                        params = {"file_size_bytes": size, "op": op, "cache": cache, "metacopy": metacopy}
                        if with_fs:
                            params["backing_fs"] = fs
                        if op == "chmod" and driver == "vfs":
                            w.add(
                                Sample(
                                    "copyup_seconds",
                                    None,
                                    "s",
                                    params,
                                    status="skipped",
                                    error="vfs has no option 'metacopy'",
                                ),
                                driver,
                                "copyup",
                            )
                            continue
                        ms = copyup_ms(driver, fs, op, cache, size, metacopy) * (10 if emulated else 1)
                        add(w, driver, "copyup", "copyup_seconds", ms / 1e3, "s", params)
    w.close("complete")


# --- lookup: overlay2's cold lookups grow by 0.5 ms per layer, warm ones are flat --------------


def lookup_ms(driver, kind, cache, layers):
    extra = 2.0 if kind == "exec" else 0.0
    if cache == "warm":
        return (0.05 if driver == "overlay2" else 0.04) + extra
    return (2.0 + 0.5 * layers if driver == "overlay2" else 3.0) + extra


def write_lookup(out, run_id, driver):
    w = RunWriter(out, run_id, prov(driver))
    for layers in LAYERS:
        for kind in KINDS:
            for cache in ("cold", "warm"):
                params = {"layers": layers, "path_dirs": 32, "kind": kind, "cache": cache}
                add(w, driver, "lookup", "lookup_seconds", lookup_ms(driver, kind, cache, layers) / 1e3, "s", params)
    w.close("complete")


# --- density: overlay2 caches the set once and duplicates dentries; vfs copies everything ------


def write_density(out, run_id, driver):
    w = RunWriter(out, run_id, prov(driver))
    union = driver == "overlay2"
    for k in (1, 8):
        p = {"containers": k, "files": FILES, "set_bytes": SET}
        add(w, driver, "density", "page_cache_bytes", SET * (1.05 if union else k), "B", p)
        if union:  # vfs: no memory cgroup here, so the notebook falls back to Cached
            for stat, v in (("file", SET), ("anon", 50 * KiB * k), ("kernel", 100 * KiB * k)):
                add(w, driver, "density", "cgroup_memory_bytes", v, "B", {**p, "stat": stat, "cgroup": "v2"})
        else:
            w.add(
                Sample("cgroup_memory_bytes", None, "B", dict(p), status="skipped", error="no memory cgroup"),
                driver,
                "density",
            )
        add(w, driver, "density", "dentry_count", (250 if union else 260) * k, "count", p)
        for cache, n in (
            ("dentry", 250 * k),
            ("ovl_inode", 200 * k if union else 0),
            ("ext4_inode_cache", 210 if union else 210 * k),
        ):
            add(w, driver, "density", "slab_objects", n, "count", {**p, "cache": cache})
            add(w, driver, "density", "slab_bytes", n * 192, "B", {**p, "cache": cache})
        add(w, driver, "density", "inodes_used", (6 if union else 210) * k, "count", p)
        add(w, driver, "density", "disk_bytes", (100 * KiB if union else SET) * k, "B", p)
    w.close("complete")


# --- io: the same speed in the container and on a volume, except overlay2's seq-write (0.5×) ---


def write_io(out, run_id, driver):
    w = RunWriter(out, run_id, prov(driver))
    for job in JOBS:
        for target in ("container", "volume"):
            p = {
                "job": job,
                "target": target,
                "size_bytes": 64 * MiB,
                "fio_version": "fio-3.33",
                "direction": "read" if "read" in job else "write",
            }
            bw = (400 if "1m" in job else 40) * MiB
            if driver == "overlay2" and job == "seq-write-1m" and target == "container":
                bw /= 2
            bs = MiB if "1m" in job else 4 * KiB
            add(w, driver, "io", "fio_bw_bytes_per_s", bw, "B/s", p)
            add(w, driver, "io", "fio_iops", bw / bs, "1/s", p)
            add(w, driver, "io", "fio_lat_p50_seconds", bs / bw, "s", p)
            add(w, driver, "io", "fio_lat_p99_seconds", 4 * bs / bw, "s", p)
    w.close("complete")


@pytest.fixture(scope="module")
def resdir(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    for driver in ("overlay2", "vfs"):
        write_copyup(out, f"c-{driver}", driver)
        write_lookup(out, f"l-{driver}", driver)
        write_density(out, f"d-{driver}", driver)
        write_io(out, f"i-{driver}", driver)
    write_copyup(out, "c-overlay2-tcg", "overlay2", emulated=True, fses=["ext4"], ops={"append_1B": ["cold"]})
    write_copyup(out, "c-vfs-nofs", "vfs", ops={"append_1B": ["cold"]}, fses=["?"], with_fs=False)
    return out


@pytest.fixture(scope="module")
def outputs(resdir, tmp_path_factory):
    """{(notebook, "data" | "empty"): all text it printed}, from one shared kernel."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from nbformat.v4 import new_code_cell, new_notebook

    empty = tmp_path_factory.mktemp("empty")
    first = nbformat.read(NOTEBOOKS["02-copy-up"], as_version=4)
    client = nbclient.NotebookClient(
        first, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}
    )
    texts = {}

    def run(nb):
        client.nb = nb
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                client.execute_cell(cell, i)

    with client.setup_kernel():
        for name, path in NOTEBOOKS.items():
            for which, where in (("data", resdir), ("empty", empty)):
                run(
                    new_notebook(
                        cells=[
                            new_code_cell(
                                "import matplotlib.pyplot\nmatplotlib.pyplot.close('all')\n%reset -f\n"
                                f"import os\nos.environ['COWLAB_RESULTS'] = {str(where)!r}"
                            )
                        ]
                    )
                )
                nb = nbformat.read(path, as_version=4)
                run(nb)
                text = []
                for cell in nb.cells:
                    for o in cell.get("outputs", []):
                        assert o["output_type"] != "error", f"{name}: {o.get('ename')}: {o.get('evalue')}"
                        if o["output_type"] == "stream":
                            assert o["name"] == "stdout", f"{name} wrote to stderr: {o['text']}"
                        text.append(o.get("text", "") or o.get("data", {}).get("text/plain", ""))
                texts[(name, which)] = "\n".join(text)
                if which == "data":
                    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])), (
                        f"{name} drew no figure"
                    )
    return texts


@pytest.mark.parametrize(
    "name,workload",
    [("02-copy-up", "copyup"), ("03-deep-lookup", "lookup"), ("04-density", "density"), ("05-io", "io")],
)
def test_without_results_says_how_to_make_them(outputs, name, workload):
    out = outputs[(name, "empty")]
    assert f"No {workload} results under" in out
    assert f"nox -s bench-overlay2 -- --workload {workload}" in out
    assert "No results, so no verdict" in out


def test_copy_up(outputs):
    out = outputs[("02-copy-up", "data")]
    # ext4: (1 + 16) ms ÷ (1 + 1/1024) ms, cold; the clone filesystems are flat
    assert (
        "[ext4] overlay2: the first 1-byte append (cold cache) for a 64 MiB file takes 17× as "
        "long as for a 4 KiB file (25.5 ms vs 1.5 ms"
    ) in out
    assert "The file is 16,384× larger." in out
    assert "[xfs] overlay2: the first 1-byte append (cold cache) for a 64 MiB file takes 1× as long" in out
    assert "overlay2 [cold cache, 64 MiB file]: the first append on ext4 takes 57× as long as on xfs" in out
    assert "overlay2 [ext4, 64 MiB file]: chmod with metacopy=on takes 1/170 as long as with metacopy=off" in out
    assert "vfs: no chmod samples (skipped: vfs has no option 'metacopy')." in out
    assert "overlay2 [ext4, 64 MiB file]: the second 1-byte append takes 1/850 as long as the first" in out
    assert (
        "overlay2 [ext4, 64 MiB file]: opening for writing without a write takes 1× as long as the first append"
    ) in out
    # emulated runs get their own sentences; samples without a backing fs are kept apart
    assert "overlay2 (emulated): the first 1-byte append (cold cache)" in out
    assert "overlay2 (emulated): no results on xfs, btrfs." in out
    assert "overlay2 (emulated): no chmod samples in these results." in out
    assert "Some runs are emulated" in out
    assert "say nothing about their backing filesystem" in out
    assert "vfs has no option 'metacopy'" in out  # the skipped cases are listed


def test_deep_lookup(outputs):
    out = outputs[("03-deep-lookup", "data")]
    # (2 + 0.5 × 32) ms ÷ (2 + 0.5) ms
    assert "overlay2: a cold PATH miss in a 32-layer image takes 7.2× as long as in a 1-layer image" in out
    assert "The image is 32× as deep." in out
    assert "vfs: a cold PATH miss in a 32-layer image takes 1× as long as in a 1-layer image" in out
    assert "overlay2 [32-layer image]: a warm PATH miss takes 1/360 as long as a cold one" in out
    assert "overlay2: a warm PATH miss in a 32-layer image takes 1× as long as in a 1-layer image" in out
    assert "At a 32-layer image, a cold PATH miss with overlay2 takes 6× as long as with vfs" in out


def test_density(outputs):
    out = outputs[("04-density", "data")]
    assert (
        "overlay2: the page cache charged to the readers' cgroup (memory.stat file) with 8 "
        "containers is 1× as large as with 1 container"
    ) in out
    assert (
        "vfs: the machine-wide page cache growth (Cached; no cgroup numbers for this driver) "
        "with 8 containers is 8× as large as with 1 container"
    ) in out
    assert "Each extra container added 64 MiB: 100% of one copy of the set" in out
    assert "overlay2: the growth in dentries with 8 containers is 8× as large as with 1 container" in out
    assert "Each extra container added 250 dentries: 1.2 per file of the set" in out
    assert "overlay2: ovl_inode: 200 objects per extra container, 1 per file" in out
    assert "overlay2: page cache +0% of a copy of the set, dentries +1.2 per file" in out


def test_io(outputs):
    out = outputs[("05-io", "data")]
    assert (
        "overlay2 [seq-write-1m]: bandwidth in the container's root is 0.5× as large as on a "
        "volume (200 MiB/s vs 400 MiB/s"
    ) in out
    assert "vfs [seq-read-1m]: bandwidth in the container's root is 1× as large as on a volume" in out
    assert "overlay2 [first-write]: p99 latency in the container's root is 1× as long as on a volume" in out
    # the one-off copy-up cost from the same results: (1 + 16) ms, × the volume's 400 MiB/s
    assert (
        "overlay2 on ext4: the first 1-byte append to a 64 MiB image file takes 17 ms (median, "
        "warm cache); at the volume's sequential write bandwidth measured here (400 MiB/s) that "
        "is the time to write 6.8 MiB."
    ) in out
