//! FITRIM: ask a mounted file system to discard its free space, so the
//! storage below (an SSD, a thin pool, a loop device whose sparse file gets
//! holes punched) gets the blocks back. The same ioctl fstrim(8) uses.
//!
//! Kernel facts (include/uapi/linux/fs.h, fs/ioctl.c and each file
//! system's `*_trim_fs`): `FITRIM = _IOWR('X', 121, struct fstrim_range)`;
//! on return `range.len` holds what the file system reports: ext4 and
//! btrfs the bytes they discarded, xfs (seen on 6.18) the length of the
//! range it walked, i.e. the whole device for a full trim (fstrim(8)
//! prints the same number). EOPNOTSUPP when the file system or its device
//! cannot discard. The call cannot be interrupted once it runs.
//!
//! This is the generic wrapper the directory drivers use; the btrfs driver
//! may bring its own next to its other ioctls.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// `struct fstrim_range` from `<linux/fs.h>`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct FstrimRange {
    pub start: u64,
    pub len: u64,
    pub minlen: u64,
}

nix::ioctl_readwrite!(fitrim_ioctl, b'X', 121, FstrimRange);

#[derive(Debug, thiserror::Error)]
pub enum TrimError {
    #[error("open {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the file system holding {path} (or the device below it) cannot discard: FITRIM is not supported there")]
    NotSupported { path: String },
    #[error("FITRIM on the file system holding {path}: {source}")]
    Ioctl {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl TrimError {
    /// The errno behind the failure, if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            TrimError::Open { source, .. } | TrimError::Ioctl { source, .. } => {
                source.raw_os_error()
            }
            TrimError::NotSupported { .. } => Some(libc::EOPNOTSUPP),
        }
    }
}

/// Discards all free space of the file system holding `path` (any file or
/// directory on it) and returns the bytes the kernel reports (see above).
///
/// The file system is synced first (syncfs): blocks of files deleted a
/// moment ago are still "busy" until the journal commits that deletion, and
/// xfs and ext4 skip busy extents, so without the sync a trim right after a
/// cleanup gives back much less than it could.
pub fn fitrim(path: &Path) -> Result<u64, TrimError> {
    let shown = || path.display().to_string();
    let f = File::open(path).map_err(|source| TrimError::Open {
        path: shown(),
        source,
    })?;
    // A failed sync only makes the trim less thorough; FITRIM reports real errors.
    if let Err(e) = nix::unistd::syncfs(&f) {
        tracing::debug!(path = %path.display(), error = %e, "syncfs before FITRIM failed");
    }
    let mut range = FstrimRange {
        start: 0,
        len: u64::MAX,
        minlen: 0,
    };
    // SAFETY: `range` is a valid, writable fstrim_range for the whole call
    // and the fd is open.
    match unsafe { fitrim_ioctl(f.as_raw_fd(), &mut range) } {
        Ok(_) => Ok(range.len),
        Err(nix::errno::Errno::EOPNOTSUPP) | Err(nix::errno::Errno::ENOTTY) => {
            Err(TrimError::NotSupported { path: shown() })
        }
        Err(e) => Err(TrimError::Ioctl {
            path: shown(),
            source: e.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_number_matches_linux() {
        // _IOWR('X', 121, struct fstrim_range) on every Linux architecture
        // with the generic ioctl layout.
        assert_eq!(std::mem::size_of::<FstrimRange>(), 24);
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        assert_eq!(
            nix::request_code_readwrite!(b'X', 121, std::mem::size_of::<FstrimRange>()),
            0xc018_5879
        );
    }

    #[test]
    fn fitrim_on_a_non_fs_path_fails_cleanly() {
        // /proc cannot discard: a typed error, never a panic.
        let err = fitrim(Path::new("/proc")).unwrap_err();
        assert!(
            matches!(
                err,
                TrimError::NotSupported { .. } | TrimError::Ioctl { .. }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("/proc"), "{err}");
    }
}
