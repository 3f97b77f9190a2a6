//! layerd's conformance suite: containerd's snapshotter suite
//! (`core/snapshots/testsuite`) expressed over layerd's D-Bus API, plus
//! layerd's own contract points, run against every backend on the real
//! kernel (host tier; needs root).
//!
//! Each scenario is one `async fn(&mut Fixture)`; the `suite!` block at the
//! bottom generates one `#[tokio::test]` per (backend × scenario), named
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

macro_rules! suite {
    (backends { $($backend:ident => $module:ident),* $(,)? } scenarios $scenarios:tt) => {
        $( backend_tests!($backend => $module, $scenarios); )*
    };
}

suite! {
    // The one backend list: add `Btrfs => btrfs` (and `Thin => thin` in the
    // kernel-tier VM) here once `common::Backend` has them.
    backends {
        OverlayXfs => overlay_xfs,
        VfsXfs => vfs_xfs,
        VfsExt4 => vfs_ext4,
        Btrfs => btrfs,
    }
    scenarios [
        // containerd's SnapshotterSuite, in its order
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
        // layerd's contract
        keys_with_slashes_and_long_keys,
        usage_excludes_parent,
        mounts_of_committed,
        mount_spec_shapes,
        not_found_errors,
        cleanup_returns_bytes,
        mount_refcount,
        pool_object,
        // layer diffs (Apply, Export)
        apply_keeps_metadata,
        export_roundtrip_is_exact,
        whiteouts,
        export_mounted_changes,
        apply_needs_active,
        apply_holds_the_layer,
        hostile_tars,
        broken_inputs,
        aufs_import,
    ]
}
