//! A private containerd for the containerd table, never the system's: its
//! own config, `root` (on the world's xfs, so its metadata store and its
//! overlayfs and native snapshotters share the device with layerd's store
//! and pools), btrfs snapshotter root (on the world's btrfs), `state`,
//! gRPC and ttrpc sockets (under the world's directory on /tmp), and
//! layerd's sockets as proxy snapshotters. Its garbage collector runs only
//! when the bench asks for it (ctd_grpc::gc), so no collection lands in a
//! timed call. `Drop` stops it by PID, kills the shims it left (found by
//! our socket address in their command line), unmounts what it left under
//! its directories and removes the cgroup directories runc made.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use containerd_snapshots::tonic::transport::Channel;
use containerd_snapshots::tonic::Code;

use crate::ctd_grpc::{self, Snap, NAMESPACE};

pub struct Containerd {
    child: Option<Child>,
    /// Config, log, state and sockets (on /tmp).
    pub dir: PathBuf,
    /// `root` (on the xfs).
    pub root: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    /// cgroup directories `<controller>/<namespace>` that were there
    /// before (runc makes them for the bench's containers).
    cgroups_before: Vec<PathBuf>,
    /// Which of [`run_dirs`] were there before.
    run_dirs_before: Vec<bool>,
}

/// What runc and the shims make outside containerd's own directories,
/// deepest first: runc's state root of the namespace, the shim sockets'
/// and fifos' directories. Removed at the end if they were not there at
/// the start and are empty.
fn run_dirs() -> [PathBuf; 5] {
    let r = Path::new("/run/containerd");
    [
        r.join("runc").join(NAMESPACE),
        r.join("runc"),
        r.join("s"),
        r.join("fifo"),
        r.to_path_buf(),
    ]
}

fn cgroup_dirs() -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return vec![];
    };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path().join(NAMESPACE))
        .filter(|p| p.is_dir())
        .collect();
    // cgroup v2 only: the namespace directory sits at the top.
    let top = Path::new("/sys/fs/cgroup").join(NAMESPACE);
    if top.is_dir() && !v.contains(&top) {
        v.push(top);
    }
    v
}

fn toml(s: &Path) -> String {
    crate::common::toml_str(&s.to_string_lossy())
}

impl Containerd {
    /// Writes the config and starts `containerd --config`; `proxies` are
    /// (name, socket) of the proxy snapshotters. Returns at once: see
    /// [`Containerd::ready`].
    pub fn start(
        dir: &Path,
        root: &Path,
        btrfs_root: Option<&Path>,
        proxies: &[(String, PathBuf)],
    ) -> Result<Containerd, String> {
        for d in [dir, root] {
            std::fs::create_dir_all(d).map_err(|e| format!("mkdir {}: {e}", d.display()))?;
        }
        let socket = dir.join("containerd.sock");
        let mut cfg = format!(
            "version = 2\nroot = {}\nstate = {}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.aufs\", \
             \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\"]\n\n\
             [grpc]\naddress = {}\n\n[ttrpc]\naddress = {}\n\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\npath = {}\n\n\
             # Collect only when asked (a lease deleted with sync): huge thresholds,\n\
             # no start-up collection, an interval of avg/1e-6 after one.\n\
             [plugins.\"io.containerd.gc.v1.scheduler\"]\npause_threshold = 0.000001\n\
             deletion_threshold = 1000000000\nmutation_threshold = 1000000000\n\
             schedule_delay = \"0s\"\nstartup_delay = \"0s\"\n",
            toml(root),
            toml(&dir.join("state")),
            toml(&socket),
            toml(&dir.join("containerd.sock.ttrpc")),
            toml(&dir.join("opt")),
        );
        if let Some(b) = btrfs_root {
            cfg.push_str(&format!(
                "\n[plugins.\"io.containerd.snapshotter.v1.btrfs\"]\nroot_path = {}\n",
                toml(b)
            ));
        }
        for (name, sock) in proxies {
            cfg.push_str(&format!(
                "\n[proxy_plugins.{}]\ntype = \"snapshot\"\naddress = {}\n",
                crate::common::toml_str(name),
                toml(sock)
            ));
        }
        let cfg_path = dir.join("containerd.toml");
        std::fs::write(&cfg_path, cfg).map_err(|e| format!("write {}: {e}", cfg_path.display()))?;
        let log = dir.join("containerd.log");
        let out =
            std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let cgroups_before = cgroup_dirs();
        let run_dirs_before = run_dirs().iter().map(|d| d.exists()).collect();
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new("containerd")
                .arg("--config")
                .arg(&cfg_path)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                // Ctrl-C reaches the bench only; Drop stops containerd.
                .process_group(0)
                .spawn()
                .map_err(|e| {
                    format!("start containerd: {e} (apt-get install -y containerd runc)")
                })?
        };
        Ok(Containerd {
            child: Some(child),
            dir: dir.to_path_buf(),
            root: root.to_path_buf(),
            socket,
            log,
            cgroups_before,
            run_dirs_before,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits (up to 30 s) until containerd answers a Stat of a missing key
    /// with NotFound on every snapshotter named, and returns the channel.
    pub async fn ready(&mut self, snapshotters: &[&str]) -> Result<Channel, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let ch = loop {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("containerd exited ({st}):\n{}", self.log_tail(30)));
            }
            if self.socket.exists() {
                if let Ok(ch) = ctd_grpc::channel(&self.socket).await {
                    break ch;
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "containerd did not listen within 30 s:\n{}",
                    self.log_tail(30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        for s in snapshotters {
            let snap = Snap::new(&ch, s);
            loop {
                match snap.stat("layerd-bench-probe").await {
                    Err(e) if e.code() == Code::NotFound => break,
                    r if Instant::now() > deadline => {
                        return Err(format!(
                            "containerd's snapshotter {s} is not usable: {r:?}\n{}",
                            self.log_tail(30)
                        ))
                    }
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
        Ok(ch)
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `ctr --address <ours> --namespace layerd-bench ARGS…`.
    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(NAMESPACE);
        c
    }

    /// Shims started by this containerd (its socket in their command line).
    fn shims(&self) -> Vec<i32> {
        let sock = self.socket.to_string_lossy().to_string();
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return vec![];
        };
        rd.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cmd = String::from_utf8_lossy(&cmd);
                cmd.contains("containerd-shim") && cmd.contains(&sock)
            })
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        if let Some(mut c) = self.child.take() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        eprintln!("containerd did not stop on SIGTERM within 20 s; SIGKILL");
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        for pid in self.shims() {
            eprintln!("teardown: killing shim {pid} left by the bench's containerd");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        for d in [&self.dir, &self.root] {
            let left = crate::common::unmount_under(d);
            if !left.is_empty() {
                eprintln!("teardown: unmounted containerd leftovers {left:?}");
            }
        }
        for d in cgroup_dirs() {
            if !self.cgroups_before.contains(&d) {
                let _ = std::fs::remove_dir(&d);
            }
        }
        for (d, before) in run_dirs().iter().zip(&self.run_dirs_before) {
            if !before {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}
