//! File metadata from `statx` (with a `stat` fallback), and opening
//! entries without following symlinks.

use std::ffi::CStr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{
    self as rfs, AtFlags, FileType, Gid, Mode, OFlags, StatxFlags, Timespec, Timestamps, Uid,
};
use rustix::io::Errno;

/// (device, inode): which file an entry is, hard links included.
pub type FileId = (u64, u64);

/// The parts of `statx` the copy, the measurement and Export use.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub kind: FileType,
    /// Permission bits including setuid, setgid and sticky.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub dev: u64,
    pub ino: u64,
    pub rdev: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    /// Mount id, where the kernel reports it (statx, Linux 5.8+).
    pub mnt_id: Option<u64>,
}

impl Meta {
    pub(super) fn from_statx(x: &rfs::Statx) -> Meta {
        let mode = u32::from(x.stx_mode);
        Meta {
            kind: FileType::from_raw_mode(mode),
            perm: mode & 0o7777,
            uid: x.stx_uid,
            gid: x.stx_gid,
            nlink: u64::from(x.stx_nlink),
            dev: rfs::makedev(x.stx_dev_major, x.stx_dev_minor),
            ino: x.stx_ino,
            rdev: rfs::makedev(x.stx_rdev_major, x.stx_rdev_minor),
            size: x.stx_size,
            blocks: x.stx_blocks,
            atime: (x.stx_atime.tv_sec, x.stx_atime.tv_nsec),
            mtime: (x.stx_mtime.tv_sec, x.stx_mtime.tv_nsec),
            mnt_id: StatxFlags::from_bits_retain(x.stx_mask)
                .contains(StatxFlags::MNT_ID)
                .then_some(x.stx_mnt_id),
        }
    }

    // The field types of `struct stat` differ between architectures.
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    pub(super) fn from_stat(s: &rfs::Stat) -> Meta {
        let mode = s.st_mode as u32;
        Meta {
            kind: FileType::from_raw_mode(mode),
            perm: mode & 0o7777,
            uid: s.st_uid as u32,
            gid: s.st_gid as u32,
            nlink: s.st_nlink as u64,
            dev: s.st_dev as u64,
            ino: s.st_ino as u64,
            rdev: s.st_rdev as u64,
            size: s.st_size as u64,
            blocks: s.st_blocks as u64,
            atime: (s.st_atime as i64, s.st_atime_nsec as u32),
            mtime: (s.st_mtime as i64, s.st_mtime_nsec as u32),
            mnt_id: None,
        }
    }

    pub fn id(&self) -> FileId {
        (self.dev, self.ino)
    }

    pub fn is_dir(&self) -> bool {
        self.kind == FileType::Directory
    }

    /// Whether this entry lives on another mount than `root`.
    pub(super) fn other_mount(&self, root: &Meta) -> bool {
        self.dev != root.dev || matches!((self.mnt_id, root.mnt_id), (Some(a), Some(b)) if a != b)
    }

    pub(super) fn timestamps(&self) -> Timestamps {
        let ts = |(sec, nsec): (i64, u32)| Timespec {
            tv_sec: sec,
            tv_nsec: nsec as _,
        };
        Timestamps {
            last_access: ts(self.atime),
            last_modification: ts(self.mtime),
        }
    }

    /// The whole `st_mode`: file type and permission bits.
    pub fn raw_mode(&self) -> u32 {
        self.kind.as_raw_mode() | self.perm
    }

    pub(super) fn mode(&self) -> Mode {
        Mode::from_raw_mode(self.perm)
    }

    pub(super) fn uid(&self) -> Option<Uid> {
        Some(Uid::from_raw(self.uid))
    }

    pub(super) fn gid(&self) -> Option<Gid> {
        Some(Gid::from_raw(self.gid))
    }
}

/// Set when `statx` is unavailable (seccomp filters, very old kernels).
pub(super) static NO_STATX: AtomicBool = AtomicBool::new(false);

/// `statx` of `name` in `dirfd`, never following a final symlink.
pub fn meta_at(dirfd: BorrowedFd<'_>, name: &CStr, flags: AtFlags) -> rustix::io::Result<Meta> {
    let flags = flags | AtFlags::SYMLINK_NOFOLLOW | AtFlags::NO_AUTOMOUNT;
    if !NO_STATX.load(Ordering::Relaxed) {
        match rfs::statx(
            dirfd,
            name,
            flags,
            StatxFlags::BASIC_STATS | StatxFlags::MNT_ID,
        ) {
            Ok(x) => return Ok(Meta::from_statx(&x)),
            Err(Errno::NOSYS) => NO_STATX.store(true, Ordering::Relaxed),
            Err(e) => return Err(e),
        }
    }
    rfs::statat(dirfd, name, flags).map(|s| Meta::from_stat(&s))
}

pub(super) fn meta_fd(fd: BorrowedFd<'_>) -> rustix::io::Result<Meta> {
    meta_at(fd, c"", AtFlags::EMPTY_PATH)
}

/// `meta_at` of one name (a single component) in `dir`; `None` if it does
/// not exist.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<Option<Meta>> {
    let name = std::ffi::CString::new(name).map_err(|_| Errno::INVAL)?;
    match meta_at(dir, &name, AtFlags::empty()) {
        Ok(m) => Ok(Some(m)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Opens something in a source tree: never follows a final symlink, and
/// avoids touching its atime where allowed.
pub(super) fn open_src(
    dirfd: BorrowedFd<'_>,
    name: &CStr,
    flags: OFlags,
) -> rustix::io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
    match rfs::openat(dirfd, name, flags | OFlags::NOATIME, Mode::empty()) {
        // O_NOATIME needs ownership or CAP_FOWNER.
        Err(Errno::PERM) => rfs::openat(dirfd, name, flags, Mode::empty()),
        r => r,
    }
}

pub(super) fn open_dir(dirfd: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<OwnedFd> {
    rfs::openat(
        dirfd,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}
