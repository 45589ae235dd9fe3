#!/usr/bin/env bash
# What the aufs backend needs: a kernel that has aufs (Ubuntu 20.04's does), plus aufs-tools where
# the distribution has them (Ubuntu 20.04: for auplink/aubrsync; the mount itself is mount(2)).
# Where the kernel has no aufs (Debian's kernels, this project's development kernel), what cowlab's
# AUFS kernel and its kernel VM need instead (aufs-kernel.sh).
# Usage: aufs.sh [--check]    (idempotent; --check only reports what is missing)
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/host.sh" "$@" || exit 1
source "$here/common.sh" "$@"
if ! grep -qw aufs /proc/filesystems && ! modprobe -n aufs 2>/dev/null; then
  # No aufs in this kernel (every Debian kernel): cowlab runs aufs in its kernel VM on a kernel
  # it builds once (`sudo nox -s aufs-kernel`); this installs what that build and the VM need.
  exec bash "$here/aufs-kernel.sh" "$@"
fi
if apt-cache show aufs-tools >/dev/null 2>&1; then
  need aufs-tools
fi
finish
if [ $CHECK -eq 0 ] && ! grep -qw aufs /proc/filesystems; then
  modprobe aufs
fi
