#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages layerd's build and test tiers need.
# Idempotent; runs apt-get update only when something is missing.
set -euo pipefail
pkgs=(btrfs-progs xfsprogs e2fsprogs dbus util-linux kmod attr libcap2-bin)
# systemd tier (tests/systemd.rs): systemd-nspawn.
pkgs+=(systemd-container)
# The devicemapper crate's build runs bindgen on libdevmapper's headers.
pkgs+=(clang pkg-config libdevmapper-dev)
# The udev crate links libudev (found with pkg-config); the kernel-tier VM
# runs the host's systemd-udevd (package udev) beside the daemon.
pkgs+=(libudev-dev udev)
# Kernel tier (scripts/test-kernel.sh): Debian's kernel booted under qemu by
# virtme-ng, since the host kernel has no device-mapper.
pkgs+=(linux-image-amd64 busybox-static qemu-system-x86 thin-provisioning-tools)
# gcc, libc6-dev: the zstd crate builds libzstd; tar: tests/diff.rs compares with GNU tar.
pkgs+=(gcc libc6-dev tar)
# containerd-snapshots generates its gRPC code with protoc at build time.
pkgs+=(protobuf-compiler)
# containerd tier: Debian's containerd and runc (tests/containerd_e2e.rs), and
# containerd's own snapshotter testsuite with Go and every dependency as
# Debian sources (scripts/build-containerd-suite.sh builds it offline).
pkgs+=(containerd runc golang-go golang-github-containerd-containerd-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Wait for a concurrent apt/dpkg rather than fail on its lock.
  apt-get -o DPkg::Lock::Timeout=600 update -q
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
fi
# virtme-ng (vng) boots the kernel tier's VM; scripts/test-kernel.sh finds it
# in pip's script directory even when that is not on PATH.
bin=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
if [ ! -x "$bin/vng" ] || ! python3 -c 'import virtme_ng' 2>/dev/null; then
  echo "installing: virtme-ng (pip)"
  # --force-reinstall brings back a vng script that went missing; a Debian
  # system python refuses plain pip installs (PEP 668).
  python3 -m pip install -q --force-reinstall virtme-ng ||
    python3 -m pip install -q --force-reinstall --break-system-packages virtme-ng
fi
# Kernel pieces the host tier uses (built in on some kernels: ignore errors).
for m in loop overlay btrfs xfs ext4; do modprobe -q "$m" 2>/dev/null || true; done
command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup)"; exit 1; }
