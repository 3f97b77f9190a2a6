//! The thin table: Prepare, Commit and Remove on the daemon's thin pool
//! ("thin") beside the raw device-mapper steps the thin driver performs,
//! done here directly (the `devicemapper` crate and bare dm ioctls) on a
//! second pool of the same shape on the same xfs, in the same run. Needs
//! device-mapper: run it in the kernel-tier VM (`scripts/bench-kernel.sh`).
//!
//! Two floors are measured for every dm step that udev takes part in
//! (resume and remove): bare ioctls with no udev cookie
//! (`layerd::sys::dmioctl`: the kernel's own cost; udev handles the uevent
//! afterwards, nobody waits), and the same
//! calls through the `devicemapper` crate as the driver makes them, which
//! wait on a SysV semaphore until udevd has run its rules for the event
//! (`DM_UDEV` cookie). The ratio is taken against the bare floor; the
//! udev-synced one says how much of the gap is that wait.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

use devicemapper::{
    DataBlocks, DevId, DmFlags, DmName, DmOptions, LinearDev, LinearDevTargetParams,
    LinearTargetParams, Sectors, TargetLine, ThinPoolDev, DM,
};
use layerd::sys::{blockdev, dmioctl, loopdev};

use crate::common::{teardown_thin_pool, toml_str, PoolConfig};
use crate::stats::{fmt_us, round1, round2, Samples};
use crate::world::World;
use crate::{call, labels, timed_sync, Opts, TARGET};

pub const THIN_POOL: &str = "thin";
/// The floor pool's dm names are `layerd-<FLOOR>-…`, so the harness's
/// `teardown_thin_pool` removes them.
const FLOOR: &str = "benchfloor";
/// Same shape as the daemon's pool (the harness's thin pool: 2 GiB of
/// 64 KiB blocks, 512 MiB layers, xfs).
const DATA_SIZE: u64 = 2 << 30;
const BLOCK: u64 = 64 << 10;
const BASE_SIZE: u64 = 512 << 20;

/// The daemon's pool config (in the world's config when thin runs).
pub fn pool_config(mnt: &Path) -> PoolConfig {
    PoolConfig {
        name: THIN_POOL.into(),
        driver: "thin".into(),
        path: mnt.join("thin"),
        extra: vec![
            ("size".into(), toml_str("2G")),
            ("base_size".into(), toml_str("512M")),
        ],
    }
}

/// Whether this kernel has device-mapper (the host tier's does not).
pub fn available() -> bool {
    Path::new("/dev/mapper/control").exists()
}

/// Removes the daemon's thin pool devices and loops (world teardown).
pub fn teardown_daemon_pool(mnt: &Path) {
    teardown_thin_pool(THIN_POOL, &mnt.join("thin"));
}

// ---------------------------------------------------------------------------
// The floor pool
// ---------------------------------------------------------------------------

struct FloorPool {
    dm: DM,
    ctl: File,
    dir: PathBuf,
    pool_dev: String,
    next: u32,
    /// `delete` messages that met EBUSY and were sent again (printed).
    delete_retries: std::cell::Cell<u32>,
}

impl Drop for FloorPool {
    fn drop(&mut self) {
        teardown_thin_pool(FLOOR, &self.dir);
    }
}

/// The udev flags the driver gives its layer devices (`DmOptions::private`).
fn private_flags() -> u32 {
    DmOptions::private().udev_flags().bits()
}

fn dmerr(what: &str) -> impl FnOnce(devicemapper::DmError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

fn name(n: &str) -> Result<&DmName, String> {
    DmName::new(n).map_err(|e| format!("dm name {n}: {e}"))
}

impl FloorPool {
    /// Loop files, linear meta/data devices and a thin pool as the driver
    /// makes them; the base thin device (id 0) with an empty xfs, left
    /// inactive; thin 1 = the committed parent, a snapshot of it, active.
    fn new(dir: &Path) -> Result<FloorPool, String> {
        fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let dm = DM::new().map_err(dmerr("DM::new"))?;
        let ctl = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/mapper/control")
            .map_err(|e| format!("open /dev/mapper/control: {e}"))?;
        let mut p = FloorPool {
            dm,
            ctl,
            dir: dir.to_path_buf(),
            pool_dev: String::new(),
            next: 2,
            delete_retries: std::cell::Cell::new(0),
        };
        let msize = layerd::backend::thin::metadata_size_for(DATA_SIZE, BLOCK);
        let mut devs = Vec::new();
        for (f, s) in [("data.img", DATA_SIZE), ("metadata.img", msize)] {
            let f = dir.join(f);
            loopdev::create_sparse(&f, s).map_err(|e| format!("{}: {e}", f.display()))?;
            let (d, _) = loopdev::attach(&f, loopdev::AttachOptions::default())
                .map_err(|e| format!("attach {}: {e}", f.display()))?;
            devs.push(d.path());
        }
        let linear = |suffix: &str, dev: &Path| -> Result<LinearDev, String> {
            let n = format!("layerd-{FLOOR}-{suffix}");
            let f = File::open(dev).map_err(|e| format!("{}: {e}", dev.display()))?;
            let sectors = blockdev::size_of(&f).map_err(|e| e.to_string())? / 512;
            let devno = devicemapper::devnode_to_devno(dev)
                .map_err(dmerr("devno"))?
                .ok_or("not a block device")?;
            let table = vec![TargetLine::new(
                Sectors(0),
                Sectors(sectors),
                LinearDevTargetParams::Linear(LinearTargetParams::new(
                    devicemapper::Device::from(devno),
                    Sectors(0),
                )),
            )];
            LinearDev::setup(&p.dm, name(&n)?, None, table).map_err(dmerr("linear"))
        };
        let data = linear("data", &devs[0])?;
        let meta = linear("meta", &devs[1])?;
        let blocks = DATA_SIZE / BLOCK;
        let pool_name = format!("layerd-{FLOOR}-pool");
        let pool = ThinPoolDev::setup(
            &p.dm,
            name(&pool_name)?,
            None,
            meta,
            data,
            Sectors(BLOCK / 512),
            DataBlocks(blocks / 5),
            vec!["skip_block_zeroing".to_string()],
        )
        .map_err(dmerr("thin pool"))?;
        use devicemapper::DmDevice;
        p.pool_dev = pool.device().to_string();
        p.message("create_thin 0")?;
        let base = p.dev_name(0);
        p.activate(&base, 0, true)?;
        let node = blockdev::mapper_path(&base);
        let out = std::process::Command::new("mkfs.xfs")
            .args(["-q", "-K"])
            .arg(&node)
            .output()
            .map_err(|e| format!("mkfs.xfs: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mkfs.xfs {}: {}",
                node.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        p.remove(&base, true)?;
        p.message("create_snap 1 0")?;
        p.activate(&p.dev_name(1), 1, true)?;
        Ok(p)
    }

    fn dev_name(&self, id: u32) -> String {
        if id == 0 {
            format!("layerd-{FLOOR}-base")
        } else {
            format!("layerd-{FLOOR}-{id}")
        }
    }

    fn message(&self, msg: &str) -> Result<(), String> {
        let n = format!("layerd-{FLOOR}-pool");
        self.dm
            .target_msg(&DevId::Name(name(&n)?), None, msg)
            .map(|_| ())
            .map_err(|e| format!("message {msg:?}: {e}"))
    }

    fn resume(&self, n: &str, udev: bool) -> Result<(), String> {
        if udev {
            self.dm
                .device_suspend(&DevId::Name(name(n)?), DmOptions::default())
                .map(|_| ())
                .map_err(dmerr("resume"))
        } else {
            dmioctl::resume(&self.ctl, n, private_flags()).map_err(|e| format!("resume {n}: {e}"))
        }
    }

    fn suspend(&self, n: &str) -> Result<(), String> {
        // A suspend carries no udev cookie (the crate skips it too).
        self.dm
            .device_suspend(
                &DevId::Name(name(n)?),
                DmOptions::private().set_flags(DmFlags::DM_SUSPEND),
            )
            .map(|_| ())
            .map_err(dmerr("suspend"))
    }

    /// DM_DEV_CREATE + DM_TABLE_LOAD (thin target) + resume.
    fn activate(&self, n: &str, thin: u32, udev: bool) -> Result<(), String> {
        let id = DevId::Name(name(n)?);
        self.dm
            .device_create(name(n)?, None, DmOptions::private())
            .map_err(dmerr("create"))?;
        let table = [(
            0u64,
            BASE_SIZE / 512,
            "thin".to_string(),
            format!("{} {thin}", self.pool_dev),
        )];
        self.dm
            .table_load(&id, &table, DmOptions::default())
            .map_err(dmerr("table load"))?;
        self.resume(n, udev)
    }

    fn remove(&self, n: &str, udev: bool) -> Result<(), String> {
        if udev {
            self.dm
                .device_remove(&DevId::Name(name(n)?), DmOptions::private())
                .map(|_| ())
                .map_err(dmerr("remove"))
        } else {
            dmioctl::remove(&self.ctl, n, false, private_flags())
                .map_err(|e| format!("remove {n}: {e}"))
        }
    }

    fn take_id(&mut self) -> u32 {
        self.next += 1;
        self.next
    }

    /// Prepare with no parent: a snapshot of the (inactive) base.
    fn prepare_root(&mut self, udev: bool) -> Result<u32, String> {
        let id = self.take_id();
        self.message(&format!("create_snap {id} 0"))?;
        self.activate(&self.dev_name(id), id, udev)?;
        Ok(id)
    }

    /// Prepare on the committed parent (thin 1, active): suspend it around
    /// the snapshot, then activate the child.
    fn prepare_child(&mut self, udev: bool) -> Result<u32, String> {
        let id = self.take_id();
        let parent = self.dev_name(1);
        self.suspend(&parent)?;
        let r = self.message(&format!("create_snap {id} 1"));
        self.resume(&parent, udev)?;
        r?;
        self.activate(&self.dev_name(id), id, udev)?;
        Ok(id)
    }

    /// Remove: deactivate + delete the thin id.
    fn remove_layer(&self, id: u32, udev: bool) -> Result<(), String> {
        self.remove(&self.dev_name(id), udev)?;
        let _ = fs::remove_file(blockdev::mapper_path(&self.dev_name(id)));
        // Seen in the VM: right after DM_DEV_REMOVE, `delete` can meet
        // EBUSY once; send it again (counted and printed, not hidden).
        for _ in 0..200 {
            match self.message(&format!("delete {id}")) {
                Err(e) if e.contains("EBUSY") => {
                    self.delete_retries.set(self.delete_retries.get() + 1);
                    // Still open: say so once, and remove it again.
                    let n = self.dev_name(id);
                    if let Ok(info) = self.dm.device_info(&DevId::Name(name(&n)?)) {
                        if self.delete_retries.get() < 3 {
                            eprintln!(
                                "floor: {n} still exists after its removal (open count {}); removing again",
                                info.open_count()
                            );
                        }
                        let _ = self.remove(&n, true);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                r => return r,
            }
        }
        self.message(&format!("delete {id}"))
    }
}

// ---------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------

struct Row {
    op: &'static str,
    id: &'static str,
    daemon: Samples,
    /// (name, samples) summed into the floor.
    floor: Vec<(&'static str, Samples)>,
    /// The kernel steps through the crate with udev sync, instead of the
    /// bare ones (same ping and fdatasync).
    synced: Option<Samples>,
}

impl Row {
    fn floor_at(&self, p: f64) -> f64 {
        self.floor.iter().map(|(_, s)| s.pct(p)).sum()
    }
    fn synced_at(&self, p: f64) -> Option<f64> {
        self.synced.as_ref().map(|s| {
            s.pct(p)
                + self
                    .floor
                    .iter()
                    .skip(1)
                    .map(|(_, s)| s.pct(p))
                    .sum::<f64>()
        })
    }
    fn desc(&self) -> String {
        self.floor
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(" + ")
    }
}

#[derive(Default)]
struct Lat {
    prepare: Samples,
    prepare_child: Samples,
    commit: Samples,
    remove: Samples,
    ping: Samples,
    sync: Samples,
    raw_root: Samples,
    raw_child: Samples,
    raw_remove: Samples,
    udev_root: Samples,
    udev_child: Samples,
    udev_remove: Samples,
    /// Not in the floor: what the driver's Remove also does (BLKDISCARD of
    /// the whole device, so its blocks go back to the loop file).
    discard: Samples,
    /// Not in the floor: one thin-pool status query (the driver reads it
    /// for the space sample and Remove's freed bytes).
    status: Samples,
}

pub async fn table(w: &World, o: &Opts) -> Result<serde_json::Value, String> {
    let mut fp = FloorPool::new(&w.mnt().join("thin-floor"))?;
    let fdir = w.floor_dir().join(THIN_POOL);
    crate::floor::mkdir(&fdir, 0o755)?;
    let mut sync = crate::floor::SyncFile::create(&fdir.join("sync.dat"))?;
    let lbl_root = labels(&[
        ("bench.layerd.io/run", "latency"),
        ("layerd.io/pool", THIN_POOL),
    ]);
    let lbl = labels(&[("bench.layerd.io/run", "latency")]);
    let base = "lat/thin/base".to_string();
    let base_key = format!("{base}/active");
    call(
        w.mgr.prepare(&base_key, "", lbl_root.clone()).await,
        "Prepare thin base",
    )?;
    call(
        w.mgr.commit(&base, &base_key, lbl.clone()).await,
        "Commit thin base",
    )?;
    let pool_name = format!("layerd-{FLOOR}-pool");
    let mut l = Lat::default();
    for (round, n) in [("warm", o.warmup), ("run", o.iters)] {
        let mut m = Lat::default();
        let k = |phase: &str, i: usize| format!("lat/thin/{round}/{phase}/{i}");
        for i in 0..n {
            let (root, child, done) = (k("root", i), k("child", i), k("done", i));
            let t = Instant::now();
            call(w.peer.ping().await, "Ping")?;
            m.ping.push(t.elapsed());
            timed_sync(&mut m.sync, || sync.write_and_sync())?;

            // Prepare, no parent.
            let t = Instant::now();
            call(
                w.mgr.prepare(&root, "", lbl_root.clone()).await,
                "Prepare thin",
            )?;
            m.prepare.push(t.elapsed());
            let (r1, r2) = (
                timed(&mut m.raw_root, || fp.prepare_root(false))?,
                timed(&mut m.udev_root, || fp.prepare_root(true))?,
            );

            // Prepare on the committed parent.
            let t = Instant::now();
            call(
                w.mgr.prepare(&child, &base, lbl.clone()).await,
                "Prepare thin child",
            )?;
            m.prepare_child.push(t.elapsed());
            let c1 = timed(&mut m.raw_child, || fp.prepare_child(false))?;
            let c2 = timed(&mut m.udev_child, || fp.prepare_child(true))?;

            // Commit: no kernel step (the device is active and is never
            // handed out for writing again).
            let t = Instant::now();
            call(
                w.mgr.commit(&done, &child, lbl.clone()).await,
                "Commit thin",
            )?;
            m.commit.push(t.elapsed());

            // Remove the committed child.
            let t = Instant::now();
            call(w.mgr.remove(&done).await, "Remove thin")?;
            m.remove.push(t.elapsed());
            timed_sync(&mut m.raw_remove, || fp.remove_layer(c1, false))?;
            timed_sync(&mut m.udev_remove, || fp.remove_layer(c2, true))?;

            // References, not in the floor.
            timed_sync(&mut m.status, || {
                fp.dm
                    .table_status(&DevId::Name(name(&pool_name)?), DmOptions::default())
                    .map(|_| ())
                    .map_err(dmerr("pool status"))
            })?;
            timed_sync(&mut m.discard, || {
                let f = blockdev::open_exclusive(&blockdev::mapper_path(&fp.dev_name(r1)))
                    .map_err(|e| format!("open: {e}"))?;
                blockdev::discard_all(&f).map_err(|e| format!("discard: {e}"))
            })?;

            let t = Instant::now();
            call(w.peer.ping().await, "Ping")?;
            m.ping.push(t.elapsed());
            timed_sync(&mut m.sync, || sync.write_and_sync())?;

            // Untimed: the parentless layers go again.
            call(w.mgr.remove(&root).await, "Remove thin root")?;
            fp.remove_layer(r1, true)?;
            fp.remove_layer(r2, true)?;
        }
        call(w.mgr.cleanup().await, "Cleanup")?;
        if round == "run" {
            l = m;
        }
    }
    call(w.mgr.remove(&base).await, "Remove thin base")?;
    call(w.mgr.cleanup().await, "Cleanup")?;

    let rows = vec![
        Row {
            op: "Prepare (no parent)",
            id: "prepare",
            daemon: l.prepare,
            floor: vec![
                ("create_snap+activate", l.raw_root),
                ("ping", l.ping.clone()),
                ("fdatasync", l.sync.clone()),
            ],
            synced: Some(l.udev_root),
        },
        Row {
            op: "Prepare (on parent)",
            id: "prepare_child",
            daemon: l.prepare_child,
            floor: vec![
                ("suspend+create_snap+resume+activate", l.raw_child),
                ("ping", l.ping.clone()),
                ("fdatasync", l.sync.clone()),
            ],
            synced: Some(l.udev_child),
        },
        Row {
            op: "Commit",
            id: "commit",
            daemon: l.commit,
            floor: vec![("ping", l.ping.clone()), ("fdatasync", l.sync.clone())],
            synced: None,
        },
        Row {
            op: "Remove",
            id: "remove",
            daemon: l.remove,
            floor: vec![
                ("remove+delete", l.raw_remove),
                ("ping", l.ping.clone()),
                ("fdatasync", l.sync.clone()),
            ],
            synced: Some(l.udev_remove),
        },
    ];
    println!();
    println!(
        "== thin driver (pool {THIN_POOL:?}) — {} iterations after {} warm-up; floor pool of the same shape (2 GiB data, 64 KiB blocks, 512 MiB xfs layers) on the same xfs",
        o.iters, o.warmup
    );
    println!(
        "{:<21} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>6}  {:>10} {:>8}  floor = …",
        "op",
        "p50",
        "p90",
        "floor p50",
        "floor p90",
        "ratio50",
        "ratio90",
        "target",
        "udev p50",
        "ratio50u"
    );
    let mut rows_json = Vec::new();
    for r in &rows {
        let (f50, f90) = (r.floor_at(50.0), r.floor_at(90.0));
        let (r50, r90) = (r.daemon.p50() / f50, r.daemon.p90() / f90);
        let u50 = r.synced_at(50.0);
        println!(
            "{:<21} {:>9} {:>9} {:>9} {:>9} {:>7.2}×{} {:>6.2}× {:>6}  {:>10} {:>8}  {}",
            r.op,
            fmt_us(r.daemon.p50()),
            fmt_us(r.daemon.p90()),
            fmt_us(f50),
            fmt_us(f90),
            r50,
            if r50 > TARGET { "!" } else { " " },
            r90,
            format!("{TARGET}×"),
            u50.map(fmt_us).unwrap_or_else(|| "—".into()),
            u50.map(|u| format!("{:.2}×", r.daemon.p50() / u))
                .unwrap_or_else(|| "—".into()),
            r.desc()
        );
        rows_json.push(serde_json::json!({
            "op": r.id,
            "daemon": r.daemon.json(),
            "floor": r.desc(),
            "floor_p50_us": round1(f50),
            "floor_p90_us": round1(f90),
            "ratio_p50": round2(r50),
            "ratio_p90": round2(r90),
            "udev_synced_floor_p50_us": u50.map(round1),
            "target": TARGET,
        }));
    }
    println!(
        "floor pool: {} `delete` message(s) met EBUSY right after the device's removal and were sent again",
        fp.delete_retries.get()
    );
    println!("floors measured in this run (floor pool; fdatasync on the store's xfs):");
    let floors: Vec<(&str, Samples)> = vec![
        ("D-Bus Peer.Ping round trip", l.ping.clone()),
        ("pwrite 4 KiB + fdatasync", l.sync.clone()),
        (
            "create_snap + create/load/resume (bare resume)",
            rows[0].floor[0].1.clone(),
        ),
        (
            "  the same, resume through the crate (udev sync)",
            l_or(&rows[0].synced),
        ),
        (
            "suspend + create_snap + resume parent + activate (bare)",
            rows[1].floor[0].1.clone(),
        ),
        (
            "  the same, both resumes udev-synced",
            l_or(&rows[1].synced),
        ),
        (
            "DM_DEV_REMOVE + delete message (bare)",
            rows[3].floor[0].1.clone(),
        ),
        ("  the same, remove udev-synced", l_or(&rows[3].synced)),
        (
            "(not in the floor) thin-pool status query",
            l.status.clone(),
        ),
        (
            "(not in the floor) BLKDISCARD of a fresh 512 MiB layer",
            l.discard.clone(),
        ),
    ];
    let mut floors_json = Vec::new();
    for (n, s) in &floors {
        println!(
            "  {:<58} p50 {:>9}   p90 {:>9}",
            n,
            fmt_us(s.p50()),
            fmt_us(s.p90())
        );
        floors_json.push(serde_json::json!({ "name": n.trim(), "samples": s.json() }));
    }
    drop(fp);
    Ok(serde_json::json!({
        "pool": THIN_POOL,
        "driver": "thin",
        "rows": rows_json,
        "floors": floors_json,
    }))
}

fn l_or(s: &Option<Samples>) -> Samples {
    s.clone().unwrap_or_default()
}

fn timed<T>(s: &mut Samples, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let t = Instant::now();
    let v = f()?;
    s.push(t.elapsed());
    Ok(v)
}
