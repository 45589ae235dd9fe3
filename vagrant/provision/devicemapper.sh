#!/usr/bin/env bash
# What the devicemapper-loop and devicemapper-direct backends need.
#
# Natively: a kernel with device-mapper and its thin-pool target (dm-thin-pool), dmsetup, and
# thin-provisioning-tools (thin_check & co., which the kernel's pool uses for nothing but which
# Docker ran and users expect). On a host whose kernel lacks device-mapper, cowlab runs the bench
# in a throwaway VM (cowlab/vm.py) instead: Debian 12's *generic* 6.1 kernel (the -cloud-
# flavour has no 9p and cannot boot with the host's root filesystem), QEMU, and virtme-ng from
# PyPI (the `vm` extra of cowlab, installed into nox's venv by the sessions that need it).
# The host packages (host.sh) come first.
# Usage: devicemapper.sh [--check]    (idempotent; --check only reports what is missing)
here=$(cd "$(dirname "$0")" && pwd)
host_out=$(bash "$here/host.sh" "$@") || { echo "$host_out"; exit 1; }
[ -n "$host_out" ] && echo "$host_out"
source "$here/common.sh" "$@"
# udev: virtme-ng's guest init runs the host's systemd-udevd to find its console ports (without
# it the guest's output is lost and vng exits 255).
need dmsetup thin-provisioning-tools util-linux udev \
     linux-image-amd64 qemu-system-x86 \
     python3-venv python3-pip
# linux-image-amd64 is Debian 12's generic 6.1 flavour. Where it is installed but /boot has no
# generic 6.1 kernel (a newer Debian's metapackage, a pruned /boot), name the package exactly: a
# cloud-only /boot would look provisioned to dpkg and still not boot under virtme-ng.
if [[ " ${MISSING[*]} " != *" linux-image-amd64 "* ]] && \
   ! ls /boot/vmlinuz-6.1.0-*-amd64 2>/dev/null | grep -qv -e -cloud- -e -rt-; then
  pkg=$(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' 2>/dev/null | awk '{print $1}' | sort -V | tail -1)
  need "${pkg:-linux-image-6.1.0-amd64-missing}"
fi
finish
