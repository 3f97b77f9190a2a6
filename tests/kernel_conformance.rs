//! The conformance suite (tests/conformance/) on the thin driver, which
//! needs device-mapper: kernel tier only. The scenario files are the same
//! as the host suite's; only the backend list differs. The tests are
//! `#[ignore]`d so the host run lists them as ignored; scripts/test-kernel.sh
//! runs them in the VM with `--ignored` and `LAYERD_KERNEL_TIER=1`. Thin
//! fixtures run one at a time (every fixture's pool is `main`, and dm
//! names are host-wide).

#[macro_use]
#[path = "common/mod.rs"]
mod common;

#[path = "conformance/contents.rs"]
mod contents;
#[path = "conformance/lifecycle.rs"]
mod lifecycle;
#[path = "conformance/metadata.rs"]
mod metadata;
#[path = "conformance/space.rs"]
mod space;

mod scenarios {
    pub use super::contents::*;
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

// Keep in step with the scenario list of tests/conformance/main.rs.
thin_tests!([
    basic,
    stat_active,
    stat_committed,
    transitivity,
    prepare_view_conflicts,
    update,
    remove_and_reuse,
    walk,
    layer_file_update,
    remove_directory_in_lower_layer,
    chown,
    directory_permission_on_commit,
    remove_intermediate,
    deleted_files_in_child,
    move_file_from_lower_layer,
    view_readonly,
    stat_in_walk,
    restart_keeps_state,
    kill9_keeps_state,
    root_permission,
    rename,
    commit_renames_key,
    layers_128,
    keys_with_slashes_and_long_keys,
    usage_excludes_parent,
    mounts_of_committed,
    mount_spec_shapes,
    not_found_errors,
    cleanup_returns_bytes,
    mount_refcount,
    pool_object,
]);
