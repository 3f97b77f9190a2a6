//! Lifecycle scenarios: prepare → commit → view chains, key name space,
//! removal, commit semantics, keys, error names, restart, Mount refcounts.
//! After containerd's `checkSnapshotterBasic`, `…StatActive`,
//! `…StatCommitted`, `…Transitivity`, `…PrepareView`, `checkRemove`,
//! `checkRemoveIntermediateSnapshot` and `closeTwice`.

use std::fs;
use std::path::Path;

use crate::common::*;

/// Prepare → write → Commit → Prepare child → check → write → Commit →
/// View → check, with the specs mounted by mount(8) and checked for shape.
pub async fn basic(f: &mut Fixture) {
    let initial = vec![
        create_file("/foo", "foo\n", 0o777),
        create_dir("/a", 0o755),
        create_dir("/a/b", 0o755),
        create_dir("/a/b/c", 0o755),
    ];
    let diff = vec![
        create_file("/bar", "bar\n", 0o777),
        // also, change the content of foo to bar
        create_file("/foo", "bar\n", 0o777),
        remove_all("/a/b"),
    ];

    // containerd's suite uses file paths as keys; so do we.
    let preparing = "/work/preparing";
    let specs = f.prepare(preparing, "").await;
    assert!(!specs.is_empty(), "Prepare returned no mounts");
    f.assert_spec_shape(&specs, "active", 0);
    assert_eq!(
        f.mounts(preparing).await,
        specs,
        "Mounts must repeat Prepare's specs"
    );
    f.apply_to(preparing, &initial, Via::Specs).await;

    let committed = "/work/committed";
    f.commit(committed, preparing).await;
    let si = f.stat(committed).await;
    assert_eq!(si.name, committed);
    assert_eq!(si.parent, "");
    assert_eq!(si.kind, "committed");
    assert_dbus_err!(
        f.mgr.stat(preparing).await,
        "NotFound",
        "Stat({preparing:?}) after Commit"
    );

    let next = "/work/nextlayer";
    let specs = f.prepare(next, committed).await;
    f.assert_spec_shape(&specs, "active", 1);
    let flat = f.scratch("flat");
    apply(&flat, &initial).unwrap();
    f.check_mounted(next, &flat, Via::Specs).await;
    f.check_mounted(next, &flat, Via::Daemon).await;
    f.apply_to(next, &diff, Via::Specs).await;

    let ni = f.stat(next).await;
    assert_eq!(ni.parent, committed);
    assert_eq!(ni.kind, "active");

    let next_committed = "/work/committed-next";
    f.commit(next_committed, next).await;
    let si2 = f.stat(next_committed).await;
    assert_eq!(si2.parent, committed);
    assert_eq!(si2.kind, "committed");
    assert_dbus_err!(
        f.mgr.stat(next).await,
        "NotFound",
        "Stat({next:?}) after Commit"
    );

    // Walk is not ordered; its rows must equal Stat.
    let walked = f.walk(&[]).await;
    for expected in [&si, &si2] {
        let row = walked.iter().find(|(i, _)| i.name == expected.name);
        let (info, pool) =
            row.unwrap_or_else(|| panic!("Walk misses {:?}: {walked:?}", expected.name));
        assert_eq!(info, expected, "Walk row differs from Stat");
        assert_eq!(pool, f.pool_name(), "Walk row pool");
    }

    let nextnext = "/work/nextnextlayer";
    let specs = f.view(nextnext, next_committed).await;
    f.assert_spec_shape(&specs, "view", 2);
    assert_eq!(
        f.mounts(nextnext).await,
        specs,
        "Mounts must repeat View's specs"
    );
    apply(&flat, &diff).unwrap();
    f.check_mounted(nextnext, &flat, Via::Specs).await;
    f.check_mounted(nextnext, &flat, Via::Daemon).await;
    f.remove(nextnext).await;

    assert_dbus_err!(
        f.mgr.remove(committed).await,
        "FailedPrecondition",
        "Remove of a parent"
    );
    f.remove(next_committed).await;
    f.remove(committed).await;
    assert!(
        f.walk(&[]).await.is_empty(),
        "layers left after removing all"
    );
}

/// Stat of a new active layer on no parent, while it is mounted and written.
pub async fn stat_active(f: &mut Fixture) {
    let preparing = "/work/preparing";
    let specs = f.prepare(preparing, "").await;
    assert!(!specs.is_empty(), "Prepare returned no mounts");
    let m = f.mount(preparing, Via::Specs).await;
    fs::write(m.path.join("foo"), "foo\n").unwrap();
    let si = f.stat(preparing).await;
    f.unmount(m).await;
    assert_eq!(si.name, preparing);
    assert_eq!(si.kind, "active");
    assert_eq!(si.parent, "");
    assert_eq!(si.labels, default_labels());
}

/// Stat of a committed layer (committed while a runtime still has it mounted,
/// as containerd's test does).
pub async fn stat_committed(f: &mut Fixture) {
    let preparing = "/work/preparing";
    f.prepare(preparing, "").await;
    let m = f.mount(preparing, Via::Specs).await;
    fs::write(m.path.join("foo"), "foo\n").unwrap();
    let committed = "/work/committed";
    f.commit(committed, preparing).await;
    f.unmount(m).await;
    let si = f.stat(committed).await;
    assert_eq!(si.name, committed);
    assert_eq!(si.kind, "committed");
    assert_eq!(si.parent, "");
    let v = f.unique("v");
    f.view(&v, committed).await;
    let m = f.mount(&v, Via::Daemon).await;
    let got = fs::read(m.path.join("foo"));
    f.unmount(m).await;
    assert_eq!(
        got.ok().as_deref(),
        Some(&b"foo\n"[..]),
        "committed content"
    );
}

/// A <- B: B's parent is A, and A's parent is empty.
pub async fn transitivity(f: &mut Fixture) {
    let preparing = "/work/preparing";
    f.prepare(preparing, "").await;
    f.apply_to(
        preparing,
        &[create_file("/foo", "foo\n", 0o777)],
        Via::Daemon,
    )
    .await;
    let snap_a = "/work/snapA";
    f.commit(snap_a, preparing).await;

    let next = "/work/next";
    f.prepare(next, snap_a).await;
    f.apply_to(
        next,
        &[create_file("/foo", "foo bar\n", 0o777)],
        Via::Daemon,
    )
    .await;
    let snap_b = "/work/snapB";
    f.commit(snap_b, next).await;

    let si_a = f.stat(snap_a).await;
    let si_b = f.stat(snap_b).await;
    let si_parent_b = f.stat(&si_b.parent).await;
    assert_eq!(si_a.parent, "");
    assert_eq!(si_b.parent, snap_a);
    assert_eq!(si_parent_b.parent, "");
}

/// Active, view and committed keys share one name space: a second Prepare
/// or View of a key, or a Commit onto a used name, is AlreadyExists.
pub async fn prepare_view_conflicts(f: &mut Fixture) {
    let preparing = "/work/preparing";
    f.prepare(preparing, "").await;
    let snap_a = "/work/snapA";
    f.commit(snap_a, preparing).await;

    let new_layer = "/work/newlayer";
    f.prepare(new_layer, snap_a).await;
    assert_dbus_err!(
        f.mgr.view(new_layer, snap_a, default_labels()).await,
        "AlreadyExists",
        "View on an active key"
    );

    let prep_layer = "/work/prepLayer";
    f.prepare(prep_layer, snap_a).await;
    assert_dbus_err!(
        f.mgr.prepare(prep_layer, snap_a, default_labels()).await,
        "AlreadyExists",
        "second Prepare"
    );
    assert_dbus_err!(
        f.mgr.prepare(prep_layer, "", default_labels()).await,
        "AlreadyExists",
        "Prepare, other parent"
    );

    let view_layer = "/work/viewLayer";
    f.view(view_layer, snap_a).await;
    assert_dbus_err!(
        f.mgr.view(view_layer, snap_a, default_labels()).await,
        "AlreadyExists",
        "second View"
    );
    assert_dbus_err!(
        f.mgr.prepare(view_layer, snap_a, default_labels()).await,
        "AlreadyExists",
        "Prepare on a view key"
    );

    // Committed names are in the same name space.
    assert_dbus_err!(
        f.mgr.prepare(snap_a, "", default_labels()).await,
        "AlreadyExists",
        "Prepare on a committed name"
    );
    assert_dbus_err!(
        f.mgr.view(snap_a, "", default_labels()).await,
        "AlreadyExists",
        "View on a committed name"
    );
    assert_dbus_err!(
        f.mgr.commit(snap_a, prep_layer, default_labels()).await,
        "AlreadyExists",
        "Commit onto a committed name"
    );
    assert_dbus_err!(
        f.mgr.commit(view_layer, prep_layer, default_labels()).await,
        "AlreadyExists",
        "Commit onto a view key"
    );
    assert_dbus_err!(
        f.mgr.commit(new_layer, prep_layer, default_labels()).await,
        "AlreadyExists",
        "Commit onto an active key"
    );

    // The failed calls changed nothing.
    assert_eq!(f.stat(prep_layer).await.kind, "active");
    assert_eq!(f.stat(view_layer).await.kind, "view");
    assert_eq!(f.stat(new_layer).await.kind, "active");
    assert_eq!(f.stat(snap_a).await.kind, "committed");
    assert_eq!(f.walk(&[]).await.len(), 4);
}

/// Keys can be reused once removed, whatever kind they had.
pub async fn remove_and_reuse(f: &mut Fixture) {
    f.prepare("committed-a", "").await;
    f.commit("committed-1", "committed-a").await;
    f.prepare("reuse-1", "committed-1").await;
    f.remove("reuse-1").await;
    f.view("reuse-1", "committed-1").await;
    f.remove("reuse-1").await;
    f.prepare("reuse-1", "").await;
    f.remove("committed-1").await;
    f.commit("committed-1", "reuse-1").await;

    assert_eq!(f.stat("committed-1").await.kind, "committed");
    assert_dbus_err!(f.mgr.stat("reuse-1").await, "NotFound");
    assert_dbus_err!(
        f.mgr.remove("reuse-1").await,
        "NotFound",
        "Remove of a removed key"
    );
    assert_dbus_err!(f.mgr.remove("never-existed").await, "NotFound");
    // A removed parent cannot be used.
    f.remove("committed-1").await;
    assert_dbus_err!(
        f.mgr.prepare("x", "committed-1", default_labels()).await,
        "NotFound",
        "Prepare on a removed parent"
    );
}

/// A parent cannot be removed while it has children (active, view or
/// committed); removing from the top down works.
pub async fn remove_intermediate(f: &mut Fixture) {
    let base = "/work/base";
    f.prepare(base, "").await;
    let m = f.mount(base, Via::Specs).await;
    f.unmount(m).await;
    let committed_base = "/work/committed-base";
    f.commit(committed_base, base).await;

    let intermediate = "/work/intermediate";
    f.prepare(intermediate, committed_base).await;
    let committed_inter = "/work/committed-inter";
    f.commit(committed_inter, intermediate).await;

    let top = "/work/toplayer";
    f.prepare(top, committed_inter).await;
    let view = "/work/view-of-base";
    f.view(view, committed_base).await;

    assert_dbus_err!(
        f.mgr.remove(committed_inter).await,
        "FailedPrecondition",
        "Remove of a parent of an active"
    );
    assert_dbus_err!(
        f.mgr.remove(committed_base).await,
        "FailedPrecondition",
        "Remove of a grandparent"
    );
    f.remove(top).await;
    f.remove(committed_inter).await;
    assert_dbus_err!(
        f.mgr.remove(committed_base).await,
        "FailedPrecondition",
        "Remove of a parent of a view"
    );
    f.remove(view).await;
    f.remove(committed_base).await;
    assert!(f.walk(&[]).await.is_empty());
}

/// Commit turns active `key` into committed `name`: the key is gone (and
/// free again), the content moved, the labels are the Commit's alone.
pub async fn commit_renames_key(f: &mut Fixture) {
    let key = "k/active";
    f.prepare_with(key, "", labels(&[("x", "1"), ("y", "2")]))
        .await;
    f.apply_to(key, &[create_file("/f", "committed\n", 0o640)], Via::Daemon)
        .await;
    let before = f.stat(key).await;
    assert_eq!(before.labels, labels(&[("x", "1"), ("y", "2")]));

    let name = "k/committed";
    let t0 = now_us();
    f.commit_with(name, key, labels(&[("z", "3")])).await;
    let t1 = now_us();
    assert_dbus_err!(f.mgr.stat(key).await, "NotFound", "the key after Commit");
    assert_dbus_err!(
        f.mgr.mounts(key).await,
        "NotFound",
        "Mounts of the key after Commit"
    );
    let c = f.stat(name).await;
    assert_eq!(c.kind, "committed");
    assert_eq!(c.parent, "");
    assert_eq!(
        c.labels,
        labels(&[("z", "3")]),
        "Commit replaces the labels"
    );
    assert!(
        (t0..=t1).contains(&c.updated) && c.created <= c.updated,
        "Commit at [{t0}, {t1}] µs gave created {} updated {}",
        c.created,
        c.updated
    );

    // The key is free again, and the content is in `name`.
    f.prepare(key, name).await;
    let flat = f.scratch("flat");
    apply(&flat, &[create_file("/f", "committed\n", 0o640)]).unwrap();
    f.check_mounted(key, &flat, Via::Daemon).await;
    assert_eq!(f.stat(key).await.parent, name);

    // Only actives commit.
    let v = "k/view";
    f.view(v, name).await;
    assert_dbus_err!(
        f.mgr.commit("k/from-view", v, default_labels()).await,
        "FailedPrecondition",
        "Commit of a view"
    );
    assert_dbus_err!(
        f.mgr.commit("k/again", name, default_labels()).await,
        "FailedPrecondition",
        "Commit of a committed layer"
    );
    assert_dbus_err!(f.mgr.stat("k/from-view").await, "NotFound");
    assert_dbus_err!(f.mgr.stat("k/again").await, "NotFound");
}

/// Keys are any UTF-8 strings: with `/`, `..`, spaces, non-ASCII, and 4000
/// bytes long. None of them may leak into paths or mount specs.
pub async fn keys_with_slashes_and_long_keys(f: &mut Fixture) {
    let long_key = format!("long/{}", "x".repeat(3995));
    let long_name = format!("c/{}", "y".repeat(3998));
    assert_eq!(long_key.len(), 4000);
    assert_eq!(long_name.len(), 4000);
    let keys = [
        "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/1".to_string(),
        "a//b/".to_string(),
        "../../../etc".to_string(),
        "sha256:0123abcd/extract-17 foo".to_string(),
        " spaced key ".to_string(),
        "ключ/слой ✓".to_string(),
        long_key.clone(),
    ];
    let run_dir = f.run_dir();
    for (i, key) in keys.iter().enumerate() {
        let specs = f.prepare(key, "").await;
        for (_, src, opts) in &specs {
            assert!(
                !src.contains(key.as_str()) && !opts.iter().any(|o| o.contains(key.as_str())),
                "key {key:?} leaks into specs {specs:?}"
            );
        }
        let m = f.mount(key, Via::Daemon).await;
        assert!(
            m.path.starts_with(&run_dir),
            "Mount path {} is not under the run dir",
            m.path.display()
        );
        assert!(
            m.path.as_os_str().len() < 256,
            "Mount path {} is long: keys must not appear in paths",
            m.path.display()
        );
        fs::write(m.path.join("k"), format!("{i}")).unwrap();
        f.unmount(m).await;
        let si = f.stat(key).await;
        assert_eq!(&si.name, key);
        assert_eq!(si.kind, "active");
    }
    // A long committed name, a child of it, and Walk by name.
    f.commit(&long_name, &long_key).await;
    assert_eq!(f.stat(&long_name).await.kind, "committed");
    let child = format!("{long_name}/child");
    f.prepare(&child, &long_name).await;
    assert_eq!(f.stat(&child).await.parent, long_name);
    let m = f.mount(&child, Via::Daemon).await;
    let got = fs::read_to_string(m.path.join("k"));
    f.unmount(m).await;
    assert_eq!(got.ok().as_deref(), Some("6"));

    let names = f.walk_names(&[]).await;
    let mut expected: Vec<String> = keys[..6].to_vec();
    expected.push(long_name.clone());
    expected.push(child.clone());
    expected.sort();
    assert_eq!(names, expected);
    let filter = format!("name==\"{long_name}\"");
    assert_eq!(f.walk_names(&[&filter]).await, vec![long_name.clone()]);
    let filter = format!("parent==\"{long_name}\"");
    assert_eq!(f.walk_names(&[&filter]).await, vec![child.clone()]);

    for key in keys[..6].iter().chain([&child, &long_name]) {
        f.remove(key).await;
    }
    assert!(f.walk(&[]).await.is_empty());
}

/// Mounts gives specs for active and view keys only: a committed key is
/// FailedPrecondition, a missing one NotFound.
pub async fn mounts_of_committed(f: &mut Fixture) {
    let a = f.prepare("a", "").await;
    assert_eq!(f.mounts("a").await, a);
    f.commit("c", "a").await;
    assert_dbus_err!(
        f.mgr.mounts("c").await,
        "FailedPrecondition",
        "Mounts of a committed layer"
    );
    assert_dbus_err!(
        f.mgr.mounts("a").await,
        "NotFound",
        "Mounts of a committed-away key"
    );
    let v = f.view("v", "c").await;
    assert_eq!(f.mounts("v").await, v);
    let b = f.prepare("b", "c").await;
    assert_eq!(f.mounts("b").await, b);
    f.assert_spec_shape(&v, "view", 1);
    f.assert_spec_shape(&b, "active", 1);
}

/// Each call on a missing key or parent is NotFound; a parent that is not
/// committed is refused; failed calls leave nothing behind.
pub async fn not_found_errors(f: &mut Fixture) {
    let l = default_labels;
    assert_dbus_err!(f.mgr.stat("nope").await, "NotFound", "Stat");
    assert_dbus_err!(f.mgr.remove("nope").await, "NotFound", "Remove");
    assert_dbus_err!(f.mgr.mounts("nope").await, "NotFound", "Mounts");
    assert_dbus_err!(f.mgr.usage("nope").await, "NotFound", "Usage");
    assert_dbus_err!(f.mgr.mount("nope").await, "NotFound", "Mount");
    assert_dbus_err!(f.mgr.unmount("nope").await, "NotFound", "Unmount");
    assert_dbus_err!(
        f.mgr.update("nope", l(), vec![]).await,
        "NotFound",
        "Update"
    );
    assert_dbus_err!(f.mgr.commit("c", "nope", l()).await, "NotFound", "Commit");
    assert_dbus_err!(
        f.mgr.prepare("k", "nope", l()).await,
        "NotFound",
        "Prepare on a missing parent"
    );
    assert_dbus_err!(
        f.mgr.view("k", "nope", l()).await,
        "NotFound",
        "View on a missing parent"
    );

    f.prepare("active", "").await;
    f.view("view", "").await;
    assert_dbus_err!(
        f.mgr.prepare("k", "active", l()).await,
        "FailedPrecondition" | "InvalidArgument",
        "Prepare on an active parent"
    );
    assert_dbus_err!(
        f.mgr.view("k", "active", l()).await,
        "FailedPrecondition" | "InvalidArgument",
        "View on an active parent"
    );
    assert_dbus_err!(
        f.mgr.prepare("k", "view", l()).await,
        "FailedPrecondition" | "InvalidArgument",
        "Prepare on a view parent"
    );
    assert_dbus_err!(
        f.mgr.stat("k").await,
        "NotFound",
        "a failed Prepare left its key"
    );
    assert_dbus_err!(
        f.mgr.stat("c").await,
        "NotFound",
        "a failed Commit left its name"
    );
    assert_eq!(
        f.walk_names(&[]).await,
        vec!["active".to_string(), "view".to_string()]
    );
}

/// containerd's `closeTwice`, for a daemon: state survives a clean restart
/// (SIGTERM exits 0), the layers keep their contents, and work goes on.
pub async fn restart_keeps_state(f: &mut Fixture) {
    let layers = vec![
        vec![
            create_dir("/etc", 0o755),
            create_file("/etc/a", "1\n", 0o644),
            symlink_op("a", "/etc/b"),
        ],
        vec![
            create_file("/etc/a", "2\n", 0o600),
            chown("/etc/a", 7, 8),
            remove("/etc/b"),
        ],
    ];
    let chain = f.check_layers(&layers, Via::Daemon).await;
    let top = chain.names.last().unwrap().clone();
    f.prepare_with("active", &top, labels(&[("l", "a")])).await;
    f.apply_to(
        "active",
        &[create_file("/pending", "not committed\n", 0o644)],
        Via::Daemon,
    )
    .await;
    f.view_with("view", &top, labels(&[("l", "v")])).await;
    // A runtime's daemon Mount is held across the restart.
    let held = must(f.mgr.mount("active").await, "Mount before the restart");
    let mut before = f.walk(&[]).await;
    before.sort_by(|a, b| a.0.name.cmp(&b.0.name));

    f.restart().await;

    let mut after = f.walk(&[]).await;
    after.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    assert_eq!(after, before, "Walk after restart");
    assert!(
        is_mount_point(Path::new(&held)),
        "the daemon Mount {held} held across a clean restart was unmounted"
    );
    assert_eq!(
        fs::read_to_string(Path::new(&held).join("pending"))
            .ok()
            .as_deref(),
        Some("not committed\n"),
        "the daemon Mount held across a clean restart"
    );
    must(
        f.mgr.unmount("active").await,
        "Unmount of a Mount held across the restart",
    );
    assert!(
        !is_mount_point(Path::new(&held)),
        "{held} still mounted after its last Unmount"
    );
    f.check_layer(&top, &chain.flat).await;
    let flat = f.scratch("flat");
    copy_tree(&chain.flat, &flat);
    apply(&flat, &[create_file("/pending", "not committed\n", 0o644)]).unwrap();
    f.check_mounted("active", &flat, Via::Specs).await;
    f.check_mounted("view", &chain.flat, Via::Daemon).await;
    f.commit("after-restart", "active").await;
    f.check_layer("after-restart", &flat).await;
    f.remove("view").await;

    // A second restart right away (nothing in between) is fine too.
    f.restart().await;
    assert_eq!(f.stat("after-restart").await.kind, "committed");
}

fn copy_tree(from: &Path, to: &Path) {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .output()
        .expect("cp");
    assert!(
        out.status.success(),
        "cp -a: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Mount is reference-counted: two Mounts share one path under the run
/// directory; it stays mounted until the last Unmount.
pub async fn mount_refcount(f: &mut Fixture) {
    f.prepare("a", "").await;
    let p1 = must(f.mgr.mount("a").await, "Mount 1");
    let p2 = must(f.mgr.mount("a").await, "Mount 2");
    assert_eq!(p1, p2, "two Mounts of one key give one path");
    let p = Path::new(&p1);
    assert!(p.starts_with(f.run_dir()), "{p1} is not under the run dir");
    assert!(is_mount_point(p), "{p1} is not a mount point");
    fs::write(p.join("f"), "x").unwrap();
    must(f.mgr.unmount("a").await, "Unmount 1");
    assert!(
        is_mount_point(p),
        "{p1} unmounted while a reference remains"
    );
    assert_eq!(fs::read_to_string(p.join("f")).unwrap(), "x");
    must(f.mgr.unmount("a").await, "Unmount 2");
    assert!(
        !is_mount_point(p),
        "{p1} still mounted after the last Unmount"
    );

    let p3 = must(f.mgr.mount("a").await, "Mount 3");
    assert_eq!(fs::read_to_string(Path::new(&p3).join("f")).unwrap(), "x");
    must(f.mgr.unmount("a").await, "Unmount 3");
    assert!(
        !is_mount_point(Path::new(&p3)),
        "{p3} still mounted after the last Unmount"
    );
    f.commit("c", "a").await;
}

/// The specs of actives and views at depths 0 to 3 have the contracted
/// shape (`assert_spec_shape` and `assert_spec_details`), Mounts repeats
/// them, and each mounts with mount(8).
pub async fn mount_spec_shapes(f: &mut Fixture) {
    let mut parent = String::new();
    for depth in 0..=3usize {
        let active = format!("shape/active-{depth}");
        let view = format!("shape/view-{depth}");
        let a = f.prepare(&active, &parent).await;
        let v = f.view(&view, &parent).await;
        for (key, kind, specs) in [(&active, "active", &a), (&view, "view", &v)] {
            assert_eq!(
                &f.mounts(key).await,
                specs,
                "Mounts({key:?}) differs from what creating it returned"
            );
            f.assert_spec_shape(specs, kind, depth);
            f.assert_spec_details(specs, kind, depth);
            let m = f.mount(key, Via::Specs).await;
            f.unmount(m).await;
        }
        f.remove(&view).await;
        f.apply_to(
            &active,
            &[create_file(&format!("/f{depth}"), "x", 0o644)],
            Via::Specs,
        )
        .await;
        let name = format!("shape/committed-{depth}");
        f.commit(&name, &active).await;
        parent = name;
    }
}

/// After SIGKILL (a crash between requests) the daemon starts again with
/// every layer, its metadata and its content; a daemon Mount held at the
/// crash can still be dropped.
pub async fn kill9_keeps_state(f: &mut Fixture) {
    let chain = f
        .check_layers(
            &[
                vec![create_file("/a", "1\n", 0o644)],
                vec![create_dir("/d", 0o711)],
            ],
            Via::Daemon,
        )
        .await;
    let top = chain.names.last().unwrap().clone();
    f.prepare_with("active", &top, labels(&[("l", "a")])).await;
    f.apply_to(
        "active",
        &[create_file("/pending", "p\n", 0o600)],
        Via::Daemon,
    )
    .await;
    let held = must(f.mgr.mount("active").await, "Mount before the crash");
    let mut before = f.walk(&[]).await;
    before.sort_by(|a, b| a.0.name.cmp(&b.0.name));

    f.kill9();
    f.start().await;

    let mut after = f.walk(&[]).await;
    after.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    assert_eq!(after, before, "Walk after SIGKILL and start");
    f.check_layer(&top, &chain.flat).await;
    assert!(
        is_mount_point(Path::new(&held)),
        "the daemon Mount {held} held when layerd was SIGKILLed was unmounted by the next start"
    );
    assert_eq!(
        fs::read_to_string(Path::new(&held).join("pending"))
            .ok()
            .as_deref(),
        Some("p\n"),
        "the daemon Mount held across the crash"
    );
    must(
        f.mgr.unmount("active").await,
        "Unmount of a mount held across the crash",
    );
    let flat = f.scratch("flat");
    copy_tree(&chain.flat, &flat);
    apply(&flat, &[create_file("/pending", "p\n", 0o600)]).unwrap();
    f.check_mounted("active", &flat, Via::Specs).await;
    f.commit("after-crash", "active").await;
    f.check_layer("after-crash", &flat).await;
}
