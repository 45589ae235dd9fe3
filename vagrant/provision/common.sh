# Shared by every provisioning script: install Debian/Ubuntu packages only when missing.
# Sourced, not run. Scripts call `need PKG...` then `finish`; with --check nothing is installed
# and the exit status says whether anything is missing (used by `nox -s bench-*`).
set -euo pipefail
CHECK=0
[ "${1:-}" = "--check" ] && CHECK=1
MISSING=()

need() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || MISSING+=("$p")
  done
}

finish() {
  if [ ${#MISSING[@]} -eq 0 ]; then
    [ $CHECK -eq 1 ] || echo "provision: all packages present"
    return 0
  fi
  if [ $CHECK -eq 1 ]; then
    echo "missing packages: ${MISSING[*]}"
    return 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "provision: need root to install: ${MISSING[*]}" >&2
    return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  # Refresh package lists at most once an hour: idempotent runs stay fast.
  if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -60 2>/dev/null | head -1)" ]; then
    apt-get update -qq
  fi
  apt-get install -y -qq --no-install-recommends "${MISSING[@]}"
  echo "provision: installed ${MISSING[*]}"
}
