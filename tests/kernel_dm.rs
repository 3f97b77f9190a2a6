//! Kernel tier: the device-mapper features the thin driver builds on, and the
//! harness itself, proven inside the VM of `scripts/test-kernel.sh` (the host
//! kernel has no device-mapper).
//!
//! Every test here is `#[ignore]`d, so the host run lists it as ignored; the
//! VM runs this target with `--ignored` and `LAYERD_KERNEL_TIER=1`.
//!
//! `dm_thin_pool_smoke` is what the driver will do, step by step, through the
//! `devicemapper` crate: a pool on two loop-backed sparse files, a thin
//! device with xfs, a snapshot of it, block usage from the pool and device
//! status, a dm event on crossing the low water mark, teardown, thin_check.

#[macro_use]
#[allow(unused_macros)]
#[path = "common/mod.rs"]
mod common;

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use devicemapper::{
    DevId, Device, DmDevice, DmName, DmNameBuf, DmOptions, LinearDev, LinearDevTargetParams,
    LinearTargetParams, Sectors, TargetLine, ThinDev, ThinDevId, ThinPoolDev, ThinPoolStatus,
    ThinStatus, DM,
};

const GIB: u64 = 1 << 30;
/// 64 KiB data blocks, the driver's default.
const BLOCK: Sectors = Sectors(128);

fn sh(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the smoke test made, undone in reverse on drop even after a panic:
/// mounts, dm devices (by name), loop devices, the directory.
struct Undo {
    dir: tempfile::TempDir,
    mounts: Vec<PathBuf>,
    dm: Vec<DmNameBuf>,
    loops: Vec<String>,
}

impl Undo {
    fn new() -> Undo {
        let dir = tempfile::Builder::new()
            .prefix("kdm.")
            .tempdir_in(test_tmp())
            .expect("create test dir");
        Undo {
            dir,
            mounts: vec![],
            dm: vec![],
            loops: vec![],
        }
    }

    /// A sparse file of `size` on a fresh loop device (buffered I/O: the
    /// VM's tmpfs has no O_DIRECT on 6.1).
    fn loop_file(&mut self, name: &str, size: u64) -> (String, Device) {
        let img = self.dir.path().join(name);
        File::create(&img)
            .and_then(|f| f.set_len(size))
            .unwrap_or_else(|e| panic!("create {}: {e}", img.display()));
        let dev = sh(Command::new("losetup")
            .args(["-f", "--show", "--direct-io=off"])
            .arg(&img))
        .trim()
        .to_string();
        self.loops.push(dev.clone());
        let devno = devicemapper::devnode_to_devno(Path::new(&dev))
            .expect("stat loop device")
            .expect("loop device is a block device");
        (dev, Device::from(devno))
    }

    fn mount(&mut self, dev: &Path, at: &str, opts: &str) -> PathBuf {
        let target = self.dir.path().join(at);
        fs::create_dir_all(&target).unwrap();
        sh(Command::new("mount")
            .args(["-o", opts])
            .arg(dev)
            .arg(&target));
        self.mounts.push(target.clone());
        target
    }

    fn umount(&mut self, target: &Path) {
        sh(Command::new("umount").arg(target));
        self.mounts.retain(|m| m != target);
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        for m in self.mounts.drain(..).rev() {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        if let Ok(dm) = DM::new() {
            for name in self.dm.drain(..).rev() {
                let _ = dm.device_remove(&DevId::Name(&name), DmOptions::default());
            }
        }
        for l in self.loops.drain(..).rev() {
            let _ = Command::new("losetup").arg("-d").arg(&l).status();
        }
    }
}

fn name(prefix: &str, what: &str) -> DmNameBuf {
    DmNameBuf::new(format!("{prefix}-{what}")).expect("valid dm name")
}

/// A linear device over all of `dev` (`size` bytes): the pool's meta or data.
fn linear(dm: &DM, name: &DmName, dev: Device, size: u64) -> LinearDev {
    let table = vec![TargetLine::new(
        Sectors(0),
        Sectors(size / 512),
        LinearDevTargetParams::Linear(LinearTargetParams::new(dev, Sectors(0))),
    )];
    LinearDev::setup(dm, name, None, table).unwrap_or_else(|e| panic!("linear {name}: {e}"))
}

fn pool_used(dm: &DM, pool: &ThinPoolDev) -> (u64, u64) {
    match pool.status(dm, DmOptions::default()).expect("pool status") {
        ThinPoolStatus::Working(w) => {
            assert!(!w.needs_check, "pool needs_check: {w:?}");
            (*w.usage.used_data, *w.usage.total_data)
        }
        other => panic!("pool is not working: {other:?}"),
    }
}

fn mapped(dm: &DM, thin: &ThinDev) -> u64 {
    match thin.status(dm, DmOptions::default()).expect("thin status") {
        ThinStatus::Working(w) => *w.nr_mapped_sectors,
        other => panic!("thin device is not working: {other:?}"),
    }
}

#[test]
#[ignore = "kernel tier: runs in the VM (scripts/test-kernel.sh)"]
fn dm_thin_pool_smoke() {
    require_kernel_tier("dm_thin_pool_smoke");
    let mut u = Undo::new();
    let prefix = format!("layerd-kt{}", std::process::id());
    let dm = DM::new().expect("open /dev/mapper/control");

    let (meta_loop, meta_dev) = u.loop_file("meta.img", 16 << 20);
    let (_, data_dev) = u.loop_file("data.img", GIB);
    let (meta_name, data_name, pool_name) = (
        name(&prefix, "meta"),
        name(&prefix, "data"),
        name(&prefix, "pool"),
    );
    u.dm.push(meta_name.clone());
    let meta = linear(&dm, &meta_name, meta_dev, 16 << 20);
    u.dm.push(data_name.clone());
    let data = linear(&dm, &data_name, data_dev, GIB);
    // A fresh metadata device must start zeroed: the loop file is sparse.
    u.dm.push(pool_name.clone());
    let mut pool = ThinPoolDev::new(
        &dm,
        &pool_name,
        None,
        meta,
        data,
        BLOCK,
        devicemapper::DataBlocks(16),
        vec!["skip_block_zeroing".to_owned()],
    )
    .expect("create thin pool");
    let (used0, total) = pool_used(&dm, &pool);
    assert_eq!(total, GIB / (64 << 10), "1 GiB of 64 KiB blocks");

    // The base: a thin device with xfs, as the driver's per-pool base.
    let base_name = name(&prefix, "base");
    u.dm.push(base_name.clone());
    let mut base = ThinDev::new(
        &dm,
        &base_name,
        None,
        Sectors(2 * GIB / 512),
        &pool,
        ThinDevId::new_u64(1).unwrap(),
    )
    .expect("create thin device");
    sh(Command::new("mkfs.xfs")
        .args(["-q", "-f"])
        .arg(base.devnode()));
    let m = u.mount(&base.devnode(), "base", "rw");
    write_pattern(&m.join("a"), 8 << 20, 1).unwrap();
    u.umount(&m);
    let (used1, _) = pool_used(&dm, &pool);
    assert!(
        used1 >= used0 + (8 << 20) / (64 << 10),
        "8 MiB written but used data blocks went {used0} -> {used1}"
    );
    let base_mapped = mapped(&dm, &base);

    // A snapshot (the crate suspends the origin around create_snap).
    let snap_name = name(&prefix, "snap");
    u.dm.push(snap_name.clone());
    let mut snap = base
        .snapshot(&dm, &snap_name, None, &pool, ThinDevId::new_u64(2).unwrap())
        .expect("snapshot the thin device");
    assert_eq!(
        mapped(&dm, &snap),
        base_mapped,
        "a snapshot shares all blocks"
    );

    // Arm the dm event watch, drop the low water mark to just below the
    // free blocks, write past it: /dev/mapper/control must become readable.
    dm.arm_poll().expect("arm_poll");
    let free = total - used1;
    pool.set_low_water_mark(&dm, devicemapper::DataBlocks(free - 32))
        .expect("set low water mark");
    pool.resume(&dm).expect("resume pool");
    let m = u.mount(&snap.devnode(), "snap", "nouuid");
    assert_eq!(
        fs::read(m.join("a")).unwrap(),
        {
            let p = u.dir.path().join("expected");
            write_pattern(&p, 8 << 20, 1).unwrap();
            fs::read(&p).unwrap()
        },
        "the snapshot reads the origin's data"
    );
    write_pattern(&m.join("b"), 4 << 20, 2).unwrap();
    let mut pfd = libc::pollfd {
        fd: dm.file().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call; the fd is
    // owned by `dm`, which outlives it.
    let n = unsafe { libc::poll(&mut pfd, 1, 30_000) };
    assert_eq!(n, 1, "no dm event after crossing the low water mark");
    u.umount(&m);
    let (used2, _) = pool_used(&dm, &pool);
    assert!(used2 > used1, "writes in the snapshot used no new blocks");
    assert!(mapped(&dm, &snap) > base_mapped);
    assert_eq!(mapped(&dm, &base), base_mapped, "the origin did not change");

    // Teardown as the driver's Remove and pool shutdown will do it.
    snap.destroy(&dm, &pool).expect("remove snapshot");
    base.destroy(&dm, &pool).expect("remove base");
    let (used3, _) = pool_used(&dm, &pool);
    assert!(used3 < used2, "deleting thin ids freed no blocks");
    pool.teardown(&dm).expect("deactivate pool");
    u.dm.clear();
    // thin_check reads the now-inactive metadata straight off its loop device.
    sh(Command::new("thin_check").arg(&meta_loop));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kernel tier: runs in the VM (scripts/test-kernel.sh)"]
async fn daemon_answers_in_vm() {
    require_kernel_tier("daemon_answers_in_vm");
    // vfs, not overlay: the VM runs Debian 12's 6.1 kernel, and the overlay
    // driver needs `lowerdir+` (6.8), so an overlay pool would come up failed.
    let Some(f) = Fixture::new(Backend::VfsXfs).await else {
        panic!("the VM lacks what the vfs fixture needs");
    };
    zbus::fdo::PeerProxy::builder(&f.conn)
        .destination(BUS_NAME)
        .unwrap()
        .path("/org/layerd/Layerd1")
        .unwrap()
        .build()
        .await
        .expect("peer proxy")
        .ping()
        .await
        .expect("Ping over the private bus");
    let v = must(f.mgr.version().await, "Version");
    assert!(!v.is_empty());
    // The pool is usable, not just listed: a layer goes through its life.
    let key = f.unique("vm");
    f.prepare(&key, "").await;
    f.remove(&key).await;
    f.finish();
}
