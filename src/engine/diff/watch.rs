//! The caller's descriptor of an Apply or Export, watched so that the call
//! always ends. A blocking `read(2)` on a pipe whose writer stays open (or
//! an eventfd) never returns, and a `write(2)` into a pipe nobody reads
//! neither: the thread would be stuck for good, its layer Busy, and the
//! daemon unable to stop. So the descriptor is made non-blocking for the
//! call (its flags are restored after) and every wait is a `poll(2)` on it
//! and on the call's [`Cancel`] eventfd, bounded by the idle timeout
//! (`[daemon] diff_idle_timeout`). The D-Bus adapter cancels a call whose
//! caller left the bus; the daemon cancels every call on SIGTERM
//! ([`Registry::stop_all`]). Nothing kills a thread: the call sees an
//! error from its reader or writer, unwinds as for broken input, and the
//! engine reports why it stopped ([`Stopped`]).

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::fs::OFlags;

/// `[daemon] diff_idle_timeout` default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a watched call stopped before its descriptor ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    /// The caller's connection left the bus.
    CallerLeft,
    /// The daemon is stopping (SIGTERM).
    Shutdown,
    /// The descriptor gave (Apply) or took (Export) nothing for this long.
    Idle { timeout: Duration, write: bool },
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stopped::CallerLeft => {
                f.write_str("the caller left the bus while the call was running")
            }
            Stopped::Shutdown => f.write_str("the daemon is stopping (SIGTERM)"),
            Stopped::Idle { timeout, write } => write!(
                f,
                "the descriptor {} for {} (daemon.diff_idle_timeout)",
                if *write {
                    "took no data"
                } else {
                    "gave no data"
                },
                show_duration(*timeout)
            ),
        }
    }
}

/// `1s`, `90s`, `1500ms`: as the config spells durations.
pub fn show_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

struct CancelInner {
    why: Mutex<Option<Stopped>>,
    /// Readable once cancelled: wakes the call's poll.
    efd: OwnedFd,
}

/// Cancels one watched call; cheap to clone (the D-Bus adapter keeps one,
/// the registry a weak one, the reader or writer another).
#[derive(Clone)]
pub struct Cancel(Arc<CancelInner>);

impl Cancel {
    pub fn new() -> io::Result<Cancel> {
        let efd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?;
        Ok(Cancel(Arc::new(CancelInner {
            why: Mutex::new(None),
            efd,
        })))
    }

    /// Stops the call (the first reason wins).
    pub fn cancel(&self, why: Stopped) {
        let mut w = self.0.why.lock().unwrap_or_else(|p| p.into_inner());
        if w.is_none() {
            *w = Some(why);
            let _ = rustix::io::write(&self.0.efd, &1u64.to_ne_bytes());
        }
    }

    /// Why the call was stopped, if it was.
    pub fn reason(&self) -> Option<Stopped> {
        self.0.why.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The running watched calls, for SIGTERM; and the idle timeout.
pub struct Registry {
    calls: Mutex<Vec<Weak<CancelInner>>>,
    stopping: AtomicBool,
    idle_ms: AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            calls: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            idle_ms: AtomicU64::new(DEFAULT_IDLE_TIMEOUT.as_millis() as u64),
        }
    }
}

impl Registry {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_ms.load(Ordering::Relaxed))
    }

    pub fn set_idle_timeout(&self, d: Duration) {
        self.idle_ms
            .store((d.as_millis() as u64).max(1), Ordering::Relaxed);
    }

    /// Adds a call; once the daemon is stopping it is cancelled at once.
    pub fn register(&self, c: &Cancel) {
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        calls.retain(|w| w.strong_count() > 0);
        calls.push(Arc::downgrade(&c.0));
        drop(calls);
        if self.stopping.load(Ordering::SeqCst) {
            c.cancel(Stopped::Shutdown);
        }
    }

    /// Cancels every running call and every later one.
    pub fn stop_all(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let calls = std::mem::take(&mut *self.calls.lock().unwrap_or_else(|p| p.into_inner()));
        for c in calls.iter().filter_map(Weak::upgrade) {
            Cancel(c).cancel(Stopped::Shutdown);
        }
    }
}

/// The caller's descriptor, non-blocking for the call, every wait bounded
/// by the idle timeout and the call's [`Cancel`].
pub struct Watched {
    file: File,
    cancel: Cancel,
    idle: Duration,
    /// The descriptor's flags before the call.
    flags: Option<OFlags>,
}

impl Watched {
    pub fn new(fd: OwnedFd, cancel: Cancel, idle: Duration) -> io::Result<Watched> {
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        let mut w = Watched {
            file: File::from(fd),
            cancel,
            idle,
            flags: None,
        };
        if !flags.contains(OFlags::NONBLOCK) {
            rustix::fs::fcntl_setfl(&w.file, flags | OFlags::NONBLOCK)?;
            w.flags = Some(flags);
        }
        Ok(w)
    }

    fn stopped(why: Stopped) -> io::Error {
        // Never Interrupted: readers retry on that.
        let kind = match why {
            Stopped::Idle { .. } => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, why.to_string())
    }

    /// Waits until the descriptor is ready for `write` (else reading).
    fn wait(&self, write: bool) -> io::Result<()> {
        let until = Instant::now() + self.idle;
        loop {
            if let Some(why) = self.cancel.reason() {
                return Err(Self::stopped(why));
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let why = Stopped::Idle {
                    timeout: self.idle,
                    write,
                };
                self.cancel.cancel(why.clone());
                return Err(Self::stopped(self.cancel.reason().unwrap_or(why)));
            }
            let ev = if write { PollFlags::OUT } else { PollFlags::IN };
            let mut fds = [
                PollFd::new(&self.file, ev),
                PollFd::new(&self.cancel.0.efd, PollFlags::IN),
            ];
            let timeout = rustix::event::Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: left.subsec_nanos() as _,
            };
            match rustix::event::poll(&mut fds, Some(&timeout)) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            // Readable, writable, hung up or in error: the next read or
            // write tells which.
            if !fds[0].revents().is_empty() {
                return Ok(());
            }
        }
    }
}

impl AsFd for Watched {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Read for Watched {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(why) = self.cancel.reason() {
                return Err(Self::stopped(why));
            }
            match self.file.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(false)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }
}

impl Write for Watched {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            if let Some(why) = self.cancel.reason() {
                return Err(Self::stopped(why));
            }
            match self.file.write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(true)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        // The open file description is shared with the caller: leave it
        // blocking again if it was.
        if let Some(flags) = self.flags {
            let _ = rustix::fs::fcntl_setfl(&self.file, flags);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe().unwrap()
    }

    #[test]
    fn a_silent_reader_ends_after_the_idle_timeout() {
        let (rd, wr) = pipe();
        let c = Cancel::new().unwrap();
        let mut w = Watched::new(rd, c.clone(), Duration::from_millis(200)).unwrap();
        let t = Instant::now();
        let e = w.read(&mut [0u8; 16]).unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(e.to_string().contains("diff_idle_timeout"), "{e}");
        assert!(matches!(
            c.reason(),
            Some(Stopped::Idle { write: false, .. })
        ));
        drop(wr);
    }

    #[test]
    fn cancel_wakes_a_blocked_writer_and_flags_come_back() {
        let (rd, wr) = pipe();
        let before = rustix::fs::fcntl_getfl(&wr).unwrap();
        let keep = wr.try_clone().unwrap();
        let c = Cancel::new().unwrap();
        let reg = Registry::default();
        reg.register(&c);
        let mut w = Watched::new(wr, c.clone(), Duration::from_secs(60)).unwrap();
        let t = std::thread::spawn(move || {
            let buf = vec![0u8; 1 << 20];
            let r = w.write_all(&buf);
            drop(w);
            r
        });
        std::thread::sleep(Duration::from_millis(100));
        reg.stop_all();
        let e = t.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("stopping"), "{e}");
        assert_eq!(rustix::fs::fcntl_getfl(&keep).unwrap(), before);
        // Later calls are stopped at once.
        let c2 = Cancel::new().unwrap();
        reg.register(&c2);
        assert_eq!(c2.reason(), Some(Stopped::Shutdown));
        drop(rd);
    }

    #[test]
    fn data_and_end_pass_through() {
        let (rd, wr) = pipe();
        let c = Cancel::new().unwrap();
        let mut w = Watched::new(rd, c, Duration::from_secs(5)).unwrap();
        let mut wr = File::from(wr);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            wr.write_all(b"hello").unwrap();
        });
        let mut s = String::new();
        w.read_to_string(&mut s).unwrap();
        t.join().unwrap();
        assert_eq!(s, "hello");
    }
}
