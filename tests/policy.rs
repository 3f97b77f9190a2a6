//! The shipped D-Bus policy (`dbus/org.layerd.Layerd1.conf`) on a private
//! bus configured like a system bus, and layerd's own root check behind it.
//!
//! DESIGN: "Non-root callers may introspect, read properties, Stat, Walk
//! and Usage; everything that changes state is root's (D-Bus policy file in
//! `dbus/`)". Unprivileged calls run as `nobody` through
//! `setpriv --reuid=65534 --regid=65534 --clear-groups dbus-send …`, which
//! prints the D-Bus error name of a failed call.
//!
//! Host tier: needs root, setpriv, dbus-daemon and dbus-send.

#[macro_use]
#[allow(unused_macros)]
#[path = "common/mod.rs"]
mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use common::*;

const POLICY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dbus/org.layerd.Layerd1.conf");
const ROOT: &str = "/org/layerd/Layerd1";
const MANAGER: &str = "org.layerd.Layerd1.Manager";
const NOBODY: u32 = 65534;
const BUS_DENIED: &str = "org.freedesktop.DBus.Error.AccessDenied";
const LAYERD_DENIED: &str = "org.layerd.Layerd1.Error.AccessDenied";

/// Why this host cannot run these tests, if it cannot.
fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (to start layerd as root and drop to nobody)".into());
    }
    for tool in ["dbus-daemon", "dbus-send", "setpriv"] {
        let found = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .any(|d| Path::new(d).join(tool).is_file());
        if !found {
            return Some(format!(
                "{tool} is missing (apt-get install -y dbus util-linux)"
            ));
        }
    }
    None
}

fn skip() -> bool {
    match unavailable() {
        None => false,
        Some(why) if std::env::var_os("CI").is_some() => panic!("cannot run in CI: {why}"),
        Some(why) => {
            eprintln!("SKIP: {why}");
            true
        }
    }
}

/// A private dbus-daemon with a system bus's default policy (every user
/// may connect; nobody may own names or call methods unless a policy says
/// so) plus the shipped layerd policy, listening on a world-accessible
/// socket in a 0755 directory. Killed by PID on drop.
struct SystemLikeBus {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    address: String,
}

impl SystemLikeBus {
    fn start(dir: &Path) -> SystemLikeBus {
        let conf = dir.join("system-bus.conf");
        let text = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={sock}</listen>
  <auth>EXTERNAL</auth>
  <!-- The default policy of Debian's /usr/share/dbus-1/system.conf. -->
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus.Debug.Stats"/>
  </policy>
  <include>{policy}</include>
</busconfig>
"#,
            sock = dir.join("system_bus_socket").display(),
            policy = POLICY
        );
        fs::write(&conf, text).unwrap();
        let log = fs::File::create(dir.join("bus.log")).unwrap();
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .args(["--nofork", "--nopidfile", "--print-address"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start dbus-daemon");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "dbus-daemon with the shipped policy printed no address: {}",
                fs::read_to_string(dir.join("bus.log")).unwrap_or_default()
            );
        }
        SystemLikeBus {
            child,
            _stdout: out,
            address: line.trim().to_string(),
        }
    }
}

impl Drop for SystemLikeBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One dbus-send call's outcome.
#[derive(Debug)]
struct Reply {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Reply {
    /// The D-Bus error name dbus-send printed ("Error NAME: message").
    fn error_name(&self) -> Option<&str> {
        self.stderr
            .lines()
            .find_map(|l| l.strip_prefix("Error "))
            .and_then(|l| l.split(':').next())
            .map(str::trim)
    }
}

/// `dbus-send --print-reply` to layerd as `uid` (None: as root).
fn dbus_send(addr: &str, uid: Option<u32>, path: &str, method: &str, args: &[&str]) -> Reply {
    let mut cmd = match uid {
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={u}"))
                .arg(format!("--regid={u}"))
                .arg("--clear-groups")
                .arg("dbus-send");
            c
        }
        None => Command::new("dbus-send"),
    };
    cmd.arg(format!("--bus={addr}"))
        .arg("--print-reply")
        .arg("--reply-timeout=20000")
        .arg(format!("--dest={BUS_NAME}"))
        .arg(path)
        .arg(method)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .current_dir("/");
    let out = cmd.output().expect("run dbus-send");
    Reply {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Calls that only read: (object path, method, args, something the reply
/// must contain).
fn reads(pool_path: &str) -> Vec<(String, String, Vec<String>, &'static str)> {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        (
            ROOT.into(),
            format!("{MANAGER}.Stat"),
            v(&["string:base"]),
            "committed",
        ),
        (
            ROOT.into(),
            format!("{MANAGER}.Walk"),
            v(&["array:string:kind==committed"]),
            "base",
        ),
        (
            ROOT.into(),
            format!("{MANAGER}.Usage"),
            v(&["string:base"]),
            "uint64",
        ),
        (
            ROOT.into(),
            "org.freedesktop.DBus.Introspectable.Introspect".into(),
            vec![],
            "org.layerd.Layerd1.Manager",
        ),
        (
            pool_path.into(),
            "org.freedesktop.DBus.Introspectable.Introspect".into(),
            vec![],
            "org.layerd.Layerd1.Pool",
        ),
        (
            ROOT.into(),
            "org.freedesktop.DBus.Properties.GetAll".into(),
            v(&["string:org.layerd.Layerd1.Manager"]),
            "DefaultPool",
        ),
        (
            pool_path.into(),
            "org.freedesktop.DBus.Properties.GetAll".into(),
            v(&["string:org.layerd.Layerd1.Pool"]),
            "LayerCount",
        ),
        (
            pool_path.into(),
            "org.freedesktop.DBus.Properties.Get".into(),
            v(&["string:org.layerd.Layerd1.Pool", "string:Health"]),
            "ok",
        ),
        (
            ROOT.into(),
            "org.freedesktop.DBus.ObjectManager.GetManagedObjects".into(),
            vec![],
            "/org/layerd/Layerd1/pools/main",
        ),
    ]
}

/// Calls that change state (or hand out mounts): (method, args).
fn writes() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        (
            "Prepare",
            vec!["string:nobody-a", "string:", "dict:string:string:k,v"],
        ),
        (
            "Prepare",
            vec!["string:nobody-b", "string:base", "dict:string:string:k,v"],
        ),
        (
            "View",
            vec!["string:nobody-v", "string:base", "dict:string:string:k,v"],
        ),
        (
            "Commit",
            vec!["string:nobody-c", "string:act", "dict:string:string:k,v"],
        ),
        ("Remove", vec!["string:act"]),
        ("Remove", vec!["string:base"]),
        (
            "Update",
            vec![
                "string:act",
                "dict:string:string:k,v",
                "array:string:labels",
            ],
        ),
        ("Mount", vec!["string:act"]),
        ("Unmount", vec!["string:act"]),
        ("Mounts", vec!["string:act"]),
        ("Cleanup", vec![]),
    ]
}

async fn sorted_walk(mgr: &ManagerProxy<'_>) -> Vec<WalkEntry> {
    let mut v = must(mgr.walk(vec![]).await, "Walk");
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn tempdir(prefix: &str) -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix(prefix)
        .rand_bytes(6)
        .tempdir_in("/tmp")
        .unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    d
}

/// On a bus configured like the system bus with the shipped policy:
/// nobody may read (Stat, Walk, Usage, Introspect, Get/GetAll,
/// GetManagedObjects) and the bus denies every other call; root may do
/// everything, from a client library and from the command line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_policy_lets_everyone_read_and_only_root_write() {
    if skip() {
        return;
    }
    let dir = tempdir("ldp.");
    let d = dir.path();
    let bus = SystemLikeBus::start(d);
    let pool = d.join("p");
    let config = DaemonConfig {
        state_dir: d.join("s"),
        run_dir: d.join("r"),
        default_pool: "main".into(),
        pools: vec![PoolConfig {
            name: "main".into(),
            driver: "vfs".into(),
            path: pool.clone(),
            extra: vec![],
        }],
        extra_toml: String::new(),
    };
    let mut daemon = Daemon::new(config, d, &bus.address);
    let conn = zbus::connection::Builder::address(bus.address.as_str())
        .unwrap()
        .build()
        .await
        .expect("connect as root");
    if let Err(e) = daemon.start(&conn).await {
        panic!(
            "layerd as root on a system-like bus with the shipped policy: {e}\nbus log: {}",
            fs::read_to_string(d.join("bus.log")).unwrap_or_default()
        );
    }
    let mgr = ManagerProxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let l = default_labels();
    must(
        mgr.prepare("base-a", "", l.clone()).await,
        "Prepare(base-a) as root",
    );
    must(
        mgr.commit("base", "base-a", l.clone()).await,
        "Commit(base) as root",
    );
    must(
        mgr.prepare("act", "base", l.clone()).await,
        "Prepare(act) as root",
    );

    let pool_obj = format!("{ROOT}/pools/main");
    let mut failures = Vec::new();
    for (path, method, args, needle) in reads(&pool_obj) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = dbus_send(&bus.address, Some(NOBODY), &path, &method, &args);
        if !r.ok || !r.stdout.contains(needle) {
            failures.push(format!("nobody: {method} {args:?} on {path} should succeed (reply containing {needle:?}): {r:?}"));
        }
    }

    let before = sorted_walk(&mgr).await;
    for (method, args) in writes() {
        let r = dbus_send(
            &bus.address,
            Some(NOBODY),
            ROOT,
            &format!("{MANAGER}.{method}"),
            &args,
        );
        if r.ok || r.error_name() != Some(BUS_DENIED) {
            failures.push(format!(
                "nobody: {method} {args:?} should be denied by the bus with {BUS_DENIED}: {r:?}"
            ));
        }
    }
    // Nor may nobody own layerd's name.
    let own = Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
        ])
        .arg("dbus-send")
        .arg(format!("--bus={}", bus.address))
        .args([
            "--print-reply",
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
        ])
        .args([
            "org.freedesktop.DBus.RequestName",
            "string:org.layerd.Layerd1",
            "uint32:4",
        ])
        .output()
        .unwrap();
    let own_err = String::from_utf8_lossy(&own.stderr);
    if own.status.success() || !own_err.contains(BUS_DENIED) {
        failures.push(format!(
            "nobody: RequestName(org.layerd.Layerd1) should be denied: {} {own_err}",
            String::from_utf8_lossy(&own.stdout)
        ));
    }
    assert_eq!(
        sorted_walk(&mgr).await,
        before,
        "denied calls changed the layers"
    );
    assert!(
        !pool.join("t").read_dir().unwrap().any(|_| true),
        "denied calls moved something into the trash"
    );

    // Root: everything, from the command line too.
    for (method, args) in [
        (
            "Prepare",
            vec!["string:root-a", "string:base", "dict:string:string:k,v"],
        ),
        (
            "Update",
            vec![
                "string:root-a",
                "dict:string:string:k,w",
                "array:string:labels",
            ],
        ),
        ("Mounts", vec!["string:root-a"]),
        ("Mount", vec!["string:root-a"]),
        ("Unmount", vec!["string:root-a"]),
        (
            "Commit",
            vec!["string:root-c", "string:root-a", "dict:string:string:k,v"],
        ),
        (
            "View",
            vec!["string:root-v", "string:root-c", "dict:string:string:k,v"],
        ),
        ("Remove", vec!["string:root-v"]),
        ("Remove", vec!["string:root-c"]),
        ("Cleanup", vec![]),
    ] {
        let r = dbus_send(
            &bus.address,
            None,
            ROOT,
            &format!("{MANAGER}.{method}"),
            &args,
        );
        if !r.ok {
            failures.push(format!("root: {method} {args:?} should succeed: {r:?}"));
        }
    }
    for (path, method, args, needle) in reads(&pool_obj) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = dbus_send(&bus.address, None, &path, &method, &args);
        if !r.ok || !r.stdout.contains(needle) {
            failures.push(format!("root: {method} on {path} should succeed: {r:?}"));
        }
    }
    let p = must(mgr.mount("act").await, "Mount(act) as root");
    must(mgr.unmount("act").await, "Unmount(act) as root");
    assert!(!is_mount_point(Path::new(&p)));
    must(
        mgr.commit("act-c", "act", l.clone()).await,
        "Commit(act) as root",
    );
    must(mgr.remove("act-c").await, "Remove(act-c) as root");
    let names: Vec<String> = sorted_walk(&mgr).await.into_iter().map(|r| r.0).collect();
    assert_eq!(names, vec!["base".to_string()]);

    if !failures.is_empty() {
        panic!(
            "{} policy check(s) failed:\n  {}\n----- layerd stderr -----\n{}",
            failures.len(),
            failures.join("\n  "),
            daemon.log_text()
        );
    }
    match daemon.stop() {
        Some((st, false)) if st.success() => {}
        other => panic!(
            "layerd did not stop cleanly: {other:?}\n{}",
            daemon.log_text()
        ),
    }
    drop(daemon);
    drop(bus);
}

/// On a bus that allows everything, layerd itself refuses non-root callers
/// every call that changes state, with its own AccessDenied naming the
/// method, and still answers their reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_denies_non_root_on_a_permissive_bus() {
    if skip() {
        return;
    }
    let Some(f) = Fixture::new(Backend::OverlayXfs).await else {
        return;
    };
    f.prepare("base-a", "").await;
    f.commit("base", "base-a").await;
    f.prepare("act", "base").await;
    let addr = f.daemon().bus_address.clone();
    let pool_obj = format!("{ROOT}/pools/main");

    let mut failures = Vec::new();
    for (path, method, args, needle) in reads(&pool_obj) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = dbus_send(&addr, Some(NOBODY), &path, &method, &args);
        if !r.ok || !r.stdout.contains(needle) {
            failures.push(format!(
                "nobody: {method} {args:?} on {path} should succeed: {r:?}"
            ));
        }
    }
    let before = f.walk(&[]).await;
    for (method, args) in writes() {
        let r = dbus_send(
            &addr,
            Some(NOBODY),
            ROOT,
            &format!("{MANAGER}.{method}"),
            &args,
        );
        if r.ok || r.error_name() != Some(LAYERD_DENIED) {
            failures.push(format!(
                "nobody: {method} should get {LAYERD_DENIED} from layerd: {r:?}"
            ));
        } else if !r.stderr.contains(method)
            || !r.stderr.contains("root")
            || !r.stderr.contains(&NOBODY.to_string())
        {
            failures.push(format!(
                "nobody: the {LAYERD_DENIED} message of {method} should name the method, the caller's uid and root: {}",
                r.stderr.trim()
            ));
        }
    }
    let mut after = f.walk(&[]).await;
    let mut b = before;
    b.sort_by(|x, y| x.0.name.cmp(&y.0.name));
    after.sort_by(|x, y| x.0.name.cmp(&y.0.name));
    assert_eq!(after, b, "denied calls changed the layers");
    assert!(
        mounts_under(&f.run_dir()).is_empty(),
        "a denied Mount mounted something"
    );
    let trash: Vec<PathBuf> = fs::read_dir(f.pool_path().join("t"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        trash.is_empty(),
        "denied calls moved {trash:?} into the trash"
    );
    assert!(
        failures.is_empty(),
        "{} check(s) failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );

    // Root on the same bus, from the command line: allowed.
    let r = dbus_send(
        &addr,
        None,
        ROOT,
        &format!("{MANAGER}.Prepare"),
        &["string:root-a", "string:base", "dict:string:string:k,v"],
    );
    assert!(r.ok, "root: Prepare via dbus-send: {r:?}");
    assert_eq!(f.stat("root-a").await.kind, "active");
    f.finish();
}
