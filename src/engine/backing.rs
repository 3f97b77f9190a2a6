//! Block devices under the pools, as the monitor's udev watch reports
//! them (DESIGN "Watching the pools": growth is picked up, disappearance
//! marks the pool failed). The monitor only says which device of which
//! pool changed or went away; what that means is decided here and done by
//! the backend.
//!
//! A pool that lost a device stays `failed` until the daemon restarts:
//! requests that need its storage get FailedPrecondition naming the
//! device; nothing is removed or rewritten, so once the device is back a
//! restart adopts the pool as it was.

use crate::shared::device::BackingDevice;

use super::{lock, Engine};

impl Engine {
    /// Every pool's backing block devices, by pool name.
    pub fn backing_devices(&self) -> Vec<(String, BackingDevice)> {
        let mut out = Vec::new();
        for (name, p) in &self.pools {
            if let Ok(b) = &p.backend {
                out.extend(b.backing_devices().into_iter().map(|d| (name.clone(), d)));
            }
        }
        out
    }

    /// A backing device of `pool` changed (a udev `change`: a resize, a
    /// loop device detached): a grown device is taken up, a vanished or
    /// shrunk one fails the pool. Returns the new data size if it grew.
    pub fn backing_changed(&self, pool: &str, dev: &BackingDevice) -> Option<u64> {
        let p = self.pools.get(pool)?;
        let backend = p.backend.as_ref().ok()?;
        if lock(&p.lost).is_some() {
            return None;
        }
        if !crate::sys::blockdev::present(dev.major, dev.minor) {
            self.backing_removed(pool, dev);
            return None;
        }
        match backend.device_resized() {
            Ok(Some(size)) => {
                tracing::warn!(pool, device = %dev.name, role = dev.role, size, "backing device grew: pool resized");
                let _ = self.sample(pool, true);
                Some(size)
            }
            Ok(None) => None,
            Err(e) => {
                self.fail(
                    pool,
                    format!(
                        "its {} device /dev/{} ({}:{}) changed under it: {e}; nothing was destroyed: restore the device and restart layerd",
                        dev.role, dev.name, dev.major, dev.minor
                    ),
                );
                None
            }
        }
    }

    /// A backing device of `pool` disappeared (a udev `remove`, or its
    /// sysfs entry is gone): the pool is `failed` from now on.
    pub fn backing_removed(&self, pool: &str, dev: &BackingDevice) {
        self.fail(
            pool,
            format!(
                "its {} device /dev/{} ({}:{}) was removed; the pool is out of service, nothing was destroyed: reattach the device and restart layerd",
                dev.role, dev.name, dev.major, dev.minor
            ),
        );
    }

    fn fail(&self, pool: &str, why: String) {
        let Some(p) = self.pools.get(pool) else {
            return;
        };
        {
            let mut lost = lock(&p.lost);
            if lost.is_some() {
                return;
            }
            tracing::error!(pool, reason = %why, "backing device lost: pool failed");
            *lost = Some(why);
        }
        // Health becomes failed: UsageAlert and PropertiesChanged follow.
        let _ = self.sample(pool, true);
    }
}
