//! `thin` driver: a device-mapper thin pool owned by the daemon. Each layer
//! is a thin device holding a file system; a child is a thin snapshot of
//! its parent; a parentless layer is a snapshot of the pool's **base**
//! device, made once with an empty file system (xfs by default, ext4
//! allowed) of `base_size`. Everything is done with device-mapper ioctls
//! through the `devicemapper` crate (Stratis's); the only processes are
//! `thin_check` before a pool is activated and a one-time `mkfs` of the
//! base device.
//!
//! # Names and ids
//!
//! dm names are built from internal ids only: `layerd-<pool>-pool` (the
//! pool), `layerd-<pool>-meta` / `layerd-<pool>-data` (linear devices over
//! the metadata and data devices, as Stratis stacks them, so the pool can
//! be grown by reloading the data table), `layerd-<pool>-base` and
//! `layerd-<pool>-<id>` (layers). dm-thin device ids are 24 bits; the
//! thin id of layer `n` is `n` itself (the store hands out ids from 1 and
//! records the next one durably, so they are allocated and recorded there),
//! and thin id 0 is reserved for the base device. A layer id past 2^24-1 is
//! refused with NotSupported (16.7 million layers in one store).
//! Nothing else is used as a name, so a client key never reaches dm.
//!
//! # Backings
//!
//! * `loop`: the config `path` is a directory holding `data.img` (sparse,
//!   `size` bytes) and `metadata.img` (sparse, `metadata_size` or the rule
//!   below), each loop-attached (direct I/O where the host file system
//!   allows, no autoclear) and found again by backing file after a restart.
//! * `device`: `path` is the data device, `metadata_device` the metadata
//!   device. A metadata device whose first 4 KiB are zero is new: the
//!   kernel formats it when the pool is first loaded.
//! * `existing`: `path` is `/dev/mapper/<name>` of a thin pool someone else
//!   made (LVM's `vg-pool-tpool`, …); layerd never reloads or removes it.
//!   Its thin ids must not collide with layerd's (id 0 and layer ids): use
//!   a pool dedicated to layerd.
//!
//! Metadata size rule (kernel doc thin-provisioning.rst: "48 bytes per data
//! block"): `2 × 48 × data_size / block_size`, the factor 2 leaving room for
//! snapshot sharing and growth, clamped to dm-thin's range [2 MiB, 16 GiB].
//!
//! # Activation
//!
//! A pool already active in the kernel (a daemon restart) is adopted as it
//! is. Otherwise `thin_check` runs on the metadata first, unless it is new
//! (all zero); if the check fails the pool is left inactive and untouched,
//! `open` fails and the engine marks it `failed` with the message, which
//! says how to repair it (thin_repair). The pool table gets 64 KiB blocks
//! by default (`block_size`), `skip_block_zeroing` (every layer holds a
//! file system that never reads blocks it did not write) and discard
//! passdown (the default, so discards reach the loop file and punch
//! holes). Its low water mark sits at the pool's warning level, so the
//! kernel raises a dm event there.
//!
//! # Layers
//!
//! Every layer's device stays active while the layer exists (they are
//! re-activated on demand after a reboot, by `exists`, `mounts`, `usage`).
//! A snapshot of an active origin suspends the origin around the
//! `create_snap` message, as the kernel doc requires. Committed layers are
//! never handed out for writing; their children are snapshots. Mount specs
//! are (`xfs`, `/dev/mapper/layerd-<pool>-<id>`, [`nouuid`, `rw`|`ro`]):
//! every layer's xfs carries the base's UUID, hence `nouuid`.
//!
//! `remove` discards the whole device (if nobody holds it open), so the
//! blocks only it maps go back to the pool and, by passdown, to the loop
//! file; then deactivates it (the crate retries EBUSY; still busy, it is
//! removed deferred, when its last user closes it) and deletes the thin id.
//! A thin id whose device was still open cannot be deleted yet: it is
//! listed in `<token dir>/removing` (its record is gone by then, so only
//! this file remembers it across a restart), and `purge` or the next start
//! re-activates it once its holder is gone, discards it and deletes it.
//! An inactive device (after a reboot or a crash) is re-activated for its
//! discard too. `purge` reports the pool space freed since the last purge.
//!
//! # Reconciliation
//!
//! `scan` reports the active `layerd-<pool>-<id>` devices and every thin
//! id in the pool's metadata, read with `thin_ls -m` from a metadata
//! snapshot the pool holds meanwhile (`reserve_metadata_snap`): after a
//! reboot no layer device is active, and a crash may fall between a
//! `create_snap` and the device's activation, so only the metadata knows
//! such an id. The engine then discards unacknowledged ids (≥ next_id) and
//! never touches ids older than that it has no record of.
//!
//! # Growing and filling up
//!
//! The low water mark sits at the warning level, so crossing it raises a
//! dm event; the monitor waits for those (`sys::dmevent`) and samples, and
//! the engine calls [`Backend::extend_auto`] from the warning level on. A
//! loop pool then grows its data file by `autoextend_percent` (capped at
//! `autoextend_max`), refreshes the loop capacity and reloads the data and
//! pool tables with the new length and low water mark. Metadata is watched
//! and grown the same way: from the warning level of metadata use the
//! metadata file grows by `autoextend_percent` (at least 1 MiB, capped at
//! dm-thin's 15.94 GiB) and the meta linear device and the pool are
//! reloaded; dm-thin takes the larger metadata device on resume. The kernel
//! raises its own metadata event at min(4 MiB, 25%) free; the timer and
//! the sampling before each new layer cover the configured level. `Extend`
//! (Pool.Extend) grows a loop pool's data file by a requested amount
//! through the same path ([`Thin::grow_files`]); the engine refuses it past
//! `autoextend_max`, and device/existing backings with what to do instead.
//! The files' lengths are the truth after a restart. A pool that cannot
//! grow (device backing, no autoextend, or at its maximum) carries
//! `error_if_no_space`, so a writer of a full pool gets ENOSPC instead of
//! hanging; metadata that cannot grow makes Prepare PoolFull naming
//! metadata below `min_free_percent`.
//!
//! # Usage and space
//!
//! Usage is the layer's mapped data minus its parent's (or the base's):
//! thin status reports mapped sectors including blocks shared with the
//! parent, so the difference is what the layer added. Blocks it rewrote
//! in place count once in both (an under-count), and granularity is the
//! pool block size. Inodes likewise, from `statvfs` where the device is
//! mounted, else from the unmounted superblock's counters. `space()` comes
//! from the pool status; `out_of_data_space` reports the pool full,
//! read-only metadata reports read-only, `needs_check` and `Fail` are
//! errors (the engine marks the pool `failed` with the reason).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use devicemapper::{
    DataBlocks, DevId, Device, DmDevice, DmError, DmFlags, DmName, DmOptions, LinearDev,
    LinearDevTargetParams, LinearTargetParams, Sectors, TargetLine, ThinPoolDev, ThinPoolStatus,
    ThinPoolStatusSummary, ThinStatus, DM,
};

use crate::backend::{Backend, BackendError, Found, JobControl, LayerRef, Space};
use crate::shared::layer::Kind;
use crate::sys::blockdev;
use crate::sys::loopdev;
use crate::sys::mount::{self, MountSpec};
use crate::sys::mountinfo;
use crate::sys::private;

/// Thin id of the base device every parentless layer is a snapshot of.
const BASE_ID: u32 = 0;
/// dm-thin device ids are 24 bits.
const MAX_THIN_ID: u64 = (1 << 24) - 1;
const SECTOR: u64 = 512;
/// dm-thin metadata blocks are 4 KiB.
const META_BLOCK: u64 = 4096;
const MIN_META: u64 = 2 << 20;
const MAX_META: u64 = 16 << 30;
/// The most metadata dm-thin uses (`THIN_METADATA_MAX_SECTORS` in
/// drivers/md/dm-thin-metadata.h: 255 × 2^14 blocks of 4 KiB, 15.94 GiB);
/// automatic metadata growth stops there.
const KERNEL_META_MAX: u64 = 255 * (1 << 14) * META_BLOCK;
/// Smallest automatic metadata step: a few percent of a 2 MiB file would
/// only buy a few blocks.
const MIN_META_STEP: u64 = 1 << 20;

/// The file system made on the base device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fs {
    Xfs,
    Ext4,
}

impl Fs {
    pub fn as_str(self) -> &'static str {
        match self {
            Fs::Xfs => "xfs",
            Fs::Ext4 => "ext4",
        }
    }
}

/// Where the pool's devices come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setup {
    /// `<dir>/data.img` and `<dir>/metadata.img`, loop-attached.
    Loop {
        dir: PathBuf,
        size: u64,
        metadata_size: Option<u64>,
    },
    /// A data and a metadata block device.
    Device { data: PathBuf, metadata: PathBuf },
    /// `/dev/mapper/<name>` of a thin pool made by someone else.
    Existing { pool: PathBuf },
}

/// Thin-only settings of a pool (config `block_size`, `base_size`, `fs`…).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub setup: Setup,
    /// Data block size in bytes (multiple of 64 KiB).
    pub block_size: u64,
    /// Size of each layer's device and file system, bytes.
    pub base_size: u64,
    pub fs: Fs,
    /// Health warning level: the low water mark is set there.
    pub warn_percent: u8,
    /// Where the token lives for `device`/`existing` backings (the loop
    /// backing keeps it in its directory).
    pub work_dir: PathBuf,
    /// Loop backing: each automatic extension grows the data file by this
    /// percent of its size, up to `autoextend_max` bytes (0 = never).
    pub autoextend_percent: u8,
    pub autoextend_max: u64,
}

/// Metadata size for `data_size` bytes of `block_size` blocks (module doc).
pub fn metadata_size_for(data_size: u64, block_size: u64) -> u64 {
    let blocks = data_size / block_size.max(1);
    let bytes = blocks.saturating_mul(48).saturating_mul(2);
    // Whole MiB, inside dm-thin's range.
    let bytes = bytes.div_ceil(1 << 20) << 20;
    bytes.clamp(MIN_META, MAX_META)
}

pub struct Thin {
    dm: DM,
    /// The pool's config name, used in dm names.
    name: String,
    /// dm name of the pool device.
    pool_dm: String,
    pool_dev: Device,
    backing: &'static str,
    path: PathBuf,
    /// Directory of the token file.
    token_dir: PathBuf,
    block_size: u64,
    base_sectors: u64,
    fs: Fs,
    /// Serializes pool messages and the suspend around snapshots.
    lock: Mutex<()>,
    /// Layer ids removed while their device was open: deleted by `purge`
    /// or at the next start. Kept in `<token dir>/removing` too, so a
    /// restart cannot forget them (their records are gone by then).
    pending: Mutex<BTreeSet<u64>>,
    /// dm name of the linear device over the pool's metadata, which the
    /// thin tools read (`thin_ls -m` lists thin ids for reconciliation);
    /// `None` for an `existing` pool.
    meta_dm: Option<String>,
    /// Pool bytes freed by removals since the last `purge`.
    freed: AtomicU64,
    /// Loop backing: the data and metadata files (Extend grows them).
    files: Option<LoopFiles>,
    /// Automatic growth of a loop pool (`autoextend_percent` > 0).
    auto: Option<AutoGrow>,
    /// Health warning level, percent: the data low water mark sits there
    /// and automatic growth starts there.
    warn_percent: u8,
}

struct LoopFiles {
    data: PathBuf,
    meta: PathBuf,
}

struct AutoGrow {
    percent: u8,
    /// Largest data file (`autoextend_max`); metadata stops at the
    /// kernel's [`KERNEL_META_MAX`].
    max: u64,
}

fn unusable(path: &Path, why: impl Into<String>) -> BackendError {
    BackendError::Unusable {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// The errno of a failed dm ioctl, if that is what failed.
fn dm_errno(e: &DmError) -> Option<i32> {
    match e {
        DmError::Core(devicemapper::errors::Error::Ioctl(_, _, _, errno)) => Some(**errno as i32),
        _ => None,
    }
}

fn dm_err(op: &'static str, what: &str, e: DmError) -> BackendError {
    let source = match dm_errno(&e) {
        Some(n) => io::Error::from_raw_os_error(n),
        None => io::Error::other(e.to_string()),
    };
    BackendError::Io {
        op,
        path: blockdev::mapper_path(what),
        source,
    }
}

/// Options for layer devices: udev makes no by-uuid links or blkid scans
/// for them (every layer's file system shares the base's UUID, and hosts
/// must not auto-mount or scan layers), as Stratis does for its private
/// devices; `/dev/mapper/<name>` is made by us where udev does not.
fn dev_options() -> DmOptions {
    DmOptions::private()
}

fn dm_name(s: &str) -> Result<&DmName, BackendError> {
    DmName::new(s).map_err(|e| {
        BackendError::NotSupported(format!("{s:?} is not a valid device-mapper name: {e}"))
    })
}

fn thin_id(id: u64) -> Result<u32, BackendError> {
    if id == 0 || id > MAX_THIN_ID {
        return Err(BackendError::NotSupported(format!(
            "layer id {id} does not fit a 24-bit dm-thin device id (1–{MAX_THIN_ID})"
        )));
    }
    Ok(id as u32)
}

fn devno(path: &Path) -> Result<Device, BackendError> {
    match devicemapper::devnode_to_devno(path) {
        Ok(Some(n)) => Ok(Device::from(n)),
        Ok(None) => Err(unusable(path, "is not a block device")),
        Err(e) => Err(unusable(path, e.to_string())),
    }
}

fn sectors_of(path: &Path) -> Result<u64, BackendError> {
    let md = fs::metadata(path).map_err(|e| BackendError::io("stat", path, e))?;
    let bytes = if md.is_file() {
        md.len()
    } else {
        let f = fs::File::open(path).map_err(|e| BackendError::io("open", path, e))?;
        blockdev::size_of(&f).map_err(|e| BackendError::io("BLKGETSIZE64", path, e))?
    };
    Ok(bytes / SECTOR)
}

/// Why Extend does not grow a pool of this backing, and what to do.
pub fn not_growable(backing: &str, path: &Path) -> String {
    match backing {
        "existing" => format!(
            "the thin pool {} has backing \"existing\": layerd did not make it and does not grow it; grow it where it was made (LVM: lvextend -L +SIZE <vg>/<pool>)",
            path.display()
        ),
        _ => format!(
            "the thin pool on {} has backing \"device\": layerd does not grow block devices; grow the data device itself (a larger partition, disk or logical volume)",
            path.display()
        ),
    }
}

/// Runs `thin_check` on the metadata; `Err` says how to repair it.
fn thin_check(meta: &Path) -> Result<(), BackendError> {
    let out = Command::new("thin_check")
        .arg("-q")
        .arg(meta)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            unusable(
                meta,
                format!("cannot run thin_check (install thin-provisioning-tools): {e}"),
            )
        })?;
    if out.status.success() {
        return Ok(());
    }
    Err(unusable(
        meta,
        format!(
            "thin_check found the pool metadata damaged ({}: {}{}). The pool stays inactive and nothing was changed. To repair: \
             stop layerd, run `thin_repair -i {m} -o {m}.repaired` (the output file must be at least as large), \
             check it with `thin_check {m}.repaired`, keep the old file aside and move the repaired one to {m}, then start layerd",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim(),
            m = meta.display()
        ),
    ))
}

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

    fn layer_name(&self, id: u64) -> String {
        format!("layerd-{}-{id}", self.name)
    }

    fn base_name(&self) -> String {
        format!("layerd-{}-base", self.name)
    }

    fn pool_id(&self) -> Result<DevId<'_>, BackendError> {
        Ok(DevId::Name(dm_name(&self.pool_dm)?))
    }

    /// Sends a message to the pool.
    fn message(&self, msg: &str) -> Result<(), DmError> {
        let id = DevId::Name(DmName::new(&self.pool_dm)?);
        self.dm.target_msg(&id, None, msg).map(|_| ())
    }

    fn is_active(&self, dm_name_s: &str) -> bool {
        DmName::new(dm_name_s)
            .ok()
            .is_some_and(|n| self.dm.device_info(&DevId::Name(n)).is_ok())
    }

    /// Activates thin device `thin` as `name` (no-op if active); makes sure
    /// its /dev/mapper node exists. Fails if the pool has no such thin id.
    fn activate(&self, name: &str, thin: u32) -> Result<PathBuf, BackendError> {
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
    fn deactivate(&self, name: &str) -> Result<bool, BackendError> {
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
    fn delete_thin(&self, thin: u32) -> Result<(), BackendError> {
        let _g = crate::shared::sync::lock(&self.lock);
        match self.message(&format!("delete {thin}")) {
            Ok(()) => Ok(()),
            Err(e) if dm_errno(&e) == Some(libc::ENODATA) => Ok(()),
            Err(e) => Err(dm_err("delete thin id", &self.pool_dm, e)),
        }
    }

    /// The base device: created once (thin id 0) with an empty file system.
    fn ensure_base(&self) -> Result<(), BackendError> {
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

    fn mkfs(&self, node: &Path) -> Result<(), BackendError> {
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
    fn ensure_active(&self, id: u64) -> Result<PathBuf, BackendError> {
        self.activate(&self.layer_name(id), thin_id(id)?)
    }

    fn spec(&self, l: LayerRef<'_>) -> Result<MountSpec, BackendError> {
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
    fn mapped(&self, name: &str) -> Result<u64, BackendError> {
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
    fn inodes_used(&self, node: &Path) -> u64 {
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

    fn pool_status(&self) -> Result<ThinPoolStatus, BackendError> {
        let (_, lines) = self
            .dm
            .table_status(&self.pool_id()?, DmOptions::default())
            .map_err(|e| dm_err("pool status", &self.pool_dm, e))?;
        let line = lines
            .first()
            .ok_or_else(|| unusable(&self.path, "the pool device has no table"))?;
        ThinPoolStatus::from_str(&line.3).map_err(|e| dm_err("parse pool status", &self.pool_dm, e))
    }

    fn data_used(&self) -> Option<u64> {
        match self.pool_status().ok()? {
            ThinPoolStatus::Working(w) => Some(*w.usage.used_data * self.block_size),
            _ => None,
        }
    }

    /// Discards (when nobody holds it), deactivates and deletes layer `id`.
    fn destroy(&self, id: u64) -> Result<(), BackendError> {
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

impl Thin {
    /// Records (`pending`) or forgets a deferred removal, durably.
    fn set_pending(&self, id: u64, pending: bool) -> Result<(), BackendError> {
        let mut set = crate::shared::sync::lock(&self.pending);
        let changed = if pending {
            set.insert(id)
        } else {
            set.remove(&id)
        };
        if !changed {
            return Ok(());
        }
        write_pending(&self.token_dir, &set)
    }

    /// Finishes removals left deferred whose devices are gone by now
    /// (discard, delete the thin id).
    fn finish_pending(&self) -> Result<(), BackendError> {
        let pending: Vec<u64> = crate::shared::sync::lock(&self.pending)
            .iter()
            .copied()
            .collect();
        for id in pending {
            if !self.is_active(&self.layer_name(id)) {
                self.destroy(id)?;
            }
        }
        Ok(())
    }

    /// Thin ids in the pool's metadata (base excluded), read by `thin_ls`
    /// from a metadata snapshot the pool holds meanwhile; `None` (logged)
    /// when that fails, and reconciliation then sees active devices only.
    fn metadata_thin_ids(&self) -> Option<BTreeSet<u64>> {
        let meta = self.meta_dm.as_deref()?;
        // Its node, where udev has not made it.
        let src = match self.dm.device_info(&DevId::Name(dm_name(meta).ok()?)) {
            Ok(info) => {
                let d = info.device();
                blockdev::ensure_mapper_node(meta, d.major, d.minor).ok()?
            }
            Err(e) => {
                tracing::warn!(pool = %self.name, device = meta, error = %e, "no metadata device: thin ids of inactive devices are not reconciled");
                return None;
            }
        };
        let _g = crate::shared::sync::lock(&self.lock);
        if self.message("reserve_metadata_snap").is_err() {
            // One left reserved by a crash while it was held.
            let _ = self.message("release_metadata_snap");
            if let Err(e) = self.message("reserve_metadata_snap") {
                tracing::warn!(pool = %self.name, error = %e, "cannot reserve a metadata snapshot: thin ids of inactive devices are not reconciled");
                return None;
            }
        }
        let out = Command::new("thin_ls")
            .args(["-m", "--no-headers", "-o", "DEV"])
            .arg(&src)
            .stdin(Stdio::null())
            .output();
        if let Err(e) = self.message("release_metadata_snap") {
            tracing::warn!(pool = %self.name, error = %e, "releasing the metadata snapshot failed");
        }
        let why = match out {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                let ids: Option<BTreeSet<u64>> =
                    text.split_whitespace().map(|w| w.parse().ok()).collect();
                match ids {
                    Some(mut ids) => {
                        ids.remove(&(BASE_ID as u64));
                        return Some(ids);
                    }
                    None => format!("unexpected output {text:?}"),
                }
            }
            Ok(o) => format!(
                "{}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => e.to_string(),
        };
        tracing::warn!(pool = %self.name, metadata = %src.display(), error = %why, "thin_ls failed: thin ids of inactive devices are not reconciled");
        None
    }
}

/// The file listing deferred removals.
const PENDING: &str = "removing";

fn read_pending(dir: &Path) -> BTreeSet<u64> {
    fs::read_to_string(dir.join(PENDING))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Replaces `<dir>/removing` atomically (through `<dir>/t`) and durably.
fn write_pending(dir: &Path, ids: &BTreeSet<u64>) -> Result<(), BackendError> {
    use std::io::Write;
    let path = dir.join(PENDING);
    let tmp = dir.join("t").join(PENDING);
    let mut f = fs::File::create(&tmp).map_err(|e| BackendError::io("create", &tmp, e))?;
    for id in ids {
        writeln!(f, "{id}").map_err(|e| BackendError::io("write", &tmp, e))?;
    }
    f.sync_all()
        .map_err(|e| BackendError::io("fsync", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| BackendError::io("rename", &tmp, e))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| BackendError::io("fsync", dir, e))
}

/// An active `layerd-<name>-pool` is only adopted if it stands on this
/// pool's own storage: its table names our `layerd-<name>-meta` and
/// `-data` linear devices, and those map the configured devices (loop: the
/// loop devices of `metadata.img` and `data.img`). The same pool name in
/// another state directory or config (another daemon, a test, a changed
/// `path`) must not be taken over. `Existing` pools are someone else's by
/// definition and are taken as they are.
fn check_adopted(
    dm: &DM,
    name: &str,
    pool_params: &str,
    setup: &Setup,
) -> Result<(), BackendError> {
    let expected: [(&str, PathBuf, Vec<String>); 2] = match setup {
        Setup::Loop { dir, .. } => {
            let loops = |f: PathBuf| {
                let devs = loopdev::find_backing(&f)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|d| devno(&d.path()).ok())
                    .map(|d| d.to_string())
                    .collect();
                (f, devs)
            };
            let (m, md) = loops(dir.join("metadata.img"));
            let (d, dd) = loops(dir.join("data.img"));
            [("meta", m, md), ("data", d, dd)]
        }
        Setup::Device { data, metadata } => [
            ("meta", metadata.clone(), vec![devno(metadata)?.to_string()]),
            ("data", data.clone(), vec![devno(data)?.to_string()]),
        ],
        Setup::Existing { .. } => return Ok(()),
    };
    // thin-pool <metadata dev> <data dev> <block size> <low water> …
    let mut pool_devs = pool_params.split(' ');
    for ((role, path, mine), in_pool) in expected.iter().zip([pool_devs.next(), pool_devs.next()]) {
        let linear = format!("layerd-{name}-{role}");
        let info = dm
            .device_info(&DevId::Name(dm_name(&linear)?))
            .ok()
            .map(|i| i.device().to_string());
        let table = dm
            .table_status(
                &DevId::Name(dm_name(&linear)?),
                DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE),
            )
            .ok()
            .and_then(|(_, t)| t.first().map(|l| l.3.clone()))
            .unwrap_or_default();
        let dev = table.split(' ').next().unwrap_or("");
        let stands_on_linear = info.is_some() && info.as_deref() == in_pool;
        if !stands_on_linear || dev.is_empty() || !mine.iter().any(|m| m == dev) {
            return Err(unusable(
                path,
                format!(
                    "the active thin pool layerd-{name}-pool does not use this {role} storage (its {role} is on device {:?}); \
                     another pool named {name:?} is active: deactivate it (dmsetup remove) or rename this pool",
                    if stands_on_linear { dev } else { in_pool.unwrap_or("") }
                ),
            ));
        }
    }
    Ok(())
}

/// Creates loop devices (loop backing), linear devices and the pool.
fn activate_pool(
    dm: &DM,
    name: &str,
    pool_dm: &str,
    setup: &Setup,
    o: &Options,
) -> Result<Device, BackendError> {
    let (data_dev, meta_dev, meta_path) = match setup {
        Setup::Loop {
            dir,
            size,
            metadata_size,
        } => {
            private::ensure_dir(dir).map_err(|e| BackendError::io("mkdir", dir, e))?;
            let data = dir.join("data.img");
            let meta = dir.join("metadata.img");
            let msize = metadata_size.unwrap_or_else(|| metadata_size_for(*size, o.block_size));
            for (f, s) in [(&data, *size), (&meta, msize)] {
                match loopdev::create_sparse(f, s) {
                    Ok(()) => tracing::info!(file = %f.display(), size = s, "created sparse file"),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        if !fs::metadata(f).is_ok_and(|m| m.is_file()) {
                            return Err(unusable(f, "exists and is not a regular file"));
                        }
                    }
                    Err(e) => return Err(BackendError::io("create sparse file", f, e)),
                }
            }
            // Check before anything is attached: a damaged pool stays as it is.
            if !blockdev::is_zeroed(&meta, 4096).map_err(|e| BackendError::io("read", &meta, e))? {
                thin_check(&meta)?;
            }
            let attach = |f: &Path| -> Result<PathBuf, BackendError> {
                let bound =
                    loopdev::find_backing(f).map_err(|e| BackendError::io("find loop", f, e))?;
                match bound.first() {
                    Some(d) => Ok(d.path()),
                    None => loopdev::attach(f, loopdev::AttachOptions::default())
                        .map(|(d, _)| d.path())
                        .map_err(|e| BackendError::io("attach loop device", f, e)),
                }
            };
            (attach(&data)?, attach(&meta)?, meta)
        }
        Setup::Device { data, metadata } => {
            if !blockdev::is_zeroed(metadata, 4096)
                .map_err(|e| BackendError::io("read", metadata, e))?
            {
                thin_check(metadata)?;
            }
            (data.clone(), metadata.clone(), metadata.clone())
        }
        Setup::Existing { pool } => return Err(unusable(pool, "is not active")),
    };
    let _ = meta_path;
    let linear = |suffix: &str, dev: &Path| -> Result<LinearDev, BackendError> {
        let n = format!("layerd-{name}-{suffix}");
        let sectors = sectors_of(dev)?;
        let table = vec![TargetLine::new(
            Sectors(0),
            Sectors(sectors),
            LinearDevTargetParams::Linear(LinearTargetParams::new(devno(dev)?, Sectors(0))),
        )];
        LinearDev::setup(dm, dm_name(&n)?, None, table).map_err(|e| dm_err("linear device", &n, e))
    };
    let meta = linear("meta", &meta_dev)?;
    let data = linear("data", &data_dev)?;
    let block_sectors = o.block_size / SECTOR;
    let total_blocks = *data.size() / block_sectors;
    let low_water = total_blocks * (100 - o.warn_percent.min(100) as u64) / 100;
    // Queue writes while the pool can still grow (the daemon extends it
    // from the warning level on); error them when nothing can grow, so a
    // writer of a full pool gets ENOSPC instead of hanging.
    // The data file's length is the truth (Extend may have grown it past
    // the configured size).
    let can_grow = matches!(setup, Setup::Loop { .. }
        if o.autoextend_percent > 0 && *data.size() * SECTOR < o.autoextend_max);
    let mut features = vec!["skip_block_zeroing".to_string()];
    if !can_grow {
        features.push("error_if_no_space".to_string());
    }
    let pool = ThinPoolDev::setup(
        dm,
        dm_name(pool_dm)?,
        None,
        meta,
        data,
        Sectors(block_sectors),
        DataBlocks(low_water),
        features,
    )
    .map_err(|e| dm_err("activate thin pool", pool_dm, e))?;
    tracing::info!(
        pool = name,
        dm = pool_dm,
        blocks = total_blocks,
        low_water,
        "thin pool activated"
    );
    Ok(pool.device())
}

impl Thin {
    /// Automatic growth of a loop pool: the data file by its step (capped
    /// at `autoextend_max`) while data use is at the warning level, the
    /// metadata file likewise (capped at the kernel's maximum) while
    /// metadata use is; one reload for both. At the maximum the pool
    /// switches to `error_if_no_space`. `None` when nothing grew.
    fn grow_auto(&self) -> Result<Option<u64>, BackendError> {
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
    fn grow_files(
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
    fn reload_grown(&self, grown: &[(String, u64, Device, u64)]) -> Result<(), BackendError> {
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
    fn linear_of(&self, suffix: &str) -> Result<(Device, u64), BackendError> {
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
    fn grow_to_device(&self) -> Result<Option<u64>, BackendError> {
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
fn next_data_size(cur: u64, percent: u8, max: u64, block: u64) -> Option<u64> {
    let step = (cur / 100 * percent as u64).max(block);
    let new = cur.saturating_add(step).min(max) / block * block;
    (new > cur).then_some(new)
}

/// The metadata file's next size under automatic growth: `percent` of it
/// (at least 1 MiB) more, whole MiB, capped at what dm-thin uses.
fn next_metadata_size(cur: u64, percent: u8) -> Option<u64> {
    let step = (cur / 100 * percent as u64).max(MIN_META_STEP);
    let new = cur.saturating_add(step).div_ceil(MIN_META_STEP) * MIN_META_STEP;
    let new = new.min(KERNEL_META_MAX);
    (new > cur).then_some(new)
}

fn file_len(p: &Path) -> Result<u64, BackendError> {
    Ok(fs::metadata(p)
        .map_err(|e| BackendError::io("stat", p, e))?
        .len())
}

impl Backend for Thin {
    fn extend_auto(&self) -> Result<Option<u64>, BackendError> {
        self.grow_auto()
    }

    /// Extend: a loop pool's data file grows by `bytes` rounded up to
    /// whole pool blocks, through the same path as automatic growth. The
    /// engine has checked `autoextend_max`. Device and existing backings
    /// are not grown by layerd.
    fn extend(&self, bytes: u64, ctl: &JobControl) -> Result<u64, BackendError> {
        let Some(files) = &self.files else {
            return Err(BackendError::NotSupported(not_growable(
                self.backing,
                &self.path,
            )));
        };
        let add = bytes
            .div_ceil(self.block_size)
            .saturating_mul(self.block_size);
        let _l = crate::shared::sync::lock(&self.lock);
        let cur = file_len(&files.data)?;
        let new = cur.checked_add(add).ok_or_else(|| {
            BackendError::NotSupported(format!("{cur} + {add} bytes is too large"))
        })?;
        ctl.set_progress(0.1);
        self.grow_files(files, Some(new), None)?;
        ctl.set_bytes(add);
        ctl.set_progress(1.0);
        Ok(add)
    }

    fn backing_devices(&self) -> Vec<crate::shared::device::BackingDevice> {
        if self.backing == "existing" {
            return Vec::new();
        }
        [("data", "data"), ("meta", "metadata")]
            .into_iter()
            .filter_map(|(suffix, role)| {
                let (dev, _) = self
                    .linear_of(suffix)
                    .map_err(|e| tracing::warn!(pool = %self.name, error = %e, "cannot watch a backing device"))
                    .ok()?;
                Some(crate::shared::device::BackingDevice {
                    role,
                    major: dev.major,
                    minor: dev.minor,
                    name: blockdev::name_of_devno(dev.major, dev.minor)
                        .unwrap_or_else(|| dev.to_string()),
                })
            })
            .collect()
    }

    fn device_resized(&self) -> Result<Option<u64>, BackendError> {
        self.grow_to_device()
    }

    fn driver(&self) -> &'static str {
        "thin"
    }
    fn backing(&self) -> &'static str {
        self.backing
    }
    fn path(&self) -> &Path {
        &self.path
    }

    fn create(&self, l: LayerRef<'_>) -> Result<(), BackendError> {
        let thin = thin_id(l.id)?;
        let (origin, origin_name) = match l.parents.first() {
            Some(p) => (thin_id(*p)?, self.layer_name(*p)),
            None => (BASE_ID, self.base_name()),
        };
        {
            let _g = crate::shared::sync::lock(&self.lock);
            // An active origin is suspended around the snapshot so its
            // in-flight writes are in it (kernel thin-provisioning.rst).
            let suspended = match DmName::new(&origin_name) {
                Ok(n) if self.dm.device_info(&DevId::Name(n)).is_ok() => {
                    self.dm
                        .device_suspend(
                            &DevId::Name(n),
                            dev_options().set_flags(DmFlags::DM_SUSPEND),
                        )
                        .map_err(|e| dm_err("suspend origin", &origin_name, e))?;
                    Some(n)
                }
                _ => None,
            };
            let r = self.message(&format!("create_snap {thin} {origin}"));
            if let Some(n) = suspended {
                if let Err(e) = self
                    .dm
                    .device_suspend(&DevId::Name(n), DmOptions::default())
                {
                    tracing::error!(device = %origin_name, error = %e, "resuming the snapshot origin failed");
                }
            }
            r.map_err(|e| dm_err("create snapshot", &self.pool_dm, e))?;
        }
        self.ensure_active(l.id)?;
        Ok(())
    }

    fn commit(&self, id: u64) -> Result<(), BackendError> {
        // Immutable by contract: never handed out for writing again.
        self.ensure_active(id).map(|_| ())
    }

    fn remove(&self, id: u64) -> Result<(), BackendError> {
        self.destroy(id)
    }

    fn discard(&self, id: u64) -> Result<(), BackendError> {
        self.destroy(id)
    }

    fn purge(&self) -> Result<u64, BackendError> {
        self.finish_pending()?;
        Ok(self.freed.swap(0, Ordering::Relaxed))
    }

    fn exists(&self, id: u64) -> bool {
        self.ensure_active(id).is_ok()
    }

    fn mounts(&self, l: LayerRef<'_>) -> Result<Option<Vec<MountSpec>>, BackendError> {
        Ok(Some(vec![self.spec(l)?]))
    }

    fn mount(&self, l: LayerRef<'_>, target: &Path) -> Result<(), BackendError> {
        let spec = self.spec(l)?;
        mount::mount_spec(&spec, target)?;
        Ok(())
    }

    fn usage(&self, l: LayerRef<'_>) -> Result<(u64, u64), BackendError> {
        let node = self.ensure_active(l.id)?;
        let (ref_name, ref_node) = match l.parents.first() {
            Some(p) => (self.layer_name(*p), self.ensure_active(*p)?),
            None => {
                let n = self.base_name();
                let node = self.activate(&n, BASE_ID)?;
                (n, node)
            }
        };
        let bytes = self
            .mapped(&self.layer_name(l.id))?
            .saturating_sub(self.mapped(&ref_name)?);
        let inodes = self
            .inodes_used(&node)
            .saturating_sub(self.inodes_used(&ref_node));
        Ok((bytes, inodes))
    }

    fn space(&self) -> Result<Space, BackendError> {
        match self.pool_status()? {
            ThinPoolStatus::Working(w) => {
                if w.needs_check {
                    return Err(unusable(
                        &self.path,
                        format!(
                            "the kernel flagged the pool metadata needs_check; stop layerd, deactivate {} and run thin_check / thin_repair on its metadata",
                            self.pool_dm
                        ),
                    ));
                }
                let data_size = *w.usage.total_data * self.block_size;
                let mut data_used = *w.usage.used_data * self.block_size;
                if matches!(w.summary, ThinPoolStatusSummary::OutOfSpace) {
                    data_used = data_size;
                }
                Ok(Space {
                    data_size,
                    data_used,
                    metadata_size: *w.usage.total_meta * META_BLOCK,
                    metadata_used: *w.usage.used_meta * META_BLOCK,
                    unallocated: None,
                    device_size: None,
                    read_only: matches!(w.summary, ThinPoolStatusSummary::ReadOnly),
                })
            }
            ThinPoolStatus::Error | ThinPoolStatus::Fail => Err(unusable(
                &self.path,
                format!(
                    "the kernel reports thin pool {} failed; check the kernel log and the backing devices",
                    self.pool_dm
                ),
            )),
        }
    }

    fn scan(&self) -> Result<Vec<Found>, BackendError> {
        let prefix = format!("layerd-{}-", self.name);
        let devs = self
            .dm
            .list_devices()
            .map_err(|e| dm_err("list devices", &self.pool_dm, e))?;
        let mut ids = BTreeSet::new();
        for (n, _, _) in devs {
            let n = n.to_string();
            let Some(rest) = n.strip_prefix(&prefix) else {
                continue;
            };
            if !rest.is_empty()
                && !rest.starts_with('0')
                && rest.bytes().all(|b| b.is_ascii_digit())
            {
                if let Ok(id) = rest.parse::<u64>() {
                    ids.insert(id);
                }
            }
        }
        // Devices are inactive after a reboot, and a crash may come between
        // a thin id's creation and its activation: the metadata knows them.
        ids.extend(self.metadata_thin_ids().unwrap_or_default());
        // Removed, waiting for their holders: not for the engine to judge.
        let pending = crate::shared::sync::lock(&self.pending);
        Ok(ids
            .into_iter()
            .filter(|id| !pending.contains(id))
            .map(Found::Layer)
            .collect())
    }

    fn quarantine(&self, what: &Path) -> Result<PathBuf, BackendError> {
        Err(BackendError::NotSupported(format!(
            "the thin driver keeps unrecorded thin devices where they are ({})",
            what.display()
        )))
    }

    /// FITRIM on every mounted layer of this pool; discard passdown carries
    /// the freed blocks to the data device (and the loop file's holes).
    fn trim(&self, ctl: &JobControl) -> Result<u64, BackendError> {
        let prefix = blockdev::mapper_path(&format!("layerd-{}-", self.name))
            .to_string_lossy()
            .into_owned();
        let mounts = mountinfo::read_mountinfo()
            .map_err(|e| BackendError::io("read mountinfo", Path::new("/proc/self"), e))?;
        let mut seen = BTreeSet::new();
        let mut total = 0;
        for m in mounts.iter().filter(|m| m.source.starts_with(&prefix)) {
            if ctl.is_cancelled() {
                break;
            }
            if !seen.insert(m.source.clone()) || m.mount_options.split(',').any(|o| o == "ro") {
                continue;
            }
            match crate::sys::trim::fitrim(&m.mount_point) {
                Ok(n) => total += n,
                Err(e) => {
                    tracing::warn!(mount = %m.mount_point.display(), error = %e, "trim of a layer failed")
                }
            }
            ctl.set_bytes(total);
        }
        ctl.set_progress(1.0);
        Ok(total)
    }

    fn read_token(&self) -> Result<Option<u64>, BackendError> {
        crate::backend::dirpool::read_token(&self.token_dir)
    }

    fn write_token(&self, token: u64) -> Result<(), BackendError> {
        crate::backend::dirpool::write_token(&self.token_dir, &self.token_dir.join("t"), token)
    }
}

/// Whether this host can run a loop-backed thin pool with the default
/// settings (the built-in default pool): device-mapper with the thin-pool
/// target, loop devices, `thin_check` and `mkfs.xfs`. `Err` names the
/// first thing missing.
pub fn host_support() -> Result<(), String> {
    use crate::sys::host;
    if !host::has_device_mapper() {
        return Err("no device-mapper (/dev/mapper/control)".into());
    }
    if !host::kernel_module_available("dm_thin_pool") {
        return Err("the kernel has no dm-thin-pool target".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Err("no loop devices (/dev/loop-control)".into());
    }
    for program in ["thin_check", "mkfs.xfs"] {
        if host::find_program(program).is_none() {
            return Err(format!("{program} is not installed"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_size_rule() {
        // 2 GiB of 64 KiB blocks: 32768 × 96 B = 3 MiB.
        assert_eq!(metadata_size_for(2 << 30, 64 << 10), 3 << 20);
        // Tiny pools get dm-thin's minimum, huge ones its maximum.
        assert_eq!(metadata_size_for(64 << 20, 64 << 10), 2 << 20);
        assert_eq!(metadata_size_for(1 << 50, 64 << 10), 16 << 30);
    }

    #[test]
    fn growth_steps() {
        const M: u64 = 1 << 20;
        const B: u64 = 64 << 10;
        // 20% of 1 GiB, in whole blocks; capped at the maximum; none at it.
        assert_eq!(next_data_size(1024 * M, 20, 10 << 30, B), Some(19660 * B));
        assert_eq!(next_data_size(1024 * M, 100, 1536 * M, B), Some(1536 * M));
        assert_eq!(next_data_size(1536 * M, 100, 1536 * M, B), None);
        // At least one block.
        assert_eq!(next_data_size(B, 1, 1 << 30, B), Some(2 * B));
        // Metadata: 100% of 2 MiB; 20% of 2 MiB is less than the 1 MiB
        // minimum step; whole MiB; never past dm-thin's 15.94 GiB.
        assert_eq!(next_metadata_size(2 * M, 100), Some(4 * M));
        assert_eq!(next_metadata_size(2 * M, 20), Some(3 * M));
        assert_eq!(next_metadata_size(100 * M, 20), Some(120 * M));
        assert_eq!(KERNEL_META_MAX, 16320 * M);
        assert_eq!(next_metadata_size(16000 * M, 20), Some(KERNEL_META_MAX));
        assert_eq!(next_metadata_size(KERNEL_META_MAX, 20), None);
    }

    #[test]
    fn thin_ids_are_24_bits() {
        assert!(thin_id(0).is_err(), "0 is the base device");
        assert_eq!(thin_id(1).unwrap(), 1);
        assert_eq!(thin_id(MAX_THIN_ID).unwrap(), MAX_THIN_ID as u32);
        assert!(thin_id(MAX_THIN_ID + 1).is_err());
    }
}
