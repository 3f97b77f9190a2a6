//! Typed client proxies for layerd's D-Bus API, for runtimes, the test
//! harness and the benchmarks. They mirror `dbus/org.layerd.Layerd1.xml`.

use std::collections::HashMap;

use zbus::proxy;
use zbus::zvariant::{OwnedObjectPath, Value};

/// A mount spec as `mount(8)` takes it: (type, source, options).
pub type MountSpec = (String, String, Vec<String>);

/// One `Walk` row: name, parent, kind, pool, labels, created µs, updated µs.
pub type WalkEntry = (
    String,
    String,
    String,
    String,
    HashMap<String, String>,
    u64,
    u64,
);

/// `Stat`/`Update` reply: name, parent, kind, labels, created µs, updated µs.
pub type StatReply = (String, String, String, HashMap<String, String>, u64, u64);

/// A pool's `LastTrim`/`LastBalance`: (end time µs, bytes, outcome "ok",
/// "failed: …", "cancelled"; "" = never).
pub type LastRun = (u64, u64, String);

#[proxy(
    interface = "org.layerd.Layerd1.Manager",
    default_service = "org.layerd.Layerd1",
    default_path = "/org/layerd/Layerd1"
)]
pub trait Manager {
    fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> zbus::Result<Vec<MountSpec>>;
    fn view(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> zbus::Result<Vec<MountSpec>>;
    fn commit(&self, name: &str, key: &str, labels: HashMap<String, String>) -> zbus::Result<()>;
    fn remove(&self, key: &str) -> zbus::Result<()>;
    fn stat(&self, key: &str) -> zbus::Result<StatReply>;
    fn update(
        &self,
        key: &str,
        labels: HashMap<String, String>,
        fieldpaths: Vec<String>,
    ) -> zbus::Result<StatReply>;
    fn usage(&self, key: &str) -> zbus::Result<(u64, u64)>;
    fn mounts(&self, key: &str) -> zbus::Result<Vec<MountSpec>>;
    fn walk(&self, filters: Vec<String>) -> zbus::Result<Vec<WalkEntry>>;
    fn mount(&self, key: &str) -> zbus::Result<String>;
    fn unmount(&self, key: &str) -> zbus::Result<()>;
    fn cleanup(&self) -> zbus::Result<u64>;
    fn apply(&self, key: &str, fd: zbus::zvariant::Fd<'_>) -> zbus::Result<u64>;
    fn export(&self, key: &str, fd: zbus::zvariant::Fd<'_>) -> zbus::Result<u64>;
    fn import_aufs(&self, path: &str, pool: &str, key_prefix: &str) -> zbus::Result<Vec<String>>;

    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn default_pool(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn pools(&self) -> zbus::Result<Vec<OwnedObjectPath>>;
}

#[proxy(
    interface = "org.layerd.Layerd1.Pool",
    default_service = "org.layerd.Layerd1"
)]
pub trait Pool {
    #[zbus(property)]
    fn name(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn driver(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn backing(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn path(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn health(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn health_reason(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn data_size(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn data_used(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn metadata_size(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn metadata_used(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn layer_count(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn unallocated(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn last_trim(&self) -> zbus::Result<LastRun>;
    #[zbus(property)]
    fn last_balance(&self) -> zbus::Result<LastRun>;
    #[zbus(property)]
    fn maintenance_schedule(&self) -> zbus::Result<String>;

    /// Returns the Job object's path.
    fn trim(&self) -> zbus::Result<OwnedObjectPath>;
    /// Options: "dusage", "musage" → a percentage or an array of them.
    fn balance(&self, options: HashMap<&str, Value<'_>>) -> zbus::Result<OwnedObjectPath>;
    /// Bytes to add.
    fn extend(&self, bytes: u64) -> zbus::Result<OwnedObjectPath>;

    #[zbus(signal)]
    fn usage_alert(
        &self,
        level: String,
        data_percent: f64,
        metadata_percent: f64,
    ) -> zbus::Result<()>;
}

/// `org.layerd.Layerd1.Job` at `/org/layerd/Layerd1/jobs/<n>`; build it with
/// `.path(job_path)`.
#[proxy(
    interface = "org.layerd.Layerd1.Job",
    default_service = "org.layerd.Layerd1"
)]
pub trait Job {
    fn cancel(&self) -> zbus::Result<()>;

    #[zbus(property)]
    fn operation(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn pool(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn progress(&self) -> zbus::Result<f64>;
    #[zbus(property)]
    fn progress_valid(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn bytes(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn start_time(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn end_time(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn cancelable(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn outcome(&self) -> zbus::Result<String>;

    #[zbus(signal)]
    fn completed(&self, success: bool, message: String) -> zbus::Result<()>;
}
