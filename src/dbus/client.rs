//! Typed client proxies for layerd's D-Bus API, for runtimes, the test
//! harness and the benchmarks. They mirror `dbus/org.layerd.Layerd1.xml`.

use std::collections::HashMap;

use zbus::proxy;
use zbus::zvariant::OwnedObjectPath;

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
    fn data_size(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn data_used(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn metadata_size(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn metadata_used(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn layer_count(&self) -> zbus::Result<u64>;

    #[zbus(signal)]
    fn usage_alert(
        &self,
        level: String,
        data_percent: f64,
        metadata_percent: f64,
    ) -> zbus::Result<()>;
}
