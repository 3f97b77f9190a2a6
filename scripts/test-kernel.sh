#!/usr/bin/env bash
# Kernel tier (docs/ARCHITECTURE.md, Testing): the tests that need
# device-mapper, which the host kernel lacks, run inside ONE VM booted with
# Debian's kernel by virtme-ng under qemu (no KVM here), as root.
#
#   scripts/test-kernel.sh                  the whole tier (scripts/test.sh runs this)
#   scripts/test-kernel.sh TARGET [ARGS…]   one test target with libtest ARGS, e.g.
#                                           scripts/test-kernel.sh kernel_dm dm_thin
#
# The test binaries are built here on the host; the VM sees the host's root
# read-only and runs them (scripts/kernel-tier-vm.sh), writing each one's
# output into a results directory shared with the host. This script prints
# those outputs (so test.sh's summary counts their `test result:` lines) and
# fails when a test failed, the VM reported nothing, or it ran out of time.
#
# Kernel-tier targets are tests/kernel_*.rs; their tests are #[ignore]d so
# the host run lists them as ignored, and run here with --ignored. Other
# targets' kernel-tier tests are #[ignore]d too but get no --ignored by
# themselves: scripts/test-kernel.sh containerd_suite --ignored --exact thin
# Environment: LAYERD_VM_TIMEOUT (seconds, default 4500), LAYERD_VM_KERNEL
# (a vmlinuz path; default the newest /boot/vmlinuz-*), LAYERD_VM_KEEP=1
# keeps the results directory.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
[ "$(id -u)" = 0 ] || { echo "the kernel tier needs root (loop devices, dm, mounts)" >&2; exit 1; }
timeout_s=${LAYERD_VM_TIMEOUT:-4500}
t0=$(date +%s)

# pip's script directory holds vng and the virtme-run it calls by name.
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH:/usr/sbin:/sbin"
command -v vng >/dev/null || { echo "kernel tier: vng not found: run scripts/install-deps.sh" >&2; exit 1; }
kernel=${LAYERD_VM_KERNEL:-$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)}
[ -n "$kernel" ] && [ -d "/lib/modules/${kernel##*/vmlinuz-}" ] ||
  { echo "kernel tier: no kernel with modules in /boot: run scripts/install-deps.sh" >&2; exit 1; }

# Build on the host; collect test executables by target name. One target
# asked for: build only it (and the daemon it runs), not every test target.
only=()
[ $# -gt 0 ] && only=(--test "$1")
exes=$(cargo test --locked --all-features --no-run "${only[@]}" --message-format=json | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        if "test" in m["target"]["kind"]:
            print(m["target"]["name"], m["executable"])
        elif m["target"]["kind"] == ["bin"] and not m["profile"]["test"]:
            print("bin:" + m["target"]["name"], m["executable"])
')
exe() { awk -v t="$1" '$1 == t { print $2 }' <<<"$exes"; }

res=$(mktemp -d /tmp/layerd-kt.XXXXXX)
vm=
cleanup() {
  # The VM runs in its own process group (setsid): end exactly that group.
  if [ -n "$vm" ] && kill -0 "$vm" 2>/dev/null; then
    kill -TERM -- "-$vm" 2>/dev/null || true
    sleep 3
    kill -KILL -- "-$vm" 2>/dev/null || true
  fi
  if [ "${LAYERD_VM_KEEP:-}" = 1 ]; then echo "kernel tier: results kept in $res"; else rm -rf "$res"; fi
}
trap cleanup EXIT
# The VM runs a copy of the daemon (tests take it from $LAYERD_BIN), so a
# rebuild on the host cannot change the binary under a running test.
daemon=$(exe bin:layerd)
[ -n "$daemon" ] || { echo "kernel tier: cargo built no layerd binary" >&2; exit 1; }
cp "$daemon" "$res/layerd"
# Debugging knobs reach the VM's tests (scripts/kernel-tier-vm.sh sources this).
for v in LAYERD_LOG LAYERD_TEST_SHOW_LOG; do
  [ -n "${!v:-}" ] && printf 'export %s=%q\n' "$v" "${!v}" >>"$res/env"
done

# The plan: one line per run, "<lane> <name> <executable> <libtest args…>".
# The VM runs each lane's lines in order and the lanes side by side (the
# guest's two vCPUs idle while a test waits on udev or a device).
if [ $# -gt 0 ]; then
  target=$1; shift
  bin=$(exe "$target")
  [ -n "$bin" ] || { echo "kernel tier: no test target named $target" >&2; exit 1; }
  case $target in kernel_*) set -- --ignored "$@" ;; esac
  echo "a $target $bin $*" >"$res/plan"
else
  : >"$res/plan"
  # Lane a: kernel_conformance, every conformance scenario
  # (tests/conformance/scenario_list.rs, the diff ones included) on thin,
  # two at a time: each thin fixture has a pool name of its own
  # (tests/common: thin_pool_name), so their dm names never meet.
  # Lane b: every other target, one after another. Those whose fixtures
  # must call their pool `main` (kernel_thin_crash, kernel_udev, and
  # default_pool, whose built-in pool is `main`) all stay in lane b, so no
  # two `layerd-main-*` pools ever exist at once.
  echo "a kernel_conformance $(exe kernel_conformance) --ignored --test-threads=${LAYERD_VM_THREADS:-2}" >>"$res/plan"
  for t in $(awk '$1 ~ /^kernel_/ && $1 != "kernel_conformance" { print $1 }' <<<"$exes" | sort); do
    echo "b $t $(exe "$t") --ignored --test-threads=2" >>"$res/plan"
  done
  # The host-tier harness (loop devices, mkfs, bus, daemon) in the VM: two
  # vfs conformance tests, xfs and ext4, and overlay scenarios, which on the
  # VM's Debian 12 kernel (6.1, no `lowerdir+`) take the classic mount(2)
  # path. All 31 overlay scenarios pass there but take ~8.5 min (~30 s each under
  # emulation), so the tier runs a representative subset; run them all with
  # `scripts/test-kernel.sh conformance --test-threads=2 overlay_xfs::`.
  # Not btrfs: loading its module benchmarks raid6 for ~20 s under emulation.
  # With no config the daemon's default pool is thin where dm-thin exists.
  echo "b default_pool $(exe default_pool) --ignored --exact builtin_default_pool_is_thin_where_dm_thin_exists" >>"$res/plan"
  # containerd 1.6 and runc run containers on a thin pool (the host tier
  # runs the overlay, vfs and btrfs ones); the guest has cgroup2 and a
  # writable /run for runc and the shims.
  echo "b containerd_e2e $(exe containerd_e2e) --ignored --exact thin" >>"$res/plan"
  echo "b conformance $(exe conformance) --test-threads=2 --exact vfs_xfs::basic vfs_ext4::basic" >>"$res/plan"
  ovl="basic transitivity remove_intermediate view_readonly layers_128 mounts_of_committed mount_spec_shapes restart_keeps_state"
  echo "b conformance-overlay $(exe conformance) --test-threads=2 --exact $(printf 'overlay_xfs::%s ' $ovl)" >>"$res/plan"
  # containerd's own snapshotter testsuite on thin (its host backends run
  # in the host tier).
  echo "b containerd_suite $(exe containerd_suite) --ignored --exact thin" >>"$res/plan"
  # The in-process backend suite (tests/backend) on thin: the Backend trait
  # driven directly, no daemon (~115 s; lane b has room beside lane a).
  echo "b backend $(exe backend) --ignored --test-threads=2 thin::" >>"$res/plan"
fi
# containerd_suite runs containerd's testsuite, a Go binary
# (scripts/build-containerd-suite.sh; scripts/test.sh exports it): the VM
# gets a copy, as it does the daemon's.
if grep -q '^[a-z] containerd_suite ' "$res/plan"; then
  suite=${LAYERD_CONTAINERD_SUITE:-$(scripts/build-containerd-suite.sh)}
  cp "$suite" "$res/layerd-suite.test"
  printf 'export LAYERD_CONTAINERD_SUITE=%q\n' "$res/layerd-suite.test" >>"$res/env"
fi
[ -s "$res/plan" ] || { echo "kernel tier: nothing to run" >&2; exit 1; }

echo "kernel tier: booting ${kernel##*/} under qemu (no KVM), timeout ${timeout_s}s"
# setsid: the VM (vng, virtme-run, qemu) gets its own process group, so the
# cleanup and the timeout end all of it and nothing else.
setsid vng -r "$kernel" --disable-kvm --memory "${LAYERD_VM_MEMORY:-4G}" --cpus 2 --rwdir="$res" \
  --exec "bash $repo/scripts/kernel-tier-vm.sh $res" </dev/null >"$res/console.log" 2>&1 &
vm=$!
start=$(date +%s)
boot= peak=0 timed_out=
while kill -0 "$vm" 2>/dev/null; do
  now=$(date +%s)
  [ -z "$boot" ] && [ -e "$res/up" ] && boot=$((now - start))
  # ps finds nothing once the VM is gone: not an error (set -e, pipefail).
  rss=$({ ps -o rss= -g "$vm" 2>/dev/null || true; } | awk '{ s += $1 } END { print s + 0 }')
  [ "$rss" -gt "$peak" ] && peak=$rss
  if [ $((now - start)) -ge "$timeout_s" ]; then
    timed_out=1
    kill -TERM -- "-$vm" 2>/dev/null || true
    sleep 5
    kill -KILL -- "-$vm" 2>/dev/null || true
    break
  fi
  sleep 1
done
wait "$vm" 2>/dev/null || true
vm=
end=$(date +%s)

status=0
while read -r _ name _; do
  echo "==> kernel tier (VM): $name"
  cat "$res/$name.out" 2>/dev/null || true
  rc=$(cat "$res/$name.rc" 2>/dev/null || echo none)
  if [ "$rc" != 0 ]; then
    echo "kernel tier: $name FAILED (exit status: $rc)"
    status=1
  fi
done <"$res/plan"
if [ -n "$timed_out" ]; then
  echo "kernel tier: TIMED OUT: the VM ran longer than ${timeout_s}s (LAYERD_VM_TIMEOUT) and was killed"
  status=1
elif [ ! -e "$res/done" ]; then
  echo "kernel tier: the VM stopped before finishing its plan (no results for the rest)"
  status=1
fi
if [ "$status" != 0 ]; then
  echo "--- VM console (tail) ---"
  tail -n 60 "$res/console.log" || true
  echo "--- VM script log (tail) ---"
  tail -n 40 "$res/vm.log" 2>/dev/null || true
fi
# Where the time went: each plan line's time in the VM, and the guest's CPU.
grep -E '^vm: (\[.*done|guest CPU)' "$res/vm.log" 2>/dev/null | sed 's/^vm:/kernel tier time:/' || true
echo "kernel tier: VM boot ${boot:-?}s, VM run $((end - start))s, tier total $((end - t0))s, VM peak RSS $((peak / 1024)) MiB"
exit "$status"
