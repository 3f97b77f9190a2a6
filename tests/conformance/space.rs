//! Space scenarios: Usage counts a layer alone, Cleanup gives space back.

use std::time::{Duration, Instant};

use crate::common::*;

/// Usage is within [want - 64 KiB, want + 512 KiB]: directories and
/// metadata blocks cost a little, nothing may count a parent's data.
fn assert_about(what: &str, bytes: u64, want: u64) {
    let lo = want.saturating_sub(64 << 10);
    let hi = want + (512 << 10);
    assert!(
        (lo..=hi).contains(&bytes),
        "{what}: Usage says {bytes} bytes ({:.2} MiB), expected about {:.2} MiB",
        bytes as f64 / MIB as f64,
        want as f64 / MIB as f64
    );
}

async fn write_in(f: &Fixture, key: &str, file: &str, len: u64, seed: u8) {
    let m = f.mount(key, Via::Daemon).await;
    let r = write_pattern(&m.path.join(file), len, seed);
    f.unmount(m).await;
    r.unwrap_or_else(|e| panic!("writing {len} bytes into {key:?}: {e}"));
}

/// Usage of a layer excludes its parents: 1 MiB in the parent, 2 MiB in the
/// child → the child uses about 2 MiB, whatever the driver copies.
pub async fn usage_excludes_parent(f: &mut Fixture) {
    f.prepare("parent-a", "").await;
    write_in(f, "parent-a", "one", MIB, 1).await;
    let (b, i) = f.usage("parent-a").await;
    assert_about("active parent", b, MIB);
    assert!((1..=4).contains(&i), "active parent: {i} inodes");
    f.commit("parent", "parent-a").await;
    let (b, i) = f.usage("parent").await;
    assert_about("committed parent", b, MIB);
    assert!((1..=4).contains(&i), "committed parent: {i} inodes");

    f.prepare("empty-child", "parent").await;
    let (b, i) = f.usage("empty-child").await;
    assert!(
        b < 128 << 10,
        "an empty child uses {b} bytes: its parent's data is counted"
    );
    assert!(
        i <= 2,
        "an empty child has {i} inodes: its parent's are counted"
    );

    f.prepare("child", "parent").await;
    write_in(f, "child", "two", 2 * MIB, 2).await;
    let (b, i) = f.usage("child").await;
    assert_about("active child", b, 2 * MIB);
    assert!((1..=4).contains(&i), "active child: {i} inodes");
    f.commit("child-c", "child").await;
    let (b, _) = f.usage("child-c").await;
    assert_about("committed child", b, 2 * MIB);

    f.view("v", "child-c").await;
    let (b, _) = f.usage("v").await;
    assert!(
        b < 128 << 10,
        "a view uses {b} bytes: its parents' data is counted"
    );
}

/// After Remove, Cleanup reclaims the removed layers' space now and says how
/// much; the file system gets it back; a second Cleanup has nothing to do.
pub async fn cleanup_returns_bytes(f: &mut Fixture) {
    let base = f.fs().used_bytes();
    f.prepare("big-a", "").await;
    write_in(f, "big-a", "data", 8 * MIB, 3).await;
    f.commit("big", "big-a").await;
    f.prepare("big-child", "big").await;
    write_in(f, "big-child", "more", 4 * MIB, 4).await;
    let full = f.fs().used_bytes();
    assert!(
        full >= base + 11 * MIB,
        "12 MiB written but the fs grew by {} bytes",
        full - base
    );

    f.remove("big-child").await;
    f.remove("big").await;
    let freed = must(f.mgr.cleanup().await, "Cleanup");
    assert!(
        freed >= 11 * MIB,
        "Cleanup after removing 12 MiB of layers returned {freed} bytes"
    );

    // The file system gets the space back (xfs may free in the background).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let used = f.fs().used_bytes();
        if used <= base + MIB {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after Cleanup the fs still uses {} bytes more than before the layers",
            used - base
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        must(f.mgr.cleanup().await, "second Cleanup"),
        0,
        "a second Cleanup found more to reclaim"
    );
    assert!(f.walk(&[]).await.is_empty());
}
