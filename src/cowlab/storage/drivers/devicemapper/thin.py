"""The dm-thin pool under the devicemapper drivers (driver.py): the device mapper calls
(through dmioctl, no dmsetup processes), the parsing of tables and status lines, making a pool,
extending it and the no_space_timeout parameter, the block devices under a pool, and the
releasers and the sweep that take it all down.

Every dm device is named `cowlab-<state-root id>-<pool id>-...` and journaled before it exists
(resource kinds `dm`, `dm_thin`, `dm_param`, `dm_node`), so a crash leaves nothing `cowlab cleanup`
can't find; `dmsetup ls` names with this state root's prefix and no live owner are swept as strays.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cowlab.storage.drivers.devicemapper.dmioctl as dmio
from cowlab.base import sysutil
from cowlab.base.errors import CowlabError
from cowlab.base.resources import Resources, releaser
from cowlab.base.state import StateRoot

SECTOR = 512
KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PREFIX = "cowlab-"
PARAM = Path("/sys/module/dm_thin_pool/parameters/no_space_timeout")
# dm-thin: data block size is a multiple of 64 KiB between 64 KiB and 1 GiB; thin ids are 24 bit.
MIN_BLOCK, MAX_BLOCK = 64 * KiB, GiB
MAX_THIN_ID = (1 << 24) - 1
MAX_METADATA = 16 * GiB - 8 * MiB  # what the thin-pool target can address (THIN_METADATA_MAX)


# --- the kernel's dm ioctls (dmioctl), as Docker's libdevmapper used them -------------------------
# No dmsetup processes: under an emulated CPU each costs 0.3-1 s (measured in the kernel VM:
# create+remove 1.04 s through dmsetup, 0.09 s through the ioctls), which a create would time.
def call(fn, *args, check: bool = True):
    """A dm ioctl; DMError (an OSError naming the command and device) becomes CowlabError."""
    try:
        return fn(*args)
    except dmio.DMError as e:
        if check:
            raise CowlabError(str(e)) from None
        return e


def dev_path(name: str) -> str:
    """The device's node: /dev/dm-N (devtmpfs makes it as the device appears)."""
    return call(dmio.node, name)


def exists(name: str) -> bool:
    return dmio.exists(name)


def create(name: str, table: str) -> None:
    call(dmio.create, name, table)


def message(pool: str, msg: str) -> None:
    call(dmio.message, pool, 0, msg)


def try_remove(name: str) -> bool:
    """Remove a device; False instead of an error while it is busy (callers retry)."""
    return call(dmio.remove, name, check=False) is None


MAPPER = Path("/dev/mapper")


def mapper_node(name: str, res: Resources) -> str:
    """/dev/mapper/NAME, the path dockerd's devicemapper driver writes into its thin tables for
    a pool it is given. udev makes it where udev runs; elsewhere (a virtme guest, no udevd)
    cowlab links it to /dev/dm-N itself, journaled, and removes the link before the device."""
    p = MAPPER / name
    if not os.path.lexists(p):
        target = dev_path(name)
        res.acquire("dm_node", lambda: os.symlink(os.path.relpath(target, MAPPER), p), path=str(p))
    return str(p)


@releaser("dm_node")
def _release_dm_node(e: dict, state: StateRoot) -> None:
    p = Path(e["path"])
    if p.parent != MAPPER or not p.name.startswith(root_prefix(state)):
        raise CowlabError(f"journal names {p}, not a /dev/mapper link of this state root; not touching it")
    if p.is_symlink():
        p.unlink()


# --- parsing (pure, unit-tested with captured text) ------------------------------------------
@dataclass
class TableLine:
    start: int
    length: int
    target: str
    args: list[str]


def parse_table(text: str) -> list[TableLine]:
    """`dmsetup table NAME` (or a line of `dmsetup status NAME`): start length target args..."""
    out = []
    for line in text.strip().splitlines():
        f = line.split()
        if len(f) < 3:
            raise CowlabError(f"unexpected dm table line: {line!r}")
        out.append(TableLine(int(f[0]), int(f[1]), f[2], f[3:]))
    return out


@dataclass
class PoolTable:
    metadata_dev: str
    data_dev: str
    block_sectors: int
    low_water_blocks: int
    features: list[str] = field(default_factory=list)
    length: int = 0


def parse_pool_table(text: str) -> PoolTable:
    """`0 LEN thin-pool META DATA BLOCK_SECTORS LOW_WATER NFEAT FEAT...`"""
    t = parse_table(text)[0]
    if t.target != "thin-pool":
        raise CowlabError(f"not a thin-pool table: {text.strip()!r}")
    a = t.args
    nfeat = int(a[4]) if len(a) > 4 else 0
    return PoolTable(a[0], a[1], int(a[2]), int(a[3]), a[5 : 5 + nfeat], t.length)


def pool_table(length: int, meta: str, data: str, block_sectors: int, low_water: int, features: list[str]) -> str:
    return " ".join(
        map(str, [0, length, "thin-pool", meta, data, block_sectors, low_water, len(features), *features])
    ).rstrip()


def thin_table(length: int, pool_dev: str, dev_id: int) -> str:
    return f"0 {length} thin {pool_dev} {dev_id}"


@dataclass
class PoolStatus:
    """One `dmsetup status POOL` line. mode: rw, ro, out_of_data_space, or Fail (then the
    counters are 0). Fields after `mode` came with later kernels; missing ones are None."""

    length: int
    mode: str
    transaction_id: int = 0
    used_meta_blocks: int = 0
    total_meta_blocks: int = 0
    used_data_blocks: int = 0
    total_data_blocks: int = 0
    held_root: str = "-"
    discard: str | None = None
    no_space: str | None = None  # queue_if_no_space | error_if_no_space
    needs_check: bool = False
    meta_low_water: int | None = None

    @property
    def out_of_data_space(self) -> bool:
        return self.mode == "out_of_data_space"

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["out_of_data_space"] = self.out_of_data_space
        return d


def parse_pool_status(text: str) -> PoolStatus:
    t = parse_table(text)[0]
    if t.target != "thin-pool":
        raise CowlabError(f"not a thin-pool status: {text.strip()!r}")
    a = t.args
    if a and a[0] in ("Fail", "Error"):
        return PoolStatus(t.length, "Fail")
    um, tm = a[1].split("/")
    ud, td = a[2].split("/")
    s = PoolStatus(t.length, a[4], int(a[0]), int(um), int(tm), int(ud), int(td), a[3])
    rest = a[5:]
    for w in rest:
        if w.endswith("discard_passdown") or w == "ignore_discard":
            s.discard = w
        elif w.endswith("_if_no_space"):
            s.no_space = w
        elif w == "needs_check":
            s.needs_check = True
        elif w.isdigit():
            s.meta_low_water = int(w)
    return s


@dataclass
class ThinStatus:
    length: int
    mapped_sectors: int | None  # None: Fail
    highest_mapped: int | None  # None: nothing mapped yet ('-')


def parse_thin_status(text: str) -> ThinStatus:
    t = parse_table(text)[0]
    if t.target != "thin":
        raise CowlabError(f"not a thin status: {text.strip()!r}")
    if not t.args or t.args[0] == "Fail":
        return ThinStatus(t.length, None, None)
    hi = t.args[1] if len(t.args) > 1 else "-"
    return ThinStatus(t.length, int(t.args[0]), None if hi == "-" else int(hi))


# --- releasers: idempotent, the same code for teardown, Ctrl-C and `cowlab cleanup` -----------
def remove_device(name: str, attempts: int = 50) -> None:
    """dmsetup remove with retries (a just-unmounted fs or a udev probe may hold it a moment).
    A pool stuck queueing I/O for a full data device is switched to error_if_no_space first, so
    the held writers get ENOSPC and let go."""
    if not name.startswith(PREFIX):
        raise CowlabError(f"refusing to remove dm device {name!r}: not cowlab's")
    err = None
    for i in range(attempts):
        err = call(dmio.remove, name, check=False)
        if err is None or not exists(name):
            return
        if i == 3:
            _unstick_pool(name)
        time.sleep(0.1)
    raise CowlabError(f"dm device {name} stays busy: {err}; see dmsetup info {name}")


def _table(name: str) -> str:
    got = call(dmio.table, name, check=False)
    return got if isinstance(got, str) else ""


def _unstick_pool(name: str) -> None:
    tbl = _table(name)
    if " thin " in tbl:  # a thin volume held open by a writer the pool keeps waiting: its pool
        majmin = tbl.split()[3]
        if ":" in majmin:
            maj, mi = map(int, majmin.split(":"))
            pool = next((n for n, dev in dmio.list_devices() if dev == os.makedev(maj, mi)), None)
            if pool:
                _unstick_pool(pool)
        return
    if " thin-pool " not in tbl:
        return
    with contextlib.suppress(CowlabError):
        pt = parse_pool_table(tbl)
        if "error_if_no_space" not in pt.features:
            reload(
                name,
                pool_table(
                    pt.length,
                    pt.metadata_dev,
                    pt.data_dev,
                    pt.block_sectors,
                    pt.low_water_blocks,
                    pt.features + ["error_if_no_space"],
                ),
            )


def reload(name: str, table: str) -> None:
    """Load a new table and switch to it (suspend flushes or, for a full pool, holds I/O)."""
    call(dmio.reload, name, table)
    call(dmio.suspend, name, True)  # nolockfs: a full pool can't take an fs freeze
    call(dmio.resume, name)


@releaser("dm")
def _release_dm(e: dict, state: StateRoot) -> None:
    remove_device(e["name"])


def delete_thin(pool: str, dev_id: int) -> None:
    """Delete a thin volume from its pool, freeing its blocks; nothing to do once the pool is gone."""
    if not exists(pool):
        return
    err = call(dmio.message, pool, 0, f"delete {dev_id}", check=False)
    if isinstance(err, dmio.DMError) and err.errno != errno.ENODATA:
        # ENODATA: no such thin id (never created, or deleted already): success here
        raise CowlabError(f"could not delete thin {dev_id} of {pool}: {err}")


@releaser("dm_thin")
def _release_dm_thin(e: dict, state: StateRoot) -> None:
    delete_thin(e["pool"], e["id"])


@releaser("dm_param")
def _release_dm_param(e: dict, state: StateRoot) -> None:
    """Put a dm-thin module parameter back as it was."""
    p = Path(e["path"])
    if p.parent != PARAM.parent:
        raise CowlabError(f"journal names {p}, not a dm_thin_pool parameter; not touching it")
    if p.exists() and e.get("old") is not None:
        p.write_text(str(e["old"]))


def has_device_mapper() -> bool:
    """The kernel's device-mapper: its control device is registered in /proc/misc. (The
    /dev/mapper/control node alone proves nothing: dmsetup makes it even where the kernel has none.)"""
    try:
        return any(line.split()[1:] == ["device-mapper"] for line in open("/proc/misc"))
    except OSError:
        return False


def list_devices() -> list[str]:
    if not has_device_mapper():
        return []
    got = call(dmio.list_devices, check=False)
    return [n for n, _ in got] if isinstance(got, list) else []


def root_prefix(state: StateRoot) -> str:
    """`cowlab-<6 hex of the state root's path>-`: two state roots never sweep each other's."""
    return PREFIX + hashlib.sha256(str(state.path).encode()).hexdigest()[:6] + "-"


def sweep_strays(state: StateRoot, protected: set[str]) -> list[str]:
    """Remove dm devices with this state root's prefix that no live journal names: thin volumes
    first, then pools, then the linear slices under them."""
    pre = root_prefix(state)
    names = [n for n in list_devices() if n.startswith(pre) and n not in protected]
    order = {"thin": 0, "thin-pool": 1}
    typed = []
    for n in names:
        tbl = _table(n).split()
        typed.append((order.get(tbl[2] if len(tbl) > 2 else "", 2), n))
    done = []
    for _, n in sorted(typed):
        try:
            remove_device(n)
            done.append(f"removed stray dm device {n}")
        except CowlabError as err:
            done.append(f"  could not remove dm device {n}: {err}")
    return done


# --- the block devices under a pool ----------------------------------------------------------
def check_device(dev: str, force: bool = False) -> int:
    """A block device cowlab may take whole: returns its size in bytes, or raises saying why not."""
    try:
        st = os.stat(dev)
    except FileNotFoundError:
        raise CowlabError(f"{dev} does not exist") from None
    if not stat.S_ISBLK(st.st_mode):
        raise CowlabError(f"{dev} is not a block device")
    real = os.path.realpath(dev)
    sysname = sysfs_name(st.st_rdev)
    for m in sysutil.mountinfo():
        if m.source and os.path.exists(m.source) and os.path.realpath(m.source) == real:
            raise CowlabError(f"{dev} is mounted at {m.target}; refusing to use it")
    if sysname:
        holders = (
            os.listdir(f"/sys/class/block/{sysname}/holders")
            if os.path.isdir(f"/sys/class/block/{sysname}/holders")
            else []
        )
        if holders:
            raise CowlabError(f"{dev} is in use by {', '.join(holders)} (see /sys/class/block/{sysname}/holders)")
        parts = [p for p in os.listdir(f"/sys/class/block/{sysname}") if p.startswith(sysname)]
        for p in parts:
            if any(m.source == f"/dev/{p}" for m in sysutil.mountinfo()):
                raise CowlabError(f"a partition of {dev} (/dev/{p}) is mounted; refusing to use it")
    with contextlib.suppress(OSError):
        for line in Path("/proc/swaps").read_text().splitlines()[1:]:
            if line.split() and os.path.realpath(line.split()[0]) == real:
                raise CowlabError(f"{dev} is a swap device in use")
    sigs = signatures(dev)
    if sigs and not force:
        raise CowlabError(
            f"{dev} carries {', '.join(sigs)} (wipefs -n {dev}); it may hold data. "
            "Use another device, or force (--force / option force=true) to overwrite it"
        )
    fd = os.open(dev, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def signatures(dev: str) -> list[str]:
    """Filesystem, RAID, LVM, partition-table signatures on dev (wipefs -n, which blkid backs)."""
    cp = sysutil.run(["wipefs", "--no-act", "--noheadings", "--output", "TYPE", dev], check=False)
    if cp.returncode != 0:
        raise CowlabError(f"wipefs -n {dev} failed: {cp.stderr.strip()}")
    return sorted({t.strip() for t in cp.stdout.splitlines() if t.strip()})


def sysfs_name(rdev: int) -> str | None:
    p = f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}"
    return os.path.basename(os.path.realpath(p)) if os.path.exists(p) else None


def zero(dev: str, n: int) -> None:
    fd = os.open(dev, os.O_WRONLY)
    try:
        os.write(fd, b"\0" * n)
        os.fsync(fd)
    finally:
        os.close(fd)


def device_size(dev: str) -> int:
    fd = os.open(dev, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def device_node(majmin: str) -> str:
    name = os.path.basename(os.path.realpath(f"/sys/dev/block/{majmin}"))
    return f"/dev/{name}"


# --- the kernel: targets and the no_space_timeout module parameter ----------------------------
def read_no_space_timeout() -> int | None:
    try:
        return int(PARAM.read_text().strip())
    except (OSError, ValueError):
        return None


def targets() -> dict[str, str]:
    got = call(dmio.targets, check=False)
    return got if isinstance(got, dict) else {}


def set_no_space_timeout(res: Resources, seconds: int | None) -> None:
    """Set the module parameter (global to the kernel: every pool's) for a pool of ours, journaled
    with its old value first so that teardown, Ctrl-C and `cowlab cleanup` put it back; None leaves
    it as it is."""
    if seconds is not None and PARAM.exists():
        res.add("dm_param", path=str(PARAM), old=read_no_space_timeout())
        PARAM.write_text(str(seconds))


# --- a pool: made over two areas, extended in place ---------------------------------------------
def create_pool(
    res: Resources,
    name: str,
    meta_dev: str,
    data_dev: str,
    data_bytes: int,
    block_bytes: int,
    *,
    zero_blocks: bool,
    error_if_no_space: bool,
    low_water_blocks: int | None,
    timeout: int | None,
) -> tuple[int, list[str]]:
    """Make thin pool `name` over a metadata and a data device, journaled in res; the data area is
    cut to whole blocks. Returns (data sectors, the table's features)."""
    data_sectors = data_bytes // block_bytes * block_bytes // SECTOR
    if data_sectors == 0:
        raise CowlabError(f"data area of {data_bytes} bytes holds no {block_bytes}-byte block")
    feats = [] if zero_blocks else ["skip_block_zeroing"]
    if error_if_no_space:
        feats.append("error_if_no_space")
    low = min(low_water_blocks or 0, data_sectors * SECTOR // block_bytes // 2)
    set_no_space_timeout(res, timeout)
    res.acquire(
        "dm",
        lambda: create(name, pool_table(data_sectors, meta_dev, data_dev, block_bytes // SECTOR, low, feats)),
        name=name,
    )
    return data_sectors, feats


def extend_pool(name: str, block_bytes: int, add_bytes: int, grow_data: Callable[[PoolTable, int], int]) -> None:
    """Grow a pool's data area by add_bytes (grow_data does it to the device under the pool and
    returns its new length in sectors) and reload the pool's table over it (resumes queued I/O)."""
    pt = parse_pool_table(call(dmio.table, name))
    new_len = grow_data(pt, add_bytes)
    bs = block_bytes // SECTOR
    new_len = new_len // bs * bs
    reload(name, pool_table(new_len, pt.metadata_dev, pt.data_dev, pt.block_sectors, pt.low_water_blocks, pt.features))
