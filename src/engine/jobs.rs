//! Maintenance jobs: trim, balance and extend, generic over job kinds and
//! pools. The engine admits a job (pool exists and is usable, the driver
//! can do it, nothing conflicting runs), runs it on its own thread with a
//! [`JobControl`] the backend reports progress into and polls for cancel
//! requests, and records the outcome: in memory for the job's object, and
//! for trim and balance durably in the store as the pool's last run
//! (`LastTrim`, `LastBalance`), so it survives restarts.
//!
//! Rules:
//! - Balance and trim never run at once on one pool (DESIGN), nor two of
//!   either; a second request gets `Busy` naming the running job. Extends
//!   exclude each other only.
//! - Trim and extend cannot be cancelled (FITRIM is one uninterruptible
//!   ioctl); balance can, the backend polls `JobControl::is_cancelled`.
//! - Finished jobs stay visible (their adapters' objects too) until there
//!   are more than [`KEEP_FINISHED`] newer finished ones or they ended more
//!   than [`KEEP_FOR`] ago; then `Event::JobRemoved` tells the adapters.
//! - Job ids count from 1 per daemon run; the durable record of a job is
//!   its pool's last-run entry, not the id.
//!
//! Jobs start from D-Bus requests or from the engine itself: a btrfs pool
//! whose unallocated space fell below its threshold gets a balance through
//! the same [`Engine::start_job`] (autobalance.rs has the policy; the job
//! thread tells it how the job ended).
//!
//! Jobs run on plain threads, not the async runtime's blocking pool: a
//! balance can take hours and must not starve request handling.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::backend::{BackendError, BalanceOptions, JobControl};
use crate::engine::error::{Error, Result};
use crate::engine::store::LastRun;
use crate::engine::types::{Event, Health};
use crate::engine::{lock, Backing, Driver, Engine};
use crate::shared::time::now_us;

pub type JobId = u64;

/// How many finished jobs are kept (newest first) …
pub const KEEP_FINISHED: usize = 10;
/// … and for how long at most after they ended.
pub const KEEP_FOR: Duration = Duration::from_secs(3600);

/// The usage filters a balance pass accepts, in percent.
const MAX_USAGE: u64 = 100;

/// What a job does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobKind {
    /// Discard free space down to the storage (FITRIM).
    Trim,
    /// Rewrite nearly empty chunks (btrfs); filters default to the pool's
    /// configuration.
    Balance(BalanceRequest),
    /// Grow the pool by this many bytes.
    Extend(u64),
}

impl JobKind {
    /// The operation's name as clients see it.
    pub fn operation(&self) -> &'static str {
        match self {
            JobKind::Trim => "trim",
            JobKind::Balance(_) => "balance",
            JobKind::Extend(_) => "extend",
        }
    }

    /// Whether the running job can be asked to stop.
    pub fn cancelable(&self) -> bool {
        matches!(self, JobKind::Balance(_))
    }
}

/// Jobs of one group never run at once on one pool: trim and balance both
/// rewrite or discard the pool's free space; extends exclude each other.
fn group(operation: &str) -> u8 {
    match operation {
        "trim" | "balance" => 0,
        _ => 1,
    }
}

/// Balance filters a caller asked for; `None` = the pool's configured
/// default (`PoolSpec.balance`, from `balance_dusage`/`balance_musage`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BalanceRequest {
    pub dusage: Option<Vec<u8>>,
    pub musage: Option<Vec<u8>>,
}

impl BalanceRequest {
    /// From caller options whose values the adapter has flattened to
    /// integers (one or several per key). Keys: `dusage`, `musage`; each
    /// value a percentage 0–100; escalating passes run in the given order.
    pub fn from_options(opts: &[(String, Vec<u64>)]) -> Result<Self> {
        let mut req = BalanceRequest::default();
        for (key, values) in opts {
            let slot = match key.as_str() {
                "dusage" => &mut req.dusage,
                "musage" => &mut req.musage,
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "unknown balance option {other:?} (known: dusage, musage)"
                    )))
                }
            };
            if values.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "balance option {key:?} is empty: give one usage percentage or several"
                )));
            }
            let mut out = Vec::with_capacity(values.len());
            for v in values {
                if *v > MAX_USAGE {
                    return Err(Error::InvalidArgument(format!(
                        "balance option {key:?}: {v} is not a percentage (0–{MAX_USAGE})"
                    )));
                }
                out.push(*v as u8);
            }
            *slot = Some(out);
        }
        Ok(req)
    }

    /// The filters to run: the request's, else the pool's defaults.
    pub fn resolve(&self, defaults: &BalanceOptions) -> BalanceOptions {
        BalanceOptions {
            dusage: self
                .dusage
                .clone()
                .unwrap_or_else(|| defaults.dusage.clone()),
            musage: self
                .musage
                .clone()
                .unwrap_or_else(|| defaults.musage.clone()),
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed(String),
    /// The work could not gain anything and says why (a balance on a pool
    /// too full to relocate one chunk): a state of the pool, not a fault.
    NoGain(String),
    Cancelled,
}

impl Outcome {
    pub fn success(&self) -> bool {
        *self == Outcome::Ok
    }

    /// `ok`, `failed: <why>` or `cancelled`: the strings of LastTrim,
    /// LastBalance and the Job's Outcome property.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Ok => "ok".into(),
            Outcome::Failed(why) => format!("failed: {why}"),
            Outcome::NoGain(why) => format!("no gain: {why}"),
            Outcome::Cancelled => "cancelled".into(),
        }
    }

    /// The outcome of a job whose work failed with `e`. A balance that
    /// gets ENOSPC found no room to relocate even one chunk (btrfs needs
    /// unallocated space for the chunk it writes): the pool is full and
    /// nothing could be gained, which the admin fixes by removing layers
    /// or growing the pool, not by reading layerd's log.
    pub fn of_error(operation: &str, e: &Error) -> Outcome {
        let enospc = matches!(
            e,
            Error::Backend(BackendError::Io { source, .. })
                if source.raw_os_error() == Some(libc::ENOSPC)
        );
        if operation == "balance" && enospc {
            Outcome::NoGain(format!(
                "nothing could be gained: the pool is full, with no unallocated space left to relocate a chunk into ({e}); remove layers or grow the pool (Extend)"
            ))
        } else {
            Outcome::Failed(e.to_string())
        }
    }
}

/// A job as its adapters show it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobView {
    pub id: JobId,
    pub operation: &'static str,
    pub pool: String,
    /// 0–1, when the backend reports progress.
    pub progress: Option<f64>,
    /// Bytes so far (trimmed, relocated, added); final once ended.
    pub bytes: u64,
    /// µs since the epoch.
    pub start_time: u64,
    /// µs since the epoch; `None` while running.
    pub end_time: Option<u64>,
    pub cancelable: bool,
    /// `None` while running.
    pub outcome: Option<Outcome>,
    /// For people, once ended: bytes and duration, or why it failed (the
    /// `Completed` signal's message; kept here so a late reader gets it).
    pub message: Option<String>,
}

struct Ended {
    time: u64,
    at: Instant,
    outcome: Outcome,
    bytes: u64,
    message: String,
}

struct Entry {
    pool: String,
    operation: &'static str,
    cancelable: bool,
    ctl: Arc<JobControl>,
    start_time: u64,
    ended: Option<Ended>,
}

impl Entry {
    fn view(&self, id: JobId) -> JobView {
        JobView {
            id,
            operation: self.operation,
            pool: self.pool.clone(),
            progress: self.ctl.progress(),
            bytes: self
                .ended
                .as_ref()
                .map(|e| e.bytes)
                .unwrap_or_else(|| self.ctl.bytes()),
            start_time: self.start_time,
            end_time: self.ended.as_ref().map(|e| e.time),
            cancelable: self.cancelable,
            outcome: self.ended.as_ref().map(|e| e.outcome.clone()),
            message: self.ended.as_ref().map(|e| e.message.clone()),
        }
    }
}

/// The job registry: admission, state, cancel requests, forgetting.
#[derive(Default)]
pub(crate) struct Jobs {
    inner: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    last_id: JobId,
    jobs: BTreeMap<JobId, Entry>,
}

impl Jobs {
    /// Registers a new running job unless a conflicting one runs on the
    /// same pool.
    fn admit(&self, pool: &str, kind: &JobKind) -> Result<(JobId, Arc<JobControl>)> {
        let mut reg = lock(&self.inner);
        let op = kind.operation();
        if let Some((id, e)) = reg
            .jobs
            .iter()
            .find(|(_, e)| e.ended.is_none() && e.pool == pool && group(e.operation) == group(op))
        {
            let why = if group(op) == 0 {
                "balance and trim never run at once on one pool"
            } else {
                "one extend at a time"
            };
            return Err(Error::PoolBusy {
                pool: pool.to_string(),
                why: format!(
                    "{} job {id} is running on it ({why}); try again when it has completed",
                    e.operation
                ),
            });
        }
        reg.last_id += 1;
        let id = reg.last_id;
        let ctl = Arc::new(JobControl::default());
        reg.jobs.insert(
            id,
            Entry {
                pool: pool.to_string(),
                operation: op,
                cancelable: kind.cancelable(),
                ctl: ctl.clone(),
                start_time: now_us(),
                ended: None,
            },
        );
        Ok((id, ctl))
    }

    /// Whether a trim or balance runs on `pool`.
    pub(crate) fn busy(&self, pool: &str) -> bool {
        lock(&self.inner)
            .jobs
            .values()
            .any(|e| e.ended.is_none() && e.pool == pool && group(e.operation) == 0)
    }

    /// Forgets a job that never started (its thread could not be spawned).
    fn withdraw(&self, id: JobId) {
        lock(&self.inner).jobs.remove(&id);
    }

    fn finish(&self, id: JobId, outcome: Outcome, bytes: u64, message: String) -> Option<JobView> {
        let mut reg = lock(&self.inner);
        let e = reg.jobs.get_mut(&id)?;
        if outcome.success() {
            e.ctl.set_progress(1.0);
        }
        e.ctl.set_bytes(bytes);
        e.ended = Some(Ended {
            time: now_us(),
            at: Instant::now(),
            outcome,
            bytes,
            message,
        });
        Some(e.view(id))
    }

    fn view(&self, id: JobId) -> Result<JobView> {
        lock(&self.inner)
            .jobs
            .get(&id)
            .map(|e| e.view(id))
            .ok_or(Error::JobNotFound(id))
    }

    fn list(&self) -> Vec<JobView> {
        lock(&self.inner)
            .jobs
            .iter()
            .map(|(id, e)| e.view(*id))
            .collect()
    }

    fn cancel(&self, id: JobId) -> Result<JobView> {
        let reg = lock(&self.inner);
        let e = reg.jobs.get(&id).ok_or(Error::JobNotFound(id))?;
        if let Some(end) = &e.ended {
            return Err(Error::JobFinished {
                id,
                operation: e.operation,
                outcome: end.outcome.describe(),
            });
        }
        if !e.cancelable {
            return Err(Error::NotSupported(format!(
                "job {id} is a {}, which cannot be interrupted once started (FITRIM and growing storage run to the end); it completes by itself",
                e.operation
            )));
        }
        e.ctl.cancel();
        Ok(e.view(id))
    }

    /// Forgets finished jobs beyond the newest [`KEEP_FINISHED`] or older
    /// than [`KEEP_FOR`]; returns their ids.
    fn prune(&self, now: Instant) -> Vec<JobId> {
        let mut reg = lock(&self.inner);
        let mut finished: Vec<(Instant, JobId)> = reg
            .jobs
            .iter()
            .filter_map(|(id, e)| e.ended.as_ref().map(|end| (end.at, *id)))
            .collect();
        // Newest first.
        finished.sort_by(|a, b| b.cmp(a));
        let gone: Vec<JobId> = finished
            .iter()
            .enumerate()
            .filter(|(i, (at, _))| *i >= KEEP_FINISHED || now.duration_since(*at) > KEEP_FOR)
            .map(|(_, (_, id))| *id)
            .collect();
        for id in &gone {
            reg.jobs.remove(id);
        }
        gone
    }
}

/// What the job thread runs, resolved at admission.
enum Work {
    Trim,
    Balance(BalanceOptions),
    Extend(u64),
}

impl Engine {
    /// Starts a maintenance job on `pool` and returns its id at once; the
    /// work runs on its own thread. Refused with NotFound (no such pool),
    /// FailedPrecondition (pool failed or read-only), NotSupported (the
    /// driver cannot do it), InvalidArgument, or Busy (a conflicting job
    /// runs on the pool: the message names it).
    pub fn start_job(self: &Arc<Self>, pool: &str, kind: JobKind) -> Result<JobId> {
        let p = self.get_pool(pool)?;
        let backend = p.backend()?;
        let driver = p.spec.driver;
        let work = match &kind {
            JobKind::Trim => Work::Trim,
            JobKind::Balance(req) => {
                if driver != Driver::Btrfs {
                    return Err(Error::NotSupported(format!(
                        "balance is a btrfs operation; pool {pool:?} uses the {} driver",
                        driver.as_str()
                    )));
                }
                let opts = req.resolve(&p.spec.balance);
                if opts.dusage.is_empty() && opts.musage.is_empty() {
                    return Err(Error::InvalidArgument(format!(
                        "nothing to balance on pool {pool:?}: dusage and musage are both empty (in the request and in the pool's balance_dusage/balance_musage)"
                    )));
                }
                Work::Balance(opts)
            }
            JobKind::Extend(bytes) => {
                if *bytes == 0 {
                    return Err(Error::InvalidArgument(
                        "Extend needs a number of bytes to add, not 0".into(),
                    ));
                }
                if driver == Driver::Btrfs {
                    if p.spec.backing == Backing::Existing {
                        return Err(Error::NotSupported(format!(
                            "pool {pool:?} has backing \"existing\": layerd did not make its btrfs and does not grow it (only loop and device backings extend)"
                        )));
                    }
                    if p.spec.backing == Backing::Loop {
                        if let Some(max) = p.spec.thresholds.autoextend_max {
                            let now = backend.space()?.device_size.unwrap_or(0);
                            let want = now.saturating_add(*bytes);
                            if want > max {
                                return Err(Error::InvalidArgument(format!(
                                    "Extend by {bytes} bytes would grow pool {pool:?} from {now} to {want} bytes, above its maximum of {max} bytes (autoextend_max); ask for at most {} bytes or raise autoextend_max",
                                    max.saturating_sub(now)
                                )));
                            }
                        }
                    }
                    Work::Extend(*bytes)
                } else if driver == Driver::Thin {
                    if p.spec.backing != Backing::Loop {
                        return Err(Error::NotSupported(format!(
                            "pool {pool:?}: {}",
                            crate::backend::thin::not_growable(backend.backing(), backend.path())
                        )));
                    }
                    // dm-thin grows in whole pool blocks.
                    let block = p.spec.thin.as_ref().map_or(64 << 10, |t| t.block_size);
                    let add = bytes.div_ceil(block).saturating_mul(block);
                    if let Some(max) = p.spec.thresholds.autoextend_max {
                        let now = backend.space()?.data_size;
                        let want = now.saturating_add(add);
                        if want > max {
                            return Err(Error::InvalidArgument(format!(
                                "Extend by {bytes} bytes would grow pool {pool:?} from {now} to {want} bytes, above its maximum of {max} bytes (autoextend_max); ask for at most {} bytes or raise autoextend_max",
                                max.saturating_sub(now)
                            )));
                        }
                    }
                    Work::Extend(*bytes)
                } else {
                    return Err(Error::NotSupported(match driver {
                    Driver::Overlay | Driver::Vfs => format!(
                        "pool {pool:?} is a directory pool ({} driver): it has the space of the file system holding {}; grow that file system instead",
                        driver.as_str(),
                        backend.path().display()
                    ),
                    d => format!(
                        "extending a {} pool is not implemented in this build yet",
                        d.as_str()
                    ),
                }));
                }
            }
        };
        {
            let st = lock(&p.status);
            if st.health == Health::ReadOnly || st.health == Health::Failed {
                return Err(Error::PoolUnavailable {
                    pool: pool.to_string(),
                    health: st.health.as_str(),
                    reason: st.reason.clone(),
                });
            }
        }
        let (id, ctl) = self.jobs.admit(pool, &kind)?;
        let operation = kind.operation();
        let engine = self.clone();
        let pool_name = pool.to_string();
        let spawned = std::thread::Builder::new()
            .name(format!("job-{id}-{operation}"))
            .spawn(move || engine.run_job(id, &pool_name, operation, work, &ctl));
        if let Err(e) = spawned {
            self.jobs.withdraw(id);
            return Err(Error::Backend(BackendError::io(
                "start a job thread for",
                backend.path(),
                e,
            )));
        }
        tracing::info!(pool, job_id = id, operation, "job started");
        let _ = self.events.send(Event::JobStarted {
            id,
            pool: pool.to_string(),
        });
        self.prune_jobs();
        Ok(id)
    }

    /// Asks a running job to stop. NotFound, FailedPrecondition (it has
    /// finished), NotSupported (it cannot be interrupted).
    pub fn cancel_job(&self, id: JobId) -> Result<()> {
        let v = self.jobs.cancel(id)?;
        tracing::info!(
            pool = %v.pool,
            job_id = id,
            operation = v.operation,
            "job cancel requested"
        );
        Ok(())
    }

    pub fn job(&self, id: JobId) -> Result<JobView> {
        self.jobs.view(id)
    }

    /// Every job still known, running or finished.
    pub fn jobs(&self) -> Vec<JobView> {
        self.jobs.list()
    }

    /// Forgets old finished jobs (see [`KEEP_FINISHED`], [`KEEP_FOR`]) and
    /// tells the adapters. Called when jobs start and end, and on a timer
    /// by the D-Bus adapter.
    pub fn prune_jobs(&self) {
        for id in self.jobs.prune(Instant::now()) {
            tracing::debug!(job_id = id, "finished job forgotten");
            let _ = self.events.send(Event::JobRemoved(id));
        }
    }

    /// The last recorded `operation` (`trim`, `balance`) on `pool`.
    pub fn last_run(&self, pool: &str, operation: &str) -> Result<Option<LastRun>> {
        self.get_pool(pool)?;
        Ok(self.store.read(|tx| tx.last_run(pool, operation))?)
    }

    /// The job thread: work, record, tell.
    fn run_job(
        &self,
        id: JobId,
        pool: &str,
        operation: &'static str,
        work: Work,
        ctl: &JobControl,
    ) {
        // Whatever the backend logs carries the job's fields too (in the
        // journal: POOL, JOB_ID, OPERATION), so events here leave them out.
        let span = tracing::info_span!("job", pool, job_id = id, operation);
        let _enter = span.enter();
        let started = Instant::now();
        test_delay(ctl);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<u64> {
            let p = self.get_pool(pool)?;
            let b = p.backend()?;
            match &work {
                Work::Trim => Ok(b.trim(ctl)?),
                Work::Extend(bytes) => Ok(b.extend(*bytes, ctl)?),
                Work::Balance(opts) => {
                    tracing::info!(dusage = ?opts.dusage, musage = ?opts.musage, "balance filters");
                    Ok(b.balance(opts, ctl)?)
                }
            }
        }));
        let errno = match &result {
            Ok(Err(e)) => e.errno(),
            _ => None,
        };
        let (outcome, bytes) = match result {
            _ if ctl.is_cancelled() => (Outcome::Cancelled, ctl.bytes()),
            Ok(Ok(bytes)) => (Outcome::Ok, bytes),
            Ok(Err(e)) => (Outcome::of_error(operation, &e), ctl.bytes()),
            Err(_) => (
                Outcome::Failed("the job's thread panicked; see the log".into()),
                ctl.bytes(),
            ),
        };
        let duration = started.elapsed();
        if operation == "trim" || operation == "balance" {
            let run = LastRun {
                time: now_us(),
                bytes,
                outcome: outcome.describe(),
            };
            if let Err(e) = self
                .store
                .write(true, |tx| tx.set_last_run(pool, operation, &run))
            {
                tracing::error!(error = %e, "cannot record the job's outcome in the store");
            }
        }
        let message = match &outcome {
            Outcome::Ok => format!(
                "{operation} of pool {pool} done: {bytes} bytes in {:.1} s",
                duration.as_secs_f64()
            ),
            Outcome::Cancelled => format!(
                "{operation} of pool {pool} cancelled after {:.1} s ({bytes} bytes done)",
                duration.as_secs_f64()
            ),
            Outcome::Failed(why) => format!("{operation} of pool {pool} failed: {why}"),
            Outcome::NoGain(why) => format!("{operation} of pool {pool}: {why}"),
        };
        self.jobs
            .finish(id, outcome.clone(), bytes, message.clone());
        self.auto_balance_done(pool, id, &outcome, bytes);
        let duration_ms = duration.as_millis() as u64;
        match &outcome {
            Outcome::Failed(why) => tracing::warn!(
                bytes,
                errno,
                duration_ms,
                error = %why,
                "job failed"
            ),
            o => tracing::info!(
                bytes,
                duration_ms,
                outcome = %o.describe(),
                "job finished"
            ),
        }
        let _ = self.sample(pool, false);
        let _ = self.events.send(Event::JobCompleted {
            id,
            pool: pool.to_string(),
            operation,
            success: outcome.success(),
            message,
        });
        self.prune_jobs();
    }
}

/// Test-only: with the `fault-injection` feature, `LAYERD_TEST_JOB_DELAY_MS`
/// makes every job wait that long (cancelable) before its real work, so
/// tests can see a job running and collide with it deterministically.
#[cfg(feature = "fault-injection")]
fn test_delay(ctl: &JobControl) {
    let Some(ms) = std::env::var("LAYERD_TEST_JOB_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    tracing::warn!(ms, "fault injection: delaying the job");
    let until = Instant::now() + Duration::from_millis(ms);
    while !ctl.is_cancelled() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::sleep(left.min(Duration::from_millis(20)));
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
fn test_delay(_ctl: &JobControl) {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::error::ErrorKind;

    fn balance() -> JobKind {
        JobKind::Balance(BalanceRequest::default())
    }

    #[test]
    fn trim_and_balance_exclude_each_other_per_pool() {
        let jobs = Jobs::default();
        let (t, _) = jobs.admit("main", &JobKind::Trim).unwrap();
        for kind in [JobKind::Trim, balance()] {
            let e = jobs.admit("main", &kind).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
            let msg = e.to_string();
            assert!(msg.contains(&format!("trim job {t}")), "{msg}");
            assert!(msg.contains("\"main\""), "{msg}");
        }
        // Another pool, and a different group on this one, are free.
        jobs.admit("other", &balance()).unwrap();
        jobs.admit("main", &JobKind::Extend(1)).unwrap();
        assert_eq!(
            jobs.admit("main", &JobKind::Extend(1)).unwrap_err().kind(),
            ErrorKind::Busy
        );
        // Once the trim ends, a balance may run.
        jobs.finish(t, Outcome::Ok, 5, String::new());
        jobs.admit("main", &balance()).unwrap();
    }

    #[test]
    fn cancel_rules() {
        let jobs = Jobs::default();
        let (t, _) = jobs.admit("main", &JobKind::Trim).unwrap();
        assert_eq!(jobs.cancel(t).unwrap_err().kind(), ErrorKind::NotSupported);
        jobs.finish(t, Outcome::Ok, 7, String::new());
        let e = jobs.cancel(t).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
        assert!(e.to_string().contains("ok"), "{e}");
        assert_eq!(jobs.cancel(999).unwrap_err().kind(), ErrorKind::NotFound);

        let (b, ctl) = jobs.admit("main", &balance()).unwrap();
        assert!(!ctl.is_cancelled());
        jobs.cancel(b).unwrap();
        assert!(ctl.is_cancelled());
    }

    #[test]
    fn views_follow_the_control_then_freeze() {
        let jobs = Jobs::default();
        let (id, ctl) = jobs.admit("main", &balance()).unwrap();
        let v = jobs.view(id).unwrap();
        assert_eq!((v.operation, v.pool.as_str()), ("balance", "main"));
        assert!(v.cancelable && v.outcome.is_none() && v.end_time.is_none());
        assert_eq!(v.progress, None);
        ctl.set_progress(0.25);
        ctl.set_bytes(100);
        let v = jobs.view(id).unwrap();
        assert_eq!((v.progress, v.bytes), (Some(0.25), 100));
        let v = jobs.finish(id, Outcome::Ok, 400, String::new()).unwrap();
        assert_eq!((v.progress, v.bytes), (Some(1.0), 400));
        assert!(v.end_time.unwrap() >= v.start_time);
        assert_eq!(v.outcome, Some(Outcome::Ok));
    }

    #[test]
    fn prune_keeps_ten_newest_finished_and_running_ones() {
        let jobs = Jobs::default();
        let (running, _) = jobs.admit("p", &JobKind::Trim).unwrap();
        let mut done = Vec::new();
        for i in 0..13 {
            let (id, _) = jobs.admit(&format!("q{i}"), &JobKind::Trim).unwrap();
            jobs.finish(id, Outcome::Ok, 0, String::new());
            done.push(id);
            std::thread::sleep(Duration::from_millis(2));
        }
        let gone = jobs.prune(Instant::now());
        let mut gone_sorted = gone.clone();
        gone_sorted.sort();
        assert_eq!(gone_sorted, done[..3].to_vec());
        assert!(jobs.view(running).is_ok());
        assert_eq!(jobs.list().len(), 1 + KEEP_FINISHED);
        // An hour later every finished one goes; the running one stays.
        let later = Instant::now() + KEEP_FOR + Duration::from_secs(1);
        assert_eq!(jobs.prune(later).len(), KEEP_FINISHED);
        assert_eq!(jobs.list().len(), 1);
    }

    #[test]
    fn balance_enospc_is_no_gain() {
        let io = |errno| {
            Error::Backend(BackendError::io(
                "balance metadata chunks",
                std::path::Path::new("/p"),
                std::io::Error::from_raw_os_error(errno),
            ))
        };
        match Outcome::of_error("balance", &io(libc::ENOSPC)) {
            Outcome::NoGain(m) => {
                assert!(m.contains("nothing could be gained"), "{m}");
                assert!(m.contains("remove layers or grow the pool"), "{m}");
            }
            o => panic!("ENOSPC in a balance is no gain, got {o:?}"),
        }
        assert!(!Outcome::of_error("balance", &io(libc::ENOSPC)).success());
        assert!(Outcome::of_error("balance", &io(libc::ENOSPC))
            .describe()
            .starts_with("no gain: "));
        // Other errors, and ENOSPC elsewhere, stay failures.
        assert!(matches!(
            Outcome::of_error("balance", &io(libc::EIO)),
            Outcome::Failed(_)
        ));
        assert!(matches!(
            Outcome::of_error("trim", &io(libc::ENOSPC)),
            Outcome::Failed(_)
        ));
    }

    #[test]
    fn balance_options() {
        let o = |k: &str, v: &[u64]| (k.to_string(), v.to_vec());
        let r =
            BalanceRequest::from_options(&[o("dusage", &[0, 5, 10]), o("musage", &[3])]).unwrap();
        assert_eq!(r.dusage, Some(vec![0, 5, 10]));
        assert_eq!(r.musage, Some(vec![3]));
        let defaults = BalanceOptions {
            dusage: vec![0, 5, 10],
            musage: vec![0, 5],
        };
        let only_m = BalanceRequest::from_options(&[o("musage", &[7])]).unwrap();
        assert_eq!(
            only_m.resolve(&defaults),
            BalanceOptions {
                dusage: vec![0, 5, 10],
                musage: vec![7]
            }
        );
        assert_eq!(BalanceRequest::default().resolve(&defaults), defaults);

        let e = BalanceRequest::from_options(&[o("dusage", &[1]), o("limit", &[1])]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("\"limit\""), "{e}");
        let e = BalanceRequest::from_options(&[o("dusage", &[101])]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("101"), "{e}");
        let e = BalanceRequest::from_options(&[o("musage", &[])]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn outcome_strings() {
        assert_eq!(Outcome::Ok.describe(), "ok");
        assert_eq!(Outcome::Cancelled.describe(), "cancelled");
        assert_eq!(Outcome::Failed("EIO".into()).describe(), "failed: EIO");
        assert!(Outcome::Ok.success() && !Outcome::Cancelled.success());
    }
}
