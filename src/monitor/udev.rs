//! udev: block-device events for the devices under the pools (libudev
//! through the `udev` crate). A `change` (a resize: LOOP_SET_CAPACITY, a
//! rescanned disk, a grown LV) lets the engine take up the new size; a
//! `remove` (a disk unplugged or deleted) fails the pool.
//!
//! Events come from udevd's netlink group, i.e. after udevd ran its rules,
//! so device links are settled. Where no udevd runs (no
//! `/run/udev/control`: containers, the host test tier) libudev would
//! quietly deliver nothing, so the kernel's own uevents are read instead:
//! the same devices, the same actions.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::Engine;
use crate::shared::device::BackingDevice;

/// How often the thread also looks at every watched device without an
/// event: a lost event (socket overrun) must not hide a vanished device.
const RECHECK_EVERY: Duration = Duration::from_secs(60);

/// Starts the watch thread if any pool sits on block devices. It ends with
/// the process.
pub fn watch(engine: Arc<Engine>) {
    let devices = engine.backing_devices();
    if devices.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("udev".into())
        .spawn(move || run(engine, devices));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the udev thread; backing devices are not watched");
    }
}

fn open() -> std::io::Result<(udev::MonitorSocket, &'static str)> {
    let (builder, source) = if Path::new("/run/udev/control").exists() {
        (udev::MonitorBuilder::new()?, "udev")
    } else {
        (udev::MonitorBuilder::new_kernel()?, "kernel")
    };
    Ok((builder.match_subsystem("block")?.listen()?, source))
}

fn run(engine: Arc<Engine>, devices: Vec<(String, BackingDevice)>) {
    let (socket, source) = match open() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for udev events; backing devices are not watched");
            return;
        }
    };
    let mut by_devno: HashMap<(u32, u32), Vec<&(String, BackingDevice)>> = HashMap::new();
    for d in &devices {
        by_devno.entry((d.1.major, d.1.minor)).or_default().push(d);
        tracing::info!(pool = %d.0, device = %d.1.name, role = d.1.role, source, "watching backing device");
    }
    // Listening now: whatever changed before is caught by one full look.
    check_all(&engine, &devices);
    let mut last_full = Instant::now();
    loop {
        let ms = RECHECK_EVERY.as_millis() as i32;
        let mut pfd = libc::pollfd {
            fd: socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                tracing::warn!(error = %e, "waiting for udev events failed; backing devices are no longer watched");
                return;
            }
            continue;
        }
        for event in socket.iter() {
            let Some(devnum) = event.device().devnum() else {
                continue;
            };
            let key = (libc::major(devnum), libc::minor(devnum));
            let Some(watched) = by_devno.get(&key) else {
                continue;
            };
            let t = Instant::now();
            let action = event.event_type();
            for (pool, dev) in watched.iter().map(|w| (&w.0, &w.1)) {
                match action {
                    udev::EventType::Remove => engine.backing_removed(pool, dev),
                    udev::EventType::Change | udev::EventType::Add => {
                        engine.backing_changed(pool, dev);
                    }
                    _ => continue,
                }
                tracing::info!(
                    pool = %pool,
                    device = %dev.name,
                    action = %action,
                    elapsed_us = t.elapsed().as_micros() as u64,
                    "udev event on a backing device handled"
                );
            }
        }
        if last_full.elapsed() >= RECHECK_EVERY {
            check_all(&engine, &devices);
            last_full = Instant::now();
        }
    }
}

fn check_all(engine: &Engine, devices: &[(String, BackingDevice)]) {
    for (pool, dev) in devices {
        engine.backing_changed(pool, dev);
    }
}
