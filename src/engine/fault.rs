//! Test-only fault points. With the `fault-injection` feature, setting
//! `LAYERD_TEST_FAULT=<point>` makes the daemon SIGKILL itself when it
//! reaches that point, so the recovery tests can prove what start-up
//! reconciliation does with each half-done step. [`panic_at`] points panic
//! instead (the request path's panic handling is tested through them).
//! Without the feature this compiles to nothing.

/// The points, in the order an operation passes them.
pub const POINTS: &[&str] = &[
    "prepare-intent",
    "prepare-backend",
    "commit-intent",
    "commit-backend",
    "remove-intent",
    "remove-backend",
];

/// Points that panic rather than kill (see [`panic_at`]).
pub const PANIC_POINTS: &[&str] = &["stat-panic"];

#[cfg(feature = "fault-injection")]
fn armed() -> Option<&'static str> {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var("LAYERD_TEST_FAULT").ok())
        .as_deref()
}

#[cfg(feature = "fault-injection")]
pub fn hit(point: &str) {
    if armed() == Some(point) {
        tracing::warn!(point, "fault injection: killing the daemon");
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn hit(_point: &str) {}

/// Panics when `LAYERD_TEST_FAULT=<point>` (one of [`PANIC_POINTS`]).
#[cfg(feature = "fault-injection")]
pub fn panic_at(point: &str) {
    if armed() == Some(point) {
        panic!("fault injection: {point}");
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn panic_at(_point: &str) {}
