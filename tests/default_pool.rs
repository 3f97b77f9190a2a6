//! The built-in default pool: with no config file at all, the daemon makes a
//! loop-backed pool from a sparse file under `/var/lib/layerd`: thin where
//! the host has dm-thin (the kernel-tier VM), else btrfs (this host tier),
//! records that choice, and keeps it across restarts.
//!
//! The daemon runs with its real default paths, so each test gives it a
//! private mount namespace (`unshare --mount`, held open by a `sleep`) with
//! a tmpfs over `/var/lib`: nothing reaches the host's `/var/lib`, and the
//! test reads the daemon's files through `/proc/<holder>/root`.

#[macro_use]
#[allow(unused_macros)]
#[path = "common/mod.rs"]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A private mount namespace with a tmpfs over `/var/lib`, and the daemon
/// started in it with no `--config`.
struct World {
    /// One World at a time: each daemon has a tmpfs over /run/layerd in its
    /// namespace, and removing the host's empty /run/layerd (made_run_dir)
    /// would detach another namespace's mount on it.
    _one: std::sync::MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
    holder: Child,
    daemon: Option<Child>,
    bus: Bus,
    /// `/run/layerd` did not exist before the test (the daemon's run_dir).
    made_run_dir: bool,
}

impl World {
    fn new() -> World {
        static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let one = ONE.lock().unwrap_or_else(|p| p.into_inner());
        assert!(
            !Path::new(layerd::config::DEFAULT_CONFIG_PATH).exists(),
            "{} exists: this test needs a host without a layerd config",
            layerd::config::DEFAULT_CONFIG_PATH
        );
        let dir = tempfile::Builder::new()
            .prefix("layerd-default-")
            .tempdir_in(test_tmp())
            .expect("tempdir");
        let bus = Bus::start(dir.path()).expect("private dbus-daemon");
        let holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "infinity"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare");
        // Wait until the holder is in its own namespace.
        let ours = fs::read_link("/proc/self/ns/mnt").expect("own mnt ns");
        let until = Instant::now() + deadline(Duration::from_secs(10));
        while fs::read_link(format!("/proc/{}/ns/mnt", holder.id())).ok() == Some(ours.clone()) {
            assert!(Instant::now() < until, "unshare made no mount namespace");
            std::thread::sleep(Duration::from_millis(20));
        }
        let w = World {
            _one: one,
            dir,
            holder,
            daemon: None,
            bus,
            made_run_dir: !Path::new(layerd::config::DEFAULT_RUN_DIR).exists(),
        };
        w.nsenter(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "mode=0755",
            "layerd-test",
            "/var/lib",
        ]);
        // A run_dir of its own too, so that nothing of a daemon (its
        // containerd socket, its mounts) is left on the host's /run/layerd.
        let run = layerd::config::DEFAULT_RUN_DIR;
        fs::create_dir_all(run).expect("create the run_dir mount point");
        w.nsenter(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "mode=0700",
            "layerd-test-run",
            run,
        ]);
        w
    }

    /// Runs a command in the namespace; panics with its output on failure.
    fn nsenter(&self, argv: &[&str]) -> String {
        let out = Command::new("nsenter")
            .arg("-t")
            .arg(self.holder.id().to_string())
            .arg("-m")
            .arg("--")
            .args(argv)
            .output()
            .expect("nsenter");
        assert!(
            out.status.success(),
            "{argv:?} in the test namespace: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A path inside the namespace, as the test sees it.
    fn inside(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.holder.id()))
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("layerd.log")).unwrap_or_default()
    }

    async fn start(&mut self, conn: &zbus::Connection) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("layerd.log"))
            .expect("log");
        let child = Command::new("nsenter")
            .arg("-t")
            .arg(self.holder.id().to_string())
            .arg("-m")
            .arg("--")
            .arg(Daemon::binary())
            .arg("--bus-address")
            .arg(&self.bus.address)
            .env("LAYERD_LOG", "debug")
            .env("LAYERD_LOG_STDERR", "1")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start layerd");
        self.daemon = Some(child);
        let dbus = zbus::fdo::DBusProxy::new(conn).await.expect("DBus proxy");
        let name = zbus::names::BusName::try_from(BUS_NAME).expect("bus name");
        // A first start formats the pool (mkfs, and thin_check for thin),
        // slow under the kernel tier's emulation.
        let until = Instant::now() + deadline(Duration::from_secs(120));
        loop {
            if let Some(Ok(Some(st))) = self.daemon.as_mut().map(|c| c.try_wait()) {
                panic!("layerd exited ({st}); its log:\n{}", self.log());
            }
            if dbus.name_has_owner(name.clone()).await.unwrap_or(false) {
                return;
            }
            assert!(
                Instant::now() < until,
                "layerd never owned its name:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM and wait; the exit status (None: not running or SIGKILLed).
    fn stop_quietly(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.daemon.take()?;
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let until = Instant::now() + deadline(Duration::from_secs(30));
        while matches!(c.try_wait(), Ok(None)) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(25));
        }
        if matches!(c.try_wait(), Ok(None)) {
            let _ = c.kill();
            let _ = c.wait();
            return None;
        }
        c.wait().ok()
    }

    fn stop(&mut self) {
        let st = self.stop_quietly();
        assert!(
            st.is_some_and(|s| s.success()),
            "layerd did not stop cleanly ({st:?}):\n{}",
            self.log()
        );
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop_quietly();
        // Loop devices outlive the namespace (layerd never sets autoclear):
        // find them by their files while the namespace still shows them.
        let mut loops = Vec::new();
        for f in [
            "/var/lib/layerd/main.img",
            "/var/lib/layerd/main/data.img",
            "/var/lib/layerd/main/metadata.img",
        ] {
            let path = self.inside(f);
            if !path.exists() {
                continue;
            }
            if let Ok(out) = Command::new("losetup").arg("-j").arg(&path).output() {
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    if let Some(dev) = line.split(':').next() {
                        loops.push(dev.to_string());
                    }
                }
            }
        }
        // dm names are host-wide: remove the thin pool's devices first.
        teardown_thin_pool("main", Path::new("/nonexistent"));
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        for dev in loops {
            // Busy until the namespace's btrfs mount is gone: then -d marks
            // it autoclear, and the kernel detaches it when released.
            let _ = Command::new("losetup").arg("-d").arg(&dev).status();
        }
        if self.made_run_dir {
            // Empty on the host: the daemon's mounts were in the namespace.
            // remove_dir, not remove_dir_all: never delete what has content.
            let run = Path::new(layerd::config::DEFAULT_RUN_DIR);
            for e in fs::read_dir(run).into_iter().flatten().flatten() {
                let _ = fs::remove_dir(e.path());
            }
            let _ = fs::remove_dir(run);
        }
    }
}

async fn builtin_default_pool(expected: &str) {
    builtin_default_pool_in(World::new(), expected).await;
}

async fn builtin_default_pool_in(mut w: World, expected: &str) {
    let conn = zbus::connection::Builder::address(w.bus.address.as_str())
        .expect("bus address")
        .build()
        .await
        .expect("connect to the private bus");
    w.start(&conn).await;
    let mgr = ManagerProxy::new(&conn).await.expect("manager proxy");
    let pool = PoolProxy::builder(&conn)
        .path("/org/layerd/Layerd1/pools/main")
        .expect("pool path")
        .build()
        .await
        .expect("pool proxy");
    assert_eq!(must(mgr.default_pool().await, "DefaultPool"), "main");
    assert_eq!(must(pool.driver().await, "Driver"), expected, "{}", w.log());
    assert_eq!(must(pool.backing().await, "Backing"), "loop");
    assert_eq!(must(pool.health().await, "Health"), "ok");
    assert!(
        w.log()
            .contains("no config file: using the built-in default pool"),
        "the daemon does not say why it chose its pool:\n{}",
        w.log()
    );
    let record = w.inside("/var/lib/layerd/builtin-pool-driver");
    assert_eq!(
        fs::read_to_string(&record)
            .expect("the recorded driver")
            .trim(),
        expected
    );

    // The pool works: a layer with a file, committed, and a child sees it.
    must(mgr.prepare("base/1", "", default_labels()).await, "Prepare");
    let at = must(mgr.mount("base/1").await, "Mount");
    fs::write(w.inside(&format!("{at}/hello")), "hello\n").expect("write in the layer");
    must(mgr.unmount("base/1").await, "Unmount");
    must(
        mgr.commit("base", "base/1", default_labels()).await,
        "Commit",
    );
    must(mgr.view("v", "base", default_labels()).await, "View");
    let at = must(mgr.mount("v").await, "Mount view");
    assert_eq!(
        fs::read_to_string(w.inside(&format!("{at}/hello"))).expect("read through the view"),
        "hello\n"
    );
    must(mgr.unmount("v").await, "Unmount view");

    // A restart opens the same pool with the same driver and layers.
    w.stop();
    w.start(&conn).await;
    assert_eq!(must(pool.driver().await, "Driver"), expected);
    let st = must(mgr.stat("base").await, "Stat after restart");
    assert_eq!(st.2, "committed", "Stat(base) after restart: {st:?}");
    must(mgr.remove("v").await, "Remove view");
    must(mgr.remove("base").await, "Remove base");
    drop(conn);
}

/// On this host (no device-mapper) the default pool is btrfs on loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_default_pool_is_btrfs_without_dm_thin() {
    if layerd::backend::thin::host_support().is_ok() {
        // A host with dm-thin gets thin: the kernel-tier test below.
        eprintln!("skipped: this host has dm-thin");
        return;
    }
    if let Err(why) = layerd::backend::btrfs::host_support() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have what a btrfs pool needs: {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    builtin_default_pool("btrfs").await;
}

/// Detaches a loop device when dropped (after the namespace holding its
/// mount is gone).
struct Detach(String);

impl Drop for Detach {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// What `scripts/start.sh` leaves on a host (its default btrfs pool
/// attached from /var/lib/layerd/main.img and mounted on
/// /var/lib/layerd/main) is still listed, hidden under the tmpfs, in the
/// test namespace's mount table; the new default pool must open anyway.
/// Made here inside the namespace, so that no test depends on what a
/// user's own layerd left on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_default_pool_opens_beside_a_hidden_pool_at_the_same_path() {
    if layerd::backend::thin::host_support().is_ok() {
        eprintln!("skipped: this host has dm-thin");
        return;
    }
    if let Err(why) = layerd::backend::btrfs::host_support() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have what a btrfs pool needs: {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    let w = World::new();
    w.nsenter(&["mkdir", "-p", "/var/lib/layerd/main"]);
    // Formatted under another name: mkfs.btrfs would take a loop device
    // of main.img as mounted while another test's namespace has one.
    w.nsenter(&["truncate", "-s", "1G", "/var/lib/layerd/new.img"]);
    w.nsenter(&["mkfs.btrfs", "-q", "/var/lib/layerd/new.img"]);
    w.nsenter(&["mv", "/var/lib/layerd/new.img", "/var/lib/layerd/main.img"]);
    let dev = w.nsenter(&["losetup", "--show", "-f", "/var/lib/layerd/main.img"]);
    let _detach = Detach(dev.trim().to_string());
    w.nsenter(&["mount", dev.trim(), "/var/lib/layerd/main"]);
    w.nsenter(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "mode=0755",
        "layerd-test",
        "/var/lib",
    ]);
    builtin_default_pool_in(w, "btrfs").await;
}

/// Where dm-thin exists (the kernel-tier VM) the default pool is thin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kernel tier: runs in the VM (scripts/test-kernel.sh)"]
async fn builtin_default_pool_is_thin_where_dm_thin_exists() {
    require_kernel_tier("builtin_default_pool_is_thin_where_dm_thin_exists");
    if let Err(why) = layerd::backend::thin::host_support() {
        panic!("the VM lacks what a thin pool needs: {why}");
    }
    builtin_default_pool("thin").await;
}
