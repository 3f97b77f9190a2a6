#!/usr/bin/env bash
# Builds a two-layer OCI image archive from busybox-static, with no registry,
# for tests/containerd_e2e.rs: `ctr images import` takes it, and containerd's
# diff Apply unpacks its layers into layerd's snapshots, whiteouts included.
#
#   tests/containerd/build-image.sh OUT.tar [IMAGE-NAME]
#
# Layer 1: /bin/busybox with sh, cat, ls, echo, test and [ as symlinks;
#          /lower.txt, /old.txt, /gone/{a.txt,sub/b.txt}, /replaced/old.txt.
# Layer 2: deletes /old.txt and /gone (whiteouts .wh.old.txt, .wh.gone) and
#          replaces /replaced with an opaque directory (.wh..wh..opq) holding
#          only new.txt.
# Uncompressed layers, so each layer's digest is its diff_id. Same input,
# same bytes: names sorted, owners 0:0, one fixed mtime.
set -euo pipefail
out=${1:?usage: build-image.sh OUT.tar [IMAGE-NAME]}
name=${2:-layerd.test/e2e:latest}
busybox=${BUSYBOX:-/bin/busybox}
file "$busybox" 2>/dev/null | grep -q 'statically linked' ||
  { echo "build-image.sh: $busybox is not a static busybox (apt-get install -y busybox-static)" >&2; exit 1; }
case $(uname -m) in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) arch=$(uname -m) ;;
esac

w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
umask 022
mkdir -p "$w/l1/bin" "$w/l1/gone/sub" "$w/l1/replaced" "$w/l2/replaced" "$w/oci/blobs/sha256"
cp "$busybox" "$w/l1/bin/busybox"
for t in sh cat ls echo test [; do ln -s busybox "$w/l1/bin/$t"; done
echo 'lower: from layer 1' >"$w/l1/lower.txt"
echo 'old: from layer 1' >"$w/l1/old.txt"
echo 'gone: a' >"$w/l1/gone/a.txt"
echo 'gone: b' >"$w/l1/gone/sub/b.txt"
echo 'replaced: old, from layer 1' >"$w/l1/replaced/old.txt"
: >"$w/l2/.wh.old.txt"
: >"$w/l2/.wh.gone"
: >"$w/l2/replaced/.wh..wh..opq"
echo 'replaced: new, from layer 2' >"$w/l2/replaced/new.txt"

# A blob into the layout; prints "<digest> <size>".
blob() {
  local d s
  d=$(sha256sum "$1" | cut -d ' ' -f 1)
  s=$(stat -c %s "$1")
  mv "$1" "$w/oci/blobs/sha256/$d"
  echo "sha256:$d $s"
}
layer() {
  # Top-level names only (no "./" entry); tar recurses and sorts.
  (cd "$w/$1" && find . -mindepth 1 -maxdepth 1 -printf '%P\n' | LC_ALL=C sort |
    tar --format=gnu --sort=name --owner=0 --group=0 --numeric-owner \
      --mtime='2024-01-01 00:00:00Z' -cf "$w/$1.tar" -T -)
  blob "$w/$1.tar"
}
# x=$(…) keeps a failure's status (set -e); read <<<"$(…)" would not.
x=$(layer l1) && read -r l1 l1size <<<"$x"
x=$(layer l2) && read -r l2 l2size <<<"$x"

printf '%s' "{\"architecture\":\"$arch\",\"os\":\"linux\",\
\"config\":{\"Env\":[\"PATH=/bin\"],\"Cmd\":[\"/bin/sh\"]},\
\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"$l1\",\"$l2\"]},\
\"history\":[{\"created\":\"2024-01-01T00:00:00Z\",\"created_by\":\"layer 1: busybox and files\"},\
{\"created\":\"2024-01-01T00:00:00Z\",\"created_by\":\"layer 2: whiteouts and an opaque dir\"}]}" >"$w/config"
x=$(blob "$w/config") && read -r cfg cfgsize <<<"$x"

printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"$cfg\",\"size\":$cfgsize},\
\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"$l1\",\"size\":$l1size},\
{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"$l2\",\"size\":$l2size}]}" >"$w/manifest"
x=$(blob "$w/manifest") && read -r mf mfsize <<<"$x"

printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\
\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"$mf\",\"size\":$mfsize,\
\"platform\":{\"architecture\":\"$arch\",\"os\":\"linux\"},\
\"annotations\":{\"io.containerd.image.name\":\"$name\",\"org.opencontainers.image.ref.name\":\"${name##*:}\"}}]}" >"$w/oci/index.json"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$w/oci/oci-layout"

(cd "$w/oci" && tar --format=gnu --sort=name --owner=0 --group=0 --numeric-owner \
  --mtime='2024-01-01 00:00:00Z' -cf "$w/image.tar" oci-layout index.json blobs)
mv "$w/image.tar" "$out"
echo "$name $mf layers $l1 $l2"
