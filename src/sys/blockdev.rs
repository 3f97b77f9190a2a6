//! Block-device helpers the thin driver needs beside the devicemapper
//! crate: device nodes under `/dev/mapper` where udev has not made them
//! (yet), whole-device discard, exclusive opens, and the inode counters of
//! an unmounted xfs or ext4 superblock.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

// BLKDISCARD = _IO(0x12, 119); BLKGETSIZE64 = _IOR(0x12, 114, size_t).
nix::ioctl_write_ptr_bad!(ioc_blkdiscard, 0x1277, [u64; 2]);
nix::ioctl_read!(ioc_getsize64, 0x12, 114, u64);

/// `/dev/mapper/<name>`.
pub fn mapper_path(name: &str) -> PathBuf {
    Path::new("/dev/mapper").join(name)
}

/// Makes sure `/dev/mapper/<name>` reaches device `major:minor`. udev
/// (55-dm.rules) normally makes it a symlink to `../dm-N`; where udev has
/// not done so yet, a node is made as libdevmapper does without udev. A
/// stale node or link for another device is replaced.
pub fn ensure_mapper_node(name: &str, major: u32, minor: u32) -> io::Result<PathBuf> {
    let path = mapper_path(name);
    let want = nix::sys::stat::makedev(major as u64, minor as u64);
    match fs::metadata(&path) {
        Ok(m) if m.file_type().is_block_device() && m.rdev() == want => return Ok(path),
        Ok(_) => {
            let _ = fs::remove_file(&path);
        }
        Err(_) => {
            // A dangling link (device number reused) goes too.
            if fs::symlink_metadata(&path).is_ok() {
                let _ = fs::remove_file(&path);
            }
        }
    }
    fs::create_dir_all("/dev/mapper")?;
    match nix::sys::stat::mknod(
        &path,
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        want,
    ) {
        Ok(()) => Ok(path),
        // udev won the race: fine if it points at our device.
        Err(nix::errno::Errno::EEXIST) => match fs::metadata(&path) {
            Ok(m) if m.rdev() == want => Ok(path),
            _ => Err(io::Error::from_raw_os_error(libc::EEXIST)),
        },
        Err(e) => Err(e.into()),
    }
}

/// Removes `/dev/mapper/<name>` if it is a node or a link we can drop
/// (after the device is gone; udev removes its own links too).
pub fn remove_mapper_node(name: &str) {
    let path = mapper_path(name);
    if let Ok(m) = fs::symlink_metadata(&path) {
        if m.file_type().is_block_device() || m.file_type().is_symlink() {
            let _ = fs::remove_file(&path);
        }
    }
}

/// Opens a block device for writing with `O_EXCL`: fails with `EBUSY`
/// while it is mounted or otherwise held exclusively.
pub fn open_exclusive(dev: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
        .open(dev)
}

/// Size of an open block device in bytes.
pub fn size_of(f: &File) -> io::Result<u64> {
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 through the valid pointer.
    unsafe { ioc_getsize64(f.as_raw_fd(), &mut size) }?;
    Ok(size)
}

/// Discards the whole device (BLKDISCARD over [0, size)).
pub fn discard_all(f: &File) -> io::Result<()> {
    let size = size_of(f)?;
    if size == 0 {
        return Ok(());
    }
    let range = [0u64, size];
    // SAFETY: BLKDISCARD reads two u64 (start, length) from the pointer.
    unsafe { ioc_blkdiscard(f.as_raw_fd(), &range) }?;
    Ok(())
}

/// The file system signature at the start of `dev`, if it is one layerd
/// makes on thin devices.
pub fn fs_signature(dev: &Path) -> io::Result<Option<&'static str>> {
    let mut head = vec![0u8; 2048];
    File::open(dev)?.read_exact(&mut head)?;
    if &head[0..4] == b"XFSB" {
        return Ok(Some("xfs"));
    }
    if head[0x438..0x43a] == [0x53, 0xef] {
        return Ok(Some("ext4"));
    }
    Ok(None)
}

/// Inodes in use according to the superblock of an unmounted xfs or ext4
/// (`sb_icount - sb_ifree`; `s_inodes_count - s_free_inodes_count`). Both
/// file systems write the summed counters at unmount, so the numbers are
/// exact for a cleanly unmounted device; `None` for anything else.
pub fn superblock_inodes_used(dev: &Path) -> io::Result<Option<u64>> {
    let mut head = vec![0u8; 2048];
    File::open(dev)?.read_exact(&mut head)?;
    let be64 = |o: usize| u64::from_be_bytes(head[o..o + 8].try_into().unwrap_or([0; 8]));
    let le32 = |o: usize| u32::from_le_bytes(head[o..o + 4].try_into().unwrap_or([0; 4])) as u64;
    if &head[0..4] == b"XFSB" {
        return Ok(Some(be64(128).saturating_sub(be64(136))));
    }
    if head[0x438..0x43a] == [0x53, 0xef] {
        return Ok(Some(le32(1024).saturating_sub(le32(1024 + 16))));
    }
    Ok(None)
}

/// Whether the first `len` bytes of `path` are all zero (a new, never
/// formatted thin-pool metadata device or file).
pub fn is_zeroed(path: &Path, len: usize) -> io::Result<bool> {
    let mut buf = vec![0u8; len];
    let mut f = File::open(path)?;
    let mut got = 0;
    while got < len {
        match f.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(buf[..got].iter().all(|&b| b == 0))
}

/// Whether block device `major:minor` exists: sysfs drops its
/// `/sys/dev/block` link when the disk is deleted, even while a holder
/// (a dm table) still has it open.
pub fn present(major: u32, minor: u32) -> bool {
    Path::new(&format!("/sys/dev/block/{major}:{minor}")).exists()
}

/// Size of block device `major:minor` in 512-byte sectors, from sysfs
/// (no open: a device that is going away may have no node left).
pub fn sectors_of_devno(major: u32, minor: u32) -> io::Result<u64> {
    let s = fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/size"))?;
    s.trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("sysfs size {s:?}: {e}")))
}

/// Kernel name of block device `major:minor` (`sdb`, `loop3`), if it exists.
pub fn name_of_devno(major: u32, minor: u32) -> Option<String> {
    fs::read_link(format!("/sys/dev/block/{major}:{minor}"))
        .ok()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}
