//! The file's shape: private structs that mirror the TOML (every key
//! optional, unknown keys refused), and the value types checked while
//! deserializing so that their errors carry a span.

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, Unexpected, Visitor};
use serde::Deserialize;

use super::model::{Backing, Driver, ThinFs};
use super::{containerd, duration};
use crate::shared::size::parse_size;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) daemon: Option<RawDaemon>,
    #[serde(default)]
    pub(super) pool: Vec<RawPool>,
    pub(super) containerd: Option<containerd::RawContainerd>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub(super) state_dir: Option<PathBuf>,
    pub(super) run_dir: Option<PathBuf>,
    pub(super) default_pool: Option<String>,
    pub(super) diff_idle_timeout: Option<duration::Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub(super) name: String,
    pub(super) driver: Driver,
    pub(super) backing: Option<Backing>,
    pub(super) path: Option<PathBuf>,
    pub(super) size: Option<Size>,
    pub(super) metadata_device: Option<PathBuf>,
    pub(super) metadata_size: Option<Size>,
    pub(super) block_size: Option<Size>,
    pub(super) base_size: Option<Size>,
    pub(super) fs: Option<ThinFs>,
    pub(super) monitor: Option<RawMonitor>,
    pub(super) maintenance: Option<RawMaintenance>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMonitor {
    pub(super) warn_percent: Option<Percent>,
    pub(super) critical_percent: Option<Percent>,
    pub(super) min_free_percent: Option<Percent>,
    pub(super) autoextend_percent: Option<Percent>,
    pub(super) autoextend_max: Option<Size>,
    pub(super) balance_unallocated_percent: Option<Percent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMaintenance {
    pub(super) trim: Option<Schedule>,
    pub(super) balance: Option<Schedule>,
    pub(super) balance_dusage: Option<Vec<Percent>>,
    pub(super) balance_musage: Option<Vec<Percent>>,
}

/// An integer 0–100; checked while deserializing so the error has a span.
#[derive(Debug, Clone, Copy)]
pub(super) struct Percent(pub(super) u8);

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
pub(super) struct Size(pub(super) u64);

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
pub(super) struct Schedule(pub(super) Option<String>);

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        check_calendar(&s).map(Schedule).map_err(de::Error::custom)
    }
}

/// Accepts `"none"` or something made of systemd.time(7) calendar
/// characters; systemd itself parses it when the timer is made, so this
/// only catches what can never be a calendar spec.
pub(super) fn check_calendar(s: &str) -> Result<Option<String>, String> {
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
