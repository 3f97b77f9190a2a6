//! Waiting for the btrfs cleaner: what `btrfs subvolume sync` does.
//!
//! Deleting a subvolume (`BTRFS_IOC_SNAP_DESTROY_V2`) only unlinks it and
//! queues its tree: the kernel's cleaner thread drops the tree later, one
//! transaction at a time, and the extents it frees are pinned until the
//! transaction after that commits. Until then `statfs` and the space
//! ioctls still count them as used, for up to a commit interval (30 s) or
//! longer. So a caller that wants the space now must
//!
//! 1. commit the deletions and wake the cleaner (`BTRFS_IOC_SYNC`),
//! 2. wait until every deleted subvolume's tree is gone, and
//! 3. commit once more, which unpins what the drop freed.
//!
//! Step 2 is done as btrfs-progs did before Linux 6.8: a deleted, not yet
//! dropped subvolume has an `ORPHAN_ITEM` (objectid
//! `BTRFS_ORPHAN_OBJECTID`, offset = subvolume id) in the root tree, and
//! its `ROOT_ITEM` disappears when the cleaner has dropped it; both are
//! read with `BTRFS_IOC_TREE_SEARCH_V2` (root only). Linux 6.8 added
//! `BTRFS_IOC_SUBVOL_SYNC_WAIT`, which waits in the kernel, but it sleeps
//! a whole second between its checks and does not exist on Debian 12's
//! 6.1, so the tree search (polled every few milliseconds) serves every
//! kernel the same way.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{open_dir, tree_search, SearchKey, ROOT_TREE_OBJECTID};

/// `BTRFS_ORPHAN_OBJECTID` (-5 as u64).
const ORPHAN_OBJECTID: u64 = (-5i64) as u64;
/// `BTRFS_ORPHAN_ITEM_KEY`.
const ORPHAN_ITEM_KEY: u32 = 48;
/// `BTRFS_ROOT_ITEM_KEY`.
const ROOT_ITEM_KEY: u32 = 132;

/// First and longest pause between two looks at the root tree.
const POLL_FIRST: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(100);

fn search(objectid: u64, item_type: u32) -> SearchKey {
    SearchKey {
        tree_id: ROOT_TREE_OBJECTID,
        min_objectid: objectid,
        max_objectid: objectid,
        min_type: item_type,
        max_type: item_type,
        min_offset: 0,
        max_offset: u64::MAX,
        min_transid: 0,
        max_transid: u64::MAX,
        ..Default::default()
    }
}

/// Ids of the deleted subvolumes of the file system holding `path` whose
/// trees the cleaner has not dropped yet. Needs root.
pub fn deleted_subvolumes(path: &Path) -> io::Result<Vec<u64>> {
    let d = open_dir(path)?;
    let mut out = Vec::new();
    tree_search(&d, search(ORPHAN_OBJECTID, ORPHAN_ITEM_KEY), |h, _| {
        if h.objectid == ORPHAN_OBJECTID && h.item_type == ORPHAN_ITEM_KEY {
            out.push(h.offset);
        }
    })?;
    Ok(out)
}

/// Waits until the subvolumes `ids` of the file system holding `path` have
/// no root item any more (the cleaner dropped them), at most `timeout`;
/// returns the ids still there when it gave up (empty: all gone).
pub fn wait_dropped(path: &Path, ids: &[u64], timeout: Duration) -> io::Result<Vec<u64>> {
    let d = open_dir(path)?;
    let deadline = Instant::now() + timeout;
    let mut left = ids.to_vec();
    let mut pause = POLL_FIRST;
    loop {
        let mut still = Vec::with_capacity(left.len());
        for &id in &left {
            let mut found = false;
            tree_search(&d, search(id, ROOT_ITEM_KEY), |h, _| {
                found |= h.objectid == id && h.item_type == ROOT_ITEM_KEY;
            })?;
            if found {
                still.push(id);
            }
        }
        left = still;
        if left.is_empty() || Instant::now() >= deadline {
            return Ok(left);
        }
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(POLL_MAX);
    }
}

/// Makes the space of deleted subvolumes usable: commits the deletions,
/// wakes the cleaner, waits (at most `timeout`) until it has dropped every
/// deleted subvolume, and commits again so that the freed extents are
/// unpinned. Returns the ids not dropped within `timeout`.
pub fn reclaim_deleted(path: &Path, timeout: Duration) -> io::Result<Vec<u64>> {
    super::sync(path)?;
    let pending = deleted_subvolumes(path)?;
    let left = if pending.is_empty() {
        pending
    } else {
        wait_dropped(path, &pending, timeout)?
    };
    super::commit_transaction(path)?;
    Ok(left)
}
