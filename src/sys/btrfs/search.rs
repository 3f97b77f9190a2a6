//! Tree search: the changed extents of a subvolume since a transaction.

use super::*;

// ---------------------------------------------------------------------------
// Trim
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Tree search and "what changed since"
// ---------------------------------------------------------------------------

/// `struct btrfs_ioctl_search_header` of one returned item.
#[derive(Debug, Clone, Copy)]
pub(super) struct ItemHeader {
    pub(super) objectid: u64,
    pub(super) offset: u64,
    pub(super) item_type: u32,
}

/// Result buffer of one search call.
pub(super) const SEARCH_BUF: usize = 64 << 10;

/// Runs `BTRFS_IOC_TREE_SEARCH_V2` over `key`'s range, calling `f` with
/// each item's header and bytes, in key order.
pub(super) fn tree_search(
    dir: &File,
    mut key: SearchKey,
    mut f: impl FnMut(&ItemHeader, &[u8]),
) -> io::Result<()> {
    const HEAD: usize = std::mem::size_of::<SearchArgsV2>();
    let mut buf = vec![0u64; (HEAD + SEARCH_BUF) / 8];
    loop {
        key.nr_items = u32::MAX;
        let args = SearchArgsV2 {
            key,
            buf_size: SEARCH_BUF as u64,
        };
        // SAFETY: `buf` is u64-aligned and HEAD + SEARCH_BUF bytes long; the
        // header is written at its start.
        unsafe { std::ptr::write(buf.as_mut_ptr() as *mut SearchArgsV2, args) };
        // SAFETY: `buf` holds a `btrfs_ioctl_search_args_v2` whose buf_size
        // matches the bytes that follow the header; the kernel writes at most
        // that many item bytes and updates `key.nr_items`.
        unsafe { ioc_tree_search_v2(dir.as_raw_fd(), buf.as_mut_ptr() as *mut SearchArgsV2) }
            .map_err(errno)?;
        // SAFETY: the header is still at the start of `buf`.
        let out = unsafe { std::ptr::read(buf.as_ptr() as *const SearchArgsV2) };
        let n = out.key.nr_items;
        if n == 0 {
            return Ok(());
        }
        // SAFETY: viewing the u64 buffer as bytes; same allocation and length.
        let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr() as *const u8, buf.len() * 8) };
        let items = &bytes[HEAD..];
        let mut pos = 0usize;
        let mut last = None;
        for _ in 0..n {
            if pos + SEARCH_HEADER_LEN > items.len() {
                break;
            }
            let h = &items[pos..pos + SEARCH_HEADER_LEN];
            let header = ItemHeader {
                objectid: le64(h, 8),
                offset: le64(h, 16),
                item_type: le32(h, 24),
            };
            let len = le32(h, 28) as usize;
            pos += SEARCH_HEADER_LEN;
            let end = (pos + len).min(items.len());
            f(&header, &items[pos..end]);
            pos = end;
            last = Some(header);
        }
        let Some(last) = last else {
            return Ok(());
        };
        // Continue after the last key (objectid, type, offset).
        let (mut oid, mut ty, mut off) = (last.objectid, last.item_type, last.offset);
        if off < u64::MAX {
            off += 1;
        } else if ty < 255 {
            ty += 1;
            off = 0;
        } else if oid < u64::MAX {
            oid += 1;
            ty = 0;
            off = 0;
        } else {
            return Ok(());
        }
        if oid > key.max_objectid {
            return Ok(());
        }
        key.min_objectid = oid;
        key.min_type = ty;
        key.min_offset = off;
        // The compound minimum key now carries on from the last item; the
        // type and offset bounds apply to the whole key, not per field.
        if oid != last.objectid {
            key.min_type = 0;
            key.min_offset = 0;
        }
    }
}

pub(super) fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
        .unwrap_or(0)
}

pub(super) fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap_or([0; 4])))
        .unwrap_or(0)
}

/// What a subvolume wrote: on-disk data bytes and changed inodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changed {
    pub bytes: u64,
    pub inodes: u64,
}

/// A point in a subvolume's life from which [`changed_since`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Since {
    /// Transaction id: items written in it or before are not counted.
    pub transid: u64,
    /// Inodes whose ctime is before this (seconds, ns) are not counted: an
    /// inode item rewritten only for an atime update is not a change.
    pub time: (u64, u32),
}

/// Data and inodes the subvolume `subvol` (its id `tree_id`) wrote after
/// `since`, or all of it with `None`, read from its tree with
/// `BTRFS_IOC_TREE_SEARCH_V2` (root only):
///
/// * bytes: `disk_num_bytes` of each distinct disk extent referenced by a
///   file extent item whose generation is newer than `since.transid`,
///   plus the size of newer inline extents. Extents a snapshot inherited
///   keep their old generation and are not counted, even where the file
///   was partly rewritten (only the new extents are); extents reflinked
///   within the subvolume count once. Dirty data not yet written back has
///   no extent yet and is not counted until it is.
/// * inodes: inodes with new data, and inodes whose item was last written
///   after `since` with a ctime not older than `since.time` (reading a
///   file, which may rewrite its item for atime, does not count it). A
///   hard-linked inode counts once. btrfs keeps updates of existing inode
///   items in memory ("delayed inodes") until the transaction commits
///   (30 s by default, or [`commit_transaction`]): until then a chmod-only
///   change, or a directory's new entries, are not seen; new inodes and
///   new data are. With `None` every inode counts, the root included.
///
/// Nested subvolumes are other trees and are not counted.
pub fn changed_since(subvol: &Path, tree_id: u64, since: Option<Since>) -> io::Result<Changed> {
    let d = open_dir(subvol)?;
    let base = since.map_or(0, |s| s.transid);
    let key = SearchKey {
        tree_id,
        min_objectid: FIRST_FREE_OBJECTID,
        max_objectid: LAST_FREE_OBJECTID,
        min_type: 0,
        max_type: u32::from(u8::MAX),
        min_offset: 0,
        max_offset: u64::MAX,
        // Tree blocks not written since `base` hold nothing newer.
        min_transid: base.saturating_add(1),
        max_transid: u64::MAX,
        ..Default::default()
    };
    let mut out = Changed::default();
    let mut extents = std::collections::HashSet::new();
    // Items come in key order, all of one inode together, its inode item
    // first: remembering the last inode counted avoids counting it twice.
    let mut counted = None;
    tree_search(&d, key, |h, item| match h.item_type {
        INODE_ITEM_KEY => {
            let transid = le64(item, 8);
            let ctime = (le64(item, 124), le32(item, 132));
            let newer = match since {
                None => true,
                Some(s) => transid > s.transid && ctime >= s.time,
            };
            if newer && counted != Some(h.objectid) {
                out.inodes += 1;
                counted = Some(h.objectid);
            }
        }
        EXTENT_DATA_KEY => {
            if item.len() < 21 || le64(item, 0) <= base {
                return;
            }
            // New data means a changed inode, even while its updated inode
            // item still waits in memory (btrfs "delayed inodes").
            if counted != Some(h.objectid) {
                out.inodes += 1;
                counted = Some(h.objectid);
            }
            match item[20] {
                // Inline: the data follows the 21-byte header.
                0 => out.bytes += (item.len() - 21) as u64,
                // Regular or preallocated; disk_bytenr 0 is a hole.
                _ => {
                    let bytenr = le64(item, 21);
                    if bytenr != 0 && extents.insert(bytenr) {
                        out.bytes += le64(item, 29);
                    }
                }
            }
        }
        _ => {}
    })?;
    Ok(out)
}

/// What the subvolume at `path` holds of its own: for a snapshot,
/// [`changed_since`] its creation; otherwise everything in it.
pub fn exclusive_usage(path: &Path) -> io::Result<Changed> {
    let info = subvolume_info(path)?;
    let since = info.is_snapshot().then_some(Since {
        transid: info.otransid,
        time: info.otime,
    });
    changed_since(path, info.id, since)
}
