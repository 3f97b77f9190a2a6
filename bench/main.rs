//! layerd benchmark: operation latency over D-Bus against the floor of the
//! same work done directly on the same file system, plus behaviour at scale
//! (Walk, restart, memory). A benchmark, not a test: it prints, it never
//! asserts timing. See bench/README.md.
//!
//! Run as root: `cargo bench --bench layerd`
//! (env: LAYERD_BENCH_ITERS, LAYERD_BENCH_LAYERS, LAYERD_BENCH_DEPTH, …).

#[allow(unused_macros, unused_imports, dead_code)]
#[path = "../tests/common/mod.rs"]
mod common;
mod containerd;
mod ctd_daemon;
mod ctd_grpc;
mod ctd_latency;
mod ctd_report;
mod ctr_image;
mod diff;
mod floor;
mod inproc;
mod stats;
mod thin;
mod world;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use stats::{fmt_bytes, fmt_d, fmt_us, round1, round2, Samples};
use world::{World, BTRFS_POOL, OVERLAY_POOL, VFS_POOL};

/// The ratio the daemon aims for: at most 20% over the floor.
const TARGET: f64 = 1.2;

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Opts {
    iters: usize,
    warmup: usize,
    layers: usize,
    depth: usize,
    restarts: usize,
    walk_reps: usize,
    vfs: bool,
    btrfs: bool,
    /// The thin table (device-mapper: the kernel-tier VM only).
    thin: bool,
    /// The containerd table (containerd, ctr, runc installed).
    containerd: bool,
    /// Repetitions of each unpack and `ctr run` of the containerd table.
    ctd_reps: usize,
    /// Timed garbage collections per snapshotter of the containerd table.
    ctd_gc_rounds: usize,
    /// Parts named on the command line (`diff`, `overlay`, `vfs`, `btrfs`,
    /// `thin`, `containerd`, `scale`); empty = all.
    only: Vec<String>,
    image_size: u64,
    daemon_log: String,
    pause: u64,
    diff_reps: usize,
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("warning: {name}={v:?} is not a number; using the default");
            default
        }),
        Err(_) => default,
    }
}

impl Opts {
    /// Whether part `name` runs: not switched off, and named by the
    /// filter if there is one.
    fn wants(&self, name: &str) -> bool {
        let on = match name {
            "vfs" => self.vfs,
            "btrfs" => self.btrfs,
            "thin" => self.thin,
            "containerd" => self.containerd,
            "diff" => self.diff_reps > 0,
            "scale" => self.layers > 0,
            _ => true,
        };
        on && (self.only.is_empty() || self.only.iter().any(|o| o == name))
    }

    fn from_env() -> Opts {
        let iters = env_num("LAYERD_BENCH_ITERS", 300usize).max(1);
        Opts {
            iters,
            warmup: env_num("LAYERD_BENCH_WARMUP", (iters / 10).clamp(5, 50)),
            layers: env_num("LAYERD_BENCH_LAYERS", 10_000usize),
            depth: env_num("LAYERD_BENCH_DEPTH", 20usize).max(1),
            restarts: env_num("LAYERD_BENCH_RESTARTS", 3usize),
            walk_reps: env_num("LAYERD_BENCH_WALK_REPS", 7usize).max(1),
            vfs: env_num("LAYERD_BENCH_VFS", 1u8) != 0,
            btrfs: env_num("LAYERD_BENCH_BTRFS", 1u8) != 0,
            thin: env_num("LAYERD_BENCH_THIN", 1u8) != 0 && thin::available(),
            containerd: env_num("LAYERD_BENCH_CONTAINERD", 1u8) != 0
                && match containerd::unavailable() {
                    None => true,
                    Some(why) => {
                        eprintln!("containerd table skipped: {why}");
                        false
                    }
                },
            ctd_reps: env_num("LAYERD_BENCH_CTD_REPS", 5usize).max(1),
            ctd_gc_rounds: env_num("LAYERD_BENCH_CTD_GC_ROUNDS", 10usize).max(1),
            // `cargo bench --bench layerd -- btrfs` passes `--bench` and
            // the filter; anything not an option names a part to run.
            only: std::env::args()
                .skip(1)
                .filter(|a| !a.starts_with('-'))
                .collect(),
            image_size: env_num("LAYERD_BENCH_IMAGE_GIB", 4u64).max(1) << 30,
            daemon_log: std::env::var("LAYERD_BENCH_DAEMON_LOG").unwrap_or_else(|_| "info".into()),
            pause: env_num("LAYERD_BENCH_PAUSE", 0u64),
            diff_reps: env_num("LAYERD_BENCH_DIFF_REPS", 3usize),
        }
    }
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

type Labels = HashMap<String, String>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn call<T>(r: zbus::Result<T>, what: impl std::fmt::Display) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {}", common::describe(&e)))
}

macro_rules! timed {
    ($samples:expr, $fut:expr, $what:expr) => {{
        let t = Instant::now();
        let r = $fut.await;
        let d = t.elapsed();
        let v = call(r, $what)?;
        $samples.push(d);
        v
    }};
}

fn timed_sync(s: &mut Samples, f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    let t = Instant::now();
    f()?;
    s.push(t.elapsed());
    Ok(())
}

fn sh(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default()
}

/// A fake content digest, as containerd labels carry.
fn digest(n: usize) -> String {
    let mut x = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0xdead_beef;
    let mut s = String::from("sha256:");
    for _ in 0..4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!("{x:016x}"));
    }
    s
}

// ---------------------------------------------------------------------------
// Latency versus floor
// ---------------------------------------------------------------------------

/// One row of the latency table.
struct Row {
    op: &'static str,
    id: &'static str,
    daemon: Samples,
    /// Floor components (name, samples, how many times it counts).
    floor: Vec<(&'static str, Samples, usize)>,
    /// The same call on layerd's engine in this process (no D-Bus).
    inproc: Samples,
    sub: bool,
}

impl Row {
    fn floor_p50(&self) -> f64 {
        self.floor.iter().map(|(_, s, k)| s.p50() * *k as f64).sum()
    }
    fn floor_p95(&self) -> f64 {
        self.floor.iter().map(|(_, s, k)| s.p95() * *k as f64).sum()
    }
    fn floor_p90(&self) -> f64 {
        self.floor.iter().map(|(_, s, k)| s.p90() * *k as f64).sum()
    }
    fn ratio_p90(&self) -> f64 {
        let f = self.floor_p90();
        if f > 0.0 {
            self.daemon.p90() / f
        } else {
            0.0
        }
    }
    fn ratio(&self) -> f64 {
        let f = self.floor_p50();
        if f > 0.0 {
            self.daemon.p50() / f
        } else {
            0.0
        }
    }
    fn floor_desc(&self) -> String {
        self.floor
            .iter()
            .map(|(n, _, k)| {
                if *k == 1 {
                    n.to_string()
                } else {
                    format!("{k}×{n}")
                }
            })
            .collect::<Vec<_>>()
            .join(" + ")
    }
    fn json(&self) -> Value {
        json!({
            "op": self.id,
            "daemon": self.daemon.json(),
            "floor_p50_us": round1(self.floor_p50()),
            "floor_p90_us": round1(self.floor_p90()),
            "floor_p95_us": round1(self.floor_p95()),
            "floor": self.floor_desc(),
            "ratio_p50": round2(self.ratio()),
            "ratio_p90": round2(self.ratio_p90()),
            "target": TARGET,
            "inproc": self.inproc.json(),
        })
    }
}

struct PoolResult {
    pool: &'static str,
    driver: &'static str,
    rows: Vec<Row>,
    floors: Vec<(&'static str, Samples)>,
    /// Bare store transactions: intent (non-durable), Ready (durable), one
    /// durable transaction of the same size.
    store: Vec<(&'static str, Samples)>,
    note: String,
}

/// Everything one pool's latency run measures.
#[derive(Default)]
struct Lat {
    prepare: Samples,
    prepare_child: Samples,
    mount: Samples,
    unmount: Samples,
    commit: Samples,
    remove: Samples,
    stat: Samples,
    ping: Samples,
    sync: Samples,
    raw_prepare: Samples,
    raw_prepare_child: Samples,
    raw_mount: Samples,
    raw_unmount: Samples,
    raw_remove: Samples,
    /// btrfs: set read-only (Commit's kernel step), destroy a subvolume.
    raw_commit: Samples,
    raw_destroy: Samples,
    /// btrfs: what the daemon reads after each change beyond the floor: a
    /// space sample (SPACE_INFO, DEV_INFO, statvfs) and the subvolume id
    /// of a mount spec (INO_LOOKUP).
    raw_sample: Samples,
    sync_pages: Samples,
    sync_fresh: Samples,
    // layerd's engine in this process, and bare store transactions.
    e_prepare: Samples,
    e_prepare_child: Samples,
    e_mount: Samples,
    e_unmount: Samples,
    e_commit: Samples,
    e_stat: Samples,
    e_remove: Samples,
    st_intent: Samples,
    st_durable: Samples,
    st_one: Samples,
}

/// 4 KiB pages a redb commit of one layer operation writes before its
/// fdatasync (intent transaction + durable transaction), as counted with
/// strace on this daemon: 10–14.
const STORE_PAGES: usize = 12;

const VFS_TREE: (usize, usize, usize) = (4, 8, 16 * 1024);

async fn latency(
    w: &World,
    ip: &inproc::InProc,
    pool: &'static str,
    o: &Opts,
) -> Result<PoolResult, String> {
    let vfs = pool == VFS_POOL;
    let btrfs = pool == BTRFS_POOL;
    let driver = if vfs {
        "vfs"
    } else if btrfs {
        "btrfs"
    } else {
        "overlay"
    };
    let mut l = Lat::default();
    let lbl = labels(&[("bench.layerd.io/run", "latency")]);
    let lbl_root = if pool != OVERLAY_POOL {
        labels(&[("bench.layerd.io/run", "latency"), ("layerd.io/pool", pool)])
    } else {
        lbl.clone()
    };

    // The committed parent of the child layers: empty for overlay, a small
    // tree for vfs (each child copies it).
    let base = format!("lat/{pool}/base");
    let base_key = format!("{base}/active");
    call(
        w.mgr.prepare(&base_key, "", lbl_root.clone()).await,
        "Prepare base",
    )?;
    if vfs {
        let p = call(w.mgr.mount(&base_key).await, "Mount base")?;
        let (d, f, s) = VFS_TREE;
        floor::write_tree(Path::new(&p), d, f, s)?;
        call(w.mgr.unmount(&base_key).await, "Unmount base")?;
    }
    call(
        w.mgr.commit(&base, &base_key, lbl.clone()).await,
        "Commit base",
    )?;
    // The same parent in the in-process engine.
    let blbl: std::collections::BTreeMap<String, String> = lbl.clone().into_iter().collect();
    let blbl_root: std::collections::BTreeMap<String, String> =
        lbl_root.clone().into_iter().collect();
    {
        let mut scratch = Samples::new();
        ip.prepare(&mut scratch, &base_key, "", &blbl_root)?;
        if vfs {
            let p = ip.mount(&mut scratch, &base_key)?;
            let (d, f, s) = VFS_TREE;
            floor::write_tree(&p, d, f, s)?;
            ip.unmount(&mut scratch, &base_key)?;
        }
        ip.commit(&mut scratch, &base, &base_key, &blbl)?;
    }

    // The floor's own directories on the same file system as the pool
    // (btrfs: on the btrfs; the fdatasync file stays beside the store).
    let fdir = w.floor_dir().join(pool);
    floor::mkdir(&fdir, 0o755)?;
    let kdir = if btrfs {
        w.btrfs_mnt().join("floor")
    } else {
        fdir.clone()
    };
    let (f_base, f_layers, f_work, f_trash) = (
        kdir.join("base"),
        kdir.join("l"),
        kdir.join("w"),
        kdir.join("t"),
    );
    for d in [&f_layers, &f_work, &f_trash] {
        floor::mkdir(d, 0o755)?;
    }
    if btrfs {
        // The parent: an empty read-only subvolume, as a committed layer.
        floor::btrfs::create(&kdir, "base")?;
        floor::btrfs::set_readonly(&f_base, true)?;
    } else {
        floor::mkdir(&f_base, 0o755)?;
    }
    if vfs {
        let (d, f, s) = VFS_TREE;
        floor::write_tree(&f_base, d, f, s)?;
    }
    let bdev = w.btrfs_device().unwrap_or_default();
    let f_run = w.floor_run_dir().join(pool);
    floor::mkdir(&f_run, 0o755)?;
    let mut sync = floor::SyncFile::create(&fdir.join("sync.dat"))?;

    if o.pause > 0 {
        eprintln!(
            "[{pool}] pausing {} s before measuring (daemon pid {:?})",
            o.pause,
            w.daemon_pid()
        );
        tokio::time::sleep(Duration::from_secs(o.pause)).await;
    }

    // Warm-up and measured rounds run the same code; warm-up samples are
    // thrown away. Each iteration interleaves every daemon call with its
    // raw kernel steps (and a Ping and an fdatasync), so that background
    // load on the host hits both sides alike.
    for (round, n) in [("warm", o.warmup), ("run", o.iters)] {
        let mut m = Lat::default();
        let k = |phase: &str, i: usize| format!("lat/{pool}/{round}/{phase}/{i}");
        let fl = |dir: &Path, i: usize| dir.join(format!("{round}{i}"));
        for i in 0..n {
            let (root, child, done) = (k("root", i), k("child", i), k("done", i));
            let (f_root, f_child, f_wk, f_tgt) = (
                fl(&f_layers, i + 1_000_000),
                fl(&f_layers, i),
                fl(&f_work, i),
                fl(&f_run, i),
            );
            let name_of = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();

            timed!(m.ping, w.peer.ping(), "Ping");
            timed_sync(&mut m.sync, || sync.write_and_sync())?;

            // Prepare, no parent.
            timed!(
                m.prepare,
                w.mgr.prepare(&root, "", lbl_root.clone()),
                "Prepare"
            );
            timed_sync(&mut m.raw_prepare, || {
                if btrfs {
                    floor::btrfs::create(&f_layers, &name_of(&f_root))
                } else {
                    floor::mkdir(&f_root, 0o755)
                }
            })?;
            ip.prepare(&mut m.e_prepare, &root, "", &blbl_root)?;
            ip.store_prepare(
                &mut m.st_intent,
                &mut m.st_durable,
                &mut m.st_one,
                &root,
                &blbl,
            )?;

            // Prepare on the committed parent.
            timed!(
                m.prepare_child,
                w.mgr.prepare(&child, &base, lbl.clone()),
                "Prepare child"
            );
            timed_sync(&mut m.raw_prepare_child, || {
                if btrfs {
                    return floor::btrfs::snapshot(&f_base, &f_layers, &name_of(&f_child));
                }
                floor::mkdir(&f_child, 0o755)?;
                if vfs {
                    floor::reflink_tree(&f_base, &f_child).map(|_| ())
                } else {
                    floor::mkdir(&f_wk, 0o711)
                }
            })?;
            ip.prepare(&mut m.e_prepare_child, &child, &base, &blbl)?;
            if btrfs {
                timed_sync(&mut m.raw_sample, || {
                    layerd::sys::btrfs::space_summary(&f_layers)
                        .map_err(|e| format!("space summary: {e}"))?;
                    nix::sys::statvfs::statvfs(&f_layers).map_err(|e| format!("statvfs: {e}"))?;
                    floor::btrfs::subvolume_id(&f_child).map(|_| ())
                })?;
            }

            // Mount + Unmount of the child (overlay: a real overlay mount;
            // vfs: a bind mount).
            timed!(m.mount, w.mgr.mount(&child), "Mount");
            timed!(m.unmount, w.mgr.unmount(&child), "Unmount");
            timed_sync(&mut m.raw_mount, || {
                floor::mkdir(&f_tgt, 0o755)?;
                if btrfs {
                    let id = floor::btrfs::subvolume_id(&f_child)?;
                    floor::btrfs::mount_subvol(&bdev, id, &f_tgt)
                } else if vfs {
                    floor::bind_mount(&f_child, &f_tgt)
                } else {
                    floor::mount_overlay(&[&f_base], &f_child, &f_wk, &f_tgt)
                }
            })?;
            timed_sync(&mut m.raw_unmount, || {
                floor::umount(&f_tgt)?;
                floor::rmdir(&f_tgt)
            })?;
            ip.mount(&mut m.e_mount, &child)?;
            ip.unmount(&mut m.e_unmount, &child)?;

            // Commit the child (no kernel step on overlay or vfs; btrfs
            // sets the subvolume read-only).
            timed!(m.commit, w.mgr.commit(&done, &child, lbl.clone()), "Commit");
            if btrfs {
                timed_sync(&mut m.raw_commit, || {
                    floor::btrfs::set_readonly(&f_child, true)
                })?;
            }
            ip.commit(&mut m.e_commit, &done, &child, &blbl)?;

            // Stat: read-only, only the D-Bus round trip is its floor.
            timed!(m.stat, w.mgr.stat(&base), "Stat");
            ip.stat(&mut m.e_stat, &base)?;

            // Remove the committed child (a leaf).
            timed!(m.remove, w.mgr.remove(&done), "Remove");
            let (td, tw) = (fl(&f_trash, i), f_trash.join(format!("w{round}{i}")));
            timed_sync(&mut m.raw_remove, || {
                if btrfs {
                    // A read-only subvolume cannot move to another
                    // directory: clear the flag first, as the daemon does.
                    floor::btrfs::set_readonly(&f_child, false)?;
                    return floor::rename(&f_child, &td);
                }
                floor::rename(&f_child, &td)?;
                if !vfs {
                    floor::rename(&f_wk, &tw)?;
                }
                Ok(())
            })?;
            ip.remove(Some(&mut m.e_remove), &done)?;

            timed!(m.ping, w.peer.ping(), "Ping");
            timed_sync(&mut m.sync, || sync.write_and_sync())?;
            // What a store commit writes before its fdatasync (see README).
            timed_sync(&mut m.sync_pages, || {
                sync.write_pages_and_sync(STORE_PAGES, false)
            })?;
            timed_sync(&mut m.sync_fresh, || {
                sync.write_pages_and_sync(STORE_PAGES, true)
            })?;

            // Untimed: the parentless active goes again.
            call(w.mgr.remove(&root).await, "Remove root")?;
            ip.remove(None, &root)?;
            if btrfs {
                // For reference (the daemon destroys in Cleanup): one
                // SNAP_DESTROY_V2 of an empty subvolume.
                timed_sync(&mut m.raw_destroy, || {
                    floor::btrfs::destroy(&f_layers, &name_of(&f_root))
                })?;
            }
        }

        // Untimed clean-up: the trash, the floor's leftovers.
        call(w.mgr.cleanup().await, "Cleanup")?;
        ip.cleanup()?;
        for d in [&f_layers, &f_work, &f_trash] {
            if btrfs {
                floor::btrfs::clear(d)?;
            }
            let _ = std::fs::remove_dir_all(d);
            floor::mkdir(d, 0o755)?;
        }
        if round == "run" {
            l = m;
        }
    }
    call(w.mgr.remove(&base).await, "Remove base")?;
    call(w.mgr.cleanup().await, "Cleanup")?;
    ip.remove(None, &base)?;
    ip.cleanup()?;

    let rows = vec![
        Row {
            op: "Prepare (no parent)",
            id: "prepare",
            daemon: l.prepare.clone(),
            floor: vec![
                (
                    if btrfs {
                        "subvol create+commit"
                    } else {
                        "mkdir"
                    },
                    l.raw_prepare.clone(),
                    1,
                ),
                ("ping", l.ping.clone(), 1),
                ("fdatasync", l.sync.clone(), 1),
            ],
            inproc: l.e_prepare.clone(),
            sub: false,
        },
        Row {
            op: "Prepare (on parent)",
            id: "prepare_child",
            daemon: l.prepare_child.clone(),
            floor: vec![
                (
                    if vfs {
                        "mkdir+reflink copy"
                    } else if btrfs {
                        "snapshot"
                    } else {
                        "2×mkdir"
                    },
                    l.raw_prepare_child.clone(),
                    1,
                ),
                ("ping", l.ping.clone(), 1),
                ("fdatasync", l.sync.clone(), 1),
            ],
            inproc: l.e_prepare_child.clone(),
            sub: false,
        },
        Row {
            op: "Commit",
            id: "commit",
            daemon: l.commit.clone(),
            floor: if btrfs {
                vec![
                    ("set ro", l.raw_commit.clone(), 1),
                    ("ping", l.ping.clone(), 1),
                    ("fdatasync", l.sync.clone(), 1),
                ]
            } else {
                vec![
                    ("ping", l.ping.clone(), 1),
                    ("fdatasync", l.sync.clone(), 1),
                ]
            },
            inproc: l.e_commit.clone(),
            sub: false,
        },
        Row {
            op: "Mount+Unmount",
            id: "mount_unmount",
            daemon: l.mount.zip_sum(&l.unmount),
            floor: vec![
                (
                    if vfs {
                        "mkdir+bind+umount+rmdir"
                    } else if btrfs {
                        "mkdir+mount subvolid+umount+rmdir"
                    } else {
                        "mkdir+overlay+umount+rmdir"
                    },
                    l.raw_mount.zip_sum(&l.raw_unmount),
                    1,
                ),
                ("ping", l.ping.clone(), 2),
            ],
            inproc: l.e_mount.zip_sum(&l.e_unmount),
            sub: false,
        },
        Row {
            op: "  Mount",
            id: "mount",
            daemon: l.mount.clone(),
            floor: vec![
                (
                    if vfs {
                        "mkdir+bind"
                    } else if btrfs {
                        "mkdir+mount subvolid"
                    } else {
                        "mkdir+overlay"
                    },
                    l.raw_mount.clone(),
                    1,
                ),
                ("ping", l.ping.clone(), 1),
            ],
            inproc: l.e_mount.clone(),
            sub: true,
        },
        Row {
            op: "  Unmount",
            id: "unmount",
            daemon: l.unmount.clone(),
            floor: vec![
                ("umount+rmdir", l.raw_unmount.clone(), 1),
                ("ping", l.ping.clone(), 1),
            ],
            inproc: l.e_unmount.clone(),
            sub: true,
        },
        Row {
            op: "Remove",
            id: "remove",
            daemon: l.remove.clone(),
            floor: vec![
                (
                    if vfs {
                        "rename"
                    } else if btrfs {
                        "clear ro+rename"
                    } else {
                        "2×rename"
                    },
                    l.raw_remove.clone(),
                    1,
                ),
                ("ping", l.ping.clone(), 1),
                ("fdatasync", l.sync.clone(), 1),
            ],
            inproc: l.e_remove.clone(),
            sub: false,
        },
        Row {
            op: "Stat (read-only)",
            id: "stat",
            daemon: l.stat.clone(),
            floor: vec![("ping", l.ping.clone(), 1)],
            inproc: l.e_stat.clone(),
            sub: true,
        },
    ];
    let mut floors = vec![
        ("D-Bus Peer.Ping round trip", l.ping),
        ("pwrite 4 KiB + fdatasync", l.sync),
        (
            "  (store-shaped: 12 scattered 4 KiB overwrites + fdatasync)",
            l.sync_pages,
        ),
        (
            "  (store-shaped, appending: 12 new 4 KiB pages + fdatasync)",
            l.sync_fresh,
        ),
        (
            if btrfs {
                "SUBVOL_CREATE + START_SYNC/WAIT_SYNC"
            } else {
                "mkdir (layer dir)"
            },
            l.raw_prepare,
        ),
        (
            if vfs {
                "mkdir + reflink copy of the parent tree"
            } else if btrfs {
                "SNAP_CREATE_V2 (writable snapshot)"
            } else {
                "mkdir layer + mkdir workdir"
            },
            l.raw_prepare_child,
        ),
        (
            if vfs {
                "mkdir target + bind mount"
            } else if btrfs {
                "mkdir target + mount btrfs subvolid=N"
            } else {
                "mkdir target + overlay mount (fsopen…move_mount)"
            },
            l.raw_mount,
        ),
        ("umount + rmdir target", l.raw_unmount),
        (
            if vfs {
                "rename layer into trash"
            } else if btrfs {
                "SUBVOL_SETFLAGS rw + rename into trash"
            } else {
                "rename layer + workdir into trash"
            },
            l.raw_remove,
        ),
    ];
    if btrfs {
        floors.push(("SUBVOL_SETFLAGS read-only (commit)", l.raw_commit));
        floors.push((
            "SNAP_DESTROY_V2 (reference: the daemon destroys in Cleanup)",
            l.raw_destroy,
        ));
        floors.push((
            "(not in the floor: space sample + subvolume id, read after each change)",
            l.raw_sample,
        ));
    }
    let store = vec![
        ("intent transaction (non-durable)", l.st_intent),
        ("Ready transaction (durable: 1 fdatasync)", l.st_durable),
        ("one durable transaction of the same size", l.st_one),
    ];
    let (d, f, s) = VFS_TREE;
    let note = if vfs {
        format!(
            "parent holds {} files of {} in {d} dirs; children reflink-copy it",
            d * f,
            fmt_bytes(s as u64)
        )
    } else if btrfs {
        "parent is an empty read-only subvolume; children are writable snapshots of it".into()
    } else {
        "parent is an empty committed layer; children are overlay mounts on it".into()
    };
    Ok(PoolResult {
        pool,
        driver,
        rows,
        floors,
        store,
        note,
    })
}

fn print_pool(r: &PoolResult, o: &Opts) {
    println!();
    println!(
        "== {} driver (pool {:?}) — {} iterations after {} warm-up; {}",
        r.driver, r.pool, o.iters, o.warmup, r.note
    );
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9} {:>7} {:>7} {:>6} {:>9}  floor = …",
        "op", "p50", "p90", "floor p50", "floor p90", "ratio50", "ratio90", "target", "in-proc"
    );
    for row in &r.rows {
        let ratio = row.ratio();
        let flag = if row.sub {
            " "
        } else if ratio <= TARGET {
            " "
        } else {
            "!"
        };
        println!(
            "{:<22} {:>9} {:>9} {:>9} {:>9} {:>6.2}×{} {:>6.2}× {:>6} {:>9}  {}",
            row.op,
            fmt_us(row.daemon.p50()),
            fmt_us(row.daemon.p90()),
            fmt_us(row.floor_p50()),
            fmt_us(row.floor_p90()),
            ratio,
            flag,
            row.ratio_p90(),
            if row.sub {
                "".to_string()
            } else {
                format!("{TARGET}×")
            },
            fmt_us(row.inproc.p50()),
            row.floor_desc()
        );
    }
    println!("where the time goes (p50): D-Bus part = daemon − in-process engine; engine part = in-process − floor without Ping");
    for row in &r.rows {
        let pings: f64 = row
            .floor
            .iter()
            .filter(|(n, _, _)| *n == "ping")
            .map(|(_, s, k)| s.p50() * *k as f64)
            .sum();
        let dbus = row.daemon.p50() - row.inproc.p50();
        let eng = row.inproc.p50() - (row.floor_p50() - pings);
        println!(
            "  {:<22} D-Bus {:>9} (Ping {:>8}, extra {:>8})   engine {:>9} beyond its kernel floor",
            row.op.trim(),
            fmt_us(dbus),
            fmt_us(pings),
            fmt_us(dbus - pings),
            fmt_us(eng)
        );
    }
    println!("bare store transactions (redb, same xfs), p50 / p95:");
    for (name, s) in &r.store {
        println!(
            "  {:<50} p50 {:>9}   p95 {:>9}",
            name,
            fmt_us(s.p50()),
            fmt_us(s.p95())
        );
    }
    println!(
        "floors measured in this run ({} pool's file system; fdatasync on the store's xfs):",
        r.pool
    );
    for (name, s) in &r.floors {
        println!(
            "  {:<50} p50 {:>9}   p95 {:>9}",
            name,
            fmt_us(s.p50()),
            fmt_us(s.p95())
        );
    }
}

// ---------------------------------------------------------------------------
// Scale: many committed layers, Walk, restart, memory
// ---------------------------------------------------------------------------

struct ScaleResult {
    layers: usize,
    depth: usize,
    build: Duration,
    prepare: Samples,
    commit: Samples,
    rss_built: (u64, u64),
    store_bytes: u64,
    walk_all: Samples,
    walk_raw: Samples,
    walk_rows: usize,
    walk_bytes: usize,
    walk_label: Samples,
    walk_label_rows: usize,
    walk_name: Samples,
    stat: Samples,
    ping: Samples,
    rss_after_walk: (u64, u64),
    restarts: Vec<world::Restart>,
    rss_restart_walk: (u64, u64),
    walk_after_restart: Samples,
    /// In-process, on the daemon's stopped state: Store::open, Engine::open.
    open_store: Duration,
    open_engine: Duration,
}

const CHAIN_LABEL: &str = "bench.layerd.io/chain";

fn scale_name(n: usize, depth: usize) -> String {
    format!("scale/{:05}/{:03}", n / depth, n % depth)
}

async fn scale(w: &mut World, o: &Opts) -> Result<ScaleResult, String> {
    let (total, depth) = (o.layers, o.depth);
    let chains = total.div_ceil(depth);
    eprintln!(
        "[scale] creating {total} committed layers: {chains} chains of up to {depth} (Prepare + Commit each, over D-Bus)"
    );
    let mut prepare = Samples::new();
    let mut commit = Samples::new();
    let t0 = Instant::now();
    let mut last = Instant::now();
    for n in 0..total {
        let (c, d) = (n / depth, n % depth);
        let name = scale_name(n, depth);
        let key = format!("{name}/active");
        let parent = if d == 0 {
            String::new()
        } else {
            scale_name(n - 1, depth)
        };
        let chain = c.to_string();
        let dg = digest(n);
        let l = labels(&[
            (CHAIN_LABEL, chain.as_str()),
            ("containerd.io/snapshot.ref", dg.as_str()),
        ]);
        timed!(
            prepare,
            w.mgr.prepare(&key, &parent, l.clone()),
            format_args!("Prepare {key}")
        );
        timed!(
            commit,
            w.mgr.commit(&name, &key, l),
            format_args!("Commit {name}")
        );
        if last.elapsed() > Duration::from_secs(10) || n + 1 == total {
            last = Instant::now();
            eprintln!(
                "[scale] {}/{total} layers, {:.0} layers/s",
                n + 1,
                (n + 1) as f64 / t0.elapsed().as_secs_f64()
            );
        }
    }
    let build = t0.elapsed();
    let pid = w.daemon_pid().ok_or("layerd is not running")?;
    let rss_built = floor::rss_kib(pid);
    let store_bytes = w.store_bytes();

    // Walk everything, a label filter (one chain) and a name filter.
    let mut walk_all = Samples::new();
    let mut walk_rows = 0;
    for _ in 0..o.walk_reps {
        let rows = timed!(walk_all, w.mgr.walk(vec![]), "Walk");
        walk_rows = rows.len();
    }
    // The same call without decoding the reply into Rust values.
    let mut walk_raw = Samples::new();
    let mut walk_bytes = 0;
    for _ in 0..o.walk_reps {
        let msg = timed!(
            walk_raw,
            w.conn.call_method(
                Some(common::BUS_NAME),
                world::ROOT_PATH,
                Some("org.layerd.Layerd1.Manager"),
                "Walk",
                &(Vec::<String>::new(),),
            ),
            "Walk (raw)"
        );
        walk_bytes = msg.body().len();
    }
    let rss_after_walk = floor::rss_kib(pid);
    let mut walk_label = Samples::new();
    let mut walk_label_rows = 0;
    let mut walk_name = Samples::new();
    for r in 0..o.walk_reps {
        let c = (r * 7919) % chains;
        let f = format!("labels.\"{CHAIN_LABEL}\"=={c}");
        let rows = timed!(walk_label, w.mgr.walk(vec![f]), "Walk (label filter)");
        walk_label_rows = rows.len();
        let f = format!("name=={}", scale_name((r * 104_729) % total, depth));
        timed!(walk_name, w.mgr.walk(vec![f]), "Walk (name filter)");
    }
    if walk_rows < total {
        return Err(format!(
            "Walk returned {walk_rows} rows, expected at least {total}"
        ));
    }

    // Stat of random layers and the D-Bus floor next to it.
    let mut stat = Samples::new();
    let mut ping = Samples::new();
    let n_stat = o.iters.min(300);
    for i in 0..n_stat {
        let name = scale_name((i * 7_919 + 13) % total, depth);
        timed!(stat, w.mgr.stat(&name), "Stat");
        timed!(ping, w.peer.ping(), "Ping");
    }

    // Restarts.
    let probe = scale_name(total - 1, depth);
    let mut restarts = Vec::new();
    let mut walk_after_restart = Samples::new();
    let mut rss_restart_walk = (0, 0);
    for i in 0..o.restarts {
        let r = w.restart_timed(&probe).await?;
        eprintln!(
            "[scale] restart {}: stop {}, start→name {}, name→Stat {}, total {}, RSS {}",
            i + 1,
            fmt_d(r.stop),
            fmt_d(r.to_name),
            fmt_d(r.to_stat),
            fmt_d(r.total),
            fmt_bytes(r.rss_kib * 1024)
        );
        restarts.push(r);
        if i == 0 {
            timed!(walk_after_restart, w.mgr.walk(vec![]), "Walk after restart");
            let pid = w.daemon_pid().ok_or("layerd is not running")?;
            rss_restart_walk = floor::rss_kib(pid);
        }
    }
    // What start-up spends before D-Bus, measured in this process on the
    // daemon's own state while it is stopped.
    w.stop_daemon()?;
    let cfg = w.daemon_config().ok_or("no daemon config")?;
    let opened = inproc::time_open(&cfg);
    w.start_daemon().await?;
    let (open_store, open_engine) = opened?;
    eprintln!(
        "[scale] in-process on the daemon's state: Store::open {}, Engine::open {}",
        fmt_d(open_store),
        fmt_d(open_engine)
    );
    Ok(ScaleResult {
        open_store,
        open_engine,
        walk_raw,
        layers: total,
        depth,
        build,
        prepare,
        commit,
        rss_built,
        store_bytes,
        walk_all,
        walk_rows,
        walk_bytes,
        walk_label,
        walk_label_rows,
        walk_name,
        stat,
        ping,
        rss_after_walk,
        restarts,
        rss_restart_walk,
        walk_after_restart,
    })
}

fn median_d(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or_default()
}

fn print_scale(s: &ScaleResult) {
    let chains = s.layers.div_ceil(s.depth);
    println!();
    println!(
        "== scale: {} committed layers (overlay), {} chains of depth {}, 2 labels each",
        s.layers, chains, s.depth
    );
    println!(
        "build: {} ({:.0} layers/s); store {}",
        fmt_d(s.build),
        s.layers as f64 / s.build.as_secs_f64(),
        fmt_bytes(s.store_bytes)
    );
    let k = 1000.min(s.prepare.len() / 2).max(1);
    let n = s.prepare.len();
    println!(
        "  Prepare p50: first {k} {} → last {k} {}   (p95 {} → {})",
        fmt_us(s.prepare.slice(0, k).p50()),
        fmt_us(s.prepare.slice(n - k, n).p50()),
        fmt_us(s.prepare.slice(0, k).p95()),
        fmt_us(s.prepare.slice(n - k, n).p95())
    );
    println!(
        "  Commit  p50: first {k} {} → last {k} {}   (p95 {} → {})",
        fmt_us(s.commit.slice(0, k).p50()),
        fmt_us(s.commit.slice(n - k, n).p50()),
        fmt_us(s.commit.slice(0, k).p95()),
        fmt_us(s.commit.slice(n - k, n).p95())
    );
    println!(
        "{:<36} {:>10} {:>10} {:>8}  {}",
        "call", "p50", "p95", "rows", "vs Ping p50"
    );
    let ping = s.ping.p50();
    let line = |name: &str, x: &Samples, rows: String| {
        println!(
            "{:<36} {:>10} {:>10} {:>8}  {:.1}×",
            name,
            fmt_us(x.p50()),
            fmt_us(x.p95()),
            rows,
            x.p50() / ping
        );
    };
    line(
        &format!("Walk (all, reply {})", fmt_bytes(s.walk_bytes as u64)),
        &s.walk_all,
        s.walk_rows.to_string(),
    );
    line(
        "  same, reply not decoded by the client",
        &s.walk_raw,
        s.walk_rows.to_string(),
    );
    line(
        "Walk (labels.\"…/chain\"==N)",
        &s.walk_label,
        s.walk_label_rows.to_string(),
    );
    line("Walk (name==X)", &s.walk_name, "1".into());
    line("Stat (random layer)", &s.stat, "1".into());
    line("Peer.Ping", &s.ping, "-".into());
    println!(
        "daemon RSS: {} after building (peak {}), {} after {} full Walks",
        fmt_bytes(s.rss_built.0 * 1024),
        fmt_bytes(s.rss_built.1 * 1024),
        fmt_bytes(s.rss_after_walk.0 * 1024),
        s.walk_all.len()
    );
    if !s.restarts.is_empty() {
        println!(
            "restart (SIGTERM → exit → start → name on bus → first Stat), {} runs:",
            s.restarts.len()
        );
        for (i, r) in s.restarts.iter().enumerate() {
            println!(
                "  #{}: stop {:>9}  start→name {:>9}  name→Stat {:>9}  total {:>9}  RSS {}",
                i + 1,
                fmt_d(r.stop),
                fmt_d(r.to_name),
                fmt_d(r.to_stat),
                fmt_d(r.total),
                fmt_bytes(r.rss_kib * 1024)
            );
        }
        println!(
            "  in-process on the daemon's stopped state: Store::open {}, Engine::open {} (store, pools with the overlay probe, reconciliation, counts)",
            fmt_d(s.open_store),
            fmt_d(s.open_engine)
        );
        println!(
            "  after restart: first Walk {}, RSS {} (peak {})",
            fmt_us(s.walk_after_restart.p50()),
            fmt_bytes(s.rss_restart_walk.0 * 1024),
            fmt_bytes(s.rss_restart_walk.1 * 1024)
        );
    }
}

fn scale_json(s: &ScaleResult) -> Value {
    let n = s.prepare.len();
    let k = 1000.min(n / 2).max(1);
    json!({
        "layers": s.layers,
        "depth": s.depth,
        "chains": s.layers.div_ceil(s.depth),
        "build_s": round2(s.build.as_secs_f64()),
        "prepare": s.prepare.json(),
        "commit": s.commit.json(),
        "prepare_first_p50_us": round1(s.prepare.slice(0, k).p50()),
        "prepare_last_p50_us": round1(s.prepare.slice(n - k, n).p50()),
        "commit_first_p50_us": round1(s.commit.slice(0, k).p50()),
        "commit_last_p50_us": round1(s.commit.slice(n - k, n).p50()),
        "store_bytes": s.store_bytes,
        "walk_all": s.walk_all.json(),
        "walk_all_undecoded": s.walk_raw.json(),
        "open_store_ms": round2(s.open_store.as_secs_f64() * 1e3),
        "open_engine_ms": round2(s.open_engine.as_secs_f64() * 1e3),
        "walk_rows": s.walk_rows,
        "walk_reply_bytes": s.walk_bytes,
        "walk_label": s.walk_label.json(),
        "walk_label_rows": s.walk_label_rows,
        "walk_name": s.walk_name.json(),
        "stat": s.stat.json(),
        "ping": s.ping.json(),
        "rss_kib_built": s.rss_built.0,
        "hwm_kib_built": s.rss_built.1,
        "rss_kib_after_walk": s.rss_after_walk.0,
        "restarts": s.restarts.iter().map(|r| json!({
            "stop_ms": round2(r.stop.as_secs_f64() * 1e3),
            "start_to_name_ms": round2(r.to_name.as_secs_f64() * 1e3),
            "name_to_stat_ms": round2(r.to_stat.as_secs_f64() * 1e3),
            "total_ms": round2(r.total.as_secs_f64() * 1e3),
            "rss_kib": r.rss_kib,
        })).collect::<Vec<_>>(),
        "restart_total_median_ms": round2(median_d(&s.restarts.iter().map(|r| r.total).collect::<Vec<_>>()).as_secs_f64() * 1e3),
        "walk_after_restart_us": round1(s.walk_after_restart.p50()),
        "rss_kib_after_restart_walk": s.rss_restart_walk.0,
    })
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

type Measured = (
    Vec<PoolResult>,
    Option<ScaleResult>,
    Option<Value>,
    Option<Value>,
    Option<Value>,
);

async fn measure(w: &mut World, o: &Opts) -> Result<Measured, String> {
    let diffs = if o.wants("diff") {
        eprintln!(
            "[diff] Apply/Export throughput, {} repetitions",
            o.diff_reps
        );
        let (rows, input) = diff::diff_throughput(w, o.diff_reps, o.vfs).await?;
        diff::print(&rows, input, o.diff_reps);
        Some(diff::json(&rows, input))
    } else {
        None
    };
    let ip_dir = w.mnt().join("inproc");
    floor::mkdir(&ip_dir, 0o755)?;
    let bdir = w.btrfs_device().map(|_| w.btrfs_mnt().join("inproc"));
    let ip = inproc::InProc::open(&ip_dir, &w.inproc_run_dir(), bdir.as_deref())?;
    let mut pools = Vec::new();
    for (part, pool) in [
        ("overlay", OVERLAY_POOL),
        ("vfs", VFS_POOL),
        ("btrfs", BTRFS_POOL),
    ] {
        if o.wants(part) {
            eprintln!("[latency] {part} pool, {} iterations", o.iters);
            let r = latency(w, &ip, pool, o).await?;
            print_pool(&r, o);
            pools.push(r);
        }
    }
    drop(ip);
    let ctd = if o.wants("containerd") {
        eprintln!("[containerd] built-in snapshotters vs layerd through a private containerd");
        let r = containerd::table(w, o).await?;
        r.print(o);
        Some(r.json())
    } else {
        None
    };
    let thin = if o.wants("thin") {
        eprintln!("[latency] thin pool, {} iterations", o.iters);
        Some(thin::table(w, o).await?)
    } else {
        None
    };
    let scale = if o.wants("scale") {
        let s = scale(w, o).await?;
        print_scale(&s);
        Some(s)
    } else {
        None
    };

    Ok((pools, scale, diffs, thin, ctd))
}

async fn run(o: Opts) -> Result<(), String> {
    let bin = PathBuf::from(common::Daemon::binary());
    let release = bin.components().any(|c| c.as_os_str() == "release");
    let kernel = sh("uname", &["-r"]);
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let tmp_dev = sh("findmnt", &["-n", "-o", "SOURCE,FSTYPE", "-T", "/tmp"]);
    println!("layerd benchmark");
    let load_start = loadavg();
    println!(
        "host: Linux {kernel}, {ncpu} CPU ({}), /tmp on {tmp_dev}, load average {load_start}",
        cpu_model()
    );
    println!(
        "daemon: {} ({}){}",
        bin.display(),
        if release {
            "release build"
        } else {
            "NOT a release build"
        },
        if cfg!(debug_assertions) {
            " — benchmark built with debug assertions"
        } else {
            ""
        }
    );
    if !release {
        eprintln!("warning: layerd is not a release build; run `cargo bench --bench layerd`");
    }
    // The containerd table compares btrfs too, and needs layerd's
    // containerd sockets.
    let ctd_toml = o
        .wants("containerd")
        .then(|| containerd::layerd_toml(&containerd::pairs(&o)));
    let mut w = World::new(
        o.image_size,
        &o.daemon_log,
        o.wants("btrfs") || (o.btrfs && o.wants("containerd")),
        o.wants("thin"),
        ctd_toml,
    )
    .await?;
    println!(
        "world: {} sparse xfs (reflink=1) on {} (image in {}, loop direct-io off); store, pools and floors on it; daemon pid {}",
        fmt_bytes(w.image_size),
        w.loop_device(),
        w.path.display(),
        w.daemon_pid().unwrap_or(0)
    );

    let measured = measure(&mut w, &o).await;
    let (pools, scale, diffs, thin, ctd) = match measured {
        Ok(v) => v,
        Err(e) => {
            let log = w.daemon_log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("----- layerd log (tail) -----");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
            eprintln!("-----------------------------");
            return Err(e);
        }
    };
    let load_end = loadavg();
    println!();
    println!("load average at the end: {load_end} (other work on the host skews both sides; compare ratios, not absolutes)");
    let report = json!({
        "bench": "layerd",
        "version": env!("CARGO_PKG_VERSION"),
        "host": { "kernel": kernel, "cpus": ncpu, "cpu": cpu_model(), "tmp": tmp_dev, "load_start": load_start, "load_end": load_end },
        "release": release,
        "iters": o.iters,
        "warmup": o.warmup,
        "target_ratio": TARGET,
        "pools": pools.iter().map(|p| json!({
            "pool": p.pool,
            "driver": p.driver,
            "rows": p.rows.iter().map(Row::json).collect::<Vec<_>>(),
            "floors": p.floors.iter().map(|(n, s)| json!({ "name": n.trim(), "samples": s.json() })).collect::<Vec<_>>(),
            "store": p.store.iter().map(|(n, s)| json!({ "name": n, "samples": s.json() })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "scale": scale.as_ref().map(scale_json),
        "diff": diffs,
        "thin": thin,
        "containerd": ctd,
    });
    println!();
    println!("{report}");
    drop(w);
    Ok(())
}

fn main() -> ExitCode {
    // cargo bench passes `--bench` and any filter (see Opts::only).
    let o = Opts::from_env();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("layerd bench: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C drops the benchmark future, whose World tears everything down.
    let res = rt.block_on(async {
        tokio::select! {
            r = run(o) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
        }
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("layerd bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}
