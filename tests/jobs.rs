//! Maintenance jobs over D-Bus against the real daemon and kernel (host
//! tier): Pool.Trim/Balance/Extend, Job objects and their properties and
//! `Completed` signal, LastTrim across restarts, exclusion of concurrent
//! jobs on one pool, and how long finished jobs stay.
//!
//! The pool is the harness's overlay pool on a loop-backed xfs; the loop
//! device is attached without direct I/O, so a discard reaching it punches
//! holes into the image file and the image's allocated blocks show what a
//! trim gave back to the host.
//!
//! btrfs balance (progress from the kernel, cancel mid-way, automatic
//! balance) is tested with the btrfs driver, not here.
//!
//! `job_running_properties_and_busy` needs `--features fault-injection`
//! (`LAYERD_TEST_JOB_DELAY_MS` holds a job open long enough to collide
//! with it deterministically).

#[macro_use]
#[allow(unused_macros)]
#[path = "common/mod.rs"]
mod common;

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::*;
use layerd::dbus::client::JobProxy;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{OwnedObjectPath, Value};

const ROOT: &str = "/org/layerd/Layerd1";
const JOB_IFACE: &str = "org.layerd.Layerd1.Job";
/// A job on this small xfs finishes in well under this.
const JOB_TIMEOUT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

async fn next<S>(s: &mut S) -> Option<S::Item>
where
    S: zbus::export::futures_core::Stream + Unpin,
{
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *s).poll_next(cx)).await
}

/// Every `Completed` signal of every job, subscribed before a job starts
/// so that none is missed.
async fn completed_signals(conn: &zbus::Connection) -> zbus::MessageStream {
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface(JOB_IFACE)
        .unwrap()
        .member("Completed")
        .unwrap()
        .build();
    zbus::MessageStream::for_match_rule(rule, conn, Some(256))
        .await
        .expect("match rule for Completed")
}

/// Waits for `Completed(success, message)` of the job at `path`; panics
/// if a second one arrives for it within a short grace period.
async fn wait_completed(stream: &mut zbus::MessageStream, path: &str) -> (bool, String) {
    let deadline = Instant::now() + JOB_TIMEOUT;
    let mut got = None;
    loop {
        let left = if got.is_some() {
            Duration::from_millis(1200)
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        match tokio::time::timeout(left, next(stream)).await {
            Err(_) if got.is_some() => return got.unwrap(),
            Err(_) => panic!("no Completed signal for {path} within {JOB_TIMEOUT:?}"),
            Ok(None) => panic!("signal stream ended"),
            Ok(Some(Err(e))) => panic!("signal stream: {e}"),
            Ok(Some(Ok(msg))) => {
                if msg.header().path().map(|p| p.as_str()) != Some(path) {
                    continue;
                }
                let body: (bool, String) = msg.body().deserialize().expect("Completed(bs)");
                assert!(
                    got.is_none(),
                    "{path}: Completed emitted twice: {got:?} then {body:?}"
                );
                got = Some(body);
            }
        }
    }
}

async fn job(conn: &zbus::Connection, path: &OwnedObjectPath) -> JobProxy<'static> {
    JobProxy::builder(conn)
        .path(path.clone())
        .expect("job path")
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .expect("job proxy")
}

/// Object paths under /org/layerd/Layerd1/jobs/ (from GetManagedObjects).
async fn job_paths(f: &Fixture) -> BTreeSet<String> {
    let om = zbus::fdo::ObjectManagerProxy::builder(&f.conn)
        .destination(BUS_NAME)
        .unwrap()
        .path(ROOT)
        .unwrap()
        .build()
        .await
        .unwrap();
    must(
        om.get_managed_objects().await.map_err(zbus::Error::from),
        "GetManagedObjects",
    )
    .into_iter()
    .filter(|(_, ifaces)| ifaces.keys().any(|i| i.as_str() == JOB_IFACE))
    .map(|(p, _)| p.to_string())
    .collect()
}

/// Blocks (512 B units) the loop image holds on the host.
fn image_blocks(f: &Fixture) -> u64 {
    std::fs::metadata(&f.fs().image)
        .expect("stat the image")
        .blocks()
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Trim gives the host its disk back: 200 MiB written into a layer,
/// removed and cleaned up, then trimmed; the loop image's allocated blocks
/// fall by at least 80% of that. The job's properties, `Completed`, the
/// pool's LastTrim (also after a restart), and Cancel of a finished job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_gives_space_back() {
    let Some(mut f) = Fixture::new(Backend::OverlayXfs).await else {
        return;
    };
    const WRITTEN: u64 = 200 * MIB;
    let pool = f.pool("main").await;
    assert_eq!(
        must(pool.last_trim().await, "LastTrim"),
        (0, 0, String::new()),
        "LastTrim before any trim"
    );
    assert_eq!(must(pool.unallocated().await, "Unallocated"), 0);

    let blocks_empty = image_blocks(&f);
    f.prepare("big", "").await;
    let m = f.mount("big", Via::Daemon).await;
    for i in 0..4u8 {
        write_pattern(&m.path.join(format!("f{i}")), WRITTEN / 4, i).expect("write");
    }
    f.unmount(m).await;
    f.fs().used_bytes(); // syncfs: the data reaches the image
    let blocks_written = image_blocks(&f);
    f.remove("big").await;
    let cleaned = must(f.mgr.cleanup().await, "Cleanup");
    assert!(cleaned >= WRITTEN, "Cleanup freed {cleaned} bytes");
    f.fs().used_bytes();
    let blocks_before = image_blocks(&f);

    let mut signals = completed_signals(&f.conn).await;
    let t0 = now_us();
    let path = must(pool.trim().await, "Trim");
    assert!(
        path.as_str().starts_with(&format!("{ROOT}/jobs/")),
        "job path {path}"
    );
    let j = job(&f.conn, &path).await;
    // Readable at once, whether it still runs or not.
    assert_eq!(must(j.operation().await, "Operation"), "trim");
    assert_eq!(must(j.pool().await, "Pool"), "main");
    assert!(!must(j.cancelable().await, "Cancelable"));
    let start = must(j.start_time().await, "StartTime");
    assert!(
        start >= t0 && start <= now_us(),
        "StartTime {start} not within the call (from {t0})"
    );

    let (ok, message) = wait_completed(&mut signals, path.as_str()).await;
    assert!(ok, "trim failed: {message}");
    let bytes = must(j.bytes().await, "Bytes");
    assert_eq!(must(j.outcome().await, "Outcome"), "ok");
    assert!(must(j.progress_valid().await, "ProgressValid"));
    assert_eq!(must(j.progress().await, "Progress"), 1.0);
    let end = must(j.end_time().await, "EndTime");
    assert!(end >= start, "EndTime {end} < StartTime {start}");
    assert!(
        message.contains(&bytes.to_string()),
        "Completed message {message:?} should name the {bytes} bytes"
    );
    let last = must(pool.last_trim().await, "LastTrim");
    assert_eq!(last.1, bytes, "LastTrim bytes = the job's Bytes");
    assert_eq!(last.2, "ok");
    assert!(
        last.0 >= start && last.0 <= now_us(),
        "LastTrim time {}",
        last.0
    );

    let blocks_after = image_blocks(&f);
    let freed = blocks_before.saturating_sub(blocks_after) * 512;
    eprintln!(
        "trim: wrote {} MiB; image blocks: empty pool {} MiB, after writing {} MiB, after remove+cleanup {} MiB, after trim {} MiB; freed on the host {} MiB ({:.0}% of written); FITRIM reported {} MiB",
        WRITTEN / MIB,
        blocks_empty * 512 / MIB,
        blocks_written * 512 / MIB,
        blocks_before * 512 / MIB,
        blocks_after * 512 / MIB,
        freed / MIB,
        freed as f64 * 100.0 / WRITTEN as f64,
        bytes / MIB
    );
    assert!(
        freed * 10 >= WRITTEN * 8,
        "the image gave back {freed} bytes, less than 80% of the {WRITTEN} written"
    );
    assert!(bytes >= freed * 8 / 10, "FITRIM reported {bytes} bytes");

    // Cancel of a finished job.
    assert_dbus_err!(
        j.cancel().await,
        "FailedPrecondition",
        "Cancel of a finished trim"
    );

    // LastTrim survives a restart.
    f.restart().await;
    let pool = f.pool("main").await;
    assert_eq!(
        must(pool.last_trim().await, "LastTrim after restart"),
        last,
        "LastTrim after restart"
    );
    assert_eq!(
        must(pool.last_balance().await, "LastBalance"),
        (0, 0, String::new())
    );
    f.finish();
}

/// Balance is btrfs-only and Extend does not apply to directory pools:
/// both refused by the method call itself, no job object made; bad
/// balance options are InvalidArgument naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balance_and_extend_refused_on_directory_pools() {
    let Some(f) = Fixture::new(Backend::OverlayXfs).await else {
        return;
    };
    let pool = f.pool("main").await;
    let e = assert_dbus_err!(pool.balance(HashMap::new()).await, "NotSupported");
    let msg = err_message(&e).unwrap();
    assert!(msg.contains("btrfs") && msg.contains("overlay"), "{msg}");

    // Well-formed options reach the engine (so: NotSupported) …
    let mut opts: HashMap<&str, Value<'_>> = HashMap::new();
    opts.insert("dusage", Value::from(vec![0u8, 5, 10]));
    opts.insert("musage", Value::from(5u32));
    assert_dbus_err!(pool.balance(opts).await, "NotSupported");
    // … malformed ones do not.
    let mut opts: HashMap<&str, Value<'_>> = HashMap::new();
    opts.insert("dusage", Value::from(5u32));
    opts.insert("limit", Value::from(3u32));
    let e = assert_dbus_err!(pool.balance(opts).await, "InvalidArgument");
    assert!(err_message(&e).unwrap().contains("\"limit\""), "{e}");
    let mut opts: HashMap<&str, Value<'_>> = HashMap::new();
    opts.insert("dusage", Value::from("lots"));
    let e = assert_dbus_err!(pool.balance(opts).await, "InvalidArgument");
    assert!(err_message(&e).unwrap().contains("\"dusage\""), "{e}");
    let mut opts: HashMap<&str, Value<'_>> = HashMap::new();
    opts.insert("musage", Value::from(vec![150u32]));
    assert_dbus_err!(pool.balance(opts).await, "InvalidArgument");

    let e = assert_dbus_err!(pool.extend(1 << 30).await, "NotSupported");
    let msg = err_message(&e).unwrap();
    assert!(msg.contains("directory pool"), "{msg}");
    assert_dbus_err!(pool.extend(0).await, "InvalidArgument");

    assert!(
        job_paths(&f).await.is_empty(),
        "a refused job left an object"
    );
    assert_eq!(
        must(pool.last_balance().await, "LastBalance"),
        (0, 0, String::new())
    );
    f.finish();
}

/// With every job held open for a while (test hook): the running job's
/// properties, a second Trim and a Balance on the same pool refused (Busy
/// naming the running job / NotSupported), Cancel of a trim NotSupported;
/// after completion, a new trim is admitted.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_running_properties_and_busy() {
    let Some(mut f) = Fixture::new(Backend::OverlayXfs).await else {
        return;
    };
    f.daemon_mut()
        .env
        .push(("LAYERD_TEST_JOB_DELAY_MS".into(), "3000".into()));
    f.restart().await;
    let pool = f.pool("main").await;
    let mut signals = completed_signals(&f.conn).await;
    let t0 = now_us();
    let path = must(pool.trim().await, "Trim");
    let j = job(&f.conn, &path).await;
    assert_eq!(must(j.operation().await, "Operation"), "trim");
    assert_eq!(must(j.pool().await, "Pool"), "main");
    assert_eq!(must(j.outcome().await, "Outcome"), "", "still running");
    assert_eq!(must(j.end_time().await, "EndTime"), 0);
    assert!(!must(j.progress_valid().await, "ProgressValid"));
    assert_eq!(must(j.bytes().await, "Bytes"), 0);
    assert!(must(j.start_time().await, "StartTime") >= t0);
    assert!(job_paths(&f).await.contains(path.as_str()));

    let changes_rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("org.freedesktop.DBus.Properties")
        .unwrap()
        .member("PropertiesChanged")
        .unwrap()
        .path(path.as_str())
        .unwrap()
        .build();
    let mut changes = zbus::MessageStream::for_match_rule(changes_rule, &f.conn, Some(64))
        .await
        .expect("match rule");
    let id = path.as_str().rsplit('/').next().unwrap().to_string();
    let e = assert_dbus_err!(pool.trim().await, "Busy", "a second trim");
    let msg = err_message(&e).unwrap();
    assert!(
        msg.contains(&format!("trim job {id}")) && msg.contains("never run at once"),
        "Busy should name the running job: {msg}"
    );
    assert_dbus_err!(pool.balance(HashMap::new()).await, "NotSupported");
    let e = assert_dbus_err!(j.cancel().await, "NotSupported", "Cancel of a trim");
    assert!(err_message(&e).unwrap().contains("cannot be interrupted"));
    assert_eq!(job_paths(&f).await.len(), 1, "refused calls made jobs");

    let (ok, message) = wait_completed(&mut signals, path.as_str()).await;
    assert!(ok, "{message}");
    assert_eq!(must(j.outcome().await, "Outcome"), "ok");
    // The final values were announced before Completed.
    let mut announced: HashMap<String, zbus::zvariant::OwnedValue> = HashMap::new();
    while let Ok(Some(Ok(msg))) =
        tokio::time::timeout(Duration::from_millis(200), next(&mut changes)).await
    {
        let (iface, changed, _): (
            String,
            HashMap<String, zbus::zvariant::OwnedValue>,
            Vec<String>,
        ) = msg.body().deserialize().expect("PropertiesChanged body");
        assert_eq!(iface, JOB_IFACE);
        announced.extend(changed);
    }
    let outcome: String = announced
        .get("Outcome")
        .and_then(|v| v.try_clone().ok())
        .and_then(|v| String::try_from(v).ok())
        .unwrap_or_else(|| panic!("no Outcome in PropertiesChanged: {announced:?}"));
    assert_eq!(outcome, "ok");
    for p in ["Bytes", "EndTime", "Progress", "ProgressValid"] {
        assert!(
            announced.contains_key(p),
            "{p} not announced: {announced:?}"
        );
    }
    // Logged with its fields, start and end.
    let log = f.daemon().log_text();
    for line in log.lines().filter(|l| l.contains("job ")) {
        eprintln!("log: {line}");
    }
    for needle in [
        "job started",
        "job finished",
        "operation=\"trim\"",
        &format!("job_id={id}"),
    ] {
        assert!(log.contains(needle), "the log lacks {needle:?}:\n{log}");
    }
    // Free again.
    let again = must(pool.trim().await, "Trim after the first completed");
    assert_ne!(again, path);
    let (ok, message) = wait_completed(&mut signals, again.as_str()).await;
    assert!(ok, "{message}");
    f.finish();
}

/// Finished jobs stay readable until ten newer ones have finished; then
/// their objects go away (and running or recent ones stay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_forgotten_after_ten_newer() {
    let Some(f) = Fixture::new(Backend::OverlayXfs).await else {
        return;
    };
    let pool = f.pool("main").await;
    let mut signals = completed_signals(&f.conn).await;
    let mut paths = Vec::new();
    for _ in 0..12 {
        let p = must(pool.trim().await, "Trim");
        let (ok, message) = wait_completed(&mut signals, p.as_str()).await;
        assert!(ok, "{message}");
        paths.push(p.to_string());
    }
    // Removal follows the engine's event; give it a moment.
    let want: BTreeSet<String> = paths[2..].iter().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let have = job_paths(&f).await;
        if have == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "job objects {have:?}, expected the ten newest {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let old = job(
        &f.conn,
        &OwnedObjectPath::try_from(paths[0].clone()).unwrap(),
    )
    .await;
    assert!(
        old.operation().await.is_err(),
        "a forgotten job still answers"
    );
    f.finish();
}

/// Without a systemd manager (the host tier: systemd is not PID 1 here),
/// every pool with maintenance configured says it is unscheduled, and the
/// timers' client `layerd job trim <pool>` still runs a trim on demand,
/// waits for it and exits 0; a pool that does not exist makes it exit 1
/// naming the pool, an unknown job kind 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unscheduled_without_systemd_and_the_job_client() {
    if std::path::Path::new("/run/systemd/system").exists() {
        eprintln!("SKIP unscheduled_without_systemd_and_the_job_client: systemd is PID 1 here (the systemd tier covers it)");
        return;
    }
    let Some(f) = Fixture::new(Backend::OverlayXfs).await else {
        return;
    };
    let pool = f.pool("main").await;
    let s = must(pool.maintenance_schedule().await, "MaintenanceSchedule");
    assert!(
        s.starts_with("unscheduled: no systemd manager reachable"),
        "{s}"
    );
    let job = |args: &[&str]| {
        std::process::Command::new(Daemon::binary())
            .arg("job")
            .args(args)
            .args(["--bus-address", f.bus_address()])
            .output()
            .expect("run layerd job")
    };
    let out = job(&["trim", "main"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("trim of pool main done"), "{text}");
    let (time, _, outcome) = must(pool.last_trim().await, "LastTrim");
    assert!(time > 0 && outcome == "ok", "{time} {outcome}");

    let out = job(&["trim", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope"), "{err}");
    let out = job(&["scrub", "main"]);
    assert_eq!(out.status.code(), Some(2));
    f.finish();
}

/// The timers' client runs a balance too (btrfs pool, default filters),
/// and the pool records it as LastBalance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_client_runs_a_balance_on_btrfs() {
    let Some(f) = Fixture::new(Backend::Btrfs).await else {
        return;
    };
    let pool = f.pool("main").await;
    let out = std::process::Command::new(Daemon::binary())
        .args(["job", "balance", "main", "--bus-address", f.bus_address()])
        .output()
        .expect("run layerd job");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("balance of pool main done"), "{text}");
    let (time, _, outcome) = must(pool.last_balance().await, "LastBalance");
    assert!(time > 0 && outcome == "ok", "{time} {outcome}");
    f.finish();
}
