#!/usr/bin/env bash
# Inside a cowlab Vagrant machine, after the packages (vagrant/provision/<backend>.sh): the
# machine's storage and where its results go. Installs nothing. Idempotent (run by every
# `vagrant provision`).
#
# Usage: vm-setup.sh KIND      KIND: none | btrfs | zfs | dm-loop | dm-direct
#   every kind   /cowlab/results: a symlink to /cowlab-results where the provider shares the
#                host's results/ (VirtualBox), else a directory of the VM that Vagrant copies
#                back to the host (libvirt; see the Vagrantfile).
#   btrfs        the second disk formatted btrfs (label cowlab-data), mounted at
#                /var/lib/cowlab-btrfs, and cowlab's state root on it: COWLAB_ROOT=
#                /var/lib/cowlab-btrfs/root for login shells (/etc/profile.d/cowlab.sh; `vagrant
#                ssh` opens one) and kept by sudo (/etc/sudoers.d/cowlab), so `sudo nox -s
#                bench-btrfs` works on the disk natively instead of making a loop filesystem.
#                (Not the disk mounted at the state root itself: cowlab's cleanup unmounts any
#                mount at or under its state root that it did not journal.)
#   zfs          the zfs module loaded (and at every boot); the second disk stays raw, for the pool
#                cowlab makes and destroys itself: `... bench-zfs -- --quick --device /dev/cowlab-data`.
#   dm-loop      dm-thin-pool loaded (and at every boot); cowlab's devicemapper-loop driver makes
#                its thin pool on loop devices over sparse files under its state root itself.
#   dm-direct    as dm-loop; the second disk stays raw for the pool cowlab makes on it:
#                `... bench-devicemapper-direct -- --quick --device /dev/cowlab-data`.
# The second disk (machines that have one) gets a stable name, /dev/cowlab-data (udev rule on
# its serial): libvirt gives it the serial "cowlab-data", VirtualBox a VBOX_HARDDISK serial.
# Override the detection with COWLAB_DATA_DISK=/dev/...
set -euo pipefail
kind=${1:?usage: vm-setup.sh none|btrfs|zfs|dm-loop|dm-direct}
[ "$(id -u)" -eq 0 ] || { echo "vm-setup.sh: run as root" >&2; exit 1; }

# --- results ------------------------------------------------------------------------------------
if mountpoint -q /cowlab-results 2>/dev/null; then
  if [ -d /cowlab/results ] && [ ! -L /cowlab/results ]; then
    cp -a /cowlab/results/. /cowlab-results/ 2>/dev/null || true
    rm -rf /cowlab/results
  fi
  ln -sfn /cowlab-results /cowlab/results
else
  [ -L /cowlab/results ] && rm -f /cowlab/results
  mkdir -p /cowlab/results
fi
echo "vm-setup: results -> $(readlink -f /cowlab/results)"

# --- the second disk ----------------------------------------------------------------------------
data_disk() {
  if [ -n "${COWLAB_DATA_DISK:-}" ]; then echo "$COWLAB_DATA_DISK"; return; fi
  [ -e /dev/cowlab-data ] && { readlink -f /dev/cowlab-data; return; }
  [ -e /dev/disk/by-id/virtio-cowlab-data ] && { readlink -f /dev/disk/by-id/virtio-cowlab-data; return; }
  # Otherwise: the one whole disk that is not the root disk and has no partitions.
  local root_disk d
  root_disk=$(lsblk -no PKNAME "$(findmnt -no SOURCE /)" 2>/dev/null | head -1)
  for d in $(lsblk -dnpo NAME,TYPE | awk '$2 == "disk" {print $1}'); do
    [ "$(basename "$d")" = "$root_disk" ] && continue
    [ "$(lsblk -no NAME "$d" | wc -l)" -eq 1 ] || continue       # has partitions
    if findmnt -rno SOURCE | grep -qx "$d" && \
       [ "$(blkid -s LABEL -o value "$d" 2>/dev/null || true)" != cowlab-data ]; then
      continue                                                   # someone else's mounted disk
    fi
    echo "$d"; return
  done
  return 1
}

name_disk() {  # a udev rule so that /dev/cowlab-data survives reboots
  local dev=$1 serial
  serial=$(udevadm info --query=property --name="$dev" | sed -n 's/^ID_SERIAL=//p' | head -1)
  if [ -n "$serial" ]; then
    printf 'KERNEL=="sd*|vd*", ENV{DEVTYPE}=="disk", ENV{ID_SERIAL}=="%s", SYMLINK+="cowlab-data"\n' "$serial" \
      > /etc/udev/rules.d/90-cowlab-data.rules
    udevadm control --reload
    udevadm trigger --action=change "$dev"
    udevadm settle
  fi
  [ -e /dev/cowlab-data ] || ln -sfn "$dev" /dev/cowlab-data   # no serial: this boot only
  echo "vm-setup: data disk $dev -> /dev/cowlab-data"
}

load_at_boot() {  # module...
  local m
  for m in "$@"; do
    modprobe "$m"
    grep -qx "$m" /etc/modules-load.d/cowlab.conf 2>/dev/null || echo "$m" >> /etc/modules-load.d/cowlab.conf
  done
}

case "$kind" in
  none) ;;
  btrfs)
    dev=$(data_disk) || { echo "vm-setup: no second disk found for btrfs" >&2; exit 1; }
    name_disk "$dev"
    if [ "$(blkid -s TYPE -o value "$dev" 2>/dev/null)" != btrfs ]; then
      if [ -n "$(blkid -s TYPE -o value "$dev" 2>/dev/null)" ]; then
        echo "vm-setup: $dev carries a $(blkid -s TYPE -o value "$dev") signature; not formatting it" >&2; exit 1
      fi
      mkfs.btrfs -q -L cowlab-data "$dev"
    fi
    mnt=/var/lib/cowlab-btrfs
    mkdir -p "$mnt"
    grep -q '^LABEL=cowlab-data ' /etc/fstab || \
      echo "LABEL=cowlab-data $mnt btrfs defaults,nofail 0 0" >> /etc/fstab
    mountpoint -q "$mnt" || mount "$mnt"
    printf '# cowlab vm-setup.sh: the state root on the btrfs disk\nexport COWLAB_ROOT=%s/root\n' "$mnt" \
      > /etc/profile.d/cowlab.sh
    printf 'Defaults env_keep += "COWLAB_ROOT"\n' > /etc/sudoers.d/cowlab.tmp
    chmod 440 /etc/sudoers.d/cowlab.tmp
    visudo -cqf /etc/sudoers.d/cowlab.tmp && mv /etc/sudoers.d/cowlab.tmp /etc/sudoers.d/cowlab
    echo "vm-setup: $(findmnt -no SOURCE,FSTYPE "$mnt") at $mnt; cowlab's state root: $mnt/root (COWLAB_ROOT)"
    ;;
  zfs)
    dev=$(data_disk) || { echo "vm-setup: no second disk found for zfs" >&2; exit 1; }
    name_disk "$dev"
    load_at_boot zfs
    [ -e /dev/zfs ] || { echo "vm-setup: /dev/zfs missing after modprobe zfs" >&2; exit 1; }
    ;;
  dm-loop)
    load_at_boot dm_thin_pool
    ;;
  dm-direct)
    dev=$(data_disk) || { echo "vm-setup: no second disk found for devicemapper-direct" >&2; exit 1; }
    name_disk "$dev"
    load_at_boot dm_thin_pool
    ;;
  *) echo "vm-setup: unknown kind $kind" >&2; exit 2 ;;
esac
echo "vm-setup: $kind ready"
