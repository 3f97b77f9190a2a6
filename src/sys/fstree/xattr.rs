//! Extended attributes of open files, and of names in an open directory
//! (symlinks and special files, which cannot be opened for `f*xattr`,
//! through `/proc/self/fd`). Every namespace, `trusted.overlay.*` included.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, BorrowedFd};

use rustix::fs::{self as rfs, XattrFlags};
use rustix::io::Errno;

/// Where xattrs are read or written: an open file, or a path whose final
/// component is not followed (the `l*xattr` calls).
#[derive(Clone, Copy)]
pub(super) enum XRef<'a> {
    Fd(BorrowedFd<'a>),
    Path(&'a CStr),
}

/// A path naming `name` inside the open directory `dir` without resolving
/// anything but the descriptor itself, for the `l*xattr` calls on symlinks
/// and special files (which cannot be opened for `f*xattr`).
pub(super) fn proc_path(dir: BorrowedFd<'_>, name: &CStr) -> Option<CString> {
    let mut v = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    v.extend_from_slice(name.to_bytes());
    CString::new(v).ok()
}

pub(super) fn xattr_list(x: XRef<'_>) -> rustix::io::Result<Vec<CString>> {
    loop {
        let size = match x {
            XRef::Fd(fd) => rfs::flistxattr_query(fd),
            XRef::Path(p) => rfs::llistxattr_query(p),
        };
        let size = match size {
            Ok(s) => s,
            // The file system has no xattrs at all.
            Err(Errno::OPNOTSUPP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        let got = match x {
            XRef::Fd(fd) => rfs::flistxattr(fd, &mut buf),
            XRef::Path(p) => rfs::llistxattr(p, &mut buf),
        };
        match got {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf
                    .split(|&b| b == 0)
                    .filter(|s| !s.is_empty())
                    .filter_map(|s| CString::new(s).ok())
                    .collect());
            }
            // The list grew since the size query.
            Err(Errno::RANGE) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The value of `name`, or `None` if it vanished since it was listed.
pub(super) fn xattr_get(x: XRef<'_>, name: &CStr) -> rustix::io::Result<Option<Vec<u8>>> {
    loop {
        let size = match x {
            XRef::Fd(fd) => rfs::fgetxattr_query(fd, name),
            XRef::Path(p) => rfs::lgetxattr_query(p, name),
        };
        let size = match size {
            Ok(s) => s,
            Err(Errno::NODATA) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut buf = vec![0u8; size];
        if size == 0 {
            return Ok(Some(buf));
        }
        let got = match x {
            XRef::Fd(fd) => rfs::fgetxattr(fd, name, &mut buf),
            XRef::Path(p) => rfs::lgetxattr(p, name, &mut buf),
        };
        match got {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::RANGE) => continue,
            Err(Errno::NODATA) => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

pub(super) fn xattr_set(x: XRef<'_>, name: &CStr, value: &[u8]) -> rustix::io::Result<()> {
    match x {
        XRef::Fd(fd) => rfs::fsetxattr(fd, name, value, XattrFlags::empty()),
        XRef::Path(p) => rfs::lsetxattr(p, name, value, XattrFlags::empty()),
    }
}

pub(super) fn xattr_remove(x: XRef<'_>, name: &CStr) -> rustix::io::Result<()> {
    match x {
        XRef::Fd(fd) => rfs::fremovexattr(fd, name),
        XRef::Path(p) => rfs::lremovexattr(p, name),
    }
}

/// Extended attributes of one name in `dir` (not following symlinks),
/// sorted by name.
pub fn xattrs_at(dir: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let path = proc_path_bytes(dir, name)?;
    let x = XRef::Path(&path);
    let mut out = Vec::new();
    for n in xattr_list(x)? {
        if let Some(v) = xattr_get(x, &n)? {
            out.push((n.into_bytes(), v));
        }
    }
    out.sort();
    Ok(out)
}

/// Sets one extended attribute on a name in `dir`, not following symlinks.
pub fn set_xattr_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    key: &[u8],
    value: &[u8],
) -> std::io::Result<()> {
    let path = proc_path_bytes(dir, name)?;
    let key = CString::new(key).map_err(|_| Errno::INVAL)?;
    Ok(xattr_set(XRef::Path(&path), &key, value)?)
}

/// `proc_path` of a byte name; a name with a NUL byte is EINVAL, as the
/// kernel would answer.
fn proc_path_bytes(dir: BorrowedFd<'_>, name: &[u8]) -> std::io::Result<CString> {
    let name = CString::new(name).map_err(|_| Errno::INVAL)?;
    Ok(proc_path(dir, &name).ok_or(Errno::INVAL)?)
}
