//! Thin-pool space on the real dm-thin of the kernel-tier VM (`#[ignore]`d
//! on the host; scripts/test-kernel.sh runs them with `--ignored`):
//! Pool.Extend of a loop pool, metadata growth at the warning level, and
//! PoolFull naming metadata when metadata cannot grow.

#[macro_use]
#[path = "common/mod.rs"]
mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const MIB: u64 = 1 << 20;
/// The pool block size the fixtures use (the default).
const BLOCK: u64 = 64 << 10;

/// The next item of a stream (zbus's streams are `futures_core::Stream`s).
async fn next<S>(s: &mut S) -> Option<S::Item>
where
    S: zbus::export::futures_core::Stream + Unpin,
{
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *s).poll_next(cx)).await
}

/// Job `Completed` signals, subscribed before the job starts.
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

/// `Completed(success, message)` of the job at `path`.
async fn job_completed(stream: &mut zbus::MessageStream, path: &str) -> (bool, String) {
    let wait = async {
        while let Some(msg) = next(stream).await {
            let msg = msg.expect("signal stream");
            if msg.header().path().map(|p| p.as_str()) == Some(path) {
                return msg.body().deserialize::<(bool, String)>().expect("(bs)");
            }
        }
        panic!("signal stream ended");
    };
    let limit = deadline(Duration::from_secs(30));
    tokio::time::timeout(limit, wait)
        .await
        .unwrap_or_else(|_| panic!("no Completed for {path} within {limit:?}"))
}

/// Bytes the host really allocated for a (sparse) file.
fn allocated(p: &Path) -> u64 {
    fs::metadata(p).unwrap().blocks() * 512
}

fn len(p: &Path) -> u64 {
    fs::metadata(p).unwrap().len()
}

/// The thin device of an active layer (its mount spec's source).
async fn device_of(f: &Fixture, key: &str) -> PathBuf {
    PathBuf::from(&f.mounts(key).await[0].1)
}

/// Writes 4 KiB into every `stride`-th pool block of the first `blocks`
/// blocks of a thin device, then flushes: each write maps (or unshares) one
/// pool block, so real metadata use grows while little data is written.
/// The layer's file system is not used afterwards.
fn scatter(dev: &Path, blocks: u64, stride: u64, seed: u8) {
    let f = fs::OpenOptions::new().write(true).open(dev).unwrap();
    let buf = vec![seed | 1; 4096];
    let mut b = 0;
    while b < blocks {
        f.write_all_at(&buf, b * BLOCK)
            .unwrap_or_else(|e| panic!("write {} block {b}: {e}", dev.display()));
        b += stride;
    }
    f.sync_all().unwrap();
}

/// thin_check on the pool's metadata file once the pool is torn down.
fn thin_check_clean(f: &mut Fixture) {
    f.daemon_mut().stop();
    teardown_thin_pool(f.pool_name(), &f.pool_path());
    let out = Command::new("thin_check")
        .arg(f.pool_path().join("metadata.img"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "thin_check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pool.Extend on a loop thin pool that cannot grow by itself: past
/// `autoextend_max` it is InvalidArgument naming the limit and nothing
/// changes; within it a Job completes, DataSize grows by exactly the
/// amount, the data file grows by it and stays sparse, the new space takes
/// a file larger than the old pool, the committed layer is intact, and a
/// restart and a "reboot" (pool torn down, activated again from the files)
/// keep the larger size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kernel tier: runs in the VM (scripts/test-kernel.sh)"]
async fn extend_grows_loop_pool() {
    require_kernel_tier("extend_grows_loop_pool");
    let Some(mut f) = Fixture::new_with(
        Backend::Thin,
        &[
            ("size", toml_str("256M")),
            ("monitor.autoextend_percent", "0".into()),
            ("monitor.autoextend_max", toml_str("768M")),
        ],
    )
    .await
    else {
        return;
    };
    let data = f.pool_path().join("data.img");
    f.prepare("c-a", "").await;
    let m = f.mount("c-a", Via::Daemon).await;
    write_pattern(&m.path.join("keep"), 8 * MIB, 5).unwrap();
    f.unmount(m).await;
    f.commit("c", "c-a").await;
    let want = f.scratch("want").join("keep");
    write_pattern(&want, 8 * MIB, 5).unwrap();
    let want = fs::read(&want).unwrap();

    let pool = f.main_pool().await;
    let size0 = must(pool.data_size().await, "DataSize");
    assert_eq!(size0, 256 * MIB, "DataSize of a 256M pool");
    assert_eq!(len(&data), 256 * MIB);

    // 256M + 768M > 768M: refused, nothing changes.
    let e = assert_dbus_err!(pool.extend(768 * MIB).await, "InvalidArgument");
    let msg = err_message(&e).unwrap();
    assert!(
        msg.contains("autoextend_max") && msg.contains(&(768 * MIB).to_string()),
        "{msg}"
    );
    assert_eq!(len(&data), 256 * MIB, "the data file grew");
    assert_eq!(must(pool.data_size().await, "DataSize"), size0);

    let alloc0 = allocated(&data);
    let mut done = completed_stream(&f.conn).await;
    let t0 = Instant::now();
    let job = must(pool.extend(256 * MIB).await, "Extend");
    let (ok, msg) = job_completed(&mut done, job.as_str()).await;
    let took = t0.elapsed();
    assert!(ok, "Extend job: {msg}");
    let size1 = must(pool.data_size().await, "DataSize");
    assert_eq!(size1, size0 + 256 * MIB, "DataSize grows by the amount");
    assert_eq!(len(&data), 512 * MIB, "data.img grows by the amount");
    let alloc1 = allocated(&data);
    assert!(
        alloc1 <= alloc0 + MIB,
        "Extend allocated {} bytes of the data file: not sparse",
        alloc1.saturating_sub(alloc0)
    );
    eprintln!(
        "extend: DataSize {size0} → {size1}, data.img {} → {} bytes, allocated {alloc0} → {alloc1} bytes, job took {took:?}",
        256 * MIB,
        len(&data)
    );

    // More than the old pool held: only the new space takes it (the pool
    // cannot grow by itself and errors writes when full).
    f.prepare("w", "c").await;
    let m = f.mount("w", Via::Daemon).await;
    let big = m.path.join("big");
    tokio::task::spawn_blocking(move || write_pattern(&big, 300 * MIB, 9))
        .await
        .unwrap()
        .expect("writing 300 MiB into the extended pool");
    assert_eq!(fs::read(m.path.join("keep")).unwrap(), want, "keep in w");
    f.unmount(m).await;
    assert_eq!(must(pool.health().await, "Health"), "ok");

    // Restart: the pool is adopted at its new size.
    f.restart().await;
    let pool = f.main_pool().await;
    assert_eq!(must(pool.data_size().await, "DataSize"), size1);
    // "Reboot": no dm devices, no loop devices; the files are the truth.
    f.daemon_mut().stop();
    teardown_thin_pool(f.pool_name(), &f.pool_path());
    f.start().await;
    let pool = f.main_pool().await;
    assert_eq!(must(pool.health().await, "Health"), "ok");
    assert_eq!(
        must(pool.data_size().await, "DataSize"),
        size1,
        "activated again at the new size"
    );
    assert_eq!(len(&data), 512 * MIB);
    f.view("v", "c").await;
    let m = f.mount("v", Via::Daemon).await;
    assert_eq!(
        fs::read(m.path.join("keep")).unwrap(),
        want,
        "the committed layer changed"
    );
    f.unmount(m).await;
    let m = f.mount("w", Via::Daemon).await;
    assert_eq!(
        len(&m.path.join("big")),
        300 * MIB,
        "the file in the new space"
    );
    f.unmount(m).await;
    f.finish();
}

/// Rounds of snapshots with scattered writes make real metadata use grow
/// (each snapshot that writes unshares the parent's mapping leaves). When
/// it crosses the warning level (50% here) the daemon emits UsageAlert with
/// the metadata percentage, grows metadata.img by autoextend_percent (2 →
/// 4 MiB), refreshes its loop device and reloads the pool; MetadataSize
/// follows, Health is ok again, and thin_check is clean afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kernel tier: runs in the VM (scripts/test-kernel.sh)"]
async fn metadata_grows_at_warning_level() {
    require_kernel_tier("metadata_grows_at_warning_level");
    let Some(mut f) = Fixture::new_with(
        Backend::Thin,
        &[
            ("size", toml_str("8G")),
            ("metadata_size", toml_str("2M")),
            ("monitor.warn_percent", "50".into()),
            ("monitor.autoextend_percent", "100".into()),
            ("monitor.autoextend_max", toml_str("16G")),
        ],
    )
    .await
    else {
        return;
    };
    let meta_file = f.pool_path().join("metadata.img");
    let pool = f.main_pool().await;
    let msize0 = must(pool.metadata_size().await, "MetadataSize");
    assert_eq!(msize0, 2 * MIB, "MetadataSize of a 2M metadata file");
    let mut alerts = pool.receive_usage_alert().await.unwrap();
    let mut trace = vec![format!(
        "start: {} of {msize0}",
        must(pool.metadata_used().await, "MetadataUsed")
    )];

    // A parent mapping 4096 pool blocks (256 MiB of its device).
    f.prepare("p-a", "").await;
    scatter(&device_of(&f, "p-a").await, 4096, 1, 1);
    f.commit("p", "p-a").await;
    let mut grown = None;
    for i in 0..30 {
        let used = must(pool.metadata_used().await, "MetadataUsed");
        let size = must(pool.metadata_size().await, "MetadataSize");
        trace.push(format!("round {i}: {used} of {size}"));
        if size > msize0 {
            grown = Some(size);
            break;
        }
        assert!(
            used * 100 < size * 85,
            "metadata {used} of {size} bytes and not grown: {trace:?}"
        );
        // Prepare samples the pool first (and grows what is at warning).
        let key = format!("k{i}");
        f.prepare(&key, "p").await;
        scatter(&device_of(&f, &key).await, 4096, 16, i as u8 + 2);
    }
    let msize1 = grown.unwrap_or_else(|| panic!("MetadataSize never grew: {trace:?}"));
    assert_eq!(msize1, 4 * MIB, "grown by autoextend_percent = 100");
    assert_eq!(len(&meta_file), msize1, "metadata.img vs MetadataSize");
    assert!(allocated(&meta_file) < msize1, "metadata.img is not sparse");

    // The alert that crossed the level names the metadata percentage, and
    // the pool is announced ok again after the growth.
    let mut seen = Vec::new();
    let limit = deadline(Duration::from_secs(10));
    let t0 = Instant::now();
    while !seen.iter().any(|(l, _, _): &(String, f64, f64)| l == "ok") {
        let a = tokio::time::timeout(limit.saturating_sub(t0.elapsed()), next(&mut alerts))
            .await
            .unwrap_or_else(|_| panic!("no UsageAlert back to ok: {seen:?}; {trace:?}"))
            .expect("signal stream ended");
        let args = a.args().unwrap();
        seen.push((args.level.clone(), args.data_percent, args.metadata_percent));
    }
    let (level, data_pct, meta_pct) = seen[0].clone();
    assert!(
        level != "ok" && meta_pct >= 50.0 && data_pct < 50.0,
        "the first alert should be metadata crossing 50%: {seen:?}"
    );
    assert_eq!(must(pool.health().await, "Health"), "ok");
    let used = must(pool.metadata_used().await, "MetadataUsed");
    eprintln!(
        "metadata: MetadataSize {msize0} → {msize1}, MetadataUsed now {used}, metadata.img allocated {} bytes; alerts {seen:?}; {trace:?}",
        allocated(&meta_file)
    );
    // The grown pool keeps working.
    f.prepare("after", "p").await;
    thin_check_clean(&mut f);
}

/// Metadata that cannot grow (no autoextend): once less than
/// `min_free_percent` of it is free, Prepare is PoolFull naming metadata,
/// Health is full with a metadata reason, and existing layers still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kernel tier: runs in the VM (scripts/test-kernel.sh)"]
async fn metadata_full_refuses_new_layers() {
    require_kernel_tier("metadata_full_refuses_new_layers");
    let Some(f) = Fixture::new_with(
        Backend::Thin,
        &[
            ("size", toml_str("8G")),
            ("metadata_size", toml_str("2M")),
            ("monitor.min_free_percent", "60".into()),
            ("monitor.autoextend_percent", "0".into()),
        ],
    )
    .await
    else {
        return;
    };
    let meta_file = f.pool_path().join("metadata.img");
    let pool = f.main_pool().await;
    f.prepare("p-a", "").await;
    scatter(&device_of(&f, "p-a").await, 4096, 1, 1);
    f.commit("p", "p-a").await;
    let mut trace = Vec::new();
    let mut refused = None;
    for i in 0..30 {
        let used = must(pool.metadata_used().await, "MetadataUsed");
        let size = must(pool.metadata_size().await, "MetadataSize");
        trace.push(format!("round {i}: {used} of {size}"));
        assert!(
            used * 100 < size * 85,
            "metadata {used} of {size} bytes and Prepare still admitted: {trace:?}"
        );
        let key = format!("k{i}");
        match f.mgr.prepare(&key, "p", default_labels()).await {
            Ok(_) => scatter(&device_of(&f, &key).await, 4096, 16, i as u8 + 2),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.unwrap_or_else(|| panic!("Prepare never refused: {trace:?}"));
    let name = e.to_string();
    assert!(name.contains("PoolFull"), "{name}");
    let msg = err_message(&e).unwrap();
    assert!(
        msg.contains("metadata"),
        "PoolFull does not name metadata: {msg}"
    );
    assert_eq!(must(pool.health().await, "Health"), "full");
    let reason = must(pool.health_reason().await, "HealthReason");
    assert!(reason.starts_with("metadata"), "{reason}");
    assert_eq!(len(&meta_file), 2 * MIB, "metadata grew without autoextend");
    // Existing layers are still served (the scattered writes left no file
    // system to mount in them; Stat and Remove do).
    f.stat("k0").await;
    f.remove("k0").await;
    eprintln!("metadata full: refused with {msg:?}; {trace:?}");
    let _ = std::io::stderr().flush();
    f.finish();
}
