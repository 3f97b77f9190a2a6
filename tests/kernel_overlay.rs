//! Kernel tier: the overlay driver on a kernel without overlay's `lowerdir+`
//! (the VM runs Debian 12's Linux 6.1; `lowerdir+` came with 6.8).
//!
//! There the driver mounts with one classic mount(2) call, whose options must
//! fit in one page. `classic_chain_limit` builds a chain until Prepare refuses
//! the next layer, and checks: the deepest accepted layer mounts through the
//! daemon and through its Mounts() spec with every layer present; the refusal
//! is NotSupported naming the depth, the page limit and Linux 6.8; it
//! happens at Prepare, before anything is created. (A View on the same
//! parent may still fit: it has no upperdir/workdir options.)

#[macro_use]
#[allow(unused_macros)]
#[path = "common/mod.rs"]
mod common;

use std::fs;

use common::*;

/// One page minus the terminating NUL (x86-64 in the VM).
const PAGE_DATA: usize = 4095;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "kernel tier: runs in the VM (scripts/test-kernel.sh)"]
async fn classic_chain_limit() {
    require_kernel_tier("classic_chain_limit");
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let f = Fixture::new(Backend::OverlayXfs)
        .await
        .expect("overlay fixture in the VM");

    // l0 … l{n}: every 10th adds f{i}, written through the daemon's Mount()
    // (each mount costs a second or two under emulation; the daemon checks
    // every lower in mountinfo on each Mount anyway).
    let mut parent = String::new();
    let mut depth = 0; // lowers of the next Prepare
    let refused = loop {
        assert!(depth <= 500, "Prepare never refused a chain on {release}");
        let key = format!("k/{depth}");
        match f.mgr.prepare(&key, &parent, default_labels()).await {
            Ok(_) => {}
            Err(e) => {
                // Only the committed l0 … l{depth-1} exist: nothing was added.
                let names = f.walk_names(&[]).await;
                assert_eq!(
                    names.len(),
                    depth,
                    "a refused Prepare changes nothing: {names:?}"
                );
                assert!(!names.contains(&key), "{names:?}");
                break e;
            }
        }
        if depth % 10 == 0 {
            let m = f.mount(&key, Via::Daemon).await;
            fs::write(m.path.join(format!("f{depth}")), depth.to_string()).unwrap();
            f.unmount(m).await;
        }
        let name = format!("l{depth}");
        f.commit(&name, &key).await;
        parent = name;
        depth += 1;
    };
    let msg = err_message(&refused).unwrap_or_default();
    eprintln!("refused at {depth} lowers on Linux {release}: {msg}");
    assert_eq!(
        err_name(&refused).as_deref(),
        Some("org.layerd.Layerd1.Error.NotSupported"),
        "{refused}"
    );
    for want in [
        format!("on {depth} lower layers"),
        format!("at most {PAGE_DATA} bytes"),
        "Linux 6.8".to_string(),
        format!("Linux {}", release.trim()),
    ] {
        assert!(msg.contains(&want), "message should say {want:?}: {msg}");
    }
    // Absolute paths under the VM's fixture dir: a few dozen layers, far
    // below the 500 that lowerdir+ stacks.
    assert!((20..500).contains(&depth), "refused at {depth}");

    // The deepest accepted chain: depth-1 lowers under an active layer.
    let top_parent = format!("l{}", depth - 2);
    f.prepare("top", &top_parent).await;
    let specs = f.mounts("top").await;
    assert_eq!(specs.len(), 1, "{specs:?}");
    assert_eq!(specs[0].0, "overlay", "{specs:?}");
    let data: Vec<&str> = specs[0].2.iter().map(String::as_str).collect();
    assert!(data.join(",").len() <= PAGE_DATA, "{specs:?}");
    for via in [Via::Daemon, Via::Specs] {
        let m = f.mount("top", via).await;
        for i in (0..depth - 1).step_by(10) {
            assert_eq!(
                fs::read_to_string(m.path.join(format!("f{i}"))).unwrap_or_default(),
                i.to_string(),
                "f{i} through {via:?}"
            );
        }
        fs::write(m.path.join("new"), "x").expect("writable top");
        f.unmount(m).await;
    }
    f.finish();
}
