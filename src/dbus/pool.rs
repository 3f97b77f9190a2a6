//! `org.layerd.Layerd1.Pool` objects at `/org/layerd/Layerd1/pools/<name>`.
//! Properties read the engine's last sample; the event loop in mod.rs
//! emits PropertiesChanged and UsageAlert when the engine reports changes.

use std::sync::Arc;

use zbus::interface;
use zbus::object_server::SignalEmitter;

use crate::engine::{Engine, PoolView};

pub struct Pool {
    pub engine: Arc<Engine>,
    pub name: String,
}

impl Pool {
    fn view(&self) -> zbus::fdo::Result<PoolView> {
        self.engine
            .pool(&self.name)
            .map_err(|e| zbus::fdo::Error::Failed(e.to_string()))
    }
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

    /// Health moved to `level`; percentages of data and metadata in use.
    #[zbus(signal)]
    pub async fn usage_alert(
        emitter: &SignalEmitter<'_>,
        level: &str,
        data_percent: f64,
        metadata_percent: f64,
    ) -> zbus::Result<()>;
}
