//! Subvolumes: identity, create, snapshot, delete, flags, transactions.

use super::*;

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

pub(super) fn delete_nested(fs_path: &Path, id: u64) -> io::Result<()> {
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
