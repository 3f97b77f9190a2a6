//! Growth: automatic extension of loop pools, Extend, and taking up a
//! grown device.

use super::*;

impl Thin {
    /// Automatic growth of a loop pool: the data file by its step (capped
    /// at `autoextend_max`) while data use is at the warning level, the
    /// metadata file likewise (capped at the kernel's maximum) while
    /// metadata use is; one reload for both. At the maximum the pool
    /// switches to `error_if_no_space`. `None` when nothing grew.
    pub(super) fn grow_auto(&self) -> Result<Option<u64>, BackendError> {
        let (Some(files), Some(auto)) = (&self.files, &self.auto) else {
            return Ok(None);
        };
        let _l = crate::shared::sync::lock(&self.lock);
        // Several samplers (dm events, the timer, requests) may ask at
        // once: grow only what is still at the warning level.
        let ThinPoolStatus::Working(w) = self.pool_status()? else {
            return Ok(None);
        };
        let warn = self.warn_percent as u64;
        let at_warn = |used: u64, total: u64| total > 0 && used * 100 >= total * warn;
        let mut data_to = None;
        if at_warn(*w.usage.used_data, *w.usage.total_data) {
            let cur = file_len(&files.data)?;
            data_to = next_data_size(cur, auto.percent, auto.max, self.block_size);
        }
        let mut meta_to = None;
        if at_warn(*w.usage.used_meta, *w.usage.total_meta) {
            let cur = file_len(&files.meta)?;
            meta_to = next_metadata_size(cur, auto.percent);
            if meta_to.is_none() {
                tracing::error!(pool = %self.name, size = cur, "thin pool metadata is at the kernel's maximum and cannot grow");
            }
        }
        if data_to.is_none() && meta_to.is_none() {
            return Ok(None);
        }
        self.grow_files(files, data_to, meta_to)?;
        Ok(Some(file_len(&files.data)?))
    }

    /// The one growth path of a loop pool (automatic growth and Extend):
    /// grows the data and/or metadata file (sparse: `set_len`), refreshes
    /// their loop devices' capacity, and with the pool suspended reloads
    /// the grown linear devices and the pool table (new length and low
    /// water mark; dm-thin picks up a larger metadata device when the pool
    /// resumes, thin-provisioning.rst "Resizing"). `error_if_no_space` is
    /// set once the pool cannot grow by itself any more. Caller holds
    /// `self.lock`.
    pub(super) fn grow_files(
        &self,
        files: &LoopFiles,
        data_to: Option<u64>,
        meta_to: Option<u64>,
    ) -> Result<(), BackendError> {
        let mut grown = Vec::new();
        for (file, to, suffix) in [
            (&files.data, data_to, "data"),
            (&files.meta, meta_to, "meta"),
        ] {
            let Some(new) = to else { continue };
            let f = fs::OpenOptions::new()
                .write(true)
                .open(file)
                .map_err(|e| BackendError::io("open", file, e))?;
            let cur = f
                .metadata()
                .map_err(|e| BackendError::io("stat", file, e))?
                .len();
            if new <= cur {
                continue;
            }
            f.set_len(new)
                .and_then(|()| f.sync_all())
                .map_err(|e| BackendError::io("grow", file, e))?;
            let lo = loopdev::find_backing(file)
                .map_err(|e| BackendError::io("find loop", file, e))?
                .into_iter()
                .next()
                .ok_or_else(|| unusable(file, "is not loop-attached"))?;
            loopdev::refresh_capacity(&lo)
                .map_err(|e| BackendError::io("refresh loop capacity", &lo.path(), e))?;
            let lo_dev = devno(&lo.path())?;
            grown.push((format!("layerd-{}-{suffix}", self.name), new, lo_dev, cur));
        }
        if grown.is_empty() {
            return Ok(());
        }
        self.reload_grown(&grown)
    }

    /// Reloads the grown linear devices under the pool (`grown`: dm name,
    /// new bytes, device under it, old bytes) and the pool table with the
    /// new length and low water mark (at the warning level), adding
    /// `error_if_no_space` once the pool cannot grow by itself; the pool is
    /// suspended around it and always resumed. Used by loop growth and by a
    /// data device that grew (udev). Caller holds `self.lock`.
    pub(super) fn reload_grown(
        &self,
        grown: &[(String, u64, Device, u64)],
    ) -> Result<(), BackendError> {
        let pool_id = self.pool_id()?;
        let (_, table) = self
            .dm
            .table_status(
                &pool_id,
                DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE),
            )
            .map_err(|e| dm_err("pool table", &self.pool_dm, e))?;
        let line = table
            .first()
            .ok_or_else(|| unusable(&self.path, "the pool device has no table"))?;
        let mut params =
            devicemapper::ThinPoolTargetParams::from_str(&format!("{} {}", line.2, line.3))
                .map_err(|e| dm_err("parse pool table", &self.pool_dm, e))?;
        // The pool is as long as its data device.
        let data_len = grown
            .iter()
            .find(|g| g.0.ends_with("-data"))
            .map_or(line.1 * SECTOR, |g| g.1);
        let sectors = data_len / SECTOR;
        let blocks = sectors / (self.block_size / SECTOR);
        params.low_water_mark =
            DataBlocks(blocks * (100 - self.warn_percent.min(100) as u64) / 100);
        let can_grow = self.auto.as_ref().is_some_and(|a| data_len < a.max);
        if !can_grow {
            params.feature_args.insert("error_if_no_space".to_string());
        }
        let noflush = DmOptions::default().set_flags(DmFlags::DM_SUSPEND | DmFlags::DM_NOFLUSH);
        self.dm
            .device_suspend(&pool_id, noflush)
            .map_err(|e| dm_err("suspend pool", &self.pool_dm, e))?;
        let r = (|| -> Result<(), DmError> {
            for (name, new, lo_dev, _) in grown {
                let id = DevId::Name(DmName::new(name)?);
                self.dm.table_load(
                    &id,
                    &[(0, new / SECTOR, "linear".into(), format!("{lo_dev} 0"))],
                    DmOptions::default(),
                )?;
                self.dm.device_suspend(&id, noflush)?;
                self.dm.device_suspend(&id, DmOptions::default())?;
            }
            use devicemapper::TargetParams;
            self.dm.table_load(
                &pool_id,
                &[(0, sectors, "thin-pool".into(), params.param_str())],
                DmOptions::default(),
            )?;
            Ok(())
        })();
        // Resume whatever happened: a suspended pool blocks every writer.
        let resumed = self.dm.device_suspend(&pool_id, DmOptions::default());
        r.map_err(|e| dm_err("reload pool", &self.pool_dm, e))?;
        resumed.map_err(|e| dm_err("resume pool", &self.pool_dm, e))?;
        for (name, new, _, from) in grown {
            tracing::warn!(pool = %self.name, device = %name, from, to = new, error_if_no_space = !can_grow, "thin pool extended");
        }
        Ok(())
    }

    /// The device under the linear device `layerd-<pool>-<suffix>` and
    /// the table's length in sectors.
    pub(super) fn linear_of(&self, suffix: &str) -> Result<(Device, u64), BackendError> {
        let n = format!("layerd-{}-{suffix}", self.name);
        let (_, table) = self
            .dm
            .table_status(
                &DevId::Name(dm_name(&n)?),
                DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE),
            )
            .map_err(|e| dm_err("table status", &n, e))?;
        let line = table
            .first()
            .ok_or_else(|| unusable(&blockdev::mapper_path(&n), "has no table"))?;
        let dev = line
            .3
            .split(' ')
            .next()
            .and_then(|d| Device::from_str(d).ok())
            .ok_or_else(|| {
                unusable(
                    &blockdev::mapper_path(&n),
                    format!("unexpected linear table {:?}", line.3),
                )
            })?;
        Ok((dev, line.1))
    }

    /// A device under the pool changed size (udev): a larger data device
    /// is taken up whole (in whole pool blocks) by the same reload as
    /// autoextend; a smaller one is an error, since the pool maps blocks
    /// past its end. Metadata devices are only checked here (their growth
    /// is taken up by the metadata extension path).
    pub(super) fn grow_to_device(&self) -> Result<Option<u64>, BackendError> {
        if self.backing == "existing" {
            return Ok(None);
        }
        let _l = crate::shared::sync::lock(&self.lock);
        for suffix in ["meta", "data"] {
            let (dev, len) = self.linear_of(suffix)?;
            let now = blockdev::sectors_of_devno(dev.major, dev.minor).map_err(|e| {
                BackendError::io(
                    "read device size",
                    Path::new(&format!("/sys/dev/block/{dev}")),
                    e,
                )
            })?;
            if now < len {
                return Err(unusable(
                    &self.path,
                    format!(
                        "its {} device {dev} shrank to {} bytes, but the pool uses {} bytes of it",
                        if suffix == "meta" { "metadata" } else { "data" },
                        now * SECTOR,
                        len * SECTOR
                    ),
                ));
            }
            if suffix == "meta" {
                continue;
            }
            let block = self.block_size / SECTOR;
            let sectors = now / block * block;
            if sectors <= len {
                return Ok(None);
            }
            let data = format!("layerd-{}-data", self.name);
            self.reload_grown(&[(data, sectors * SECTOR, dev, len * SECTOR)])?;
            tracing::warn!(pool = %self.name, device = %dev, from = len * SECTOR, to = sectors * SECTOR, "data device grew: thin pool resized to it");
            return Ok(Some(sectors * SECTOR));
        }
        Ok(None)
    }
}

/// The data file's next size under automatic growth: `percent` of it
/// (at least one block) more, capped at `max`, whole blocks; `None` when it
/// cannot grow.
pub(super) fn next_data_size(cur: u64, percent: u8, max: u64, block: u64) -> Option<u64> {
    let step = (cur / 100 * percent as u64).max(block);
    let new = cur.saturating_add(step).min(max) / block * block;
    (new > cur).then_some(new)
}

/// The metadata file's next size under automatic growth: `percent` of it
/// (at least 1 MiB) more, whole MiB, capped at what dm-thin uses.
pub(super) fn next_metadata_size(cur: u64, percent: u8) -> Option<u64> {
    let step = (cur / 100 * percent as u64).max(MIN_META_STEP);
    let new = cur.saturating_add(step).div_ceil(MIN_META_STEP) * MIN_META_STEP;
    let new = new.min(KERNEL_META_MAX);
    (new > cur).then_some(new)
}

pub(super) fn file_len(p: &Path) -> Result<u64, BackendError> {
    Ok(fs::metadata(p)
        .map_err(|e| BackendError::io("stat", p, e))?
        .len())
}
