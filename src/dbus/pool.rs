//! `org.layerd.Layerd1.Pool` objects at `/org/layerd/Layerd1/pools/<name>`.
//! Properties read the engine's last sample (LastTrim/LastBalance: the
//! store); the event loop in mod.rs emits PropertiesChanged and UsageAlert
//! when the engine reports changes. Trim, Balance and Extend start engine
//! jobs and return their objects (job.rs) at once.

use std::collections::HashMap;
use std::sync::Arc;

use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};
use zbus::{interface, Connection};

use super::access::Access;
use super::error::DbusError;
use super::job;
use crate::engine::jobs::{BalanceRequest, JobKind};
use crate::engine::{Engine, PoolView};

/// A pool's last trim or balance: (end time µs, bytes, outcome).
pub type LastRun = (u64, u64, String);

pub struct Pool {
    pub engine: Arc<Engine>,
    pub access: Arc<Access>,
    pub name: String,
}

impl Pool {
    fn view(&self) -> zbus::fdo::Result<PoolView> {
        self.engine
            .pool(&self.name)
            .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))
    }

    fn last_run(&self, operation: &str) -> zbus::fdo::Result<LastRun> {
        let run = self
            .engine
            .last_run(&self.name, operation)
            .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))?
            .unwrap_or_default();
        Ok((run.time, run.bytes, run.outcome))
    }

    async fn start(&self, conn: &Connection, kind: JobKind) -> Result<OwnedObjectPath, DbusError> {
        let id = self.engine.start_job(&self.name, kind)?;
        job::export(conn, &self.engine, &self.access, id).await
    }
}

/// Balance options as the engine takes them: each key with its values as
/// integers. Values: an unsigned integer (y, q, u, t; or a non-negative
/// n, i, x) or an array of them, possibly wrapped in a variant.
fn balance_options(
    opts: HashMap<String, OwnedValue>,
) -> Result<Vec<(String, Vec<u64>)>, DbusError> {
    fn int(v: &Value<'_>) -> Option<u64> {
        match v {
            Value::U8(n) => Some(*n as u64),
            Value::U16(n) => Some(*n as u64),
            Value::U32(n) => Some(*n as u64),
            Value::U64(n) => Some(*n),
            Value::I16(n) => u64::try_from(*n).ok(),
            Value::I32(n) => u64::try_from(*n).ok(),
            Value::I64(n) => u64::try_from(*n).ok(),
            Value::Value(inner) => int(inner),
            _ => None,
        }
    }
    fn ints(v: &Value<'_>) -> Option<Vec<u64>> {
        match v {
            Value::Array(a) => a.iter().map(int).collect(),
            Value::Value(inner) => ints(inner),
            v => int(v).map(|n| vec![n]),
        }
    }
    let mut out: Vec<(String, Vec<u64>)> = Vec::with_capacity(opts.len());
    for (key, value) in opts {
        let values = ints(&value).ok_or_else(|| {
            DbusError::InvalidArgument(format!(
                "balance option {key:?}: expected a usage percentage or an array of them (unsigned integers), got a value of type {}",
                value.value_signature()
            ))
        })?;
        out.push((key, values));
    }
    out.sort();
    Ok(out)
}

/// A storage pool: its driver, health and space. Health is one of ok,
/// warning, critical, full (new layers refused), read-only, failed.
#[interface(name = "org.layerd.Layerd1.Pool")]
impl Pool {
    /// The pool's name in the configuration.
    #[zbus(property(emits_changed_signal = "const"))]
    fn name(&self) -> String {
        self.name.clone()
    }

    /// thin, btrfs, overlay or vfs.
    #[zbus(property(emits_changed_signal = "const"))]
    fn driver(&self) -> zbus::fdo::Result<String> {
        Ok(self.view()?.driver.to_string())
    }

    /// loop, device, existing or directory.
    #[zbus(property(emits_changed_signal = "const"))]
    fn backing(&self) -> zbus::fdo::Result<String> {
        Ok(self.view()?.backing.to_string())
    }

    /// Where the pool's storage lives.
    #[zbus(property(emits_changed_signal = "const"))]
    fn path(&self) -> zbus::fdo::Result<String> {
        Ok(self.view()?.path.to_string_lossy().into_owned())
    }

    /// ok, warning, critical, full, read-only or failed.
    #[zbus(property)]
    fn health(&self) -> zbus::fdo::Result<String> {
        Ok(self.view()?.status.health.as_str().to_string())
    }

    /// Why Health is not ok ("" when it is).
    #[zbus(property)]
    fn health_reason(&self) -> zbus::fdo::Result<String> {
        Ok(self.view()?.status.reason)
    }

    /// Bytes of data space.
    #[zbus(property)]
    fn data_size(&self) -> zbus::fdo::Result<u64> {
        Ok(self.view()?.status.data_size)
    }

    /// Bytes of data space in use.
    #[zbus(property)]
    fn data_used(&self) -> zbus::fdo::Result<u64> {
        Ok(self.view()?.status.data_used)
    }

    /// Metadata space (thin: bytes; directory pools: inodes).
    #[zbus(property)]
    fn metadata_size(&self) -> zbus::fdo::Result<u64> {
        Ok(self.view()?.status.metadata_size)
    }

    /// Metadata space in use, in the unit of MetadataSize.
    #[zbus(property)]
    fn metadata_used(&self) -> zbus::fdo::Result<u64> {
        Ok(self.view()?.status.metadata_used)
    }

    /// Layers of every kind in this pool.
    #[zbus(property)]
    fn layer_count(&self) -> zbus::fdo::Result<u64> {
        Ok(self.view()?.status.layer_count)
    }

    /// Device space not allocated to any chunk, in bytes (btrfs: a balance
    /// returns nearly empty chunks here). 0 = not applicable to this
    /// driver (overlay, vfs). Below the pool's balance_unallocated_percent
    /// of the device, Health is at least warning and the daemon starts a
    /// balance by itself.
    #[zbus(property)]
    fn unallocated(&self) -> zbus::fdo::Result<u64> {
        Ok(self.view()?.status.unallocated.unwrap_or(0))
    }

    /// The last trim: (end time µs since the epoch, bytes as the job's
    /// Bytes, outcome "ok", "failed: <why>" or "cancelled"); (0, 0, "") if
    /// never. Kept in the store across restarts.
    #[zbus(property)]
    fn last_trim(&self) -> zbus::fdo::Result<LastRun> {
        self.last_run("trim")
    }

    /// How maintenance is scheduled, per job kind: e.g. `trim "weekly"
    /// (layerd-trim@main.timer)`; `none: no maintenance configured`; or
    /// `unscheduled: no systemd manager reachable (…)`, where Trim and
    /// Balance still run on demand. Set once at start-up.
    #[zbus(property(emits_changed_signal = "const"))]
    fn maintenance_schedule(&self) -> zbus::fdo::Result<String> {
        self.engine
            .maintenance_schedule(&self.name)
            .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))
    }

    /// The last balance, as LastTrim (bytes relocated).
    #[zbus(property)]
    fn last_balance(&self) -> zbus::fdo::Result<LastRun> {
        self.last_run("balance")
    }

    /// Starts a trim (FITRIM: free space is discarded down to the storage,
    /// a loop file gets holes back) and returns its Job object at once.
    /// Busy while a trim or balance runs on the pool (the message names
    /// it). Root only.
    #[zbus(out_args("job"))]
    async fn trim(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<OwnedObjectPath, DbusError> {
        self.access.require_root(conn, &hdr, "Trim").await?;
        self.start(conn, JobKind::Trim).await
    }

    /// Starts a balance (btrfs) and returns its Job object at once.
    /// options: "dusage" and "musage", each a usage percentage (0–100) or
    /// an array of them run as escalating passes (e.g. [0, 5, 10]); absent
    /// keys take the pool's configured balance_dusage/balance_musage.
    /// Unknown keys are InvalidArgument; other drivers NotSupported; Busy
    /// while a trim or balance runs on the pool. Root only.
    #[zbus(out_args("job"))]
    async fn balance(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        options: HashMap<String, OwnedValue>,
    ) -> Result<OwnedObjectPath, DbusError> {
        self.access.require_root(conn, &hdr, "Balance").await?;
        let req = BalanceRequest::from_options(&balance_options(options)?)?;
        self.start(conn, JobKind::Balance(req)).await
    }

    /// Grows the pool's storage by `bytes` and returns its Job object.
    /// NotSupported for directory pools (overlay, vfs: grow the file
    /// system holding them instead). Root only.
    #[zbus(out_args("job"))]
    async fn extend(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        bytes: u64,
    ) -> Result<OwnedObjectPath, DbusError> {
        self.access.require_root(conn, &hdr, "Extend").await?;
        self.start(conn, JobKind::Extend(bytes)).await
    }

    /// Health moved to `level`; percentages of data and metadata in use.
    /// Also sent once at start-up for each pool that is not ok.
    #[zbus(signal)]
    pub async fn usage_alert(
        emitter: &SignalEmitter<'_>,
        level: &str,
        data_percent: f64,
        metadata_percent: f64,
    ) -> zbus::Result<()>;
}
