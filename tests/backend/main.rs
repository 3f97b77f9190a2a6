//! layerd's in-process backend conformance suite: the `Backend` trait
//! driven directly, per driver, as containerd's `SnapshotterSuite` drives a
//! Snapshotter. The D-Bus suite (tests/conformance/) covers the adapter and
//! the engine through the daemon; this one covers each driver, faster (no
//! bus, no daemon, no store).
//!
//! Each scenario is one `fn(&mut Pool)` in a module by subject; the
//! `for_each_scenario!` list below generates one `#[test]` per
//! (driver × scenario), named `<driver>::<scenario>`, each with its own
//! pool, so they run in parallel. Overlay and vfs run on a loop-backed xfs,
//! btrfs on its own loop image; thin needs device-mapper: its tests are
//! `#[ignore]`d on the host and run in the kernel-tier VM
//! (`scripts/test-kernel.sh backend --ignored thin::`).
//!
//! Needs root (loop devices, mkfs, mount).

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod layers;
mod pool;
mod space;
mod storage;

/// Where the layer kind comes from (one line to change if it moves).
pub use layerd::engine::types::Kind;

/// Every scenario, by name, for the generated tests.
mod scenarios {
    pub use super::layers::*;
    pub use super::space::*;
    pub use super::storage::*;
}

/// Calls `$m!(… [every scenario])`.
macro_rules! for_each_scenario {
    ($m:ident!($($pre:tt)*)) => {
        $m!($($pre)* [
            write_through_mounts,
            child_sees_committed_parent,
            view_is_read_only,
            remove_discard_purge,
            errors,
            scan_reports_what_exists,
            quarantine_moves_out,
            token_round_trip,
            diff_tree_kind,
            max_depth,
            usage_grows,
            space_is_sane,
            trim_idle_pool,
            limit_size,
        ]);
    };
}

/// One module per driver, one test per scenario; `kernel` marks a driver
/// that runs in the kernel-tier VM only.
macro_rules! driver_tests {
    ($driver:ident => $module:ident, [$($scenario:ident),* $(,)?]) => {
        mod $module {
            $(
                #[test]
                fn $scenario() {
                    crate::run(crate::pool::Driver::$driver, crate::scenarios::$scenario);
                }
            )*
        }
    };
    (kernel $driver:ident => $module:ident, [$($scenario:ident),* $(,)?]) => {
        mod $module {
            $(
                #[test]
                #[ignore = "kernel tier: runs in the VM (scripts/test-kernel.sh)"]
                fn $scenario() {
                    crate::run(crate::pool::Driver::$driver, crate::scenarios::$scenario);
                }
            )*
        }
    };
}

fn run(driver: pool::Driver, scenario: fn(&mut pool::Pool)) {
    if let Some(mut p) = pool::Pool::new(driver) {
        scenario(&mut p);
    }
}

for_each_scenario!(driver_tests!(Overlay => overlay,));
for_each_scenario!(driver_tests!(Vfs => vfs,));
for_each_scenario!(driver_tests!(Btrfs => btrfs,));
for_each_scenario!(driver_tests!(kernel Thin => thin,));
