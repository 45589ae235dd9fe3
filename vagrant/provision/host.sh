#!/usr/bin/env bash
# Everything cowlab needs on any Debian 12 / Ubuntu 22.04+ host, for every native backend:
# nox and a venv-capable Python to run it, the filesystem tools for loop backings, fio, and a
# static busybox that images copy in so containers can run a command.
# Usage: host.sh [--check]    (idempotent; --check only reports what is missing)
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh" "$@"
need python3 python3-venv python3-pip nox git \
     util-linux mount e2fsprogs xfsprogs btrfs-progs attr \
     fio busybox-static kmod
finish
