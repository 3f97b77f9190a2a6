//! Layer diff throughput: Apply beside `tar -x` and Export beside `tar -c`,
//! into and out of the same file system (the world's xfs), in the same run.
//!
//! The input is a GNU tar (PAX, xattrs) of the machine's own files
//! (`LAYERD_BENCH_DIFF_SRC`, default `etc usr/share/doc`), kept in the
//! page cache on /tmp. Apply ends with syncfs (the layer is durable when
//! the call returns), so its floor is `tar -x` followed by `sync -f`;
//! the floor extracts with the same attributes (`-p --xattrs
//! --numeric-owner`). Export writes a file on /tmp, as its floor `tar -c`
//! does (not /dev/null: GNU tar skips reading files for /dev/null).
//! Ratio = layerd throughput / floor throughput (≥ 0.8 is the target).

use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::stats::fmt_bytes;
use crate::world::{World, OVERLAY_POOL, VFS_POOL};
use crate::{call, labels};

const TAR_FLAGS: [&str; 4] = [
    "--xattrs",
    "--xattrs-include=*",
    "--numeric-owner",
    "--format=posix",
];

fn run(cmd: &mut Command) -> Result<Duration, String> {
    let t = Instant::now();
    let st = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    let d = t.elapsed();
    if !st.success() {
        return Err(format!("{cmd:?}: {st}"));
    }
    Ok(d)
}

pub struct DiffRow {
    pub pool: &'static str,
    pub apply: Duration,
    pub tar_x: Duration,
    pub export: Duration,
    pub tar_c: Duration,
    pub content_bytes: u64,
    pub tar_bytes: u64,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub async fn diff_throughput(
    w: &World,
    reps: usize,
    vfs: bool,
) -> Result<(Vec<DiffRow>, u64), String> {
    let src = std::env::var("LAYERD_BENCH_DIFF_SRC").unwrap_or_else(|_| "etc usr/share/doc".into());
    let input = w.path.join("diff-in.tar");
    let mut c = Command::new("tar");
    c.args(TAR_FLAGS).arg("-C").arg("/").arg("-cf").arg(&input);
    c.args(src.split_whitespace());
    run(&mut c)?;
    let input_bytes = std::fs::metadata(&input).map_err(|e| e.to_string())?.len();
    // Warm the page cache for both sides.
    let _ = std::fs::read(&input);
    let mut rows = Vec::new();
    let pools: &[&'static str] = if vfs {
        &[OVERLAY_POOL, VFS_POOL]
    } else {
        &[OVERLAY_POOL]
    };
    for pool in pools {
        let (mut ap, mut tx, mut ex, mut tc) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut content, mut tar_bytes) = (0, 0);
        for rep in 0..reps {
            let key = format!("bench/diff/{pool}/{rep}");
            call(
                w.mgr
                    .prepare(&key, "", labels(&[("layerd.io/pool", pool)]))
                    .await,
                "Prepare",
            )?;
            let f = std::fs::File::open(&input).map_err(|e| e.to_string())?;
            let t = Instant::now();
            content = call(
                w.mgr.apply(&key, zbus::zvariant::Fd::from(f.as_fd())).await,
                "Apply",
            )?;
            ap.push(t.elapsed());

            let fdir = w.floor_dir().join(format!("diff-{pool}-{rep}"));
            std::fs::create_dir_all(&fdir).map_err(|e| e.to_string())?;
            let mut c = Command::new("tar");
            c.args(TAR_FLAGS)
                .arg("-xpf")
                .arg(&input)
                .arg("-C")
                .arg(&fdir);
            let t = Instant::now();
            run(&mut c)?;
            run(Command::new("sync").arg("-f").arg(&fdir))?;
            tx.push(t.elapsed());

            let out = w.path.join("diff-out.tar");
            let f = std::fs::File::create(&out).map_err(|e| e.to_string())?;
            let t = Instant::now();
            tar_bytes = call(
                w.mgr
                    .export(&key, zbus::zvariant::Fd::from(f.as_fd()))
                    .await,
                "Export",
            )?;
            ex.push(t.elapsed());
            drop(f);

            let mut c = Command::new("tar");
            c.args(TAR_FLAGS)
                .arg("-cf")
                .arg(&out)
                .arg("-C")
                .arg(&fdir)
                .arg(".");
            tc.push(run(&mut c)?);

            call(w.mgr.remove(&key).await, "Remove")?;
            let _ = std::fs::remove_dir_all(&fdir);
            let _ = std::fs::remove_file(&out);
        }
        call(w.mgr.cleanup().await, "Cleanup")?;
        rows.push(DiffRow {
            pool,
            apply: median(ap),
            tar_x: median(tx),
            export: median(ex),
            tar_c: median(tc),
            content_bytes: content,
            tar_bytes,
        });
    }
    let _ = std::fs::remove_file(&input);
    Ok((rows, input_bytes))
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

pub fn print(rows: &[DiffRow], input_bytes: u64, reps: usize) {
    println!();
    println!(
        "layer diffs: a {} tar of the machine's files ({} of file content), median of {reps}; ratio = layerd throughput / floor throughput (target ≥ 0.8)",
        fmt_bytes(input_bytes),
        fmt_bytes(rows.first().map(|r| r.content_bytes).unwrap_or(0)),
    );
    println!("  pool      op      layerd      floor                     ratio");
    for r in rows {
        println!(
            "  {:<9} Apply   {:>6.2} s   {:>6.2} s (tar -x; sync -f)  {:.2}   ({:.0} MB/s of tar)",
            r.pool,
            r.apply.as_secs_f64(),
            r.tar_x.as_secs_f64(),
            r.tar_x.as_secs_f64() / r.apply.as_secs_f64(),
            mbps(input_bytes, r.apply)
        );
        println!(
            "  {:<9} Export  {:>6.2} s   {:>6.2} s (tar -c)           {:.2}   ({} written)",
            r.pool,
            r.export.as_secs_f64(),
            r.tar_c.as_secs_f64(),
            r.tar_c.as_secs_f64() / r.export.as_secs_f64(),
            fmt_bytes(r.tar_bytes)
        );
    }
}

pub fn json(rows: &[DiffRow], input_bytes: u64) -> Value {
    json!({
        "input_bytes": input_bytes,
        "rows": rows.iter().map(|r| json!({
            "pool": r.pool,
            "apply_s": r.apply.as_secs_f64(),
            "tar_x_sync_s": r.tar_x.as_secs_f64(),
            "apply_ratio": r.tar_x.as_secs_f64() / r.apply.as_secs_f64(),
            "export_s": r.export.as_secs_f64(),
            "tar_c_s": r.tar_c.as_secs_f64(),
            "export_ratio": r.tar_c.as_secs_f64() / r.export.as_secs_f64(),
            "content_bytes": r.content_bytes,
            "export_bytes": r.tar_bytes,
        })).collect::<Vec<_>>(),
    })
}
