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

mod containerd;
mod creation;
mod duration;
mod error;
mod host;
mod locate;
mod model;
mod raw;
mod resolve;
mod spans;
mod validate;

use std::fs;
use std::path::Path;

pub use crate::shared::size::parse_size;
pub use containerd::{ContainerdConfig, SnapshotterConfig};
pub use creation::{BTRFS_MIN_SIZE, MAX_OVERCOMMIT};
pub use duration::parse_duration;
pub use error::{ConfigError, EXIT_BAD_CONFIG};
pub use model::{
    Backing, Config, DaemonConfig, Driver, MaintenanceConfig, MonitorConfig, PoolConfig,
    ThinConfig, ThinFs, DEFAULT_AUTOEXTEND_MAX, DEFAULT_BALANCE,
    DEFAULT_BALANCE_UNALLOCATED_PERCENT, DEFAULT_BASE_SIZE, DEFAULT_BLOCK_SIZE,
    DEFAULT_DIFF_IDLE_TIMEOUT, DEFAULT_LOOP_SIZE, DEFAULT_POOL, DEFAULT_RUN_DIR, DEFAULT_STATE_DIR,
    DEFAULT_TRIM, MAX_BALANCE_UNALLOCATED_PERCENT,
};

use locate::{toml_error, Problem};
use raw::RawConfig;
use spans::Tree;

/// Where the daemon looks for its config when not told otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/layerd/layerd.toml";

/// Name shown in errors about a config that did not come from a file.
const BUILTIN_ORIGIN: &str = "(built-in default config)";

/// The built-in default with the driver that needs nothing from the host
/// (overlay). The daemon itself probes the host and prefers a loop-backed
/// thin pool, then a loop-backed btrfs (`main.rs`, `builtin_driver`).
pub fn builtin_default() -> Config {
    Config::builtin_default(Driver::Overlay)
}

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

pub(super) fn parse_inner(
    text: &str,
    origin: &Path,
    host_checks: bool,
) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(&e, text, origin))?;
    // Parsed again only for spans, which semantic errors point at; a text
    // that deserialized above always parses here.
    let tree = Tree::parse(text);
    let located = |p: Problem| p.into_error(origin, Some((text, tree.as_ref())));
    let config = resolve::resolve(raw).map_err(located)?;
    validate::validate(&config, host_checks).map_err(located)?;
    Ok(config)
}

#[cfg(test)]
mod tests;
