#!/usr/bin/env bash
# What the legacy overlay backend needs: the host packages (cp from coreutils for the
# hard-linked layer trees); the kernel must have overlayfs.
# Usage: overlay.sh [--check]
here=$(cd "$(dirname "$0")" && pwd)
bash "$here/host.sh" "$@" || exit 1
source "$here/common.sh" "$@"
need coreutils
finish
