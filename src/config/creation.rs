//! What the daemon must be able to do to create a pool, checked before it
//! creates anything (issue 16 item 7): `--check-config` and start-up refuse
//! a config whose pool creation would fail part-way.
//!
//! Sizes of loop backings (`size`):
//!
//! * at least what the pool's mkfs accepts: btrfs needs 109M on one device
//!   with default profiles (btrfs-progs 6.x: "minimum size for each btrfs
//!   device is 114294784"); a thin pool's data file must hold at least one
//!   block (`block_size`), and its base file system (`base_size`) what
//!   mkfs takes: xfs 300M (xfsprogs ≥ 5.19), ext4 16M;
//! * at most the largest file the file system holding the loop file can
//!   have (ftruncate would fail with EFBIG: ext2/3/4 2^32 blocks, 16T with
//!   4K blocks; others 8E), and at most [`MAX_OVERCOMMIT`] times that file
//!   system's size: a sparse pool which could never be filled that far
//!   only hides that its disk runs out (writes to it then fail under a
//!   pool that reports plenty of free space).

use std::fs;
use std::path::{Path, PathBuf};

use super::host::kind_of;
use super::{Backing, Driver, PoolConfig, ThinFs};

/// `mkfs.btrfs`'s minimum for one device with default profiles.
pub const BTRFS_MIN_SIZE: u64 = 109 << 20;
/// `mkfs.xfs`'s minimum file system size (xfsprogs 5.19 and later).
pub const XFS_MIN_SIZE: u64 = 300 << 20;
/// `mkfs.ext4`'s practical minimum for a thin layer file system.
pub const EXT4_MIN_SIZE: u64 = 16 << 20;
/// A loop file may be at most this many times the size of the file
/// system holding it.
pub const MAX_OVERCOMMIT: u64 = 64;

/// How sizes are shown in messages: the largest unit that divides them.
pub fn show_size(b: u64) -> String {
    for (shift, unit) in [
        (60, "E"),
        (50, "P"),
        (40, "T"),
        (30, "G"),
        (20, "M"),
        (10, "K"),
    ] {
        if b >= 1 << shift && b.is_multiple_of(1 << shift) {
            return format!("{}{unit}", b >> shift);
        }
    }
    format!("{b} bytes")
}

/// The key a problem is about, and what it is.
pub type KeyProblem = (&'static [&'static str], String);

/// Checks that need no host: minimum sizes of what the daemon formats.
pub fn check_sizes(pool: &PoolConfig) -> Result<(), KeyProblem> {
    let Some(size) = pool.size else {
        return Ok(());
    };
    if pool.backing != Backing::Loop {
        return Ok(());
    }
    match pool.driver {
        Driver::Btrfs if size < BTRFS_MIN_SIZE => Err((
            &["size"],
            format!(
                "{} is too small: mkfs.btrfs needs at least {} ({BTRFS_MIN_SIZE} bytes) for a file system",
                show_size(size),
                show_size(BTRFS_MIN_SIZE)
            ),
        )),
        Driver::Thin => {
            let Some(t) = &pool.thin else { return Ok(()) };
            if size < t.block_size {
                return Err((
                    &["size"],
                    format!(
                        "{} is too small: the data file must hold at least one block (block_size = {})",
                        show_size(size),
                        show_size(t.block_size)
                    ),
                ));
            }
            let (min, mkfs) = match t.fs {
                ThinFs::Xfs => (XFS_MIN_SIZE, "mkfs.xfs"),
                ThinFs::Ext4 => (EXT4_MIN_SIZE, "mkfs.ext4"),
            };
            if t.base_size < min {
                return Err((
                    &["base_size"],
                    format!(
                        "{} is too small: {mkfs} needs at least {}",
                        show_size(t.base_size),
                        show_size(min)
                    ),
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The nearest existing ancestor of `p` (itself included).
fn existing_ancestor(p: &Path) -> Option<&Path> {
    p.ancestors().find(|a| fs::metadata(a).is_ok())
}

/// The largest file the file system holding `dir` can have, and that file
/// system's size.
fn file_limits(dir: &Path) -> Option<(u64, u64)> {
    let st = nix::sys::statfs::statfs(dir).ok()?;
    let vfs = nix::sys::statvfs::statvfs(dir).ok()?;
    let bsize = st.block_size() as u64;
    let max_file = if st.filesystem_type() == nix::sys::statfs::EXT4_SUPER_MAGIC {
        bsize.saturating_mul(1 << 32)
    } else {
        i64::MAX as u64
    };
    let fs_size = (vfs.blocks() as u64).saturating_mul(vfs.fragment_size() as u64);
    Some((max_file, fs_size))
}

/// Read-only checks of a loop backing on this host: what its path and
/// loop files are, and whether the file system can hold a file of `size`.
pub fn check_loop_host(pool: &PoolConfig) -> Result<(), KeyProblem> {
    let path = &pool.path;
    // Where the loop files go: btrfs `<path>.img` beside its mount point,
    // thin `<path>/data.img` and `metadata.img` inside its directory.
    let files_dir: PathBuf = match pool.driver {
        Driver::Btrfs => path.parent().unwrap_or(Path::new("/")).to_path_buf(),
        _ => path.clone(),
    };
    if let Ok(m) = fs::symlink_metadata(path) {
        let m = fs::metadata(path).unwrap_or(m);
        if !m.is_dir() {
            let what = match pool.driver {
                Driver::Btrfs => "the pool's mount point (its image is <path>.img beside it)",
                _ => "the directory holding the pool's loop files",
            };
            return Err((
                &["path"],
                format!(
                    "{path:?} is {}; with backing = \"loop\" the path is {what}: remove it or choose another path",
                    kind_of(&m)
                ),
            ));
        }
    }
    if pool.driver == Driver::Btrfs {
        let image = crate::shared::image::image_path(path);
        match fs::symlink_metadata(&image) {
            Ok(m) if !m.is_file() => {
                return Err((
                    &["path"],
                    format!(
                        "the pool's image {image:?} is {}, expected a regular file (or nothing, to create it)",
                        kind_of(&m)
                    ),
                ))
            }
            Ok(_) => {}
            Err(_) => {
                // A new image would be formatted and then mounted here.
                if let Ok(mut entries) = fs::read_dir(path) {
                    if entries.next().is_some() && !is_mount_point(path) {
                        return Err((
                            &["path"],
                            format!(
                                "{path:?} is a directory that is not empty and has no pool image {image:?} beside it; the new pool would be mounted over it: empty it or choose another path"
                            ),
                        ));
                    }
                }
            }
        }
    }
    let size = pool.size.unwrap_or(0);
    let Some(on) = existing_ancestor(&files_dir) else {
        return Ok(());
    };
    if let Some((max_file, fs_size)) = file_limits(on) {
        if size > max_file {
            return Err((
                &["size"],
                format!(
                    "{} is larger than the largest file the file system holding {on:?} can have ({})",
                    show_size(size),
                    show_size(max_file)
                ),
            ));
        }
        let most = fs_size.saturating_mul(MAX_OVERCOMMIT);
        if fs_size > 0 && size > most {
            return Err((
                &["size"],
                format!(
                    "{} is more than {MAX_OVERCOMMIT} times the size of the file system holding {on:?} ({} bytes): the sparse pool could never be filled",
                    show_size(size),
                    fs_size
                ),
            ));
        }
    }
    Ok(())
}

/// `p` is the root of a mount (another device than its parent's).
fn is_mount_point(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(p), p.parent().map(fs::metadata)) {
        (Ok(a), Some(Ok(b))) => a.dev() != b.dev() || a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        crate::config::parse_str(text, Path::new("/t.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn sizes_are_shown_in_their_largest_unit() {
        assert_eq!(show_size(BTRFS_MIN_SIZE), "109M");
        assert_eq!(show_size(100 << 50), "100P");
        assert_eq!(show_size(1536 << 20), "1536M");
        assert_eq!(show_size(1000), "1000 bytes");
    }

    #[test]
    fn minimum_sizes_name_their_key() {
        let btrfs = |size: &str| {
            format!("[[pool]]\nname = \"main\"\ndriver = \"btrfs\"\nsize = \"{size}\"\n")
        };
        let e = err(&btrfs("108M"));
        assert!(
            e.contains("/t.toml:4:8:") && e.contains("size: 108M is too small"),
            "{e}"
        );
        let thin =
            "[[pool]]\nname = \"main\"\ndriver = \"thin\"\nsize = \"1G\"\nbase_size = \"100M\"\n";
        let e = err(thin);
        assert!(
            e.contains(":5:") && e.contains("base_size: 100M") && e.contains("300M"),
            "{e}"
        );
        let e = err(&thin
            .replace("100M", "8M")
            .replace("]\n", "]\nfs = \"ext4\"\n"));
        assert!(e.contains("base_size: 8M") && e.contains("16M"), "{e}");
        let e = err(
            "[[pool]]\nname = \"main\"\ndriver = \"thin\"\nsize = \"64K\"\nblock_size = \"128K\"\n",
        );
        assert!(
            e.contains("size: 64K is too small") && e.contains("one block"),
            "{e}"
        );
    }
}
