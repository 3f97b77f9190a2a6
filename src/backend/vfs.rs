//! `vfs` driver: each layer is a full copy of its parent, for hosts with no
//! copy-on-write file system at all. Copies use reflinks (FICLONE) where the
//! file system has them (xfs, btrfs), so there they cost metadata only.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::backend::dirpool::DirPool;
use crate::backend::{Backend, BackendError, DiffTree, Found, JobControl, LayerRef, Space};
use crate::shared::layer::Kind;
use crate::sys::fstree::{copy_tree, tree_usage};
use crate::sys::mount::{self, MountSpec};

pub struct Vfs {
    dirs: DirPool,
}

impl Vfs {
    pub fn open(root: &Path) -> Result<Self, BackendError> {
        Ok(Vfs {
            dirs: DirPool::open(root)?,
        })
    }

    fn spec(&self, l: LayerRef<'_>) -> MountSpec {
        MountSpec::bind(&self.dirs.layer(l.id), l.kind != Kind::Active)
    }
}

impl Backend for Vfs {
    fn driver(&self) -> &'static str {
        "vfs"
    }
    fn backing(&self) -> &'static str {
        "directory"
    }
    fn path(&self) -> &Path {
        self.dirs.root()
    }

    fn create(&self, l: LayerRef<'_>) -> Result<(), BackendError> {
        let dir = self.dirs.layer(l.id);
        self.dirs.mkdir(&dir, 0o755)?;
        if let Some(p) = l.parents.first() {
            let stats = copy_tree(&self.dirs.layer(*p), &dir)?;
            tracing::debug!(
                layer = l.id,
                files = stats.files,
                reflinked = stats.reflinked,
                copied = stats.copied,
                "vfs copy"
            );
        }
        Ok(())
    }

    fn commit(&self, _id: u64) -> Result<(), BackendError> {
        Ok(())
    }

    fn remove(&self, id: u64) -> Result<(), BackendError> {
        self.dirs.remove(id)
    }

    fn discard(&self, id: u64) -> Result<(), BackendError> {
        self.dirs.discard(id)
    }

    fn purge(&self) -> Result<u64, BackendError> {
        self.dirs.purge()
    }

    fn exists(&self, id: u64) -> bool {
        self.dirs.exists(id)
    }

    fn mounts(&self, l: LayerRef<'_>) -> Result<Option<Vec<MountSpec>>, BackendError> {
        Ok(Some(vec![self.spec(l)]))
    }

    fn mount(&self, l: LayerRef<'_>, target: &Path) -> Result<(), BackendError> {
        Ok(mount::mount_spec(&self.spec(l), target)?)
    }

    fn diff_tree(&self, l: LayerRef<'_>) -> Result<DiffTree, BackendError> {
        Ok(DiffTree::Full(self.dirs.layer(l.id)))
    }

    fn usage(&self, l: LayerRef<'_>) -> Result<(u64, u64), BackendError> {
        let dir = self.dirs.layer(l.id);
        match l.parents.first() {
            None => Ok(tree_usage(&dir)?),
            Some(p) => diff_usage(&dir, &self.dirs.layer(*p)),
        }
    }

    fn space(&self) -> Result<Space, BackendError> {
        self.dirs.space()
    }

    fn scan(&self) -> Result<Vec<Found>, BackendError> {
        self.dirs.scan()
    }

    fn quarantine(&self, what: &Path) -> Result<PathBuf, BackendError> {
        self.dirs.quarantine(what)
    }

    fn read_token(&self) -> Result<Option<u64>, BackendError> {
        self.dirs.read_token()
    }

    fn write_token(&self, token: u64) -> Result<(), BackendError> {
        self.dirs.write_token(token)
    }

    /// FITRIM on the file system holding the pool directory.
    fn trim(&self, ctl: &JobControl) -> Result<u64, BackendError> {
        self.dirs.trim(ctl)
    }
}

/// A vfs child holds a whole copy; "this layer alone" means what differs
/// from the parent: entries that are new or whose type, size, mode, owner
/// or mtime changed. Each inode is counted once.
fn diff_usage(dir: &Path, parent: &Path) -> Result<(u64, u64), BackendError> {
    let mut bytes = 0;
    let mut inodes = 0;
    let mut seen = HashSet::new();
    let mut stack = vec![PathBuf::new()];
    let root_dev = dir
        .symlink_metadata()
        .map_err(|e| BackendError::io("stat", dir, e))?
        .dev();
    while let Some(rel) = stack.pop() {
        let path = dir.join(&rel);
        let md = path
            .symlink_metadata()
            .map_err(|e| BackendError::io("stat", &path, e))?;
        if md.dev() != root_dev {
            continue;
        }
        let same = parent.join(&rel).symlink_metadata().is_ok_and(|pm| {
            pm.file_type() == md.file_type()
                && pm.len() == md.len()
                && pm.mode() == md.mode()
                && pm.uid() == md.uid()
                && pm.gid() == md.gid()
                && (md.is_dir() || (pm.mtime(), pm.mtime_nsec()) == (md.mtime(), md.mtime_nsec()))
        });
        if !same && seen.insert(md.ino()) {
            bytes += md.blocks() * 512;
            inodes += 1;
        }
        if md.is_dir() {
            for entry in fs::read_dir(&path).map_err(|e| BackendError::io("readdir", &path, e))? {
                let entry = entry.map_err(|e| BackendError::io("readdir", &path, e))?;
                stack.push(rel.join(entry.file_name()));
            }
        }
    }
    Ok((bytes, inodes))
}
