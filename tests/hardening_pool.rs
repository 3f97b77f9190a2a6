//! Hardening of pool space and pool creation (host tier, root; issue 16
//! items 5 and 7): a btrfs Cleanup returns only once the space it reports
//! is usable (deleted subvolumes dropped by the cleaner and committed), and
//! a config whose pool cannot be made is refused by `--check-config` and
//! at start before anything is created; a loop pool whose creation fails
//! part-way leaves nothing behind.

#[macro_use]
#[allow(unused_macros)]
#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::*;
use layerd::backend::btrfs::{image_path, Btrfs, Setup};
use layerd::sys::loopdev;

const MIB: u64 = 1 << 20;

/// Free bytes of the file system at `p`, as `df` shows them.
fn avail(p: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(p).expect("statvfs");
    st.blocks_available() as u64 * st.fragment_size() as u64
}

/// Preallocates `dir/name` until the file system is full (fallocate
/// allocates extents at once, so this is fast); returns the bytes taken.
fn fill_up(dir: &Path, name: &str) -> u64 {
    use nix::fcntl::{fallocate, FallocateFlags};
    let f = fs::File::create(dir.join(name)).unwrap();
    let (mut off, mut chunk) = (0i64, 64 * MIB as i64);
    while chunk >= MIB as i64 {
        match fallocate(f.as_fd(), FallocateFlags::empty(), off, chunk) {
            Ok(()) => off += chunk,
            Err(nix::errno::Errno::ENOSPC) => chunk /= 2,
            Err(e) => panic!("fallocate: {e}"),
        }
    }
    f.sync_all().unwrap();
    nix::unistd::syncfs(&f).unwrap();
    off as u64
}

/// Item 5: fill a small btrfs pool through a layer, Remove it, Cleanup:
/// when Cleanup returns, the pool's free space (statvfs) shows the freed
/// bytes and a Prepare right away is not refused with PoolFull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_cleanup_returns_usable_space() {
    // No automatic balance: it would run while the pool is full.
    let no_balance = [("monitor.balance_unallocated_percent", "0".to_string())];
    let Some(f) = Fixture::new_with(Backend::Btrfs, &no_balance).await else {
        return;
    };
    let pool = f.pool_path();
    f.prepare("fill", "").await;
    let mnt = PathBuf::from(must(f.mgr.mount("fill").await, "Mount(fill)"));
    let filled = fill_up(&mnt, "big");
    must(f.mgr.unmount("fill").await, "Unmount(fill)");
    assert!(filled > 200 * MIB, "filled only {filled} bytes");
    let full = avail(&pool);
    // The pool is below its free-space minimum now.
    let e = f
        .mgr
        .prepare("probe", "", default_labels())
        .await
        .expect_err("Prepare on a full pool");
    assert_eq!(
        err_name(&e).as_deref(),
        Some("org.layerd.Layerd1.Error.PoolFull"),
        "{}",
        describe(&e)
    );

    must(f.mgr.remove("fill").await, "Remove(fill)");
    let t = Instant::now();
    let freed = must(f.mgr.cleanup().await, "Cleanup");
    let took = t.elapsed();
    // At once, before the periodic commit (30 s) could have come.
    let now = avail(&pool);
    assert!(
        freed >= filled * 9 / 10,
        "Cleanup reported {freed} bytes of {filled}"
    );
    assert!(
        now >= full + freed * 9 / 10,
        "Cleanup returned {freed} bytes in {took:?}, but statvfs shows {now} free (full: {full}): the space is not usable yet"
    );
    let specs = f.mgr.prepare("after", "", default_labels()).await;
    assert!(
        specs.is_ok(),
        "Prepare right after Cleanup: {}",
        describe(&specs.unwrap_err())
    );
    f.finish();
}

/// Item 5, the admission check: space held only by a deleted subvolume
/// the cleaner has not dropped yet does not make Prepare PoolFull. The
/// subvolume is made and deleted beside the daemon (in the pool's
/// quarantine directory, which reconciliation leaves alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs_prepare_counts_pending_deletions_as_free() {
    use layerd::sys::btrfs as sysbtrfs;
    let no_balance = [("monitor.balance_unallocated_percent", "0".to_string())];
    let Some(f) = Fixture::new_with(Backend::Btrfs, &no_balance).await else {
        return;
    };
    let q = f.pool_path().join("q");
    sysbtrfs::create_subvolume(&q, "filler").unwrap();
    let filled = fill_up(&q.join("filler"), "big");
    assert!(filled > 200 * MIB, "filled only {filled} bytes");
    sysbtrfs::delete_subvolume(&q, "filler").unwrap();
    let specs = f.mgr.prepare("after", "", default_labels()).await;
    assert!(
        specs.is_ok(),
        "Prepare with {filled} bytes pending deletion: {}",
        describe(&specs.unwrap_err())
    );
    f.finish();
}

// ---------------------------------------------------------------------------
// Item 7: configs that start-up cannot carry out
// ---------------------------------------------------------------------------

/// Runs the daemon binary with `args` and `--config cfg`; exit status and
/// stderr, killed after 10 s.
fn run(cfg: &Path, d: &Path, args: &[&str]) -> (Option<i32>, String) {
    // Beside the directory, whose listing must not change.
    let err = PathBuf::from(format!("{}.stderr", d.display()));
    run_layerd_with(args, cfg, d, &err)
}

/// Every path below `d` (recursively), to see that nothing was made.
fn listing(d: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut todo = vec![d.to_path_buf()];
    while let Some(p) = todo.pop() {
        for e in fs::read_dir(&p).unwrap().flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                todo.push(e.path());
            }
            out.insert(e.path());
        }
    }
    out
}

/// A btrfs loop pool config (`pool_lines` go into `[[pool]]`, the pool's
/// lines start at line 6) is refused by `--check-config` and by a plain
/// start with exit status 2 and one line naming the file, `line` and every
/// needle; neither creates anything in the directory.
fn refused(what: &str, pool_lines: &str, line: usize, needles: &[&str], setup: impl FnOnce(&Path)) {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP {what}: needs root");
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("ldhp.")
        .tempdir_in("/tmp")
        .unwrap();
    let d = dir.path();
    setup(d);
    let cfg = d.join("layerd.toml");
    let text = format!(
        "[daemon]\nstate_dir = \"@D@/s\"\nrun_dir = \"@D@/r\"\ndefault_pool = \"main\"\n[[pool]]\nname = \"main\"\ndriver = \"btrfs\"\nbacking = \"loop\"\n{pool_lines}"
    )
    .replace("@D@", &d.to_string_lossy());
    fs::write(&cfg, &text).unwrap();
    let before = listing(d);
    for args in [&["--check-config"][..], &[]] {
        let (code, stderr) = run(&cfg, d, args);
        // A start that went ahead: take down what it made.
        unmount_under(d);
        for dev in loopdev::find_backing(&image_path(&d.join("p"))).unwrap_or_default() {
            let _ = loopdev::detach(&dev);
        }
        let ctx = format!("{what}, layerd {args:?}:\n{text}\nstderr: {stderr:?}");
        assert_eq!(code, Some(2), "exit status; {ctx}");
        let lines: Vec<&str> = stderr.trim_end().lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr; {ctx}");
        let loc = format!("{}:{line}:", cfg.display());
        assert!(lines[0].contains(&loc), "the error names {loc}; {ctx}");
        for n in needles {
            assert!(lines[0].contains(n), "the error names {n:?}; {ctx}");
        }
        assert_eq!(listing(d), before, "nothing is created; {ctx}");
    }
}

#[test]
fn check_config_refuses_a_loop_path_that_is_a_file() {
    refused(
        "path is a regular file",
        "path = \"@D@/p\"\nsize = \"1G\"\n",
        9,
        &["path", "regular file"],
        |d| fs::write(d.join("p"), "not a directory").unwrap(),
    );
    // The image's place taken by a directory.
    refused(
        "image is a directory",
        "path = \"@D@/p\"\nsize = \"1G\"\n",
        9,
        &["path", "p.img", "directory"],
        |d| fs::create_dir(d.join("p.img")).unwrap(),
    );
}

#[test]
fn check_config_refuses_a_loop_size_mkfs_refuses() {
    refused(
        "size 1M",
        "path = \"@D@/p\"\nsize = \"1M\"\n",
        10,
        &["size", "109M"],
        |_| {},
    );
}

#[test]
fn check_config_refuses_a_loop_size_beyond_the_file_system() {
    refused(
        "size 100P",
        "path = \"@D@/p\"\nsize = \"100P\"\n",
        10,
        &["size", "100P"],
        |_| {},
    );
}

/// A loop pool whose creation fails after its image was made (here: the
/// mount point is a non-empty directory, found only after formatting)
/// removes the image again and detaches its loop device.
#[test]
fn failed_loop_pool_creation_leaves_nothing() {
    if Backend::Btrfs.skip("failed_loop_pool_creation_leaves_nothing") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("ldhp.")
        .tempdir_in("/tmp")
        .unwrap();
    let mnt = dir.path().join("pool");
    fs::create_dir(&mnt).unwrap();
    fs::write(mnt.join("stray"), "x").unwrap();
    let before = listing(dir.path());
    let r = Btrfs::open(&Setup::Loop {
        mount: mnt.clone(),
        size: 256 * MIB,
        label: "layerd-test".into(),
    });
    let bound = loopdev::find_backing(&image_path(&mnt)).unwrap_or_default();
    for d in &bound {
        let _ = loopdev::detach(d);
    }
    let _ = umount_all(&mnt);
    let e = match r {
        Ok(_) => panic!("a pool over a non-empty directory was opened"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("not empty"), "{e}");
    assert!(bound.is_empty(), "the image is still attached: {bound:?}");
    assert_eq!(listing(dir.path()), before, "left behind after: {e}");
}
