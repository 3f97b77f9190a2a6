//! Thin-pool behaviour beyond the conformance suite, on the real dm-thin of
//! the kernel-tier VM (`#[ignore]`d on the host; scripts/test-kernel.sh runs
//! them with `--ignored`): damaged metadata, a full pool, autoextend.

#[macro_use]
#[path = "common/mod.rs"]
mod common;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The next item of a stream (zbus's streams are `futures_core::Stream`s).
async fn next<S>(s: &mut S) -> Option<S::Item>
where
    S: zbus::export::futures_core::Stream + Unpin,
{
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *s).poll_next(cx)).await
}

const MIB: u64 = 1 << 20;

fn toml(s: &str) -> String {
    toml_str(s)
}

fn thin_pool_active(f: &Fixture) -> bool {
    let name = format!("{}pool", f.dm_prefix());
    Path::new("/dev/mapper").join(&name).exists()
        || devicemapper::DM::new()
            .ok()
            .and_then(|dm| dm.list_devices().ok())
            .is_some_and(|v| v.iter().any(|(n, _, _)| n.to_string() == name))
}

/// Damaged metadata: thin_check fails, the pool stays inactive and
/// `failed` with the repair steps in HealthReason, nothing is changed, and
/// the daemon still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kernel tier: runs in the VM (scripts/test-kernel.sh)"]
async fn thin_check_failure_keeps_pool_inactive() {
    require_kernel_tier("thin_check_failure_keeps_pool_inactive");
    let Some(mut f) = Fixture::new(Backend::Thin).await else {
        return;
    };
    f.prepare("a", "").await;
    f.daemon_mut().stop();
    teardown_thin_pool(f.pool_name(), &f.pool_path());
    assert!(
        !thin_pool_active(&f),
        "the pool is still active after teardown"
    );
    let meta = f.pool_path().join("metadata.img");
    let junk = vec![0xa5u8; 4096];
    {
        let mut m = fs::OpenOptions::new().write(true).open(&meta).unwrap();
        m.write_all(&junk).unwrap();
        m.sync_all().unwrap();
    }
    f.start().await;
    let pool = f.main_pool().await;
    assert_eq!(must(pool.health().await, "Health"), "failed");
    let reason = must(pool.health_reason().await, "HealthReason");
    assert!(
        reason.contains("thin_check") && reason.contains("thin_repair"),
        "HealthReason does not say how to repair: {reason}"
    );
    assert!(
        !thin_pool_active(&f),
        "a pool that failed thin_check was activated"
    );
    let mut head = vec![0u8; 4096];
    let mut m = fs::File::open(&meta).unwrap();
    m.seek(SeekFrom::Start(0)).unwrap();
    m.read_exact(&mut head).unwrap();
    assert_eq!(head, junk, "the damaged metadata was changed");
    // Still serving: a Prepare in the failed pool is refused, not hung.
    let e = f.mgr.prepare("b", "", default_labels()).await;
    assert!(e.is_err(), "Prepare in a failed pool succeeded");
    must(f.mgr.version().await, "Version");
    f.finish();
}

/// A pool that cannot grow fills up: the writer gets an error (ENOSPC, or
/// EIO once xfs gives up) within bounded time instead of hanging, the
/// daemon still answers, Health says full, committed layers are intact and
/// thin_check is clean afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kernel tier: runs in the VM (scripts/test-kernel.sh)"]
async fn pool_full_gives_enospc_not_a_hang() {
    require_kernel_tier("pool_full_gives_enospc_not_a_hang");
    let Some(mut f) = Fixture::new_with(
        Backend::Thin,
        &[
            ("size", toml("128M")),
            ("monitor.autoextend_percent", "0".into()),
        ],
    )
    .await
    else {
        return;
    };
    f.prepare("c-a", "").await;
    let m = f.mount("c-a", Via::Daemon).await;
    write_pattern(&m.path.join("keep"), 8 * MIB, 7).unwrap();
    f.unmount(m).await;
    f.commit("c", "c-a").await;

    f.prepare("w", "c").await;
    let m = f.mount("w", Via::Daemon).await;
    let target = m.path.join("fill");
    let t0 = Instant::now();
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut file = fs::File::create(&target)?;
        let chunk = vec![0x5au8; MIB as usize];
        for _ in 0..256 {
            file.write_all(&chunk)?;
        }
        file.sync_all()
    });
    let limit = deadline(Duration::from_secs(60));
    let r = tokio::time::timeout(limit, writer)
        .await
        .unwrap_or_else(|_| panic!("the writer of a full pool hung for {limit:?}"))
        .unwrap();
    let took = t0.elapsed();
    let err = r.expect_err("256 MiB fit in a 128 MiB pool");
    let errno = err.raw_os_error();
    assert!(
        matches!(errno, Some(libc::ENOSPC) | Some(libc::EIO)),
        "the writer failed with {err}, expected ENOSPC or EIO"
    );
    eprintln!("pool full: writer got {err} after {took:?}");
    must(f.mgr.version().await, "Version (daemon answers)");
    let pool = f.main_pool().await;
    // Health follows the pool status (sampled after the next operation or
    // event; poll a moment).
    let until = Instant::now() + deadline(Duration::from_secs(10));
    loop {
        let h = must(pool.health().await, "Health");
        if h == "full" {
            break;
        }
        assert!(Instant::now() < until, "Health is {h:?} on a full pool");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let e = f.mgr.prepare("more", "c", default_labels()).await;
    assert!(
        e.as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("PoolFull")),
        "Prepare in a full pool: {e:?}"
    );
    f.unmount(m).await;
    f.remove("w").await;

    f.view("v", "c").await;
    let m = f.mount("v", Via::Daemon).await;
    let got = fs::read(m.path.join("keep")).unwrap();
    let want_path = f.scratch("want").join("keep");
    write_pattern(&want_path, 8 * MIB, 7).unwrap();
    assert!(
        got == fs::read(&want_path).unwrap(),
        "the committed layer changed"
    );
    f.unmount(m).await;

    f.daemon_mut().stop();
    teardown_thin_pool(f.pool_name(), &f.pool_path());
    let out = Command::new("thin_check")
        .arg(f.pool_path().join("metadata.img"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "thin_check after the pool filled: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Crossing the warning level raises a dm event (the low water mark); the
/// daemon emits UsageAlert, grows the loop file, and the pool is ok again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kernel tier: runs in the VM (scripts/test-kernel.sh)"]
async fn autoextend_emits_usage_alert() {
    require_kernel_tier("autoextend_emits_usage_alert");
    let Some(f) = Fixture::new_with(
        Backend::Thin,
        &[
            ("size", toml("128M")),
            ("monitor.autoextend_percent", "100".into()),
            ("monitor.autoextend_max", toml("1G")),
        ],
    )
    .await
    else {
        return;
    };
    let pool = f.main_pool().await;
    let size0 = must(pool.data_size().await, "DataSize");
    let mut alerts = pool.receive_usage_alert().await.unwrap();
    f.prepare("w", "").await;
    let m = f.mount("w", Via::Daemon).await;
    // The test's own dm event listener, armed before the writer starts: the
    // first event it sees is the pool crossing its low water mark, so the
    // time from it to the UsageAlert reaching this client is the kernel
    // event → signal latency, as a caller sees it.
    let events = layerd::sys::dmevent::DmEvents::open().expect("arming dm events");
    let kernel_event = std::thread::spawn(move || -> Option<Instant> {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(600) {
            if events.wait(Duration::from_millis(500)).ok()? {
                return Some(Instant::now());
            }
        }
        None
    });
    let target = m.path.join("fill");
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<Instant> {
        let mut file = fs::File::create(&target)?;
        let chunk = vec![0x5au8; MIB as usize];
        for _ in 0..110 {
            file.write_all(&chunk)?;
        }
        file.sync_all()?;
        Ok(Instant::now())
    });
    let mut levels = Vec::new();
    let mut first_alert = None;
    let limit = deadline(Duration::from_secs(60));
    let t0 = Instant::now();
    while !levels.iter().any(|l: &String| l == "ok") {
        let a = tokio::time::timeout(limit.saturating_sub(t0.elapsed()), next(&mut alerts))
            .await
            .unwrap_or_else(|_| panic!("no UsageAlert back to ok within {limit:?}: got {levels:?}"))
            .expect("signal stream ended");
        let args = a.args().unwrap();
        if first_alert.is_none() {
            first_alert = Some(Instant::now());
        }
        levels.push(args.level.clone());
    }
    let synced = writer
        .await
        .unwrap()
        .expect("the writer failed although the pool can grow");
    let size1 = must(pool.data_size().await, "DataSize");
    assert!(size1 > size0, "DataSize {size0} → {size1}: not extended");
    assert!(
        levels.first().is_some_and(|l| l != "ok"),
        "the first alert should name the level crossed: {levels:?}"
    );
    let file = fs::metadata(f.pool_path().join("data.img")).unwrap().len();
    assert_eq!(file, size1, "data.img size vs DataSize");
    let first = first_alert.unwrap();
    let lead = if first <= synced {
        format!("{:?} before the writer's fsync returned", synced - first)
    } else {
        format!("{:?} after the writer's fsync returned", first - synced)
    };
    let event = kernel_event
        .join()
        .unwrap()
        .expect("no dm event seen by the test while the pool crossed its low water mark");
    // Reported, not asserted (tests do not time): a timer sample can see the
    // crossing a moment before this thread wakes for the event.
    let latency = if event <= first {
        format!("{:?}", first - event)
    } else {
        format!("-{:?} (a timer sample was first)", event - first)
    };
    eprintln!(
        "autoextend: alerts {levels:?}; kernel dm event → UsageAlert at this client: {latency}; first UsageAlert {lead}; DataSize {size0} → {size1}"
    );
    f.unmount(m).await;
    f.finish();
}
