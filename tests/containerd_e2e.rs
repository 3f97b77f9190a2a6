//! containerd end to end: Debian's real containerd 1.6 and runc run
//! containers on layerd pools, with layerd as containerd's proxy snapshotter
//! (TESTING.md, containerd tier).
//!
//! Each test imports a two-layer image built locally from busybox-static
//! (tests/containerd/build-image.sh: layer 2 whiteouts a file and a
//! directory and makes a directory opaque), so containerd's diff Apply
//! unpacks both layers into layerd snapshots; runs a container that reads
//! the lower layer, sees the whiteouts and writes a file, which layerd's
//! own Mount then shows in the container's layer; checks that `ctr
//! snapshots ls` and layerd's D-Bus Walk agree; restarts layerd under the
//! running containerd and runs another container; and removes the
//! container and the image, after which containerd's garbage collector has
//! removed every layer it had made in layerd.
//!
//! Host tier: overlay and vfs on xfs, btrfs (root, loop devices). The thin
//! test is `#[ignore]`d: the kernel-tier VM runs it (scripts/test-kernel.sh).

#[macro_use]
#[allow(unused_macros)]
#[path = "common/mod.rs"]
mod common;
#[path = "common/containerd.rs"]
mod containerd;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use containerd::{Containerd, SnapshotRow};

/// The proxy snapshotter's name in containerd's config.
const SNAPSHOTTER: &str = "layerd";
/// The image tests/containerd/build-image.sh names.
const IMAGE: &str = "layerd.test/e2e:latest";

/// What each container runs: the lower layer's file, the whiteouts of
/// layer 2, a file the container writes, read back.
fn script(id: &str) -> String {
    format!(
        "test -e /written.txt && echo 'written.txt: already there' || echo 'written.txt: not yet';
cat /lower.txt;
test -e /old.txt && echo 'old.txt: still there' || echo 'old.txt: gone';
test -e /gone && echo \"gone: $(ls -A /gone)\" || echo 'gone: gone';
echo \"replaced: $(ls -A /replaced)\";
cat /replaced/*;
echo 'written by {id}' >/written.txt;
cat /written.txt"
    )
}

/// What [`script`] prints on a fresh rootfs of the image.
fn expected(id: &str) -> String {
    format!(
        "written.txt: not yet
lower: from layer 1
old.txt: gone
gone: gone
replaced: new.txt
replaced: new, from layer 2
written by {id}
"
    )
}

/// Builds the image archive into the fixture directory.
fn build_image(f: &Fixture) -> PathBuf {
    let out = f.dir().join("image.tar");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/containerd/build-image.sh"
    );
    let r = Command::new("bash")
        .arg(script)
        .arg(&out)
        .arg(IMAGE)
        .output()
        .expect("run build-image.sh");
    assert!(
        r.status.success(),
        "build-image.sh failed ({}): {}",
        r.status,
        String::from_utf8_lossy(&r.stderr)
    );
    out
}

/// layerd's layers made through this containerd, as containerd names them:
/// Walk's rows under `containerd-<pool>/`, that prefix and containerd's
/// `<namespace>/<n>/` off, kinds as ctr prints them. Panics on a row under
/// the prefix that is not in this containerd's namespace.
async fn walk_rows(f: &Fixture, c: &Containerd) -> Vec<SnapshotRow> {
    let prefix = format!("containerd-{}/", f.pool_name());
    let ns = format!("{}/", c.namespace);
    let strip = |stored: &str| -> String {
        if stored.is_empty() {
            return String::new();
        }
        let Some(k) = stored.strip_prefix(&prefix) else {
            panic!("{stored:?} is outside {prefix:?}");
        };
        let Some((n, key)) = k.strip_prefix(&ns).and_then(|r| r.split_once('/')) else {
            panic!(
                "{stored:?}: not <namespace {}>/<n>/<key> under {prefix:?}",
                c.namespace
            );
        };
        assert!(
            n.bytes().all(|b| b.is_ascii_digit()),
            "{stored:?}: <n> is not a number"
        );
        key.to_string()
    };
    let mut rows: Vec<SnapshotRow> = f
        .walk(&[])
        .await
        .into_iter()
        .filter(|(i, _)| i.name.starts_with(&prefix))
        .map(|(i, pool)| {
            assert_eq!(pool, f.pool_name(), "{}: in pool {pool}", i.name);
            let mut kind = i.kind.clone();
            kind[..1].make_ascii_uppercase();
            (strip(&i.name), strip(&i.parent), kind)
        })
        .collect();
    rows.sort();
    rows
}

/// How long containerd's garbage collector may take to remove from layerd
/// what containerd's metadata no longer has.
const GC_TIMEOUT: Duration = Duration::from_secs(10);

/// `ctr snapshots ls` and layerd's Walk list the same layers; returns them.
/// containerd removes a snapshot from its metadata at once and from the
/// snapshotter in its garbage collector, scheduled after the removal (about
/// 0.1 s later here), so Walk may list more for a while: wait for that.
async fn agree(f: &Fixture, c: &Containerd, what: &str) -> Vec<SnapshotRow> {
    let until = Instant::now() + deadline(GC_TIMEOUT);
    loop {
        let ctr = c.snapshots();
        let walk = walk_rows(f, c).await;
        if ctr == walk {
            return ctr;
        }
        // Only more in Walk is the collector not done yet.
        let pending = ctr.iter().all(|r| walk.contains(r));
        if !pending || Instant::now() > until {
            panic!(
                "{what}: ctr snapshots ls and layerd's Walk differ{}\n  ctr:  {ctr:?}\n  Walk: {walk:?}",
                if pending { format!(" after {:?}", deadline(GC_TIMEOUT)) } else { String::new() }
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Walk's full key of the layer containerd calls `key`.
async fn stored_key(f: &Fixture, c: &Containerd, key: &str) -> String {
    let prefix = format!("containerd-{}/{}/", f.pool_name(), c.namespace);
    let names = f.walk_names(&[]).await;
    let hits: Vec<&String> = names
        .iter()
        .filter(|n| n.starts_with(&prefix) && n.ends_with(&format!("/{key}")))
        .collect();
    assert_eq!(hits.len(), 1, "{key:?} in Walk: {names:?}");
    hits[0].clone()
}

async fn e2e(backend: Backend) {
    if containerd::skip(backend.name()) {
        return;
    }
    let Some(mut f) = Fixture::new(backend).await else {
        return;
    };
    let c = Containerd::start(&f.dir().join("ctd"), SNAPSHOTTER, &f.containerd_socket())
        .unwrap_or_else(|e| panic!("{}: containerd: {e}", backend.name()));
    let image = build_image(&f);

    // Import: containerd's diff Apply unpacks both layers into layerd.
    let out = c.ctr_ok(&[
        "images",
        "import",
        "--snapshotter",
        SNAPSHOTTER,
        image.to_str().unwrap(),
    ]);
    assert!(
        out.contains(&format!("unpacking {IMAGE} (")) && out.trim_end().ends_with("done"),
        "import: {out}"
    );
    let layers = agree(&f, &c, "after the import").await;
    assert_eq!(layers.len(), 2, "two committed layers: {layers:?}");
    assert!(
        layers.iter().all(|(_, _, k)| k == "Committed"),
        "{layers:?}"
    );
    let (top, bottom) = match (&layers[0], &layers[1]) {
        (a, b) if b.1 == a.0 => (b.clone(), a.clone()),
        (a, b) if a.1 == b.0 => (a.clone(), b.clone()),
        _ => panic!("not a chain of two: {layers:?}"),
    };
    assert_eq!(bottom.1, "", "{layers:?}");

    // A container that stays (no --rm): its writes land in its layerd layer.
    let id1 = c.unique("c");
    let out = c
        .run(IMAGE, &id1, false, &["/bin/sh", "-c", &script(&id1)])
        .unwrap_or_else(|e| panic!("ctr run: {e}\n----- containerd log -----\n{}", c.log_tail()));
    assert_eq!(out, expected(&id1), "the first container's output");
    let rows = agree(&f, &c, "with the first container").await;
    assert!(
        rows.contains(&(id1.clone(), top.0.clone(), "Active".into())),
        "the container's layer on the image's top: {rows:?}"
    );
    let key = stored_key(&f, &c, &id1).await;
    let m = f.mount(&key, Via::Daemon).await;
    let written =
        std::fs::read_to_string(m.path.join("written.txt")).expect("written.txt in the layer");
    assert_eq!(written, format!("written by {id1}\n"));
    assert!(!m.path.join("old.txt").exists() && !m.path.join("gone").exists());
    f.unmount(m).await;

    // layerd restarts under the running containerd; containerd goes on.
    let t = Instant::now();
    f.restart().await;
    eprintln!("layerd restart: {:.1}s", t.elapsed().as_secs_f64());
    // containerd finds layerd again by itself (the kernel-tier VM's thin
    // restart outlasts gRPC's connect timeout: then containerd needs its
    // backoff of up to 3 s more).
    let back = c
        .wait_reachable(deadline(Duration::from_secs(10)))
        .unwrap_or_else(|e| {
            panic!(
                "containerd did not reach layerd again: {e}\n{}",
                c.log_tail()
            )
        });
    eprintln!(
        "containerd reached layerd again after {:.1}s",
        back.as_secs_f64()
    );
    agree(&f, &c, "after layerd's restart").await;
    let id2 = c.unique("c");
    let out = c
        .run(IMAGE, &id2, true, &["/bin/sh", "-c", &script(&id2)])
        .unwrap_or_else(|e| {
            panic!(
                "ctr run after layerd's restart: {e}\n----- containerd log -----\n{}",
                c.log_tail()
            )
        });
    assert_eq!(out, expected(&id2), "the second container's output");
    assert_eq!(agree(&f, &c, "after the --rm container").await, rows);

    // Container and image gone: containerd's GC removes layerd's layers.
    c.ctr_ok(&["containers", "rm", &id1]);
    c.ctr_ok(&["images", "rm", "--sync", IMAGE]);
    assert_eq!(agree(&f, &c, "after images rm --sync").await, vec![]);
    let prefix = format!("containerd-{}/", f.pool_name());
    let left: Vec<String> = f
        .walk_names(&[])
        .await
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "layerd still has {left:?}");

    drop(c);
    f.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay() {
    e2e(Backend::OverlayXfs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vfs() {
    e2e(Backend::VfsXfs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs() {
    e2e(Backend::Btrfs).await;
}

/// dm-thin: in the kernel-tier VM (scripts/test-kernel.sh runs it with
/// `--ignored --exact thin`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kernel tier: needs device-mapper (scripts/test-kernel.sh)"]
async fn thin() {
    require_kernel_tier("containerd_e2e::thin");
    e2e(Backend::Thin).await;
}
