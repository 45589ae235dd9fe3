"""copyup and lookup: reduced grids run through BenchSession on overlay2 and vfs (root, real
mounts and loop filesystems), asserting the direction the physics demands with generous
margins, never absolute timings."""

from __future__ import annotations

import shutil

import pytest

from cowlab.measure.workloads.lookup import static_busybox
from cowlab.storage.drivers.overlay2 import Overlay2
from helpers import medians, run_session  # noqa: E402  (one BenchSession runner for the workload tests)

pytestmark = pytest.mark.root

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@pytest.fixture(scope="module")
def state_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cowlab-copyup-lookup") / "root"


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("results")


# --- copyup ------------------------------------------------------------------------------------
COPYUP = {
    "file_size_bytes": [4 * KiB, 64 * MiB],
    "ops": {"append_1B": ["warm"], "second_append_1B": ["warm"], "chmod": ["warm"]},
    "metacopy": {"chmod": [True, False]},
    "reps": 7,
}
KEYS = ("backing_fs", "op", "metacopy", "file_size_bytes")


@pytest.fixture(scope="module")
def overlay2_copyup(state_root, out_dir):
    fss = ["ext4"] + (["xfs"] if shutil.which("mkfs.xfs") else [])
    recs = run_session("overlay2", "copyup", dict(COPYUP, backing_fs=fss), state_root, out_dir)
    assert [r for r in recs if r["status"] != "ok"] == []
    return medians(recs, "copyup_seconds", KEYS)


def test_overlay2_first_append_copies_the_whole_file_on_ext4(overlay2_copyup):
    m = overlay2_copyup
    small, big = m[("ext4", "append_1B", None, 4 * KiB)], m[("ext4", "append_1B", None, 64 * MiB)]
    assert big > 8 * small, (small, big)
    second = m[("ext4", "second_append_1B", None, 64 * MiB)]
    assert second < big / 10, (second, big)  # once up, a file is the container's own


def test_overlay2_metacopy_chmod_copies_no_data(overlay2_copyup):
    m = overlay2_copyup
    on, off = m[("ext4", "chmod", True, 64 * MiB)], m[("ext4", "chmod", False, 64 * MiB)]
    assert on < off / 8, (on, off)


@pytest.mark.skipif(not shutil.which("mkfs.xfs"), reason="mkfs.xfs not installed")
def test_overlay2_copy_up_clones_on_xfs(overlay2_copyup):
    m = overlay2_copyup
    small, big = m[("xfs", "append_1B", None, 4 * KiB)], m[("xfs", "append_1B", None, 64 * MiB)]
    assert big < 4 * small, (small, big)


def test_vfs_has_no_copy_up_and_no_metacopy(overlay2_copyup, state_root, out_dir):
    recs = run_session("vfs", "copyup", dict(COPYUP, backing_fs=["ext4"], reps=3), state_root, out_dir)
    chmod = [r for r in recs if r["params"]["op"] == "chmod"]
    assert chmod and all(r["status"] == "skipped" and "metacopy" in r["error"] for r in chmod)
    assert [r for r in recs if r["params"]["op"] != "chmod" and r["status"] != "ok"] == []
    m = medians(recs, "copyup_seconds", KEYS)
    vfs_big = m[("ext4", "append_1B", None, 64 * MiB)]
    assert vfs_big < overlay2_copyup[("ext4", "append_1B", None, 64 * MiB)] / 10


@pytest.mark.skipif(not shutil.which("mkfs.btrfs"), reason="mkfs.btrfs not installed")
def test_btrfs_copies_up_in_its_own_filesystem_flat_with_size(state_root, out_dir):
    """btrfs keeps containers in snapshots of its own filesystem: the backing_fs axis does not
    apply (measured once, on its btrfs backing), and a first write costs about the same at any size."""
    recs = run_session(
        "btrfs",
        "copyup",
        dict(COPYUP, backing_fs=["ext4", "xfs"], reps=5, ops={"append_1B": ["warm"]}),
        state_root,
        out_dir,
    )
    assert recs and {r["params"]["backing_fs"] for r in recs} == {"btrfs"}
    assert [r for r in recs if r["status"] != "ok"] == []
    m = medians(recs, "copyup_seconds", KEYS)
    small, big = m[("btrfs", "append_1B", None, 4 * KiB)], m[("btrfs", "append_1B", None, 64 * MiB)]
    assert big < 4 * small + 0.002, (small, big)


# --- lookup ------------------------------------------------------------------------------------
LOOKUP_KEYS = ("kind", "cache", "layers")
EXEC = ["exec"] if static_busybox() else []  # without a static busybox, exec is skipped


def test_overlay2_cold_lookups_grow_with_layers(state_root, out_dir):
    recs = run_session(
        "overlay2",
        "lookup",
        {
            "layers": [1, 32],
            "layer_limit": True,
            "path_dirs": [32],
            "kinds": ["miss"] + EXEC,
            "caches": ["cold", "warm"],
            "reps": 5,
        },
        state_root,
        out_dir,
    )
    assert [r for r in recs if r["status"] != "ok"] == []
    m = medians(recs, "lookup_seconds", LOOKUP_KEYS)
    assert {k[2] for k in m} == {1, 32, Overlay2.max_layers}  # the limit comes from the driver
    assert m[("miss", "cold", 32)] > m[("miss", "cold", 1)]
    assert m[("miss", "warm", 32)] < m[("miss", "cold", 32)] / 10  # the dentry cache hides it
    assert m[("miss", "cold", Overlay2.max_layers)] > m[("miss", "cold", 1)]


def test_vfs_lookup_every_kind_and_no_limit_point(state_root, out_dir):
    recs = run_session(
        "vfs",
        "lookup",
        {
            "layers": [8],
            "layer_limit": True,
            "path_dirs": [32],
            "kinds": ["hit", "miss", "scan"] + EXEC,
            "caches": ["warm"],
            "reps": 2,
        },
        state_root,
        out_dir,
    )
    assert [r for r in recs if r["status"] != "ok"] == []
    m = medians(recs, "lookup_seconds", LOOKUP_KEYS)
    assert set(m) == {(k, "warm", 8) for k in ["hit", "miss", "scan"] + EXEC}
