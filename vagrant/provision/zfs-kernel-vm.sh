#!/usr/bin/env bash
# Kernel ZFS for cowlab's kernel VM (cowlab/vm.py): on a host whose own kernel has no ZFS and takes
# no modules (this project's development kernel), the VM boots Debian 12's generic 6.1 kernel with
# the host's root filesystem, so the zfs module and tools it needs are installed *on the host*:
#
# - zfs-dkms, built by DKMS for the VM's kernel (its headers, not the running kernel's), lands in
#   /lib/modules/<6.1 kernel>/updates/dkms, where the guest's modprobe finds it;
# - the libraries the tools link (libzfs4linux & co.) as packages: they conflict with nothing;
# - zfsutils-linux *unpacked* into /opt/cowlab-zfs, not installed: it conflicts with zfs-fuse
#   (both ship /sbin/zfs and /sbin/zpool), which the native zfs driver keeps using on the host.
#   cowlab's zfs driver (and the dockerd it starts) put /opt/cowlab-zfs/sbin first whenever
#   /dev/zfs exists (COWLAB_ZFS_KERNEL_TOOLS overrides the directory).
#
# Run it once, after devicemapper.sh (which installs the VM's kernel and QEMU). The DKMS build
# takes 10-20 minutes on 2 CPUs. Then: `cowlab bench zfs --vm always --mode engine`.
# Usage: zfs-kernel-vm.sh [--check]    (idempotent; --check only reports what is missing)
here=$(cd "$(dirname "$0")" && pwd)
host_out=$(bash "$here/devicemapper.sh" "$@") || { echo "$host_out"; exit 1; }
[ -n "$host_out" ] && echo "$host_out"
host_out=$(bash "$here/zfs.sh" "$@") || { echo "$host_out"; exit 1; }   # contrib, zfs-fuse
[ -n "$host_out" ] && echo "$host_out"
source "$here/common.sh" "$@"

DEST=${COWLAB_ZFS_KERNEL_TOOLS:-/opt/cowlab-zfs}
KVER=$(ls /boot/vmlinuz-6.1.0-*-amd64 2>/dev/null | grep -v -e -cloud- -e -rt- | sed 's|.*/vmlinuz-||' | sort -V | tail -1)
[ -n "$KVER" ] || { echo "provision: no generic 6.1 kernel in /boot (run devicemapper.sh first)" >&2; exit 1; }

need "linux-headers-$KVER" dkms zfs-dkms libzfs4linux libzpool5linux libnvpair3linux libuutil3linux
module_missing() { ! ls /lib/modules/"$KVER"/updates/dkms/zfs.ko* >/dev/null 2>&1; }
tools_missing() { [ ! -x "$DEST/sbin/zfs" ] && [ ! -x "$DEST/usr/sbin/zfs" ]; }

if [ $CHECK -eq 1 ]; then
  finish || exit 1
  module_missing && { echo "missing: the zfs module for $KVER (dkms)"; exit 1; }
  tools_missing && { echo "missing: zfsutils-linux unpacked in $DEST"; exit 1; }
  exit 0
fi
finish   # zfs-dkms's postinst builds for every kernel whose headers are installed
if module_missing; then
  dkms autoinstall -k "$KVER"
fi
module_missing && { echo "provision: DKMS built no zfs module for $KVER (see /var/lib/dkms/zfs)" >&2; exit 1; }
if tools_missing; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && apt-get download -qq zfsutils-linux)
  mkdir -p "$DEST"
  dpkg-deb -x "$tmp"/zfsutils-linux_*.deb "$DEST"
  echo "provision: zfsutils-linux unpacked in $DEST"
fi
echo "provision: kernel ZFS for the VM's $KVER: $(ls /lib/modules/"$KVER"/updates/dkms/zfs.ko*)"
