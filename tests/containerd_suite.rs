//! containerd's own snapshotter testsuite (`snapshots/testsuite` of
//! containerd 1.6.20, every subtest) against layerd's gRPC sockets, through
//! containerd's proxy snapshotter client: tests/containerd/suite/ holds the
//! Go side, scripts/build-containerd-suite.sh builds it.
//!
//! The suite wants an empty snapshotter per subtest; each configured
//! `[[containerd.snapshotter]]` is a socket and a key space of its own, so
//! each test configures one per subtest, all on the fixture's pool, and the
//! Go test takes the next one on each call.
//!
//! Host tier: overlay and vfs on xfs, btrfs (a few seconds each). Thin is
//! `#[ignore]`d: the kernel-tier VM runs it (scripts/test-kernel.sh).
//! The Go binary is `$LAYERD_CONTAINERD_SUITE` (scripts/test.sh builds it
//! once and exports it); unset, the build script is run here, except in CI.

#[macro_use]
#[allow(unused_macros)]
#[path = "common/mod.rs"]
mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

/// Subtests of `SnapshotterSuite` in containerd 1.6.20 (its `t.Run` calls,
/// snapshots/testsuite/testsuite.go lines 50-74): one snapshotter each.
const SUBTESTS: usize = 21;

/// What the suite itself skips on every snapshotter: `checkRename` starts
/// with `t.Skip("rename test still fails on some kernels with overlay")`
/// (snapshots/testsuite/issues.go, line 118, containerd 1.6.20).
const SKIPPED_BY_THE_SUITE: &[&str] = &["Rename"];

/// The thin fixture's file system: room for the whole 2 GiB data file of
/// its pool. On the harness's 512 MiB the file system filled up at layer
/// 123 of `128LayersMount` (the pool: 418 MiB of 2 GiB used) and the next
/// mount failed with EIO.
const THIN_IMAGE: u64 = 5 * IMAGE_SIZE;

/// The Go test binary, or `None` (after a SKIP line) where it cannot be had
/// outside CI. Built at most once per test process.
fn suite_binary(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LAYERD_CONTAINERD_SUITE") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "LAYERD_CONTAINERD_SUITE={}: no such file",
            p.display()
        );
        return Some(p);
    }
    let ci = std::env::var_os("CI").is_some();
    assert!(
        !ci,
        "{test}: LAYERD_CONTAINERD_SUITE is not set: scripts/test.sh builds the suite \
         (scripts/build-containerd-suite.sh) and exports it"
    );
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-containerd-suite.sh");
        let out = Command::new(&script)
            .output()
            .map_err(|e| format!("{}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}):\n{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    });
    match built {
        Ok(p) => Some(p.clone()),
        // No Go or no containerd source here: skip loudly (CI never gets here).
        Err(e) if e.contains("run scripts/install-deps.sh") => {
            let _ = writeln!(std::io::stderr(), "SKIP {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: building containerd's testsuite: {e}"),
    }
}

/// `--- PASS: TestLayerd/<name>` lines of `go test -test.v` output, by
/// verdict: (passed, failed, skipped) subtest names.
fn verdicts(out: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut pass, mut fail, mut skip) = (vec![], vec![], vec![]);
    for line in out.lines() {
        let line = line.trim_start();
        for (tag, list) in [
            ("--- PASS: TestLayerd/", &mut pass),
            ("--- FAIL: TestLayerd/", &mut fail),
            ("--- SKIP: TestLayerd/", &mut skip),
        ] {
            if let Some(rest) = line.strip_prefix(tag) {
                list.push(rest.split(' ').next().unwrap_or(rest).to_string());
            }
        }
    }
    (pass, fail, skip)
}

/// What a failed run leaves to look at besides the suite's output: how full
/// the fixture's file system (and, on thin, the pool) is, and the kernel's
/// last words (a mount's EIO is explained there).
/// The slowest subtest and its seconds, from `--- PASS: TestLayerd/x (1.23s)`.
fn slowest(out: &str) -> Option<(String, f64)> {
    out.lines()
        .filter_map(|l| l.trim_start().strip_prefix("--- PASS: TestLayerd/"))
        .filter_map(|rest| {
            let (name, t) = rest.split_once(" (")?;
            Some((name.to_string(), t.strip_suffix("s)")?.parse::<f64>().ok()?))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

fn space_and_kernel_log(f: &Fixture) -> String {
    let out = |cmd: &str, args: &[&str]| match Command::new(cmd).args(args).output() {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("{cmd}: {e}\n"),
    };
    let size = nix::sys::statvfs::statvfs(&f.pool_path())
        .map(|st| st.blocks() * st.fragment_size())
        .unwrap_or(0);
    let mut s = format!(
        "----- space -----\nfixture file system: {} MiB of {} MiB used\n",
        f.fs().used_bytes() / MIB,
        size / MIB
    );
    if f.backend.is_thin() {
        s += &out("dmsetup", &["status", &format!("{}pool", f.dm_prefix())]);
    }
    let log = out("dmesg", &["--notime"]);
    let lines: Vec<&str> = log.lines().collect();
    s += "----- kernel log (tail) -----\n";
    s += &lines[lines.len().saturating_sub(30)..].join("\n");
    s
}

async fn run_suite(backend: Backend) {
    let test = format!("containerd_suite::{}", backend.name());
    let Some(bin) = suite_binary(&test) else {
        return;
    };
    let image = if backend.is_thin() {
        THIN_IMAGE
    } else {
        IMAGE_SIZE
    };
    let Some(mut f) = Fixture::new_with_image(backend, &[], image).await else {
        return;
    };
    let pool = f.pool_name().to_string();
    let names: Vec<String> = (1..=SUBTESTS).map(|i| format!("suite{i}")).collect();
    let mut toml = String::from("[containerd]\npools = []\n");
    for n in &names {
        toml += &format!("[[containerd.snapshotter]]\nname = {n:?}\npool = {pool:?}\n");
    }
    f.restart_with_toml(&toml).await;
    let sockets: Vec<PathBuf> = names.iter().map(|n| f.containerd_socket_named(n)).collect();
    // The daemon binds its containerd sockets before it takes its bus name
    // (what restart waits for; src/main.rs), so they are all there now.
    for s in &sockets {
        assert!(s.exists(), "{test}: {} is not served", s.display());
    }
    let sockets: Vec<&str> = sockets.iter().map(|s| s.to_str().unwrap()).collect();

    // The suite's temporary directories (its mount points among them) go
    // under the fixture, whose teardown unmounts whatever is left there.
    let tmp = f.scratch("go");
    let timeout = deadline(Duration::from_secs(300));
    let started = Instant::now();
    let out = {
        let mut cmd = Command::new(&bin);
        cmd.args(["-test.v", &format!("-test.timeout={}s", timeout.as_secs())])
            .env("LAYERD_SUITE_SOCKETS", sockets.join(":"))
            .env("TMPDIR", &tmp)
            .current_dir(&tmp);
        tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{test}: run {}: {e}", bin.display()))
    };
    let took = started.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let (pass, fail, skip) = verdicts(&text);
    let shown = || format!("----- go test output -----\n{text}----- end of go test output -----");
    let ok = out.status.success() && fail.is_empty() && !text.contains("--- FAIL");
    assert!(
        ok,
        "{test}: containerd's testsuite failed ({}; failed: {fail:?})\n{}\n{}",
        out.status,
        shown(),
        space_and_kernel_log(&f)
    );
    assert_eq!(
        skip,
        SKIPPED_BY_THE_SUITE,
        "{test}: only the suite's own skips may skip\n{}",
        shown()
    );
    assert_eq!(
        pass.len() + skip.len(),
        SUBTESTS,
        "{test}: not every subtest ran\n{}",
        shown()
    );
    let _ = writeln!(
        std::io::stderr(),
        "containerd-suite: {} {} passed, {} failed, {} skipped ({}: by the suite's design) in {:.1}s{}",
        backend.name(),
        pass.len(),
        fail.len(),
        skip.len(),
        skip.join(", "),
        took.as_secs_f64(),
        slowest(&text)
            .map(|(n, t)| format!(", slowest {n} {t:.1}s"))
            .unwrap_or_default()
    );
    f.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_xfs() {
    run_suite(Backend::OverlayXfs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vfs_xfs() {
    run_suite(Backend::VfsXfs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn btrfs() {
    run_suite(Backend::Btrfs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kernel tier: runs in the VM (scripts/test-kernel.sh)"]
async fn thin() {
    require_kernel_tier("containerd_suite::thin");
    run_suite(Backend::Thin).await;
}
