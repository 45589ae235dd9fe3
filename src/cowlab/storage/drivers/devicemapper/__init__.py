"""devicemapper-loop and devicemapper-direct: Docker's devicemapper driver's thin pool.

Everything of this backend is in this folder: the dm ioctls (dmioctl), the thin pool's plumbing
(thin: dm calls, tables and status, pool creation and extension, no_space_timeout, releasers and
strays) and the drivers (driver). It runs in the kernel VM (cowlab.storage.vm, routed by
cowlab.run.vmroute) where the host kernel has no device mapper; its lab is cowlab.labs.thinlab."""

from cowlab.storage.drivers.devicemapper.driver import DeviceMapperDirect, DeviceMapperLoop

__all__ = ["DeviceMapperDirect", "DeviceMapperLoop"]
