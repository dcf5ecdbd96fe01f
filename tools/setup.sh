#!/usr/bin/env bash
# Install what cosa needs on the host, idempotently: the field's tools (ostree, dnf,
# rpm, createrepo_c, mkfs.*, sfdisk, GRUB, qemu, xorriso, ...) from the distribution,
# on Debian 12 or Ubuntu 24.04. Safe to run again: it installs only what is missing.
set -euo pipefail

PACKAGES=(
  # compose: RPM-MD repos, depsolve, OSTree commits
  ostree rpm createrepo-c dnf
  # example OS: busybox for the shell and initramfs, cpio for the initramfs
  busybox-static cpio
  # disk images without root: filesystems filled from directories, GPT, FAT via mtools
  e2fsprogs dosfstools mtools xfsprogs fdisk gdisk
  # bootloader and boot tests (TCG)
  grub-pc-bin grub-efi-amd64-bin ovmf seabios qemu-system-x86 qemu-utils
  # live ISO and compression
  xorriso squashfs-tools erofs-utils zstd xz-utils
  # user namespaces for rootless steps; rsync for gitlab-ci-local
  uidmap rsync python3-venv ca-certificates
  # tests only: which syscalls a binary makes (fsync of fetched files)
  strace
)

SUDO=
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "error: tools/setup.sh needs root or sudo to install packages" >&2; exit 1; }
  SUDO=sudo
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js and npm run gitlab-ci-local and the action linters in the tests; a machine
# that already has them (e.g. from NodeSource) keeps its own.
if ! command -v npm >/dev/null; then missing+=(nodejs npm); fi
# qemu-img must come from the same QEMU release as qemu-system (a backported
# qemu-utils conflicts with the distribution's qemu-system and gets removed).
if ! command -v qemu-img >/dev/null; then missing+=(qemu-utils); fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  qemu_ver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  args=()
  for p in "${missing[@]}"; do
    if [ "$p" = qemu-utils ] && [ -n "$qemu_ver" ] && [ "$qemu_ver" != "(none)" ]; then
      args+=("qemu-utils=$qemu_ver")
    else
      args+=("$p")
    fi
  done
  $SUDO apt-get install -y -q --allow-downgrades "${args[@]}"
fi
# Installing qemu-system can remove a preinstalled, newer qemu-utils (a backport):
# put back the one from qemu-system's own release.
if ! command -v qemu-img >/dev/null; then
  qemu_ver=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
  echo "==> installing qemu-utils${qemu_ver:+=$qemu_ver}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q --allow-downgrades "qemu-utils${qemu_ver:+=$qemu_ver}"
fi

for tool in ostree dnf rpmbuild createrepo_c mkfs.ext4 sfdisk mcopy qemu-img qemu-system-x86_64 xorriso; do
  command -v "$tool" >/dev/null || { echo "error: $tool is still missing after install" >&2; exit 1; }
done

if ! command -v cargo >/dev/null; then
  echo "error: cargo not found: install Rust (https://rustup.rs), then run this again" >&2
  exit 1
fi
echo "==> host ready"
