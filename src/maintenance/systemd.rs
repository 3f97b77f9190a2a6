//! Making systemd's timers match the config, through the systemd
//! manager's D-Bus API on the system bus (org.freedesktop.systemd1(5)):
//! ListUnitsByPatterns to find our timers, StopUnit for those no longer
//! wanted, StartTransientUnit for the wanted ones. No systemctl processes.
//!
//! Every wanted timer is re-created at each start-up (stop, wait until
//! systemd has dropped the unit, create): the calendar spec may have
//! changed and systemd normalizes specs, so comparing them is not
//! reliable. Stopping a Persistent timer keeps its stamp file, so the
//! next elapse is still counted from the last real run.

use std::path::Path;
use std::time::{Duration, Instant};

use zbus::zvariant::{OwnedObjectPath, Value};
use zbus::{proxy, Connection};

use super::{parse_unit, Wanted, RANDOMIZED_DELAY_USEC, UNIT_PREFIX};

/// How long to wait for systemd to drop a stopped transient unit.
const GONE_WITHIN: Duration = Duration::from_secs(5);

/// Where systemd as PID 1 leaves its mark (sd_booted(3)).
const SYSTEMD_RUN_DIR: &str = "/run/systemd/system";

type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait SystemdManager {
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: Vec<(&str, Value<'_>)>,
        aux: Vec<(&str, Vec<(&str, Value<'_>)>)>,
    ) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn list_units_by_patterns(
        &self,
        states: Vec<&str>,
        patterns: Vec<&str>,
    ) -> zbus::Result<Vec<UnitRow>>;
}

/// Why the systemd manager cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    #[error("{SYSTEMD_RUN_DIR} does not exist: systemd is not the init system here")]
    NotBooted,
    #[error("cannot reach the systemd manager on the system bus: {0}")]
    Bus(String),
}

/// A connection to the systemd manager.
pub struct Manager {
    proxy: SystemdManagerProxy<'static>,
}

impl Manager {
    /// Connects to systemd over the system bus, or says why not.
    pub async fn connect() -> Result<Self, Unreachable> {
        if !Path::new(SYSTEMD_RUN_DIR).is_dir() {
            return Err(Unreachable::NotBooted);
        }
        let conn = Connection::system()
            .await
            .map_err(|e| Unreachable::Bus(e.to_string()))?;
        let proxy = SystemdManagerProxy::new(&conn)
            .await
            .map_err(|e| Unreachable::Bus(e.to_string()))?;
        // One cheap call proves systemd answers (not just a bus).
        proxy
            .get_unit("-.mount")
            .await
            .map_err(|e| Unreachable::Bus(e.to_string()))?;
        Ok(Manager { proxy })
    }

    /// Our timers systemd has loaded now.
    pub async fn our_timers(&self) -> zbus::Result<Vec<String>> {
        let pattern = format!("{UNIT_PREFIX}*@*.timer");
        let rows = self
            .proxy
            .list_units_by_patterns(vec![], vec![pattern.as_str()])
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| r.0)
            .filter(|n| parse_unit(n).is_some())
            .collect())
    }

    /// Stops `unit` and waits (bounded) until systemd has dropped it.
    async fn stop_and_forget(&self, unit: &str) -> Result<(), String> {
        if let Err(e) = self.proxy.stop_unit(unit, "replace").await {
            // Already gone is what we want.
            if is_no_such_unit(&e) {
                return Ok(());
            }
            return Err(format!("systemd refused to stop {unit}: {e}"));
        }
        let until = Instant::now() + GONE_WITHIN;
        loop {
            match self.proxy.get_unit(unit).await {
                Err(e) if is_no_such_unit(&e) => return Ok(()),
                Err(e) => return Err(format!("asking systemd about {unit}: {e}")),
                Ok(_) if Instant::now() >= until => {
                    return Err(format!(
                        "{unit} was stopped but systemd still has it after {GONE_WITHIN:?}"
                    ))
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Creates and starts the timer (and its service) for `w`.
    async fn create(&self, w: &Wanted, exe: &str) -> Result<(), String> {
        let timer = w.timer();
        let service = w.service();
        let desc = format!("layerd {} of pool {} ({})", w.kind, w.pool, w.calendar);
        let timer_props: Vec<(&str, Value<'_>)> = vec![
            ("Description", Value::from(desc.as_str())),
            ("OnCalendar", Value::from(w.calendar.as_str())),
            ("Persistent", Value::from(true)),
            ("RandomizedDelayUSec", Value::from(RANDOMIZED_DELAY_USEC)),
        ];
        let argv = vec![
            exe.to_string(),
            "job".to_string(),
            w.kind.to_string(),
            w.pool.clone(),
        ];
        let exec: Vec<(String, Vec<String>, bool)> = vec![(exe.to_string(), argv, false)];
        let service_desc = format!("layerd {} of pool {}", w.kind, w.pool);
        let service_props: Vec<(&str, Value<'_>)> = vec![
            ("Description", Value::from(service_desc.as_str())),
            ("Type", Value::from("oneshot")),
            ("ExecStart", Value::from(exec)),
            // The job needs the daemon; D-Bus activation starts it.
            ("After", Value::from(vec!["layerd.service"])),
        ];
        // A service still running from before (a job the old timer
        // started while the daemon restarted) keeps its unit: the new
        // timer triggers that one, same ExecStart, instead of a second.
        let aux = match self.proxy.get_unit(&service).await {
            Ok(_) => {
                tracing::info!(unit = %service, "the timer's service is still loaded (a job is running); reusing it");
                vec![]
            }
            Err(_) => vec![(service.as_str(), service_props)],
        };
        self.proxy
            .start_transient_unit(&timer, "replace", timer_props, aux)
            .await
            .map_err(|e| format!("systemd refused {timer}: {e}"))?;
        Ok(())
    }
}

fn is_no_such_unit(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _)
        if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit")
}

/// Makes systemd's timers match `wanted`: stops ours that are not
/// wanted, re-creates the wanted ones. Returns each wanted timer's result
/// and the units removed.
pub async fn sync(
    mgr: &Manager,
    wanted: &[Wanted],
    exe: &str,
) -> (Vec<(Wanted, Result<(), String>)>, Vec<String>) {
    let mut removed = Vec::new();
    match mgr.our_timers().await {
        Ok(existing) => {
            for unit in existing {
                let keep = wanted.iter().any(|w| w.timer() == unit);
                match mgr.stop_and_forget(&unit).await {
                    Ok(()) if !keep => {
                        tracing::info!(unit = %unit, "maintenance timer removed: no longer configured");
                        removed.push(unit);
                    }
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(unit = %unit, error = %e, "cannot stop a maintenance timer")
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list layerd's timers in systemd"),
    }
    let mut results = Vec::with_capacity(wanted.len());
    for w in wanted {
        let r = mgr.create(w, exe).await;
        match &r {
            Ok(()) => tracing::info!(
                pool = %w.pool,
                operation = w.kind,
                calendar = %w.calendar,
                unit = %w.timer(),
                "maintenance timer scheduled"
            ),
            Err(e) => tracing::warn!(
                pool = %w.pool,
                operation = w.kind,
                calendar = %w.calendar,
                error = %e,
                "maintenance timer not scheduled"
            ),
        }
        results.push((w.clone(), r));
    }
    (results, removed)
}
