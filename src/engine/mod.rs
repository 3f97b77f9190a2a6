//! The engine: pools, layers and their records. It is the only place that
//! decides anything; the D-Bus adapter calls one engine method per request
//! and the monitor calls `sample_all`. Every method is synchronous (the
//! adapter runs them on blocking threads) and takes `&self`: concurrency is
//! handled by the store's transactions plus one lock for daemon mounts.
//!
//! Intent protocol (see recovery.rs for the other half): a layer's record
//! is written with a non-`Ready` state before its kernel-side step runs and
//! set `Ready` after; start-up reconciliation finishes or undoes whatever it
//! finds half done.

pub mod autobalance;
mod backing;
pub mod diff;
pub mod error;
pub mod fault;
pub mod guard;
pub mod jobs;
mod layers;
mod mounts;
mod recovery;
pub mod store;
pub mod types;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::broadcast;

use crate::backend::{self, Backend, LayerRef};
// Engine code (and diff/) says `lock`; the helper lives in the shared leaf.
use crate::shared::error::ErrorKind;
pub(crate) use crate::shared::sync::lock;
use error::{Error, Result};
use store::Store;
use types::{Event, Health, LayerRecord, PoolStatus};

pub use recovery::Report as RecoveryReport;

/// Which driver a pool uses. Drivers not built yet are refused at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Thin,
    Btrfs,
    Overlay,
    Vfs,
}

impl Driver {
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Thin => "thin",
            Driver::Btrfs => "btrfs",
            Driver::Overlay => "overlay",
            Driver::Vfs => "vfs",
        }
    }
}

/// Health thresholds, in percent of data (and metadata) space, plus the
/// unallocated-space threshold of btrfs pools.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub warn_percent: u8,
    pub critical_percent: u8,
    pub min_free_percent: u8,
    /// btrfs: below this percent of the device unallocated, Health is at
    /// least `warning` and the engine starts a balance by itself (see
    /// autobalance.rs); 0 turns that off.
    pub balance_unallocated_percent: u8,
    /// Loop backings: the largest the image may grow to by Extend (config
    /// `autoextend_max`); `None` = no cap.
    pub autoextend_max: Option<u64>,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            warn_percent: 80,
            critical_percent: 90,
            min_free_percent: 10,
            balance_unallocated_percent: 10,
            autoextend_max: None,
        }
    }
}

/// Where a pool's storage comes from (DESIGN "Backing").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// A sparse file of `size` bytes the daemon creates and loop-attaches.
    Loop,
    /// A block device the admin names.
    Device,
    /// Something that exists already: a directory, a mounted btrfs, a thin pool.
    Existing,
}

/// What the engine needs to know of a configured pool.
#[derive(Debug, Clone)]
pub struct PoolSpec {
    pub name: String,
    pub driver: Driver,
    pub backing: Backing,
    pub path: PathBuf,
    /// Loop backing: the sparse file's size in bytes.
    pub size: Option<u64>,
    pub thresholds: Thresholds,
    /// Maintenance defaults for this pool (escalating balance filters).
    pub balance: backend::BalanceOptions,
    /// Thin-only settings; `Some` exactly for `Driver::Thin`.
    pub thin: Option<ThinSpec>,
}

/// The thin keys of a pool's config (DESIGN "Config shape").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinSpec {
    /// `backing = "device"`: the metadata device.
    pub metadata_device: Option<PathBuf>,
    /// Loop backing: metadata file size; `None` = the sizing rule.
    pub metadata_size: Option<u64>,
    pub block_size: u64,
    pub base_size: u64,
    pub fs: backend::thin::Fs,
    /// Loop backing: growth step in percent (0 = never) and limit, bytes.
    pub autoextend_percent: u8,
    pub autoextend_max: u64,
}

/// Where the engine keeps things.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub default_pool: String,
    pub pools: Vec<PoolSpec>,
}

pub(crate) struct Pool {
    spec: PoolSpec,
    backend: std::result::Result<Box<dyn Backend>, String>,
    status: Mutex<PoolStatus>,
    layer_count: AtomicU64,
    /// Automatic balance bookkeeping (btrfs). Lock order: `auto`, then
    /// `status` (a job is started while `auto` is held; `sample` reads
    /// `auto` before it locks `status`).
    auto: Mutex<autobalance::State>,
    /// Set when a block device under the pool disappeared or shrank
    /// (backing.rs): why the pool is `failed` until the daemon restarts.
    lost: Mutex<Option<String>>,
}

impl Pool {
    fn backend(&self) -> Result<&dyn Backend> {
        if let Some(reason) = lock(&self.lost).clone() {
            return Err(Error::PoolUnavailable {
                pool: self.spec.name.clone(),
                health: Health::Failed.as_str(),
                reason,
            });
        }
        match &self.backend {
            Ok(b) => Ok(b.as_ref()),
            Err(reason) => Err(Error::PoolUnavailable {
                pool: self.spec.name.clone(),
                health: Health::Failed.as_str(),
                reason: reason.clone(),
            }),
        }
    }
}

/// Read-only facts about a pool for the adapters.
#[derive(Debug, Clone)]
pub struct PoolView {
    pub name: String,
    pub driver: &'static str,
    pub backing: &'static str,
    pub path: PathBuf,
    pub status: PoolStatus,
}

pub struct Engine {
    store: Store,
    pools: BTreeMap<String, Pool>,
    default_pool: String,
    run_dir: PathBuf,
    events: broadcast::Sender<Event>,
    /// Serializes daemon mounts against Commit/Remove of the same layers.
    mount_lock: Mutex<()>,
    /// Layers an Apply (-1) or Exports (their count) are working in; Commit
    /// and Remove refuse them (diff/mod.rs). Changed under `mount_lock`.
    diff_use: Mutex<std::collections::HashMap<u64, i64>>,
    /// Running Applies/Exports on callers' descriptors (diff/watch.rs).
    diff_watch: diff::watch::Registry,
    /// Maintenance jobs, running and recently finished (jobs.rs).
    jobs: jobs::Jobs,
    /// Set by [`Engine::watch`]: the engine's own handle, with which
    /// sampling starts automatic jobs. Unset, nothing starts by itself.
    me: OnceLock<Weak<Engine>>,
    /// Per pool, how its maintenance is scheduled, as src/maintenance/
    /// reported it (the Pool property MaintenanceSchedule).
    maintenance: Mutex<BTreeMap<String, String>>,
}

impl Engine {
    /// Opens the store and every pool, then reconciles store and disks.
    /// A pool whose storage cannot be opened is kept, `failed`, with the
    /// reason: the daemon still serves the others.
    pub fn open(cfg: EngineConfig) -> std::result::Result<(Engine, RecoveryReport), Error> {
        // Root-only, like every directory on the way to layer contents
        // (sys/private.rs); looser ones left on disk are tightened.
        for dir in [
            cfg.state_dir.clone(),
            cfg.run_dir.clone(),
            cfg.run_dir.join("m"),
        ] {
            crate::sys::private::ensure_dir(&dir)
                .map_err(|e| Error::Backend(backend::BackendError::io("mkdir", &dir, e)))?;
        }
        let store = Store::open(&cfg.state_dir.join("layerd.redb"))?;
        let mut pools = BTreeMap::new();
        for spec in cfg.pools {
            let backend = open_backend(&spec, &cfg.state_dir).map_err(|e| e.to_string());
            if let Err(reason) = &backend {
                tracing::error!(pool = %spec.name, driver = spec.driver.as_str(), %reason, "pool cannot be opened; it is marked failed");
            }
            let status = PoolStatus {
                health: if backend.is_ok() {
                    Health::Ok
                } else {
                    Health::Failed
                },
                reason: backend.as_ref().err().cloned().unwrap_or_default(),
                data_size: 0,
                data_used: 0,
                metadata_size: 0,
                metadata_used: 0,
                unallocated: None,
                layer_count: 0,
            };
            pools.insert(
                spec.name.clone(),
                Pool {
                    spec,
                    backend,
                    status: Mutex::new(status),
                    layer_count: AtomicU64::new(0),
                    auto: Mutex::new(autobalance::State::default()),
                    lost: Mutex::new(None),
                },
            );
        }
        let (events, _) = broadcast::channel(256);
        let engine = Engine {
            store,
            pools,
            default_pool: cfg.default_pool,
            run_dir: cfg.run_dir,
            events,
            mount_lock: Mutex::new(()),
            diff_use: Mutex::new(Default::default()),
            diff_watch: Default::default(),
            jobs: jobs::Jobs::default(),
            me: OnceLock::new(),
            maintenance: Mutex::new(BTreeMap::new()),
        };
        let report = engine.reconcile()?;
        engine.count_layers()?;
        engine.sample_all();
        Ok((engine, report))
    }

    /// From now on, sampling may start maintenance by itself (the
    /// automatic balance of btrfs pools, autobalance.rs). The monitor calls
    /// this when it starts watching; an engine never watched (tools,
    /// benches) never starts jobs on its own.
    pub fn watch(self: &Arc<Self>) {
        let _ = self.me.set(Arc::downgrade(self));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Whether any pool is a thin pool (the monitor then waits for dm events).
    pub fn has_thin(&self) -> bool {
        self.pools.values().any(|p| p.spec.driver == Driver::Thin)
    }

    pub fn default_pool(&self) -> &str {
        &self.default_pool
    }

    pub fn pool_names(&self) -> Vec<String> {
        self.pools.keys().cloned().collect()
    }

    /// Records how `pool`'s maintenance is scheduled (src/maintenance/
    /// decides the text: timers, or why there are none).
    pub fn set_maintenance_schedule(&self, pool: &str, text: String) {
        lock(&self.maintenance).insert(pool.to_string(), text);
    }

    /// How `pool`'s maintenance is scheduled; "" until start-up set it.
    pub fn maintenance_schedule(&self, pool: &str) -> Result<String> {
        self.get_pool(pool)?;
        Ok(lock(&self.maintenance)
            .get(pool)
            .cloned()
            .unwrap_or_default())
    }

    pub fn pool(&self, name: &str) -> Result<PoolView> {
        let p = self
            .pools
            .get(name)
            .ok_or_else(|| Error::PoolNotFound(name.to_string()))?;
        let mut status = lock(&p.status).clone();
        status.layer_count = p.layer_count.load(Ordering::Relaxed);
        Ok(PoolView {
            name: p.spec.name.clone(),
            driver: p.spec.driver.as_str(),
            backing: p.backend.as_ref().map(|b| b.backing()).unwrap_or("unknown"),
            path: p.spec.path.clone(),
            status,
        })
    }

    /// Re-reads every pool's space and health; emits events for changes.
    pub fn sample_all(&self) {
        for name in self.pools.keys() {
            let _ = self.sample(name, true);
        }
    }

    /// After a request failed for want of space (PoolFull: ENOSPC, or a
    /// pool below its free-space minimum), re-reads the pool at once, so
    /// Health and DataUsed say so before the monitor's next tick.
    fn sample_after_failure(&self, name: &str, e: &Error) {
        if e.kind() == ErrorKind::PoolFull {
            let _ = self.sample(name, false);
        }
    }

    /// Re-reads one pool's space, updates health and tells the adapters
    /// about level changes (and, when `announce`, about any change).
    fn sample(&self, name: &str, announce: bool) -> Option<PoolStatus> {
        let p = self.pools.get(name)?;
        let backend = p.backend.as_ref().ok()?;
        // Read before `status` is locked: `auto` is held while a job is
        // started, which locks `status` (lock order auto → status).
        let note = lock(&p.auto).note();
        let mut space_read = None;
        let (new, old) = {
            let mut st = lock(&p.status);
            let old = st.clone();
            match backend.space() {
                Ok(space) => {
                    st.data_size = space.data_size;
                    st.data_used = space.data_used;
                    st.metadata_size = space.metadata_size;
                    st.metadata_used = space.metadata_used;
                    st.unallocated = space.unallocated;
                    let (h, mut reason) = health_of(&space, &p.spec.thresholds);
                    if let (Some(n), true) = (&note, space.unallocated.is_some()) {
                        if !reason.is_empty() {
                            reason.push_str("; ");
                        }
                        reason.push_str(n);
                    }
                    st.health = h;
                    st.reason = reason;
                    space_read = Some(space);
                }
                Err(e) => {
                    st.health = Health::Failed;
                    st.reason = e.to_string();
                }
            }
            if let Some(why) = lock(&p.lost).clone() {
                // The numbers may still read (dm status needs no I/O),
                // but nothing below the pool can be trusted or grown.
                st.health = Health::Failed;
                st.reason = why;
                space_read = None;
            }
            st.layer_count = p.layer_count.load(Ordering::Relaxed);
            (st.clone(), old)
        };
        if new.health != old.health {
            if new.health > Health::Ok {
                tracing::warn!(pool = name, health = new.health.as_str(), data_percent = new.data_percent(), reason = %new.reason, "pool health changed");
            } else {
                tracing::info!(
                    pool = name,
                    health = new.health.as_str(),
                    "pool health changed"
                );
            }
            let _ = self.events.send(Event::UsageAlert {
                pool: name.to_string(),
                level: new.health,
                data_percent: new.data_percent(),
                metadata_percent: new.metadata_percent(),
            });
        }
        if new != old
            && (announce || new.health != old.health || new.layer_count != old.layer_count)
        {
            let _ = self.events.send(Event::PoolChanged(name.to_string()));
        }
        if new.health >= Health::Warning
            && new.health != Health::ReadOnly
            && new.health != Health::Failed
            && self.me.get().is_some()
        {
            // Grow what can grow (a loop-backed thin pool), then look again:
            // the level change back is announced like any other.
            match backend.extend_auto() {
                Ok(Some(size)) => {
                    tracing::warn!(
                        pool = name,
                        size,
                        health = new.health.as_str(),
                        "pool extended automatically"
                    );
                    return self.sample(name, announce);
                }
                Ok(None) => {}
                Err(e) => tracing::error!(pool = name, error = %e, "automatic extension failed"),
            }
        }
        if let Some(space) = space_read {
            if self.auto_balance(name, p, &space) {
                // Once more, so HealthReason names the running job.
                return self.sample(name, announce);
            }
        }
        Some(new)
    }

    /// Starts an automatic balance when the pool's unallocated space is
    /// below its threshold and the rules of autobalance.rs allow; true if
    /// one was started.
    fn auto_balance(&self, name: &str, p: &Pool, space: &backend::Space) -> bool {
        let (Some(unallocated), Some(device)) = (space.unallocated, space.device_size) else {
            return false;
        };
        if p.spec.driver != Driver::Btrfs || space.read_only {
            return false;
        }
        let Some(me) = self.me.get().and_then(Weak::upgrade) else {
            return false;
        };
        let percent = p.spec.thresholds.balance_unallocated_percent;
        let mut auto = lock(&p.auto);
        let now = std::time::Instant::now();
        if !auto.due(now, unallocated, device, percent) {
            return false;
        }
        if self.jobs.busy(name) {
            // A trim or balance runs; look again at the next sample.
            return false;
        }
        match me.start_job(
            name,
            jobs::JobKind::Balance(jobs::BalanceRequest::default()),
        ) {
            Ok(id) => {
                tracing::warn!(
                    pool = name,
                    job_id = id,
                    unallocated,
                    device_size = device,
                    threshold_percent = percent,
                    "unallocated space below the threshold: automatic balance started"
                );
                auto.running = Some(id);
                auto.last_start = Some((now, unallocated));
                true
            }
            Err(e) => {
                tracing::warn!(pool = name, error = %e, "cannot start the automatic balance");
                // Counts as an attempt: the cool-down keeps it from
                // retrying at every sample.
                auto.last_start = Some((now, unallocated));
                false
            }
        }
    }

    /// A job ended: if it was the pool's automatic balance, decide whether
    /// to give up (it gained nothing, failed or was cancelled).
    fn auto_balance_done(&self, pool: &str, id: jobs::JobId, outcome: &jobs::Outcome, bytes: u64) {
        let Some(p) = self.pools.get(pool) else {
            return;
        };
        let mut auto = lock(&p.auto);
        if auto.running != Some(id) {
            return;
        }
        auto.running = None;
        let why = match outcome {
            jobs::Outcome::Ok if bytes > 0 => {
                tracing::info!(pool, job_id = id, gained = bytes, "automatic balance done");
                return;
            }
            jobs::Outcome::Ok => format!(
                "balance job {id} gained nothing (the chunks are full: remove layers or grow the pool)"
            ),
            jobs::Outcome::Cancelled => format!("balance job {id} was cancelled"),
            jobs::Outcome::Failed(e) => format!("balance job {id} failed: {e}"),
            jobs::Outcome::NoGain(e) => format!("balance job {id}: {e}"),
        };
        let unallocated = p
            .backend
            .as_ref()
            .ok()
            .and_then(|b| b.space().ok())
            .and_then(|s| s.unallocated)
            .or_else(|| lock(&p.status).unallocated)
            .unwrap_or(0);
        tracing::warn!(pool, job_id = id, unallocated, reason = %why, "automatic balance gives up until unallocated space drops further or recovers");
        auto.gave_up = Some((why, unallocated));
    }

    fn count_layers(&self) -> Result<()> {
        let layers = self.store.read(|tx| tx.layers())?;
        for p in self.pools.values() {
            let n = layers.iter().filter(|r| r.pool == p.spec.name).count();
            p.layer_count.store(n as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    fn get_pool(&self, name: &str) -> Result<&Pool> {
        self.pools
            .get(name)
            .ok_or_else(|| Error::PoolNotFound(name.to_string()))
    }

    fn mount_dir(&self, id: u64) -> PathBuf {
        self.run_dir.join("m").join(id.to_string())
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }
}

/// Health from space and thresholds: read-only first, then full (less free
/// space than new layers need), critical, warning; for btrfs the worse of
/// that and the unallocated-space level (autobalance.rs), both reasons
/// when they tie.
pub fn health_of(space: &backend::Space, t: &Thresholds) -> (Health, String) {
    let (h, why) = usage_health(space, t);
    let un = match (space.unallocated, space.device_size) {
        (Some(u), Some(d)) => autobalance::unallocated_health(u, d, t.balance_unallocated_percent),
        _ => None,
    };
    match un {
        Some((uh, uwhy)) if uh > h => (uh, uwhy),
        Some((uh, uwhy)) if uh == h => (h, format!("{why}; {uwhy}")),
        _ => (h, why),
    }
}

fn usage_health(space: &backend::Space, t: &Thresholds) -> (Health, String) {
    let used = types::percent(space.data_used, space.data_size);
    let meta = types::percent(space.metadata_used, space.metadata_size);
    let worst = used.max(meta);
    let what = if meta > used { "metadata" } else { "data" };
    if space.read_only {
        (Health::ReadOnly, "the pool's storage is read-only".into())
    } else if 100.0 - worst < t.min_free_percent as f64 {
        (
            Health::Full,
            format!(
                "{what} {worst:.1}% used; new layers need {}% free",
                t.min_free_percent
            ),
        )
    } else if worst >= t.critical_percent as f64 {
        (
            Health::Critical,
            format!(
                "{what} {worst:.1}% used (critical at {}%)",
                t.critical_percent
            ),
        )
    } else if worst >= t.warn_percent as f64 {
        (
            Health::Warning,
            format!("{what} {worst:.1}% used (warning at {}%)", t.warn_percent),
        )
    } else {
        (Health::Ok, String::new())
    }
}

/// Opens a pool's storage. `state_dir` is where a `device`-backed pool
/// gets its mount point (`<state_dir>/<name>`).
fn open_backend(
    spec: &PoolSpec,
    state_dir: &Path,
) -> std::result::Result<Box<dyn Backend>, backend::BackendError> {
    match spec.driver {
        Driver::Overlay => Ok(Box::new(backend::overlay::Overlay::open(&spec.path)?)),
        Driver::Vfs => Ok(Box::new(backend::vfs::Vfs::open(&spec.path)?)),
        Driver::Btrfs => {
            use backend::btrfs::{Btrfs, Setup};
            let label = format!("layerd-{}", spec.name);
            let setup = match spec.backing {
                Backing::Loop => Setup::Loop {
                    mount: spec.path.clone(),
                    size: spec.size.ok_or_else(|| {
                        backend::BackendError::NotSupported(format!(
                            "pool {:?}: a loop backing needs a size",
                            spec.name
                        ))
                    })?,
                    label,
                },
                Backing::Device => Setup::Device {
                    device: spec.path.clone(),
                    mount: state_dir.join(&spec.name),
                    label,
                },
                Backing::Existing => Setup::Existing {
                    path: spec.path.clone(),
                },
            };
            Ok(Box::new(Btrfs::open(&setup)?))
        }
        Driver::Thin => {
            use backend::thin::{Options, Setup, Thin};
            let t = spec.thin.clone().unwrap_or(ThinSpec {
                metadata_device: None,
                metadata_size: None,
                block_size: 64 << 10,
                base_size: 10 << 30,
                fs: backend::thin::Fs::Xfs,
                autoextend_percent: 0,
                autoextend_max: 0,
            });
            let setup = match spec.backing {
                Backing::Loop => Setup::Loop {
                    dir: spec.path.clone(),
                    size: spec.size.ok_or_else(|| {
                        backend::BackendError::NotSupported(format!(
                            "pool {:?}: a loop backing needs a size",
                            spec.name
                        ))
                    })?,
                    metadata_size: t.metadata_size,
                },
                Backing::Device => Setup::Device {
                    data: spec.path.clone(),
                    metadata: t.metadata_device.clone().ok_or_else(|| {
                        backend::BackendError::NotSupported(format!(
                            "pool {:?}: a thin pool with backing = \"device\" needs metadata_device",
                            spec.name
                        ))
                    })?,
                },
                Backing::Existing => Setup::Existing {
                    pool: spec.path.clone(),
                },
            };
            let opts = Options {
                setup,
                block_size: t.block_size,
                base_size: t.base_size,
                fs: t.fs,
                warn_percent: spec.thresholds.warn_percent,
                work_dir: state_dir.join(&spec.name),
                autoextend_percent: t.autoextend_percent,
                autoextend_max: t.autoextend_max,
            };
            Ok(Box::new(Thin::open(&spec.name, &opts)?))
        }
    }
}

/// Ancestor ids of `rec`, nearest first.
fn chain(
    tx_get: impl Fn(u64) -> store::Result<Option<LayerRecord>>,
    mut parent: Option<u64>,
) -> store::Result<Vec<u64>> {
    let mut out = Vec::new();
    while let Some(p) = parent {
        out.push(p);
        parent = tx_get(p)?.and_then(|r| r.parent);
    }
    Ok(out)
}

fn layer_ref<'a>(rec: &LayerRecord, parents: &'a [u64]) -> LayerRef<'a> {
    LayerRef {
        id: rec.id,
        kind: rec.kind,
        parents,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(used: u64, size: u64) -> backend::Space {
        backend::Space {
            data_size: size,
            data_used: used,
            ..Default::default()
        }
    }

    #[test]
    fn health_levels_follow_thresholds() {
        let t = Thresholds {
            warn_percent: 80,
            critical_percent: 90,
            min_free_percent: 5,
            balance_unallocated_percent: 10,
            autoextend_max: None,
        };
        assert_eq!(health_of(&space(10, 100), &t).0, Health::Ok);
        assert_eq!(health_of(&space(80, 100), &t).0, Health::Warning);
        assert_eq!(health_of(&space(91, 100), &t).0, Health::Critical);
        assert_eq!(health_of(&space(96, 100), &t).0, Health::Full);
        let ro = backend::Space {
            read_only: true,
            ..space(1, 100)
        };
        assert_eq!(health_of(&ro, &t).0, Health::ReadOnly);
    }

    #[test]
    fn metadata_counts_like_data() {
        let t = Thresholds::default();
        let s = backend::Space {
            data_size: 100,
            data_used: 1,
            metadata_size: 100,
            metadata_used: 85,
            unallocated: None,
            device_size: None,
            read_only: false,
        };
        let (h, why) = health_of(&s, &t);
        assert_eq!(h, Health::Warning);
        assert!(why.starts_with("metadata"), "{why}");
    }

    #[test]
    fn unallocated_space_counts_for_btrfs() {
        const MIB: u64 = 1 << 20;
        let t = Thresholds::default();
        let s = |unallocated| backend::Space {
            data_size: 1024 * MIB,
            data_used: 100 * MIB,
            metadata_size: 200 * MIB,
            metadata_used: 10 * MIB,
            unallocated: Some(unallocated),
            device_size: Some(2048 * MIB),
            read_only: false,
        };
        assert_eq!(health_of(&s(1024 * MIB), &t).0, Health::Ok);
        let (h, why) = health_of(&s(150 * MIB), &t);
        assert_eq!(h, Health::Warning);
        assert!(
            why.contains("unallocated") && why.contains("150.0 MiB"),
            "{why}"
        );
        let (h, why) = health_of(&s(0), &t);
        assert_eq!(h, Health::Critical);
        assert!(why.contains("ENOSPC"), "{why}");
        // A worse usage level wins; a tie names both.
        let full = backend::Space {
            data_used: 1020 * MIB,
            ..s(0)
        };
        assert_eq!(health_of(&full, &t).0, Health::Full);
        let both = backend::Space {
            data_used: 930 * MIB,
            ..s(0)
        };
        let t5 = Thresholds {
            min_free_percent: 5,
            ..t
        };
        let (h, why) = health_of(&both, &t5);
        assert_eq!(h, Health::Critical);
        assert!(
            why.starts_with("data") && why.contains("unallocated"),
            "{why}"
        );
    }
}
