//! Growth: Extend (a loop image grows, the device is resized), the
//! devices the monitor watches, and taking up a device that grew.

use super::*;

impl Btrfs {
    /// `loop`: the image grows by `bytes` (sparse), the loop device picks
    /// up its new size (`LOOP_SET_CAPACITY`), and the btrfs device is
    /// resized to the whole device. `device`: only the resize (the admin
    /// grew the device). `existing`: not layerd's to grow. Returns the rise
    /// of the btrfs device size.
    pub(super) fn grow(&self, bytes: u64, ctl: &JobControl) -> Result<u64, BackendError> {
        if self.backing == "existing" {
            return Err(BackendError::NotSupported(format!(
                "the btrfs pool at {} has backing \"existing\": layerd did not make its file system and does not grow it; grow it with btrfs filesystem resize",
                self.root.display()
            )));
        }
        let devs = sys::devices(&self.root)
            .map_err(|e| BackendError::io("btrfs device info", &self.root, e))?;
        let dev = devs
            .iter()
            .find(|d| same_device(std::slice::from_ref(&d.path), &self.device))
            .or(devs.first())
            .cloned()
            .ok_or_else(|| unusable(&self.root, "the btrfs reports no device"))?;
        let before: u64 = devs.iter().map(|d| d.total_bytes).sum();
        if self.backing == "loop" {
            let image = image_path(&self.root);
            let f = fs::OpenOptions::new()
                .write(true)
                .open(&image)
                .map_err(|e| BackendError::io("open", &image, e))?;
            let len = f
                .metadata()
                .map_err(|e| BackendError::io("stat", &image, e))?
                .len();
            let new = len.checked_add(bytes).ok_or_else(|| {
                BackendError::NotSupported(format!("{len} + {bytes} bytes is too large"))
            })?;
            // Sparse: the host's space is taken only as layers write.
            f.set_len(new)
                .map_err(|e| BackendError::io("grow the pool image", &image, e))?;
            f.sync_all()
                .map_err(|e| BackendError::io("fsync", &image, e))?;
            ctl.set_progress(0.3);
            let loops = loopdev::find_backing(&image)
                .map_err(|e| BackendError::io("find loop device", &image, e))?;
            let ld = loops
                .iter()
                .find(|l| same_device(&[l.path()], &self.device))
                .or(loops.first())
                .ok_or_else(|| unusable(&image, "no loop device is bound to the pool image"))?;
            loopdev::refresh_capacity(ld)
                .map_err(|e| BackendError::io("refresh loop capacity", &ld.path(), e))?;
            tracing::info!(image = %image.display(), from = len, to = new, "pool image grown");
        }
        ctl.set_progress(0.6);
        sys::resize_max(&self.root, dev.devid)
            .map_err(|e| BackendError::io("btrfs resize", &self.root, e))?;
        let after: u64 = sys::devices(&self.root)
            .map_err(|e| BackendError::io("btrfs device info", &self.root, e))?
            .iter()
            .map(|d| d.total_bytes)
            .sum();
        let grown = after.saturating_sub(before);
        ctl.set_bytes(grown);
        ctl.set_progress(1.0);
        tracing::info!(pool = %self.root.display(), devid = dev.devid, before, after, "btrfs resized to its device");
        Ok(grown)
    }

    /// Every device of the file system (a `device` backing's, the loop
    /// device of a `loop` one, those of an `existing` btrfs).
    pub(super) fn devices(&self) -> Vec<crate::shared::device::BackingDevice> {
        let devs = match sys::devices(&self.root) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(pool = %self.root.display(), error = %e, "cannot list the btrfs devices to watch");
                return Vec::new();
            }
        };
        devs.iter()
            .filter_map(|d| {
                let r = rdev(&d.path)?;
                let (major, minor) = (
                    nix::sys::stat::major(r) as u32,
                    nix::sys::stat::minor(r) as u32,
                );
                Some(crate::shared::device::BackingDevice {
                    role: "device",
                    major,
                    minor,
                    name: crate::sys::blockdev::name_of_devno(major, minor)
                        .unwrap_or_else(|| d.path.display().to_string()),
                })
            })
            .collect()
    }

    /// `device` backing: a device that grew is taken up whole, as Extend
    /// does (`btrfs filesystem resize <devid>:max`). A `loop` pool grows
    /// by Extend, an `existing` one is not layerd's to resize.
    pub(super) fn take_up_resize(&self) -> Result<Option<u64>, BackendError> {
        if self.backing != "device" {
            return Ok(None);
        }
        let devs = sys::devices(&self.root)
            .map_err(|e| BackendError::io("btrfs device info", &self.root, e))?;
        let mut grown = false;
        for d in &devs {
            let Some(r) = rdev(&d.path) else { continue };
            let (major, minor) = (
                nix::sys::stat::major(r) as u32,
                nix::sys::stat::minor(r) as u32,
            );
            let size = crate::sys::blockdev::sectors_of_devno(major, minor)
                .map_err(|e| BackendError::io("read device size", &d.path, e))?
                * 512;
            if size > d.total_bytes {
                sys::resize_max(&self.root, d.devid)
                    .map_err(|e| BackendError::io("btrfs resize", &self.root, e))?;
                tracing::info!(pool = %self.root.display(), devid = d.devid, from = d.total_bytes, to = size, "btrfs device grew: resized to it");
                grown = true;
            }
        }
        if !grown {
            return Ok(None);
        }
        Ok(Some(self.space()?.data_size))
    }
}
