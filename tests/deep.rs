//! Deep overlay chains on the real kernel. mount(2) takes one page of
//! options, which absolute lowerdir lists outgrow near 150 layers here; the
//! kernel stacks at most 500 lowers. layerd must: hand out specs mount(8)
//! accepts at any depth (a bind of a daemon-held mount past one page),
//! mount 500-layer chains itself with all layers really present, and refuse
//! a 501st lower with an error naming the limit.

#[macro_use]
#[path = "common/mod.rs"]
mod common;

use std::fs;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlay_500_layer_chain() {
    let Some(f) = Fixture::new(Backend::OverlayXfs).await else {
        return;
    };
    // 501 committed layers: l0 (parentless) … l500 (500 lowers), each adding one file,
    // written straight into the layer dir through the daemon's Mount().
    let mut parent = String::new();
    for i in 0..=501 {
        let key = format!("k/{i}");
        if i == 501 {
            // The 501st lower: refused, naming the limit, nothing created.
            let before = f.walk_names(&[]).await.len();
            let e = f
                .mgr
                .prepare(&key, &parent, default_labels())
                .await
                .expect_err("a layer with 501 lowers must be refused");
            assert_eq!(
                err_name(&e).as_deref(),
                Some("org.layerd.Layerd1.Error.NotSupported"),
                "{e}"
            );
            let msg = err_message(&e).unwrap_or_default();
            assert!(msg.contains("500"), "message should name the limit: {msg}");
            assert_eq!(f.walk_names(&[]).await.len(), before);
            break;
        }
        f.prepare(&key, &parent).await;
        let m = f.mount(&key, Via::Daemon).await;
        fs::write(m.path.join(format!("f{i}")), i.to_string()).unwrap();
        f.unmount(m).await;
        let name = format!("l{i}");
        f.commit(&name, &key).await;
        parent = name;
    }

    // Active layer on l499: 500 lowers. The daemon mounts it itself…
    f.prepare("top", "l499").await;
    let m = f.mount("top", Via::Daemon).await;
    for i in 0..500 {
        let p = m.path.join(format!("f{i}"));
        assert_eq!(
            fs::read_to_string(&p).unwrap_or_default(),
            i.to_string(),
            "{} missing or wrong",
            p.display()
        );
    }
    fs::write(m.path.join("new"), "top").unwrap();
    f.unmount(m).await;

    // …and the spec a runtime gets still works with mount(8), though the
    // lowerdir list could never fit one page.
    let specs = f.mounts("top").await;
    for s in &specs {
        let len: usize = s.2.iter().map(|o| o.len() + 1).sum();
        assert!(len < 4096, "spec of {len} bytes handed out: {s:?}");
    }
    let m = f.mount("top", Via::Specs).await;
    assert!(
        m.path.join("f0").exists() && m.path.join("f499").exists() && m.path.join("new").exists()
    );
    f.unmount(m).await;

    // A chain that fits a page gets a real overlay spec.
    let specs = f.prepare("shallow", "l20").await;
    assert_eq!(specs[0].0, "overlay", "{specs:?}");
    let m = f.mount("shallow", Via::Specs).await;
    assert!(m.path.join("f20").exists() && !m.path.join("f21").exists());
    f.unmount(m).await;

    // The pin is released on Remove; nothing stays mounted.
    f.remove("top").await;
    f.remove("shallow").await;
    assert!(
        mounts_under(&f.run_dir()).is_empty(),
        "{:?}",
        mounts_under(&f.run_dir())
    );
    f.finish();
}
