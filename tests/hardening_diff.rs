//! Hardening of the layer-diff paths (host tier, root, one overlay
//! fixture per test: these are parser-level checks): gzip trailers are
//! verified, a tar must end with its end-of-archive marker, sparse entries
//! and unrepresentable ids are refused, Export keeps symlink targets byte
//! for byte, a descriptor open the wrong way is the caller's error, and
//! ImportAufs never follows a symlink inside the tree it imports.

#[macro_use]
#[path = "common/mod.rs"]
mod common;
#[path = "common/difftools.rs"]
mod difftools;

use std::fs;
use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use common::*;
use difftools::*;

async fn fixture() -> Option<Fixture> {
    Fixture::new(Backend::OverlayXfs).await
}

/// A call's reply within a minute (a daemon that panicked never answers).
async fn within<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(60), call)
        .await
        .unwrap_or_else(|_| panic!("{what}: no reply within 60 s"))
}

async fn apply_bytes(f: &Fixture, key: &str, data: &[u8]) -> zbus::Result<u64> {
    let file = input_file(&f.scratch("in"), "in.tar", data);
    within(
        &format!("Apply({key:?})"),
        f.mgr.apply(key, zbus::zvariant::Fd::from(file.as_fd())),
    )
    .await
}

/// Apply of `data` into a fresh layer `key` fails with InvalidArgument
/// whose message holds every word of `words`; the layer is marked failed.
async fn refused(f: &Fixture, what: &str, key: &str, data: &[u8], words: &[&str]) {
    f.prepare(key, "").await;
    let e = match apply_bytes(f, key, data).await {
        Ok(n) => panic!("{what}: Apply accepted it ({n} bytes)"),
        Err(e) => e,
    };
    assert_eq!(
        err_name(&e).as_deref(),
        Some("org.layerd.Layerd1.Error.InvalidArgument"),
        "{what}: {}",
        describe(&e)
    );
    let msg = err_message(&e).unwrap_or_default();
    for w in words {
        assert!(msg.contains(w), "{what}: the message names {w:?}: {msg}");
    }
    let st = f.stat(key).await;
    assert!(
        st.labels.contains_key("layerd.io/apply-failed"),
        "{what}: the layer is marked failed: {:?}",
        st.labels
    );
    f.remove(key).await;
}

async fn accepted(f: &Fixture, what: &str, key: &str, data: &[u8]) {
    f.prepare(key, "").await;
    must(apply_bytes(f, key, data).await, what);
    f.remove(key).await;
}

fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in haystack")
}

/// Item 3: a gzip stream whose data or trailer (CRC-32, ISIZE) was changed
/// is refused, not applied with corrupt content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_trailer_is_verified() {
    let Some(f) = fixture().await else { return };
    let mut content = vec![0u8; 70_000];
    for (i, b) in content.iter_mut().enumerate() {
        *b = (i * 7 % 253) as u8;
    }
    content[30_000..30_016].copy_from_slice(b"MARKER-012345678");
    let tar = TarW::new()
        .file("f", &content, attrs(0o644))
        .file("g", b"after", attrs(0o644))
        .finish();
    // Stored deflate blocks: a changed byte decodes fine, only the CRC can
    // tell.
    let gz = gzip_stored(&tar);
    accepted(&f, "intact gzip", "gz/ok", &gz).await;
    // Two members (as concatenated .gz files are) still apply.
    let mut two = gzip(&tar[..20_480]);
    two.extend_from_slice(&gzip(&tar[20_480..]));
    accepted(&f, "two gzip members", "gz/two", &two).await;

    let mut flipped = gz.clone();
    let at = find(&flipped, b"MARKER-012345678");
    flipped[at + 3] ^= 0x20;
    refused(&f, "one flipped data byte", "gz/flip", &flipped, &["CRC"]).await;
    let n = gz.len();
    let mut bad_crc = gz.clone();
    bad_crc[n - 8] ^= 1;
    refused(&f, "wrong CRC", "gz/crc", &bad_crc, &["CRC"]).await;
    let mut bad_len = gz.clone();
    bad_len[n - 1] ^= 1;
    refused(&f, "wrong ISIZE", "gz/isize", &bad_len, &["ISIZE"]).await;
    refused(&f, "no trailer", "gz/cut", &gz[..n - 8], &["gzip"]).await;
}

/// Item 8: Export writes symlink targets byte for byte (`/` stayed `//`
/// before), long ones too, and they apply back unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_keeps_symlink_targets_exactly() {
    let Some(f) = fixture().await else { return };
    let long = format!("/a//b/./{}/", "c".repeat(150));
    let links: Vec<(&str, &str)> = vec![
        ("root", "/"),
        ("dslash", "a//b"),
        ("dot", "./x"),
        ("trail", "dir/"),
        ("tdot", "x/."),
        ("up", "../.."),
        ("long", &long),
    ];
    f.prepare("s/a", "").await;
    let m = f.mount("s/a", Via::Daemon).await;
    for (name, target) in &links {
        std::os::unix::fs::symlink(target, m.path.join(name)).unwrap();
    }
    f.unmount(m).await;
    f.commit("s", "s/a").await;
    let (out, path) = output_file(&f.scratch("out"), "out.tar");
    must(
        f.mgr
            .export("s", zbus::zvariant::Fd::from(out.as_fd()))
            .await,
        "Export",
    );
    drop(out);
    let data = fs::read(&path).unwrap();
    let mut ar = tar::Archive::new(&data[..]);
    let mut seen = 0;
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let target = e.link_name_bytes().map(|t| t.into_owned());
        if let Some((_, want)) = links.iter().find(|(n, _)| *n == name) {
            assert_eq!(
                target.as_deref(),
                Some(want.as_bytes()),
                "exported target of {name}"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, links.len(), "every symlink exported");
    f.prepare("s/b", "").await;
    must(apply_bytes(&f, "s/b", &data).await, "Apply the export");
    let m = f.mount("s/b", Via::Daemon).await;
    for (name, target) in &links {
        assert_eq!(
            fs::read_link(m.path.join(name)).unwrap().as_os_str(),
            std::ffi::OsStr::new(target),
            "round trip of {name}"
        );
    }
    f.unmount(m).await;
}

fn gnu_tar_of(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("tar")
        .args(args)
        .arg("-C")
        .arg(dir)
        .args(["-cf", "-", "d"])
        .output()
        .expect("run tar");
    assert!(
        out.status.success(),
        "tar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Item 9: sparse files (PAX 0.0, 0.1 and 1.0 as GNU tar writes them with
/// --format=posix, and old GNU type 'S') are refused naming the file, not
/// applied as `GNUSparseFile.<pid>/huge` holding the sparse map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparse_files_are_refused() {
    let Some(f) = fixture().await else { return };
    let src = f.scratch("sparse");
    fs::create_dir_all(src.join("d")).unwrap();
    let huge = fs::File::create(src.join("d/huge")).unwrap();
    huge.set_len(64 << 20).unwrap();
    huge.write_all_at(b"hello", 32 << 20).unwrap();
    drop(huge);
    for (what, args) in [
        ("PAX sparse 1.0", &["--sparse", "--format=posix"][..]),
        (
            "PAX sparse 0.1",
            &["--sparse", "--format=posix", "--sparse-version=0.1"][..],
        ),
        (
            "PAX sparse 0.0",
            &["--sparse", "--format=posix", "--sparse-version=0.0"][..],
        ),
        ("GNU sparse 'S'", &["--sparse", "--format=gnu"][..]),
    ] {
        let tar = gnu_tar_of(&src, args);
        let key = format!("sp/{}", what.replace([' ', '\''], "_"));
        refused(&f, what, &key, &tar, &["d/huge", "sparse"]).await;
    }
    // The same file without --sparse is an ordinary file.
    let tar = gnu_tar_of(&src, &["--format=posix"]);
    accepted(&f, "not sparse", "sp/plain", &tar).await;
}

/// Item 10: a tar that ends without its end-of-archive marker (cut at an
/// entry boundary, or after a lone zero block) is refused like empty input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tar_without_end_marker_is_refused() {
    let Some(f) = fixture().await else { return };
    let tar = TarW::new()
        .file("a", &vec![5u8; 3000], attrs(0o644))
        .file("b", b"b", attrs(0o644))
        .finish();
    let n = tar.len();
    assert!(tar[n - 1024..].iter().all(|b| *b == 0));
    accepted(&f, "whole tar", "e/ok", &tar).await;
    let mut padded = tar.clone();
    padded.resize(10240 * 2, 0);
    accepted(&f, "tar padded to its record size", "e/pad", &padded).await;
    refused(
        &f,
        "cut at an entry boundary",
        "e/cut",
        &tar[..n - 1024],
        &["end-of-archive"],
    )
    .await;
    refused(
        &f,
        "lone zero block",
        "e/lone",
        &tar[..n - 512],
        &["end-of-archive"],
    )
    .await;
    refused(
        &f,
        "cut before the last entry",
        "e/cut2",
        &tar[..512 + 3072],
        &["end-of-archive"],
    )
    .await;
    refused(
        &f,
        "gzip of a cut tar",
        "e/gz",
        &gzip(&tar[..n - 1024]),
        &["end-of-archive"],
    )
    .await;
    refused(&f, "empty", "e/empty", b"", &["empty"]).await;
}

fn pax_ids_tar(name: &str, recs: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions(recs.iter().map(|(k, v)| (*k, v.as_bytes())))
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(1);
    h.set_mtime(1_600_000_000);
    b.append_data(&mut h, name, &b"x"[..]).unwrap();
    b.into_inner().unwrap()
}

/// Item 11: ids that cannot be a file's owner are refused naming the entry:
/// 4294967295 is (uid_t)-1, which chown takes as "leave it" (the file
/// stayed root's), and PAX ids beyond 32 bits (or beyond 64, which the tar
/// parser dropped in favour of the header's 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrepresentable_ids_are_refused() {
    let Some(f) = fixture().await else { return };
    let max = u32::MAX as u64;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "uid 4294967295",
            TarW::new()
                .file("u", b"x", attrs(0o644).owner(max, 5))
                .finish(),
            "uid",
        ),
        (
            "gid 4294967295",
            TarW::new().dir("g", attrs(0o755).owner(5, max)).finish(),
            "gid",
        ),
        (
            "PAX uid 4294967296",
            pax_ids_tar("pu", &[("uid", "4294967296")]),
            "uid",
        ),
        (
            "PAX gid beyond 64 bits",
            pax_ids_tar("pg", &[("gid", "184467440737095516160")]),
            "gid",
        ),
        (
            "PAX uid not a number",
            pax_ids_tar("pn", &[("uid", "-1")]),
            "uid",
        ),
    ];
    for (i, (what, tar, word)) in cases.into_iter().enumerate() {
        let entry = ["u", "g", "pu", "pg", "pn"][i];
        refused(&f, what, &format!("id/{i}"), &tar, &[entry, word]).await;
    }
    // The largest ordinary id is fine.
    let tar = TarW::new()
        .file("ok", b"x", attrs(0o644).owner(max - 1, max - 1))
        .finish();
    f.prepare("id/ok", "").await;
    must(apply_bytes(&f, "id/ok", &tar).await, "Apply uid 4294967294");
    let m = f.mount("id/ok", Via::Daemon).await;
    let st = fs::symlink_metadata(m.path.join("ok")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((st.uid(), st.gid()), (u32::MAX - 1, u32::MAX - 1));
    f.unmount(m).await;
}

/// Item 12: a descriptor open the wrong way is the caller's error:
/// InvalidArgument for Export into a read-only descriptor and Apply from a
/// write-only one, as for a broken pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_descriptor_is_invalid_argument() {
    let Some(f) = fixture().await else { return };
    f.prepare("w/a", "").await;
    must(
        apply_bytes(
            &f,
            "w/a",
            &TarW::new().file("x", b"x", attrs(0o644)).finish(),
        )
        .await,
        "Apply",
    );
    f.commit("w", "w/a").await;
    let check = |what: &str, r: zbus::Result<u64>, word: &str| {
        let e = match r {
            Ok(n) => panic!("{what}: accepted ({n})"),
            Err(e) => e,
        };
        assert_eq!(
            err_name(&e).as_deref(),
            Some("org.layerd.Layerd1.Error.InvalidArgument"),
            "{what}: {}",
            describe(&e)
        );
        let msg = err_message(&e).unwrap_or_default();
        assert!(msg.contains(word), "{what}: {msg}");
    };
    let p = f.scratch("fd").join("ro");
    fs::write(&p, b"").unwrap();
    let ro = fs::File::open(&p).unwrap();
    let r = within(
        "Export",
        f.mgr.export("w", zbus::zvariant::Fd::from(ro.as_fd())),
    )
    .await;
    check("Export into a read-only file", r, "descriptor");
    let (rd, wr) = nix::unistd::pipe().unwrap();
    let r = within(
        "Export",
        f.mgr.export("w", zbus::zvariant::Fd::from(rd.as_fd())),
    )
    .await;
    check("Export into a pipe's read end", r, "descriptor");
    drop(rd);
    let r = within(
        "Export",
        f.mgr.export("w", zbus::zvariant::Fd::from(wr.as_fd())),
    )
    .await;
    check("Export into a pipe nobody reads", r, "descriptor");
    f.prepare("w/b", "").await;
    let wo = fs::OpenOptions::new().write(true).open(&p).unwrap();
    let r = within(
        "Apply",
        f.mgr.apply("w/b", zbus::zvariant::Fd::from(wo.as_fd())),
    )
    .await;
    check("Apply from a write-only file", r, "descriptor");
    // The layer was not touched: still an ordinary active layer.
    assert_eq!(f.stat("w/b").await.kind, "active");
}

/// Item 6: ImportAufs resolves everything beneath the given root without
/// following symlinks, and takes only absolute paths without `..`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_aufs_never_follows_symlinks() {
    let Some(f) = fixture().await else { return };
    let import = |root: String| {
        let mgr = f.mgr.clone();
        async move { within("ImportAufs", mgr.import_aufs(&root, "main", "x/")).await }
    };
    let refused_import = |what: &'static str, r: zbus::Result<Vec<String>>, word: &'static str| {
        let e = match r {
            Ok(n) => panic!("{what}: imported {n:?}"),
            Err(e) => e,
        };
        assert_eq!(
            err_name(&e).as_deref(),
            Some("org.layerd.Layerd1.Error.InvalidArgument"),
            "{what}: {}",
            describe(&e)
        );
        let msg = err_message(&e).unwrap_or_default();
        assert!(msg.contains(word), "{what}: {msg}");
    };
    // <root>/diff -> / with an empty layers/etc: the host's /etc.
    let a = f.scratch("aufs-a");
    fs::create_dir_all(a.join("layers")).unwrap();
    fs::write(a.join("layers/etc"), "").unwrap();
    std::os::unix::fs::symlink("/", a.join("diff")).unwrap();
    refused_import(
        "diff -> /",
        import(a.to_string_lossy().into_owned()).await,
        "symlink",
    );
    // diff/<id> -> /etc.
    let b = f.scratch("aufs-b");
    fs::create_dir_all(b.join("layers")).unwrap();
    fs::create_dir_all(b.join("diff")).unwrap();
    fs::write(b.join("layers/l1"), "").unwrap();
    std::os::unix::fs::symlink("/etc", b.join("diff/l1")).unwrap();
    refused_import(
        "diff/<id> -> /etc",
        import(b.to_string_lossy().into_owned()).await,
        "l1",
    );
    // layers/<id> -> a file outside the tree.
    let c = f.scratch("aufs-c");
    let elsewhere = f.scratch("elsewhere");
    fs::write(elsewhere.join("anc"), "").unwrap();
    fs::create_dir_all(c.join("diff/l2")).unwrap();
    fs::create_dir_all(c.join("layers")).unwrap();
    std::os::unix::fs::symlink(elsewhere.join("anc"), c.join("layers/l2")).unwrap();
    refused_import(
        "layers/<id> -> outside",
        import(c.to_string_lossy().into_owned()).await,
        "l2",
    );
    // layers -> a directory outside the tree.
    let d = f.scratch("aufs-d");
    let other = f.scratch("other-layers");
    fs::write(other.join("l3"), "").unwrap();
    fs::create_dir_all(d.join("diff/l3")).unwrap();
    std::os::unix::fs::symlink(&other, d.join("layers")).unwrap();
    refused_import(
        "layers -> outside",
        import(d.to_string_lossy().into_owned()).await,
        "symlink",
    );
    // Relative paths and `..`.
    refused_import("relative path", import("aufs".into()).await, "absolute");
    let dotdot = format!(
        "{}/../{}",
        a.display(),
        a.file_name().unwrap().to_string_lossy()
    );
    refused_import("path with ..", import(dotdot).await, "..");
    assert!(
        f.walk_names(&["name~=^x/"]).await.is_empty(),
        "nothing was imported"
    );
    // A real tree beside them still imports.
    let ok = f.scratch("aufs-ok");
    fs::create_dir_all(ok.join("layers")).unwrap();
    fs::create_dir_all(ok.join("diff/base/etc")).unwrap();
    fs::write(ok.join("layers/base"), "").unwrap();
    fs::write(ok.join("diff/base/etc/a"), "a").unwrap();
    let names = must(
        import(ok.to_string_lossy().into_owned()).await,
        "ImportAufs",
    );
    assert_eq!(names, vec!["x/base".to_string()]);
}
