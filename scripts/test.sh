#!/usr/bin/env bash
# Runs layerd's whole test suite: unit tests, the host tier (real loop
# devices, file systems, dbus-daemon and the real daemon binary), the
# systemd tier (tests/systemd.rs: systemd as PID 1 in systemd-nspawn) and the
# kernel tier (device-mapper, in a VM: scripts/test-kernel.sh). As root.
#
#   scripts/test.sh           everything (what CI runs)
#   scripts/test.sh --host    unit tests, host and systemd tiers only (no VM)
#
# Prints each tier's time, the slowest tests (from the harness's
# `layerd-test-time:` lines) and one closing line counting every test.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "the test suite mounts file systems: run it as root" >&2; exit 1; }
kernel=1
case "${1:-}" in
  --host) kernel= ;;
  "") ;;
  *) echo "usage: scripts/test.sh [--host]" >&2; exit 2 ;;
esac
t0=$(date +%s)
scripts/install-deps.sh
t1=$(date +%s)
cargo build --locked --all-features --all-targets
# containerd's snapshotter testsuite (Go; tests/containerd_suite.rs runs it
# on the host and, for thin, in the kernel-tier VM): built once, cached.
LAYERD_CONTAINERD_SUITE=$(scripts/build-containerd-suite.sh)
export LAYERD_CONTAINERD_SUITE
t2=$(date +%s)
log=$(mktemp)
klog=$(mktemp)
trap 'rm -f "$log" "$klog"' EXIT
set +e
# Each integration test builds its own bus, loop-backed file system and
# daemon, and cleans them up on drop, so tests run in parallel.
cargo test --locked --all-features --no-fail-fast --lib --bins --tests -- --test-threads="${LAYERD_TEST_THREADS:-4}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
t3=$(date +%s)
if [ -n "$kernel" ]; then
  # Kernel tier: the device-mapper tests, in a VM (scripts/test-kernel.sh).
  scripts/test-kernel.sh 2>&1 | tee "$klog"; [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
t4=$(date +%s)
set -e
cat "$klog" >>"$log"

echo "===== where the time went ====="
# Per test binary: its tests and libtest's own time.
awk '/^ *Running / { bin = $2 }
     /^test result:/ { for (i = 1; i <= NF; i++) if ($i == "in") t = $(i + 1)
                       printf "  %-44s %s\n", bin, t }' "$log" | sort -t ' ' -k2 | sed 's/^/test binary time: /'
# The slowest fixtures (setup = bus, file system, daemon start).
grep -ho 'layerd-test-time: .*' "$log" | awk '{ split($5, a, "="); print a[2] + 0, $0 }' |
  sort -rn | head -n 15 | cut -d ' ' -f 2- || true
grep -h '^kernel tier time:' "$log" || true
echo "tier time: install-deps $((t1 - t0))s, build $((t2 - t1))s, unit + host + systemd tiers $((t3 - t2))s, kernel tier $([ -n "$kernel" ] && echo "$((t4 - t3))s" || echo "skipped (--host)"), total $((t4 - t0))s"
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "layerd tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
