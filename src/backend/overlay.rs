//! `overlay` driver: each layer is a directory; a mount stacks the
//! ancestors' directories as lowerdirs (nearest first) under the layer's own
//! directory as upperdir.
//!
//! Kernel facts this relies on (Documentation/filesystems/overlayfs.rst):
//! at most 500 lower layers (OVL_MAX_STACK); classic mount(2) takes one page
//! of options, so specs handed to runtimes are kept within it (short
//! numeric paths) and deeper chains are mounted by the daemon with the new
//! mount API's `lowerdir+` (Linux 6.8). `index=off` because layers are
//! moved between mounts, which the inode index would refuse.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::backend::dirpool::{remove_all_if_exists, DirPool};
use crate::backend::{Backend, BackendError, DiffTree, Found, JobControl, LayerRef, Space};
use crate::engine::types::Kind;
use crate::sys::copytree::tree_usage;
use crate::sys::mount::{self, max_mount_data, MountSpec};
use crate::sys::mountinfo;

/// OVL_MAX_STACK in fs/overlayfs/params.h.
pub const MAX_LOWERS: usize = 500;

pub struct Overlay {
    dirs: DirPool,
}

impl Overlay {
    pub fn open(root: &Path) -> Result<Self, BackendError> {
        let dirs = DirPool::open(root)?;
        probe(&dirs)?;
        Ok(Overlay { dirs })
    }

    fn lowers(&self, parents: &[u64]) -> Vec<PathBuf> {
        parents.iter().map(|p| self.dirs.layer(*p)).collect()
    }

    /// The spec for a layer, however long; `mounts` decides if it fits.
    fn spec(&self, l: LayerRef<'_>) -> MountSpec {
        match (l.kind, l.parents) {
            (Kind::View, []) => MountSpec::bind(&self.dirs.layer(l.id), true),
            (Kind::View, [p]) => MountSpec::bind(&self.dirs.layer(*p), true),
            (Kind::View, ps) => {
                // Read-only without an upper anyway; say so for mount(8).
                let mut spec = MountSpec::overlay(&self.lowers(ps), None);
                spec.options.push("ro".into());
                spec
            }
            (_, []) => MountSpec::bind(&self.dirs.layer(l.id), false),
            (_, ps) => MountSpec::overlay(
                &self.lowers(ps),
                Some((&self.dirs.layer(l.id), &self.dirs.work(l.id))),
            ),
        }
    }
}

/// Overlay needs d_type and a file system it can stack on; distributions
/// backport features, so try a scratch mount rather than trust versions.
fn probe(dirs: &DirPool) -> Result<(), BackendError> {
    let base = dirs.scratch(&format!("probe-{}", std::process::id()));
    let result = (|| {
        remove_all_if_exists(&base)?;
        for d in ["", "l", "u", "w", "m"] {
            dirs.mkdir(&base.join(d), 0o755)?;
        }
        let (l, u, w, m) = (
            base.join("l"),
            base.join("u"),
            base.join("w"),
            base.join("m"),
        );
        mount::mount_overlay(&[l], Some((&u, &w)), &m).map_err(|e| BackendError::Unusable {
            path: dirs.root().to_path_buf(),
            why: format!("a test overlay mount failed ({e}); overlay needs a file system with d_type, not overlayfs itself"),
        })?;
        mount::unmount(&m, false)?;
        Ok(())
    })();
    let cleaned = remove_all_if_exists(&base);
    result.and(cleaned)
}

impl Backend for Overlay {
    fn driver(&self) -> &'static str {
        "overlay"
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
        if l.kind == Kind::Active && !l.parents.is_empty() {
            self.dirs.mkdir(&self.dirs.work(l.id), 0o711)?;
        }
        // The upper's root becomes the mount's root: give it the owner of
        // the parent's root, as the lower would show (containerd does too).
        if let Some(p) = l.parents.first() {
            let pdir = self.dirs.layer(*p);
            let md = pdir
                .symlink_metadata()
                .map_err(|e| BackendError::io("stat", &pdir, e))?;
            std::os::unix::fs::lchown(&dir, Some(md.uid()), Some(md.gid()))
                .map_err(|e| BackendError::io("chown", &dir, e))?;
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
        let spec = self.spec(l);
        Ok((spec.data_len() <= max_mount_data()).then(|| vec![spec]))
    }

    fn mount(&self, l: LayerRef<'_>, target: &Path) -> Result<(), BackendError> {
        let spec = self.spec(l);
        if spec.fstype == "bind" {
            return Ok(mount::mount_spec(&spec, target)?);
        }
        let lowers = self.lowers(l.parents);
        let upper = (l.kind == Kind::Active).then(|| (self.dirs.layer(l.id), self.dirs.work(l.id)));
        mount::mount_overlay(
            &lowers,
            upper.as_ref().map(|(u, w)| (u.as_path(), w.as_path())),
            target,
        )?;
        // Over-long option strings have been seen to mount the wrong layers
        // silently: check what the kernel really stacked.
        if let Err(e) =
            mountinfo::verify_overlay(target, &lowers, upper.as_ref().map(|(u, _)| u.as_path()))
        {
            let _ = mount::unmount(target, true);
            return Err(e.into());
        }
        Ok(())
    }

    fn diff_tree(&self, l: LayerRef<'_>) -> Result<DiffTree, BackendError> {
        let dir = self.dirs.layer(l.id);
        // A parentless layer has nothing below to hide: its directory is
        // its whole tree, so deletions are real (no stray whiteout devices
        // in a bind-mounted root).
        Ok(if l.parents.is_empty() {
            DiffTree::Full(dir)
        } else {
            DiffTree::Upper(dir)
        })
    }

    fn usage(&self, l: LayerRef<'_>) -> Result<(u64, u64), BackendError> {
        // The upper dir holds exactly this layer's changes.
        Ok(tree_usage(&self.dirs.layer(l.id))?)
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

    fn max_depth(&self) -> Option<usize> {
        Some(MAX_LOWERS)
    }

    /// FITRIM on the file system holding the pool directory.
    fn trim(&self, ctl: &JobControl) -> Result<u64, BackendError> {
        self.dirs.trim(ctl)
    }
}
