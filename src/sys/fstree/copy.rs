//! Whole-tree copies (`copy_tree`): owners, modes, every xattr, hard links,
//! device nodes, fifos, sockets, symlinks verbatim, nanosecond times;
//! destination directories are created `0700` and get their owner, xattrs,
//! mode and times once everything below them is in place.

use std::collections::HashMap;
use std::ffi::{CStr, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, CWD};
use rustix::io::Errno;

use super::data::DataCopier;
use super::error::{c_path, io_err, join, xattr_err, CopyError};
use super::meta::{meta_at, meta_fd, open_dir, open_src, FileId, Meta};
use super::walk::{read_names, DirStack, Fds, Frame, ReopenError};
use super::xattr::{proc_path, xattr_get, xattr_list, xattr_remove, xattr_set, XRef};

/// What [`copy_tree`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Non-directory entries created below `dst`: regular files, extra hard
    /// links, symlinks, device nodes, fifos and sockets.
    pub files: u64,
    /// Logical size (`st_size`) of the regular files whose data was cloned or
    /// copied; a hard-linked file counts once.
    pub bytes: u64,
    /// Regular files whose data was shared with `FICLONE`.
    pub reflinked: u64,
    /// Regular files whose data was copied (or that were empty).
    /// `reflinked + copied` is the number of distinct regular files.
    pub copied: u64,
}

/// Makes the xattrs of `dst` those of `src`: removes what `src` lacks (for
/// example an ACL inherited from a default ACL) and copies every attribute
/// of every namespace. Call it after the owner is set: `chown` drops
/// `security.capability`.
pub(super) fn copy_xattrs(
    src: XRef<'_>,
    dst: XRef<'_>,
    spath: &dyn Fn() -> PathBuf,
    dpath: &dyn Fn() -> PathBuf,
) -> Result<(), CopyError> {
    let names = xattr_list(src).map_err(|e| io_err(spath(), "listxattr", e))?;
    let present = xattr_list(dst).map_err(|e| io_err(dpath(), "listxattr", e))?;
    for name in present.iter().filter(|n| !names.contains(n)) {
        if let Err(e) = xattr_remove(dst, name) {
            // Security modules label new files themselves and may refuse
            // to have the label removed; that is theirs to decide.
            if name.to_bytes().starts_with(b"security.") {
                tracing::debug!(path = %dpath().display(), name = ?name, error = %e, "keeping xattr the source lacks");
                continue;
            }
            return Err(xattr_err(dpath(), "removexattr", name, e));
        }
    }
    for name in &names {
        let Some(value) =
            xattr_get(src, name).map_err(|e| xattr_err(spath(), "getxattr", name, e))?
        else {
            continue;
        };
        xattr_set(dst, name, &value).map_err(|e| xattr_err(dpath(), "setxattr", name, e))?;
    }
    Ok(())
}

/// Copies the contents of `src` into the existing empty directory `dst`, and
/// gives `dst` the owner, mode, xattrs and times of `src`.
///
/// Regular files are cloned with `FICLONE` where the file system supports
/// it, else copied (holes preserved). Owners, modes (setuid/setgid/sticky
/// included), all xattrs, nanosecond atime/mtime, hard links, symlinks
/// (verbatim), device nodes, fifos and sockets are reproduced. Symlinks are
/// never followed. Mount points inside `src` (another device, or a bind
/// mount of the same file system) are skipped whole, with a warning. Both
/// `src` and `dst` must be directories and not symlinks themselves, and
/// `/proc` must be mounted (xattrs of symlinks and device nodes are reached
/// through `/proc/self/fd`). Reading a source symlink may update its atime;
/// nothing else in `src` is modified.
///
/// On error the partial copy is left in `dst` for the caller to remove.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<CopyStats, CopyError> {
    let src_c = c_path(src)?;
    let dst_c = c_path(dst)?;
    // Symlinks and special files have their xattrs handled through
    // /proc/self/fd: make a missing /proc a clear error up front.
    rfs::access(c"/proc/self/fd", rfs::Access::EXISTS).map_err(|e| {
        io_err(
            PathBuf::from("/proc/self/fd"),
            "access (procfs is needed)",
            e,
        )
    })?;

    let sfd = open_src(CWD, &src_c, OFlags::RDONLY | OFlags::DIRECTORY)
        .map_err(|e| io_err(src.to_path_buf(), "open", e))?;
    let smeta = meta_fd(sfd.as_fd()).map_err(|e| io_err(src.to_path_buf(), "stat", e))?;
    let dfd = open_dir(CWD, &dst_c).map_err(|e| io_err(dst.to_path_buf(), "open", e))?;
    let dmeta = meta_fd(dfd.as_fd()).map_err(|e| io_err(dst.to_path_buf(), "stat", e))?;
    if smeta.id() == dmeta.id() {
        return Err(CopyError::Invalid {
            path: dst.to_path_buf(),
            reason: "source and destination are the same directory",
        });
    }
    let existing = read_names(dfd.as_fd()).map_err(|e| io_err(dst.to_path_buf(), "readdir", e))?;
    if !existing.is_empty() {
        return Err(CopyError::Invalid {
            path: dst.to_path_buf(),
            reason: "destination is not empty",
        });
    }
    let entries = read_names(sfd.as_fd()).map_err(|e| io_err(src.to_path_buf(), "readdir", e))?;
    let dst_root = dfd.try_clone().map_err(|e| CopyError::Io {
        path: dst.to_path_buf(),
        op: "dup",
        source: e,
    })?;

    let mut copier = Copier {
        src_root: src,
        dst_root: dst,
        dst_root_fd: dst_root,
        rel: PathBuf::new(),
        root: smeta,
        dst_id: dmeta.id(),
        links: HashMap::new(),
        data: DataCopier::default(),
        stats: CopyStats::default(),
    };
    let mut stack = DirStack {
        frames: vec![Frame {
            fds: Some(Fds {
                src: sfd,
                dst: Some(dfd),
            }),
            src_id: smeta.id(),
            dst_id: Some(dmeta.id()),
            entries,
            data: smeta,
        }],
    };
    copier.run(&mut stack)?;
    Ok(copier.stats)
}

pub(super) struct Copier<'a> {
    src_root: &'a Path,
    dst_root: &'a Path,
    dst_root_fd: OwnedFd,
    /// The directory being filled, relative to the roots.
    rel: PathBuf,
    /// Metadata of the source root (its device and mount).
    root: Meta,
    /// The destination root, never to be copied into itself.
    dst_id: FileId,
    /// First destination (relative to `dst`) of each multiply-linked source
    /// inode, and how many more links to it may come.
    links: HashMap<FileId, (PathBuf, u64)>,
    data: DataCopier,
    stats: CopyStats,
}

impl Copier<'_> {
    fn spath(&self, name: Option<&CStr>) -> PathBuf {
        join(self.src_root, &self.rel, name)
    }

    fn dpath(&self, name: Option<&CStr>) -> PathBuf {
        join(self.dst_root, &self.rel, name)
    }

    fn serr(&self, name: &CStr, op: &'static str, e: Errno) -> CopyError {
        io_err(self.spath(Some(name)), op, e)
    }

    fn derr(&self, name: &CStr, op: &'static str, e: Errno) -> CopyError {
        io_err(self.dpath(Some(name)), op, e)
    }

    fn internal(&self) -> CopyError {
        CopyError::Invalid {
            path: self.spath(None),
            reason: "internal error: directory descriptor missing",
        }
    }

    fn run(&mut self, stack: &mut DirStack<Meta>) -> Result<(), CopyError> {
        loop {
            let Some(top) = stack.frames.last_mut() else {
                return Ok(());
            };
            if let Some(name) = top.entries.pop() {
                let Some(Fds {
                    src,
                    dst: Some(dst),
                }) = top.fds.as_ref()
                else {
                    return Err(self.internal());
                };
                if let Some(frame) = self.entry(src.as_fd(), dst.as_fd(), &name)? {
                    self.rel.push(OsStr::from_bytes(name.to_bytes()));
                    stack.push(frame);
                }
            } else {
                let Some(frame) = stack.frames.pop() else {
                    return Ok(());
                };
                self.finish_dir(&frame)?;
                self.rel.pop();
                if let Some(fds) = frame.fds.as_ref() {
                    stack.reopen_top(fds).map_err(|e| {
                        let (dst, err) = match e {
                            ReopenError::Io { dst, errno } => (dst, Some(errno)),
                            ReopenError::Moved { dst } => (dst, None),
                        };
                        let path = if dst {
                            self.dpath(None)
                        } else {
                            self.spath(None)
                        };
                        match err {
                            Some(errno) => io_err(path, "reopen directory", errno),
                            None => CopyError::Invalid {
                                path,
                                reason: "directory was moved during the copy",
                            },
                        }
                    })?;
                }
            }
        }
    }

    /// Copies one entry of the current directory. Returns a frame to push
    /// when it is a directory to descend into.
    fn entry(
        &mut self,
        sdir: BorrowedFd<'_>,
        ddir: BorrowedFd<'_>,
        name: &CStr,
    ) -> Result<Option<Frame<Meta>>, CopyError> {
        let meta = meta_at(sdir, name, AtFlags::empty()).map_err(|e| self.serr(name, "stat", e))?;
        if meta.other_mount(&self.root) {
            tracing::warn!(path = %self.spath(Some(name)).display(), "not copying a mount point inside the source tree");
            return Ok(None);
        }
        if meta.is_dir() {
            if meta.id() == self.dst_id {
                tracing::warn!(path = %self.spath(Some(name)).display(), "not copying the destination into itself");
                return Ok(None);
            }
            return self.enter_dir(sdir, ddir, name, meta).map(Some);
        }
        if meta.nlink > 1 {
            if let Some((first, left)) = self.links.get_mut(&meta.id()) {
                let first = first.clone();
                *left = left.saturating_sub(1);
                if *left == 0 {
                    self.links.remove(&meta.id());
                }
                self.link(&first, ddir, name)?;
                self.stats.files += 1;
                return Ok(None);
            }
        }
        match meta.kind {
            FileType::RegularFile => self.copy_file(sdir, ddir, name, &meta)?,
            FileType::Symlink => self.copy_symlink(sdir, ddir, name, &meta)?,
            FileType::Fifo
            | FileType::Socket
            | FileType::CharacterDevice
            | FileType::BlockDevice => self.copy_special(sdir, ddir, name, &meta)?,
            _ => {
                return Err(CopyError::Invalid {
                    path: self.spath(Some(name)),
                    reason: "unsupported file type",
                })
            }
        }
        self.stats.files += 1;
        if meta.nlink > 1 {
            let rel = self.rel.join(OsStr::from_bytes(name.to_bytes()));
            self.links.insert(meta.id(), (rel, meta.nlink - 1));
        }
        Ok(None)
    }

    fn same_inode(&self, fd: BorrowedFd<'_>, meta: &Meta, name: &CStr) -> Result<(), CopyError> {
        let now = meta_fd(fd).map_err(|e| self.serr(name, "stat", e))?;
        if now.id() != meta.id() || now.kind != meta.kind {
            return Err(CopyError::Invalid {
                path: self.spath(Some(name)),
                reason: "entry was replaced while being copied",
            });
        }
        Ok(())
    }

    fn enter_dir(
        &mut self,
        sdir: BorrowedFd<'_>,
        ddir: BorrowedFd<'_>,
        name: &CStr,
        meta: Meta,
    ) -> Result<Frame<Meta>, CopyError> {
        let s = open_src(sdir, name, OFlags::RDONLY | OFlags::DIRECTORY)
            .map_err(|e| self.serr(name, "open", e))?;
        self.same_inode(s.as_fd(), &meta, name)?;
        let entries = read_names(s.as_fd()).map_err(|e| self.serr(name, "readdir", e))?;
        rfs::mkdirat(ddir, name, Mode::RWXU).map_err(|e| self.derr(name, "mkdir", e))?;
        let d = open_dir(ddir, name).map_err(|e| self.derr(name, "open", e))?;
        let dmeta = meta_fd(d.as_fd()).map_err(|e| self.derr(name, "stat", e))?;
        Ok(Frame {
            fds: Some(Fds {
                src: s,
                dst: Some(d),
            }),
            src_id: meta.id(),
            dst_id: Some(dmeta.id()),
            entries,
            data: meta,
        })
    }

    /// Gives a copied directory the owner, xattrs, mode and times of its
    /// source, once everything below it is in place.
    fn finish_dir(&self, frame: &Frame<Meta>) -> Result<(), CopyError> {
        let Some(Fds { src, dst: Some(d) }) = frame.fds.as_ref() else {
            return Err(self.internal());
        };
        let m = &frame.data;
        let here = || self.dpath(None);
        rfs::fchown(d, m.uid(), m.gid()).map_err(|e| io_err(here(), "chown", e))?;
        copy_xattrs(
            XRef::Fd(src.as_fd()),
            XRef::Fd(d.as_fd()),
            &|| self.spath(None),
            &here,
        )?;
        rfs::fchmod(d, m.mode()).map_err(|e| io_err(here(), "chmod", e))?;
        rfs::futimens(d, &m.timestamps()).map_err(|e| io_err(here(), "utimensat", e))?;
        Ok(())
    }

    fn copy_file(
        &mut self,
        sdir: BorrowedFd<'_>,
        ddir: BorrowedFd<'_>,
        name: &CStr,
        meta: &Meta,
    ) -> Result<(), CopyError> {
        // O_NONBLOCK: should the entry have become a fifo, don't hang on it.
        let s = open_src(sdir, name, OFlags::RDONLY | OFlags::NONBLOCK)
            .map_err(|e| self.serr(name, "open", e))?;
        self.same_inode(s.as_fd(), meta, name)?;
        let d = rfs::openat(
            ddir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )
        .map_err(|e| self.derr(name, "create", e))?;
        let reflinked = self
            .data
            .copy(s.as_fd(), d.as_fd(), meta.size)
            .map_err(|e| {
                if e.on_src {
                    self.serr(name, e.op, e.errno)
                } else {
                    self.derr(name, e.op, e.errno)
                }
            })?;
        if reflinked {
            self.stats.reflinked += 1;
        } else {
            self.stats.copied += 1;
        }
        self.stats.bytes += meta.size;
        // Owner first (it clears setuid and drops security.capability),
        // then xattrs, then the mode, then times.
        rfs::fchown(&d, meta.uid(), meta.gid()).map_err(|e| self.derr(name, "chown", e))?;
        copy_xattrs(
            XRef::Fd(s.as_fd()),
            XRef::Fd(d.as_fd()),
            &|| self.spath(Some(name)),
            &|| self.dpath(Some(name)),
        )?;
        rfs::fchmod(&d, meta.mode()).map_err(|e| self.derr(name, "chmod", e))?;
        rfs::futimens(&d, &meta.timestamps()).map_err(|e| self.derr(name, "utimensat", e))?;
        Ok(())
    }

    fn copy_symlink(
        &mut self,
        sdir: BorrowedFd<'_>,
        ddir: BorrowedFd<'_>,
        name: &CStr,
        meta: &Meta,
    ) -> Result<(), CopyError> {
        let target =
            rfs::readlinkat(sdir, name, Vec::new()).map_err(|e| self.serr(name, "readlink", e))?;
        rfs::symlinkat(&target, ddir, name).map_err(|e| self.derr(name, "symlink", e))?;
        self.finish_at(sdir, ddir, name, meta, false)
    }

    fn copy_special(
        &mut self,
        sdir: BorrowedFd<'_>,
        ddir: BorrowedFd<'_>,
        name: &CStr,
        meta: &Meta,
    ) -> Result<(), CopyError> {
        let rdev = match meta.kind {
            FileType::CharacterDevice | FileType::BlockDevice => meta.rdev,
            _ => 0,
        };
        rfs::mknodat(ddir, name, meta.kind, Mode::RUSR | Mode::WUSR, rdev)
            .map_err(|e| self.derr(name, "mknod", e))?;
        self.finish_at(sdir, ddir, name, meta, true)
    }

    /// Owner, xattrs, mode (unless a symlink) and times of an entry that
    /// cannot be opened, by name in its directory and without following it.
    fn finish_at(
        &self,
        sdir: BorrowedFd<'_>,
        ddir: BorrowedFd<'_>,
        name: &CStr,
        meta: &Meta,
        chmod: bool,
    ) -> Result<(), CopyError> {
        rfs::chownat(
            ddir,
            name,
            meta.uid(),
            meta.gid(),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.derr(name, "lchown", e))?;
        let (Some(sp), Some(dp)) = (proc_path(sdir, name), proc_path(ddir, name)) else {
            return Err(self.internal());
        };
        copy_xattrs(
            XRef::Path(&sp),
            XRef::Path(&dp),
            &|| self.spath(Some(name)),
            &|| self.dpath(Some(name)),
        )?;
        if chmod {
            // Not a symlink, and created by us in a directory only root can
            // write to yet: following is not a concern.
            rfs::chmodat(ddir, name, meta.mode(), AtFlags::empty())
                .map_err(|e| self.derr(name, "chmod", e))?;
        }
        rfs::utimensat(ddir, name, &meta.timestamps(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| self.derr(name, "utimensat", e))?;
        Ok(())
    }

    /// Makes `name` in `ddir` a hard link to `first` (relative to the
    /// destination root), walking there one component at a time so that
    /// neither a symlink nor PATH_MAX gets in the way.
    fn link(&self, first: &Path, ddir: BorrowedFd<'_>, name: &CStr) -> Result<(), CopyError> {
        let first_err = |op, e| io_err(join(self.dst_root, first, None), op, e);
        let Some(file) = first.file_name() else {
            return Err(self.internal());
        };
        let mut cur: Option<OwnedFd> = None;
        for comp in first.parent().into_iter().flat_map(Path::iter) {
            let base = cur.as_ref().map_or(self.dst_root_fd.as_fd(), AsFd::as_fd);
            let next = rfs::openat(
                base,
                comp,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| first_err("open", e))?;
            cur = Some(next);
        }
        let base = cur.as_ref().map_or(self.dst_root_fd.as_fd(), AsFd::as_fd);
        rfs::linkat(base, file, ddir, name, AtFlags::empty())
            .map_err(|e| self.derr(name, "link", e))
    }
}
