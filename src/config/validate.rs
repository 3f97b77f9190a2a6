//! Validation of a resolved [`Config`]: names, paths, thresholds, and
//! (with `host_checks`) whether each pool can live on this host.

use std::path::{Component, Path};

use super::host::check_pool_host;
use super::locate::{is_valid_pool_name, Problem};
use super::model::*;
use super::raw::check_calendar;
use super::{containerd, creation};

/// Checks `config`; `host_checks` adds the read-only look at the file
/// system (path kinds, writability, overlayfs).
pub(super) fn validate(config: &Config, host_checks: bool) -> Result<(), Problem> {
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
pub(super) fn check_abs_path(p: &Path) -> Result<(), String> {
    if !p.is_absolute() {
        return Err(format!("{p:?} is not an absolute path"));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{p:?} must not contain \"..\""));
    }
    Ok(())
}
