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
# shellcheck disable=SC1091 # LAYERD_LOG etc. from the host, if set there
[ -e "$res/env" ] && . "$res/env"
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
mkdir -p /tmp/kt && mount -t tmpfs -o size=75%,mode=0755 kt /tmp/kt
export LAYERD_TEST_TMP=/tmp/kt
# The VM's root is the host's, read-only; the daemon's state lives under
# LAYERD_TEST_TMP in each fixture, so nothing else needs to be writable.
run_lane() {
  while read -r lane name exe args; do
    [ "$lane" = "$1" ] || continue
    echo "vm: [$lane] $name: $exe $args ($(cut -d ' ' -f 1 /proc/uptime)s)"
    s=$(cut -d ' ' -f 1 /proc/uptime)
    # shellcheck disable=SC2086 # args are split on purpose
    (cd /tmp/kt && "$exe" $args) >"$res/$name.out" 2>&1
    echo $? >"$res/$name.rc"
    echo "vm: [$lane] $name done: $(awk -v s="$s" '{ printf "%.0f", $1 - s }' /proc/uptime)s"
  done <"$res/plan"
}
# CPU use of the guest over the run (busy share of its vCPUs), so a change
# to the lanes can be judged by how idle the guest was.
cpu() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8, $5 + $6 }' /proc/stat; }
read -r busy0 idle0 <<<"$(cpu)"
for lane in $(awk '{ print $1 }' "$res/plan" | sort -u); do
  run_lane "$lane" &
done
wait
read -r busy1 idle1 <<<"$(cpu)"
echo "vm: guest CPU busy $(( 100 * (busy1 - busy0) / (busy1 - busy0 + idle1 - idle0 + 1) ))% of its vCPUs"
echo "vm: done after $(cut -d ' ' -f 1 /proc/uptime)s; memory:"
grep -E 'MemTotal|MemAvailable|Shmem:' /proc/meminfo
umount /tmp/kt
: >"$res/done"
