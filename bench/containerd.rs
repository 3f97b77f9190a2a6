//! The containerd table: layerd as containerd's proxy snapshotter beside
//! containerd's built-in snapshotters on the same file systems, in one
//! run — overlayfs vs layerd's overlay pool and native vs its vfs pool on
//! the world's xfs, btrfs vs its btrfs pool on the world's btrfs. Per
//! operation gRPC latency (ctd_latency.rs), removal in the garbage
//! collection, and containerd's unpack of one image and `ctr run … true`
//! (ctr_image.rs). Ratio = layerd / built-in; the target is ≤ 1.
//! The report and its JSON: ctd_report.rs.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::ctd_daemon::Containerd;
use crate::ctd_grpc::{self, Snap};
use crate::ctd_latency::{self, Target, Via};
use crate::ctr_image::{self, Image};
use crate::stats::{fmt_bytes, Samples};
use crate::world::{World, BTRFS_POOL, OVERLAY_POOL, VFS_POOL};
use crate::Opts;

/// A built-in snapshotter and the layerd pool set beside it.
#[derive(Clone, Copy)]
pub struct Pair {
    pub fs: &'static str,
    pub builtin: &'static str,
    pub pool: &'static str,
    pub driver: &'static str,
}

pub const PAIRS: [Pair; 3] = [
    Pair {
        fs: "xfs",
        builtin: "overlayfs",
        pool: OVERLAY_POOL,
        driver: "overlay",
    },
    Pair {
        fs: "xfs",
        builtin: "native",
        pool: VFS_POOL,
        driver: "vfs",
    },
    Pair {
        fs: "btrfs",
        builtin: "btrfs",
        pool: BTRFS_POOL,
        driver: "btrfs",
    },
];

impl Pair {
    /// layerd's proxy snapshotter in containerd's config.
    pub fn layerd(&self) -> String {
        format!("layerd-{}", self.pool)
    }
    /// The layerd socket the bench uses directly (a key space of its own,
    /// so containerd's garbage collection never sees its snapshots).
    pub fn direct(&self) -> String {
        format!("direct-{}", self.pool)
    }
}

/// The pairs this run can measure (btrfs needs the world's btrfs).
pub fn pairs(o: &Opts) -> Vec<Pair> {
    PAIRS
        .into_iter()
        .filter(|p| (p.pool != VFS_POOL || o.vfs) && (p.pool != BTRFS_POOL || o.btrfs))
        .collect()
}

/// The `[containerd]` table of layerd's config: a socket per pool for
/// containerd, and one per pool for the direct rows.
pub fn layerd_toml(pairs: &[Pair]) -> String {
    let pools: Vec<String> = pairs
        .iter()
        .map(|p| crate::common::toml_str(p.pool))
        .collect();
    let mut s = format!("[containerd]\npools = [{}]\n", pools.join(", "));
    for p in pairs {
        s.push_str(&format!(
            "\n[[containerd.snapshotter]]\nname = {}\npool = {}\n",
            crate::common::toml_str(&p.direct()),
            crate::common::toml_str(p.pool)
        ));
    }
    s
}

/// What is missing for this table, if anything.
pub fn unavailable() -> Option<String> {
    let missing: Vec<&str> = ["containerd", "ctr", "runc", "containerd-shim-runc-v2"]
        .into_iter()
        .filter(|t| {
            !["/usr/local/bin", "/usr/bin", "/usr/sbin", "/bin", "/sbin"]
                .iter()
                .any(|d| std::path::Path::new(d).join(t).is_file())
        })
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} missing (apt-get install -y containerd runc)",
            missing.join(", ")
        )
    })
}

/// Everything the table measured; ctd_report.rs prints it.
pub struct Results {
    pub pairs: Vec<Pair>,
    pub targets: Vec<Target>,
    pub gc_baseline: Samples,
    pub image: Image,
    /// Per snapshotter: unpack total, its Applys, its snapshot calls.
    pub unpack: HashMap<String, [Samples; 3]>,
    pub run: HashMap<String, Samples>,
}

pub async fn table(w: &World, o: &Opts) -> Result<Results, String> {
    let pairs = pairs(o);
    let run_dir = w.run_dir();
    let proxies: Vec<(String, PathBuf)> = pairs
        .iter()
        .map(|p| {
            (
                p.layerd(),
                run_dir.join(format!("containerd-{}.sock", p.pool)),
            )
        })
        .collect();
    let btrfs_root = pairs
        .iter()
        .any(|p| p.pool == BTRFS_POOL)
        .then(|| w.btrfs_mnt().join("ctd"));
    let mut ctd = Containerd::start(
        &w.path.join("ctd"),
        &w.mnt().join("ctd"),
        btrfs_root.as_deref(),
        &proxies,
    )?;
    let r = measure(w, o, &mut ctd, pairs).await;
    if r.is_err() {
        eprintln!(
            "----- containerd log (tail) -----\n{}\n---------------------------------",
            ctd.log_tail(30)
        );
    }
    r
}

async fn measure(
    w: &World,
    o: &Opts,
    ctd: &mut Containerd,
    pairs: Vec<Pair>,
) -> Result<Results, String> {
    let mut names: Vec<String> = Vec::new();
    for p in &pairs {
        names.push(p.builtin.to_string());
        names.push(p.layerd());
    }
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let ch = ctd.ready(&name_refs).await?;
    eprintln!(
        "[containerd] pid {}, root {}; snapshotters {}",
        ctd.pid(),
        ctd.root.display(),
        names.join(", ")
    );

    let mut targets = Vec::new();
    for p in &pairs {
        targets.push(Target::new(&ch, p.builtin, p.builtin, Via::Builtin));
        targets.push(Target::new(&ch, &p.layerd(), &p.layerd(), Via::Layerd));
        let sock = w.run_dir().join(format!("containerd-{}.sock", p.direct()));
        let dch = ctd_grpc::channel(&sock).await?;
        targets.push(Target::new(&dch, &p.direct(), "", Via::Direct));
    }
    eprintln!(
        "[containerd] latency: {} targets, {} iterations after {} warm-up; then {} GC rounds",
        targets.len(),
        o.iters,
        o.warmup,
        o.ctd_gc_rounds
    );
    let scratch = w.path.join("ctd-scratch");
    let gc_baseline = ctd_latency::run(
        &ch,
        &mut targets,
        &scratch,
        o.warmup,
        o.iters,
        o.ctd_gc_rounds,
    )
    .await?;
    let _ = std::fs::remove_dir(&scratch);
    for t in targets.iter().filter(|t| t.via == Via::Direct) {
        Snap::new(
            &ctd_grpc::channel(&w.run_dir().join(format!("containerd-{}.sock", t.name))).await?,
            "",
        )
        .remove_all()
        .await
        .map_err(|e| format!("{}: clean up: {e}", t.name))?;
    }

    // Unpack and run.
    let image = ctr_image::build(&w.path.join("ctd-image"))?;
    eprintln!(
        "[containerd] image: busybox + {} ({} entries, {} tar); {} repetitions",
        image.tree,
        image.entries,
        fmt_bytes(image.layer_bytes),
        o.ctd_reps
    );
    ctr_image::import(ctd, &image)?;
    let mut n_gc = 1_000_000;
    let mut unpack: HashMap<String, [Samples; 3]> = HashMap::new();
    let mut run: HashMap<String, Samples> = HashMap::new();
    let n = names.len();
    for r in 0..o.ctd_reps {
        for k in 0..n {
            let s = &names[(r + k) % n];
            let snap = Snap::new(&ch, s);
            // Start from nothing: the last unpack's snapshots (and any
            // left by the latency part) removed and collected.
            snap.remove_all()
                .await
                .map_err(|e| format!("{s}: remove snapshots: {e}"))?;
            n_gc += 1;
            ctd_grpc::gc(&ch, n_gc)
                .await
                .map_err(|e| format!("gc: {e}"))?;
            let u = ctr_image::unpack(&ch, &snap, &image, r)
                .await
                .map_err(|e| format!("{s}: {e}"))?;
            let e = unpack.entry(s.clone()).or_default();
            e[0].push(u.total);
            e[1].push(u.apply);
            e[2].push(u.snapshot_calls);
        }
    }
    for r in 0..o.ctd_reps {
        for k in 0..n {
            let s = &names[(r + k) % n];
            let d = ctr_image::run_true(ctd, &image, s, &format!("run-{s}-{r}"))?;
            run.entry(s.clone()).or_default().push(d);
        }
        n_gc += 1;
        ctd_grpc::gc(&ch, n_gc)
            .await
            .map_err(|e| format!("gc: {e}"))?;
    }
    // Leave containerd empty: the image, every snapshot, collected.
    let _ = ctd.ctr().args(["images", "rm", &image.name]).output();
    for s in &names {
        Snap::new(&ch, s)
            .remove_all()
            .await
            .map_err(|e| format!("{s}: remove snapshots: {e}"))?;
    }
    ctd_grpc::gc(&ch, n_gc + 1)
        .await
        .map_err(|e| format!("gc: {e}"))?;
    let _ = std::fs::remove_dir_all(w.path.join("ctd-image"));
    Ok(Results {
        pairs,
        targets,
        gc_baseline,
        image,
        unpack,
        run,
    })
}
