#!/usr/bin/env bash
# What the vfs backend needs: the host packages only (the kernel must have nothing special).
# Usage: vfs.sh [--check]
here=$(cd "$(dirname "$0")" && pwd)
exec bash "$here/host.sh" "$@"
