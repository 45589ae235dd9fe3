#!/usr/bin/env bash
# What the devicemapper-direct backend needs: device mapper's tools, and the kernel VM for hosts without dm-thin.
# Usage: devicemapper-direct.sh [--check]
here=$(cd "$(dirname "$0")" && pwd)
exec bash "$here/devicemapper.sh" "$@"
