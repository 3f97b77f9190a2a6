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

mod cleaner;
pub use cleaner::{deleted_subvolumes, reclaim_deleted, wait_dropped};

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Inode number of every subvolume's root directory, and the first object
/// id of a regular inode.
pub const FIRST_FREE_OBJECTID: u64 = 256;
/// Last object id of a regular inode (`-256ULL`).
const LAST_FREE_OBJECTID: u64 = (-256i64) as u64;
/// The root tree (`BTRFS_ROOT_TREE_OBJECTID`).
const ROOT_TREE_OBJECTID: u64 = 1;
/// The top-level subvolume (`BTRFS_FS_TREE_OBJECTID`).
pub const FS_TREE_OBJECTID: u64 = 5;

/// `BTRFS_SUBVOL_RDONLY`: the subvolume flag (GETFLAGS/SETFLAGS) and the
/// snapshot-creation flag.
pub const SUBVOL_RDONLY: u64 = 1 << 1;
const SUBVOL_SPEC_BY_ID: u64 = 1 << 4;

/// `BTRFS_VOL_NAME_MAX`: longest subvolume name.
const VOL_NAME_MAX: usize = 255;

// Item types (linux/btrfs_tree.h).
const INODE_ITEM_KEY: u32 = 1;
const EXTENT_DATA_KEY: u32 = 108;
const ROOT_REF_KEY: u32 = 156;
const QGROUP_STATUS_KEY: u32 = 240;
const QGROUP_INFO_KEY: u32 = 242;
/// `BTRFS_QUOTA_TREE_OBJECTID`.
const QUOTA_TREE_OBJECTID: u64 = 8;
/// `BTRFS_QUOTA_CTL_ENABLE`.
const QUOTA_CTL_ENABLE: u64 = 1;
/// `BTRFS_QGROUP_LIMIT_MAX_EXCL`.
const QGROUP_LIMIT_MAX_EXCL: u64 = 1 << 1;

// Block group / space info flags.
pub const BLOCK_GROUP_DATA: u64 = 1 << 0;
pub const BLOCK_GROUP_SYSTEM: u64 = 1 << 1;
pub const BLOCK_GROUP_METADATA: u64 = 1 << 2;
const BLOCK_GROUP_RAID1: u64 = 1 << 4;
const BLOCK_GROUP_DUP: u64 = 1 << 5;
const BLOCK_GROUP_RAID10: u64 = 1 << 6;
const BLOCK_GROUP_RAID1C3: u64 = 1 << 9;
const BLOCK_GROUP_RAID1C4: u64 = 1 << 10;
pub const SPACE_INFO_GLOBAL_RSV: u64 = 1 << 49;

// Balance flags.
const BALANCE_DATA: u64 = 1 << 0;
const BALANCE_SYSTEM: u64 = 1 << 1;
const BALANCE_METADATA: u64 = 1 << 2;
const BALANCE_ARGS_USAGE: u64 = 1 << 1;
const BALANCE_CTL_CANCEL: libc::c_int = 2;
/// `BTRFS_ERROR_DEV_EXCL_RUN_IN_PROGRESS`, returned as a positive value.
const ERROR_DEV_EXCL_RUN_IN_PROGRESS: libc::c_int = 8;

// ---------------------------------------------------------------------------
// ioctl structures (linux/btrfs.h)
// ---------------------------------------------------------------------------

/// `struct btrfs_ioctl_quota_ctl_args`.
#[repr(C)]
struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args` (with `struct btrfs_qgroup_limit`
/// inlined).
#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; 4088],
}

/// `struct btrfs_ioctl_vol_args_v2`. The trailing union holds `name`, or
/// `devid`/`subvolid` in its first 8 bytes.
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; 4040],
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

/// `struct btrfs_ioctl_space_args` without its flexible array.
#[repr(C)]
struct SpaceArgs {
    space_slots: u64,
    total_spaces: u64,
}

/// `struct btrfs_ioctl_space_info`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SpaceInfoRaw {
    flags: u64,
    total_bytes: u64,
    used_bytes: u64,
}

/// `struct btrfs_ioctl_dev_info_args`.
#[repr(C)]
struct DevInfoArgs {
    devid: u64,
    uuid: [u8; 16],
    bytes_used: u64,
    total_bytes: u64,
    unused: [u64; 379],
    path: [u8; 1024],
}

/// `struct btrfs_ioctl_fs_info_args`.
#[repr(C)]
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    nodesize: u32,
    sectorsize: u32,
    clone_alignment: u32,
    csum_type: u16,
    csum_size: u16,
    flags: u64,
    generation: u64,
    metadata_uuid: [u8; 16],
    reserved: [u8; 944],
}

/// `struct btrfs_balance_args` (packed in C; this layout has no padding).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct BalanceArgs {
    profiles: u64,
    usage: u64,
    devid: u64,
    pstart: u64,
    pend: u64,
    vstart: u64,
    vend: u64,
    target: u64,
    flags: u64,
    limit: u64,
    stripes_min: u32,
    stripes_max: u32,
    unused: [u64; 6],
}

/// `struct btrfs_balance_progress`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalanceProgress {
    /// Chunks the kernel expects to relocate.
    pub expected: u64,
    /// Chunks looked at so far.
    pub considered: u64,
    /// Chunks relocated so far.
    pub completed: u64,
}

impl BalanceProgress {
    /// completed / expected, 1.0 when nothing is expected.
    pub fn fraction(&self) -> f64 {
        if self.expected == 0 {
            1.0
        } else {
            (self.completed as f64 / self.expected as f64).clamp(0.0, 1.0)
        }
    }
}

/// `struct btrfs_ioctl_balance_args`.
#[repr(C)]
struct BalanceIoctlArgs {
    flags: u64,
    state: u64,
    data: BalanceArgs,
    meta: BalanceArgs,
    sys: BalanceArgs,
    stat: BalanceProgress,
    unused: [u64; 72],
}

/// `struct btrfs_ioctl_timespec` (not packed: 16 bytes in the ioctl).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct IoctlTimespec {
    sec: u64,
    nsec: u32,
    pad: u32,
}

/// `struct btrfs_ioctl_get_subvol_info_args`.
#[repr(C)]
struct GetSubvolInfoArgs {
    treeid: u64,
    name: [u8; 256],
    parent_id: u64,
    dirid: u64,
    generation: u64,
    flags: u64,
    uuid: [u8; 16],
    parent_uuid: [u8; 16],
    received_uuid: [u8; 16],
    ctransid: u64,
    otransid: u64,
    stransid: u64,
    rtransid: u64,
    ctime: IoctlTimespec,
    otime: IoctlTimespec,
    stime: IoctlTimespec,
    rtime: IoctlTimespec,
    reserved: [u64; 8],
}

/// `struct btrfs_ioctl_search_key`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: u64,
    unused2: u64,
    unused3: u64,
    unused4: u64,
}

/// `struct btrfs_ioctl_search_args_v2` without its flexible buffer.
#[repr(C)]
struct SearchArgsV2 {
    key: SearchKey,
    buf_size: u64,
}

/// `struct btrfs_ioctl_search_header`, as laid out in the result buffer.
const SEARCH_HEADER_LEN: usize = 32;

const _: () = {
    use std::mem::size_of;
    assert!(size_of::<VolArgs>() == 4096);
    assert!(size_of::<VolArgsV2>() == 4096);
    assert!(size_of::<InoLookupArgs>() == 4096);
    assert!(size_of::<SpaceArgs>() == 16);
    assert!(size_of::<QuotaCtlArgs>() == 16);
    assert!(size_of::<QgroupLimitArgs>() == 48);
    assert!(size_of::<SpaceInfoRaw>() == 24);
    assert!(size_of::<DevInfoArgs>() == 4096);
    assert!(size_of::<FsInfoArgs>() == 1024);
    assert!(size_of::<BalanceArgs>() == 136);
    assert!(size_of::<BalanceIoctlArgs>() == 1024);
    assert!(size_of::<GetSubvolInfoArgs>() == 504);
    assert!(size_of::<SearchKey>() == 104);
    assert!(size_of::<SearchArgsV2>() == 112);
};

/// All-zero value of an ioctl argument struct.
///
/// # Safety
/// `T` must be made of integers and arrays of integers only.
unsafe fn zeroed<T>() -> Box<T> {
    // SAFETY: per the caller, all-zero bytes are a valid `T`. Boxed because
    // several of these are 4 KiB.
    unsafe { Box::new(std::mem::zeroed()) }
}

const IOC: u8 = 0x94; // BTRFS_IOCTL_MAGIC

nix::ioctl_write_ptr!(ioc_subvol_create, IOC, 14, VolArgs);
nix::ioctl_write_ptr!(ioc_snap_create_v2, IOC, 23, VolArgsV2);
nix::ioctl_write_ptr!(ioc_snap_destroy_v2, IOC, 63, VolArgsV2);
nix::ioctl_read!(ioc_subvol_getflags, IOC, 25, u64);
nix::ioctl_write_ptr!(ioc_subvol_setflags, IOC, 26, u64);
nix::ioctl_readwrite!(ioc_ino_lookup, IOC, 18, InoLookupArgs);
nix::ioctl_readwrite!(ioc_space_info, IOC, 20, SpaceArgs);
nix::ioctl_readwrite!(ioc_dev_info, IOC, 30, DevInfoArgs);
nix::ioctl_read!(ioc_fs_info, IOC, 31, FsInfoArgs);
nix::ioctl_readwrite!(ioc_balance_v2, IOC, 32, BalanceIoctlArgs);
nix::ioctl_write_int_bad!(
    ioc_balance_ctl,
    nix::request_code_write!(IOC, 33, std::mem::size_of::<libc::c_int>())
);
nix::ioctl_read!(ioc_balance_progress, IOC, 34, BalanceIoctlArgs);
nix::ioctl_read!(ioc_get_subvol_info, IOC, 60, GetSubvolInfoArgs);
nix::ioctl_readwrite!(ioc_tree_search_v2, IOC, 17, SearchArgsV2);
nix::ioctl_read!(ioc_start_sync, IOC, 24, u64);
nix::ioctl_none!(ioc_sync, IOC, 8);
nix::ioctl_write_ptr!(ioc_resize, IOC, 3, VolArgs);
nix::ioctl_readwrite!(ioc_quota_ctl, IOC, 40, QuotaCtlArgs);
nix::ioctl_read!(ioc_qgroup_limit, IOC, 43, QgroupLimitArgs);
nix::ioctl_write_ptr!(ioc_wait_sync, IOC, 22, u64);

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

// ---------------------------------------------------------------------------
// File system identity
// ---------------------------------------------------------------------------

/// Whether `path` is on a btrfs (statfs f_type is `BTRFS_SUPER_MAGIC`).
pub fn is_btrfs(path: &Path) -> io::Result<bool> {
    let st = nix::sys::statfs::statfs(path).map_err(errno)?;
    Ok(st.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC)
}

/// Whether `path` (not followed if a symlink) is the root directory of a
/// subvolume: a directory with inode number 256 on a btrfs.
pub fn is_subvolume(path: &Path) -> io::Result<bool> {
    let md = std::fs::symlink_metadata(path)?;
    Ok(md.is_dir() && md.ino() == FIRST_FREE_OBJECTID && is_btrfs(path)?)
}

/// The id (tree id) of the subvolume holding `path`:
/// `BTRFS_IOC_INO_LOOKUP` with tree id 0 and object id 256 answers with the
/// tree id and needs no privilege.
pub fn subvolume_id(path: &Path) -> io::Result<u64> {
    let dir = open_dir(path)?;
    // SAFETY: InoLookupArgs is integers and a byte array.
    let mut args = unsafe { zeroed::<InoLookupArgs>() };
    args.treeid = 0;
    args.objectid = FIRST_FREE_OBJECTID;
    // SAFETY: `args` is a valid, exclusively borrowed 4 KiB
    // `btrfs_ioctl_ino_lookup_args` the kernel reads and writes.
    unsafe { ioc_ino_lookup(dir.as_raw_fd(), &mut *args) }.map_err(errno)?;
    Ok(args.treeid)
}

/// What `BTRFS_IOC_GET_SUBVOL_INFO` says about the subvolume holding a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubvolInfo {
    pub id: u64,
    /// Name under its parent directory.
    pub name: String,
    /// Id of the subvolume holding it (0 for the top level).
    pub parent_id: u64,
    /// Last transaction that changed it.
    pub generation: u64,
    /// `SUBVOL_RDONLY`, …
    pub flags: u64,
    pub uuid: [u8; 16],
    /// UUID of the subvolume it is a snapshot of; zero if not a snapshot.
    pub parent_uuid: [u8; 16],
    /// Transaction that created it.
    pub otransid: u64,
    /// Creation time (seconds, nanoseconds).
    pub otime: (u64, u32),
}

impl SubvolInfo {
    pub fn is_snapshot(&self) -> bool {
        self.parent_uuid != [0; 16]
    }
    pub fn readonly(&self) -> bool {
        self.flags & SUBVOL_RDONLY != 0
    }
}

/// `BTRFS_IOC_GET_SUBVOL_INFO` on `path` (any path inside the subvolume).
pub fn subvolume_info(path: &Path) -> io::Result<SubvolInfo> {
    let dir = open_dir(path)?;
    // SAFETY: integers and arrays only.
    let mut args = unsafe { zeroed::<GetSubvolInfoArgs>() };
    // SAFETY: the kernel writes one `btrfs_ioctl_get_subvol_info_args`
    // (504 bytes) into `args`, which is that size.
    unsafe { ioc_get_subvol_info(dir.as_raw_fd(), &mut *args) }.map_err(errno)?;
    Ok(SubvolInfo {
        id: args.treeid,
        name: c_string(&args.name),
        parent_id: args.parent_id,
        generation: args.generation,
        flags: args.flags,
        uuid: args.uuid,
        parent_uuid: args.parent_uuid,
        otransid: args.otransid,
        otime: (args.otime.sec, args.otime.nsec),
    })
}

// ---------------------------------------------------------------------------
// Subvolumes
// ---------------------------------------------------------------------------

/// Creates an empty subvolume `dir/name` (`BTRFS_IOC_SUBVOL_CREATE`). Its
/// root directory is owned by the caller, mode 0777 less the caller's
/// umask (the kernel applies it as for mkdir). Not durable until the next
/// transaction commit (see [`commit_transaction`]).
pub fn create_subvolume(dir: &Path, name: &str) -> io::Result<()> {
    check_name(name)?;
    let d = open_dir(dir)?;
    // SAFETY: integers and arrays only.
    let mut args = unsafe { zeroed::<VolArgs>() };
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `args` is a NUL-terminated (zeroed tail) 4 KiB
    // `btrfs_ioctl_vol_args` the kernel only reads.
    unsafe { ioc_subvol_create(d.as_raw_fd(), &*args) }.map_err(errno)?;
    Ok(())
}

/// Snapshots the subvolume at `src` as `dir/name`
/// (`BTRFS_IOC_SNAP_CREATE_V2`), read-only if asked. The snapshot is
/// committed when this returns.
pub fn snapshot(src: &Path, dir: &Path, name: &str, readonly: bool) -> io::Result<()> {
    check_name(name)?;
    let s = open_dir(src)?;
    let d = open_dir(dir)?;
    // SAFETY: integers and arrays only.
    let mut args = unsafe { zeroed::<VolArgsV2>() };
    args.fd = s.as_raw_fd() as i64;
    args.flags = if readonly { SUBVOL_RDONLY } else { 0 };
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `args` is a complete `btrfs_ioctl_vol_args_v2` naming an open
    // descriptor (`s`, alive across the call); the kernel only reads it.
    unsafe { ioc_snap_create_v2(d.as_raw_fd(), &*args) }.map_err(errno)?;
    Ok(())
}

/// Deletes the subvolume `dir/name` (`BTRFS_IOC_SNAP_DESTROY_V2` by name).
/// `ENOTEMPTY` if it contains other subvolumes (see
/// [`delete_subvolume_recursive`]); read-only subvolumes are deleted as
/// they are.
pub fn delete_subvolume(dir: &Path, name: &str) -> io::Result<()> {
    check_name(name)?;
    let d = open_dir(dir)?;
    // SAFETY: integers and arrays only.
    let mut args = unsafe { zeroed::<VolArgsV2>() };
    args.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: complete, NUL-terminated `btrfs_ioctl_vol_args_v2`, read only.
    unsafe { ioc_snap_destroy_v2(d.as_raw_fd(), &*args) }.map_err(errno)?;
    Ok(())
}

/// Deletes subvolume `id` of the file system holding `fs_path`, wherever it
/// is (`BTRFS_SUBVOL_SPEC_BY_ID`).
pub fn delete_subvolume_by_id(fs_path: &Path, id: u64) -> io::Result<()> {
    let d = open_dir(fs_path)?;
    // SAFETY: integers and arrays only.
    let mut args = unsafe { zeroed::<VolArgsV2>() };
    args.flags = SUBVOL_SPEC_BY_ID;
    args.name[..8].copy_from_slice(&id.to_ne_bytes());
    // SAFETY: complete `btrfs_ioctl_vol_args_v2` with `subvolid` in the
    // union; the kernel only reads it.
    unsafe { ioc_snap_destroy_v2(d.as_raw_fd(), &*args) }.map_err(errno)?;
    Ok(())
}

/// Deletes `dir/name` and every subvolume nested in it, deepest first.
pub fn delete_subvolume_recursive(dir: &Path, name: &str) -> io::Result<()> {
    match delete_subvolume(dir, name) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
            let path = dir.join(name);
            let id = subvolume_id(&path)?;
            delete_nested(&path, id)?;
            delete_subvolume(dir, name)
        }
        r => r,
    }
}

fn delete_nested(fs_path: &Path, id: u64) -> io::Result<()> {
    for child in child_subvolumes(fs_path, id)? {
        delete_nested(fs_path, child)?;
        match delete_subvolume_by_id(fs_path, child) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            r => r?,
        }
    }
    Ok(())
}

/// Ids of the subvolumes directly inside subvolume `id` (its `ROOT_REF`
/// items in the root tree). Needs root.
pub fn child_subvolumes(fs_path: &Path, id: u64) -> io::Result<Vec<u64>> {
    let d = open_dir(fs_path)?;
    let key = SearchKey {
        tree_id: ROOT_TREE_OBJECTID,
        min_objectid: id,
        max_objectid: id,
        min_type: ROOT_REF_KEY,
        max_type: ROOT_REF_KEY,
        min_offset: 0,
        max_offset: u64::MAX,
        min_transid: 0,
        max_transid: u64::MAX,
        ..Default::default()
    };
    let mut out = Vec::new();
    tree_search(&d, key, |h, _| {
        if h.item_type == ROOT_REF_KEY && h.objectid == id {
            out.push(h.offset);
        }
    })?;
    Ok(out)
}

/// Whether the subvolume at `path` is read-only (`BTRFS_IOC_SUBVOL_GETFLAGS`).
pub fn readonly(path: &Path) -> io::Result<bool> {
    let d = open_dir(path)?;
    let mut flags = 0u64;
    // SAFETY: the kernel writes one u64 into `flags`.
    unsafe { ioc_subvol_getflags(d.as_raw_fd(), &mut flags) }.map_err(errno)?;
    Ok(flags & SUBVOL_RDONLY != 0)
}

/// Sets or clears the read-only flag of the subvolume whose root is `path`
/// (`BTRFS_IOC_SUBVOL_SETFLAGS`; `EINVAL` if `path` is not a subvolume
/// root). Other flags are kept.
pub fn set_readonly(path: &Path, ro: bool) -> io::Result<()> {
    let d = open_dir(path)?;
    let mut flags = 0u64;
    // SAFETY: the kernel writes one u64 into `flags`.
    unsafe { ioc_subvol_getflags(d.as_raw_fd(), &mut flags) }.map_err(errno)?;
    let new = if ro {
        flags | SUBVOL_RDONLY
    } else {
        flags & !SUBVOL_RDONLY
    };
    if new == flags {
        return Ok(());
    }
    // SAFETY: the kernel reads one u64 from `new`.
    unsafe { ioc_subvol_setflags(d.as_raw_fd(), &new) }.map_err(errno)?;
    Ok(())
}

/// Commits the current transaction of the file system holding `path` and
/// waits for it (`BTRFS_IOC_START_SYNC` + `BTRFS_IOC_WAIT_SYNC`, as
/// `btrfs subvolume delete --commit-after`). Unlike syncfs it does not
/// flush every file's dirty data first.
pub fn commit_transaction(path: &Path) -> io::Result<()> {
    let d = open_dir(path)?;
    let mut transid = 0u64;
    // SAFETY: the kernel writes one u64 (the transaction id) into `transid`.
    unsafe { ioc_start_sync(d.as_raw_fd(), &mut transid) }.map_err(errno)?;
    // SAFETY: the kernel reads one u64 from `transid`.
    unsafe { ioc_wait_sync(d.as_raw_fd(), &transid) }.map_err(errno)?;
    Ok(())
}

/// `BTRFS_IOC_SYNC` (`btrfs filesystem sync`): writes back all dirty data,
/// commits the transaction, and wakes the transaction thread, which wakes
/// the cleaner: deleted subvolumes are then dropped now rather than at the
/// next periodic commit (up to 30 s later).
pub fn sync(path: &Path) -> io::Result<()> {
    let d = open_dir(path)?;
    // SAFETY: BTRFS_IOC_SYNC takes no argument.
    unsafe { ioc_sync(d.as_raw_fd()) }.map_err(errno)?;
    Ok(())
}

/// Grows (or shrinks) device `devid` of the file system holding `path` to
/// the whole size of its block device (`BTRFS_IOC_RESIZE` with
/// `"<devid>:max"`, as `btrfs filesystem resize <devid>:max`).
pub fn resize_max(path: &Path, devid: u64) -> io::Result<()> {
    let d = open_dir(path)?;
    let arg = format!("{devid}:max");
    // SAFETY: integers and arrays only.
    let mut args = unsafe { zeroed::<VolArgs>() };
    args.name[..arg.len()].copy_from_slice(arg.as_bytes());
    // SAFETY: a NUL-terminated (zeroed tail) `btrfs_ioctl_vol_args` the
    // kernel only reads.
    unsafe { ioc_resize(d.as_raw_fd(), &*args) }.map_err(errno)?;
    Ok(())
}

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

// ---------------------------------------------------------------------------
// Space and devices
// ---------------------------------------------------------------------------

/// One line of `BTRFS_IOC_SPACE_INFO`: a block group type and profile with
/// its allocated (`total`) and used bytes, both logical (a DUP chunk of
/// 1 GiB counts 1 GiB here and takes 2 GiB of the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceInfo {
    pub flags: u64,
    pub total: u64,
    pub used: u64,
}

impl SpaceInfo {
    /// Copies of each byte on the devices (DUP, RAID1, RAID10: 2; RAID1C3:
    /// 3; RAID1C4: 4; single, RAID0: 1; RAID5/6 counted as 1).
    pub fn copies(&self) -> u64 {
        profile_copies(self.flags)
    }
}

fn profile_copies(flags: u64) -> u64 {
    if flags & BLOCK_GROUP_RAID1C4 != 0 {
        4
    } else if flags & BLOCK_GROUP_RAID1C3 != 0 {
        3
    } else if flags & (BLOCK_GROUP_DUP | BLOCK_GROUP_RAID1 | BLOCK_GROUP_RAID10) != 0 {
        2
    } else {
        1
    }
}

/// `BTRFS_IOC_SPACE_INFO`: every block group type and profile, plus the
/// global reserve (flag `SPACE_INFO_GLOBAL_RSV`).
pub fn space_info(path: &Path) -> io::Result<Vec<SpaceInfo>> {
    let d = open_dir(path)?;
    // First ask how many slots there are, then fetch them (retrying if a
    // new profile appeared in between).
    for _ in 0..4 {
        let mut head = SpaceArgs {
            space_slots: 0,
            total_spaces: 0,
        };
        // SAFETY: with space_slots = 0 the kernel only writes total_spaces
        // into the 16-byte header.
        unsafe { ioc_space_info(d.as_raw_fd(), &mut head) }.map_err(errno)?;
        let n = head.total_spaces as usize;
        // Header (2 u64) followed by n entries (3 u64 each).
        let mut buf = vec![0u64; 2 + 3 * n];
        buf[0] = n as u64;
        // SAFETY: `buf` is a u64-aligned `btrfs_ioctl_space_args` with room
        // for `space_slots` = n entries after the header; the kernel writes
        // at most that many.
        unsafe { ioc_space_info(d.as_raw_fd(), buf.as_mut_ptr() as *mut SpaceArgs) }
            .map_err(errno)?;
        let got = buf[1] as usize;
        if got > n {
            continue;
        }
        return Ok((0..got)
            .map(|i| SpaceInfo {
                flags: buf[2 + 3 * i],
                total: buf[3 + 3 * i],
                used: buf[4 + 3 * i],
            })
            .collect());
    }
    Err(io::Error::other("btrfs space info kept changing"))
}

/// File system facts from `BTRFS_IOC_FS_INFO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    pub fsid: [u8; 16],
    pub num_devices: u64,
    pub max_id: u64,
    pub nodesize: u32,
    pub sectorsize: u32,
}

pub fn fs_info(path: &Path) -> io::Result<FsInfo> {
    let d = open_dir(path)?;
    // SAFETY: integers and arrays only.
    let mut args = unsafe { zeroed::<FsInfoArgs>() };
    // SAFETY: the kernel reads `flags` (0: no optional fields) and writes
    // one 1 KiB `btrfs_ioctl_fs_info_args` into `args`.
    unsafe { ioc_fs_info(d.as_raw_fd(), &mut *args) }.map_err(errno)?;
    Ok(FsInfo {
        fsid: args.fsid,
        num_devices: args.num_devices,
        max_id: args.max_id,
        nodesize: args.nodesize,
        sectorsize: args.sectorsize,
    })
}

/// One device of a btrfs (`BTRFS_IOC_DEV_INFO`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevInfo {
    pub devid: u64,
    /// The device node as the kernel knows it (e.g. `/dev/loop3`).
    pub path: PathBuf,
    /// Size of the device given to the file system.
    pub total_bytes: u64,
    /// Bytes of it allocated to chunks.
    pub bytes_used: u64,
}

impl DevInfo {
    pub fn unallocated(&self) -> u64 {
        self.total_bytes.saturating_sub(self.bytes_used)
    }
}

/// Every device of the file system holding `path`, by devid.
pub fn devices(path: &Path) -> io::Result<Vec<DevInfo>> {
    let info = fs_info(path)?;
    let d = open_dir(path)?;
    let mut out = Vec::new();
    for devid in 1..=info.max_id {
        // SAFETY: integers and arrays only.
        let mut args = unsafe { zeroed::<DevInfoArgs>() };
        args.devid = devid;
        // SAFETY: `args` is a 4 KiB `btrfs_ioctl_dev_info_args` (devid in,
        // uuid zero = any); the kernel fills it in.
        match unsafe { ioc_dev_info(d.as_raw_fd(), &mut *args) } {
            Ok(_) => out.push(DevInfo {
                devid: args.devid,
                path: PathBuf::from(c_string(&args.path)),
                total_bytes: args.total_bytes,
                bytes_used: args.bytes_used,
            }),
            // Ids of removed devices leave holes.
            Err(nix::errno::Errno::ENODEV) => {}
            Err(e) => return Err(errno(e)),
        }
    }
    Ok(out)
}

/// Device space not allocated to any chunk, summed over devices: what
/// `btrfs filesystem usage` calls "Device unallocated". When it nears zero
/// a new chunk cannot be allocated and writes get `ENOSPC` even though the
/// allocated chunks have free space.
pub fn unallocated(path: &Path) -> io::Result<u64> {
    Ok(devices(path)?.iter().map(DevInfo::unallocated).sum())
}

/// Allocation and use of a btrfs, by kind, plus unallocated device space.
/// Logical bytes (what files can use) except `unallocated` and
/// `device_size`, which are raw device bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpaceSummary {
    pub data_total: u64,
    pub data_used: u64,
    /// Device bytes per data byte (1 single, 2 DUP/RAID1, …).
    pub data_copies: u64,
    pub metadata_total: u64,
    pub metadata_used: u64,
    pub metadata_copies: u64,
    pub system_total: u64,
    pub system_used: u64,
    /// Metadata space held back for emergencies (the global block reserve).
    pub global_reserve: u64,
    /// Raw device bytes not allocated to any chunk.
    pub unallocated: u64,
    /// Raw size of all devices.
    pub device_size: u64,
    /// Data and metadata share block groups (`mkfs.btrfs --mixed`).
    pub mixed: bool,
}

/// [`space_info`] and [`devices`] folded into one summary.
pub fn space_summary(path: &Path) -> io::Result<SpaceSummary> {
    let mut s = SpaceSummary {
        data_copies: 1,
        metadata_copies: 1,
        ..Default::default()
    };
    for si in space_info(path)? {
        if si.flags & SPACE_INFO_GLOBAL_RSV != 0 {
            s.global_reserve += si.total;
            continue;
        }
        let data = si.flags & BLOCK_GROUP_DATA != 0;
        let meta = si.flags & BLOCK_GROUP_METADATA != 0;
        if data && meta {
            s.mixed = true;
        }
        if data {
            s.data_total += si.total;
            s.data_used += si.used;
            s.data_copies = s.data_copies.max(si.copies());
        }
        if meta {
            s.metadata_total += si.total;
            s.metadata_used += si.used;
            s.metadata_copies = s.metadata_copies.max(si.copies());
        }
        if si.flags & BLOCK_GROUP_SYSTEM != 0 {
            s.system_total += si.total;
            s.system_used += si.used;
        }
    }
    for dev in devices(path)? {
        s.unallocated += dev.unallocated();
        s.device_size += dev.total_bytes;
    }
    Ok(s)
}

// ---------------------------------------------------------------------------
// Balance
// ---------------------------------------------------------------------------

/// Which chunks one balance call rewrites: data chunks at most
/// `data_usage` percent full, metadata (and system) chunks at most
/// `metadata_usage` percent full (`btrfs balance start -dusage=N
/// -musage=M`). `None` leaves that kind alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalanceFilters {
    pub data_usage: Option<u8>,
    pub metadata_usage: Option<u8>,
}

/// Runs one balance with `filters` on the file system holding `path` and
/// blocks until it ends; returns the kernel's final progress. Meant to run
/// on its own thread while another polls [`balance_progress`] and may call
/// [`balance_cancel`]. Errors: `ECANCELED` when cancelled, `EINPROGRESS`
/// when a balance already runs, `EBUSY` when another exclusive operation
/// runs, `ENOSPC` when no chunk could be allocated to relocate into,
/// `EINVAL` for empty filters (layerd never runs a full balance).
pub fn balance_start(path: &Path, filters: &BalanceFilters) -> io::Result<BalanceProgress> {
    if filters.data_usage.is_none() && filters.metadata_usage.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a balance needs a data or metadata usage filter",
        ));
    }
    let d = open_dir(path)?;
    // SAFETY: integers and arrays only.
    let mut args = unsafe { zeroed::<BalanceIoctlArgs>() };
    if let Some(u) = filters.data_usage {
        args.flags |= BALANCE_DATA;
        args.data.flags = BALANCE_ARGS_USAGE;
        args.data.usage = u.min(100) as u64;
    }
    if let Some(u) = filters.metadata_usage {
        // As btrfs-progs does: system chunks follow the metadata filter.
        args.flags |= BALANCE_METADATA | BALANCE_SYSTEM;
        args.meta.flags = BALANCE_ARGS_USAGE;
        args.meta.usage = u.min(100) as u64;
        args.sys = args.meta;
    }
    // SAFETY: `args` is a complete 1 KiB `btrfs_ioctl_balance_args` that
    // stays alive (boxed) for the whole, possibly long, blocking call.
    let ret = unsafe { ioc_balance_v2(d.as_raw_fd(), &mut *args) }.map_err(errno)?;
    if ret == ERROR_DEV_EXCL_RUN_IN_PROGRESS {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    } else if ret > 0 {
        return Err(io::Error::other(format!(
            "btrfs balance refused with btrfs error code {ret}"
        )));
    }
    Ok(args.stat)
}

/// Progress of the balance running on the file system holding `path`;
/// `None` when none runs.
pub fn balance_progress(path: &Path) -> io::Result<Option<BalanceProgress>> {
    let d = open_dir(path)?;
    // SAFETY: integers and arrays only.
    let mut args = unsafe { zeroed::<BalanceIoctlArgs>() };
    // SAFETY: the kernel writes one `btrfs_ioctl_balance_args` into `args`.
    match unsafe { ioc_balance_progress(d.as_raw_fd(), &mut *args) } {
        Ok(_) => Ok(Some(args.stat)),
        Err(nix::errno::Errno::ENOTCONN) => Ok(None),
        Err(e) => Err(errno(e)),
    }
}

/// Asks the running balance to stop (it finishes the chunk it is moving);
/// `ENOTCONN` when none runs.
pub fn balance_cancel(path: &Path) -> io::Result<()> {
    let d = open_dir(path)?;
    // SAFETY: BALANCE_CTL takes the command as the integer argument itself.
    unsafe { ioc_balance_ctl(d.as_raw_fd(), BALANCE_CTL_CANCEL) }.map_err(errno)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Trim
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Tree search and "what changed since"
// ---------------------------------------------------------------------------

/// `struct btrfs_ioctl_search_header` of one returned item.
#[derive(Debug, Clone, Copy)]
struct ItemHeader {
    objectid: u64,
    offset: u64,
    item_type: u32,
}

/// Result buffer of one search call.
const SEARCH_BUF: usize = 64 << 10;

/// Runs `BTRFS_IOC_TREE_SEARCH_V2` over `key`'s range, calling `f` with
/// each item's header and bytes, in key order.
fn tree_search(
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

fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
        .unwrap_or(0)
}

fn le32(b: &[u8], at: usize) -> u32 {
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

// ---------------------------------------------------------------------------
// Tests (real kernel, root)
// ---------------------------------------------------------------------------

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sys::loopdev;
    use std::io::Write;
    use std::process::Command;

    /// A btrfs on a loop-attached sparse file, mounted on a temp dir;
    /// unmounted and detached on drop, even when a test panics.
    pub(crate) struct TestFs {
        _dir: tempfile::TempDir,
        pub mnt: PathBuf,
        pub dev: Option<loopdev::LoopDevice>,
        img: PathBuf,
    }

    impl TestFs {
        /// `None` (with a SKIP line) when not root or mkfs.btrfs is missing.
        pub(crate) fn new(size: u64) -> Option<TestFs> {
            if !nix::unistd::geteuid().is_root()
                || !Path::new("/dev/loop-control").exists()
                || Command::new("mkfs.btrfs")
                    .arg("--version")
                    .output()
                    .is_err()
            {
                eprintln!("SKIP: needs root, loop devices and mkfs.btrfs");
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let img = dir.path().join("img");
            let mnt = dir.path().join("mnt");
            std::fs::create_dir(&mnt).unwrap();
            loopdev::create_sparse(&img, size).unwrap();
            let mut fs = TestFs {
                _dir: dir,
                mnt,
                dev: None,
                img,
            };
            let (dev, _) = loopdev::attach(&fs.img, Default::default()).unwrap();
            fs.dev = Some(dev.clone());
            let out = Command::new("mkfs.btrfs")
                .arg("-q")
                .arg(dev.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "mkfs.btrfs: {out:?}");
            nix::mount::mount(
                Some(&dev.path()),
                &fs.mnt,
                Some("btrfs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .unwrap();
            Some(fs)
        }

        pub(crate) fn image(&self) -> &Path {
            &self.img
        }
    }

    impl Drop for TestFs {
        fn drop(&mut self) {
            for _ in 0..50 {
                match nix::mount::umount2(&self.mnt, nix::mount::MntFlags::empty()) {
                    Err(nix::errno::Errno::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(50))
                    }
                    _ => break,
                }
            }
            let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
            if let Some(dev) = self.dev.take() {
                let _ = loopdev::detach(&dev);
            }
        }
    }

    fn write(path: &Path, len: usize, seed: u8) {
        let mut f = File::create(path).unwrap();
        let chunk: Vec<u8> = (0..65536u32)
            .map(|i| ((i * 7 + seed as u32 * 13) % 251 + 1) as u8)
            .collect();
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            f.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        f.sync_all().unwrap();
    }

    const MIB: u64 = 1 << 20;

    fn about(what: &str, got: u64, want: u64) {
        assert!(
            got >= want && got <= want + 256 * 1024,
            "{what}: {got} bytes, expected about {want}"
        );
    }

    #[test]
    fn subvolumes_snapshots_flags_and_delete() {
        let Some(fs) = TestFs::new(512 * MIB) else {
            return;
        };
        let m = &fs.mnt;
        assert!(is_btrfs(m).unwrap());
        assert!(is_subvolume(m).unwrap(), "the top level is a subvolume");
        assert_eq!(subvolume_id(m).unwrap(), FS_TREE_OBJECTID);

        create_subvolume(m, "a").unwrap();
        assert_eq!(
            create_subvolume(m, "a").unwrap_err().raw_os_error(),
            Some(libc::EEXIST)
        );
        assert!(create_subvolume(m, "x/y").is_err());
        let a = m.join("a");
        assert!(is_subvolume(&a).unwrap());
        let a_id = subvolume_id(&a).unwrap();
        assert!(a_id >= FIRST_FREE_OBJECTID);
        std::fs::create_dir(a.join("d")).unwrap();
        assert!(!is_subvolume(&a.join("d")).unwrap());
        assert_eq!(subvolume_id(&a.join("d")).unwrap(), a_id);
        std::fs::write(a.join("d/f"), "a").unwrap();

        assert!(!readonly(&a).unwrap());
        set_readonly(&a, true).unwrap();
        assert!(readonly(&a).unwrap());
        set_readonly(&a, true).unwrap(); // idempotent
        let err = std::fs::write(a.join("g"), "x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        assert_eq!(
            set_readonly(&a.join("d"), true).unwrap_err().raw_os_error(),
            Some(libc::EINVAL),
            "flags live on subvolume roots only"
        );

        // Writable and read-only snapshots of the read-only subvolume.
        snapshot(&a, m, "b", false).unwrap();
        snapshot(&a, m, "v", true).unwrap();
        let (b, v) = (m.join("b"), m.join("v"));
        assert_eq!(std::fs::read_to_string(b.join("d/f")).unwrap(), "a");
        std::fs::write(b.join("d/f"), "b").unwrap();
        assert_eq!(std::fs::read_to_string(a.join("d/f")).unwrap(), "a");
        assert!(readonly(&v).unwrap());
        assert!(!readonly(&b).unwrap());
        let info = subvolume_info(&b).unwrap();
        assert!(info.is_snapshot());
        assert_eq!(info.parent_uuid, subvolume_info(&a).unwrap().uuid);
        assert_eq!(info.name, "b");
        assert_eq!(info.parent_id, FS_TREE_OBJECTID);
        assert!(!subvolume_info(&a).unwrap().is_snapshot());

        // A read-only subvolume cannot move to another directory...
        std::fs::create_dir(m.join("t")).unwrap();
        let err = std::fs::rename(&v, m.join("t/v")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        // ...until the flag is cleared.
        set_readonly(&v, false).unwrap();
        std::fs::rename(&v, m.join("t/v")).unwrap();

        // Read-only subvolumes delete as they are (root).
        delete_subvolume(m, "a").unwrap();
        assert!(!a.exists());
        delete_subvolume(&m.join("t"), "v").unwrap();

        // Nested subvolumes: ENOTEMPTY, then the recursive delete.
        create_subvolume(&b, "n1").unwrap();
        create_subvolume(&b.join("n1"), "n2").unwrap();
        std::fs::create_dir(b.join("dir")).unwrap();
        create_subvolume(&b.join("dir"), "n3").unwrap();
        set_readonly(&b.join("dir/n3"), true).unwrap();
        let b_id = subvolume_id(&b).unwrap();
        let mut kids = child_subvolumes(m, b_id).unwrap();
        kids.sort();
        assert_eq!(kids.len(), 2, "{kids:?}");
        assert_eq!(
            delete_subvolume(m, "b").unwrap_err().raw_os_error(),
            Some(libc::ENOTEMPTY)
        );
        delete_subvolume_recursive(m, "b").unwrap();
        assert!(!b.exists());
        assert_eq!(
            delete_subvolume(m, "b").unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
        commit_transaction(m).unwrap();
    }

    #[test]
    fn changed_since_counts_only_new_data() {
        let Some(fs) = TestFs::new(512 * MIB) else {
            return;
        };
        let m = &fs.mnt;
        create_subvolume(m, "p").unwrap();
        let p = m.join("p");
        write(&p.join("big"), 8 * MIB as usize, 1);
        std::fs::write(p.join("small"), "tiny inline file").unwrap();
        let c = exclusive_usage(&p).unwrap();
        about("parent", c.bytes, 8 * MIB);
        assert_eq!(c.inodes, 3, "root, big, small");
        set_readonly(&p, true).unwrap();

        snapshot(&p, m, "c", false).unwrap();
        let cp = m.join("c");
        let c = exclusive_usage(&cp).unwrap();
        assert_eq!(c, Changed::default(), "an untouched snapshot owns nothing");
        // Reading does not count.
        let _ = std::fs::read(cp.join("big")).unwrap();
        let _ = std::fs::read(cp.join("small")).unwrap();
        assert_eq!(exclusive_usage(&cp).unwrap().bytes, 0);

        // Rewrite 1 MiB in the middle of the inherited 8 MiB file.
        {
            use std::os::unix::fs::FileExt;
            let f = OpenOptions::new().write(true).open(cp.join("big")).unwrap();
            f.write_all_at(&vec![7u8; MIB as usize], 3 * MIB).unwrap();
            f.sync_all().unwrap();
        }
        write(&cp.join("new"), 2 * MIB as usize, 2);
        // A reflink copy inside the child counts once.
        {
            let src = File::open(cp.join("new")).unwrap();
            let dst = File::create(cp.join("new-clone")).unwrap();
            nix::ioctl_write_int!(ficlone, 0x94, 9);
            // SAFETY: FICLONE takes the source descriptor as its argument.
            unsafe { ficlone(dst.as_raw_fd(), src.as_raw_fd() as u64) }.unwrap();
            dst.sync_all().unwrap();
        }
        let c = exclusive_usage(&cp).unwrap();
        about("child", c.bytes, 3 * MIB);
        // big (new data), new, new-clone; the root directory's new entries
        // may wait for the transaction commit.
        assert!((3..=4).contains(&c.inodes), "{c:?}");
        // A full sync (writeback + commit), not just waiting for the
        // running transaction: that one may predate the new entries, and
        // then the count still lags (seen once under load).
        sync(m).unwrap();
        let c = exclusive_usage(&cp).unwrap();
        about("child after commit", c.bytes, 3 * MIB);
        // root, big, new, new-clone; an inode whose item was rewritten for
        // metadata only (atime of a file read above) may count as well.
        assert!((4..=5).contains(&c.inodes), "{c:?}");
        // The parent still owns its data although a child shares it.
        about(
            "parent after child",
            exclusive_usage(&p).unwrap().bytes,
            8 * MIB,
        );

        // A read-only snapshot (a view) owns nothing.
        snapshot(&p, m, "v", true).unwrap();
        assert_eq!(exclusive_usage(&m.join("v")).unwrap(), Changed::default());
    }

    #[test]
    fn space_devices_balance_trim() {
        let Some(fs) = TestFs::new(1024 * MIB) else {
            return;
        };
        let m = &fs.mnt;
        let info = fs_info(m).unwrap();
        assert_eq!(info.num_devices, 1);
        assert_eq!(info.sectorsize, 4096);
        let devs = devices(m).unwrap();
        assert_eq!(devs.len(), 1);
        assert_eq!(devs[0].path, fs.dev.as_ref().unwrap().path());
        assert_eq!(devs[0].total_bytes, 1024 * MIB);
        let s = space_summary(m).unwrap();
        assert!(s.data_total > 0 && s.metadata_total > 0, "{s:?}");
        assert!(s.unallocated > 0 && s.unallocated < s.device_size, "{s:?}");
        assert_eq!(s.device_size, 1024 * MIB);
        assert_eq!(unallocated(m).unwrap(), s.unallocated);
        assert!(space_info(m)
            .unwrap()
            .iter()
            .any(|i| i.flags & SPACE_INFO_GLOBAL_RSV != 0));

        // Fill a few data chunks, empty them, and let balance return them.
        create_subvolume(m, "s").unwrap();
        for i in 0..6 {
            write(&m.join(format!("s/f{i}")), 64 * MIB as usize, i as u8);
        }
        commit_transaction(m).unwrap();
        let full = space_summary(m).unwrap();
        delete_subvolume(m, "s").unwrap();
        // Wait for the cleaner to drop the deleted tree.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while space_summary(m).unwrap().data_used > 16 * MIB {
            assert!(std::time::Instant::now() < deadline, "cleaner too slow");
            commit_transaction(m).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(balance_progress(m).unwrap(), None);
        assert_eq!(
            balance_cancel(m).unwrap_err().raw_os_error(),
            Some(libc::ENOTCONN)
        );
        assert!(balance_start(m, &BalanceFilters::default()).is_err());
        let p = balance_start(
            m,
            &BalanceFilters {
                data_usage: Some(10),
                metadata_usage: None,
            },
        )
        .unwrap();
        assert_eq!(p.completed, p.expected, "{p:?}");
        let after = space_summary(m).unwrap();
        // Empty chunks may already have gone back by themselves (btrfs
        // reclaims unused block groups); either way they are unallocated.
        assert!(
            after.data_total < full.data_total && after.unallocated > full.unallocated,
            "before {full:?}\nafter {after:?}"
        );

        // FITRIM: the freed space goes back to the image file.
        let img_blocks = || std::fs::metadata(fs.image()).unwrap().blocks() * 512;
        let before = img_blocks();
        let trimmed = crate::sys::trim::fitrim(m).unwrap();
        assert!(trimmed > 0);
        assert!(img_blocks() <= before, "trim grew the image");
        assert!(
            img_blocks() < 200 * MIB,
            "image still holds {}",
            img_blocks()
        );
    }

    #[test]
    fn balance_progress_and_cancel() {
        let Some(fs) = TestFs::new(2048 * MIB) else {
            return;
        };
        let m = fs.mnt.clone();
        create_subvolume(&m, "s").unwrap();
        // Many half-used data chunks: write files, delete every other one.
        for i in 0..12 {
            write(&m.join(format!("s/f{i}")), 64 * MIB as usize, i as u8);
        }
        for i in (0..12).step_by(2) {
            std::fs::remove_file(m.join(format!("s/f{i}"))).unwrap();
        }
        commit_transaction(&m).unwrap();
        let runner = {
            let m = m.clone();
            std::thread::spawn(move || {
                balance_start(
                    &m,
                    &BalanceFilters {
                        data_usage: Some(100),
                        metadata_usage: None,
                    },
                )
            })
        };
        let mut seen = None;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline && !runner.is_finished() {
            // The kernel counts the chunks it expects before moving any.
            if let Some(p) = balance_progress(&m).unwrap().filter(|p| p.expected > 0) {
                seen = Some(p);
                let _ = balance_cancel(&m);
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let res = runner.join().unwrap();
        match (seen, res) {
            (Some(p), Err(e)) => {
                assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{e}");
                assert!(p.completed < p.expected, "{p:?}");
            }
            // The balance can be quicker than the first poll.
            (_, Ok(p)) => eprintln!("balance finished before it could be cancelled: {p:?}"),
            (None, Err(e)) => panic!("balance failed: {e}"),
        }
        assert_eq!(balance_progress(&m).unwrap(), None);
    }
}
