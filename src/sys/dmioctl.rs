//! Device-mapper resume and remove without udev synchronisation. The
//! `devicemapper` crate gives both a udev cookie and then waits on a SysV
//! semaphore until udevd has run its rules for the uevent (as libdevmapper
//! does). For devices whose `/dev/mapper` node the caller makes itself
//! (the thin driver's private layer devices) that wait buys nothing: udev
//! still gets the uevent, with the caller's udev flags and the primary
//! source flag in `DM_COOKIE` as libdevmapper sends them when udev sync is
//! off, and handles it afterwards; only the semaphore is left out.

use std::io;
use std::os::fd::AsRawFd;

/// `struct dm_ioctl` of <linux/dm-ioctl.h> (312 bytes).
#[repr(C)]
struct DmIoctl {
    version: [u32; 3],
    data_size: u32,
    data_start: u32,
    target_count: u32,
    open_count: i32,
    flags: u32,
    event_nr: u32,
    padding: u32,
    dev: u64,
    name: [u8; 128],
    uuid: [u8; 129],
    data: [u8; 7],
}

const DM_DEV_REMOVE_CMD: u64 = 2;
const DM_DEV_SUSPEND_CMD: u64 = 6;
const DM_DEFERRED_REMOVE: u32 = 1 << 17;
const DM_UDEV_PRIMARY_SOURCE_FLAG: u32 = 0x0040;
const DM_UDEV_FLAGS_SHIFT: u32 = 16;

/// One dm ioctl by device name; event_nr carries the udev flags and a
/// zero cookie (nothing to wait for).
fn ioctl(ctl: &impl AsRawFd, cmd: u64, name: &str, flags: u32, udev_flags: u32) -> io::Result<()> {
    let size = std::mem::size_of::<DmIoctl>();
    let mut h = DmIoctl {
        version: [4, 0, 0],
        data_size: size as u32,
        data_start: size as u32,
        target_count: 0,
        open_count: 0,
        flags,
        event_nr: ((udev_flags | DM_UDEV_PRIMARY_SOURCE_FLAG) & 0xffff) << DM_UDEV_FLAGS_SHIFT,
        padding: 0,
        dev: 0,
        name: [0; 128],
        uuid: [0; 129],
        data: [0; 7],
    };
    if name.is_empty() || name.len() >= h.name.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    h.name[..name.len()].copy_from_slice(name.as_bytes());
    // _IOWR(DM_IOCTL = 0xfd, cmd, struct dm_ioctl)
    let req = (3u64 << 30) | ((size as u64) << 16) | (0xfd << 8) | cmd;
    // SAFETY: `h` is a fully initialised dm_ioctl whose data_size is its
    // own size; the kernel writes at most that much back.
    let r = unsafe { libc::ioctl(ctl.as_raw_fd(), req as _, &mut h as *mut DmIoctl) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Resumes dm device `name` (loading its inactive table, if any);
/// `udev_flags`: `DmUdevFlags` bits for udev's rules.
pub fn resume(ctl: &impl AsRawFd, name: &str, udev_flags: u32) -> io::Result<()> {
    ioctl(ctl, DM_DEV_SUSPEND_CMD, name, 0, udev_flags)
}

/// Removes dm device `name`; `deferred`: when its last user closes it.
pub fn remove(ctl: &impl AsRawFd, name: &str, deferred: bool, udev_flags: u32) -> io::Result<()> {
    let flags = if deferred { DM_DEFERRED_REMOVE } else { 0 };
    ioctl(ctl, DM_DEV_REMOVE_CMD, name, flags, udev_flags)
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_is_312_bytes() {
        assert_eq!(std::mem::size_of::<super::DmIoctl>(), 312);
    }
}
