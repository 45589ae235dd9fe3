#!/usr/bin/env bash
# What the overlay2 backend needs: the host packages only (the kernel must have overlayfs).
# Usage: overlay2.sh [--check]
here=$(cd "$(dirname "$0")" && pwd)
exec bash "$here/host.sh" "$@"
