//! The resolved configuration: the public types every other module reads,
//! and their defaults.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::error::ConfigError;
use super::{ContainerdConfig, BUILTIN_ORIGIN};

/// `[daemon] state_dir` default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/layerd";
/// `[daemon] run_dir` default.
pub const DEFAULT_RUN_DIR: &str = "/run/layerd";
/// `[daemon] default_pool` default, and the name of the built-in pool.
pub const DEFAULT_POOL: &str = "main";
/// `[daemon] diff_idle_timeout` default.
pub const DEFAULT_DIFF_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
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
        super::validate::validate(self, true).map_err(|p| p.into_error(origin, None))
    }
}
