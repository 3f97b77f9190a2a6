//! The directory walk shared by the copy and the measurement: iterative,
//! with at most `MAX_OPEN_DIRS` directories open per side; deeper ancestors
//! are closed and reopened through `..` (checked by inode) on the way back
//! up, so neither the stack, the descriptor limit nor `PATH_MAX` bounds the
//! depth of a tree.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs, OFlags};
use rustix::io::Errno;

use super::meta::{meta_fd, open_dir, open_src, FileId};

/// How many directories (per side) a walk keeps open at once, besides the
/// root. Deeper ancestors are closed and reopened through `..` on the way
/// back up.
pub(super) const MAX_OPEN_DIRS: usize = 32;

/// Names in a directory, without `.` and `..`, in reverse readdir order (the
/// walk pops them from the end).
pub fn read_names(fd: BorrowedFd<'_>) -> rustix::io::Result<Vec<CString>> {
    let mut dir = rfs::Dir::read_from(fd)?;
    let mut names = Vec::new();
    while let Some(entry) = dir.read() {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    names.reverse();
    Ok(names)
}

pub(super) struct Fds {
    pub(super) src: OwnedFd,
    /// Absent in walks that only read (tree_usage).
    pub(super) dst: Option<OwnedFd>,
}

pub(super) struct Frame<T> {
    /// `None` while the directory is too far above the top of the walk.
    pub(super) fds: Option<Fds>,
    pub(super) src_id: FileId,
    pub(super) dst_id: Option<FileId>,
    /// Entries still to visit.
    pub(super) entries: Vec<CString>,
    pub(super) data: T,
}

pub(super) enum ReopenError {
    Io { dst: bool, errno: Errno },
    Moved { dst: bool },
}

pub(super) struct DirStack<T> {
    pub(super) frames: Vec<Frame<T>>,
}

impl<T> DirStack<T> {
    pub(super) fn push(&mut self, frame: Frame<T>) {
        self.frames.push(frame);
        let n = self.frames.len();
        if n > MAX_OPEN_DIRS + 1 {
            // The root stays open; of the rest only the deepest
            // MAX_OPEN_DIRS do. The one that just left that window is
            // reopened from its child when the walk climbs back to it.
            self.frames[n - 1 - MAX_OPEN_DIRS].fds = None;
        }
    }

    /// After the top frame was popped: if the new top was closed, reopens it
    /// as `..` of the popped `child` and checks it is the same directory.
    pub(super) fn reopen_top(&mut self, child: &Fds) -> Result<(), ReopenError> {
        let Some(top) = self.frames.last_mut() else {
            return Ok(());
        };
        if top.fds.is_some() {
            return Ok(());
        }
        let check = |fd: &OwnedFd, id: FileId, dst: bool| match meta_fd(fd.as_fd()) {
            Ok(m) if m.id() == id => Ok(()),
            Ok(_) => Err(ReopenError::Moved { dst }),
            Err(errno) => Err(ReopenError::Io { dst, errno }),
        };
        let src = open_src(child.src.as_fd(), c"..", OFlags::RDONLY | OFlags::DIRECTORY)
            .map_err(|errno| ReopenError::Io { dst: false, errno })?;
        check(&src, top.src_id, false)?;
        let dst = match (&child.dst, top.dst_id) {
            (Some(c), Some(id)) => {
                let d = open_dir(c.as_fd(), c"..")
                    .map_err(|errno| ReopenError::Io { dst: true, errno })?;
                check(&d, id, true)?;
                Some(d)
            }
            _ => None,
        };
        top.fds = Some(Fds { src, dst });
        Ok(())
    }
}
