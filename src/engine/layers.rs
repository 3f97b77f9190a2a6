//! Layer operations with containerd's snapshotter semantics.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::error::{Error, Result};
use super::store::{MountRef, WriteTx};
use super::types::{Kind, LayerInfo, LayerRecord, State};
use super::{chain, fault, layer_ref, lock, validate, Engine};
use crate::filters::{Adaptor, Filter};
use crate::shared::time::now_us;
use crate::sys::mount::MountSpec;

/// The longest a Prepare or View below the free-space minimum waits for
/// pending space (deleted btrfs subvolumes) before it is refused: short of
/// a D-Bus client's default 25 s reply timeout.
const ADMIT_RECLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Engine {
    /// Prepare (`kind` Active) or View: a new layer on committed `parent`
    /// ("" = none). Returns the mount specs.
    pub fn create_layer(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<MountSpec>> {
        self.create_layer_in(None, kind, key, parent, labels)
    }

    /// [`Engine::create_layer`] in `pool` when given (an adapter whose
    /// endpoint is one pool: containerd's sockets), instead of the pool
    /// label's or the default.
    pub fn create_layer_in(
        &self,
        pool: Option<&str>,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<MountSpec>> {
        validate::key("key", key)?;
        validate::labels(&labels)?;
        let size_limit = validate::size_label(&labels)?;
        if !parent.is_empty() {
            validate::key("parent", parent)?;
        }
        let labelled = labels.get(validate::POOL_LABEL).cloned();
        let wanted_pool = match (pool, labelled) {
            (Some(p), Some(l)) if p != l => {
                return Err(Error::InvalidArgument(format!(
                    "label {}={l:?}: this endpoint serves pool {p:?} only",
                    validate::POOL_LABEL
                )))
            }
            (Some(p), _) => Some(p.to_string()),
            (None, l) => l,
        };
        if let Some(p) = &wanted_pool {
            self.get_pool(p)?;
        }

        // Intent: the record exists as Creating before the backend runs.
        // Non-durable: if it never reaches the disk, neither did a reply,
        // and recovery discards the id (see recovery.rs).
        let (rec, parents) = self.store.write(false, |tx| -> Result<_> {
            if tx.id_of(key)?.is_some() {
                return Err(Error::AlreadyExists(key.to_string()));
            }
            let (pool, parent_id) = if parent.is_empty() {
                (wanted_pool.clone().unwrap_or_else(|| self.default_pool.clone()), None)
            } else {
                let p = tx
                    .by_key(parent)?
                    .ok_or_else(|| Error::ParentNotFound(parent.to_string()))?;
                if p.kind != Kind::Committed || p.state != State::Ready {
                    return Err(Error::ParentNotCommitted {
                        key: parent.to_string(),
                        kind: p.kind,
                    });
                }
                if let Some(w) = &wanted_pool {
                    if *w != p.pool {
                        return Err(Error::InvalidArgument(format!(
                            "the new layer would be in pool {w:?} (label {} or endpoint), but children live in their parent's pool {:?}",
                            validate::POOL_LABEL,
                            p.pool
                        )));
                    }
                }
                (p.pool, Some(p.id))
            };
            let pool_ref = self.get_pool(&pool)?;
            let backend = pool_ref.backend()?;
            if size_limit.is_some() && !backend.can_limit_size() {
                return Err(Error::NotSupported(format!(
                    "label {}: pool {pool:?} uses the {} driver, which cannot limit a layer's size (btrfs pools can)",
                    validate::SIZE_LABEL,
                    backend.driver()
                )));
            }
            self.check_space(&pool)?;
            let parents = chain(|id| tx.get(id), parent_id)?;
            if let Some(max) = backend.max_depth() {
                let lowers = parents.len();
                if lowers > max {
                    return Err(Error::NotSupported(format!(
                        "a layer on {parent:?} would stack {lowers} lower layers; the {} driver takes at most {max}",
                        backend.driver()
                    )));
                }
            }
            let now = now_us();
            let rec = LayerRecord {
                id: tx.alloc_id()?,
                pool,
                key: key.to_string(),
                parent: parent_id,
                kind,
                state: State::Creating,
                labels,
                created: now,
                updated: now,
            };
            tx.put(&rec)?;
            tx.set_key(key, rec.id)?;
            if let Some(p) = parent_id {
                tx.add_child(p, rec.id)?;
            }
            Ok((rec, parents))
        })?;
        fault::hit("prepare-intent");

        let pool = self.get_pool(&rec.pool)?;
        let backend = pool.backend()?;
        let created = backend.create(layer_ref(&rec, &parents)).and_then(|()| {
            // The limit is part of creating the layer: a failure rolls
            // the layer back like a failed create.
            size_limit.map_or(Ok(()), |b| backend.limit_size(rec.id, b))
        });
        fault::hit("prepare-backend");
        let result = created.map_err(Error::from).and_then(|()| {
            self.store.write(true, |tx| {
                let mut ready = rec.clone();
                ready.state = State::Ready;
                tx.put(&ready)
            })?;
            pool.layer_count.fetch_add(1, Ordering::Relaxed);
            let _ = self.sample(&rec.pool, false);
            self.specs(&rec, &parents)
        });
        match result {
            Ok(specs) => {
                tracing::info!(pool = %rec.pool, layer = rec.id, layer_key = key, operation = create_operation(kind), "layer created");
                Ok(specs)
            }
            Err(e) => {
                tracing::warn!(pool = %rec.pool, layer = rec.id, layer_key = key, operation = create_operation(kind), errno = e.errno(), error = %e, "creating layer failed; rolling back");
                self.undo_create(&rec);
                self.sample_after_failure(&rec.pool, &e);
                Err(e)
            }
        }
    }

    /// Rolls back a failed create: storage first, then the record.
    fn undo_create(&self, rec: &LayerRecord) {
        let _ = self.release_pin(rec.id);
        if let Ok(pool) = self.get_pool(&rec.pool) {
            if let Ok(b) = pool.backend() {
                if let Err(e) = b.discard(rec.id) {
                    // The Creating record stays, so the next start-up
                    // retries the discard.
                    tracing::error!(layer = rec.id, error = %e, "discarding a failed layer failed");
                    return;
                }
            }
            let was_ready = self
                .store
                .write(true, |tx| -> Result<bool> {
                    let was = tx.get(rec.id)?.is_some_and(|r| r.state == State::Ready);
                    drop_record(tx, rec)?;
                    Ok(was)
                })
                .unwrap_or(false);
            if was_ready {
                pool.layer_count.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// PoolFull when free space is below the pool's minimum. Space that is
    /// only pending release (a btrfs cleaner still dropping deleted
    /// subvolumes, extents pinned until a commit) does not count as used:
    /// before refusing, the backend is asked once to make it usable.
    fn check_space(&self, pool: &str) -> Result<()> {
        let p = self.get_pool(pool)?;
        let mut reclaimed = false;
        loop {
            let Some(st) = self.sample(pool, false) else {
                return Ok(());
            };
            // Sampling grew what could grow; what is still too full is
            // refused, naming the fuller of data and metadata.
            let (data, meta) = (st.data_percent(), st.metadata_percent());
            let free = 100.0 - data.max(meta);
            if st.data_size == 0 || free >= p.spec.thresholds.min_free_percent as f64 {
                return Ok(());
            }
            if !reclaimed {
                reclaimed = true;
                match p.backend().map(|b| b.reclaim(ADMIT_RECLAIM_WAIT)) {
                    Ok(Ok(true)) => continue,
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(pool, error = %e, "cannot reclaim pending space before refusing a layer")
                    }
                    Err(_) => {}
                }
            }
            return Err(Error::PoolFull {
                pool: pool.to_string(),
                what: if meta > data { "metadata" } else { "data" },
                free_percent: free,
                min_free_percent: p.spec.thresholds.min_free_percent,
            });
        }
    }

    /// Mount specs of a Ready record; pins a daemon mount when the backend's
    /// specs would not fit one mount(2) call.
    fn specs(&self, rec: &LayerRecord, parents: &[u64]) -> Result<Vec<MountSpec>> {
        let backend = self.get_pool(&rec.pool)?.backend()?;
        match backend.mounts(layer_ref(rec, parents))? {
            Some(specs) => Ok(specs),
            None => {
                let path = self.pin(rec, parents)?;
                Ok(vec![MountSpec::bind(&path, rec.kind != Kind::Active)])
            }
        }
    }

    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<()> {
        validate::key("name", name)?;
        validate::key("key", key)?;
        validate::labels(&labels)?;
        let _m = lock(&self.mount_lock);
        let rec = self
            .store
            .read(|tx| tx.by_key(key))?
            .ok_or_else(|| Error::NotFound(key.to_string()))?;
        self.check_committable(&rec, key)?;
        validate::fixed_labels(&rec.pool, &rec.labels, &labels)?;
        self.check_no_diff(&rec, key)?;
        // A failed pool refuses before any intent is written.
        self.get_pool(&rec.pool)?.backend()?;
        self.release_pin(rec.id)?;
        // Intent, durable: the name is taken and the commit will be
        // finished by recovery if we die after this point.
        let rec = self.store.write(true, |tx| -> Result<LayerRecord> {
            let mut rec = tx
                .by_key(key)?
                .ok_or_else(|| Error::NotFound(key.to_string()))?;
            self.check_committable(&rec, key)?;
            validate::fixed_labels(&rec.pool, &rec.labels, &labels)?;
            if tx.mount_ref(rec.id)?.held() {
                return Err(Error::Busy {
                    key: key.to_string(),
                    why: "it is mounted by the daemon: Unmount it first".into(),
                });
            }
            if tx.id_of(name)?.is_some() {
                return Err(Error::AlreadyExists(name.to_string()));
            }
            tx.delete_key(key)?;
            tx.set_key(name, rec.id)?;
            rec.state = State::Committing {
                name: name.to_string(),
                labels: labels.clone(),
            };
            tx.put(&rec)?;
            Ok(rec)
        })?;
        fault::hit("commit-intent");
        let backend = self.get_pool(&rec.pool)?.backend()?;
        backend.commit(rec.id)?;
        fault::hit("commit-backend");
        self.store.write(false, |tx| finish_commit(tx, &rec))?;
        tracing::info!(pool = %rec.pool, layer = rec.id, layer_key = name, operation = "commit", "layer committed");
        Ok(())
    }

    fn check_committable(&self, rec: &LayerRecord, key: &str) -> Result<()> {
        if rec.kind != Kind::Active {
            return Err(Error::NotActive {
                key: key.to_string(),
                kind: rec.kind,
            });
        }
        if rec.state != State::Ready {
            return Err(Error::Busy {
                key: key.to_string(),
                why: "another operation on it is in progress".into(),
            });
        }
        Ok(())
    }

    pub fn remove(&self, key: &str) -> Result<()> {
        validate::key("key", key)?;
        let _m = lock(&self.mount_lock);
        let check =
            |tx_rec: Option<LayerRecord>, children: usize, mref: MountRef| -> Result<LayerRecord> {
                let rec = tx_rec.ok_or_else(|| Error::NotFound(key.to_string()))?;
                if rec.state != State::Ready {
                    return Err(Error::Busy {
                        key: key.to_string(),
                        why: "another operation on it is in progress".into(),
                    });
                }
                if children > 0 {
                    return Err(Error::HasChildren {
                        key: key.to_string(),
                        children,
                    });
                }
                if mref.refs > 0 {
                    return Err(Error::Busy {
                        key: key.to_string(),
                        why: format!(
                            "it is mounted by the daemon ({} reference(s)): Unmount it first",
                            mref.refs
                        ),
                    });
                }
                Ok(rec)
            };
        let rec = self.store.read(|tx| -> Result<_> {
            let rec = tx.by_key(key)?;
            let (children, mref) = match &rec {
                Some(r) => (tx.children(r.id)?.len(), tx.mount_ref(r.id)?),
                None => (0, MountRef::default()),
            };
            check(rec, children, mref)
        })?;
        self.check_no_diff(&rec, key)?;
        self.get_pool(&rec.pool)?.backend()?;
        self.release_pin(rec.id)?;
        // Durable: the record goes and a tombstone says the storage may
        // still need removing; recovery finishes it.
        let rec = self.store.write(true, |tx| -> Result<LayerRecord> {
            let r = tx.by_key(key)?;
            let (children, mref) = match &r {
                Some(r) => (tx.children(r.id)?.len(), tx.mount_ref(r.id)?),
                None => (0, MountRef::default()),
            };
            let rec = check(r, children, mref)?;
            drop_record(tx, &rec)?;
            tx.add_tombstone(rec.id, &rec.pool)?;
            Ok(rec)
        })?;
        let pool = self.get_pool(&rec.pool)?;
        pool.layer_count.fetch_sub(1, Ordering::Relaxed);
        fault::hit("remove-intent");
        pool.backend()?.remove(rec.id)?;
        fault::hit("remove-backend");
        self.store.write(false, |tx| tx.delete_tombstone(rec.id))?;
        tracing::info!(pool = %rec.pool, layer = rec.id, layer_key = key, operation = "remove", "layer removed");
        let _ = self.sample(&rec.pool, false);
        Ok(())
    }

    pub fn stat(&self, key: &str) -> Result<LayerInfo> {
        validate::key("key", key)?;
        fault::panic_at("stat-panic");
        self.store.read(|tx| -> Result<LayerInfo> {
            let rec = tx
                .by_key(key)?
                .filter(visible)
                .ok_or_else(|| Error::NotFound(key.to_string()))?;
            let parent = match rec.parent {
                Some(p) => tx.get(p)?.map(|r| r.key).unwrap_or_default(),
                None => String::new(),
            };
            Ok(info(rec, parent))
        })
    }

    pub fn update(
        &self,
        key: &str,
        labels: BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<LayerInfo> {
        validate::key("key", key)?;
        self.store.write(true, |tx| -> Result<()> {
            let mut rec = tx
                .by_key(key)?
                .filter(visible)
                .ok_or_else(|| Error::NotFound(key.to_string()))?;
            let new = validate::apply_fieldpaths(&rec.labels, &labels, paths)?;
            validate::labels(&new)?;
            validate::fixed_labels(&rec.pool, &rec.labels, &new)?;
            rec.labels = new;
            rec.updated = now_us();
            tx.put(&rec)?;
            Ok(())
        })?;
        self.stat(key)
    }

    pub fn usage(&self, key: &str) -> Result<(u64, u64)> {
        let (rec, parents) = self.lookup(key)?;
        let backend = self.get_pool(&rec.pool)?.backend()?;
        Ok(backend.usage(layer_ref(&rec, &parents))?)
    }

    pub fn mounts(&self, key: &str) -> Result<Vec<MountSpec>> {
        let (rec, parents) = self.lookup(key)?;
        if rec.kind == Kind::Committed {
            return Err(Error::IsCommitted {
                key: key.to_string(),
            });
        }
        self.specs(&rec, &parents)
    }

    /// A visible record and its ancestor ids.
    pub(super) fn lookup(&self, key: &str) -> Result<(LayerRecord, Vec<u64>)> {
        validate::key("key", key)?;
        self.store.read(|tx| -> Result<_> {
            let rec = tx
                .by_key(key)?
                .filter(visible)
                .ok_or_else(|| Error::NotFound(key.to_string()))?;
            let parents = chain(|id| tx.get(id), rec.parent)?;
            Ok((rec, parents))
        })
    }

    pub fn walk(&self, filters: &[String]) -> Result<Vec<LayerInfo>> {
        self.walk_mapped(filters, Some)
    }

    /// Walk of the keys that start with `prefix` (an adapter's own key
    /// space), which the filters and the caller see without it; a parent
    /// outside the prefix keeps its whole key.
    pub fn walk_under(&self, prefix: &str, filters: &[String]) -> Result<Vec<LayerInfo>> {
        self.walk_mapped(filters, |mut i| {
            i.name = i.name.strip_prefix(prefix)?.to_string();
            if let Some(p) = i.parent.strip_prefix(prefix) {
                i.parent = p.to_string();
            }
            Some(i)
        })
    }

    fn walk_mapped(
        &self,
        filters: &[String],
        map: impl Fn(LayerInfo) -> Option<LayerInfo>,
    ) -> Result<Vec<LayerInfo>> {
        let filter = Filter::parse(filters).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        self.store.read(|tx| -> Result<Vec<LayerInfo>> {
            let records = tx.layers()?;
            let names: std::collections::HashMap<u64, &str> =
                records.iter().map(|r| (r.id, r.key.as_str())).collect();
            let mut out = Vec::new();
            for rec in records.iter().filter(|r| visible(r)) {
                let parent = rec
                    .parent
                    .and_then(|p| names.get(&p))
                    .unwrap_or(&"")
                    .to_string();
                let Some(i) = map(info(rec.clone(), parent)) else {
                    continue;
                };
                if filter.matches(&i) {
                    out.push(i);
                }
            }
            Ok(out)
        })
    }

    /// Frees the space of removed layers in every pool.
    pub fn cleanup(&self) -> Result<u64> {
        let mut freed = 0;
        for (name, p) in &self.pools {
            if let Ok(b) = p.backend() {
                freed += b.purge()?;
                let _ = self.sample(name, false);
            }
        }
        Ok(freed)
    }
}

/// Creating records are not visible to clients yet.
fn visible(r: &LayerRecord) -> bool {
    r.state != State::Creating
}

fn info(rec: LayerRecord, parent: String) -> LayerInfo {
    LayerInfo {
        name: rec.key,
        parent,
        kind: rec.kind,
        pool: rec.pool,
        labels: rec.labels,
        created: rec.created,
        updated: rec.updated,
    }
}

/// Deletes a record, its key and its place among its parent's children.
pub(super) fn drop_record(tx: &WriteTx, rec: &LayerRecord) -> super::store::Result<()> {
    if tx.id_of(&rec.key)? == Some(rec.id) {
        tx.delete_key(&rec.key)?;
    }
    if let Some(p) = rec.parent {
        tx.delete_child(p, rec.id)?;
    }
    tx.set_mount_ref(rec.id, MountRef::default())?;
    tx.delete(rec.id)
}

/// Second half of Commit (also run by recovery).
pub(super) fn finish_commit(tx: &WriteTx, rec: &LayerRecord) -> super::store::Result<()> {
    if let State::Committing { name, labels } = &rec.state {
        let now = now_us();
        let done = LayerRecord {
            key: name.clone(),
            kind: Kind::Committed,
            labels: labels.clone(),
            state: State::Ready,
            created: now,
            updated: now,
            ..rec.clone()
        };
        tx.put(&done)?;
    }
    Ok(())
}

impl Adaptor for LayerInfo {
    fn field(&self, path: &[String]) -> Option<String> {
        match path {
            [f] if f == "name" => Some(self.name.clone()),
            [f] if f == "parent" => Some(self.parent.clone()),
            [f] if f == "kind" => Some(self.kind.as_str().to_string()),
            [f] if f == "pool" => Some(self.pool.clone()),
            [f, rest @ ..] if f == "labels" && !rest.is_empty() => {
                self.labels.get(&rest.join(".")).cloned()
            }
            _ => None,
        }
    }
}

/// The API operation that creates a layer of `kind` (the journal's OPERATION).
fn create_operation(kind: Kind) -> &'static str {
    match kind {
        Kind::View => "view",
        _ => "prepare",
    }
}
