//! Layer diffs across backends (host tier, root): Export → Apply round
//! trips between every pair of backends give identical trees, and a tree
//! of the machine's own files (/etc, part of /usr/share/doc, /usr/bin)
//! applies and exports intact, compared with GNU tar's extraction of the
//! same tar.

#[macro_use]
#[path = "common/mod.rs"]
mod common;
#[path = "common/difftools.rs"]
mod difftools;

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;

use common::*;
use difftools::*;

async fn apply_bytes(f: &Fixture, key: &str, data: &[u8]) -> u64 {
    let file = input_file(&f.scratch("in"), "in.tar", data);
    must(
        f.mgr
            .apply(key, zbus::zvariant::Fd::from(file.as_fd()))
            .await,
        format_args!("{}: Apply({key:?})", f.backend.name()),
    )
}

async fn export_bytes(f: &Fixture, key: &str) -> Vec<u8> {
    let (file, path) = output_file(&f.scratch("out"), "out.tar");
    must(
        f.mgr
            .export(key, zbus::zvariant::Fd::from(file.as_fd()))
            .await,
        format_args!("{}: Export({key:?})", f.backend.name()),
    );
    fs::read(path).unwrap()
}

async fn tree_of(f: &Fixture, key: &str) -> BTreeMap<String, String> {
    let m = f.mount(key, Via::Daemon).await;
    let t = full_tree(&m.path);
    f.unmount(m).await;
    t
}

async fn fixtures() -> Vec<Fixture> {
    let mut out = Vec::new();
    for b in Backend::ALL {
        if let Some(f) = Fixture::new(*b).await {
            out.push(f);
        }
    }
    out
}

fn base_tar() -> Vec<u8> {
    TarW::new()
        .dir("etc", attrs(0o755))
        .file("etc/a", b"a", attrs(0o644))
        .file("etc/cap", b"cap", attrs(0o755).xattr("user.k", b"v"))
        .dir("d", attrs(0o700).owner(3, 3))
        .file("d/x", &vec![9u8; 70_000], attrs(0o644))
        .hardlink("d/x2", "d/x")
        .dir("o", attrs(0o755))
        .file("o/p", b"p", attrs(0o644))
        .dir("o/q", attrs(0o755))
        .file("o/q/r", b"r", attrs(0o644))
        .symlink("l", "etc/a")
        .node("fifo", tar::EntryType::Fifo, 0, 0, attrs(0o600))
        .finish()
}

fn change_tar() -> Vec<u8> {
    TarW::new()
        .whiteout("etc/.wh.a")
        .dir("etc", attrs(0o755))
        .file("etc/new", b"new", attrs(0o640).owner(7, 8))
        .dir("o", attrs(0o711))
        .whiteout("o/.wh..wh..opq")
        .file("o/fresh", b"fresh", attrs(0o644))
        .file("l", b"now a file", attrs(0o644))
        .dir("d", attrs(0o700).owner(3, 3))
        .file("d/x", b"rewritten", attrs(0o644))
        .finish()
}

/// Each backend builds base + child from the same tars; each child's
/// Export, applied onto every other backend's base, gives that backend's
/// child tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundtrip_between_every_pair_of_backends() {
    let fs_ = fixtures().await;
    if fs_.len() < 2 {
        return;
    }
    let mut exports = Vec::new();
    let mut trees = Vec::new();
    for f in &fs_ {
        f.prepare("base-a", "").await;
        apply_bytes(f, "base-a", &base_tar()).await;
        f.commit("base", "base-a").await;
        f.prepare("child-a", "base").await;
        apply_bytes(f, "child-a", &change_tar()).await;
        trees.push(tree_of(f, "child-a").await);
        f.commit("child", "child-a").await;
        exports.push(export_bytes(f, "child").await);
    }
    for (i, fi) in fs_.iter().enumerate() {
        assert_trees_equal(
            &format!("{} vs {} child", fs_[0].backend.name(), fi.backend.name()),
            &trees[0],
            &trees[i],
        );
        for (j, fj) in fs_.iter().enumerate() {
            let key = format!("from-{}", fi.backend.name());
            fj.prepare(&key, "base").await;
            apply_bytes(fj, &key, &exports[i]).await;
            assert_trees_equal(
                &format!("{} → {}", fi.backend.name(), fj.backend.name()),
                &trees[j],
                &tree_of(fj, &key).await,
            );
        }
    }
    for f in fs_ {
        f.finish();
    }
}

/// A tar of the machine's own files made by GNU tar (PAX, xattrs
/// included) applies onto every backend exactly as `tar -x` extracts it,
/// and exports and re-applies intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_tree_applies_and_exports_intact() {
    let fs_ = fixtures().await;
    if fs_.is_empty() {
        return;
    }
    let work = fs_[0].scratch("real");
    let tar_path = work.join("real.tar");
    // The parents are listed (without recursion) so that both extractors
    // get their metadata from the tar rather than inventing it.
    let mut parts: Vec<String> = [
        "--no-recursion",
        "usr",
        "usr/share",
        "usr/share/doc",
        "usr/bin",
        "--recursion",
        "etc",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for d in ["usr/share/doc", "usr/bin"] {
        let mut names: Vec<String> = fs::read_dir(Path::new("/").join(d))
            .unwrap()
            .map(|e| format!("{d}/{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        names.sort();
        names.truncate(if d == "usr/bin" { 60 } else { 150 });
        parts.extend(names);
    }
    let st = Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "--format=posix",
            "-C",
            "/",
            "-cf",
        ])
        .arg(&tar_path)
        .args(&parts)
        .status()
        .unwrap();
    assert!(st.success(), "tar -c failed");
    let data = fs::read(&tar_path).unwrap();
    let reference = work.join("x");
    fs::create_dir(&reference).unwrap();
    let st = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(&tar_path)
        .arg("-C")
        .arg(&reference)
        .status()
        .unwrap();
    assert!(st.success(), "tar -x failed");
    // GNU tar 1.34 leaves the extraction time on a directory whose members
    // were separate operands (usr/bin, usr/share/doc): those two lines
    // compare without their mtime.
    let loose = ["usr/bin", "usr/share/doc"];
    let strip = |mut t: BTreeMap<String, String>| {
        for k in loose {
            if let Some(v) = t.get_mut(k) {
                let cut = v.find(" mtime ").unwrap_or(v.len());
                let rest = v[cut..]
                    .split_once(" xattrs ")
                    .map(|(_, r)| r.to_string())
                    .unwrap_or_default();
                *v = format!("{} xattrs {rest}", &v[..cut]);
            }
        }
        t
    };
    let want = strip(full_tree(&reference));
    assert!(want.len() > 200, "a real tree: {} entries", want.len());
    for f in &fs_ {
        f.prepare("real", "").await;
        let bytes = apply_bytes(f, "real", &data).await;
        assert!(bytes > 1 << 20, "{bytes}");
        assert_trees_equal(
            &format!("{} Apply vs tar -x", f.backend.name()),
            &want,
            &strip(tree_of(f, "real").await),
        );
        let e1 = export_bytes(f, "real").await;
        f.prepare("again", "").await;
        apply_bytes(f, "again", &e1).await;
        assert_trees_equal(
            &format!("{} Export → Apply", f.backend.name()),
            &want,
            &strip(tree_of(f, "again").await),
        );
        assert!(
            export_bytes(f, "again").await == e1,
            "{}: export not deterministic",
            f.backend.name()
        );
    }
    for f in fs_ {
        f.finish();
    }
}
