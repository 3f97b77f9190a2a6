//! layerd's D-Bus API at its edges, against the real daemon (overlay pool on
//! a loop-backed xfs, from `tests/common`): every error kind with bad input
//! and wrong states, each checked for its exact error name, a message that
//! names the offending thing, and that nothing changed; pool objects and
//! their signals; Mount reference counts; restarts; many concurrent
//! clients; bad config files; and the introspection XML in `dbus/`.
//!
//! Host tier: needs root (loop devices, mount). `LAYERD_STRESS_SECS`
//! (default 30) sets how long `concurrent_clients` runs;
//! `LAYERD_BLESS=1 cargo test --test api introspection` rewrites
//! `dbus/org.layerd.Layerd1.xml` from the running daemon.

#[macro_use]
#[allow(unused_macros)]
#[path = "common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::fs;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedValue;

const ROOT: &str = "/org/layerd/Layerd1";
const POOL_IFACE: &str = "org.layerd.Layerd1.Pool";
const MANAGER_IFACE: &str = "org.layerd.Layerd1.Manager";
const JOB_IFACE: &str = "org.layerd.Layerd1.Job";
const POOL_LABEL: &str = "layerd.io/pool";

// ---------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------

async fn fixture() -> Option<Fixture> {
    Fixture::new(Backend::OverlayXfs).await
}

/// What a rejected call must leave exactly as it was: every Walk row
/// (labels and times included) and the entries of each pool directory (its
/// root, `w/`, `t/` and `q/`) and of the daemon's mount directory.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    walk: Vec<(Info, String)>,
    entries: BTreeSet<String>,
}

fn dir_entries(dir: &Path, prefix: &str, out: &mut BTreeSet<String>) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            out.insert(format!("{prefix}{}", e.file_name().to_string_lossy()));
        }
    }
}

async fn snapshot(f: &Fixture, roots: &[PathBuf]) -> Snapshot {
    let mut walk = f.walk(&[]).await;
    walk.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let mut entries = BTreeSet::new();
    for r in roots {
        let p = format!("{}/", r.display());
        dir_entries(r, &p, &mut entries);
        for sub in ["w", "t", "q"] {
            dir_entries(&r.join(sub), &format!("{p}{sub}/"), &mut entries);
        }
    }
    let m = f.run_dir().join("m");
    dir_entries(&m, &format!("{}/", m.display()), &mut entries);
    Snapshot { walk, entries }
}

/// Runs `call` (not yet started) and checks that it fails with `kind`, its
/// message names every needle, and neither Walk nor the directories under
/// `roots` changed.
async fn rejected<T: Debug>(
    f: &Fixture,
    roots: &[PathBuf],
    what: &str,
    call: impl Future<Output = zbus::Result<T>>,
    kind: &str,
    needles: &[&str],
) -> String {
    let before = snapshot(f, roots).await;
    let res = call.await;
    let msg = check_err(what, res, kind, needles);
    let after = snapshot(f, roots).await;
    if before != after {
        let gone: Vec<_> = before.entries.difference(&after.entries).collect();
        let new: Vec<_> = after.entries.difference(&before.entries).collect();
        panic!(
            "{what} failed with {kind} as expected, but it changed state:\n  Walk before: {:?}\n  Walk after:  {:?}\n  entries gone: {gone:?}\n  entries new: {new:?}",
            before.walk, after.walk
        );
    }
    msg
}

/// The next item of a stream (zbus's streams are `futures_core::Stream`s).
async fn next<S>(s: &mut S) -> Option<S::Item>
where
    S: zbus::export::futures_core::Stream + Unpin,
{
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *s).poll_next(cx)).await
}

/// A second loop-backed xfs (own directory under /tmp) for the extra pools
/// `other` (overlay) and `full` (overlay, `min_free_percent = 99`).
struct Extra {
    fs: Fs,
    _dir: tempfile::TempDir,
}

impl Extra {
    fn other(&self) -> PathBuf {
        self.fs.mountpoint.join("other")
    }
    fn full(&self) -> PathBuf {
        self.fs.mountpoint.join("full")
    }
}

/// A fixture whose daemon serves three pools: `main` (the harness's),
/// `other` and `full`. Fields drop in order: the daemon stops before the
/// extra file system goes.
struct Multi {
    f: Fixture,
    extra: Extra,
}

impl Multi {
    async fn new() -> Option<Multi> {
        if let Some(why) = Backend::OverlayXfs.unavailable() {
            if std::env::var_os("CI").is_some() {
                panic!("cannot run in CI: {why}");
            }
            eprintln!("SKIP: {why}");
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("ldx.")
            .rand_bytes(6)
            .tempdir_in("/tmp")
            .expect("extra dir");
        let fs = Fs::new(
            FsKind::Xfs,
            &dir.path().join("img"),
            &dir.path().join("x"),
            IMAGE_SIZE,
        )
        .unwrap_or_else(|e| panic!("extra xfs: {e}"));
        let extra = Extra { fs, _dir: dir };
        let mut f = fixture().await?;
        {
            let d = f.daemon_mut();
            d.config.pools.push(PoolConfig {
                name: "other".into(),
                driver: "overlay".into(),
                path: extra.other(),
                extra: vec![],
            });
            // `[pool.monitor] min_free_percent = 99` as a dotted key.
            d.config.pools.push(PoolConfig {
                name: "full".into(),
                driver: "overlay".into(),
                path: extra.full(),
                extra: vec![("monitor.min_free_percent".into(), "99".into())],
            });
            fs::write(&d.config_path, d.config.to_toml()).expect("rewrite layerd.toml");
        }
        f.restart().await;
        Some(Multi { f, extra })
    }

    fn roots(&self) -> Vec<PathBuf> {
        vec![self.f.pool_path(), self.extra.other(), self.extra.full()]
    }

    fn finish(self) {
        let Multi { f, extra } = self;
        f.finish();
        drop(extra);
    }
}

// ---------------------------------------------------------------------------
// InvalidArgument: limits
// ---------------------------------------------------------------------------

/// Keys, parents, names and label pairs are capped at 4096 bytes (bytes,
/// not characters); empty keys are refused; the limit itself works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_on_keys_names_and_labels() {
    let Some(f) = fixture().await else { return };
    let roots = [f.pool_path()];
    f.prepare("base-a", "").await;
    f.commit("base", "base-a").await;
    f.prepare("act", "base").await;
    let m = &f.mgr;

    // Keys.
    let k4097 = "k".repeat(4097);
    rejected(
        &f,
        &roots,
        "Prepare with a 4097-byte key",
        m.prepare(&k4097, "", default_labels()),
        "InvalidArgument",
        &["key", "4097", "4096"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "View with a 4097-byte key",
        m.view(&k4097, "base", default_labels()),
        "InvalidArgument",
        &["key", "4097"],
    )
    .await;
    // 2048 two-byte characters plus one byte: 2049 characters, 4097 bytes.
    let wide = format!("{}x", "é".repeat(2048));
    rejected(
        &f,
        &roots,
        "Prepare with a 4097-byte key of 2049 characters",
        m.prepare(&wide, "", default_labels()),
        "InvalidArgument",
        &["key", "4097"],
    )
    .await;
    for (what, res) in [
        ("Stat", m.stat(&k4097).await.map(|_| ())),
        ("Usage", m.usage(&k4097).await.map(|_| ())),
        ("Mounts", m.mounts(&k4097).await.map(|_| ())),
    ] {
        check_err(
            &format!("{what} of a 4097-byte key"),
            res,
            "InvalidArgument",
            &["4097"],
        );
    }
    rejected(
        &f,
        &roots,
        "Remove of a 4097-byte key",
        m.remove(&k4097),
        "InvalidArgument",
        &["key", "4097"],
    )
    .await;
    let k4096 = "k".repeat(4096);
    f.prepare(&k4096, "base").await;
    assert_eq!(f.stat(&k4096).await.name, k4096);
    let wide4096 = "é".repeat(2048);
    f.view(&wide4096, "base").await;
    assert_eq!(f.stat(&wide4096).await.kind, "view");

    // Parents.
    let p4097 = "p".repeat(4097);
    rejected(
        &f,
        &roots,
        "Prepare on a 4097-byte parent",
        m.prepare("child", &p4097, default_labels()),
        "InvalidArgument",
        &["parent", "4097"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "View of a 4097-byte parent",
        m.view("child", &p4097, default_labels()),
        "InvalidArgument",
        &["parent", "4097"],
    )
    .await;

    // Label pairs: key + value.
    let lk = "test.layerd.io/big";
    let fits = "v".repeat(4096 - lk.len());
    let over = "v".repeat(4097 - lk.len());
    rejected(
        &f,
        &roots,
        "Prepare with a 4097-byte label pair",
        m.prepare("lab", "", labels_with(&[(lk, &over)])),
        "InvalidArgument",
        &[lk, "4097", "4096"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "View with a 4097-byte label pair",
        m.view("lab", "base", labels_with(&[(lk, &over)])),
        "InvalidArgument",
        &[lk, "4097"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "Update with a 4097-byte label pair",
        m.update("act", labels_with(&[(lk, &over)]), vec![]),
        "InvalidArgument",
        &[lk, "4097"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "Update of labels.K with a 4097-byte pair",
        m.update(
            "act",
            labels_with(&[(lk, &over)]),
            vec![format!("labels.{lk}")],
        ),
        "InvalidArgument",
        &[lk, "4097"],
    )
    .await;
    let long_key = "K".repeat(4097);
    rejected(
        &f,
        &roots,
        "Prepare with a 4097-byte label key and an empty value",
        m.prepare("lab", "", labels(&[(&long_key, "")])),
        "InvalidArgument",
        &["KKKK", "4097"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "Prepare with an empty label key",
        m.prepare("lab", "", labels(&[("", "v")])),
        "InvalidArgument",
        &["label", "empty"],
    )
    .await;
    f.prepare_with("lab", "", labels_with(&[(lk, &fits)])).await;
    assert_eq!(
        f.stat("lab").await.labels.get(lk),
        Some(&fits),
        "a 4096-byte label pair"
    );
    let u = must(
        m.update("act", labels_with(&[(lk, &fits)]), vec![]).await,
        "Update with a 4096-byte pair",
    );
    assert_eq!(u.3.get(lk), Some(&fits));

    // Empty keys, names and parents given as keys.
    rejected(
        &f,
        &roots,
        "Prepare with an empty key",
        m.prepare("", "", default_labels()),
        "InvalidArgument",
        &["key", "empty"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "View with an empty key",
        m.view("", "base", default_labels()),
        "InvalidArgument",
        &["key", "empty"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "Commit to an empty name",
        m.commit("", "act", default_labels()),
        "InvalidArgument",
        &["name", "empty"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "Commit of an empty key",
        m.commit("n", "", default_labels()),
        "InvalidArgument",
        &["key", "empty"],
    )
    .await;
    check_err(
        "Stat of an empty key",
        m.stat("").await,
        "InvalidArgument",
        &["key", "empty"],
    );
    rejected(
        &f,
        &roots,
        "Remove of an empty key",
        m.remove(""),
        "InvalidArgument",
        &["key", "empty"],
    )
    .await;

    // Commit names.
    let n4097 = "n".repeat(4097);
    rejected(
        &f,
        &roots,
        "Commit to a 4097-byte name",
        m.commit(&n4097, "act", default_labels()),
        "InvalidArgument",
        &["name", "4097", "4096"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "Commit with a 4097-byte label pair",
        m.commit("c", "act", labels_with(&[(lk, &over)])),
        "InvalidArgument",
        &[lk, "4097"],
    )
    .await;
    assert_eq!(
        f.stat("act").await.kind,
        "active",
        "the active key survives rejected Commits"
    );
    let n4096 = "n".repeat(4096);
    f.commit(&n4096, "act").await;
    assert_eq!(f.stat(&n4096).await.kind, "committed");
    f.finish();
}

// ---------------------------------------------------------------------------
// NotFound / FailedPrecondition / AlreadyExists / Busy
// ---------------------------------------------------------------------------

/// A parentless layer asking for an unconfigured pool: NotFound naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_pool_is_not_found() {
    let Some(f) = fixture().await else { return };
    let roots = [f.pool_path()];
    let m = &f.mgr;
    rejected(
        &f,
        &roots,
        "Prepare with layerd.io/pool=nope",
        m.prepare("x", "", labels_with(&[(POOL_LABEL, "nope")])),
        "NotFound",
        &["nope"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "View with layerd.io/pool=nope",
        m.view("x", "", labels_with(&[(POOL_LABEL, "nope")])),
        "NotFound",
        &["nope"],
    )
    .await;
    // The default pool by name works.
    f.prepare_with("y", "", labels_with(&[(POOL_LABEL, "main")]))
        .await;
    assert_eq!(f.walk(&["name==y"]).await[0].1, "main");
    f.finish();
}

/// Parents must exist and be committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parent_must_be_committed() {
    let Some(f) = fixture().await else { return };
    let roots = [f.pool_path()];
    let m = &f.mgr;
    f.prepare("base-a", "").await;
    f.commit("base", "base-a").await;
    f.prepare("act", "base").await;
    f.view("v", "base").await;

    rejected(
        &f,
        &roots,
        "Prepare on an active parent",
        m.prepare("c", "act", default_labels()),
        "FailedPrecondition",
        &["\"act\"", "active"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "View of an active parent",
        m.view("c", "act", default_labels()),
        "FailedPrecondition",
        &["\"act\"", "active"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "Prepare on a view",
        m.prepare("c", "v", default_labels()),
        "FailedPrecondition",
        &["\"v\"", "view"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "View of a view",
        m.view("c", "v", default_labels()),
        "FailedPrecondition",
        &["\"v\"", "view"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "Prepare on a missing parent",
        m.prepare("c", "no-such-parent", default_labels()),
        "NotFound",
        &["no-such-parent"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "View of a missing parent",
        m.view("c", "no-such-parent", default_labels()),
        "NotFound",
        &["no-such-parent"],
    )
    .await;
    // A key that exists already, of each kind.
    for k in ["base", "act", "v"] {
        rejected(
            &f,
            &roots,
            &format!("Prepare of existing key {k:?}"),
            m.prepare(k, "", default_labels()),
            "AlreadyExists",
            &[k],
        )
        .await;
    }
    f.finish();
}

/// Only active layers commit; names are unique; a failed Commit keeps the
/// active key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_errors() {
    let Some(f) = fixture().await else { return };
    let roots = [f.pool_path()];
    let m = &f.mgr;
    f.prepare("base-a", "").await;
    f.commit("base", "base-a").await;
    f.prepare("act", "base").await;
    f.view("v", "base").await;

    rejected(
        &f,
        &roots,
        "Commit of a view",
        m.commit("c", "v", default_labels()),
        "FailedPrecondition",
        &["\"v\"", "view"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "Commit of a committed layer",
        m.commit("c", "base", default_labels()),
        "FailedPrecondition",
        &["\"base\"", "committed"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "Commit to an existing name",
        m.commit("base", "act", default_labels()),
        "AlreadyExists",
        &["\"base\""],
    )
    .await;
    rejected(
        &f,
        &roots,
        "Commit to the name of a view",
        m.commit("v", "act", default_labels()),
        "AlreadyExists",
        &["\"v\""],
    )
    .await;
    rejected(
        &f,
        &roots,
        "Commit of a missing key",
        m.commit("c", "no-such-key", default_labels()),
        "NotFound",
        &["no-such-key"],
    )
    .await;
    let st = f.stat("act").await;
    assert_eq!(
        (st.kind.as_str(), st.parent.as_str()),
        ("active", "base"),
        "the active key after failed Commits"
    );

    // Busy while the daemon holds a Mount() reference.
    let p = must(m.mount("act").await, "Mount(act)");
    rejected(
        &f,
        &roots,
        "Commit of a Mount()ed key",
        m.commit("c", "act", default_labels()),
        "Busy",
        &["\"act\""],
    )
    .await;
    must(m.unmount("act").await, "Unmount(act)");
    assert!(!is_mount_point(Path::new(&p)));
    f.commit("c", "act").await;
    assert_eq!(f.stat("c").await.kind, "committed");
    check_err(
        "Stat of the committed key's old name",
        m.stat("act").await,
        "NotFound",
        &["\"act\""],
    );
    f.finish();
}

/// Remove refuses layers with children, missing keys, and Mount()ed keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_errors() {
    let Some(f) = fixture().await else { return };
    let roots = [f.pool_path()];
    let m = &f.mgr;
    f.prepare("base-a", "").await;
    f.commit("base", "base-a").await;
    f.prepare("act", "base").await;
    f.view("v", "base").await;

    rejected(
        &f,
        &roots,
        "Remove of a layer with children",
        m.remove("base"),
        "FailedPrecondition",
        &["\"base\"", "2 child"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "Remove of a missing key",
        m.remove("no-such-key"),
        "NotFound",
        &["no-such-key"],
    )
    .await;
    for key in ["act", "v"] {
        let p = must(m.mount(key).await, format_args!("Mount({key})"));
        assert!(
            is_mount_point(Path::new(&p)),
            "Mount({key}) returned {p}, not a mount point"
        );
        rejected(
            &f,
            &roots,
            &format!("Remove of Mount()ed {key:?}"),
            m.remove(key),
            "Busy",
            &[&format!("\"{key}\""), "Unmount"],
        )
        .await;
        assert!(
            is_mount_point(Path::new(&p)),
            "a rejected Remove unmounted {p}"
        );
        must(m.unmount(key).await, format_args!("Unmount({key})"));
        assert!(!is_mount_point(Path::new(&p)));
        f.remove(key).await;
    }
    f.remove("base").await;
    assert!(f.walk(&[]).await.is_empty());
    f.finish();
}

/// Mounts/Mount are for active layers and views; Unmount needs a Mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_errors() {
    let Some(f) = fixture().await else { return };
    let roots = [f.pool_path()];
    let m = &f.mgr;
    f.prepare("base-a", "").await;
    f.commit("base", "base-a").await;
    f.prepare("act", "base").await;

    rejected(
        &f,
        &roots,
        "Mounts of a committed layer",
        m.mounts("base"),
        "FailedPrecondition",
        &["\"base\"", "committed"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "Mount of a committed layer",
        m.mount("base"),
        "FailedPrecondition",
        &["\"base\"", "committed"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "Unmount of a never-mounted key",
        m.unmount("act"),
        "FailedPrecondition",
        &["\"act\"", "not mounted"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "Unmount of a committed layer",
        m.unmount("base"),
        "FailedPrecondition",
        &["\"base\""],
    )
    .await;
    rejected(
        &f,
        &roots,
        "Mounts of a missing key",
        m.mounts("no-such-key"),
        "NotFound",
        &["no-such-key"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "Mount of a missing key",
        m.mount("no-such-key"),
        "NotFound",
        &["no-such-key"],
    )
    .await;
    rejected(
        &f,
        &roots,
        "Unmount of a missing key",
        m.unmount("no-such-key"),
        "NotFound",
        &["no-such-key"],
    )
    .await;
    assert!(
        mounts_under(&f.run_dir()).is_empty(),
        "mounts left: {:?}",
        mounts_under(&f.run_dir())
    );
    f.finish();
}

/// Update changes labels only; other field paths and missing keys fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_errors() {
    let Some(f) = fixture().await else { return };
    let roots = [f.pool_path()];
    let m = &f.mgr;
    f.prepare("act", "").await;
    for path in ["name", "parent", "kind", "created", "labels."] {
        rejected(
            &f,
            &roots,
            &format!("Update with field path {path:?}"),
            m.update("act", labels(&[("a", "b")]), vec![path.to_string()]),
            "InvalidArgument",
            &[&format!("\"{path}\"")],
        )
        .await;
    }
    // A bad path among good ones changes nothing either.
    rejected(
        &f,
        &roots,
        "Update with labels.a and name",
        m.update(
            "act",
            labels(&[("a", "b")]),
            vec!["labels.a".into(), "name".into()],
        ),
        "InvalidArgument",
        &["\"name\""],
    )
    .await;
    rejected(
        &f,
        &roots,
        "Update of a missing key",
        m.update("no-such-key", labels(&[("a", "b")]), vec![]),
        "NotFound",
        &["no-such-key"],
    )
    .await;
    let u = must(
        m.update("act", labels(&[("a", "b")]), vec!["labels.a".into()])
            .await,
        "Update labels.a",
    );
    assert_eq!(u.3.get("a").map(String::as_str), Some("b"));
    f.finish();
}

/// A malformed Walk filter is InvalidArgument naming the filter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walk_malformed_filter() {
    let Some(f) = fixture().await else { return };
    let roots = [f.pool_path()];
    f.prepare("act", "").await;
    rejected(
        &f,
        &roots,
        "Walk([\"name==\"])",
        f.mgr.walk(vec!["name==".into()]),
        "InvalidArgument",
        &["name=="],
    )
    .await;
    rejected(
        &f,
        &roots,
        "Walk([\"kind==active\", \"name==\"])",
        f.mgr.walk(vec!["kind==active".into(), "name==".into()]),
        "InvalidArgument",
        &["name=="],
    )
    .await;
    assert_eq!(f.walk_names(&["name==act"]).await, vec!["act".to_string()]);
    f.finish();
}

// ---------------------------------------------------------------------------
// Pools
// ---------------------------------------------------------------------------

/// Children live in their parent's pool: a pool label that says otherwise
/// is InvalidArgument naming both pools.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_in_another_pool_is_invalid() {
    let Some(w) = Multi::new().await else { return };
    let f = &w.f;
    let roots = w.roots();
    let m = &f.mgr;
    f.prepare("base-a", "").await;
    f.commit("base", "base-a").await;
    rejected(
        f,
        &roots,
        "Prepare on a main-pool parent with layerd.io/pool=other",
        m.prepare("c", "base", labels_with(&[(POOL_LABEL, "other")])),
        "InvalidArgument",
        &["\"other\"", "\"main\""],
    )
    .await;
    rejected(
        f,
        &roots,
        "View of a main-pool parent with layerd.io/pool=other",
        m.view("c", "base", labels_with(&[(POOL_LABEL, "other")])),
        "InvalidArgument",
        &["\"other\"", "\"main\""],
    )
    .await;

    // In the other pool: parentless by label; children follow the parent.
    f.prepare_with("o-a", "", labels_with(&[(POOL_LABEL, "other")]))
        .await;
    f.commit("o", "o-a").await;
    f.prepare("o-child", "o").await;
    f.prepare_with("o-child2", "o", labels_with(&[(POOL_LABEL, "other")]))
        .await;
    rejected(
        f,
        &roots,
        "Prepare on an other-pool parent with layerd.io/pool=main",
        m.prepare("c", "o", labels_with(&[(POOL_LABEL, "main")])),
        "InvalidArgument",
        &["\"main\"", "\"other\""],
    )
    .await;
    let pools: BTreeMap<String, String> = f
        .walk(&[])
        .await
        .into_iter()
        .map(|(i, p)| (i.name, p))
        .collect();
    let want: BTreeMap<String, String> = [
        ("base", "main"),
        ("o", "other"),
        ("o-child", "other"),
        ("o-child2", "other"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(pools, want, "Walk's pool column");
    let n = fs::read_dir(w.extra.other())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u64>().is_ok())
        .count();
    assert_eq!(n, 3, "layer directories in the other pool");
    w.finish();
}

/// A pool below its minimum free space refuses new layers with PoolFull
/// naming the pool and the numbers, and says Health "full".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_full() {
    let Some(w) = Multi::new().await else { return };
    let f = &w.f;
    let roots = w.roots();
    let m = &f.mgr;
    let full = f.pool("full").await;
    assert_eq!(must(full.health().await, "full.Health"), "full");
    let size = must(full.data_size().await, "full.DataSize");
    let used = must(full.data_used().await, "full.DataUsed");
    assert!(
        size > 0 && used > size / 100,
        "full pool: DataSize {size}, DataUsed {used}: more than 99% free?"
    );
    assert_eq!(
        must(f.pool("main").await.health().await, "main.Health"),
        "ok"
    );

    let msg = rejected(
        f,
        &roots,
        "Prepare in the full pool",
        m.prepare("x", "", labels_with(&[(POOL_LABEL, "full")])),
        "PoolFull",
        &["\"full\"", "99%"],
    )
    .await;
    // The free percentage it found, e.g. "has 94.1% free".
    let free: Vec<f64> = msg
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|s| s.parse().ok())
        .filter(|v: &f64| *v > 0.0 && *v < 99.0)
        .collect();
    assert!(
        !free.is_empty(),
        "PoolFull does not say how much is free: {msg:?}"
    );
    rejected(
        f,
        &roots,
        "View in the full pool",
        m.view("x", "", labels_with(&[(POOL_LABEL, "full")])),
        "PoolFull",
        &["\"full\"", "99"],
    )
    .await;
    // The other pools still work.
    f.prepare("fine", "").await;
    f.prepare_with("fine2", "", labels_with(&[(POOL_LABEL, "other")]))
        .await;
    assert_eq!(must(full.layer_count().await, "full.LayerCount"), 0);
    w.finish();
}

/// The pools are objects under the ObjectManager with their properties;
/// LayerCount follows Prepare/Remove and is announced by PropertiesChanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_objects_and_layer_count_signal() {
    let Some(w) = Multi::new().await else { return };
    let f = &w.f;
    let om = zbus::fdo::ObjectManagerProxy::builder(&f.conn)
        .destination(BUS_NAME)
        .unwrap()
        .path(ROOT)
        .unwrap()
        .build()
        .await
        .unwrap();
    let objects = must(
        om.get_managed_objects().await.map_err(zbus::Error::from),
        "GetManagedObjects",
    );
    let want_paths: BTreeSet<String> = ["main", "other", "full"]
        .iter()
        .map(|n| format!("{ROOT}/pools/{n}"))
        .collect();
    let pool_paths: BTreeSet<String> = objects
        .iter()
        .filter(|(_, ifaces)| ifaces.keys().any(|i| i.as_str() == POOL_IFACE))
        .map(|(p, _)| p.to_string())
        .collect();
    assert_eq!(pool_paths, want_paths, "pool objects in GetManagedObjects");
    let listed: BTreeSet<String> = must(f.mgr.pools().await, "Manager.Pools")
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(listed, want_paths, "Manager.Pools");

    for name in ["main", "other", "full"] {
        let path = format!("{ROOT}/pools/{name}");
        let (_, ifaces) = objects.iter().find(|(p, _)| p.as_str() == path).unwrap();
        let (_, props) = ifaces
            .iter()
            .find(|(i, _)| i.as_str() == POOL_IFACE)
            .unwrap();
        let s = |k: &str| -> String {
            let v = props.get(k).unwrap_or_else(|| {
                panic!("{path}: no property {k} in GetManagedObjects: {props:?}")
            });
            String::try_from(v.try_clone().unwrap())
                .unwrap_or_else(|e| panic!("{path}.{k} is not a string: {e}"))
        };
        let t = |k: &str| -> u64 {
            let v = props.get(k).unwrap_or_else(|| {
                panic!("{path}: no property {k} in GetManagedObjects: {props:?}")
            });
            u64::try_from(v.try_clone().unwrap())
                .unwrap_or_else(|e| panic!("{path}.{k} is not a u64: {e}"))
        };
        assert_eq!(s("Name"), name);
        assert_eq!(s("Driver"), "overlay");
        assert!(!s("Backing").is_empty(), "{path}: empty Backing");
        assert_eq!(
            s("Health"),
            if name == "full" { "full" } else { "ok" },
            "{path}: Health"
        );
        let (size, used) = (t("DataSize"), t("DataUsed"));
        assert!(
            size > 0 && used <= size,
            "{path}: DataSize {size}, DataUsed {used}"
        );
        assert_eq!(t("LayerCount"), 0, "{path}: LayerCount");
    }

    // PropertiesChanged of the main pool.
    let path = format!("{ROOT}/pools/main");
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("org.freedesktop.DBus.Properties")
        .unwrap()
        .member("PropertiesChanged")
        .unwrap()
        .path(path.as_str())
        .unwrap()
        .build();
    let mut stream = zbus::MessageStream::for_match_rule(rule, &f.conn, Some(256))
        .await
        .expect("match rule");
    let pool = f.pool("main").await;

    /// Forgets signals that arrived so far (e.g. from an earlier step).
    async fn drain(stream: &mut zbus::MessageStream) {
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), next(stream)).await
        {
        }
    }

    /// Waits up to 2 s for a PropertiesChanged carrying LayerCount = want.
    async fn await_count(
        stream: &mut zbus::MessageStream,
        want: u64,
        after: &str,
    ) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = match tokio::time::timeout(left, next(stream)).await {
                Ok(Some(Ok(m))) => m,
                Ok(other) => return Err(format!("signal stream ended: {other:?}")),
                Err(_) => {
                    return Err(format!(
                        "no PropertiesChanged with LayerCount = {want} within 2 s of {after}; saw {seen:?}"
                    ))
                }
            };
            let (iface, changed, _): (String, HashMap<String, OwnedValue>, Vec<String>) =
                msg.body().deserialize().expect("PropertiesChanged body");
            if iface != POOL_IFACE {
                continue;
            }
            let count = changed
                .get("LayerCount")
                .map(|v| u64::try_from(v.try_clone().unwrap()).expect("LayerCount is t"));
            seen.push(format!(
                "{:?} LayerCount={count:?}",
                changed.keys().collect::<Vec<_>>()
            ));
            if count == Some(want) {
                return Ok(());
            }
        }
    }

    // Each step: the property at once, the signal within 2 s. Problems are
    // collected so that one missing signal does not hide the others.
    let mut problems = Vec::new();
    let steps: [(&str, u64); 5] = [
        ("Prepare(a)", 1),
        ("Commit(c, a)", 1),
        ("View(v, c)", 2),
        ("Remove(v)", 1),
        ("Remove(c)", 0),
    ];
    for (step, want) in steps {
        drain(&mut stream).await;
        match step {
            "Prepare(a)" => drop(f.prepare("a", "").await),
            "Commit(c, a)" => f.commit("c", "a").await,
            "View(v, c)" => drop(f.view("v", "c").await),
            "Remove(v)" => f.remove("v").await,
            _ => f.remove("c").await,
        };
        let got = must(pool.layer_count().await, "LayerCount");
        if got != want {
            problems.push(format!("LayerCount after {step} is {got}, expected {want}"));
        }
        if step.starts_with("Commit") {
            continue; // the count does not change
        }
        if let Err(e) = await_count(&mut stream, want, step).await {
            problems.push(e);
        }
    }
    assert_eq!(
        must(
            f.pool("other").await.layer_count().await,
            "other.LayerCount"
        ),
        0
    );

    // The zbus property-change stream sees it too (cached proxy): first
    // the current value, then the change.
    let cached = PoolProxy::builder(&f.conn)
        .path(path.as_str())
        .unwrap()
        .build()
        .await
        .unwrap();
    let mut changes = cached.receive_layer_count_changed().await;
    let first = tokio::time::timeout(Duration::from_secs(2), next(&mut changes))
        .await
        .expect("receive_layer_count_changed yields the current value first")
        .expect("property stream ended");
    assert_eq!(must(first.get().await, "current LayerCount"), 0);
    f.prepare("b", "").await;
    match tokio::time::timeout(Duration::from_secs(2), next(&mut changes)).await {
        Ok(Some(ch)) => {
            let v = must(ch.get().await, "changed LayerCount");
            if v != 1 {
                problems.push(format!(
                    "receive_layer_count_changed after Prepare(b) gave {v}, expected 1"
                ));
            }
        }
        Ok(None) => problems.push("the property stream ended".into()),
        Err(_) => problems
            .push("receive_layer_count_changed gave nothing within 2 s of Prepare(b)".into()),
    }
    assert!(
        problems.is_empty(),
        "LayerCount announcements:\n  {}",
        problems.join("\n  ")
    );
    w.finish();
}

// ---------------------------------------------------------------------------
// Mount reference counting
// ---------------------------------------------------------------------------

fn mount_count(p: &Path) -> usize {
    let p = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    mount_points().iter().filter(|m| **m == p).count()
}

/// Mount twice: one path, one kernel mount; the first Unmount keeps it,
/// the second removes it; a third is FailedPrecondition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_refcount() {
    let Some(f) = fixture().await else { return };
    let m = &f.mgr;
    f.prepare("base-a", "").await;
    f.apply_to(
        "base-a",
        &[create_file("/from-base", "base\n", 0o644)],
        Via::Daemon,
    )
    .await;
    f.commit("base", "base-a").await;
    f.prepare("a", "base").await;
    let p1 = PathBuf::from(must(m.mount("a").await, "Mount #1"));
    let p2 = PathBuf::from(must(m.mount("a").await, "Mount #2"));
    assert_eq!(p1, p2, "two Mounts of one key");
    assert!(
        p1.starts_with(f.run_dir()),
        "{} is not under the run dir",
        p1.display()
    );
    assert_eq!(
        mount_count(&p1),
        1,
        "{} should be mounted exactly once (mountinfo)",
        p1.display()
    );
    fs::write(p1.join("file"), "x").unwrap();
    assert_eq!(fs::read_to_string(p1.join("from-base")).unwrap(), "base\n");

    must(m.unmount("a").await, "Unmount #1");
    assert_eq!(
        mount_count(&p1),
        1,
        "after one of two Unmounts {} must stay mounted",
        p1.display()
    );
    assert_eq!(fs::read_to_string(p1.join("file")).unwrap(), "x");
    must(m.unmount("a").await, "Unmount #2");
    assert_eq!(
        mount_count(&p1),
        0,
        "after the last Unmount {} is still mounted",
        p1.display()
    );
    check_err(
        "Unmount #3",
        m.unmount("a").await,
        "FailedPrecondition",
        &["\"a\""],
    );

    // Mount again: the data is there.
    let p3 = PathBuf::from(must(m.mount("a").await, "Mount #3"));
    assert_eq!(fs::read_to_string(p3.join("file")).unwrap(), "x");
    must(m.unmount("a").await, "Unmount #4");
    assert!(mounts_under(&f.run_dir()).is_empty());
    f.finish();
}

// ---------------------------------------------------------------------------
// Restart
// ---------------------------------------------------------------------------

fn sorted(mut v: Vec<(Info, String)>) -> Vec<(Info, String)> {
    v.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    v
}

async fn read_through_mount(f: &Fixture, key: &str, file: &str) -> String {
    let p = PathBuf::from(must(f.mgr.mount(key).await, format_args!("Mount({key})")));
    let r = fs::read_to_string(p.join(file));
    must(f.mgr.unmount(key).await, format_args!("Unmount({key})"));
    r.unwrap_or_else(|e| panic!("{key}: read {file}: {e}"))
}

/// SIGTERM and start again: every layer, label and time survives, and the
/// files read the same through Mount.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_every_layer() {
    let Some(mut f) = fixture().await else { return };
    f.prepare_with("l1-a", "", labels_with(&[("k", "v1")]))
        .await;
    f.apply_to(
        "l1-a",
        &[
            create_file("/one", "1\n", 0o644),
            create_file("/shadow", "from l1\n", 0o600),
        ],
        Via::Daemon,
    )
    .await;
    f.commit_with("l1", "l1-a", labels_with(&[("layer", "1")]))
        .await;
    f.prepare("l2-a", "l1").await;
    f.apply_to(
        "l2-a",
        &[
            create_file("/two", "2\n", 0o644),
            create_file("/shadow", "from l2\n", 0o600),
        ],
        Via::Daemon,
    )
    .await;
    f.commit("l2", "l2-a").await;
    f.prepare("work", "l2").await;
    f.apply_to(
        "work",
        &[create_file("/three", "3\n", 0o644), remove("/one")],
        Via::Daemon,
    )
    .await;
    f.view("look", "l1").await;
    f.prepare("empty", "").await;
    let before = sorted(f.walk(&[]).await);
    assert_eq!(before.len(), 5);

    f.restart().await;
    let after = sorted(f.walk(&[]).await);
    assert_eq!(after, before, "Walk after a restart");
    assert_eq!(
        must(f.pool("main").await.layer_count().await, "LayerCount"),
        5
    );

    assert_eq!(read_through_mount(&f, "work", "three").await, "3\n");
    assert_eq!(read_through_mount(&f, "work", "two").await, "2\n");
    assert_eq!(read_through_mount(&f, "work", "shadow").await, "from l2\n");
    let p = PathBuf::from(must(f.mgr.mount("work").await, "Mount(work)"));
    assert!(
        !p.join("one").exists(),
        "the deletion of /one in work was lost"
    );
    must(f.mgr.unmount("work").await, "Unmount(work)");
    assert_eq!(read_through_mount(&f, "look", "shadow").await, "from l1\n");
    assert_eq!(read_through_mount(&f, "look", "one").await, "1\n");
    f.view("check", "l2").await;
    assert_eq!(read_through_mount(&f, "check", "two").await, "2\n");
    assert_eq!(read_through_mount(&f, "check", "one").await, "1\n");
    f.remove("check").await;

    // And the restarted daemon still changes state.
    f.commit("l3", "work").await;
    f.restart().await;
    assert_eq!(f.stat("l3").await.kind, "committed");
    assert_eq!(f.stat("l3").await.parent, "l2");
    f.finish();
}

/// A Mount() reference held across a restart is still served: the same
/// path, still mounted, and two Unmounts later gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_daemon_mounts() {
    let Some(mut f) = fixture().await else { return };
    f.prepare("a", "").await;
    let p = PathBuf::from(must(f.mgr.mount("a").await, "Mount(a)"));
    fs::write(p.join("f"), "kept").unwrap();
    f.restart().await;
    assert!(
        is_mount_point(&p),
        "{} is no longer mounted after a restart",
        p.display()
    );
    let p2 = PathBuf::from(must(f.mgr.mount("a").await, "Mount(a) after restart"));
    assert_eq!(p2, p);
    assert_eq!(mount_count(&p), 1);
    assert_eq!(fs::read_to_string(p.join("f")).unwrap(), "kept");
    must(f.mgr.unmount("a").await, "Unmount #1");
    assert!(
        is_mount_point(&p),
        "the reference taken before the restart was lost"
    );
    must(f.mgr.unmount("a").await, "Unmount #2");
    assert!(!is_mount_point(&p));
    f.remove("a").await;
    f.finish();
}

// ---------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------

const CLIENTS: usize = 16;

fn stress_secs() -> u64 {
    std::env::var("LAYERD_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30)
}

/// One client on its own connection: Prepare on the shared base, write a
/// file through Mount every third round, Commit, Prepare a child, Remove
/// both; at the end it leaves `c<i>/keep` committed with a file.
async fn client(addr: String, i: usize, deadline: Instant) -> Result<usize, String> {
    let conn = zbus::connection::Builder::address(addr.as_str())
        .map_err(|e| e.to_string())?
        .build()
        .await
        .map_err(|e| format!("client {i}: connect: {e}"))?;
    let mgr = ManagerProxy::builder(&conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let ctx = |what: String| move |e: zbus::Error| format!("client {i}: {what}: {}", describe(&e));
    let l = labels_with(&[("client", &i.to_string())]);
    let write = |p: &str, file: String, data: String| -> Result<(), String> {
        let p = Path::new(p);
        let base = fs::read_to_string(p.join("base-file"))
            .map_err(|e| format!("client {i}: read base-file through {}: {e}", p.display()))?;
        if base != "base\n" {
            return Err(format!("client {i}: base-file reads {base:?}"));
        }
        fs::write(p.join(file), data)
            .map_err(|e| format!("client {i}: write through {}: {e}", p.display()))
    };
    let mut n = 0;
    while Instant::now() < deadline {
        let key = format!("c{i}/active-{n}");
        let name = format!("c{i}/committed-{n}");
        let child = format!("c{i}/child-{n}");
        mgr.prepare(&key, "base", l.clone())
            .await
            .map_err(ctx(format!("Prepare({key})")))?;
        if n % 3 == 0 {
            let p = mgr
                .mount(&key)
                .await
                .map_err(ctx(format!("Mount({key})")))?;
            let w = write(&p, format!("f-{n}"), format!("{i}/{n}\n"));
            mgr.unmount(&key)
                .await
                .map_err(ctx(format!("Unmount({key})")))?;
            w?;
        }
        mgr.commit(&name, &key, l.clone())
            .await
            .map_err(ctx(format!("Commit({name}, {key})")))?;
        mgr.prepare(&child, &name, l.clone())
            .await
            .map_err(ctx(format!("Prepare({child}, {name})")))?;
        mgr.remove(&child)
            .await
            .map_err(ctx(format!("Remove({child})")))?;
        mgr.remove(&name)
            .await
            .map_err(ctx(format!("Remove({name})")))?;
        n += 1;
    }
    let key = format!("c{i}/keep-a");
    mgr.prepare(&key, "base", l.clone())
        .await
        .map_err(ctx(format!("Prepare({key})")))?;
    let p = mgr
        .mount(&key)
        .await
        .map_err(ctx(format!("Mount({key})")))?;
    let w = write(&p, "kept".into(), format!("client {i}\n"));
    mgr.unmount(&key)
        .await
        .map_err(ctx(format!("Unmount({key})")))?;
    w?;
    mgr.commit(&format!("c{i}/keep"), &key, l)
        .await
        .map_err(ctx(format!("Commit(keep, {key})")))?;
    Ok(n)
}

/// 16 clients on 16 connections for `LAYERD_STRESS_SECS` (30): no error at
/// all, and afterwards exactly the expected layers, layer directories, no
/// daemon mounts, and Cleanup has something to reclaim.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_clients() {
    let Some(f) = fixture().await else { return };
    f.prepare("base-a", "").await;
    f.apply_to(
        "base-a",
        &[create_file("/base-file", "base\n", 0o644)],
        Via::Daemon,
    )
    .await;
    f.commit("base", "base-a").await;

    let secs = stress_secs();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let addr = f.daemon().bus_address.clone();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(client(addr.clone(), i, deadline)))
        .collect();
    let mut errors = Vec::new();
    let mut rounds = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(n)) => rounds += n,
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("client task: {e}")),
        }
    }
    assert!(
        errors.is_empty(),
        "{} client(s) failed:\n  {}",
        errors.len(),
        errors.join("\n  ")
    );
    eprintln!(
        "concurrent_clients: {CLIENTS} clients, {secs} s, {rounds} rounds ({} calls)",
        rounds * 5 + rounds / 3 * 2
    );
    assert!(rounds >= CLIENTS, "only {rounds} rounds in {secs} s");

    let mut want: Vec<String> = (0..CLIENTS).map(|i| format!("c{i}/keep")).collect();
    want.push("base".into());
    want.sort();
    assert_eq!(f.walk_names(&[]).await, want, "layers left after the run");
    for i in [0, CLIENTS - 1] {
        let key = format!("c{i}/keep");
        let v = format!("c{i}/check");
        f.view(&v, &key).await;
        assert_eq!(
            read_through_mount(&f, &v, "kept").await,
            format!("client {i}\n")
        );
        assert_eq!(read_through_mount(&f, &v, "base-file").await, "base\n");
        f.remove(&v).await;
    }
    let ids: Vec<String> = fs::read_dir(f.pool_path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.parse::<u64>().is_ok())
        .collect();
    assert_eq!(
        ids.len(),
        want.len(),
        "layer directories in the pool: {ids:?}"
    );
    assert_eq!(
        must(f.pool("main").await.layer_count().await, "LayerCount"),
        want.len() as u64
    );
    let freed = must(f.mgr.cleanup().await, "Cleanup");
    assert!(
        freed > 0,
        "Cleanup after {rounds} rounds of removals freed nothing"
    );
    let trash: Vec<_> = fs::read_dir(f.pool_path().join("t"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(trash.is_empty(), "trash after Cleanup: {trash:?}");
    let left = mounts_under(&f.run_dir());
    assert!(left.is_empty(), "mounts left under the run dir: {left:?}");
    f.finish();
}

// ---------------------------------------------------------------------------
// Bad config files
// ---------------------------------------------------------------------------

/// Runs `layerd --config <dir>/layerd.toml` with `text` (`@D@` = the
/// directory) and checks: exit status 2, one line on stderr naming
/// `file:line:` and every needle, and no state_dir, run_dir or pool path.
fn bad_config(text: &str, line: usize, needles: &[&str], setup: impl FnOnce(&Path)) {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: needs root (config host checks as the daemon sees them)");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("ldc.")
        .tempdir_in("/tmp")
        .unwrap();
    let d = dir.path();
    setup(d);
    let cfg = d.join("layerd.toml");
    let text = text.replace("@D@", &d.to_string_lossy());
    fs::write(&cfg, &text).unwrap();
    let before: BTreeSet<_> = fs::read_dir(d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let (code, stderr) = run_layerd(&cfg, d);
    let ctx = format!("config:\n{text}\nstderr: {stderr:?}");
    assert_eq!(
        code,
        Some(2),
        "exit status of layerd with a bad config; {ctx}"
    );
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    assert_eq!(lines.len(), 1, "expected exactly one line on stderr; {ctx}");
    let loc = format!("{}:{line}:", cfg.display());
    assert!(
        lines[0].contains(&loc),
        "the error does not name {loc}; {ctx}"
    );
    for n in needles {
        assert!(lines[0].contains(n), "the error does not name {n:?}; {ctx}");
    }
    let after: BTreeSet<_> = fs::read_dir(d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        after,
        before,
        "layerd created something in {}; {ctx}",
        d.display()
    );
}

/// Runs layerd (10 s at most) on an address where no bus listens, so a
/// config that is wrongly accepted cannot reach a real bus.
fn run_layerd(cfg: &Path, d: &Path) -> (Option<i32>, String) {
    let err = d.join("..").join(format!(
        "{}.stderr",
        d.file_name().unwrap().to_string_lossy()
    ));
    run_layerd_with(&[], cfg, d, &err)
}

const GOOD_HEAD: &str = r#"[daemon]
state_dir = "@D@/s"
run_dir = "@D@/r"
default_pool = "main"
"#;

#[test]
fn bad_config_unknown_key() {
    // line 5 in [daemon]
    bad_config(
        &format!("{GOOD_HEAD}colour = \"blue\"\n\n[[pool]]\nname = \"main\"\ndriver = \"overlay\"\npath = \"@D@/p\"\n"),
        5,
        &["colour"],
        |_| {},
    );
    // line 10 in [[pool]]
    bad_config(
        &format!("{GOOD_HEAD}\n[[pool]]\nname = \"main\"\ndriver = \"overlay\"\npath = \"@D@/p\"\nsise = \"1G\"\n"),
        10,
        &["sise"],
        |_| {},
    );
}

#[test]
fn bad_config_wrong_type() {
    bad_config(
        &format!("{GOOD_HEAD}\n[[pool]]\nname = \"main\"\ndriver = \"overlay\"\npath = \"@D@/p\"\n\n[pool.monitor]\nwarn_percent = \"high\"\n"),
        12,
        &["warn_percent"],
        |_| {},
    );
    bad_config(
        &"[daemon]\nstate_dir = \"@D@/s\"\nrun_dir = \"@D@/r\"\ndefault_pool = 5\n\n[[pool]]\nname = \"main\"\ndriver = \"overlay\"\npath = \"@D@/p\"\n".to_string(),
        4,
        &["default_pool"],
        |_| {},
    );
}

#[test]
fn bad_config_duplicate_pool() {
    bad_config(
        &format!("{GOOD_HEAD}\n[[pool]]\nname = \"main\"\ndriver = \"overlay\"\npath = \"@D@/p\"\n\n[[pool]]\nname = \"main\"\ndriver = \"vfs\"\npath = \"@D@/p2\"\n"),
        12,
        &["name", "duplicate", "\"main\""],
        |_| {},
    );
}

#[test]
fn bad_config_path_is_a_regular_file() {
    bad_config(
        &format!(
            "{GOOD_HEAD}\n[[pool]]\nname = \"main\"\ndriver = \"overlay\"\npath = \"@D@/p\"\n"
        ),
        9,
        &["path", "regular file"],
        |d| fs::write(d.join("p"), "not a directory").unwrap(),
    );
}

#[test]
fn bad_config_missing_file() {
    let dir = tempfile::Builder::new()
        .prefix("ldc.")
        .tempdir_in("/tmp")
        .unwrap();
    let cfg = dir.path().join("absent.toml");
    let (code, stderr) = run_layerd(&cfg, dir.path());
    assert_eq!(
        code,
        Some(2),
        "exit status with a missing --config file; stderr: {stderr:?}"
    );
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line on stderr: {stderr:?}"
    );
    assert!(
        stderr.contains(&cfg.to_string_lossy().into_owned()),
        "the error does not name the file: {stderr:?}"
    );
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        0,
        "layerd created something"
    );
}

// ---------------------------------------------------------------------------
// Introspection XML
// ---------------------------------------------------------------------------

const XML_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dbus/org.layerd.Layerd1.xml");
const XML_HEAD: &str = r#"<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<!-- layerd's D-Bus interfaces as the daemon serves them: the Manager at
     /org/layerd/Layerd1, each Pool at /org/layerd/Layerd1/pools/<name>,
     each Job at /org/layerd/Layerd1/jobs/<n> (while it runs and a while after).
     tests/api.rs (introspection_xml_matches_daemon) checks this file against
     the running daemon; regenerate it with
     LAYERD_BLESS=1 cargo test --test api introspection -->
"#;

/// The `<interface name="NAME">…</interface>` element, from the start of
/// its line.
fn interface_element(xml: &str, name: &str) -> Option<String> {
    let open = format!("<interface name=\"{name}\">");
    let start = xml.find(&open)?;
    let end = start + xml[start..].find("</interface>")? + "</interface>".len();
    let line_start = xml[..start].rfind('\n').map_or(0, |i| i + 1);
    Some(xml[line_start..end].to_string())
}

/// Re-indents an element so that its first line is at `indent` spaces.
fn reindent(el: &str, indent: usize) -> String {
    let first = el.len() - el.trim_start_matches(' ').len();
    el.lines()
        .map(|l| {
            let lead = l.len() - l.trim_start_matches(' ').len();
            format!("{}{}", " ".repeat(indent), &l[lead.min(first)..])
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Lines with surrounding whitespace removed, empty ones dropped: the unit
/// of comparison (indentation and blank lines do not matter).
fn norm_lines(s: &str) -> Vec<String> {
    s.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect()
}

/// A small LCS line diff: `-` only in `a` (the file), `+` only in `b` (the
/// daemon), with two lines of context.
fn line_diff(a: &[String], b: &[String]) -> String {
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut ops = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', &a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', &a[i]));
            i += 1;
        } else {
            ops.push(('+', &b[j]));
            j += 1;
        }
    }
    let near = |k: usize| {
        ops[k.saturating_sub(2)..(k + 3).min(ops.len())]
            .iter()
            .any(|(c, _)| *c != ' ')
    };
    let mut out = String::new();
    let mut skipped = false;
    for (k, (c, l)) in ops.iter().enumerate() {
        if near(k) {
            out.push_str(&format!("{c} {l}\n"));
            skipped = false;
        } else if !skipped {
            out.push_str("  …\n");
            skipped = true;
        }
    }
    out
}

async fn introspect(conn: &zbus::Connection, path: &str) -> String {
    let p = zbus::fdo::IntrospectableProxy::builder(conn)
        .destination(BUS_NAME)
        .unwrap()
        .path(path.to_string())
        .unwrap()
        .build()
        .await
        .unwrap();
    must(
        p.introspect().await.map_err(zbus::Error::from),
        format_args!("Introspect({path})"),
    )
}

/// The Manager (from `/org/layerd/Layerd1`), Pool (from the `main`
/// pool's object) and Job (from a trim started on it) interface elements
/// the daemon serves.
async fn served_interfaces(f: &Fixture) -> Vec<(&'static str, String)> {
    let root = introspect(&f.conn, ROOT).await;
    let pool = introspect(&f.conn, &format!("{ROOT}/pools/main")).await;
    let job_path = must(f.pool("main").await.trim().await, "Trim");
    let job = introspect(&f.conn, job_path.as_str()).await;
    vec![
        (
            MANAGER_IFACE,
            interface_element(&root, MANAGER_IFACE)
                .unwrap_or_else(|| panic!("{ROOT} does not introspect {MANAGER_IFACE}:\n{root}")),
        ),
        (
            POOL_IFACE,
            interface_element(&pool, POOL_IFACE).unwrap_or_else(|| {
                panic!("the main pool does not introspect {POOL_IFACE}:\n{pool}")
            }),
        ),
        (
            JOB_IFACE,
            interface_element(&job, JOB_IFACE)
                .unwrap_or_else(|| panic!("{job_path} does not introspect {JOB_IFACE}:\n{job}")),
        ),
    ]
}

/// `dbus/org.layerd.Layerd1.xml` holds exactly the interfaces the daemon
/// serves; `LAYERD_BLESS=1` rewrites it from the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_xml_matches_daemon() {
    let Some(f) = fixture().await else { return };
    let served = served_interfaces(&f).await;
    if std::env::var_os("LAYERD_BLESS").is_some_and(|v| v == "1") {
        let mut text = format!("{XML_HEAD}<node>\n");
        for (_, el) in &served {
            text.push_str(&reindent(el, 2));
            text.push('\n');
        }
        text.push_str("</node>\n");
        fs::write(XML_FILE, text).unwrap_or_else(|e| panic!("write {XML_FILE}: {e}"));
        eprintln!("blessed: rewrote {XML_FILE} from the running daemon");
        f.finish();
        return;
    }
    let bless = "regenerate it with `LAYERD_BLESS=1 cargo test --test api introspection` (and review the diff)";
    let file = fs::read_to_string(XML_FILE)
        .unwrap_or_else(|e| panic!("cannot read {XML_FILE}: {e}; {bless}"));
    let mut problems = Vec::new();
    for (name, live) in &served {
        match interface_element(&file, name) {
            None => problems.push(format!("{XML_FILE} has no <interface name=\"{name}\">")),
            Some(el) => {
                let (a, b) = (norm_lines(&el), norm_lines(live));
                if a != b {
                    problems.push(format!(
                        "{name} differs (- {XML_FILE}, + the daemon):\n{}",
                        line_diff(&a, &b)
                    ));
                }
            }
        }
    }
    // Nothing else claims to be ours.
    let ours = file.matches("<interface name=\"org.layerd.").count();
    if ours != served.len() {
        problems.push(format!(
            "{XML_FILE} has {ours} org.layerd interfaces, the daemon serves {}",
            served.len()
        ));
    }
    assert!(problems.is_empty(), "{}\n{bless}", problems.join("\n"));
    f.finish();
}

/// The out-arguments each Manager method declares in its introspection
/// are what its replies carry (DESIGN: Stat and Update return six
/// out-arguments, not one struct).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspection_out_args_match_replies() {
    let Some(f) = fixture().await else { return };
    let root = introspect(&f.conn, ROOT).await;
    let manager = interface_element(&root, MANAGER_IFACE).unwrap();
    // method name → concatenated out-arg types.
    let mut declared: BTreeMap<String, String> = BTreeMap::new();
    for chunk in manager.split("<method name=\"").skip(1) {
        let name = chunk[..chunk.find('"').unwrap()].to_string();
        let body = &chunk[..chunk.find("</method>").unwrap_or(chunk.len())];
        let mut sig = String::new();
        for arg in body.split("<arg ").skip(1) {
            let arg = &arg[..arg.find('>').unwrap()];
            if arg.contains("direction=\"out\"") {
                let t = arg.split("type=\"").nth(1).unwrap();
                sig.push_str(&t[..t.find('"').unwrap()]);
            }
        }
        declared.insert(name, sig);
    }
    f.prepare("base-a", "").await;
    f.commit("base", "base-a").await;

    // zvariant cannot tell "tt" (two arguments) from "(tt)" (one struct)
    // once parsed, so ask busctl (sd-bus), which prints the reply's raw
    // signature first (nothing for an empty reply).
    let addr = f.daemon().bus_address.clone();
    let busctl = |method: &str, args: &[&str]| -> String {
        let out = Command::new("busctl")
            .arg(format!("--address={addr}"))
            .args(["call", BUS_NAME, ROOT, MANAGER_IFACE, method])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run busctl");
        assert!(
            out.status.success(),
            "busctl call {method} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    };
    let calls: &[(&str, &[&str])] = &[
        ("Prepare", &["ssa{ss}", "a", "base", "1", "k", "v"]),
        ("View", &["ssa{ss}", "v", "base", "1", "k", "v"]),
        ("Stat", &["s", "a"]),
        ("Update", &["sa{ss}as", "a", "1", "k", "w", "0"]),
        ("Usage", &["s", "a"]),
        ("Mounts", &["s", "a"]),
        ("Walk", &["as", "0"]),
        ("Mount", &["s", "a"]),
        ("Unmount", &["s", "a"]),
        ("Commit", &["ssa{ss}", "c", "a", "0"]),
        ("Remove", &["s", "v"]),
        ("Cleanup", &[]),
    ];
    let mut problems = Vec::new();
    for (method, args) in calls {
        let got = busctl(method, args);
        let want = declared
            .get(*method)
            .cloned()
            .unwrap_or_else(|| format!("(method {method} not introspected)"));
        if got != want {
            problems.push(format!(
                "{method}: introspection declares out-args {want:?}, the reply carries {got:?}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "introspection and replies disagree:\n  {}",
        problems.join("\n  ")
    );
    f.finish();
}

/// SIGTERM the moment the daemon owns its bus name (what a service manager
/// does when asked to stop a `Type=dbus` unit that has just become ready):
/// layerd must still exit 0, never die of the signal. The name's owner
/// change is watched as a signal, so SIGTERM follows it within
/// microseconds; 20 rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_ready_exits_cleanly() {
    let Some(mut f) = fixture().await else { return };
    match f.daemon_mut().stop() {
        Some((st, false)) if st.success() => {}
        other => panic!("first stop: {other:?}"),
    }
    let dbus = zbus::fdo::DBusProxy::new(&f.conn).await.unwrap();
    let mut owners = dbus
        .receive_name_owner_changed_with_args(&[(0, BUS_NAME)])
        .await
        .unwrap();
    let (cfg, addr, log) = {
        let d = f.daemon();
        (d.config_path.clone(), d.bus_address.clone(), d.log.clone())
    };
    let mut bad = Vec::new();
    for round in 0..20 {
        let mut child = Command::new(Daemon::binary())
            .arg("--config")
            .arg(&cfg)
            .arg("--bus-address")
            .arg(&addr)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::OpenOptions::new().append(true).open(&log).unwrap())
            .spawn()
            .unwrap();
        // Wait for the name to gain an owner.
        loop {
            let sig = tokio::time::timeout(Duration::from_secs(10), next(&mut owners))
                .await
                .unwrap_or_else(|_| panic!("round {round}: layerd did not take its name"))
                .unwrap();
            let a = sig.args().unwrap();
            if a.new_owner().is_some() {
                break;
            }
        }
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let st = child.wait().unwrap();
        if !st.success() {
            bad.push(format!("round {round}: {st}"));
        }
        // And wait for the name to be released before the next round.
        while dbus
            .name_has_owner(BUS_NAME.try_into().unwrap())
            .await
            .unwrap_or(false)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = next_nowait(&mut owners).await;
    }
    f.start().await;
    assert!(
        bad.is_empty(),
        "layerd did not exit 0 on a SIGTERM right after taking its bus name:\n  {}",
        bad.join("\n  ")
    );
    f.finish();
}

/// Drains whatever a stream has ready now.
async fn next_nowait<S>(s: &mut S)
where
    S: zbus::export::futures_core::Stream + Unpin,
{
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), next(s)).await {}
}
