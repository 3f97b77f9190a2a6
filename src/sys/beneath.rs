//! Path resolution that cannot leave a directory: every lookup goes through
//! openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV
//! (Linux 5.6), so `..`, absolute paths, any symlink on the way (even one
//! created a moment ago) and mount crossings fail in the kernel instead of
//! being checked in user space, where a race could slip past.
//!
//! Callers hold directory descriptors and act on single names with the
//! `*at` syscalls; a full path is never handed to a path-taking syscall.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, ResolveFlags};

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
    let mut names = Vec::new();
    let mut d = rfs::Dir::read_from(&fd)?;
    while let Some(entry) = d.read() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        names.push(name.to_vec());
    }
    names.sort();
    Ok(names)
}

/// The `/proc/self/fd/N/name` path of a name in an open directory, for the
/// few calls that have no `*at` form (xattrs on symlinks and devices). The
/// magic link is the directory already resolved; `name` is one component.
pub fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> Vec<u8> {
    use std::os::fd::AsRawFd;
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    p
}

/// Extended attributes of one name in `dir` (not following symlinks),
/// sorted by name.
pub fn xattrs_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let path = proc_path(dir, name);
    let mut buf = vec![0u8; 1024];
    let len = loop {
        match rfs::llistxattr(path.as_slice(), &mut buf[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => buf.resize(buf.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for n in buf[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let mut v = vec![0u8; 256];
        let vlen = loop {
            match rfs::lgetxattr(path.as_slice(), n, &mut v[..]) {
                Ok(l) => break Some(l),
                Err(rustix::io::Errno::RANGE) => v.resize(v.len() * 4, 0),
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(l) = vlen {
            v.truncate(l);
            out.push((n.to_vec(), v));
        }
    }
    out.sort();
    Ok(out)
}

/// Sets one extended attribute on a name in `dir`, not following symlinks.
pub fn set_xattr_at(dir: BorrowedFd<'_>, name: &[u8], key: &[u8], value: &[u8]) -> io::Result<()> {
    let path = proc_path(dir, name);
    Ok(rfs::lsetxattr(
        path.as_slice(),
        key,
        value,
        rfs::XattrFlags::empty(),
    )?)
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
