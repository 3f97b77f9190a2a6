//! Quotas and qgroups: enable, limits, usage.

use super::*;

// ---------------------------------------------------------------------------
// Quotas (qgroups)
// ---------------------------------------------------------------------------

/// Whether quotas are enabled on the file system holding `path`: the quota
/// tree exists and holds its status item. Needs root (tree search).
pub fn quota_enabled(path: &Path) -> io::Result<bool> {
    let d = open_dir(path)?;
    let key = SearchKey {
        tree_id: QUOTA_TREE_OBJECTID,
        min_objectid: 0,
        max_objectid: 0,
        min_type: QGROUP_STATUS_KEY,
        max_type: QGROUP_STATUS_KEY,
        min_offset: 0,
        max_offset: u64::MAX,
        min_transid: 0,
        max_transid: u64::MAX,
        ..Default::default()
    };
    let mut found = false;
    match tree_search(&d, key, |h, _| found |= h.item_type == QGROUP_STATUS_KEY) {
        // No quota tree: quotas were never enabled (or were disabled).
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        r => r.map(|()| found),
    }
}

/// Enables quotas (full qgroup accounting) on the file system holding
/// `path` (`BTRFS_IOC_QUOTA_CTL`, `BTRFS_QUOTA_CTL_ENABLE`). The kernel
/// creates a level-0 qgroup for every existing subvolume, starts a rescan
/// of existing data, and from then on gives each new subvolume its own
/// qgroup `0/<subvolume id>`. Enabling twice is harmless.
pub fn quota_enable(path: &Path) -> io::Result<()> {
    let d = open_dir(path)?;
    let mut args = QuotaCtlArgs {
        cmd: QUOTA_CTL_ENABLE,
        status: 0,
    };
    // SAFETY: a complete `btrfs_ioctl_quota_ctl_args`; the kernel reads
    // `cmd` and may write `status`.
    unsafe { ioc_quota_ctl(d.as_raw_fd(), &mut args) }.map_err(errno)?;
    Ok(())
}

/// Limits the bytes exclusive to the subvolume whose root is `subvol`
/// (its level-0 qgroup, `BTRFS_IOC_QGROUP_LIMIT` with
/// `BTRFS_QGROUP_LIMIT_MAX_EXCL`). Writes that would pass it fail with
/// `EDQUOT`. Quotas must be enabled (`ENOTCONN` otherwise).
pub fn qgroup_limit_exclusive(subvol: &Path, bytes: u64) -> io::Result<()> {
    let d = open_dir(subvol)?;
    let id = subvolume_id(subvol)?;
    let mut args = QgroupLimitArgs {
        // Level 0: the qgroup id is the subvolume id.
        qgroupid: id,
        flags: QGROUP_LIMIT_MAX_EXCL,
        max_rfer: 0,
        max_excl: bytes,
        rsv_rfer: 0,
        rsv_excl: 0,
    };
    // SAFETY: a complete `btrfs_ioctl_qgroup_limit_args`; the kernel only
    // reads it (the `_IOR` direction in linux/btrfs.h is historical).
    unsafe { ioc_qgroup_limit(d.as_raw_fd(), &mut args) }.map_err(errno)?;
    Ok(())
}

/// Referenced and exclusive bytes of qgroup `0/<subvolume id>` as the quota
/// tree holds them (updated at transaction commits; `None` if the qgroup
/// does not exist).
pub fn qgroup_info(path: &Path, subvolume_id: u64) -> io::Result<Option<(u64, u64)>> {
    let d = open_dir(path)?;
    let key = SearchKey {
        tree_id: QUOTA_TREE_OBJECTID,
        min_objectid: 0,
        max_objectid: 0,
        min_type: QGROUP_INFO_KEY,
        max_type: QGROUP_INFO_KEY,
        min_offset: subvolume_id,
        max_offset: subvolume_id,
        min_transid: 0,
        max_transid: u64::MAX,
        ..Default::default()
    };
    let mut out = None;
    // `struct btrfs_qgroup_info_item`: generation, rfer, rfer_cmpr, excl,
    // excl_cmpr (little-endian u64s).
    tree_search(&d, key, |h, b| {
        if h.item_type == QGROUP_INFO_KEY && h.offset == subvolume_id {
            out = Some((le64(b, 8), le64(b, 24)));
        }
    })?;
    Ok(out)
}
