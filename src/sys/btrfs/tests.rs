use super::*;
use crate::sys::loopdev;
use std::io::Write;
use std::process::Command;

/// A btrfs on a loop-attached sparse file, mounted on a temp dir;
/// unmounted and detached on drop, even when a test panics.
pub(crate) struct TestFs {
    _dir: tempfile::TempDir,
    pub mnt: PathBuf,
    pub dev: Option<loopdev::LoopDevice>,
    img: PathBuf,
}

impl TestFs {
    /// `None` (with a SKIP line) when not root or mkfs.btrfs is missing.
    pub(crate) fn new(size: u64) -> Option<TestFs> {
        if !nix::unistd::geteuid().is_root()
            || !Path::new("/dev/loop-control").exists()
            || Command::new("mkfs.btrfs")
                .arg("--version")
                .output()
                .is_err()
        {
            eprintln!("SKIP: needs root, loop devices and mkfs.btrfs");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        loopdev::create_sparse(&img, size).unwrap();
        let mut fs = TestFs {
            _dir: dir,
            mnt,
            dev: None,
            img,
        };
        let (dev, _) = loopdev::attach(&fs.img, Default::default()).unwrap();
        fs.dev = Some(dev.clone());
        let out = Command::new("mkfs.btrfs")
            .arg("-q")
            .arg(dev.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "mkfs.btrfs: {out:?}");
        nix::mount::mount(
            Some(&dev.path()),
            &fs.mnt,
            Some("btrfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        Some(fs)
    }

    pub(crate) fn image(&self) -> &Path {
        &self.img
    }
}

impl Drop for TestFs {
    fn drop(&mut self) {
        for _ in 0..50 {
            match nix::mount::umount2(&self.mnt, nix::mount::MntFlags::empty()) {
                Err(nix::errno::Errno::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                _ => break,
            }
        }
        let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        if let Some(dev) = self.dev.take() {
            let _ = loopdev::detach(&dev);
        }
    }
}

fn write(path: &Path, len: usize, seed: u8) {
    let mut f = File::create(path).unwrap();
    let chunk: Vec<u8> = (0..65536u32)
        .map(|i| ((i * 7 + seed as u32 * 13) % 251 + 1) as u8)
        .collect();
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
    f.sync_all().unwrap();
}

const MIB: u64 = 1 << 20;

fn about(what: &str, got: u64, want: u64) {
    assert!(
        got >= want && got <= want + 256 * 1024,
        "{what}: {got} bytes, expected about {want}"
    );
}

#[test]
fn subvolumes_snapshots_flags_and_delete() {
    let Some(fs) = TestFs::new(512 * MIB) else {
        return;
    };
    let m = &fs.mnt;
    assert!(is_btrfs(m).unwrap());
    assert!(is_subvolume(m).unwrap(), "the top level is a subvolume");
    assert_eq!(subvolume_id(m).unwrap(), FS_TREE_OBJECTID);

    create_subvolume(m, "a").unwrap();
    assert_eq!(
        create_subvolume(m, "a").unwrap_err().raw_os_error(),
        Some(libc::EEXIST)
    );
    assert!(create_subvolume(m, "x/y").is_err());
    let a = m.join("a");
    assert!(is_subvolume(&a).unwrap());
    let a_id = subvolume_id(&a).unwrap();
    assert!(a_id >= FIRST_FREE_OBJECTID);
    std::fs::create_dir(a.join("d")).unwrap();
    assert!(!is_subvolume(&a.join("d")).unwrap());
    assert_eq!(subvolume_id(&a.join("d")).unwrap(), a_id);
    std::fs::write(a.join("d/f"), "a").unwrap();

    assert!(!readonly(&a).unwrap());
    set_readonly(&a, true).unwrap();
    assert!(readonly(&a).unwrap());
    set_readonly(&a, true).unwrap(); // idempotent
    let err = std::fs::write(a.join("g"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert_eq!(
        set_readonly(&a.join("d"), true).unwrap_err().raw_os_error(),
        Some(libc::EINVAL),
        "flags live on subvolume roots only"
    );

    // Writable and read-only snapshots of the read-only subvolume.
    snapshot(&a, m, "b", false).unwrap();
    snapshot(&a, m, "v", true).unwrap();
    let (b, v) = (m.join("b"), m.join("v"));
    assert_eq!(std::fs::read_to_string(b.join("d/f")).unwrap(), "a");
    std::fs::write(b.join("d/f"), "b").unwrap();
    assert_eq!(std::fs::read_to_string(a.join("d/f")).unwrap(), "a");
    assert!(readonly(&v).unwrap());
    assert!(!readonly(&b).unwrap());
    let info = subvolume_info(&b).unwrap();
    assert!(info.is_snapshot());
    assert_eq!(info.parent_uuid, subvolume_info(&a).unwrap().uuid);
    assert_eq!(info.name, "b");
    assert_eq!(info.parent_id, FS_TREE_OBJECTID);
    assert!(!subvolume_info(&a).unwrap().is_snapshot());

    // A read-only subvolume cannot move to another directory...
    std::fs::create_dir(m.join("t")).unwrap();
    let err = std::fs::rename(&v, m.join("t/v")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    // ...until the flag is cleared.
    set_readonly(&v, false).unwrap();
    std::fs::rename(&v, m.join("t/v")).unwrap();

    // Read-only subvolumes delete as they are (root).
    delete_subvolume(m, "a").unwrap();
    assert!(!a.exists());
    delete_subvolume(&m.join("t"), "v").unwrap();

    // Nested subvolumes: ENOTEMPTY, then the recursive delete.
    create_subvolume(&b, "n1").unwrap();
    create_subvolume(&b.join("n1"), "n2").unwrap();
    std::fs::create_dir(b.join("dir")).unwrap();
    create_subvolume(&b.join("dir"), "n3").unwrap();
    set_readonly(&b.join("dir/n3"), true).unwrap();
    let b_id = subvolume_id(&b).unwrap();
    let mut kids = child_subvolumes(m, b_id).unwrap();
    kids.sort();
    assert_eq!(kids.len(), 2, "{kids:?}");
    assert_eq!(
        delete_subvolume(m, "b").unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    delete_subvolume_recursive(m, "b").unwrap();
    assert!(!b.exists());
    assert_eq!(
        delete_subvolume(m, "b").unwrap_err().raw_os_error(),
        Some(libc::ENOENT)
    );
    commit_transaction(m).unwrap();
}

#[test]
fn changed_since_counts_only_new_data() {
    let Some(fs) = TestFs::new(512 * MIB) else {
        return;
    };
    let m = &fs.mnt;
    create_subvolume(m, "p").unwrap();
    let p = m.join("p");
    write(&p.join("big"), 8 * MIB as usize, 1);
    std::fs::write(p.join("small"), "tiny inline file").unwrap();
    let c = exclusive_usage(&p).unwrap();
    about("parent", c.bytes, 8 * MIB);
    assert_eq!(c.inodes, 3, "root, big, small");
    set_readonly(&p, true).unwrap();

    snapshot(&p, m, "c", false).unwrap();
    let cp = m.join("c");
    let c = exclusive_usage(&cp).unwrap();
    assert_eq!(c, Changed::default(), "an untouched snapshot owns nothing");
    // Reading does not count.
    let _ = std::fs::read(cp.join("big")).unwrap();
    let _ = std::fs::read(cp.join("small")).unwrap();
    assert_eq!(exclusive_usage(&cp).unwrap().bytes, 0);

    // Rewrite 1 MiB in the middle of the inherited 8 MiB file.
    {
        use std::os::unix::fs::FileExt;
        let f = OpenOptions::new().write(true).open(cp.join("big")).unwrap();
        f.write_all_at(&vec![7u8; MIB as usize], 3 * MIB).unwrap();
        f.sync_all().unwrap();
    }
    write(&cp.join("new"), 2 * MIB as usize, 2);
    // A reflink copy inside the child counts once.
    {
        let src = File::open(cp.join("new")).unwrap();
        let dst = File::create(cp.join("new-clone")).unwrap();
        nix::ioctl_write_int!(ficlone, 0x94, 9);
        // SAFETY: FICLONE takes the source descriptor as its argument.
        unsafe { ficlone(dst.as_raw_fd(), src.as_raw_fd() as u64) }.unwrap();
        dst.sync_all().unwrap();
    }
    let c = exclusive_usage(&cp).unwrap();
    about("child", c.bytes, 3 * MIB);
    // big (new data), new, new-clone; the root directory's new entries
    // may wait for the transaction commit.
    assert!((3..=4).contains(&c.inodes), "{c:?}");
    // A full sync (writeback + commit), not just waiting for the
    // running transaction: that one may predate the new entries, and
    // then the count still lags (seen once under load).
    sync(m).unwrap();
    let c = exclusive_usage(&cp).unwrap();
    about("child after commit", c.bytes, 3 * MIB);
    // root, big, new, new-clone; an inode whose item was rewritten for
    // metadata only (atime of a file read above) may count as well.
    assert!((4..=5).contains(&c.inodes), "{c:?}");
    // The parent still owns its data although a child shares it.
    about(
        "parent after child",
        exclusive_usage(&p).unwrap().bytes,
        8 * MIB,
    );

    // A read-only snapshot (a view) owns nothing.
    snapshot(&p, m, "v", true).unwrap();
    assert_eq!(exclusive_usage(&m.join("v")).unwrap(), Changed::default());
}

#[test]
fn space_devices_balance_trim() {
    let Some(fs) = TestFs::new(1024 * MIB) else {
        return;
    };
    let m = &fs.mnt;
    let info = fs_info(m).unwrap();
    assert_eq!(info.num_devices, 1);
    assert_eq!(info.sectorsize, 4096);
    let devs = devices(m).unwrap();
    assert_eq!(devs.len(), 1);
    assert_eq!(devs[0].path, fs.dev.as_ref().unwrap().path());
    assert_eq!(devs[0].total_bytes, 1024 * MIB);
    let s = space_summary(m).unwrap();
    assert!(s.data_total > 0 && s.metadata_total > 0, "{s:?}");
    assert!(s.unallocated > 0 && s.unallocated < s.device_size, "{s:?}");
    assert_eq!(s.device_size, 1024 * MIB);
    assert_eq!(unallocated(m).unwrap(), s.unallocated);
    assert!(space_info(m)
        .unwrap()
        .iter()
        .any(|i| i.flags & SPACE_INFO_GLOBAL_RSV != 0));

    // Fill a few data chunks, empty them, and let balance return them.
    create_subvolume(m, "s").unwrap();
    for i in 0..6 {
        write(&m.join(format!("s/f{i}")), 64 * MIB as usize, i as u8);
    }
    commit_transaction(m).unwrap();
    let full = space_summary(m).unwrap();
    delete_subvolume(m, "s").unwrap();
    // Wait for the cleaner to drop the deleted tree.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while space_summary(m).unwrap().data_used > 16 * MIB {
        assert!(std::time::Instant::now() < deadline, "cleaner too slow");
        commit_transaction(m).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(balance_progress(m).unwrap(), None);
    assert_eq!(
        balance_cancel(m).unwrap_err().raw_os_error(),
        Some(libc::ENOTCONN)
    );
    assert!(balance_start(m, &BalanceFilters::default()).is_err());
    let p = balance_start(
        m,
        &BalanceFilters {
            data_usage: Some(10),
            metadata_usage: None,
        },
    )
    .unwrap();
    assert_eq!(p.completed, p.expected, "{p:?}");
    let after = space_summary(m).unwrap();
    // Empty chunks may already have gone back by themselves (btrfs
    // reclaims unused block groups); either way they are unallocated.
    assert!(
        after.data_total < full.data_total && after.unallocated > full.unallocated,
        "before {full:?}\nafter {after:?}"
    );

    // FITRIM: the freed space goes back to the image file.
    let img_blocks = || std::fs::metadata(fs.image()).unwrap().blocks() * 512;
    let before = img_blocks();
    let trimmed = crate::sys::trim::fitrim(m).unwrap();
    assert!(trimmed > 0);
    assert!(img_blocks() <= before, "trim grew the image");
    assert!(
        img_blocks() < 200 * MIB,
        "image still holds {}",
        img_blocks()
    );
}

#[test]
fn balance_progress_and_cancel() {
    let Some(fs) = TestFs::new(2048 * MIB) else {
        return;
    };
    let m = fs.mnt.clone();
    create_subvolume(&m, "s").unwrap();
    // Many half-used data chunks: write files, delete every other one.
    for i in 0..12 {
        write(&m.join(format!("s/f{i}")), 64 * MIB as usize, i as u8);
    }
    for i in (0..12).step_by(2) {
        std::fs::remove_file(m.join(format!("s/f{i}"))).unwrap();
    }
    commit_transaction(&m).unwrap();
    let runner = {
        let m = m.clone();
        std::thread::spawn(move || {
            balance_start(
                &m,
                &BalanceFilters {
                    data_usage: Some(100),
                    metadata_usage: None,
                },
            )
        })
    };
    let mut seen = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline && !runner.is_finished() {
        // The kernel counts the chunks it expects before moving any.
        if let Some(p) = balance_progress(&m).unwrap().filter(|p| p.expected > 0) {
            seen = Some(p);
            let _ = balance_cancel(&m);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let res = runner.join().unwrap();
    match (seen, res) {
        (Some(p), Err(e)) => {
            assert_eq!(e.raw_os_error(), Some(libc::ECANCELED), "{e}");
            assert!(p.completed < p.expected, "{p:?}");
        }
        // The balance can be quicker than the first poll.
        (_, Ok(p)) => eprintln!("balance finished before it could be cancelled: {p:?}"),
        (None, Err(e)) => panic!("balance failed: {e}"),
    }
    assert_eq!(balance_progress(&m).unwrap(), None);
}
