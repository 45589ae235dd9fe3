#!/usr/bin/env bash
# What the devicemapper-loop backend needs: device mapper's tools, and the kernel VM for hosts without dm-thin.
# Usage: devicemapper-loop.sh [--check]
here=$(cd "$(dirname "$0")" && pwd)
exec bash "$here/devicemapper.sh" "$@"
