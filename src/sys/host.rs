//! What the host offers, for choosing the built-in default pool: programs
//! on `PATH`, file systems and kernel modules. Read-only probes of `/proc`,
//! `/sys` and `/lib/modules`; nothing is loaded or started here.
//!
//! A module that is not loaded yet still counts when the running kernel's
//! `modules.dep` or `modules.builtin` lists it: the kernel loads it on first
//! use (a `thin-pool` table, a `btrfs` mount) through `request_module`.

use std::path::{Path, PathBuf};

/// The first executable regular file called `name` in `$PATH` (or the
/// system directories when `PATH` is unset, as under a bare init).
pub fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// Whether the kernel has module `name` (as in `/sys/module`, with
/// underscores: `dm_thin_pool`) loaded, built in, or installed for it.
pub fn kernel_module_available(name: &str) -> bool {
    if Path::new("/sys/module").join(name).exists() {
        return true;
    }
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let dir = Path::new("/lib/modules").join(release.trim());
    ["modules.builtin", "modules.dep"].iter().any(|f| {
        std::fs::read_to_string(dir.join(f))
            .map(|text| lists_module(&text, name))
            .unwrap_or(false)
    })
}

/// Whether a `modules.dep`/`modules.builtin` text lists module `name`
/// (file names use `-` or `_` interchangeably: `dm-thin-pool.ko.xz`).
fn lists_module(text: &str, name: &str) -> bool {
    let want = name.replace('-', "_");
    text.lines().any(|line| {
        let path = line.split(':').next().unwrap_or("");
        let file = path.rsplit('/').next().unwrap_or("");
        file.split(".ko")
            .next()
            .is_some_and(|stem| !stem.is_empty() && stem.replace('-', "_") == want)
    })
}

/// Whether the kernel can mount file system `fs`: registered in
/// `/proc/filesystems` or available as a module.
pub fn kernel_has_filesystem(fs: &str) -> bool {
    let registered = std::fs::read_to_string("/proc/filesystems")
        .map(|t| t.lines().any(|l| l.split_whitespace().last() == Some(fs)))
        .unwrap_or(false);
    registered || kernel_module_available(fs)
}

/// Whether the device-mapper control node exists (dm-mod loaded or built
/// in; Debian creates the node at boot so the first open loads it).
pub fn has_device_mapper() -> bool {
    Path::new("/dev/mapper/control").exists()
        || std::fs::read_to_string("/proc/misc")
            .map(|t| t.lines().any(|l| l.ends_with(" device-mapper")))
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_lists_match_either_spelling_and_compression() {
        let dep = "kernel/drivers/md/dm-thin-pool.ko.xz: kernel/drivers/md/dm-bio-prison.ko.xz\n\
                   kernel/fs/btrfs/btrfs.ko: kernel/lib/raid6/raid6_pq.ko\n";
        assert!(lists_module(dep, "dm_thin_pool"));
        assert!(lists_module(dep, "dm-thin-pool"));
        assert!(lists_module(dep, "btrfs"));
        // A dependency on the right of the colon is not the module itself.
        assert!(!lists_module(dep, "raid6_pq"));
        assert!(!lists_module(dep, "dm_thin"));
        assert!(!lists_module("", "btrfs"));
    }
}
