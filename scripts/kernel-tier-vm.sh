#!/usr/bin/env bash
# Runs INSIDE the kernel-tier VM (started by scripts/test-kernel.sh with the
# results directory as $1, shared with the host). Loads the kernel modules
# the tests use, gives them a fresh tmpfs, and runs each line of $1/plan
# ("<name> <executable> <libtest args…>"), writing $1/<name>.out and
# $1/<name>.rc. Starts nothing else: each test starts its own dbus-daemon.
set -u
res=$1
exec >"$res/vm.log" 2>&1
echo "vm: up after $(cut -d ' ' -f 1 /proc/uptime)s of guest uptime"
: >"$res/up"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Inside the VM nothing may skip (the harness panics instead when CI is set).
export LAYERD_KERNEL_TIER=1 CI=1 RUST_BACKTRACE=1
# The daemon copy scripts/test-kernel.sh made (tests/common: Daemon::binary).
export LAYERD_BIN=$res/layerd
modprobe -a loop dm-mod dm-thin-pool overlay xfs ext4 || echo "vm: modprobe failed"
# The product runs beside udevd (the devicemapper crate waits for its dm
# rules; tests/kernel_udev.rs watches its events). virtme-ng's init starts
# systemd-udevd; should it not, start the real one here.
if [ ! -e /run/udev/control ]; then
  echo "vm: no udevd: starting systemd-udevd"
  /lib/systemd/systemd-udevd --daemon && udevadm trigger --action=add && udevadm settle
fi
echo "vm: udevd: $(pgrep -a systemd-udevd | head -n 1 || echo none)"
# /tmp is an overlay on the host's /tmp (the test binaries live there, so
# keep it); the tests' files go on a tmpfs of their own. tmpfs has no
# O_DIRECT on 6.1: loop devices stay on buffered I/O (--direct-io=off).
mkdir -p /tmp/kt && mount -t tmpfs -o size=1536m,mode=0755 kt /tmp/kt
export LAYERD_TEST_TMP=/tmp/kt
# The VM's root is the host's, read-only; the daemon's state lives under
# LAYERD_TEST_TMP in each fixture, so nothing else needs to be writable.
while read -r name exe args; do
  echo "vm: $name: $exe $args ($(cut -d ' ' -f 1 /proc/uptime)s)"
  # shellcheck disable=SC2086 # args are split on purpose
  (cd /tmp/kt && "$exe" $args) >"$res/$name.out" 2>&1
  echo $? >"$res/$name.rc"
done <"$res/plan"
echo "vm: done after $(cut -d ' ' -f 1 /proc/uptime)s; memory:"
grep -E 'MemTotal|MemAvailable|Shmem:' /proc/meminfo
umount /tmp/kt
: >"$res/done"
