"""probes: the parsers against text captured on a 6.18 kernel (cgroup v1 memory, SLUB)."""

from __future__ import annotations

import os
import subprocess

import pytest

from cowlab.measure import probes

MEMINFO = """\
MemTotal:       24684096 kB
MemFree:        24217428 kB
MemAvailable:   24148940 kB
Buffers:            4088 kB
Cached:           116276 kB
SwapCached:            0 kB
Dirty:               216 kB
Slab:              32160 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""

SLABINFO = """\
slabinfo - version: 2.1
# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>
xfs_inode             96    112   1024   16    4 : tunables    0    0    0 : slabdata      7      7      0
ovl_inode            184    276    704   23    4 : tunables    0    0    0 : slabdata     12     12      0
ext4_inode_cache     322    840   1128   14    4 : tunables    0    0    0 : slabdata     60     60      0
dentry              1773   3234    192   21    1 : tunables    0    0    0 : slabdata    154    154      0
kmalloc-64          1870   2496     64   64    1 : tunables    0    0    0 : slabdata     39     39      0
"""

DENTRY_STATE = "1531\t182\t45\t0\t121\t0\n"

MEMORY_STAT_V1 = """\
cache 6553600
rss 2048000
rss_huge 0
shmem 0
mapped_file 5697536
dirty 57344
hierarchical_memory_limit 9223372036854771712
total_cache 6557696
total_rss 2052096
"""

# cgroup v2 memory.stat (an excerpt in the kernel's documented format: Documentation/admin-guide/
# cgroup-v2.rst); not captured here, where v2 has no memory controller.
MEMORY_STAT_V2 = """\
anon 1056768
file 70172672
kernel 3387392
kernel_stack 16384
slab 2351104
sock 0
shmem 0
file_mapped 2125824
"""

PROC_CGROUP = """\
9:name=systemd:/
4:memory:/process_api/a64c40160de97482e32bcb36b4569207
2:cpu,cpuacct:/
0::/
"""


def test_meminfo_in_bytes():
    m = probes.parse_meminfo(MEMINFO)
    assert m["Cached"] == 116276 * 1024
    assert m["MemTotal"] == 24684096 * 1024
    assert m["HugePages_Total"] == 0  # a count, not kB
    assert m["Hugepagesize"] == 2048 * 1024


def test_meminfo_live():
    m = probes.meminfo()
    assert m["MemTotal"] > 0 and "Cached" in m


def test_slabinfo():
    s = probes.parse_slabinfo(SLABINFO, page_size=4096)
    assert set(s) == {"xfs_inode", "ovl_inode", "ext4_inode_cache", "dentry", "kmalloc-64"}
    d = s["dentry"]
    assert (d.active_objs, d.num_objs, d.objsize) == (1773, 3234, 192)
    assert d.bytes == 154 * 1 * 4096  # num_slabs × pagesperslab × page size
    assert s["ext4_inode_cache"].bytes == 60 * 4 * 4096
    assert s["ovl_inode"].active_objs == 184


def test_slabinfo_unreadable_is_empty(tmp_path):
    assert probes.slabinfo(str(tmp_path / "missing")) == {}


def test_fs_inode_cache():
    assert probes.fs_inode_cache("ext4") == "ext4_inode_cache"
    assert probes.fs_inode_cache("xfs") == "xfs_inode"
    assert probes.fs_inode_cache("btrfs") == "btrfs_inode"
    assert probes.fs_inode_cache("nfs") is None


def test_dentry_state():
    d = probes.parse_dentry_state(DENTRY_STATE)
    assert d["nr_dentry"] == 1531 and d["nr_unused"] == 182 and d["nr_negative"] == 121


def test_memory_stat_v1_normalised():
    raw = probes.parse_memory_stat(MEMORY_STAT_V1)
    assert raw["cache"] == 6553600 and raw["hierarchical_memory_limit"] == 9223372036854771712
    n = probes.normalize_memory_stat(raw, 1, kmem=123)
    assert n == {"file": 6557696, "anon": 2052096, "kernel": 123}  # total_* (children included)


def test_memory_stat_v2_normalised():
    n = probes.normalize_memory_stat(probes.parse_memory_stat(MEMORY_STAT_V2), 2)
    assert n == {"file": 70172672, "anon": 1056768, "kernel": 3387392, "slab": 2351104}


def test_vmstat_and_drop_count(tmp_path):
    text = "nr_free_pages 6054357\ndrop_pagecache 356\ndrop_slab 357\npgpgin 1234\n"
    assert probes.parse_vmstat(text)["drop_slab"] == 357
    f = tmp_path / "vmstat"
    f.write_text(text)
    assert probes.drop_count(str(f)) == 713
    assert probes.drop_count() >= 0


def test_proc_cgroup():
    c = probes.parse_proc_cgroup(PROC_CGROUP)
    assert c["memory"] == "/process_api/a64c40160de97482e32bcb36b4569207"
    assert c["cpu"] == c["cpuacct"] == "/"
    assert c[""] == "/" and c["name=systemd"] == "/"


def test_statfs_and_delta(tmp_path):
    a = probes.statfs(tmp_path)
    assert a["total_bytes"] >= a["used_bytes"] >= 0 and a["inodes_used"] > 0
    (tmp_path / "f").write_bytes(b"x")
    b = probes.synced_statfs(tmp_path)
    d = probes.delta(b, a)
    assert set(d) == set(a) and d["total_bytes"] == 0


def test_delta_of_slabs():
    s0 = probes.parse_slabinfo(SLABINFO, 4096)
    s1 = dict(s0, dentry=probes.Slab(1800, 3234, 192, 155 * 4096))
    d = probes.delta(s1, s0)
    assert d["dentry"] == probes.Slab(27, 0, 0, 4096)
    assert d["ovl_inode"] == probes.Slab(0, 0, 0, 0)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_memory_cgroup_made_and_released(tmp_path):
    from cowlab.base.errors import NotApplicable
    from cowlab.base.resources import Resources
    from cowlab.base.state import StateRoot

    st = StateRoot(tmp_path / "root").ensure()
    with Resources.for_run(st) as res:
        try:
            cg = probes.make_memory_cgroup(res)
        except NotApplicable as e:
            pytest.skip(str(e))
        assert cg.path.is_dir() and cg.path.name.startswith("cowlab-")
        stat = cg.stat()
        assert {"file", "anon"} <= set(stat)
        path = cg.path
    assert not path.exists()  # released (rmdir) with the run


def test_hard_links_counts_extra_names_of_files_not_copies(tmp_path):
    base = tmp_path / "layer0"
    (base / "d").mkdir(parents=True)
    for i in range(5):
        (base / "d" / f"f{i}").write_text("x")
    assert probes.hard_links(tmp_path) == 0
    for n in (1, 2):  # Docker's legacy overlay: each layer a `cp -al` of its parent
        subprocess.run(["cp", "-a", "--link", str(base), str(tmp_path / f"layer{n}")], check=True)
    assert probes.hard_links(tmp_path) == 10  # 5 files, two more names each
    subprocess.run(["cp", "-a", str(base), str(tmp_path / "copy")], check=True)
    assert probes.hard_links(tmp_path) == 10  # a copy adds none
