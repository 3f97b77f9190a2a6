//! File-content scenarios: what a chain of layers shows, checked against a
//! flat directory with the same operations applied. After containerd's
//! `issues.go` (docker issues 21555, 25244, 20240/24913/28391, 27298, 25409)
//! and `checkDeletedFilesInChildSnapshot`, `checkFileFromLowerLayer`,
//! `checkSnapshotterViewReadonly`, `checkRootPermission`,
//! `check128LayersMount`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;

/// Updating a file of a lower layer (docker#21555), five times, each run
/// starting on a new second, as containerd does for mtime-based bugs.
pub async fn layer_file_update(f: &mut Fixture) {
    let l1 = vec![
        create_dir("/etc", 0o700),
        create_file("/etc/hosts", "mydomain 10.0.0.1", 0o644),
        create_file("/etc/profile", "PATH=/usr/bin", 0o644),
    ];
    let l2 = vec![
        create_file("/etc/hosts", "mydomain 10.0.0.2", 0o644),
        create_file("/etc/profile", "PATH=/usr/bin", 0o666),
        create_dir("/root", 0o700),
        create_file("/root/.bashrc", "PATH=/usr/sbin:/usr/bin", 0o644),
    ];
    for _ in 0..5 {
        f.check_layers(&[l1.clone(), l2.clone()], Via::Daemon).await;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        tokio::time::sleep(
            Duration::from_secs(1) - Duration::from_nanos(now.subsec_nanos() as u64),
        )
        .await;
    }
}

/// A directory removed and re-created in a child hides the lower content
/// (docker#25244).
pub async fn remove_directory_in_lower_layer(f: &mut Fixture) {
    let l1 = vec![
        create_dir("/lib", 0o700),
        create_file("/lib/hidden", "", 0o644),
    ];
    let l2 = vec![
        remove_all("/lib"),
        create_dir("/lib", 0o700),
        create_file("/lib/not-hidden", "", 0o644),
    ];
    let l3 = vec![create_file("/lib/newfile", "", 0o644)];
    f.check_layers(&[l1, l2, l3], Via::Specs).await;
}

/// Ownership changes of lower files and directories (docker#20240, #24913,
/// #28391).
pub async fn chown(f: &mut Fixture) {
    let l1 = vec![
        create_dir("/opt", 0o700),
        create_dir("/opt/a", 0o700),
        create_dir("/opt/a/b", 0o700),
        create_file("/opt/a/b/file.txt", "hello", 0o644),
    ];
    let l2 = vec![
        crate::common::chown("/opt", 1, 1),
        crate::common::chown("/opt/a", 1, 1),
        crate::common::chown("/opt/a/b", 1, 1),
        crate::common::chown("/opt/a/b/file.txt", 1, 1),
    ];
    f.check_layers(&[l1, l2], Via::Daemon).await;
}

/// Directory owners and modes survive commits, removal and re-creation
/// (docker#27298).
pub async fn directory_permission_on_commit(f: &mut Fixture) {
    let l1 = vec![
        create_dir("/dir1", 0o700),
        create_dir("/dir2", 0o700),
        create_dir("/dir3", 0o700),
        create_dir("/dir4", 0o700),
        create_file("/dir4/f1", "...", 0o644),
        create_dir("/dir5", 0o700),
        create_file("/dir5/f1", "...", 0o644),
        crate::common::chown("/dir1", 1, 1),
        crate::common::chown("/dir2", 1, 1),
        crate::common::chown("/dir3", 1, 1),
        crate::common::chown("/dir5", 1, 1),
        crate::common::chown("/dir5/f1", 1, 1),
    ];
    let l2 = vec![
        crate::common::chown("/dir2", 0, 0),
        remove_all("/dir3"),
        crate::common::chown("/dir4", 1, 1),
        crate::common::chown("/dir4/f1", 1, 1),
    ];
    let l3 = vec![
        create_dir("/dir3", 0o700),
        crate::common::chown("/dir3", 1, 1),
        remove_all("/dir5"),
        create_dir("/dir5", 0o700),
        crate::common::chown("/dir5", 1, 1),
    ];
    f.check_layers(&[l1, l2, l3], Via::Specs).await;
}

/// Files deleted in a child stay deleted in its descendants.
pub async fn deleted_files_in_child(f: &mut Fixture) {
    let l1 = vec![
        create_file("/foo", "foo\n", 0o777),
        create_file("/foobar", "foobar\n", 0o777),
    ];
    let l2 = vec![remove_all("/foobar")];
    let l3 = vec![];
    f.check_layers(&[l1, l2, l3], Via::Daemon).await;
}

/// Moving (re-creating, hard-linking) files out of a lower layer.
pub async fn move_file_from_lower_layer(f: &mut Fixture) {
    let l1 = vec![
        create_dir("/dir1", 0o700),
        create_file("/dir1/f1", "Hello", 0o644),
        create_dir("dir2", 0o700),
        create_file("dir2/f2", "...", 0o644),
    ];
    let l2 = vec![
        create_dir("/dir3", 0o700),
        create_file("/dir3/f1", "Hello", 0o644),
        remove_all("/dir1"),
        link("dir2/f2", "dir3/f2"),
        remove_all("dir2/f2"),
    ];
    f.check_layers(&[l1, l2], Via::Specs).await;
}

fn assert_erofs(r: std::io::Result<()>, what: &str) {
    match r {
        Ok(()) => panic!("{what}: write succeeded, but it must fail with EROFS"),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::EROFS),
            "{what}: expected EROFS, got {e}"
        ),
    }
}

async fn assert_view_readonly(f: &Fixture, view: &str) {
    for via in [Via::Specs, Via::Daemon] {
        let m = f.mount(view, via).await;
        let w = fs::write(m.path.join("testfile"), "testcontent");
        let d = fs::create_dir(m.path.join("testdir"));
        f.unmount(m).await;
        assert_erofs(
            w,
            &format!("writing a file in view {view:?} mounted via {via:?}"),
        );
        assert_erofs(d, &format!("mkdir in view {view:?} mounted via {via:?}"));
    }
}

/// A view mounts read-only: writes fail with EROFS, through mount(8) of its
/// specs and through the daemon's Mount; for no, one and several parents.
pub async fn view_readonly(f: &mut Fixture) {
    let preparing = "/work/preparing";
    f.prepare(preparing, "").await;
    let committed = "/work/committed";
    f.commit(committed, preparing).await;
    let view = "/work/view";
    f.view(view, committed).await;
    assert_view_readonly(f, view).await;
    f.remove(view).await;

    f.view("/work/empty-view", "").await;
    assert_view_readonly(f, "/work/empty-view").await;
    f.remove("/work/empty-view").await;

    f.prepare("/work/second", committed).await;
    f.apply_to(
        "/work/second",
        &[create_file("/x", "x", 0o644)],
        Via::Daemon,
    )
    .await;
    f.commit("/work/committed-2", "/work/second").await;
    f.view("/work/view-2", "/work/committed-2").await;
    assert_view_readonly(f, "/work/view-2").await;
    f.remove("/work/view-2").await;
    f.remove("/work/committed-2").await;
    f.remove(committed).await;
}

/// The root of a new layer is a 0755 directory owned by root.
pub async fn root_permission(f: &mut Fixture) {
    let preparing = "/work/preparing";
    f.prepare(preparing, "").await;
    for via in [Via::Specs, Via::Daemon] {
        let m = f.mount(preparing, via).await;
        let md = fs::metadata(&m.path);
        f.unmount(m).await;
        let md = md.unwrap();
        assert_eq!(
            md.mode() & 0o777,
            0o755,
            "root of a new layer via {via:?}: expected 0755, got {:o}",
            md.mode() & 0o777
        );
        assert_eq!(
            (md.uid(), md.gid()),
            (0, 0),
            "root of a new layer via {via:?} is owned by root"
        );
    }
}

/// File renames over a lower layer (docker#25409). Renaming a lower
/// directory is skipped on overlay, as in containerd: without redirect_dir
/// overlayfs answers EXDEV.
pub async fn rename(f: &mut Fixture) {
    let l1 = vec![
        create_dir("/dir1", 0o700),
        create_dir("/somefiles", 0o700),
        create_file("/somefiles/f1", "was here first!", 0o644),
        create_file("/somefiles/f2", "nothing interesting", 0o644),
    ];
    let mut l2 = Vec::new();
    if !f.backend.is_overlay() {
        l2.push(crate::common::rename("/dir1", "/dir2"));
    }
    l2.extend([
        create_file("/somefiles/f1-overwrite", "new content 1", 0o644),
        crate::common::rename("/somefiles/f1-overwrite", "/somefiles/f1"),
        crate::common::rename("/somefiles/f2", "/somefiles/f3"),
    ]);
    f.check_layers(&[l1, l2], Via::Daemon).await;
}

/// 128 layers, each prepared on the previous one and mounted with mount(8)
/// from its specs (which must fit a page); each adds a file, so the top sees
/// all 128; a view of the top and an active on it mount and match.
pub async fn layers_128(f: &mut Fixture) {
    let mut layers = vec![vec![
        create_file("/bottom", "way at the bottom\n", 0o777),
        create_file("/overwriteme", "FIRST!\n", 0o777),
        create_dir("/addhere", 0o755),
        create_file("/addhere/file-0", "same\n", 0o755),
        create_dir("/onlyme", 0o755),
        create_file("/onlyme/bottom", "bye!\n", 0o777),
    ]];
    for i in 1..=127 {
        layers.push(vec![
            create_file("/overwriteme", format!("{i} WAS HERE!\n"), 0o777),
            create_file(&format!("/addhere/file-{i}"), "same\n", 0o755),
            remove_all("/onlyme"),
            create_dir("/onlyme", 0o755),
            create_file(&format!("/onlyme/file-{i}"), "only me!\n", 0o777),
        ]);
    }
    let chain = f.build_chain(&layers, Via::Specs).await;
    assert_eq!(chain.names.len(), 128);
    let top = chain.names.last().unwrap();

    let view = "/work/fullview";
    let specs = f.view(view, top).await;
    f.assert_spec_shape(&specs, "view", 128);
    f.check_mounted(view, &chain.flat, Via::Specs).await;
    f.check_mounted(view, &chain.flat, Via::Daemon).await;
    let m = f.mount(view, Via::Specs).await;
    let n = fs::read_dir(m.path.join("addhere")).map(|d| d.count());
    f.unmount(m).await;
    assert_eq!(
        n.ok(),
        Some(128),
        "the top sees one file from each of the 128 layers"
    );

    // An active layer on top of all 128: overlay with 128 lowerdirs.
    let active = "/work/on-top";
    let specs = f.prepare(active, top).await;
    f.assert_spec_shape(&specs, "active", 128);
    let m = f.mount(active, Via::Specs).await;
    let r = check_dir_equal(&chain.flat, &m.path).and_then(|_| {
        fs::write(m.path.join("onlyme/new"), "new\n").map_err(|e| format!("write on top: {e}"))
    });
    f.unmount(m).await;
    r.unwrap();
    let flat = f.scratch("flat");
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", chain.flat.display()))
        .arg(&flat)
        .output()
        .unwrap();
    assert!(out.status.success());
    // Same mode as in the layer: both created with 0666 under umask 0.
    fs::write(flat.join("onlyme/new"), "new\n").unwrap();
    f.check_mounted(active, &flat, Via::Daemon).await;
}
