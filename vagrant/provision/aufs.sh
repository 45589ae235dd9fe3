#!/usr/bin/env bash
# What the aufs backend needs: a kernel that has aufs (Ubuntu 20.04's does; Debian 12's and this
# project's development kernel do not — no package can add it there), plus aufs-tools where the
# distribution has them (Ubuntu 20.04: for auplink/aubrsync; the mount itself is mount(2)).
# Usage: aufs.sh [--check]    (idempotent; --check only reports what is missing)
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/host.sh" "$@" || exit 1
source "$here/common.sh" "$@"
if ! grep -qw aufs /proc/filesystems && ! modprobe -n aufs 2>/dev/null; then
  echo "aufs: this kernel ($(uname -r)) has no aufs and no aufs module; use a machine whose kernel" \
       "ships it (the Vagrant aufs machine, Ubuntu 20.04)" >&2
  exit 1
fi
if apt-cache show aufs-tools >/dev/null 2>&1; then
  need aufs-tools
fi
finish
if [ $CHECK -eq 0 ] && ! grep -qw aufs /proc/filesystems; then
  modprobe aufs
fi
