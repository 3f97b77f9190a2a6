//! Layer diffs on every backend: Apply of OCI layer tars (metadata,
//! whiteouts, compression), Export (changes only, whiteouts, determinism),
//! the hostile-tar suite and broken inputs.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use crate::common::*;
use crate::difftools::*;

pub async fn apply_bytes(f: &Fixture, key: &str, data: &[u8]) -> zbus::Result<u64> {
    let file = input_file(&f.scratch("in"), "in.tar", data);
    f.mgr
        .apply(key, zbus::zvariant::Fd::from(file.as_fd()))
        .await
}

pub async fn export_bytes(f: &Fixture, key: &str) -> Vec<u8> {
    let (file, path) = output_file(&f.scratch("out"), "out.tar");
    let n = must(
        f.mgr
            .export(key, zbus::zvariant::Fd::from(file.as_fd()))
            .await,
        format_args!("Export({key:?})"),
    );
    drop(file);
    let data = fs::read(&path).unwrap();
    assert_eq!(n, data.len() as u64, "Export returns the bytes it wrote");
    data
}

async fn tree_of(f: &Fixture, key: &str) -> BTreeMap<String, String> {
    let m = f.mount(key, Via::Daemon).await;
    let t = full_tree(&m.path);
    f.unmount(m).await;
    t
}

/// A committed layer's tree, through a view.
async fn committed_tree(f: &Fixture, name: &str) -> BTreeMap<String, String> {
    let v = format!("{name}/v");
    f.view(&v, name).await;
    let t = tree_of(f, &v).await;
    f.remove(&v).await;
    t
}

/// A tar using every entry type and attribute Apply keeps.
pub fn rich_tar() -> Vec<u8> {
    let long = format!("deep/{}/{}", "d".repeat(120), "f".repeat(200));
    TarW::new()
        .dir("etc", attrs(0o750).owner(0, 4))
        .file(
            "etc/hosts",
            b"127.0.0.1 localhost\n",
            attrs(0o644).mtime(1_500_000_000),
        )
        .file(
            "etc/secret",
            b"s",
            attrs(0o600).owner(1000, 1000).xattr("user.note", b"kept"),
        )
        .dir("bin", attrs(0o755))
        .file(
            "bin/ping",
            &vec![7u8; 100_000],
            attrs(0o4755).xattr(
                "security.capability",
                // VFS_CAP_REVISION_2, cap_net_raw permitted+effective
                &[0, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ),
        )
        .hardlink("bin/ping2", "bin/ping")
        .symlink("bin/sh", "/bin/busybox")
        .symlink("etc/rel", "../bin/ping")
        .dir("dev", attrs(0o755))
        .node("dev/null", tar::EntryType::Char, 1, 3, attrs(0o666))
        .node(
            "dev/loop9",
            tar::EntryType::Block,
            7,
            9,
            attrs(0o660).owner(0, 6),
        )
        .node("dev/fifo", tar::EntryType::Fifo, 0, 0, attrs(0o644))
        .dir("tmp", attrs(0o1777))
        .file(&long, b"long name", attrs(0o644))
        .file("implicit/parent/file", b"x", attrs(0o644))
        .finish()
}

/// Apply into a parentless layer keeps every entry type and attribute;
/// the same tar compressed with gzip and zstd gives the same tree.
pub async fn apply_keeps_metadata(f: &mut Fixture) {
    let tar = rich_tar();
    f.prepare("a/plain", "").await;
    let n = must(apply_bytes(f, "a/plain", &tar).await, "Apply plain");
    assert_eq!(
        n,
        20 + 1 + 100_000 + 9 + 1,
        "Apply returns the content bytes written"
    );
    let m = f.mount("a/plain", Via::Daemon).await;
    let p = |s: &str| m.path.join(s);
    let md = fs::symlink_metadata(p("etc")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.gid()), (0o750, 4));
    assert_eq!(fs::read(p("etc/hosts")).unwrap(), b"127.0.0.1 localhost\n");
    assert_eq!(
        fs::symlink_metadata(p("etc/hosts")).unwrap().mtime(),
        1_500_000_000
    );
    let s = fs::symlink_metadata(p("etc/secret")).unwrap();
    assert_eq!((s.mode() & 0o7777, s.uid(), s.gid()), (0o600, 1000, 1000));
    let ping = fs::symlink_metadata(p("bin/ping")).unwrap();
    assert_eq!(
        ping.mode() & 0o7777,
        0o4755,
        "set-uid survives (chmod after chown)"
    );
    assert_eq!(ping.nlink(), 2, "bin/ping2 is a hard link");
    assert_eq!(
        fs::read_link(p("bin/sh")).unwrap(),
        PathBuf::from("/bin/busybox")
    );
    let null = fs::symlink_metadata(p("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert!(fs::symlink_metadata(p("dev/loop9"))
        .unwrap()
        .file_type()
        .is_block_device());
    assert!(fs::symlink_metadata(p("dev/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        fs::symlink_metadata(p("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    let t = full_tree(&m.path);
    assert!(
        t["etc/secret"].contains("user.note=[107, 101, 112, 116]"),
        "{}",
        t["etc/secret"]
    );
    assert!(
        t["bin/ping"].contains("security.capability="),
        "{}",
        t["bin/ping"]
    );
    assert!(t.keys().any(|k| k.ends_with(&"f".repeat(200))));
    f.unmount(m).await;

    for (key, data) in [("a/gz", gzip(&tar)), ("a/zst", zstd(&tar))] {
        f.prepare(key, "").await;
        must(
            apply_bytes(f, key, &data).await,
            format_args!("Apply {key}"),
        );
        assert_trees_equal(key, &t, &tree_of(f, key).await);
    }
}

/// Export of a parentless layer, applied elsewhere, gives the same tree
/// (mtimes, xattrs, hard links included); exporting twice gives the same
/// bytes.
pub async fn export_roundtrip_is_exact(f: &mut Fixture) {
    f.prepare("r/src", "").await;
    must(apply_bytes(f, "r/src", &rich_tar()).await, "Apply");
    let src = tree_of(f, "r/src").await;
    let e1 = export_bytes(f, "r/src").await;
    let e2 = export_bytes(f, "r/src").await;
    assert!(e1 == e2, "two exports of one tree differ");
    f.prepare("r/dst", "").await;
    must(apply_bytes(f, "r/dst", &e1).await, "Apply the export");
    assert_trees_equal("round trip", &src, &tree_of(f, "r/dst").await);
    // A committed layer exports the same bytes as while active.
    f.commit("r/committed", "r/src").await;
    assert!(
        export_bytes(f, "r/committed").await == e1,
        "committed export differs"
    );
    // A view has no changes of its own: an empty tar.
    f.view("r/view", "r/committed").await;
    let v = export_bytes(f, "r/view").await;
    assert!(tar_names(&v).is_empty(), "{:?}", tar_names(&v));
}

fn base_tar() -> Vec<u8> {
    TarW::new()
        .file("a", b"a", attrs(0o644))
        .dir("d", attrs(0o755))
        .file("d/x", b"x", attrs(0o644))
        .file("d/y", b"y", attrs(0o644))
        .dir("o", attrs(0o700))
        .file("o/p", b"p", attrs(0o644))
        .dir("o/q", attrs(0o755))
        .file("o/q/r", b"r", attrs(0o644))
        .finish()
}

/// Whiteouts in a tar delete lower files (`.wh.NAME`) and hide a lower
/// directory's contents (`.wh..wh..opq`) on every backend; the child's
/// Export carries the deletions, and applied onto the same parent gives
/// the same tree.
pub async fn whiteouts(f: &mut Fixture) {
    f.prepare("w/base-a", "").await;
    must(apply_bytes(f, "w/base-a", &base_tar()).await, "Apply base");
    f.commit("w/base", "w/base-a").await;
    f.prepare("w/child", "w/base").await;
    let change = TarW::new()
        .whiteout(".wh.a")
        .dir("d", attrs(0o755))
        .whiteout("d/.wh.x")
        .dir("o", attrs(0o700))
        .whiteout("o/.wh..wh..opq")
        .file("o/new", b"new", attrs(0o644))
        .whiteout(".wh..wh.plnk")
        .finish();
    must(apply_bytes(f, "w/child", &change).await, "Apply whiteouts");
    let t = tree_of(f, "w/child").await;
    let names: Vec<&str> = t.keys().map(String::as_str).collect();
    assert_eq!(names, ["d", "d/y", "o", "o/new"], "{t:#?}");
    if f.backend.is_overlay() {
        // overlay keeps its native form in the upper directory.
        let layer_dirs: Vec<PathBuf> = fs::read_dir(f.pool_path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("o").join("new").exists())
            .collect();
        assert_eq!(layer_dirs.len(), 1, "{layer_dirs:?}");
        let wh = fs::symlink_metadata(layer_dirs[0].join("a")).unwrap();
        assert!(
            wh.file_type().is_char_device() && wh.rdev() == 0,
            "a is a 0/0 whiteout"
        );
    }
    let exported = export_bytes(f, "w/child").await;
    let names = tar_names(&exported);
    assert!(names.iter().any(|n| n == ".wh.a"), "{names:?}");
    assert!(names.iter().any(|n| n == "d/.wh.x"), "{names:?}");
    assert!(
        names
            .iter()
            .any(|n| n == "o/.wh..wh..opq" || n == "o/.wh.p"),
        "{names:?}"
    );
    f.prepare("w/again", "w/base").await;
    must(
        apply_bytes(f, "w/again", &exported).await,
        "Apply the export",
    );
    assert_trees_equal("whiteout round trip", &t, &tree_of(f, "w/again").await);
}

/// Changes made through a mount (edit, chmod, chown, delete, rename,
/// new symlink) are what Export writes; they re-apply to the same tree.
pub async fn export_mounted_changes(f: &mut Fixture) {
    f.prepare("c/base-a", "").await;
    must(apply_bytes(f, "c/base-a", &base_tar()).await, "Apply base");
    f.commit("c/base", "c/base-a").await;
    let ops = vec![
        create_file("/a", "changed", 0o644),
        chmod("/d/y", 0o600),
        crate::common::chown("/o/p", 5, 5),
        remove_all("/o/q"),
        rename("/d/x", "/d/x2"),
        symlink_op("../a", "/d/link"),
    ];
    let child = f.create_layer("c/base", &ops, Via::Daemon).await;
    let want = committed_tree(f, &child).await;
    let exported = export_bytes(f, &child).await;
    let names = tar_names(&exported);
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with("d/y") && n.contains("d/x2")),
        "{names:?}"
    );
    assert!(names.iter().any(|n| n == "o/.wh.q"), "{names:?}");
    assert!(names.iter().any(|n| n == "d/.wh.x"), "{names:?}");
    assert!(
        !names.iter().any(|n| n == "o/p/"),
        "unchanged lower files stay out: {names:?}"
    );
    f.prepare("c/again", "c/base").await;
    must(
        apply_bytes(f, "c/again", &exported).await,
        "Apply the export",
    );
    assert_trees_equal("mounted changes", &want, &tree_of(f, "c/again").await);
}

/// Apply only goes to active layers.
pub async fn apply_needs_active(f: &mut Fixture) {
    f.prepare("n/a", "").await;
    f.commit("n/c", "n/a").await;
    f.view("n/v", "n/c").await;
    for key in ["n/c", "n/v"] {
        let e = apply_bytes(f, key, &base_tar()).await.unwrap_err();
        assert_eq!(
            err_name(&e).as_deref(),
            Some("org.layerd.Layerd1.Error.FailedPrecondition"),
            "{key}: {}",
            describe(&e)
        );
    }
    let e = apply_bytes(f, "n/none", &base_tar()).await.unwrap_err();
    assert_eq!(
        err_name(&e).as_deref(),
        Some("org.layerd.Layerd1.Error.NotFound")
    );
}

/// A layer an Apply is writing into cannot be committed, removed or
/// applied to by anyone else until the Apply ends (Busy); then it can.
pub async fn apply_holds_the_layer(f: &mut Fixture) {
    use std::io::Write;
    f.prepare("h/a", "").await;
    let mut t = TarW::new();
    t.file("big", &vec![7u8; 4 << 20], attrs(0o644));
    let data = t.finish();
    let (rd, wr) = nix::unistd::pipe().unwrap();
    let mut wr = fs::File::from(wr);
    let mgr = f.mgr.clone();
    let apply = tokio::spawn(async move {
        let r = mgr.apply("h/a", zbus::zvariant::Fd::from(rd.as_fd())).await;
        drop(rd);
        r
    });
    // Far more than a pipe holds: this returns only once the daemon has
    // read most of it, so its Apply is under way.
    let half = data.len() / 2;
    let head = data[..half].to_vec();
    let mut wr = tokio::task::spawn_blocking(move || {
        wr.write_all(&head).unwrap();
        wr
    })
    .await
    .unwrap();
    let busy = |r: zbus::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(
            err_name(&e).as_deref(),
            Some("org.layerd.Layerd1.Error.Busy"),
            "{what}: {}",
            describe(&e)
        );
    };
    busy(
        f.mgr.commit("h/c", "h/a", HashMap::new()).await,
        "Commit during Apply",
    );
    busy(f.mgr.remove("h/a").await, "Remove during Apply");
    busy(
        apply_bytes(f, "h/a", &base_tar()).await.map(|_| ()),
        "a second Apply",
    );
    let rest = data[half..].to_vec();
    tokio::task::spawn_blocking(move || {
        wr.write_all(&rest).unwrap();
    })
    .await
    .unwrap();
    let n = must(apply.await.unwrap(), "Apply after the others were refused");
    assert_eq!(n, 4 << 20);
    f.commit("h/c", "h/a").await;
    let st = must(f.mgr.stat("h/c").await, "Stat");
    assert_eq!(st.2, "committed");
}

/// The hostile-tar suite: every escape is InvalidArgument naming the
/// entry, the canary outside the layer is untouched, the layer carries
/// the failure label and is removable.
pub async fn hostile_tars(f: &mut Fixture) {
    let canary = f.dir().join("canary");
    fs::create_dir_all(&canary).unwrap();
    fs::write(canary.join("c"), "canary").unwrap();
    let c = canary.to_string_lossy().into_owned();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "absolute",
            TarW::new()
                .raw(tar::EntryType::Regular, &format!("{c}/c"), None, b"pwned")
                .finish(),
            "c",
        ),
        (
            "dotdot",
            TarW::new()
                .raw(tar::EntryType::Regular, "a/../../../c", None, b"pwned")
                .finish(),
            "a/../../../c",
        ),
        (
            "symlink then write through it",
            TarW::new()
                .symlink("esc", &c)
                .raw(tar::EntryType::Regular, "esc/c", None, b"pwned")
                .finish(),
            "esc/c",
        ),
        (
            "relative symlink dir escape",
            TarW::new()
                .dir("x", attrs(0o755))
                .symlink("x/up", "../../../../../../../../..")
                .raw(
                    tar::EntryType::Regular,
                    &format!("x/up{c}/c"),
                    None,
                    b"pwned",
                )
                .finish(),
            "x/up",
        ),
        (
            "symlink to a dir, then a dir through it",
            TarW::new()
                .symlink("l", &c)
                .raw(tar::EntryType::Directory, "l/sub/", None, b"")
                .finish(),
            "l/sub",
        ),
        (
            "hard link to an absolute path",
            TarW::new()
                .raw(tar::EntryType::Link, "h", Some(&format!("{c}/c")), b"")
                .finish(),
            "h",
        ),
        (
            "hard link out with ..",
            TarW::new()
                .raw(
                    tar::EntryType::Link,
                    "h",
                    Some("../../../../../../../../etc/passwd"),
                    b"",
                )
                .finish(),
            "h",
        ),
        (
            "hard link through a symlink",
            TarW::new()
                .symlink("s", &c)
                .raw(tar::EntryType::Link, "h", Some("s/c"), b"")
                .finish(),
            "h",
        ),
        (
            "whiteout through a symlink",
            TarW::new().symlink("s", &c).whiteout("s/.wh.c").finish(),
            "s/.wh.c",
        ),
        (
            "name longer than NAME_MAX",
            TarW::new()
                .file(&"n".repeat(300), b"x", attrs(0o644))
                .finish(),
            "nnnn",
        ),
    ];
    for (i, (what, tar, entry)) in cases.into_iter().enumerate() {
        let key = format!("h/{i}");
        f.prepare(&key, "").await;
        let e = apply_bytes(f, &key, &tar).await.unwrap_err();
        assert_eq!(
            err_name(&e).as_deref(),
            Some("org.layerd.Layerd1.Error.InvalidArgument"),
            "{what}: {}",
            describe(&e)
        );
        let msg = err_message(&e).unwrap_or_default();
        assert!(
            msg.contains(entry),
            "{what}: the message names the entry {entry:?}: {msg}"
        );
        assert_eq!(
            fs::read_to_string(canary.join("c")).unwrap(),
            "canary",
            "{what}"
        );
        let names: Vec<_> = fs::read_dir(&canary)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{what}: {names:?}");
        let st = f.stat(&key).await;
        assert!(
            st.labels.contains_key("layerd.io/apply-failed"),
            "{what}: labels {:?}",
            st.labels
        );
        f.remove(&key).await;
    }
    // A device node then a file of the same name: the node is replaced,
    // nothing is written through it.
    f.prepare("h/dev", "").await;
    let tar = TarW::new()
        .node("d", tar::EntryType::Char, 1, 3, attrs(0o666))
        .file("d", b"data", attrs(0o644))
        .finish();
    must(apply_bytes(f, "h/dev", &tar).await, "Apply node then file");
    let m = f.mount("h/dev", Via::Daemon).await;
    assert_eq!(fs::read(m.path.join("d")).unwrap(), b"data");
    f.unmount(m).await;
    // Symlinks may point anywhere: they are stored, never followed.
    f.prepare("h/sym", "").await;
    let tar = TarW::new()
        .symlink("etc", "/etc")
        .symlink("up", "../../..")
        .finish();
    must(apply_bytes(f, "h/sym", &tar).await, "Apply plain symlinks");
}

/// Garbage, truncated and wrongly compressed input: InvalidArgument with a
/// clear message; the layer is marked and removable; nothing else changes.
pub async fn broken_inputs(f: &mut Fixture) {
    let good = TarW::new()
        .file("big", &vec![1u8; 300_000], attrs(0o644))
        .file("after", b"x", attrs(0o644))
        .finish();
    let mut garbage = vec![0u8; 4096];
    for (i, b) in garbage.iter_mut().enumerate() {
        *b = (i * 131 % 251) as u8 + 1;
    }
    let gz = gzip(&good);
    let zs = zstd(&good);
    let mut bad_gz = vec![0x1f, 0x8b, 8, 0];
    bad_gz.extend_from_slice(&garbage);
    let mut bad_zs = vec![0x28, 0xb5, 0x2f, 0xfd];
    bad_zs.extend_from_slice(&garbage);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", garbage.clone(), "broken"),
        ("empty", Vec::new(), "empty"),
        ("truncated tar", good[..200_000].to_vec(), "truncated"),
        (
            "truncated header",
            good[..good.len() - 1024 - 700].to_vec(),
            "",
        ),
        ("truncated gzip", gz[..gz.len() / 2].to_vec(), ""),
        ("truncated zstd", zs[..zs.len() / 2].to_vec(), ""),
        ("gzip magic, garbage", bad_gz, ""),
        ("zstd magic, garbage", bad_zs, ""),
        ("bzip2", b"BZh91AY&SY".to_vec(), "bzip2"),
    ];
    f.prepare("b/other", "").await;
    must(
        apply_bytes(f, "b/other", &base_tar()).await,
        "Apply a neighbour",
    );
    let other = tree_of(f, "b/other").await;
    for (i, (what, data, word)) in cases.into_iter().enumerate() {
        let key = format!("b/{i}");
        f.prepare(&key, "").await;
        let e = apply_bytes(f, &key, &data).await.unwrap_err();
        assert_eq!(
            err_name(&e).as_deref(),
            Some("org.layerd.Layerd1.Error.InvalidArgument"),
            "{what}: {}",
            describe(&e)
        );
        let msg = err_message(&e).unwrap_or_default();
        assert!(msg.contains(word), "{what}: {msg}");
        let st = f.stat(&key).await;
        assert!(st.labels.contains_key("layerd.io/apply-failed"), "{what}");
        f.remove(&key).await;
    }
    assert_trees_equal("neighbour layer", &other, &tree_of(f, "b/other").await);
}

/// A legacy Docker aufs tree laid out as moby's aufs driver does
/// (`layers/<id>` ancestry nearest first, `diff/<id>` with `.wh.`
/// whiteouts and aufs internals) imports as a chain of committed layers
/// whose top shows the union.
pub async fn aufs_import(f: &mut Fixture) {
    let root = f.scratch("aufs");
    let (l1, l2, l3) = (
        "1f0e3dad99908345f7439f8ffabdffc4".repeat(2),
        "2b4c6b0e8b0a4a8f9e1c3d5f7a9b1c3d".repeat(2),
        "3c59dc048e8850243be8079a5c74d079".repeat(2) + "-init",
    );
    for d in ["layers", "diff", "mnt"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("layers").join(&l1), "").unwrap();
    fs::write(root.join("layers").join(&l2), format!("{l1}\n")).unwrap();
    fs::write(root.join("layers").join(&l3), format!("{l2}\n{l1}\n")).unwrap();
    let d1 = root.join("diff").join(&l1);
    let d2 = root.join("diff").join(&l2);
    let d3 = root.join("diff").join(&l3);
    apply(
        &d1,
        &[
            create_dir("/etc", 0o755),
            create_file("/etc/a", "a", 0o644),
            create_file("/etc/b", "b", 0o600),
            create_dir("/d", 0o755),
            create_file("/d/x", "x", 0o644),
            create_dir("/o", 0o700),
            create_file("/o/p", "p", 0o644),
            create_file("/.wh..wh.aufs", "", 0o600),
            create_dir("/.wh..wh.plnk", 0o700),
            create_file("/.wh..wh.plnk/1.2", "", 0o600),
            create_dir("/.wh..wh.orph", 0o700),
        ],
    )
    .unwrap();
    apply(
        &d2,
        &[
            create_dir("/etc", 0o755),
            create_file("/etc/.wh.a", "", 0o444),
            create_file("/etc/c", "c", 0o644),
            create_dir("/o", 0o700),
            create_file("/o/.wh..wh..opq", "", 0o444),
            create_file("/o/new", "new", 0o644),
            create_dir("/.wh..wh.plnk", 0o700),
        ],
    )
    .unwrap();
    apply(
        &d3,
        &[
            create_dir("/d", 0o755),
            create_file("/d/.wh.x", "", 0o444),
            create_file("/top", "top", 0o644),
        ],
    )
    .unwrap();
    let names = must(
        f.mgr
            .import_aufs(&root.to_string_lossy(), f.pool_name(), "aufs/")
            .await,
        "ImportAufs",
    );
    let want: Vec<String> = [&l1, &l2, &l3]
        .iter()
        .map(|i| format!("aufs/{i}"))
        .collect();
    assert_eq!(names, want);
    let top = f.stat(&want[2]).await;
    assert_eq!(top.kind, "committed");
    assert_eq!(top.parent, want[1]);
    assert_eq!(top.labels.get("layerd.io/aufs-id"), Some(&l3));
    assert_eq!(f.stat(&want[1]).await.parent, want[0]);
    let t = committed_tree(f, &want[2]).await;
    let got: Vec<&str> = t.keys().map(String::as_str).collect();
    assert_eq!(
        got,
        ["d", "etc", "etc/b", "etc/c", "o", "o/new", "top"],
        "{t:#?}"
    );
    // Again with the same prefix: the names are taken, nothing changes.
    let e = f
        .mgr
        .import_aufs(&root.to_string_lossy(), f.pool_name(), "aufs/")
        .await
        .unwrap_err();
    assert_eq!(
        err_name(&e).as_deref(),
        Some("org.layerd.Layerd1.Error.AlreadyExists"),
        "{}",
        describe(&e)
    );
    // An inconsistent tree is refused before anything is written.
    fs::write(root.join("layers").join(&l3), "nosuchparent\n").unwrap();
    let e = f
        .mgr
        .import_aufs(&root.to_string_lossy(), f.pool_name(), "other/")
        .await
        .unwrap_err();
    assert_eq!(
        err_name(&e).as_deref(),
        Some("org.layerd.Layerd1.Error.InvalidArgument"),
        "{}",
        describe(&e)
    );
    assert!(f.walk_names(&["name~=^other/"]).await.is_empty());
}
