"""Image specs: parsing, normalisation, and errors that name the file, the layer and the field."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cowlab.base.errors import CowlabError
from cowlab.store import spec
from cowlab.store.spec import ImageSpec

VALID = """\
name = "demo"
seed = 7
mtime = 1600000000
description = "a test image"

[[layers]]
comment = "base"
ops = [
  { op = "file", path = "/etc//shadow", size = "1KiB", mode = "0640" },
  { op = "files", dir = "/usr/share/doc", count = 5, size = "4KiB", prefix = "doc" },
  { op = "dir", path = "/tmp/", mode = "1777" },
  { op = "symlink", path = "/lib64", target = "lib" },
  { op = "file", path = "/data/./big", size = "64MiB", pattern = "zero", uid = 1000, gid = 1000 },
  { op = "file", path = "/data/dec", size = "2KB" },
  { op = "hardlink", path = "/data/link", target = "/data/big" },
]

[[layers]]
ops = [
  { op = "delete", path = "/etc/shadow" },
  { op = "opaque", path = "/usr/share/doc" },
  { op = "chmod", path = "/data/big", mode = 384 },
  { op = "chown", path = "/data", uid = 1, gid = 2, recursive = true },
]
"""


def write(tmp_path, text, name="spec.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_valid_spec(tmp_path):
    p = write(tmp_path, VALID)
    s = spec.load(p)
    assert isinstance(s, ImageSpec)
    assert (s.name, s.seed, s.mtime, s.layer_count, s.source) == ("demo", 7, 1600000000, 2, str(p))
    l1, l2 = s.layers
    assert l1.comment == "base"
    assert [o.op for o in l1.ops] == ["file", "files", "dir", "symlink", "file", "file", "hardlink"]
    assert [o.op for o in l2.ops] == ["delete", "opaque", "chmod", "chown"]
    shadow = l1.ops[0].args
    assert shadow == {"path": "/etc/shadow", "size": 1024, "mode": 0o640}
    assert l1.ops[1].args["dir"] == "/usr/share/doc" and l1.ops[1].args["size"] == 4096
    assert l1.ops[2].args == {"path": "/tmp", "mode": 0o1777}
    assert l1.ops[3].args == {"path": "/lib64", "target": "lib"}  # a symlink target stays as written
    big = l1.ops[4].args
    assert big["path"] == "/data/big" and big["size"] == 64 << 20 and big["pattern"] == "zero"
    assert l1.ops[5].args["size"] == 2000  # KB is decimal, KiB binary
    assert l2.ops[2].args["mode"] == 0o600
    assert l2.ops[3].args == {"path": "/data", "uid": 1, "gid": 2, "recursive": True}


def test_defaults():
    s = spec.from_dict({"name": "x", "layers": [{"ops": []}]})
    assert (s.seed, s.mtime, s.layer_count, s.source) == (0, 1_700_000_000, 1, "<data>")


@pytest.mark.parametrize(
    "v,n",
    [
        (0, 0),
        (4096, 4096),
        ("4096", 4096),
        ("1B", 1),
        ("4KiB", 4096),
        ("4kib", 4096),
        (" 64MiB ", 64 << 20),
        ("1GiB", 1 << 30),
        ("1TiB", 1 << 40),
        ("3MB", 3_000_000),
        ("1GB", 10**9),
    ],
)
def test_parse_size(v, n):
    assert spec.parse_size(v, "w") == n


@pytest.mark.parametrize(
    "v", ["lots", "1.5MiB", "-1", "4 K iB", "2TiB", "1PiB", "", True, 1.0, None, [1], -5, (1 << 40) + 1]
)
def test_parse_size_rejects(v):
    with pytest.raises(CowlabError, match="^where"):
        spec.parse_size(v, "where")


# --- errors name the file, the layer and the field ---------------------------------------


def layer_spec(ops_layer2: str) -> str:
    return f"""\
name = "bad"
[[layers]]
ops = [ {{ op = "file", path = "/ok", size = 1 }} ]
[[layers]]
ops = [
  {{ op = "dir", path = "/fine" }},
  {ops_layer2},
]
"""


LAYER_ERRORS = {
    "bad size": ('{ op = "file", path = "/x", size = "lots" }', ["'size'", "'lots'"]),
    "size out of range": ('{ op = "file", path = "/x", size = "2TiB" }', ["'size'", "out of range"]),
    "unknown op": ('{ op = "frobnicate", path = "/x" }', ["'op'", "frobnicate"]),
    "missing op": ('{ path = "/x" }', ["'op'"]),
    "unknown field": ('{ op = "file", path = "/x", size = 1, colour = "red" }', ["'colour'"]),
    "missing field": ('{ op = "file", path = "/x" }', ["'size'", "needs"]),
    "wrong type": ('{ op = "files", dir = "/x", count = "many", size = 1 }', ["'count'"]),
    "bool as int": ('{ op = "chown", path = "/fine", uid = true, gid = 0 }', ["'uid'"]),
    "dotdot": ('{ op = "file", path = "/a/../../etc/passwd", size = 1 }', ["'path'", "'..'"]),
    "dotdot hardlink": ('{ op = "hardlink", path = "/h", target = "/../x" }', ["'target'", "'..'"]),
    "relative": ('{ op = "file", path = "etc/passwd", size = 1 }', ["'path'", "absolute"]),
    "root itself": ('{ op = "delete", path = "/" }', ["'path'", "root"]),
    "whiteout name": ('{ op = "file", path = "/a/.wh.b", size = 1 }', ["'path'", ".wh."]),
    "bad mode": ('{ op = "dir", path = "/d", mode = "999" }', ["'mode'", "'999'"]),
    "mode too big": ('{ op = "chmod", path = "/fine", mode = 65535 }', ["'mode'"]),
    "bad pattern": ('{ op = "file", path = "/x", size = 1, pattern = "pi" }', ["'pattern'"]),
    "count zero": ('{ op = "files", dir = "/x", count = 0, size = 1 }', ["'count'"]),
    "uid range": ('{ op = "chown", path = "/fine", uid = -1, gid = 0 }', ["'uid'"]),
    "empty symlink": ('{ op = "symlink", path = "/s", target = "" }', ["'target'"]),
    "copy missing": ('{ op = "copy", path = "/bin/x", source = "/nonexistent/busybox" }', ["'source'"]),
    "op not a table": ('"file"', ["op 2"]),
}


@pytest.mark.parametrize("case", sorted(LAYER_ERRORS))
def test_layer_errors_name_file_layer_field(tmp_path, case):
    op, needles = LAYER_ERRORS[case]
    p = write(tmp_path, layer_spec(op))
    with pytest.raises(CowlabError) as ei:
        spec.load(p)
    msg = str(ei.value)
    assert msg.startswith(str(p)), msg
    assert "layer 2" in msg and "layer 1" not in msg, msg
    assert "op 2" in msg, msg
    for n in needles:
        assert n in msg, (n, msg)


FILE_ERRORS = {
    "toml syntax": ('name = "x"\n[[layers]\nops = []\n', ["not valid TOML"]),
    "empty layers": ('name = "x"\nlayers = []\n', ["'layers'"]),
    "no layers": ('name = "x"\n', ["'layers'"]),
    "layers not tables": ('name = "x"\nlayers = [1]\n', ["layer 1"]),
    "missing name": ("[[layers]]\nops = []\n", ["'name'"]),
    "bad name": ('name = "-x y"\n[[layers]]\nops = []\n', ["'name'"]),
    "unknown top-level": ('name = "x"\nimage = 1\n[[layers]]\nops = []\n', ["'image'"]),
    "negative seed": ('name = "x"\nseed = -1\n[[layers]]\nops = []\n', ["'seed'"]),
    "unknown layer field": ('name = "x"\n[[layers]]\nops = []\nfoo = 1\n', ["layer 1", "'foo'"]),
    "ops not array": ('name = "x"\n[[layers]]\nops = 1\n', ["layer 1", "'ops'"]),
}


@pytest.mark.parametrize("case", sorted(FILE_ERRORS))
def test_file_errors_name_file_and_field(tmp_path, case):
    text, needles = FILE_ERRORS[case]
    p = write(tmp_path, text)
    with pytest.raises(CowlabError) as ei:
        spec.load(p)
    msg = str(ei.value)
    assert msg.startswith(str(p)), msg
    for n in needles:
        assert n in msg, (n, msg)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(CowlabError, match="no such spec file"):
        spec.load(tmp_path / "nope.toml")
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CowlabError, match=re.escape(str(p))):
        spec.load(p)


def test_copy_of_an_existing_host_file(tmp_path):
    src = tmp_path / "busybox"
    src.write_bytes(b"#!/bin/sh\n")
    s = spec.from_dict({"name": "c", "layers": [{"ops": [{"op": "copy", "path": "/bin/sh", "source": str(src)}]}]})
    assert s.layers[0].ops[0].args == {"path": "/bin/sh", "source": str(src)}


# --- fuzzing: from_dict returns an ImageSpec or raises CowlabError, nothing else ----------------

FIELDS = sorted({f for fields in spec.OPS.values() for f in fields})

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-2, max_value=70000),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "/",
            "/a",
            "/a/b",
            "a",
            "/..",
            "/a/../b",
            "/.wh.x",
            "/a\x00b",
            "4KiB",
            "64MiB",
            "0644",
            "1777",
            "99",
            "random",
            "zero",
            "text",
            "repeat",
            "",
            ".",
            "..",
            "/etc/passwd",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


PLAUSIBLE = {
    "path": st.sampled_from(["/a", "/a/b", "/d", "/d/e/f", "/x", "//a/./b/", "a", "/..", "/a/../b", "/.wh.x"]),
    "dir": st.sampled_from(["/d", "/a", "/d/e", "d", "/../d"]),
    "target": st.sampled_from(["/a", "/a/b", "lib", "../x", "", "/d/e/f"]),
    "size": st.sampled_from([0, 1, 4096, "4KiB", "1MiB", "2TiB", "x", -1, 1.5]) | st.integers(),
    "mode": st.sampled_from(["0644", "1777", "755", "0o644", "9999", 0o644, -1, 70000]),
    "uid": st.integers(-3, 2**32 + 3),
    "gid": st.integers(-3, 2**32 + 3),
    "count": st.integers(-1, 4),
    "pattern": st.sampled_from(["random", "zero", "text", "repeat", "pi"]),
    "seed": st.integers(),
    "recursive": st.booleans(),
    "prefix": st.text(max_size=6),
    "xattrs": st.dictionaries(st.text(max_size=8), st.text(max_size=4), max_size=2),
    "source": st.sampled_from(["/etc/hostname", "/nonexistent", "/etc", "/a\x00b"]),
}


def field_value(name):
    return PLAUSIBLE.get(name, values)


@st.composite
def op_dicts(draw):
    """Mostly plausible ops (so parsing gets deep), with any field possibly replaced by junk."""
    if draw(st.integers(0, 19)) == 0:
        return draw(values)  # not even a table
    d = {}
    if draw(st.integers(0, 19)):
        d["op"] = draw(st.sampled_from(sorted(spec.OPS))) if draw(st.integers(0, 9)) else draw(values)
    kind = d.get("op")
    known = isinstance(kind, str) and kind in spec.OPS
    names = list(spec.OPS[kind]) if known else FIELDS
    required = [k for k, (_, req) in spec.OPS[kind].items() if req] if known else []
    chosen = required + draw(st.lists(st.sampled_from(names + ["bogus"]), max_size=3, unique=True))
    for k in dict.fromkeys(chosen):
        if draw(st.integers(0, 29)) == 0:
            continue  # a required field left out
        d[k] = draw(values) if draw(st.integers(0, 7)) == 0 else draw(field_value(k))
    return d


@st.composite
def spec_dicts(draw):
    """Mostly a valid skeleton with plausible layers; sometimes a corrupted top level."""
    if draw(st.integers(0, 29)) == 0:
        return draw(values)
    d = {
        "name": draw(st.sampled_from(["demo", "a/b:1", "size-64MiB"])),
        "layers": draw(
            st.lists(
                st.fixed_dictionaries({"ops": st.lists(op_dicts(), max_size=4)}, optional={"comment": values}),
                min_size=1,
                max_size=3,
            )
        ),
    }
    for k in draw(st.lists(st.sampled_from(["seed", "mtime", "description", "extra"]), unique=True)):
        d[k] = (
            draw(st.integers(0, 2**64))
            if k in ("seed", "mtime")
            else draw(st.dictionaries(st.text(max_size=4), values, max_size=2))
        )
    if draw(st.integers(0, 4)) == 0:  # corrupt one top-level entry
        k = draw(st.sampled_from(["name", "seed", "mtime", "layers", "description", "extra", "x"]))
        d[k] = draw(
            values | st.lists(values | st.dictionaries(st.sampled_from(["ops", "comment", "x"]), values), max_size=2)
        )
    return d


@settings(max_examples=200)
@given(spec_dicts())
@example({"name": "x", "layers": [{"ops": [{"op": "file", "path": "/a", "size": "64MiB"}]}]})
@example(
    {
        "name": "x",
        "layers": [{"ops": [{"op": "files", "dir": "/a", "count": 3, "size": 1, "prefix": "p", "mode": "0600"}]}],
    }
)
def test_from_dict_fuzz(d):
    try:
        r = spec.from_dict(d, "fuzz.toml")
    except CowlabError as e:
        assert str(e).startswith("fuzz.toml"), str(e)
        return
    except Exception:
        raise AssertionError(f"spec.from_dict raised a non-CowlabError on {d!r}") from None
    assert isinstance(r, ImageSpec)
    assert r.layer_count >= 1
    for layer in r.layers:
        for op in layer.ops:
            for k in ("path", "dir"):
                if k in op.args:
                    assert op.args[k].startswith("/") and ".." not in op.args[k].split("/")
            if "size" in op.args:
                assert isinstance(op.args["size"], int) and 0 <= op.args["size"] <= spec.MAX_FILE


# --- src bugs found by the fuzzer and by reading ---------------------------------------------


def test_unhashable_op_is_a_cowlab_error():
    with pytest.raises(CowlabError, match="layer 1, op 1.*'op'"):
        spec.from_dict({"name": "x", "layers": [{"ops": [{"op": []}]}]})


@pytest.mark.parametrize("extra", [5, "ab", [1]])
def test_non_table_extra_is_a_cowlab_error(extra):
    with pytest.raises(CowlabError, match="'extra'"):
        spec.from_dict({"name": "x", "layers": [{"ops": []}], "extra": extra})


def test_absurdly_long_size_is_a_cowlab_error():
    with pytest.raises(CowlabError, match="'size'"):
        spec.from_dict({"name": "x", "layers": [{"ops": [{"op": "file", "path": "/a", "size": "9" * 5000}]}]})


@pytest.mark.parametrize("prefix", ["../../x", "a/../../b", ".wh."])
def test_files_prefix_is_checked(prefix):
    with pytest.raises(CowlabError, match="'prefix'"):
        spec.from_dict(
            {"name": "x", "layers": [{"ops": [{"op": "files", "dir": "/d", "count": 1, "size": 1, "prefix": prefix}]}]}
        )


@pytest.mark.parametrize("xattrs", [{"user.a": 5}, {"trusted.overlay.opaque": "y"}])
def test_xattrs_are_checked(xattrs):
    with pytest.raises(CowlabError, match="xattr"):
        spec.from_dict({"name": "x", "layers": [{"ops": [{"op": "file", "path": "/a", "size": 1, "xattrs": xattrs}]}]})
