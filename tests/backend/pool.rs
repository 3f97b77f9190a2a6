//! One pool per test: the backend opened the way the engine opens it
//! (`open_backend` in src/engine), on storage made for the test, and torn
//! down on drop (mounts, the backend, loop devices, dm devices), even when
//! the test panicked.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use layerd::backend::{self, Backend, BackendError, LayerRef};

use crate::common;
pub use crate::Kind;

pub const MIB: u64 = 1 << 20;

/// The drivers this suite runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// A pool directory on a loop-backed xfs.
    Overlay,
    /// Likewise (reflink copies).
    Vfs,
    /// `backing = "loop"`: the driver makes, formats and mounts its image.
    Btrfs,
    /// `backing = "loop"`, data and metadata files on a loop-backed xfs;
    /// kernel tier only.
    Thin,
}

impl Driver {
    /// The harness's backend whose host requirements match (its `skip`
    /// says SKIP loudly, and panics in CI).
    fn harness(self) -> common::Backend {
        match self {
            Driver::Overlay => common::Backend::OverlayXfs,
            Driver::Vfs => common::Backend::VfsXfs,
            Driver::Btrfs => common::Backend::Btrfs,
            Driver::Thin => common::Backend::Thin,
        }
    }
}

pub struct Pool {
    pub driver: Driver,
    /// `None` only while reopening and in drop.
    backend: Option<Box<dyn Backend>>,
    dir: PathBuf,
    /// The xfs under overlay, vfs and thin pools.
    fs: Option<common::Fs>,
    /// Thin: the pool's name (its dm devices are `layerd-<name>-*`).
    thin_name: Option<String>,
    mounts: AtomicUsize,
}

/// A layer ref (`parents` nearest first).
pub fn l(id: u64, kind: Kind, parents: &[u64]) -> LayerRef<'_> {
    LayerRef { id, kind, parents }
}

/// The error kind's name, e.g. `"NotSupported"` (by name, so this suite
/// does not depend on where `ErrorKind` is defined).
pub fn kind_of(e: &BackendError) -> String {
    format!("{:?}", e.kind())
}

#[track_caller]
pub fn assert_kind<T: std::fmt::Debug>(r: Result<T, BackendError>, want: &str, what: &str) {
    match r {
        Ok(v) => panic!("{what}: succeeded ({v:?}), want a {want} error"),
        Err(e) => assert_eq!(kind_of(&e), want, "{what}: {e}"),
    }
}

impl Pool {
    /// A fresh pool of `driver`, or `None` (after a SKIP line) when this
    /// host cannot run it.
    pub fn new(driver: Driver) -> Option<Pool> {
        let test = common::test_name();
        if driver == Driver::Thin {
            common::require_kernel_tier(&test);
        }
        if driver.harness().skip(&test) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("ldb.")
            .tempdir_in(common::test_tmp())
            .expect("test directory")
            .keep();
        let mut p = Pool {
            driver,
            backend: None,
            dir,
            fs: None,
            thin_name: None,
            mounts: AtomicUsize::new(0),
        };
        // xfs needs at least 300 MB; sparse images cost only what is written.
        let fs_size = if driver == Driver::Thin {
            3 << 30
        } else {
            512 * MIB
        };
        if driver != Driver::Btrfs {
            let fs = common::Fs::new(
                common::FsKind::Xfs,
                &p.dir.join("fs.img"),
                &p.dir.join("fs"),
                fs_size,
            )
            .expect("loop-backed xfs");
            p.fs = Some(fs);
        }
        if driver == Driver::Thin {
            p.thin_name = Some(common::thin_pool_name());
        }
        p.backend = Some(p.open().expect("open the pool"));
        Some(p)
    }

    fn pool_dir(&self) -> PathBuf {
        match self.driver {
            Driver::Btrfs => self.dir.join("pool"),
            _ => self.dir.join("fs").join("pool"),
        }
    }

    /// Opens the backend as the engine does.
    fn open(&self) -> Result<Box<dyn Backend>, BackendError> {
        let path = self.pool_dir();
        Ok(match self.driver {
            Driver::Overlay => Box::new(backend::overlay::Overlay::open(&path)?),
            Driver::Vfs => Box::new(backend::vfs::Vfs::open(&path)?),
            Driver::Btrfs => {
                use backend::btrfs::{Btrfs, Setup};
                Box::new(Btrfs::open(&Setup::Loop {
                    mount: path,
                    size: 512 * MIB,
                    label: "layerd-backend-test".into(),
                })?)
            }
            Driver::Thin => {
                use backend::thin::{Fs, Options, Setup, Thin};
                let opts = Options {
                    setup: Setup::Loop {
                        dir: path,
                        size: 2 << 30,
                        metadata_size: None,
                    },
                    block_size: 64 << 10,
                    base_size: 512 * MIB,
                    fs: Fs::Xfs,
                    warn_percent: 80,
                    work_dir: self.dir.join("fs").join("work"),
                    autoextend_percent: 0,
                    autoextend_max: 0,
                };
                Box::new(Thin::open(self.thin_name.as_deref().unwrap(), &opts)?)
            }
        })
    }

    pub fn b(&self) -> &dyn Backend {
        self.backend.as_deref().expect("backend is open")
    }

    /// Closes the backend and opens it again on the same storage (a
    /// daemon restart, as far as the backend can tell).
    pub fn reopen(&mut self) {
        drop(self.backend.take());
        self.backend = Some(self.open().expect("reopen the pool"));
    }

    /// A fresh empty directory to mount on.
    pub fn target(&self) -> PathBuf {
        let n = self.mounts.fetch_add(1, Ordering::Relaxed);
        let t = self.dir.join("m").join(n.to_string());
        fs::create_dir_all(&t).expect("mount target");
        t
    }

    /// The layer mounted with `Backend::mount`, unmounted on drop.
    pub fn mount(&self, r: LayerRef<'_>) -> Mounted {
        let t = self.target();
        self.b()
            .mount(r, &t)
            .unwrap_or_else(|e| panic!("mount layer {}: {e}", r.id));
        Mounted(t)
    }

    /// The layer mounted from `Backend::mounts` with mount(8), as a
    /// runtime would.
    pub fn mount_specs(&self, r: LayerRef<'_>) -> Mounted {
        let specs = self
            .b()
            .mounts(r)
            .unwrap_or_else(|e| panic!("mounts of layer {}: {e}", r.id))
            .expect("a shallow layer has mount specs");
        let specs: Vec<common::MountSpec> = specs
            .into_iter()
            .map(|s| (s.fstype, s.source, s.options))
            .collect();
        let t = self.target();
        common::mount_specs(&specs, &t).expect("mount(8) of the specs");
        Mounted(t)
    }

    /// Writes `len` bytes to `name` in active layer `r` (synced).
    pub fn write(&self, r: LayerRef<'_>, name: &str, len: u64) {
        let m = self.mount(r);
        common::write_pattern(&m.0.join(name), len, r.id as u8).expect("write into the layer");
    }
}

/// A mount point, unmounted on drop.
pub struct Mounted(pub PathBuf);

impl Mounted {
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = common::umount_all(&self.0) {
            let _ = writeln!(io::stderr(), "backend suite: {e}");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        common::unmount_under(&self.dir.join("m"));
        drop(self.backend.take());
        match self.driver {
            Driver::Btrfs => {
                let mnt = self.pool_dir();
                let _ = common::umount_all(&mnt);
                let image = backend::btrfs::image_path(&mnt);
                for d in layerd::sys::loopdev::find_backing(&image).unwrap_or_default() {
                    let _ = layerd::sys::loopdev::detach(&d);
                }
            }
            Driver::Thin => {
                if let Some(name) = &self.thin_name {
                    common::teardown_thin_pool(name, &self.pool_dir());
                }
            }
            _ => {}
        }
        // Unmounts what is left beneath it, detaches its loop device.
        drop(self.fs.take());
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Whether `path` exists (without following a symlink).
pub fn exists(path: &Path) -> bool {
    path.symlink_metadata().is_ok()
}
