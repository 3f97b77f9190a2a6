//! The raw kernel steps each operation cannot avoid, done directly by the
//! benchmark on the same file system the daemon uses (no store, no D-Bus).
//!
//! Each helper is one iteration's worth of syscalls; the caller times them.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::Path;

use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags};

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

fn ctx<T>(r: io::Result<T>, what: impl FnOnce() -> String) -> Result<T, String> {
    r.map_err(|e| format!("{}: {e}", what()))
}

/// mkdir(2) with an explicit mode (as the daemon's layer directories).
pub fn mkdir(path: &Path, mode: u32) -> Result<(), String> {
    ctx(fs::DirBuilder::new().mode(mode).create(path), || {
        format!("mkdir {}", path.display())
    })
}

pub fn rmdir(path: &Path) -> Result<(), String> {
    ctx(fs::remove_dir(path), || format!("rmdir {}", path.display()))
}

pub fn rename(from: &Path, to: &Path) -> Result<(), String> {
    ctx(fs::rename(from, to), || {
        format!("rename {} {}", from.display(), to.display())
    })
}

/// One small durable write, the way a store commit ends: a 4 KiB `pwrite`
/// into an already allocated file followed by `fdatasync`.
pub struct SyncFile {
    file: File,
    slot: u64,
    /// A second file that grows like a store file does (set_len ahead in
    /// 1 MiB steps, pages written into the hole).
    fresh: File,
    fresh_off: u64,
    fresh_len: u64,
}

const SYNC_BLOCK: usize = 4096;
const SYNC_SLOTS: u64 = 256;

impl SyncFile {
    pub fn create(path: &Path) -> Result<SyncFile, String> {
        let file = ctx(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path),
            || format!("create {}", path.display()),
        )?;
        // Allocate every block once, so each sample is an overwrite (as most
        // of a store's page writes are) and not an allocation.
        let block = vec![0x5au8; SYNC_BLOCK];
        for i in 0..SYNC_SLOTS {
            ctx(file.write_all_at(&block, i * SYNC_BLOCK as u64), || {
                format!("write {}", path.display())
            })?;
        }
        ctx(file.sync_all(), || format!("fsync {}", path.display()))?;
        let fresh_path = path.with_extension("fresh");
        let fresh = ctx(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&fresh_path),
            || format!("create {}", fresh_path.display()),
        )?;
        ctx(fresh.write_all_at(&block, 0), || "write".into())?;
        ctx(fresh.sync_all(), || "fsync".into())?;
        Ok(SyncFile {
            file,
            slot: 0,
            fresh,
            fresh_off: SYNC_BLOCK as u64,
            fresh_len: SYNC_BLOCK as u64,
        })
    }

    /// `pages` 4 KiB page writes and a 320-byte header write at offset 0,
    /// then fdatasync: the shape of a redb commit. `fresh`: the pages go to
    /// never-written space of a growing file (allocation), else they
    /// overwrite scattered allocated pages.
    pub fn write_pages_and_sync(&mut self, pages: usize, fresh: bool) -> Result<(), String> {
        let block = [(self.slot & 0xff) as u8; SYNC_BLOCK];
        self.slot += 1;
        let f = if fresh { &self.fresh } else { &self.file };
        for j in 0..pages as u64 {
            let off = if fresh {
                if self.fresh_off + SYNC_BLOCK as u64 > self.fresh_len {
                    self.fresh_len += 1 << 20;
                    ctx(f.set_len(self.fresh_len), || "set_len".into())?;
                }
                let o = self.fresh_off;
                self.fresh_off += SYNC_BLOCK as u64;
                o
            } else {
                (1 + (self.slot * 37 + j * 53) % (SYNC_SLOTS - 1)) * SYNC_BLOCK as u64
            };
            ctx(f.write_all_at(&block, off), || "pwrite".into())?;
        }
        ctx(f.write_all_at(&block[..320], 0), || "pwrite header".into())?;
        ctx(f.sync_data(), || "fdatasync".into())
    }

    /// One sample: pwrite 4 KiB + fdatasync.
    pub fn write_and_sync(&mut self) -> Result<(), String> {
        let block = [(self.slot & 0xff) as u8; SYNC_BLOCK];
        let off = (self.slot % SYNC_SLOTS) * SYNC_BLOCK as u64;
        self.slot += 1;
        ctx(self.file.write_all_at(&block, off), || "pwrite".into())?;
        ctx(self.file.sync_data(), || "fdatasync".into())
    }
}

/// An overlay mount with the new mount API, the way the daemon makes it:
/// fsopen("overlay"), source, one `lowerdir+` per lower (nearest first),
/// upperdir, workdir, index=off, create, fsmount, move_mount.
pub fn mount_overlay(
    lowers: &[&Path],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), String> {
    let r = (|| -> Result<(), rustix::io::Errno> {
        let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
        rustix::mount::fsconfig_set_string(&fs, "source", "overlay")?;
        for l in lowers {
            rustix::mount::fsconfig_set_string(&fs, "lowerdir+", l.as_os_str())?;
        }
        rustix::mount::fsconfig_set_string(&fs, "upperdir", upper.as_os_str())?;
        rustix::mount::fsconfig_set_string(&fs, "workdir", work.as_os_str())?;
        rustix::mount::fsconfig_set_string(&fs, "index", "off")?;
        rustix::mount::fsconfig_create(&fs)?;
        let mnt =
            rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())?;
        rustix::mount::move_mount(
            mnt.as_fd(),
            OsStr::new(""),
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )?;
        Ok(())
    })();
    r.map_err(|e| format!("overlay mount on {}: {}", target.display(), errno(e)))
}

/// A plain bind mount (what the daemon does for a writable vfs layer).
pub fn bind_mount(source: &Path, target: &Path) -> Result<(), String> {
    nix::mount::mount(
        Some(source),
        target,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("bind {} on {}: {e}", source.display(), target.display()))
}

pub fn umount(target: &Path) -> Result<(), String> {
    nix::mount::umount2(target, nix::mount::MntFlags::UMOUNT_NOFOLLOW)
        .map_err(|e| format!("umount {}: {e}", target.display()))
}

/// The least a vfs child's creation must do: a copy of the parent's tree
/// with reflinked data. Per directory: mkdir + utimensat; per regular file:
/// open the source, create the destination with its mode, FICLONE,
/// futimens. Owners and xattrs are not copied (the benchmark's trees are
/// root-owned and have none), so this is a lower bound of the daemon's copy.
pub fn reflink_tree(src: &Path, dst: &Path) -> Result<u64, String> {
    let mut files = 0;
    copy_dir(src, dst, &mut files)?;
    Ok(files)
}

fn copy_dir(src: &Path, dst: &Path, files: &mut u64) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let rd = ctx(fs::read_dir(src), || format!("readdir {}", src.display()))?;
    for entry in rd {
        let entry = ctx(entry, || format!("readdir {}", src.display()))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let md = ctx(from.symlink_metadata(), || {
            format!("lstat {}", from.display())
        })?;
        if md.is_dir() {
            mkdir(&to, md.permissions().mode() & 0o7777)?;
            copy_dir(&from, &to, files)?;
            set_times(&to, &md)?;
        } else if md.is_file() {
            let s = ctx(File::open(&from), || format!("open {}", from.display()))?;
            let d = ctx(
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(md.mode() & 0o7777)
                    .open(&to),
                || format!("create {}", to.display()),
            )?;
            if md.len() > 0 {
                rustix::fs::ioctl_ficlone(&d, &s)
                    .map_err(|e| format!("FICLONE {}: {}", to.display(), errno(e)))?;
            }
            let times = rustix::fs::Timestamps {
                last_access: rustix::fs::Timespec {
                    tv_sec: md.atime(),
                    tv_nsec: md.atime_nsec() as _,
                },
                last_modification: rustix::fs::Timespec {
                    tv_sec: md.mtime(),
                    tv_nsec: md.mtime_nsec() as _,
                },
            };
            rustix::fs::futimens(&d, &times)
                .map_err(|e| format!("futimens {}: {}", to.display(), errno(e)))?;
            *files += 1;
        }
    }
    Ok(())
}

fn set_times(path: &Path, md: &fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: md.atime(),
            tv_nsec: md.atime_nsec() as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: md.mtime(),
            tv_nsec: md.mtime_nsec() as _,
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, path, &times, rustix::fs::AtFlags::empty())
        .map_err(|e| format!("utimensat {}: {}", path.display(), errno(e)))
}

/// Writes the small tree the vfs parents hold: `dirs` directories of
/// `files` files of `size` bytes each.
pub fn write_tree(root: &Path, dirs: usize, files: usize, size: usize) -> Result<(), String> {
    for d in 0..dirs {
        let dir = root.join(format!("d{d}"));
        mkdir(&dir, 0o755)?;
        for f in 0..files {
            let data: Vec<u8> = (0..size)
                .map(|i| ((i * 7 + d * 13 + f) % 251) as u8)
                .collect();
            let p = dir.join(format!("f{f}"));
            ctx(fs::write(&p, &data), || format!("write {}", p.display()))?;
        }
    }
    Ok(())
}

/// VmRSS and VmHWM of a process, in KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Waits (blocking) until process `pid` has exited, via a pidfd; returns
/// false on timeout or when pidfd_open is unavailable.
pub fn wait_exit(pidfd: i32, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd on the stack.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    n == 1
}

/// pidfd_open(2); -1 on failure.
pub fn pidfd_open(pid: u32) -> i32 {
    // SAFETY: plain syscall with integer arguments.
    unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) as i32 }
}

pub fn close(fd: i32) {
    if fd >= 0 {
        // SAFETY: we own fd.
        unsafe {
            libc::close(fd);
        }
    }
}

/// btrfs raw steps, through layerd's own ioctl wrappers (`sys::btrfs`), on
/// the same file system as the daemon's btrfs pool.
pub mod btrfs {
    use std::path::Path;

    use layerd::sys::btrfs as sys;

    fn io<T>(r: std::io::Result<T>, what: &str, p: &Path) -> Result<T, String> {
        r.map_err(|e| format!("{what} {}: {e}", p.display()))
    }

    /// An empty subvolume `dir/name`, made durable: `SUBVOL_CREATE` +
    /// `START_SYNC`/`WAIT_SYNC` (a new subvolume is not committed by the
    /// ioctl itself; a snapshot is).
    pub fn create(dir: &Path, name: &str) -> Result<(), String> {
        io(sys::create_subvolume(dir, name), "create subvolume", dir)?;
        io(sys::commit_transaction(dir), "commit transaction", dir)
    }

    /// A writable snapshot `dir/name` of `src` (`SNAP_CREATE_V2`).
    pub fn snapshot(src: &Path, dir: &Path, name: &str) -> Result<(), String> {
        io(sys::snapshot(src, dir, name, false), "snapshot", src)
    }

    /// `SUBVOL_SETFLAGS` read-only on or off.
    pub fn set_readonly(path: &Path, ro: bool) -> Result<(), String> {
        io(sys::set_readonly(path, ro), "set flags", path)
    }

    /// `SNAP_DESTROY_V2` of `dir/name`.
    pub fn destroy(dir: &Path, name: &str) -> Result<(), String> {
        io(sys::delete_subvolume(dir, name), "destroy subvolume", dir)
    }

    /// Destroys every subvolume directly in `dir` (untimed clean-up).
    pub fn clear(dir: &Path) -> Result<(), String> {
        for e in io(std::fs::read_dir(dir), "readdir", dir)? {
            let e = io(e, "readdir", dir)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if sys::is_subvolume(&e.path()).unwrap_or(false) {
                io(
                    sys::delete_subvolume_recursive(dir, &name),
                    "destroy",
                    &e.path(),
                )?;
            }
        }
        Ok(())
    }

    pub fn subvolume_id(path: &Path) -> Result<u64, String> {
        io(sys::subvolume_id(path), "subvolume id", path)
    }

    /// mount(2) of subvolume `id` of `device` on `target`, as the daemon's
    /// Mount does (`btrfs`, device, `subvolid=N`).
    pub fn mount_subvol(device: &str, id: u64, target: &Path) -> Result<(), String> {
        let spec = layerd::sys::mount::MountSpec {
            fstype: "btrfs".into(),
            source: device.into(),
            options: vec![format!("subvolid={id}"), "rw".into()],
        };
        layerd::sys::mount::mount_spec(&spec, target)
            .map_err(|e| format!("mount subvolid={id} on {}: {e}", target.display()))
    }
}
