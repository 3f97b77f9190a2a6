#!/usr/bin/env bash
# Builds containerd's snapshotter testsuite against layerd
# (tests/containerd/suite/layerd_suite_test.go) into
# target/containerd-suite/layerd-suite.test and prints that path on stdout;
# tests/containerd_suite.rs runs it. Offline, in GOPATH mode, against
# Debian's containerd 1.6.20 source (golang-github-containerd-containerd-dev
# in /usr/share/gocode; scripts/install-deps.sh installs it).
#
# Cached: rebuilt only when the .go file, Go or that source package changes
# (their fingerprint is kept in target/containerd-suite/stamp).
set -euo pipefail
cd "$(dirname "$0")/.."
src=tests/containerd/suite/layerd_suite_test.go
out=$PWD/target/containerd-suite
bin=$out/layerd-suite.test
command -v go >/dev/null || { echo "build-containerd-suite: go not found: run scripts/install-deps.sh" >&2; exit 1; }
[ -d /usr/share/gocode/src/github.com/containerd/containerd/snapshots/testsuite ] ||
  { echo "build-containerd-suite: containerd's source is missing: run scripts/install-deps.sh" >&2; exit 1; }

stamp="$(sha256sum "$src" | cut -d ' ' -f 1) $(go version) containerd-dev $(dpkg-query -W -f '${Version}' golang-github-containerd-containerd-dev 2>/dev/null || echo unknown)"
if [ -x "$bin" ] && [ "$(cat "$out/stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$bin"
  exit 0
fi

# GOPATH mode wants the package under <GOPATH>/src/<import path>.
pkg=$out/gopath/src/layerd-suite
rm -rf "$pkg" "$out/stamp"
mkdir -p "$pkg"
cp "$src" "$pkg/"
t0=$(date +%s)
# -p 1: the build machines have 2 cores, shared with cargo.
(cd "$pkg" && GO111MODULE=off GOPROXY=off GOFLAGS= GOPATH="$out/gopath:/usr/share/gocode" \
  GOCACHE="$out/gocache" go test -c -p 1 -o "$bin" .) >&2
echo "$stamp" >"$out/stamp"
echo "build-containerd-suite: built $bin in $(($(date +%s) - t0))s" >&2
echo "$bin"
