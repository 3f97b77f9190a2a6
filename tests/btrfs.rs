//! The btrfs driver's own backings on the real kernel (host tier, root):
//! the daemon's `loop` backing (creates, formats, mounts; a restart reuses
//! the mount, a "reboot" re-attaches the same image; every layer is kept),
//! mount specs taken by mount(8), Usage of a child counting only its new
//! data, the `device` backing (formats an empty device, refuses one with a
//! signature and names it), and trim and balance on a loop pool through
//! the backend (the host gets the image's blocks back).

#[macro_use]
#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use layerd::backend::btrfs::{image_path, Btrfs, Setup};
use layerd::backend::{Backend, BalanceOptions, JobControl, LayerRef};
use layerd::engine::types::Kind;
use layerd::sys::{btrfs as sysbtrfs, loopdev};

fn skip() -> bool {
    common::Backend::Btrfs.skip("btrfs")
}

/// A test's world: `/tmp/ldb.XXXXXX/{s, r, bus, …}`, a private bus and the
/// daemon. Drop stops the daemon, unmounts everything below the directory
/// and detaches every loop device bound to a file in it, even on panic.
struct World {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
    bus: Option<Bus>,
    daemon: Option<Daemon>,
    conn: Option<zbus::Connection>,
    /// Loop devices made by the test itself (device backings).
    devices: Vec<loopdev::LoopDevice>,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::Builder::new()
            .prefix("ldbt.")
            .rand_bytes(6)
            .tempdir_in("/tmp")
            .unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        World {
            dir: tmp.path().to_path_buf(),
            _tmp: tmp,
            bus: None,
            daemon: None,
            conn: None,
            devices: Vec::new(),
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.join("s")
    }

    /// Starts bus and daemon with one pool named `main`.
    async fn start(&mut self, driver_extra: Vec<(String, String)>, path: &Path) {
        let bus = Bus::start(&self.dir).expect("private bus");
        let config = DaemonConfig {
            state_dir: self.state_dir(),
            run_dir: self.dir.join("r"),
            default_pool: "main".into(),
            pools: vec![PoolConfig {
                name: "main".into(),
                driver: "btrfs".into(),
                path: path.to_path_buf(),
                extra: driver_extra,
            }],
            extra_toml: String::new(),
        };
        let mut daemon = Daemon::new(config, &self.dir, &bus.address);
        let conn = zbus::connection::Builder::address(bus.address.as_str())
            .unwrap()
            .build()
            .await
            .expect("connect");
        daemon.start(&conn).await.unwrap_or_else(|e| panic!("{e}"));
        self.bus = Some(bus);
        self.daemon = Some(daemon);
        self.conn = Some(conn);
    }

    fn daemon(&mut self) -> &mut Daemon {
        self.daemon.as_mut().unwrap()
    }

    async fn mgr(&self) -> ManagerProxy<'static> {
        ManagerProxy::builder(self.conn.as_ref().unwrap())
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .unwrap()
    }

    async fn pool(&self) -> PoolProxy<'static> {
        PoolProxy::builder(self.conn.as_ref().unwrap())
            .path("/org/layerd/Layerd1/pools/main")
            .unwrap()
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .unwrap()
    }

    /// A fresh directory for mount(8) mounts.
    fn target(&self, name: &str) -> PathBuf {
        let p = self.dir.join("w").join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// A sparse file attached to a loop device, optionally formatted.
    fn device(&mut self, name: &str, size: u64, mkfs: Option<&[&str]>) -> PathBuf {
        let img = self.dir.join(name);
        loopdev::create_sparse(&img, size).unwrap();
        let (dev, _) = loopdev::attach(&img, Default::default()).unwrap();
        self.devices.push(dev.clone());
        if let Some(cmd) = mkfs {
            let out = Command::new(cmd[0])
                .args(&cmd[1..])
                .arg(dev.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "{cmd:?}: {out:?}");
        }
        dev.path()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            if std::thread::panicking() {
                eprintln!("----- layerd stderr -----\n{}\n-----", d.log_text());
            }
            d.stop();
        }
        drop(self.bus.take());
        unmount_under(&self.dir);
        // Loop devices bound to any image in the world.
        let mut images = vec![];
        for dir in [self.dir.clone(), self.state_dir()] {
            if let Ok(rd) = fs::read_dir(&dir) {
                images.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_file()));
            }
        }
        for img in images {
            for d in loopdev::find_backing(&img).unwrap_or_default() {
                let _ = loopdev::detach(&d);
            }
        }
        for d in self.devices.drain(..) {
            let _ = loopdev::detach(&d);
        }
    }
}

async fn write_in(mgr: &ManagerProxy<'_>, key: &str, file: &str, len: u64, seed: u8) {
    let p = must(mgr.mount(key).await, format_args!("Mount({key})"));
    write_pattern(&Path::new(&p).join(file), len, seed).unwrap();
    must(mgr.unmount(key).await, format_args!("Unmount({key})"));
}

async fn read_in(mgr: &ManagerProxy<'_>, key: &str, file: &str) -> Vec<u8> {
    let p = must(mgr.mount(key).await, format_args!("Mount({key})"));
    let r = fs::read(Path::new(&p).join(file));
    must(mgr.unmount(key).await, format_args!("Unmount({key})"));
    r.unwrap_or_else(|e| panic!("{key}: read {file}: {e}"))
}

fn in_range(what: &str, got: u64, want: u64) {
    assert!(
        got + (64 << 10) >= want && got <= want + (512 << 10),
        "{what}: {got} bytes, expected about {want}"
    );
}

fn blkid_type(dev: &Path) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE"])
        .arg(dev)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn l() -> HashMap<String, String> {
    default_labels()
}

/// The daemon's own loop backing: created and formatted on first start;
/// a restart reuses the attached device and its mount; after the mount and
/// the loop device are gone (a reboot), the same image is attached and
/// mounted again, not reformatted; every layer and its data is kept. Mount
/// specs mount with mount(8); Usage of a child counts only its new data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loop_backing_restart_reattach_specs_usage() {
    if skip() {
        return;
    }
    let mut w = World::new();
    let mnt = w.state_dir().join("main");
    let img = image_path(&mnt);
    w.start(
        vec![
            ("backing".into(), toml_str("loop")),
            ("size".into(), toml_str("1G")),
        ],
        &mnt,
    )
    .await;

    // The image is sparse, 1 GiB, attached without autoclear, mounted.
    let md = fs::metadata(&img).expect("the daemon creates <path>.img");
    assert_eq!(md.len(), 1 << 30);
    assert!(md.blocks() * 512 < 64 * MIB, "image is not sparse");
    let devs = loopdev::find_backing(&img).unwrap();
    assert_eq!(devs.len(), 1, "{devs:?}");
    assert!(!loopdev::status(&devs[0]).unwrap().autoclear());
    assert!(is_mount_point(&mnt));
    assert!(sysbtrfs::is_btrfs(&mnt).unwrap());
    let pool = w.pool().await;
    assert_eq!(must(pool.backing().await, "Backing"), "loop");
    assert_eq!(must(pool.driver().await, "Driver"), "btrfs");
    assert_eq!(PathBuf::from(must(pool.path().await, "Path")), mnt);
    assert_eq!(must(pool.health().await, "Health"), "ok");
    let size = must(pool.data_size().await, "DataSize");
    assert!(size > 512 * MIB && size <= 1 << 30, "DataSize {size}");

    let mgr = w.mgr().await;
    // A parent with 8 MiB, a child that rewrites 1 MiB of it and adds 2 MiB.
    must(mgr.prepare("base-a", "", l()).await, "Prepare base-a");
    write_in(&mgr, "base-a", "big", 8 * MIB, 1).await;
    must(mgr.commit("base", "base-a", l()).await, "Commit base");
    must(mgr.prepare("child", "base", l()).await, "Prepare child");
    let (b, _) = must(mgr.usage("child").await, "Usage child");
    assert!(b < 128 << 10, "an empty child uses {b} bytes");
    {
        let p = must(mgr.mount("child").await, "Mount child");
        let f = fs::OpenOptions::new()
            .write(true)
            .open(Path::new(&p).join("big"))
            .unwrap();
        f.write_all_at(&vec![0x5a; MIB as usize], 2 * MIB).unwrap();
        f.sync_all().unwrap();
        drop(f);
        write_pattern(&Path::new(&p).join("new"), 2 * MIB, 2).unwrap();
        must(mgr.unmount("child").await, "Unmount child");
    }
    let (b, i) = must(mgr.usage("child").await, "Usage child");
    in_range("child (1 MiB rewritten, 2 MiB new)", b, 3 * MIB);
    assert!((2..=3).contains(&i), "child inodes {i}");
    let (b, _) = must(mgr.usage("base").await, "Usage base");
    in_range("parent with a child", b, 8 * MIB);
    must(mgr.view("v", "base", l()).await, "View v");

    // Specs: (btrfs, /dev/loopN, [subvolid=N, rw|ro]), taken by mount(8).
    let specs = must(mgr.mounts("child").await, "Mounts child");
    assert_eq!(specs.len(), 1);
    let (ty, src, opts) = &specs[0];
    assert_eq!(ty, "btrfs");
    assert_eq!(PathBuf::from(src), devs[0].path());
    assert!(opts.iter().any(|o| o.starts_with("subvolid=")), "{opts:?}");
    assert!(opts.contains(&"rw".to_string()), "{opts:?}");
    let t = w.target("child");
    mount_specs(&specs, &t).unwrap();
    let data = fs::read(t.join("big")).unwrap();
    assert_eq!(
        &data[2 * MIB as usize..3 * MIB as usize],
        &vec![0x5a; MIB as usize][..]
    );
    fs::write(t.join("via-spec"), "x").unwrap();
    umount_all(&t).unwrap();
    let vspecs = must(mgr.mounts("v").await, "Mounts v");
    assert!(vspecs[0].2.contains(&"ro".to_string()), "{vspecs:?}");
    let t = w.target("v");
    mount_specs(&vspecs, &t).unwrap();
    assert_eq!(fs::read(t.join("big")).unwrap().len(), 8 * MIB as usize);
    assert_eq!(
        fs::write(t.join("x"), "x").unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    umount_all(&t).unwrap();

    let names = |mut v: Vec<WalkEntry>| {
        let mut n: Vec<String> = v.drain(..).map(|e| e.0).collect();
        n.sort();
        n
    };
    let before = names(must(mgr.walk(vec![]).await, "Walk"));
    assert_eq!(before, ["base", "child", "v"]);

    // Restart: the same loop device and mount are reused.
    let conn = w.conn.clone().unwrap();
    w.daemon().restart(&conn).await.unwrap();
    assert_eq!(
        loopdev::find_backing(&img).unwrap(),
        devs,
        "restart re-attached"
    );
    let mgr = w.mgr().await;
    assert_eq!(names(must(mgr.walk(vec![]).await, "Walk")), before);
    assert_eq!(read_in(&mgr, "child", "via-spec").await, b"x");

    // "Reboot": daemon stopped, pool unmounted, loop device gone.
    w.daemon().stop();
    umount_all(&mnt).unwrap();
    loopdev::detach(&devs[0]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !loopdev::find_backing(&img).unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "loop device not detached"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    w.daemon().start(&conn).await.unwrap();
    let again = loopdev::find_backing(&img).unwrap();
    assert_eq!(again.len(), 1, "the image is attached again");
    assert!(is_mount_point(&mnt));
    let mgr = w.mgr().await;
    assert_eq!(names(must(mgr.walk(vec![]).await, "Walk")), before);
    let big = read_in(&mgr, "v", "big").await;
    assert_eq!(big.len(), 8 * MIB as usize, "the image was not reformatted");
    assert_eq!(read_in(&mgr, "child", "via-spec").await, b"x");
    in_range(
        "child after reboot",
        must(mgr.usage("child").await, "Usage").0,
        3 * MIB,
    );

    // Remove everything; Cleanup says how much it freed.
    for k in ["v", "child", "base"] {
        must(mgr.remove(k).await, format_args!("Remove {k}"));
    }
    let freed = must(mgr.cleanup().await, "Cleanup");
    assert!(freed >= 11 * MIB, "Cleanup freed {freed}");
    let stopped = w.daemon().stop();
    assert!(
        matches!(stopped, Some((st, false)) if st.success()),
        "{stopped:?}"
    );
}

/// `device` backing: a device with an ext4 signature is refused (the pool
/// is failed, the error names the signature and the device, the device is
/// untouched); an empty device is formatted and mounted at
/// `<state_dir>/<name>`, and reused on restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_backing_formats_empty_refuses_signatures() {
    if skip() {
        return;
    }
    let mut w = World::new();
    let dev = w.device("ext4.img", 256 * MIB, Some(&["mkfs.ext4", "-q", "-F"]));
    w.start(vec![("backing".into(), toml_str("device"))], &dev)
        .await;
    let pool = w.pool().await;
    assert_eq!(must(pool.health().await, "Health"), "failed");
    let mgr = w.mgr().await;
    let e = assert_dbus_err!(
        mgr.prepare("a", "", l()).await,
        "FailedPrecondition",
        "Prepare on a refused device"
    );
    let msg = err_message(&e).unwrap_or_default();
    assert!(
        msg.contains("ext4") && msg.contains(&dev.display().to_string()),
        "the error must name the signature and the device: {msg}"
    );
    assert!(msg.contains("wipefs"), "{msg}");
    assert_eq!(blkid_type(&dev), "ext4", "the device was touched");
    assert!(!is_mount_point(&w.state_dir().join("main")));
    w.daemon().stop();
    drop(w);

    let mut w = World::new();
    let dev = w.device("empty.img", 512 * MIB, None);
    w.start(vec![("backing".into(), toml_str("device"))], &dev)
        .await;
    let mnt = w.state_dir().join("main");
    let pool = w.pool().await;
    assert_eq!(must(pool.health().await, "Health"), "ok");
    assert_eq!(must(pool.backing().await, "Backing"), "device");
    assert_eq!(blkid_type(&dev), "btrfs");
    assert!(is_mount_point(&mnt));
    let mgr = w.mgr().await;
    must(mgr.prepare("a", "", l()).await, "Prepare a");
    write_in(&mgr, "a", "f", MIB, 3).await;
    must(mgr.commit("c", "a", l()).await, "Commit c");
    let specs = must(mgr.prepare("b", "c", l()).await, "Prepare b");
    assert_eq!(PathBuf::from(&specs[0].1), dev);
    let conn = w.conn.clone().unwrap();
    w.daemon().restart(&conn).await.unwrap();
    let mgr = w.mgr().await;
    assert_eq!(read_in(&mgr, "b", "f").await.len(), MIB as usize);
}

/// Removes the mount and loop device of a library-level loop pool on drop.
struct LoopPool {
    mnt: PathBuf,
    _tmp: tempfile::TempDir,
}

impl LoopPool {
    fn new() -> LoopPool {
        let tmp = tempfile::Builder::new()
            .prefix("ldbt.")
            .tempdir_in("/tmp")
            .unwrap();
        LoopPool {
            mnt: tmp.path().join("pool"),
            _tmp: tmp,
        }
    }
    fn setup(&self, size: u64) -> Setup {
        Setup::Loop {
            mount: self.mnt.clone(),
            size,
            label: "layerd-test".into(),
        }
    }
    fn image_bytes(&self) -> u64 {
        fs::metadata(image_path(&self.mnt)).unwrap().blocks() * 512
    }
}

impl Drop for LoopPool {
    fn drop(&mut self) {
        let _ = umount_all(&self.mnt);
        for d in loopdev::find_backing(&image_path(&self.mnt)).unwrap_or_default() {
            let _ = loopdev::detach(&d);
        }
    }
}

fn lref(id: u64, kind: Kind, parents: &[u64]) -> LayerRef<'_> {
    LayerRef { id, kind, parents }
}

/// Trim gives a loop pool's space back to the host: 500 MiB written in a
/// layer, the layer removed and purged, Trim run: the image's allocated
/// blocks fall by at least 80% of what was written. Balance runs its
/// escalating passes, reports progress, and a cancelled job fails with
/// ECANCELED leaving a healthy pool. Opening the pool twice reuses it.
#[test]
fn trim_and_balance_on_a_loop_pool() {
    if skip() {
        return;
    }
    let p = LoopPool::new();
    let b = Btrfs::open(&p.setup(1 << 30)).expect("open loop pool");
    assert_eq!(b.backing(), "loop");
    let dev = b.device().to_path_buf();
    // Opening again (a restart) reuses the device and the mount.
    let b2 = Btrfs::open(&p.setup(1 << 30)).expect("open again");
    assert_eq!(b2.device(), dev);
    drop(b2);
    assert_eq!(loopdev::find_backing(&image_path(&p.mnt)).unwrap().len(), 1);

    let space = b.space().unwrap();
    assert!(space.unallocated.unwrap() > 512 * MIB, "{space:?}");
    assert!(
        space.data_size > 512 * MIB && space.metadata_size > 0,
        "{space:?}"
    );
    assert!(!space.read_only);

    b.create(lref(1, Kind::Active, &[])).unwrap();
    let layer = p.mnt.join("1");
    assert_eq!(fs::metadata(&layer).unwrap().mode() & 0o777, 0o755);
    let base = p.image_bytes();
    const WRITTEN: u64 = 500 * MIB;
    write_pattern(&layer.join("data"), WRITTEN, 9).unwrap();
    sysbtrfs::commit_transaction(&p.mnt).unwrap();
    let full = p.image_bytes();
    assert!(full >= base + WRITTEN, "image grew by {} only", full - base);
    let (bytes, _) = b.usage(lref(1, Kind::Active, &[])).unwrap();
    in_range("usage of the written layer", bytes, WRITTEN);

    b.commit(1).unwrap();
    b.remove(1).unwrap();
    b.remove(1).unwrap(); // idempotent
    assert!(!b.exists(1));
    let freed = b.purge().unwrap();
    in_range("purge", freed, WRITTEN);
    assert_eq!(b.purge().unwrap(), 0);

    // Let the cleaner drop the deleted subvolume, then trim.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        sysbtrfs::commit_transaction(&p.mnt).unwrap();
        if b.space().unwrap().data_used < 16 * MIB {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "space not freed");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let ctl = JobControl::default();
    let trimmed = b.trim(&ctl).unwrap();
    assert_eq!(ctl.bytes(), trimmed);
    assert_eq!(ctl.progress(), Some(1.0));
    let after = p.image_bytes();
    eprintln!(
        "image: {} MiB before writing, {} MiB full, {} MiB after trim ({} MiB trimmed)",
        base / MIB,
        full / MIB,
        after / MIB,
        trimmed / MIB
    );
    assert!(
        full - after.min(full) >= WRITTEN * 8 / 10,
        "trim gave back only {} of {} bytes written",
        full - after.min(full),
        WRITTEN
    );

    // Balance: escalating passes over nearly empty chunks.
    let opts = BalanceOptions {
        dusage: vec![0, 5, 10],
        musage: vec![0, 5],
    };
    let ctl = JobControl::default();
    b.balance(&opts, &ctl).unwrap();
    assert_eq!(ctl.progress(), Some(1.0));
    let cancelled = JobControl::default();
    cancelled.cancel();
    let e = b.balance(&opts, &cancelled).unwrap_err();
    assert!(
        e.to_string().contains("ECANCELED") || e.to_string().contains("cancel"),
        "{e}"
    );
    assert!(sysbtrfs::balance_progress(&p.mnt).unwrap().is_none());
    assert!(!b.space().unwrap().read_only);
    b.create(lref(2, Kind::Active, &[])).unwrap();
    assert!(b.exists(2));
}

/// `existing` backing refuses a directory that is not on a btrfs; layer
/// operations on a loop pool keep their contract (views read-only, commit
/// idempotent, nested subvolumes purged, quarantine keeps read-only data).
#[test]
fn existing_refusal_and_layer_contract() {
    if skip() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    if !sysbtrfs::is_btrfs(tmp.path()).unwrap() {
        let e = Btrfs::open(&Setup::Existing {
            path: tmp.path().to_path_buf(),
        })
        .err()
        .expect("a directory not on btrfs is refused");
        assert!(e.to_string().contains("not on a btrfs"), "{e}");
    }

    let p = LoopPool::new();
    let b = Btrfs::open(&p.setup(512 * MIB)).unwrap();
    // Existing backing on the mounted pool works too.
    let e = Btrfs::open(&Setup::Existing {
        path: p.mnt.clone(),
    })
    .unwrap();
    assert_eq!(e.device(), b.device());

    b.create(lref(1, Kind::View, &[])).unwrap();
    assert!(sysbtrfs::readonly(&p.mnt.join("1")).unwrap());
    b.create(lref(2, Kind::Active, &[])).unwrap();
    fs::write(p.mnt.join("2/f"), "2").unwrap();
    b.commit(2).unwrap();
    b.commit(2).unwrap();
    b.create(lref(3, Kind::View, &[2])).unwrap();
    b.create(lref(4, Kind::Active, &[2])).unwrap();
    assert_eq!(fs::read_to_string(p.mnt.join("4/f")).unwrap(), "2");
    // A container made a subvolume inside its layer.
    sysbtrfs::create_subvolume(&p.mnt.join("4"), "nested").unwrap();
    b.remove(4).unwrap();
    b.remove(3).unwrap();
    b.discard(9).unwrap(); // nothing there: fine
    b.create(lref(5, Kind::Active, &[])).unwrap();
    b.discard(5).unwrap();
    assert!(!b.exists(5));
    b.purge().unwrap();
    assert_eq!(fs::read_dir(p.mnt.join("t")).unwrap().count(), 0);

    let found = b.scan().unwrap();
    assert!(
        found.contains(&layerd::backend::Found::Layer(2)),
        "{found:?}"
    );
    let q = b.quarantine(&p.mnt.join("2")).unwrap();
    assert!(q.starts_with(p.mnt.join("q")));
    assert!(sysbtrfs::readonly(&q).unwrap(), "quarantine keeps the flag");
    assert_eq!(fs::read_to_string(q.join("f")).unwrap(), "2");

    assert_eq!(b.read_token().unwrap(), None);
    b.write_token(42).unwrap();
    assert_eq!(b.read_token().unwrap(), Some(42));
    assert!(b
        .scan()
        .unwrap()
        .iter()
        .all(|f| *f == layerd::backend::Found::Layer(1)));
}

/// A balance cancelled mid-way (through the job's control, as the D-Bus
/// Cancel does) stops the kernel's balance, fails with ECANCELED, and
/// leaves a healthy, writable pool; progress was reported while it ran.
#[test]
fn balance_cancelled_midway() {
    if skip() {
        return;
    }
    let p = LoopPool::new();
    let b = Btrfs::open(&p.setup(3 << 30)).unwrap();
    b.create(lref(1, Kind::Active, &[])).unwrap();
    // Half-used data chunks: 24 files of 64 MiB, every other one deleted.
    for i in 0..24u8 {
        write_pattern(&p.mnt.join(format!("1/f{i}")), 64 * MIB, i).unwrap();
    }
    for i in (0..24).step_by(2) {
        fs::remove_file(p.mnt.join(format!("1/f{i}"))).unwrap();
    }
    sysbtrfs::commit_transaction(&p.mnt).unwrap();
    let ctl = JobControl::default();
    let opts = BalanceOptions {
        dusage: vec![100],
        musage: vec![],
    };
    let res = std::thread::scope(|s| {
        let job = s.spawn(|| b.balance(&opts, &ctl));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !job.is_finished() && ctl.progress().is_none() {
            assert!(std::time::Instant::now() < deadline, "no progress seen");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        ctl.cancel();
        job.join().unwrap()
    });
    match res {
        Err(e) => assert!(e.to_string().contains("canceled"), "{e}"),
        Ok(bytes) => eprintln!("balance finished before the cancel ({bytes} bytes)"),
    }
    assert!(ctl.progress().is_some(), "progress was reported");
    assert!(sysbtrfs::balance_progress(&p.mnt).unwrap().is_none());
    let space = b.space().unwrap();
    assert!(!space.read_only, "{space:?}");
    b.create(lref(2, Kind::Active, &[])).unwrap();
    fs::write(p.mnt.join("2/after"), "ok").unwrap();
    assert_eq!(
        fs::read(p.mnt.join("1/f1")).unwrap().len(),
        64 * MIB as usize
    );
}

/// Writes `len` bytes into `path` in 1 MiB chunks, then fsync; returns the
/// bytes written and the first error (write or fsync), if any.
fn fill(path: &Path, len: u64) -> (u64, Option<std::io::Error>) {
    use std::io::Write;
    let mut f = fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; MIB as usize];
    let mut done = 0;
    while done < len {
        if let Err(e) = f.write_all(&chunk) {
            return (done, Some(e));
        }
        done += MIB;
    }
    (done, f.sync_all().err())
}

/// Names of the entries of a pool directory (to see that nothing was made).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn sized(size: &str) -> HashMap<String, String> {
    let mut m = default_labels();
    m.insert("layerd.io/size".into(), size.into());
    m
}

/// `layerd.io/size` on a btrfs pool: quotas get enabled, the layer's
/// qgroup limits its exclusive bytes (a write past it fails with EDQUOT in
/// the layer, while a layer without the label writes on), a child's limit
/// counts only what it adds to its parent, and a bad value is
/// InvalidArgument naming label and value, with nothing created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_label_sets_a_qgroup_limit() {
    let Some(f) = Fixture::new(common::Backend::Btrfs).await else {
        return;
    };
    let pool = f.pool_path();
    assert!(
        !sysbtrfs::quota_enabled(&pool).unwrap(),
        "a fresh btrfs has quotas off"
    );

    // Bad values: nothing is created, quotas stay off.
    let before = entries(&pool);
    for bad in ["12Q", "", "1.5G", "0", "-1M"] {
        let e = assert_dbus_err!(
            f.mgr.prepare("bad", "", sized(bad)).await,
            "InvalidArgument",
            "size {bad:?}"
        );
        let msg = err_message(&e).unwrap();
        assert!(
            msg.contains("layerd.io/size") && msg.contains(&format!("{bad:?}")),
            "message should name the label and the value: {msg}"
        );
        assert_dbus_err!(f.mgr.stat("bad").await, "NotFound");
    }
    assert_eq!(
        entries(&pool),
        before,
        "a rejected Prepare created something"
    );
    assert!(!sysbtrfs::quota_enabled(&pool).unwrap());

    // A 32 MiB limit: the first layer with one enables quotas.
    f.prepare_with("lim", "", sized("32M")).await;
    assert!(sysbtrfs::quota_enabled(&pool).unwrap(), "quotas enabled");
    let p = must(f.mgr.mount("lim").await, "Mount lim");
    let (written, err) = fill(&Path::new(&p).join("f"), 64 * MIB);
    let err = err.expect("writing 64 MiB into a 32 MiB layer must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    assert!(
        (16 * MIB..=32 * MIB).contains(&written),
        "EDQUOT after {written} bytes, limit 32 MiB"
    );
    must(f.mgr.unmount("lim").await, "Unmount lim");

    // A layer without the label is not limited.
    f.prepare("free", "").await;
    let p = must(f.mgr.mount("free").await, "Mount free");
    let (written, err) = fill(&Path::new(&p).join("f"), 64 * MIB);
    assert!(err.is_none(), "unlimited layer: {err:?} after {written}");
    must(f.mgr.unmount("free").await, "Unmount free");

    // A child's limit counts exclusive bytes: the parent's 64 MiB it
    // shares do not count against its 16 MiB.
    f.commit("free-c", "free").await;
    f.prepare_with("child", "free-c", sized("16M")).await;
    let p = must(f.mgr.mount("child").await, "Mount child");
    let (_, err) = fill(&Path::new(&p).join("g"), 8 * MIB);
    assert!(
        err.is_none(),
        "8 MiB in a 16 MiB child of a 64 MiB parent: {err:?}"
    );
    let (_, err) = fill(&Path::new(&p).join("h"), 32 * MIB);
    assert_eq!(
        err.map(|e| e.raw_os_error()),
        Some(Some(libc::EDQUOT)),
        "the child's own limit holds"
    );
    must(f.mgr.unmount("child").await, "Unmount child");
    f.finish();
}

/// Drivers that cannot limit a layer refuse the label with NotSupported
/// naming the driver, and create nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_label_refused_where_unsupported() {
    let Some(f) = Fixture::new(common::Backend::OverlayXfs).await else {
        return;
    };
    let before = entries(&f.pool_path());
    let e = assert_dbus_err!(
        f.mgr.prepare("lim", "", sized("512M")).await,
        "NotSupported"
    );
    let msg = err_message(&e).unwrap();
    assert!(
        msg.contains("overlay") && msg.contains("layerd.io/size"),
        "{msg}"
    );
    assert_dbus_err!(f.mgr.stat("lim").await, "NotFound");
    assert_eq!(entries(&f.pool_path()), before);
    // A bad value is still InvalidArgument (checked first).
    assert_dbus_err!(
        f.mgr.prepare("lim", "", sized("lots")).await,
        "InvalidArgument"
    );
    f.finish();
}

async fn next_msg(s: &mut zbus::MessageStream) -> Option<zbus::Result<zbus::Message>> {
    std::future::poll_fn(|cx| {
        zbus::export::futures_core::Stream::poll_next(std::pin::Pin::new(&mut *s), cx)
    })
    .await
}

/// Waits for `Completed(success, message)` of the job at `path` on a
/// stream subscribed before the job started.
async fn job_completed(stream: &mut zbus::MessageStream, path: &str) -> (bool, String) {
    let wait = async {
        while let Some(msg) = next_msg(stream).await {
            let msg = msg.expect("signal stream");
            if msg.header().path().map(|p| p.as_str()) == Some(path) {
                return msg.body().deserialize::<(bool, String)>().expect("(bs)");
            }
        }
        panic!("signal stream ended");
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), wait)
        .await
        .unwrap_or_else(|_| panic!("no Completed for {path}"))
}

async fn completed_stream(conn: &zbus::Connection) -> zbus::MessageStream {
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("org.layerd.Layerd1.Job")
        .unwrap()
        .member("Completed")
        .unwrap()
        .build();
    zbus::MessageStream::for_match_rule(rule, conn, Some(64))
        .await
        .unwrap()
}

fn device_bytes(mnt: &Path) -> u64 {
    sysbtrfs::devices(mnt)
        .unwrap()
        .iter()
        .map(|d| d.total_bytes)
        .sum()
}

/// Pool.Extend on a loop pool: a 1 GiB image grows by 512 MiB (still
/// sparse), the loop device and the btrfs follow, DataSize and Unallocated
/// rise over D-Bus, the job completes true, and after a restart and a
/// "reboot" the larger image is attached again with its layers. Past
/// `autoextend_max` the request is InvalidArgument naming the maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_loop_pool() {
    if skip() {
        return;
    }
    let mut w = World::new();
    let mnt = w.state_dir().join("main");
    let img = image_path(&mnt);
    w.start(
        vec![
            ("backing".into(), toml_str("loop")),
            ("size".into(), toml_str("1G")),
            ("monitor.autoextend_max".into(), toml_str("2G")),
        ],
        &mnt,
    )
    .await;
    let pool = w.pool().await;
    let mgr = w.mgr().await;
    must(mgr.prepare("a", "", l()).await, "Prepare a");
    write_in(&mgr, "a", "f", 4 * MIB, 3).await;
    let size0 = must(pool.data_size().await, "DataSize");
    let unalloc0 = must(pool.unallocated().await, "Unallocated");
    assert_eq!(device_bytes(&mnt), 1 << 30);

    // Over the cap: 1 GiB + 1.5 GiB > 2 GiB.
    let e = assert_dbus_err!(pool.extend(1536 * MIB).await, "InvalidArgument");
    let msg = err_message(&e).unwrap();
    assert!(
        msg.contains("autoextend_max") && msg.contains(&(2u64 << 30).to_string()),
        "{msg}"
    );
    assert_eq!(fs::metadata(&img).unwrap().len(), 1 << 30, "nothing grew");

    let conn = w.conn.clone().unwrap();
    let mut done = completed_stream(&conn).await;
    let job = must(pool.extend(512 * MIB).await, "Extend");
    let (ok, msg) = job_completed(&mut done, job.as_str()).await;
    assert!(ok, "Extend job: {msg}");
    let md = fs::metadata(&img).unwrap();
    assert_eq!(md.len(), 1536 * MIB, "image grown by 512 MiB");
    assert!(md.blocks() * 512 < 256 * MIB, "the image stays sparse");
    assert_eq!(device_bytes(&mnt), 1536 * MIB, "btrfs resized");
    let size1 = must(pool.data_size().await, "DataSize");
    let unalloc1 = must(pool.unallocated().await, "Unallocated");
    assert_eq!(unalloc1, unalloc0 + 512 * MIB, "Unallocated over D-Bus");
    assert!(size1 >= size0 + 400 * MIB, "DataSize {size0} → {size1}");

    // Restart, then "reboot" (unmounted, loop device gone): the larger
    // image is attached and mounted again, layers intact.
    w.daemon().restart(&conn).await.unwrap();
    assert_eq!(device_bytes(&mnt), 1536 * MIB);
    w.daemon().stop();
    umount_all(&mnt).unwrap();
    for d in loopdev::find_backing(&img).unwrap() {
        loopdev::detach(&d).unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !loopdev::find_backing(&img).unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "loop not detached");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    w.daemon().start(&conn).await.unwrap();
    assert_eq!(fs::metadata(&img).unwrap().len(), 1536 * MIB);
    assert_eq!(
        device_bytes(&mnt),
        1536 * MIB,
        "re-attached at the new size"
    );
    let pool = w.pool().await;
    assert_eq!(must(pool.unallocated().await, "Unallocated"), unalloc1);
    let mgr = w.mgr().await;
    assert_eq!(read_in(&mgr, "a", "f").await.len(), 4 * MIB as usize);
}

/// Extend on an `existing` btrfs is NotSupported naming the backing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_refused_on_existing_btrfs() {
    let Some(f) = Fixture::new(common::Backend::Btrfs).await else {
        return;
    };
    let pool = f.pool("main").await;
    let e = assert_dbus_err!(pool.extend(512 * MIB).await, "NotSupported");
    assert!(err_message(&e).unwrap().contains("existing"));
    f.finish();
}

/// udev (the kernel's uevents here, where no udevd runs): the device of a
/// `device`-backed pool grows (its loop file made larger, then
/// LOOP_SET_CAPACITY: a `change` uevent) and the daemon resizes the btrfs
/// to it by itself: DataSize and Unallocated rise without Extend or a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_growth_is_picked_up_by_udev() {
    if skip() {
        return;
    }
    let mut w = World::new();
    let dev = w.device("grow.img", 512 * MIB, None);
    w.start(vec![("backing".into(), toml_str("device"))], &dev)
        .await;
    let pool = w.pool().await;
    assert_eq!(must(pool.health().await, "Health"), "ok");
    let size0 = must(pool.data_size().await, "DataSize");
    let un0 = must(pool.unallocated().await, "Unallocated");
    let img = w.dir.join("grow.img");
    fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(1024 * MIB)
        .unwrap();
    let out = Command::new("losetup")
        .arg("-c")
        .arg(&dev)
        .output()
        .unwrap();
    assert!(out.status.success(), "losetup -c: {out:?}");
    let t0 = std::time::Instant::now();
    let limit = deadline(std::time::Duration::from_secs(30));
    let size1 = loop {
        let s = must(pool.data_size().await, "DataSize");
        if s > size0 {
            break s;
        }
        assert!(
            t0.elapsed() < limit,
            "DataSize still {s} {limit:?} after the device grew"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let took = t0.elapsed();
    let un1 = must(pool.unallocated().await, "Unallocated");
    assert!(
        un1 >= un0 + 400 * MIB,
        "Unallocated {un0} → {un1}: the 512 MiB the device gained are not there"
    );
    let log = w.daemon().log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("udev event on a backing device handled")
                && l.contains("action=change")),
        "the growth was not taken up from a uevent; daemon log:\n{log}"
    );
    eprintln!("btrfs device growth: DataSize {size0} → {size1} {took:?} after losetup -c returned");
    let mgr = w.mgr().await;
    must(mgr.prepare("a", "", l()).await, "Prepare after the growth");
    w.daemon().stop();
}
