//! The conformance suite (tests/conformance/) on the thin driver, which
//! needs device-mapper: kernel tier only. The scenario files and their one
//! list (tests/conformance/scenario_list.rs) are the host suite's; only the
//! backend differs, so every scenario, the diff ones included, runs on thin. The tests are
//! `#[ignore]`d so the host run lists them as ignored; scripts/test-kernel.sh
//! runs them in the VM with `--ignored` and `LAYERD_KERNEL_TIER=1`. Thin
//! fixtures run one at a time (every fixture's pool is `main`, and dm
//! names are host-wide).

#[macro_use]
#[path = "common/mod.rs"]
mod common;

#[path = "common/difftools.rs"]
mod difftools;

#[path = "conformance/contents.rs"]
mod contents;
#[path = "conformance/diff.rs"]
mod diff;
#[path = "conformance/lifecycle.rs"]
mod lifecycle;
#[path = "conformance/metadata.rs"]
mod metadata;
#[path = "conformance/space.rs"]
mod space;

mod scenarios {
    pub use super::contents::*;
    pub use super::diff::*;
    pub use super::lifecycle::*;
    pub use super::metadata::*;
    pub use super::space::*;
}

macro_rules! thin_tests {
    ([$($scenario:ident),* $(,)?]) => {
        mod thin {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "kernel tier: runs in the VM (scripts/test-kernel.sh)"]
                async fn $scenario() {
                    crate::common::require_kernel_tier(stringify!($scenario));
                    let Some(mut f) =
                        crate::common::Fixture::new(crate::common::Backend::Thin).await
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

#[macro_use]
#[path = "conformance/scenario_list.rs"]
mod scenario_list;

for_each_scenario!(thin_tests!());
