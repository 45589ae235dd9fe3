#!/usr/bin/env bash
# What the composefs backend needs: erofs-utils (mkfs.erofs packs the metadata image; the
# composefs tools themselves are not packaged for Debian 12), attr (setfattr/getfattr, for the
# "composefs by hand" lab), mount (losetup). The kernel must have EROFS and overlayfs with
# data-only lower layers (6.5 or later); `cowlab drivers` says so when it has not.
# Usage: composefs.sh [--check]    (idempotent; --check only reports what is missing)
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/host.sh" "$@" || exit 1
source "$here/common.sh" "$@"
need erofs-utils attr mount
finish
