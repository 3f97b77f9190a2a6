#!/usr/bin/env bash
# The benchmark's device-mapper part (bench/README.md, "thin"): builds the
# bench executable and the release daemon on the host, boots the
# kernel-tier VM (scripts/kernel-tier-vm.sh, as scripts/test-kernel.sh
# does) and runs `layerd-bench thin` in it, then prints its output. Not a
# test and not part of scripts/test.sh or CI.
#
#   scripts/bench-kernel.sh            the thin table (default parts: thin)
#   scripts/bench-kernel.sh thin vfs   other parts too (names as for cargo bench)
#
# Environment: LAYERD_BENCH_* as for `cargo bench` (LAYERD_BENCH_ITERS
# defaults to 60 here: under emulation one iteration takes seconds),
# LAYERD_VM_TIMEOUT (seconds, default 1800), LAYERD_VM_KERNEL, LAYERD_VM_KEEP=1.
# LAYERD_BENCH_COMPARE=<another layerd binary>: in the same VM, first run
# the bench against that daemon (e.g. a build before a change), then
# against this tree's.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
[ "$(id -u)" = 0 ] || { echo "bench-kernel: needs root (loop devices, dm, mounts)" >&2; exit 1; }
timeout_s=${LAYERD_VM_TIMEOUT:-1800}
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH:/usr/sbin:/sbin"
command -v vng >/dev/null || { echo "bench-kernel: vng not found: run scripts/install-deps.sh" >&2; exit 1; }
kernel=${LAYERD_VM_KERNEL:-$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)}
[ -n "$kernel" ] && [ -d "/lib/modules/${kernel##*/vmlinuz-}" ] ||
  { echo "bench-kernel: no kernel with modules in /boot: run scripts/install-deps.sh" >&2; exit 1; }

# `cargo bench` builds with the bench profile (release): the bench
# executable and target/release/layerd.
exes=$(cargo bench --locked --all-features --bench layerd --no-run --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        if m["target"]["kind"] == ["bench"]:
            print("bench", m["executable"])
        elif m["target"]["kind"] == ["bin"] and m["target"]["name"] == "layerd":
            print("layerd", m["executable"])
')
bench=$(awk '$1 == "bench" { print $2 }' <<<"$exes")
daemon=$(awk '$1 == "layerd" { print $2 }' <<<"$exes")
[ -n "$bench" ] && [ -n "$daemon" ] || { echo "bench-kernel: cargo built no bench or daemon" >&2; exit 1; }

res=$(mktemp -d /tmp/layerd-kb.XXXXXX)
vm=
cleanup() {
  if [ -n "$vm" ] && kill -0 "$vm" 2>/dev/null; then
    kill -TERM -- "-$vm" 2>/dev/null || true
    sleep 3
    kill -KILL -- "-$vm" 2>/dev/null || true
  fi
  if [ "${LAYERD_VM_KEEP:-}" = 1 ]; then echo "bench-kernel: results kept in $res"; else rm -rf "$res"; fi
}
trap cleanup EXIT
# Copies, so a rebuild on the host cannot change what the VM runs. The
# bench finds the daemon through LAYERD_BIN (kernel-tier-vm.sh sets it).
# (under release/: the report checks the daemon's path for a release build)
mkdir "$res/release"
cp "$daemon" "$res/release/layerd"
cp "$bench" "$res/layerd-bench"

# kernel-tier-vm.sh runs "<lane> <name> <executable> <args…>" lines (one
# lane here: the runs must not overlap); env carries the bench settings.
[ $# -gt 0 ] || set -- thin
vars="LAYERD_BENCH_ITERS=${LAYERD_BENCH_ITERS:-60} LAYERD_BENCH_DIFF_REPS=${LAYERD_BENCH_DIFF_REPS:-0} LAYERD_BENCH_LAYERS=${LAYERD_BENCH_LAYERS:-0} LAYERD_BENCH_BTRFS=${LAYERD_BENCH_BTRFS:-0}"
for v in $(env | awk -F= '/^LAYERD_BENCH_/ { print $1 }'); do
  case " $vars " in *" $v="*) ;; *) vars="$vars $v=${!v}" ;; esac
done
: >"$res/plan"
if [ -n "${LAYERD_BENCH_COMPARE:-}" ]; then
  mkdir "$res/release-compare"
  cp "$LAYERD_BENCH_COMPARE" "$res/release-compare/layerd"
  echo "a compare /usr/bin/env $vars LAYERD_BIN=$res/release-compare/layerd $res/layerd-bench $*" >>"$res/plan"
fi
echo "a bench /usr/bin/env $vars LAYERD_BIN=$res/release/layerd $res/layerd-bench $*" >>"$res/plan"

echo "bench-kernel: host load average $(cut -d ' ' -f 1-3 /proc/loadavg); booting ${kernel##*/} under qemu (no KVM), timeout ${timeout_s}s"
echo "bench-kernel: $vars"
setsid vng -r "$kernel" --disable-kvm --memory 2G --cpus 2 --rwdir="$res" \
  --exec "bash $repo/scripts/kernel-tier-vm.sh $res" </dev/null >"$res/console.log" 2>&1 &
vm=$!
start=$(date +%s)
while kill -0 "$vm" 2>/dev/null; do
  if [ $(($(date +%s) - start)) -ge "$timeout_s" ]; then
    echo "bench-kernel: TIMED OUT after ${timeout_s}s (LAYERD_VM_TIMEOUT)"
    kill -TERM -- "-$vm" 2>/dev/null || true
    sleep 5
    kill -KILL -- "-$vm" 2>/dev/null || true
    break
  fi
  sleep 2
done
wait "$vm" 2>/dev/null || true
vm=
status=0
while read -r _ name _; do
  echo "==> bench-kernel (VM): $name"
  cat "$res/$name.out" 2>/dev/null || true
  rc=$(cat "$res/$name.rc" 2>/dev/null || echo none)
  echo "bench-kernel: $name exit status $rc"
  [ "$rc" = 0 ] || status=1
done <"$res/plan"
echo "bench-kernel: VM run $(($(date +%s) - start))s, host load average $(cut -d ' ' -f 1-3 /proc/loadavg)"
if [ "$status" != 0 ]; then
  echo "--- VM console (tail) ---"; tail -n 40 "$res/console.log" || true
  echo "--- VM script log (tail) ---"; tail -n 20 "$res/vm.log" 2>/dev/null || true
  exit 1
fi
