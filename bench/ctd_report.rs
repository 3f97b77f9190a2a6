//! The containerd table's report: one table per pair (built-in, layerd
//! through containerd, layerd direct; ratio = layerd / built-in), the
//! unpack and run table, and the JSON of both.

use serde_json::{json, Value};

use crate::containerd::{Pair, Results};
use crate::ctd_grpc;
use crate::ctd_latency::{self, Target, OPS};
use crate::stats::{fmt_bytes, fmt_us, round1, round2, Samples};
use crate::Opts;

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn fmt_ratio(r: f64) -> String {
    format!("{:.2}×{}", r, if r > 1.0 { "!" } else { " " })
}

impl Results {
    fn target(&self, name: &str) -> &Target {
        self.targets
            .iter()
            .find(|t| t.name == name)
            .expect("target")
    }

    /// (op, built-in, layerd, direct) samples of one pair; the last row is
    /// the removal in the collection, per snapshot.
    fn rows(&self, p: &Pair) -> Vec<(String, Samples, Samples, Samples)> {
        let (b, l, d) = (
            self.target(p.builtin),
            self.target(&p.layerd()),
            self.target(&p.direct()),
        );
        let mut rows: Vec<_> = OPS
            .iter()
            .enumerate()
            .map(|(i, op)| {
                let op = if *op == "Remove" {
                    "Remove (containerd's record)".to_string()
                } else {
                    op.to_string()
                };
                (op, b.ops[i].clone(), l.ops[i].clone(), d.ops[i].clone())
            })
            .collect();
        rows.push((
            format!("GC of {} removed (batch)", ctd_latency::GC_BATCH),
            b.gc.clone(),
            l.gc.clone(),
            d.gc.clone(),
        ));
        rows
    }

    pub fn print(&self, o: &Opts) {
        for p in &self.pairs {
            println!();
            println!(
                "== containerd snapshots API on {}: built-in {} vs layerd pool \"{}\" ({} driver) — {} iterations after {} warm-up, one gRPC client, namespace {}",
                p.fs, p.builtin, p.pool, p.driver, o.iters, o.warmup, ctd_grpc::NAMESPACE
            );
            println!(
                "{:<30} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>10} {:>10} {:>9}",
                "op",
                format!("{} p50", short(p.builtin)),
                "p99",
                "layerd p50",
                "p99",
                "ratio50",
                "ratio99",
                "direct p50",
                "p99",
                "via/dir50"
            );
            for (op, b, l, d) in self.rows(p) {
                println!(
                    "{:<30} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>10} {:>10} {:>8.2}×",
                    op,
                    fmt_us(b.p50()),
                    fmt_us(b.pct(99.0)),
                    fmt_us(l.p50()),
                    fmt_us(l.pct(99.0)),
                    fmt_ratio(ratio(l.p50(), b.p50())),
                    fmt_ratio(ratio(l.pct(99.0), b.pct(99.0))),
                    fmt_us(d.p50()),
                    fmt_us(d.pct(99.0)),
                    ratio(l.p50(), d.p50())
                );
            }
            let (b, l) = (self.target(p.builtin), self.target(&p.layerd()));
            println!(
                "  per removed snapshot (GC p50 / {}): {} {}, layerd {}, direct (Removes + Cleanup) {}",
                ctd_latency::GC_BATCH,
                p.builtin,
                fmt_us(ctd_latency::per_snapshot(b.gc.p50())),
                fmt_us(ctd_latency::per_snapshot(l.gc.p50())),
                fmt_us(ctd_latency::per_snapshot(self.target(&p.direct()).gc.p50()))
            );
        }
        println!(
            "  (a GC with nothing to remove: p50 {}, {} rounds; Remove through containerd deletes its record only, the snapshotter's removal runs in the GC)",
            fmt_us(self.gc_baseline.p50()),
            self.gc_baseline.len()
        );

        println!();
        println!(
            "== containerd unpack and run: image = busybox-static layer + /{} ({} entries, {} uncompressed tar); median of {}",
            self.image.tree,
            self.image.entries,
            fmt_bytes(self.image.layer_bytes),
            o.ctd_reps
        );
        println!(
            "{:<14} {:<6} {:>10} {:>8} {:>10} {:>8} {:>12} {:>8} {:>12} {:>8}",
            "snapshotter",
            "fs",
            "unpack",
            "ratio",
            "Apply",
            "ratio",
            "snap. calls",
            "ratio",
            "ctr run true",
            "ratio"
        );
        for p in &self.pairs {
            let b = &self.unpack[p.builtin];
            let br = self.run[p.builtin].p50();
            for name in [p.builtin.to_string(), p.layerd()] {
                let u = &self.unpack[&name];
                let r = self.run[&name].p50();
                let is_l = name != p.builtin;
                let show = |x: f64, y: f64| {
                    if is_l {
                        fmt_ratio(ratio(x, y))
                    } else {
                        String::new()
                    }
                };
                println!(
                    "{:<14} {:<6} {:>10} {:>8} {:>10} {:>8} {:>12} {:>8} {:>12} {:>8}",
                    name,
                    p.fs,
                    fmt_us(u[0].p50()),
                    show(u[0].p50(), b[0].p50()),
                    fmt_us(u[1].p50()),
                    show(u[1].p50(), b[1].p50()),
                    fmt_us(u[2].p50()),
                    show(u[2].p50(), b[2].p50()),
                    fmt_us(r),
                    show(r, br)
                );
            }
        }
        println!(
            "  unpack = per layer Stat, Prepare, the diff service's Apply, Commit (containerd's unpacker's calls, from the bench's client); Apply = their Applys; snap. calls = the rest; run = `ctr run --rm --null-io --snapshotter S IMAGE ID /bin/true`"
        );
    }

    pub fn json(&self) -> Value {
        let latency: Vec<Value> = self
            .pairs
            .iter()
            .map(|p| {
                let rows: Vec<Value> = self
                    .rows(p)
                    .into_iter()
                    .map(|(op, b, l, d)| {
                        json!({
                            "op": op,
                            "builtin": b.json(),
                            "layerd": l.json(),
                            "direct": d.json(),
                            "builtin_p99_us": round1(b.pct(99.0)),
                            "layerd_p99_us": round1(l.pct(99.0)),
                            "direct_p99_us": round1(d.pct(99.0)),
                            "ratio_p50": round2(ratio(l.p50(), b.p50())),
                            "ratio_p99": round2(ratio(l.pct(99.0), b.pct(99.0))),
                            "via_over_direct_p50": round2(ratio(l.p50(), d.p50())),
                        })
                    })
                    .collect();
                json!({ "fs": p.fs, "builtin": p.builtin, "pool": p.pool, "driver": p.driver, "rows": rows })
            })
            .collect();
        let unpack: Vec<Value> = self
            .pairs
            .iter()
            .map(|p| {
                let (bu, lu) = (&self.unpack[p.builtin], &self.unpack[&p.layerd()]);
                let (br, lr) = (&self.run[p.builtin], &self.run[&p.layerd()]);
                let part = |i: usize| {
                    json!({
                        "builtin": bu[i].json(),
                        "layerd": lu[i].json(),
                        "ratio_p50": round2(ratio(lu[i].p50(), bu[i].p50())),
                    })
                };
                json!({
                    "fs": p.fs, "builtin": p.builtin, "layerd": p.layerd(),
                    "unpack": part(0), "apply": part(1), "snapshot_calls": part(2),
                    "run": { "builtin": br.json(), "layerd": lr.json(), "ratio_p50": round2(ratio(lr.p50(), br.p50())) },
                })
            })
            .collect();
        json!({
            "latency": latency,
            "gc_batch": ctd_latency::GC_BATCH,
            "gc_baseline": self.gc_baseline.json(),
            "image": { "tree": self.image.tree, "entries": self.image.entries, "layer_bytes": self.image.layer_bytes },
            "unpack": unpack,
        })
    }
}

fn short(builtin: &str) -> &str {
    match builtin {
        "overlayfs" => "ovl",
        b => b,
    }
}
