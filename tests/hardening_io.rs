//! Hardening of the request paths against descriptors that never end and
//! against panics (host tier, root, overlay fixtures): an Apply from a pipe
//! whose writer stays open, or an Export into a pipe nobody reads, ends
//! when its caller leaves the bus, after `[daemon] diff_idle_timeout` of
//! silence, and on SIGTERM (the daemon exits 0 in time, the layer is left
//! marked failed and removable); a panic inside a request is an Internal
//! reply and the daemon keeps serving.

#[macro_use]
#[path = "common/mod.rs"]
mod common;

use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;
use layerd::dbus::client::ManagerProxy;
use zbus::zvariant::Fd;

const FAILED: &str = "layerd.io/apply-failed";

/// A client connection of its own, with the raw socket kept so that the
/// test can cut it (the bus then sees the caller leave, as when a client
/// process dies).
async fn own_client(f: &Fixture) -> (zbus::Connection, ManagerProxy<'static>, UnixStream) {
    let sock = UnixStream::connect(f.dir().join("bus")).expect("connect to the bus socket");
    let keep = sock.try_clone().unwrap();
    sock.set_nonblocking(true).unwrap();
    let stream = tokio::net::UnixStream::from_std(sock).unwrap();
    let conn = zbus::connection::Builder::unix_stream(stream)
        .build()
        .await
        .expect("client connection");
    let mgr = ManagerProxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .expect("manager proxy");
    (conn, mgr, keep)
}

fn pipe() -> (OwnedFd, OwnedFd) {
    nix::unistd::pipe().expect("pipe")
}

/// The first block of a tar holding one 64 KiB file: an Apply reading it
/// then waits inside the entry's data.
fn tar_head() -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_path("big").unwrap();
    h.set_size(64 << 10);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// A tar with one file of `len` bytes.
fn tar_of(len: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(len as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
    b.append_data(&mut h, "data", &data[..]).unwrap();
    b.into_inner().unwrap()
}

/// Retries `Remove(key)` while it answers Busy, for at most `within`.
async fn removed_within(f: &Fixture, key: &str, within: Duration) -> Result<(), String> {
    let until = Instant::now() + within;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), f.mgr.remove(key)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) if err_name(&e).as_deref() == Some("org.layerd.Layerd1.Error.Busy") => {
                if Instant::now() > until {
                    return Err(format!("still Busy after {within:?}: {}", describe(&e)));
                }
            }
            Ok(Err(e)) => return Err(describe(&e)),
            Err(_) => return Err("Remove: no reply within 5 s".into()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `key` is Busy (an Apply or Export of it is running). The
/// probe changes nothing: a Commit onto its own key answers Busy while a
/// diff runs, AlreadyExists otherwise.
async fn busy(f: &Fixture, key: &str) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let r = f.mgr.commit(key, key, Default::default());
        match tokio::time::timeout(Duration::from_secs(5), r).await {
            Ok(Err(e)) if err_name(&e).as_deref() == Some("org.layerd.Layerd1.Error.Busy") => {
                return
            }
            other => assert!(
                Instant::now() < until,
                "{key}: never Busy while its call should be running: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_ends_when_its_caller_disconnects() {
    let Some(f) = Fixture::new(Backend::OverlayXfs).await else {
        return;
    };
    f.prepare("a", "").await;
    let (rd, wr) = pipe();
    let mut wr = fs::File::from(wr);
    wr.write_all(&tar_head()).unwrap();
    wr.write_all(&[1u8; 1000]).unwrap();
    let (conn, mgr, sock) = own_client(&f).await;
    let call = tokio::spawn(async move {
        let r = mgr.apply("a", Fd::from(rd.as_fd())).await;
        drop(rd);
        r
    });
    busy(&f, "a").await;
    // The caller goes away with its call still running.
    sock.shutdown(std::net::Shutdown::Both).unwrap();
    drop(conn);
    let r = removed_within(&f, "a", Duration::from_secs(5)).await;
    call.abort();
    drop(wr);
    r.expect("the layer is removable once its Apply's caller left");
    f.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_ends_when_its_caller_disconnects() {
    let Some(f) = Fixture::new(Backend::OverlayXfs).await else {
        return;
    };
    f.prepare("e", "").await;
    // More than the pipe and the daemon's output buffer hold.
    let data = tar_of(3 << 20);
    let input = f.scratch("in").join("in.tar");
    fs::write(&input, &data).unwrap();
    let file = fs::File::open(&input).unwrap();
    must(f.mgr.apply("e", Fd::from(file.as_fd())).await, "Apply");
    let (rd, wr) = pipe();
    let (conn, mgr, sock) = own_client(&f).await;
    let call = tokio::spawn(async move {
        let r = mgr.export("e", Fd::from(wr.as_fd())).await;
        drop(wr);
        r
    });
    busy(&f, "e").await;
    sock.shutdown(std::net::Shutdown::Both).unwrap();
    drop(conn);
    let r = removed_within(&f, "e", Duration::from_secs(5)).await;
    call.abort();
    drop(rd);
    r.expect("the layer is removable once its Export's caller left");
    f.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_descriptors_end_after_the_idle_timeout() {
    let Some(mut f) = Fixture::new(Backend::OverlayXfs).await else {
        return;
    };
    let path = f.daemon().config_path.clone();
    let text = fs::read_to_string(&path).unwrap();
    fs::write(
        &path,
        text.replacen("[daemon]\n", "[daemon]\ndiff_idle_timeout = \"1s\"\n", 1),
    )
    .unwrap();
    f.restart().await;

    f.prepare("i", "").await;
    let (rd, wr) = pipe();
    let mut wr = fs::File::from(wr);
    wr.write_all(&tar_head()).unwrap();
    let t = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        f.mgr.apply("i", Fd::from(rd.as_fd())),
    )
    .await
    .expect("Apply from a silent pipe: no reply within 15 s");
    let e = assert_dbus_err!(r, "InvalidArgument", "Apply from a silent pipe");
    let msg = err_message(&e).unwrap_or_default();
    assert!(
        msg.contains("diff_idle_timeout") && msg.contains("1s"),
        "the error names the timeout: {msg}"
    );
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(f.stat("i").await.labels.contains_key(FAILED));
    f.remove("i").await;
    drop(wr);

    // Export into a pipe nobody reads.
    f.prepare("x", "").await;
    let input = f.scratch("in").join("in.tar");
    fs::write(&input, tar_of(3 << 20)).unwrap();
    let file = fs::File::open(&input).unwrap();
    must(f.mgr.apply("x", Fd::from(file.as_fd())).await, "Apply");
    let (rd, wr) = pipe();
    let r = tokio::time::timeout(
        Duration::from_secs(15),
        f.mgr.export("x", Fd::from(wr.as_fd())),
    )
    .await
    .expect("Export into an unread pipe: no reply within 15 s");
    let e = assert_dbus_err!(r, "InvalidArgument", "Export into an unread pipe");
    let msg = err_message(&e).unwrap_or_default();
    assert!(msg.contains("diff_idle_timeout"), "{msg}");
    drop(rd);
    f.remove("x").await;
    f.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_a_stuck_apply() {
    let Some(mut f) = Fixture::new(Backend::OverlayXfs).await else {
        return;
    };
    f.prepare("s", "").await;
    let (rd, wr) = pipe();
    let mut wr = fs::File::from(wr);
    wr.write_all(&tar_head()).unwrap();
    let (_conn, mgr, _sock) = own_client(&f).await;
    let call = tokio::spawn(async move {
        let r = mgr.apply("s", Fd::from(rd.as_fd())).await;
        drop(rd);
        r
    });
    busy(&f, "s").await;
    let pid = nix::unistd::Pid::from_raw(f.daemon().pid().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(st) = f.daemon_mut().is_running() {
            break st;
        }
        if t.elapsed() > Duration::from_secs(20) {
            // Let the daemon go, so that the fixture can end.
            drop(wr);
            panic!("layerd still runs 20 s after SIGTERM during an Apply");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "layerd exited with {status}");
    call.abort();
    drop(wr);
    f.start().await;
    let st = f.stat("s").await;
    assert!(st.labels.contains_key(FAILED), "{:?}", st.labels);
    f.remove("s").await;
    f.finish();
}

/// `LAYERD_TEST_FAULT=stat-panic` makes Stat panic inside the engine.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_request_is_an_internal_reply() {
    let Some(mut f) = Fixture::new(Backend::OverlayXfs).await else {
        return;
    };
    f.daemon_mut()
        .env
        .push(("LAYERD_TEST_FAULT".into(), "stat-panic".into()));
    f.restart().await;
    f.prepare("p", "").await;
    for _ in 0..3 {
        let r = tokio::time::timeout(Duration::from_secs(10), f.mgr.stat("p"))
            .await
            .expect("Stat that panicked: no reply within 10 s");
        let e = assert_dbus_err!(r, "Internal", "Stat that panicked");
        let msg = err_message(&e).unwrap_or_default();
        assert!(msg.contains("panic"), "{msg}");
    }
    // The daemon still serves.
    assert_eq!(f.walk_names(&[]).await, vec!["p".to_string()]);
    f.remove("p").await;
    assert!(f.daemon().log_text().contains("panicked"));
    f.finish();
}
