//! The on-disk layout shared by the directory drivers (overlay, vfs).
//!
//! ```text
//! <pool>/<id>      a layer's tree (overlay: its upper dir); ids are short
//!                  decimal numbers so 128+ lowerdirs fit one page of options
//! <pool>/w/<id>    overlay work dirs (same file system as the upper, as
//!                  overlayfs requires)
//! <pool>/t/        trash: removed layers wait here until purge
//! <pool>/q/        quarantine: things layerd has no record of, never deleted
//! <pool>/.layerd-pool  the token binding this directory to the store
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use crate::backend::{BackendError, Found, JobControl, Space};
use crate::sys::fstree::tree_usage;
use crate::sys::private;

const WORK: &str = "w";
const TRASH: &str = "t";
const QUARANTINE: &str = "q";
/// Holds the token that binds this directory to layerd's store.
const TOKEN: &str = ".layerd-pool";

#[derive(Debug)]
pub struct DirPool {
    root: PathBuf,
}

impl DirPool {
    /// Creates the layout under `root` if needed. The root and its
    /// directories are root-only (sys/private.rs): layer trees hold setuid
    /// files and device nodes that the host's users must not reach. Looser
    /// ones left on disk are tightened.
    pub fn open(root: &Path) -> Result<Self, BackendError> {
        for d in [
            root.to_path_buf(),
            root.join(WORK),
            root.join(TRASH),
            root.join(QUARANTINE),
        ] {
            private::ensure_dir(&d).map_err(|e| BackendError::io("mkdir", &d, e))?;
        }
        Ok(DirPool {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn layer(&self, id: u64) -> PathBuf {
        self.root.join(id.to_string())
    }

    pub fn work(&self, id: u64) -> PathBuf {
        self.root.join(WORK).join(id.to_string())
    }

    pub fn scratch(&self, name: &str) -> PathBuf {
        self.root.join(TRASH).join(name)
    }

    /// mkdir with an explicit mode (umask would otherwise change it).
    pub fn mkdir(&self, path: &Path, mode: u32) -> Result<(), BackendError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        fs::DirBuilder::new()
            .mode(mode)
            .create(path)
            .map_err(|e| BackendError::io("mkdir", path, e))?;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| BackendError::io("chmod", path, e))
    }

    /// Moves a layer's directories into the trash; idempotent.
    pub fn remove(&self, id: u64) -> Result<(), BackendError> {
        let trash = self.root.join(TRASH);
        rename_if_exists(&self.layer(id), &trash.join(id.to_string()))?;
        rename_if_exists(&self.work(id), &trash.join(format!("w{id}")))
    }

    /// Deletes whatever exists of a layer; idempotent.
    pub fn discard(&self, id: u64) -> Result<(), BackendError> {
        remove_all_if_exists(&self.layer(id))?;
        remove_all_if_exists(&self.work(id))
    }

    /// Empties the trash and returns the bytes it held.
    pub fn purge(&self) -> Result<u64, BackendError> {
        let trash = self.root.join(TRASH);
        let mut freed = 0;
        for entry in fs::read_dir(&trash).map_err(|e| BackendError::io("readdir", &trash, e))? {
            let path = entry
                .map_err(|e| BackendError::io("readdir", &trash, e))?
                .path();
            freed += tree_usage(&path).map(|(bytes, _)| bytes).unwrap_or(0);
            remove_all_if_exists(&path)?;
        }
        Ok(freed)
    }

    pub fn exists(&self, id: u64) -> bool {
        self.layer(id).symlink_metadata().is_ok()
    }

    /// Layers (by id) and unknown entries, in the pool root and `w/`.
    pub fn scan(&self) -> Result<Vec<Found>, BackendError> {
        let mut found = Vec::new();
        let mut ids = std::collections::HashSet::new();
        for (dir, reserved) in [(self.root.clone(), true), (self.root.join(WORK), false)] {
            for entry in fs::read_dir(&dir).map_err(|e| BackendError::io("readdir", &dir, e))? {
                let entry = entry.map_err(|e| BackendError::io("readdir", &dir, e))?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if reserved && [WORK, TRASH, QUARANTINE, TOKEN].contains(&name.as_ref()) {
                    continue;
                }
                match parse_id(&name) {
                    Some(id) if ids.insert(id) => found.push(Found::Layer(id)),
                    Some(_) => {}
                    None => found.push(Found::Unknown(entry.path())),
                }
            }
        }
        Ok(found)
    }

    pub fn read_token(&self) -> Result<Option<u64>, BackendError> {
        read_token(&self.root)
    }

    pub fn write_token(&self, token: u64) -> Result<(), BackendError> {
        write_token(&self.root, &self.root.join(TRASH), token)
    }

    /// Renames `what` into `q/` with a time suffix, so nothing is overwritten.
    pub fn quarantine(&self, what: &Path) -> Result<PathBuf, BackendError> {
        let base = what
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unnamed".into());
        let dest = self.root.join(QUARANTINE).join(format!(
            "{}-{}",
            if what.parent() == Some(&self.root.join(WORK)) {
                format!("w{base}")
            } else {
                base
            },
            crate::shared::time::now_us()
        ));
        fs::rename(what, &dest).map_err(|e| BackendError::io("quarantine (rename)", what, e))?;
        Ok(dest)
    }

    /// FITRIM on the file system holding the pool directory: its free
    /// space (removed layers' blocks once purged included) is discarded, so
    /// a loop-backed or thin-provisioned device below gives it back.
    /// FITRIM cannot be interrupted, so `ctl` only receives the result.
    pub fn trim(&self, ctl: &JobControl) -> Result<u64, BackendError> {
        let bytes = crate::sys::trim::fitrim(&self.root)?;
        ctl.set_bytes(bytes);
        ctl.set_progress(1.0);
        Ok(bytes)
    }

    /// statvfs of the pool directory.
    pub fn space(&self) -> Result<Space, BackendError> {
        let st = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| BackendError::io("statvfs", &self.root, e.into()))?;
        let frag = st.fragment_size() as u64;
        let size = st.blocks() as u64 * frag;
        let free = st.blocks_free() as u64 * frag;
        Ok(Space {
            data_size: size,
            data_used: size.saturating_sub(free),
            metadata_size: st.files() as u64,
            metadata_used: (st.files() as u64).saturating_sub(st.files_free() as u64),
            unallocated: None,
            device_size: None,
            read_only: st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY),
        })
    }
}

/// The token in `<root>/.layerd-pool`, if one was written.
pub fn read_token(root: &Path) -> Result<Option<u64>, BackendError> {
    let path = root.join(TOKEN);
    match fs::read_to_string(&path) {
        Ok(s) => Ok(s.trim().parse().ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(BackendError::io("read", &path, e)),
    }
}

/// Writes `<root>/.layerd-pool` atomically (through `scratch`, a directory
/// on the same file system) and syncs the file and `root`.
pub fn write_token(root: &Path, scratch: &Path, token: u64) -> Result<(), BackendError> {
    use std::io::Write;
    let path = root.join(TOKEN);
    let tmp = scratch.join(TOKEN);
    let mut f = fs::File::create(&tmp).map_err(|e| BackendError::io("create", &tmp, e))?;
    writeln!(f, "{token}").map_err(|e| BackendError::io("write", &tmp, e))?;
    f.sync_all()
        .map_err(|e| BackendError::io("fsync", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| BackendError::io("rename", &tmp, e))?;
    fs::File::open(root)
        .and_then(|d| d.sync_all())
        .map_err(|e| BackendError::io("fsync", root, e))
}

/// Ids are written by layerd as plain decimal; anything else is not ours.
fn parse_id(name: &str) -> Option<u64> {
    if name.is_empty() || name.starts_with('0') || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

fn rename_if_exists(from: &Path, to: &Path) -> Result<(), BackendError> {
    match fs::rename(from, to) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.map_err(|e| BackendError::io("rename", from, e)),
    }
}

pub fn remove_all_if_exists(path: &Path) -> Result<(), BackendError> {
    let res = match path.symlink_metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    match res {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.map_err(|e| BackendError::io("remove", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_id;

    #[test]
    fn ids_are_canonical_decimal() {
        assert_eq!(parse_id("1"), Some(1));
        assert_eq!(parse_id("4711"), Some(4711));
        for bad in ["", "01", "1a", "-1", "w", "t", "1 "] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }
}
