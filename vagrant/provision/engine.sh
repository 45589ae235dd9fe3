#!/usr/bin/env bash
# What engine mode (`cowlab bench DRIVER --mode engine|both`) needs on top of the host packages:
# Debian's Docker Engine 20.10 (docker.io: dockerd, containerd, runc) and fuse-overlayfs for that
# storage driver. cowlab starts a private dockerd of its own for each run (its own data-root,
# exec-root, socket and pidfile under the state root) and never uses a system one, so the
# package's own docker/containerd services are NOT started by this script: if no
# /usr/sbin/policy-rc.d is in place, one that refuses service starts is put there for the
# duration of the install and removed again. (On a systemd host the units stay installed but
# inactive; `systemctl disable --now docker containerd` keeps them so across reboots.)
# The Docker SDK for Python comes with cowlab's `engine` extra (pip install -e '.[engine]').
# Usage: engine.sh [--check]    (idempotent; --check only reports what is missing)
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh" "$@"
if ! host_out=$(bash "$here/host.sh" "$@"); then echo "$host_out"; exit 1; fi
[ -z "$host_out" ] || echo "$host_out"
need docker.io containerd runc fuse-overlayfs
if [ $CHECK -eq 0 ] && [ ${#MISSING[@]} -gt 0 ] && [ ! -e /usr/sbin/policy-rc.d ] && [ "$(id -u)" -eq 0 ]; then
  printf '#!/bin/sh\n# cowlab engine.sh: no service starts during the install\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
finish
