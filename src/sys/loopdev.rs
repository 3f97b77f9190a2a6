//! Loop devices: attach a file, find the device already backing a file,
//! detach, refresh the capacity after the file grew. ioctls only
//! (`/dev/loop-control` and `/dev/loopN`), no `losetup` process.
//!
//! Kernel facts this relies on (drivers/block/loop.c, linux/loop.h):
//!
//! * `LOOP_CTL_GET_FREE` on `/dev/loop-control` returns the number of an
//!   unbound loop device, creating one if needed; devtmpfs makes its node
//!   `/dev/loopN`. Another process may bind the same number before we do:
//!   `LOOP_CONFIGURE` then fails with `EBUSY` and [`attach`] asks again.
//! * `LOOP_CONFIGURE` (Linux 5.8) binds the file and sets flags in one call.
//!   layerd never sets `LO_FLAGS_AUTOCLEAR`: the device must outlive the
//!   daemon (runtimes hold mounts of it, and a restarted daemon finds it
//!   again with [`find_backing`]).
//! * `LO_FLAGS_DIRECT_IO` makes the loop driver read and write the file with
//!   direct I/O, so pages are not cached twice (once for the pool's file
//!   system, once for the file). It needs a host file system that does
//!   O_DIRECT for that file at the loop's block size; [`attach`] probes with
//!   an `O_DIRECT` open, asks for it, and falls back to buffered I/O when the
//!   kernel refuses, logging which it got.
//! * Discards sent to a loop device become `fallocate(PUNCH_HOLE)` on the
//!   file (the loop driver's default, with or without direct I/O), so a file
//!   system on the loop device that trims (FITRIM, `discard=async`) gives the
//!   space back to the host file system: the sparse file shrinks on disk.
//! * `LOOP_GET_STATUS64` reports the backing file's device and inode
//!   number: that, not the path in sysfs (which may be stale or renamed),
//!   identifies the file in [`find_backing`].

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// `/dev/loop-control`.
const LOOP_CONTROL: &str = "/dev/loop-control";

// ioctl numbers from linux/loop.h (old-style numbers, not _IO-encoded).
const LOOP_CLR_FD: u64 = 0x4C01;
const LOOP_GET_STATUS64: u64 = 0x4C05;
const LOOP_SET_CAPACITY: u64 = 0x4C07;
const LOOP_CONFIGURE: u64 = 0x4C0A;
const LOOP_CTL_GET_FREE: u64 = 0x4C82;

/// `lo_flags` bits.
pub const LO_FLAGS_READ_ONLY: u32 = 1;
pub const LO_FLAGS_AUTOCLEAR: u32 = 4;
pub const LO_FLAGS_PARTSCAN: u32 = 8;
pub const LO_FLAGS_DIRECT_IO: u32 = 16;

const LO_NAME_SIZE: usize = 64;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

impl LoopInfo64 {
    fn zeroed() -> Self {
        // SAFETY: plain integers and byte arrays; all-zero is a valid value.
        unsafe { std::mem::zeroed() }
    }
}

nix::ioctl_none_bad!(ioc_ctl_get_free, LOOP_CTL_GET_FREE);
nix::ioctl_write_ptr_bad!(ioc_configure, LOOP_CONFIGURE, LoopConfig);
nix::ioctl_none_bad!(ioc_clr_fd, LOOP_CLR_FD);
nix::ioctl_none_bad!(ioc_set_capacity, LOOP_SET_CAPACITY);
nix::ioctl_read_bad!(ioc_get_status64, LOOP_GET_STATUS64, LoopInfo64);

/// A loop device by number; its node is `/dev/loopN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopDevice {
    pub number: u32,
}

impl LoopDevice {
    /// `/dev/loopN`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/loop{}", self.number))
    }

    /// Opens the node. Binding needs it open for writing: the kernel makes
    /// a device configured through a read-only descriptor read-only.
    fn open(&self, write: bool) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_CLOEXEC)
            .open(self.path())
    }
}

/// What a bound loop device reports of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopStatus {
    /// `st_dev` of the file system holding the backing file.
    pub backing_dev: u64,
    /// Inode number of the backing file.
    pub backing_ino: u64,
    /// `LO_FLAGS_*`.
    pub flags: u32,
}

impl LoopStatus {
    pub fn direct_io(&self) -> bool {
        self.flags & LO_FLAGS_DIRECT_IO != 0
    }
    pub fn autoclear(&self) -> bool {
        self.flags & LO_FLAGS_AUTOCLEAR != 0
    }
}

/// How [`attach`] binds a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttachOptions {
    /// Ask for direct I/O when the file supports O_DIRECT (falls back).
    pub direct_io: bool,
    pub read_only: bool,
}

impl Default for AttachOptions {
    fn default() -> Self {
        AttachOptions {
            direct_io: true,
            read_only: false,
        }
    }
}

/// Creates `path` as a sparse file of `size` bytes (no blocks allocated);
/// fails with `AlreadyExists` if it exists. Synced, with its directory.
pub fn create_sparse(path: &Path, size: u64) -> io::Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    // A file that cannot get its size (EFBIG, ENOSPC) is not left behind.
    if let Err(e) = f.set_len(size).and_then(|()| f.sync_all()) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Whether the file system holding `file` accepts an O_DIRECT open of it
/// (tmpfs before 6.6 and some FUSE file systems do not).
pub fn supports_direct_io(file: &Path) -> bool {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(file)
        .is_ok()
}

/// Binds `file` to a free loop device, without autoclear, with direct I/O
/// when possible (see the module doc). Returns the device and what the
/// kernel reports it configured.
pub fn attach(file: &Path, opts: AttachOptions) -> io::Result<(LoopDevice, LoopStatus)> {
    let backing = OpenOptions::new()
        .read(true)
        .write(!opts.read_only)
        .custom_flags(libc::O_CLOEXEC)
        .open(file)?;
    let want_dio = opts.direct_io && supports_direct_io(file);
    if opts.direct_io && !want_dio {
        tracing::info!(file = %file.display(), "the host file system does no O_DIRECT for this file: loop device uses buffered I/O");
    }
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(LOOP_CONTROL)?;
    // A few tries: another process may take the free device first.
    let mut last = io::Error::from_raw_os_error(libc::EBUSY);
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a number.
        let n = unsafe { ioc_ctl_get_free(control.as_raw_fd()) }.map_err(io::Error::from)?;
        let dev = LoopDevice { number: n as u32 };
        let node = match dev.open(!opts.read_only) {
            Ok(f) => f,
            // devtmpfs may not have made the node yet.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                last = e;
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut flags = 0;
        if opts.read_only {
            flags |= LO_FLAGS_READ_ONLY;
        }
        let tries: &[u32] = if want_dio {
            &[LO_FLAGS_DIRECT_IO, 0]
        } else {
            &[0]
        };
        let mut configured = false;
        for &dio in tries {
            let mut info = LoopInfo64::zeroed();
            info.lo_flags = flags | dio;
            let name = file.as_os_str().as_encoded_bytes();
            let len = name.len().min(LO_NAME_SIZE - 1);
            info.lo_file_name[..len].copy_from_slice(&name[..len]);
            let cfg = LoopConfig {
                fd: backing.as_raw_fd() as u32,
                block_size: 0,
                info,
                reserved: [0; 8],
            };
            // SAFETY: `cfg` is a fully initialised `struct loop_config` that
            // outlives the call; the kernel only reads it. `backing` stays
            // open for the duration (the kernel takes its own reference).
            match unsafe { ioc_configure(node.as_raw_fd(), &cfg) } {
                Ok(_) => {
                    configured = true;
                    break;
                }
                Err(nix::errno::Errno::EINVAL) if dio != 0 => {
                    tracing::info!(file = %file.display(), device = %dev.path().display(), "the kernel refused direct I/O for this loop device; using buffered I/O");
                    continue;
                }
                Err(e) => {
                    last = e.into();
                    break;
                }
            }
        }
        if !configured {
            if last.raw_os_error() == Some(libc::EBUSY) {
                continue;
            }
            return Err(last);
        }
        let st = status(&dev)?;
        tracing::info!(file = %file.display(), device = %dev.path().display(), direct_io = st.direct_io(), "loop device attached");
        return Ok((dev, st));
    }
    Err(last)
}

/// What `dev` is bound to; fails with `ENXIO` when it is not bound.
pub fn status(dev: &LoopDevice) -> io::Result<LoopStatus> {
    let node = dev.open(false)?;
    let mut info = LoopInfo64::zeroed();
    // SAFETY: the kernel writes one `struct loop_info64` into `info`, which
    // is exactly that size and lives across the call.
    unsafe { ioc_get_status64(node.as_raw_fd(), &mut info) }.map_err(io::Error::from)?;
    Ok(LoopStatus {
        backing_dev: info.lo_device,
        backing_ino: info.lo_inode,
        flags: info.lo_flags,
    })
}

/// The loop devices bound to `file` (same device and inode), lowest number
/// first. Scans `/sys/block/loop*/loop/` (present only for bound devices)
/// and confirms each with `LOOP_GET_STATUS64`.
pub fn find_backing(file: &Path) -> io::Result<Vec<LoopDevice>> {
    let md = std::fs::metadata(file)?;
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/block")? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|s| s.strip_prefix("loop"))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if !entry.path().join("loop/backing_file").exists() {
            continue;
        }
        let dev = LoopDevice { number: n };
        match status(&dev) {
            Ok(st) if st.backing_dev == md.dev() && st.backing_ino == md.ino() => found.push(dev),
            Ok(_) => {}
            // Unbound meanwhile, or no node: not ours.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENXIO) | Some(libc::ENOENT) | Some(libc::ENODEV)
                ) => {}
            Err(e) => return Err(e),
        }
    }
    found.sort_by_key(|d| d.number);
    Ok(found)
}

/// Unbinds `dev`. A device still open (mounted) is unbound by the kernel
/// when its last user closes it (the kernel sets autoclear instead).
pub fn detach(dev: &LoopDevice) -> io::Result<()> {
    let node = dev.open(false)?;
    // SAFETY: LOOP_CLR_FD takes no argument.
    unsafe { ioc_clr_fd(node.as_raw_fd()) }.map_err(io::Error::from)?;
    Ok(())
}

/// Makes the loop device pick up a new size of its backing file (after the
/// file was grown), as `losetup -c` does.
pub fn refresh_capacity(dev: &LoopDevice) -> io::Result<()> {
    let node = dev.open(false)?;
    // SAFETY: LOOP_SET_CAPACITY takes no argument.
    unsafe { ioc_set_capacity(node.as_raw_fd()) }.map_err(io::Error::from)?;
    Ok(())
}

/// Size in bytes of a block device (BLKGETSIZE64).
pub fn device_size(dev: &Path) -> io::Result<u64> {
    nix::ioctl_read!(ioc_blkgetsize64, 0x12, 114, u64);
    let f = File::open(dev)?;
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 into `size`.
    unsafe { ioc_blkgetsize64(f.as_raw_fd(), &mut size) }.map_err(io::Error::from)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn require_root() -> bool {
        if !nix::unistd::geteuid().is_root() || !Path::new(LOOP_CONTROL).exists() {
            eprintln!("SKIP: needs root and /dev/loop-control");
            return false;
        }
        true
    }

    /// Detaches every device bound to the file on drop, even on panic.
    struct Bound(PathBuf);
    impl Drop for Bound {
        fn drop(&mut self) {
            for d in find_backing(&self.0).unwrap_or_default() {
                let _ = detach(&d);
            }
        }
    }

    #[test]
    fn sparse_attach_find_resize_detach() {
        if !require_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("pool.img");
        create_sparse(&img, 64 << 20).unwrap();
        assert_eq!(
            create_sparse(&img, 1).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(std::fs::metadata(&img).unwrap().blocks(), 0, "sparse");
        let _guard = Bound(img.clone());

        assert!(find_backing(&img).unwrap().is_empty());
        let (dev, st) = attach(&img, AttachOptions::default()).unwrap();
        assert!(!st.autoclear(), "autoclear must stay off");
        assert_eq!(st.flags & LO_FLAGS_READ_ONLY, 0, "writable");
        assert_eq!(st.direct_io(), supports_direct_io(&img));
        assert_eq!(find_backing(&img).unwrap(), vec![dev.clone()]);
        assert_eq!(device_size(&dev.path()).unwrap(), 64 << 20);

        // Grow the file; the device follows after refresh_capacity.
        OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .set_len(96 << 20)
            .unwrap();
        refresh_capacity(&dev).unwrap();
        assert_eq!(device_size(&dev.path()).unwrap(), 96 << 20);

        // A second, buffered attachment of the same file is found too.
        let (dev2, st2) = attach(
            &img,
            AttachOptions {
                direct_io: false,
                read_only: true,
            },
        )
        .unwrap();
        assert!(!st2.direct_io());
        assert_ne!(st2.flags & LO_FLAGS_READ_ONLY, 0, "read-only");
        assert_ne!(dev, dev2);
        assert_eq!(find_backing(&img).unwrap().len(), 2);
        detach(&dev2).unwrap();
        detach(&dev).unwrap();
        assert!(find_backing(&img).unwrap().is_empty());
        assert!(status(&dev).is_err(), "unbound device has no status");
    }
}
