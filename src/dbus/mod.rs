//! The D-Bus adapter: the only module that knows D-Bus. It registers the
//! objects, turns requests into engine calls (manager.rs, pool.rs,
//! job.rs), engine errors into stable error names (error.rs), and engine
//! events into signals (here; plus one UsageAlert at start-up for each
//! pool that is not ok, whose level was set before the bus was up). Job
//! objects come and go with their jobs, also those the engine starts by
//! itself (the automatic balance): exported when a job starts, removed
//! when the engine forgets it (see engine/jobs.rs: the ten newest
//! finished jobs are kept, none longer than an hour).

pub mod access;
mod caller;
pub mod client;
pub mod error;
pub mod job;
pub mod manager;
pub mod pool;

use std::collections::HashMap;
use std::sync::Arc;

use zbus::fdo::{ObjectManager, Properties};
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{OwnedObjectPath, Value};
use zbus::{connection, Connection};

use crate::engine::types::Event;
use crate::engine::{Engine, PoolView};
use error::DbusError;

pub const BUS_NAME: &str = "org.layerd.Layerd1";
pub const ROOT_PATH: &str = "/org/layerd/Layerd1";

/// Object path of a pool. Names may hold `-`, which object paths may not:
/// escape every byte outside [A-Za-z0-9] as `_xx`, as systemd does.
pub fn pool_path(name: &str) -> zbus::zvariant::Result<OwnedObjectPath> {
    let mut p = format!("{ROOT_PATH}/pools/");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() {
            p.push(b as char);
        } else {
            p.push_str(&format!("_{b:02x}"));
        }
    }
    OwnedObjectPath::try_from(p)
}

/// Runs a (blocking) engine call; a panic inside it is answered as
/// `Internal` (see engine::guard).
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, DbusError>
where
    F: FnOnce() -> crate::engine::error::Result<T> + Send + 'static,
    T: Send + 'static,
{
    match crate::engine::guard::call(f) {
        Ok(r) => r.map_err(DbusError::from),
        Err(what) => Err(DbusError::Internal(format!(
            "internal error: the request panicked ({what}); the daemon goes on serving, see its log"
        ))),
    }
}

/// Connects (system bus, or `address`), exports every object, takes the
/// bus name, and forwards engine events as signals until the engine's
/// event channel closes.
pub async fn serve(engine: Arc<Engine>, address: Option<&str>) -> zbus::Result<Connection> {
    let builder = match address {
        Some(a) => connection::Builder::address(a)?,
        None => connection::Builder::system()?,
    };
    let access = Arc::new(access::Access::default());
    let mut builder = builder.serve_at(ROOT_PATH, ObjectManager)?.serve_at(
        ROOT_PATH,
        manager::Manager {
            engine: engine.clone(),
            access: access.clone(),
        },
    )?;
    for name in engine.pool_names() {
        builder = builder.serve_at(
            pool_path(&name)?,
            pool::Pool {
                engine: engine.clone(),
                access: access.clone(),
                name,
            },
        )?;
    }
    let conn = builder.name(BUS_NAME)?.build().await?;
    // Jobs started before the bus was up (none today; the engine may start
    // some on its own later).
    for j in engine.jobs() {
        let _ = job::export(&conn, &engine, &access, j.id).await;
    }
    // Health found at start-up was computed before anyone could listen:
    // tell watchers about every pool that is not ok, once, now that the
    // name is ours (a restart must not hide a critical pool).
    for name in engine.pool_names() {
        let Ok(v) = engine.pool(&name) else { continue };
        if v.status.health == crate::engine::types::Health::Ok {
            continue;
        }
        let Ok(path) = pool_path(&name) else { continue };
        if let Ok(em) = SignalEmitter::new(&conn, path) {
            if let Err(e) = pool::Pool::usage_alert(
                &em,
                v.status.health.as_str(),
                v.status.data_percent(),
                v.status.metadata_percent(),
            )
            .await
            {
                tracing::warn!(pool = %name, error = %e, "cannot emit UsageAlert");
            }
        }
    }
    tokio::spawn(forward_events(conn.clone(), engine, access));
    Ok(conn)
}

/// How often finished jobs are checked for being old enough to forget.
const PRUNE_JOBS_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// At most one PropertiesChanged per pool in this time (level changes,
/// with their UsageAlert, go out at once).
const COALESCE: std::time::Duration = std::time::Duration::from_millis(250);

async fn forward_events(conn: Connection, engine: Arc<Engine>, access: Arc<access::Access>) {
    let mut rx = engine.subscribe();
    let mut prune = tokio::time::interval(PRUNE_JOBS_EVERY);
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: HashMap<String, PoolView> = HashMap::new();
    for name in engine.pool_names() {
        if let Ok(v) = engine.pool(&name) {
            last.insert(name, v);
        }
    }
    // Space and LayerCount change with nearly every request; one
    // PropertiesChanged per pool per COALESCE is plenty for watchers and
    // keeps signals off the request path.
    let mut pending: std::collections::BTreeSet<String> = Default::default();
    let mut flush_at: Option<tokio::time::Instant> = None;
    loop {
        let recv = tokio::select! {
            r = rx.recv() => r,
            _ = prune.tick() => {
                engine.prune_jobs();
                continue;
            }
            _ = async { tokio::time::sleep_until(flush_at.unwrap_or_else(tokio::time::Instant::now)).await }, if flush_at.is_some() => {
                flush_at = None;
                for name in std::mem::take(&mut pending) {
                    announce(&conn, &engine, &name, &mut last).await;
                }
                continue;
            }
        };
        let ev = match recv {
            Ok(ev) => ev,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(skipped = n, "event forwarder lagged; re-reading all pools");
                for name in engine.pool_names() {
                    announce(&conn, &engine, &name, &mut last).await;
                }
                continue;
            }
            Err(_) => return,
        };
        match ev {
            Event::PoolChanged(name) => {
                pending.insert(name);
                flush_at.get_or_insert_with(|| tokio::time::Instant::now() + COALESCE);
            }
            Event::UsageAlert {
                pool,
                level,
                data_percent,
                metadata_percent,
            } => {
                pending.remove(&pool);
                let Ok(path) = pool_path(&pool) else { continue };
                if let Ok(em) = SignalEmitter::new(&conn, path) {
                    if let Err(e) =
                        pool::Pool::usage_alert(&em, level.as_str(), data_percent, metadata_percent)
                            .await
                    {
                        tracing::warn!(%pool, error = %e, "cannot emit UsageAlert");
                    }
                }
                announce(&conn, &engine, &pool, &mut last).await;
            }
            Event::JobStarted { id, pool } => {
                if let Err(e) = job::export(&conn, &engine, &access, id).await {
                    tracing::warn!(%pool, job_id = id, error = %e, "cannot export the job object");
                }
            }
            Event::JobCompleted {
                pool, operation, ..
            } => announce_last_run(&conn, &engine, &pool, operation).await,
            Event::JobRemoved(id) => job::unexport(&conn, id).await,
        }
    }
}

/// PropertiesChanged for the pool's LastTrim or LastBalance after a job.
async fn announce_last_run(conn: &Connection, engine: &Engine, pool: &str, operation: &str) {
    let prop = match operation {
        "trim" => "LastTrim",
        "balance" => "LastBalance",
        _ => return,
    };
    let Ok(Some(run)) = engine.last_run(pool, operation) else {
        return;
    };
    let Ok(path) = pool_path(pool) else { return };
    let Ok(em) = SignalEmitter::new(conn, path) else {
        return;
    };
    let iface = zbus::names::InterfaceName::from_static_str_unchecked("org.layerd.Layerd1.Pool");
    let mut changed: HashMap<&str, Value<'_>> = HashMap::new();
    changed.insert(
        prop,
        Value::from(zbus::zvariant::Structure::from((
            run.time,
            run.bytes,
            run.outcome,
        ))),
    );
    if let Err(e) = Properties::properties_changed(&em, iface, changed, Default::default()).await {
        tracing::warn!(pool, error = %e, "cannot emit PropertiesChanged");
    }
}

/// One PropertiesChanged with every property that differs from the last one sent.
async fn announce(
    conn: &Connection,
    engine: &Engine,
    name: &str,
    last: &mut HashMap<String, PoolView>,
) {
    let Ok(now) = engine.pool(name) else { return };
    let prev = last.get(name);
    let mut changed: HashMap<&str, Value<'_>> = HashMap::new();
    let s = &now.status;
    let p = prev.map(|v| &v.status);
    if p.map(|p| p.health) != Some(s.health) {
        changed.insert("Health", Value::from(s.health.as_str()));
    }
    if p.map(|p| &p.reason) != Some(&s.reason) {
        changed.insert("HealthReason", Value::from(s.reason.as_str()));
    }
    for (prop, new, old) in [
        ("DataSize", s.data_size, p.map(|p| p.data_size)),
        ("DataUsed", s.data_used, p.map(|p| p.data_used)),
        ("MetadataSize", s.metadata_size, p.map(|p| p.metadata_size)),
        ("MetadataUsed", s.metadata_used, p.map(|p| p.metadata_used)),
        ("LayerCount", s.layer_count, p.map(|p| p.layer_count)),
        (
            "Unallocated",
            s.unallocated.unwrap_or(0),
            p.map(|p| p.unallocated.unwrap_or(0)),
        ),
    ] {
        if old != Some(new) {
            changed.insert(prop, Value::from(new));
        }
    }
    if !changed.is_empty() {
        if let Ok(path) = pool_path(name) {
            if let Ok(em) = SignalEmitter::new(conn, path) {
                let iface = zbus::names::InterfaceName::from_static_str_unchecked(
                    "org.layerd.Layerd1.Pool",
                );
                if let Err(e) =
                    Properties::properties_changed(&em, iface, changed, Default::default()).await
                {
                    tracing::warn!(pool = name, error = %e, "cannot emit PropertiesChanged");
                }
            }
        }
    }
    last.insert(name.to_string(), now);
}

#[cfg(test)]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_call_is_an_internal_reply() {
        let r: Result<(), _> = super::blocking(|| panic!("boom")).await;
        match r {
            Err(super::DbusError::Internal(m)) => assert!(m.contains("panicked (boom)"), "{m}"),
            other => panic!("{other:?}"),
        }
        let ok = super::blocking(|| Ok(7)).await;
        assert!(matches!(ok, Ok(7)));
    }

    #[test]
    fn pool_paths_escape_like_systemd() {
        assert_eq!(
            super::pool_path("main").unwrap().as_str(),
            "/org/layerd/Layerd1/pools/main"
        );
        assert_eq!(
            super::pool_path("fast-ssd").unwrap().as_str(),
            "/org/layerd/Layerd1/pools/fast_2dssd"
        );
        assert_eq!(
            super::pool_path("a_b").unwrap().as_str(),
            "/org/layerd/Layerd1/pools/a_5fb"
        );
    }
}
