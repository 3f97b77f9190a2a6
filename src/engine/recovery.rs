//! Start-up reconciliation of the store with what the disks and the mount
//! table hold. The rules, per what is found:
//!
//! | found                                   | action                          |
//! |-----------------------------------------|---------------------------------|
//! | record `Creating`                       | roll back: discard storage, drop record |
//! | record `Committing`                     | roll forward: commit, finish record |
//! | record `Ready`, storage missing         | report (never invent data)      |
//! | tombstone                               | finish the removal              |
//! | storage id ≥ next_id, no record, pool bound to this store | discard: its intent never reached the disk, so no client was ever told it exists |
//! | storage id < next_id, no record, no tombstone | quarantine (a thin id: leave in place) and report |
//! | anything not named by layerd            | quarantine and report           |
//! | mount reference, not mounted            | re-mount if pinned, else drop   |
//! | mount under run_dir with no reference   | unmount                         |
//!
//! Committed data is never deleted unless a durable record says to
//! (a tombstone written by Remove).
//!
//! The `next_id` rule is only sound when the pool's storage and this store
//! belong together: a lost or replaced store starts counting ids again. So
//! each pool's storage carries a token that the store also records; where
//! they differ (or the storage predates the store), nothing unrecorded is
//! discarded, only quarantined, and then the pool is bound to this store.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use super::error::Result;
use super::layers::{drop_record, finish_commit};
use super::mounts::is_mounted;
use super::store::MountRef;
use super::types::{Kind, State};
use super::{chain, Engine};
use crate::backend::Found;
use crate::sys::{mount, mountinfo};

/// What reconciliation did, for the log.
#[derive(Debug, Default)]
pub struct Report {
    pub rolled_back: Vec<u64>,
    pub rolled_forward: Vec<u64>,
    pub removals_finished: Vec<u64>,
    pub discarded: Vec<u64>,
    pub quarantined: Vec<PathBuf>,
    pub missing: Vec<(String, u64)>,
    pub mounts_dropped: Vec<u64>,
    pub mounts_restored: Vec<u64>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.rolled_back.is_empty()
            && self.rolled_forward.is_empty()
            && self.removals_finished.is_empty()
            && self.discarded.is_empty()
            && self.quarantined.is_empty()
            && self.missing.is_empty()
            && self.mounts_dropped.is_empty()
            && self.mounts_restored.is_empty()
    }
}

impl Engine {
    pub(super) fn reconcile(&self) -> Result<Report> {
        let mut report = Report::default();
        let (records, tombstones, next_id) = self
            .store
            .read(|tx| -> Result<_> { Ok((tx.layers()?, tx.tombstones()?, tx.next_id()?)) })?;

        for rec in &records {
            let Ok(backend) = self.get_pool(&rec.pool).and_then(|p| p.backend()) else {
                continue; // a failed or unconfigured pool: leave its records alone
            };
            match &rec.state {
                State::Creating => {
                    backend.discard(rec.id)?;
                    self.store.write(true, |tx| drop_record(tx, rec))?;
                    report.rolled_back.push(rec.id);
                }
                State::Committing { .. } => {
                    backend.commit(rec.id)?;
                    self.store.write(true, |tx| finish_commit(tx, rec))?;
                    report.rolled_forward.push(rec.id);
                }
                State::Ready => {
                    if !backend.exists(rec.id) {
                        tracing::error!(pool = %rec.pool, layer = rec.id, layer_key = %rec.key, "layer is recorded but its storage is missing");
                        report.missing.push((rec.key.clone(), rec.id));
                    }
                }
            }
        }

        let mut stoned: HashSet<u64> = HashSet::new();
        for (id, pool) in &tombstones {
            stoned.insert(*id);
            if let Ok(b) = self.get_pool(pool).and_then(|p| p.backend()) {
                b.remove(*id)?;
                self.store.write(true, |tx| tx.delete_tombstone(*id))?;
                report.removals_finished.push(*id);
            }
        }

        let known: HashMap<u64, &str> = records.iter().map(|r| (r.id, r.pool.as_str())).collect();
        for (name, pool) in &self.pools {
            let Ok(backend) = pool.backend() else {
                continue;
            };
            let stored = self.store.read(|tx| tx.pool_token(name))?;
            let found_token = backend.read_token()?;
            let found = backend.scan()?;
            let bound = match (stored, found_token) {
                (Some(s), Some(f)) => s == f,
                // A fresh pool: nothing in it can predate the store.
                (None, None) => !found.iter().any(|f| matches!(f, Found::Layer(_))),
                _ => false,
            };
            if !bound {
                tracing::warn!(pool = %name, stored_token = ?stored, pool_token = ?found_token, "pool storage is not bound to this store: unrecorded data will be quarantined, never discarded");
            }
            for found in found {
                match found {
                    Found::Layer(id)
                        if known.get(&id) == Some(&name.as_str()) || stoned.contains(&id) => {}
                    Found::Layer(id) if bound && id >= next_id && !known.contains_key(&id) => {
                        backend.discard(id)?;
                        report.discarded.push(id);
                    }
                    Found::Layer(id) => {
                        // Ours by name but unrecorded: keep the data aside.
                        let mut moved = false;
                        for path in [
                            backend.path().join(id.to_string()),
                            backend.path().join("w").join(id.to_string()),
                        ] {
                            if path.symlink_metadata().is_ok() {
                                let to = backend.quarantine(&path)?;
                                tracing::warn!(pool = %name, path = %path.display(), quarantine = %to.display(), "unrecorded layer storage quarantined");
                                report.quarantined.push(to);
                                moved = true;
                            }
                        }
                        if !moved {
                            // Not a path (a thin id): left where it is.
                            tracing::warn!(pool = %name, layer = id, "unrecorded layer storage left in place");
                        }
                    }
                    Found::Unknown(path) => {
                        let to = backend.quarantine(&path)?;
                        tracing::warn!(pool = %name, path = %path.display(), quarantine = %to.display(), "unknown entry in pool quarantined");
                        report.quarantined.push(to);
                    }
                }
            }
            if stored.is_none() || stored != found_token {
                let token = random_token()?;
                backend.write_token(token)?;
                self.store
                    .write(true, |tx| tx.set_pool_token(name, token))?;
            }
        }

        self.reconcile_mounts(&mut report)?;
        if report.is_clean() {
            tracing::debug!("store and storage agree");
        } else {
            tracing::info!(?report, "reconciled store with storage");
        }
        Ok(report)
    }

    /// The kernel's mount table is the truth: a daemon mount that exists
    /// is adopted (a container may be running on it), whatever the
    /// non-durable reference count says; a pin that vanished (reboot) is
    /// made again; anything else under `<run_dir>/m` is unmounted.
    fn reconcile_mounts(&self, report: &mut Report) -> Result<()> {
        let dir = self.run_dir.join("m");
        let refs: HashMap<u64, MountRef> =
            self.store.read(|tx| tx.mount_refs())?.into_iter().collect();
        let mounted: Vec<mountinfo::MountInfo> = mountinfo::mounts_under(&dir).unwrap_or_default();
        let mut ids: HashSet<u64> = refs.keys().copied().collect();
        for mi in &mounted {
            match mount_id(&dir, &mi.mount_point) {
                Some(id) => {
                    ids.insert(id);
                }
                None => {
                    tracing::warn!(path = %mi.mount_point.display(), "unmounting a mount layerd did not make");
                    let _ = mount::unmount(&mi.mount_point, true);
                }
            }
        }
        for id in ids {
            let mref = refs.get(&id).copied().unwrap_or_default();
            let target = self.mount_dir(id);
            let rec = self
                .store
                .read(|tx| tx.get(id))?
                .filter(|r| r.state == State::Ready && r.kind != Kind::Committed);
            let Some(rec) = rec else {
                if is_mounted(&target) {
                    tracing::warn!(layer = id, path = %target.display(), "unmounting the mount of a layer that no longer exists");
                    let _ = mount::unmount(&target, true);
                }
                let _ = std::fs::remove_dir(&target);
                self.store
                    .write(false, |tx| tx.set_mount_ref(id, MountRef::default()))?;
                report.mounts_dropped.push(id);
                continue;
            };
            if is_mounted(&target) {
                if !mref.held() {
                    tracing::info!(layer = id, path = %target.display(), "adopting a daemon mount whose reference was not recorded");
                    self.store.write(false, |tx| {
                        tx.set_mount_ref(
                            id,
                            MountRef {
                                refs: 1,
                                pinned: false,
                            },
                        )
                    })?;
                }
                continue;
            }
            // Process references did not survive whatever unmounted it.
            self.store
                .write(false, |tx| tx.set_mount_ref(id, MountRef::default()))?;
            if mref.pinned {
                let parents = self.store.read(|tx| chain(|i| tx.get(i), rec.parent))?;
                self.pin(&rec, &parents)?;
                report.mounts_restored.push(id);
            } else {
                report.mounts_dropped.push(id);
            }
        }
        Ok(())
    }
}

/// The layer id of a mount point `<dir>/<id>`.
fn mount_id(dir: &std::path::Path, mount_point: &std::path::Path) -> Option<u64> {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let rest = mount_point.strip_prefix(&dir).ok()?;
    let name = rest.to_str()?;
    if name.contains('/') || name.starts_with('0') {
        return None;
    }
    name.parse().ok()
}

/// A token no other store will have picked.
fn random_token() -> Result<u64> {
    use std::io::Read;
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| {
            crate::backend::BackendError::io("read", std::path::Path::new("/dev/urandom"), e)
        })?;
    Ok(u64::from_le_bytes(b))
}
