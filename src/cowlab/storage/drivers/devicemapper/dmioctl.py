"""The device mapper through its ioctl interface (/dev/mapper/control), without dmsetup.

Each `dmsetup` process costs 0.2-0.5 s in an emulated (TCG) guest; Docker's devicemapper driver
talked to the kernel through libdevmapper, i.e. these ioctls. The layout follows
include/uapi/linux/dm-ioctl.h (interface 4.x); the buffer conventions follow
drivers/md/dm-ioctl.c, several of which are surprising and commented where they matter.

Every call is one ioctl on a fresh fd of /dev/mapper/control with a bytearray that starts with a
struct dm_ioctl (312 bytes) and carries the command's data after it. No udev cookies are used:
nothing waits for udev, and no /dev/mapper/NAME node is made (node() finds devtmpfs's /dev/dm-N).
"""

from __future__ import annotations

import errno as _errno
import fcntl
import os
import stat
import struct

CONTROL = "/dev/mapper/control"

# struct dm_ioctl: version[3], data_size, data_start, target_count, open_count (s32), flags,
# event_nr, padding, dev (u64), name[128], uuid[129], data[7]  -> 312 bytes.
_HDR = struct.Struct("=3IIIIiIIIQ128s129s7s")
HDR_SIZE = _HDR.size
assert HDR_SIZE == 312
# Where the kernel puts results: the first 8-aligned offset after the header (312 is one).
DATA_START = (HDR_SIZE + 7) & ~7
_SPEC = struct.Struct("=QQiI16s")  # struct dm_target_spec, params follow: 40 bytes
_NAME_LIST = struct.Struct("=QI")  # struct dm_name_list: name at offset 12 (not 16!)
_VERSIONS = struct.Struct("=I3I")  # struct dm_target_versions: name at offset 16
_MSG = struct.Struct("=Q")  # struct dm_target_msg: message follows
INTERFACE = (4, 0, 0)  # what we were "compiled with": the kernel refuses only major != 4 or minor > its own

# _IOWR(0xfd, nr, struct dm_ioctl): the size bits say 312, but the kernel ignores them and reads
# data_size bytes from the pointer instead, so bigger buffers go through the same request code.
_IOWR = 0xC138FD00
(
    VERSION,
    REMOVE_ALL,
    LIST_DEVICES,
    DEV_CREATE,
    DEV_REMOVE,
    DEV_RENAME,
    DEV_SUSPEND,
    DEV_STATUS,
    DEV_WAIT,
    TABLE_LOAD,
    TABLE_CLEAR,
    TABLE_DEPS,
    TABLE_STATUS,
    LIST_VERSIONS,
    TARGET_MSG,
) = range(15)
_CMD_NAMES = {
    VERSION: "version",
    LIST_DEVICES: "list",
    DEV_CREATE: "create",
    DEV_REMOVE: "remove",
    DEV_SUSPEND: "suspend/resume",
    DEV_STATUS: "info",
    TABLE_LOAD: "load",
    TABLE_STATUS: "status",
    LIST_VERSIONS: "targets",
    TARGET_MSG: "message",
}

READONLY_FLAG = 1 << 0
SUSPEND_FLAG = 1 << 1
STATUS_TABLE_FLAG = 1 << 4
ACTIVE_PRESENT_FLAG = 1 << 5
INACTIVE_PRESENT_FLAG = 1 << 6
BUFFER_FULL_FLAG = 1 << 8
SKIP_LOCKFS_FLAG = 1 << 10
NOFLUSH_FLAG = 1 << 11
QUERY_INACTIVE_TABLE_FLAG = 1 << 12
DATA_OUT_FLAG = 1 << 16  # a target message put a reply in the data area

FIRST_BUFFER = 16 << 10  # libdevmapper's starting size for commands that return data
MAX_BUFFER = 64 << 20


class DMError(OSError):
    """A device mapper ioctl failed: errno plus 'dm COMMAND DEVICE: strerror'."""

    def __init__(self, err: int, command: str, device: str = "", detail: str = ""):
        super().__init__(err, detail or os.strerror(err))
        self.command, self.device = command, device

    def __str__(self) -> str:
        where = f"dm {self.command} {self.device}".rstrip()
        return f"{where}: {self.strerror}"


# --- encoding ------------------------------------------------------------------------------
def decode_dev(huge: int) -> int:
    """The kernel's huge_encode_dev() form (new_encode_dev: minor's low byte, 12-bit major, then
    minor's upper bits from bit 20) as an os.makedev() dev_t."""
    major = (huge & 0xFFF00) >> 8
    minor = (huge & 0xFF) | ((huge >> 12) & 0xFFF00)
    return os.makedev(major, minor)


def encode_dev(dev: int) -> int:
    major, minor = os.major(dev), os.minor(dev)
    return (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)


def _cstr(b: bytes | bytearray) -> str:
    return b.split(b"\0", 1)[0].decode(errors="surrogateescape")


def _align8(n: int) -> int:
    return (n + 7) & ~7


def pack_header(
    buf: bytearray,
    *,
    name: str = "",
    flags: int = 0,
    target_count: int = 0,
    data_start: int = DATA_START,
    event_nr: int = 0,
) -> None:
    """Write struct dm_ioctl at the start of buf; data_size is the whole buffer."""
    nb = name.encode()
    if len(nb) >= 128:
        raise DMError(_errno.EINVAL, "name", name, "device name longer than 127 bytes")
    _HDR.pack_into(buf, 0, *INTERFACE, len(buf), data_start, target_count, 0, flags, event_nr, 0, 0, nb, b"", b"")


def unpack_header(buf: bytes | bytearray) -> dict:
    (v0, v1, v2, data_size, data_start, target_count, open_count, flags, event_nr, _pad, dev, name, uuid, _data) = (
        _HDR.unpack_from(buf, 0)
    )
    return {
        "version": (v0, v1, v2),
        "data_size": data_size,
        "data_start": data_start,
        "target_count": target_count,
        "open_count": open_count,
        "flags": flags,
        "event_nr": event_nr,
        "dev": dev,
        "name": _cstr(name),
        "uuid": _cstr(uuid),
    }


def parse_table(text: str) -> list[tuple[int, int, str, str]]:
    """dmsetup's table text as (start, length, target, params) rows: blank lines and '#' comments
    are skipped, as dmsetup does."""
    rows = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 3)
        if len(parts) < 3:
            raise DMError(_errno.EINVAL, "table", "", f"bad table line {line!r}")
        try:
            start, length = int(parts[0]), int(parts[1])
        except ValueError:
            raise DMError(_errno.EINVAL, "table", "", f"bad table line {line!r}") from None
        rows.append((start, length, parts[2], parts[3] if len(parts) > 3 else ""))
    if not rows:
        raise DMError(_errno.EINVAL, "table", "", "empty table")
    return rows


def pack_table(name: str, table: str, readonly: bool = False) -> bytearray:
    """A DM_TABLE_LOAD buffer: the header, then one dm_target_spec per line, each followed by its
    NUL-terminated params and padded so the next spec starts 8-aligned. Here `next` is relative
    to the spec itself (on TABLE_STATUS output it is relative to data_start instead); like
    libdevmapper, the last spec's `next` points just past the buffer end (the kernel reads
    target_count specs and never follows it)."""
    rows = parse_table(table)
    chunks = []
    for start, length, ttype, params in rows:
        tb = ttype.encode()
        if len(tb) >= 16:
            raise DMError(_errno.EINVAL, "load", name, f"target type {ttype!r} longer than 15 bytes")
        # The kernel's dm_split_args() treats '\' as an escape; libdevmapper doubles each one so
        # the table text means what it says.
        pb = params.encode().replace(b"\\", b"\\\\") + b"\0"
        size = _align8(_SPEC.size + len(pb))
        chunk = bytearray(size)
        _SPEC.pack_into(chunk, 0, start, length, 0, size, tb)
        chunk[_SPEC.size : _SPEC.size + len(pb)] = pb
        chunks.append(chunk)
    buf = bytearray(DATA_START) + b"".join(chunks)
    pack_header(buf, name=name, flags=READONLY_FLAG if readonly else 0, target_count=len(rows))
    return buf


def parse_specs(buf: bytes | bytearray) -> list[tuple[int, int, str, str]]:
    """TABLE_STATUS output: target_count specs, the first at data_start, each later one at
    data_start + the previous spec's `next` (an offset from data_start, not from the spec)."""
    h = unpack_header(buf)
    base, out, off = h["data_start"], [], h["data_start"]
    for _ in range(h["target_count"]):
        start, length, _status, nxt, ttype = _SPEC.unpack_from(buf, off)
        p = off + _SPEC.size
        end = buf.index(b"\0", p)
        out.append((start, length, _cstr(ttype), bytes(buf[p:end]).decode(errors="surrogateescape")))
        off = base + nxt
    return out


def format_specs(specs: list[tuple[int, int, str, str]]) -> str:
    """As dmsetup prints them: "%llu %llu %s %s" per target, so an empty params string leaves a
    trailing space ("0 2048 zero ")."""
    return "\n".join(f"{s} {n} {t} {p}" for s, n, t, p in specs)


def parse_name_list(buf: bytes | bytearray) -> list[tuple[str, int]]:
    """LIST_DEVICES output: dm_name_list records chained by `next` (from each record's own start,
    0 on the last). The name sits at offset 12: the struct is {u64 dev; u32 next; char name[]},
    whose sizeof is 16 but whose name starts right after `next`. Newer kernels append event_nr,
    flags (and a uuid) after the name; `next` skips them. No devices: one record with dev 0."""
    h = unpack_header(buf)
    off = h["data_start"]
    out: list[tuple[str, int]] = []
    if h["data_size"] <= off:
        return out
    while True:
        dev, nxt = _NAME_LIST.unpack_from(buf, off)
        if dev == 0 and not out:  # libdevmapper's test for "no devices" too
            return out
        out.append((_cstr(buf[off + 12 : off + 12 + 128]), decode_dev(dev)))
        if not nxt:
            return out
        off += nxt


def parse_versions(buf: bytes | bytearray) -> dict[str, str]:
    """LIST_VERSIONS output: dm_target_versions {u32 next; u32 version[3]; char name[]} chained by
    `next` (from each record's start, 0 on the last)."""
    h = unpack_header(buf)
    off = h["data_start"]
    out: dict[str, str] = {}
    if h["data_size"] <= off:
        return out
    while True:
        nxt, a, b, c = _VERSIONS.unpack_from(buf, off)
        name = _cstr(buf[off + _VERSIONS.size : off + _VERSIONS.size + 256])
        if name:
            out[name] = f"v{a}.{b}.{c}"
        if not nxt:
            return out
        off += nxt


# --- the ioctl -------------------------------------------------------------------------------
def _ioctl(cmd: int, buf: bytearray, device: str = "") -> bytearray:
    try:
        fd = os.open(CONTROL, os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise DMError(
            e.errno or _errno.ENODEV, _CMD_NAMES.get(cmd, str(cmd)), device, f"cannot open {CONTROL}: {e.strerror}"
        ) from None
    try:
        # A bytearray is mutable: the kernel's reply lands in buf itself (Python passes it directly,
        # or through a 1024-byte bounce buffer when smaller; either way buf gets the result).
        fcntl.ioctl(fd, _IOWR + cmd, buf, True)
    except OSError as e:
        raise DMError(e.errno or _errno.EIO, _CMD_NAMES.get(cmd, str(cmd)), device) from None
    finally:
        os.close(fd)
    return buf


def _simple(cmd: int, name: str = "", flags: int = 0) -> dict:
    buf = bytearray(HDR_SIZE)
    pack_header(buf, name=name, flags=flags)
    return unpack_header(_ioctl(cmd, buf, name))


def _with_data(cmd: int, name: str = "", flags: int = 0) -> bytearray:
    """A command that returns data: the kernel sets DM_BUFFER_FULL_FLAG (and returns success)
    when the buffer is too small, without saying how much it needs: double and ask again."""
    size = FIRST_BUFFER
    while True:
        buf = bytearray(size)
        pack_header(buf, name=name, flags=flags)
        _ioctl(cmd, buf, name)
        if not unpack_header(buf)["flags"] & BUFFER_FULL_FLAG:
            return buf
        if size >= MAX_BUFFER:
            raise DMError(_errno.ENOBUFS, _CMD_NAMES[cmd], name, f"reply larger than {MAX_BUFFER} bytes")
        size *= 2


# --- the public API --------------------------------------------------------------------------
def version() -> tuple[int, int, int]:
    """The kernel's dm ioctl interface version, e.g. (4, 47, 0)."""
    return _simple(VERSION)["version"]


def available() -> bool:
    """/dev/mapper/control opens and answers DM_VERSION. (The node alone proves nothing: dmsetup
    makes it even where the kernel has no device mapper; opening it then fails with ENODEV.)"""
    try:
        return version()[0] == INTERFACE[0]
    except OSError:
        return False


def info(name: str) -> dict:
    h = _simple(DEV_STATUS, name)
    dev = decode_dev(h["dev"])
    f = h["flags"]
    return {
        "major": os.major(dev),
        "minor": os.minor(dev),
        "open_count": h["open_count"],
        "target_count": h["target_count"],
        "suspended": bool(f & SUSPEND_FLAG),
        "event_nr": h["event_nr"],
        "readonly": bool(f & READONLY_FLAG),
        "live_table": bool(f & ACTIVE_PRESENT_FLAG),
        "inactive_table": bool(f & INACTIVE_PRESENT_FLAG),
    }


def exists(name: str) -> bool:
    try:
        _simple(DEV_STATUS, name)
    except DMError as e:
        if e.errno == _errno.ENXIO:
            return False
        raise
    return True


def reload(name: str, table: str, readonly: bool = False) -> None:
    """Load table into the device's inactive slot (the next resume makes it live)."""
    _ioctl(TABLE_LOAD, pack_table(name, table, readonly), name)


def suspend(name: str, nolockfs: bool = True, noflush: bool = False) -> None:
    flags = SUSPEND_FLAG | (SKIP_LOCKFS_FLAG if nolockfs else 0) | (NOFLUSH_FLAG if noflush else 0)
    _simple(DEV_SUSPEND, name, flags)


def resume(name: str) -> int:
    """DM_DEV_SUSPEND without DM_SUSPEND_FLAG: swaps in the inactive table, if any, and resumes."""
    return decode_dev(_simple(DEV_SUSPEND, name)["dev"])


def remove(name: str) -> None:
    """Raises DMError with EBUSY while the device is open, ENXIO when there is none."""
    _simple(DEV_REMOVE, name)


def create(name: str, table: str, readonly: bool = False) -> int:
    """dmsetup create: make the device, load its table, resume it. Returns its dev_t. A device
    left half-made (table refused, resume failed) is removed before the error is raised."""
    buf = pack_table(name, table, readonly)  # bad table text: refused before anything exists
    _simple(DEV_CREATE, name)
    try:
        _ioctl(TABLE_LOAD, buf, name)
        return resume(name)
    except BaseException:
        try:
            remove(name)
        except OSError:
            pass
        raise


def _table_status(name: str, flags: int, inactive: bool) -> str:
    if inactive:
        flags |= QUERY_INACTIVE_TABLE_FLAG
    return format_specs(parse_specs(_with_data(TABLE_STATUS, name, flags)))


def table(name: str, inactive: bool = False) -> str:
    """As `dmsetup table NAME` prints it (without its final newline; crypt keys are not masked)."""
    return _table_status(name, STATUS_TABLE_FLAG, inactive)


def status(name: str, inactive: bool = False, noflush: bool = False) -> str:
    """As `dmsetup status NAME` prints it (without its final newline). noflush: a thin pool does
    not commit its metadata first (dmsetup status --noflush)."""
    return _table_status(name, NOFLUSH_FLAG if noflush else 0, inactive)


def message(name: str, sector: int, msg: str) -> str:
    """dmsetup message NAME SECTOR MSG: the target's reply, usually ''. The kernel writes the reply
    over the message (both start at data_start), and only DM_DATA_OUT_FLAG says there is one.
    Not retried on a full buffer: the message has been acted on by then."""
    mb = msg.encode() + b"\0"
    buf = bytearray(max(FIRST_BUFFER, _align8(DATA_START + _MSG.size + len(mb))))
    pack_header(buf, name=name)
    _MSG.pack_into(buf, DATA_START, sector)
    buf[DATA_START + _MSG.size : DATA_START + _MSG.size + len(mb)] = mb
    _ioctl(TARGET_MSG, buf, name)
    h = unpack_header(buf)
    if h["flags"] & BUFFER_FULL_FLAG:
        raise DMError(_errno.ENOBUFS, "message", name, f"message {msg!r} delivered, its reply did not fit")
    if not h["flags"] & DATA_OUT_FLAG:
        return ""
    return _cstr(buf[h["data_start"] : h["data_size"]])


def list_devices() -> list[tuple[str, int]]:
    """(name, dev_t) of every dm device (dmsetup ls)."""
    return parse_name_list(_with_data(LIST_DEVICES))


def targets() -> dict[str, str]:
    """Loaded target types and their versions (dmsetup targets): {'thin-pool': 'v1.22.0', ...}."""
    return parse_versions(_with_data(LIST_VERSIONS))


def node(name: str) -> str:
    """A block device node for the device: /dev/dm-MINOR (devtmpfs makes it as the disk is added,
    synchronously) or else /dev/mapper/NAME, either only if it has the device's rdev."""
    dev = decode_dev(_simple(DEV_STATUS, name)["dev"])
    for path in (f"/dev/dm-{os.minor(dev)}", f"/dev/mapper/{name}"):
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode) and st.st_rdev == dev:
            return path
    raise DMError(
        _errno.ENOENT,
        "node",
        name,
        f"no device node for {os.major(dev)}:{os.minor(dev)} (/dev/dm-{os.minor(dev)} nor /dev/mapper/{name})",
    )
