#!/usr/bin/env bash
# What the zfs backend needs. Kernel ZFS where /dev/zfs exists (zfsutils-linux talks to it);
# elsewhere zfs-fuse, the userspace ZFS that runs on any kernel with FUSE — cowlab starts and
# stops its daemon itself, so the package's own service is never started here.
# Both live in Debian's `contrib` component, which this script adds to the Debian sources
# (deb822 /etc/apt/sources.list.d/debian.sources, or a classic /etc/apt/sources.list) once.
# Usage: zfs.sh [--check]    (idempotent; --check changes nothing and only reports)
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/host.sh" "$@" || exit 1
source "$here/common.sh" "$@"

DEB822=/etc/apt/sources.list.d/debian.sources
LEGACY=/etc/apt/sources.list
contrib_missing() {
  if [ -f "$DEB822" ]; then
    grep -E '^Components:' "$DEB822" | grep -qvw contrib
  elif [ -f "$LEGACY" ] && grep -qE '^deb .*debian' "$LEGACY"; then
    grep -E '^deb .*debian' "$LEGACY" | grep -qvw contrib
  else
    return 1  # not Debian's layout (e.g. Ubuntu: zfs lives in main/universe there)
  fi
}

if [ -e /dev/zfs ]; then
  need zfsutils-linux
else
  need zfs-fuse
fi

if [ ${#MISSING[@]} -gt 0 ] && contrib_missing; then
  if [ $CHECK -eq 1 ]; then
    echo "missing packages: ${MISSING[*]} (and Debian's contrib component in the apt sources)"
    exit 1
  fi
  [ "$(id -u)" -eq 0 ] || { echo "provision: need root to add contrib to the apt sources" >&2; exit 1; }
  if [ -f "$DEB822" ]; then
    sed -i -E '/^Components:/{/\bcontrib\b/!s/$/ contrib/}' "$DEB822"
  else
    sed -i -E '/^deb .*debian/{/\bcontrib\b/!s/$/ contrib/}' "$LEGACY"
  fi
  echo "provision: added contrib to the apt sources"
  apt-get update -qq
fi

# Without systemd, installing zfs-fuse would run its init script and start a daemon cowlab did
# not start (and whose fixed socket, /var/run/zfs/zfs_socket, cowlab's own daemon then can't
# take). A policy-rc.d that forbids starting services, only for the duration of the install.
POLICY=/usr/sbin/policy-rc.d
if [ $CHECK -eq 0 ] && [ ${#MISSING[@]} -gt 0 ] && [ ! -e "$POLICY" ] && [ "$(id -u)" -eq 0 ]; then
  printf '#!/bin/sh\n# made by cowlab vagrant/provision/zfs.sh for one install; removed after\nexit 101\n' > "$POLICY"
  chmod 755 "$POLICY"
  trap 'rm -f "$POLICY"' EXIT
fi
finish   # not in an `||` list: errexit must stay on inside it
