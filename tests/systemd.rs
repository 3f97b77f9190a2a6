//! systemd tier (TESTING.md): a real systemd as PID 1 in a container,
//! `systemd-nspawn --register=no --keep-unit --volatile=yes -D / -b`, with
//! layerd installed into it by scripts/install.sh (DESTDIR tree bound in:
//! with --volatile=yes only /usr comes from the host, /etc and /var are
//! empty tmpfs). Commands run inside with `nsenter -t <container's systemd>
//! -m -u -i -n -p`.
//!
//! Proves: the first `busctl call` starts layerd through D-Bus activation;
//! the bus policy refuses Prepare and Trim to a non-root caller, who can
//! still Stat and read properties; `systemctl restart layerd` keeps every
//! layer; `systemctl list-timers` shows exactly the timers the config asks
//! for, and a changed config plus a restart changes them; starting a
//! timer's service runs the job and the pool's LastTrim records it; the
//! journal carries POOL, LAYER_KEY, JOB_ID, OPERATION and ERRNO.
//!
//! The pool that must trim for real is an overlay pool on a loop-backed
//! xfs made on the host and bound in (the container has no loop devices);
//! a vfs pool on the container's tmpfs shows a failing trim (EOPNOTSUPP).
//!
//! Each test boots its own container; its Drop kills the nspawn process by
//! PID (SIGTERM: the container powers off; SIGKILL after a grace period),
//! then unmounts and detaches only the file system it made.

#[macro_use]
#[allow(unused_macros)]
#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Fs, FsKind, IMAGE_SIZE};

/// How long the container may take to boot (about 15 s on CI machines).
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long nspawn may take to power the container off after SIGTERM.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(30);

const M: &str = "org.layerd.Layerd1 /org/layerd/Layerd1 org.layerd.Layerd1.Manager";
const POOL_IFACE: &str = "org.layerd.Layerd1.Pool";

/// A booted container with layerd installed (not started).
struct Machine {
    nspawn: Option<Child>,
    leader: u32,
    log: PathBuf,
    /// The bound /etc/layerd: rewrite layerd.toml here, then restart.
    etc_layerd: PathBuf,
    // Dropped after the container: nothing of it may still use them.
    _fs: Fs,
    dir: tempfile::TempDir,
}

fn skip(test: &str) -> bool {
    let why = if !nix::unistd::Uid::effective().is_root() {
        Some("needs root".to_string())
    } else if Command::new("systemd-nspawn")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        Some("systemd-nspawn is missing (apt-get install systemd-container)".to_string())
    } else {
        None
    };
    let Some(why) = why else { return false };
    if std::env::var_os("CI").is_some() {
        panic!("{test}: cannot run in CI: {why}");
    }
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
    true
}

impl Machine {
    /// Installs layerd into a staging tree, writes `config` as
    /// /etc/layerd/layerd.toml, boots the container and waits until its
    /// systemd reports the system running.
    fn boot(test: &str, config: &str) -> Option<Machine> {
        if skip(test) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("ld-sd.")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let fs = Fs::new(
            FsKind::Xfs,
            &dir.path().join("pool.img"),
            &dir.path().join("pool"),
            IMAGE_SIZE,
        )
        .expect("loop-backed xfs");
        let stage = dir.path().join("stage");
        let out = Command::new(repo().join("scripts/install.sh"))
            .env("DESTDIR", &stage)
            .env("PREFIX", "/usr/local")
            .env("LAYERD_BIN", common::Daemon::binary())
            .output()
            .expect("run install.sh");
        assert!(
            out.status.success(),
            "install.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for f in [
            "usr/local/bin/layerd",
            "usr/local/lib/systemd/system/layerd.service",
            "usr/local/share/dbus-1/system-services/org.layerd.Layerd1.service",
            "etc/dbus-1/system.d/org.layerd.Layerd1.conf",
            "etc/layerd/layerd.toml",
        ] {
            assert!(stage.join(f).is_file(), "install.sh did not install {f}");
        }
        let etc_layerd = stage.join("etc/layerd");
        fs::write(etc_layerd.join("layerd.toml"), config).expect("write config");
        // An empty /etc is a first boot, when systemd applies presets and
        // would enable layerd.service; this test wants D-Bus to start it.
        let preset = dir.path().join("preset");
        fs::create_dir_all(&preset).unwrap();
        fs::write(
            preset.join("00-layerd-test.preset"),
            "disable layerd.service\n",
        )
        .unwrap();

        let log = dir.path().join("nspawn.log");
        let logf = fs::File::create(&log).unwrap();
        let bind = |from: &Path, to: &str, ro: bool| {
            format!(
                "--bind{}={}:{to}",
                if ro { "-ro" } else { "" },
                from.display()
            )
        };
        let name = format!("layerd-t{}", std::process::id() % 100000);
        let child = Command::new("systemd-nspawn")
            .args([
                "--register=no",
                "--keep-unit",
                "--volatile=yes",
                "-D",
                "/",
                "-b",
                "--console=read-only",
            ])
            .arg(format!("--machine={name}-{}", test.len()))
            .arg(bind(&stage.join("usr/local"), "/usr/local", true))
            .arg(bind(&stage.join("etc/dbus-1"), "/etc/dbus-1", true))
            .arg(bind(&etc_layerd, "/etc/layerd", false))
            .arg(bind(&preset, "/etc/systemd/system-preset", true))
            .arg(bind(&fs.mountpoint, "/srv/pool", false))
            .arg("systemd.firstboot=off")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("start systemd-nspawn");
        let mut m = Machine {
            leader: 0,
            nspawn: Some(child),
            log,
            etc_layerd,
            _fs: fs,
            dir,
        };
        let started = Instant::now();
        m.leader = m.find_leader();
        // Until its manager listens, systemctl answers at once; then
        // --wait blocks until start-up is finished.
        let mut state = String::new();
        while started.elapsed() < BOOT_TIMEOUT {
            state = stdout(&m.sh(&format!(
                "timeout {} systemctl is-system-running --wait 2>/dev/null",
                BOOT_TIMEOUT.as_secs()
            )));
            // "offline" (or nothing) while the manager is not reachable
            // yet; "running"/"degraded" once start-up finished.
            if ["running", "degraded", "maintenance", "stopping"].contains(&state.as_str()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            state == "running" || state == "degraded",
            "container did not boot: {state:?}\n{}\n{}",
            stdout(&m.sh("systemctl --failed --no-pager")),
            m.log_tail()
        );
        eprintln!(
            "{test}: container booted in {:.1} s (leader pid {})",
            started.elapsed().as_secs_f64(),
            m.leader
        );
        Some(m)
    }

    /// The container's PID 1 (systemd), a child of the nspawn process.
    fn find_leader(&mut self) -> u32 {
        let pid = self.nspawn.as_ref().unwrap().id();
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            if let Some(status) = self.nspawn.as_mut().unwrap().try_wait().unwrap() {
                panic!("systemd-nspawn exited: {status}\n{}", self.log_tail());
            }
            let children =
                fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            for c in children.split_whitespace() {
                let comm = fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
                if comm.trim() == "systemd" {
                    return c.parse().unwrap();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no systemd in the container\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `cmd` with sh inside the container (as root).
    fn sh(&self, cmd: &str) -> Output {
        Command::new("nsenter")
            .args([
                "-t",
                &self.leader.to_string(),
                "-m",
                "-u",
                "-i",
                "-n",
                "-p",
                "--",
            ])
            .args(["sh", "-c", cmd])
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// Runs `cmd` inside and asserts it succeeds; returns its stdout.
    fn ok(&self, cmd: &str) -> String {
        let out = self.sh(cmd);
        assert!(
            out.status.success(),
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        stdout(&out)
    }

    /// Runs `cmd` as uid/gid 65534 (nobody) inside.
    fn as_nobody(&self, cmd: &str) -> Output {
        self.sh(&format!(
            "setpriv --reuid=65534 --regid=65534 --clear-groups -- {cmd}"
        ))
    }

    fn get_property(&self, pool: &str, prop: &str) -> String {
        self.ok(&format!(
            "busctl get-property org.layerd.Layerd1 /org/layerd/Layerd1/pools/{pool} {POOL_IFACE} {prop}"
        ))
    }

    /// Our timers as `systemctl list-timers` shows them.
    fn layerd_timers(&self) -> BTreeSet<String> {
        self.ok("systemctl list-timers --all --no-pager --no-legend")
            .split_whitespace()
            .filter(|w| w.starts_with("layerd-") && w.ends_with(".timer"))
            .map(str::to_string)
            .collect()
    }

    /// `journalctl -u layerd -o json`, one JSON object per entry.
    fn journal(&self) -> Vec<serde_json::Value> {
        self.ok("journalctl --sync 2>/dev/null; journalctl -u layerd -o json --no-pager")
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn set_config(&self, config: &str) {
        fs::write(self.etc_layerd.join("layerd.toml"), config).expect("write config");
    }

    fn log_tail(&self) -> String {
        let t = fs::read(&self.log).unwrap_or_default();
        let cut = t.len().saturating_sub(4000);
        format!(
            "--- nspawn log ({}) ---\n{}",
            self.dir.path().display(),
            String::from_utf8_lossy(&t[cut..])
        )
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let journal = self.sh("journalctl -u layerd --no-pager | tail -n 60");
            eprintln!("--- layerd journal ---\n{}", stdout(&journal));
            eprintln!("{}", self.log_tail());
        }
        let Some(mut child) = self.nspawn.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        // nspawn turns SIGTERM into an orderly poweroff of the container.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + POWEROFF_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// An overlay pool on the bound xfs and a vfs pool on the container's
/// tmpfs (which cannot discard), each trimmed on its own schedule.
const TWO_POOLS: &str = r#"
[daemon]
default_pool = "main"

[[pool]]
name = "main"
driver = "overlay"
path = "/srv/pool/main"
[pool.maintenance]
trim = "weekly"

[[pool]]
name = "scratch"
driver = "vfs"
path = "/var/lib/layerd/scratch"
[pool.maintenance]
trim = "Sun *-*-* 03:00"
"#;

/// D-Bus activation, the bus policy for non-root callers, restart keeps
/// layers, and what systemd sees of the service (notify, watchdog).
#[test]
fn activation_policy_and_restart() {
    let Some(m) = Machine::boot("activation_policy_and_restart", TWO_POOLS) else {
        return;
    };
    // Installed, not started (the preset keeps it disabled).
    assert_eq!(stdout(&m.sh("systemctl is-active layerd")), "inactive");

    // The first call starts it: dbus-daemon asks systemd for layerd.service.
    let walk = m.ok(&format!("busctl call {M} Walk as 0"));
    assert_eq!(walk, "a(ssssa{ss}tt) 0");
    assert_eq!(stdout(&m.sh("systemctl is-active layerd")), "active");
    let dbus_log = m.ok("journalctl -u dbus --no-pager");
    assert!(
        dbus_log.contains(
            "Activating via systemd: service name='org.layerd.Layerd1' unit='layerd.service'"
        ),
        "{dbus_log}"
    );
    // Type=notify: READY=1 and STATUS= reached systemd; the watchdog is on.
    let show =
        m.ok("systemctl show layerd -p Type -p StatusText -p WatchdogUSec -p MainPID -p NRestarts");
    assert!(show.contains("Type=notify"), "{show}");
    assert!(
        show.contains("StatusText=serving 2 pool(s) on the system bus"),
        "{show}"
    );
    assert!(show.contains("WatchdogUSec=30s"), "{show}");
    let pid_before = show
        .lines()
        .find_map(|l| l.strip_prefix("MainPID="))
        .unwrap()
        .to_string();

    m.ok(&format!("busctl call {M} Prepare 'ssa{{ss}}' base/1 '' 0"));
    m.ok(&format!(
        "busctl call {M} Commit 'ssa{{ss}}' base base/1 1 team web"
    ));
    m.ok(&format!("busctl call {M} Prepare 'ssa{{ss}}' app/1 base 0"));
    m.ok(&format!(
        "busctl call {M} View 'ssa{{ss}}' scratch-view '' 1 layerd.io/pool scratch"
    ));

    // Non-root: the bus policy refuses every mutating call before it
    // reaches the daemon (org.freedesktop.DBus.Error.AccessDenied) ...
    let out = m.as_nobody(
        "dbus-send --system --print-reply --dest=org.layerd.Layerd1 /org/layerd/Layerd1 \
         org.layerd.Layerd1.Manager.Prepare string:evil string: dict:string:string:",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("org.freedesktop.DBus.Error.AccessDenied"),
        "{err}"
    );
    let out = m.as_nobody(&format!("busctl call {M} Prepare 'ssa{{ss}}' evil '' 0"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Access denied"));
    let out = m.as_nobody(&format!(
        "busctl call org.layerd.Layerd1 /org/layerd/Layerd1/pools/main {POOL_IFACE} Trim"
    ));
    assert!(!out.status.success(), "nobody started a trim");
    // ... and nothing changed.
    let out = m.sh(&format!("busctl call {M} Stat s evil"));
    assert!(!out.status.success());
    // ... but Stat, Walk, Usage and properties are everyone's.
    let stat = stdout(&m.as_nobody(&format!("busctl call {M} Stat s app/1")));
    assert!(
        stat.starts_with("sssa{ss}tt \"app/1\" \"base\" \"active\""),
        "{stat}"
    );
    let walk = stdout(&m.as_nobody(&format!("busctl call {M} Walk as 0")));
    assert!(walk.starts_with("a(ssssa{ss}tt) 3"), "{walk}");
    let usage = m.as_nobody(&format!("busctl call {M} Usage s base"));
    assert!(usage.status.success(), "{usage:?}");
    let count = stdout(&m.as_nobody(
        "busctl get-property org.layerd.Layerd1 /org/layerd/Layerd1/pools/main org.layerd.Layerd1.Pool LayerCount",
    ));
    assert_eq!(count, "t 2");

    // Restart keeps every layer (the store on /var/lib/layerd, the pools).
    m.ok("systemctl restart layerd");
    let show = m.ok("systemctl show layerd -p MainPID -p ActiveState");
    assert!(show.contains("ActiveState=active"), "{show}");
    assert!(!show.contains(&format!("MainPID={pid_before}\n")), "{show}");
    let walk = m.ok(&format!("busctl call {M} Walk as 0"));
    for key in ["\"base\"", "\"app/1\"", "\"base/1\"", "\"scratch-view\""] {
        if key == "\"base/1\"" {
            assert!(!walk.contains(key), "committed key came back: {walk}");
        } else {
            assert!(walk.contains(key), "{key} lost over restart: {walk}");
        }
    }
    assert!(walk.starts_with("a(ssssa{ss}tt) 3"), "{walk}");
    let stat = m.ok(&format!("busctl call {M} Stat s base"));
    assert!(stat.contains("\"committed\" 1 \"team\" \"web\""), "{stat}");

    // The watchdog is really pinged: with WatchdogSec=2s, systemd would
    // abort and restart a silent daemon within 2 s; over 6 s nothing
    // happens.
    m.ok("mkdir -p /etc/systemd/system/layerd.service.d && \
          printf '[Service]\\nWatchdogSec=2s\\n' > /etc/systemd/system/layerd.service.d/watchdog.conf && \
          systemctl daemon-reload && systemctl restart layerd");
    let before = m.ok("systemctl show layerd -p MainPID -p WatchdogUSec -p NRestarts");
    assert!(before.contains("WatchdogUSec=2s"), "{before}");
    std::thread::sleep(Duration::from_secs(6));
    let after = m.ok("systemctl show layerd -p MainPID -p WatchdogUSec -p NRestarts");
    assert_eq!(before, after, "the daemon was restarted by its watchdog");
    assert_eq!(stdout(&m.sh("systemctl is-active layerd")), "active");
}

/// Timers match the config (and follow its changes over a restart); a
/// timer's service runs the job and the pool records it; the journal
/// carries the structured fields.
#[test]
fn timers_follow_config_and_run_jobs() {
    let Some(m) = Machine::boot("timers_follow_config_and_run_jobs", TWO_POOLS) else {
        return;
    };
    m.ok("systemctl start layerd");
    assert_eq!(
        m.layerd_timers(),
        BTreeSet::from([
            "layerd-trim@main.timer".into(),
            "layerd-trim@scratch.timer".into()
        ])
    );
    let t = m.ok(
        "systemctl show layerd-trim@main.timer -p Persistent -p RandomizedDelayUSec -p TimersCalendar -p Unit -p ActiveState",
    );
    assert!(t.contains("Persistent=yes"), "{t}");
    assert!(t.contains("RandomizedDelayUSec=1h"), "{t}");
    assert!(t.contains("OnCalendar=Mon *-*-* 00:00:00"), "weekly: {t}");
    assert!(t.contains("Unit=layerd-trim@main.service"), "{t}");
    assert!(t.contains("ActiveState=active"), "{t}");
    let t = m.ok("systemctl show layerd-trim@scratch.timer -p TimersCalendar");
    assert!(t.contains("OnCalendar=Sun *-*-* 03:00:00"), "{t}");
    let sched = m.get_property("main", "MaintenanceSchedule");
    assert_eq!(sched, r#"s "trim \"weekly\" (layerd-trim@main.timer)""#);

    // A layer, so the journal has a LAYER_KEY.
    m.ok(&format!("busctl call {M} Prepare 'ssa{{ss}}' web/1 '' 0"));

    // The timer's service runs the job through the daemon and waits.
    assert_eq!(m.get_property("main", "LastTrim"), "(tts) 0 0 \"\"");
    m.ok("systemctl start layerd-trim@main.service");
    let last = m.get_property("main", "LastTrim");
    assert!(
        last.starts_with("(tts) ") && last.ends_with(" \"ok\""),
        "{last}"
    );
    let time: u64 = last.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(time > 0, "{last}");
    let svc = m.ok("journalctl -u layerd-trim@main.service --no-pager");
    assert!(svc.contains("trim of pool main done"), "{svc}");
    // A job that fails makes the service fail, and is recorded too.
    let out = m.sh("systemctl start layerd-trim@scratch.service");
    assert!(!out.status.success(), "trim on tmpfs succeeded?");
    let last = m.get_property("scratch", "LastTrim");
    assert!(last.contains("\"failed: "), "{last}");
    assert_eq!(
        stdout(&m.sh("systemctl is-failed layerd-trim@scratch.service")),
        "failed"
    );

    // The journal: native entries with our fields at fitting priorities.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut created, mut finished, mut failed) = (None, None, None);
    while Instant::now() < deadline {
        for e in m.journal() {
            let f = |k: &str| e.get(k).and_then(|v| v.as_str()).map(str::to_string);
            match f("MESSAGE").as_deref() {
                Some("layer created") => created = Some(e.clone()),
                Some("job finished") if f("POOL").as_deref() == Some("main") => {
                    finished = Some(e.clone())
                }
                Some("job failed") => failed = Some(e.clone()),
                _ => {}
            }
        }
        if created.is_some() && finished.is_some() && failed.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let field = |e: &Option<serde_json::Value>, k: &str| -> String {
        e.as_ref()
            .and_then(|e| e.get(k))
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(field(&created, "LAYER_KEY"), "web/1", "{created:?}");
    assert_eq!(field(&created, "POOL"), "main", "{created:?}");
    assert_eq!(field(&created, "OPERATION"), "prepare", "{created:?}");
    assert_eq!(field(&created, "PRIORITY"), "6", "{created:?}");
    assert_eq!(
        field(&created, "SYSLOG_IDENTIFIER"),
        "layerd",
        "{created:?}"
    );
    assert_eq!(
        field(&created, "_SYSTEMD_UNIT"),
        "layerd.service",
        "{created:?}"
    );
    assert_eq!(field(&finished, "OPERATION"), "trim", "{finished:?}");
    assert!(!field(&finished, "JOB_ID").is_empty(), "{finished:?}");
    assert_eq!(field(&failed, "POOL"), "scratch", "{failed:?}");
    assert_eq!(
        field(&failed, "ERRNO"),
        libc::EOPNOTSUPP.to_string(),
        "{failed:?}"
    );
    assert_eq!(field(&failed, "PRIORITY"), "4", "{failed:?}");

    // Trim and balance never overlap: a second trim while one runs is
    // Busy (engine rule; tests/jobs.rs proves it with a held job). Here:
    // the schedule changes with the config. scratch loses its timer, main
    // gets a daily one.
    m.set_config(
        &TWO_POOLS
            .replace("\"Sun *-*-* 03:00\"", "\"none\"")
            .replace("\"weekly\"", "\"daily\""),
    );
    m.ok("systemctl restart layerd");
    assert_eq!(
        m.layerd_timers(),
        BTreeSet::from(["layerd-trim@main.timer".into()])
    );
    let t = m.ok("systemctl show layerd-trim@main.timer -p TimersCalendar");
    assert!(t.contains("OnCalendar=*-*-* 00:00:00"), "daily: {t}");
    assert_eq!(
        m.get_property("scratch", "MaintenanceSchedule"),
        "s \"none: no maintenance configured\""
    );
    // A pool gone from the config takes its timers with it.
    let only_main = TWO_POOLS
        .split("[[pool]]\nname = \"scratch\"")
        .next()
        .unwrap();
    m.set_config(only_main);
    m.ok("systemctl restart layerd");
    assert_eq!(
        m.layerd_timers(),
        BTreeSet::from(["layerd-trim@main.timer".into()])
    );
    let out = m.sh("busctl get-property org.layerd.Layerd1 /org/layerd/Layerd1/pools/scratch org.layerd.Layerd1.Pool Name");
    assert!(!out.status.success(), "scratch is still served");
    // The record of the last trim outlives restarts.
    let last = m.get_property("main", "LastTrim");
    assert!(last.ends_with(" \"ok\""), "{last}");

    // (needs --features fault-injection, as scripts/test.sh builds)
    if cfg!(feature = "fault-injection") {
        // A restart while a timer's job runs keeps the timer (its service is
        // still loaded, and the new timer reuses it). The test hook holds
        // every job open for 60 s.
        m.ok("mkdir -p /etc/systemd/system/layerd.service.d && \
              printf '[Service]\\nEnvironment=LAYERD_TEST_JOB_DELAY_MS=60000\\n' > /etc/systemd/system/layerd.service.d/delay.conf && \
              systemctl daemon-reload && systemctl restart layerd");
        m.ok("systemctl start --no-block layerd-trim@main.service");
        let deadline = Instant::now() + Duration::from_secs(20);
        while stdout(&m.sh("systemctl is-active layerd-trim@main.service")) != "activating" {
            assert!(
                Instant::now() < deadline,
                "the timer's service did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        m.ok("systemctl restart layerd");
        assert_eq!(
            m.layerd_timers(),
            BTreeSet::from(["layerd-trim@main.timer".into()])
        );
        let sched = m.get_property("main", "MaintenanceSchedule");
        assert!(sched.contains("(layerd-trim@main.timer)"), "{sched}");
        m.ok("rm /etc/systemd/system/layerd.service.d/delay.conf && systemctl daemon-reload");
    }

    // A spec only systemd can judge (config parsing checks syntax only):
    // refused, said so in MaintenanceSchedule, and the daemon still serves.
    m.set_config(&only_main.replace("\"weekly\"", "\"someday\""));
    m.ok("systemctl restart layerd");
    assert_eq!(m.layerd_timers(), BTreeSet::new());
    let sched = m.get_property("main", "MaintenanceSchedule");
    assert!(
        sched
            .contains("trim \\\"someday\\\" not scheduled: systemd refused layerd-trim@main.timer"),
        "{sched}"
    );
}
