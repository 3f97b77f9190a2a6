//! Space: chunk allocation per profile, devices, unallocated space.

use super::*;

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

pub(super) fn profile_copies(flags: u64) -> u64 {
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
