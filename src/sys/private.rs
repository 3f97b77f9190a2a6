//! Root-only directories (issue 16, item 1; moby's CVE-2021-41091).
//!
//! Layers hold setuid-root files and device nodes, which containers need, so
//! the file systems they live on cannot be `nosuid`/`nodev`: what keeps the
//! host's users from running or opening them is that every directory the
//! daemon makes on the way to layer contents (state_dir, pool directories
//! and roots, run_dir, `run_dir/m`, `run_dir/d`, mount points) is owned by
//! the daemon's user (root) with mode 0700. Not 0711 as moby chose: layer
//! ids are small sequential numbers, so a traverse-only directory hides
//! nothing. A runtime mounts the specs as root and a container only sees
//! the mount's root, so no container needs to traverse these directories.
//!
//! A directory that already exists with a looser mode (left by an older
//! version, or an admin's) is tightened, and the log says so.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// The mode of every directory on the way to layer contents.
pub const MODE: u32 = 0o700;

/// Creates `dir` (and missing parents, root-only too) if it is missing,
/// then makes it root-only ([`tighten`]).
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().recursive(true).mode(MODE).create(dir) {
        Ok(()) => tighten(dir),
        Err(e) => Err(e),
    }
}

/// Creates the single directory `dir` root-only; one that exists is made
/// root-only ([`tighten`]).
pub fn create_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(MODE).create(dir) {
        Ok(()) => {
            // umask may have taken bits away; make it exactly MODE.
            fs::set_permissions(dir, fs::Permissions::from_mode(MODE))
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => tighten(dir),
        Err(e) => Err(e),
    }
}

/// Makes the existing directory `dir` (a pool's root, a mounted file
/// system's root) owned by the daemon's user and mode 0700 if it is
/// anything else, logging what it was.
pub fn tighten(dir: &Path) -> io::Result<()> {
    let md = fs::metadata(dir)?;
    if !md.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", dir.display()),
        ));
    }
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    let mode = md.mode() & 0o7777;
    if md.uid() != uid.as_raw() {
        nix::unistd::chown(dir, Some(uid), Some(gid)).map_err(io::Error::from)?;
        tracing::warn!(path = %dir.display(), owner = md.uid(), "directory on the way to layer contents was owned by another user; made it root-only");
    }
    if mode != MODE {
        fs::set_permissions(dir, fs::Permissions::from_mode(MODE))?;
        if mode & 0o077 != 0 {
            tracing::warn!(path = %dir.display(), old_mode = format!("{mode:04o}"), "directory on the way to layer contents was open to other users; made it root-only (0700)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn creates_and_tightens() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        ensure_dir(&d).unwrap();
        assert_eq!(mode(&d), MODE);
        assert_eq!(mode(&t.path().join("a")), MODE);
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        ensure_dir(&d).unwrap();
        assert_eq!(mode(&d), MODE);
        let m = t.path().join("m");
        create_dir(&m).unwrap();
        assert_eq!(mode(&m), MODE);
        fs::set_permissions(&m, fs::Permissions::from_mode(0o1777)).unwrap();
        create_dir(&m).unwrap();
        assert_eq!(mode(&m), MODE);
        let f = t.path().join("f");
        fs::write(&f, "").unwrap();
        assert!(tighten(&f).is_err());
    }
}
