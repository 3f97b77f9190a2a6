//! layerd's containerd sockets driven directly over gRPC (no containerd in
//! between): bad input gets the error D-Bus gives for it, as containerd's
//! errdefs code, and changes nothing; the one deliberate difference (a parent
//! that is not committed) matches containerd's own snapshotters; sockets are
//! root-only; each socket is its own key space on its pool, and what one
//! adapter makes the other sees.
//!
//! Host tier: needs root (loop devices, mount). Each test takes seconds.

#[macro_use]
#[allow(unused_macros)]
#[path = "common/mod.rs"]
mod common;
#[path = "common/grpc.rs"]
mod grpc;

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

use common::*;
use containerd_snapshots::tonic::Code;
use grpc::{code, Snapshots};

fn label(k: &str, v: &str) -> HashMap<String, String> {
    HashMap::from([(k.to_string(), v.to_string())])
}

/// The D-Bus error name that stands for each gRPC code here.
fn dbus_name(c: Code) -> &'static str {
    match c {
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::InvalidArgument => "InvalidArgument",
        Code::ResourceExhausted => "PoolFull",
        Code::Unavailable => "Busy",
        Code::Unimplemented => "NotSupported",
        other => panic!("no D-Bus name for {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_dbus_errors_as_containerd_codes_and_changes_nothing() {
    let Some(f) = Fixture::new(Backend::OverlayXfs).await else {
        return;
    };
    let pool = f.pool_name().to_string();
    let g = Snapshots::connect(&f.containerd_socket()).await;
    let p = format!("containerd-{pool}/");
    // A committed c, an active a on it, a view v on it.
    g.prepare("c-tmp", "", HashMap::new())
        .await
        .expect("Prepare c-tmp");
    g.commit("c", "c-tmp").await.expect("Commit c");
    g.prepare("a", "c", HashMap::new())
        .await
        .expect("Prepare a");
    g.view("v", "c").await.expect("View v");
    let before = f.walk(&[]).await;

    let long = "k".repeat(5000);
    let big = "v".repeat(5000);
    // (what, gRPC call, the same over D-Bus, code both must give)
    macro_rules! same {
        ($what:expr, $grpc:expr, $dbus:expr, $code:expr) => {{
            let (c, msg) = code($what, $grpc.await);
            assert_eq!(c, $code, "{}: gRPC {c:?}: {msg}", $what);
            check_err($what, $dbus.await, dbus_name($code), &[]);
        }};
    }
    let none = HashMap::new;
    same!(
        "Prepare \"\"",
        g.prepare("", "", none()),
        f.mgr.prepare("", "", none()),
        Code::InvalidArgument
    );
    same!(
        "Prepare of a 5000-byte key",
        g.prepare(&long, "", none()),
        f.mgr.prepare(&format!("{p}{long}"), "", none()),
        Code::InvalidArgument
    );
    same!(
        "Prepare with a 5000-byte label",
        g.prepare("x", "", label("k", &big)),
        f.mgr.prepare(&format!("{p}x"), "", label("k", &big)),
        Code::InvalidArgument
    );
    same!(
        "Prepare with a bad size label",
        g.prepare("x", "", label("containerd.io/snapshot/layerd.size", "lots")),
        f.mgr
            .prepare(&format!("{p}x"), "", label("layerd.io/size", "lots")),
        Code::InvalidArgument
    );
    same!(
        "Prepare with a size limit on overlay",
        g.prepare("x", "", label("containerd.io/snapshot/layerd.size", "64M")),
        f.mgr
            .prepare(&format!("{p}x"), "", label("layerd.io/size", "64M")),
        Code::Unimplemented
    );
    same!(
        "Prepare on a missing parent",
        g.prepare("x", "nope", none()),
        f.mgr.prepare(&format!("{p}x"), &format!("{p}nope"), none()),
        Code::NotFound
    );
    same!(
        "Prepare of an existing key",
        g.prepare("a", "", none()),
        f.mgr.prepare(&format!("{p}a"), "", none()),
        Code::AlreadyExists
    );
    same!(
        "Commit of a missing key",
        g.commit("n", "nope"),
        f.mgr.commit(&format!("{p}n"), &format!("{p}nope"), none()),
        Code::NotFound
    );
    same!(
        "Commit of a view",
        g.commit("n", "v"),
        f.mgr.commit(&format!("{p}n"), &format!("{p}v"), none()),
        Code::FailedPrecondition
    );
    same!(
        "Commit onto an existing name",
        g.commit("c", "a"),
        f.mgr.commit(&format!("{p}c"), &format!("{p}a"), none()),
        Code::AlreadyExists
    );
    same!(
        "Remove of a parent",
        g.remove("c"),
        f.mgr.remove(&format!("{p}c")),
        Code::FailedPrecondition
    );
    same!(
        "Remove of a missing key",
        g.remove("nope"),
        f.mgr.remove(&format!("{p}nope")),
        Code::NotFound
    );
    same!(
        "Mounts of a committed layer",
        g.mounts("c"),
        f.mgr.mounts(&format!("{p}c")),
        Code::FailedPrecondition
    );
    same!(
        "Stat of a missing key",
        g.stat("nope"),
        f.mgr.stat(&format!("{p}nope")),
        Code::NotFound
    );
    same!(
        "Usage of a missing key",
        g.usage("nope"),
        f.mgr.usage(&format!("{p}nope")),
        Code::NotFound
    );
    same!(
        "Update of the parent field",
        g.update("a", none(), &["parent"]),
        f.mgr
            .update(&format!("{p}a"), none(), vec!["parent".into()]),
        Code::InvalidArgument
    );
    same!(
        "List with a bad filter",
        g.list(&["name=="]),
        f.mgr.walk(vec!["name==".into()]),
        Code::InvalidArgument
    );

    // containerd's snapshotters refuse a parent that is not committed with
    // InvalidArgument ("parent is not committed snapshot"); D-Bus keeps
    // its stable FailedPrecondition.
    let (c, msg) = code(
        "Prepare on an active parent",
        g.prepare("x", "a", none()).await,
    );
    assert_eq!(c, Code::InvalidArgument, "{msg}");
    assert!(
        msg.contains("only a committed layer can be a parent"),
        "{msg}"
    );
    check_err(
        "D-Bus Prepare on an active parent",
        f.mgr
            .prepare(&format!("{p}x"), &format!("{p}a"), none())
            .await,
        "FailedPrecondition",
        &["committed"],
    );

    assert_eq!(f.walk(&[]).await, before, "failed calls changed the layers");
    f.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_socket_is_one_key_space_and_dbus_sees_it() {
    let Some(mut f) = Fixture::new(Backend::OverlayXfs).await else {
        return;
    };
    let pool = f.pool_name().to_string();
    f.restart_with_toml(&format!(
        "[containerd]\npools = [{pool:?}]\n[[containerd.snapshotter]]\nname = \"k8s\"\npool = {pool:?}\n"
    ))
    .await;
    let a = Snapshots::connect(&f.containerd_socket()).await;
    let b = Snapshots::connect(&f.containerd_socket_named("k8s")).await;
    // The same keys on both sockets are two layers.
    for s in [&a, &b] {
        s.prepare("t", "", HashMap::new()).await.expect("Prepare t");
        s.commit("base", "t").await.expect("Commit base");
        s.prepare("work", "base", label("containerd.io/snapshot/x", "1"))
            .await
            .expect("Prepare work");
    }
    let want = vec![
        ("base".to_string(), String::new(), 3),
        ("work".to_string(), "base".to_string(), 2),
    ];
    assert_eq!(a.list(&[]).await.unwrap(), want);
    assert_eq!(b.list(&[]).await.unwrap(), want);
    assert_eq!(
        f.walk_names(&[]).await,
        [
            "containerd-k8s/base",
            "containerd-k8s/work",
            &format!("containerd-{pool}/base"),
            &format!("containerd-{pool}/work"),
        ]
    );
    // Filters see containerd's names.
    assert_eq!(b.list(&["parent==base"]).await.unwrap(), want[1..]);
    // Stat and D-Bus Stat agree on the layer.
    let st = b.stat("work").await.unwrap();
    assert_eq!(
        (st.name.as_str(), st.parent.as_str(), st.kind),
        ("work", "base", 2)
    );
    assert_eq!(st.labels, label("containerd.io/snapshot/x", "1"));
    let d = f.stat("containerd-k8s/work").await;
    assert_eq!(d.parent, "containerd-k8s/base");
    assert_eq!(d.kind, "active");
    // What D-Bus makes under a socket's prefix, that socket lists.
    f.prepare("containerd-k8s/from-dbus", "containerd-k8s/base")
        .await;
    assert!(b
        .list(&[])
        .await
        .unwrap()
        .contains(&("from-dbus".into(), "base".into(), 2)));
    assert!(!a
        .list(&[])
        .await
        .unwrap()
        .iter()
        .any(|(n, _, _)| n == "from-dbus"));
    // Removing on one socket leaves the other's layer alone.
    b.remove("work").await.unwrap();
    b.remove("from-dbus").await.unwrap();
    b.remove("base").await.unwrap();
    assert!(b.list(&[]).await.unwrap().is_empty());
    assert_eq!(a.list(&[]).await.unwrap(), want);
    a.cleanup().await.expect("Cleanup");
    f.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_are_root_only() {
    let Some(mut f) = Fixture::new(Backend::OverlayXfs).await else {
        return;
    };
    let pool = f.pool_name().to_string();
    let sock = f.containerd_socket();
    let md = std::fs::metadata(&sock).expect("the default pool's socket exists");
    assert_eq!(
        (md.mode() & 0o777, md.uid()),
        (0o600, 0),
        "{}",
        sock.display()
    );
    // nobody cannot connect.
    let out = Command::new("python3")
        .args([
            "-c",
            "import socket,sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])",
        ])
        .arg(&sock)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("python3");
    assert!(
        !out.status.success(),
        "nobody connected to {}",
        sock.display()
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PermissionError"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With a group: 0660 in a directory of its own that the group reaches.
    let dir = f.dir().join("sockets");
    f.restart_with_toml(&format!(
        "[containerd]\nsocket_dir = {:?}\nsocket_group = \"nogroup\"\n",
        dir.to_str().unwrap()
    ))
    .await;
    let sock = dir.join(format!("containerd-{pool}.sock"));
    let md = std::fs::metadata(&sock).expect("socket in socket_dir");
    let nogroup = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    assert_eq!((md.mode() & 0o777, md.gid()), (0o660, nogroup));
    let dmd = std::fs::metadata(&dir).unwrap();
    assert_eq!(
        (dmd.permissions().mode() & 0o777, dmd.gid()),
        (0o750, nogroup)
    );
    assert!(
        !f.run_dir().join(format!("containerd-{pool}.sock")).exists(),
        "the old socket was left behind"
    );
    f.finish();
}
