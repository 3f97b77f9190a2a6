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

mod adopt;
mod devices;
mod grow;
mod pending;

use adopt::*;
use grow::*;
use pending::*;

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
