//! Crash recovery on the real kernel: the daemon SIGKILLs itself at each
//! intent point inside Prepare, Commit and Remove (`fault-injection`
//! feature, `LAYERD_TEST_FAULT`), is restarted, and must have lost no
//! committed layer, left no orphan in the pool, and answer consistently.

#[macro_use]
#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use common::*;

/// Numeric entries of a pool directory (layer dirs) and of its `w/`, `q/`.
fn pool_entries(pool: &Path) -> (BTreeSet<u64>, usize, usize) {
    let ids = fs::read_dir(pool)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let count = |d: &str| fs::read_dir(pool.join(d)).map(|r| r.count()).unwrap_or(0);
    (ids, count("w"), count("q"))
}

/// Committed base with a file, plus a second committed layer that must
/// survive everything.
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

/// Everything that must hold after any crash: committed layers intact,
/// layer dirs in the pool exactly those Walk reports, nothing quarantined,
/// no daemon mounts left, and the API still works.
async fn check_consistent(f: &Fixture, expect: &[&str]) {
    let names: BTreeSet<String> = f.walk_names(&[]).await.into_iter().collect();
    let want: BTreeSet<String> = expect.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        names,
        want,
        "layers after recovery\n{}",
        f.daemon().log_text()
    );

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

    let (ids, _, quarantined) = pool_entries(&f.pool_path());
    assert_eq!(
        ids.len(),
        names.len(),
        "pool holds layer dirs {ids:?} for layers {names:?}\n{}",
        f.daemon().log_text()
    );
    assert_eq!(quarantined, 0, "our own crash left something to quarantine");
    assert!(
        mounts_under(&f.run_dir()).is_empty(),
        "daemon mounts left: {:?}",
        mounts_under(&f.run_dir())
    );
}

/// Arms `point`, runs `op` (which must die with the daemon), restarts.
async fn crash_at<F, Fut>(f: &mut Fixture, point: &str, op: F)
where
    F: FnOnce(ManagerProxy<'static>) -> Fut,
    Fut: std::future::Future<Output = zbus::Result<()>>,
{
    f.daemon_mut().env = vec![("LAYERD_TEST_FAULT".into(), point.into())];
    f.restart().await;
    let r = op(f.mgr.clone()).await;
    assert!(
        r.is_err(),
        "{point}: the call succeeded; the fault point was not reached"
    );
    for _ in 0..100 {
        if f.daemon_mut().is_running().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        f.daemon().pid().is_none(),
        "{point}: the daemon did not die"
    );
    f.daemon_mut().env.clear();
    f.start().await;
}

async fn prepare_crash(f: &mut Fixture, point: &str) {
    setup(f).await;
    crash_at(f, point, |m| async move {
        m.prepare("victim", "base", default_labels())
            .await
            .map(|_| ())
    })
    .await;
    // Never acknowledged: rolled back, so the key is free again.
    check_consistent(f, &["base", "keep"]).await;
    f.prepare("victim", "base").await;
    check_consistent(f, &["base", "keep", "victim"]).await;
}

async fn commit_crash(f: &mut Fixture, point: &str) {
    setup(f).await;
    f.prepare("victim/a", "base").await;
    f.apply_to(
        "victim/a",
        &[create_file("/v.txt", "v", 0o644)],
        Via::Daemon,
    )
    .await;
    crash_at(f, point, |m| async move {
        m.commit("victim", "victim/a", default_labels()).await
    })
    .await;
    // The intent was durable: the commit is finished, the key is gone.
    check_consistent(f, &["base", "keep", "victim"]).await;
    let info = f.stat("victim").await;
    assert_eq!(info.kind, "committed");
    let expected = f.scratch("expect");
    apply(
        &expected,
        &[
            create_file("/base.txt", "base", 0o644),
            create_file("/v.txt", "v", 0o644),
        ],
    )
    .unwrap();
    f.check_layer("victim", &expected).await;
}

async fn remove_crash(f: &mut Fixture, point: &str) {
    setup(f).await;
    f.prepare("victim/a", "base").await;
    f.commit("victim", "victim/a").await;
    crash_at(f, point, |m| async move { m.remove("victim").await }).await;
    // The removal was durable: it is finished.
    check_consistent(f, &["base", "keep"]).await;
    assert!(f.mgr.cleanup().await.is_ok());
    assert_eq!(
        fs::read_dir(f.pool_path().join("t")).unwrap().count(),
        0,
        "trash not emptied"
    );
}

/// A lost store must not cost data: with a new, empty store the pool's
/// layer dirs are unrecorded and must be quarantined, never discarded.
async fn store_lost(f: &mut Fixture) {
    setup(f).await;
    let before = pool_entries(&f.pool_path()).0;
    f.daemon_mut().stop();
    fs::remove_file(f.daemon().config.state_dir.join("layerd.redb")).unwrap();
    f.start().await;
    assert!(f.walk_names(&[]).await.is_empty());
    let (ids, _, quarantined) = pool_entries(&f.pool_path());
    assert!(ids.is_empty(), "layer dirs left in place: {ids:?}");
    assert!(quarantined >= before.len());
    let q_names: Vec<String> = fs::read_dir(f.pool_path().join("q"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    for id in &before {
        assert!(
            q_names.iter().any(|n| n.starts_with(&format!("{id}-"))),
            "layer dir {id} not quarantined (q/ holds {q_names:?})\n{}",
            f.daemon().log_text()
        );
    }
    // Files survive in quarantine.
    let q = f.pool_path().join("q");
    let found = fs::read_dir(&q)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.path().join("keep.txt").exists());
    assert!(found, "keep.txt not found under {}", q.display());
    // The pool is bound to the new store now: a second start is clean.
    f.restart().await;
    assert!(f.daemon().log_text().lines().last().is_some());
}

macro_rules! t {
    ($backend:ident, $name:ident, $body:ident $(, $arg:expr)?) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(mut f) = Fixture::new(Backend::$backend).await else { return };
            $body(&mut f $(, $arg)?).await;
            f.finish();
        }
    };
}

macro_rules! recovery_tests {
    ($($backend:ident => $module:ident),*) => {$(
        mod $module {
            use super::*;
            t!($backend, prepare_intent, prepare_crash, "prepare-intent");
            t!($backend, prepare_backend, prepare_crash, "prepare-backend");
            t!($backend, commit_intent, commit_crash, "commit-intent");
            t!($backend, commit_backend, commit_crash, "commit-backend");
            t!($backend, remove_intent, remove_crash, "remove-intent");
            t!($backend, remove_backend, remove_crash, "remove-backend");
            t!($backend, store_lost_quarantines, store_lost);
        }
    )*};
}

recovery_tests!(OverlayXfs => overlay_xfs, VfsExt4 => vfs_ext4);
