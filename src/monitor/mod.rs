//! Usage watching. For directory pools the only signal is the file
//! system's own numbers, so the monitor samples every pool on a timer (the
//! engine also samples after operations that change space) and the engine
//! turns level changes into events. dm events and udev join here with the
//! thin and btrfs drivers.
//!
//! Starting the monitor is what lets the engine act by itself
//! ([`Engine::watch`]): a btrfs pool whose unallocated space falls below
//! its threshold gets an automatic balance at the sample that sees it
//! (engine/autobalance.rs).

use std::sync::Arc;
use std::time::Duration;

use crate::engine::Engine;

/// How often pools are sampled when nothing else wakes the monitor.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Samples every pool every `every` until the runtime shuts down.
pub async fn run(engine: Arc<Engine>, every: Duration) {
    engine.watch();
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
