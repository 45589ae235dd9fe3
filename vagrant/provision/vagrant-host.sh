#!/usr/bin/env bash
# What the host needs to run cowlab's Vagrant machines with libvirt, and to build the small
# Debian 12 box that `nox -s vagrant-smoke` boots (vagrant/box/build.sh):
#   vagrant + vagrant-libvirt (Debian's 2.3.4 / 0.11.2), libvirt's daemons and client, QEMU,
#   qemu-img, dnsmasq (libvirt's DHCP for the management network), iptables (libvirt's NAT
#   rules; they stay inside the smoke test's network namespace), debootstrap + extlinux (the box
#   is a bootable image built from the Debian archive), rsync (Vagrant's rsync synced folder),
#   python3-venv/pip (the wheelhouse of cowlab's Python dependencies copied into the box).
# VirtualBox is not in Debian 12 (only in fasttrack/Oracle's repository): install it yourself if
# you want `--provider=virtualbox`; nothing here depends on it.
# libvirt's packages ship sysvinit scripts that would start a system libvirtd (whose `default`
# network puts a virbr0 bridge with 192.168.122.1 on the host's own network): if no
# /usr/sbin/policy-rc.d is in place, one that refuses service starts is put there for the
# duration of the install and removed again. cowlab starts its own libvirtd inside a network
# namespace (vagrant/smoke.sh) and never the system one.
# Usage: vagrant-host.sh [--check]    (idempotent; --check only reports what is missing)
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh" "$@"
if ! host_out=$(bash "$here/host.sh" "$@"); then echo "$host_out"; exit 1; fi
[ -z "$host_out" ] || echo "$host_out"
need vagrant vagrant-libvirt \
     libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils dnsmasq-base iptables \
     debootstrap fdisk extlinux syslinux-common e2fsprogs rsync iproute2 openssh-client \
     python3-venv python3-pip
if [ $CHECK -eq 0 ] && [ ${#MISSING[@]} -gt 0 ] && [ ! -e /usr/sbin/policy-rc.d ] && [ "$(id -u)" -eq 0 ]; then
  printf '#!/bin/sh\n# cowlab vagrant-host.sh: no service starts during the install\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
finish   # not in an `||` list: errexit must stay on inside it
