//! `btrfs` driver: each layer is a subvolume; a child is a writable
//! snapshot of its committed parent; commit sets the subvolume read-only; a
//! view is a read-only snapshot (as containerd's btrfs snapshotter makes
//! them). Everything is done with ioctls (`crate::sys::btrfs`,
//! `crate::sys::loopdev`); the only processes are a one-time `mkfs.btrfs`
//! when a new loop file or an empty device is formatted, and `blkid -p`
//! before that, to be sure nothing is overwritten.
//!
//! # Backings
//!
//! * `loop`: the config `path` is the pool's mount point; the sparse image
//!   is `<path>.img` beside it (`/var/lib/layerd/main` and
//!   `/var/lib/layerd/main.img`), so one key names both, `findmnt` shows
//!   the mount point an admin expects, the image sits on the state
//!   directory's file system where config validation checked the parent is
//!   writable, and nothing of the image is inside the mount it backs. On
//!   first start the image is created sparse (`size`), attached to a free
//!   loop device (direct I/O when the host file system can, no autoclear),
//!   formatted and mounted. On a restart the loop device still bound to the
//!   image and its mount are found and reused; after a reboot the same
//!   image is attached again and mounted. An image is formatted only while
//!   it carries no signature (it was created, or a crash came before
//!   mkfs finished).
//! * `device`: the config `path` is the block device; it is mounted at
//!   `<state_dir>/<pool name>`. It is formatted only when it carries no
//!   signature at all (`blkid -p`, plus a check of well-known magic
//!   numbers in its first MiB); a btrfs is mounted as it is; anything else
//!   is refused with an error naming the signature.
//! * `existing`: `path` must be a directory on a mounted btrfs (statfs type
//!   `BTRFS_SUPER_MAGIC`); layerd neither formats nor mounts it.
//!
//! Mount specs name the block device (`/dev/loopN`, the configured device,
//! or the first device of an existing btrfs) with `subvolid=N`, which
//! mount(8) takes while the pool itself stays mounted.
//!
//! # Discard
//!
//! layerd mounts loop and device pools with `discard=async` (the kernel's
//! default since 6.2 where the device discards, made explicit so older
//! kernels and `nodiscard` defaults do not differ): freed extents are
//! discarded in batches off the write path, and for a loop pool every
//! discard punches a hole in the image, so the host gets the space of
//! purged layers back within minutes without waiting for the weekly trim.
//! Synchronous `discard` would stall transaction commits on every delete,
//! which is why it is not used. The scheduled FITRIM ([`Backend::trim`])
//! stays: it catches what async discard skipped (small extents, space
//! freed before the mount, devices mounted elsewhere with other options)
//! and reports a number. Existing pools keep the admin's mount options.
//!
//! # Layout inside the file system
//!
//! ```text
//! <mnt>/<id>            a layer's subvolume (same names as the directory
//!                       drivers, so start-up reconciliation finds and
//!                       quarantines `<pool>/<id>` for every driver alike)
//! <mnt>/t/              trash: removed subvolumes (renamed here) until purge
//! <mnt>/q/              quarantine: unrecorded things, never deleted
//! <mnt>/.layerd-pool    the token binding this file system to the store
//! ```
//!
//! Durability: a snapshot and a flag change commit their transaction
//! before the ioctl returns; a plain subvolume does not, so `create`
//! commits it before the engine records the layer as ready. The rename of
//! `remove` is not committed at once (btrfs commits within 30 s): if the
//! engine's removal of its tombstone reaches the disk first and the host
//! crashes, the layer is back at `<mnt>/<id>` with no record, and start-up
//! reconciliation quarantines it (it never deletes unrecorded data), as for
//! the directory drivers, whose renames are not synced either.
//!
//! A read-only subvolume cannot be renamed into another directory (btrfs
//! answers `EROFS`: the moved directory's `..` must change), so `remove`
//! clears the flag before the rename; the layer is in the trash, unused,
//! from then on. `quarantine` sets it again after moving.
//!
//! # Usage
//!
//! Usage is computed from the subvolume's own b-tree with a tree search
//! (`sys::btrfs::exclusive_usage`): the distinct data extents written since
//! the layer's snapshot was taken (generation newer than the snapshot's
//! creation transaction), and the inodes changed since. Tree blocks not
//! written since the snapshot are skipped by the search, so the cost is
//! that of what the layer changed. A parent keeps counting its data after
//! children are made from it, partially rewritten files count only the new
//! extents, and reflinks inside a layer count once. Not counted: dirty
//! data not yet written back (it has no extent yet), and metadata blocks.
//!
//! Usage stays this tree search even when quotas (qgroups) are enabled on
//! the pool: a qgroup's "exclusive" bytes of a committed parent fall to
//! almost nothing as soon as one child shares its extents (what Usage
//! means is "what this layer wrote", not "what removing it would free"),
//! and qgroup numbers are only current after a transaction commit, and
//! wrong while the rescan that follows enabling quotas runs. FIEMAP's
//! `FIEMAP_EXTENT_SHARED` flag has the same problem as qgroups for
//! parents and needs a walk of the (untrusted) tree.
//!
//! # Size limits (qgroups)
//!
//! A layer created with the label `layerd.io/size` (the engine parses it
//! and passes bytes; the backend never sees labels) gets a qgroup limit on
//! its own level-0 qgroup `0/<subvolume id>`, on exclusive bytes (see
//! [`Backend::limit_size`] on this type for why not referenced bytes).
//! Writes past it fail with `EDQUOT` inside the layer. Quotas are off
//! until the first such layer: enabling them makes every extent change
//! account backrefs, which costs on every write and makes snapshot
//! deletion and balance slower, so pools that never limit a layer never
//! pay for it. Once enabled (logged, and found again at open) they stay
//! enabled.
//!
//! # Space
//!
//! `space()` reports data and metadata as "what they hold of what they can
//! grow to": size = space allocated to that kind of chunk plus the
//! unallocated device space it could still take (divided by its copies,
//! e.g. 2 for DUP metadata); used = bytes in use (for metadata, plus the
//! global reserve btrfs keeps for itself). So a nearly full metadata chunk
//! with plenty of unallocated space is healthy, while the state that ends
//! in ENOSPC with `df` showing free space (every chunk allocated, metadata
//! full) shows as metadata critical. `unallocated` is the raw device space
//! in no chunk and `device_size` the raw size of all devices; the engine
//! turns their ratio into Health and starts a balance by itself when it
//! falls below the pool's `balance_unallocated_percent` (see
//! `engine::autobalance`). The backend only measures and balances; the
//! policy is the engine's.

mod grow;
mod setup;

use setup::*;

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::dirpool::remove_all_if_exists;
use crate::backend::{
    Backend, BackendError, BalanceOptions, DiffTree, Found, JobControl, LayerRef, Space,
};
use crate::shared::layer::Kind;
use crate::sys::btrfs as sys;
use crate::sys::loopdev;
use crate::sys::mount::{self, MountSpec};
use crate::sys::mountinfo;
use crate::sys::private;

const TRASH: &str = "t";
const QUARANTINE: &str = "q";
/// Holds the token that binds this file system to layerd's store.
const TOKEN: &str = ".layerd-pool";
/// Mount options of pools layerd mounts itself (see the module doc).
const POOL_MOUNT_OPTIONS: &str = "discard=async";
/// The longest a purge waits for the cleaner to drop what it deleted (a
/// large tree takes a while; the space still comes back after this).
const PURGE_WAIT: Duration = Duration::from_secs(300);
/// How often a running balance's progress is read.
const BALANCE_POLL: Duration = Duration::from_millis(250);

/// Where a btrfs pool comes from, resolved from the pool's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setup {
    /// A sparse image `<mount>.img` of `size` bytes, loop-attached and
    /// mounted at `mount`.
    Loop {
        mount: PathBuf,
        size: u64,
        label: String,
    },
    /// A block device, mounted at `mount`.
    Device {
        device: PathBuf,
        mount: PathBuf,
        label: String,
    },
    /// A directory on a btrfs mounted by someone else.
    Existing { path: PathBuf },
}

pub struct Btrfs {
    backing: &'static str,
    /// Quotas (qgroups) are enabled on this file system: found so at open,
    /// or enabled by the first layer with a size limit.
    quotas: AtomicBool,
    /// The directory holding the layers (the pool's mount point).
    root: PathBuf,
    /// The block device named in mount specs.
    device: PathBuf,
}

// Config checks the image before the pool exists, so the name is a shared
// word; tests and bench reach it here.
pub use crate::shared::image::image_path;

fn unusable(path: &Path, why: impl Into<String>) -> BackendError {
    BackendError::Unusable {
        path: path.to_path_buf(),
        why: why.into(),
    }
}

impl Btrfs {
    /// Opens (creating, attaching, formatting, mounting as the backing
    /// needs) the pool's file system and its layout.
    pub fn open(setup: &Setup) -> Result<Self, BackendError> {
        let b = match setup {
            Setup::Loop { mount, size, label } => open_loop(mount, *size, label)?,
            Setup::Device {
                device,
                mount,
                label,
            } => {
                let md = fs::metadata(device).map_err(|e| BackendError::io("stat", device, e))?;
                if !md.file_type().is_block_device() {
                    return Err(unusable(device, "is not a block device"));
                }
                mount_pool(device, mount, label, "device")?;
                Btrfs {
                    quotas: AtomicBool::new(false),
                    backing: "device",
                    root: mount.clone(),
                    device: device.clone(),
                }
            }
            Setup::Existing { path } => open_existing(path)?,
        };
        // The pool's root (the mounted btrfs's root directory, or the
        // existing directory) is root-only: its subvolumes hold setuid
        // files and device nodes the host's users must not reach.
        private::tighten(&b.root).map_err(|e| BackendError::io("chmod", &b.root, e))?;
        for d in [TRASH, QUARANTINE] {
            let p = b.root.join(d);
            match fs::DirBuilder::new().mode(0o700).create(&p) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(BackendError::io("mkdir", &p, e))
                }
                _ => {}
            }
        }
        // Unknown counts as off: enabling again is harmless.
        let quotas = sys::quota_enabled(&b.root).unwrap_or(false);
        b.quotas.store(quotas, Ordering::Relaxed);
        tracing::info!(pool = %b.root.display(), device = %b.device.display(), backing = b.backing, quotas, "btrfs pool ready");
        Ok(b)
    }

    /// The block device mount specs name.
    pub fn device(&self) -> &Path {
        &self.device
    }

    fn layer(&self, id: u64) -> PathBuf {
        self.root.join(id.to_string())
    }

    fn trash(&self) -> PathBuf {
        self.root.join(TRASH)
    }

    fn spec(&self, l: LayerRef<'_>) -> Result<MountSpec, BackendError> {
        let path = self.layer(l.id);
        let subvol =
            sys::subvolume_id(&path).map_err(|e| BackendError::io("subvolume id", &path, e))?;
        Ok(MountSpec {
            fstype: "btrfs".into(),
            source: self.device.to_string_lossy().into_owned(),
            options: vec![
                format!("subvolid={subvol}"),
                if l.kind == Kind::Active { "rw" } else { "ro" }.into(),
            ],
        })
    }

    /// Deletes a subvolume (nested ones first) or a plain tree; idempotent.
    fn delete(&self, dir: &Path, name: &str) -> Result<(), BackendError> {
        let path = dir.join(name);
        match sys::is_subvolume(&path) {
            Ok(true) => match sys::delete_subvolume_recursive(dir, name) {
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                r => r.map_err(|e| BackendError::io("delete subvolume", &path, e)),
            },
            Ok(false) => remove_all_if_exists(&path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackendError::io("stat", &path, e)),
        }
    }

    /// Runs one balance pass while a poller reports progress into `ctl`
    /// (`done` passes of `total` finished before this one) and cancels the
    /// kernel's balance when the job is cancelled.
    fn balance_pass(
        &self,
        filters: &sys::BalanceFilters,
        ctl: &JobControl,
        done: usize,
        total: usize,
    ) -> io::Result<sys::BalanceProgress> {
        let stop = Arc::new(AtomicBool::new(false));
        std::thread::scope(|s| {
            let poller = {
                let stop = stop.clone();
                let root = &self.root;
                s.spawn(move || {
                    let mut cancelled = false;
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(Some(p)) = sys::balance_progress(root) {
                            // `expected` is 0 until the kernel has counted
                            // the chunks; progress never goes backwards.
                            let pass = if p.expected == 0 { 0.0 } else { p.fraction() };
                            let overall = (done as f64 + pass) / total as f64;
                            ctl.set_progress(overall.max(ctl.progress().unwrap_or(0.0)));
                            if ctl.is_cancelled() && !cancelled {
                                tracing::info!(pool = %root.display(), "cancelling balance");
                                cancelled = sys::balance_cancel(root).is_ok();
                            }
                        }
                        std::thread::sleep(BALANCE_POLL);
                    }
                })
            };
            let r = sys::balance_start(&self.root, filters);
            stop.store(true, Ordering::Relaxed);
            let _ = poller.join();
            r
        })
    }
}

/// Ids are written by layerd as plain decimal; anything else is not ours.
fn parse_id(name: &str) -> Option<u64> {
    if name.is_empty() || name.starts_with('0') || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

fn exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

impl Backend for Btrfs {
    fn driver(&self) -> &'static str {
        "btrfs"
    }
    fn backing(&self) -> &'static str {
        self.backing
    }
    fn path(&self) -> &Path {
        &self.root
    }

    fn create(&self, l: LayerRef<'_>) -> Result<(), BackendError> {
        let name = l.id.to_string();
        let path = self.layer(l.id);
        let view = l.kind == Kind::View;
        match l.parents.first() {
            Some(p) => {
                let src = self.layer(*p);
                sys::snapshot(&src, &self.root, &name, view)
                    .map_err(|e| BackendError::io("snapshot", &path, e))?;
            }
            None => {
                sys::create_subvolume(&self.root, &name)
                    .map_err(|e| BackendError::io("create subvolume", &path, e))?;
                // The kernel applies the daemon's umask to the new root;
                // layer roots are 0755 like every driver's.
                fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                    .map_err(|e| BackendError::io("chmod", &path, e))?;
                if view {
                    sys::set_readonly(&path, true)
                        .map_err(|e| BackendError::io("set read-only", &path, e))?;
                }
                // Subvolume creation does not commit the transaction (a
                // snapshot does): make the new layer durable before the
                // engine records it as ready.
                sys::commit_transaction(&self.root)
                    .map_err(|e| BackendError::io("commit transaction", &self.root, e))?;
            }
        }
        Ok(())
    }

    fn commit(&self, id: u64) -> Result<(), BackendError> {
        let path = self.layer(id);
        sys::set_readonly(&path, true).map_err(|e| BackendError::io("set read-only", &path, e))
    }

    fn remove(&self, id: u64) -> Result<(), BackendError> {
        let path = self.layer(id);
        if !exists(&path) {
            return Ok(());
        }
        if sys::is_subvolume(&path).unwrap_or(false)
            && sys::readonly(&path).map_err(|e| BackendError::io("get flags", &path, e))?
        {
            // A read-only subvolume cannot move to another directory.
            sys::set_readonly(&path, false)
                .map_err(|e| BackendError::io("clear read-only", &path, e))?;
        }
        let mut dest = self.trash().join(id.to_string());
        if exists(&dest) {
            dest = self
                .trash()
                .join(format!("{id}-{}", crate::shared::time::now_us()));
        }
        match fs::rename(&path, &dest) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r.map_err(|e| BackendError::io("rename into trash", &path, e)),
        }
    }

    fn discard(&self, id: u64) -> Result<(), BackendError> {
        self.delete(&self.root, &id.to_string())
    }

    fn purge(&self) -> Result<u64, BackendError> {
        let trash = self.trash();
        let mut freed = 0;
        let mut deleted = false;
        for entry in fs::read_dir(&trash).map_err(|e| BackendError::io("readdir", &trash, e))? {
            let entry = entry.map_err(|e| BackendError::io("readdir", &trash, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str().map(str::to_string) else {
                // layerd names nothing that way; plain removal.
                remove_all_if_exists(&entry.path())?;
                continue;
            };
            if name.starts_with('.') {
                continue; // a token being written
            }
            let path = entry.path();
            freed += if sys::is_subvolume(&path).unwrap_or(false) {
                sys::exclusive_usage(&path).map(|c| c.bytes).unwrap_or(0)
            } else {
                crate::sys::fstree::tree_usage(&path)
                    .map(|(b, _)| b)
                    .unwrap_or(0)
            };
            self.delete(&trash, &name)?;
            deleted = true;
        }
        if deleted {
            // The space comes back once the cleaner has dropped the trees
            // and the transaction after that committed: wait for both, so
            // that what Cleanup reports is usable when it returns.
            self.reclaim(PURGE_WAIT)?;
        }
        Ok(freed)
    }

    fn reclaim(&self, wait: Duration) -> Result<bool, BackendError> {
        let left = sys::reclaim_deleted(&self.root, wait)
            .map_err(|e| BackendError::io("wait for the btrfs cleaner", &self.root, e))?;
        if !left.is_empty() {
            tracing::warn!(pool = %self.root.display(), subvolumes = ?left, waited = ?wait, "the btrfs cleaner has not dropped these deleted subvolumes yet; their space comes back later");
        }
        Ok(true)
    }

    fn exists(&self, id: u64) -> bool {
        exists(&self.layer(id))
    }

    fn mounts(&self, l: LayerRef<'_>) -> Result<Option<Vec<MountSpec>>, BackendError> {
        Ok(Some(vec![self.spec(l)?]))
    }

    fn mount(&self, l: LayerRef<'_>, target: &Path) -> Result<(), BackendError> {
        let spec = self.spec(l)?;
        mount::mount_spec(&spec, target)?;
        // Check the kernel mounted the subvolume asked for.
        let want = sys::subvolume_id(&self.layer(l.id)).ok();
        let got = sys::subvolume_id(target).ok();
        if want.is_none() || want != got {
            let _ = mount::unmount(target, true);
            return Err(BackendError::Mount(mount::MountError::Mismatch {
                target: target.to_path_buf(),
                detail: format!(
                    "expected subvolume {want:?} of layer {}, found {got:?}",
                    l.id
                ),
            }));
        }
        Ok(())
    }

    fn diff_tree(&self, l: LayerRef<'_>) -> Result<DiffTree, BackendError> {
        // A subvolume is the layer's whole tree; its parent's snapshot
        // sits beside it, so Export compares the two directly.
        Ok(DiffTree::Full(self.layer(l.id)))
    }

    fn usage(&self, l: LayerRef<'_>) -> Result<(u64, u64), BackendError> {
        let path = self.layer(l.id);
        // Data still in the page cache (delayed allocation) has no extents
        // yet, and extents are what is counted: write it back first, so a
        // layer written a moment ago does not read 0 bytes. syncfs is the
        // one call that flushes a subvolume's files (it syncs the whole
        // pool; nearly free when nothing is dirty).
        let dir = fs::File::open(&path).map_err(|e| BackendError::io("open", &path, e))?;
        nix::unistd::syncfs(&dir).map_err(|e| BackendError::io("syncfs", &path, e.into()))?;
        let c = sys::exclusive_usage(&path)
            .map_err(|e| BackendError::io("measure subvolume", &path, e))?;
        Ok((c.bytes, c.inodes))
    }

    fn space(&self) -> Result<Space, BackendError> {
        let s = sys::space_summary(&self.root)
            .map_err(|e| BackendError::io("btrfs space info", &self.root, e))?;
        let st = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| BackendError::io("statvfs", &self.root, e.into()))?;
        Ok(Space {
            data_size: s.data_total + s.unallocated / s.data_copies.max(1),
            data_used: s.data_used,
            metadata_size: s.metadata_total + s.unallocated / s.metadata_copies.max(1),
            metadata_used: s.metadata_used + s.global_reserve,
            unallocated: Some(s.unallocated),
            device_size: Some(s.device_size),
            read_only: st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY),
        })
    }

    fn scan(&self) -> Result<Vec<Found>, BackendError> {
        let mut found = Vec::new();
        for entry in
            fs::read_dir(&self.root).map_err(|e| BackendError::io("readdir", &self.root, e))?
        {
            let entry = entry.map_err(|e| BackendError::io("readdir", &self.root, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if [TRASH, QUARANTINE, TOKEN].contains(&name.as_ref()) {
                continue;
            }
            match parse_id(&name) {
                Some(id) => found.push(Found::Layer(id)),
                None => found.push(Found::Unknown(entry.path())),
            }
        }
        Ok(found)
    }

    fn quarantine(&self, what: &Path) -> Result<PathBuf, BackendError> {
        let base = what
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "unnamed".into());
        let dest = self
            .root
            .join(QUARANTINE)
            .join(format!("{base}-{}", crate::shared::time::now_us()));
        let ro = sys::is_subvolume(what).unwrap_or(false) && sys::readonly(what).unwrap_or(false);
        if ro {
            sys::set_readonly(what, false)
                .map_err(|e| BackendError::io("clear read-only", what, e))?;
        }
        fs::rename(what, &dest).map_err(|e| BackendError::io("quarantine (rename)", what, e))?;
        if ro {
            sys::set_readonly(&dest, true)
                .map_err(|e| BackendError::io("set read-only", &dest, e))?;
        }
        Ok(dest)
    }

    fn trim(&self, ctl: &JobControl) -> Result<u64, BackendError> {
        if ctl.is_cancelled() {
            return Err(BackendError::io(
                "trim",
                &self.root,
                io::Error::from_raw_os_error(libc::ECANCELED),
            ));
        }
        // FITRIM is one uninterruptible call: no progress until it returns.
        let trimmed = crate::sys::trim::fitrim(&self.root)?;
        ctl.set_bytes(trimmed);
        ctl.set_progress(1.0);
        tracing::info!(pool = %self.root.display(), trimmed, "trim done");
        Ok(trimmed)
    }

    /// Escalating passes: data chunks at most `dusage[0]`% full, then
    /// `dusage[1]`%, …, then metadata likewise. Returns the bytes given back
    /// to the unallocated pool (the rise in unallocated device space), which
    /// is what a balance is run for; the kernel counts relocated chunks, not
    /// bytes. Cancelling stops the running pass (the kernel finishes the
    /// chunk it is moving) and fails with `ECANCELED`.
    fn balance(&self, opts: &BalanceOptions, ctl: &JobControl) -> Result<u64, BackendError> {
        let passes: Vec<sys::BalanceFilters> = opts
            .dusage
            .iter()
            .map(|&u| sys::BalanceFilters {
                data_usage: Some(u),
                metadata_usage: None,
            })
            .chain(opts.musage.iter().map(|&u| sys::BalanceFilters {
                data_usage: None,
                metadata_usage: Some(u),
            }))
            .collect();
        let unallocated = || {
            sys::unallocated(&self.root)
                .map_err(|e| BackendError::io("btrfs device info", &self.root, e))
        };
        let before = unallocated()?;
        let total = passes.len().max(1);
        for (i, f) in passes.iter().enumerate() {
            if ctl.is_cancelled() {
                return Err(BackendError::io(
                    "balance",
                    &self.root,
                    io::Error::from_raw_os_error(libc::ECANCELED),
                ));
            }
            let p = self.balance_pass(f, ctl, i, total).map_err(|e| {
                BackendError::io(
                    if f.data_usage.is_some() {
                        "balance data chunks"
                    } else {
                        "balance metadata chunks"
                    },
                    &self.root,
                    e,
                )
            })?;
            ctl.set_progress((i + 1) as f64 / total as f64);
            ctl.set_bytes(unallocated()?.saturating_sub(before));
            tracing::info!(pool = %self.root.display(), dusage = ?f.data_usage, musage = ?f.metadata_usage, relocated_chunks = p.completed, "balance pass done");
        }
        let gained = unallocated()?.saturating_sub(before);
        ctl.set_bytes(gained);
        ctl.set_progress(1.0);
        Ok(gained)
    }

    /// See `grow.rs`.
    fn extend(&self, bytes: u64, ctl: &JobControl) -> Result<u64, BackendError> {
        self.grow(bytes, ctl)
    }

    fn backing_devices(&self) -> Vec<crate::shared::device::BackingDevice> {
        self.devices()
    }

    fn device_resized(&self) -> Result<Option<u64>, BackendError> {
        self.take_up_resize()
    }

    fn can_limit_size(&self) -> bool {
        true
    }

    /// A qgroup limit on the layer's own qgroup `0/<subvolume id>`, on
    /// *exclusive* bytes (`max_excl`): what the layer adds beyond its
    /// parent, the same quantity Usage reports, so the same label means the
    /// same on any parent. A referenced-bytes limit would count the
    /// parent's shared data too: a child of a 1 GiB image with a 512M limit
    /// would be over it before its first write. (A parent cannot be removed
    /// while it has children, so shared data never turns exclusive under a
    /// child's limit.) Quotas are enabled on the pool the first time one is
    /// needed, and stay enabled.
    fn limit_size(&self, id: u64, bytes: u64) -> Result<(), BackendError> {
        if !self.quotas.load(Ordering::Relaxed) {
            sys::quota_enable(&self.root)
                .map_err(|e| BackendError::io("enable btrfs quotas", &self.root, e))?;
            if !self.quotas.swap(true, Ordering::Relaxed) {
                tracing::info!(pool = %self.root.display(), "enabled btrfs quotas (qgroups) for a layer size limit");
            }
        }
        let path = self.layer(id);
        sys::qgroup_limit_exclusive(&path, bytes)
            .map_err(|e| BackendError::io("set qgroup limit", &path, e))
    }

    fn read_token(&self) -> Result<Option<u64>, BackendError> {
        crate::backend::dirpool::read_token(&self.root)
    }

    fn write_token(&self, token: u64) -> Result<(), BackendError> {
        crate::backend::dirpool::write_token(&self.root, &self.trash(), token)
    }
}

/// Whether this host can run a loop-backed btrfs pool (the built-in
/// default pool's second choice): btrfs in the kernel, loop devices and
/// `mkfs.btrfs`. `Err` names the first thing missing.
pub fn host_support() -> Result<(), String> {
    use crate::sys::host;
    if !host::kernel_has_filesystem("btrfs") {
        return Err("the kernel has no btrfs".into());
    }
    if !Path::new("/dev/loop-control").exists() {
        return Err("no loop devices (/dev/loop-control)".into());
    }
    if host::find_program("mkfs.btrfs").is_none() {
        return Err("mkfs.btrfs is not installed".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_is_beside_the_mount_point() {
        assert_eq!(
            image_path(Path::new("/var/lib/layerd/main")),
            PathBuf::from("/var/lib/layerd/main.img")
        );
        assert_eq!(
            image_path(Path::new("/srv/pool.v2")),
            PathBuf::from("/srv/pool.v2.img")
        );
    }

    #[test]
    fn ids_are_canonical_decimal() {
        assert_eq!(parse_id("42"), Some(42));
        for bad in ["", "042", "t", "q", ".layerd-pool", "1x"] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn magic_numbers_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        let mut data = vec![0u8; 2 << 20];
        fs::write(&img, &data).unwrap();
        assert_eq!(probe_signature(&img).unwrap(), None, "zeros carry nothing");
        data[0x438] = 0x53;
        data[0x439] = 0xef;
        // A real ext4 needs more than its magic for blkid; the own check
        // still sees it.
        fs::write(&img, &data).unwrap();
        assert!(probe_signature(&img).unwrap().is_some());
    }
}
