#!/bin/sh
# Remakes tests/fixtures/store_v2/layerd.redb.gz: a store written by layerd
# on redb 2 (commit 964ae41, before the store moved to redb 4), with the
# rows of tests/fixtures/store_v2/contents.rs, for tests/store_upgrade.rs.
# Builds that commit in a temporary worktree, sharing this target dir.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
old=964ae41
tmp=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$tmp/src" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
git -C "$root" worktree add --detach "$tmp/src" "$old" >/dev/null
cp "$root/tests/fixtures/store_v2/contents.rs" "$tmp/src/tests/contents.rs"
cat > "$tmp/src/tests/make_store_v2.rs" <<'RS'
mod contents;
#[test]
fn make() {
    let out = std::path::PathBuf::from(std::env::var("OUT").unwrap());
    let store = layerd::engine::store::Store::open(&out).unwrap();
    contents::write(&store);
    contents::check(&store);
}
RS
(cd "$tmp/src" && OUT="$tmp/layerd.redb" CARGO_TARGET_DIR="$root/target" \
    cargo test --all-features --test make_store_v2 -- --exact make)
gzip -9nc "$tmp/layerd.redb" > "$root/tests/fixtures/store_v2/layerd.redb.gz"
echo "wrote $root/tests/fixtures/store_v2/layerd.redb.gz"
