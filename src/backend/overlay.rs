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
//!
//! Kernels before 6.8 (Debian 12's 6.1, Ubuntu 22.04's 5.15) have no
//! `lowerdir+`: the pool probe finds that out once, at open, and the driver
//! then mounts with one classic mount(2) call (`lowerdir=a:b:c`). That call
//! takes one page of options; on 6.1 the new API is no way around it (before
//! 6.5 overlay's fsconfig values are appended to one page of legacy data,
//! each value at most 256 bytes). A chain whose options do not fit is
//! refused at Prepare/View with NotSupported, naming the depth, the limit
//! and Linux 6.8.

use std::os::unix::fs::MetadataExt;

use nix::errno::Errno;
use std::path::{Path, PathBuf};
use tracing::info;

use crate::backend::dirpool::{remove_all_if_exists, DirPool};
use crate::backend::{Backend, BackendError, DiffTree, Found, JobControl, LayerRef, Space};
use crate::shared::layer::Kind;
use crate::sys::fstree::tree_usage;
use crate::sys::mount::{self, max_mount_data, MountSpec};
use crate::sys::mountinfo;

/// OVL_MAX_STACK in fs/overlayfs/params.h.
pub const MAX_LOWERS: usize = 500;

/// How this kernel's overlay takes lower layers; found by the pool probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LowerApi {
    /// New mount API, one `lowerdir+` per layer (Linux 6.8+): up to 500 lowers.
    LowerdirPlus,
    /// One classic mount(2) with `lowerdir=a:b:c`: as many as fit in a page.
    Classic,
}

pub struct Overlay {
    dirs: DirPool,
    api: LowerApi,
}

impl Overlay {
    pub fn open(root: &Path) -> Result<Self, BackendError> {
        let dirs = DirPool::open(root)?;
        let api = probe(&dirs)?;
        Ok(Overlay { dirs, api })
    }

    /// With classic mounts only: refuses a layer whose overlay options do not
    /// fit in the one page mount(2) takes, before anything is created.
    fn check_classic(&self, l: LayerRef<'_>) -> Result<(), BackendError> {
        if self.api != LowerApi::Classic {
            return Ok(());
        }
        let spec = self.spec(l);
        let (len, max) = (mount::data_len(&spec), max_mount_data());
        if spec.fstype == "bind" || len <= max {
            return Ok(());
        }
        // How many of the nearest lowers would fit (the rest of the options
        // stay): "about", as ids grow longer over a pool's life.
        let lowers = self.lowers(l.parents);
        let list: usize = lowers.iter().map(|p| p.as_os_str().len() + 1).sum();
        let mut budget = (max + list).saturating_sub(len);
        let fit = lowers
            .iter()
            .take_while(|p| {
                let need = p.as_os_str().len() + 1;
                let ok = need <= budget;
                budget = budget.saturating_sub(need);
                ok
            })
            .count();
        Err(BackendError::NotSupported(format!(
            "a layer on {} lower layers needs {len} bytes of overlay mount options, but this \
             kernel (Linux {}) has no overlay \"lowerdir+\", so layers are mounted with one \
             mount(2) call, which takes at most {max} bytes (about {fit} lower layers with \
             this pool's paths); chains this deep need Linux 6.8 or later",
            lowers.len(),
            mount::kernel_release()
        )))
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
/// backport features, so try a scratch mount rather than trust versions. The
/// same mount tells whether the kernel knows `lowerdir+` (6.8): before 6.5
/// the key is only rejected when the mount is created, on 6.5–6.7 by
/// fsconfig, both with EINVAL; then a classic mount(2) must work instead.
fn probe(dirs: &DirPool) -> Result<LowerApi, BackendError> {
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
        let unusable = |e: String| {
            BackendError::Unusable {
            path: dirs.root().to_path_buf(),
            why: format!("a test overlay mount failed ({e}); overlay needs a file system with d_type, not overlayfs itself"),
        }
        };
        let api = match mount::mount_overlay(std::slice::from_ref(&l), Some((&u, &w)), &m) {
            Ok(()) => LowerApi::LowerdirPlus,
            Err(e) if matches!(e.errno(), Some(Errno::EINVAL | Errno::ENOSYS)) => {
                mount::mount_spec(&MountSpec::overlay(&[l], Some((&u, &w))), &m).map_err(
                    |classic| unusable(format!("new mount API: {e}; mount(2): {classic}")),
                )?;
                info!(pool = %dirs.root().display(), kernel = %mount::kernel_release(), error = %e,
                      "overlay has no lowerdir+ (Linux 6.8): mounting with one mount(2) call, \
                       chains limited to one page of options");
                LowerApi::Classic
            }
            Err(e) => return Err(unusable(e.to_string())),
        };
        mount::unmount(&m, false)?;
        Ok(api)
    })();
    let cleaned = remove_all_if_exists(&base);
    let api = result?;
    cleaned.map(|()| api)
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
        self.check_classic(l)?;
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
        Ok((mount::data_len(&spec) <= max_mount_data()).then(|| vec![spec]))
    }

    fn mount(&self, l: LayerRef<'_>, target: &Path) -> Result<(), BackendError> {
        let spec = self.spec(l);
        if spec.fstype == "bind" {
            return Ok(mount::mount_spec(&spec, target)?);
        }
        let lowers = self.lowers(l.parents);
        let upper = (l.kind == Kind::Active).then(|| (self.dirs.layer(l.id), self.dirs.work(l.id)));
        match self.api {
            LowerApi::LowerdirPlus => mount::mount_overlay(
                &lowers,
                upper.as_ref().map(|(u, w)| (u.as_path(), w.as_path())),
                target,
            )?,
            LowerApi::Classic => {
                // Layers made under a newer kernel may be too deep for this one.
                self.check_classic(l)?;
                mount::mount_spec(&spec, target)?;
            }
        }
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
