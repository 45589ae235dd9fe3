#!/usr/bin/env bash
# What the erofs backend needs: erofs-utils (mkfs.erofs, 1.5 on Debian 12) to pack each layer,
# mount (losetup) for the loop devices; the kernel must have EROFS and overlayfs.
# Usage: erofs.sh [--check]    (idempotent; --check only reports what is missing)
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/host.sh" "$@" || exit 1
source "$here/common.sh" "$@"
need erofs-utils mount
finish
