#!/usr/bin/env bash
# Build a small Debian 12 box for vagrant-libvirt from the Debian archive, for machines that have
# no route out (the box has to carry everything the machine will need).
#
#   sudo vagrant/box/build.sh OUT.box
#   vagrant box add --name cowlab/debian12-local OUT.box
#
# What is in it: a bootable raw disk (MBR + extlinux, one ext4 partition labelled cowlab-root)
# converted to qcow2; debootstrap's minbase + systemd, udev, Debian's *generic* kernel
# (linux-image-amd64: the -cloud flavour lacks 9p, which the results share needs), openssh-server
# (host keys generated at first boot), sudo, rsync, systemd-networkd doing DHCP on every NIC; a
# `vagrant` user (password vagrant, passwordless sudo) whose authorized_keys holds the public
# insecure key that ships with Vagrant, so `vagrant up` can log in and replace it.
# Packages: the project's own provisioning scripts run inside the image (COWLAB_BOX_PROVISION,
# default `host.sh`), so that `vagrant/provision/<backend>.sh --check` passes in the VM without
# any network and nothing is installed twice by two different lists.
# Python: if COWLAB_BOX_WHEELS names a directory of wheels, it is copied to /opt/cowlab/wheels and
# /etc/pip.conf points pip there with no index (the VM cannot reach PyPI), so `nox` sessions
# install cowlab's dependencies offline.
#
# Environment:
#   COWLAB_BOX_PROVISION  scripts of vagrant/provision/ to run in the image (default "host.sh")
#   COWLAB_BOX_WHEELS     a wheelhouse directory to bake in (optional), or:
#   COWLAB_BOX_EXTRAS     e.g. "test": build that wheelhouse here from cowlab's pyproject.toml
#                         (`pip wheel '.[EXTRAS]' setuptools wheel` with Debian's python3)
#   COWLAB_BOX_MIRROR     Debian mirror (default http://deb.debian.org/debian)
#   COWLAB_BOX_SIZE       virtual disk size (default 8G)
#   VAGRANT_INSECURE_PUBKEY  the insecure public key (default: the one of the installed vagrant)
# Needs root and the host packages of vagrant/provision/vagrant-host.sh (debootstrap, fdisk,
# extlinux, qemu-utils). Everything it mounts lives in a private mount namespace: nothing stays
# mounted on the host, also when it fails. Takes ~5-10 minutes (mostly downloads).
set -euo pipefail

if [ "${1:-}" = "" ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2
fi
[ "$(id -u)" -eq 0 ] || { echo "build.sh: needs root (debootstrap, mount)" >&2; exit 1; }

# Re-run inside a private mount namespace: every mount (image, /proc, /dev of the chroot) goes
# away with this process, whatever happens.
if [ -z "${COWLAB_BOX_IN_NS:-}" ]; then
  COWLAB_BOX_IN_NS=1 exec unshare --mount --propagation private -- bash "$0" "$@"
fi

here=$(cd "$(dirname "$0")" && pwd)
provision_dir=$(cd "$here/../provision" && pwd)
out=$(realpath -m "$1")
mirror=${COWLAB_BOX_MIRROR:-http://deb.debian.org/debian}
size=${COWLAB_BOX_SIZE:-8G}
provision=${COWLAB_BOX_PROVISION:-host.sh}
wheels=${COWLAB_BOX_WHEELS:-}
extras=${COWLAB_BOX_EXTRAS:-}
repo=$(cd "$here/../.." && pwd)

pubkey=${VAGRANT_INSECURE_PUBKEY:-}
if [ -z "$pubkey" ]; then
  for k in /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub \
           /opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub \
           /opt/vagrant/embedded/gems/vagrant-*/keys/vagrant.pub \
           /usr/share/vagrant/keys/vagrant.pub /usr/lib/ruby/vendor_ruby/vagrant/keys/vagrant.pub; do
    [ -f "$k" ] && { pubkey=$k; break; }
  done
fi
[ -n "$pubkey" ] && [ -f "$pubkey" ] || { echo "build.sh: Vagrant's insecure public key not found; set VAGRANT_INSECURE_PUBKEY" >&2; exit 1; }
for s in $provision; do
  [ -f "$provision_dir/$s" ] || { echo "build.sh: no vagrant/provision/$s" >&2; exit 1; }
done
[ -z "$wheels" ] || [ -d "$wheels" ] || { echo "build.sh: COWLAB_BOX_WHEELS=$wheels is not a directory" >&2; exit 1; }
for t in debootstrap sfdisk extlinux qemu-img mkfs.ext4; do
  command -v "$t" >/dev/null || { echo "build.sh: $t missing; run: sudo bash vagrant/provision/vagrant-host.sh" >&2; exit 1; }
done
mbr=""
for m in /usr/lib/EXTLINUX/mbr.bin /usr/lib/syslinux/mbr/mbr.bin /usr/share/syslinux/mbr.bin; do
  [ -f "$m" ] && { mbr=$m; break; }
done
[ -n "$mbr" ] || { echo "build.sh: syslinux mbr.bin not found (package extlinux/syslinux-common)" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/cowlab-box.XXXXXX")
R=$work/root
img=$work/disk.raw
log() { printf '[box %(%H:%M:%S)T] %s\n' -1 "$*"; }

cleanup() {
  local rc=$?
  # Processes a package script may have left running inside the image root: ours, end them.
  if [ -d "$R" ]; then
    for p in /proc/[0-9]*; do
      [ "$(readlink "$p/root" 2>/dev/null)" = "$R" ] && { log "ending leftover ${p#/proc/} ($(tr '\0' ' ' < "$p/cmdline"))"; kill -KILL "${p#/proc/}" 2>/dev/null || true; }
    done
  fi
  for m in "$R/dev/pts" "$R/dev" "$R/proc" "$R/sys" "$R"; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m" 2>/dev/null || true
  done
  rm -rf "$work"
  [ $rc -eq 0 ] || echo "build.sh: failed (exit $rc)" >&2
  exit $rc
}
trap cleanup EXIT

if [ -z "$wheels" ] && [ -n "$extras" ]; then
  log "wheelhouse of cowlab[$extras] for the image's Python ($(/usr/bin/python3 -V))"
  /usr/bin/python3 -m venv "$work/venv"
  "$work/venv/bin/pip" wheel -q --disable-pip-version-check -w "$work/wheels" \
    "$repo[$extras]" "setuptools>=64" wheel >"$work/pip.log" 2>&1 || { tail -30 "$work/pip.log"; exit 1; }
  rm -f "$work"/wheels/cowlab-*.whl   # cowlab itself comes from /cowlab, installed editable
  wheels=$work/wheels
fi

log "disk: $size raw, one bootable partition"
truncate -s "$size" "$img"
printf 'label: dos\nstart=2048, type=83, bootable\n' | sfdisk -q "$img"
# syslinux 6.04 cannot read 64bit/metadata_csum_seed/orphan_file ext4: keep the classic features.
mkfs.ext4 -q -b 4096 -L cowlab-root -E offset=$((2048 * 512)) \
  -O ^64bit,^metadata_csum,^metadata_csum_seed,^orphan_file "$img" \
  $(( ($(stat -c %s "$img") - 2048 * 512) / 4096 ))
mkdir -p "$R"
mount -o loop,offset=$((2048 * 512)) "$img" "$R"

log "debootstrap bookworm from $mirror"
debootstrap --variant=minbase --include=ca-certificates,apt-utils bookworm "$R" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -30 "$work/debootstrap.log"; exit 1; }

mount -t proc proc "$R/proc"
mount -t sysfs sys "$R/sys"
mount --bind /dev "$R/dev"
mount --bind /dev/pts "$R/dev/pts"
# Nothing installed here may start a service on the build host.
printf '#!/bin/sh\nexit 101\n' > "$R/usr/sbin/policy-rc.d"; chmod 755 "$R/usr/sbin/policy-rc.d"
cat > "$R/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
EOF
[ "${mirror%/debian}" != "$mirror" ] || sed -i '/debian-security/d' "$R/etc/apt/sources.list"
in_root() { chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
                DEBIAN_FRONTEND=noninteractive "$@"; }

log "base system, kernel, ssh"
in_root apt-get update -qq
in_root apt-get install -y -qq --no-install-recommends \
  systemd-sysv udev dbus kmod linux-image-amd64 initramfs-tools \
  openssh-server sudo rsync iproute2 iputils-ping procps less netbase \
  >"$work/apt.log" 2>&1 || { tail -30 "$work/apt.log"; exit 1; }

log "project provisioning in the image: $provision"
mkdir -p "$R/tmp/cowlab-provision"
cp "$provision_dir"/*.sh "$R/tmp/cowlab-provision/"
for s in $provision; do
  in_root bash "/tmp/cowlab-provision/$s" >"$work/provision.log" 2>&1 \
    || { tail -40 "$work/provision.log"; echo "build.sh: $s failed in the image" >&2; exit 1; }
  grep '^provision:' "$work/provision.log" | sed "s|^|  $s: |" || true
  in_root bash "/tmp/cowlab-provision/$s" --check >/dev/null \
    || { echo "build.sh: $s --check still fails in the image" >&2; exit 1; }
done
rm -rf "$R/tmp/cowlab-provision"

log "users, ssh, network, boot"
echo cowlab-box > "$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tcowlab-box\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$R/etc/hosts"
printf 'LABEL=cowlab-root\t/\text4\terrors=remount-ro\t0\t1\n' > "$R/etc/fstab"
in_root useradd -m -s /bin/bash -G sudo vagrant
echo 'vagrant:vagrant' | in_root chpasswd
printf 'vagrant ALL=(ALL) NOPASSWD:ALL\nDefaults:vagrant !requiretty\n' > "$R/etc/sudoers.d/vagrant"
chmod 440 "$R/etc/sudoers.d/vagrant"
install -d -m 700 "$R/home/vagrant/.ssh"
install -m 600 "$pubkey" "$R/home/vagrant/.ssh/authorized_keys"
in_root chown -R vagrant:vagrant /home/vagrant/.ssh
# One set of host keys per VM, made at its first boot.
rm -f "$R"/etc/ssh/ssh_host_*
mkdir -p "$R/etc/systemd/system/ssh.service.d"
printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
  > "$R/etc/systemd/system/ssh.service.d/cowlab-hostkeys.conf"
printf 'UseDNS no\n' > "$R/etc/ssh/sshd_config.d/cowlab.conf"
cat > "$R/etc/systemd/network/50-cowlab-dhcp.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
in_root systemctl enable systemd-networkd ssh >/dev/null 2>&1
in_root systemctl mask systemd-networkd-wait-online.service >/dev/null 2>&1 || true
: > "$R/etc/machine-id"; rm -f "$R/var/lib/dbus/machine-id"

if [ -n "$wheels" ]; then
  log "wheelhouse: $(ls "$wheels" | wc -l) files -> /opt/cowlab/wheels, pip offline"
  mkdir -p "$R/opt/cowlab/wheels"
  cp "$wheels"/* "$R/opt/cowlab/wheels/"
  # no-compile: byte-compiling every module pip installs is half of a nox venv's install
  # (cowlab[test,engine,vm] natively: 21.5 s, 10.4 s without), and under TCG minutes; Python
  # compiles what a session imports when it first imports it.
  printf '[global]\nno-index = true\nfind-links = /opt/cowlab/wheels\n[install]\nno-compile = true\n' \
    > "$R/etc/pip.conf"
fi

kver=$(ls "$R/boot" | sed -n 's/^vmlinuz-//p' | sort -V | tail -1)
mkdir -p "$R/boot/extlinux"
cat > "$R/boot/extlinux/extlinux.conf" <<EOF
DEFAULT debian
PROMPT 0
TIMEOUT 0
LABEL debian
  LINUX /boot/vmlinuz-$kver
  INITRD /boot/initrd.img-$kver
  APPEND root=LABEL=cowlab-root ro console=tty0 console=ttyS0,115200n8
EOF
extlinux --install "$R/boot/extlinux" >/dev/null 2>&1
dd if="$mbr" of="$img" bs=440 count=1 conv=notrunc status=none

rm -f "$R/usr/sbin/policy-rc.d"
in_root apt-get clean
rm -rf "$R"/var/lib/apt/lists/* "$R"/tmp/* "$R"/var/tmp/*
installed=$(in_root dpkg-query -W -f='${Package}\n' | wc -l)
for m in "$R/dev/pts" "$R/dev" "$R/proc" "$R/sys"; do umount "$m"; done
fstrim "$R" 2>/dev/null || true
umount "$R"

log "qcow2 + box (kernel $kver, $installed packages)"
mkdir -p "$work/box"
qemu-img convert -O qcow2 "$img" "$work/box/box.img"
vsize=$(( ($(stat -c %s "$img") + (1 << 30) - 1) >> 30 ))
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "$vsize" > "$work/box/metadata.json"
cat > "$work/box/Vagrantfile" <<'EOF'
# cowlab's locally built Debian 12 box (vagrant/box/build.sh)
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.disk_bus = "virtio"
  end
end
EOF
mkdir -p "$(dirname "$out")"
tar -C "$work/box" -cf "$out.tmp" metadata.json Vagrantfile box.img
mv "$out.tmp" "$out"
log "wrote $out ($(du -h "$out" | cut -f1))"
