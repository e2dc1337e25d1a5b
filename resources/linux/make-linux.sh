#!/usr/bin/env bash
# Copyright 2026 The guest-mm authors.
# SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
#
# Makes a Linux guest for `vmm` from Debian packages (DESIGN section 6):
#   target/linux/bzImage          Debian's cloud amd64 kernel, as shipped
#   target/linux/vmlinux          the ELF kernel inside it (boots much faster
#                                 here: no emulated decompressor)
#   target/linux/initramfs.cpio.gz  busybox-static with an /init that mounts
#                                 /proc, /sys, /dev and starts a shell
#   target/linux/VERSION          the kernel package and version
# Usage: resources/linux/make-linux.sh [OUT_DIR]   (default: <repo>/target/linux)
#   LINUX_FLAVOUR=generic makes the same from Debian's generic kernel
#   (linux-image-amd64, which reads MP tables: CONFIG_X86_MPPARSE) instead,
#   default OUT_DIR <repo>/target/linux-generic.
# Cached: does nothing when the outputs exist (delete OUT_DIR to refresh).
# Needs apt-get and dpkg-deb (Debian); installs the decompressor and cpio it
# needs with apt-get when they are missing and it runs as root.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
flavour=${LINUX_FLAVOUR:-cloud}
case $flavour in
  cloud) meta=linux-image-cloud-amd64; default_out=$root/target/linux ;;
  generic) meta=linux-image-amd64; default_out=$root/target/linux-generic ;;
  *) echo "make-linux: LINUX_FLAVOUR must be cloud or generic, not $flavour" >&2; exit 1 ;;
esac
out=${1:-$default_out}
if [[ -s $out/vmlinux && -s $out/bzImage && -s $out/initramfs.cpio.gz && -s $out/VERSION ]]; then
  echo "make-linux: cached in $out ($(cat "$out/VERSION"))"
  exit 0
fi

log() { echo "make-linux: $*" >&2; }

# Installs Debian package $2 when command $1 is missing.
need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [[ $(id -u) -ne 0 ]]; then
    log "$1 is missing: apt-get install $2 (as root), then run this again"
    exit 1
  fi
  log "installing $2 (for $1)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null
}

apt_updated=
apt_update() {
  [[ -n $apt_updated ]] && return 0
  if [[ $(id -u) -eq 0 ]]; then
    log "apt-get update"
    apt-get update -qq >/dev/null
  fi
  apt_updated=1
}

# The versioned kernel package behind the metapackage.
kernel_pkg=$(apt-cache depends "$meta" 2>/dev/null |
  awk '/Depends: linux-image-[0-9]/ {print $2; exit}') || true
if [[ -z $kernel_pkg ]]; then
  apt_update
  kernel_pkg=$(apt-cache depends "$meta" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
[[ -n $kernel_pkg ]] || { log "no $meta in the apt lists"; exit 1; }
need cpio cpio

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out/debs"
cd "$out/debs"
for pkg in "$kernel_pkg" busybox-static; do
  if ! ls "${pkg}"_*.deb >/dev/null 2>&1; then
    log "apt-get download $pkg"
    apt-get download -qq "$pkg" 2>/dev/null || { apt_update; apt-get download -qq "$pkg"; }
  fi
done
kernel_deb=$(ls "${kernel_pkg}"_*.deb | head -n1)
busybox_deb=$(ls busybox-static_*.deb | head -n1)

# The bzImage.
dpkg-deb --fsys-tarfile "$kernel_deb" | tar -x -C "$work" --wildcards './boot/vmlinuz-*'
cp "$work"/boot/vmlinuz-* "$work/bzImage"

# The ELF vmlinux: the bzImage's setup header gives the compressed payload's
# place (payload_offset at 0x248, payload_length at 0x24c, relative to the
# protected-mode code, which starts after (setup_sects + 1) * 512 bytes).
u8() { od -An -tu1 -j "$2" -N1 "$1" | tr -d ' '; }
u32() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' '; }
setup_sects=$(u8 "$work/bzImage" $((0x1f1)))
[[ $setup_sects -eq 0 ]] && setup_sects=4
payload_offset=$(u32 "$work/bzImage" $((0x248)))
payload_length=$(u32 "$work/bzImage" $((0x24c)))
start=$(((setup_sects + 1) * 512 + payload_offset))
dd if="$work/bzImage" of="$work/payload" bs=64K iflag=skip_bytes,count_bytes \
  skip="$start" count="$payload_length" status=none
magic=$(od -An -tx1 -N6 "$work/payload" | tr -d ' \n')
case $magic in
  1f8b*) need gzip gzip; decompress=(gzip -dc) ;;
  fd377a585a00) need xz xz-utils; decompress=(xz -dc) ;;
  02214c18*) need lz4 lz4; decompress=(lz4 -dc) ;;
  28b52ffd*) need zstd zstd; decompress=(zstd -dc) ;;
  425a68*) need bzip2 bzip2; decompress=(bzip2 -dc) ;;
  5d0000*) need xz xz-utils; decompress=(xz --format=lzma -dc) ;;
  *) log "unknown compression (payload starts with $magic)"; exit 1 ;;
esac
log "payload: $payload_length bytes at $start, ${decompress[0]}"
# The kernel appends the uncompressed size after the stream; decompressors
# may complain about it: the result is checked instead.
"${decompress[@]}" <"$work/payload" >"$work/vmlinux" 2>/dev/null || true
[[ $(od -An -tx1 -N4 "$work/vmlinux" | tr -d ' \n') == 7f454c46 ]] ||
  { log "the decompressed payload is not an ELF"; exit 1; }

# The initramfs: busybox-static and an /init.
mkdir -p "$work/initramfs"/{bin,dev,proc,sys,tmp}
dpkg-deb --fsys-tarfile "$busybox_deb" | tar -x -C "$work" ./bin/busybox
cp "$work/bin/busybox" "$work/initramfs/bin/busybox"
cat >"$work/initramfs/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "initramfs: busybox $(busybox | head -n1 | cut -d' ' -f2) up, kernel $(uname -r)"
exec sh
INIT
chmod +x "$work/initramfs/init"
(cd "$work/initramfs" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -9n) >"$work/initramfs.cpio.gz"

mv "$work/bzImage" "$work/vmlinux" "$work/initramfs.cpio.gz" "$out/"
echo "$kernel_pkg $(dpkg-deb -f "$kernel_deb" Version)" >"$out/VERSION"
echo "make-linux: $out/{vmlinux,bzImage,initramfs.cpio.gz} ($(cat "$out/VERSION"))"
