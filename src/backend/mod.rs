//! Storage drivers. Each driver is one file behind the [`Backend`] trait; the
//! engine holds `Box<dyn Backend>` per pool and never knows which driver it
//! talks to. A backend knows layers only by their numeric id: client keys
//! never reach it, so they can never become paths or mount options.
//!
//! Contract shared by every driver (the conformance suite checks it):
//! - `create` makes an empty layer or a copy-on-write child of `parents[0]`;
//!   it is only called for an id that does not exist yet, and a half-done
//!   `create` is undone by `discard`.
//! - `commit`, `remove`, `discard` are idempotent: recovery may repeat them.
//! - `remove` is cheap (e.g. a rename into the pool's trash); `purge` frees
//!   the space later and says how much.

pub mod btrfs;
pub mod dirpool;
pub mod overlay;
pub mod thin;
pub mod vfs;

use std::path::{Path, PathBuf};

use crate::shared::device::BackingDevice;
use crate::shared::error::ErrorKind;
use crate::shared::layer::Kind;
use crate::sys::mount::MountSpec;

/// What a backend reports of its space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Space {
    pub data_size: u64,
    pub data_used: u64,
    pub metadata_size: u64,
    pub metadata_used: u64,
    /// Device space not yet allocated to any chunk (btrfs); `None` where
    /// the notion does not exist.
    pub unallocated: Option<u64>,
    /// Raw size of the devices `unallocated` is part of (btrfs); `None`
    /// where `unallocated` is.
    pub device_size: Option<u64>,
    pub read_only: bool,
}

/// Shared between a running maintenance job and whoever watches it:
/// progress (0–1, when the kernel reports any), bytes so far, and the
/// cancel request the backend must poll.
#[derive(Debug, Default)]
pub struct JobControl {
    progress_bits: std::sync::atomic::AtomicU64,
    progress_valid: std::sync::atomic::AtomicBool,
    bytes: std::sync::atomic::AtomicU64,
    cancelled: std::sync::atomic::AtomicBool,
}

impl JobControl {
    pub fn set_progress(&self, fraction: f64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.progress_bits
            .store(fraction.clamp(0.0, 1.0).to_bits(), Relaxed);
        self.progress_valid.store(true, Relaxed);
    }
    pub fn progress(&self) -> Option<f64> {
        use std::sync::atomic::Ordering::Relaxed;
        self.progress_valid
            .load(Relaxed)
            .then(|| f64::from_bits(self.progress_bits.load(Relaxed)))
    }
    pub fn set_bytes(&self, bytes: u64) {
        self.bytes
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }
    pub fn bytes(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }
    pub fn cancel(&self) {
        self.cancelled
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Usage filters of one balance pass, in percent (btrfs `-dusage`, `-musage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BalanceOptions {
    /// Data chunks at most this full are rewritten, in escalating passes.
    pub dusage: Vec<u8>,
    /// Metadata chunks likewise.
    pub musage: Vec<u8>,
}

/// Something found in the pool's storage, for start-up reconciliation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A layer named by its id.
    Layer(u64),
    /// Something layerd did not name: never deleted, only quarantined.
    Unknown(PathBuf),
}

/// How Apply and Export reach a layer's files (see `Backend::diff_tree`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiffTree {
    /// A directory holding only this layer's changes, with overlayfs's
    /// native whiteouts: a 0/0 character device for a deleted name and
    /// `trusted.overlay.opaque=y` on a directory that hides its lower one.
    Upper(PathBuf),
    /// A directory holding the layer's whole tree (its parent's files plus
    /// its changes); a deletion is a real deletion.
    Full(PathBuf),
    /// Not reachable as a directory: the engine mounts the layer with
    /// `Backend::mount` into a private directory under its run directory
    /// and works on the whole tree there, as for `Full`.
    Mount,
}

/// A layer's place in its chain, as backends need it.
#[derive(Debug, Clone, Copy)]
pub struct LayerRef<'a> {
    pub id: u64,
    pub kind: Kind,
    /// Ancestor ids, nearest first.
    pub parents: &'a [u64],
}

pub trait Backend: Send + Sync {
    /// `overlay`, `vfs`, …
    fn driver(&self) -> &'static str;
    /// `directory`, `loop`, `device`, `existing`.
    fn backing(&self) -> &'static str;
    /// Where the pool lives (directory, device or mount point).
    fn path(&self) -> &Path;

    /// Creates layer `l.id` (empty, or a child of `l.parents[0]`).
    fn create(&self, l: LayerRef<'_>) -> Result<(), BackendError>;
    /// Makes an active layer immutable in whatever way the driver can.
    fn commit(&self, id: u64) -> Result<(), BackendError>;
    /// Takes the layer out of use (cheaply); its space is freed by `purge`.
    fn remove(&self, id: u64) -> Result<(), BackendError>;
    /// Undoes a half-done `create`; no error if nothing exists.
    fn discard(&self, id: u64) -> Result<(), BackendError>;
    /// Frees the space of removed layers; returns the bytes freed, which
    /// are usable (counted free by `space()` and statfs) when it returns.
    fn purge(&self) -> Result<u64, BackendError>;
    /// Makes space that is freed but not usable yet usable now (btrfs:
    /// deleted subvolumes the cleaner has not dropped, extents pinned until
    /// the next commit), waiting at most `wait`. True if it did anything,
    /// so that space is worth measuring again; drivers whose frees take
    /// effect at once keep the default.
    fn reclaim(&self, _wait: std::time::Duration) -> Result<bool, BackendError> {
        Ok(false)
    }
    /// Whether layer `id` exists in storage.
    fn exists(&self, id: u64) -> bool;

    /// Mount specs a runtime can hand to mount(8), or `None` when the
    /// kernel could not take them in one mount(2) call (then the engine
    /// mounts the layer itself and hands out a bind of that).
    fn mounts(&self, l: LayerRef<'_>) -> Result<Option<Vec<MountSpec>>, BackendError>;
    /// Mounts the layer at `target` (an existing empty directory), for any
    /// chain depth the kernel supports, and verifies the result.
    fn mount(&self, l: LayerRef<'_>, target: &Path) -> Result<(), BackendError>;

    /// Bytes and inodes of this layer alone (parents excluded).
    fn usage(&self, l: LayerRef<'_>) -> Result<(u64, u64), BackendError>;
    /// Space of the whole pool.
    fn space(&self) -> Result<Space, BackendError>;

    /// Everything in storage, for reconciliation.
    fn scan(&self) -> Result<Vec<Found>, BackendError>;
    /// Moves something unknown aside without deleting it; returns where.
    fn quarantine(&self, what: &Path) -> Result<PathBuf, BackendError>;
    /// Discards unused blocks so the storage below (a loop file, an SSD)
    /// gets them back; returns the bytes the kernel reports trimmed.
    /// Default: FITRIM on the file system holding the pool's path.
    fn trim(&self, ctl: &JobControl) -> Result<u64, BackendError> {
        let _ = ctl;
        Err(BackendError::NotSupported(format!(
            "the {} driver cannot trim yet",
            self.driver()
        )))
    }
    /// Rewrites nearly empty chunks so their space returns to the
    /// unallocated pool (btrfs); returns bytes relocated.
    fn balance(&self, opts: &BalanceOptions, ctl: &JobControl) -> Result<u64, BackendError> {
        let _ = (opts, ctl);
        Err(BackendError::NotSupported(format!(
            "balance is a btrfs operation; this pool's driver is {}",
            self.driver()
        )))
    }

    /// Grows the pool's storage by its configured step when it can (a
    /// loop-backed thin pool); the new data size, or `None` when nothing
    /// can grow. The engine calls it when Health reaches `warning`.
    fn extend_auto(&self) -> Result<Option<u64>, BackendError> {
        Ok(None)
    }

    /// Block devices under the pool, for the monitor's udev watch
    /// (default: none watched).
    fn backing_devices(&self) -> Vec<BackingDevice> {
        Vec::new()
    }
    /// A backing device changed (udev `change`, e.g. a resize): take up a
    /// grown device; the new data size when the pool grew, `None` when
    /// nothing changed; an error when a device no longer holds what the
    /// pool uses (shrunk, emptied), which fails the pool.
    fn device_resized(&self) -> Result<Option<u64>, BackendError> {
        Ok(None)
    }

    /// The token binding this storage to a store (see engine/recovery.rs),
    /// if one was written.
    fn read_token(&self) -> Result<Option<u64>, BackendError>;
    /// Writes the binding token durably.
    fn write_token(&self, token: u64) -> Result<(), BackendError>;
    /// Where Apply writes and Export reads this layer's files. The default,
    /// `Mount`, works for any driver whose `mount` does: the engine mounts
    /// the layer (a committed parent is mounted as a `View` ref of its own
    /// id, read-only) and deletes for real. Override it where the files sit
    /// in a directory already (cheaper) or where the driver has its own
    /// whiteout form (overlay).
    fn diff_tree(&self, l: LayerRef<'_>) -> Result<DiffTree, BackendError> {
        let _ = l;
        Ok(DiffTree::Mount)
    }

    /// The deepest chain (lower layers) this driver can mount, if limited.
    fn max_depth(&self) -> Option<usize> {
        None
    }
    /// Grows the pool's storage by `bytes` (a loop image) or to what its
    /// device now holds, and the file system over it; returns the bytes
    /// the pool grew by.
    fn extend(&self, bytes: u64, ctl: &JobControl) -> Result<u64, BackendError> {
        let _ = (bytes, ctl);
        Err(BackendError::NotSupported(format!(
            "the {} driver cannot extend its pool",
            self.driver()
        )))
    }
    /// Whether [`Backend::limit_size`] works here; asked before anything
    /// is created, so a layer that cannot get its limit is never made.
    fn can_limit_size(&self) -> bool {
        false
    }
    /// Caps the bytes layer `id` may hold beyond its parent (the
    /// `layerd.io/size` label); writes past it fail with `EDQUOT`.
    fn limit_size(&self, id: u64, bytes: u64) -> Result<(), BackendError> {
        let _ = (id, bytes);
        Err(BackendError::NotSupported(format!(
            "the {} driver cannot limit a layer's size",
            self.driver()
        )))
    }
}

/// Backend failures. Messages name the layer id, path and operation.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Mount(#[from] crate::sys::mount::MountError),
    #[error(transparent)]
    Copy(#[from] crate::sys::fstree::CopyError),
    #[error("{0}")]
    NotSupported(String),
    #[error("pool storage at {path} is unusable: {why}")]
    Unusable { path: PathBuf, why: String },
}

impl From<crate::sys::trim::TrimError> for BackendError {
    fn from(e: crate::sys::trim::TrimError) -> Self {
        use crate::sys::trim::TrimError;
        match e {
            TrimError::NotSupported { .. } => BackendError::NotSupported(e.to_string()),
            TrimError::Open { path, source } => BackendError::Io {
                op: "open",
                path: path.into(),
                source,
            },
            TrimError::Ioctl { path, source } => BackendError::Io {
                op: "FITRIM",
                path: path.into(),
                source,
            },
        }
    }
}

impl BackendError {
    pub fn io(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        BackendError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The errno behind the failure: the I/O error's, the first one in
    /// the source chain, or EOPNOTSUPP for what the kernel cannot do.
    pub fn errno(&self) -> Option<i32> {
        match self {
            BackendError::Io { source, .. } => source.raw_os_error(),
            BackendError::NotSupported(_) => Some(libc::EOPNOTSUPP),
            other => {
                let mut cur = std::error::Error::source(other);
                while let Some(e) = cur {
                    if let Some(io) = e.downcast_ref::<std::io::Error>() {
                        return io.raw_os_error();
                    }
                    cur = e.source();
                }
                None
            }
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            BackendError::Io { source, .. } => io_kind(source),
            BackendError::NotSupported(_) => ErrorKind::NotSupported,
            BackendError::Mount(crate::sys::mount::MountError::OptionsTooLong { .. }) => {
                ErrorKind::NotSupported
            }
            _ => ErrorKind::Internal,
        }
    }
}

fn io_kind(e: &std::io::Error) -> ErrorKind {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorKind::PoolFull,
        Some(libc::EBUSY) => ErrorKind::Busy,
        Some(libc::EROFS) => ErrorKind::FailedPrecondition,
        _ => ErrorKind::Internal,
    }
}
