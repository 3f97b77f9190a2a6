//! Plain data the engine hands across its boundary: layer kinds, records as
//! stored, the info callers see, pool status and the events the adapters
//! listen to.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::shared::layer::Kind;

/// Where a record is in its life. Anything but `Ready` is an intent: a
/// kernel-side step that was recorded before it ran and that start-up
/// reconciliation finishes or rolls back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Ready,
    /// The backend is creating the layer; roll back on recovery.
    Creating,
    /// The layer is becoming committed `name` with `labels`; roll forward.
    Committing {
        name: String,
        labels: BTreeMap<String, String>,
    },
}

/// One layer as the store keeps it. `id` alone appears in paths and device
/// names; `key` is the client's (for committed layers, the name).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerRecord {
    pub id: u64,
    pub pool: String,
    pub key: String,
    pub parent: Option<u64>,
    pub kind: Kind,
    pub state: State,
    pub labels: BTreeMap<String, String>,
    /// µs since the epoch.
    pub created: u64,
    pub updated: u64,
}

/// What Stat and Walk report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    pub name: String,
    pub parent: String,
    pub kind: Kind,
    pub pool: String,
    pub labels: BTreeMap<String, String>,
    pub created: u64,
    pub updated: u64,
}

/// Pool health levels, worst last. `Display` gives the D-Bus strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    Ok,
    Warning,
    Critical,
    Full,
    ReadOnly,
    Failed,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Warning => "warning",
            Health::Critical => "critical",
            Health::Full => "full",
            Health::ReadOnly => "read-only",
            Health::Failed => "failed",
        }
    }
}

/// The last sampled state of a pool, as the Pool object shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolStatus {
    pub health: Health,
    /// Why health is what it is, for people (e.g. the failing statfs).
    pub reason: String,
    pub data_size: u64,
    pub data_used: u64,
    pub metadata_size: u64,
    pub metadata_used: u64,
    /// Device space not allocated to any chunk (btrfs); `None` where the
    /// notion does not exist.
    pub unallocated: Option<u64>,
    pub layer_count: u64,
}

impl PoolStatus {
    pub fn data_percent(&self) -> f64 {
        percent(self.data_used, self.data_size)
    }
    pub fn metadata_percent(&self) -> f64 {
        percent(self.metadata_used, self.metadata_size)
    }
}

pub fn percent(used: u64, size: u64) -> f64 {
    if size == 0 {
        0.0
    } else {
        used as f64 * 100.0 / size as f64
    }
}

/// What the engine tells its adapters (D-Bus signals, properties).
#[derive(Debug, Clone)]
pub enum Event {
    /// Some property of the pool changed.
    PoolChanged(String),
    /// The pool's health moved to another level.
    UsageAlert {
        pool: String,
        level: Health,
        data_percent: f64,
        metadata_percent: f64,
    },
    /// A maintenance job was admitted and its thread started.
    JobStarted { id: u64, pool: String },
    /// A job ended (once per job); its outcome is recorded by then, and for
    /// trim and balance the pool's last-run record too.
    JobCompleted {
        id: u64,
        pool: String,
        /// `trim`, `balance`, `extend`.
        operation: &'static str,
        success: bool,
        message: String,
    },
    /// A finished job was forgotten (see engine/jobs.rs for how long
    /// finished jobs are kept); its object goes away.
    JobRemoved(u64),
}
