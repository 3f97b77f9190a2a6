//! Scheduled maintenance: one systemd timer per pool and job kind whose
//! calendar spec the config gives (`trim = "weekly"`, `balance = "daily"`,
//! `"none"` = no timer). At start-up the daemon makes systemd's timers
//! match the config (systemd.rs): transient units created through
//! `org.freedesktop.systemd1.Manager.StartTransientUnit`, named
//! `layerd-<kind>@<pool>.timer`, each with a transient oneshot
//! `layerd-<kind>@<pool>.service` that runs `layerd job <kind> <pool>`
//! (job.rs): a client asking the daemon over D-Bus for the job and waiting
//! for its `Completed`. Timers of pools or kinds no longer configured are
//! stopped (a stopped transient unit is gone).
//!
//! Why transient units and not shipped templates plus drop-ins: the config
//! file stays the only place a schedule is written; the daemon writes no
//! files under /etc and needs no daemon-reload; what systemd runs is what
//! this start-up computed, never a leftover of an older config or package.
//! Transient units end with the systemd manager (reboot); the daemon is
//! started at boot (`WantedBy=multi-user.target`) and re-creates them, and
//! `Persistent=true` keeps the last trigger in /var/lib/systemd/timers, so
//! a run missed while the machine was off still happens once.
//!
//! This module calls the engine (to record each pool's schedule for the
//! `MaintenanceSchedule` property), never a backend. Where no systemd
//! manager is reachable (no /run/systemd/system, no system bus), every
//! pool's schedule says so; jobs still run on demand over D-Bus.

pub mod job;
pub mod systemd;

use crate::config::{Config, Driver};

/// The job kinds a timer can run. A kind applies to a pool when the
/// config gives it a calendar spec (config.rs refuses `balance` on
/// drivers that cannot balance).
pub const KINDS: &[&str] = &["trim", "balance"];

/// What a timer's unit names start with; `layerd-<kind>@<pool>.timer`.
pub const UNIT_PREFIX: &str = "layerd-";

/// Randomized delay of every timer (as fstrim.timer's, at most an hour):
/// many hosts with the same schedule do not all trim at once.
pub const RANDOMIZED_DELAY_USEC: u64 = 3600 * 1_000_000;

/// One timer the config asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub pool: String,
    pub kind: &'static str,
    /// A systemd calendar spec (systemd.time(7)).
    pub calendar: String,
}

impl Wanted {
    /// `layerd-<kind>@<pool>`: pool names are `[A-Za-z0-9_-]{1,64}`
    /// (config.rs), all valid in a unit's instance name, so no escaping.
    pub fn unit_stem(&self) -> String {
        format!("{UNIT_PREFIX}{}@{}", self.kind, self.pool)
    }

    pub fn timer(&self) -> String {
        format!("{}.timer", self.unit_stem())
    }

    pub fn service(&self) -> String {
        format!("{}.service", self.unit_stem())
    }
}

/// Every timer the config asks for, in config order.
pub fn wanted(cfg: &Config) -> Vec<Wanted> {
    let mut out = Vec::new();
    for p in &cfg.pools {
        let m = &p.maintenance;
        for (kind, spec) in [("trim", &m.trim), ("balance", &m.balance)] {
            let Some(calendar) = spec else { continue };
            // config.rs already refuses balance elsewhere; stay safe.
            if kind == "balance" && p.driver != Driver::Btrfs {
                continue;
            }
            out.push(Wanted {
                pool: p.name.clone(),
                kind,
                calendar: calendar.clone(),
            });
        }
    }
    out
}

/// The (kind, pool) a unit name of ours stands for, or None for any other
/// unit: `layerd-trim@main.timer` → ("trim", "main").
pub fn parse_unit(name: &str) -> Option<(&str, &str)> {
    let stem = name.strip_prefix(UNIT_PREFIX)?.strip_suffix(".timer")?;
    let (kind, pool) = stem.split_once('@')?;
    if !KINDS.contains(&kind) || pool.is_empty() {
        return None;
    }
    Some((kind, pool))
}

/// Each pool's `MaintenanceSchedule` text, given what happened to its
/// timers: `scheduled` holds (pool, kind, result) for each wanted timer,
/// result Ok(()) when systemd has it, Err(why) otherwise.
pub fn describe(cfg: &Config, results: &[(Wanted, Result<(), String>)]) -> Vec<(String, String)> {
    cfg.pools
        .iter()
        .map(|p| {
            let parts: Vec<String> = results
                .iter()
                .filter(|(w, _)| w.pool == p.name)
                .map(|(w, r)| match r {
                    Ok(()) => format!("{} {:?} ({})", w.kind, w.calendar, w.timer()),
                    Err(why) => format!("{} {:?} not scheduled: {why}", w.kind, w.calendar),
                })
                .collect();
            let text = if parts.is_empty() {
                "none: no maintenance configured".to_string()
            } else {
                parts.join("; ")
            };
            (p.name.clone(), text)
        })
        .collect()
}

/// Each pool's text when no systemd manager can be reached.
pub fn describe_unscheduled(cfg: &Config, why: &str) -> Vec<(String, String)> {
    let wanted = wanted(cfg);
    cfg.pools
        .iter()
        .map(|p| {
            let text = if wanted.iter().any(|w| w.pool == p.name) {
                format!("unscheduled: no systemd manager reachable ({why}); Trim and Balance still run on demand")
            } else {
                "none: no maintenance configured".to_string()
            };
            (p.name.clone(), text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("layerd.toml");
        std::fs::write(&path, toml).unwrap();
        crate::config::load(&path).unwrap()
    }

    #[test]
    fn wanted_follows_the_config() {
        let c = cfg("[[pool]]\nname = \"main\"\ndriver = \"vfs\"\npath = \"/srv/a\"\n\
                     [[pool]]\nname = \"b\"\ndriver = \"btrfs\"\nsize = \"1G\"\npath = \"/srv/b\"\n\
                     [pool.maintenance]\ntrim = \"none\"\nbalance = \"daily\"\n\
                     [[pool]]\nname = \"c-1\"\ndriver = \"btrfs\"\nsize = \"1G\"\npath = \"/srv/c\"\n");
        let w = wanted(&c);
        let names: Vec<String> = w.iter().map(|w| w.timer()).collect();
        assert_eq!(
            names,
            [
                "layerd-trim@main.timer",
                "layerd-balance@b.timer",
                // btrfs pools balance daily unless told otherwise.
                "layerd-trim@c-1.timer",
                "layerd-balance@c-1.timer",
            ]
        );
        assert_eq!(w[0].calendar, "weekly");
        assert_eq!(w[1].service(), "layerd-balance@b.service");
    }

    #[test]
    fn unit_names_round_trip_and_others_are_ignored() {
        assert_eq!(parse_unit("layerd-trim@main.timer"), Some(("trim", "main")));
        assert_eq!(
            parse_unit("layerd-balance@a-b.timer"),
            Some(("balance", "a-b"))
        );
        for other in [
            "layerd.service",
            "layerd-trim@main.service",
            "layerd-scrub@main.timer",
            "layerd-trim@.timer",
            "fstrim.timer",
        ] {
            assert_eq!(parse_unit(other), None, "{other}");
        }
    }

    #[test]
    fn descriptions() {
        let c = cfg(
            "[[pool]]\nname = \"main\"\ndriver = \"vfs\"\npath = \"/srv/a\"\n\
                     [[pool]]\nname = \"quiet\"\ndriver = \"vfs\"\npath = \"/srv/q\"\n\
                     [pool.maintenance]\ntrim = \"none\"\n",
        );
        let w = wanted(&c);
        let d = describe(&c, &[(w[0].clone(), Ok(()))]);
        assert_eq!(d[0].1, "trim \"weekly\" (layerd-trim@main.timer)");
        assert_eq!(d[1].1, "none: no maintenance configured");
        let d = describe(&c, &[(w[0].clone(), Err("bad spec".into()))]);
        assert_eq!(d[0].1, "trim \"weekly\" not scheduled: bad spec");
        let d = describe_unscheduled(&c, "no /run/systemd/system");
        assert!(
            d[0].1
                .starts_with("unscheduled: no systemd manager reachable"),
            "{}",
            d[0].1
        );
        assert_eq!(d[1].1, "none: no maintenance configured");
    }
}
