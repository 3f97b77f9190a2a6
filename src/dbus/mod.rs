//! The D-Bus adapter: the only module that knows D-Bus. It registers the
//! objects, turns requests into engine calls (manager.rs, pool.rs), engine
//! errors into stable error names (error.rs), and engine events into
//! signals (here).

pub mod access;
pub mod client;
pub mod error;
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

/// Runs an engine call on a blocking thread.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, DbusError>
where
    F: FnOnce() -> crate::engine::error::Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(DbusError::from),
        Err(e) => Err(DbusError::Internal(format!("request task failed: {e}"))),
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
    let mut builder = builder.serve_at(ROOT_PATH, ObjectManager)?.serve_at(
        ROOT_PATH,
        manager::Manager {
            engine: engine.clone(),
            access: Arc::new(access::Access::default()),
        },
    )?;
    for name in engine.pool_names() {
        builder = builder.serve_at(
            pool_path(&name)?,
            pool::Pool {
                engine: engine.clone(),
                name,
            },
        )?;
    }
    let conn = builder.name(BUS_NAME)?.build().await?;
    tokio::spawn(forward_events(conn.clone(), engine));
    Ok(conn)
}

async fn forward_events(conn: Connection, engine: Arc<Engine>) {
    let mut rx = engine.subscribe();
    let mut last: HashMap<String, PoolView> = HashMap::new();
    for name in engine.pool_names() {
        if let Ok(v) = engine.pool(&name) {
            last.insert(name, v);
        }
    }
    loop {
        let ev = match rx.recv().await {
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
            Event::PoolChanged(name) => announce(&conn, &engine, &name, &mut last).await,
            Event::UsageAlert {
                pool,
                level,
                data_percent,
                metadata_percent,
            } => {
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
        }
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
