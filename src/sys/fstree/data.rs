//! File data: reflinks (`FICLONE`), else `copy_file_range`, else
//! `pread`/`pwrite`, keeping holes; and the probe for reflink support.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags, SeekFrom, CWD};
use rustix::io::Errno;

/// Buffer size for the `pread`/`pwrite` fallback.
pub(super) const COPY_BUF: usize = 256 * 1024;

/// Largest single `copy_file_range` request.
pub(super) const CFR_CHUNK: u64 = 1 << 30;

pub(super) fn reflink_unsupported(e: Errno) -> bool {
    matches!(
        e,
        Errno::OPNOTSUPP | Errno::INVAL | Errno::XDEV | Errno::NOTTY | Errno::NOSYS
    )
}

pub(super) fn copy_range_unsupported(e: Errno) -> bool {
    matches!(
        e,
        Errno::OPNOTSUPP | Errno::INVAL | Errno::XDEV | Errno::NOSYS | Errno::BADF
    )
}

/// A failed data operation: which side and what.
pub(super) struct DataError {
    pub(super) on_src: bool,
    pub(super) op: &'static str,
    pub(super) errno: Errno,
}

pub(super) fn on_src(op: &'static str) -> impl Fn(Errno) -> DataError {
    move |errno| DataError {
        on_src: true,
        op,
        errno,
    }
}

pub(super) fn on_dst(op: &'static str) -> impl Fn(Errno) -> DataError {
    move |errno| DataError {
        on_src: false,
        op,
        errno,
    }
}

/// Copies file data, remembering for the rest of one [`copy_tree`](super::copy_tree) which
/// methods the file system refused.
#[derive(Default)]
pub(super) struct DataCopier {
    pub(super) reflink_failed: bool,
    pub(super) copy_range_failed: bool,
    pub(super) buf: Vec<u8>,
}

impl DataCopier {
    /// Fills the empty file `d` with the `size` bytes of `s`. Returns whether
    /// the data was shared (reflinked) rather than copied.
    pub(super) fn copy(
        &mut self,
        s: BorrowedFd<'_>,
        d: BorrowedFd<'_>,
        size: u64,
    ) -> Result<bool, DataError> {
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
    pub(super) fn copy_range(
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

pub(super) fn probe_reflink(dir: &Path) -> rustix::io::Result<()> {
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
pub(super) fn scratch_file(dir: BorrowedFd<'_>) -> rustix::io::Result<OwnedFd> {
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
