"""devicemapper-loop and devicemapper-direct: block-level copy-on-write in a dm-thin pool, as
Docker's devicemapper driver did it.

A thin pool (dm `thin-pool` target) maps two areas, data and metadata, into thin volumes that
allocate pool blocks only when written (64 KiB blocks by default, as Docker used). One base thin
volume gets a filesystem (xfs as Docker's dm.fs default, or ext4); each image layer is a thin
snapshot (`create_snap` message) of its parent's volume with the layer applied (activate, mount,
apply the tar "apply" style, unmount, deactivate); each container is a snapshot of the top layer,
activated and mounted. Writing into a snapshot allocates a new pool block for each shared block
it touches: copy-on-write happens per block, whatever the file's size.

- `devicemapper-loop`: data and metadata on loop devices over sparse files (Docker's old
  default, "loop-lvm"), under the driver's home.
- `devicemapper-direct`: a block device the user names (option `device`, `--device` on the CLI):
  metadata and data are two dm `linear` slices of it ("direct-lvm" without LVM). A device that is
  mounted, in use or carries a filesystem/RAID/LVM signature is refused unless `force` is set.

The pool's plumbing (dm calls, tables, status, releasers, strays) is in thin.py beside this
module, the ioctls in dmioctl.py.

The pool, its loop devices and files are journaled in the driver's resources: a bench run's
(torn down with the run), or for `cowlab container create` the persistent service owner the CLI
gives drivers with `services` (kept until `cowlab cleanup --all`; the next command adopts the live
pool through home/pool.json and the thin ids in home/devices.json).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import cowlab.storage.drivers.devicemapper.dmioctl as dmio
from cowlab.base import sysutil
from cowlab.base.errors import CowlabError
from cowlab.base.resources import Handle, Resources
from cowlab.base.state import StateRoot
from cowlab.storage.drivers.base import Container, Driver, Probe, image_key
from cowlab.storage.drivers.devicemapper import thin
from cowlab.storage.drivers.devicemapper.options import DEFAULTS, MKFS, MOUNT_OPTS
from cowlab.storage.drivers.devicemapper.options import value as _opt
from cowlab.storage.drivers.devicemapper.thin import SECTOR, KiB, MiB
from cowlab.store import layers as L
from cowlab.store.images import Image


class _DeviceMapper(Driver):
    """Shared by both variants; a subclass only says where data and metadata live."""

    capabilities = frozenset({"block_cow", "thin_pool"})
    option_names = frozenset(DEFAULTS) | {"device", "force"}
    services = True  # the pool: kept containers keep it (see the module docstring)
    vm_route = True  # when the kernel lacks dm-thin, cowlab can run this driver in a kernel VM (vmroute)

    # --- probe ------------------------------------------------------------------------------
    @classmethod
    def probe(cls) -> Probe:
        if not thin.has_device_mapper():
            sysutil.modprobe("dm-mod")
        if not thin.has_device_mapper():
            why = "kernel has no dm-thin-pool (no device-mapper at all: not in /proc/misc)"
            return _unavailable(why)
        if not dmio.available():
            return _unavailable(
                "device-mapper is in /proc/misc but /dev/mapper/control does not answer "
                "(no node? `dmsetup mknodes` makes it)"
            )
        targets = thin.targets()
        if "thin-pool" not in targets:
            sysutil.modprobe("dm-thin-pool")
            targets = thin.targets()
        if "thin-pool" not in targets:
            return _unavailable("kernel has no dm-thin-pool (modprobe dm-thin-pool failed)")
        missing = [t for t in MKFS.values() if not _which(t[0])]
        if len(missing) == len(MKFS):
            return Probe(False, "neither mkfs.xfs nor mkfs.ext4 installed", "apt-get install xfsprogs e2fsprogs")
        return Probe(
            True,
            details={
                "route": "native",
                "thin_pool_target": targets["thin-pool"],
                "no_space_timeout": thin.read_no_space_timeout(),
            },
        )

    @classmethod
    def sweep_strays(cls, state: StateRoot, journal_entries: list[dict]) -> list[str]:
        """Stray dm devices of this state root (thin volumes, then pools, then slices)."""
        return thin.sweep_strays(state, {e["name"] for e in journal_entries if e.get("kind") == "dm" and e.get("name")})

    # --- options ----------------------------------------------------------------------------
    def opt(self, key: str):
        return _opt(self.options, key)

    def _validate(self) -> None:
        self.check_options(self.options, here=False)

    @classmethod
    def check_options(cls, options: dict, here: bool = True) -> None:
        super().check_options(options, here)
        try:
            bs = _opt(options, "block_size")
            t = _opt(options, "no_space_timeout")
            for k in (
                "base_size",
                "data_size",
                "metadata_size",
                "zero_blocks",
                "error_if_no_space",
                "force",
                "low_water_blocks",
            ):
                _opt(options, k)
        except (ValueError, TypeError) as e:
            raise CowlabError(f"{cls.name}: bad option value: {e}") from None
        if bs % thin.MIN_BLOCK or not thin.MIN_BLOCK <= bs <= thin.MAX_BLOCK:
            raise CowlabError(f"block_size {bs} must be a multiple of 64 KiB between 64 KiB and 1 GiB")
        if _opt(options, "fs") not in MKFS:
            raise CowlabError(f"fs {_opt(options, 'fs')!r}: choose {' or '.join(MKFS)}")
        if t is not None and t < 0:
            raise CowlabError("no_space_timeout is seconds, 0 (queue forever) or more")

    # --- the pool ---------------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        if not getattr(self, "_pool_id", None):
            self._ensure_pool()  # adopts the live pool (another command made it) or makes one
        return f"{thin.root_prefix(self.store.state)}{self._pool_id}-"

    def _pool_file(self) -> Path:
        return self.home / "pool.json"

    @property
    def pool(self) -> str:
        return self._ensure_pool()

    def _ensure_pool(self) -> str:
        if getattr(self, "_pool_name", None):
            return self._pool_name
        self._validate()
        with self._lock():
            pf = self._pool_file()
            if pf.exists():
                info = json.loads(pf.read_text())
                if thin.exists(info["name"]):
                    self._adopt(info)
                    return self._pool_name
                sysutil.ignore_enoent(os.unlink, self.home / "devices.json")  # the pool went away
            self._create_pool()
        return self._pool_name

    def _adopt(self, info: dict) -> None:
        self._pool_id, self._pool_name = info["id"], info["name"]
        self._block_bytes = info["block_bytes"]

    def _create_pool(self) -> None:
        self._pool_id = uuid.uuid4().hex[:6]
        name = self.prefix + "pool"
        pres = self.res
        info = {"id": self._pool_id, "name": name, "driver": self.name}
        # pool.json goes when the pool does (journaled first, so released last)
        pres.add("file", path=str(self._pool_file()))
        pres.add("file", path=str(self.home / "devices.json"))
        mark = len(pres.handles())
        try:
            meta_dev, data_dev, data_bytes, slices = self._areas(pres)
            bs = self.opt("block_size")
            data_sectors, feats = thin.create_pool(
                pres,
                name,
                meta_dev,
                data_dev,
                data_bytes,
                bs,
                zero_blocks=self.opt("zero_blocks"),
                error_if_no_space=self.opt("error_if_no_space"),
                low_water_blocks=self.opt("low_water_blocks"),
                timeout=self.opt("no_space_timeout"),
            )
        except BaseException:
            for h in reversed(pres.handles()[mark - 2 :]):
                pres.release(h)
            raise
        info.update(block_bytes=bs, slices=slices, features=feats, data_bytes=data_sectors * SECTOR)
        self._pool_name, self._block_bytes = name, bs
        tmp = self.staging()
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self._pool_file())
        self._write_devices({"pool": name, "next": 1, "base": None, "chains": {}, "images": {}})

    def _areas(self, pres: Resources) -> tuple[str, str, int, list[str]]:
        """(metadata device, data device, data bytes, dm slices made) for a new pool."""
        raise NotImplementedError

    def engine_storage(self) -> dict:
        """A pristine pool for dockerd (dm.thinpooldev): Docker refuses one with used blocks or a
        non-zero transaction id, so it is a pool of this instance's own, never the bench's."""
        node = thin.mapper_node(self.pool, self.res)
        return {
            "storage_opts": [f"dm.thinpooldev={node}"],
            "path": [],
            "meta": {"thinpooldev": node, **self.metadata()},
        }

    # --- thin device bookkeeping (a small json file, under a lock: CLI commands may overlap) ---
    @contextlib.contextmanager
    def _lock(self):
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _devices(self) -> dict:
        p = self.home / "devices.json"
        return json.loads(p.read_text()) if p.exists() else {"next": 1, "base": None, "chains": {}, "images": {}}

    def _write_devices(self, d: dict) -> None:
        tmp = self.staging()
        tmp.write_text(json.dumps(d))
        os.replace(tmp, self.home / "devices.json")

    def _new_id(self) -> int:
        self._ensure_pool()  # devices.json belongs to the pool: never count ids before it exists
        with self._lock():
            d = self._devices()
            i = d["next"]
            if i > thin.MAX_THIN_ID:
                raise CowlabError("the pool has used all 2^24 thin device ids")
            d["next"] = i + 1
            self._write_devices(d)
        return i

    def message(self, msg: str) -> None:
        thin.message(self.pool, msg)

    def _thin_sectors(self) -> int:
        return self.opt("base_size") // SECTOR

    @contextlib.contextmanager
    def _active(self, dev_id: int, res: Resources, mount: bool = True):
        """Activate thin `dev_id` (and mount its fs) for the duration of the block."""
        name = f"{self.prefix}l{dev_id}"
        h = res.acquire(
            "dm",
            lambda: thin.create(name, thin.thin_table(self._thin_sectors(), thin.dev_path(self.pool), dev_id)),
            name=name,
        )
        hm = hd = None
        try:
            if mount:
                mnt = self.staging()
                hd = res.acquire("dir", lambda: mnt.mkdir(), path=str(mnt))
                hm = res.acquire("mount", lambda: self._mount(thin.dev_path(name), mnt), target=str(mnt))
                yield mnt
            else:
                yield thin.dev_path(name)
        finally:
            for x in (hm, hd, h):
                if x is not None:
                    res.release(x)

    def _mount(self, dev: str, target: Path) -> None:
        fs = self.opt("fs")
        sysutil.mount(dev, target, fs, MOUNT_OPTS[fs])

    def _base(self) -> int:
        self._ensure_pool()
        d = self._devices()
        if d.get("base"):
            return d["base"]
        i = self._new_id()
        h = self.res.acquire("dm_thin", lambda: self.message(f"create_thin {i}"), pool=self.pool, id=i)
        with self._active(i, self.res, mount=False) as dev:
            sysutil.run(MKFS[self.opt("fs")] + [dev])
        with self._lock():
            d = self._devices()
            d["base"] = i
            self._write_devices(d)
        self.res.forget(h)  # the base stays in the pool; the pool's teardown frees it
        return i

    def _snapshot(self, origin: int, res: Resources, **journal) -> tuple[int, Handle]:
        i = self._new_id()
        h = res.acquire("dm_thin", lambda: self.message(f"create_snap {i} {origin}"), pool=self.pool, id=i, **journal)
        return i, h

    # --- images -----------------------------------------------------------------------------
    def has_image(self, image: Image) -> bool:
        if not self._pool_file().exists():
            return False
        info = json.loads(self._pool_file().read_text())
        return thin.exists(info["name"]) and image_key(image) in self._devices().get("images", {})

    def import_image(self, image: Image) -> None:
        if self.has_image(image):
            return
        parent = self._base()
        chain = ""
        for n, digest in enumerate(image.layers, 1):
            chain = hashlib.sha256(f"{chain}\n{digest}".encode()).hexdigest()  # as Docker's ChainID
            known = self._devices()["chains"].get(chain)
            if known:
                parent = known
                continue
            i, h = self._snapshot(parent, self.res)
            with self._active(i, self.res) as mnt:
                L.apply_tar(self.store.layer_path(digest), mnt, "apply", f"{image.name} layer {n}")
            with self._lock():
                d = self._devices()
                d["chains"][chain] = i
                self._write_devices(d)
            self.res.forget(h)  # the layer stays in the pool; the pool's teardown frees it
            parent = i
        with self._lock():
            d = self._devices()
            d["images"][image_key(image)] = {"top": parent, "layers": image.layers}
            self._write_devices(d)

    def remove_image(self, image: Image) -> None:
        if not self._pool_file().exists() or not thin.exists(json.loads(self._pool_file().read_text())["name"]):
            return
        with self._lock():
            d = self._devices()
            if d["images"].pop(image_key(image), None) is None:
                return
            used = set()
            for rec in d["images"].values():
                used |= set(_chains(rec["layers"]))
            for c in _chains(image.layers):
                if c not in used and c in d["chains"]:
                    i = d["chains"].pop(c)
                    thin.delete_thin(self.pool, i)
            self._write_devices(d)

    # --- containers -------------------------------------------------------------------------
    def create(self, image: Image, res: Resources, cid: str | None = None) -> Container:
        self._ensure_pool()
        top = self._devices()["images"][image_key(image)]["top"]
        cid = cid or self.new_id()
        cdir = self.home / "containers" / cid
        mnt = cdir / "rootfs"
        name = f"{self.prefix}c{cid}"
        handles: list[Handle] = []
        try:
            i, h = self._snapshot(top, res)
            handles.append(h)
            handles.append(
                res.acquire(
                    "dm",
                    lambda: thin.create(name, thin.thin_table(self._thin_sectors(), thin.dev_path(self.pool), i)),
                    name=name,
                )
            )
            handles.append(res.acquire("dir", lambda: mnt.mkdir(parents=True), path=str(cdir)))
            handles.append(res.acquire("mount", lambda: self._mount(thin.dev_path(name), mnt), target=str(mnt)))
        except BaseException:
            for x in reversed(handles):
                res.release(x)
            raise
        return Container(cid, image.id, self.name, mnt, handles)

    # --- space ------------------------------------------------------------------------------
    def pool_status(self) -> thin.PoolStatus:
        return thin.parse_pool_status(thin.call(dmio.status, self.pool))

    def used_bytes(self) -> int:
        """Pool data blocks in use × block size, after writing back dirty pages."""
        if not getattr(self, "_pool_name", None) and not self._pool_file().exists():
            return 0  # no pool yet: nothing allocated (asking would make one)
        os.sync()
        return self.pool_status().used_data_blocks * self._block_bytes

    def inodes_used(self) -> int | None:
        return None  # each thin volume has its own filesystem; the pool has no inodes

    # --- thin pool lab (capability thin_pool) -----------------------------------------------
    def thin_volume(self, res: Resources, size: int | None = None):
        """A raw, empty thin volume of this pool (context manager yielding its device path)."""
        i = self._new_id()
        res.acquire("dm_thin", lambda: self.message(f"create_thin {i}"), pool=self.pool, id=i)
        return self._active(i, res, mount=False)

    def grow_pool(self, add_bytes: int) -> None:
        """Grow the data area by add_bytes and reload the pool's table (resumes queued I/O)."""
        thin.extend_pool(self.pool, self._block_bytes, add_bytes, self._grow_data)

    def _grow_data(self, pt: thin.PoolTable, add_bytes: int) -> int:
        """Grow the device under the pool's data area; its new length in sectors."""
        raise NotImplementedError

    # --- description ------------------------------------------------------------------------
    def metadata(self) -> dict:
        m = {
            "dm_block_size": self.opt("block_size"),
            "dm_fs": self.opt("fs"),
            "dm_base_size": self.opt("base_size"),
            "dm_zero_blocks": self.opt("zero_blocks"),
            "dm_error_if_no_space": self.opt("error_if_no_space"),
            "dm_no_space_timeout": self.opt("no_space_timeout")
            if self.opt("no_space_timeout") is not None
            else thin.read_no_space_timeout(),
            "dm_mkfs": MKFS[self.opt("fs")],
            "dm_mount_options": MOUNT_OPTS[self.opt("fs")],
        }
        with contextlib.suppress(CowlabError, OSError):
            m["dm_interface"] = "dm ioctls (cowlab.storage.drivers.devicemapper.dmioctl), driver version " + ".".join(
                map(str, dmio.version())
            )
            m["dm_targets"] = {k: v for k, v in thin.targets().items() if k in ("thin-pool", "thin", "linear")}
        return m


def _chains(digests: list[str]) -> list[str]:
    out, chain = [], ""
    for d in digests:
        chain = hashlib.sha256(f"{chain}\n{d}".encode()).hexdigest()
        out.append(chain)
    return out


def _which(tool: str) -> bool:
    return bool(shutil.which(tool) or any(os.access(f"{d}/{tool}", os.X_OK) for d in ("/sbin", "/usr/sbin")))


def _unavailable(reason: str) -> Probe:
    """This kernel lacks what the pool needs; whether the kernel VM stands in is the run layer's
    call (cowlab.run.vmroute, since vm_route is set)."""
    return Probe(False, reason, "a kernel with CONFIG_DM_THIN_PROVISIONING", details={"kernel_lacks": "dm-thin-pool"})


class DeviceMapperLoop(_DeviceMapper):
    name = "devicemapper-loop"
    description = "dm-thin pool on loop devices over sparse files (Docker's old loop-lvm default)"
    # the registry (docs/adding-a-driver.md): figure colour, dockerd's driver, workshop VM
    color = "tab:brown"
    # Docker's devicemapper in its old default mode (loop-lvm: sparse data and metadata files
    # on loop devices, 100G/2G, 10G base, xfs), as this driver builds it; through the kernel VM
    # where this kernel has no device mapper.
    engine = {
        "docker_name": "devicemapper",
        "device_mapper": True,
        "note": "Docker's loop-lvm: a thin pool on loop devices over sparse files",
    }
    vagrant = {
        "os": "debian",
        "memory": 2048,
        "cpus": 2,
        "disk": False,
        "storage": "dm-loop",
        "scripts": ["devicemapper-loop.sh", "devicemapper.sh"],
    }

    def _areas(self, pres):
        d = self.home / "pool"
        d.mkdir(parents=True, exist_ok=True)
        devs = []
        for part, size in (
            ("metadata", min(self.opt("metadata_size"), thin.MAX_METADATA)),
            ("data", self.opt("data_size")),
        ):
            f = d / f"{self._pool_id}-{part}"
            pres.acquire("file", lambda f=f, size=size: sysutil.sparse_file(f, size), path=str(f))
            h = pres.add("loop", file=str(f))
            dev = sysutil.run(["losetup", "--find", "--show", str(f)]).stdout.strip()
            pres.update(h, device=dev)
            devs.append(dev)
        return devs[0], devs[1], self.opt("data_size"), []

    def _grow_data(self, pt, add_bytes):
        dev = pt.data_dev if pt.data_dev.startswith("/dev/") else thin.device_node(pt.data_dev)
        f = sysutil.loop_devices().get(dev)
        if not f:
            raise CowlabError(f"pool data device {dev} is not a loop device")
        new = os.path.getsize(f) + add_bytes
        os.truncate(f, new)
        sysutil.run(["losetup", "--set-capacity", dev])
        return new // SECTOR


class DeviceMapperDirect(_DeviceMapper):
    name = "devicemapper-direct"
    description = "dm-thin pool on a block device you name (Docker's direct-lvm, without LVM)"
    color = "tab:cyan"  # registry: see DeviceMapperLoop
    # Docker's direct-lvm without LVM: a pristine pool cowlab makes on a block device (in mode
    # both a second one, option engine_device: the first holds cowlab's own pool).
    engine = {
        "docker_name": "devicemapper",
        "device_mapper": True,
        "pool_driver": "devicemapper-direct",
        "note": "dm.thinpooldev: a thin pool cowlab makes on a block device (direct-lvm without LVM)",
    }
    vagrant = {
        "os": "debian",
        "memory": 2048,
        "cpus": 2,
        "disk": True,
        "storage": "dm-direct",
        "scripts": ["devicemapper-direct.sh", "devicemapper.sh"],
    }
    needs_device = True  # the kernel VM attaches a disk of its own for it
    # engine_device: in --mode both, the device for dockerd's pool (engine mode alone uses device)
    option_names = _DeviceMapper.option_names | {"engine_device"}

    @classmethod
    def probe(cls) -> Probe:
        p = super().probe()
        if p.available:
            p.details["needs"] = "a spare block device: --device /dev/XXX (or option device=...)"
        return p

    @classmethod
    def check_options(cls, options: dict, here: bool = True) -> None:
        super().check_options(options, here)
        if here:  # (in the kernel VM the guest checks the disk it was given)
            dev = options.get("device")
            if not dev:
                raise CowlabError(
                    "devicemapper-direct needs a block device: --device /dev/XXX "
                    "(a spare disk; everything on it is lost)"
                )
            thin.check_device(dev, _opt(options, "force"))
        eng = options.get("engine_device")
        if eng and options.get("device") and os.path.realpath(eng) == os.path.realpath(options["device"]):
            raise CowlabError(
                f"engine_device {eng} is --device itself: dockerd needs a pool of its own, on a second spare device"
            )
        if eng and here:
            thin.check_device(eng, _opt(options, "force"))

    def _areas(self, pres):
        dev = self.options.get("device")
        if not dev:
            raise CowlabError(
                "devicemapper-direct needs a block device: --device /dev/XXX (a spare disk; everything on it is lost)"
            )
        size = thin.check_device(dev, self.opt("force"))
        meta = min(max(16 * MiB, size // 100 // (4 * KiB) * (4 * KiB)), self.opt("metadata_size"), thin.MAX_METADATA)
        data = size - meta
        if "data_size" in self.options:
            data = min(data, self.opt("data_size"))  # the rest stays free: grow_pool takes from it
        if data < thin.MIN_BLOCK * 16:
            raise CowlabError(f"{dev} is too small for a thin pool ({size} bytes)")
        mname, dname = self.prefix + "meta", self.prefix + "data"
        pres.acquire("dm", lambda: thin.create(mname, f"0 {meta // SECTOR} linear {dev} 0"), name=mname)
        pres.acquire("dm", lambda: thin.create(dname, f"0 {data // SECTOR} linear {dev} {meta // SECTOR}"), name=dname)
        thin.zero(thin.dev_path(mname), 4 * KiB)  # a fresh pool formats metadata whose superblock is zero
        self._device, self._meta_bytes = dev, meta
        return thin.dev_path(mname), thin.dev_path(dname), data, [mname, dname]

    def _grow_data(self, pt, add_bytes):
        info = json.loads(self._pool_file().read_text())
        dname = info["slices"][1]
        t = thin.parse_table(thin.call(dmio.table, dname))[0]
        dev, offset = t.args[0], int(t.args[1])
        total = thin.device_size(self.options["device"]) // SECTOR
        new = min(t.length + add_bytes // SECTOR, total - offset)
        if new <= t.length:
            raise CowlabError(f"{self.options['device']} has no room left to grow the pool into")
        thin.reload(dname, f"0 {new} linear {dev} {offset}")
        return new

    def metadata(self) -> dict:
        m = super().metadata()
        dev = self.options.get("device")
        if dev:
            m["dm_device"] = dev
            with contextlib.suppress(OSError):
                m["dm_device_bytes"] = thin.device_size(dev)
                name = thin.sysfs_name(os.stat(dev).st_rdev)
                if name:
                    m["dm_device_rotational"] = (
                        Path(f"/sys/class/block/{name}/queue/rotational").read_text().strip() == "1"
                    )
        return m
