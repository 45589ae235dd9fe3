#!/usr/bin/env bash
# What the btrfs backend needs: btrfs-progs (mkfs.btrfs for the loop filesystem cowlab makes,
# `btrfs filesystem usage` and `btrfs balance` for the chunk labs); the kernel must have btrfs.
# Usage: btrfs.sh [--check]    (idempotent; --check only reports what is missing)
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/host.sh" "$@" || exit 1
source "$here/common.sh" "$@"
need btrfs-progs
finish
