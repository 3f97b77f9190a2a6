//! The kernel ABI: constants, `#[repr(C)]` argument structs and ioctl
//! numbers of linux/btrfs.h and btrfs_tree.h.

/// Inode number of every subvolume's root directory, and the first object
/// id of a regular inode.
pub const FIRST_FREE_OBJECTID: u64 = 256;
/// Last object id of a regular inode (`-256ULL`).
pub(super) const LAST_FREE_OBJECTID: u64 = (-256i64) as u64;
/// The root tree (`BTRFS_ROOT_TREE_OBJECTID`).
pub(super) const ROOT_TREE_OBJECTID: u64 = 1;
/// The top-level subvolume (`BTRFS_FS_TREE_OBJECTID`).
pub const FS_TREE_OBJECTID: u64 = 5;

/// `BTRFS_SUBVOL_RDONLY`: the subvolume flag (GETFLAGS/SETFLAGS) and the
/// snapshot-creation flag.
pub const SUBVOL_RDONLY: u64 = 1 << 1;
pub(super) const SUBVOL_SPEC_BY_ID: u64 = 1 << 4;

/// `BTRFS_VOL_NAME_MAX`: longest subvolume name.
pub(super) const VOL_NAME_MAX: usize = 255;

// Item types (linux/btrfs_tree.h).
pub(super) const INODE_ITEM_KEY: u32 = 1;
pub(super) const EXTENT_DATA_KEY: u32 = 108;
pub(super) const ROOT_REF_KEY: u32 = 156;
pub(super) const QGROUP_STATUS_KEY: u32 = 240;
pub(super) const QGROUP_INFO_KEY: u32 = 242;
/// `BTRFS_QUOTA_TREE_OBJECTID`.
pub(super) const QUOTA_TREE_OBJECTID: u64 = 8;
/// `BTRFS_QUOTA_CTL_ENABLE`.
pub(super) const QUOTA_CTL_ENABLE: u64 = 1;
/// `BTRFS_QGROUP_LIMIT_MAX_EXCL`.
pub(super) const QGROUP_LIMIT_MAX_EXCL: u64 = 1 << 1;

// Block group / space info flags.
pub const BLOCK_GROUP_DATA: u64 = 1 << 0;
pub const BLOCK_GROUP_SYSTEM: u64 = 1 << 1;
pub const BLOCK_GROUP_METADATA: u64 = 1 << 2;
pub(super) const BLOCK_GROUP_RAID1: u64 = 1 << 4;
pub(super) const BLOCK_GROUP_DUP: u64 = 1 << 5;
pub(super) const BLOCK_GROUP_RAID10: u64 = 1 << 6;
pub(super) const BLOCK_GROUP_RAID1C3: u64 = 1 << 9;
pub(super) const BLOCK_GROUP_RAID1C4: u64 = 1 << 10;
pub const SPACE_INFO_GLOBAL_RSV: u64 = 1 << 49;

// Balance flags.
pub(super) const BALANCE_DATA: u64 = 1 << 0;
pub(super) const BALANCE_SYSTEM: u64 = 1 << 1;
pub(super) const BALANCE_METADATA: u64 = 1 << 2;
pub(super) const BALANCE_ARGS_USAGE: u64 = 1 << 1;
pub(super) const BALANCE_CTL_CANCEL: libc::c_int = 2;
/// `BTRFS_ERROR_DEV_EXCL_RUN_IN_PROGRESS`, returned as a positive value.
pub(super) const ERROR_DEV_EXCL_RUN_IN_PROGRESS: libc::c_int = 8;

// ---------------------------------------------------------------------------
// ioctl structures (linux/btrfs.h)
// ---------------------------------------------------------------------------

/// `struct btrfs_ioctl_quota_ctl_args`.
#[repr(C)]
pub(super) struct QuotaCtlArgs {
    pub(super) cmd: u64,
    pub(super) status: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args` (with `struct btrfs_qgroup_limit`
/// inlined).
#[repr(C)]
pub(super) struct QgroupLimitArgs {
    pub(super) qgroupid: u64,
    pub(super) flags: u64,
    pub(super) max_rfer: u64,
    pub(super) max_excl: u64,
    pub(super) rsv_rfer: u64,
    pub(super) rsv_excl: u64,
}

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
pub(super) struct VolArgs {
    pub(super) fd: i64,
    pub(super) name: [u8; 4088],
}

/// `struct btrfs_ioctl_vol_args_v2`. The trailing union holds `name`, or
/// `devid`/`subvolid` in its first 8 bytes.
#[repr(C)]
pub(super) struct VolArgsV2 {
    pub(super) fd: i64,
    pub(super) transid: u64,
    pub(super) flags: u64,
    pub(super) unused: [u64; 4],
    pub(super) name: [u8; 4040],
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
pub(super) struct InoLookupArgs {
    pub(super) treeid: u64,
    pub(super) objectid: u64,
    pub(super) name: [u8; 4080],
}

/// `struct btrfs_ioctl_space_args` without its flexible array.
#[repr(C)]
pub(super) struct SpaceArgs {
    pub(super) space_slots: u64,
    pub(super) total_spaces: u64,
}

/// `struct btrfs_ioctl_space_info`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct SpaceInfoRaw {
    pub(super) flags: u64,
    pub(super) total_bytes: u64,
    pub(super) used_bytes: u64,
}

/// `struct btrfs_ioctl_dev_info_args`.
#[repr(C)]
pub(super) struct DevInfoArgs {
    pub(super) devid: u64,
    pub(super) uuid: [u8; 16],
    pub(super) bytes_used: u64,
    pub(super) total_bytes: u64,
    pub(super) unused: [u64; 379],
    pub(super) path: [u8; 1024],
}

/// `struct btrfs_ioctl_fs_info_args`.
#[repr(C)]
pub(super) struct FsInfoArgs {
    pub(super) max_id: u64,
    pub(super) num_devices: u64,
    pub(super) fsid: [u8; 16],
    pub(super) nodesize: u32,
    pub(super) sectorsize: u32,
    pub(super) clone_alignment: u32,
    pub(super) csum_type: u16,
    pub(super) csum_size: u16,
    pub(super) flags: u64,
    pub(super) generation: u64,
    pub(super) metadata_uuid: [u8; 16],
    pub(super) reserved: [u8; 944],
}

/// `struct btrfs_balance_args` (packed in C; this layout has no padding).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct BalanceArgs {
    pub(super) profiles: u64,
    pub(super) usage: u64,
    pub(super) devid: u64,
    pub(super) pstart: u64,
    pub(super) pend: u64,
    pub(super) vstart: u64,
    pub(super) vend: u64,
    pub(super) target: u64,
    pub(super) flags: u64,
    pub(super) limit: u64,
    pub(super) stripes_min: u32,
    pub(super) stripes_max: u32,
    pub(super) unused: [u64; 6],
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
pub(super) struct BalanceIoctlArgs {
    pub(super) flags: u64,
    pub(super) state: u64,
    pub(super) data: BalanceArgs,
    pub(super) meta: BalanceArgs,
    pub(super) sys: BalanceArgs,
    pub(super) stat: BalanceProgress,
    pub(super) unused: [u64; 72],
}

/// `struct btrfs_ioctl_timespec` (not packed: 16 bytes in the ioctl).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct IoctlTimespec {
    pub(super) sec: u64,
    pub(super) nsec: u32,
    pub(super) pad: u32,
}

/// `struct btrfs_ioctl_get_subvol_info_args`.
#[repr(C)]
pub(super) struct GetSubvolInfoArgs {
    pub(super) treeid: u64,
    pub(super) name: [u8; 256],
    pub(super) parent_id: u64,
    pub(super) dirid: u64,
    pub(super) generation: u64,
    pub(super) flags: u64,
    pub(super) uuid: [u8; 16],
    pub(super) parent_uuid: [u8; 16],
    pub(super) received_uuid: [u8; 16],
    pub(super) ctransid: u64,
    pub(super) otransid: u64,
    pub(super) stransid: u64,
    pub(super) rtransid: u64,
    pub(super) ctime: IoctlTimespec,
    pub(super) otime: IoctlTimespec,
    pub(super) stime: IoctlTimespec,
    pub(super) rtime: IoctlTimespec,
    pub(super) reserved: [u64; 8],
}

/// `struct btrfs_ioctl_search_key`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(super) struct SearchKey {
    pub(super) tree_id: u64,
    pub(super) min_objectid: u64,
    pub(super) max_objectid: u64,
    pub(super) min_offset: u64,
    pub(super) max_offset: u64,
    pub(super) min_transid: u64,
    pub(super) max_transid: u64,
    pub(super) min_type: u32,
    pub(super) max_type: u32,
    pub(super) nr_items: u32,
    pub(super) unused: u32,
    pub(super) unused1: u64,
    pub(super) unused2: u64,
    pub(super) unused3: u64,
    pub(super) unused4: u64,
}

/// `struct btrfs_ioctl_search_args_v2` without its flexible buffer.
#[repr(C)]
pub(super) struct SearchArgsV2 {
    pub(super) key: SearchKey,
    pub(super) buf_size: u64,
}

/// `struct btrfs_ioctl_search_header`, as laid out in the result buffer.
pub(super) const SEARCH_HEADER_LEN: usize = 32;

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
pub(super) unsafe fn zeroed<T>() -> Box<T> {
    // SAFETY: per the caller, all-zero bytes are a valid `T`. Boxed because
    // several of these are 4 KiB.
    unsafe { Box::new(std::mem::zeroed()) }
}

pub(super) const IOC: u8 = 0x94; // BTRFS_IOCTL_MAGIC

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
