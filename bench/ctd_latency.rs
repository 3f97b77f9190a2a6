//! Per-operation latency of containerd's snapshots API, one long-lived
//! gRPC client: through containerd's own socket to its built-in
//! snapshotters and to layerd (a proxy snapshotter), so both pay
//! containerd's metadata store, and straight to a layerd socket (layerd's
//! share alone). All targets run interleaved, each iteration in a rotated
//! order, so background load hits every side alike.
//!
//! Through containerd, Remove deletes containerd's record only; the
//! snapshotter's own removal happens in the garbage collection, which the
//! GC part times per batch (one snapshotter dirty at a time).

use std::path::Path;
use std::time::Instant;

use containerd_snapshots::tonic::transport::Channel;

use crate::ctd_grpc::{self, Snap};
use crate::stats::Samples;

/// The timed operations, in the order of one iteration.
pub const OPS: [&str; 6] = [
    "Prepare (no parent)",
    "Prepare (on parent)",
    "Commit",
    "Stat",
    "Remove",
    // Through containerd this never reaches the snapshotter (containerd
    // answers from its own records): the round trip to containerd and one
    // read transaction. Straight to layerd: its round trip and one lookup.
    "Stat (missing key)",
];

/// Committed snapshots removed per timed garbage collection.
pub const GC_BATCH: usize = 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Via {
    /// A snapshotter built into containerd, through containerd's socket.
    Builtin,
    /// layerd as containerd's proxy snapshotter, through containerd's socket.
    Layerd,
    /// layerd's own socket, no containerd in between.
    Direct,
}

pub struct Target {
    /// The snapshotter's name in containerd (or the layerd socket's name).
    pub name: String,
    pub via: Via,
    snap: Snap,
    pub ops: Vec<Samples>,
    /// Through containerd: sync GCs each removing GC_BATCH snapshots of
    /// this snapshotter. Direct: GC_BATCH Removes + one Cleanup.
    pub gc: Samples,
}

impl Target {
    pub fn new(ch: &Channel, name: &str, snapshotter: &str, via: Via) -> Target {
        Target {
            name: name.to_string(),
            via,
            snap: Snap::new(ch, snapshotter),
            ops: OPS.iter().map(|_| Samples::new()).collect(),
            gc: Samples::new(),
        }
    }
}

fn st(what: &str, t: &Target, e: containerd_snapshots::tonic::Status) -> String {
    format!("{} {what}: {:?}: {}", t.name, e.code(), e.message())
}

/// The committed parent `base`: 4 dirs × 8 files × 16 KiB written into
/// the mounted active snapshot (as the D-Bus vfs table's parent), so a
/// copying snapshotter (native, vfs) copies something. Labelled a GC root:
/// containerd's collection removes every snapshot nothing refers to.
async fn make_base(t: &Target, scratch: &Path) -> Result<(), String> {
    let mounts = t
        .snap
        .prepare("base-src", "")
        .await
        .map_err(|e| st("Prepare base-src", t, e))?;
    let specs: Vec<crate::common::MountSpec> = mounts
        .into_iter()
        .map(|m| (m.r#type, m.source, m.options))
        .collect();
    let dir = scratch.join(&t.name);
    crate::common::mount_specs(&specs, &dir)?;
    let (d, f, s) = crate::VFS_TREE;
    let written = crate::floor::write_tree(&dir, d, f, s);
    crate::common::umount_all(&dir)?;
    let _ = std::fs::remove_dir(&dir);
    written?;
    let root = [(
        "containerd.io/gc.root".to_string(),
        "layerd-bench".to_string(),
    )];
    t.snap
        .commit_labelled("base", "base-src", root.into_iter().collect())
        .await
        .map_err(|e| st("Commit base", t, e))
}

async fn timed<T>(
    s: &mut Samples,
    keep: bool,
    f: impl std::future::Future<Output = ctd_grpc::R<T>>,
) -> ctd_grpc::R<T> {
    let t0 = Instant::now();
    let r = f.await;
    if keep && r.is_ok() {
        s.push(t0.elapsed());
    }
    r
}

async fn iteration(t: &mut Target, i: usize, keep: bool) -> Result<(), String> {
    let (a, b, c) = (format!("i{i}-a"), format!("i{i}-b"), format!("i{i}-c"));
    let snap = t.snap.clone();
    let ops = &mut t.ops;
    let r = async {
        timed(&mut ops[0], keep, snap.prepare(&a, "")).await?;
        timed(&mut ops[1], keep, snap.prepare(&b, "base")).await?;
        timed(&mut ops[2], keep, snap.commit(&c, &b)).await?;
        timed(&mut ops[3], keep, snap.stat(&c)).await?;
        timed(&mut ops[4], keep, snap.remove(&c)).await?;
        let t0 = Instant::now();
        match snap.stat("missing").await {
            Err(e) if e.code() == containerd_snapshots::tonic::Code::NotFound => {
                if keep {
                    ops[5].push(t0.elapsed());
                }
            }
            Err(e) => return Err(e),
            Ok(_) => {
                return Err(containerd_snapshots::tonic::Status::internal(
                    "Stat of a missing key succeeded",
                ))
            }
        }
        snap.remove(&a).await
    }
    .await;
    r.map_err(|e| st(&format!("iteration {i}"), t, e))
}

/// Builds every target's parent, runs `warmup + iters` interleaved
/// iterations (an untimed collection every 50), then `gc_rounds` rounds of
/// the GC part. Returns the baseline: sync GCs with nothing to remove.
pub async fn run(
    ch: &Channel,
    targets: &mut [Target],
    scratch: &Path,
    warmup: usize,
    iters: usize,
    gc_rounds: usize,
) -> Result<Samples, String> {
    for t in targets.iter() {
        make_base(t, scratch).await?;
    }
    // The parents' data reaches the disk now, not during a timed call.
    let _ = std::process::Command::new("sync").status();
    let mut n_gc = 0;
    let gc = |n: &mut usize| {
        *n += 1;
        ctd_grpc::gc(ch, *n)
    };
    let n = targets.len();
    for i in 0..warmup + iters {
        for k in 0..n {
            iteration(&mut targets[(i + k) % n], i, i >= warmup).await?;
        }
        if (i + 1) % 50 == 0 {
            gc(&mut n_gc).await.map_err(|e| format!("gc: {e}"))?;
        }
    }
    gc(&mut n_gc).await.map_err(|e| format!("gc: {e}"))?;

    let mut baseline = Samples::new();
    for r in 0..gc_rounds {
        for k in 0..n {
            let t = &mut targets[(r + k) % n];
            let names: Vec<String> = (0..GC_BATCH).map(|j| format!("g{r}-{j}")).collect();
            for name in &names {
                let key = format!("{name}-k");
                t.snap
                    .prepare(&key, "")
                    .await
                    .map_err(|e| st("Prepare (gc batch)", t, e))?;
                t.snap
                    .commit(name, &key)
                    .await
                    .map_err(|e| st("Commit (gc batch)", t, e))?;
            }
            let t0 = Instant::now();
            for name in &names {
                t.snap
                    .remove(name)
                    .await
                    .map_err(|e| st("Remove (gc batch)", t, e))?;
            }
            let removes = t0.elapsed();
            let d = if t.via == Via::Direct {
                // What containerd's collection asks of layerd: the
                // Removes, then one Cleanup.
                let t1 = Instant::now();
                t.snap.cleanup().await.map_err(|e| st("Cleanup", t, e))?;
                removes + t1.elapsed()
            } else {
                gc(&mut n_gc).await.map_err(|e| format!("gc: {e}"))?
            };
            t.gc.push(d);
        }
        baseline.push(gc(&mut n_gc).await.map_err(|e| format!("gc: {e}"))?);
    }
    Ok(baseline)
}

/// Per-snapshot share of a batch figure.
pub fn per_snapshot(us: f64) -> f64 {
    us / GC_BATCH as f64
}
