#!/usr/bin/env bash
# Runs layerd's whole test suite: unit tests, the host tier (real loop
# devices, file systems, dbus-daemon and the real daemon binary), the
# systemd tier (tests/systemd.rs: systemd as PID 1 in systemd-nspawn) and the
# kernel tier (device-mapper, in a VM: scripts/test-kernel.sh). As root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "the test suite mounts file systems: run it as root" >&2; exit 1; }
scripts/install-deps.sh
cargo build --locked --all-features --all-targets
# Each integration test builds its own bus, loop-backed file system and
# daemon, and cleans them up on drop, so tests run in parallel.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked --all-features --no-fail-fast --lib --bins --tests -- --test-threads="${LAYERD_TEST_THREADS:-4}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# Kernel tier: the device-mapper tests, in a VM (scripts/test-kernel.sh).
scripts/test-kernel.sh 2>&1 | tee -a "$log"; [ "${PIPESTATUS[0]}" = 0 ] || status=1
set -e
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "layerd tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
