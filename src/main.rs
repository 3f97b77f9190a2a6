//! The layerd daemon: load config, open the engine (which reconciles store
//! and disks), serve D-Bus, sample pools, stop on SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use layerd::config::{self, Config};
use layerd::engine::{self, Engine, EngineConfig, PoolSpec, Thresholds};

const USAGE: &str = "\
usage: layerd [--config PATH] [--bus-address ADDRESS] [--check-config]
       layerd job <trim|balance> <pool> [--bus-address ADDRESS]

  --config PATH          configuration file (default /etc/layerd/layerd.toml;
                         when that does not exist, the built-in default: one
                         pool \"main\" under /var/lib/layerd, a 100G sparse
                         loop-backed thin pool where the host has dm-thin,
                         else loop-backed btrfs, else overlay)
  --bus-address ADDRESS  serve on this D-Bus address instead of the system bus
  --check-config         validate the configuration, print it, and exit
  job KIND POOL          run one maintenance job through the daemon and wait
                         for it (what the maintenance timers' services run);
                         exit status 0 when it succeeded, 1 when not
  LAYERD_LOG             log filter (default info), e.g. LAYERD_LOG=debug
";

struct Args {
    config: Option<PathBuf>,
    bus_address: Option<String>,
    check_only: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        config: None,
        bus_address: None,
        check_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => args.config = Some(it.next().ok_or("--config needs a path")?.into()),
            "--bus-address" => {
                args.bus_address = Some(it.next().ok_or("--bus-address needs an address")?)
            }
            "--check-config" => args.check_only = true,
            "--version" => {
                println!("layerd {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

/// The config, and for the built-in default, why its pool has its driver
/// (logged once logging is up).
fn load_config(args: &Args) -> Result<(Config, Option<String>), String> {
    let s = |e: config::ConfigError| e.to_string();
    match &args.config {
        Some(p) => Ok((config::load(p).map_err(s)?, None)),
        None => match config::load_optional(std::path::Path::new(config::DEFAULT_CONFIG_PATH))
            .map_err(s)?
        {
            Some(c) => Ok((c, None)),
            None => {
                let daemon = config::DaemonConfig::default();
                let (driver, why) = builtin_driver(&daemon.state_dir)?;
                let c = Config::builtin_default_with(daemon, driver);
                // The built-in default gets the same checks as a file.
                c.validate().map_err(s)?;
                Ok((c, Some(why)))
            }
        },
    }
}

/// Records which driver the built-in default pool got, so a later start
/// opens the same pool even if the host changed (tools installed or
/// removed) in between.
const BUILTIN_DRIVER_FILE: &str = "builtin-pool-driver";

/// The built-in default pool's driver: the one recorded at its first start;
/// else, for a state directory made before the record existed, overlay
/// (what those versions chose); else the best the host supports — a
/// loop-backed thin pool, else a loop-backed btrfs, else overlay.
fn builtin_driver(state_dir: &std::path::Path) -> Result<(config::Driver, String), String> {
    let recorded = state_dir.join(BUILTIN_DRIVER_FILE);
    if let Ok(text) = std::fs::read_to_string(&recorded) {
        // A record that names no driver is refused rather than guessed: the
        // wrong guess would open the pool's data with another driver.
        return text
            .trim()
            .parse::<config::Driver>()
            .map(|d| (d, format!("recorded in {}", recorded.display())))
            .map_err(|e| format!("{}: {e}; fix or remove it", recorded.display()));
    }
    if state_dir.join("layerd.redb").exists() {
        return Ok((
            config::Driver::Overlay,
            "a store made before the built-in pool's driver was recorded".into(),
        ));
    }
    let thin = layerd::backend::thin::host_support();
    let thin_why = match thin {
        Ok(()) => {
            return Ok((
                config::Driver::Thin,
                "the host has dm-thin, thin_check and mkfs.xfs".into(),
            ))
        }
        Err(e) => e,
    };
    Ok(match layerd::backend::btrfs::host_support() {
        Ok(()) => (
            config::Driver::Btrfs,
            format!("not thin: {thin_why}; the host has btrfs, loop devices and mkfs.btrfs"),
        ),
        Err(btrfs_why) => (
            config::Driver::Overlay,
            format!("not thin: {thin_why}; not btrfs: {btrfs_why}"),
        ),
    })
}

/// Writes the record [`builtin_driver`] reads, once the pool exists.
fn record_builtin_driver(state_dir: &std::path::Path, driver: config::Driver) {
    let path = state_dir.join(BUILTIN_DRIVER_FILE);
    if path.exists() {
        return;
    }
    if let Err(e) = std::fs::write(&path, format!("{}\n", driver.as_str())) {
        tracing::warn!(path = %path.display(), error = %e, "cannot record the built-in pool's driver");
    }
}

fn engine_config(c: &Config) -> EngineConfig {
    EngineConfig {
        state_dir: c.daemon.state_dir.clone(),
        run_dir: c.daemon.run_dir.clone(),
        default_pool: c.daemon.default_pool.clone(),
        pools: c
            .pools
            .iter()
            .map(|p| PoolSpec {
                name: p.name.clone(),
                driver: match p.driver {
                    config::Driver::Thin => engine::Driver::Thin,
                    config::Driver::Btrfs => engine::Driver::Btrfs,
                    config::Driver::Overlay => engine::Driver::Overlay,
                    config::Driver::Vfs => engine::Driver::Vfs,
                },
                backing: match p.backing {
                    config::Backing::Loop => engine::Backing::Loop,
                    config::Backing::Device => engine::Backing::Device,
                    config::Backing::Existing => engine::Backing::Existing,
                },
                path: p.path.clone(),
                size: p.size,
                thin: p.thin.as_ref().map(|t| engine::ThinSpec {
                    metadata_device: t.metadata_device.clone(),
                    metadata_size: t.metadata_size,
                    block_size: t.block_size,
                    base_size: t.base_size,
                    fs: match t.fs {
                        config::ThinFs::Xfs => layerd::backend::thin::Fs::Xfs,
                        config::ThinFs::Ext4 => layerd::backend::thin::Fs::Ext4,
                    },
                    autoextend_percent: p.monitor.autoextend_percent,
                    autoextend_max: p.monitor.autoextend_max,
                }),
                balance: layerd::backend::BalanceOptions {
                    dusage: p.maintenance.balance_dusage.clone(),
                    musage: p.maintenance.balance_musage.clone(),
                },
                thresholds: Thresholds {
                    warn_percent: p.monitor.warn_percent,
                    critical_percent: p.monitor.critical_percent,
                    min_free_percent: p.monitor.min_free_percent,
                    balance_unallocated_percent: p.monitor.balance_unallocated_percent,
                    autoextend_max: Some(p.monitor.autoextend_max),
                },
            })
            .collect(),
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("job") {
        return layerd::maintenance::job::main(&argv[1..]);
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("layerd: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let (cfg, builtin) = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("layerd: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_only {
        println!("{cfg:#?}");
        return ExitCode::SUCCESS;
    }
    layerd::logging::init();
    if let (Some(why), Some(pool)) = (&builtin, cfg.default_pool()) {
        tracing::info!(
            pool = %pool.name,
            driver = pool.driver.as_str(),
            path = %pool.path.display(),
            "no config file: using the built-in default pool ({why})"
        );
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("layerd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(run(cfg, args.bus_address, builtin.is_some()));
    // Dropping the runtime would wait for every blocking thread for ever.
    rt.shutdown_timeout(RUNTIME_STOP_WAIT);
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "layerd stopped");
            eprintln!("layerd: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cfg: Config, bus_address: Option<String>, builtin: bool) -> Result<(), String> {
    // Watch signals first: a service manager may stop us the moment the
    // bus name appears.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| format!("cannot watch SIGINT: {e}"))?;
    let ecfg = engine_config(&cfg);
    let (engine, report) = tokio::task::spawn_blocking(move || Engine::open(ecfg))
        .await
        .map_err(|e| format!("start-up task failed: {e}"))?
        .map_err(|e| format!("cannot open the engine: {e}"))?;
    if !report.quarantined.is_empty() || !report.missing.is_empty() {
        tracing::warn!(
            quarantined = report.quarantined.len(),
            missing = report.missing.len(),
            "start-up found data without records or records without data; see the log above"
        );
    }
    if builtin {
        if let Some(pool) = cfg.default_pool() {
            record_builtin_driver(&cfg.daemon.state_dir, pool.driver);
        }
    }
    engine.set_diff_idle_timeout(cfg.daemon.diff_idle_timeout);
    let engine = Arc::new(engine);
    // Timers before the bus name: a service a timer starts finds the
    // daemon ready, and MaintenanceSchedule is final once clients see it.
    schedule_maintenance(&cfg, &engine).await;
    // containerd's sockets before the bus name: whoever waits for the name
    // (D-Bus activation, a test, a runtime) finds them bound too.
    let containerd = layerd::containerd::serve(engine.clone(), &cfg.containerd)
        .await
        .map_err(|e| format!("cannot serve containerd's snapshots API: {e}"))?;
    let conn = match layerd::dbus::serve(engine.clone(), bus_address.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            containerd.close();
            return Err(format!("cannot serve D-Bus: {e}"));
        }
    };
    tracing::info!(
        bus = %bus_address.as_deref().unwrap_or("system"),
        pools = ?engine.pool_names(),
        unique_name = ?conn.unique_name().map(|n| n.to_string()),
        "layerd ready"
    );
    let monitor = tokio::spawn(layerd::monitor::run(
        engine.clone(),
        layerd::monitor::SAMPLE_EVERY,
    ));
    // Type=notify: ready once pools are open, recovery done and the bus
    // name is ours. Outside systemd (no NOTIFY_SOCKET) these are no-ops.
    let status = format!(
        "serving {} pool(s) on {}",
        engine.pool_names().len(),
        bus_address.as_deref().unwrap_or("the system bus")
    );
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status),
    ]);
    let mut watchdog = watchdog_interval();

    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = watchdog.tick() => {
                // Ping only when the engine answers: a blocking pool that
                // is stuck, or a wedged pool status lock, lets the
                // watchdog restart us.
                let e = engine.clone();
                let alive = tokio::task::spawn_blocking(move || {
                    e.pool_names().iter().all(|n| e.pool(n).is_ok())
                });
                if alive.await.unwrap_or(false) {
                    notify(&[sd_notify::NotifyState::Watchdog]);
                }
            }
        }
    }
    notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping"),
    ]);
    monitor.abort();
    containerd.close();
    // An Apply or Export blocked on a caller's descriptor would keep the
    // daemon from ever exiting: stop them all (each Apply marks its layer
    // failed) and give their replies a moment to go out.
    let e = engine.clone();
    if tokio::task::spawn_blocking(move || e.stop_diffs(DIFF_STOP_WAIT))
        .await
        .unwrap_or(false)
    {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Daemon mounts stay: they are recorded and the next start adopts them.
    drop(conn);
    Ok(())
}

/// How long SIGTERM waits for stopped Applies and Exports to unwind.
const DIFF_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the runtime's shutdown waits for threads still in a request
/// (whatever is left is abandoned: the process exits).
const RUNTIME_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Sends sd_notify(3) states; without NOTIFY_SOCKET (not under systemd)
/// this does nothing.
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Ticks at half the unit's WatchdogSec (WATCHDOG_USEC), or practically
/// never when there is no watchdog.
fn watchdog_interval() -> tokio::time::Interval {
    let mut usec = 0u64;
    let every = if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        std::time::Duration::from_micros(usec / 2)
    } else {
        std::time::Duration::from_secs(24 * 3600)
    };
    let mut i = tokio::time::interval(every);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

/// Makes systemd's maintenance timers match the config (src/maintenance/)
/// and records each pool's schedule; without a systemd manager, says that
/// maintenance is unscheduled. Never fails start-up: jobs still run on
/// demand.
async fn schedule_maintenance(cfg: &Config, engine: &Arc<Engine>) {
    use layerd::maintenance::{self, systemd};
    let wanted = maintenance::wanted(cfg);
    let texts = match systemd::Manager::connect().await {
        Err(why) => {
            let why = why.to_string();
            if wanted.is_empty() {
                tracing::info!(reason = %why, "no maintenance configured; no systemd manager reachable");
            } else {
                tracing::warn!(reason = %why, "maintenance is unscheduled: no systemd manager reachable; Trim and Balance still run on demand");
            }
            notify(&[sd_notify::NotifyState::Status(
                "maintenance unscheduled: no systemd manager reachable",
            )]);
            maintenance::describe_unscheduled(cfg, &why)
        }
        Ok(mgr) => {
            let exe = std::env::current_exe()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "/usr/local/bin/layerd".into());
            let (results, removed) = systemd::sync(&mgr, &wanted, &exe).await;
            let ok = results.iter().filter(|(_, r)| r.is_ok()).count();
            tracing::info!(
                scheduled = ok,
                failed = results.len() - ok,
                removed = removed.len(),
                "maintenance timers match the config"
            );
            maintenance::describe(cfg, &results)
        }
    };
    for (pool, text) in texts {
        engine.set_maintenance_schedule(&pool, text);
    }
}
