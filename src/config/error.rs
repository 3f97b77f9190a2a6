//! [`ConfigError`]: why a config could not be used.

use std::io;
use std::path::PathBuf;

/// The daemon's exit status for a bad config file.
pub const EXIT_BAD_CONFIG: i32 = 2;

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
