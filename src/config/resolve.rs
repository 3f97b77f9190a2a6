//! Resolution: raw file → [`Config`]. Defaults are filled in, and keys
//! that do not apply to a pool's driver or backing are refused.

use std::path::{Path, PathBuf};

use super::containerd;
use super::locate::Problem;
use super::model::*;
use super::raw::{Percent, RawConfig, RawPool, Size};

/// Drops `.`, repeated and trailing slashes, so that equal paths compare
/// equal (`..` is kept, and rejected by validation).
pub(super) fn normalize(p: PathBuf) -> PathBuf {
    p.components().collect()
}

pub(super) fn resolve(raw: RawConfig) -> Result<Config, Problem> {
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
