//! Read-only host checks of a pool's path: stat, statfs and access(2),
//! nothing created.

use std::fs;
use std::io;
use std::path::Path;

use nix::unistd::AccessFlags;

use super::model::{Backing, Driver, PoolConfig};

/// What kind of thing a path is, for messages.
pub(super) fn kind_of(m: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a directory"
    }
}

/// Errors of a lookup that mean "keep walking up": missing, or a
/// non-directory in the way (found and reported one level up).
fn is_absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

/// Read-only checks that the pool can live at its path on this host.
pub(super) fn check_pool_host(pool: &PoolConfig) -> Result<(), String> {
    let path = &pool.path;
    match (pool.driver, pool.backing) {
        (Driver::Overlay | Driver::Vfs, _) => {
            check_dir_usable(path, pool.driver == Driver::Overlay)
        }
        (_, Backing::Loop) => {
            // The loop file(s) are created next to the path, in its parent.
            let parent = path.parent().unwrap_or(Path::new("/"));
            check_dir_usable(parent, false)
                .map_err(|e| format!("the loop file cannot be created: {e}"))
        }
        (_, Backing::Device) => match fs::metadata(path) {
            Ok(m) if !std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()) => Err(
                format!("{path:?} is {}, expected a block device", kind_of(&m)),
            ),
            // A missing device may appear later (udev); the pool is then
            // reported failed, not the whole config.
            _ => Ok(()),
        },
        (Driver::Btrfs, Backing::Existing) => match fs::metadata(path) {
            Ok(m) if !m.is_dir() => Err(format!(
                "{path:?} is {}, expected the directory where the btrfs is mounted",
                kind_of(&m)
            )),
            _ => Ok(()),
        },
        (Driver::Thin, Backing::Existing) => Ok(()),
    }
}

/// statfs(2) f_type is OVERLAYFS_SUPER_MAGIC (0x794c7630): an overlay
/// upper/work dir cannot live there.
pub(super) fn is_overlayfs(p: &Path) -> nix::Result<bool> {
    let st = nix::sys::statfs::statfs(p)?;
    Ok(st.filesystem_type() == nix::sys::statfs::OVERLAYFS_SUPER_MAGIC)
}

/// `dir` is a directory, or could be made one: its nearest existing
/// ancestor is a directory the daemon can write; for overlay, not on
/// overlayfs (an upper/work dir there fails at mount time).
fn check_dir_usable(dir: &Path, reject_overlayfs: bool) -> Result<(), String> {
    let existing = match fs::metadata(dir) {
        Ok(m) if m.is_dir() => dir,
        Ok(m) => return Err(format!("{dir:?} is {}, expected a directory", kind_of(&m))),
        Err(e) if is_absent(&e) => {
            if fs::symlink_metadata(dir).is_ok() {
                return Err(format!("{dir:?} is a dangling symbolic link"));
            }
            let mut found = None;
            for a in dir.ancestors().skip(1) {
                match fs::metadata(a) {
                    Ok(m) if m.is_dir() => {
                        found = Some(a);
                        break;
                    }
                    Ok(m) => {
                        return Err(format!(
                            "{dir:?} cannot be created: {a:?} is {}, not a directory",
                            kind_of(&m)
                        ))
                    }
                    Err(e) if is_absent(&e) => continue,
                    Err(e) => return Err(format!("cannot examine {a:?}: {e}")),
                }
            }
            found.ok_or_else(|| format!("{dir:?} has no existing ancestor directory"))?
        }
        Err(e) => return Err(format!("cannot examine {dir:?}: {e}")),
    };
    nix::unistd::access(existing, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|e| {
        if existing == dir {
            format!("{dir:?} is not writable by the daemon: {}", e.desc())
        } else {
            format!(
                "{dir:?} cannot be created: {existing:?} is not writable by the daemon: {}",
                e.desc()
            )
        }
    })?;
    if reject_overlayfs {
        let on_overlayfs = is_overlayfs(existing)
            .map_err(|e| format!("cannot statfs {existing:?}: {}", e.desc()))?;
        if on_overlayfs {
            return Err(format!(
                "{existing:?} is on an overlay file system, which cannot hold overlay upper and work directories; put this pool on a real file system (ext4, xfs, btrfs…) or use driver = \"vfs\""
            ));
        }
    }
    Ok(())
}
