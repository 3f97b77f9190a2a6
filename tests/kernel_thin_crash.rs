//! Crashes, reboots, removals and space on the thin driver, on the real
//! dm-thin of the kernel-tier VM (`#[ignore]`d on the host;
//! `scripts/test-kernel.sh kernel_thin_crash` runs them). The seed's
//! Docker devmapper lessons: no orphan devices or leaked thin ids after a
//! crash, busy devices on removal handled, loop files that shrink again.
//!
//! What is checked after every restart ([`check_no_orphans`]): the dm
//! devices named `layerd-<pool>-*` (each fixture's pool has a name of its
//! own, so these tests run side by side) are exactly the pool (and its meta/data
//! linear devices), the base and one device per layer the store knows;
//! the thin ids in the pool's metadata (read with the real tools on a
//! metadata snapshot: `reserve_metadata_snap`, `thin_ls -m`, `thin_check
//! -m`) are exactly the base's (0) and those layers'.
//!
//! The daemon is the fault-injection build (`LAYERD_TEST_FAULT`, see
//! src/engine/fault.rs): scripts/test-kernel.sh builds with
//! `--all-features` and hands the VM that binary as `LAYERD_BIN`.

#[macro_use]
#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use devicemapper::{DevId, DmName, DM};

/// Every dm device of the fixture's pool (named `layerd-<pool>-…`).
fn dm_devices(f: &Fixture) -> BTreeSet<String> {
    let prefix = f.dm_prefix();
    DM::new()
        .expect("device-mapper")
        .list_devices()
        .expect("list dm devices")
        .into_iter()
        .map(|(n, _, _)| n.to_string())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Layer ids of the active `layerd-<pool>-<id>` devices.
fn layer_devices(f: &Fixture) -> BTreeSet<u64> {
    let prefix = f.dm_prefix();
    dm_devices(f)
        .iter()
        .filter_map(|n| n.strip_prefix(&prefix)?.parse().ok())
        .collect()
}

fn pool_msg(f: &Fixture, msg: &str) -> Result<(), String> {
    let dm = DM::new().map_err(|e| e.to_string())?;
    let name = format!("{}pool", f.dm_prefix());
    dm.target_msg(&DevId::Name(DmName::new(&name).unwrap()), None, msg)
        .map(|_| ())
        .map_err(|e| format!("dm message {name} {msg}: {e}"))
}

/// Runs a thin tool, `Ok(stdout)` on success.
fn tool(args: &[&str], target: &Path) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .arg(target)
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{args:?} {}: {}: {}{}",
            target.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The thin ids in the live pool's metadata, and `thin_check` of it: a
/// metadata snapshot is reserved, read with `thin_ls -m` and checked with
/// `thin_check -m`, then released. The metadata is read through the dm
/// linear device the pool uses or, if the tools cannot open that (the
/// pool holds it exclusively), through the loop file below it.
fn thin_ids(f: &Fixture) -> BTreeSet<u32> {
    if pool_msg(f, "reserve_metadata_snap").is_err() {
        // A snapshot left reserved (a crash while one was held).
        let _ = pool_msg(f, "release_metadata_snap");
        pool_msg(f, "reserve_metadata_snap").unwrap();
    }
    let sources: [PathBuf; 2] = [
        PathBuf::from(format!("/dev/mapper/{}meta", f.dm_prefix())),
        f.pool_path().join("metadata.img"),
    ];
    let mut errors = Vec::new();
    let mut result = None;
    for src in &sources {
        match tool(&["thin_ls", "-m", "--no-headers", "-o", "DEV"], src) {
            Ok(out) => {
                let ids: BTreeSet<u32> = out
                    .split_whitespace()
                    .map(|w| w.parse().unwrap_or_else(|_| panic!("thin_ls: {out}")))
                    .collect();
                let check = tool(&["thin_check", "-m"], src);
                result = Some((ids, check));
                break;
            }
            Err(e) => {
                eprintln!(
                    "thin_ls -m on {} failed, trying the next source: {e}",
                    src.display()
                );
                errors.push(e)
            }
        }
    }
    pool_msg(f, "release_metadata_snap").unwrap();
    let Some((ids, check)) = result else {
        panic!("could not read the pool metadata: {errors:?}");
    };
    if let Err(e) = check {
        panic!("thin_check of the live metadata snapshot failed: {e}");
    }
    ids
}

/// After a restart: Walk is `expect`; the layerd dm devices are the pool,
/// its meta/data devices, maybe the base, and one per layer; the pool's
/// thin ids are the base's and exactly those layers'.
async fn check_no_orphans(f: &Fixture, expect: &[&str]) {
    let log = || f.daemon().log_text();
    let names: BTreeSet<String> = f.walk_names(&[]).await.into_iter().collect();
    let want: BTreeSet<String> = expect.iter().map(|s| s.to_string()).collect();
    assert_eq!(names, want, "layers after restart\n{}", log());

    let prefix = f.dm_prefix();
    let devs = dm_devices(f);
    let fixed: BTreeSet<String> = ["pool", "meta", "data", "base"]
        .iter()
        .map(|s| format!("{prefix}{s}"))
        .collect();
    let layers = layer_devices(f);
    let odd: Vec<&String> = devs
        .iter()
        .filter(|n| !fixed.contains(*n) && !n[prefix.len()..].parse::<u64>().is_ok())
        .collect();
    assert!(odd.is_empty(), "unexpected dm devices {odd:?}");
    for s in ["pool", "meta", "data"] {
        assert!(
            devs.contains(&format!("{prefix}{s}")),
            "no {prefix}{s}: {devs:?}"
        );
    }
    // Every layer's device is active while the layer exists.
    assert_eq!(
        layers.len(),
        names.len(),
        "layer devices {layers:?} for layers {names:?}: orphan or missing devices\n{}",
        log()
    );
    // Active layers and views name their device in their mount specs.
    for n in &names {
        if f.stat(n).await.kind != "committed" {
            let specs = f.mounts(n).await;
            let src = &specs[0].1;
            let id: u64 = src
                .strip_prefix(&format!("/dev/mapper/{prefix}"))
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{n}: mount source {src}"));
            assert!(layers.contains(&id), "{n}: device {src} not active");
        }
    }
    let ids = thin_ids(f);
    let mut want_ids: BTreeSet<u32> = layers.iter().map(|&i| i as u32).collect();
    want_ids.insert(0);
    assert_eq!(
        ids,
        want_ids,
        "thin ids in the pool metadata vs the base and the layers' devices: leaked or missing ids\n{}",
        log()
    );
    assert!(
        mounts_under(&f.run_dir()).is_empty(),
        "daemon mounts left: {:?}",
        mounts_under(&f.run_dir())
    );
}

/// Committed `base` (base.txt) and its committed child `keep` (keep.txt).
async fn setup(f: &Fixture) {
    f.prepare("base/a", "").await;
    f.apply_to(
        "base/a",
        &[create_file("/base.txt", "base", 0o644)],
        Via::Daemon,
    )
    .await;
    f.commit("base", "base/a").await;
    f.prepare("keep/a", "base").await;
    f.apply_to(
        "keep/a",
        &[create_file("/keep.txt", "keep", 0o600)],
        Via::Daemon,
    )
    .await;
    f.commit("keep", "keep/a").await;
}

async fn check_keep(f: &Fixture) {
    let expected = f.scratch("expect");
    apply(
        &expected,
        &[
            create_file("/base.txt", "base", 0o644),
            create_file("/keep.txt", "keep", 0o600),
        ],
    )
    .unwrap();
    f.check_layer("keep", &expected).await;
}

/// Arms `point`, runs `op` (which must die with the daemon), starts the
/// daemon again unarmed.
async fn crash_at<F, Fut>(f: &mut Fixture, point: &str, op: F)
where
    F: FnOnce(ManagerProxy<'static>) -> Fut,
    Fut: std::future::Future<Output = zbus::Result<()>>,
{
    crash(f, point, op).await;
    f.start().await;
}

/// Arms `point` and runs `op`, which must die with the daemon.
async fn crash<F, Fut>(f: &mut Fixture, point: &str, op: F)
where
    F: FnOnce(ManagerProxy<'static>) -> Fut,
    Fut: std::future::Future<Output = zbus::Result<()>>,
{
    f.daemon_mut().env = vec![("LAYERD_TEST_FAULT".into(), point.into())];
    f.restart().await;
    let r = op(f.mgr.clone()).await;
    assert!(
        r.is_err(),
        "{point}: the call succeeded; the fault point was not reached (is the VM's daemon the fault-injection build?)"
    );
    let until = Instant::now() + deadline(Duration::from_secs(5));
    while f.daemon_mut().is_running().is_none() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        f.daemon().pid().is_none(),
        "{point}: the daemon did not die"
    );
    f.daemon_mut().env.clear();
}

/// What a reboot does to the pool: every layerd dm device deactivated and
/// the loop devices detached (the daemon must be stopped or dead).
fn reboot(f: &Fixture) {
    teardown_thin_pool(f.pool_name(), &f.pool_path());
    let left = dm_devices(f);
    assert!(left.is_empty(), "dm devices survive the teardown: {left:?}");
    let meta = f.pool_path().join("metadata.img");
    if let Err(e) = tool(&["thin_check"], &meta) {
        panic!("thin_check of the inactive pool: {e}");
    }
}

/// SIGKILL at each intent point of Prepare, Commit and Remove
/// (src/engine/fault.rs) in one pool: after each restart nothing is
/// orphaned, committed layers are intact, and the API goes on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kernel tier: runs in the VM (scripts/test-kernel.sh)"]
async fn sigkill_at_each_fault_point_leaves_no_orphan() {
    require_kernel_tier("sigkill_at_each_fault_point_leaves_no_orphan");
    let Some(mut f) = Fixture::new(Backend::Thin).await else {
        return;
    };
    setup(&f).await;
    check_no_orphans(&f, &["base", "keep"]).await;
    let mut passed = Vec::new();
    for point in layerd::engine::fault::POINTS {
        let victim = format!("victim-{point}");
        match *point {
            "prepare-intent" | "prepare-backend" => {
                let v = victim.clone();
                crash_at(&mut f, point, |m| async move {
                    m.prepare(&v, "base", default_labels()).await.map(|_| ())
                })
                .await;
                // Never acknowledged: rolled back, the key is free.
                check_no_orphans(&f, &["base", "keep"]).await;
                f.prepare(&victim, "base").await;
                check_no_orphans(&f, &["base", "keep", &victim]).await;
                f.remove(&victim).await;
            }
            "commit-intent" | "commit-backend" => {
                let key = format!("{victim}/a");
                f.prepare(&key, "base").await;
                f.apply_to(&key, &[create_file("/v.txt", "v", 0o644)], Via::Daemon)
                    .await;
                let v = victim.clone();
                crash_at(&mut f, point, |m| async move {
                    m.commit(&v, &key, default_labels()).await
                })
                .await;
                // The intent was durable: the commit is finished.
                check_no_orphans(&f, &["base", "keep", &victim]).await;
                assert_eq!(f.stat(&victim).await.kind, "committed");
                let expected = f.scratch("expect");
                apply(
                    &expected,
                    &[
                        create_file("/base.txt", "base", 0o644),
                        create_file("/v.txt", "v", 0o644),
                    ],
                )
                .unwrap();
                f.check_layer(&victim, &expected).await;
                f.remove(&victim).await;
            }
            "remove-intent" | "remove-backend" => {
                let key = format!("{victim}/a");
                f.prepare(&key, "base").await;
                f.commit(&victim, &key).await;
                let v = victim.clone();
                crash_at(&mut f, point, |m| async move { m.remove(&v).await }).await;
                // The removal was durable: it is finished.
                check_no_orphans(&f, &["base", "keep"]).await;
                must(f.mgr.cleanup().await, "Cleanup");
                check_no_orphans(&f, &["base", "keep"]).await;
            }
            other => panic!("fault point {other} has no case here: add one"),
        }
        passed.push(*point);
    }
    check_keep(&f).await;
    check_no_orphans(&f, &["base", "keep"]).await;
    eprintln!("no orphan after SIGKILL at {passed:?}");
    f.finish();
}

/// A simulated reboot (daemon stopped, every layerd dm device
/// deactivated, loop devices detached): the next start checks and
/// re-activates the pool, the layers' devices come back as needed, the
/// contents and Walk are unchanged and mounts work. Then the same after a
/// crash inside Prepare (thin id made, record lost): the id that only the
/// pool metadata still knows is not leaked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kernel tier: runs in the VM (scripts/test-kernel.sh)"]
async fn reboot_readopts_pool_and_layers() {
    require_kernel_tier("reboot_readopts_pool_and_layers");
    let Some(mut f) = Fixture::new(Backend::Thin).await else {
        return;
    };
    setup(&f).await;
    f.prepare("work", "keep").await;
    f.apply_to(
        "work",
        &[create_file("/work.txt", "work", 0o644)],
        Via::Daemon,
    )
    .await;
    f.view("look", "keep").await;
    let sorted_walk = |mut v: Vec<(Info, String)>| {
        v.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        v
    };
    let before = sorted_walk(f.walk(&[]).await);

    f.daemon_mut().stop();
    reboot(&f);
    f.start().await;
    assert!(
        f.daemon().log_text().contains("thin pool activated"),
        "the pool was not activated again after the reboot\n{}",
        f.daemon().log_text()
    );
    assert_eq!(
        sorted_walk(f.walk(&[]).await),
        before,
        "Walk changed across the reboot"
    );
    check_no_orphans(&f, &["base", "keep", "work", "look"]).await;
    check_keep(&f).await;
    let expected = f.scratch("expect");
    apply(
        &expected,
        &[
            create_file("/base.txt", "base", 0o644),
            create_file("/keep.txt", "keep", 0o600),
            create_file("/work.txt", "work", 0o644),
        ],
    )
    .unwrap();
    f.check_mounted("work", &expected, Via::Daemon).await;
    f.check_mounted("work", &expected, Via::Specs).await;
    f.apply_to(
        "work",
        &[create_file("/more.txt", "more", 0o644)],
        Via::Specs,
    )
    .await;
    f.commit("work-done", "work").await;

    // A crash after the thin id was made but before the record was
    // durable, then a reboot: only the pool metadata knows the id.
    crash(&mut f, "prepare-backend", |m| async move {
        m.prepare("lost", "keep", default_labels())
            .await
            .map(|_| ())
    })
    .await;
    reboot(&f);
    f.start().await;
    check_no_orphans(&f, &["base", "keep", "work-done", "look"]).await;
    // The id the crash used is handed out again and works.
    f.prepare("again", "keep").await;
    f.apply_to(
        "again",
        &[create_file("/again.txt", "a", 0o644)],
        Via::Daemon,
    )
    .await;
    check_no_orphans(&f, &["base", "keep", "work-done", "look", "again"]).await;
    f.finish();
}

/// Blocks (512 B) the pool's data file holds on the host.
fn data_blocks(f: &Fixture) -> u64 {
    fs::metadata(f.pool_path().join("data.img"))
        .expect("stat data.img")
        .blocks()
}

/// Space back: 200 MiB written in a layer, the layer removed, Cleanup and
/// the Trim job run: the loop-backed data file's allocated blocks fall by
/// most of what was written (discard on remove, passed down by the pool,
/// punches holes into the file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kernel tier: runs in the VM (scripts/test-kernel.sh)"]
async fn remove_and_trim_give_space_back() {
    require_kernel_tier("remove_and_trim_give_space_back");
    let Some(f) = Fixture::new(Backend::Thin).await else {
        return;
    };
    const WRITTEN: u64 = 200 * MIB;
    let empty = data_blocks(&f);
    f.prepare("big", "").await;
    let m = f.mount("big", Via::Daemon).await;
    for i in 0..4u8 {
        write_pattern(&m.path.join(format!("f{i}")), WRITTEN / 4, i).expect("write");
    }
    f.unmount(m).await;
    f.fs().used_bytes(); // syncfs of the file system holding data.img
    let written = data_blocks(&f);
    assert!(
        (written - empty) * 512 >= WRITTEN * 9 / 10,
        "data.img grew by {} MiB only",
        (written - empty) * 512 / MIB
    );
    f.remove("big").await;
    f.fs().used_bytes();
    let removed = data_blocks(&f);
    let cleaned = must(f.mgr.cleanup().await, "Cleanup");
    f.fs().used_bytes();
    let after_cleanup = data_blocks(&f);

    let pool = f.main_pool().await;
    let last0 = must(pool.last_trim().await, "LastTrim");
    must(pool.trim().await, "Trim");
    let until = Instant::now() + deadline(Duration::from_secs(60));
    let last = loop {
        let l = must(pool.last_trim().await, "LastTrim");
        if l != last0 {
            break l;
        }
        assert!(Instant::now() < until, "the Trim job did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(last.2, "ok", "Trim: {last:?}");
    f.fs().used_bytes();
    let trimmed = data_blocks(&f);
    let freed = written.saturating_sub(trimmed) * 512;
    eprintln!(
        "thin space back: wrote {} MiB; data.img allocated: empty pool {} MiB, after writing {} MiB, after Remove {} MiB, after Cleanup {} MiB (reported {} MiB), after Trim {} MiB (reported {} bytes); given back {} MiB ({:.0}% of written)",
        WRITTEN / MIB,
        empty * 512 / MIB,
        written * 512 / MIB,
        removed * 512 / MIB,
        after_cleanup * 512 / MIB,
        cleaned / MIB,
        trimmed * 512 / MIB,
        last.1,
        freed / MIB,
        freed as f64 * 100.0 / WRITTEN as f64
    );
    assert!(
        freed * 10 >= WRITTEN * 8,
        "data.img gave back {} MiB, less than 80% of the {} MiB written",
        freed / MIB,
        WRITTEN / MIB
    );
    f.finish();
}

/// Remove of a device someone holds: a runtime's own mount of the
/// layer's specs (it holds the device exclusively, so it cannot be
/// discarded at Remove). Remove succeeds, the device is removed deferred
/// when the holder lets go, the layer is gone from Walk at once; once the
/// mount is gone and the daemon restarted, no device and no thin id is
/// left, and the blocks it held are back in the data file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kernel tier: runs in the VM (scripts/test-kernel.sh)"]
async fn remove_of_a_busy_device_is_deferred_and_leaves_no_orphan() {
    require_kernel_tier("remove_of_a_busy_device_is_deferred_and_leaves_no_orphan");
    let Some(mut f) = Fixture::new(Backend::Thin).await else {
        return;
    };
    setup(&f).await;
    f.prepare("busy", "keep").await;
    let specs = f.mounts("busy").await;
    let node = PathBuf::from(&specs[0].1);
    let name = node.file_name().unwrap().to_str().unwrap().to_string();
    let m = f.mount("busy", Via::Specs).await;
    write_pattern(&m.path.join("data"), 64 * MIB, 3).expect("write");
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let written = data_blocks(&f);
    f.remove("busy").await;
    assert!(
        !f.walk_names(&[]).await.contains(&"busy".to_string()),
        "the removed layer is still listed"
    );
    assert!(
        dm_devices(&f).contains(&name),
        "the mounted device vanished: deferred removal expected"
    );
    // The holder goes away.
    umount_all(&m.path).expect("unmount the layer");
    let until = Instant::now() + deadline(Duration::from_secs(10));
    while dm_devices(&f).contains(&name) {
        assert!(
            Instant::now() < until,
            "the deferred removal of {name} did not happen once its holder let go"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    f.restart().await;
    check_no_orphans(&f, &["base", "keep"]).await;
    f.fs().used_bytes();
    let after = data_blocks(&f);
    eprintln!(
        "busy remove: data.img {} MiB after writing 64 MiB into the mounted layer, {} MiB after its deferred removal and a restart",
        written * 512 / MIB,
        after * 512 / MIB
    );
    assert!(
        written.saturating_sub(after) * 512 >= 48 * MIB,
        "the held layer's 64 MiB did not come back: {} → {} MiB",
        written * 512 / MIB,
        after * 512 / MIB
    );
    check_keep(&f).await;
    f.finish();
}
