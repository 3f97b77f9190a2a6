//! Usage watching. For directory pools the only signal is the file
//! system's own numbers, so the monitor samples every pool on a timer (the
//! engine also samples after operations that change space) and the engine
//! turns level changes into events; with thin pools, dm events wake it
//! too. udev.rs watches the block devices under the pools (growth taken
//! up, disappearance fails the pool).
//!
//! Starting the monitor is what lets the engine act by itself
//! ([`Engine::watch`]): a btrfs pool whose unallocated space falls below
//! its threshold gets an automatic balance at the sample that sees it
//! (engine/autobalance.rs).

mod udev;

use std::sync::Arc;
use std::time::Duration;

use crate::engine::Engine;

/// How often pools are sampled when nothing else wakes the monitor.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Samples every pool every `every` until the runtime shuts down; with
/// thin pools, also at every dm event (a pool crossing its low water mark,
/// set at the warning level, running out of space, changing mode).
pub async fn run(engine: Arc<Engine>, every: Duration) {
    engine.watch();
    if engine.has_thin() {
        watch_dm_events(engine.clone(), every);
    }
    udev::watch(engine.clone());
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let e = engine.clone();
        if tokio::task::spawn_blocking(move || e.sample_all())
            .await
            .is_err()
        {
            tracing::error!("pool sampling task failed");
        }
    }
}

/// A thread waiting on dm events (poll on /dev/mapper/control); each event
/// samples every pool at once, so Health and UsageAlert follow the kernel,
/// not the timer. It ends with the process.
fn watch_dm_events(engine: Arc<Engine>, every: Duration) {
    let events = match crate::sys::dmevent::DmEvents::open() {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "cannot wait for dm events; thin pools are sampled on the timer only");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("dm-events".into())
        .spawn(move || loop {
            match events.wait(every) {
                Ok(true) => {
                    let t = std::time::Instant::now();
                    engine.sample_all();
                    tracing::debug!(
                        elapsed_us = t.elapsed().as_micros() as u64,
                        "dm event: pools sampled"
                    );
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for dm events failed; the timer still samples");
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the dm event thread");
    }
}
