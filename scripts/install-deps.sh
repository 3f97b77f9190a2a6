#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages layerd's build and host test tier need.
# Idempotent; runs apt-get update only when something is missing.
set -euo pipefail
# gcc, libc6-dev: the zstd crate builds libzstd; tar: tests/diff.rs compares with GNU tar.
pkgs=(btrfs-progs xfsprogs e2fsprogs dbus util-linux kmod attr libcap2-bin gcc libc6-dev tar)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q "${missing[@]}"
fi
# Kernel pieces the host tier uses (built in on some kernels: ignore errors).
for m in loop overlay btrfs xfs ext4; do modprobe -q "$m" 2>/dev/null || true; done
command -v cargo >/dev/null || { echo "cargo not found: install a Rust toolchain (rustup)"; exit 1; }
