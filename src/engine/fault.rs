//! Test-only fault points. With the `fault-injection` feature, setting
//! `LAYERD_TEST_FAULT=<point>` makes the daemon SIGKILL itself when it
//! reaches that point, so the recovery tests can prove what start-up
//! reconciliation does with each half-done step. Without the feature this
//! compiles to nothing.

/// The points, in the order an operation passes them.
pub const POINTS: &[&str] = &[
    "prepare-intent",
    "prepare-backend",
    "commit-intent",
    "commit-backend",
    "remove-intent",
    "remove-backend",
];

#[cfg(feature = "fault-injection")]
pub fn hit(point: &str) {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("LAYERD_TEST_FAULT").ok());
    if armed.as_deref() == Some(point) {
        tracing::warn!(point, "fault injection: killing the daemon");
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn hit(_point: &str) {}
