//! The daemon's configuration: `/etc/layerd/layerd.toml`.
//!
//! The key names are the contract of DESIGN.md ("Config shape"); the
//! documented default file is `config/layerd.toml`.
//!
//! Loading has three steps, and nothing is created on disk by any of them:
//! 1. TOML is deserialized into private `Raw*` structs that mirror the file
//!    (every key optional, unknown keys rejected by `deny_unknown_fields`);
//! 2. the raw structs are resolved into the public [`Config`]: defaults are
//!    filled in and keys that do not apply to a pool's driver or backing are
//!    rejected, so that a misplaced key never goes silently unused;
//! 3. the resolved [`Config`] is validated: names, paths, thresholds, and
//!    whether each pool's path is usable on this host (stat, statfs and
//!    access(2) only).
//!
//! Every error is one line naming the file, line, column and key, e.g.
//! `/etc/layerd/layerd.toml:12:16: pool "main": monitor.warn_percent:
//! expected an integer 0–100, found string "high"`. Spans come from the toml
//! parser; to point at keys, the text is also read with the toml crate's
//! spanned document API (`toml::de::DeTable`, wrapped as `Tree`), which maps
//! a byte span back to a key path, and a key path to a span.
//!
//! Rules chosen where DESIGN.md leaves room (also documented in layerd.toml):
//! - overlay and vfs pools live in a directory: `backing` may be omitted or
//!   `"existing"` (a directory is an existing backing); `loop` and `device`
//!   are errors. Their resolved backing is [`Backing::Existing`].
//! - thin and btrfs default to `backing = "loop"`; `size` is required for
//!   loop backing and rejected for the others.
//! - `path` defaults to `<state_dir>/<name>`, except for `device` backing and
//!   existing thin pools, where there is nothing to guess and it is required.
//!   An existing thin pool is named by its `/dev/mapper/<name>` path: every
//!   path in the file is absolute.
//! - thin keys are errors on other drivers (`metadata_device` needs
//!   `backing = "device"`, `metadata_size` a backing layerd creates);
//!   `balance*` keys are errors on non-btrfs pools; `autoextend_*` keys are
//!   errors on overlay/vfs pools (a directory cannot grow).
//! - pool paths must not be equal or nested, nor contain `state_dir` or
//!   `run_dir`, nor lie inside `run_dir`; `balance_*usage` lists are
//!   non-empty and strictly ascending; `min_free_percent` < 100;
//!   `warn_percent` < `critical_percent`; `balance_unallocated_percent`
//!   (btrfs only, an error elsewhere) at most 50, 0 = no automatic balance.
//! - with no config file the daemon uses [`builtin_default`].
//! - sizes are whole numbers with an optional binary unit: `K`, `M`, `G`, `T`,
//!   `P`, `E` (also `KB`/`KiB`…, any case, all meaning powers of 1024).

mod duration;

use std::fmt;
use std::fs;
use std::io;
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use nix::unistd::AccessFlags;
use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::shared::size::parse_size;

/// Where the daemon looks for its config when not told otherwise.
mod containerd;
mod creation;
pub use containerd::{ContainerdConfig, SnapshotterConfig};
pub use creation::{BTRFS_MIN_SIZE, MAX_OVERCOMMIT};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/layerd/layerd.toml";
/// `[daemon] state_dir` default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/layerd";
/// `[daemon] run_dir` default.
pub const DEFAULT_RUN_DIR: &str = "/run/layerd";
/// `[daemon] default_pool` default, and the name of the built-in pool.
pub const DEFAULT_POOL: &str = "main";
/// `[daemon] diff_idle_timeout` default.
pub const DEFAULT_DIFF_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
pub use duration::parse_duration;
/// Sparse file size of the built-in loop-backed pool (thin/btrfs).
pub const DEFAULT_LOOP_SIZE: u64 = 100 << 30;
/// `block_size` default: dm-thin's smallest chunk.
pub const DEFAULT_BLOCK_SIZE: u64 = 64 << 10;
/// `base_size` default: size of each thin layer's file system.
pub const DEFAULT_BASE_SIZE: u64 = 10 << 30;
/// `autoextend_max` default.
pub const DEFAULT_AUTOEXTEND_MAX: u64 = 500 << 30;
/// `trim` default.
pub const DEFAULT_TRIM: &str = "weekly";
/// `balance` default (btrfs pools).
pub const DEFAULT_BALANCE: &str = "daily";
/// `balance_unallocated_percent` default (btrfs pools).
pub const DEFAULT_BALANCE_UNALLOCATED_PERCENT: u8 = 10;
/// Above this, a pool would be balanced while most of it is unallocated.
pub const MAX_BALANCE_UNALLOCATED_PERCENT: u8 = 50;
/// The daemon's exit status for a bad config file.
pub const EXIT_BAD_CONFIG: i32 = 2;

/// Name shown in errors about a config that did not come from a file.
const BUILTIN_ORIGIN: &str = "(built-in default config)";

// ---------------------------------------------------------------------------
// Public, resolved configuration
// ---------------------------------------------------------------------------

/// The whole, validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub daemon: DaemonConfig,
    /// `[[pool]]` tables, in file order; never empty once validated.
    pub pools: Vec<PoolConfig>,
    /// `[containerd]`: the proxy-snapshotter sockets.
    pub containerd: ContainerdConfig,
}

/// `[daemon]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    /// The store, and the default home of pools and loop files.
    pub state_dir: PathBuf,
    /// The daemon's own mounts (the D-Bus `Mount` method).
    pub run_dir: PathBuf,
    /// Pool for parentless layers without a `layerd.io/pool` label.
    pub default_pool: String,
    /// How long an Apply or Export waits on a descriptor that gives (or
    /// takes) nothing before it fails.
    pub diff_idle_timeout: std::time::Duration,
}

/// `driver = "…"` of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Driver {
    Thin,
    Btrfs,
    Overlay,
    Vfs,
}

/// `backing = "…"` of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backing {
    /// A sparse file the daemon creates and attaches to a loop device.
    Loop,
    /// A block device the admin names.
    Device,
    /// An existing dm thin pool, a mounted btrfs, or a directory.
    Existing,
}

/// `fs = "…"` of a thin pool: the file system made on each thin layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThinFs {
    Xfs,
    Ext4,
}

/// One `[[pool]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub name: String,
    pub driver: Driver,
    /// Resolved: thin/btrfs default to `Loop`; overlay/vfs are always
    /// `Existing` (a directory).
    pub backing: Backing,
    /// Resolved: defaults to `<state_dir>/<name>`; absolute and normalized.
    pub path: PathBuf,
    /// Sparse file size in bytes: `Some` exactly for `Loop` backing.
    pub size: Option<u64>,
    /// `Some` exactly for `driver = "thin"`.
    pub thin: Option<ThinConfig>,
    pub monitor: MonitorConfig,
    pub maintenance: MaintenanceConfig,
}

/// Thin-only keys of a `[[pool]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinConfig {
    /// Separate metadata device (`device` backing only).
    pub metadata_device: Option<PathBuf>,
    /// Metadata size in bytes; `None` lets the daemon size it from the data.
    pub metadata_size: Option<u64>,
    /// dm-thin chunk size in bytes (multiple of 64 KiB, 64 KiB–1 GiB).
    pub block_size: u64,
    /// Size of each layer's thin device and file system, in bytes.
    pub base_size: u64,
    pub fs: ThinFs,
}

/// `[pool.monitor]`: percentages of data (and metadata) space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorConfig {
    pub warn_percent: u8,
    pub critical_percent: u8,
    /// New layers are refused while less than this is free.
    pub min_free_percent: u8,
    /// Growth step for loop/LVM backings, in percent of the current size;
    /// 0 disables autoextension. Unused by overlay/vfs pools.
    pub autoextend_percent: u8,
    /// Autoextension never grows the pool past this many bytes.
    pub autoextend_max: u64,
    /// btrfs only: below this percent of the device size unallocated,
    /// Health is at least `warning` and the daemon starts a balance by
    /// itself; 0 turns the automatic balance off. Unused by other drivers.
    pub balance_unallocated_percent: u8,
}

/// `[pool.maintenance]`: systemd calendar specs; `None` means `"none"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaintenanceConfig {
    pub trim: Option<String>,
    /// btrfs pools only; always `None` for other drivers.
    pub balance: Option<String>,
    /// Escalating `-dusage=` filters of a balance, ascending.
    pub balance_dusage: Vec<u8>,
    /// Escalating `-musage=` filters of a balance, ascending.
    pub balance_musage: Vec<u8>,
}

impl Driver {
    pub const ALL: [Driver; 4] = [Driver::Thin, Driver::Btrfs, Driver::Overlay, Driver::Vfs];

    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Thin => "thin",
            Driver::Btrfs => "btrfs",
            Driver::Overlay => "overlay",
            Driver::Vfs => "vfs",
        }
    }

    /// overlay and vfs pools are plain directories.
    pub fn is_directory(self) -> bool {
        matches!(self, Driver::Overlay | Driver::Vfs)
    }
}

impl Backing {
    pub fn as_str(self) -> &'static str {
        match self {
            Backing::Loop => "loop",
            Backing::Device => "device",
            Backing::Existing => "existing",
        }
    }
}

impl ThinFs {
    pub fn as_str(self) -> &'static str {
        match self {
            ThinFs::Xfs => "xfs",
            ThinFs::Ext4 => "ext4",
        }
    }
}

macro_rules! keyword_impls {
    ($t:ty, $what:literal, [$($s:literal => $v:expr),+ $(,)?], $hint:expr) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($v),)+
                    _ => {
                        let hint: fn(&str) -> Option<&'static str> = $hint;
                        let mut msg = format!(
                            "unknown {} {:?}, expected one of {}",
                            $what,
                            s,
                            [$($s),+].join(", ")
                        );
                        if let Some(h) = hint(s) {
                            msg.push_str(" (");
                            msg.push_str(h);
                            msg.push(')');
                        }
                        Err(msg)
                    }
                }
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(de::Error::custom)
            }
        }
    };
}

keyword_impls!(Driver, "driver", [
    "thin" => Driver::Thin,
    "btrfs" => Driver::Btrfs,
    "overlay" => Driver::Overlay,
    "vfs" => Driver::Vfs,
], |s| match s {
    "aufs" => Some("aufs is not in mainline kernels; use overlay"),
    "devicemapper" => Some("the device-mapper driver is called thin"),
    "overlay2" | "overlayfs" => Some("the overlay driver is called overlay"),
    _ => None,
});
keyword_impls!(Backing, "backing", [
    "loop" => Backing::Loop,
    "device" => Backing::Device,
    "existing" => Backing::Existing,
], |_| None);
keyword_impls!(ThinFs, "file system", [
    "xfs" => ThinFs::Xfs,
    "ext4" => ThinFs::Ext4,
], |_| None);

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
            default_pool: DEFAULT_POOL.to_string(),
            diff_idle_timeout: DEFAULT_DIFF_IDLE_TIMEOUT,
        }
    }
}

impl Default for ThinConfig {
    fn default() -> Self {
        ThinConfig {
            metadata_device: None,
            metadata_size: None,
            block_size: DEFAULT_BLOCK_SIZE,
            base_size: DEFAULT_BASE_SIZE,
            fs: ThinFs::Xfs,
        }
    }
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            warn_percent: 80,
            critical_percent: 90,
            min_free_percent: 10,
            autoextend_percent: 20,
            autoextend_max: DEFAULT_AUTOEXTEND_MAX,
            balance_unallocated_percent: DEFAULT_BALANCE_UNALLOCATED_PERCENT,
        }
    }
}

impl MaintenanceConfig {
    /// Defaults for a pool of `driver`: balance only exists for btrfs.
    pub fn default_for(driver: Driver) -> Self {
        MaintenanceConfig {
            trim: Some(DEFAULT_TRIM.to_string()),
            balance: (driver == Driver::Btrfs).then(|| DEFAULT_BALANCE.to_string()),
            balance_dusage: vec![0, 5, 10],
            balance_musage: vec![0, 5],
        }
    }
}

impl PoolConfig {
    /// A pool with every default for `driver`, at `<state_dir>/<name>`.
    /// thin and btrfs get a loop backing of [`DEFAULT_LOOP_SIZE`].
    pub fn with_defaults(name: &str, driver: Driver, state_dir: &Path) -> Self {
        let backing = if driver.is_directory() {
            Backing::Existing
        } else {
            Backing::Loop
        };
        PoolConfig {
            name: name.to_string(),
            driver,
            backing,
            path: state_dir.join(name),
            size: (backing == Backing::Loop).then_some(DEFAULT_LOOP_SIZE),
            thin: (driver == Driver::Thin).then(ThinConfig::default),
            monitor: MonitorConfig::default(),
            maintenance: MaintenanceConfig::default_for(driver),
        }
    }
}

impl Config {
    /// The config used when there is no config file: one pool named
    /// `main` under `/var/lib/layerd` on `driver`, which the daemon picks
    /// (thin, else btrfs, else overlay, as host and build allow).
    pub fn builtin_default(driver: Driver) -> Config {
        Config::builtin_default_with(DaemonConfig::default(), driver)
    }

    /// Like [`Config::builtin_default`] with other daemon settings (e.g. a
    /// `--state-dir` option): the one pool is named `daemon.default_pool`
    /// and lives at `<state_dir>/<default_pool>`.
    pub fn builtin_default_with(daemon: DaemonConfig, driver: Driver) -> Config {
        let pool = PoolConfig::with_defaults(&daemon.default_pool, driver, &daemon.state_dir);
        Config {
            containerd: ContainerdConfig::default_for(&daemon.run_dir, &daemon.default_pool),
            daemon,
            pools: vec![pool],
        }
    }

    /// The pool called `name`.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The pool named by `daemon.default_pool`.
    pub fn default_pool(&self) -> Option<&PoolConfig> {
        self.pool(&self.daemon.default_pool)
    }

    /// Validates a config that did not come from a file (the built-in
    /// default, or one changed by command-line options), including the
    /// host checks on pool paths. Errors carry no line number.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let origin = Path::new(BUILTIN_ORIGIN);
        validate(self, true).map_err(|p| p.into_error(origin, None))
    }
}

/// The built-in default with the driver that needs nothing from the host
/// (overlay). The daemon itself probes the host and prefers a loop-backed
/// thin pool, then a loop-backed btrfs (`main.rs`, `builtin_driver`).
pub fn builtin_default() -> Config {
    Config::builtin_default(Driver::Overlay)
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a config could not be used. `Display` is one line a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file was read but is not a valid config.
    #[error("{}{}: {message}", file.display(), fmt_location(*location))]
    Invalid {
        file: PathBuf,
        /// 1-based (line, column); `None` for configs not read from a file.
        location: Option<(usize, usize)>,
        /// The TOML key at fault, as a dotted table path without pool index,
        /// e.g. `pool.monitor.warn_percent` (empty for syntax errors with no
        /// recognizable key).
        key: String,
        /// The message after the location, naming the pool and key.
        message: String,
    },
}

fn fmt_location(location: Option<(usize, usize)>) -> String {
    match location {
        Some((line, column)) => format!(":{line}:{column}"),
        None => String::new(),
    }
}

impl ConfigError {
    /// The daemon's exit status for a bad config: 2.
    pub fn exit_code(&self) -> i32 {
        EXIT_BAD_CONFIG
    }

    /// True when the file does not exist (the daemon then uses the
    /// built-in default).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ConfigError::Read { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    /// (line, column) of the error, when it has one.
    pub fn location(&self) -> Option<(usize, usize)> {
        match self {
            ConfigError::Invalid { location, .. } => *location,
            ConfigError::Read { .. } => None,
        }
    }

    /// The key at fault, when known.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } if !key.is_empty() => Some(key),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------

/// Reads, resolves and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let config = parse_str(&text, path)?;
    tracing::debug!(path = %path.display(), pools = config.pools.len(), "config loaded");
    Ok(config)
}

/// Like [`load`], but a missing file is `Ok(None)` (use the built-in
/// default then).
pub fn load_optional(path: &Path) -> Result<Option<Config>, ConfigError> {
    match load(path) {
        Ok(config) => Ok(Some(config)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Parses and validates config `text` as if read from `origin` (which only
/// names the file in errors), including the host checks on pool paths.
pub fn parse_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    parse_inner(text, origin, true)
}

fn parse_inner(text: &str, origin: &Path, host_checks: bool) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(&e, text, origin))?;
    // Parsed again only for spans, which semantic errors point at; a text
    // that deserialized above always parses here.
    let tree = Tree::parse(text);
    let located = |p: Problem| p.into_error(origin, Some((text, tree.as_ref())));
    let config = resolve(raw).map_err(located)?;
    validate(&config, host_checks).map_err(located)?;
    Ok(config)
}

// ---------------------------------------------------------------------------
// Raw file shape
// ---------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    daemon: Option<RawDaemon>,
    #[serde(default)]
    pool: Vec<RawPool>,
    containerd: Option<containerd::RawContainerd>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    state_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    default_pool: Option<String>,
    diff_idle_timeout: Option<duration::Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    name: String,
    driver: Driver,
    backing: Option<Backing>,
    path: Option<PathBuf>,
    size: Option<Size>,
    metadata_device: Option<PathBuf>,
    metadata_size: Option<Size>,
    block_size: Option<Size>,
    base_size: Option<Size>,
    fs: Option<ThinFs>,
    monitor: Option<RawMonitor>,
    maintenance: Option<RawMaintenance>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMonitor {
    warn_percent: Option<Percent>,
    critical_percent: Option<Percent>,
    min_free_percent: Option<Percent>,
    autoextend_percent: Option<Percent>,
    autoextend_max: Option<Size>,
    balance_unallocated_percent: Option<Percent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMaintenance {
    trim: Option<Schedule>,
    balance: Option<Schedule>,
    balance_dusage: Option<Vec<Percent>>,
    balance_musage: Option<Vec<Percent>>,
}

/// An integer 0–100; checked while deserializing so the error has a span.
#[derive(Debug, Clone, Copy)]
struct Percent(u8);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer 0–100")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Percent, E> {
                u8::try_from(v)
                    .ok()
                    .filter(|p| *p <= 100)
                    .map(Percent)
                    .ok_or_else(|| E::invalid_value(Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                u8::try_from(v)
                    .ok()
                    .filter(|p| *p <= 100)
                    .map(Percent)
                    .ok_or_else(|| E::invalid_value(Unexpected::Unsigned(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

/// A byte size: a size string or a plain integer of bytes.
#[derive(Debug, Clone, Copy)]
struct Size(u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte size such as \"100G\" or a whole number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// A systemd calendar spec, or `"none"` (→ `None`).
#[derive(Debug, Clone)]
struct Schedule(Option<String>);

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        check_calendar(&s).map(Schedule).map_err(de::Error::custom)
    }
}

/// Accepts `"none"` or something made of systemd.time(7) calendar
/// characters; systemd itself parses it when the timer is made, so this
/// only catches what can never be a calendar spec.
fn check_calendar(s: &str) -> Result<Option<String>, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("empty calendar spec, expected one such as \"weekly\" or \"none\"".to_string());
    }
    if t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    if let Some(c) = t
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || " *:,./~_+-".contains(*c)))
    {
        return Err(format!(
            "invalid calendar spec {s:?}: {c:?} cannot appear in a systemd calendar spec (see systemd.time(7)); use e.g. \"weekly\", \"Sun *-*-* 03:00\" or \"none\""
        ));
    }
    Ok(Some(t.to_string()))
}

// ---------------------------------------------------------------------------
// Key paths and spans
// ---------------------------------------------------------------------------

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

/// `pool[i].<rest…>`
fn pool_path(i: usize, rest: &[&str]) -> Vec<Seg> {
    let mut p = vec![key("pool"), Seg::Index(i)];
    p.extend(rest.iter().map(|k| key(k)));
    p
}

/// The TOML document as the toml crate's own parser reads it, with the span
/// of every key and value: turns an error span into a key path and a key
/// path into a line. (A table made implicitly by a dotted key or a header
/// has its key's span.)
struct Tree<'i>(Spanned<DeValue<'i>>);

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

impl<'i> Tree<'i> {
    /// `None` when `text` is not TOML.
    fn parse(text: &'i str) -> Option<Tree<'i>> {
        let root = DeTable::parse(text).ok()?;
        let span = root.span();
        Some(Tree(Spanned::new(span, DeValue::Table(root.into_inner()))))
    }

    /// The deepest key path whose key or value span contains `span`.
    fn path_at(&self, span: &Range<usize>) -> Vec<Seg> {
        fn walk(v: &DeValue<'_>, span: &Range<usize>, path: &mut Vec<Seg>, best: &mut Vec<Seg>) {
            let mut visit = |seg: Seg,
                             key_span: Option<Range<usize>>,
                             v: &Spanned<DeValue<'_>>,
                             path: &mut Vec<Seg>| {
                path.push(seg);
                if (key_span.is_some_and(|k| contains(&k, span)) || contains(&v.span(), span))
                    && path.len() > best.len()
                {
                    *best = path.clone();
                }
                walk(v.get_ref(), span, path, best);
                path.pop();
            };
            match v {
                DeValue::Table(entries) => {
                    for (k, v) in entries.iter() {
                        visit(Seg::Key(k.get_ref().to_string()), Some(k.span()), v, path);
                    }
                }
                DeValue::Array(items) => {
                    for (i, v) in items.iter().enumerate() {
                        visit(Seg::Index(i), None, v, path);
                    }
                }
                _ => {}
            }
        }
        let mut best = Vec::new();
        walk(self.0.get_ref(), span, &mut Vec::new(), &mut best);
        best
    }

    /// The value at `path`, and its span.
    fn get(&self, path: &[Seg]) -> Option<&Spanned<DeValue<'i>>> {
        let mut node = &self.0;
        for seg in path {
            node = match (node.get_ref(), seg) {
                (DeValue::Table(entries), Seg::Key(k)) => entries
                    .iter()
                    .find(|(ek, _)| ek.get_ref() == k)
                    .map(|(_, v)| v),
                (DeValue::Array(items), Seg::Index(i)) => items.get(*i),
                _ => None,
            }?;
        }
        Some(node)
    }

    /// The string at `path`, if that is a string.
    fn str_at(&self, path: &[Seg]) -> Option<&str> {
        match self.get(path)?.get_ref() {
            DeValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// 1-based (line, column in characters) of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut off = offset.min(text.len());
    while !text.is_char_boundary(off) {
        off -= 1;
    }
    let before = &text[..off];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn is_valid_pool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// How a pool is called in messages: by name when it has a usable one.
fn pool_label(name: Option<&str>, index: usize) -> String {
    match name {
        Some(n) if is_valid_pool_name(n) => format!("pool {n:?}"),
        _ => format!("pool #{}", index + 1),
    }
}

/// Splits a key path into the message prefix (`pool "main": ` or empty),
/// the key relative to it (`monitor.warn_percent`), and the table-path key
/// without indices (`pool.monitor.warn_percent`).
fn describe(path: &[Seg], tree: Option<&Tree<'_>>) -> (String, String, String) {
    let dotted = |segs: &[Seg]| {
        let mut out = String::new();
        for seg in segs {
            match seg {
                Seg::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Seg::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    };
    let table_key = path
        .iter()
        .filter_map(|s| match s {
            Seg::Key(k) => Some(k.as_str()),
            Seg::Index(_) => None,
        })
        .collect::<Vec<_>>()
        .join(".");
    match path {
        [Seg::Key(p), Seg::Index(i), rest @ ..] if p == "pool" => {
            let name = tree.and_then(|t| t.str_at(&pool_path(*i, &["name"])));
            (
                format!("{}: ", pool_label(name, *i)),
                dotted(rest),
                table_key,
            )
        }
        _ => (String::new(), dotted(path), table_key),
    }
}

/// Turns a toml deserialization error into one line naming file, line,
/// column and key.
fn toml_error(e: &toml::de::Error, text: &str, origin: &Path) -> ConfigError {
    let span = e.span().unwrap_or(0..0);
    let (line, column) = line_col(text, span.start);
    let raw_msg = e.message().trim().replace('\n', "; ");
    let invalid = |key: String, message: String| ConfigError::Invalid {
        file: origin.to_path_buf(),
        location: Some((line, column)),
        key,
        message,
    };
    let Some(tree) = Tree::parse(text) else {
        // Not even TOML: name the key on that line, if there is one.
        let line_text = text.lines().nth(line - 1).unwrap_or("");
        let key = line_text
            .split_once('=')
            .map(|(k, _)| k.trim())
            .filter(|k| !k.is_empty() && !k.starts_with('[') && !k.starts_with('#'))
            .unwrap_or("");
        let at = if key.is_empty() {
            String::new()
        } else {
            format!(" at key {key:?}")
        };
        let msg = if raw_msg == "duplicate key" && !key.is_empty() {
            duplicate_key_message(text, line, key)
        } else {
            raw_msg.replace('`', "\"")
        };
        return invalid(key.to_string(), format!("invalid TOML{at}: {msg}"));
    };
    let path = tree.path_at(&span);
    let (prefix, rel, table_key) = describe(&path, Some(&tree));
    if let Some(rest) = raw_msg.strip_prefix("unknown field `") {
        // Unknown key: name it, its table, and what would have been valid.
        let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let table = match path.iter().rposition(|s| matches!(s, Seg::Key(_))) {
            Some(last) => {
                let parent: Vec<&str> = path[..last]
                    .iter()
                    .filter_map(|s| match s {
                        Seg::Key(k) => Some(k.as_str()),
                        Seg::Index(_) => None,
                    })
                    .collect();
                if parent.is_empty() {
                    "at the top level".to_string()
                } else {
                    format!("in [{}]", parent.join("."))
                }
            }
            None => "at the top level".to_string(),
        };
        let expected = expected.trim_start_matches(',').trim().replace('`', "");
        let expected = if expected == "there are no fields" {
            "this table takes no keys".to_string()
        } else {
            expected
        };
        return invalid(
            table_key,
            format!("{prefix}unknown key {field:?} {table}, {expected}"),
        );
    }
    let mut msg = rewrite_serde_message(&raw_msg);
    // A date-time reaches serde as a map; say what the user wrote.
    let found_text = text.get(span.clone()).unwrap_or("");
    if msg.ends_with("found table") && !found_text.trim_start().starts_with(['{', '[']) {
        msg = msg.replace("found table", "found a date-time");
    }
    let at = if rel.is_empty() {
        String::new()
    } else {
        format!("{rel}: ")
    };
    invalid(table_key, format!("{prefix}{at}{msg}"))
}

/// toml 1.x says only "duplicate key"; name the key and its table as
/// toml 0.8 did (`duplicate key "driver" in table "pool"`), the table
/// being the last header above `line` (1-based) plus the key's dotted prefix.
fn duplicate_key_message(text: &str, line: usize, key: &str) -> String {
    let header = text
        .lines()
        .take(line.saturating_sub(1))
        .filter_map(|l| {
            let l = l.trim();
            let inner = l.strip_prefix('[')?;
            let inner = inner.split(']').next()?;
            Some(inner.trim_start_matches('[').trim().to_string())
        })
        .last();
    let (prefix, name) = match key.rsplit_once('.') {
        Some((prefix, name)) => (Some(prefix.trim()), name.trim()),
        None => (None, key),
    };
    let table: Vec<&str> = header
        .as_deref()
        .into_iter()
        .chain(prefix)
        .filter(|t| !t.is_empty())
        .collect();
    if table.is_empty() {
        format!("duplicate key {name:?} in document root")
    } else {
        format!("duplicate key {name:?} in table {:?}", table.join("."))
    }
}

/// serde's "invalid type: X, expected Y" reads better as "expected Y,
/// found X"; backquotes become plain or double quotes.
fn rewrite_serde_message(msg: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = msg.strip_prefix(prefix) {
            if let Some((found, expected)) = rest.split_once(", expected ") {
                // Our private struct names and serde's jargon mean nothing
                // to whoever edits the file.
                let expected = if expected.starts_with("struct ") {
                    "a table"
                } else {
                    match expected {
                        "a sequence" => "an array",
                        "path string" => "a string (a path)",
                        e => e,
                    }
                };
                let found = found
                    .replace('`', "")
                    .replace("sequence", "array")
                    .replace("found map", "found table");
                let found = if found == "map" {
                    "table".to_string()
                } else {
                    found
                };
                return format!("expected {expected}, found {found}");
            }
        }
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let field = rest.trim_end_matches('`');
        return format!("missing required key {field:?}");
    }
    msg.replace('`', "")
}

// ---------------------------------------------------------------------------
// Semantic problems
// ---------------------------------------------------------------------------

/// A semantic error before it is given a location: the key paths to point
/// at, best first (a defaulted key is absent from the file, so its table is
/// the fallback), and the message.
struct Problem {
    at: Vec<Vec<Seg>>,
    /// Message prefix naming the pool (`pool "main": `) or empty.
    prefix: String,
    /// Key shown in the message, relative to the prefix.
    shown_key: String,
    /// Dotted table path for `ConfigError::Invalid::key`.
    table_key: String,
    message: String,
}

impl Problem {
    fn daemon(k: &str, message: String) -> Problem {
        Problem::section("daemon", k, message)
    }

    /// A problem with key `k` of the top-level table `section`.
    fn section(section: &str, k: &str, message: String) -> Problem {
        Problem {
            at: vec![vec![key(section), key(k)], vec![key(section)]],
            prefix: String::new(),
            shown_key: format!("{section}.{k}"),
            table_key: format!("{section}.{k}"),
            message,
        }
    }

    /// A problem with `pool[i]`'s key `rest` (e.g. `["monitor",
    /// "warn_percent"]`); `fallbacks` are other keys of that pool to
    /// point at when `rest` is not in the file.
    fn pool(
        i: usize,
        name: &str,
        rest: &[&str],
        fallbacks: &[&[&str]],
        message: String,
    ) -> Problem {
        let mut at = vec![pool_path(i, rest)];
        at.extend(fallbacks.iter().map(|f| pool_path(i, f)));
        // Tables of a pool, then the pool itself.
        for n in (0..rest.len()).rev() {
            at.push(pool_path(i, &rest[..n]));
        }
        Problem {
            at,
            prefix: format!("{}: ", pool_label(Some(name), i)),
            shown_key: rest.join("."),
            table_key: std::iter::once("pool")
                .chain(rest.iter().copied())
                .collect::<Vec<_>>()
                .join("."),
            message,
        }
    }

    fn into_error(self, origin: &Path, source: Option<(&str, Option<&Tree<'_>>)>) -> ConfigError {
        let location = source.map(|(text, tree)| {
            let offset = tree
                .and_then(|t| self.at.iter().find_map(|p| t.get(p).map(|v| v.span())))
                .map_or(0, |span| span.start);
            line_col(text, offset)
        });
        let at = if self.shown_key.is_empty() {
            String::new()
        } else {
            format!("{}: ", self.shown_key)
        };
        ConfigError::Invalid {
            file: origin.to_path_buf(),
            location,
            key: self.table_key,
            message: format!("{}{at}{}", self.prefix, self.message),
        }
    }
}

// ---------------------------------------------------------------------------
// Resolution: raw file → Config
// ---------------------------------------------------------------------------

/// Drops `.`, repeated and trailing slashes, so that equal paths compare
/// equal (`..` is kept, and rejected by validation).
fn normalize(p: PathBuf) -> PathBuf {
    p.components().collect()
}

fn resolve(raw: RawConfig) -> Result<Config, Problem> {
    let defaults = DaemonConfig::default();
    let daemon = match raw.daemon {
        Some(d) => DaemonConfig {
            state_dir: d.state_dir.map_or(defaults.state_dir, normalize),
            run_dir: d.run_dir.map_or(defaults.run_dir, normalize),
            default_pool: d.default_pool.unwrap_or(defaults.default_pool),
            diff_idle_timeout: d
                .diff_idle_timeout
                .map_or(defaults.diff_idle_timeout, |d| d.0),
        },
        None => defaults,
    };
    let pools = raw
        .pool
        .into_iter()
        .enumerate()
        .map(|(i, p)| resolve_pool(i, p, &daemon.state_dir))
        .collect::<Result<Vec<_>, _>>()?;
    let containerd = containerd::resolve(raw.containerd, &daemon.run_dir, &daemon.default_pool);
    Ok(Config {
        daemon,
        pools,
        containerd,
    })
}

fn resolve_pool(i: usize, raw: RawPool, state_dir: &Path) -> Result<PoolConfig, Problem> {
    let name = raw.name.clone();
    let problem = |rest: &[&str], message: String| Problem::pool(i, &name, rest, &[], message);
    let driver = raw.driver;

    let backing = match (driver.is_directory(), raw.backing) {
        (true, None | Some(Backing::Existing)) => Backing::Existing,
        (true, Some(b)) => {
            return Err(problem(
                &["backing"],
                format!(
                    "{driver} pools live in a directory: backing {:?} is not allowed; omit backing (or use \"existing\")",
                    b.as_str()
                ),
            ))
        }
        (false, b) => b.unwrap_or(Backing::Loop),
    };

    // Keys that only some pools use: an error elsewhere, not silently unused.
    let only = |set: bool, k: &[&str], rule: &str| -> Result<(), Problem> {
        if set {
            Err(problem(
                k,
                format!("only applies to {rule}; remove it from this {driver} pool"),
            ))
        } else {
            Ok(())
        }
    };
    let is_thin = driver == Driver::Thin;
    only(
        raw.metadata_device.is_some() && !is_thin,
        &["metadata_device"],
        "driver = \"thin\"",
    )?;
    only(
        raw.metadata_size.is_some() && !is_thin,
        &["metadata_size"],
        "driver = \"thin\"",
    )?;
    only(
        raw.block_size.is_some() && !is_thin,
        &["block_size"],
        "driver = \"thin\"",
    )?;
    only(
        raw.base_size.is_some() && !is_thin,
        &["base_size"],
        "driver = \"thin\"",
    )?;
    only(raw.fs.is_some() && !is_thin, &["fs"], "driver = \"thin\"")?;
    if is_thin {
        only(
            raw.metadata_device.is_some() && backing != Backing::Device,
            &["metadata_device"],
            "thin pools with backing = \"device\"",
        )?;
        only(
            raw.metadata_size.is_some() && backing == Backing::Existing,
            &["metadata_size"],
            "thin pools the daemon creates (backing = \"loop\" or \"device\")",
        )?;
    }
    let size = match (backing, raw.size) {
        (Backing::Loop, Some(Size(s))) => Some(s),
        (Backing::Loop, None) => return Err(Problem::pool(
            i,
            &name,
            &["size"],
            &[&["backing"], &["driver"]],
            "required with backing = \"loop\": the size of the sparse file, e.g. size = \"100G\""
                .to_string(),
        )),
        (_, Some(_)) => {
            return Err(problem(
                &["size"],
                format!(
                    "only applies to backing = \"loop\", this pool's backing is {:?}",
                    backing.as_str()
                ),
            ))
        }
        (_, None) => None,
    };

    let path = match raw.path {
        Some(p) => normalize(p),
        None if backing == Backing::Device || (is_thin && backing == Backing::Existing) => {
            let what = if backing == Backing::Device {
                "the block device, e.g. path = \"/dev/sdb\""
            } else {
                "the existing thin pool, e.g. path = \"/dev/mapper/vg-pool\""
            };
            return Err(Problem::pool(
                i,
                &name,
                &["path"],
                &[&["backing"]],
                format!("required with backing = {:?}: {what}", backing.as_str()),
            ));
        }
        None => state_dir.join(&name),
    };

    let thin = is_thin.then(|| ThinConfig {
        metadata_device: raw.metadata_device.map(normalize),
        metadata_size: raw.metadata_size.map(|s| s.0),
        block_size: raw.block_size.map_or(DEFAULT_BLOCK_SIZE, |s| s.0),
        base_size: raw.base_size.map_or(DEFAULT_BASE_SIZE, |s| s.0),
        fs: raw.fs.unwrap_or(ThinFs::Xfs),
    });

    let mut monitor = MonitorConfig::default();
    if let Some(m) = raw.monitor {
        let dir_rule = "pools that can grow (thin and btrfs)";
        only(
            m.autoextend_percent.is_some() && driver.is_directory(),
            &["monitor", "autoextend_percent"],
            dir_rule,
        )?;
        only(
            m.autoextend_max.is_some() && driver.is_directory(),
            &["monitor", "autoextend_max"],
            dir_rule,
        )?;
        only(
            m.balance_unallocated_percent.is_some() && driver != Driver::Btrfs,
            &["monitor", "balance_unallocated_percent"],
            "driver = \"btrfs\"",
        )?;
        let pct = |v: Option<Percent>, d: u8| v.map_or(d, |p| p.0);
        monitor = MonitorConfig {
            warn_percent: pct(m.warn_percent, monitor.warn_percent),
            critical_percent: pct(m.critical_percent, monitor.critical_percent),
            min_free_percent: pct(m.min_free_percent, monitor.min_free_percent),
            autoextend_percent: pct(m.autoextend_percent, monitor.autoextend_percent),
            autoextend_max: m.autoextend_max.map_or(monitor.autoextend_max, |s| s.0),
            balance_unallocated_percent: pct(
                m.balance_unallocated_percent,
                monitor.balance_unallocated_percent,
            ),
        };
    }

    let mut maintenance = MaintenanceConfig::default_for(driver);
    if let Some(m) = raw.maintenance {
        let btrfs = "driver = \"btrfs\"";
        let not_btrfs = driver != Driver::Btrfs;
        only(
            m.balance.is_some() && not_btrfs,
            &["maintenance", "balance"],
            btrfs,
        )?;
        only(
            m.balance_dusage.is_some() && not_btrfs,
            &["maintenance", "balance_dusage"],
            btrfs,
        )?;
        only(
            m.balance_musage.is_some() && not_btrfs,
            &["maintenance", "balance_musage"],
            btrfs,
        )?;
        let pcts = |v: Vec<Percent>| v.into_iter().map(|p| p.0).collect::<Vec<u8>>();
        if let Some(t) = m.trim {
            maintenance.trim = t.0;
        }
        if let Some(b) = m.balance {
            maintenance.balance = b.0;
        }
        if let Some(v) = m.balance_dusage {
            maintenance.balance_dusage = pcts(v);
        }
        if let Some(v) = m.balance_musage {
            maintenance.balance_musage = pcts(v);
        }
    }

    Ok(PoolConfig {
        name: raw.name,
        driver,
        backing,
        path,
        size,
        thin,
        monitor,
        maintenance,
    })
}

// ---------------------------------------------------------------------------
// Validation of a resolved Config
// ---------------------------------------------------------------------------

/// Checks `config`; `host_checks` adds the read-only look at the file
/// system (path kinds, writability, overlayfs).
fn validate(config: &Config, host_checks: bool) -> Result<(), Problem> {
    let d = &config.daemon;
    check_abs_path(&d.state_dir).map_err(|m| Problem::daemon("state_dir", m))?;
    check_abs_path(&d.run_dir).map_err(|m| Problem::daemon("run_dir", m))?;

    if config.pools.is_empty() {
        return Err(Problem {
            at: vec![],
            prefix: String::new(),
            shown_key: "pool".to_string(),
            table_key: "pool".to_string(),
            message: "no pool is configured: add at least one [[pool]] table".to_string(),
        });
    }

    for (i, pool) in config.pools.iter().enumerate() {
        validate_pool(i, pool)?;
        if let Some(j) = config.pools[..i].iter().position(|p| p.name == pool.name) {
            return Err(Problem::pool(
                i,
                &pool.name,
                &["name"],
                &[],
                format!(
                    "duplicate pool name {:?}: pool #{} already has it",
                    pool.name,
                    j + 1
                ),
            ));
        }
    }

    if config.default_pool().is_none() {
        let names: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
        return Err(Problem::daemon(
            "default_pool",
            format!(
                "names no configured pool: {:?} (configured: {}); set default_pool to one of them",
                d.default_pool,
                names.join(", ")
            ),
        ));
    }

    containerd::validate(
        &config.containerd,
        &d.run_dir,
        |p| config.pool(p).is_some(),
        host_checks,
    )
    .map_err(|p| Problem::section("containerd", p.key, p.message))?;

    // Pools must not share or nest paths, nor swallow the daemon's dirs:
    // each pool's reclaim and reconciliation assumes it owns its tree.
    for (i, pool) in config.pools.iter().enumerate() {
        let at = |message: String| Problem::pool(i, &pool.name, &["path"], &[&["name"]], message);
        for other in &config.pools[..i] {
            let (a, b) = (&pool.path, &other.path);
            let how = if a == b {
                "is the same path as"
            } else if a.starts_with(b) {
                "is inside the path of"
            } else if b.starts_with(a) {
                "contains the path of"
            } else {
                continue;
            };
            return Err(at(format!(
                "{:?} {how} pool {:?} ({:?}); pools must not share or nest paths",
                a, other.name, b
            )));
        }
        for (dir, what) in [(&d.state_dir, "state_dir"), (&d.run_dir, "run_dir")] {
            if pool.path == *dir || dir.starts_with(&pool.path) {
                return Err(at(format!(
                    "{:?} is or contains the daemon's {what} ({:?}); give the pool its own directory",
                    pool.path, dir
                )));
            }
        }
        if pool.path.starts_with(&d.run_dir) {
            return Err(at(format!(
                "{:?} is inside run_dir ({:?}), which holds only mounts and is usually a tmpfs",
                pool.path, d.run_dir
            )));
        }
    }

    if host_checks {
        for (i, pool) in config.pools.iter().enumerate() {
            check_pool_host(pool)
                .map_err(|m| Problem::pool(i, &pool.name, &["path"], &[&["name"]], m))?;
            if pool.backing == Backing::Loop {
                creation::check_loop_host(pool)
                    .map_err(|(k, m)| Problem::pool(i, &pool.name, k, &[&["name"]], m))?;
            }
        }
    }
    Ok(())
}

fn validate_pool(i: usize, pool: &PoolConfig) -> Result<(), Problem> {
    let problem = |rest: &[&str], message: String| Problem::pool(i, &pool.name, rest, &[], message);
    if !is_valid_pool_name(&pool.name) {
        return Err(problem(
            &["name"],
            format!(
                "invalid pool name {:?}: use 1–64 characters of A–Z, a–z, 0–9, '_' and '-'",
                pool.name
            ),
        ));
    }
    check_abs_path(&pool.path)
        .map_err(|m| Problem::pool(i, &pool.name, &["path"], &[&["name"]], m))?;
    if pool.size == Some(0) {
        return Err(problem(&["size"], "must be larger than 0".to_string()));
    }
    creation::check_sizes(pool).map_err(|(k, m)| problem(k, m))?;
    if let Some(thin) = &pool.thin {
        if let Some(dev) = &thin.metadata_device {
            check_abs_path(dev).map_err(|m| problem(&["metadata_device"], m))?;
        }
        if let Some(m) = thin.metadata_size {
            if !((2 << 20)..=(16 << 30)).contains(&m) {
                return Err(problem(
                    &["metadata_size"],
                    format!("{m} bytes is outside what dm-thin supports (2M–16G)"),
                ));
            }
        }
        let b = thin.block_size;
        if b % DEFAULT_BLOCK_SIZE != 0 || !(DEFAULT_BLOCK_SIZE..=(1 << 30)).contains(&b) {
            return Err(problem(
                &["block_size"],
                format!("{b} bytes: dm-thin needs a multiple of 64K between 64K and 1G"),
            ));
        }
        if thin.base_size == 0 {
            return Err(problem(&["base_size"], "must be larger than 0".to_string()));
        }
    }

    let m = &pool.monitor;
    for (k, v) in [
        ("warn_percent", m.warn_percent),
        ("critical_percent", m.critical_percent),
        ("min_free_percent", m.min_free_percent),
        ("autoextend_percent", m.autoextend_percent),
    ] {
        if v > 100 {
            return Err(problem(
                &["monitor", k],
                format!("expected an integer 0–100, found {v}"),
            ));
        }
    }
    if m.warn_percent >= m.critical_percent {
        return Err(Problem::pool(
            i,
            &pool.name,
            &["monitor", "warn_percent"],
            &[&["monitor", "critical_percent"]],
            format!(
                "must be below critical_percent: found warn_percent = {} and critical_percent = {}",
                m.warn_percent, m.critical_percent
            ),
        ));
    }
    if m.min_free_percent >= 100 {
        return Err(problem(
            &["monitor", "min_free_percent"],
            "must be below 100, or no layer could ever be created".to_string(),
        ));
    }
    if m.balance_unallocated_percent > MAX_BALANCE_UNALLOCATED_PERCENT {
        return Err(problem(
            &["monitor", "balance_unallocated_percent"],
            format!(
                "must be at most {MAX_BALANCE_UNALLOCATED_PERCENT} (percent of the device left unallocated; 0 turns the automatic balance off), found {}: above that a healthy pool would be balanced at every check",
                m.balance_unallocated_percent
            ),
        ));
    }

    let mt = &pool.maintenance;
    for (k, v) in [("trim", &mt.trim), ("balance", &mt.balance)] {
        if let Some(spec) = v {
            check_calendar(spec).map_err(|e| problem(&["maintenance", k], e))?;
        }
    }
    for (k, v) in [
        ("balance_dusage", &mt.balance_dusage),
        ("balance_musage", &mt.balance_musage),
    ] {
        if v.is_empty() {
            return Err(problem(
                &["maintenance", k],
                "must list at least one usage filter, e.g. [0, 5, 10]".to_string(),
            ));
        }
        if let Some(bad) = v.iter().find(|p| **p > 100) {
            return Err(problem(
                &["maintenance", k],
                format!("expected integers 0–100, found {bad}"),
            ));
        }
        if v.windows(2).any(|w| w[0] >= w[1]) {
            return Err(problem(
                &["maintenance", k],
                format!("must be strictly ascending (filters escalate), found {v:?}"),
            ));
        }
    }
    Ok(())
}

/// Absolute, and without `..` (which would make overlap checks lie).
fn check_abs_path(p: &Path) -> Result<(), String> {
    if !p.is_absolute() {
        return Err(format!("{p:?} is not an absolute path"));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{p:?} must not contain \"..\""));
    }
    Ok(())
}

/// What kind of thing a path is, for messages.
fn kind_of(m: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a directory"
    }
}

/// Errors of a lookup that mean "keep walking up": missing, or a
/// non-directory in the way (found and reported one level up).
fn is_absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

/// Read-only checks that the pool can live at its path on this host.
fn check_pool_host(pool: &PoolConfig) -> Result<(), String> {
    let path = &pool.path;
    match (pool.driver, pool.backing) {
        (Driver::Overlay | Driver::Vfs, _) => {
            check_dir_usable(path, pool.driver == Driver::Overlay)
        }
        (_, Backing::Loop) => {
            // The loop file(s) are created next to the path, in its parent.
            let parent = path.parent().unwrap_or(Path::new("/"));
            check_dir_usable(parent, false)
                .map_err(|e| format!("the loop file cannot be created: {e}"))
        }
        (_, Backing::Device) => match fs::metadata(path) {
            Ok(m) if !std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()) => Err(
                format!("{path:?} is {}, expected a block device", kind_of(&m)),
            ),
            // A missing device may appear later (udev); the pool is then
            // reported failed, not the whole config.
            _ => Ok(()),
        },
        (Driver::Btrfs, Backing::Existing) => match fs::metadata(path) {
            Ok(m) if !m.is_dir() => Err(format!(
                "{path:?} is {}, expected the directory where the btrfs is mounted",
                kind_of(&m)
            )),
            _ => Ok(()),
        },
        (Driver::Thin, Backing::Existing) => Ok(()),
    }
}

/// statfs(2) f_type is OVERLAYFS_SUPER_MAGIC (0x794c7630): an overlay
/// upper/work dir cannot live there.
fn is_overlayfs(p: &Path) -> nix::Result<bool> {
    let st = nix::sys::statfs::statfs(p)?;
    Ok(st.filesystem_type() == nix::sys::statfs::OVERLAYFS_SUPER_MAGIC)
}

/// `dir` is a directory, or could be made one: its nearest existing
/// ancestor is a directory the daemon can write; for overlay, not on
/// overlayfs (an upper/work dir there fails at mount time).
fn check_dir_usable(dir: &Path, reject_overlayfs: bool) -> Result<(), String> {
    let existing = match fs::metadata(dir) {
        Ok(m) if m.is_dir() => dir,
        Ok(m) => return Err(format!("{dir:?} is {}, expected a directory", kind_of(&m))),
        Err(e) if is_absent(&e) => {
            if fs::symlink_metadata(dir).is_ok() {
                return Err(format!("{dir:?} is a dangling symbolic link"));
            }
            let mut found = None;
            for a in dir.ancestors().skip(1) {
                match fs::metadata(a) {
                    Ok(m) if m.is_dir() => {
                        found = Some(a);
                        break;
                    }
                    Ok(m) => {
                        return Err(format!(
                            "{dir:?} cannot be created: {a:?} is {}, not a directory",
                            kind_of(&m)
                        ))
                    }
                    Err(e) if is_absent(&e) => continue,
                    Err(e) => return Err(format!("cannot examine {a:?}: {e}")),
                }
            }
            found.ok_or_else(|| format!("{dir:?} has no existing ancestor directory"))?
        }
        Err(e) => return Err(format!("cannot examine {dir:?}: {e}")),
    };
    nix::unistd::access(existing, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|e| {
        if existing == dir {
            format!("{dir:?} is not writable by the daemon: {}", e.desc())
        } else {
            format!(
                "{dir:?} cannot be created: {existing:?} is not writable by the daemon: {}",
                e.desc()
            )
        }
    })?;
    if reject_overlayfs {
        let on_overlayfs = is_overlayfs(existing)
            .map_err(|e| format!("cannot statfs {existing:?}: {}", e.desc()))?;
        if on_overlayfs {
            return Err(format!(
                "{existing:?} is on an overlay file system, which cannot hold overlay upper and work directories; put this pool on a real file system (ext4, xfs, btrfs…) or use driver = \"vfs\""
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT_FILE: &str = include_str!("../config/layerd.toml");
    const ORIGIN: &str = "/etc/layerd/layerd.toml";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        parse_str(text, Path::new(ORIGIN))
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(c) => panic!("expected an error, got {c:#?}"),
            Err(e) => e.to_string(),
        }
    }

    /// Asserts one line, the file, `line:` and every `needles` part.
    fn assert_err(text: &str, line: usize, needles: &[&str]) -> String {
        let msg = err(text);
        assert!(!msg.contains('\n'), "not one line: {msg}");
        let loc = format!("{ORIGIN}:{line}:");
        assert!(msg.starts_with(&loc), "expected {loc} in: {msg}");
        for n in needles {
            assert!(msg.contains(n), "expected {n:?} in: {msg}");
        }
        msg
    }

    /// A directory pool in a fresh temp dir (overlay only where the temp
    /// dir is not itself on overlayfs).
    fn tmp_pool_config(dir: &Path, extra: &str) -> String {
        format!(
            "[daemon]\nstate_dir = {:?}\nrun_dir = \"/run/layerd-test\"\n\n[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n{extra}",
            dir.join("state")
        )
    }

    fn on_overlayfs(p: &Path) -> bool {
        let mut p = p;
        while !p.exists() {
            p = p.parent().unwrap_or(Path::new("/"));
        }
        is_overlayfs(p).unwrap_or(false)
    }

    #[test]
    fn diff_idle_timeout_key() {
        let base = "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\npath = \"/srv/p\"\n";
        let c = parse_inner(base, Path::new(ORIGIN), false).unwrap();
        assert_eq!(c.daemon.diff_idle_timeout, DEFAULT_DIFF_IDLE_TIMEOUT);
        for (v, want) in [("\"90s\"", 90_000), ("\"500ms\"", 500), ("2", 2000)] {
            let text = format!("[daemon]\ndiff_idle_timeout = {v}\n{base}");
            let c = parse_inner(&text, Path::new(ORIGIN), false).unwrap();
            assert_eq!(c.daemon.diff_idle_timeout.as_millis(), want, "{v}");
        }
        assert_err(
            &format!("[daemon]\ndiff_idle_timeout = \"0s\"\n{base}"),
            2,
            &["daemon.diff_idle_timeout", "must be more than 0"],
        );
        assert_err(
            &format!("[daemon]\ndiff_idle_timeout = \"1d\"\n{base}"),
            2,
            &["daemon.diff_idle_timeout", "unknown unit"],
        );
    }

    #[test]
    fn default_file_loads() {
        // Without host checks it must always be valid…
        let c = parse_inner(DEFAULT_FILE, Path::new(ORIGIN), false).unwrap();
        assert_eq!(c, Config::builtin_default(Driver::Overlay));
        assert_eq!(c, builtin_default());
        // …and with them wherever /var/lib is usable for an overlay pool.
        let usable = nix::unistd::access("/var/lib", AccessFlags::W_OK).is_ok()
            && !on_overlayfs(Path::new("/var/lib"));
        match parse(DEFAULT_FILE) {
            Ok(c2) => assert_eq!(c2, c),
            Err(e) => assert!(!usable, "default file fails on a usable host: {e}"),
        }
    }

    #[test]
    fn default_file_mentions_every_key() {
        for k in [
            "state_dir",
            "run_dir",
            "default_pool",
            "name",
            "driver",
            "backing",
            "path",
            "size",
            "metadata_device",
            "metadata_size",
            "block_size",
            "base_size",
            "fs",
            "warn_percent",
            "critical_percent",
            "min_free_percent",
            "autoextend_percent",
            "autoextend_max",
            "balance_unallocated_percent",
            "trim",
            "balance",
            "balance_dusage",
            "balance_musage",
            "[pool.monitor]",
            "[pool.maintenance]",
            "[containerd]",
            "socket_dir",
            "socket_group",
            "pools",
            "[[containerd.snapshotter]]",
        ] {
            assert!(DEFAULT_FILE.contains(k), "layerd.toml lacks {k}");
        }
    }

    #[test]
    fn load_reads_a_file_and_reports_missing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("layerd.toml");
        fs::write(&file, tmp_pool_config(dir.path(), "")).unwrap();
        let c = load(&file).unwrap();
        assert_eq!(c.pools[0].path, dir.path().join("state/main"));
        assert!(load_optional(&dir.path().join("nope.toml"))
            .unwrap()
            .is_none());
        let e = load(&dir.path().join("nope.toml")).unwrap_err();
        assert!(e.is_not_found());
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("nope.toml"), "{e}");
        // A bad file names the real file.
        fs::write(&file, "bogus = 1\n").unwrap();
        let e = load(&file).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{}:1:1:", file.display())),
            "{e}"
        );
        assert_eq!(e.exit_code(), 2);
        // Validation creates nothing.
        assert!(!dir.path().join("state").exists());
    }

    #[test]
    fn every_default() {
        let dir = tempfile::tempdir().unwrap();
        let c = parse(&tmp_pool_config(dir.path(), "")).unwrap();
        let d = DaemonConfig::default();
        assert_eq!(d.state_dir, Path::new("/var/lib/layerd"));
        assert_eq!(d.run_dir, Path::new("/run/layerd"));
        assert_eq!(d.default_pool, "main");
        assert_eq!(c.daemon.default_pool, "main");
        let p = &c.pools[0];
        assert_eq!(p.backing, Backing::Existing);
        assert_eq!(p.path, dir.path().join("state").join("main"));
        assert_eq!(p.size, None);
        assert_eq!(p.thin, None);
        assert_eq!(
            p.monitor,
            MonitorConfig {
                warn_percent: 80,
                critical_percent: 90,
                min_free_percent: 10,
                autoextend_percent: 20,
                autoextend_max: 500 << 30,
                balance_unallocated_percent: 10,
            }
        );
        assert_eq!(p.maintenance.trim.as_deref(), Some("weekly"));
        assert_eq!(p.maintenance.balance, None);
        assert_eq!(p.maintenance.balance_dusage, vec![0, 5, 10]);
        assert_eq!(p.maintenance.balance_musage, vec![0, 5]);

        // No [daemon] at all: daemon defaults (checked without the host).
        let c = parse_inner(
            "[[pool]]\nname = \"main\"\ndriver = \"thin\"\nsize = \"100G\"\n",
            Path::new(ORIGIN),
            false,
        )
        .unwrap();
        assert_eq!(c.daemon, DaemonConfig::default());
        let p = &c.pools[0];
        assert_eq!(p.backing, Backing::Loop);
        assert_eq!(p.path, Path::new("/var/lib/layerd/main"));
        assert_eq!(p.size, Some(100 << 30));
        assert_eq!(
            p.thin,
            Some(ThinConfig {
                metadata_device: None,
                metadata_size: None,
                block_size: 64 << 10,
                base_size: 10 << 30,
                fs: ThinFs::Xfs,
            })
        );
        assert_eq!(p.maintenance.balance, None);

        let c = parse_inner(
            "[[pool]]\nname = \"main\"\ndriver = \"btrfs\"\nsize = 1073741824\n",
            Path::new(ORIGIN),
            false,
        )
        .unwrap();
        assert_eq!(c.pools[0].maintenance.balance.as_deref(), Some("daily"));
        assert_eq!(c.pools[0].size, Some(1 << 30));
        let mut want =
            PoolConfig::with_defaults("main", Driver::Btrfs, Path::new(DEFAULT_STATE_DIR));
        want.size = Some(1 << 30);
        assert_eq!(c.pools[0], want);
    }

    #[test]
    fn builtin_defaults() {
        let c = Config::builtin_default(Driver::Overlay);
        assert_eq!(c.daemon, DaemonConfig::default());
        assert_eq!(c.pools.len(), 1);
        let p = &c.pools[0];
        assert_eq!(
            (p.name.as_str(), p.driver, p.backing),
            ("main", Driver::Overlay, Backing::Existing)
        );
        assert_eq!(p.path, Path::new("/var/lib/layerd/main"));
        assert_eq!(c.default_pool().map(|p| p.name.as_str()), Some("main"));

        let t = Config::builtin_default(Driver::Thin);
        assert_eq!(t.pools[0].backing, Backing::Loop);
        assert_eq!(t.pools[0].size, Some(DEFAULT_LOOP_SIZE));
        assert!(t.pools[0].thin.is_some());

        let dir = tempfile::tempdir().unwrap();
        let daemon = DaemonConfig {
            state_dir: dir.path().join("state"),
            run_dir: dir.path().join("run"),
            default_pool: "main".into(),
            diff_idle_timeout: DEFAULT_DIFF_IDLE_TIMEOUT,
        };
        let v = Config::builtin_default_with(daemon.clone(), Driver::Vfs);
        assert_eq!(v.pools[0].path, dir.path().join("state/main"));
        v.validate().unwrap();
        let bad = Config::builtin_default_with(
            DaemonConfig {
                state_dir: "relative".into(),
                ..daemon
            },
            Driver::Vfs,
        );
        let e = bad.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("(built-in default config): daemon.state_dir:"),
            "{e}"
        );
        assert!(!dir.path().join("state").exists());
    }

    #[test]
    fn unknown_key_top_level() {
        let m = assert_err(
            "[daemon]\nstate_dir = \"/var/lib/layerd\"\n\nstorage = 1\n",
            4, // `storage` after [daemon] belongs to [daemon]
            &[
                ":4:1:",
                "unknown key \"storage\" in [daemon]",
                "expected one of state_dir, run_dir, default_pool",
            ],
        );
        assert!(!m.contains("pool \""), "{m}");
        assert_err(
            "storage = 1\n[daemon]\n",
            1,
            &[
                "unknown key \"storage\" at the top level",
                "expected one of daemon, pool, containerd",
            ],
        );
        assert_err(
            "# comment\n\n[deamon]\nstate_dir = \"/x\"\n",
            3,
            &[":3:2:", "unknown key \"deamon\" at the top level"],
        );
    }

    #[test]
    fn unknown_key_in_daemon() {
        let m = assert_err(
            "[daemon]\nstate_dir = \"/var/lib/layerd\"\nrundir = \"/run/layerd\"\n",
            3,
            &[":3:1:", "unknown key \"rundir\" in [daemon]", "run_dir"],
        );
        let e = parse("[daemon]\nrundir = \"/x\"\n").unwrap_err();
        assert_eq!(e.key(), Some("daemon.rundir"));
        assert_eq!(e.location(), Some((2, 1)));
        assert!(!m.contains("pool \""), "{m}");
    }

    #[test]
    fn unknown_key_in_pool() {
        let text = "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n\n[[pool]]\nname = \"b\"\ndriver = \"vfs\"\nsise = \"10G\"\n";
        assert_err(
            text,
            8,
            &[
                ":8:1:",
                "pool \"b\": unknown key \"sise\" in [pool]",
                "expected one of name, driver, backing, path, size",
            ],
        );
    }

    #[test]
    fn unknown_key_in_monitor() {
        let text = "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n\n[pool.monitor]\nwarn_percent = 70\n  warn_percnt = 70\n";
        let e = parse(text).unwrap_err();
        assert_eq!(e.key(), Some("pool.monitor.warn_percnt"));
        assert_err(
            text,
            7,
            &[
                ":7:3:",
                "pool \"main\": unknown key \"warn_percnt\" in [pool.monitor]",
                "warn_percent, critical_percent",
            ],
        );
        // …and in [pool.maintenance], an inline table too.
        assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\nmaintenance = { trim = \"weekly\", scrub = \"monthly\" }\n",
            4,
            &["pool \"main\": unknown key \"scrub\" in [pool.maintenance]"],
        );
    }

    #[test]
    fn wrong_types() {
        let text = "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.monitor]\nwarn_percent = \"high\"\n";
        assert_err(
            text,
            5,
            &[":5:16:", "pool \"main\": monitor.warn_percent: expected an integer 0–100, found string \"high\""],
        );
        assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.monitor]\ncritical_percent = 101\n",
            5,
            &["monitor.critical_percent: expected an integer 0–100, found integer 101"],
        );
        assert_err(
            "[daemon]\nstate_dir = 5\n",
            2,
            &[":2:13:", "daemon.state_dir: expected", "found integer 5"],
        );
        assert_err(
            "daemon = \"x\"\n",
            1,
            &["daemon: expected", "found string \"x\""],
        );
        assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"zfs\"\n",
            3,
            &["pool \"main\": driver: unknown driver \"zfs\", expected one of thin, btrfs, overlay, vfs"],
        );
        assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"aufs\"\n",
            3,
            &["use overlay"],
        );
        assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.maintenance]\ntrim = 2024-01-01\n",
            5,
            &["maintenance.trim: expected a string, found a date-time"],
        );
        assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.maintenance]\ntrim = \"\"\n",
            5,
            &["maintenance.trim: empty calendar spec"],
        );
        assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.maintenance]\ntrim = \"weekly; rm -rf\"\n",
            5,
            &["maintenance.trim: invalid calendar spec", "';'"],
        );
        assert_err(
            "[[pool]]\nname = \"a\"\ndriver = \"vfs\"\n[[pool]]\ndriver = \"vfs\"\n",
            4,
            &["pool #2: missing required key \"name\""],
        );
        // Syntax errors: location and the key on that line.
        assert_err(
            "[daemon]\nstate_dir = /var/lib\n",
            2,
            &["invalid TOML at key \"state_dir\""],
        );
        assert_err(
            "[[pool]]\nname = \"a\"\nname = \"b\"\n",
            3,
            &["invalid TOML", "duplicate key"],
        );
    }

    #[test]
    fn dotted_keys_and_implicit_tables_are_located() {
        // `monitor.x = …` makes [pool.monitor] implicitly, without a span.
        let base = "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n";
        assert_err(
            &format!("{base}maintenance.trim = 5\n"),
            4,
            &[
                ":4:20:",
                "pool \"main\": maintenance.trim: expected a string, found integer 5",
            ],
        );
        assert_err(
            &format!("{base}monitor.warn_percent = 95\n"),
            4,
            &[
                ":4:24:",
                "pool \"main\": monitor.warn_percent: must be below critical_percent",
            ],
        );
        assert_err(
            &format!("{base}monitor.warn = 1\n"),
            4,
            &[":4:9:", "unknown key \"warn\" in [pool.monitor]"],
        );
        assert_err(
            "daemon.run_dir = \"x\"\n",
            1,
            &[":1:18:", "daemon.run_dir: \"x\" is not an absolute path"],
        );
        // A date-time elsewhere in the file does not hide locations.
        assert_err(
            &format!("{base}monitor.warn = 1979-05-27\n"),
            4,
            &["unknown key \"warn\" in [pool.monitor]"],
        );
    }

    #[test]
    fn duplicate_pool_points_at_second() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{}\n[[pool]]\ndriver = \"vfs\"\nname = \"main\"\npath = {:?}\n",
            tmp_pool_config(dir.path(), ""),
            dir.path().join("other")
        );
        let line = text
            .lines()
            .position(|l| l.starts_with("name = \"main\"") && text.find(l).is_some())
            .unwrap();
        let second = text
            .lines()
            .enumerate()
            .filter(|(_, l)| *l == "name = \"main\"")
            .nth(1)
            .unwrap()
            .0
            + 1;
        assert!(second > line + 1);
        assert_err(
            &text,
            second,
            &["pool \"main\": name: duplicate pool name \"main\": pool #1 already has it"],
        );
    }

    #[test]
    fn default_pool_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let text = tmp_pool_config(dir.path(), "")
            .replace("[daemon]\n", "[daemon]\ndefault_pool = \"fast\"\n");
        assert_err(
            &text,
            2,
            &[
                ":2:16:",
                "daemon.default_pool: names no configured pool: \"fast\" (configured: main)",
            ],
        );
        // Defaulted default_pool: points at [daemon].
        let text = tmp_pool_config(dir.path(), "").replace("name = \"main\"", "name = \"data\"");
        assert_err(
            &text,
            1,
            &["daemon.default_pool", "\"main\"", "configured: data"],
        );
        assert_err("", 1, &["pool: no pool is configured"]);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("100G"), Ok(100 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("64kb"), Ok(65536));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 2 T "), Ok(2 << 40));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1E"), Ok(1 << 60));
        for bad in [
            "",
            "G",
            "-1G",
            "10X",
            "1.5G",
            "10 G B",
            "16E",
            "99999999999999999999",
        ] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains("size"), "{bad:?}: {e}");
        }
        assert!(parse_size("1.5G").unwrap_err().contains("fractions"));
        assert!(parse_size("10X")
            .unwrap_err()
            .contains("unknown unit \"X\""));

        let pool =
            |size: &str| format!("[[pool]]\nname = \"main\"\ndriver = \"btrfs\"\nsize = {size}\n");
        assert_err(
            &pool("\"10X\""),
            4,
            &[
                ":4:8:",
                "pool \"main\": size: invalid size \"10X\": unknown unit",
            ],
        );
        assert_err(
            &pool("-5"),
            4,
            &["size: expected a byte size", "found integer -5"],
        );
        assert_err(
            &pool("1.5"),
            4,
            &["size: expected a byte size", "found floating point 1.5"],
        );
        assert_err(&pool("\"0\""), 4, &["size: must be larger than 0"]);
        assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"thin\"\n",
            3,
            &["pool \"main\": size: required with backing = \"loop\""],
        );
        assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"thin\"\nsize = \"1G\"\nblock_size = \"100K\"\n",
            5,
            &["block_size:", "multiple of 64K"],
        );
        assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"thin\"\nsize = \"1G\"\n[pool.monitor]\nautoextend_max = \"lots\"\n",
            6,
            &["monitor.autoextend_max: invalid size \"lots\""],
        );
    }

    #[test]
    fn path_is_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("afile");
        fs::write(&file, "x").unwrap();
        let text = tmp_pool_config(dir.path(), &format!("path = {file:?}\n"));
        let m = assert_err(
            &text,
            8,
            &[
                "pool \"main\": path:",
                "is a regular file, expected a directory",
            ],
        );
        assert!(m.contains(&file.display().to_string()), "{m}");
        // A file in the way of a path to be created.
        let text = tmp_pool_config(dir.path(), &format!("path = {:?}\n", file.join("sub")));
        assert_err(
            &text,
            8,
            &["cannot be created", "is a regular file, not a directory"],
        );
        // Nothing was created.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn overlay_checks_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let text = tmp_pool_config(dir.path(), "").replace("\"vfs\"", "\"overlay\"");
        if on_overlayfs(dir.path()) {
            assert_err(&text, 1, &["overlay file system"]);
        } else {
            parse(&text).unwrap();
        }
    }

    #[test]
    fn relative_and_dotdot_paths() {
        assert_err(
            "[daemon]\nrun_dir = \"run/layerd\"\n",
            2,
            &[
                ":2:11:",
                "daemon.run_dir: \"run/layerd\" is not an absolute path",
            ],
        );
        assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\npath = \"srv/layers\"\n",
            4,
            &["pool \"main\": path: \"srv/layers\" is not an absolute path"],
        );
        assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\npath = \"/srv/../etc\"\n",
            4,
            &["path:", "must not contain \"..\""],
        );
    }

    #[test]
    fn overlapping_paths() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let base = tmp_pool_config(dir.path(), &format!("path = {a:?}\n"));
        let text = format!(
            "{base}\n[[pool]]\nname = \"b\"\ndriver = \"vfs\"\npath = {:?}\n",
            a.join("b")
        );
        assert_err(
            &text,
            13,
            &["pool \"b\": path:", "is inside the path of pool \"main\""],
        );
        let text = format!(
            "{base}\n[[pool]]\nname = \"b\"\ndriver = \"vfs\"\npath = \"{}/./\"\n",
            a.display()
        );
        assert_err(&text, 13, &["is the same path as pool \"main\""]);
        let text = format!(
            "{base}\n[[pool]]\nname = \"b\"\ndriver = \"vfs\"\npath = \"{}//b/\"\n",
            a.display()
        );
        let m = assert_err(&text, 13, &["is inside the path of pool \"main\""]);
        assert!(m.contains(&format!("{:?}", a.join("b"))), "normalized: {m}");
        let text = format!(
            "{base}\n[[pool]]\nname = \"b\"\ndriver = \"vfs\"\npath = {:?}\n",
            dir.path()
        );
        assert_err(&text, 13, &["contains the path of pool \"main\""]);
        // Siblings with a common prefix do not overlap.
        let text = format!(
            "{base}\n[[pool]]\nname = \"b\"\ndriver = \"vfs\"\npath = \"{}2\"\n",
            a.display()
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.pools.len(), 2);
        // A pool must not hold the state dir.
        let text = tmp_pool_config(dir.path(), &format!("path = {:?}\n", dir.path()));
        assert_err(&text, 8, &["is or contains the daemon's state_dir"]);
    }

    #[test]
    fn thresholds_in_order() {
        let base = "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.monitor]\n";
        assert_err(
            &format!("{base}warn_percent = 95\n"),
            5,
            &[
                ":5:16:",
                "pool \"main\": monitor.warn_percent: must be below critical_percent",
                "95",
                "90",
            ],
        );
        assert_err(
            &format!("{base}warn_percent = 50\ncritical_percent = 50\n"),
            5,
            &["monitor.warn_percent: must be below critical_percent"],
        );
        assert_err(
            &format!("{base}min_free_percent = 100\n"),
            5,
            &["monitor.min_free_percent: must be below 100"],
        );
        assert_err(
            &format!("{base}warn_percent = -1\n"),
            5,
            &["expected an integer 0–100, found integer -1"],
        );
    }

    #[test]
    fn driver_backing_and_key_rules() {
        let pool =
            |extra: &str| format!("[[pool]]\nname = \"main\"\ndriver = \"overlay\"\n{extra}");
        assert_err(
            &pool("backing = \"loop\"\n"),
            4,
            &["backing \"loop\" is not allowed", "omit backing"],
        );
        parse_inner(&pool("backing = \"existing\"\n"), Path::new(ORIGIN), false).unwrap();
        assert_err(
            &pool("size = \"1G\"\n"),
            4,
            &["size: only applies to backing = \"loop\""],
        );
        assert_err(
            &pool("fs = \"xfs\"\n"),
            4,
            &["fs: only applies to driver = \"thin\""],
        );
        assert_err(
            &pool("[pool.maintenance]\nbalance = \"daily\"\n"),
            5,
            &["maintenance.balance: only applies to driver = \"btrfs\""],
        );
        assert_err(
            &pool("[pool.monitor]\nautoextend_max = \"1T\"\n"),
            5,
            &["monitor.autoextend_max: only applies to pools that can grow"],
        );
        assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"thin\"\nbacking = \"device\"\n",
            4,
            &["path: required with backing = \"device\""],
        );
        assert_err(
            "[[pool]]\nname = \"bad name\"\ndriver = \"vfs\"\n",
            2,
            &["pool #1: name: invalid pool name \"bad name\""],
        );
        assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"btrfs\"\nsize = \"1G\"\n[pool.maintenance]\nbalance_dusage = [0, 10, 5]\n",
            6,
            &["maintenance.balance_dusage: must be strictly ascending"],
        );
        assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"btrfs\"\nsize = \"1G\"\n[pool.maintenance]\nbalance_musage = [0, 500]\n",
            6,
            &["maintenance.balance_musage", "expected an integer 0–100, found integer 500"],
        );
        // "none" disables a job.
        let c = parse_inner(
            "[[pool]]\nname = \"main\"\ndriver = \"btrfs\"\nsize = \"1G\"\n[pool.maintenance]\ntrim = \"none\"\nbalance = \"Sun *-*-* 03:00\"\n",
            Path::new(ORIGIN),
            false,
        )
        .unwrap();
        assert_eq!(c.pools[0].maintenance.trim, None);
        assert_eq!(
            c.pools[0].maintenance.balance.as_deref(),
            Some("Sun *-*-* 03:00")
        );
    }

    #[test]
    fn balance_unallocated_percent() {
        let btrfs = |extra: &str| {
            format!("[[pool]]\nname = \"main\"\ndriver = \"btrfs\"\nsize = \"1G\"\n{extra}")
        };
        let get = |text: &str| {
            parse_inner(text, Path::new(ORIGIN), false).unwrap().pools[0]
                .monitor
                .balance_unallocated_percent
        };
        assert_eq!(get(&btrfs("")), 10, "default");
        assert_eq!(
            get(&btrfs("[pool.monitor]\nbalance_unallocated_percent = 5\n")),
            5
        );
        assert_eq!(
            get(&btrfs("[pool.monitor]\nbalance_unallocated_percent = 0\n")),
            0,
            "0 turns it off"
        );
        assert_err(
            &btrfs("[pool.monitor]\nbalance_unallocated_percent = 60\n"),
            6,
            &[
                "monitor.balance_unallocated_percent: must be at most 50",
                "found 60",
            ],
        );
        assert_err(
            &btrfs("[pool.monitor]\nbalance_unallocated_percent = 101\n"),
            6,
            &["monitor.balance_unallocated_percent: expected an integer 0–100"],
        );
        assert_err(
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.monitor]\nbalance_unallocated_percent = 5\n",
            5,
            &["monitor.balance_unallocated_percent: only applies to driver = \"btrfs\""],
        );
    }

    #[test]
    fn every_error_is_one_located_line() {
        for t in [
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\nsise = 1\n",
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.monitor]\nwarn_percent = \"high\"\n",
            "[[pool]]\nname = \"main\"\ndriver = \"thin\"\n",
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n",
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\nmaintenance.trim = 5\n",
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.maintenance]\nbalance_dusage = [0, \"x\"]\n",
            "[daemon]\nstate_dir = \"/var/lib/layerd\"\nstate_dir = \"/x\"\n",
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\npath = \"/etc/passwd\"\n",
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.monitor]\nwarn_percent = 95\n",
            "[daemon]\ndefault_pool = \"x\"\n[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n",
            "pool = 3\n",
            "[[pool]]\nname = \"main\"\n",
            "daemon = \"x\"\n",
            "[daemon]\nstate_dir = 5\n",
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\nmonitor = 5\n",
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.maintenance]\nbalance_dusage = 5\n",
            "[[pool]]\nname = \"main\"\ndriver = 5\n",
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\nbacking = \"nfs\"\n",
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\nname = \"main\"\n",
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\n[pool.monitor]\n[pool.monitor]\n",
            "[[pool]\nname = \"main\"\n",
            "[[pool]]\nname = \"main\"\ndriver = \"thin\"\nsize=\"1G\"\nfs=\"btrfs\"\n",
        ] {
            let msg = err(t);
            assert!(!msg.contains('\n'), "{msg}");
            let rest = msg.strip_prefix(&format!("{ORIGIN}:")).unwrap_or_else(|| panic!("{msg}"));
            let mut parts = rest.splitn(3, ':');
            for _ in 0..2 {
                let n = parts.next().unwrap_or_default();
                assert!(!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()), "{msg}");
            }
            assert!(parts.next().is_some_and(|m| m.len() > 10), "{msg}");
        }
    }

    #[test]
    fn duplicate_keys_name_key_and_table() {
        let base = "[[pool]]\nname = \"a\"\ndriver = \"vfs\"\n";
        assert_err(
            &format!("{base}driver = \"vfs\"\n"),
            4,
            &[r#"invalid TOML at key "driver": duplicate key "driver" in table "pool""#],
        );
        assert_err(
            &format!("{base}[pool.monitor]\nwarn_percent = 1\nwarn_percent = 2\n"),
            6,
            &[r#"duplicate key "warn_percent" in table "pool.monitor""#],
        );
        assert_err(
            "x = 1\nx = 2\n",
            2,
            &[r#"duplicate key "x" in document root"#],
        );
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncdé\nx", 0), (1, 1));
        assert_eq!(line_col("ab\ncdé\nx", 3), (2, 1));
        assert_eq!(line_col("ab\ncdé\nx", 8), (3, 1));
        assert_eq!(line_col("é=x", 2), (1, 2));
        assert_eq!(line_col("é=x", 3), (1, 3));
        // Inside a multi-byte character: rounds down, never panics.
        assert_eq!(line_col("é=x", 1), (1, 1));
        assert_eq!(line_col("é=x", 99), (1, 4));
    }
}
