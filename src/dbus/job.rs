//! `org.layerd.Layerd1.Job` objects at `/org/layerd/Layerd1/jobs/<n>`, the
//! shape udisks2 and lvmdbusd users know. An object is exported when its
//! job starts (before the Pool method that started it replies, so the
//! returned path is live), follows the job with PropertiesChanged at most
//! every [`PROGRESS_EVERY`] while it runs, emits `Completed` exactly once,
//! and is removed when the engine forgets the finished job (after
//! `engine::jobs::KEEP_FINISHED` newer finished jobs or `KEEP_FOR`).
//!
//! A client that subscribes to `Completed` after the job ended has missed
//! the signal: it reads `Outcome` (and `EndTime`) instead, which stay
//! until the object goes away.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use zbus::fdo::Properties;
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{OwnedObjectPath, Value};
use zbus::{interface, Connection};

use super::access::Access;
use super::error::DbusError;
use super::ROOT_PATH;
use crate::engine::jobs::{JobId, JobView};
use crate::engine::types::Event;
use crate::engine::Engine;

pub const JOB_IFACE: &str = "org.layerd.Layerd1.Job";

/// How often a running job's Progress/Bytes are re-read and announced.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// `/org/layerd/Layerd1/jobs/<id>`.
pub fn job_path(id: JobId) -> zbus::zvariant::Result<OwnedObjectPath> {
    OwnedObjectPath::try_from(format!("{ROOT_PATH}/jobs/{id}"))
}

pub struct Job {
    pub engine: Arc<Engine>,
    pub access: Arc<Access>,
    pub id: JobId,
}

impl Job {
    fn view(&self) -> zbus::fdo::Result<JobView> {
        self.engine
            .job(self.id)
            .map_err(|e| zbus::fdo::Error::UnknownObject(e.to_string()))
    }
}

/// A maintenance job (trim, balance, extend) on one pool. Progress is
/// meaningful only while ProgressValid; Outcome is "" while running, then
/// "ok", "failed: <why>" or "cancelled" (as the pool's LastTrim and
/// LastBalance). The object goes away once ten newer jobs have finished or
/// an hour after it finished, whichever comes first.
#[interface(name = "org.layerd.Layerd1.Job")]
impl Job {
    /// Asks a running job to stop; it then completes with success false.
    /// FailedPrecondition once it has finished; NotSupported where the
    /// operation cannot be interrupted (Cancelable false: trim, extend).
    async fn cancel(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), DbusError> {
        self.access.require_root(conn, &hdr, "Cancel").await?;
        self.engine.cancel_job(self.id).map_err(DbusError::from)
    }

    /// trim, balance or extend.
    #[zbus(property(emits_changed_signal = "const"))]
    fn operation(&self) -> zbus::fdo::Result<String> {
        Ok(self.view()?.operation.to_string())
    }

    /// The name of the pool the job works on.
    #[zbus(property(emits_changed_signal = "const"))]
    fn pool(&self) -> zbus::fdo::Result<String> {
        Ok(self.view()?.pool)
    }

    /// Fraction done, 0–1 (1 after success); see ProgressValid.
    #[zbus(property)]
    fn progress(&self) -> zbus::fdo::Result<f64> {
        let v = self.view()?;
        Ok(v.progress.unwrap_or(0.0))
    }

    /// Whether Progress is known (the kernel reports none for FITRIM).
    #[zbus(property)]
    fn progress_valid(&self) -> zbus::fdo::Result<bool> {
        Ok(self.view()?.progress.is_some())
    }

    /// Bytes so far: trimmed, relocated or added; final once completed.
    /// For trim, what FITRIM reports: ext4 and btrfs the bytes discarded,
    /// xfs the size of the range it went through.
    #[zbus(property)]
    fn bytes(&self) -> zbus::fdo::Result<u64> {
        Ok(self.view()?.bytes)
    }

    /// When the job started, in µs since the epoch.
    #[zbus(property(emits_changed_signal = "const"))]
    fn start_time(&self) -> zbus::fdo::Result<u64> {
        Ok(self.view()?.start_time)
    }

    /// When the job ended, in µs since the epoch; 0 while running.
    #[zbus(property)]
    fn end_time(&self) -> zbus::fdo::Result<u64> {
        Ok(self.view()?.end_time.unwrap_or(0))
    }

    /// Whether Cancel can stop it (balance yes; trim and extend no).
    #[zbus(property(emits_changed_signal = "const"))]
    fn cancelable(&self) -> zbus::fdo::Result<bool> {
        Ok(self.view()?.cancelable)
    }

    /// "" while running; then "ok", "failed: <why>" or "cancelled".
    #[zbus(property)]
    fn outcome(&self) -> zbus::fdo::Result<String> {
        Ok(self
            .view()?
            .outcome
            .map(|o| o.describe())
            .unwrap_or_default())
    }

    /// The job ended: success, and a message for people (bytes, duration,
    /// or why it failed).
    #[zbus(signal)]
    pub async fn completed(
        emitter: &SignalEmitter<'_>,
        success: bool,
        message: &str,
    ) -> zbus::Result<()>;
}

/// Exports job `id` (once; later calls just return its path) and starts
/// the task that follows it.
pub(crate) async fn export(
    conn: &Connection,
    engine: &Arc<Engine>,
    access: &Arc<Access>,
    id: JobId,
) -> Result<OwnedObjectPath, DbusError> {
    let path = job_path(id).map_err(|e| DbusError::Internal(format!("job path: {e}")))?;
    let added = conn
        .object_server()
        .at(
            &path,
            Job {
                engine: engine.clone(),
                access: access.clone(),
                id,
            },
        )
        .await?;
    if added {
        if engine.job(id).is_err() {
            // Already forgotten (only when many jobs ended meanwhile).
            let _ = conn.object_server().remove::<Job, _>(&path).await;
        } else {
            tokio::spawn(follow(conn.clone(), engine.clone(), id, path.clone()));
        }
    }
    Ok(path)
}

/// Removes the object of a forgotten job.
pub(crate) async fn unexport(conn: &Connection, id: JobId) {
    if let Ok(path) = job_path(id) {
        if let Err(e) = conn.object_server().remove::<Job, _>(&path).await {
            tracing::debug!(job_id = id, error = %e, "job object already gone");
        }
    }
}

/// Properties whose values differ between `old` and `new`.
fn changes(old: Option<&JobView>, new: &JobView) -> HashMap<&'static str, Value<'static>> {
    let mut out = HashMap::new();
    let progress = |v: &JobView| v.progress.unwrap_or(0.0);
    if old.map(progress) != Some(progress(new)) {
        out.insert("Progress", Value::from(progress(new)));
    }
    if old.map(|o| o.progress.is_some()) != Some(new.progress.is_some()) {
        out.insert("ProgressValid", Value::from(new.progress.is_some()));
    }
    if old.map(|o| o.bytes) != Some(new.bytes) {
        out.insert("Bytes", Value::from(new.bytes));
    }
    if old.map(|o| o.end_time) != Some(new.end_time) {
        out.insert("EndTime", Value::from(new.end_time.unwrap_or(0)));
    }
    if old.map(|o| &o.outcome) != Some(&new.outcome) {
        let s = new
            .outcome
            .as_ref()
            .map(|o| o.describe())
            .unwrap_or_default();
        out.insert("Outcome", Value::from(s));
    }
    out
}

/// Follows one job until it completes: PropertiesChanged for what moved
/// (re-read every PROGRESS_EVERY), then the final values, then
/// `Completed` — exactly once.
async fn follow(conn: Connection, engine: Arc<Engine>, id: JobId, path: OwnedObjectPath) {
    let Ok(em) = SignalEmitter::new(&conn, path.clone()) else {
        return;
    };
    let iface = zbus::names::InterfaceName::from_static_str_unchecked(JOB_IFACE);
    // Subscribed before the first read: a completion after that read is
    // seen as an event, one before it in the view.
    let mut rx = engine.subscribe();
    let mut last = match engine.job(id) {
        Ok(v) => v,
        Err(_) => return,
    };
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut event_seen = false;
    // Ticks seen with the job ended but its event not yet received.
    let mut waited = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            ev = rx.recv() => match ev {
                Ok(Event::JobCompleted { id: done, .. }) if done == id => event_seen = true,
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
        let now = match engine.job(id) {
            Ok(v) => v,
            Err(_) => return,
        };
        let changed = changes(Some(&last), &now);
        if !changed.is_empty() {
            if let Err(e) =
                Properties::properties_changed(&em, iface.clone(), changed, Default::default())
                    .await
            {
                tracing::warn!(job_id = id, error = %e, "cannot emit PropertiesChanged");
            }
        }
        last = now;
        let Some(outcome) = &last.outcome else {
            continue;
        };
        // The engine records the end, samples the pool, then sends the
        // event: waiting a little for it keeps Completed after the pool's
        // new figures. The message is in the view either way (a job that
        // ended before this task subscribed sent its event unseen).
        if !event_seen && waited < 4 {
            waited += 1;
            continue;
        }
        let message = last.message.clone().unwrap_or_else(|| outcome.describe());
        if let Err(e) = Job::completed(&em, outcome.success(), &message).await {
            tracing::warn!(job_id = id, error = %e, "cannot emit Completed");
        }
        return;
    }
}
