"""Device mapper driver (driver) and its thin pool (thin): parsing dmsetup's text (captured from
Debian 12's 6.1 kernel, dm ioctl 4.47, thin-pool target 1.22), table building, option checks and
the VM route's decisions. No device mapper needed: these run on any kernel."""

from __future__ import annotations

import pytest

from cowlab.base.errors import CowlabError
from cowlab.run import vmroute
from cowlab.storage import vm
from cowlab.storage.drivers.devicemapper import driver as dm
from cowlab.storage.drivers.devicemapper import thin

# `dmsetup status` / `dmsetup table`, verbatim (trailing spaces included)
POOL_RW = "0 2097152 thin-pool 0 2571/25600 0/16384 - rw discard_passdown queue_if_no_space - 1024 \n"
POOL_ERR = "0 16384 thin-pool 0 419/4096 3/128 - rw discard_passdown error_if_no_space - 1024 \n"
POOL_FULL = "0 16384 thin-pool 0 419/4096 128/128 - out_of_data_space discard_passdown error_if_no_space - 1024 \n"
POOL_FAIL = "0 16384 thin-pool Fail\n"
POOL_OLD = "0 16384 thin-pool 1 88/4096 10/128 - rw\n"  # older kernels stop after the mode
POOL_TABLE = "0 16384 thin-pool 7:0 7:1 128 0 2 skip_block_zeroing error_if_no_space \n"
POOL_TABLE0 = "0 2097152 thin-pool 7:0 7:1 128 32768 0\n"
THIN_EMPTY = "0 65536 thin 0 -\n"
THIN_USED = "0 65536 thin 384 383\n"
THIN_TABLE = "0 65536 thin 253:0 1\n"
LINEAR_TABLE = "0 100 linear 7:1 0\n"


def test_pool_status_rw():
    s = thin.parse_pool_status(POOL_RW)
    assert (s.used_data_blocks, s.total_data_blocks) == (0, 16384)
    assert (s.used_meta_blocks, s.total_meta_blocks) == (2571, 25600)
    assert s.mode == "rw" and not s.out_of_data_space
    assert s.no_space == "queue_if_no_space" and s.discard == "discard_passdown"
    assert not s.needs_check and s.meta_low_water == 1024 and s.length == 2097152


def test_pool_status_full_and_error_mode():
    s = thin.parse_pool_status(POOL_FULL)
    assert s.out_of_data_space and s.used_data_blocks == s.total_data_blocks == 128
    assert s.no_space == "error_if_no_space"
    assert s.as_dict()["out_of_data_space"] is True
    assert thin.parse_pool_status(POOL_ERR).used_data_blocks == 3


def test_pool_status_fail_and_old_kernels():
    assert thin.parse_pool_status(POOL_FAIL).mode == "Fail"
    old = thin.parse_pool_status(POOL_OLD)
    assert old.mode == "rw" and old.transaction_id == 1 and old.no_space is None


def test_pool_status_rejects_other_targets():
    with pytest.raises(CowlabError):
        thin.parse_pool_status(THIN_USED)


def test_pool_table_round_trip():
    t = thin.parse_pool_table(POOL_TABLE)
    assert (t.metadata_dev, t.data_dev, t.block_sectors, t.low_water_blocks) == ("7:0", "7:1", 128, 0)
    assert t.features == ["skip_block_zeroing", "error_if_no_space"] and t.length == 16384
    again = thin.pool_table(t.length, t.metadata_dev, t.data_dev, t.block_sectors, t.low_water_blocks, t.features)
    assert again == POOL_TABLE.strip()
    t0 = thin.parse_pool_table(POOL_TABLE0)
    assert t0.features == [] and t0.low_water_blocks == 32768
    assert thin.pool_table(8, "a", "b", 128, 0, []) == "0 8 thin-pool a b 128 0 0"


def test_thin_status_and_table():
    e = thin.parse_thin_status(THIN_EMPTY)
    assert e.mapped_sectors == 0 and e.highest_mapped is None
    u = thin.parse_thin_status(THIN_USED)
    assert u.mapped_sectors == 384 and u.highest_mapped == 383  # 3 blocks of 64 KiB
    assert thin.parse_thin_status("0 8 thin Fail\n").mapped_sectors is None
    t = thin.parse_table(THIN_TABLE)[0]
    assert (t.target, t.args) == ("thin", ["253:0", "1"])
    assert thin.thin_table(65536, "/dev/mapper/p", 1) == "0 65536 thin /dev/mapper/p 1"
    assert thin.parse_table(LINEAR_TABLE)[0].args == ["7:1", "0"]


def test_sizes_and_options(tmp_path):
    assert dm._opt({"block_size": "64K"}, "block_size") == 65536
    assert dm._opt({"data_size": "10G"}, "data_size") == 10 << 30 and dm._opt({"base_size": 512}, "base_size") == 512
    with pytest.raises(CowlabError):
        dm._opt({"block_size": "lots"}, "block_size")


def test_root_prefix_separates_state_roots(tmp_path):
    from cowlab.base.state import StateRoot

    a, b = StateRoot(tmp_path / "a"), StateRoot(tmp_path / "b")
    assert thin.root_prefix(a) != thin.root_prefix(b)
    assert thin.root_prefix(a).startswith("cowlab-") and len(thin.root_prefix(a)) == len("cowlab-123456-")


def test_remove_refuses_foreign_names():
    with pytest.raises(CowlabError, match="not cowlab's"):
        thin.remove_device("docker-253:0-1234-pool")


def test_check_device_refuses_non_block(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x")
    with pytest.raises(CowlabError, match="not a block device"):
        thin.check_device(str(f))
    with pytest.raises(CowlabError, match="does not exist"):
        thin.check_device(str(tmp_path / "nope"))


def test_vm_route_choice(monkeypatch):
    class Missing:
        vm_route = True
        vm_kernel = "6.1"

        @staticmethod
        def probe():
            return dm.Probe(False, "kernel has no dm-thin-pool", details={"kernel_lacks": "dm-thin-pool"})

    class Native:
        vm_kernel = "6.1"

        @staticmethod
        def probe():
            return dm.Probe(True)

    monkeypatch.setattr(vm, "why_unavailable", lambda *a: "")
    assert vmroute.choose(Missing, "auto") == "vm"
    assert vmroute.choose(Native, "auto") == "native"
    assert vmroute.choose(Native, "always") == "vm"
    assert vmroute.choose(Missing, "never") == "native"
    monkeypatch.setattr(vm, "why_unavailable", lambda *a: "no kernel")
    assert vmroute.choose(Missing, "auto") == "native"  # then check() says why it is unavailable
    with pytest.raises(CowlabError, match="no kernel"):
        vmroute.choose(Missing, "always")
    monkeypatch.setenv(vm.IN_VM, "1")
    assert vmroute.choose(Missing, "always") == "native"  # never a VM inside the VM


def test_vm_guest_arg_substitution():
    assert vm._subst("{disk:cowlab-direct}", {"cowlab-direct": "/dev/vdb"}) == "/dev/vdb"
    assert vm._subst("--out", {}) == "--out"


def test_direct_in_vm_gets_its_own_disk():
    disks, args = vmroute.guest_disks(dm.DeviceMapperDirect, None, 1 << 30)
    assert disks == {vmroute.DIRECT_SERIAL: 1 << 30} and args == ["--device", "{disk:cowlab-direct}"]
    assert vmroute.guest_disks(dm.DeviceMapperLoop, None, 1 << 30) == ({}, [])
    with pytest.raises(CowlabError, match="does not see"):
        vmroute.guest_disks(dm.DeviceMapperDirect, "/dev/sdb", 1 << 30)


def test_direct_in_vm_in_mode_both_gets_a_second_disk_for_dockerd():
    disks, args = vmroute.guest_disks(dm.DeviceMapperDirect, None, 1 << 30, "both", {})
    assert disks == {vmroute.DIRECT_SERIAL: 1 << 30, vmroute.ENGINE_SERIAL: 1 << 30}
    assert args == ["--device", "{disk:cowlab-direct}", "--opt", "engine_device={disk:cowlab-engine}"]
    assert vmroute.guest_disks(dm.DeviceMapperDirect, None, 1 << 30, "engine", {})[0] == {
        vmroute.DIRECT_SERIAL: 1 << 30
    }
    with pytest.raises(CowlabError, match="does not see"):
        vmroute.guest_disks(dm.DeviceMapperDirect, None, 1 << 30, "both", {"engine_device": "/dev/sdc"})


def test_engine_pool_options_by_mode():
    from types import SimpleNamespace

    from cowlab.measure.engine.session import EnginePart

    opts = {"device": "/dev/vdb", "engine_device": "/dev/vdc", "block_size": "128K"}
    both = EnginePart(SimpleNamespace(driver_options=opts, mode="both", driver_name="devicemapper-direct"))
    assert both.pool_options() == {"device": "/dev/vdc", "block_size": "128K"}
    alone = EnginePart(
        SimpleNamespace(driver_options={"device": "/dev/vdb"}, mode="engine", driver_name="devicemapper-direct")
    )
    assert alone.pool_options() == {"device": "/dev/vdb"}
    lacking = EnginePart(
        SimpleNamespace(driver_options={"device": "/dev/vdb"}, mode="both", driver_name="devicemapper-direct")
    )
    with pytest.raises(CowlabError, match="engine_device"):
        lacking.pool_options()


def test_engine_device_must_be_another_device():
    with pytest.raises(CowlabError, match="pool of its own"):
        dm.DeviceMapperDirect.check_options({"device": "/dev/vdb", "engine_device": "/dev/vdb"}, here=False)
    dm.DeviceMapperDirect.check_options({"device": "/dev/vdb", "engine_device": "/dev/vdc"}, here=False)
    with pytest.raises(CowlabError, match="no option 'engine_device'"):
        dm.DeviceMapperLoop.check_options({"engine_device": "/dev/vdc"}, here=False)


def test_engine_only_stand_in_takes_the_pool_drivers_options():
    from cowlab.measure.engine.session import engine_only_driver

    assert "engine_device" in engine_only_driver("devicemapper-direct").option_names
    assert engine_only_driver("overlay2").option_names == frozenset()


def test_mapper_node_releaser_touches_only_this_roots_links(state):
    from cowlab.base.resources import RELEASERS

    with pytest.raises(CowlabError, match="not touching"):
        RELEASERS["dm_node"]({"path": "/dev/mapper/control"}, state)
    with pytest.raises(CowlabError, match="not touching"):
        RELEASERS["dm_node"]({"path": f"/tmp/{thin.root_prefix(state)}pool"}, state)
    RELEASERS["dm_node"]({"path": f"/dev/mapper/{thin.root_prefix(state)}gone-pool"}, state)  # absent: fine


def test_kernel_choice_skips_cloud(tmp_path, monkeypatch):
    monkeypatch.setenv("COWLAB_VM_KERNEL", str(tmp_path / "missing"))
    assert vm.find_kernel() is None


def test_probe_names_the_reason_here():
    p = vmroute.probe(dm.DeviceMapperLoop)
    if not thin.has_device_mapper():
        assert not p.available and "dm-thin-pool" in p.reason
        assert p.details["route"] in ("vm", None)
