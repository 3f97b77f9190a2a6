//! The toolkit's error, and the paths its messages name.

use std::ffi::{CStr, CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;

/// Why a copy or a measurement failed. Each message names the path and the
/// operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// A system call on `path` failed.
    #[error("copying {}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Reading, writing or removing the extended attribute `name` failed.
    #[error("copying {}: {op} {name}: {source}", path.display())]
    Xattr {
        path: PathBuf,
        op: &'static str,
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// A system call failed while [`tree_usage`](super::tree_usage) measured `path`.
    #[error("measuring {}: {op}: {source}", path.display())]
    Usage {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The trees are not in a state the copy can work with (destination not
    /// empty, an entry replaced while being copied, ...).
    #[error("copying {}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: &'static str },
}

impl CopyError {
    /// The OS error number behind this error, if there is one (for example
    /// to tell `ENOSPC` apart).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            CopyError::Io { source, .. }
            | CopyError::Xattr { source, .. }
            | CopyError::Usage { source, .. } => source.raw_os_error(),
            CopyError::Invalid { .. } => None,
        }
    }
}

pub(super) fn io_err(path: PathBuf, op: &'static str, e: Errno) -> CopyError {
    CopyError::Io {
        path,
        op,
        source: e.into(),
    }
}

pub(super) fn usage_err(path: PathBuf, op: &'static str, e: Errno) -> CopyError {
    CopyError::Usage {
        path,
        op,
        source: e.into(),
    }
}

pub(super) fn xattr_err(path: PathBuf, op: &'static str, name: &CStr, e: Errno) -> CopyError {
    CopyError::Xattr {
        path,
        op,
        name: name.to_string_lossy().into_owned(),
        source: e.into(),
    }
}

/// `root`, joined with `rel` and `name` when they are not empty.
pub(super) fn join(root: &Path, rel: &Path, name: Option<&CStr>) -> PathBuf {
    let mut p = root.to_path_buf();
    if !rel.as_os_str().is_empty() {
        p.push(rel);
    }
    if let Some(name) = name {
        p.push(OsStr::from_bytes(name.to_bytes()));
    }
    p
}

pub(super) fn c_path(path: &Path) -> Result<CString, CopyError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| CopyError::Invalid {
        path: path.to_path_buf(),
        reason: "path contains a NUL byte",
    })
}
