//! Whole-tree copies for the `vfs` storage driver, and disk usage of a tree.
//!
//! A `vfs` child layer is a complete copy of its parent directory, so the
//! copy has to carry everything a container root file system depends on:
//! owners, setuid/setgid/sticky bits, every extended attribute (including
//! `trusted.overlay.*` and `security.capability`), hard links, device nodes,
//! fifos, sockets, symlinks taken verbatim, and nanosecond times. Where the
//! file system can share extents (xfs, btrfs) each regular file is cloned
//! with `FICLONE`, so a child costs metadata only; elsewhere data is copied
//! with `copy_file_range` (falling back to `pread`/`pwrite`), skipping holes.
//!
//! Layer contents are untrusted, so the walk never follows a symlink and
//! never leaves the destination: every operation is relative to an open
//! directory descriptor and uses `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW`, and each
//! opened directory or file is checked against the inode that was listed.
//! It never crosses into another mount inside the source. The walk is
//! iterative and keeps at most `MAX_OPEN_DIRS` directories open (climbing
//! back through `..`, checked by inode), so neither the stack nor the
//! descriptor limit nor `PATH_MAX` bounds the depth of a tree.
//!
//! Destination directories are created `0700` and owned by the caller while
//! their contents are copied; their owner, xattrs, mode and times are set
//! once everything below them is in place.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use rustix::fs::{
    self as rfs, AtFlags, FileType, Gid, Mode, OFlags, SeekFrom, StatxFlags, Timespec, Timestamps,
    Uid, XattrFlags, CWD,
};
use rustix::io::Errno;

/// How many directories (per side) a walk keeps open at once, besides the
/// root. Deeper ancestors are closed and reopened through `..` on the way
/// back up.
const MAX_OPEN_DIRS: usize = 32;

/// Buffer size for the `pread`/`pwrite` fallback.
const COPY_BUF: usize = 256 * 1024;

/// Largest single `copy_file_range` request.
const CFR_CHUNK: u64 = 1 << 30;

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
    /// A system call failed while [`tree_usage`] measured `path`.
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

fn io_err(path: PathBuf, op: &'static str, e: Errno) -> CopyError {
    CopyError::Io {
        path,
        op,
        source: e.into(),
    }
}

fn usage_err(path: PathBuf, op: &'static str, e: Errno) -> CopyError {
    CopyError::Usage {
        path,
        op,
        source: e.into(),
    }
}

fn xattr_err(path: PathBuf, op: &'static str, name: &CStr, e: Errno) -> CopyError {
    CopyError::Xattr {
        path,
        op,
        name: name.to_string_lossy().into_owned(),
        source: e.into(),
    }
}

/// `root`, joined with `rel` and `name` when they are not empty.
fn join(root: &Path, rel: &Path, name: Option<&CStr>) -> PathBuf {
    let mut p = root.to_path_buf();
    if !rel.as_os_str().is_empty() {
        p.push(rel);
    }
    if let Some(name) = name {
        p.push(OsStr::from_bytes(name.to_bytes()));
    }
    p
}

fn c_path(path: &Path) -> Result<CString, CopyError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| CopyError::Invalid {
        path: path.to_path_buf(),
        reason: "path contains a NUL byte",
    })
}

// ---------------------------------------------------------------------------
// Metadata

type FileId = (u64, u64);

/// The parts of `statx` the copy and the measurement use.
#[derive(Debug, Clone, Copy)]
struct Meta {
    kind: FileType,
    /// Permission bits including setuid, setgid and sticky.
    perm: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    dev: u64,
    ino: u64,
    rdev: u64,
    size: u64,
    blocks: u64,
    atime: (i64, u32),
    mtime: (i64, u32),
    /// Mount id, where the kernel reports it (statx, Linux 5.8+).
    mnt_id: Option<u64>,
}

impl Meta {
    fn from_statx(x: &rfs::Statx) -> Meta {
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
    fn from_stat(s: &rfs::Stat) -> Meta {
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

    fn id(&self) -> FileId {
        (self.dev, self.ino)
    }

    fn is_dir(&self) -> bool {
        self.kind == FileType::Directory
    }

    /// Whether this entry lives on another mount than `root`.
    fn other_mount(&self, root: &Meta) -> bool {
        self.dev != root.dev || matches!((self.mnt_id, root.mnt_id), (Some(a), Some(b)) if a != b)
    }

    fn timestamps(&self) -> Timestamps {
        let ts = |(sec, nsec): (i64, u32)| Timespec {
            tv_sec: sec,
            tv_nsec: nsec as _,
        };
        Timestamps {
            last_access: ts(self.atime),
            last_modification: ts(self.mtime),
        }
    }

    fn mode(&self) -> Mode {
        Mode::from_raw_mode(self.perm)
    }

    fn uid(&self) -> Option<Uid> {
        Some(Uid::from_raw(self.uid))
    }

    fn gid(&self) -> Option<Gid> {
        Some(Gid::from_raw(self.gid))
    }
}

/// Set when `statx` is unavailable (seccomp filters, very old kernels).
static NO_STATX: AtomicBool = AtomicBool::new(false);

/// `statx` of `name` in `dirfd`, never following a final symlink.
fn meta_at(dirfd: BorrowedFd<'_>, name: &CStr, flags: AtFlags) -> rustix::io::Result<Meta> {
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

fn meta_fd(fd: BorrowedFd<'_>) -> rustix::io::Result<Meta> {
    meta_at(fd, c"", AtFlags::EMPTY_PATH)
}

/// Opens something in a source tree: never follows a final symlink, and
/// avoids touching its atime where allowed.
fn open_src(dirfd: BorrowedFd<'_>, name: &CStr, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
    match rfs::openat(dirfd, name, flags | OFlags::NOATIME, Mode::empty()) {
        // O_NOATIME needs ownership or CAP_FOWNER.
        Err(Errno::PERM) => rfs::openat(dirfd, name, flags, Mode::empty()),
        r => r,
    }
}

fn open_dir(dirfd: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<OwnedFd> {
    rfs::openat(
        dirfd,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Names in a directory, without `.` and `..`, in reverse readdir order (the
/// walk pops them from the end).
fn read_names(fd: BorrowedFd<'_>) -> rustix::io::Result<Vec<CString>> {
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

// ---------------------------------------------------------------------------
// Directory stack with a bounded number of open descriptors

struct Fds {
    src: OwnedFd,
    /// Absent in walks that only read (tree_usage).
    dst: Option<OwnedFd>,
}

struct Frame<T> {
    /// `None` while the directory is too far above the top of the walk.
    fds: Option<Fds>,
    src_id: FileId,
    dst_id: Option<FileId>,
    /// Entries still to visit.
    entries: Vec<CString>,
    data: T,
}

enum ReopenError {
    Io { dst: bool, errno: Errno },
    Moved { dst: bool },
}

struct DirStack<T> {
    frames: Vec<Frame<T>>,
}

impl<T> DirStack<T> {
    fn push(&mut self, frame: Frame<T>) {
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
    fn reopen_top(&mut self, child: &Fds) -> Result<(), ReopenError> {
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

// ---------------------------------------------------------------------------
// Extended attributes

/// Where xattrs are read or written: an open file, or a path whose final
/// component is not followed (the `l*xattr` calls).
#[derive(Clone, Copy)]
enum XRef<'a> {
    Fd(BorrowedFd<'a>),
    Path(&'a CStr),
}

/// A path naming `name` inside the open directory `dir` without resolving
/// anything but the descriptor itself, for the `l*xattr` calls on symlinks
/// and special files (which cannot be opened for `f*xattr`).
fn proc_path(dir: BorrowedFd<'_>, name: &CStr) -> Option<CString> {
    let mut v = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    v.extend_from_slice(name.to_bytes());
    CString::new(v).ok()
}

fn xattr_list(x: XRef<'_>) -> rustix::io::Result<Vec<CString>> {
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
fn xattr_get(x: XRef<'_>, name: &CStr) -> rustix::io::Result<Option<Vec<u8>>> {
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

fn xattr_set(x: XRef<'_>, name: &CStr, value: &[u8]) -> rustix::io::Result<()> {
    match x {
        XRef::Fd(fd) => rfs::fsetxattr(fd, name, value, XattrFlags::empty()),
        XRef::Path(p) => rfs::lsetxattr(p, name, value, XattrFlags::empty()),
    }
}

fn xattr_remove(x: XRef<'_>, name: &CStr) -> rustix::io::Result<()> {
    match x {
        XRef::Fd(fd) => rfs::fremovexattr(fd, name),
        XRef::Path(p) => rfs::lremovexattr(p, name),
    }
}

/// Makes the xattrs of `dst` those of `src`: removes what `src` lacks (for
/// example an ACL inherited from a default ACL) and copies every attribute
/// of every namespace. Call it after the owner is set: `chown` drops
/// `security.capability`.
fn copy_xattrs(
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

// ---------------------------------------------------------------------------
// File data

fn reflink_unsupported(e: Errno) -> bool {
    matches!(
        e,
        Errno::OPNOTSUPP | Errno::INVAL | Errno::XDEV | Errno::NOTTY | Errno::NOSYS
    )
}

fn copy_range_unsupported(e: Errno) -> bool {
    matches!(
        e,
        Errno::OPNOTSUPP | Errno::INVAL | Errno::XDEV | Errno::NOSYS | Errno::BADF
    )
}

/// A failed data operation: which side and what.
struct DataError {
    on_src: bool,
    op: &'static str,
    errno: Errno,
}

fn on_src(op: &'static str) -> impl Fn(Errno) -> DataError {
    move |errno| DataError {
        on_src: true,
        op,
        errno,
    }
}

fn on_dst(op: &'static str) -> impl Fn(Errno) -> DataError {
    move |errno| DataError {
        on_src: false,
        op,
        errno,
    }
}

/// Copies file data, remembering for the rest of one [`copy_tree`] which
/// methods the file system refused.
#[derive(Default)]
struct DataCopier {
    reflink_failed: bool,
    copy_range_failed: bool,
    buf: Vec<u8>,
}

impl DataCopier {
    /// Fills the empty file `d` with the `size` bytes of `s`. Returns whether
    /// the data was shared (reflinked) rather than copied.
    fn copy(&mut self, s: BorrowedFd<'_>, d: BorrowedFd<'_>, size: u64) -> Result<bool, DataError> {
        if size == 0 {
            return Ok(false);
        }
        if !self.reflink_failed {
            match rfs::ioctl_ficlone(d, s) {
                Ok(()) => return Ok(true),
                Err(e) if reflink_unsupported(e) => {
                    tracing::debug!(error = %e, "FICLONE unsupported, copying data instead");
                    self.reflink_failed = true;
                }
                Err(e) => return Err(on_dst("FICLONE")(e)),
            }
        }
        // Copy only the data segments, so sparse files stay sparse.
        let mut pos = 0;
        while pos < size {
            let (start, end) = match rfs::seek(s, SeekFrom::Data(pos)) {
                Ok(start) => match rfs::seek(s, SeekFrom::Hole(start)) {
                    Ok(hole) => (start, hole),
                    Err(_) => (start, size),
                },
                // No data after pos: the rest is a hole.
                Err(Errno::NXIO) => break,
                Err(Errno::INVAL | Errno::OPNOTSUPP) => (pos, size),
                Err(e) => return Err(on_src("lseek SEEK_DATA")(e)),
            };
            let end = end.min(size);
            if start >= end {
                break;
            }
            if !self.copy_range(s, d, start, end)? {
                // The source shrank while being copied.
                break;
            }
            pos = end;
        }
        // Sets the size, including a hole at the end.
        rfs::ftruncate(d, size).map_err(on_dst("ftruncate"))?;
        Ok(false)
    }

    /// Copies bytes `start..end`; returns false if the source ended early.
    fn copy_range(
        &mut self,
        s: BorrowedFd<'_>,
        d: BorrowedFd<'_>,
        start: u64,
        end: u64,
    ) -> Result<bool, DataError> {
        let mut off = start;
        while off < end {
            let want = (end - off).min(CFR_CHUNK);
            if !self.copy_range_failed {
                let (mut off_in, mut off_out) = (off, off);
                // `want` is at most 1 GiB, so it fits in usize.
                match rfs::copy_file_range(
                    s,
                    Some(&mut off_in),
                    d,
                    Some(&mut off_out),
                    want as usize,
                ) {
                    Ok(0) => return Ok(false),
                    Ok(n) => {
                        off += n as u64;
                        continue;
                    }
                    Err(Errno::INTR) => continue,
                    Err(e) if copy_range_unsupported(e) => {
                        tracing::debug!(error = %e, "copy_file_range unsupported, using read/write");
                        self.copy_range_failed = true;
                    }
                    Err(e) => return Err(on_dst("copy_file_range")(e)),
                }
            }
            if self.buf.is_empty() {
                self.buf = vec![0; COPY_BUF];
            }
            let chunk = want.min(COPY_BUF as u64) as usize;
            let n = match rustix::io::pread(s, &mut self.buf[..chunk], off) {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(Errno::INTR) => continue,
                Err(e) => return Err(on_src("pread")(e)),
            };
            let mut written = 0;
            while written < n {
                match rustix::io::pwrite(d, &self.buf[written..n], off + written as u64) {
                    Ok(0) => return Err(on_dst("pwrite")(Errno::IO)),
                    Ok(w) => written += w,
                    Err(Errno::INTR) => continue,
                    Err(e) => return Err(on_dst("pwrite")(e)),
                }
            }
            off += n as u64;
        }
        Ok(true)
    }
}

// ---------------------------------------------------------------------------
// copy_tree

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

struct Copier<'a> {
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

// ---------------------------------------------------------------------------
// tree_usage

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

// ---------------------------------------------------------------------------
// reflink_supported

/// Whether `FICLONE` works between files in directory `dir`. Probes with two
/// scratch files created in `dir` and unlinked at once.
pub fn reflink_supported(dir: &Path) -> bool {
    match probe_reflink(dir) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(dir = %dir.display(), error = %e, "no reflink support");
            false
        }
    }
}

fn probe_reflink(dir: &Path) -> rustix::io::Result<()> {
    let dir_c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| Errno::INVAL)?;
    let dfd = rfs::openat(
        CWD,
        &dir_c,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let a = scratch_file(dfd.as_fd())?;
    let b = scratch_file(dfd.as_fd())?;
    let block = [0x5au8; 4096];
    let mut done = 0;
    while done < block.len() {
        match rustix::io::write(&a, &block[done..]) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => done += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
    rfs::ioctl_ficlone(&b, &a)
}

/// An open, already unlinked, file in `dir`.
fn scratch_file(dir: BorrowedFd<'_>) -> rustix::io::Result<OwnedFd> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    for _ in 0..64 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!(".layerd-reflink-probe.{}.{n}", std::process::id());
        match rfs::openat(
            dir,
            name.as_str(),
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        ) {
            Ok(fd) => {
                rfs::unlinkat(dir, name.as_str(), AtFlags::empty())?;
                return Ok(fd);
            }
            Err(Errno::EXIST) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::EXIST)
}

#[cfg(test)]
mod tests {
    //! These run on the real kernel and need root (chown, mknod, trusted.*
    //! xattrs, loop devices, mounts). As another user they are skipped.

    use super::*;
    use std::collections::BTreeMap;
    use std::ffi::OsString;
    use std::fs;
    use std::io::Read;
    use std::os::unix::fs::{
        lchown, symlink, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt,
    };
    use std::process::Command;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    macro_rules! require_root {
        () => {
            if !is_root() {
                eprintln!("skipping: needs root");
                return;
            }
        };
    }

    fn cs(p: &Path) -> CString {
        CString::new(p.as_os_str().as_bytes()).unwrap()
    }

    fn set_xattr(p: &Path, name: &str, value: &[u8]) {
        rfs::lsetxattr(cs(p).as_c_str(), name, value, XattrFlags::empty())
            .unwrap_or_else(|e| panic!("lsetxattr {name} on {}: {e}", p.display()));
    }

    fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
        xattr_get(XRef::Path(&cs(p)), &CString::new(name).unwrap()).unwrap()
    }

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A version 2 `security.capability` blob: cap_net_raw+ep.
    fn cap_blob() -> Vec<u8> {
        const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
        const VFS_CAP_FLAGS_EFFECTIVE: u32 = 1;
        const CAP_NET_RAW: u32 = 13;
        let words = [
            VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE,
            1 << CAP_NET_RAW,
            0,
            0,
            0,
        ];
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    fn list_noatime(p: &Path) -> Vec<OsString> {
        let fd = rfs::openat(
            CWD,
            cs(p).as_c_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::NOATIME,
            Mode::empty(),
        )
        .unwrap();
        let mut names: Vec<OsString> = read_names(fd.as_fd())
            .unwrap()
            .into_iter()
            .map(|n| OsStr::from_bytes(n.to_bytes()).to_owned())
            .collect();
        names.sort();
        names
    }

    fn read_noatime(p: &Path) -> Vec<u8> {
        let mut f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOATIME | libc::O_NOFOLLOW)
            .open(p)
            .unwrap();
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        v
    }

    fn all_xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let c = cs(p);
        xattr_list(XRef::Path(&c))
            .unwrap()
            .into_iter()
            .filter_map(|n| {
                xattr_get(XRef::Path(&c), &n)
                    .unwrap()
                    .map(|v| (n.to_bytes().to_vec(), v))
            })
            .collect()
    }

    /// What must be the same in a copy.
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Snap {
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u64,
        size: Option<u64>,
        nlink: Option<u64>,
        mtime: (i64, i64),
        atime: (i64, i64),
        xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
        target: Option<PathBuf>,
    }

    /// Every entry of the tree at `root` (relative path, "" for the root),
    /// with its inode number. Reads nothing that would change an atime.
    fn snapshot(root: &Path) -> BTreeMap<PathBuf, (Snap, u64)> {
        fn rec(root: &Path, rel: PathBuf, out: &mut BTreeMap<PathBuf, (Snap, u64)>) {
            let p = root.join(&rel);
            let md = fs::symlink_metadata(&p).unwrap();
            let snap = Snap {
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                rdev: md.rdev(),
                size: (!md.is_dir()).then_some(md.size()),
                nlink: (!md.is_dir()).then_some(md.nlink()),
                mtime: (md.mtime(), md.mtime_nsec()),
                atime: (md.atime(), md.atime_nsec()),
                xattrs: all_xattrs(&p),
                target: md
                    .file_type()
                    .is_symlink()
                    .then(|| fs::read_link(&p).unwrap()),
            };
            out.insert(rel.clone(), (snap, md.ino()));
            if md.is_dir() {
                for name in list_noatime(&p) {
                    rec(root, rel.join(name), out);
                }
            }
        }
        let mut out = BTreeMap::new();
        rec(root, PathBuf::new(), &mut out);
        out
    }

    /// Sets distinct atime/mtime (with nanoseconds) on every entry, children
    /// before their directory. The atimes lie in the future so that reading
    /// a symlink (which has no O_NOATIME) leaves them alone under `relatime`.
    fn set_all_times(root: &Path) {
        let mut paths: Vec<PathBuf> = snapshot(root).into_keys().collect();
        paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for (i, rel) in paths.iter().enumerate() {
            let i = i as i64;
            let times = Timestamps {
                last_access: Timespec {
                    tv_sec: 4_000_000_000 + i,
                    tv_nsec: 987_654_321 - i,
                },
                last_modification: Timespec {
                    tv_sec: 1_000_000_000 + i * 1000,
                    tv_nsec: 123_456_789 + i,
                },
            };
            rfs::utimensat(
                CWD,
                cs(&root.join(rel)).as_c_str(),
                &times,
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .unwrap();
        }
    }

    const SPARSE_SIZE: u64 = 64 << 20;

    /// The reference tree: one of everything copy_tree must reproduce.
    fn build_tree(root: &Path) {
        let p = |s: &str| root.join(s);
        let w = |s: &str, data: &[u8]| fs::write(root.join(s), data).unwrap();
        fs::create_dir_all(p("sub/deeper")).unwrap();

        w("file.txt", b"hello world\n");
        set_xattr(&p("file.txt"), "user.x", b"xval");
        set_xattr(&p("file.txt"), "trusted.y", b"yval");
        w("empty", b"");
        let large: Vec<u8> = (0..(3u32 << 20) + 17)
            .map(|i| (i.wrapping_mul(31) % 251) as u8)
            .collect();
        w("large.bin", &large);
        {
            let f = fs::File::create_new(p("sparse.img")).unwrap();
            f.write_all_at(&[b'A'; 4096], 0).unwrap();
            f.write_all_at(&[b'B'; 4096], 40 << 20).unwrap();
            f.set_len(SPARSE_SIZE).unwrap();
        }
        w("hard1", b"linked data\n");
        fs::hard_link(p("hard1"), p("sub/hard2")).unwrap();
        fs::hard_link(p("hard1"), p("sub/deeper/hard3")).unwrap();

        symlink("/etc/passwd", p("abs_link")).unwrap();
        set_xattr(&p("abs_link"), "trusted.l", b"on a symlink");
        symlink("does/not/exist", p("dangling")).unwrap();
        symlink("sub", p("dir_link")).unwrap();
        symlink("file.txt", p("owned_link")).unwrap();
        lchown(p("owned_link"), Some(1234), Some(5678)).unwrap();

        rfs::mknodat(
            CWD,
            cs(&p("fifo")).as_c_str(),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        chmod(&p("fifo"), 0o640);
        set_xattr(&p("fifo"), "trusted.f", b"fifo attr");
        rfs::mknodat(
            CWD,
            cs(&p("null")).as_c_str(),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o600),
            rfs::makedev(1, 3),
        )
        .unwrap();
        chmod(&p("null"), 0o666);
        drop(std::os::unix::net::UnixListener::bind(p("sock")).unwrap());

        w("setuid", b"#!/bin/sh\n");
        chmod(&p("setuid"), 0o4755);
        w("owned", b"owned by 1234\n");
        lchown(p("owned"), Some(1234), Some(5678)).unwrap();
        chmod(&p("owned"), 0o6750);
        w("cap", b"\x7fELF not really\n");
        chmod(&p("cap"), 0o755);
        set_xattr(&p("cap"), "security.capability", &cap_blob());

        fs::create_dir(p("private")).unwrap();
        w("private/inside", b"secret\n");
        chmod(&p("private"), 0o700);
        fs::create_dir(p("tmp")).unwrap();
        chmod(&p("tmp"), 0o1777);
        set_xattr(&p("tmp"), "trusted.overlay.opaque", b"y");
        fs::create_dir(p("ro")).unwrap();
        w("ro/file", b"in a read-only dir\n");
        chmod(&p("ro"), 0o555);
        fs::create_dir(p("emptydir")).unwrap();
        lchown(p("emptydir"), Some(1234), Some(5678)).unwrap();
        chmod(&p("emptydir"), 0o2710);

        lchown(root, Some(1234), Some(5678)).unwrap();
        chmod(root, 0o751);
        set_xattr(root, "user.root", b"r");
        set_all_times(root);
    }

    /// Checks that `dst` is a faithful copy of the tree `before` was taken
    /// of at `src`, that `src` was not touched, and that `stats` add up.
    fn check_copy(
        src: &Path,
        dst: &Path,
        before: &BTreeMap<PathBuf, (Snap, u64)>,
        stats: &CopyStats,
    ) {
        let strip = |m: &BTreeMap<PathBuf, (Snap, u64)>| -> BTreeMap<PathBuf, Snap> {
            m.iter().map(|(k, (s, _))| (k.clone(), s.clone())).collect()
        };
        let after = snapshot(src);
        assert_eq!(strip(before), strip(&after), "the source changed");
        let copy = snapshot(dst);
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            copy.keys().collect::<Vec<_>>(),
            "different entries"
        );
        for (rel, (want, _)) in before {
            assert_eq!(want, &copy[rel].0, "{}", rel.display());
        }
        // Same hard-link structure: two paths share an inode in the copy
        // exactly when they do in the source.
        let groups = |m: &BTreeMap<PathBuf, (Snap, u64)>| {
            let mut by_ino: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
            for (rel, (_, ino)) in m {
                by_ino.entry(*ino).or_default().push(rel.clone());
            }
            let mut g: Vec<Vec<PathBuf>> = by_ino.into_values().collect();
            g.sort();
            g
        };
        assert_eq!(groups(before), groups(&copy), "hard links differ");
        // Contents, read without touching atimes.
        let mut regular = HashSet::new();
        let (mut files, mut bytes) = (0, 0);
        for (rel, (s, ino)) in before {
            if rel.as_os_str().is_empty() || s.mode & libc::S_IFMT == libc::S_IFDIR {
                continue;
            }
            files += 1;
            if s.mode & libc::S_IFMT == libc::S_IFREG {
                assert_eq!(
                    read_noatime(&src.join(rel)),
                    read_noatime(&dst.join(rel)),
                    "{}",
                    rel.display()
                );
                if regular.insert(*ino) {
                    bytes += s.size.unwrap_or(0);
                }
            }
        }
        assert_eq!(stats.files, files, "{stats:?}");
        assert_eq!(
            stats.reflinked + stats.copied,
            regular.len() as u64,
            "{stats:?}"
        );
        assert_eq!(stats.bytes, bytes, "{stats:?}");
        // Holes stay holes.
        let sparse = fs::symlink_metadata(dst.join("sparse.img")).unwrap();
        assert_eq!(sparse.size(), SPARSE_SIZE);
        assert!(
            sparse.blocks() * 512 < 4 << 20,
            "sparse file filled in: {} blocks",
            sparse.blocks()
        );
    }

    /// Spot checks of what check_copy compares wholesale, so that a broken
    /// tree builder cannot make the comparison vacuous.
    fn spot_checks(dst: &Path) {
        let md = |s: &str| fs::symlink_metadata(dst.join(s)).unwrap();
        assert_eq!(md("setuid").mode() & 0o7777, 0o4755);
        assert_eq!(
            (
                md("owned").uid(),
                md("owned").gid(),
                md("owned").mode() & 0o7777
            ),
            (1234, 5678, 0o6750)
        );
        assert_eq!(
            (md("owned_link").uid(), md("owned_link").gid()),
            (1234, 5678)
        );
        assert_eq!(md("tmp").mode() & 0o7777, 0o1777);
        assert_eq!(md("private").mode() & 0o7777, 0o700);
        assert_eq!(md("ro").mode() & 0o7777, 0o555);
        assert_eq!(md("emptydir").mode() & 0o7777, 0o2710);
        assert!(md("fifo").file_type().is_fifo());
        assert_eq!(md("null").mode() & libc::S_IFMT, libc::S_IFCHR);
        assert_eq!(md("null").rdev(), rfs::makedev(1, 3));
        assert_eq!(md("sock").mode() & libc::S_IFMT, libc::S_IFSOCK);
        assert_eq!(
            fs::read_link(dst.join("abs_link")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            fs::read_link(dst.join("dangling")).unwrap(),
            Path::new("does/not/exist")
        );
        assert_eq!(md("hard1").ino(), md("sub/deeper/hard3").ino());
        assert_eq!(md("hard1").nlink(), 3);
        assert_eq!(
            get_xattr(&dst.join("file.txt"), "user.x").as_deref(),
            Some(&b"xval"[..])
        );
        assert_eq!(
            get_xattr(&dst.join("file.txt"), "trusted.y").as_deref(),
            Some(&b"yval"[..])
        );
        assert_eq!(
            get_xattr(&dst.join("cap"), "security.capability"),
            Some(cap_blob())
        );
        assert_eq!(
            get_xattr(&dst.join("tmp"), "trusted.overlay.opaque").as_deref(),
            Some(&b"y"[..])
        );
        assert_eq!(
            get_xattr(&dst.join("abs_link"), "trusted.l").as_deref(),
            Some(&b"on a symlink"[..])
        );
        assert_eq!(
            get_xattr(&dst.join("fifo"), "trusted.f").as_deref(),
            Some(&b"fifo attr"[..])
        );
        assert_eq!(get_xattr(dst, "user.root").as_deref(), Some(&b"r"[..]));
        let root = fs::symlink_metadata(dst).unwrap();
        assert_eq!(
            (root.uid(), root.gid(), root.mode() & 0o7777),
            (1234, 5678, 0o751)
        );
    }

    /// Builds the reference tree in `base/src`, copies it to `base/dst` and
    /// checks the copy.
    fn copy_reference_tree(base: &Path) -> CopyStats {
        let src = base.join("src");
        let dst = base.join("dst");
        fs::create_dir(&src).unwrap();
        fs::create_dir(&dst).unwrap();
        build_tree(&src);
        let before = snapshot(&src);
        let stats = copy_tree(&src, &dst).unwrap();
        check_copy(&src, &dst, &before, &stats);
        spot_checks(&dst);
        stats
    }

    #[test]
    fn copies_every_kind_of_entry_and_attribute() {
        require_root!();
        let tmp = tempfile::tempdir().unwrap();
        let stats = copy_reference_tree(tmp.path());
        assert!(stats.files >= 19, "{stats:?}");
    }

    fn du(path: &Path, arg: &str) -> u64 {
        let out = Command::new("du")
            .args(["-s", "-x", arg])
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "du: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn tree_usage_matches_du() {
        require_root!();
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        build_tree(&src);
        let (bytes, inodes) = tree_usage(&src).unwrap();
        assert_eq!(bytes, du(&src, "--block-size=1"));
        assert_eq!(inodes, du(&src, "--inodes"));
        // The three links of hard1 are one inode.
        let distinct: HashSet<u64> = snapshot(&src).values().map(|(_, ino)| *ino).collect();
        assert_eq!(inodes, distinct.len() as u64);
        assert_eq!(inodes, snapshot(&src).len() as u64 - 2);
        // A symlink or a file is measured itself.
        assert_eq!(tree_usage(&src.join("abs_link")).unwrap().1, 1);
        let big = fs::symlink_metadata(src.join("large.bin")).unwrap();
        assert_eq!(
            tree_usage(&src.join("large.bin")).unwrap(),
            (big.blocks() * 512, 1)
        );
        assert!(tree_usage(&tmp.path().join("missing")).is_err());
    }

    /// A mount made for a test, undone on drop.
    struct Mounted(PathBuf);
    impl Drop for Mounted {
        fn drop(&mut self) {
            if nix::mount::umount(&self.0).is_err() {
                let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }

    fn mount(
        src: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: nix::mount::MsFlags,
    ) -> Mounted {
        nix::mount::mount(src, target, fstype, flags, None::<&str>)
            .unwrap_or_else(|e| panic!("mount {}: {e}", target.display()));
        Mounted(target.to_path_buf())
    }

    #[test]
    fn does_not_cross_mount_points() {
        require_root!();
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        for d in [
            &src,
            &dst,
            &src.join("tmpfs"),
            &src.join("bind"),
            &src.join("plain"),
        ] {
            fs::create_dir(d).unwrap();
        }
        fs::write(src.join("plain/file"), b"kept").unwrap();
        let _tmpfs = mount(
            Some(Path::new("tmpfs")),
            &src.join("tmpfs"),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
        );
        fs::write(src.join("tmpfs/big"), vec![1u8; 1 << 20]).unwrap();
        let before_bind = tree_usage(&src).unwrap();
        // A bind mount of the same file system: same st_dev, other mount.
        let _bind = mount(
            Some(&src.join("plain")),
            &src.join("bind"),
            None,
            nix::mount::MsFlags::MS_BIND,
        );

        let stats = copy_tree(&src, &dst).unwrap();
        let mut names = list_noatime(&dst);
        names.sort();
        assert_eq!(names, vec![OsString::from("plain")]);
        assert_eq!(fs::read(dst.join("plain/file")).unwrap(), b"kept");
        assert_eq!(stats.files, 1);

        // tree_usage skips the tmpfs like `du -x` does (du measured after
        // the bind mount is gone: it would count a same-device bind mount)...
        drop(_bind);
        assert_eq!(before_bind.0, du(&src, "--block-size=1"));
        assert_eq!(before_bind.1, du(&src, "--inodes"));
        assert_eq!(before_bind.1, 4); // root, bind, plain, plain/file: not the tmpfs
                                      // ...and the bind mount as well, mount point included, although it
                                      // is on the same device.
        let bind_dir = fs::symlink_metadata(src.join("bind")).unwrap().blocks() * 512;
        let _bind = mount(
            Some(&src.join("plain")),
            &src.join("bind"),
            None,
            nix::mount::MsFlags::MS_BIND,
        );
        assert_eq!(
            tree_usage(&src).unwrap(),
            (before_bind.0 - bind_dir, before_bind.1 - 1)
        );
    }

    #[test]
    fn never_follows_symlinks() {
        require_root!();
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        let src = tmp.path().join("a/b/src");
        let dst = tmp.path().join("a/b/dst");
        fs::create_dir_all(outside.join("victim")).unwrap();
        fs::write(outside.join("secret"), b"do not copy").unwrap();
        fs::create_dir_all(src.join("d")).unwrap();
        fs::create_dir_all(&dst).unwrap();
        symlink(&outside, src.join("to_outside")).unwrap();
        symlink(outside.join("secret"), src.join("to_secret")).unwrap();
        symlink("../../../../outside/victim", src.join("d/dotdot")).unwrap();
        let outside_before = snapshot(&outside);

        copy_tree(&src, &dst).unwrap();
        assert_eq!(fs::read_link(dst.join("to_outside")).unwrap(), outside);
        assert_eq!(
            fs::read_link(dst.join("to_secret")).unwrap(),
            outside.join("secret")
        );
        assert_eq!(
            fs::read_link(dst.join("d/dotdot")).unwrap(),
            Path::new("../../../../outside/victim")
        );
        assert_eq!(snapshot(&dst).len(), 5);
        assert_eq!(snapshot(&outside), outside_before);

        // Neither root may be a symlink itself.
        let link = tmp.path().join("link_to_src");
        symlink(&src, &link).unwrap();
        let dst2 = tmp.path().join("dst2");
        fs::create_dir(&dst2).unwrap();
        assert!(copy_tree(&link, &dst2).is_err());
        let dst_link = tmp.path().join("link_to_dst2");
        symlink(&dst2, &dst_link).unwrap();
        assert!(copy_tree(&src, &dst_link).is_err());
    }

    #[test]
    fn errors_name_path_and_operation() {
        require_root!();
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        fs::create_dir(&src).unwrap();
        fs::create_dir(&dst).unwrap();
        fs::write(dst.join("x"), b"").unwrap();
        let e = copy_tree(&src, &dst).unwrap_err();
        assert!(matches!(e, CopyError::Invalid { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(&*dst.to_string_lossy()) && msg.contains("not empty"),
            "{msg}"
        );

        let e = copy_tree(&src, &src).unwrap_err();
        assert!(e.to_string().contains("same directory"), "{e}");

        let missing = tmp.path().join("missing");
        let e = copy_tree(&missing, &dst).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&*missing.to_string_lossy()) && msg.contains("open"),
            "{msg}"
        );
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));

        let e = tree_usage(&missing).unwrap_err();
        assert!(e.to_string().starts_with("measuring "), "{e}");
    }

    #[test]
    fn destination_inside_source_is_not_copied_into_itself() {
        require_root!();
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("a")).unwrap();
        fs::write(src.join("a/f"), b"x").unwrap();
        let dst = src.join("dst");
        fs::create_dir(&dst).unwrap();
        copy_tree(&src, &dst).unwrap();
        assert_eq!(list_noatime(&dst), vec![OsString::from("a")]);
        assert_eq!(fs::read(dst.join("a/f")).unwrap(), b"x");
    }

    #[test]
    fn inherited_acls_are_not_left_on_the_copy() {
        require_root!();
        // A default ACL on the destination root makes every new entry inherit
        // an access ACL (and directories a default one); the copy must end up
        // with exactly the source's xattrs.
        let acl = |entries: &[(u16, u16, u32)]| -> Vec<u8> {
            let mut v = 2u32.to_le_bytes().to_vec();
            for (tag, perm, id) in entries {
                v.extend(tag.to_le_bytes());
                v.extend(perm.to_le_bytes());
                v.extend(id.to_le_bytes());
            }
            v
        };
        const USER_OBJ: u16 = 1;
        const USER: u16 = 2;
        const GROUP_OBJ: u16 = 4;
        const MASK: u16 = 0x10;
        const OTHER: u16 = 0x20;
        let default_acl = acl(&[
            (USER_OBJ, 7, u32::MAX),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, u32::MAX),
            (MASK, 7, u32::MAX),
            (OTHER, 0, u32::MAX),
        ]);
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        fs::create_dir_all(src.join("dir")).unwrap();
        fs::write(src.join("dir/file"), b"data").unwrap();
        fs::create_dir(&dst).unwrap();
        match rfs::lsetxattr(
            cs(&dst).as_c_str(),
            "system.posix_acl_default",
            &default_acl,
            XattrFlags::empty(),
        ) {
            Ok(()) => {}
            Err(Errno::OPNOTSUPP) => {
                eprintln!("skipping: no ACL support here");
                return;
            }
            Err(e) => panic!("setting a default ACL: {e}"),
        }
        set_all_times(&src);
        let before = snapshot(&src);
        copy_tree(&src, &dst).unwrap();
        let copy = snapshot(&dst);
        for (rel, (want, _)) in &before {
            assert_eq!(want, &copy[rel].0, "{}", rel.display());
        }
    }

    #[test]
    fn deep_trees_beyond_path_max_and_fd_window() {
        require_root!();
        const DEPTH: usize = 1500;
        let name = |i: usize| format!("level-{i:05}-{}", "x".repeat(30));
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let dst = tmp.path().join("dst");
        fs::create_dir(&src).unwrap();
        fs::create_dir(&dst).unwrap();
        fs::write(src.join("top"), b"linked top and bottom").unwrap();
        // Built relative to descriptors: the full path is far beyond PATH_MAX.
        let mut cur = open_dir(CWD, cs(&src).as_c_str()).unwrap();
        for i in 0..DEPTH {
            rfs::mkdirat(&cur, name(i).as_str(), Mode::from_raw_mode(0o755)).unwrap();
            cur = open_dir(cur.as_fd(), CString::new(name(i)).unwrap().as_c_str()).unwrap();
            if i == 700 {
                rfs::fchmod(&cur, Mode::from_raw_mode(0o711)).unwrap();
                rfs::fsetxattr(&cur, "user.level", b"700", XattrFlags::empty()).unwrap();
            }
        }
        let leaf = rfs::openat(
            &cur,
            "leaf",
            OFlags::WRONLY | OFlags::CREATE,
            Mode::from_raw_mode(0o644),
        )
        .unwrap();
        rustix::io::write(&leaf, b"bottom").unwrap();
        let top = open_dir(CWD, cs(&src).as_c_str()).unwrap();
        rfs::linkat(&top, "top", &cur, "hardlink", AtFlags::empty()).unwrap();
        drop((leaf, cur, top));

        let stats = copy_tree(&src, &dst).unwrap();
        assert_eq!(stats.files, 3);

        let mut cur = open_dir(CWD, cs(&dst).as_c_str()).unwrap();
        let top_ino = fs::symlink_metadata(dst.join("top")).unwrap().ino();
        for i in 0..DEPTH {
            cur = open_dir(cur.as_fd(), CString::new(name(i)).unwrap().as_c_str()).unwrap();
            if i == 700 {
                let m = meta_fd(cur.as_fd()).unwrap();
                assert_eq!(m.perm, 0o711);
                assert_eq!(
                    xattr_get(XRef::Fd(cur.as_fd()), c"user.level")
                        .unwrap()
                        .as_deref(),
                    Some(&b"700"[..])
                );
            }
        }
        let leaf = rfs::openat(&cur, "leaf", OFlags::RDONLY, Mode::empty()).unwrap();
        let mut buf = [0u8; 16];
        let n = rustix::io::read(&leaf, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"bottom");
        assert_eq!(
            meta_at(cur.as_fd(), c"hardlink", AtFlags::empty())
                .unwrap()
                .ino,
            top_ino
        );

        let usage = tree_usage(&src).unwrap();
        assert_eq!(usage.1, DEPTH as u64 + 3);
        assert_eq!(usage.0, du(&src, "--block-size=1"));
        assert_eq!(tree_usage(&dst).unwrap().1, usage.1);
    }

    #[test]
    fn stat_fallback_agrees_with_statx() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        fs::write(&f, b"some bytes").unwrap();
        symlink("f", tmp.path().join("l")).unwrap();
        for p in [tmp.path().to_path_buf(), f, tmp.path().join("l")] {
            let c = cs(&p);
            let flags = AtFlags::SYMLINK_NOFOLLOW;
            let x = Meta::from_statx(
                &rfs::statx(CWD, c.as_c_str(), flags, StatxFlags::BASIC_STATS).unwrap(),
            );
            let s = Meta::from_stat(&rfs::statat(CWD, c.as_c_str(), flags).unwrap());
            let key = |m: &Meta| {
                (
                    m.kind, m.perm, m.uid, m.gid, m.nlink, m.dev, m.ino, m.rdev, m.size, m.blocks,
                    m.atime, m.mtime,
                )
            };
            assert_eq!(key(&x), key(&s), "{}", p.display());
        }
    }

    #[test]
    fn read_write_fallback_keeps_data_and_holes() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let f = fs::File::create_new(&a).unwrap();
        let data: Vec<u8> = (0..COPY_BUF * 2 + 123).map(|i| (i % 253) as u8).collect();
        f.write_all_at(&data, 8 << 20).unwrap();
        f.set_len(32 << 20).unwrap();
        let g = fs::File::create_new(&b).unwrap();
        let mut copier = DataCopier {
            reflink_failed: true,
            copy_range_failed: true,
            buf: Vec::new(),
        };
        let shared = copier.copy(f.as_fd(), g.as_fd(), 32 << 20).ok().unwrap();
        assert!(!shared);
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
        assert!(fs::metadata(&b).unwrap().blocks() * 512 < 4 << 20);
    }

    #[test]
    fn reflink_probe_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let _ = reflink_supported(tmp.path());
        assert!(list_noatime(tmp.path()).is_empty());
        assert!(!reflink_supported(&tmp.path().join("missing")));
    }

    /// A file system on a loop device, mounted in a temporary directory;
    /// unmounted and detached on drop, whether or not the test passed.
    struct LoopFs {
        dir: tempfile::TempDir,
        dev: Option<String>,
        mounted: bool,
    }

    impl LoopFs {
        fn new(fstype: &str, mkfs_args: &[&str]) -> LoopFs {
            let dir = tempfile::tempdir().unwrap();
            let img = dir.path().join("img");
            fs::File::create(&img).unwrap().set_len(512 << 20).unwrap();
            let mut me = LoopFs {
                dir,
                dev: None,
                mounted: false,
            };
            let out = Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&img)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "losetup: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
            me.dev = Some(dev.clone());
            let mkfs = format!("mkfs.{fstype}");
            let out = Command::new(&mkfs)
                .args(mkfs_args)
                .arg(&dev)
                .output()
                .unwrap_or_else(|e| {
                    panic!("{mkfs}: {e} (install xfsprogs / btrfs-progs / e2fsprogs)")
                });
            assert!(
                out.status.success(),
                "{mkfs}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let mnt = me.mnt();
            fs::create_dir(&mnt).unwrap();
            nix::mount::mount(
                Some(dev.as_str()),
                &mnt,
                Some(fstype),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .unwrap_or_else(|e| panic!("mounting {fstype} from {dev}: {e}"));
            me.mounted = true;
            me
        }

        fn mnt(&self) -> PathBuf {
            self.dir.path().join("mnt")
        }
    }

    impl Drop for LoopFs {
        fn drop(&mut self) {
            if self.mounted && nix::mount::umount(&self.mnt()).is_err() {
                let _ = nix::mount::umount2(&self.mnt(), nix::mount::MntFlags::MNT_DETACH);
            }
            if let Some(dev) = &self.dev {
                let _ = Command::new("losetup").arg("-d").arg(dev).status();
            }
        }
    }

    /// Whether some extent of `path` is shared, by `filefrag -v`; `None`
    /// when filefrag is not installed.
    fn has_shared_extents(path: &Path) -> Option<bool> {
        let out = Command::new("filefrag").arg("-v").arg(path).output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).contains("shared"))
    }

    fn reflink_fs_test(fstype: &str, mkfs_args: &[&str]) {
        let lfs = LoopFs::new(fstype, mkfs_args);
        let mnt = lfs.mnt();
        assert!(reflink_supported(&mnt), "{fstype} should support FICLONE");
        assert!(list_noatime(&mnt).is_empty(), "probe files left behind");
        let stats = copy_reference_tree(&mnt);
        assert!(stats.reflinked > 0, "{stats:?}");
        // Only the empty files need no clone.
        assert_eq!(stats.copied, 1, "{stats:?}");
        if let Some(shared) = has_shared_extents(&mnt.join("dst/large.bin")) {
            assert!(shared, "large.bin does not share extents");
        }
    }

    #[test]
    fn xfs_copies_use_reflinks() {
        require_root!();
        reflink_fs_test("xfs", &["-q", "-f", "-m", "reflink=1"]);
    }

    #[test]
    fn btrfs_copies_use_reflinks() {
        require_root!();
        reflink_fs_test("btrfs", &["-q", "-f"]);
    }

    #[test]
    fn ext4_copies_fall_back_to_copying() {
        require_root!();
        let lfs = LoopFs::new("ext4", &["-q", "-F"]);
        let mnt = lfs.mnt();
        assert!(!reflink_supported(&mnt));
        assert!(
            list_noatime(&mnt).iter().all(|n| n == "lost+found"),
            "probe files left behind"
        );
        let stats = copy_reference_tree(&mnt);
        assert_eq!(stats.reflinked, 0, "{stats:?}");
        assert!(stats.copied > 0, "{stats:?}");
        assert_ne!(has_shared_extents(&mnt.join("dst/large.bin")), Some(true));
    }
}
