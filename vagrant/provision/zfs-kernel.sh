#!/usr/bin/env bash
# The zfs Vagrant machine (Debian 12 VM): kernel ZFS instead of zfs-fuse. zfs.sh chooses
# zfsutils-linux only where /dev/zfs already exists; in a fresh VM it does not, so this script
# first builds and loads the module (zfs-dkms against the running kernel's headers, from Debian's
# contrib component, which it enables as zfs.sh does), then runs zfs.sh, which then finds
# /dev/zfs and zfsutils-linux in place. Not for hosts without a Debian kernel (this project's
# development kernel takes no modules: there zfs.sh's zfs-fuse is the route).
# The zfs-dkms build takes minutes (KVM) to an hour (TCG emulation).
# Usage: zfs-kernel.sh [--check]    (idempotent; --check only reports what is missing)
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/host.sh" "$@" || exit 1
source "$here/common.sh" "$@"

if [ ! -e /dev/zfs ] && ! modprobe -n zfs 2>/dev/null; then
  need "linux-headers-$(uname -r)" zfs-dkms zfsutils-linux
fi

DEB822=/etc/apt/sources.list.d/debian.sources
LEGACY=/etc/apt/sources.list
if [ ${#MISSING[@]} -gt 0 ]; then
  if [ -f "$DEB822" ] && grep -E '^Components:' "$DEB822" | grep -qvw contrib; then
    contrib=missing
  elif [ ! -f "$DEB822" ] && [ -f "$LEGACY" ] && grep -E '^deb .*debian' "$LEGACY" | grep -qvw contrib; then
    contrib=missing
  fi
  if [ "${contrib:-}" = missing ]; then
    if [ $CHECK -eq 1 ]; then
      echo "missing packages: ${MISSING[*]} (and Debian's contrib component in the apt sources)"; exit 1
    fi
    if [ -f "$DEB822" ]; then
      sed -i -E '/^Components:/{/\bcontrib\b/!s/$/ contrib/}' "$DEB822"
    else
      sed -i -E '/^deb .*debian/{/\bcontrib\b/!s/$/ contrib/}' "$LEGACY"
    fi
    echo "provision: added contrib to the apt sources"
    apt-get update -qq
  fi
fi
finish
if [ $CHECK -eq 0 ] && [ ! -e /dev/zfs ]; then
  modprobe zfs
fi
exec bash "$here/zfs.sh" "$@"
