//! Automatic balance of btrfs pools: the engine's policy (the backend only
//! measures and balances).
//!
//! # Why a threshold on unallocated space, not on used %
//!
//! btrfs hands out space in two steps: device space is allocated to chunks
//! (block groups) of one kind, data or metadata, and files then use space
//! inside data chunks. Deleting files frees space inside chunks but gives
//! no chunk back while anything is left in it. A pool that was filled and
//! then mostly emptied therefore has every byte of the device in chunks,
//! "used %" low, `df` showing plenty free, and yet the next write that needs
//! a new chunk, above all a metadata chunk, fails with ENOSPC. Used % cannot
//! see this state coming; the device space in no chunk ("unallocated") can,
//! and it is exactly what a balance with low usage filters restores (it
//! rewrites nearly empty chunks into fewer full ones and frees the rest).
//! So the trigger is unallocated space in percent of the device size:
//! `[pool.monitor] balance_unallocated_percent` (default 10; 0 turns the
//! automatic balance off).
//!
//! # Rules
//!
//! Checked at every sample of the pool (the monitor's timer and after
//! operations that change space), only once the monitor watches the engine
//! (`Engine::watch`):
//! - below the threshold, the engine starts a Balance job through the same
//!   path as the D-Bus `Balance` method (`start_job`, the pool's configured
//!   `balance_dusage`/`balance_musage` filters), so clients see its Job
//!   object, progress and `Completed` signal;
//! - never while a trim or balance (manual or automatic) runs on the pool;
//! - at most one automatic start per [`COOLDOWN`], unless unallocated space
//!   dropped by at least [`drop_step`] since the last start;
//! - an automatic balance that gained nothing (or failed, or was cancelled
//!   by the admin) makes the engine give up: it is logged, HealthReason says
//!   so, and no new attempt is made until unallocated space drops further
//!   (by [`drop_step`]) or is back above the threshold.
//!
//! # Health
//!
//! Low unallocated space shows in Health on its own (data use may be low):
//! `warning` below the threshold, `critical` below half of what one new
//! data chunk takes ([`chunk_bytes`]: btrfs allocates at most 10 % of the
//! device and at most 1 GiB per data chunk; it can still use a smaller
//! remainder, but a full-size metadata chunk, DUP, no longer fits), with
//! HealthReason naming the unallocated bytes. The critical level holds even
//! with the automatic balance off.

use std::time::{Duration, Instant};

use crate::engine::jobs::JobId;
use crate::engine::types::Health;

/// At most one automatic balance per pool in this time, unless
/// unallocated space dropped further.
pub const COOLDOWN: Duration = Duration::from_secs(10 * 60);

/// What btrfs allocates for one new data chunk on a device of this size:
/// 10 % of it, at most 1 GiB.
pub fn chunk_bytes(device_size: u64) -> u64 {
    (device_size / 10).min(1 << 30)
}

/// The threshold in bytes: `percent` of the device.
pub fn threshold_bytes(device_size: u64, percent: u8) -> u64 {
    (device_size as u128 * percent as u128 / 100) as u64
}

/// How far unallocated space must fall to count as "dropped further": 1 %
/// of the device (at least 1 MiB).
pub fn drop_step(device_size: u64) -> u64 {
    (device_size / 100).max(1 << 20)
}

/// Bytes for people: "93.8 MiB".
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Health from unallocated space alone; `None` when it is fine (or not
/// known). `percent` 0 keeps only the critical level.
pub fn unallocated_health(
    unallocated: u64,
    device_size: u64,
    percent: u8,
) -> Option<(Health, String)> {
    if device_size == 0 {
        return None;
    }
    let pct = unallocated as f64 * 100.0 / device_size as f64;
    let what = format!(
        "unallocated device space {} of {} ({pct:.1}%)",
        human(unallocated),
        human(device_size)
    );
    let chunk = chunk_bytes(device_size);
    if unallocated < chunk / 2 {
        Some((
            Health::Critical,
            format!(
                "{what} is less than half a new chunk ({}): writes can fail with ENOSPC while df shows free space; a balance gives nearly empty chunks back",
                human(chunk)
            ),
        ))
    } else if percent > 0 && unallocated < threshold_bytes(device_size, percent) {
        Some((
            Health::Warning,
            format!("{what} is below balance_unallocated_percent = {percent}%"),
        ))
    } else {
        None
    }
}

/// A pool's automatic-balance bookkeeping.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// The running automatic balance.
    pub running: Option<JobId>,
    /// When the last automatic balance started, and unallocated bytes then.
    pub last_start: Option<(Instant, u64)>,
    /// Why the engine gave up, and unallocated bytes then.
    pub gave_up: Option<(String, u64)>,
}

impl State {
    /// Whether to start an automatic balance now. Also forgets a give-up
    /// once unallocated space is back above the threshold.
    pub fn due(&mut self, now: Instant, unallocated: u64, device_size: u64, percent: u8) -> bool {
        if percent == 0 || device_size == 0 {
            return false;
        }
        if unallocated >= threshold_bytes(device_size, percent) {
            self.gave_up = None;
            return false;
        }
        if self.running.is_some() {
            return false;
        }
        let step = drop_step(device_size);
        let dropped_since = |then: u64| unallocated.saturating_add(step) <= then;
        if let Some((_, at)) = &self.gave_up {
            if !dropped_since(*at) {
                return false;
            }
        }
        if let Some((t, at)) = self.last_start {
            if now.duration_since(t) < COOLDOWN && !dropped_since(at) {
                return false;
            }
        }
        true
    }

    /// A note for HealthReason while an automatic balance runs or after
    /// the engine gave up.
    pub fn note(&self) -> Option<String> {
        if let Some(id) = self.running {
            Some(format!("automatic balance running (job {id})"))
        } else {
            self.gave_up.as_ref().map(|(why, _)| {
                format!("automatic balance gave up: {why}; it tries again when unallocated space drops further or after it is back above the threshold")
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    #[test]
    fn health_levels() {
        assert_eq!(unallocated_health(800 * MIB, GIB, 10), None);
        let (h, why) = unallocated_health(150 * MIB, 2 * GIB, 10).unwrap();
        assert_eq!(h, Health::Warning);
        assert!(why.contains("150.0 MiB") && why.contains("10%"), "{why}");
        let (h, why) = unallocated_health(50 * MIB, GIB, 10).unwrap();
        assert_eq!(h, Health::Critical);
        assert!(why.contains("50.0 MiB") && why.contains("ENOSPC"), "{why}");
        // 1 GiB, 10 %: warning below 102.4 MiB, critical below 51.2 MiB.
        assert_eq!(
            unallocated_health(80 * MIB, GIB, 10).map(|h| h.0),
            Some(Health::Warning)
        );
        // Disabled: only the critical level remains.
        assert_eq!(unallocated_health(150 * MIB, 2 * GIB, 0), None);
        assert_eq!(
            unallocated_health(0, GIB, 0).map(|h| h.0),
            Some(Health::Critical)
        );
        // Large devices: one chunk is 1 GiB.
        assert_eq!(chunk_bytes(1000 * GIB), GIB);
        assert_eq!(
            unallocated_health(50 * GIB, 1000 * GIB, 10).map(|h| h.0),
            Some(Health::Warning)
        );
        assert_eq!(unallocated_health(0, 0, 10), None);
    }

    #[test]
    fn starts_once_then_cools_down_then_gives_up() {
        let mut s = State::default();
        let t0 = Instant::now();
        assert!(!s.due(t0, 500 * MIB, GIB, 10), "above the threshold");
        assert!(!s.due(t0, 10 * MIB, GIB, 0), "disabled");
        assert!(s.due(t0, 50 * MIB, GIB, 10));
        s.running = Some(1);
        s.last_start = Some((t0, 50 * MIB));
        assert!(!s.due(t0, 0, GIB, 10), "one at a time");
        s.running = None;
        // Cool-down: not again soon at the same level …
        let soon = t0 + Duration::from_secs(60);
        assert!(!s.due(soon, 50 * MIB, GIB, 10));
        // … unless it dropped further, and again after the cool-down.
        assert!(s.due(soon, 50 * MIB - drop_step(GIB), GIB, 10));
        assert!(s.due(t0 + COOLDOWN, 50 * MIB, GIB, 10));
        // Gave up: no retry, even after the cool-down …
        s.gave_up = Some(("gained nothing".into(), 50 * MIB));
        assert!(!s.due(t0 + 2 * COOLDOWN, 50 * MIB, GIB, 10));
        assert!(s.note().unwrap().contains("gained nothing"));
        // … until it dropped further, or recovered (which forgets it).
        assert!(s.due(t0 + 2 * COOLDOWN, 50 * MIB - drop_step(GIB), GIB, 10));
        assert!(!s.due(t0 + 2 * COOLDOWN, 600 * MIB, GIB, 10));
        assert!(s.gave_up.is_none());
        assert!(s.due(t0 + 2 * COOLDOWN, 50 * MIB, GIB, 10));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 * MIB / 2), "1.5 MiB");
        assert_eq!(human(GIB), "1.0 GiB");
    }
}
