//! The benchmark's world, built from the host-tier harness's parts
//! (`tests/common`: `Bus`, `Fs`, `Daemon`): a private dbus-daemon, one
//! loop-backed xfs holding the daemon's store *and* its pools *and* the
//! floor measurements, the release `layerd`, and one long-lived client
//! connection. `Drop` undoes all of it, also after an error or a panic.
//!
//! Layout under `/tmp/ldb.XXXXXX`:
//! ```text
//! img            sparse image, attached to a loop device, xfs (reflink=1)
//! x/             its mount point
//! x/state/       the daemon's state_dir (layerd.redb)
//! x/overlay/     pool "main" (overlay driver)
//! x/vfs/         pool "vfs" (vfs driver)
//! x/floor/       the benchmark's own raw-step directories
//! run/           the daemon's run_dir (daemon mounts under run/m/<id>)
//! run-floor/     the benchmark's own mount targets (same file system as run/)
//! x/inproc/      store and pools of layerd's engine run in the benchmark's
//!                process (no D-Bus), to split the daemon's time
//! bimg           a second sparse image on its own loop device, btrfs
//! b/             its mount point
//! b/pool/        pool "btrfs" (btrfs driver, backing = "existing")
//! b/floor/       the benchmark's raw ioctl steps on the same btrfs
//! b/inproc/      the in-process engine's btrfs pool
//! run-inproc/    that engine's run_dir
//! bus, bus.conf  the private bus
//! layerd.toml, layerd.log
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use zbus::proxy::CacheProperties;

use crate::common::{
    toml_str, unmount_under, Bus, Daemon, DaemonConfig, Fs, FsKind, ManagerProxy, PoolConfig,
    BUS_NAME,
};
use crate::floor;

pub const ROOT_PATH: &str = "/org/layerd/Layerd1";
pub const OVERLAY_POOL: &str = "main";
pub const VFS_POOL: &str = "vfs";
pub const BTRFS_POOL: &str = "btrfs";

pub struct World {
    pub conn: zbus::Connection,
    pub mgr: ManagerProxy<'static>,
    pub peer: zbus::fdo::PeerProxy<'static>,
    daemon: Option<Daemon>,
    fs: Option<Fs>,
    /// The btrfs holding pool "btrfs" (None when the btrfs table is off).
    bfs: Option<Fs>,
    bus: Option<Bus>,
    dir: Option<tempfile::TempDir>,
    /// The xfs holding the daemon's thin pool files (thin table on).
    thin: Option<PathBuf>,
    pub path: PathBuf,
    pub image_size: u64,
}

/// Parts made so far; dropped in reverse order if setup fails half-way.
#[derive(Default)]
struct Parts {
    daemon: Option<Daemon>,
    fs: Option<Fs>,
    bfs: Option<Fs>,
    bus: Option<Bus>,
    dir: Option<tempfile::TempDir>,
    thin: Option<PathBuf>,
}

impl Drop for Parts {
    fn drop(&mut self) {
        teardown(
            self.thin.take(),
            self.daemon.take(),
            [self.bfs.take(), self.fs.take()],
            self.bus.take(),
            self.dir.take(),
            &[],
        );
    }
}

fn teardown(
    thin: Option<PathBuf>,
    daemon: Option<Daemon>,
    fss: [Option<Fs>; 2],
    bus: Option<Bus>,
    dir: Option<tempfile::TempDir>,
    extra_mount_dirs: &[PathBuf],
) {
    // Our own floor mounts first: they pin the file system.
    for d in extra_mount_dirs {
        unmount_under(d);
    }
    // Daemon::drop: SIGTERM (SIGKILL after 20 s), then unmounts whatever
    // is left under its run_dir and state_dir.
    drop(daemon);
    // The daemon's thin pool (layerd never tears its pools down) holds
    // loop devices over files on the xfs.
    if let Some(mnt) = thin {
        crate::thin::teardown_daemon_pool(&mnt);
    }
    // Fs::drop: unmounts everything under the mount point, detaches the
    // loop device, removes the image.
    drop(fss);
    drop(bus);
    if let Some(d) = dir {
        let left = unmount_under(d.path());
        if !left.is_empty() {
            eprintln!("teardown: unmounted leftovers {left:?}");
        }
        if crate::common::mounts_under(d.path()).is_empty() {
            drop(d);
        } else {
            let p = d.keep();
            eprintln!("teardown: left {} in place: mounts remain", p.display());
        }
    }
}

async fn manager_proxy(conn: &zbus::Connection) -> Result<ManagerProxy<'static>, String> {
    ManagerProxy::builder(conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(|e| format!("manager proxy: {e}"))
}

async fn peer_proxy(conn: &zbus::Connection) -> Result<zbus::fdo::PeerProxy<'static>, String> {
    zbus::fdo::PeerProxy::builder(conn)
        .destination(BUS_NAME)
        .and_then(|b| b.path(ROOT_PATH))
        .map_err(|e| format!("peer proxy: {e}"))?
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(|e| format!("peer proxy: {e}"))
}

/// What one timed restart measured.
#[derive(Debug, Clone)]
pub struct Restart {
    /// SIGTERM sent → process gone (pidfd readable).
    pub stop: Duration,
    /// New process spawned → `org.layerd.Layerd1` has an owner.
    pub to_name: Duration,
    /// Name owned → first successful `Stat`.
    pub to_stat: Duration,
    /// SIGTERM → first successful `Stat`.
    pub total: Duration,
    pub rss_kib: u64,
}

impl World {
    /// `btrfs`: also a loop-backed btrfs of `image_size` with pool "btrfs".
    /// `thin`: also pool "thin" (thin driver, loop backing on the xfs).
    /// `containerd`: a `[containerd]` table for layerd's config.
    pub async fn new(
        image_size: u64,
        daemon_log: &str,
        btrfs: bool,
        thin: bool,
        containerd: Option<String>,
    ) -> Result<World, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("the benchmark needs root (loop devices, mkfs, mount)".into());
        }
        for tool in ["dbus-daemon", "losetup", "mount", "mkfs.xfs"] {
            let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .any(|d| Path::new(d).join(tool).is_file());
            if !found {
                return Err(format!(
                    "{tool} is missing (apt-get install -y xfsprogs dbus util-linux)"
                ));
            }
        }
        let mut parts = Parts::default();
        let dir = tempfile::Builder::new()
            .prefix("ldb.")
            .rand_bytes(6)
            .tempdir_in(crate::common::test_tmp())
            .map_err(|e| format!("create ldb.* in the test tmp dir: {e}"))?;
        let path = dir.path().to_path_buf();
        parts.dir = Some(dir);
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
        }
        let mnt = path.join("x");
        parts.fs = Some(Fs::new(FsKind::Xfs, &path.join("img"), &mnt, image_size)?);
        for d in ["state", "overlay", "vfs", "floor"] {
            floor::mkdir(&mnt.join(d), 0o755)?;
        }
        floor::mkdir(&path.join("run-floor"), 0o755)?;
        let bmnt = path.join("b");
        if btrfs {
            parts.bfs = Some(Fs::new(
                FsKind::Btrfs,
                &path.join("bimg"),
                &bmnt,
                image_size,
            )?);
            for d in ["pool", "floor", "inproc"] {
                floor::mkdir(&bmnt.join(d), 0o755)?;
            }
        }
        let bus = Bus::start(&path)?;
        let address = bus.address.clone();
        parts.bus = Some(bus);

        let config = DaemonConfig {
            state_dir: mnt.join("state"),
            run_dir: path.join("run"),
            default_pool: OVERLAY_POOL.into(),
            pools: vec![
                PoolConfig {
                    name: OVERLAY_POOL.into(),
                    driver: "overlay".into(),
                    path: mnt.join("overlay"),
                    extra: vec![],
                },
                PoolConfig {
                    name: VFS_POOL.into(),
                    driver: "vfs".into(),
                    path: mnt.join("vfs"),
                    extra: vec![],
                },
            ],
            extra_toml: containerd.unwrap_or_default(),
        };
        let mut config = config;
        if btrfs {
            config.pools.push(PoolConfig {
                name: BTRFS_POOL.into(),
                driver: "btrfs".into(),
                path: bmnt.join("pool"),
                extra: vec![("backing".into(), toml_str("existing"))],
            });
        }
        if thin {
            config.pools.push(crate::thin::pool_config(&mnt));
            parts.thin = Some(mnt.clone());
        }
        let mut daemon = Daemon::new(config, &path, &address);
        // The harness defaults the daemon to LAYERD_LOG=debug; a benchmark
        // measures the daemon as deployed.
        daemon.env.push(("LAYERD_LOG".into(), daemon_log.into()));
        daemon.env.push(("LAYERD_LOG_STDERR".into(), "1".into()));
        let conn = zbus::connection::Builder::address(address.as_str())
            .map_err(|e| format!("bus address: {e}"))?
            .build()
            .await
            .map_err(|e| format!("connect to the private bus: {e}"))?;
        // Keep the daemon in `parts` while it starts, so a failed start is
        // still cleaned up.
        parts.daemon = Some(daemon);
        if let Err(e) = parts.daemon.as_mut().unwrap().start(&conn).await {
            // A new thin pool formats its base device before the daemon
            // owns its name: under emulation on a loaded host that can
            // outlast the harness's wait. The second start adopts it.
            if !(thin && e.contains("did not own")) {
                return Err(e);
            }
            eprintln!("layerd was slow to start (new thin pool); starting it again");
            parts.daemon.as_mut().unwrap().start(&conn).await?;
        }
        let mgr = manager_proxy(&conn).await?;
        let peer = peer_proxy(&conn).await?;
        Ok(World {
            conn,
            mgr,
            peer,
            daemon: parts.daemon.take(),
            fs: parts.fs.take(),
            bfs: parts.bfs.take(),
            bus: parts.bus.take(),
            dir: parts.dir.take(),
            thin: parts.thin.take(),
            path,
            image_size,
        })
    }

    pub fn mnt(&self) -> PathBuf {
        self.path.join("x")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.mnt().join("state")
    }
    pub fn floor_dir(&self) -> PathBuf {
        self.mnt().join("floor")
    }
    /// The daemon's run_dir (its containerd sockets are there too).
    pub fn run_dir(&self) -> PathBuf {
        self.path.join("run")
    }
    pub fn floor_run_dir(&self) -> PathBuf {
        self.path.join("run-floor")
    }
    /// run_dir of the benchmark's in-process engine.
    pub fn inproc_run_dir(&self) -> PathBuf {
        self.path.join("run-inproc")
    }
    /// The btrfs's mount point (`b/`).
    pub fn btrfs_mnt(&self) -> PathBuf {
        self.path.join("b")
    }
    pub fn btrfs_device(&self) -> Option<String> {
        self.bfs.as_ref().and_then(|f| f.device.clone())
    }
    pub fn loop_device(&self) -> String {
        self.fs
            .as_ref()
            .and_then(|f| f.device.clone())
            .unwrap_or_default()
    }
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().and_then(|d| d.pid())
    }
    pub fn daemon_log(&self) -> String {
        self.daemon
            .as_ref()
            .map(|d| d.log_text())
            .unwrap_or_default()
    }
    pub fn store_bytes(&self) -> u64 {
        std::fs::metadata(self.state_dir().join("layerd.redb"))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// SIGTERM → exit → start → name on the bus → first successful
    /// `Stat(probe_key)`, each step timed with ~1 ms resolution.
    pub async fn restart_timed(&mut self, probe_key: &str) -> Result<Restart, String> {
        let daemon = self.daemon.as_mut().ok_or("no daemon")?;
        let pid = daemon.pid().ok_or("layerd is not running")?;
        let pidfd = floor::pidfd_open(pid);
        let t0 = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .map_err(|e| format!("SIGTERM layerd: {e}"))?;
        let exited = pidfd >= 0 && floor::wait_exit(pidfd, 30_000);
        floor::close(pidfd);
        let stop = t0.elapsed();
        // Reaps it (or, without pidfd, waits for it with the harness's
        // 25 ms polling: then `stop` is only an upper bound).
        match daemon.stop() {
            Some((st, false)) if st.success() => {}
            Some((st, killed)) => {
                return Err(format!(
                    "layerd did not stop cleanly on SIGTERM ({st}{}); its log:\n{}",
                    if killed { ", needed SIGKILL" } else { "" },
                    daemon.log_text()
                ))
            }
            None => return Err("layerd was not running".into()),
        }
        let stop = if exited { stop } else { t0.elapsed() };

        let dbus = zbus::fdo::DBusProxy::new(&self.conn)
            .await
            .map_err(|e| e.to_string())?;
        let name = zbus::names::BusName::try_from(BUS_NAME).unwrap();
        let mgr = self.mgr.clone();
        let t1 = Instant::now();
        let deadline = t1 + Duration::from_secs(60);
        // The harness's start() spawns at once and then polls every 50 ms;
        // alongside it we poll every ~1 ms for the name, then for Stat.
        let probe = async {
            let mut t_name = None;
            loop {
                if Instant::now() > deadline {
                    return Err("layerd did not answer Stat within 60 s".to_string());
                }
                if t_name.is_none() {
                    if dbus.name_has_owner(name.clone()).await.unwrap_or(false) {
                        t_name = Some(Instant::now());
                        continue;
                    }
                } else if mgr.stat(probe_key).await.is_ok() {
                    return Ok((t_name.unwrap(), Instant::now()));
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        };
        let (started, probed) = tokio::join!(daemon.start(&self.conn), probe);
        started?;
        let (t_name, t_stat) = probed?;
        self.mgr = manager_proxy(&self.conn).await?;
        self.peer = peer_proxy(&self.conn).await?;
        let rss = self.daemon_pid().map(|p| floor::rss_kib(p).0).unwrap_or(0);
        Ok(Restart {
            stop,
            to_name: t_name - t1,
            to_stat: t_stat - t_name,
            total: stop + (t_stat - t1),
            rss_kib: rss,
        })
    }
}

impl World {
    /// The daemon's config (paths of its store, pools and run_dir).
    pub fn daemon_config(&self) -> Option<crate::common::DaemonConfig> {
        self.daemon.as_ref().map(|d| d.config.clone())
    }

    /// SIGTERM and wait; Err unless it exits 0 without SIGKILL.
    pub fn stop_daemon(&mut self) -> Result<(), String> {
        let daemon = self.daemon.as_mut().ok_or("no daemon")?;
        match daemon.stop() {
            Some((st, false)) if st.success() => Ok(()),
            Some((st, killed)) => Err(format!(
                "layerd did not stop cleanly on SIGTERM ({st}{})",
                if killed { ", needed SIGKILL" } else { "" }
            )),
            None => Err("layerd was not running".into()),
        }
    }

    /// Starts the daemon again (waits for its bus name) and renews the proxies.
    pub async fn start_daemon(&mut self) -> Result<(), String> {
        let daemon = self.daemon.as_mut().ok_or("no daemon")?;
        daemon.start(&self.conn).await?;
        self.mgr = manager_proxy(&self.conn).await?;
        self.peer = peer_proxy(&self.conn).await?;
        Ok(())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let extra = [
            self.floor_run_dir(),
            self.inproc_run_dir(),
            self.floor_dir(),
        ];
        teardown(
            self.thin.take(),
            self.daemon.take(),
            [self.bfs.take(), self.fs.take()],
            self.bus.take(),
            self.dir.take(),
            &extra,
        );
    }
}
