//! The one list of conformance scenarios, shared by every crate that runs
//! them: tests/conformance/main.rs (host backends) and
//! tests/kernel_conformance.rs (thin, in the kernel-tier VM) include this
//! file with `#[path]` and expand the list with their own backends. A new
//! scenario goes here (and in its scenario file) and so runs everywhere.

/// `for_each_scenario!(m!(ARGS…))` expands to `m!(ARGS… [scenario, …]);`
/// with every scenario function's name, in the suite's order.
macro_rules! for_each_scenario {
    ($m:ident ! ( $($args:tt)* )) => {
        $m!($($args)* [
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
        ]);
    };
}
