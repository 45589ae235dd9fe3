#!/usr/bin/env bash
# The aufs Vagrant machine (Ubuntu 20.04, whose kernel is the one that ships aufs): what that
# release lacks before aufs.sh (and the host.sh it runs) can pass there:
#   - the aufs module: on Ubuntu's generic kernel it is in linux-modules-extra-$(uname -r),
#     which cloud-image based boxes do not install (installed only if `modprobe -n aufs` fails);
#   - Python >= 3.11 (cowlab's requirement; 20.04 has 3.8): python3.11 + python3.11-venv from the
#     deadsnakes PPA;
#   - nox running on that Python (20.04 has no nox package): from PyPI into /opt/cowlab/nox,
#     linked as /usr/local/bin/nox (before /usr/bin in sudo's secure_path), plus an empty local
#     package named `nox` (equivs) so that host.sh's `need nox` is satisfied by it.
# Then it runs aufs.sh. Needs the network (a workshop laptop's VM has it).
# Usage: aufs-focal.sh [--check]    (idempotent; --check only reports what is missing)
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh" "$@"
if ! grep -qw aufs /proc/filesystems && ! modprobe -n aufs 2>/dev/null; then
  need "linux-modules-extra-$(uname -r)"
fi
py_ok() { command -v python3.11 >/dev/null && python3.11 -c 'import venv, ensurepip' 2>/dev/null; }
py_ok || need python3.11 python3.11-venv
nox_ok() { [ -x /opt/cowlab/nox/bin/nox ] && dpkg-query -W -f='${Status}' nox 2>/dev/null | grep -q "install ok installed"; }
if [ $CHECK -eq 1 ]; then
  nox_ok || MISSING+=("nox(PyPI, /opt/cowlab/nox)")
  finish || exit 1
  exec bash "$here/aufs.sh" --check
fi
if [ "$(id -u)" -ne 0 ]; then echo "aufs-focal.sh: run as root" >&2; exit 1; fi
export DEBIAN_FRONTEND=noninteractive
if [[ " ${MISSING[*]} " == *" python3.11 "* ]] && ! apt-cache policy python3.11 | grep -q 'Candidate: [0-9]'; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends software-properties-common gpg-agent
  add-apt-repository -y ppa:deadsnakes/ppa
  apt-get update -qq
fi
finish
if ! nox_ok; then
  [ -x /opt/cowlab/nox/bin/nox ] || { python3.11 -m venv /opt/cowlab/nox && /opt/cowlab/nox/bin/pip install -q nox; }
  ln -sfn /opt/cowlab/nox/bin/nox /usr/local/bin/nox
  if ! dpkg-query -W -f='${Status}' nox 2>/dev/null | grep -q "install ok installed"; then
    apt-get install -y -qq --no-install-recommends equivs
    tmp=$(mktemp -d)
    printf 'Package: nox\nVersion: 0.0+cowlab1\nMaintainer: cowlab <root@localhost>\nArchitecture: all\nDescription: nox from PyPI in /opt/cowlab/nox (Ubuntu 20.04 has no nox package)\n' > "$tmp/nox.ctl"
    (cd "$tmp" && equivs-build nox.ctl >/dev/null) && dpkg -i "$tmp"/nox_*.deb
    rm -rf "$tmp"
  fi
  echo "provision: nox $(/opt/cowlab/nox/bin/nox --version 2>&1) on $(python3.11 -V)"
fi
exec bash "$here/aufs.sh"
