//! btrfs ioctls: subvolumes and snapshots, the read-only flag, space and
//! device information, balance, and a tree search that measures
//! what a subvolume wrote since it was snapshotted. No `btrfs` process.
//!
//! Structures are `#[repr(C)]` copies of `linux/btrfs.h` (sizes asserted at
//! compile time); on-disk items read by the tree search are parsed from
//! their little-endian byte layout in `linux/btrfs_tree.h`. Every function
//! takes a path, opens it `O_RDONLY|O_DIRECTORY` (or as noted) and returns
//! the raw `errno` as an `io::Error`, so callers can tell `ENOSPC`,
//! `EBUSY`, `ENOENT` apart and add their own context.
//!
//! Kernel facts this relies on (Linux 6.x, fs/btrfs/ioctl.c; checked on
//! this project's 6.18 hosts by the tests below):
//!
//! * A subvolume's root directory has inode number 256
//!   (`BTRFS_FIRST_FREE_OBJECTID`); that is how [`is_subvolume`] knows one.
//! * `BTRFS_IOC_SUBVOL_CREATE` does not commit the transaction (the
//!   superblock generation does not move; measured on 6.18): a crash within
//!   the commit interval loses the new subvolume. Snapshot creation does
//!   commit. [`commit_transaction`] makes creation durable where that
//!   matters. `BTRFS_IOC_SUBVOL_SETFLAGS` commits too (measured the same
//!   way), so a read-only flag, once set, survives a crash.
//! * `BTRFS_IOC_SNAP_CREATE_V2` takes `BTRFS_SUBVOL_RDONLY` to make the
//!   snapshot read-only in the same transaction (containerd's btrfs
//!   snapshotter makes its views that way).
//! * Deleting a read-only subvolume needs no flag change for root
//!   (`CAP_SYS_ADMIN`); `EROFS` is only for unprivileged deletion. But a
//!   read-only subvolume cannot be *moved to another directory*: the VFS
//!   needs write access to the moved directory to rewrite its `..`, and
//!   btrfs answers `EROFS`. Clear the flag first ([`set_readonly`]).
//! * Deleting a subvolume that contains other subvolumes fails with
//!   `ENOTEMPTY`; [`delete_subvolume_recursive`] deletes the nested ones
//!   first, found through `ROOT_REF` items of the root tree and deleted by
//!   id (`BTRFS_IOC_SNAP_DESTROY_V2` with `BTRFS_SUBVOL_SPEC_BY_ID`).
//! * A deleted subvolume's space comes back asynchronously: the cleaner
//!   thread drops its tree after the deleting transaction commits, and it
//!   runs when the transaction thread wakes it (every commit interval, or
//!   at once after [`sync`]); the freed extents are usable after the
//!   commit that follows.
//! * `BTRFS_IOC_BALANCE_V2` blocks until the balance ends; another thread
//!   reads `BTRFS_IOC_BALANCE_PROGRESS` (`ENOTCONN` when none runs) and may
//!   cancel with `BTRFS_IOC_BALANCE_CTL(BTRFS_BALANCE_CTL_CANCEL)`, after
//!   which the balancing call fails with `ECANCELED`. When another
//!   exclusive operation (device add/remove/replace, resize) runs, the
//!   kernel returns the positive `BTRFS_ERROR_DEV_EXCL_RUN_IN_PROGRESS`
//!   instead of -1; [`balance_start`] turns that into `EBUSY`.
//! * FITRIM (in `crate::sys::trim`) on btrfs trims free space inside
//!   allocated chunks and the unallocated space of every device; it cannot
//!   be interrupted.
//! * `BTRFS_IOC_TREE_SEARCH_V2` (root only) reads any tree; a
//!   `min_transid` skips every tree block not written since that
//!   transaction, which makes [`changed_since`] cost what changed, not
//!   what the subvolume holds (`btrfs subvolume find-new` works the same
//!   way).

mod abi;
mod balance;
mod cleaner;
mod quota;
mod search;
mod space;
mod subvol;
#[cfg(test)]
pub(crate) mod tests;

use abi::*;
pub use abi::{
    BalanceProgress, BLOCK_GROUP_DATA, BLOCK_GROUP_METADATA, BLOCK_GROUP_SYSTEM,
    FIRST_FREE_OBJECTID, FS_TREE_OBJECTID, SPACE_INFO_GLOBAL_RSV, SUBVOL_RDONLY,
};
pub use balance::*;
pub use cleaner::{deleted_subvolumes, reclaim_deleted, wait_dropped};
pub use quota::*;
pub use search::*;
pub use space::*;
pub use subvol::*;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

fn open_dir(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(path)
}

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// A subvolume name: one path component, 1–255 bytes, not `.`/`..`.
fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty()
        || name.len() > VOL_NAME_MAX
        || name.contains('/')
        || name.contains('\0')
        || name == "."
        || name == ".."
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid subvolume name"),
        ));
    }
    Ok(())
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}
