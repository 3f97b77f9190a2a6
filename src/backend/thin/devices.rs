//! Opening a pool and the life of its dm devices: activate, deactivate,
//! the base device and its file system, snapshots, destroy.

use super::*;

impl Thin {
    /// Opens the pool `name`: adopts an active one, else checks and
    /// activates its metadata and data (creating loop files as needed),
    /// then makes sure the base device exists with its file system.
    pub fn open(name: &str, o: &Options) -> Result<Self, BackendError> {
        let dm = DM::new().map_err(|e| {
            unusable(
                Path::new("/dev/mapper/control"),
                format!("device-mapper is not available ({e}); load dm-thin-pool (modprobe dm-thin-pool) or use another driver"),
            )
        })?;
        let own_pool = format!("layerd-{name}-pool");
        let (backing, path, token_dir, pool_dm) = match &o.setup {
            Setup::Loop { dir, .. } => ("loop", dir.clone(), dir.clone(), own_pool),
            Setup::Device { data, .. } => ("device", data.clone(), o.work_dir.clone(), own_pool),
            Setup::Existing { pool } => {
                let n = pool
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| unusable(pool, "names no device-mapper device"))?;
                ("existing", pool.clone(), o.work_dir.clone(), n.to_string())
            }
        };
        let active = dm.device_info(&DevId::Name(dm_name(&pool_dm)?)).ok();
        let pool_dev = match (active, &o.setup) {
            (Some(info), _) => {
                let (_, table) = dm
                    .table_status(
                        &DevId::Name(dm_name(&pool_dm)?),
                        DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE),
                    )
                    .map_err(|e| dm_err("table status", &pool_dm, e))?;
                if table.first().map(|t| t.2.as_str()) != Some("thin-pool") {
                    return Err(unusable(
                        &blockdev::mapper_path(&pool_dm),
                        "is not a thin pool (its table has no thin-pool target)",
                    ));
                }
                let params = table.first().map(|t| t.3.as_str()).unwrap_or("");
                check_adopted(&dm, name, params, &o.setup)?;
                tracing::info!(pool = name, dm = %pool_dm, "thin pool is active: adopted");
                info.device()
            }
            (None, Setup::Existing { pool }) => {
                return Err(unusable(
                    pool,
                    "no such active device-mapper device; activate the thin pool (e.g. lvchange -ay) first",
                ))
            }
            (None, setup) => activate_pool(&dm, name, &pool_dm, setup, o)?,
        };
        // Root-only (sys/private.rs), as everything on the way to layers.
        let scratch = token_dir.join("t");
        for d in [&token_dir, &scratch] {
            private::ensure_dir(d).map_err(|e| BackendError::io("mkdir", d, e))?;
        }
        let pending = read_pending(&token_dir);
        let t = Thin {
            dm,
            name: name.to_string(),
            pool_dm,
            pool_dev,
            backing,
            path,
            token_dir,
            block_size: o.block_size,
            base_sectors: o.base_size / SECTOR,
            fs: o.fs,
            lock: Mutex::new(()),
            pending: Mutex::new(pending),
            meta_dm: match &o.setup {
                Setup::Existing { .. } => None,
                _ => Some(format!("layerd-{name}-meta")),
            },
            freed: AtomicU64::new(0),
            files: match &o.setup {
                Setup::Loop { dir, .. } => Some(LoopFiles {
                    data: dir.join("data.img"),
                    meta: dir.join("metadata.img"),
                }),
                _ => None,
            },
            auto: match &o.setup {
                Setup::Loop { .. } if o.autoextend_percent > 0 => Some(AutoGrow {
                    percent: o.autoextend_percent,
                    max: o.autoextend_max,
                }),
                _ => None,
            },
            warn_percent: o.warn_percent,
        };
        t.ensure_base()?;
        // Removals left deferred before a restart or reboot: their holders
        // are likely gone now.
        if let Err(e) = t.finish_pending() {
            tracing::warn!(pool = name, error = %e, "finishing deferred removals failed; Cleanup retries them");
        }
        tracing::info!(pool = name, dm = %t.pool_dm, backing, "thin pool ready");
        Ok(t)
    }

    pub(super) fn layer_name(&self, id: u64) -> String {
        format!("layerd-{}-{id}", self.name)
    }

    pub(super) fn base_name(&self) -> String {
        format!("layerd-{}-base", self.name)
    }

    pub(super) fn pool_id(&self) -> Result<DevId<'_>, BackendError> {
        Ok(DevId::Name(dm_name(&self.pool_dm)?))
    }

    /// Sends a message to the pool.
    pub(super) fn message(&self, msg: &str) -> Result<(), DmError> {
        let id = DevId::Name(DmName::new(&self.pool_dm)?);
        self.dm.target_msg(&id, None, msg).map(|_| ())
    }

    pub(super) fn is_active(&self, dm_name_s: &str) -> bool {
        DmName::new(dm_name_s)
            .ok()
            .is_some_and(|n| self.dm.device_info(&DevId::Name(n)).is_ok())
    }

    /// Activates thin device `thin` as `name` (no-op if active); makes sure
    /// its /dev/mapper node exists. Fails if the pool has no such thin id.
    pub(super) fn activate(&self, name: &str, thin: u32) -> Result<PathBuf, BackendError> {
        let n = dm_name(name)?;
        let info = match self.dm.device_info(&DevId::Name(n)) {
            Ok(info) => info,
            Err(_) => {
                self.dm
                    .device_create(n, None, dev_options())
                    .map_err(|e| dm_err("create device", name, e))?;
                let table = [(
                    0u64,
                    self.base_sectors,
                    "thin".to_string(),
                    format!("{} {thin}", self.pool_dev),
                )];
                let loaded = self
                    .dm
                    .table_load(&DevId::Name(n), &table, DmOptions::default())
                    .and_then(|_| {
                        self.dm
                            .device_suspend(&DevId::Name(n), DmOptions::default())
                    });
                match loaded {
                    Ok(info) => info,
                    Err(e) => {
                        let _ = self.dm.device_remove(&DevId::Name(n), dev_options());
                        return Err(dm_err("activate thin device", name, e));
                    }
                }
            }
        };
        let dev = info.device();
        blockdev::ensure_mapper_node(name, dev.major, dev.minor)
            .map_err(|e| BackendError::io("make device node", &blockdev::mapper_path(name), e))
    }

    /// Removes the dm device `name`; true if it is gone, false if it was
    /// still busy and is now removed deferred (when its last user closes).
    pub(super) fn deactivate(&self, name: &str) -> Result<bool, BackendError> {
        let n = dm_name(name)?;
        if self.dm.device_info(&DevId::Name(n)).is_err() {
            blockdev::remove_mapper_node(name);
            return Ok(true);
        }
        // The crate retries EBUSY a few times (udev may hold it briefly).
        match self.dm.device_remove(&DevId::Name(n), dev_options()) {
            Ok(_) => {
                blockdev::remove_mapper_node(name);
                Ok(true)
            }
            Err(e) if matches!(dm_errno(&e), Some(libc::ENXIO) | Some(libc::ENODEV)) => {
                blockdev::remove_mapper_node(name);
                Ok(true)
            }
            Err(e) if dm_errno(&e) == Some(libc::EBUSY) => {
                tracing::warn!(device = name, "thin device is busy: removing it deferred");
                self.dm
                    .device_remove(
                        &DevId::Name(n),
                        dev_options().set_flags(DmFlags::DM_DEFERRED_REMOVE),
                    )
                    .map_err(|e| dm_err("deferred remove", name, e))?;
                Ok(false)
            }
            Err(e) => Err(dm_err("remove device", name, e)),
        }
    }

    /// Deletes a thin id from the pool; deleting an absent id is no error.
    pub(super) fn delete_thin(&self, thin: u32) -> Result<(), BackendError> {
        let _g = crate::shared::sync::lock(&self.lock);
        match self.message(&format!("delete {thin}")) {
            Ok(()) => Ok(()),
            Err(e) if dm_errno(&e) == Some(libc::ENODATA) => Ok(()),
            Err(e) => Err(dm_err("delete thin id", &self.pool_dm, e)),
        }
    }

    /// The base device: created once (thin id 0) with an empty file system.
    pub(super) fn ensure_base(&self) -> Result<(), BackendError> {
        {
            let _g = crate::shared::sync::lock(&self.lock);
            match self.message(&format!("create_thin {BASE_ID}")) {
                Ok(()) => tracing::info!(pool = %self.name, "base thin device created"),
                Err(e) if dm_errno(&e) == Some(libc::EEXIST) => {}
                Err(e) => return Err(dm_err("create base device", &self.pool_dm, e)),
            }
        }
        let name = self.base_name();
        let node = self.activate(&name, BASE_ID)?;
        let sig = blockdev::fs_signature(&node).map_err(|e| BackendError::io("read", &node, e))?;
        let r = match sig {
            Some(s) if s == self.fs.as_str() => Ok(()),
            Some(s) => Err(unusable(
                &node,
                format!(
                    "the base device holds {s}, but the pool is configured with fs = {:?}; the file system of a thin pool cannot change",
                    self.fs.as_str()
                ),
            )),
            None => self.mkfs(&node),
        };
        // Inactive while not needed: snapshots of it need no suspend.
        let _ = self.deactivate(&name);
        r
    }

    pub(super) fn mkfs(&self, node: &Path) -> Result<(), BackendError> {
        tracing::info!(device = %node.display(), fs = self.fs.as_str(), "formatting the pool's base device");
        let mut cmd = match self.fs {
            // -K: the new thin device maps nothing; discarding it is moot.
            Fs::Xfs => {
                let mut c = Command::new("mkfs.xfs");
                c.args(["-q", "-K"]);
                c
            }
            Fs::Ext4 => {
                let mut c = Command::new("mkfs.ext4");
                c.args([
                    "-q",
                    "-E",
                    "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
                ]);
                c
            }
        };
        let out = cmd
            .arg(node)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| BackendError::io("run mkfs", node, e))?;
        if !out.status.success() {
            return Err(unusable(
                node,
                format!(
                    "mkfs.{} failed ({}): {}",
                    self.fs.as_str(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(())
    }

    /// Activates layer `id`, returning its node.
    pub(super) fn ensure_active(&self, id: u64) -> Result<PathBuf, BackendError> {
        self.activate(&self.layer_name(id), thin_id(id)?)
    }

    pub(super) fn spec(&self, l: LayerRef<'_>) -> Result<MountSpec, BackendError> {
        let node = self.ensure_active(l.id)?;
        let mut options = Vec::new();
        if self.fs == Fs::Xfs {
            options.push("nouuid".to_string());
        }
        options.push(if l.kind == Kind::Active { "rw" } else { "ro" }.to_string());
        Ok(MountSpec {
            fstype: self.fs.as_str().into(),
            source: node.to_string_lossy().into_owned(),
            options,
        })
    }

    /// Mapped bytes of dm device `name`.
    pub(super) fn mapped(&self, name: &str) -> Result<u64, BackendError> {
        let (_, lines) = self
            .dm
            .table_status(&DevId::Name(dm_name(name)?), DmOptions::default())
            .map_err(|e| dm_err("thin status", name, e))?;
        let line = lines
            .first()
            .ok_or_else(|| unusable(&blockdev::mapper_path(name), "has no table"))?;
        match ThinStatus::from_str(&line.3) {
            Ok(ThinStatus::Working(w)) => Ok(*w.nr_mapped_sectors * SECTOR),
            Ok(_) => Err(unusable(
                &blockdev::mapper_path(name),
                "the thin device reports a failure",
            )),
            Err(e) => Err(dm_err("parse thin status", name, e)),
        }
    }

    /// Inodes in use on a thin device: statvfs where it is mounted, else
    /// the superblock's counters.
    pub(super) fn inodes_used(&self, node: &Path) -> u64 {
        let src = node.to_string_lossy();
        if let Ok(mounts) = mountinfo::read_mountinfo() {
            if let Some(m) = mounts.iter().find(|m| m.source == src) {
                if let Ok(st) = nix::sys::statvfs::statvfs(&m.mount_point) {
                    return st.files().saturating_sub(st.files_free());
                }
            }
        }
        blockdev::superblock_inodes_used(node)
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    pub(super) fn pool_status(&self) -> Result<ThinPoolStatus, BackendError> {
        let (_, lines) = self
            .dm
            .table_status(&self.pool_id()?, DmOptions::default())
            .map_err(|e| dm_err("pool status", &self.pool_dm, e))?;
        let line = lines
            .first()
            .ok_or_else(|| unusable(&self.path, "the pool device has no table"))?;
        ThinPoolStatus::from_str(&line.3).map_err(|e| dm_err("parse pool status", &self.pool_dm, e))
    }

    pub(super) fn data_used(&self) -> Option<u64> {
        match self.pool_status().ok()? {
            ThinPoolStatus::Working(w) => Some(*w.usage.used_data * self.block_size),
            _ => None,
        }
    }

    /// Discards (when nobody holds it), deactivates and deletes layer `id`.
    pub(super) fn destroy(&self, id: u64) -> Result<(), BackendError> {
        let thin = thin_id(id)?;
        let name = self.layer_name(id);
        let before = self.data_used();
        // An inactive device (after a reboot, a crash, a deferred removal)
        // may still map blocks: activate it so they are discarded too. No
        // such thin id: activation fails and there is nothing to discard.
        if self.is_active(&name) || self.activate(&name, thin).is_ok() {
            let node = blockdev::mapper_path(&name);
            match blockdev::open_exclusive(&node) {
                Ok(f) => {
                    // Blocks only this device maps go back to the pool and,
                    // by discard passdown, to the storage below.
                    if let Err(e) = blockdev::discard_all(&f) {
                        tracing::debug!(device = %name, error = %e, "discard before removal failed");
                    }
                }
                Err(e) => {
                    tracing::debug!(device = %name, error = %e, "device is held: not discarded");
                }
            }
        }
        if !self.deactivate(&name)? {
            self.set_pending(id, true)?;
            return Ok(());
        }
        self.delete_thin(thin)?;
        self.set_pending(id, false)?;
        if let (Some(b), Some(a)) = (before, self.data_used()) {
            self.freed.fetch_add(b.saturating_sub(a), Ordering::Relaxed);
        }
        Ok(())
    }
}
