//! udev watching of the block devices under a thin pool, on the real
//! kernel and udevd of the kernel-tier VM (`#[ignore]`d on the host;
//! `scripts/test-kernel.sh kernel_udev` runs them): a data device that
//! grows (LOOP_SET_CAPACITY: a real `change` uevent) is taken up without a
//! restart; a data device that really disappears (a scsi_debug disk
//! deleted through sysfs: a real `remove` uevent) fails the pool while the
//! daemon keeps answering. Also here, since it needs the same device
//! backings: an active pool on other devices is not adopted.

#[macro_use]
#[path = "common/mod.rs"]
mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;

/// The next item of a stream (zbus's streams are `futures_core::Stream`s).
async fn next<S>(s: &mut S) -> Option<S::Item>
where
    S: zbus::export::futures_core::Stream + Unpin,
{
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *s).poll_next(cx)).await
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Loop devices and sparse files this test made; detached on drop (after
/// the fixture, declared later, has torn the pool down).
#[derive(Default)]
struct Loops(Vec<(String, PathBuf)>);

impl Loops {
    fn attach(&mut self, file: &Path, size: u64) -> String {
        let f = fs::File::create(file).unwrap();
        f.set_len(size).unwrap();
        let dev = run("losetup", &["-f", "--show", &file.to_string_lossy()]);
        self.0.push((dev.clone(), file.to_path_buf()));
        dev
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        // The pool on these devices goes first, also when the fixture
        // never came up (a failed start leaves an active pool that the
        // next test would adopt).
        teardown_thin_pool("main", &test_tmp().join("no-loop-files"));
        for (dev, file) in self.0.drain(..) {
            let _ = Command::new("losetup").arg("-d").arg(&dev).status();
            let _ = fs::remove_file(file);
        }
    }
}

/// The scsi_debug module (a RAM disk on a simulated SCSI host, which a
/// sysfs write deletes as a hot-unplug would); unloaded on drop.
struct ScsiDebug;

impl Drop for ScsiDebug {
    fn drop(&mut self) {
        teardown_thin_pool("main", &test_tmp().join("no-loop-files"));
        let _ = Command::new("modprobe").args(["-r", "scsi_debug"]).status();
    }
}

/// Loads scsi_debug with one `mb` MiB disk; its kernel name (`sdX`) once
/// its node exists.
fn scsi_debug_disk(mb: u64) -> (ScsiDebug, String) {
    run("modprobe", &["scsi_debug", &format!("dev_size_mb={mb}")]);
    let guard = ScsiDebug;
    let until = Instant::now() + deadline(Duration::from_secs(30));
    loop {
        for e in fs::read_dir("/sys/block").unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let model = fs::read_to_string(e.path().join("device/model")).unwrap_or_default();
            if name.starts_with("sd")
                && model.trim() == "scsi_debug"
                && Path::new("/dev").join(&name).exists()
            {
                return (guard, name);
            }
        }
        assert!(Instant::now() < until, "no scsi_debug disk appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pool config for `backing = "device"` on `data` and `meta`.
fn device_pool(data: &str, meta: &str) -> Vec<(&'static str, String)> {
    vec![
        ("backing", toml_str("device")),
        ("path", toml_str(data)),
        ("metadata_device", toml_str(meta)),
        // `size` is a loop backing's only.
        ("size", String::new()),
    ]
}

fn udevd_runs() -> bool {
    Path::new("/run/udev/control").exists()
}

/// A data device that grows (its loop file made larger, then `losetup -c`,
/// which raises a `change` uevent with RESIZE=1) is taken up: DataSize
/// rises without a restart and a layer can write more than the pool first
/// held (the pool carries `error_if_no_space`, so without the growth the
/// writer would get ENOSPC).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kernel tier: runs in the VM (scripts/test-kernel.sh)"]
async fn data_device_growth_is_picked_up() {
    require_kernel_tier("data_device_growth_is_picked_up");
    assert!(udevd_runs(), "udevd is not running in the VM");
    let mut loops = Loops::default();
    let tmp = test_tmp();
    let data_file = tmp.join(format!("udev-grow-data.{}", std::process::id()));
    let data = loops.attach(&data_file, 128 * MIB);
    let meta = loops.attach(
        &tmp.join(format!("udev-grow-meta.{}", std::process::id())),
        16 * MIB,
    );
    let Some(f) = Fixture::new_named(Backend::Thin, &device_pool(&data, &meta), "main").await
    else {
        return;
    };
    let pool = f.main_pool().await;
    assert_eq!(must(pool.backing().await, "Backing"), "device");
    let size0 = must(pool.data_size().await, "DataSize");
    assert_eq!(size0, 128 * MIB, "DataSize of a 128 MiB data device");

    f.prepare("w", "").await;
    let m = f.mount("w", Via::Daemon).await;

    fs::OpenOptions::new()
        .write(true)
        .open(&data_file)
        .unwrap()
        .set_len(384 * MIB)
        .unwrap();
    run("losetup", &["-c", &data]);
    let t0 = Instant::now();
    let limit = deadline(Duration::from_secs(30));
    let size1 = loop {
        let s = must(pool.data_size().await, "DataSize");
        if s > size0 {
            break s;
        }
        assert!(
            t0.elapsed() < limit,
            "DataSize still {s} {limit:?} after the data device grew"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = t0.elapsed();
    assert_eq!(size1, 384 * MIB, "DataSize after growing the device");
    // The daemon logs the event as handled just after DataSize changes.
    let handled = |log: &str| {
        log.lines().any(|l| {
            l.contains("udev event on a backing device handled") && l.contains("action=change")
        })
    };
    let t1 = Instant::now();
    while !handled(&f.daemon().log_text()) && t1.elapsed() < deadline(Duration::from_secs(5)) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = f.daemon().log_text();
    assert!(
        handled(&log),
        "the growth was not taken up from a udev change event; daemon log:\n{log}"
    );
    assert_eq!(must(pool.health().await, "Health"), "ok");

    // More than the pool first held, written and synced in one layer.
    let target = m.path.join("big");
    let w = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut file = fs::File::create(&target)?;
        let chunk = vec![0x6bu8; MIB as usize];
        for _ in 0..200 {
            file.write_all(&chunk)?;
        }
        file.sync_all()
    });
    tokio::time::timeout(deadline(Duration::from_secs(120)), w)
        .await
        .expect("the writer hung")
        .unwrap()
        .expect("writing 200 MiB into the grown pool failed");
    // DataUsed is the pool's last sample (taken every SAMPLE_EVERY, and at
    // dm events, none of which a write below the warning level raises).
    let t2 = Instant::now();
    let used = loop {
        let used = must(pool.data_used().await, "DataUsed");
        if used > 128 * MIB {
            break used;
        }
        assert!(
            t2.elapsed() < deadline(Duration::from_secs(30)),
            "DataUsed {used} {:?} after writing 200 MiB: the new space was not used",
            t2.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "udev growth: DataSize {size0} → {size1} {took:?} after losetup -c returned; DataUsed {used}"
    );
    f.unmount(m).await;
    f.finish();
    drop(loops);
}

/// A data device that really disappears (a scsi_debug disk deleted through
/// sysfs, as a hot-unplug: a `remove` uevent) fails the pool: Health
/// `failed` naming the device, with UsageAlert; Prepare and Commit are
/// refused with FailedPrecondition; the daemon still answers and nothing
/// is destroyed (the records are all there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kernel tier: runs in the VM (scripts/test-kernel.sh)"]
async fn vanished_data_device_fails_the_pool() {
    require_kernel_tier("vanished_data_device_fails_the_pool");
    assert!(udevd_runs(), "udevd is not running in the VM");
    let mut loops = Loops::default();
    let (_scsi, sd) = scsi_debug_disk(128);
    let meta = loops.attach(
        &test_tmp().join(format!("udev-gone-meta.{}", std::process::id())),
        16 * MIB,
    );
    let data = format!("/dev/{sd}");
    let Some(mut f) = Fixture::new_named(Backend::Thin, &device_pool(&data, &meta), "main").await
    else {
        return;
    };
    let pool = f.main_pool().await;
    f.prepare("a-w", "").await;
    f.commit("a", "a-w").await;
    f.prepare("b", "a").await;
    assert_eq!(must(pool.health().await, "Health"), "ok");
    let mut alerts = pool.receive_usage_alert().await.unwrap();

    fs::write(format!("/sys/block/{sd}/device/delete"), "1").unwrap();
    let t0 = Instant::now();
    let limit = deadline(Duration::from_secs(30));
    loop {
        let a = tokio::time::timeout(limit.saturating_sub(t0.elapsed()), next(&mut alerts))
            .await
            .unwrap_or_else(|_| panic!("no UsageAlert `failed` within {limit:?}"))
            .expect("signal stream ended");
        if a.args().unwrap().level == "failed" {
            break;
        }
    }
    let took = t0.elapsed();
    assert_eq!(must(pool.health().await, "Health"), "failed");
    // The kernel may flag the pool (needs_check, a dm event) before udev
    // reports the removal; once the remove event is handled the reason
    // names the vanished device.
    let reason = loop {
        let reason = must(pool.health_reason().await, "HealthReason");
        if (reason.contains(&sd) && reason.contains("removed")) || t0.elapsed() > limit {
            break reason;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        reason.contains(&sd) && reason.contains("removed"),
        "HealthReason does not name the vanished device {sd}: {reason}"
    );
    let log = f.daemon().log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("udev event on a backing device handled")
                && l.contains("action=remove")),
        "the loss was not seen from a udev remove event; daemon log:\n{log}"
    );

    for (what, r) in [
        (
            "Prepare",
            f.mgr.prepare("c", "a", default_labels()).await.err(),
        ),
        (
            "Commit",
            f.mgr.commit("b2", "b", default_labels()).await.err(),
        ),
        ("Remove", f.mgr.remove("b").await.err()),
    ] {
        let e = r.unwrap_or_else(|| panic!("{what} in a pool whose data device is gone succeeded"));
        assert_eq!(
            err_name(&e).as_deref(),
            Some("org.layerd.Layerd1.Error.FailedPrecondition"),
            "{what}: {}",
            describe(&e)
        );
        let msg = err_message(&e).unwrap_or_default();
        assert!(
            msg.contains(&sd),
            "{what}'s error does not name {sd}: {msg}"
        );
    }
    // Still answering, records intact.
    must(f.mgr.version().await, "Version");
    let st = must(f.mgr.stat("b").await, "Stat b");
    assert_eq!((st.1.as_str(), st.2.as_str()), ("a", "active"));
    must(f.mgr.stat("a").await, "Stat a");
    eprintln!("udev removal: Health failed {took:?} after the disk was deleted; reason: {reason}");
    f.daemon_mut().stop();
    drop(f);
    drop(loops);
}

/// Points the stopped daemon's pool at other data and metadata devices.
fn set_pool_devices(d: &mut Daemon, data: &str, meta: &str) {
    let pool = &mut d.config.pools[0];
    for (k, v) in [("path", data), ("metadata_device", meta)] {
        pool.extra.retain(|(ek, _)| ek != k);
        pool.extra.push((k.to_string(), toml_str(v)));
    }
    fs::write(&d.config_path, d.config.to_toml()).unwrap();
}

/// The tables of pool `main`'s pool, data and metadata dm devices
/// (`dmsetup table`: a test may use dmsetup).
fn dm_tables() -> Vec<String> {
    ["pool", "data", "meta"]
        .iter()
        .map(|r| run("dmsetup", &["table", &format!("layerd-main-{r}")]))
        .collect()
}

/// Stops the daemon (cleanly; its pool stays active, as across any
/// restart), points its pool at `data` and `meta`, and starts it again.
async fn restart_on(f: &mut Fixture, data: &str, meta: &str) {
    let (st, killed) = f.daemon_mut().stop().expect("layerd was running");
    assert!(st.success() && !killed, "layerd did not stop cleanly: {st}");
    set_pool_devices(f.daemon_mut(), data, meta);
    f.start().await;
}

/// An active `layerd-main-pool` that stands on other devices is not
/// adopted: with the config pointed at two fresh devices while the pool of
/// the first two is active, the pool is `failed` with a reason naming the
/// other pool, Prepare is refused, and neither the active pool nor the
/// fresh devices are touched; with the config back, the pool and its layer
/// are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kernel tier: runs in the VM (scripts/test-kernel.sh)"]
async fn active_pool_on_other_devices_is_not_adopted() {
    require_kernel_tier("active_pool_on_other_devices_is_not_adopted");
    let mut loops = Loops::default();
    let tmp = test_tmp();
    let pid = std::process::id();
    let data = loops.attach(&tmp.join(format!("adopt-data.{pid}")), 128 * MIB);
    let meta = loops.attach(&tmp.join(format!("adopt-meta.{pid}")), 16 * MIB);
    let data2 = loops.attach(&tmp.join(format!("adopt-data2.{pid}")), 128 * MIB);
    let meta2_file = tmp.join(format!("adopt-meta2.{pid}"));
    let meta2 = loops.attach(&meta2_file, 16 * MIB);
    let Some(mut f) = Fixture::new_named(Backend::Thin, &device_pool(&data, &meta), "main").await
    else {
        return;
    };
    f.prepare("kept", "").await;
    let tables = dm_tables();

    restart_on(&mut f, &data2, &meta2).await;
    let pool = f.main_pool().await;
    assert_eq!(must(pool.health().await, "Health"), "failed");
    let reason = must(pool.health_reason().await, "HealthReason");
    assert!(
        reason.contains("another pool named \"main\" is active") && reason.contains(&meta2),
        "HealthReason does not say that another pool is active: {reason}"
    );
    let e = f.mgr.prepare("new", "", default_labels()).await;
    assert!(
        e.is_err(),
        "Prepare in a pool on the wrong devices succeeded"
    );
    assert_eq!(dm_tables(), tables, "the active pool's tables changed");
    let mut head = vec![0u8; 4096];
    fs::File::open(&meta2_file)
        .and_then(|mut m| std::io::Read::read_exact(&mut m, &mut head))
        .unwrap();
    assert!(
        head.iter().all(|b| *b == 0),
        "the fresh metadata device was written"
    );

    restart_on(&mut f, &data, &meta).await;
    let pool = f.main_pool().await;
    assert_eq!(must(pool.health().await, "Health"), "ok");
    assert_eq!(f.stat("kept").await.kind, "active");
    f.finish();
    drop(loops);
}
