"""The one size parser (cowlab.base.units) and the one density reading (cowlab.measure.probes) that both
engine and primitive mode take."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from cowlab.base.errors import CowlabError
from cowlab.base.units import parse_size
from cowlab.measure import probes

SRC = Path(__file__).resolve().parents[1] / "src" / "cowlab"


@pytest.mark.parametrize(
    "v,n",
    [
        (512, 512),
        ("512", 512),
        ("64K", 64 << 10),
        ("64KiB", 64 << 10),
        ("64KB", 64 << 10),
        ("8G", 8 << 30),
        (" 10GiB ", 10 << 30),
        ("1B", 1),
        ("1.5G", 3 << 29),
        ("1.50K", 1536),
        ("2P", 2 << 50),
        ("4kib", 4096),
    ],
)
def test_parse_size(v, n):
    assert parse_size(v) == n


def test_decimal_si_and_fractions():
    assert parse_size("3MB", decimal_si=True) == 3_000_000
    assert parse_size("4KiB", decimal_si=True) == 4096 and parse_size("4K", decimal_si=True) == 4096
    with pytest.raises(CowlabError):
        parse_size("1.5MiB", fractions=False)


@pytest.mark.parametrize("v", ["lots", "", "-1", "4 K iB", "iB", "1.5.2G", True, None, 1.0, [1]])
def test_parse_size_rejects(v):
    with pytest.raises(CowlabError, match="not a size"):
        parse_size(v)


def test_every_size_goes_through_one_parser():
    """No module but units.py parses sizes with a unit table of its own."""
    own = []
    for p in SRC.rglob("*.py"):
        if p.name == "units.py":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if (
                isinstance(node, ast.FunctionDef)
                and node.name in ("parse_size", "_size", "_parse_size")
                and not any(
                    isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", "")) == "parse_size"
                    for n in ast.walk(node)
                )
            ):
                own.append(f"{p.relative_to(SRC)}:{node.lineno} {node.name}")
    assert not own, own


SLABINFO = """slabinfo - version: 2.1
# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>
dentry            {a} 2100 192 21 1 : tunables 0 0 0 : slabdata 100 100 0
ovl_inode         {o} 690 688 23 4 : tunables 0 0 0 : slabdata 30 30 0
"""


def test_density_readings_have_one_definition(monkeypatch):
    """slab_bytes is the growth of active objects × object size, whichever mode asks: the caches'
    pages (slabdata) do not move here, so a whole-page reading would say 0."""
    texts = iter([SLABINFO.format(a=1000, o=100), SLABINFO.format(a=1500, o=110)])
    monkeypatch.setattr(probes, "slabinfo", lambda path="/proc/slabinfo": probes.parse_slabinfo(next(texts)))
    monkeypatch.setattr(probes, "meminfo", lambda path="/proc/meminfo": {"Cached": next(cached)})
    monkeypatch.setattr(probes, "dentry_state", lambda path="": {"nr_dentry": next(dentries)})
    cached, dentries = iter([1 << 20, 5 << 20]), iter([40_000, 40_600])
    before, after = probes.cache_snapshot("ext4"), probes.cache_snapshot("ext4")
    got = {(m, x.get("cache")): v for m, v, unit, x in probes.cache_growth(before, after)}
    assert got == {
        ("page_cache_bytes", None): 4 << 20,
        ("dentry_count", None): 600,
        ("slab_bytes", "dentry"): 500 * 192,
        ("slab_objects", "dentry"): 500,
        ("slab_bytes", "ovl_inode"): 10 * 688,
        ("slab_objects", "ovl_inode"): 10,
    }


def test_engine_and_primitive_density_share_the_readings():
    """Neither density computes a reading itself: both take probes.cache_snapshot and
    probes.cache_growth (so engine and primitive slab_bytes mean the same thing)."""
    for rel in ("measure/workloads/density.py", "measure/engine/workloads.py"):
        text = (SRC / rel).read_text()
        assert "probes.cache_snapshot(" in text or "settled_snapshot(" in text, rel
        assert "probes.cache_growth(" in text, rel
        assert "objsize" not in text and ".bytes -" not in text and "slabinfo()" not in text, rel
