//! Issue 16, item 16: on btrfs, Usage counts data still in the page cache.
//! A file written into a layer's mount and not synced has no extents yet
//! (delayed allocation); Usage must flush the layer before measuring, as
//! overlay and vfs (which count st_blocks, delalloc included) already do.
//!
//! Host tier: needs root (loop devices, mount). Takes seconds.

#[macro_use]
#[allow(unused_macros)]
#[path = "common/mod.rs"]
mod common;

use common::*;

const MIB: u64 = 1 << 20;

/// 1 MiB of a non-zero pattern, written without fsync.
fn unsynced_write(path: &std::path::Path) {
    let data: Vec<u8> = (0..MIB as u32).map(|i| (i % 251 + 1) as u8).collect();
    std::fs::write(path, data).expect("write 1 MiB");
}

async fn usage_counts_unsynced_data(backend: Backend) {
    let Some(f) = Fixture::new(backend).await else {
        return;
    };
    let name = backend.name();
    // A fresh parentless layer, and a child (a snapshot: its own changes).
    f.prepare("a", "").await;
    let m = f.mount("a", Via::Daemon).await;
    unsynced_write(&m.path.join("one"));
    f.unmount(m).await;
    let (bytes, inodes) = f.usage("a").await;
    assert!(
        bytes >= MIB,
        "{name}: Usage of a fresh layer with 1 MiB written (not synced) is {bytes} bytes"
    );
    assert!(inodes >= 1, "{name}: inodes {inodes}");
    f.commit("c", "a").await;
    f.prepare("child", "c").await;
    let m = f.mount("child", Via::Daemon).await;
    unsynced_write(&m.path.join("two"));
    f.unmount(m).await;
    let (bytes, _) = f.usage("child").await;
    assert!(
        (MIB..2 * MIB).contains(&bytes),
        "{name}: Usage of a child with 1 MiB of its own written (not synced) is {bytes} bytes"
    );
    f.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_usage_counts_data_in_the_page_cache() {
    usage_counts_unsynced_data(Backend::Btrfs).await;
}

/// The same on overlay, which already counted it (a guard against a
/// regression of the other drivers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_usage_counts_data_in_the_page_cache() {
    usage_counts_unsynced_data(Backend::OverlayXfs).await;
}
