//! Disk usage of a tree (`tree_usage`), as `du` counts it.

use std::collections::HashSet;
use std::ffi::{CStr, OsStr};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, OFlags, CWD};
use rustix::io::Errno;

use super::error::{c_path, join, usage_err, CopyError};
use super::meta::{meta_at, meta_fd, open_src, FileId};
use super::walk::{read_names, DirStack, Fds, Frame, ReopenError};

/// Bytes (sum of `st_blocks * 512`, each inode counted once even if
/// hard-linked) and inode count of the tree at `root`, root included. Does
/// not follow symlinks and does not cross mount points: an entry on another
/// device, or on another mount of the same file system (a bind mount), is
/// left out with everything below it. Entries that vanish while being
/// measured are left out too.
pub fn tree_usage(root: &Path) -> Result<(u64, u64), CopyError> {
    let root_c = c_path(root)?;
    let meta = meta_at(CWD, &root_c, AtFlags::empty())
        .map_err(|e| usage_err(root.to_path_buf(), "stat", e))?;
    let mut bytes = meta.blocks * 512;
    let mut inodes = 1;
    if !meta.is_dir() {
        return Ok((bytes, inodes));
    }
    let fd = open_src(CWD, &root_c, OFlags::RDONLY | OFlags::DIRECTORY)
        .map_err(|e| usage_err(root.to_path_buf(), "open", e))?;
    let fd_meta = meta_fd(fd.as_fd()).map_err(|e| usage_err(root.to_path_buf(), "stat", e))?;
    if fd_meta.id() != meta.id() {
        return Err(CopyError::Invalid {
            path: root.to_path_buf(),
            reason: "directory was replaced while being measured",
        });
    }
    let entries =
        read_names(fd.as_fd()).map_err(|e| usage_err(root.to_path_buf(), "readdir", e))?;
    let mut stack = DirStack {
        frames: vec![Frame {
            fds: Some(Fds { src: fd, dst: None }),
            src_id: meta.id(),
            dst_id: None,
            entries,
            data: (),
        }],
    };
    let mut rel = PathBuf::new();
    let mut seen: HashSet<FileId> = HashSet::new();
    let at = |rel: &Path, name: Option<&CStr>| join(root, rel, name);

    while let Some(top) = stack.frames.last_mut() {
        let Some(name) = top.entries.pop() else {
            let Some(frame) = stack.frames.pop() else {
                break;
            };
            rel.pop();
            if let Some(fds) = frame.fds.as_ref() {
                stack.reopen_top(fds).map_err(|e| match e {
                    ReopenError::Io { errno, .. } => {
                        usage_err(at(&rel, None), "reopen directory", errno)
                    }
                    ReopenError::Moved { .. } => CopyError::Invalid {
                        path: at(&rel, None),
                        reason: "directory was moved while being measured",
                    },
                })?;
            }
            continue;
        };
        let Some(fds) = top.fds.as_ref() else {
            return Err(CopyError::Invalid {
                path: at(&rel, None),
                reason: "internal error: directory descriptor missing",
            });
        };
        let m = match meta_at(fds.src.as_fd(), &name, AtFlags::empty()) {
            Ok(m) => m,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(usage_err(at(&rel, Some(&name)), "stat", e)),
        };
        if m.other_mount(&meta) {
            continue;
        }
        if !m.is_dir() && m.nlink > 1 && !seen.insert(m.id()) {
            continue;
        }
        bytes += m.blocks * 512;
        inodes += 1;
        if !m.is_dir() {
            continue;
        }
        let sub = match open_src(fds.src.as_fd(), &name, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(usage_err(at(&rel, Some(&name)), "open", e)),
        };
        match meta_fd(sub.as_fd()) {
            Ok(now) if now.id() == m.id() => {}
            Ok(_) => continue, // replaced since the stat: measured already
            Err(e) => return Err(usage_err(at(&rel, Some(&name)), "stat", e)),
        }
        let entries = match read_names(sub.as_fd()) {
            Ok(entries) => entries,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(usage_err(at(&rel, Some(&name)), "readdir", e)),
        };
        rel.push(OsStr::from_bytes(name.to_bytes()));
        stack.push(Frame {
            fds: Some(Fds {
                src: sub,
                dst: None,
            }),
            src_id: m.id(),
            dst_id: None,
            entries,
            data: (),
        });
    }
    Ok((bytes, inodes))
}
