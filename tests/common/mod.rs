//! Host-tier test harness for layerd: a private D-Bus, a loop-backed file
//! system, the real daemon, and file-tree helpers modelled on containerd's
//! `core/snapshots/testsuite/helpers.go` and continuity's `fs/fstest`.
//!
//! Everything here runs on the real kernel as root (TESTING.md, host tier):
//! loop devices, mkfs, mount(8), overlay. Each `Fixture` owns its own bus,
//! file system and daemon under a short `/tmp/ld.XXXXXX` directory, so tests
//! run in parallel, and its `Drop` undoes every mount, loop device and process
//! it made, even when the test panicked (then it also prints layerd's stderr).
//!
//! Mounted as `#[macro_use] #[path = "../common/mod.rs"] mod common;` by each
//! integration-test target; not every target uses every helper.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::{lchown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use layerd::dbus::client::{ManagerProxy, MountSpec, PoolProxy, StatReply, WalkEntry};

use zbus::proxy::CacheProperties;

/// Base directory of fixture directories: `/tmp`, or `$LAYERD_TEST_TMP`
/// (the kernel-tier VM points it at a fresh tmpfs, since its `/tmp` is an
/// overlay over the host's). Keep it short: the bus socket lives under it.
pub fn test_tmp() -> PathBuf {
    std::env::var_os("LAYERD_TEST_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// Kernel-tier tests (`tests/kernel_*.rs`, `#[ignore]`d so the host run
/// lists them as ignored) run inside the VM of `scripts/test-kernel.sh`, which
/// sets `LAYERD_KERNEL_TIER=1`. Run anywhere else they fail instead of
/// passing without having tested anything.
pub fn require_kernel_tier(test: &str) {
    if std::env::var_os("LAYERD_KERNEL_TIER").is_none() {
        panic!("{test}: a kernel-tier test: run it with scripts/test-kernel.sh");
    }
    if !Path::new("/dev/mapper/control").exists() {
        panic!("{test}: /dev/mapper/control is missing: modprobe dm-mod dm-thin-pool");
    }
}

/// Well-known bus name the daemon owns once it is ready.
pub const BUS_NAME: &str = "org.layerd.Layerd1";
/// Prefix of every layerd D-Bus error name.
pub const ERROR_PREFIX: &str = "org.layerd.Layerd1.Error.";
/// How long the daemon may take to own its bus name.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// In the kernel-tier VM a first start makes a thin pool and its base file
/// system, each dm step waiting for udev under emulation; on a loaded host
/// that took 125 s. Outside the VM: `deadline(READY_TIMEOUT)`.
pub fn ready_timeout() -> Duration {
    if std::env::var_os("LAYERD_KERNEL_TIER").is_some() {
        Duration::from_secs(300)
    } else {
        READY_TIMEOUT
    }
}
/// How long the daemon may take to exit after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A harness deadline, stretched tenfold in the kernel-tier VM: qemu without
/// KVM emulates the CPU, and a debug daemon takes tens of seconds to start.
pub fn deadline(d: Duration) -> Duration {
    if std::env::var_os("LAYERD_KERNEL_TIER").is_some() {
        d * 10
    } else {
        d
    }
}

/// Sparse size of each loop-backed image (xfs needs at least 300 MiB).
pub const IMAGE_SIZE: u64 = 512 << 20;
/// A label every helper puts on the layers it creates (containerd's suite
/// passes a `containerd.io/gc.root` label the same way).
pub const DEFAULT_LABEL: (&str, &str) = ("test.layerd.io/root", "conformance");

pub const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// The D-Bus error name of a failed call, e.g.
/// `org.layerd.Layerd1.Error.NotFound`; `None` for transport errors.
pub fn err_name(e: &zbus::Error) -> Option<String> {
    match e {
        zbus::Error::MethodError(name, _, _) => Some(name.to_string()),
        zbus::Error::FDO(fdo) => Some(zbus::DBusError::name(&**fdo).to_string()),
        _ => None,
    }
}

/// The human-readable message of a D-Bus error reply, if any.
pub fn err_message(e: &zbus::Error) -> Option<String> {
    match e {
        zbus::Error::MethodError(_, msg, _) => msg.clone(),
        zbus::Error::FDO(fdo) => zbus::DBusError::description(&**fdo).map(str::to_owned),
        _ => None,
    }
}

/// One line for a failed call: name and message.
pub fn describe(e: &zbus::Error) -> String {
    match (err_name(e), err_message(e)) {
        (Some(n), Some(m)) => format!("{n}: {m}"),
        (Some(n), None) => format!("{n} (no message)"),
        _ => format!("{e}"),
    }
}

/// Asserts that a `zbus::Result` failed with `org.layerd.Layerd1.Error.<NAME>`
/// and carries a non-empty message (DESIGN: "each with a message a person can
/// act on"). Evaluates to the error.
///
/// `assert_dbus_err!(f.mgr.stat("nope").await, "NotFound");`
/// `assert_dbus_err!(res, "FailedPrecondition" | "InvalidArgument");`
#[allow(unused_macros)]
macro_rules! assert_dbus_err {
    ($res:expr, $($name:literal)|+) => {
        assert_dbus_err!($res, $($name)|+, "")
    };
    ($res:expr, $($name:literal)|+, $($ctx:tt)+) => {{
        let wanted: &[&str] = &[$($name),+];
        let ctx = format!($($ctx)+);
        match $res {
            Ok(v) => panic!(
                "{ctx}{}expected D-Bus error {wanted:?}, but the call succeeded with {v:?}",
                if ctx.is_empty() { "" } else { ": " }
            ),
            Err(e) => {
                let got = $crate::common::err_name(&e);
                let ok = got.as_deref().is_some_and(|g| {
                    wanted.iter().any(|w| g == format!("{}{}", $crate::common::ERROR_PREFIX, w))
                });
                assert!(
                    ok,
                    "{ctx}{}expected D-Bus error {wanted:?}, got {}",
                    if ctx.is_empty() { "" } else { ": " },
                    $crate::common::describe(&e)
                );
                let msg = $crate::common::err_message(&e).unwrap_or_default();
                assert!(
                    !msg.trim().is_empty(),
                    "{ctx}{}error {} carries no message",
                    if ctx.is_empty() { "" } else { ": " },
                    got.unwrap_or_default()
                );
                e
            }
        }
    }};
}

/// Unwraps a D-Bus call or panics naming the call and the D-Bus error.
pub fn must<T>(r: zbus::Result<T>, what: impl fmt::Display) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what} failed: {}", describe(&e)),
    }
}

// ---------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------

/// Microseconds since the epoch, the unit of Stat's `created`/`updated`.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// A label map from pairs.
pub fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The labels helpers put on layers by default.
pub fn default_labels() -> HashMap<String, String> {
    labels(&[DEFAULT_LABEL])
}

/// Default labels plus `extra`.
pub fn labels_with(extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut l = default_labels();
    l.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    l
}

/// Checks a failed call: exactly `org.layerd.Layerd1.Error.<kind>`, a
/// message containing every needle. Returns the message.
pub fn check_err<T: fmt::Debug>(
    what: &str,
    res: zbus::Result<T>,
    kind: &str,
    needles: &[&str],
) -> String {
    let e = match res {
        Ok(v) => {
            panic!("{what}: expected {ERROR_PREFIX}{kind}, but the call succeeded with {v:?}")
        }
        Err(e) => e,
    };
    let want = format!("{ERROR_PREFIX}{kind}");
    assert_eq!(
        err_name(&e).as_deref(),
        Some(want.as_str()),
        "{what}: wrong error: {}",
        describe(&e)
    );
    let msg = err_message(&e).unwrap_or_default();
    for n in needles {
        assert!(
            msg.contains(n),
            "{what}: the {kind} message does not name {n:?}: {msg:?}"
        );
    }
    msg
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ))
    }
}

fn in_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .any(|d| Path::new(d).join(tool).is_file())
}

/// The last few kernel log lines (overlay explains its mount failures there).
fn dmesg_tail() -> String {
    run(Command::new("dmesg").arg("--notime"))
        .map(|s| {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(6)..].join("\n")
        })
        .unwrap_or_default()
}

/// containerd's suite clears the umask so that requested modes are exact;
/// the daemon inherits it too, so a layer root that is 0755 only thanks to
/// umask 022 is caught.
fn clear_umask() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    });
}

// ---------------------------------------------------------------------------
// Mount table helpers
// ---------------------------------------------------------------------------

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points of this mount namespace, in mount order.
pub fn mount_points() -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .collect()
}

/// Whether `path` is a mount point.
pub fn is_mount_point(path: &Path) -> bool {
    let p = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mount_points().contains(&p)
}

/// Mount points at or beneath `dir`, deepest and most recent first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut v: Vec<(usize, usize, PathBuf)> = mount_points()
        .into_iter()
        .enumerate()
        .filter(|(_, m)| m.starts_with(&dir))
        .map(|(i, m)| (m.components().count(), i, m))
        .collect();
    v.sort_by(|a, b| b.cmp(a));
    v.into_iter().map(|(_, _, m)| m).collect()
}

fn umount_one(path: &Path) -> nix::Result<()> {
    use nix::mount::{umount2, MntFlags};
    for _ in 0..20 {
        match umount2(path, MntFlags::empty()) {
            Err(nix::errno::Errno::EBUSY) => std::thread::sleep(Duration::from_millis(50)),
            r => return r,
        }
    }
    umount2(path, MntFlags::MNT_DETACH)
}

/// Unmounts everything stacked on `path` (mount(8) of several specs stacks).
pub fn umount_all(path: &Path) -> Result<(), String> {
    for _ in 0..64 {
        if !is_mount_point(path) {
            return Ok(());
        }
        umount_one(path).map_err(|e| format!("umount {}: {e}", path.display()))?;
    }
    Err(format!("{} is still a mount point", path.display()))
}

/// Removes the dm devices of thin pool `pool` (`layerd-<pool>-*`: layers and
/// base, then the pool, then its linear devices) and detaches the loop
/// devices of its files in `dir`. Test cleanup only: layerd never tears
/// its pools down.
pub fn teardown_thin_pool(pool: &str, dir: &Path) {
    use devicemapper::{DevId, DmName, DmOptions, DM};
    if let Ok(dm) = DM::new() {
        let prefix = format!("layerd-{pool}-");
        let names: Vec<String> = dm
            .list_devices()
            .map(|v| v.into_iter().map(|(n, _, _)| n.to_string()).collect())
            .unwrap_or_default();
        let rank = |n: &str| match n.strip_prefix(&prefix) {
            Some("pool") => 1,
            Some("meta") | Some("data") => 2,
            _ => 0,
        };
        for r in 0..3 {
            for n in names
                .iter()
                .filter(|n| n.starts_with(&prefix) && rank(n) == r)
            {
                if let Ok(name) = DmName::new(n) {
                    if let Err(e) = dm.device_remove(&DevId::Name(name), DmOptions::default()) {
                        eprintln!("fixture teardown: dm remove {n}: {e}");
                    }
                }
                let _ = fs::remove_file(Path::new("/dev/mapper").join(n));
            }
        }
    }
    for f in ["data.img", "metadata.img"] {
        let file = dir.join(f);
        if let Ok(out) = Command::new("losetup").arg("-j").arg(&file).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(dev) = line.split(':').next() {
                    let _ = Command::new("losetup").arg("-d").arg(dev).status();
                }
            }
        }
    }
}

/// Unmounts every mount at or beneath `dir`, lazily if a plain unmount keeps
/// failing. Returns what it unmounted (for "left behind" reports).
pub fn unmount_under(dir: &Path) -> Vec<PathBuf> {
    let mut done = Vec::new();
    for _ in 0..16 {
        let ms = mounts_under(dir);
        if ms.is_empty() {
            break;
        }
        for m in ms {
            if umount_one(&m).is_err() {
                let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
            }
            done.push(m);
        }
    }
    done
}

/// Mounts `specs` onto `target` the way a runtime would, with mount(8):
/// `mount -t TYPE -o OPTS SOURCE TARGET`; a `bind` spec becomes
/// `mount --bind` (or `--rbind`) followed by a read-only remount when the
/// options ask for `ro`. Several specs stack on the target, as containerd's
/// `mount.All` does.
pub fn mount_specs(specs: &[MountSpec], target: &Path) -> Result<(), String> {
    fs::create_dir_all(target).map_err(|e| format!("mkdir {}: {e}", target.display()))?;
    for (ty, source, options) in specs {
        let is_bind = ty == "bind" || options.iter().any(|o| o == "bind" || o == "rbind");
        let res = if is_bind {
            let flag = if options.iter().any(|o| o == "rbind") {
                "--rbind"
            } else {
                "--bind"
            };
            run(Command::new("mount").arg(flag).arg(source).arg(target)).and_then(|_| {
                if options.iter().any(|o| o == "ro") {
                    run(Command::new("mount")
                        .args(["-o", "remount,bind,ro"])
                        .arg(target))
                } else {
                    Ok(String::new())
                }
            })
        } else {
            let mut cmd = Command::new("mount");
            cmd.arg("-t").arg(ty);
            if !options.is_empty() {
                cmd.arg("-o").arg(options.join(","));
            }
            run(cmd.arg(source).arg(target))
        };
        if let Err(e) = res {
            let optlen: usize = options.iter().map(|o| o.len() + 1).sum();
            return Err(format!(
                "mount(8) of spec ({ty}, {source}, {} option bytes) on {} failed: {e}\nkernel log:\n{}",
                optlen,
                target.display(),
                dmesg_tail()
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Bus
// ---------------------------------------------------------------------------

/// A private dbus-daemon (system-bus-like, allowing everything) in the
/// foreground as our child; killed by PID on drop.
pub struct Bus {
    child: Child,
    _stdout: BufReader<ChildStdout>,
    pub address: String,
}

impl Bus {
    pub fn start(dir: &Path) -> Result<Bus, String> {
        let sock = dir.join("bus");
        let conf = dir.join("bus.conf");
        let text = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
    <allow user="*"/>
  </policy>
</busconfig>
"#,
            sock.display()
        );
        fs::write(&conf, text).map_err(|e| format!("write {}: {e}", conf.display()))?;
        let log = File::create(dir.join("bus.log")).map_err(|e| e.to_string())?;
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .arg("--nofork")
            .arg("--nopidfile")
            .arg("--print-address")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start dbus-daemon: {e}"))?;
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let n = out.read_line(&mut line).unwrap_or(0);
        if n == 0 || line.trim().is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            let err = fs::read_to_string(dir.join("bus.log")).unwrap_or_default();
            return Err(format!("dbus-daemon printed no address: {err}"));
        }
        Ok(Bus {
            child,
            _stdout: out,
            address: line.trim().to_string(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Fs: a loop-backed file system
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsKind {
    /// xfs with reflink=1: the vfs driver clones with FICLONE there.
    Xfs,
    /// ext4: no reflink, so the vfs driver makes plain copies.
    Ext4,
    /// btrfs: the btrfs driver's `existing` backing.
    Btrfs,
}

impl FsKind {
    pub fn mkfs(self) -> &'static str {
        match self {
            FsKind::Xfs => "mkfs.xfs",
            FsKind::Ext4 => "mkfs.ext4",
            FsKind::Btrfs => "mkfs.btrfs",
        }
    }
    fn mkfs_args(self) -> &'static [&'static str] {
        match self {
            // No discard (-K, nodiscard): the image is a fresh sparse file.
            FsKind::Xfs => &["-q", "-f", "-K", "-m", "reflink=1"],
            FsKind::Ext4 => &["-q", "-F", "-E", "nodiscard"],
            FsKind::Btrfs => &["-q", "-f", "-K"],
        }
    }
}

/// `truncate -s SIZE img; losetup -f --show --direct-io=off img; mkfs; mount`.
/// Drop unmounts everything beneath the mount point (lazily if needed),
/// detaches the loop device and removes the image.
pub struct Fs {
    pub kind: FsKind,
    pub image: PathBuf,
    pub device: Option<String>,
    pub mountpoint: PathBuf,
}

impl Fs {
    pub fn new(kind: FsKind, image: &Path, mountpoint: &Path, size: u64) -> Result<Fs, String> {
        let mut fs = Fs {
            kind,
            image: image.to_path_buf(),
            device: None,
            mountpoint: mountpoint.to_path_buf(),
        };
        File::create(image)
            .and_then(|f| f.set_len(size))
            .map_err(|e| format!("create {}: {e}", image.display()))?;
        let dev = run(Command::new("losetup")
            .args(["-f", "--show", "--direct-io=off"])
            .arg(image))?;
        fs.device = Some(dev.trim().to_string());
        let dev = fs.device.clone().unwrap();
        run(Command::new(kind.mkfs()).args(kind.mkfs_args()).arg(&dev))?;
        fs::create_dir_all(mountpoint).map_err(|e| e.to_string())?;
        run(Command::new("mount").arg(&dev).arg(mountpoint))?;
        if kind == FsKind::Ext4 {
            // Keep the pool directory empty, as a fresh directory would be.
            let _ = fs::remove_dir(mountpoint.join("lost+found"));
        }
        Ok(fs)
    }

    /// Bytes in use on the file system (statvfs), after syncing it.
    pub fn used_bytes(&self) -> u64 {
        if let Ok(f) = File::open(&self.mountpoint) {
            let _ = nix::unistd::syncfs(&f);
        }
        let st = nix::sys::statvfs::statvfs(&self.mountpoint).expect("statvfs");
        (st.blocks() - st.blocks_free()) as u64 * st.fragment_size() as u64
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        unmount_under(&self.mountpoint);
        if let Some(dev) = self.device.take() {
            for _ in 0..50 {
                if run(Command::new("losetup").arg("-d").arg(&dev)).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let _ = fs::remove_file(&self.image);
    }
}

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

/// The backend configurations the conformance suite runs against. To add
/// one (btrfs on a loop-backed btrfs; thin in the kernel-tier VM), add a
/// variant here, fill in the three methods, and list it in the suite's
/// `backends { … }` block in `tests/conformance/main.rs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// overlay driver on a directory of a loop-backed xfs.
    OverlayXfs,
    /// vfs driver on xfs (reflink copies).
    VfsXfs,
    /// vfs driver on ext4 (plain copies).
    VfsExt4,
    /// btrfs driver, `backing = "existing"` on a loop-backed btrfs mounted
    /// by the harness (pool path = the mounted fs).
    Btrfs,
    /// thin driver, `backing = "loop"`: its data and metadata files live in
    /// the pool directory on a loop-backed xfs. Kernel tier only (the host
    /// kernel has no device-mapper): see [`Backend::unavailable`].
    Thin,
}

impl Backend {
    pub const ALL: &'static [Backend] = &[
        Backend::OverlayXfs,
        Backend::VfsXfs,
        Backend::VfsExt4,
        Backend::Btrfs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Backend::OverlayXfs => "overlay_xfs",
            Backend::VfsXfs => "vfs_xfs",
            Backend::VfsExt4 => "vfs_ext4",
            Backend::Btrfs => "btrfs",
            Backend::Thin => "thin",
        }
    }
    /// The `driver` key of the pool.
    pub fn driver(self) -> &'static str {
        match self {
            Backend::OverlayXfs => "overlay",
            Backend::VfsXfs | Backend::VfsExt4 => "vfs",
            Backend::Btrfs => "btrfs",
            Backend::Thin => "thin",
        }
    }
    pub fn fs_kind(self) -> FsKind {
        match self {
            Backend::OverlayXfs | Backend::VfsXfs | Backend::Thin => FsKind::Xfs,
            Backend::VfsExt4 => FsKind::Ext4,
            Backend::Btrfs => FsKind::Btrfs,
        }
    }
    pub fn is_overlay(self) -> bool {
        self.driver() == "overlay"
    }
    pub fn is_btrfs(self) -> bool {
        self.driver() == "btrfs"
    }
    pub fn is_thin(self) -> bool {
        self.driver() == "thin"
    }
    /// More `key = value` lines of the pool config: btrfs uses the file
    /// system the harness mounted (`backing = "existing"`).
    pub fn pool_extra(self) -> Vec<(String, String)> {
        match self {
            Backend::Btrfs => vec![("backing".into(), toml_str("existing"))],
            // Small: a 2 GiB sparse data file; xfs needs at least 300 MB.
            Backend::Thin => vec![
                ("size".into(), toml_str("2G")),
                ("base_size".into(), toml_str("512M")),
            ],
            _ => vec![],
        }
    }

    /// Why this host cannot run the backend, if it cannot.
    pub fn unavailable(self) -> Option<String> {
        if !nix::unistd::geteuid().is_root() {
            return Some("needs root (loop devices, mount)".into());
        }
        if self.is_thin() {
            if std::env::var_os("LAYERD_KERNEL_TIER").is_none() {
                return Some(
                    "device-mapper runs in the kernel tier only (scripts/test-kernel.sh sets LAYERD_KERNEL_TIER=1)"
                        .into(),
                );
            }
            if !Path::new("/dev/mapper/control").exists() {
                return Some("/dev/mapper/control is missing: modprobe dm-thin-pool".into());
            }
            if !in_path("thin_check") {
                return Some(
                    "thin_check is missing (apt-get install -y thin-provisioning-tools)".into(),
                );
            }
        }
        for tool in ["dbus-daemon", "losetup", "mount", self.fs_kind().mkfs()] {
            if !in_path(tool) {
                return Some(format!(
                    "{tool} is missing (apt-get install -y xfsprogs btrfs-progs e2fsprogs dbus)"
                ));
            }
        }
        None
    }

    /// True, after a loud SKIP line, when this host cannot run the backend;
    /// in CI (`CI` set) nothing skips: it panics instead.
    pub fn skip(self, test: &str) -> bool {
        let Some(why) = self.unavailable() else {
            return false;
        };
        if std::env::var_os("CI").is_some() {
            panic!("{test}: cannot run in CI: {why}");
        }
        // Straight to fd 2: libtest captures eprintln! of passing tests,
        // and a skip must be seen.
        let _ = writeln!(io::stderr(), "SKIP {test}: {why}");
        true
    }
}

// ---------------------------------------------------------------------------
// Daemon
// ---------------------------------------------------------------------------

/// Runs the daemon binary once with `args`, `--config cfg` and a bus
/// address under `d` where no bus listens (so a config wrongly accepted
/// reaches no real bus), its stderr in `err`; killed after 10 s. Returns
/// the exit status and the stderr text.
pub fn run_layerd_with(args: &[&str], cfg: &Path, d: &Path, err: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(Daemon::binary())
        .args(args)
        .arg("--config")
        .arg(cfg)
        .arg("--bus-address")
        .arg(format!("unix:path={}/no-bus", d.display()))
        .env("LAYERD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(err).unwrap())
        .spawn()
        .expect("run layerd");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = fs::read_to_string(err).unwrap_or_default();
    let _ = fs::remove_file(err);
    (status.code(), text)
}

/// One pool of the daemon's config.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub name: String,
    pub driver: String,
    pub path: PathBuf,
    /// More `key = value` lines (values already TOML-encoded).
    pub extra: Vec<(String, String)>,
}

/// The daemon's config file (DESIGN "Config shape").
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    pub default_pool: String,
    pub pools: Vec<PoolConfig>,
    /// More TOML after the pools (e.g. a `[containerd]` table).
    pub extra_toml: String,
}

pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl DaemonConfig {
    pub fn to_toml(&self) -> String {
        let mut s = format!(
            "[daemon]\nstate_dir = {}\nrun_dir = {}\ndefault_pool = {}\n",
            toml_str(&self.state_dir.to_string_lossy()),
            toml_str(&self.run_dir.to_string_lossy()),
            toml_str(&self.default_pool)
        );
        for p in &self.pools {
            s.push_str(&format!(
                "\n[[pool]]\nname = {}\ndriver = {}\n",
                toml_str(&p.name),
                toml_str(&p.driver),
            ));
            // An extra `path` (a device backing's device) replaces the
            // pool directory; an empty value drops the key.
            if !p.extra.iter().any(|(k, _)| k == "path") {
                s.push_str(&format!("path = {}\n", toml_str(&p.path.to_string_lossy())));
            }
            for (k, v) in p.extra.iter().filter(|(_, v)| !v.is_empty()) {
                s.push_str(&format!("{k} = {v}\n"));
            }
        }
        if !self.extra_toml.is_empty() {
            s.push('\n');
            s.push_str(&self.extra_toml);
        }
        s
    }
}

/// The layerd process: `layerd --config FILE --bus-address ADDR`, stderr and
/// stdout appended to `log`.
pub struct Daemon {
    pub config: DaemonConfig,
    pub config_path: PathBuf,
    pub log: PathBuf,
    pub bus_address: String,
    /// Extra environment for the next start (e.g. `LAYERD_TEST_FAULT`).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    starts: usize,
}

impl Daemon {
    /// Writes the config; does not start the process.
    pub fn new(config: DaemonConfig, dir: &Path, bus_address: &str) -> Daemon {
        let config_path = dir.join("layerd.toml");
        fs::write(&config_path, config.to_toml()).expect("write layerd.toml");
        Daemon {
            config,
            config_path,
            log: dir.join("layerd.log"),
            bus_address: bus_address.to_string(),
            env: Vec::new(),
            child: None,
            starts: 0,
        }
    }

    /// The daemon binary: cargo's, or `$LAYERD_BIN` (the kernel tier runs a
    /// snapshot copy, so a rebuild on the host cannot swap it mid-run).
    pub fn binary() -> &'static str {
        static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        BIN.get_or_init(|| {
            std::env::var("LAYERD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_layerd").to_string())
        })
        .as_str()
    }

    /// The daemon's stderr so far (all starts), trimmed to its tail.
    pub fn log_text(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        const MAX: usize = 48 * 1024;
        if text.len() > MAX {
            let mut cut = text.len() - MAX;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            format!("[… {} bytes cut …]\n{}", cut, &text[cut..])
        } else {
            text
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is running (reaps it if it exited).
    pub fn is_running(&mut self) -> Option<ExitStatus> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(st))) => {
                self.child = None;
                Some(st)
            }
            _ => None,
        }
    }

    /// Starts layerd and waits until it owns `org.layerd.Layerd1`.
    pub async fn start(&mut self, conn: &zbus::Connection) -> Result<(), String> {
        assert!(self.child.is_none(), "layerd is already running");
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| e.to_string())?;
        let _ = writeln!(log, "===== layerd start #{} =====", self.starts);
        let mut cmd = Command::new(Self::binary());
        cmd.arg("--config")
            .arg(&self.config_path)
            .arg("--bus-address")
            .arg(&self.bus_address)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        // layerd reads its log filter from LAYERD_LOG (default info).
        if std::env::var_os("LAYERD_LOG").is_none() {
            cmd.env("LAYERD_LOG", "debug");
        }
        // Plain stderr, even where journald runs; no colour codes.
        cmd.env("LAYERD_LOG_STDERR", "1").env("NO_COLOR", "1");
        cmd.env("RUST_BACKTRACE", "1");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", Self::binary()))?;
        self.child = Some(child);

        let dbus = zbus::fdo::DBusProxy::new(conn)
            .await
            .map_err(|e| e.to_string())?;
        let name = zbus::names::BusName::try_from(BUS_NAME).unwrap();
        let deadline = Instant::now() + ready_timeout();
        loop {
            if let Some(st) = self.is_running() {
                return Err(format!(
                    "layerd exited ({st}) before owning {BUS_NAME}; its stderr:\n{}",
                    self.log_text()
                ));
            }
            if dbus.name_has_owner(name.clone()).await.unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = self.stop();
                return Err(format!(
                    "layerd did not own {BUS_NAME} within {:?}; its stderr:\n{}",
                    ready_timeout(),
                    self.log_text()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, wait up to `STOP_TIMEOUT`, then SIGKILL. Returns how it
    /// ended (`None` if it was not running), and whether SIGKILL was needed.
    pub fn stop(&mut self) -> Option<(ExitStatus, bool)> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + self::deadline(STOP_TIMEOUT);
        loop {
            match child.try_wait() {
                Ok(Some(st)) => return Some((st, false)),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(25))
                }
                _ => {
                    let _ = child.kill();
                    return child.wait().ok().map(|st| (st, true));
                }
            }
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// SIGTERM, wait, start again.
    pub async fn restart(&mut self, conn: &zbus::Connection) -> Result<(), String> {
        if let Some((st, killed)) = self.stop() {
            if killed || !st.success() {
                return Err(format!(
                    "layerd did not stop cleanly on SIGTERM ({st}{}); its stderr:\n{}",
                    if killed { ", needed SIGKILL" } else { "" },
                    self.log_text()
                ));
            }
        }
        self.start(conn).await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        unmount_under(&self.config.run_dir);
        unmount_under(&self.config.state_dir);
    }
}

// ---------------------------------------------------------------------------
// Layer info
// ---------------------------------------------------------------------------

/// Stat/Update reply, or a Walk row without its pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    pub parent: String,
    pub kind: String,
    pub labels: HashMap<String, String>,
    pub created: u64,
    pub updated: u64,
}

impl From<StatReply> for Info {
    fn from((name, parent, kind, labels, created, updated): StatReply) -> Info {
        Info {
            name,
            parent,
            kind,
            labels,
            created,
            updated,
        }
    }
}

/// A Walk row split into its info and its pool.
pub fn walk_row((name, parent, kind, pool, labels, created, updated): WalkEntry) -> (Info, String) {
    (
        Info {
            name,
            parent,
            kind,
            labels,
            created,
            updated,
        },
        pool,
    )
}

// ---------------------------------------------------------------------------
// File operations (fstest appliers) and tree comparison
// ---------------------------------------------------------------------------

/// One file operation, as continuity's `fstest.Applier`s.
#[derive(Clone, Debug)]
pub enum Op {
    CreateFile {
        path: String,
        data: Vec<u8>,
        mode: u32,
    },
    CreateDir {
        path: String,
        mode: u32,
    },
    Chown {
        path: String,
        uid: u32,
        gid: u32,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Remove {
        path: String,
    },
    RemoveAll {
        path: String,
    },
    Rename {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        link: String,
    },
    Link {
        existing: String,
        new: String,
    },
}

pub fn create_file(path: &str, data: impl AsRef<[u8]>, mode: u32) -> Op {
    Op::CreateFile {
        path: path.into(),
        data: data.as_ref().to_vec(),
        mode,
    }
}
pub fn create_dir(path: &str, mode: u32) -> Op {
    Op::CreateDir {
        path: path.into(),
        mode,
    }
}
pub fn chown(path: &str, uid: u32, gid: u32) -> Op {
    Op::Chown {
        path: path.into(),
        uid,
        gid,
    }
}
pub fn chmod(path: &str, mode: u32) -> Op {
    Op::Chmod {
        path: path.into(),
        mode,
    }
}
pub fn remove(path: &str) -> Op {
    Op::Remove { path: path.into() }
}
pub fn remove_all(path: &str) -> Op {
    Op::RemoveAll { path: path.into() }
}
pub fn rename(from: &str, to: &str) -> Op {
    Op::Rename {
        from: from.into(),
        to: to.into(),
    }
}
pub fn symlink_op(target: &str, link: &str) -> Op {
    Op::Symlink {
        target: target.into(),
        link: link.into(),
    }
}
pub fn link(existing: &str, new: &str) -> Op {
    Op::Link {
        existing: existing.into(),
        new: new.into(),
    }
}

fn under(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

impl Op {
    pub fn apply(&self, root: &Path) -> io::Result<()> {
        let ctx = |e: io::Error, what: &str| {
            io::Error::new(e.kind(), format!("{what} under {}: {e}", root.display()))
        };
        match self {
            Op::CreateFile { path, data, mode } => {
                let p = under(root, path);
                fs::write(&p, data).map_err(|e| ctx(e, &format!("write {path}")))?;
                fs::set_permissions(&p, fs::Permissions::from_mode(*mode))
                    .map_err(|e| ctx(e, &format!("chmod {path}")))
            }
            Op::CreateDir { path, mode } => {
                let p = under(root, path);
                fs::create_dir_all(&p).map_err(|e| ctx(e, &format!("mkdir {path}")))?;
                fs::set_permissions(&p, fs::Permissions::from_mode(*mode))
                    .map_err(|e| ctx(e, &format!("chmod {path}")))
            }
            Op::Chown { path, uid, gid } => lchown(under(root, path), Some(*uid), Some(*gid))
                .map_err(|e| ctx(e, &format!("chown {path}"))),
            Op::Chmod { path, mode } => {
                fs::set_permissions(under(root, path), fs::Permissions::from_mode(*mode))
                    .map_err(|e| ctx(e, &format!("chmod {path}")))
            }
            Op::Remove { path } => {
                let p = under(root, path);
                let r = if fs::symlink_metadata(&p)
                    .map(|m| m.is_dir())
                    .unwrap_or(false)
                {
                    fs::remove_dir(&p)
                } else {
                    fs::remove_file(&p)
                };
                r.map_err(|e| ctx(e, &format!("remove {path}")))
            }
            Op::RemoveAll { path } => {
                let p = under(root, path);
                match fs::symlink_metadata(&p) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(ctx(e, &format!("lstat {path}"))),
                    Ok(m) if m.is_dir() => {
                        fs::remove_dir_all(&p).map_err(|e| ctx(e, &format!("rm -r {path}")))
                    }
                    Ok(_) => fs::remove_file(&p).map_err(|e| ctx(e, &format!("rm {path}"))),
                }
            }
            Op::Rename { from, to } => fs::rename(under(root, from), under(root, to))
                .map_err(|e| ctx(e, &format!("rename {from} {to}"))),
            Op::Symlink { target, link } => {
                symlink(target, under(root, link)).map_err(|e| ctx(e, &format!("symlink {link}")))
            }
            Op::Link { existing, new } => fs::hard_link(under(root, existing), under(root, new))
                .map_err(|e| ctx(e, &format!("link {existing} {new}"))),
        }
    }
}

/// Applies `ops` in order under `root`.
pub fn apply(root: &Path, ops: &[Op]) -> io::Result<()> {
    ops.iter().try_for_each(|op| op.apply(root))
}

/// What a tree entry is.
#[derive(Clone, PartialEq, Eq)]
pub enum EntryKind {
    File(Vec<u8>),
    Dir,
    Symlink(PathBuf),
    /// Device, fifo, socket: the file-type bits and rdev.
    Other(u32, u64),
}

impl fmt::Debug for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EntryKind::File(d) if d.len() <= 64 => {
                write!(f, "file {:?}", String::from_utf8_lossy(d))
            }
            EntryKind::File(d) => write!(f, "file of {} bytes", d.len()),
            EntryKind::Dir => write!(f, "dir"),
            EntryKind::Symlink(t) => write!(f, "symlink -> {}", t.display()),
            EntryKind::Other(m, r) => write!(f, "special {m:o} rdev {r}"),
        }
    }
}

/// One path of a tree: what fstest's manifest compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    /// Permission and set-id/sticky bits (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// For hard-linked files: the first path (in order) of its link group
    /// inside the tree.
    pub hardlink: Option<String>,
}

/// A file tree: `/`-rooted relative paths to entries, the root excluded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree(pub BTreeMap<String, Entry>);

impl Tree {
    pub fn capture(root: &Path) -> io::Result<Tree> {
        let mut map = BTreeMap::new();
        let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
        fn walk(
            root: &Path,
            dir: &Path,
            map: &mut BTreeMap<String, Entry>,
            inodes: &mut BTreeMap<(u64, u64), Vec<String>>,
        ) -> io::Result<()> {
            let mut names: Vec<_> = fs::read_dir(dir)
                .map_err(|e| io::Error::new(e.kind(), format!("readdir {}: {e}", dir.display())))?
                .collect::<io::Result<Vec<_>>>()?;
            names.sort_by_key(|d| d.file_name());
            for d in names {
                let p = d.path();
                let md = fs::symlink_metadata(&p)
                    .map_err(|e| io::Error::new(e.kind(), format!("lstat {}: {e}", p.display())))?;
                let rel = format!("/{}", p.strip_prefix(root).unwrap().to_string_lossy());
                let ft = md.file_type();
                let kind = if ft.is_dir() {
                    EntryKind::Dir
                } else if ft.is_file() {
                    EntryKind::File(fs::read(&p).map_err(|e| {
                        io::Error::new(e.kind(), format!("read {}: {e}", p.display()))
                    })?)
                } else if ft.is_symlink() {
                    EntryKind::Symlink(fs::read_link(&p)?)
                } else {
                    EntryKind::Other(md.mode() & 0o170000, md.rdev())
                };
                if !ft.is_dir() && md.nlink() > 1 {
                    inodes
                        .entry((md.dev(), md.ino()))
                        .or_default()
                        .push(rel.clone());
                }
                map.insert(
                    rel,
                    Entry {
                        kind,
                        mode: md.mode() & 0o7777,
                        uid: md.uid(),
                        gid: md.gid(),
                        hardlink: None,
                    },
                );
                if ft.is_dir() {
                    walk(root, &p, map, inodes)?;
                }
            }
            Ok(())
        }
        walk(root, root, &mut map, &mut inodes)?;
        for group in inodes.values().filter(|g| g.len() > 1) {
            for p in group {
                map.get_mut(p).unwrap().hardlink = Some(group[0].clone());
            }
        }
        Ok(Tree(map))
    }

    /// Human-readable differences, `expected` → `self`.
    pub fn diff(&self, expected: &Tree) -> Vec<String> {
        let mut out = Vec::new();
        for (p, e) in &expected.0 {
            match self.0.get(p) {
                None => out.push(format!("missing {p} ({:?})", e.kind)),
                Some(a) if a != e => {
                    let mut what = Vec::new();
                    if a.kind != e.kind {
                        what.push(format!(
                            "content/type {:?} != expected {:?}",
                            a.kind, e.kind
                        ));
                    }
                    if a.mode != e.mode {
                        what.push(format!("mode {:o} != expected {:o}", a.mode, e.mode));
                    }
                    if (a.uid, a.gid) != (e.uid, e.gid) {
                        what.push(format!(
                            "owner {}:{} != expected {}:{}",
                            a.uid, a.gid, e.uid, e.gid
                        ));
                    }
                    if a.hardlink != e.hardlink {
                        what.push(format!(
                            "hard link {:?} != expected {:?}",
                            a.hardlink, e.hardlink
                        ));
                    }
                    out.push(format!("changed {p}: {}", what.join("; ")));
                }
                _ => {}
            }
        }
        for (p, a) in &self.0 {
            if !expected.0.contains_key(p) {
                out.push(format!("unexpected {p} ({:?})", a.kind));
            }
        }
        out
    }
}

/// Checks that the tree at `actual` equals the tree at `expected` (names,
/// types, modes, owners, contents, symlink targets, hard-link groups; the
/// roots themselves are not compared).
pub fn check_dir_equal(expected: &Path, actual: &Path) -> Result<(), String> {
    let e = Tree::capture(expected).map_err(|e| format!("capture expected tree: {e}"))?;
    let a = Tree::capture(actual).map_err(|e| format!("capture {}: {e}", actual.display()))?;
    let d = a.diff(&e);
    if d.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} differs from the expected tree:\n  {}",
            actual.display(),
            d.join("\n  ")
        ))
    }
}

/// Writes `len` bytes of a non-zero pattern (no sparse or zero-block
/// shortcuts) and syncs the file.
pub fn write_pattern(path: &Path, len: u64, seed: u8) -> io::Result<()> {
    let mut f = File::create(path)?;
    let chunk: Vec<u8> = (0..(1u32 << 16))
        .map(|i| ((i * 7 + seed as u32 * 13) % 251 + 1) as u8)
        .collect();
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

// ---------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------

/// How a test gets a writable/readable path for a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The daemon's `Mount(key)` / `Unmount(key)`.
    Daemon,
    /// `Mounts(key)` mounted by the test with mount(8), as a runtime would.
    Specs,
}

/// A layer mounted for the test; give it back with `Fixture::unmount`.
#[derive(Debug)]
#[must_use = "unmount it with Fixture::unmount"]
pub struct Mounted {
    pub key: String,
    pub path: PathBuf,
    pub via: Via,
}

/// A chain of committed layers and the flat directory it must equal.
pub struct Chain {
    pub names: Vec<String>,
    pub flat: PathBuf,
}

/// One test's world: `/tmp/ld.XXXXXX/{p (loop fs, the pool), s, r, w, bus}`.
pub struct Fixture {
    pub backend: Backend,
    /// Client connection to the private bus.
    pub conn: zbus::Connection,
    /// `org.layerd.Layerd1.Manager` on `/org/layerd/Layerd1`.
    pub mgr: ManagerProxy<'static>,
    daemon: Option<Daemon>,
    fs: Option<Fs>,
    bus: Option<Bus>,
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    seq: AtomicUsize,
    /// The pool's name: `main`, or for thin a name of its own
    /// ([`thin_pool_name`]), since dm names (`layerd-<pool>-*`) are
    /// host-wide and thin fixtures run side by side.
    pool_name: String,
    /// When the fixture began and how long its setup took (`timing` line).
    started: Instant,
    setup: Duration,
    /// Fixtures that must use `main` for thin hold this for their life.
    _main: Option<std::sync::MutexGuard<'static, ()>>,
}

/// One thin fixture named `main` at a time per test process.
static THIN_MAIN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A thin pool name no other fixture on this host uses now: `k<pid>x<n>`
/// (pool names take A–Z, a–z, 0–9, `_`, `-`; no `-`, so one pool's dm
/// prefix `layerd-<name>-` is never another's).
pub fn thin_pool_name() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "k{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The running test's name (libtest names each test's thread after it).
pub fn test_name() -> String {
    std::thread::current().name().unwrap_or("?").to_string()
}

/// One `layerd-test-time:` line per fixture, straight to fd 2 (libtest
/// captures the output of passing tests): scripts/test-time-table.sh turns
/// them into the per-test time table.
fn report_time(backend: Backend, setup: Duration, total: Duration, ok: bool) {
    let _ = writeln!(
        io::stderr(),
        "layerd-test-time: {} {} setup={:.1}s total={:.1}s{}",
        test_name(),
        backend.name(),
        setup.as_secs_f64(),
        total.as_secs_f64(),
        if ok { "" } else { " FAILED" }
    );
}

impl Fixture {
    /// Builds the world for `backend` and starts layerd. `None` (after a
    /// loud SKIP line) when the host lacks what the backend needs, unless
    /// `CI` is set: in CI nothing skips.
    pub async fn new(backend: Backend) -> Option<Fixture> {
        Self::new_with(backend, &[]).await
    }

    /// Like [`Fixture::new`], with more (or other) `key = value` lines in
    /// the pool's config (values TOML-encoded), e.g. a smaller thin pool.
    /// An empty value drops a default key; a `path` replaces the pool
    /// directory (e.g. the data device of `backing = "device"`).
    pub async fn new_with(backend: Backend, extra: &[(&str, String)]) -> Option<Fixture> {
        Self::new_with_image(backend, extra, IMAGE_SIZE).await
    }

    /// Like [`Fixture::new_with`] with the pool named `pool_name`. A thin
    /// pool named `main` (tests whose own guards tear down `layerd-main-*`)
    /// waits for the other `main` thin fixtures of this process.
    pub async fn new_named(
        backend: Backend,
        extra: &[(&str, String)],
        pool_name: &str,
    ) -> Option<Fixture> {
        Self::build(backend, extra, pool_name, IMAGE_SIZE).await
    }

    /// Like [`Fixture::new_with`] on a loop-backed file system of
    /// `image_size` bytes (sparse) instead of [`IMAGE_SIZE`]: for a thin
    /// pool whose data file (sparse, `size`) must find room to grow. On the
    /// default 512 MiB image a 2 GiB pool's writes fail with EIO ("critical
    /// space allocation error" on its loop device) once the file system is
    /// full, long before the pool is (containerd's testsuite got there).
    pub async fn new_with_image(
        backend: Backend,
        extra: &[(&str, String)],
        image_size: u64,
    ) -> Option<Fixture> {
        let name = if backend.is_thin() {
            thin_pool_name()
        } else {
            "main".into()
        };
        Self::build(backend, extra, &name, image_size).await
    }

    async fn build(
        backend: Backend,
        extra: &[(&str, String)],
        pool_name: &str,
        image_size: u64,
    ) -> Option<Fixture> {
        if backend.skip(backend.name()) {
            return None;
        }
        let started = Instant::now();
        clear_umask();
        let main_guard = (backend.is_thin() && pool_name == "main")
            .then(|| THIN_MAIN.lock().unwrap_or_else(|p| p.into_inner()));
        let dir = tempfile::Builder::new()
            .prefix("ld.")
            .rand_bytes(6)
            .tempdir_in(test_tmp())
            .expect("create fixture dir");
        let path = dir.path().to_path_buf();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        let pool_path = path.join("p");
        let fs = Fs::new(backend.fs_kind(), &path.join("img"), &pool_path, image_size)
            .unwrap_or_else(|e| panic!("{}: file system fixture: {e}", backend.name()));
        let bus = Bus::start(&path).unwrap_or_else(|e| panic!("private bus: {e}"));
        let config = DaemonConfig {
            state_dir: path.join("s"),
            run_dir: path.join("r"),
            default_pool: pool_name.into(),
            pools: vec![PoolConfig {
                name: pool_name.into(),
                driver: backend.driver().into(),
                path: pool_path,
                extra: {
                    let mut e = backend.pool_extra();
                    for (k, v) in extra {
                        e.retain(|(ek, _)| ek != k);
                        e.push((k.to_string(), v.clone()));
                    }
                    e
                },
            }],
            extra_toml: String::new(),
        };
        let mut daemon = Daemon::new(config, &path, &bus.address);
        let conn = zbus::connection::Builder::address(bus.address.as_str())
            .expect("bus address")
            .build()
            .await
            .expect("connect to the private bus");
        if let Err(e) = daemon.start(&conn).await {
            if backend.is_thin() {
                // No Fixture to drop: its pool must not outlive the test.
                drop(daemon);
                teardown_thin_pool(pool_name, &path.join("p"));
            }
            report_time(backend, started.elapsed(), started.elapsed(), false);
            panic!("{}: {e}", backend.name());
        }
        let mgr = manager_proxy(&conn).await;
        Some(Fixture {
            backend,
            conn,
            mgr,
            daemon: Some(daemon),
            fs: Some(fs),
            bus: Some(bus),
            dir: Some(dir),
            path,
            seq: AtomicUsize::new(0),
            pool_name: pool_name.into(),
            started,
            setup: started.elapsed(),
            _main: main_guard,
        })
    }

    /// The fixture pool's name (`main`, or a thin fixture's own).
    pub fn pool_name(&self) -> &str {
        &self.pool_name
    }

    /// Its D-Bus object, `/org/layerd/Layerd1/pools/<name>`.
    pub async fn main_pool(&self) -> PoolProxy<'static> {
        self.pool(&self.pool_name).await
    }

    /// The prefix of its dm device names (thin): `layerd-<pool>-`.
    pub fn dm_prefix(&self) -> String {
        format!("layerd-{}-", self.pool_name)
    }

    /// The fixture directory (`/tmp/ld.XXXXXX`).
    pub fn dir(&self) -> &Path {
        &self.path
    }
    pub fn pool_path(&self) -> PathBuf {
        self.path.join("p")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.daemon().config.run_dir.clone()
    }
    /// The containerd socket layerd serves for the default pool with no
    /// `[containerd]` config: `<run_dir>/containerd-<pool>.sock`.
    pub fn containerd_socket(&self) -> PathBuf {
        self.containerd_socket_named(&self.pool_name)
    }
    /// The socket of snapshotter `name` in run_dir.
    pub fn containerd_socket_named(&self, name: &str) -> PathBuf {
        self.run_dir().join(format!("containerd-{name}.sock"))
    }
    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().unwrap()
    }
    pub fn daemon_mut(&mut self) -> &mut Daemon {
        self.daemon.as_mut().unwrap()
    }
    pub fn fs(&self) -> &Fs {
        self.fs.as_ref().unwrap()
    }

    /// A fresh, empty directory under `<dir>/w` (mount targets, flat trees).
    pub fn scratch(&self, what: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let p = self.path.join("w").join(format!("{what}{n}"));
        fs::create_dir_all(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    /// A unique layer name for helpers (contains `/` on purpose: keys often do).
    pub fn unique(&self, what: &str) -> String {
        format!("t/{what}-{}", self.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// The private bus's address (for clients run as processes).
    pub fn bus_address(&self) -> &str {
        self.bus.as_ref().map(|b| b.address.as_str()).unwrap_or("")
    }

    /// A pool object proxy.
    pub async fn pool(&self, name: &str) -> PoolProxy<'static> {
        PoolProxy::builder(&self.conn)
            .path(format!("/org/layerd/Layerd1/pools/{name}"))
            .expect("pool path")
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .expect("pool proxy")
    }

    /// SIGTERM (must exit 0 without SIGKILL), start again, new proxies.
    pub async fn restart(&mut self) {
        let conn = self.conn.clone();
        if let Err(e) = self.daemon_mut().restart(&conn).await {
            panic!("restart: {e}");
        }
        self.mgr = manager_proxy(&self.conn).await;
    }

    /// Restarts the daemon with `toml` after its pools in the config
    /// (top-level tables such as `[containerd]`).
    pub async fn restart_with_toml(&mut self, toml: &str) {
        let d = self.daemon_mut();
        d.config.extra_toml = toml.to_string();
        fs::write(&d.config_path, d.config.to_toml()).expect("write layerd.toml");
        self.restart().await;
    }

    /// SIGKILL the daemon, as a crash would; `start()` brings it back.
    pub fn kill9(&mut self) {
        self.daemon_mut().kill9();
    }

    pub async fn start(&mut self) {
        let conn = self.conn.clone();
        if let Err(e) = self.daemon_mut().start(&conn).await {
            panic!("start: {e}");
        }
        self.mgr = manager_proxy(&self.conn).await;
    }

    /// Ends a test that passed: the daemon must still be running and must
    /// stop cleanly (exit 0) on SIGTERM.
    pub fn finish(mut self) {
        let d = self.daemon_mut();
        if let Some(st) = d.is_running() {
            panic!("layerd died during the test ({st})");
        }
        match d.stop() {
            Some((st, false)) if st.success() => {}
            Some((st, killed)) => panic!(
                "layerd did not stop cleanly on SIGTERM ({st}{})",
                if killed { ", needed SIGKILL" } else { "" }
            ),
            None => panic!("layerd was not running at the end of the test"),
        }
    }

    // ----- Manager calls that must succeed -------------------------------

    pub async fn prepare(&self, key: &str, parent: &str) -> Vec<MountSpec> {
        self.prepare_with(key, parent, default_labels()).await
    }
    pub async fn prepare_with(
        &self,
        key: &str,
        parent: &str,
        l: HashMap<String, String>,
    ) -> Vec<MountSpec> {
        must(
            self.mgr.prepare(key, parent, l).await,
            format_args!("Prepare({key:?}, {parent:?})"),
        )
    }
    pub async fn view(&self, key: &str, parent: &str) -> Vec<MountSpec> {
        self.view_with(key, parent, default_labels()).await
    }
    pub async fn view_with(
        &self,
        key: &str,
        parent: &str,
        l: HashMap<String, String>,
    ) -> Vec<MountSpec> {
        must(
            self.mgr.view(key, parent, l).await,
            format_args!("View({key:?}, {parent:?})"),
        )
    }
    pub async fn commit(&self, name: &str, key: &str) {
        self.commit_with(name, key, default_labels()).await
    }
    pub async fn commit_with(&self, name: &str, key: &str, l: HashMap<String, String>) {
        must(
            self.mgr.commit(name, key, l).await,
            format_args!("Commit({name:?}, {key:?})"),
        )
    }
    pub async fn remove(&self, key: &str) {
        must(self.mgr.remove(key).await, format_args!("Remove({key:?})"))
    }
    pub async fn stat(&self, key: &str) -> Info {
        must(self.mgr.stat(key).await, format_args!("Stat({key:?})")).into()
    }
    pub async fn mounts(&self, key: &str) -> Vec<MountSpec> {
        must(self.mgr.mounts(key).await, format_args!("Mounts({key:?})"))
    }
    pub async fn usage(&self, key: &str) -> (u64, u64) {
        must(self.mgr.usage(key).await, format_args!("Usage({key:?})"))
    }
    /// Walk rows (info, pool).
    pub async fn walk(&self, filters: &[&str]) -> Vec<(Info, String)> {
        let f: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        must(self.mgr.walk(f).await, format_args!("Walk({filters:?})"))
            .into_iter()
            .map(walk_row)
            .collect()
    }
    /// Sorted names of the Walk rows.
    pub async fn walk_names(&self, filters: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = self
            .walk(filters)
            .await
            .into_iter()
            .map(|(i, _)| i.name)
            .collect();
        v.sort();
        v
    }

    // ----- Mounting -------------------------------------------------------

    /// Mounts `key` through the daemon or through its specs and mount(8).
    pub async fn mount(&self, key: &str, via: Via) -> Mounted {
        match via {
            Via::Daemon => {
                let p = must(self.mgr.mount(key).await, format_args!("Mount({key:?})"));
                let path = PathBuf::from(p);
                assert!(
                    path.is_dir(),
                    "Mount({key:?}) returned {} which is not a directory",
                    path.display()
                );
                Mounted {
                    key: key.to_string(),
                    path,
                    via,
                }
            }
            Via::Specs => {
                let specs = self.mounts(key).await;
                let target = self.scratch("m");
                if let Err(e) = mount_specs(&specs, &target) {
                    panic!("{key:?}: {e}\nspecs: {specs:?}");
                }
                Mounted {
                    key: key.to_string(),
                    path: target,
                    via,
                }
            }
        }
    }

    /// Undoes `mount`.
    pub async fn unmount(&self, m: Mounted) {
        match m.via {
            Via::Daemon => must(
                self.mgr.unmount(&m.key).await,
                format_args!("Unmount({:?})", m.key),
            ),
            Via::Specs => {
                if let Err(e) = umount_all(&m.path) {
                    panic!("{e}");
                }
                let _ = fs::remove_dir(&m.path);
            }
        }
    }

    /// Mounts `key`, applies `ops`, unmounts.
    pub async fn apply_to(&self, key: &str, ops: &[Op], via: Via) {
        let m = self.mount(key, via).await;
        let r = apply(&m.path, ops);
        self.unmount(m).await;
        if let Err(e) = r {
            panic!("applying {ops:?} to {key:?} ({via:?}): {e}");
        }
    }

    /// Mounts `key` and checks it equals the tree at `expected`.
    pub async fn check_mounted(&self, key: &str, expected: &Path, via: Via) {
        let m = self.mount(key, via).await;
        let r = check_dir_equal(expected, &m.path);
        self.unmount(m).await;
        if let Err(e) = r {
            panic!("{key:?} mounted via {via:?}: {e}");
        }
    }

    /// containerd's `createSnapshot`: Prepare on `parent`, apply, Commit.
    /// Returns the committed name.
    pub async fn create_layer(&self, parent: &str, ops: &[Op], via: Via) -> String {
        let name = self.unique("layer");
        let key = format!("{name}/prepare");
        self.prepare(&key, parent).await;
        self.apply_to(&key, ops, via).await;
        self.commit(&name, &key).await;
        name
    }

    /// containerd's `checkSnapshot`: a View of `name` must equal the tree at
    /// `expected`, both through the daemon's Mount and through the specs
    /// mounted with mount(8); the view is removed afterwards.
    pub async fn check_layer(&self, name: &str, expected: &Path) {
        let view = format!("{name}/view");
        self.view(&view, name).await;
        self.check_mounted(&view, expected, Via::Daemon).await;
        self.check_mounted(&view, expected, Via::Specs).await;
        self.remove(&view).await;
    }

    /// containerd's `checkSnapshots`: builds a chain, one layer per entry of
    /// `layers`, and checks each committed layer against a flat directory to
    /// which the same operations were applied.
    pub async fn check_layers(&self, layers: &[Vec<Op>], via: Via) -> Chain {
        let flat = self.scratch("flat");
        let mut parent = String::new();
        let mut names = Vec::new();
        for (i, ops) in layers.iter().enumerate() {
            let name = self.create_layer(&parent, ops, via).await;
            apply(&flat, ops).unwrap_or_else(|e| panic!("layer {}: flat dir: {e}", i + 1));
            self.check_layer(&name, &flat).await;
            parent = name.clone();
            names.push(name);
        }
        Chain { names, flat }
    }

    /// A chain of `n` committed layers, each adding `/chain/file-<i>` and
    /// rewriting `/chain/top`, every step checked against a flat directory
    /// before and after the writes, with the layer mounted `via`.
    pub async fn create_chain(&self, n: usize, via: Via) -> Chain {
        let ops: Vec<Vec<Op>> = (0..n)
            .map(|i| {
                let mut v = vec![
                    create_file(&format!("/chain/file-{i}"), format!("layer {i}\n"), 0o644),
                    create_file("/chain/top", format!("{i}\n"), 0o644),
                ];
                if i == 0 {
                    v.insert(0, create_dir("/chain", 0o755));
                }
                v
            })
            .collect();
        self.build_chain(&ops, via).await
    }

    /// Like containerd's `check128LayersMount` loop: each layer is prepared
    /// on the previous one (its specs checked for shape), must equal the flat
    /// directory before and after `layers[i]` is applied, and is committed.
    pub async fn build_chain(&self, layers: &[Vec<Op>], via: Via) -> Chain {
        let flat = self.scratch("flat");
        let mut parent = String::new();
        let mut names = Vec::new();
        for (i, ops) in layers.iter().enumerate() {
            let name = self.unique(&format!("chain{i}"));
            let key = format!("{name}/prepare");
            let specs = self.prepare(&key, &parent).await;
            self.assert_spec_shape(&specs, "active", i);
            let m = self.mount(&key, via).await;
            let before = check_dir_equal(&flat, &m.path);
            let applied = apply(&flat, ops).and_then(|_| apply(&m.path, ops));
            let after = check_dir_equal(&flat, &m.path);
            self.unmount(m).await;
            if let Err(e) = before {
                panic!("[layer {i}] before apply: {e}");
            }
            if let Err(e) = applied {
                panic!("[layer {i}] apply: {e}");
            }
            if let Err(e) = after {
                panic!("[layer {i}] after apply: {e}");
            }
            self.commit(&name, &key).await;
            parent = name.clone();
            names.push(name);
        }
        Chain { names, flat }
    }

    // ----- Mount spec shape -------------------------------------------------

    /// Checks the shape of the specs a runtime gets for a layer of `kind`
    /// ("active" or "view") with `depth` ancestors, per backend (DESIGN and
    /// containerd's overlay snapshotter): overlay → a bind for no parent and
    /// for a one-parent view, else `overlay` with `lowerdir` (`depth` dirs)
    /// plus `upperdir` and `workdir` for actives; vfs → always a bind; binds
    /// of views are `ro`, of actives not. Every directory named must exist
    /// and be absolute, and the options must fit a page. The finer points of
    /// the contract are in `assert_spec_details`.
    pub fn assert_spec_shape(&self, specs: &[MountSpec], kind: &str, depth: usize) {
        let ctx = format!(
            "{} specs for a {kind} with {depth} parent(s): {specs:?}",
            self.backend.name()
        );
        assert_eq!(specs.len(), 1, "{ctx}: expected one mount");
        let (ty, source, opts) = &specs[0];
        let has = |o: &str| opts.iter().any(|x| x == o);
        let view = kind == "view";
        if self.backend.is_btrfs() {
            // (btrfs, device, [subvolid=N, ro|rw]) at any depth.
            assert_eq!(ty, "btrfs", "{ctx}: type");
            let md = fs::metadata(source).unwrap_or_else(|e| panic!("{ctx}: source {source}: {e}"));
            assert!(
                std::os::unix::fs::FileTypeExt::is_block_device(&md.file_type()),
                "{ctx}: source {source} is not a block device"
            );
            let ids: Vec<u64> = opts
                .iter()
                .filter_map(|o| o.strip_prefix("subvolid=")?.parse().ok())
                .collect();
            assert!(
                ids.len() == 1 && ids[0] > 5,
                "{ctx}: one subvolid=N of a subvolume"
            );
            if view {
                assert!(has("ro") && !has("rw"), "{ctx}: a view must be read-only");
            } else {
                assert!(
                    has("rw") && !has("ro"),
                    "{ctx}: an active layer must be writable"
                );
            }
            return;
        }
        if self.backend.is_thin() {
            // (xfs, /dev/mapper/layerd-<pool>-<id>, [nouuid, ro|rw]) at any depth.
            assert_eq!(ty, "xfs", "{ctx}: type");
            assert!(
                source.starts_with(&format!("/dev/mapper/{}", self.dm_prefix())),
                "{ctx}: source {source} is not the layer's thin device"
            );
            let md = fs::metadata(source).unwrap_or_else(|e| panic!("{ctx}: source {source}: {e}"));
            assert!(
                std::os::unix::fs::FileTypeExt::is_block_device(&md.file_type()),
                "{ctx}: source {source} is not a block device"
            );
            assert!(has("nouuid"), "{ctx}: snapshots share the xfs UUID: nouuid");
            if view {
                assert!(has("ro") && !has("rw"), "{ctx}: a view must be read-only");
            } else {
                assert!(
                    has("rw") && !has("ro"),
                    "{ctx}: an active layer must be writable"
                );
            }
            return;
        }
        let bind = !self.backend.is_overlay() || depth == 0 || (view && depth == 1);
        if bind {
            assert!(
                ty == "bind" || has("bind") || has("rbind"),
                "{ctx}: expected a bind mount"
            );
            assert!(
                has("bind") || has("rbind"),
                "{ctx}: bind spec without a bind option"
            );
            assert!(
                Path::new(source).is_dir(),
                "{ctx}: bind source {source} is not a directory"
            );
            if view {
                assert!(has("ro"), "{ctx}: a view must be read-only");
            } else {
                assert!(!has("ro"), "{ctx}: an active layer must be writable");
            }
            return;
        }
        assert_eq!(ty, "overlay", "{ctx}: type");
        assert_eq!(source, "overlay", "{ctx}: source");
        let opt = |k: &str| -> Vec<String> {
            opts.iter()
                .filter_map(|o| o.strip_prefix(&format!("{k}=")).map(str::to_string))
                .collect()
        };
        let lower = opt("lowerdir");
        assert_eq!(lower.len(), 1, "{ctx}: one lowerdir option");
        let dirs: Vec<&str> = lower[0].split(':').collect();
        assert_eq!(
            dirs.len(),
            depth,
            "{ctx}: lowerdir should list every ancestor"
        );
        let upper = opt("upperdir");
        let work = opt("workdir");
        if view {
            assert!(
                upper.is_empty() && work.is_empty(),
                "{ctx}: a view has no upperdir/workdir"
            );
        } else {
            assert_eq!(upper.len(), 1, "{ctx}: one upperdir");
            assert_eq!(work.len(), 1, "{ctx}: one workdir");
        }
        for d in dirs
            .iter()
            .copied()
            .chain(upper.iter().map(String::as_str))
            .chain(work.iter().map(String::as_str))
        {
            // Relative lowerdirs would need a working directory that mount(8)
            // does not have.
            assert!(Path::new(d).is_absolute(), "{ctx}: {d} is not absolute");
            assert!(Path::new(d).is_dir(), "{ctx}: {d} is not a directory");
        }
        let total: usize = opts.iter().map(|o| o.len() + 1).sum();
        assert!(
            total < 4096,
            "{ctx}: options take {total} bytes, more than a page"
        );
    }

    /// The finer points of the spec contract (the lead's brief and DESIGN):
    /// overlay actives carry `index=off`, multi-parent overlay views carry
    /// `ro`, parentless actives are bound `rw`.
    pub fn assert_spec_details(&self, specs: &[MountSpec], kind: &str, depth: usize) {
        let ctx = format!(
            "{} specs for a {kind} with {depth} parent(s): {specs:?}",
            self.backend.name()
        );
        let (ty, _, opts) = &specs[0];
        let has = |o: &str| opts.iter().any(|x| x == o);
        if ty == "overlay" {
            if kind == "view" {
                assert!(has("ro"), "{ctx}: a multi-parent view carries ro");
            } else {
                assert!(has("index=off"), "{ctx}: index=off");
            }
        } else if kind == "active" {
            assert!(has("rw"), "{ctx}: a writable bind carries rw");
        }
    }
}

async fn manager_proxy(conn: &zbus::Connection) -> ManagerProxy<'static> {
    ManagerProxy::builder(conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .expect("manager proxy")
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        // Our own mount(8) mounts first: they pin the pool file system.
        unmount_under(&self.path.join("w"));
        if let Some(mut d) = self.daemon.take() {
            // LAYERD_TEST_SHOW_LOG=1: every fixture prints the daemon's log.
            if failed || std::env::var_os("LAYERD_TEST_SHOW_LOG").is_some() {
                let alive = d
                    .is_running()
                    .map(|st| format!("it had exited: {st}"))
                    .unwrap_or_else(|| {
                        d.pid()
                            .map(|p| format!("pid {p}, still running"))
                            .unwrap_or_else(|| "not running".into())
                    });
                eprintln!(
                    "----- {} fixture {} ({alive}); config:\n{}----- layerd stderr -----\n{}\n----- end of layerd stderr -----",
                    self.backend.name(),
                    self.path.display(),
                    d.config.to_toml(),
                    d.log_text()
                );
            }
            drop(d);
        }
        if self.backend.is_thin() {
            // The daemon leaves its pool active (as LVM does); the test's
            // pool must go before its file system can.
            unmount_under(&self.path.join("r"));
            teardown_thin_pool(&self.pool_name, &self.pool_path());
        }
        drop(self.fs.take());
        drop(self.bus.take());
        let left = unmount_under(&self.path);
        if !left.is_empty() {
            eprintln!("fixture teardown: unmounted leftovers {left:?}");
        }
        if mounts_under(&self.path).is_empty() {
            drop(self.dir.take());
        } else {
            // Never recurse into something still mounted.
            if let Some(d) = self.dir.take() {
                let p = d.keep();
                eprintln!(
                    "fixture teardown: left {} in place: mounts remain",
                    p.display()
                );
            }
        }
        report_time(self.backend, self.setup, self.started.elapsed(), !failed);
    }
}
