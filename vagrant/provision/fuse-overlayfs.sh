#!/usr/bin/env bash
# What the fuse-overlayfs backend needs: the fuse-overlayfs daemon and fuse3 (fusermount3);
# the kernel must have FUSE (/dev/fuse).
# Usage: fuse-overlayfs.sh [--check]    (idempotent; --check only reports what is missing)
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/host.sh" "$@" || exit 1
source "$here/common.sh" "$@"
need fuse-overlayfs fuse3
finish
