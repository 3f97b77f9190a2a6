//! `layerd job <trim|balance> <pool>`: what a maintenance timer's service
//! runs. It asks the daemon over D-Bus (system bus, or --bus-address) to
//! start the job, waits for the job's `Completed`, prints its message and
//! exits 0 on success, 1 when the job failed or could not start (Busy
//! included: trim and balance never overlap on a pool), 2 on bad usage.
//! The daemon records the outcome itself (the pool's LastTrim,
//! LastBalance), so nothing here writes state.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use zbus::zvariant::OwnedObjectPath;
use zbus::{Connection, MatchRule, MessageStream};

use crate::dbus::client::{JobProxy, PoolProxy};

/// How often the job's Outcome is re-read while waiting for the signal:
/// covers a daemon that went away (the job object then vanishes).
const POLL_EVERY: Duration = Duration::from_secs(30);

pub const USAGE: &str = "usage: layerd job <trim|balance> <pool> [--bus-address ADDRESS]";

/// Parses `job` arguments (after the word `job`) and runs the client.
pub fn main(args: &[String]) -> std::process::ExitCode {
    use std::process::ExitCode;
    let mut positional = Vec::new();
    let mut bus = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bus-address" => match it.next() {
                Some(v) => bus = Some(v.clone()),
                None => {
                    eprintln!("layerd job: --bus-address needs an address\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            _ => positional.push(a.clone()),
        }
    }
    let [kind, pool] = positional.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if !super::KINDS.contains(&kind.as_str()) {
        eprintln!("layerd job: unknown job kind {kind:?} (known: trim, balance)\n{USAGE}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("layerd job: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(kind, pool, bus.as_deref())) {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("layerd job: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Starts `kind` on `pool` and waits: Ok(message) on success, Err(why).
pub async fn run(kind: &str, pool: &str, bus: Option<&str>) -> Result<String, String> {
    let conn = match bus {
        Some(a) => {
            zbus::connection::Builder::address(a)
                .map_err(|e| format!("bad bus address {a:?}: {e}"))?
                .build()
                .await
        }
        None => Connection::system().await,
    }
    .map_err(|e| format!("cannot connect to D-Bus: {e}"))?;
    // Subscribe before starting: a short job may complete before the
    // reply to Trim/Balance reaches us.
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("org.layerd.Layerd1.Job")
        .and_then(|b| b.member("Completed"))
        .map_err(|e| format!("match rule: {e}"))?
        .build();
    let mut signals = MessageStream::for_match_rule(rule, &conn, None)
        .await
        .map_err(|e| format!("cannot subscribe to job signals: {e}"))?;
    let pool_path = format!("/org/layerd/Layerd1/pools/{pool}");
    let p = PoolProxy::builder(&conn)
        .path(pool_path.as_str())
        .map_err(|e| format!("pool {pool:?}: {e}"))?
        .build()
        .await
        .map_err(|e| format!("pool {pool:?}: {e}"))?;
    let started: zbus::Result<OwnedObjectPath> = match kind {
        "trim" => p.trim().await,
        _ => p.balance(HashMap::new()).await,
    };
    let job = started.map_err(|e| format!("cannot start {kind} of pool {pool}: {}", show(&e)))?;
    let j = JobProxy::builder(&conn)
        .path(job.clone())
        .map_err(|e| format!("job {job}: {e}"))?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .map_err(|e| format!("job {job}: {e}"))?;
    // The signal carries the daemon's message; the property is the fallback.
    let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + POLL_EVERY, POLL_EVERY);
    loop {
        tokio::select! {
            msg = signals.next() => {
                let Some(Ok(msg)) = msg else {
                    return Err("the D-Bus connection closed while waiting for the job".into());
                };
                let hdr = msg.header();
                if hdr.path().map(|p| p.as_str()) != Some(job.as_str()) {
                    continue;
                }
                let (success, message): (bool, String) = msg
                    .body()
                    .deserialize()
                    .map_err(|e| format!("malformed Completed signal: {e}"))?;
                return if success { Ok(message) } else { Err(message) };
            }
            _ = poll.tick() => {
                // The signal may have gone out before we listened, or the
                // daemon may be gone: the Outcome property tells.
                match j.outcome().await {
                    Ok(o) if o.is_empty() => {}
                    Ok(o) if o == "ok" => return Ok(format!("{kind} of pool {pool}: ok")),
                    Ok(o) => return Err(format!("{kind} of pool {pool}: {o}")),
                    Err(e) => return Err(format!(
                        "job {job} can no longer be read (did the daemon restart?): {}", show(&e)
                    )),
                }
            }
        }
    }
}

/// A D-Bus error as "Name: message".
fn show(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, Some(msg), _) => format!("{name}: {msg}"),
        other => other.to_string(),
    }
}
