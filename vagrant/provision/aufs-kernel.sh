#!/usr/bin/env bash
# What building cowlab's AUFS kernel needs (`sudo nox -s aufs-kernel`, cowlab.storage.kernels.aufs):
# Debian's linux-source-6.1 (the kernel source the AUFS standalone tree is patched into) and the
# tools of a kernel build; plus what the kernel VM that boots it needs (devicemapper.sh: QEMU,
# and Debian's 6.1 kernel for the other VM routes). No AUFS package exists in Debian: the AUFS
# tree comes from a local copy (COWLAB_AUFS_SRC / a vendor directory) or its upstream repository.
# Usage: aufs-kernel.sh [--check]    (idempotent; --check only reports what is missing)
here=$(cd "$(dirname "$0")" && pwd)
vm_out=$(bash "$here/devicemapper.sh" "$@") || { echo "$vm_out"; exit 1; }
[ -n "$vm_out" ] && echo "$vm_out"
source "$here/common.sh" "$@"
need linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev patch xz-utils git
finish
