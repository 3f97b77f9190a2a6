//! Mounting layers: classic `mount(2)` for specs as `mount(8)` takes them, the
//! new mount API for overlays of any depth, and unmounting.
//!
//! Facts this module is built on (measured on this project's machines, Linux 6.18):
//!
//! * Classic `mount(2)` copies only one page of option data (`PAGE_SIZE`, 4096
//!   bytes here, including the terminating NUL). An overlay option string
//!   longer than that fails (with 300 lowers: "special device overlay does not
//!   exist") or — worse — some over-long strings mount "successfully" with a
//!   truncated, wrong layer list. [`mount_spec`] therefore refuses any spec
//!   whose data is longer than [`max_mount_data`] before calling the kernel.
//! * The new mount API (`fsopen("overlay")`, one
//!   `fsconfig(FSCONFIG_SET_STRING, "lowerdir+", path)` per lower layer —
//!   `lowerdir+` exists since Linux 6.8 —, `upperdir`, `workdir`, `index=off`,
//!   `FSCONFIG_CMD_CREATE`, `fsmount`, `move_mount`) has no such limit.
//!   [`mount_overlay`] uses it.
//! * Before Linux 6.5 overlay has no fs_context of its own: fsconfig values
//!   are appended to one page of legacy option data (none may contain `,`)
//!   and parsed only at `FSCONFIG_CMD_CREATE`, which rejects `lowerdir+`
//!   with `EINVAL`; 6.5–6.7 reject the key at fsconfig. On those kernels the
//!   overlay driver mounts with [`mount_spec`] (one page) instead.
//! * Overlayfs stacks at most 500 lower layers (`OVL_MAX_STACK`), see
//!   [`OVL_MAX_STACK`].
//! * `fsconfig(FSCONFIG_SET_STRING)` copies at most 256 bytes including the NUL
//!   (`strndup_user(value, 256)`): a longer layer path gets `EINVAL`. Such paths
//!   are passed as an `O_PATH` descriptor with `FSCONFIG_SET_FD` instead, which
//!   this kernel accepts for `lowerdir+`, `upperdir` and `workdir` (older
//!   kernels that have `lowerdir+` but not layer descriptors fail those long
//!   paths with `EINVAL`).
//! * Overlay removes backslash escapes from `upperdir`/`workdir` strings (a raw
//!   `\` in them gives `ENOENT`) but takes `lowerdir+` strings verbatim; in
//!   the classic `lowerdir=a:b` list `\` escapes `:` `,` and `\`.
//! * The descriptor `fsmount` returns keeps the mount busy (`umount` gets
//!   `EBUSY`) until it is closed; [`mount_overlay`] closes it before returning.
//!
//! How `/proc/self/mountinfo` shows these mounts is handled in
//! [`super::mountinfo`].

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::statvfs::FsFlags;
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MoveMountFlags};
use tracing::{debug, warn};

/// The most lower layers overlayfs stacks (`OVL_MAX_STACK` in fs/overlayfs).
pub const OVL_MAX_STACK: usize = 500;

/// The longest string value `fsconfig(FSCONFIG_SET_STRING)` takes: the kernel
/// copies at most 256 bytes including the NUL.
const FSCONFIG_MAX_STRING: usize = 255;

/// How often [`unmount`] retries a busy mount, and its first pause (doubled
/// after each try: 10+20+40+80+160 ms in all).
const UNMOUNT_RETRIES: u32 = 5;
const UNMOUNT_FIRST_PAUSE: Duration = Duration::from_millis(10);

/// Errors from mounting, unmounting and checking mounts.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A system call failed. `op` names the operation (and the option or path
    /// it was about), `kernel_log` holds what the kernel logged on the
    /// `fsopen` context, if anything.
    #[error("{op} at {} failed: {errno}{}", .target.display(), log_suffix(.kernel_log))]
    Sys {
        op: String,
        target: PathBuf,
        errno: Errno,
        kernel_log: String,
    },
    /// The option data is longer than the one page classic `mount(2)` copies.
    #[error("mount options are {len} bytes, the kernel takes at most {max} in one mount(2) call")]
    OptionsTooLong { len: usize, max: usize },
    /// More lower layers than overlayfs stacks.
    #[error("overlay at {} has {count} lower layers, the kernel stacks at most {max}", .target.display())]
    TooManyLowers {
        target: PathBuf,
        count: usize,
        max: usize,
    },
    /// A request that cannot be mounted as asked, found before any system call.
    #[error("cannot mount at {}: {reason}", .target.display())]
    Invalid { target: PathBuf, reason: String },
    /// The mount at `target` is not what it should be.
    #[error("mount at {} does not match: {detail}", .target.display())]
    Mismatch { target: PathBuf, detail: String },
    /// `/proc/self/mountinfo` could not be read.
    #[error("reading /proc/self/mountinfo for {} failed: {source}", .target.display())]
    MountInfo {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl MountError {
    /// The errno of a failed system call, if that is what this error is.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            MountError::Sys { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    fn sys(op: impl Into<String>, target: &Path, errno: Errno) -> MountError {
        MountError::Sys {
            op: op.into(),
            target: target.to_path_buf(),
            errno,
            kernel_log: String::new(),
        }
    }
}

fn log_suffix(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!(" (kernel: {log})")
    }
}

pub use crate::shared::mount::MountSpec;

/// Length in bytes of the data string mount(2) would get (options minus
/// those mount(8) turns into flags: ro, rw, bind, rbind, …), comma-joined.
pub fn data_len(spec: &MountSpec) -> usize {
    let parsed = ParsedOptions::parse(&spec.options);
    let n = parsed.data.len();
    parsed.data.iter().map(|d| d.len()).sum::<usize>() + n.saturating_sub(1)
}

/// Page size minus the NUL: the longest option data classic mount(2) takes
/// (sysconf(_SC_PAGESIZE) - 1).
pub fn max_mount_data() -> usize {
    // SAFETY: sysconf only reads a system value; _SC_PAGESIZE is a valid name.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 {
        (page as usize) - 1
    } else {
        4095
    }
}

/// The running kernel's release (`uname -r`), for messages; "unknown" if
/// /proc cannot tell.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// What one mount(8) option means to mount(2).
enum OptKind {
    /// Sets these flags.
    Set(MsFlags),
    /// Clears these flags ("rw", "suid", …).
    Clear(MsFlags),
    /// A propagation change, applied by a separate mount(2) after the mount.
    Propagation(MsFlags),
    /// Meant for mount(8) or fstab only, never reaches the kernel.
    Userspace,
    /// Anything else: filesystem data.
    Data,
}

fn classify(opt: &str) -> OptKind {
    use MsFlags as F;
    use OptKind::*;
    match opt {
        "ro" => Set(F::MS_RDONLY),
        "rw" => Clear(F::MS_RDONLY),
        "nosuid" => Set(F::MS_NOSUID),
        "suid" => Clear(F::MS_NOSUID),
        "nodev" => Set(F::MS_NODEV),
        "dev" => Clear(F::MS_NODEV),
        "noexec" => Set(F::MS_NOEXEC),
        "exec" => Clear(F::MS_NOEXEC),
        "sync" => Set(F::MS_SYNCHRONOUS),
        "async" => Clear(F::MS_SYNCHRONOUS),
        "dirsync" => Set(F::MS_DIRSYNC),
        "mand" => Set(F::MS_MANDLOCK),
        "nomand" => Clear(F::MS_MANDLOCK),
        "noatime" => Set(F::MS_NOATIME),
        "atime" => Clear(F::MS_NOATIME),
        "nodiratime" => Set(F::MS_NODIRATIME),
        "diratime" => Clear(F::MS_NODIRATIME),
        "relatime" => Set(F::MS_RELATIME),
        "norelatime" => Clear(F::MS_RELATIME),
        "strictatime" => Set(F::MS_STRICTATIME),
        "nostrictatime" => Clear(F::MS_STRICTATIME),
        "lazytime" => Set(F::MS_LAZYTIME),
        "nolazytime" => Clear(F::MS_LAZYTIME),
        "silent" => Set(F::MS_SILENT),
        "loud" => Clear(F::MS_SILENT),
        "bind" => Set(F::MS_BIND),
        "rbind" => Set(F::MS_BIND | F::MS_REC),
        "remount" => Set(F::MS_REMOUNT),
        "private" => Propagation(F::MS_PRIVATE),
        "rprivate" => Propagation(F::MS_PRIVATE | F::MS_REC),
        "shared" => Propagation(F::MS_SHARED),
        "rshared" => Propagation(F::MS_SHARED | F::MS_REC),
        "slave" => Propagation(F::MS_SLAVE),
        "rslave" => Propagation(F::MS_SLAVE | F::MS_REC),
        "unbindable" => Propagation(F::MS_UNBINDABLE),
        "runbindable" => Propagation(F::MS_UNBINDABLE | F::MS_REC),
        "defaults" | "auto" | "noauto" | "nofail" | "_netdev" | "user" | "nouser" | "users"
        | "owner" | "noowner" | "group" | "nogroup" => Userspace,
        o if o.starts_with("x-") || o.starts_with("X-") || o.starts_with("comment=") => Userspace,
        _ => Data,
    }
}

/// A spec's options split the way mount(8) splits them.
struct ParsedOptions<'a> {
    flags: MsFlags,
    /// Flags an option explicitly cleared ("rw", "suid", …).
    cleared: MsFlags,
    propagation: Vec<MsFlags>,
    data: Vec<&'a str>,
}

impl<'a> ParsedOptions<'a> {
    fn parse(options: &'a [String]) -> ParsedOptions<'a> {
        let mut p = ParsedOptions {
            flags: MsFlags::empty(),
            cleared: MsFlags::empty(),
            propagation: Vec::new(),
            data: Vec::new(),
        };
        for opt in options {
            match classify(opt) {
                OptKind::Set(f) => {
                    p.flags.insert(f);
                    p.cleared.remove(f);
                }
                OptKind::Clear(f) => {
                    p.flags.remove(f);
                    p.cleared.insert(f);
                }
                OptKind::Propagation(f) => p.propagation.push(f),
                OptKind::Userspace => {}
                OptKind::Data => p.data.push(opt.as_str()),
            }
        }
        p
    }
}

/// The flags a bind remount can change per mount.
fn per_mount_flags() -> MsFlags {
    MsFlags::MS_RDONLY
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOEXEC
        | MsFlags::MS_NOATIME
        | MsFlags::MS_NODIRATIME
        | MsFlags::MS_RELATIME
        | MsFlags::MS_STRICTATIME
}

/// Mounts a spec at target with classic mount(2) (what mount(8) would do):
/// "bind" → MS_BIND (+ a remount with MS_RDONLY|MS_BIND for ro, since a bind
/// ignores ro on first mount); otherwise fstype/source with flags parsed from
/// ro/rw/nosuid/nodev/noexec/relatime… and the rest as data. Refuses (error,
/// before calling mount) a spec whose data_len() > max_mount_data().
///
/// The bind remount keeps nosuid/nodev/noexec (and the atime mode, unless the
/// spec sets one) of the mount the source lives on, as runc does: a plain
/// remount would silently drop them. If the remount fails the bind is undone,
/// so a failed read-only bind never stays mounted read-write. Propagation
/// options (private, rshared, …) are applied afterwards, as mount(8) does.
pub fn mount_spec(spec: &MountSpec, target: &Path) -> Result<(), MountError> {
    let parsed = ParsedOptions::parse(&spec.options);
    let data = parsed.data.join(",");
    let max = max_mount_data();
    if data.len() > max {
        return Err(MountError::OptionsTooLong {
            len: data.len(),
            max,
        });
    }
    let data_arg = if data.is_empty() {
        None
    } else {
        Some(data.as_str())
    };
    let is_bind = spec.fstype == "bind" || parsed.flags.contains(MsFlags::MS_BIND);
    if is_bind && !parsed.flags.contains(MsFlags::MS_REMOUNT) {
        mount_bind(spec, &parsed, data_arg, target)?;
    } else {
        debug!(target = %target.display(), fstype = %spec.fstype, source = %spec.source,
               data_len = data.len(), "mount(2)");
        nix::mount::mount(
            Some(spec.source.as_str()),
            target,
            Some(spec.fstype.as_str()),
            parsed.flags,
            data_arg,
        )
        .map_err(|e| {
            MountError::sys(
                format!("mount {} from {}", spec.fstype, spec.source),
                target,
                e,
            )
        })?;
    }
    for prop in &parsed.propagation {
        nix::mount::mount(None::<&str>, target, None::<&str>, *prop, None::<&str>)
            .map_err(|e| MountError::sys(format!("mount propagation {prop:?}"), target, e))?;
    }
    Ok(())
}

fn mount_bind(
    spec: &MountSpec,
    parsed: &ParsedOptions<'_>,
    data: Option<&str>,
    target: &Path,
) -> Result<(), MountError> {
    let bind = MsFlags::MS_BIND | (parsed.flags & MsFlags::MS_REC);
    debug!(target = %target.display(), source = %spec.source, "bind mount(2)");
    nix::mount::mount(Some(spec.source.as_str()), target, None::<&str>, bind, data)
        .map_err(|e| MountError::sys(format!("bind mount from {}", spec.source), target, e))?;
    let wanted = parsed.flags & per_mount_flags();
    if wanted.is_empty() {
        return Ok(());
    }
    let remount = || -> Result<(), MountError> {
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | wanted;
        let st = nix::sys::statvfs::statvfs(target)
            .map_err(|e| MountError::sys("statvfs after bind", target, e))?;
        let current = st.flags();
        let keep = [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        ];
        for (st_flag, ms_flag) in keep {
            if current.contains(st_flag) && !parsed.cleared.contains(ms_flag) {
                flags.insert(ms_flag);
            }
        }
        let atime = MsFlags::MS_NOATIME | MsFlags::MS_RELATIME | MsFlags::MS_STRICTATIME;
        if !wanted.intersects(atime) && !parsed.cleared.intersects(atime) {
            if current.contains(FsFlags::ST_NOATIME) {
                flags.insert(MsFlags::MS_NOATIME);
            } else if current.contains(FsFlags::ST_RELATIME) {
                flags.insert(MsFlags::MS_RELATIME);
            } else {
                flags.insert(MsFlags::MS_STRICTATIME);
            }
        }
        if current.contains(FsFlags::ST_NODIRATIME)
            && !parsed.cleared.contains(MsFlags::MS_NODIRATIME)
        {
            flags.insert(MsFlags::MS_NODIRATIME);
        }
        debug!(target = %target.display(), ?flags, "bind remount(2)");
        nix::mount::mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
            .map_err(|e| MountError::sys(format!("bind remount {wanted:?}"), target, e))
    };
    if let Err(e) = remount() {
        if let Err(undo) =
            nix::mount::umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW)
        {
            warn!(target = %target.display(), %undo, "could not undo bind mount after failed remount");
        }
        return Err(e);
    }
    Ok(())
}

fn rustix_errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

/// Reads what the kernel logged on an fs context (lines like "e overlayfs: …").
fn context_log(fs: &OwnedFd) -> String {
    let mut lines = Vec::new();
    let mut buf = [0u8; 1024];
    // The log holds a few messages; stop at ENODATA or any error.
    for _ in 0..16 {
        match rustix::io::read(fs, &mut buf) {
            Ok(n) if n > 0 => lines.push(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
            _ => break,
        }
    }
    lines.join("; ")
}

/// An error from an fsconfig/fsmount step, with whatever the kernel logged.
fn context_err(fs: &OwnedFd, op: String, target: &Path, e: rustix::io::Errno) -> MountError {
    MountError::Sys {
        op,
        target: target.to_path_buf(),
        errno: rustix_errno(e),
        kernel_log: context_log(fs),
    }
}

/// Hands one layer directory to the overlay context under `key`.
///
/// `unescape`: whether the kernel removes backslash escapes from this key's
/// string value (it does for upperdir/workdir, not for lowerdir+). The value
/// goes as a string when it fits in fsconfig's 256-byte limit, otherwise as an
/// `O_PATH` descriptor.
fn set_layer(
    fs: &OwnedFd,
    key: &str,
    path: &Path,
    unescape: bool,
    target: &Path,
) -> Result<(), MountError> {
    let raw = path.as_os_str().as_bytes();
    let value: OsString = if unescape {
        let mut v = Vec::with_capacity(raw.len());
        for &b in raw {
            if b == b'\\' {
                v.push(b'\\');
            }
            v.push(b);
        }
        OsString::from_vec(v)
    } else {
        path.as_os_str().to_os_string()
    };
    let op = || format!("fsconfig {key} {}", path.display());
    if value.len() <= FSCONFIG_MAX_STRING {
        return rustix::mount::fsconfig_set_string(fs, key, value.as_os_str())
            .map_err(|e| context_err(fs, op(), target, e));
    }
    let dir = rustix::fs::open(
        path,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| MountError::sys(format!("open {}", path.display()), target, rustix_errno(e)))?;
    rustix::mount::fsconfig_set_fd(fs, key, dir.as_fd())
        .map_err(|e| context_err(fs, format!("{} (as a descriptor)", op()), target, e))
}

/// Mounts an overlay of any depth up to 500 lowers with the new mount API
/// (fsopen/fsconfig lowerdir+), read-only when upper is None.
///
/// Lowers are nearest-first, like [`MountSpec::overlay`]; `index=off` is set
/// and the source is "overlay" (as mount(8) would show it). A read-only
/// overlay is also mounted with `MOUNT_ATTR_RDONLY`, so its mount options say
/// "ro".
pub fn mount_overlay(
    lowers: &[PathBuf],
    upper: Option<(&Path, &Path)>,
    target: &Path,
) -> Result<(), MountError> {
    if lowers.is_empty() {
        return Err(MountError::Invalid {
            target: target.to_path_buf(),
            reason: "an overlay needs at least one lower layer".to_string(),
        });
    }
    if lowers.len() == 1 && upper.is_none() {
        return Err(MountError::Invalid {
            target: target.to_path_buf(),
            reason: "a read-only overlay needs at least 2 lower layers (the kernel refuses 1 \
                     without an upper); bind the layer read-only instead"
                .to_string(),
        });
    }
    if lowers.len() > OVL_MAX_STACK {
        return Err(MountError::TooManyLowers {
            target: target.to_path_buf(),
            count: lowers.len(),
            max: OVL_MAX_STACK,
        });
    }
    debug!(target = %target.display(), lowers = lowers.len(), writable = upper.is_some(),
           "overlay via fsopen/fsconfig");
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)
        .map_err(|e| MountError::sys("fsopen overlay", target, rustix_errno(e)))?;
    rustix::mount::fsconfig_set_string(&fs, "source", "overlay")
        .map_err(|e| context_err(&fs, "fsconfig source".to_string(), target, e))?;
    for (i, lower) in lowers.iter().enumerate() {
        set_layer(&fs, "lowerdir+", lower, false, target).map_err(|e| match e {
            // Kernels before 6.8 do not know the key at all.
            MountError::Sys {
                op,
                target,
                errno: Errno::EINVAL,
                kernel_log,
            } if i == 0 && kernel_log.contains("lowerdir+") => MountError::Sys {
                op: format!("{op} (lowerdir+ needs Linux 6.8 or later)"),
                target,
                errno: Errno::EINVAL,
                kernel_log,
            },
            other => other,
        })?;
    }
    if let Some((upperdir, workdir)) = upper {
        set_layer(&fs, "upperdir", upperdir, true, target)?;
        set_layer(&fs, "workdir", workdir, true, target)?;
    }
    rustix::mount::fsconfig_set_string(&fs, "index", "off")
        .map_err(|e| context_err(&fs, "fsconfig index=off".to_string(), target, e))?;
    rustix::mount::fsconfig_create(&fs)
        .map_err(|e| context_err(&fs, "fsconfig create overlay".to_string(), target, e))?;
    let attrs = if upper.is_none() {
        MountAttrFlags::MOUNT_ATTR_RDONLY
    } else {
        MountAttrFlags::empty()
    };
    let mnt = rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs)
        .map_err(|e| context_err(&fs, "fsmount overlay".to_string(), target, e))?;
    rustix::mount::move_mount(
        mnt.as_fd(),
        OsStr::new(""),
        rustix::fs::CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| MountError::sys("move_mount overlay", target, rustix_errno(e)))?;
    // Closing the fsmount descriptor now matters: while it is open the new
    // mount counts as busy and cannot be unmounted.
    drop(mnt);
    drop(fs);
    Ok(())
}

/// Unmounts target; on EBUSY retries a few times with short sleeps, then
/// fails (no lazy detach unless asked).
///
/// `lazy` detaches at once (`MNT_DETACH`), leaving the filesystem alive until
/// its last user is gone. Symlinks at `target` are not followed
/// (`UMOUNT_NOFOLLOW`). Only the topmost mount at `target` is removed.
pub fn unmount(target: &Path, lazy: bool) -> Result<(), MountError> {
    let mut flags = MntFlags::UMOUNT_NOFOLLOW;
    if lazy {
        flags.insert(MntFlags::MNT_DETACH);
    }
    let op = if lazy { "lazy unmount" } else { "unmount" };
    let mut pause = UNMOUNT_FIRST_PAUSE;
    let mut attempt = 0;
    loop {
        match nix::mount::umount2(target, flags) {
            Ok(()) => {
                debug!(target = %target.display(), lazy, "unmounted");
                return Ok(());
            }
            Err(Errno::EBUSY) if attempt < UNMOUNT_RETRIES => {
                attempt += 1;
                debug!(target = %target.display(), attempt, "mount busy, retrying unmount");
                std::thread::sleep(pause);
                pause *= 2;
            }
            Err(e) => {
                let op = if e == Errno::EBUSY {
                    format!("{op} (after {attempt} retries)")
                } else {
                    op.to_string()
                };
                return Err(MountError::sys(op, target, e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::mountinfo::{find_mount, overlay_lowers, verify_overlay};
    use super::*;
    use std::fs;

    // ---- pure tests, no root needed ----

    #[test]
    fn overlay_spec_options() {
        let spec = MountSpec::overlay(
            &[PathBuf::from("/l/a"), PathBuf::from("/l/b:c,d\\e")],
            Some((Path::new("/u p"), Path::new("/w"))),
        );
        assert_eq!(spec.fstype, "overlay");
        assert_eq!(spec.source, "overlay");
        assert_eq!(
            spec.options,
            vec![
                "lowerdir=/l/a:/l/b\\:c\\,d\\\\e".to_string(),
                "upperdir=/u p".to_string(),
                "workdir=/w".to_string(),
                "index=off".to_string(),
            ]
        );
        let ro = MountSpec::overlay(&[PathBuf::from("/a")], None);
        assert_eq!(
            ro.options,
            vec!["lowerdir=/a".to_string(), "index=off".to_string()]
        );
        assert_eq!(data_len(&ro), "lowerdir=/a,index=off".len());
    }

    #[test]
    fn bind_spec_and_data_len() {
        let ro = MountSpec::bind(Path::new("/src"), true);
        assert_eq!(ro.fstype, "bind");
        assert_eq!(ro.source, "/src");
        assert_eq!(ro.options, vec!["bind".to_string(), "ro".to_string()]);
        assert_eq!(data_len(&ro), 0);
        assert_eq!(MountSpec::bind(Path::new("/src"), false).options[1], "rw");
        let spec = MountSpec {
            fstype: "ext4".into(),
            source: "/dev/x".into(),
            options: [
                "ro",
                "nosuid",
                "errors=remount-ro",
                "rshared",
                "x-systemd.foo",
                "data=ordered",
            ]
            .map(String::from)
            .to_vec(),
        };
        assert_eq!(data_len(&spec), "errors=remount-ro,data=ordered".len());
        let parsed = ParsedOptions::parse(&spec.options);
        assert_eq!(parsed.flags, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert_eq!(
            parsed.propagation,
            vec![MsFlags::MS_SHARED | MsFlags::MS_REC]
        );
        // Later options win, as in mount(8).
        let rw = ["ro", "rw"].map(String::from);
        let parsed = ParsedOptions::parse(&rw);
        assert!(parsed.flags.is_empty());
        assert!(parsed.cleared.contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn error_messages() {
        let e = MountError::OptionsTooLong {
            len: 5000,
            max: 4095,
        };
        assert_eq!(
            e.to_string(),
            "mount options are 5000 bytes, the kernel takes at most 4095 in one mount(2) call"
        );
        let e = MountError::sys("unmount", Path::new("/mnt/x"), Errno::EBUSY);
        let msg = e.to_string();
        assert!(
            msg.contains("unmount") && msg.contains("/mnt/x") && msg.contains("EBUSY"),
            "{msg}"
        );
        assert_eq!(e.errno(), Some(Errno::EBUSY));
    }

    #[test]
    fn page_limit() {
        // SAFETY: sysconf only reads a system value.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        assert_eq!(max_mount_data() as i64, page as i64 - 1);
    }

    // ---- real kernel tests, as root ----

    fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "these tests mount filesystems and must run as root"
        );
    }

    /// Unmounts every registered target (topmost first, all stacked mounts)
    /// when dropped, so a failing test leaves nothing mounted. Declare it after
    /// the TempDir so it drops first.
    #[derive(Default)]
    struct Mounts(Vec<PathBuf>);

    impl Mounts {
        fn add(&mut self, target: &Path) {
            self.0.push(target.to_path_buf());
        }
    }

    impl Drop for Mounts {
        fn drop(&mut self) {
            for target in self.0.iter().rev() {
                for _ in 0..8 {
                    if nix::mount::umount2(target, MntFlags::MNT_DETACH).is_err() {
                        break;
                    }
                }
            }
        }
    }

    struct Layers {
        _dir: tempfile::TempDir,
        root: PathBuf,
        lowers: Vec<PathBuf>,
    }

    impl Layers {
        /// `n` lower dirs under a fresh temp dir, named by `name(i)`; lower i
        /// holds "f{i}" and its own copy of "shadow" containing i, so the
        /// merged "shadow" tells which lower is nearest.
        fn new(n: usize, name: impl Fn(usize) -> String) -> Layers {
            let dir = tempfile::Builder::new()
                .prefix("ly")
                .tempdir()
                .expect("tempdir");
            let root = dir.path().to_path_buf();
            let mut lowers = Vec::new();
            for i in 0..n {
                let l = root.join(name(i));
                fs::create_dir_all(&l).expect("mkdir lower");
                fs::write(l.join(format!("f{i}")), i.to_string()).expect("write");
                fs::write(l.join("shadow"), i.to_string()).expect("write");
                lowers.push(l);
            }
            Layers {
                _dir: dir,
                root,
                lowers,
            }
        }

        fn dir(&self, name: &str) -> PathBuf {
            let p = self.root.join(name);
            fs::create_dir_all(&p).expect("mkdir");
            p
        }
    }

    fn check_merged(target: &Path, n: usize) {
        for i in 0..n {
            let f = target.join(format!("f{i}"));
            assert_eq!(
                fs::read_to_string(&f).expect("read merged file"),
                i.to_string(),
                "{}",
                f.display()
            );
        }
        assert_eq!(
            fs::read_to_string(target.join("shadow")).expect("shadow"),
            "0"
        );
        assert_eq!(fs::read_dir(target).expect("readdir").count(), n + 1);
    }

    fn write_errno(path: &Path) -> Option<i32> {
        fs::write(path, "x").err().and_then(|e| e.raw_os_error())
    }

    fn spec_overlay_roundtrip(n: usize, writable: bool) {
        require_root();
        let layers = Layers::new(n, |i| i.to_string());
        let target = layers.dir("m");
        let (up, work) = (layers.dir("u"), layers.dir("w"));
        let upper = writable.then_some((up.as_path(), work.as_path()));
        let spec = MountSpec::overlay(&layers.lowers, upper);
        assert!(data_len(&spec) <= max_mount_data());
        let mut mounts = Mounts::default();
        mounts.add(&target);
        mount_spec(&spec, &target).expect("mount_spec overlay");
        check_merged(&target, n);
        verify_overlay(&target, &layers.lowers, upper.map(|u| u.0)).expect("verify");
        if writable {
            fs::write(target.join("new"), "x").expect("write to writable overlay");
            assert!(up.join("new").exists());
        } else {
            assert_eq!(write_errno(&target.join("new")), Some(libc::EROFS));
        }
        unmount(&target, false).expect("unmount");
        assert!(find_mount(&target).expect("mountinfo").is_none());
    }

    #[test]
    fn spec_overlay_1_lower() {
        spec_overlay_roundtrip(1, true);
    }

    #[test]
    fn spec_overlay_2_lowers_readonly() {
        spec_overlay_roundtrip(2, false);
    }

    #[test]
    fn readonly_overlay_of_1_lower_is_refused() {
        require_root();
        // The kernel wants 2 lowers when there is no upper ("at least 2
        // lowerdir are needed while upperdir nonexistent", EINVAL).
        let layers = Layers::new(1, |i| i.to_string());
        let target = layers.dir("m");
        let mut mounts = Mounts::default();
        mounts.add(&target);
        let err = mount_spec(&MountSpec::overlay(&layers.lowers, None), &target)
            .expect_err("1 lower, no upper");
        assert_eq!(err.errno(), Some(Errno::EINVAL), "{err}");
        let err = mount_overlay(&layers.lowers, None, &target).expect_err("1 lower, no upper");
        assert!(matches!(err, MountError::Invalid { .. }), "{err}");
        assert!(find_mount(&target).expect("mountinfo").is_none());
        // What containerd hands out for such a view instead: a read-only bind.
        mount_spec(&MountSpec::bind(&layers.lowers[0], true), &target).expect("ro bind");
        assert_eq!(write_errno(&target.join("new")), Some(libc::EROFS));
    }

    #[test]
    fn spec_overlay_2_lowers() {
        spec_overlay_roundtrip(2, true);
    }

    #[test]
    fn spec_overlay_128_lowers() {
        spec_overlay_roundtrip(128, true);
    }

    #[test]
    fn spec_at_exact_page_limit_mounts() {
        require_root();
        // Lowers with long names so the data string is exactly max_mount_data().
        let max = max_mount_data();
        let layers = Layers::new(0, |i| i.to_string());
        let target = layers.dir("m");
        // "lowerdir=" + k paths joined by ':' + ",index=off" = max, so the
        // k paths plus one ':' each add up to max - 19 + 1.
        let fixed = "lowerdir=".len() + ",index=off".len();
        let budget = max + 1 - fixed;
        let per_path = layers.root.as_os_str().len() + 2; // "/" and ':'
        let k = budget.div_ceil(per_path + 250);
        let names_total = budget - k * per_path;
        let lowers: Vec<PathBuf> = (0..k)
            .map(|i| {
                let len = names_total / k + usize::from(i < names_total % k);
                layers.root.join(format!("{i:03}{}", "x".repeat(len - 3)))
            })
            .collect();
        for (i, l) in lowers.iter().enumerate() {
            fs::create_dir_all(l).expect("mkdir");
            fs::write(l.join(format!("f{i}")), i.to_string()).expect("write");
            fs::write(l.join("shadow"), i.to_string()).expect("write");
        }
        let spec = MountSpec::overlay(&lowers, None);
        assert_eq!(
            data_len(&spec),
            max,
            "test must build data of exactly one page minus NUL"
        );
        let mut mounts = Mounts::default();
        mounts.add(&target);
        mount_spec(&spec, &target).expect("mount at exactly the limit");
        check_merged(&target, lowers.len());
        verify_overlay(&target, &lowers, None).expect("verify");
    }

    #[test]
    fn spec_over_limit_is_refused_before_mounting() {
        require_root();
        let layers = Layers::new(300, |i| format!("layer-{i:04}"));
        let target = layers.dir("m");
        let spec = MountSpec::overlay(&layers.lowers, None);
        assert!(data_len(&spec) > max_mount_data());
        let mut mounts = Mounts::default();
        mounts.add(&target);
        match mount_spec(&spec, &target) {
            Err(MountError::OptionsTooLong { len, max }) => {
                assert_eq!(len, data_len(&spec));
                assert_eq!(max, max_mount_data());
            }
            other => panic!("expected OptionsTooLong, got {other:?}"),
        }
        assert!(
            find_mount(&target).expect("mountinfo").is_none(),
            "nothing may be mounted"
        );
        // The same layers mount fine with the new API.
        mount_overlay(&layers.lowers, None, &target).expect("mount_overlay 300");
        check_merged(&target, 300);
    }

    #[test]
    fn overlay_500_lowers_new_api() {
        require_root();
        let layers = Layers::new(OVL_MAX_STACK, |i| format!("layers/{i}"));
        let target = layers.dir("m");
        let (up, work) = (layers.dir("u"), layers.dir("w"));
        let mut mounts = Mounts::default();
        mounts.add(&target);
        mount_overlay(&layers.lowers, Some((&up, &work)), &target).expect("mount_overlay 500");
        check_merged(&target, OVL_MAX_STACK);
        verify_overlay(&target, &layers.lowers, Some(&up)).expect("verify 500");
        let mi = find_mount(&target).expect("mountinfo").expect("mounted");
        assert_eq!(mi.fstype, "overlay");
        assert_eq!(mi.source, "overlay");
        assert_eq!(overlay_lowers(&mi), layers.lowers);
        // A wrong expectation is reported.
        let mut wrong = layers.lowers.clone();
        wrong.swap(0, 1);
        let err = verify_overlay(&target, &wrong, Some(&up)).expect_err("swapped lowers");
        assert!(matches!(err, MountError::Mismatch { .. }), "{err}");
        let err = verify_overlay(&target, &layers.lowers[1..], None).expect_err("fewer lowers");
        assert!(matches!(err, MountError::Mismatch { .. }), "{err}");
        let err = verify_overlay(&target, &layers.lowers, Some(&work)).expect_err("wrong upper");
        assert!(matches!(err, MountError::Mismatch { .. }), "{err}");
        fs::write(target.join("new"), "x").expect("writable");
        unmount(&target, false).expect("unmount");
    }

    #[test]
    fn overlay_missing_lower_names_path_and_errno() {
        require_root();
        let layers = Layers::new(2, |i| i.to_string());
        let target = layers.dir("m");
        let mut lowers = layers.lowers.clone();
        lowers.insert(1, layers.root.join("missing"));
        let mut mounts = Mounts::default();
        mounts.add(&target);
        let err = mount_overlay(&lowers, None, &target).expect_err("missing lower");
        assert_eq!(err.errno(), Some(Errno::ENOENT), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("lowerdir+") && msg.contains("missing") && msg.contains("ENOENT"),
            "{msg}"
        );
        assert!(msg.contains(&target.display().to_string()), "{msg}");
        eprintln!("error as reported: {msg}");
        assert!(find_mount(&target).expect("mountinfo").is_none());
    }

    #[test]
    fn overlay_501_lowers_refused() {
        let lowers: Vec<PathBuf> = (0..=OVL_MAX_STACK)
            .map(|i| PathBuf::from(format!("/l/{i}")))
            .collect();
        let err = mount_overlay(&lowers, None, Path::new("/nonexistent-target")).expect_err("501");
        assert!(
            matches!(
                err,
                MountError::TooManyLowers {
                    count: 501,
                    max: 500,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn overlay_new_api_readonly() {
        require_root();
        let layers = Layers::new(3, |i| i.to_string());
        let target = layers.dir("m");
        let mut mounts = Mounts::default();
        mounts.add(&target);
        mount_overlay(&layers.lowers, None, &target).expect("mount_overlay ro");
        check_merged(&target, 3);
        assert_eq!(write_errno(&target.join("new")), Some(libc::EROFS));
        assert_eq!(write_errno(&target.join("f1")), Some(libc::EROFS));
        let mi = find_mount(&target).expect("mountinfo").expect("mounted");
        assert!(
            mi.mount_options.split(',').any(|o| o == "ro"),
            "{}",
            mi.mount_options
        );
        verify_overlay(&target, &layers.lowers, None).expect("verify");
    }

    #[test]
    fn overlay_awkward_paths_both_apis() {
        require_root();
        // Space, colon, comma, backslash, tab; one lower longer than fsconfig's
        // 256-byte string limit.
        let long = format!("{}/{}", "a".repeat(200), "b".repeat(100));
        let names = [
            "sp ace",
            "co:lon",
            "com,ma",
            "back\\slash",
            "ta\tb",
            long.as_str(),
        ];
        let layers = Layers::new(names.len(), |i| names[i].to_string());
        let (up, work) = (layers.dir("u p:x,y\\z"), layers.dir("w\\k"));
        let target = layers.dir("m nt");
        let mut mounts = Mounts::default();
        mounts.add(&target);

        mount_overlay(&layers.lowers, Some((&up, &work)), &target).expect("mount_overlay awkward");
        check_merged(&target, names.len());
        let mi = find_mount(&target).expect("mountinfo").expect("mounted");
        assert_eq!(mi.mount_point, target);
        assert_eq!(overlay_lowers(&mi), layers.lowers);
        verify_overlay(&target, &layers.lowers, Some(&up)).expect("verify new api");
        fs::write(target.join("new"), "x").expect("write");
        assert!(up.join("new").exists());
        unmount(&target, false).expect("unmount");

        // The classic path needs every path short enough for the page.
        let short = &layers.lowers[..names.len() - 1];
        let work2 = layers.dir("w2");
        fs::remove_file(up.join("new")).expect("rm");
        mount_spec(&MountSpec::overlay(short, Some((&up, &work2))), &target)
            .expect("mount_spec awkward");
        check_merged(&target, short.len());
        let mi = find_mount(&target).expect("mountinfo").expect("mounted");
        assert_eq!(overlay_lowers(&mi), short.to_vec());
        verify_overlay(&target, short, Some(&up)).expect("verify classic");
        unmount(&target, false).expect("unmount");
    }

    #[test]
    fn bind_rw_and_ro() {
        require_root();
        let layers = Layers::new(1, |_| "src".to_string());
        let src = &layers.lowers[0];
        let rw = layers.dir("rw");
        let ro = layers.dir("ro");
        let mut mounts = Mounts::default();
        mounts.add(&rw);
        mounts.add(&ro);

        mount_spec(&MountSpec::bind(src, false), &rw).expect("bind rw");
        fs::write(rw.join("via-rw"), "x").expect("write through rw bind");
        assert!(src.join("via-rw").exists());
        let mi = find_mount(&rw)
            .expect("mountinfo")
            .expect("rw bind mounted");
        assert!(
            mi.mount_options.split(',').any(|o| o == "rw"),
            "{}",
            mi.mount_options
        );

        mount_spec(&MountSpec::bind(src, true), &ro).expect("bind ro");
        assert_eq!(fs::read_to_string(ro.join("f0")).expect("read"), "0");
        assert_eq!(write_errno(&ro.join("f0")), Some(libc::EROFS));
        assert_eq!(write_errno(&ro.join("new")), Some(libc::EROFS));
        let mi = find_mount(&ro)
            .expect("mountinfo")
            .expect("ro bind mounted");
        assert!(
            mi.mount_options.split(',').any(|o| o == "ro"),
            "{}",
            mi.mount_options
        );
        // The source itself stays writable.
        fs::write(src.join("still-rw"), "x").expect("source writable");

        unmount(&ro, false).expect("unmount ro");
        unmount(&rw, false).expect("unmount rw");
    }

    #[test]
    fn unmount_busy_needs_lazy() {
        require_root();
        let layers = Layers::new(2, |i| i.to_string());
        let target = layers.dir("m");
        let (up, work) = (layers.dir("u"), layers.dir("w"));
        let mut mounts = Mounts::default();
        mounts.add(&target);
        mount_overlay(&layers.lowers, Some((&up, &work)), &target).expect("mount");
        let held = fs::File::create(target.join("held")).expect("open inside mount");
        let err = unmount(&target, false).expect_err("busy mount must not unmount");
        assert_eq!(err.errno(), Some(Errno::EBUSY), "{err}");
        assert!(err.to_string().contains("EBUSY"), "{err}");
        assert!(
            find_mount(&target).expect("mountinfo").is_some(),
            "still mounted"
        );
        unmount(&target, true).expect("lazy unmount");
        assert!(
            find_mount(&target).expect("mountinfo").is_none(),
            "detached"
        );
        drop(held);
    }

    #[test]
    fn unmount_not_mounted_errors() {
        require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let err = unmount(dir.path(), false).expect_err("not a mount point");
        assert_eq!(err.errno(), Some(Errno::EINVAL), "{err}");
    }
}
