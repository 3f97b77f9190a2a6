//! Issue 16, item 1 (the CVE-2021-41091 class): layer contents are never
//! reachable by the host's unprivileged users. A layer holds a setuid-root
//! copy of `id` and a 0666 block device node (what containers need, so no
//! nosuid/nodev): `nobody` can neither run the one nor open the other
//! through any path the daemon creates (the pool's layer directories, the
//! Mount() path under run_dir, a daemon overlay mount, a pinned mount),
//! while root still sees the setuid bit and the device node. The daemon's
//! directories on those paths are root-only (0700), and ones left 0755 on
//! disk by an older version are tightened at start.
//!
//! The harness's fixture directory is 0755 under /tmp: what blocks access
//! must be the daemon's own directories inside it.
//!
//! Host tier: needs root (loop devices, mount). Each test takes seconds.

#[macro_use]
#[allow(unused_macros)]
#[path = "common/mod.rs"]
mod common;

use std::fs;
use std::io::{Seek, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

const NOBODY: u32 = 65534;

/// An OCI layer tar: `bin/id`, a setuid-root copy of /usr/bin/id, and
/// `dev/blk`, a 0666 block device 7:0 (a loop device).
fn hostile_tar(dir: &Path) -> fs::File {
    let path = dir.join("hostile.tar");
    let mut b = tar::Builder::new(fs::File::create(&path).expect("create tar"));
    let dir_entry = |b: &mut tar::Builder<fs::File>, name: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(0);
        b.append_data(&mut h, name, std::io::empty()).expect("dir");
    };
    dir_entry(&mut b, "bin/");
    dir_entry(&mut b, "dev/");
    let id = fs::read("/usr/bin/id").expect("read /usr/bin/id");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o4755);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_size(id.len() as u64);
    b.append_data(&mut h, "bin/id", id.as_slice())
        .expect("bin/id");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Block);
    h.set_mode(0o666);
    h.set_uid(0);
    h.set_gid(0);
    h.set_device_major(7).unwrap();
    h.set_device_minor(0).unwrap();
    h.set_mtime(1_600_000_000);
    h.set_size(0);
    b.append_data(&mut h, "dev/blk", std::io::empty())
        .expect("dev/blk");
    let mut f = b.into_inner().expect("finish tar");
    f.flush().unwrap();
    drop(f);
    let mut f = fs::File::open(&path).expect("open tar");
    f.rewind().unwrap();
    f
}

/// Prepares `key` (on `parent`) and applies the hostile tar into it.
async fn prepare_hostile(f: &Fixture, key: &str, parent: &str) {
    f.prepare(key, parent).await;
    let tar = hostile_tar(&f.scratch("tar"));
    must(
        f.mgr
            .apply(key, zbus::zvariant::Fd::from(tar.as_fd()))
            .await,
        format_args!("Apply({key:?})"),
    );
}

/// `nobody` runs `bin/id` and opens `dev/blk` under `root`: both must fail
/// with EACCES. Root still sees the setuid bit and the device node there.
fn check_tree(what: &str, root: &Path) {
    let id = root.join("bin/id");
    let blk = root.join("dev/blk");
    // Root (a container) keeps what the layer holds.
    let md = fs::metadata(&id).unwrap_or_else(|e| panic!("{what}: stat {}: {e}", id.display()));
    assert_eq!(md.mode() & 0o7777, 0o4755, "{what}: {} mode", id.display());
    assert_eq!(md.uid(), 0, "{what}: {} owner", id.display());
    let md = fs::symlink_metadata(&blk)
        .unwrap_or_else(|e| panic!("{what}: stat {}: {e}", blk.display()));
    assert!(
        md.file_type().is_block_device(),
        "{what}: {} type",
        blk.display()
    );
    assert_eq!(
        md.rdev(),
        nix::sys::stat::makedev(7, 0),
        "{what}: {}",
        blk.display()
    );
    assert_eq!(md.mode() & 0o7777, 0o666, "{what}: {} mode", blk.display());
    let out = Command::new(&id)
        .output()
        .expect("root runs the layer's id");
    assert!(
        out.status.success(),
        "{what}: root cannot run {}",
        id.display()
    );

    // nobody: the setuid binary does not run.
    match Command::new(&id).uid(NOBODY).gid(NOBODY).output() {
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {}
        Err(e) => panic!("{what}: nobody running {}: {e}, not EACCES", id.display()),
        Ok(out) => panic!(
            "{what}: nobody ran the layer's setuid {}: {}{}",
            id.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
    // nobody: neither the device node nor the file opens.
    for p in [&blk, &id] {
        let out = Command::new("head")
            .args(["-c", "1", "--"])
            .arg(p)
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .expect("run head as nobody");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Permission denied"),
            "{what}: nobody opened {} ({}): {err}",
            p.display(),
            out.status
        );
    }
}

/// The mode bits of `p`.
fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .mode()
        & 0o7777
}

/// The daemon's directories on the way to layer contents: state_dir,
/// run_dir, run_dir/m and the pool's root.
fn daemon_dirs(f: &Fixture) -> Vec<PathBuf> {
    vec![
        f.daemon().config.state_dir.clone(),
        f.run_dir(),
        f.run_dir().join("m"),
        f.pool_path(),
    ]
}

fn check_dirs_private(f: &Fixture) {
    for d in daemon_dirs(f) {
        assert_eq!(mode(&d), 0o700, "{} must be root-only", d.display());
    }
}

/// The layer id a Mount() path names (`<run_dir>/m/<id>`).
fn mount_id(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

async fn layer_contents_closed_to_nobody(backend: Backend) {
    let Some(f) = Fixture::new(backend).await else {
        return;
    };
    let name = backend.name();
    // A parentless active layer: its directory in the pool, its Mount().
    prepare_hostile(&f, "a", "").await;
    let m = f.mount("a", Via::Daemon).await;
    assert!(m.path.starts_with(f.run_dir()), "{m:?}");
    let id = mount_id(&m.path);
    check_tree(&format!("{name}: Mount() path"), &m.path);
    check_tree(
        &format!("{name}: layer directory"),
        &f.pool_path().join(&id),
    );
    f.unmount(m).await;

    // Committed, then a child of it: the child's own Apply on top of the
    // parent's files (overlay: a daemon overlay mount with a lowerdir).
    f.commit("c", "a").await;
    check_tree(
        &format!("{name}: committed layer"),
        &f.pool_path().join(&id),
    );
    prepare_hostile(&f, "child", "c").await;
    let m = f.mount("child", Via::Daemon).await;
    check_tree(&format!("{name}: child's Mount() path"), &m.path);
    let cid = mount_id(&m.path);
    check_tree(
        &format!("{name}: child's layer directory"),
        &f.pool_path().join(&cid),
    );
    // A view's mount.
    f.view("v", "c").await;
    let v = f.mount("v", Via::Daemon).await;
    check_tree(&format!("{name}: a view's Mount() path"), &v.path);
    check_dirs_private(&f);
    f.unmount(v).await;
    f.unmount(m).await;
    f.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_layer_contents_closed_to_nobody() {
    layer_contents_closed_to_nobody(Backend::Btrfs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_layer_contents_closed_to_nobody() {
    layer_contents_closed_to_nobody(Backend::OverlayXfs).await;
}

/// A chain too deep for one page of mount options gets a bind of a pinned
/// daemon mount: nobody cannot reach the layer through the pin either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_pinned_mount_closed_to_nobody() {
    let Some(f) = Fixture::new(Backend::OverlayXfs).await else {
        return;
    };
    prepare_hostile(&f, "k/0", "").await;
    f.commit("c/0", "k/0").await;
    let mut parent = "c/0".to_string();
    for i in 1..400 {
        let key = format!("k/{i}");
        let specs = f.prepare(&key, &parent).await;
        if specs[0].0 == "bind" {
            let pin = PathBuf::from(&specs[0].1);
            assert!(
                pin.starts_with(f.run_dir().join("m")),
                "the pin is a daemon mount under run_dir/m: {specs:?}"
            );
            check_tree("overlay: pinned mount", &pin);
            check_dirs_private(&f);
            f.finish();
            return;
        }
        let name = format!("c/{i}");
        f.commit(&name, &key).await;
        parent = name;
    }
    panic!("no chain up to 400 layers got a pinned mount");
}

/// Directories an older layerd left 0755 (state_dir, run_dir, run_dir/m,
/// the pool root) are made root-only at start, and the log says so.
async fn loose_dirs_tightened_at_start(backend: Backend) {
    let Some(mut f) = Fixture::new(backend).await else {
        return;
    };
    prepare_hostile(&f, "a", "").await;
    f.commit("c", "a").await;
    let (st, _) = f.daemon_mut().stop().expect("the daemon ran");
    assert!(st.success(), "stop: {st}");
    for d in daemon_dirs(&f) {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    f.start().await;
    check_dirs_private(&f);
    let log = f.daemon().log_text();
    for d in daemon_dirs(&f) {
        assert!(
            log.lines()
                .any(|l| l.contains("root-only") && l.contains(&*d.to_string_lossy())),
            "the log names the tightened {}:\n{log}",
            d.display()
        );
    }
    f.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_loose_dirs_tightened_at_start() {
    loose_dirs_tightened_at_start(Backend::Btrfs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_loose_dirs_tightened_at_start() {
    loose_dirs_tightened_at_start(Backend::OverlayXfs).await;
}
