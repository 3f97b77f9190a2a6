#!/usr/bin/env bash
# Runs layerd's whole test suite: unit tests and the host tier (real loop
# devices, file systems, dbus-daemon and the real daemon binary). As root.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "the test suite mounts file systems: run it as root" >&2; exit 1; }
scripts/install-deps.sh
cargo build --locked --all-features --all-targets
# Each integration test builds its own bus, loop-backed file system and
# daemon, and cleans them up on drop, so tests run in parallel.
cargo test --locked --all-features -- --test-threads="${LAYERD_TEST_THREADS:-4}"
