"""Image specs: a TOML file that declares an image as an ordered list of layers of operations.

    name = "demo"
    seed = 1                      # content seed; every file's bytes derive from it
    [[layers]]
    ops = [
      { op = "file", path = "/data/big", size = "64MiB" },           # pattern = "random"
      { op = "files", dir = "/etc/conf.d", count = 100, size = "1KiB" },
      { op = "dir", path = "/tmp", mode = "1777" },
      { op = "symlink", path = "/lib64", target = "lib" },
    ]
    [[layers]]
    ops = [
      { op = "delete", path = "/data/big" },                         # an OCI whiteout
      { op = "opaque", path = "/etc/conf.d" },
      { op = "chown", path = "/etc", uid = 1000, gid = 1000, recursive = true },
    ]

Operations: file, files, dir, symlink, hardlink, delete, opaque, chmod, chown, copy (a host file,
e.g. a static busybox). Errors name the file, the layer and the field. `file` and `symlink` take
an optional `mtime` (seconds since 1970) in place of the spec's own.
"""

from __future__ import annotations

import posixpath
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cowlab.base import units
from cowlab.base.errors import CowlabError
from cowlab.store.content import PATTERNS

MAX_FILE = 1 << 40

OPS: dict[str, dict[str, tuple[type, bool]]] = {
    # op: {field: (type, required)}
    "file": {
        "path": (str, True),
        "size": (object, True),
        "pattern": (str, False),
        "seed": (int, False),
        "mode": (object, False),
        "uid": (int, False),
        "gid": (int, False),
        "xattrs": (dict, False),
        "mtime": (int, False),
    },
    "files": {
        "dir": (str, True),
        "count": (int, True),
        "size": (object, True),
        "pattern": (str, False),
        "prefix": (str, False),
        "mode": (object, False),
        "uid": (int, False),
        "gid": (int, False),
    },
    "dir": {
        "path": (str, True),
        "mode": (object, False),
        "uid": (int, False),
        "gid": (int, False),
        "xattrs": (dict, False),
    },
    "symlink": {
        "path": (str, True),
        "target": (str, True),
        "uid": (int, False),
        "gid": (int, False),
        "mtime": (int, False),
    },
    "hardlink": {"path": (str, True), "target": (str, True)},
    "delete": {"path": (str, True)},
    "opaque": {"path": (str, True)},
    "chmod": {"path": (str, True), "mode": (object, True)},
    "chown": {"path": (str, True), "uid": (int, True), "gid": (int, True), "recursive": (bool, False)},
    "copy": {"path": (str, True), "source": (str, True), "mode": (object, False)},
}


@dataclass(frozen=True)
class Op:
    op: str
    args: dict[str, Any]


@dataclass
class Layer:
    ops: list[Op]
    comment: str = ""


@dataclass
class ImageSpec:
    name: str
    layers: list[Layer]
    seed: int = 0
    mtime: int = 1_700_000_000
    source: str = "<data>"
    extra: dict = field(default_factory=dict)

    @property
    def layer_count(self) -> int:
        return len(self.layers)


def parse_size(v: Any, where: str) -> int:
    if isinstance(v, bool):
        raise CowlabError(f"{where}: size must be a number or a string like '64MiB', not {v!r}")
    if isinstance(v, int):
        n = v
    elif isinstance(v, str):
        try:  # KB is decimal here, KiB binary (a file's size as a user writes it)
            n = units.parse_size(v, decimal_si=True, fractions=False)
        except CowlabError:
            raise CowlabError(f"{where}: cannot read size {v!r} (use e.g. 4096, '4KiB', '64MiB', '1GiB')") from None
    else:
        raise CowlabError(f"{where}: size must be a number or a string like '64MiB', not {v!r}")
    if n < 0 or n > MAX_FILE:
        raise CowlabError(f"{where}: size {n} is out of range (0 to 1 TiB)")
    return n


def parse_mode(v: Any, where: str) -> int:
    if isinstance(v, str) and re.fullmatch(r"0?[0-7]{3,4}", v):
        return int(v, 8)
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 0o7777:
        return v
    raise CowlabError(f"{where}: mode must be an octal string like '0644' or '4755', not {v!r}")


def clean_path(p: str, where: str) -> str:
    """An absolute image path, normalised; '..' that climbs out and empty names are errors."""
    if not isinstance(p, str) or not p.startswith("/") or "\0" in p:
        raise CowlabError(f"{where}: path must be absolute inside the image, got {p!r}")
    parts = [x for x in p.split("/") if x not in ("", ".")]
    if ".." in parts:
        raise CowlabError(f"{where}: path {p!r} may not contain '..'")
    if any(x.startswith(".wh.") for x in parts):
        raise CowlabError(f"{where}: names starting with '.wh.' are reserved for whiteouts")
    out = "/" + "/".join(parts)
    if out == "/":
        raise CowlabError(f"{where}: the image root itself cannot be the target")
    return out


def _check_op(raw: Any, where: str) -> Op:
    if not isinstance(raw, dict):
        raise CowlabError(f'{where}: each op must be a table like {{ op = "file", ... }}')
    kind = raw.get("op")
    if not isinstance(kind, str) or kind not in OPS:
        raise CowlabError(f"{where}: field 'op' must be one of {', '.join(OPS)}; got {kind!r}")
    fields = OPS[kind]
    args: dict[str, Any] = {}
    for k, v in raw.items():
        if k == "op":
            continue
        if k not in fields:
            raise CowlabError(f"{where}: op {kind!r} has no field {k!r} (fields: {', '.join(fields)})")
        typ, _ = fields[k]
        if typ is not object and (not isinstance(v, typ) or (typ is int and isinstance(v, bool))):
            raise CowlabError(f"{where}: field {k!r} must be {typ.__name__}, got {v!r}")
        args[k] = v
    for k, (_, req) in fields.items():
        if req and k not in args:
            raise CowlabError(f"{where}: op {kind!r} needs field {k!r}")
    for k in ("path", "dir"):
        if k in args:
            args[k] = clean_path(args[k], f"{where}, field {k!r}")
    if kind == "hardlink":
        args["target"] = clean_path(args["target"], f"{where}, field 'target'")
    if kind == "symlink" and (not args["target"] or "\0" in args["target"]):
        raise CowlabError(f"{where}: field 'target' must be a non-empty link target")
    if "size" in args:
        args["size"] = parse_size(args["size"], f"{where}, field 'size'")
    if "mode" in args:
        args["mode"] = parse_mode(args["mode"], f"{where}, field 'mode'")
    if "pattern" in args and args["pattern"] not in PATTERNS:
        raise CowlabError(f"{where}, field 'pattern': must be one of {', '.join(PATTERNS)}")
    for k in ("uid", "gid"):
        if k in args and not 0 <= args[k] < 2**32 - 1:
            raise CowlabError(f"{where}, field {k!r}: out of range")
    if "mtime" in args and not 0 <= args["mtime"] < 2**33:  # seconds since 1970, as a tar holds it
        raise CowlabError(f"{where}, field 'mtime': out of range (0 to 2^33 seconds)")
    if kind == "files" and not 0 < args["count"] <= 1_000_000:
        raise CowlabError(f"{where}, field 'count': must be 1 to 1000000")
    if "prefix" in args and (
        not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}", args["prefix"]) or args["prefix"].startswith(".wh.")
    ):
        raise CowlabError(f"{where}, field 'prefix': a plain file name prefix like 'f' or 'lib'")
    for k, v in args.get("xattrs", {}).items():
        if not (isinstance(k, str) and k.startswith("user.") and len(k) > 5 and isinstance(v, str)):
            raise CowlabError(f"{where}, field 'xattrs': names must be 'user.*' and values strings; got {k!r} = {v!r}")
    if kind == "copy":
        src = Path(args["source"])
        if not src.is_file():
            raise CowlabError(f"{where}, field 'source': {src} is not a readable file on this host")
    return Op(kind, args)


def from_dict(data: dict, source: str = "<data>") -> ImageSpec:
    where = source
    if not isinstance(data, dict):
        raise CowlabError(f"{where}: a spec is a table")
    known = {"name", "seed", "mtime", "layers", "description", "extra"}
    for k in data:
        if k not in known:
            raise CowlabError(f"{where}: unknown top-level field {k!r} (fields: {', '.join(sorted(known))})")
    name = data.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}", name):
        raise CowlabError(f"{where}: field 'name' must be a short name like 'demo' or 'size-64MiB'")
    seed = data.get("seed", 0)
    mtime = data.get("mtime", 1_700_000_000)
    for k, v in (("seed", seed), ("mtime", mtime)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise CowlabError(f"{where}: field {k!r} must be a non-negative integer")
    raw_layers = data.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise CowlabError(f"{where}: field 'layers' must be a non-empty array of [[layers]] tables")
    layers = []
    for i, rl in enumerate(raw_layers, 1):
        lw = f"{where}, layer {i}"
        if not isinstance(rl, dict):
            raise CowlabError(f"{lw}: must be a table with an 'ops' array")
        extra = set(rl) - {"ops", "comment"}
        if extra:
            raise CowlabError(f"{lw}: unknown field {sorted(extra)[0]!r} (fields: ops, comment)")
        ops = rl.get("ops", [])
        if not isinstance(ops, list):
            raise CowlabError(f"{lw}: field 'ops' must be an array")
        layers.append(Layer([_check_op(o, f"{lw}, op {j}") for j, o in enumerate(ops, 1)], str(rl.get("comment", ""))))
    extra = data.get("extra", {})
    if not isinstance(extra, dict):
        raise CowlabError(f"{where}: field 'extra' must be a table")
    return ImageSpec(name, layers, seed, mtime, source, dict(extra))


def load(path: str | Path) -> ImageSpec:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise CowlabError(f"{p}: no such spec file") from None
    except tomllib.TOMLDecodeError as e:
        raise CowlabError(f"{p}: not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise CowlabError(f"{p}: not a text file") from None
    return from_dict(data, str(p))


def parent(p: str) -> str:
    return posixpath.dirname(p)
