//! Path resolution that cannot leave a directory: every lookup goes through
//! openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV
//! (Linux 5.6), so `..`, absolute paths, any symlink on the way (even one
//! created a moment ago) and mount crossings fail in the kernel instead of
//! being checked in user space, where a race could slip past.
//!
//! Callers hold directory descriptors and act on single names with the
//! `*at` syscalls; a full path is never handed to a path-taking syscall.
//! Metadata and xattrs of what they find come from `sys::fstree`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags};

use super::fstree;

/// The resolution rules of this module.
pub fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH
        | ResolveFlags::NO_SYMLINKS
        | ResolveFlags::NO_MAGICLINKS
        | ResolveFlags::NO_XDEV
}

/// Opens directory `path` (relative, `/`-separated; "" = `root` itself)
/// beneath `root` with `O_PATH`-free read access (usable for `*at` calls,
/// `fsetxattr` and directory listing).
pub fn open_dir(root: BorrowedFd<'_>, path: &[u8]) -> io::Result<OwnedFd> {
    let path: &[u8] = if path.is_empty() { b"." } else { path };
    Ok(rfs::openat2(
        root,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        resolve_flags(),
    )?)
}

/// Opens `name` in `dir` (one component) with `flags`, never following a
/// symlink.
pub fn open_at(dir: BorrowedFd<'_>, name: &[u8], flags: OFlags, mode: u32) -> io::Result<OwnedFd> {
    Ok(rfs::openat2(
        dir,
        name,
        flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
        resolve_flags(),
    )?)
}

/// `lstat` of one name in `dir`; `None` if it does not exist.
pub fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<rfs::Stat>> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether a `stat` mode is a directory.
pub fn is_dir(mode: u32) -> bool {
    mode & libc::S_IFMT == libc::S_IFDIR
}

/// Removes `name` in `dir`, recursively if it is a directory; no error if
/// it does not exist. Never follows a symlink.
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) => return Ok(()),
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(rustix::io::Errno::ISDIR) => {}
        Err(e) => return Err(e.into()),
    }
    let sub = open_at(dir, name, OFlags::RDONLY | OFlags::DIRECTORY, 0)?;
    empty_dir(sub.as_fd())?;
    match rfs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes every entry of the directory `dir` for which `keep` is false.
pub fn empty_dir_except(dir: BorrowedFd<'_>, keep: &dyn Fn(&[u8]) -> bool) -> io::Result<()> {
    for name in list_dir(dir)? {
        if !keep(&name) {
            remove_all_at(dir, &name)?;
        }
    }
    Ok(())
}

/// Removes every entry of the directory `dir`.
pub fn empty_dir(dir: BorrowedFd<'_>) -> io::Result<()> {
    empty_dir_except(dir, &|_| false)
}

/// Names in directory `dir` (without `.` and `..`), sorted bytewise.
pub fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    // A fresh descriptor: reading a directory moves its offset.
    let fd = rfs::openat(
        dir,
        c".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut names: Vec<Vec<u8>> = fstree::read_names(fd.as_fd())?
        .into_iter()
        .map(|n| n.into_bytes())
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_stays_beneath() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("d")).unwrap();
        std::os::unix::fs::symlink("/", t.path().join("up")).unwrap();
        std::os::unix::fs::symlink("d", t.path().join("rel")).unwrap();
        let root = rfs::open(t.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        assert!(open_dir(root.as_fd(), b"d").is_ok());
        assert!(open_dir(root.as_fd(), b"").is_ok());
        for bad in [&b"up"[..], b"rel", b"../", b"/etc", b"d/../.."] {
            assert!(open_dir(root.as_fd(), bad).is_err(), "{bad:?}");
        }
    }
}
