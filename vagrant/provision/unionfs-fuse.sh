#!/usr/bin/env bash
# What the unionfs-fuse backend needs: the unionfs-fuse package (the `unionfs` command) and
# fuse3 (fusermount); the kernel must have FUSE (/dev/fuse).
# Usage: unionfs-fuse.sh [--check]    (idempotent; --check only reports what is missing)
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/host.sh" "$@" || exit 1
source "$here/common.sh" "$@"
need unionfs-fuse fuse3
finish
