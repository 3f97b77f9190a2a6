//! layerd's conformance suite: containerd's snapshotter suite
//! (`core/snapshots/testsuite`) expressed over layerd's D-Bus API, plus
//! layerd's own contract points, run against every backend on the real
//! kernel (host tier; needs root).
//!
//! Each scenario is one `async fn(&mut Fixture)`, listed once in
//! `scenario_list.rs`; the `suite!` block at the bottom generates one
//! `#[tokio::test]` per (backend × scenario), named
//! `<backend>::<scenario>` (e.g. `overlay_xfs::basic`), each with its own
//! bus, loop-backed file system and daemon, so they run in parallel.

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

#[path = "../common/difftools.rs"]
mod difftools;

mod contents;
mod diff;
mod lifecycle;
mod metadata;
mod space;

/// Every scenario, by name, for the generated tests.
mod scenarios {
    pub use super::contents::*;
    pub use super::diff::*;
    pub use super::lifecycle::*;
    pub use super::metadata::*;
    pub use super::space::*;
}

/// One module per backend, one test per scenario.
macro_rules! backend_tests {
    ($backend:ident => $module:ident, [$($scenario:ident),* $(,)?]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    let Some(mut f) =
                        crate::common::Fixture::new(crate::common::Backend::$backend).await
                    else {
                        return;
                    };
                    crate::scenarios::$scenario(&mut f).await;
                    f.finish();
                }
            )*
        }
    };
}

// The scenario list: tests/conformance/scenario_list.rs (shared with
// tests/kernel_conformance.rs, which runs it on thin).
#[macro_use]
mod scenario_list;

macro_rules! suite {
    (backends { $($backend:ident => $module:ident),* $(,)? }) => {
        $( for_each_scenario!(backend_tests!($backend => $module,)); )*
    };
}

suite! {
    // The host backends; thin runs the same list in the kernel-tier VM
    // (tests/kernel_conformance.rs).
    backends {
        OverlayXfs => overlay_xfs,
        VfsXfs => vfs_xfs,
        VfsExt4 => vfs_ext4,
        Btrfs => btrfs,
    }
}
