//! A private containerd for one test, with layerd's socket as its proxy
//! snapshotter (TESTING.md, containerd tier), and `ctr` to drive it.
//!
//! Everything of it lives under one directory of the fixture: its config,
//! `root`, `state`, both sockets, its log, runc's state (`ctr run
//! --runc-root`) and the IO fifos (`--fifo-dir`). Two things cannot be
//! moved there: each shim's socket, which containerd 1.6 puts under
//! `/run/containerd/s/` (named by a hash of containerd's address, namespace
//! and container, so never another containerd's), and the cgroups runc
//! makes, `/<namespace>/<container>` in each hierarchy. Each Containerd has
//! a namespace of its own, so both are its own, and its `Drop` removes
//! them: it kills what is left of its containers (by the PIDs in their
//! bundles), its shims (the processes given its socket as `-address`) and
//! containerd itself (by PID), removes the shim sockets,
//! unmounts everything under its directory, removes its cgroups and the
//! directory. The system's containerd (if any) is never touched.
//!
//! Mounted as `#[path = "common/containerd.rs"] mod containerd;` beside
//! `common`.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{deadline, mounts_under, unmount_under};

/// How long containerd may take to serve its socket and list the proxy.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `ctr` command may take (an image import, a container run).
pub const CTR_TIMEOUT: Duration = Duration::from_secs(120);

/// What a host needs for this tier, if something is missing.
pub fn unavailable() -> Option<String> {
    for tool in ["containerd", "ctr", "containerd-shim-runc-v2", "runc"] {
        let found = [
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ]
        .iter()
        .any(|d| Path::new(d).join(tool).is_file());
        if !found {
            return Some(format!(
                "{tool} is missing (apt-get install -y containerd runc)"
            ));
        }
    }
    None
}

/// True, after a loud SKIP line, when the host lacks containerd or runc; in
/// CI (`CI` set) nothing skips: it panics instead.
pub fn skip(test: &str) -> bool {
    let Some(why) = unavailable() else {
        return false;
    };
    if std::env::var_os("CI").is_some() {
        panic!("{test}: cannot run in CI: {why}");
    }
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
    true
}

/// One row of `ctr snapshots ls`: key, parent ("" for none), kind as ctr
/// prints it (`Committed`, `Active`, `View`).
pub type SnapshotRow = (String, String, String);

/// containerd as our child, with `[proxy_plugins.<snapshotter>]` pointing at
/// a layerd socket.
pub struct Containerd {
    child: Option<Child>,
    /// Everything of this containerd lives here.
    pub dir: PathBuf,
    /// Its gRPC socket (`ctr -a`).
    pub address: PathBuf,
    /// The namespace every `ctr` command of this instance uses.
    pub namespace: String,
    /// The proxy snapshotter's name.
    pub snapshotter: String,
    pub log: PathBuf,
    /// Numbers `ctr` output files.
    seq: AtomicUsize,
    /// Numbers container ids.
    ids: AtomicUsize,
}

/// PATH for containerd and ctr: containerd finds the shim, the shim finds
/// runc (`/usr/sbin`) by name.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Containerd {
    /// Writes the config under `dir` (made, must not exist) and starts
    /// containerd; returns once `ctr plugins ls` lists the proxy snapshotter
    /// as ok.
    pub fn start(dir: &Path, snapshotter: &str, proxy_socket: &Path) -> Result<Containerd, String> {
        static N: AtomicUsize = AtomicUsize::new(0);
        fs::create_dir(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let p = |s: &str| dir.join(s).to_string_lossy().into_owned();
        let config = format!(
            r#"version = 2
root = {root}
state = {state}
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = {grpc}

[ttrpc]
  address = {ttrpc}

[debug]
  level = "debug"

# Its default, /opt/containerd, is the host's (read-only in the kernel-tier VM).
[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[proxy_plugins.{name}]
  type = "snapshot"
  address = {proxy}
"#,
            root = toml(&p("root")),
            state = toml(&p("state")),
            grpc = toml(&p("c.sock")),
            ttrpc = toml(&p("c.sock.ttrpc")),
            opt = toml(&p("opt")),
            name = snapshotter,
            proxy = toml(&proxy_socket.to_string_lossy()),
        );
        let cfg = dir.join("config.toml");
        fs::write(&cfg, config).map_err(|e| format!("write {}: {e}", cfg.display()))?;
        let log = dir.join("containerd.log");
        let out = File::create(&log).map_err(|e| e.to_string())?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&cfg)
            .env("PATH", PATH)
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("cannot start containerd: {e}"))?;
        let mut c = Containerd {
            child: Some(child),
            dir: dir.to_path_buf(),
            address: dir.join("c.sock"),
            namespace: format!(
                "e2e-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
            snapshotter: snapshotter.to_string(),
            log,
            seq: AtomicUsize::new(0),
            ids: AtomicUsize::new(1),
        };
        let until = Instant::now() + deadline(START_TIMEOUT);
        let want = format!("io.containerd.snapshotter.v1 {snapshotter} ");
        loop {
            if let Some(Ok(Some(st))) = c.child.as_mut().map(|ch| ch.try_wait()) {
                c.child = None;
                return Err(format!(
                    "containerd exited ({st}); its log:\n{}",
                    c.log_tail()
                ));
            }
            if c.address.exists() {
                if let Ok(out) =
                    c.ctr_timeout(&["plugins", "ls"], deadline(Duration::from_secs(10)))
                {
                    let line = out
                        .lines()
                        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                        .find(|l| l.starts_with(&want));
                    match line {
                        Some(l) if l.ends_with(" ok") => return Ok(c),
                        Some(l) => {
                            return Err(format!(
                                "containerd lists the proxy snapshotter as {l:?}; its log:\n{}",
                                c.log_tail()
                            ))
                        }
                        None => {}
                    }
                }
            }
            if Instant::now() > until {
                return Err(format!(
                    "containerd did not list {snapshotter} within {:?}; its log:\n{}",
                    deadline(START_TIMEOUT),
                    c.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A container id no other run of this instance used.
    pub fn unique(&self, what: &str) -> String {
        format!("{what}{}", self.ids.fetch_add(1, Ordering::Relaxed))
    }

    /// `ctr -a <socket> -n <namespace> ARGS…`: its stdout, or an error
    /// with its exit status, stderr and stdout.
    pub fn ctr(&self, args: &[&str]) -> Result<String, String> {
        self.ctr_timeout(args, deadline(CTR_TIMEOUT))
    }

    /// [`Containerd::ctr`] that must succeed; the panic carries
    /// containerd's log.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        self.ctr(args).unwrap_or_else(|e| {
            panic!(
                "{e}\n----- containerd log (tail) -----\n{}",
                self.log_tail()
            )
        })
    }

    fn ctr_timeout(&self, args: &[&str], timeout: Duration) -> Result<String, String> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let (o, e) = (
            self.dir.join(format!("ctr{n}.out")),
            self.dir.join(format!("ctr{n}.err")),
        );
        let shown = format!("ctr {}", args.join(" "));
        let mut child = Command::new("ctr")
            .arg("-a")
            .arg(&self.address)
            .arg("-n")
            .arg(&self.namespace)
            .args(args)
            .env("PATH", PATH)
            .stdin(Stdio::null())
            .stdout(File::create(&o).map_err(|e| e.to_string())?)
            .stderr(File::create(&e).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot run ctr: {e}"))?;
        let started = Instant::now();
        let until = started + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break Some(st),
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        // Where a slow run (the kernel-tier VM) spends its time; libtest
        // shows it with --nocapture or when the test fails.
        let words: Vec<&str> = args
            .iter()
            .take_while(|a| !a.starts_with('-'))
            .copied()
            .collect();
        eprintln!(
            "ctr {}: {:.1}s",
            words.join(" "),
            started.elapsed().as_secs_f64()
        );
        let out = fs::read_to_string(&o).unwrap_or_default();
        let err = fs::read_to_string(&e).unwrap_or_default();
        let _ = fs::remove_file(&o);
        let _ = fs::remove_file(&e);
        match status {
            Some(st) if st.success() => Ok(out),
            Some(st) => Err(format!(
                "{shown} failed ({st}): {}{}",
                err.trim(),
                out.trim()
            )),
            None => Err(format!(
                "{shown} did not end within {timeout:?} (killed): {}{}",
                err.trim(),
                out.trim()
            )),
        }
    }

    /// `ctr run --snapshotter <ours> [--rm] IMAGE ID CMD…` with runc's state
    /// and the IO fifos under this instance's directory; the container's
    /// stdout.
    pub fn run(&self, image: &str, id: &str, rm: bool, cmd: &[&str]) -> Result<String, String> {
        let fifo = self.dir.join("fifo").to_string_lossy().into_owned();
        let runc = self.dir.join("runc").to_string_lossy().into_owned();
        let mut args = vec![
            "run",
            "--snapshotter",
            &self.snapshotter,
            "--fifo-dir",
            &fifo,
            "--runc-root",
            &runc,
        ];
        if rm {
            args.push("--rm");
        }
        args.extend([image, id]);
        args.extend(cmd);
        self.ctr(&args)
    }

    /// `ctr snapshots --snapshotter <ours> ls`, sorted.
    pub fn snapshots(&self) -> Vec<SnapshotRow> {
        let out = self.ctr_ok(&["snapshots", "--snapshotter", &self.snapshotter, "ls"]);
        let mut rows: Vec<SnapshotRow> = out
            .lines()
            .skip(1)
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                match w[..] {
                    [k, p, kind] => Some((k.into(), p.into(), kind.into())),
                    [k, kind] => Some((k.into(), String::new(), kind.into())),
                    _ => None,
                }
            })
            .collect();
        rows.sort();
        rows
    }

    /// Waits until containerd reaches the proxy snapshotter (`ctr snapshots
    /// ls` answers) and returns how long that took. After the snapshotter
    /// was away longer than gRPC's 20 s connect timeout, containerd's client
    /// backs off (up to 3 s) before it dials again, and until then fails
    /// every call at once with Unavailable.
    pub fn wait_reachable(&self, timeout: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            match self.ctr(&["snapshots", "--snapshotter", &self.snapshotter, "ls"]) {
                Ok(_) => return Ok(started.elapsed()),
                Err(e) if started.elapsed() > timeout => {
                    return Err(format!("{e} (still, after {timeout:?})"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// The end of containerd's log.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The task bundles left in state (none once every container is gone):
    /// `<state>/io.containerd.runtime.v2.task/<namespace>/<id>`.
    fn bundles(&self) -> Vec<PathBuf> {
        let d = self
            .dir
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.namespace);
        fs::read_dir(d)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }
}

fn toml(s: &str) -> String {
    crate::common::toml_str(s)
}

/// SIGKILL the container init whose PID its bundle records, if that PID
/// is still in the container's cgroup (so a reused PID is never hit).
fn kill_init(file: &Path, cgroup: &str) {
    let Some(pid) = fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    let cg = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    if cg.lines().any(|l| l.ends_with(cgroup)) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The PIDs of the shims this containerd started: containerd 1.6 records
/// none in the bundle, but passes each its own address (`-address <our
/// socket>`), which no other containerd's shim has.
fn our_shims(address: &Path) -> Vec<i32> {
    let want = address.as_os_str().as_encoded_bytes();
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
            args.first()
                .is_some_and(|a0| a0.ends_with(b"containerd-shim-runc-v2"))
                && args.windows(2).any(|w| w[0] == b"-address" && w[1] == want)
        })
        .collect()
}

/// Every cgroup mount point (v1 hierarchies and v2).
fn cgroup_roots() -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split(' ').next()?;
            let mp = pre.split(' ').nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(mp))
        })
        .collect()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- containerd {} (namespace {}) log (tail) -----\n{}\n----- end of containerd log -----",
                self.dir.display(),
                self.namespace,
                self.log_tail()
            );
        }
        // Containers and shims left by a failed test, by PID: each
        // container's init as its bundle records it, then the shims.
        let bundles = self.bundles();
        for b in &bundles {
            let id = b
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            kill_init(&b.join("init.pid"), &format!("/{}/{id}", self.namespace));
        }
        let shims = our_shims(&self.address);
        for &pid in &shims {
            eprintln!("containerd teardown: killing shim {pid}");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let until = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // The shims' sockets: `unix:///run/containerd/s/<hash>` in each bundle.
        for b in &bundles {
            if let Ok(a) = fs::read_to_string(b.join("address")) {
                if let Some(p) = a.trim().strip_prefix("unix://") {
                    if p.starts_with("/run/containerd/s/") {
                        let _ = fs::remove_file(p);
                    }
                }
            }
        }
        let left = unmount_under(&self.dir);
        if !left.is_empty() {
            eprintln!("containerd teardown: unmounted leftovers {left:?}");
        }
        // runc's cgroups, `/<namespace>/<id>`: rmdir takes only empty ones
        // (EBUSY while a killed container's processes are still exiting).
        let rmdir = |d: &Path| {
            let until = Instant::now() + Duration::from_secs(5);
            loop {
                match fs::remove_dir(d) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Err(e) => break eprintln!("containerd teardown: rmdir {}: {e}", d.display()),
                    Ok(()) => break,
                }
            }
        };
        for root in cgroup_roots() {
            let ns = root.join(&self.namespace);
            if let Ok(rd) = fs::read_dir(&ns) {
                for e in rd.flatten().filter(|e| e.path().is_dir()) {
                    rmdir(&e.path());
                }
                rmdir(&ns);
            }
        }
        if mounts_under(&self.dir).is_empty() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "containerd teardown: left {} in place: mounts remain",
                self.dir.display()
            );
        }
    }
}
