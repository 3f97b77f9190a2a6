//! Mounts the daemon holds itself, under `<run_dir>/m/<id>`: Mount()
//! references, and pins for chains whose specs do not fit one mount(2)
//! call (the runtime then gets a bind of the pinned mount). References are
//! recorded in the store; the kernel's mount table is the truth that
//! recovery checks them against.

use std::path::{Path, PathBuf};

use super::error::{Error, Result};
use super::store::MountRef;
use super::types::{Kind, LayerRecord};
use super::{layer_ref, lock, Engine};
use crate::backend::BackendError;
use crate::sys::{mount, mountinfo};

impl Engine {
    /// Mount(key): mounts the layer (once) and takes a reference.
    pub fn mount(&self, key: &str) -> Result<PathBuf> {
        let _m = lock(&self.mount_lock);
        let (rec, parents) = self.lookup(key)?;
        if rec.kind == Kind::Committed {
            return Err(Error::IsCommitted {
                key: key.to_string(),
            });
        }
        let mref = self.store.read(|tx| tx.mount_ref(rec.id))?;
        let target = self.ensure_mounted(&rec, &parents, mref)?;
        self.store.write(false, |tx| {
            tx.set_mount_ref(
                rec.id,
                MountRef {
                    refs: mref.refs + 1,
                    ..mref
                },
            )
        })?;
        Ok(target)
    }

    /// Unmount(key): drops one reference; the last one unmounts.
    pub fn unmount(&self, key: &str) -> Result<()> {
        let _m = lock(&self.mount_lock);
        let (rec, _) = self.lookup(key)?;
        let mref = self.store.read(|tx| tx.mount_ref(rec.id))?;
        if mref.refs == 0 {
            return Err(Error::NotMounted {
                key: key.to_string(),
            });
        }
        let next = MountRef {
            refs: mref.refs - 1,
            ..mref
        };
        if !next.held() {
            self.unmount_dir(rec.id).map_err(|e| match e {
                Error::Backend(BackendError::Mount(m)) => Error::Busy {
                    key: key.to_string(),
                    why: m.to_string(),
                },
                e => e,
            })?;
        }
        self.store
            .write(false, |tx| tx.set_mount_ref(rec.id, next))?;
        Ok(())
    }

    /// Pins a daemon mount for a layer whose specs don't fit (called with
    /// a Ready record); returns the mount point.
    pub(super) fn pin(&self, rec: &LayerRecord, parents: &[u64]) -> Result<PathBuf> {
        let mref = self.store.read(|tx| tx.mount_ref(rec.id))?;
        let target = self.ensure_mounted(rec, parents, mref)?;
        if !mref.pinned {
            self.store.write(false, |tx| {
                tx.set_mount_ref(
                    rec.id,
                    MountRef {
                        pinned: true,
                        ..mref
                    },
                )
            })?;
            tracing::info!(pool = %rec.pool, layer = rec.id, depth = parents.len(), "mount options exceed one page; handing out a bind of a daemon mount");
        }
        Ok(target)
    }

    /// Drops a pin (before Commit/Remove); unmounts if nothing else holds it.
    pub(super) fn release_pin(&self, id: u64) -> Result<()> {
        let mref = self.store.read(|tx| tx.mount_ref(id))?;
        if !mref.pinned {
            return Ok(());
        }
        if mref.refs == 0 {
            self.unmount_dir(id)?;
        }
        self.store.write(false, |tx| {
            tx.set_mount_ref(
                id,
                MountRef {
                    pinned: false,
                    ..mref
                },
            )
        })?;
        Ok(())
    }

    fn ensure_mounted(
        &self,
        rec: &LayerRecord,
        parents: &[u64],
        mref: MountRef,
    ) -> Result<PathBuf> {
        let target = self.mount_dir(rec.id);
        if mref.held() && is_mounted(&target) {
            return Ok(target);
        }
        crate::sys::private::create_dir(&target)
            .map_err(|e| BackendError::io("mkdir", &target, e))?;
        let backend = self.get_pool(&rec.pool)?.backend()?;
        backend.mount(layer_ref(rec, parents), &target)?;
        Ok(target)
    }

    pub(super) fn unmount_dir(&self, id: u64) -> Result<()> {
        let target = self.mount_dir(id);
        // EINVAL: not a mount point (already gone); cheaper than reading
        // mountinfo first.
        match mount::unmount(&target, false) {
            Err(e)
                if matches!(
                    e.errno(),
                    Some(nix::errno::Errno::EINVAL) | Some(nix::errno::Errno::ENOENT)
                ) => {}
            r => r.map_err(BackendError::from)?,
        }
        match std::fs::remove_dir(&target) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(BackendError::io("rmdir", &target, e).into())
            }
            _ => Ok(()),
        }
    }
}

pub(super) fn is_mounted(target: &Path) -> bool {
    matches!(mountinfo::find_mount(target), Ok(Some(_)))
}
