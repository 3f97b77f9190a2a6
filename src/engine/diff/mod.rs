//! Layer diffs: Apply (an OCI layer tar into an active layer), Export (a
//! layer's changes against its parent as an OCI layer tar) and the import
//! of legacy Docker aufs trees (aufs.rs), on every backend.
//!
//! Where the files are comes from `Backend::diff_tree`: an overlay upper
//! directory (native whiteouts), a directory holding the whole tree (vfs,
//! btrfs: real deletions, Export compares with the parent's tree), or
//! nothing, in which case the layer is mounted under
//! `<run_dir>/d/<id>.<n>` for the call and unmounted after.
//!
//! Apply returns the content bytes of the regular files it wrote
//! (uncompressed, headers excluded); Export the bytes of tar it wrote.
//! A view has no changes of its own: its Export is an empty tar.
//! A failed Apply leaves the layer marked with the label
//! `layerd.io/apply-failed` (the reason); such a layer is removable as
//! any other, and nothing outside it was touched.

pub mod apply;
mod aufs;
pub mod export;
mod input;
pub mod watch;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{Mode, OFlags};

use super::error::{Error, Result};
use super::types::{Kind, LayerRecord, State};
use super::{layer_ref, Engine};
use crate::backend::{BackendError, DiffTree, LayerRef};
use crate::shared::error::ErrorKind;
use crate::shared::time::now_us;
use crate::sys::mount;

/// The label a failed Apply leaves on its layer.
pub const APPLY_FAILED_LABEL: &str = "layerd.io/apply-failed";

/// How whiteouts are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeMode {
    /// overlay upper: 0/0 character devices and the opaque xattr.
    Upper,
    /// the whole tree: real deletions.
    Full,
}

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error("tar entry {entry:?}: {why}")]
    Entry { entry: String, why: String },
    #[error("{0}")]
    Input(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Writing to the caller's descriptor failed (not open for writing,
    /// a closed pipe, a full file system of the caller's): the caller's
    /// error, never the pool's.
    #[error("writing to the output descriptor: {source}")]
    Output {
        #[source]
        source: std::io::Error,
    },
    /// The call was stopped before its descriptor ended (watch.rs): the
    /// caller left, the daemon is stopping, or the idle timeout passed.
    #[error("stopped: {0}")]
    Stopped(watch::Stopped),
    #[error("tar entry {entry:?}: cannot set xattr {name}: {source}")]
    Xattr {
        entry: String,
        name: String,
        #[source]
        source: std::io::Error,
    },
}

impl DiffError {
    pub fn io(op: &'static str, path: &[u8], source: std::io::Error) -> Self {
        DiffError::Io {
            op,
            path: String::from_utf8_lossy(path).into_owned(),
            source,
        }
    }
    pub fn output(source: std::io::Error) -> Self {
        DiffError::Output { source }
    }
    pub fn xattr(entry: &str, name: &[u8], source: std::io::Error) -> Self {
        DiffError::Xattr {
            entry: entry.to_string(),
            name: String::from_utf8_lossy(name).into_owned(),
            source,
        }
    }
    /// The errno of the failed call, if a call failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            DiffError::Io { source, .. } | DiffError::Xattr { source, .. } => source.raw_os_error(),
            // The caller's descriptor failed (or the call was stopped), not the layer.
            DiffError::Entry { .. }
            | DiffError::Input(_)
            | DiffError::Output { .. }
            | DiffError::Stopped(_) => None,
        }
    }
    pub fn kind(&self) -> ErrorKind {
        match self {
            // The caller's descriptor never ended: its error, as a broken one.
            DiffError::Stopped(watch::Stopped::Idle { .. } | watch::Stopped::CallerLeft) => {
                ErrorKind::InvalidArgument
            }
            DiffError::Stopped(watch::Stopped::Shutdown) => ErrorKind::FailedPrecondition,
            DiffError::Entry { .. } | DiffError::Input(_) | DiffError::Output { .. } => {
                ErrorKind::InvalidArgument
            }
            DiffError::Io { source, .. } | DiffError::Xattr { source, .. } => {
                match source.raw_os_error() {
                    Some(libc::ENOSPC) | Some(libc::EDQUOT) => ErrorKind::PoolFull,
                    // Names the file system cannot hold, xattrs it refuses:
                    // the input is at fault.
                    Some(libc::ENAMETOOLONG)
                    | Some(libc::EINVAL)
                    | Some(libc::ENOTSUP)
                    | Some(libc::E2BIG)
                    | Some(libc::ERANGE)
                    | Some(libc::EPERM) => ErrorKind::InvalidArgument,
                    Some(libc::EPIPE) => ErrorKind::InvalidArgument,
                    _ => ErrorKind::Internal,
                }
            }
        }
    }
}

/// Checks that the caller's descriptor is open the way a call uses it
/// (`write`: Export writes into it; else Apply reads from it), so that a
/// wrong one is the caller's `InvalidArgument` before anything is done.
pub fn check_descriptor(fd: std::os::fd::BorrowedFd<'_>, write: bool) -> Result<()> {
    let flags = rustix::fs::fcntl_getfl(fd)
        .map_err(|e| Error::InvalidArgument(format!("the descriptor is not usable: {e}")))?;
    let (call, want) = if write {
        ("Export writes the tar into it", OFlags::WRONLY)
    } else {
        ("Apply reads the tar from it", OFlags::RDONLY)
    };
    let mode = flags & OFlags::ACCMODE;
    if flags.contains(OFlags::PATH) || (mode != want && mode != OFlags::RDWR) {
        let is = if flags.contains(OFlags::PATH) {
            "an O_PATH descriptor"
        } else if mode == OFlags::WRONLY {
            "open write-only"
        } else {
            "open read-only"
        };
        return Err(Error::InvalidArgument(format!(
            "the descriptor is {is}, but {call}"
        )));
    }
    Ok(())
}

/// A layer's files for one call.
struct Tree {
    fd: OwnedFd,
    mode: TreeMode,
    _mounted: Unmount,
}

/// Unmounts and removes a private diff mount on drop.
struct Unmount(Option<PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if let Err(e) = mount::unmount(&p, false) {
                tracing::warn!(path = %p.display(), error = %e, "unmounting a diff mount failed; detaching it");
                let _ = mount::unmount(&p, true);
            }
            let _ = std::fs::remove_dir(&p);
        }
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

fn open_root(p: &Path) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        p,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )?)
}

impl Engine {
    /// The files of a layer (`l.kind` decides a mount's writability).
    fn diff_tree_of(&self, pool: &str, l: LayerRef<'_>) -> Result<Tree> {
        let backend = self.get_pool(pool)?.backend()?;
        let (dir, mode, mounted) = match backend.diff_tree(l)? {
            DiffTree::Upper(p) => (p, TreeMode::Upper, None),
            DiffTree::Full(p) => (p, TreeMode::Full, None),
            DiffTree::Mount => {
                let base = self.run_dir().join("d");
                // Root-only, as everything on the way to layer contents.
                crate::sys::private::ensure_dir(&base)
                    .map_err(|e| BackendError::io("mkdir", &base, e))?;
                let target = base.join(format!("{}.{}", l.id, SEQ.fetch_add(1, Ordering::Relaxed)));
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .mode(crate::sys::private::MODE)
                    .create(&target)
                    .map_err(|e| BackendError::io("mkdir", &target, e))?;
                if let Err(e) = backend.mount(l, &target) {
                    let _ = std::fs::remove_dir(&target);
                    return Err(e.into());
                }
                (target.clone(), TreeMode::Full, Some(target))
            }
        };
        let guard = Unmount(mounted);
        let fd = open_root(&dir).map_err(|e| BackendError::io("open", &dir, e))?;
        Ok(Tree {
            fd,
            mode,
            _mounted: guard,
        })
    }

    /// Apply(key, fd): unpacks the OCI layer tar read from `input` into
    /// active layer `key`; returns the content bytes written.
    pub fn apply(&self, key: &str, input: impl Read + Send) -> Result<u64> {
        self.apply_in(key, input, None)
    }

    /// Apply from a caller's descriptor, watched (watch.rs): it ends when
    /// `cancel` fires (the caller left, SIGTERM) or the descriptor stays
    /// silent for the idle timeout, the layer then marked failed as for
    /// broken input.
    pub fn apply_fd(&self, key: &str, fd: OwnedFd, cancel: &watch::Cancel) -> Result<u64> {
        self.diff_watch.register(cancel);
        let input = watch::Watched::new(fd, cancel.clone(), self.diff_watch.idle_timeout())
            .map_err(|e| Error::InvalidArgument(format!("the descriptor is not usable: {e}")))?;
        self.apply_in(key, input, Some(cancel))
    }

    /// Export into a caller's descriptor, watched as [`Engine::apply_fd`].
    pub fn export_fd(&self, key: &str, fd: OwnedFd, cancel: &watch::Cancel) -> Result<u64> {
        self.diff_watch.register(cancel);
        let out = watch::Watched::new(fd, cancel.clone(), self.diff_watch.idle_timeout())
            .map_err(|e| Error::InvalidArgument(format!("the descriptor is not usable: {e}")))?;
        self.export(key, std::io::BufWriter::with_capacity(1 << 20, out))
            .map_err(|e| match cancel.reason() {
                Some(why) => {
                    tracing::warn!(key, error = %e, "export stopped: {why}");
                    DiffError::Stopped(why).into()
                }
                None => e,
            })
    }

    /// How long an Apply or Export waits on a silent descriptor
    /// (`[daemon] diff_idle_timeout`).
    pub fn set_diff_idle_timeout(&self, d: std::time::Duration) {
        self.diff_watch.set_idle_timeout(d);
    }

    /// SIGTERM: stops every Apply and Export on a caller's descriptor (and
    /// any started later), then waits up to `wait` for all diffs to end
    /// (a stopped Apply has marked its layer failed by then). False if some
    /// still run.
    pub fn stop_diffs(&self, wait: std::time::Duration) -> bool {
        self.diff_watch.stop_all();
        let until = std::time::Instant::now() + wait;
        loop {
            let running = super::lock(&self.diff_use).len();
            if running == 0 {
                return true;
            }
            if std::time::Instant::now() > until {
                tracing::warn!(running, "diffs still running at shutdown");
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn apply_in(
        &self,
        key: &str,
        input: impl Read + Send,
        cancel: Option<&watch::Cancel>,
    ) -> Result<u64> {
        let (rec, parents, _use) = self.claim(key, true)?;
        if rec.kind != Kind::Active {
            return Err(Error::NotWritable {
                key: key.to_string(),
                kind: rec.kind,
            });
        }
        if rec.state != State::Ready {
            return Err(Error::Busy {
                key: key.to_string(),
                why: "another operation on it is in progress".into(),
            });
        }
        let tree = self.diff_tree_of(&rec.pool, layer_ref(&rec, &parents))?;
        let fd = tree
            .fd
            .try_clone()
            .map_err(|e| BackendError::io("dup", Path::new("."), e))?;
        let mut applier = apply::Applier::new(fd, tree.mode);
        let r = applier.run(Box::new(input));
        drop(tree);
        match r {
            Ok(done) => {
                tracing::info!(pool = %rec.pool, layer = rec.id, bytes = done.bytes, entries = done.entries, "layer tar applied");
                let _ = self.sample(&rec.pool, false);
                Ok(done.bytes)
            }
            Err(e) => {
                let e = match cancel.and_then(watch::Cancel::reason) {
                    Some(why) => DiffError::Stopped(why).into(),
                    None => apply_error(&rec, e),
                };
                tracing::warn!(pool = %rec.pool, layer = rec.id, error = %e, errno = e.errno(), entries = applier.done.entries, "apply failed; the layer is marked");
                self.mark_failed(&rec, &e.to_string());
                // The pool's Health and DataUsed must not wait for the
                // monitor's next tick after a write ran out of space.
                self.sample_after_failure(&rec.pool, &e);
                Err(e)
            }
        }
    }

    /// Looks `key` up and marks its layer in use by an Apply (`exclusive`)
    /// or an Export until the returned guard drops. Under `mount_lock`, as
    /// Commit and Remove check it, so neither can slip in between: a layer
    /// committed while a tar is still being written into it would not be
    /// immutable, and one removed would take the Apply's writes with it.
    fn claim(&self, key: &str, exclusive: bool) -> Result<(LayerRecord, Vec<u64>, DiffUse<'_>)> {
        let _m = super::lock(&self.mount_lock);
        let (rec, parents) = self.lookup(key)?;
        let mut uses = super::lock(&self.diff_use);
        let n = uses.get(&rec.id).copied().unwrap_or(0);
        if n < 0 || (exclusive && n > 0) {
            let what = if n < 0 { "an Apply" } else { "an Export" };
            return Err(Error::Busy {
                key: key.to_string(),
                why: format!("{what} of it is running"),
            });
        }
        uses.insert(rec.id, if exclusive { -1 } else { n + 1 });
        drop(uses);
        let guard = DiffUse {
            engine: self,
            id: rec.id,
        };
        Ok((rec, parents, guard))
    }

    /// Busy while an Apply or Export works in the layer (called by Commit
    /// and Remove with `mount_lock` held).
    pub(super) fn check_no_diff(&self, rec: &LayerRecord, key: &str) -> Result<()> {
        match super::lock(&self.diff_use).get(&rec.id) {
            Some(n) if *n != 0 => Err(Error::Busy {
                key: key.to_string(),
                why: format!(
                    "{} of it is running: wait for it to finish",
                    if *n < 0 { "an Apply" } else { "an Export" }
                ),
            }),
            _ => Ok(()),
        }
    }

    fn mark_failed(&self, rec: &LayerRecord, why: &str) {
        let mut why: String = why.chars().take(512).collect();
        if why.is_empty() {
            why.push_str("failed");
        }
        let r = self.store.write(true, |tx| -> Result<()> {
            if let Some(mut r) = tx.get(rec.id)? {
                r.labels.insert(APPLY_FAILED_LABEL.to_string(), why.clone());
                r.updated = now_us();
                tx.put(&r)?;
            }
            Ok(())
        });
        if let Err(e) = r {
            tracing::error!(layer = rec.id, error = %e, "cannot mark the layer as failed");
        }
    }

    /// Export(key, fd): writes the layer's changes against its parent into
    /// `out` as an OCI layer tar; returns the bytes written.
    pub fn export(&self, key: &str, out: impl Write) -> Result<u64> {
        let (rec, parents, _use) = self.claim(key, false)?;
        let mut ex = export::Exporter::new(out);
        if rec.kind != Kind::View {
            // A committed layer is read through a read-only ref of itself.
            let own_kind = if rec.kind == Kind::Active {
                Kind::Active
            } else {
                Kind::View
            };
            let me = LayerRef {
                id: rec.id,
                kind: own_kind,
                parents: &parents,
            };
            let tree = self.diff_tree_of(&rec.pool, me)?;
            match (tree.mode, parents.first()) {
                (TreeMode::Upper, _) => ex.walk_upper(&tree.fd)?,
                (TreeMode::Full, None) => ex.walk_changes(&tree.fd, None)?,
                (TreeMode::Full, Some(_)) => {
                    let pref = LayerRef {
                        id: parents[0],
                        kind: Kind::View,
                        parents: &parents[1..],
                    };
                    let ptree = self.diff_tree_of(&rec.pool, pref)?;
                    ex.walk_changes(&tree.fd, Some(&ptree.fd))?;
                }
            }
        }
        let bytes = ex.finish()?;
        tracing::info!(pool = %rec.pool, layer = rec.id, bytes, "layer exported");
        Ok(bytes)
    }

    /// ImportAufs: see aufs.rs.
    pub fn import_aufs(&self, root: &Path, pool: &str, prefix: &str) -> Result<Vec<String>> {
        aufs::import(self, root, pool, prefix)
    }

    /// Prepare + Apply + Commit of one layer from a tar stream, for
    /// imports. On failure the active layer is removed again.
    fn import_layer(
        &self,
        name: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        input: impl Read + Send,
    ) -> Result<()> {
        let tmp = format!("{name}.importing");
        self.create_layer(Kind::Active, &tmp, parent, labels.clone())?;
        let r = self.apply(&tmp, input).and_then(|_| {
            let mut labels = labels;
            labels.remove(super::validate::POOL_LABEL);
            self.commit(name, &tmp, labels)
        });
        if r.is_err() {
            let _ = self.remove(&tmp);
        }
        r
    }
}

/// An Apply's error as the client sees it: `EDQUOT` in a layer with a
/// size limit (btrfs: its qgroup) names the layer's limit, not the pool.
fn apply_error(rec: &LayerRecord, e: DiffError) -> Error {
    if e.errno() == Some(libc::EDQUOT) {
        let entry = super::validate::size_entry(&rec.labels).ok().flatten();
        if let (Ok(Some(bytes)), Some((label, limit))) =
            (super::validate::size_label(&rec.labels), entry)
        {
            return Error::LayerSizeLimit {
                key: rec.key.clone(),
                label,
                limit: limit.to_string(),
                bytes,
                source: Box::new(e),
            };
        }
    }
    e.into()
}

/// A layer's use by one Apply or Export; released on drop.
struct DiffUse<'a> {
    engine: &'a Engine,
    id: u64,
}

impl Drop for DiffUse<'_> {
    fn drop(&mut self) {
        let mut uses = super::lock(&self.engine.diff_use);
        match uses.get(&self.id).copied() {
            Some(n) if n > 1 => {
                uses.insert(self.id, n - 1);
            }
            _ => {
                uses.remove(&self.id);
            }
        }
    }
}
