"""cowlab.storage.drivers.devicemapper.dmioctl without a device mapper: the ioctl buffers it builds and the kernel replies it
parses, hand-built here byte by byte after include/uapi/linux/dm-ioctl.h and
drivers/md/dm-ioctl.c. (The real thing is checked in the kernel VM.)"""

from __future__ import annotations

import errno
import os
import struct

import pytest

from cowlab.storage.drivers.devicemapper import dmioctl as dm

HDR = 312  # sizeof(struct dm_ioctl); data_start of every kernel reply


def header(buf: bytearray, *, data_size: int, target_count: int = 0, flags: int = 0, data_start: int = HDR) -> None:
    """struct dm_ioctl by hand: version[3] @0, data_size @12, data_start @16, target_count @20,
    open_count @24, flags @28, event_nr @32, padding @36, dev @40, name @48, uuid @176."""
    struct.pack_into("=3I", buf, 0, 4, 47, 0)
    struct.pack_into("=IIIiII", buf, 12, data_size, data_start, target_count, 0, flags, 0)


def test_header_layout():
    buf = bytearray(400)
    dm.pack_header(buf, name="cowlab-x", flags=dm.SUSPEND_FLAG, target_count=3)
    assert struct.unpack_from("=3I", buf, 0) == (4, 0, 0)
    assert struct.unpack_from("=IIIiII", buf, 12) == (400, HDR, 3, 0, dm.SUSPEND_FLAG, 0)
    assert buf[48 : 48 + 9] == b"cowlab-x\0" and buf[176] == 0
    assert dm.unpack_header(buf)["name"] == "cowlab-x"
    with pytest.raises(dm.DMError) as ei:
        dm.pack_header(buf, name="x" * 128)
    assert ei.value.errno == errno.EINVAL


def test_request_codes():
    # _IOWR(0xfd, nr, struct dm_ioctl): dir 3 << 30 | 312 << 16 | 0xfd << 8 | nr
    assert dm._IOWR == (3 << 30) | (312 << 16) | (0xFD << 8)
    assert (dm.VERSION, dm.DEV_CREATE, dm.DEV_REMOVE, dm.DEV_SUSPEND, dm.DEV_STATUS) == (0, 3, 4, 6, 7)
    assert (dm.TABLE_LOAD, dm.TABLE_STATUS, dm.LIST_VERSIONS, dm.TARGET_MSG) == (9, 12, 13, 14)


def test_pack_table_two_lines():
    buf = dm.pack_table(
        "cowlab-pool", "0 2048 zero\n\n  # a comment\n2048 4096 linear 7:1 100  # tail\n", readonly=True
    )
    h = dm.unpack_header(buf)
    assert h["data_start"] == HDR and h["target_count"] == 2 and h["name"] == "cowlab-pool"
    assert h["flags"] == dm.READONLY_FLAG and h["data_size"] == len(buf)
    # spec 1 @312: 40-byte dm_target_spec + "\0" (empty params) -> 41, padded to 48
    s1 = struct.unpack_from("=QQiI16s", buf, HDR)
    assert s1[:4] == (0, 2048, 0, 48) and s1[4].rstrip(b"\0") == b"zero"
    assert buf[HDR + 40] == 0
    # spec 2 @360: params "7:1 100\0" (8) -> 48 bytes; `next` is relative to this spec
    o2 = HDR + 48
    s2 = struct.unpack_from("=QQiI16s", buf, o2)
    assert s2[:4] == (2048, 4096, 0, 48) and s2[4].rstrip(b"\0") == b"linear"
    assert buf[o2 + 40 : o2 + 48] == b"7:1 100\0"
    assert len(buf) == o2 + 48 and len(buf) % 8 == 0
    assert o2 % 8 == 0


def test_pack_table_padding_and_escapes():
    buf = dm.pack_table("x", "0 8 linear /dev/a\\b 0")
    s = struct.unpack_from("=QQiI16s", buf, HDR)
    params = b"/dev/a\\\\b 0\0"  # libdevmapper doubles '\': the kernel's arg splitter unescapes it
    assert buf[HDR + 40 : HDR + 40 + len(params)] == params
    assert s[3] == (40 + len(params) + 7) // 8 * 8 and len(buf) == HDR + s[3]
    assert not any(buf[HDR + 40 + len(params) :])


@pytest.mark.parametrize("bad", ["", "# only a comment", "0 8", "a 8 zero", "0 8 x234567890123456"])
def test_pack_table_refuses(bad):
    with pytest.raises(dm.DMError) as ei:
        dm.pack_table("x", bad)
    assert ei.value.errno == errno.EINVAL


def _status_reply(rows: list[tuple[int, int, str, str]], extra: int = 64) -> bytearray:
    """What retrieve_status() writes: specs from data_start, each `next` = offset of the following
    spec from data_start (set on the last one too), data_size = end of the last string."""
    buf = bytearray(4096)
    off = 0
    used = 0
    for start, length, ttype, params in rows:
        p = params.encode() + b"\0"
        end = off + 40 + len(p)
        nxt = (end + 7) & ~7
        struct.pack_into("=QQiI16s", buf, HDR + off, start, length, 0, nxt, ttype.encode())
        buf[HDR + off + 40 : HDR + end] = p
        used, off = HDR + end, nxt
    header(buf, data_size=used, target_count=len(rows))
    return buf


def test_parse_status_reply():
    rows = [
        (0, 2097152, "thin-pool", "0 2571/25600 0/16384 - rw discard_passdown queue_if_no_space - 1024 "),
        (2097152, 8, "zero", ""),
        (2097160, 100, "linear", "7:1 0"),
    ]
    buf = _status_reply(rows)
    assert dm.parse_specs(buf) == rows
    assert dm.format_specs(dm.parse_specs(buf)) == (
        "0 2097152 thin-pool 0 2571/25600 0/16384 - rw discard_passdown queue_if_no_space - 1024 \n"
        "2097152 8 zero \n"  # dmsetup's "%llu %llu %s %s": a trailing space for empty params
        "2097160 100 linear 7:1 0"
    )
    assert dm.parse_specs(_status_reply([])) == [] and dm.format_specs([]) == ""


def test_parse_status_16_char_target_type():
    buf = _status_reply([(0, 8, "x" * 15, "p")])
    struct.pack_into("16s", buf, HDR + 24, b"y" * 16)  # the kernel's strncpy may leave no NUL
    assert dm.parse_specs(buf)[0][2] == "y" * 16


def test_parse_name_list():
    buf = bytearray(1024)
    recs = [("cowlab-pool", os.makedev(253, 0)), ("cowlab-t" + "x" * 20, os.makedev(253, 300))]
    off = HDR
    starts = []
    for name, dev in recs:
        starts.append(off)
        nb = name.encode() + b"\0"
        struct.pack_into("=QI", buf, off, dm.encode_dev(dev), 0)
        buf[off + 12 : off + 12 + len(nb)] = nb  # name at 12: {u64 dev; u32 next; char name[]}
        ev = (off + 12 + len(nb) + 7) & ~7  # newer kernels: event_nr, flags after the name
        struct.pack_into("=II", buf, ev, 5, 0)
        off = ev + 8
    struct.pack_into("=I", buf, starts[0] + 8, starts[1] - starts[0])
    header(buf, data_size=off)
    assert dm.parse_name_list(buf) == recs


def test_parse_name_list_empty():
    buf = bytearray(1024)
    header(buf, data_size=HDR)  # list_devices() with no devices: needed == 0
    assert dm.parse_name_list(buf) == []
    header(buf, data_size=HDR + 16)  # and a record with dev 0, libdevmapper's test
    assert dm.parse_name_list(buf) == []


def test_parse_versions():
    buf = bytearray(1024)
    recs = [("thin-pool", (1, 22, 0)), ("zero", (1, 1, 0)), ("linear", (1, 4, 0))]
    off, prev = HDR, None
    for name, v in recs:
        if prev is not None:
            struct.pack_into("=I", buf, prev, off - prev)
        nb = name.encode() + b"\0"
        struct.pack_into("=I3I", buf, off, 0, *v)
        buf[off + 16 : off + 16 + len(nb)] = nb  # name at 16
        prev, off = off, (off + 16 + len(nb) + 7) & ~7
    header(buf, data_size=off)
    assert dm.parse_versions(buf) == {"thin-pool": "v1.22.0", "zero": "v1.1.0", "linear": "v1.4.0"}


@pytest.mark.parametrize(
    "major,minor,huge",
    [(253, 0, 0xFD00), (253, 5, 0xFD05), (7, 1, 0x701), (253, 300, 0x10FD2C), (4095, 0xFFFFF, 0xFFFFFFFF)],
)
def test_dev_t(major, minor, huge):
    # huge_encode_dev: minor & 0xff | major << 8 | (minor & ~0xff) << 12
    assert dm.encode_dev(os.makedev(major, minor)) == huge
    d = dm.decode_dev(huge)
    assert (os.major(d), os.minor(d)) == (major, minor)


def test_error_message():
    e = dm.DMError(errno.EBUSY, "remove", "cowlab-x")
    assert isinstance(e, OSError) and e.errno == errno.EBUSY
    assert str(e) == "dm remove cowlab-x: Device or resource busy"


def _host_has_dm() -> bool:
    with open("/proc/misc") as f:
        return any(line.split()[-1:] == ["device-mapper"] for line in f)


def test_unavailable_here():
    if _host_has_dm():
        pytest.skip("this kernel has a device mapper")
    assert dm.available() is False
    with pytest.raises(dm.DMError) as ei:
        dm.exists("cowlab-nothing")
    assert ei.value.errno in (errno.ENODEV, errno.ENOENT, errno.ENXIO, errno.EACCES)
    assert "dm info cowlab-nothing" in str(ei.value)
