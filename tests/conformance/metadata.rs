//! Metadata scenarios: Update, Walk filters, Stat inside Walk, the pool
//! object. After containerd's `checkUpdate`, `checkWalk`, `checkStatInWalk`.

use std::collections::HashMap;

use crate::common::*;

/// containerd's `baseTestSnapshots`: c1 ← c2 ← a1, a2, c2 ← v1, v2.
async fn base_layers(f: &Fixture) {
    f.prepare("c1-a", "").await;
    f.commit("c1", "c1-a").await;
    f.prepare("c2-a", "c1").await;
    f.commit("c2", "c2-a").await;
    f.prepare("a1", "c2").await;
    f.prepare("a2", "").await;
    f.view("v1", "c2").await;
    f.view("v2", "").await;
}

async fn do_update(f: &Fixture, key: &str, l: HashMap<String, String>, paths: &[&str]) -> Info {
    let p: Vec<String> = paths.iter().map(|s| s.to_string()).collect();
    must(
        f.mgr.update(key, l, p).await,
        format_args!("Update({key:?}, {paths:?})"),
    )
    .into()
}

/// Update changes labels only: no paths or `labels` replace them all,
/// `labels.K` sets or deletes one; any other path is InvalidArgument.
/// Created stays, updated moves; Stat agrees with Update's reply.
pub async fn update(f: &mut Fixture) {
    let t1 = now_us();
    base_layers(f).await;
    let t2 = now_us();
    let cases = [
        ("c1", "committed", ""),
        ("c2", "committed", "c1"),
        ("a1", "active", "c2"),
        ("a2", "active", ""),
        ("v1", "view", "c2"),
        ("v2", "view", ""),
    ];
    for (name, kind, parent) in cases {
        let st = f.stat(name).await;
        assert!(
            (t1..=t2).contains(&st.created),
            "({name}) created {} not within [{t1}, {t2}] µs",
            st.created
        );
        assert_eq!(
            st.created, st.updated,
            "({name}) updated differs from created before any Update"
        );
        assert_eq!(st.kind, kind, "({name}) kind");
        assert_eq!(st.parent, parent, "({name}) parent");
        assert_eq!(st.name, name, "({name}) name");
        let created = st.created;

        let root_time = now_us().to_string();
        let root = ("layerd.io/x", root_time.as_str());
        let expected = labels(&[("l1", "v1"), ("l2", "v2"), ("l3", "v3"), root]);
        let u1 = now_us();
        let st = do_update(f, name, expected.clone(), &[]).await;
        let u2 = now_us();
        assert_eq!(st.created, created, "({name}) Update moved created");
        assert!(
            (u1..=u2).contains(&st.updated),
            "({name}) updated {} not within [{u1}, {u2}] µs",
            st.updated
        );
        assert_eq!(
            (st.kind.as_str(), st.parent.as_str(), st.name.as_str()),
            (kind, parent, name)
        );
        assert_eq!(
            st.labels, expected,
            "({name}) no field paths replace all labels"
        );
        assert_eq!(
            f.stat(name).await,
            st,
            "({name}) Stat after Update differs from Update's reply"
        );

        // labels.l1 set, labels.l2 deleted (absent from the map), l4 ignored.
        let st = do_update(
            f,
            name,
            labels(&[("l1", "updated"), ("l4", "v4")]),
            &["labels.l1", "labels.l2"],
        )
        .await;
        assert_eq!(
            st.labels,
            labels(&[("l1", "updated"), ("l3", "v3"), root]),
            "({name}) labels.K paths"
        );

        let expected = labels(&[("l4", "v4"), root]);
        let st = do_update(f, name, expected.clone(), &["labels"]).await;
        assert_eq!(st.labels, expected, "({name}) the labels path replaces all");

        // Immutable and unknown field paths.
        for path in [
            "parent",
            "name",
            "kind",
            "created",
            "updated",
            "nosuchfield",
            "labelsx",
        ] {
            let r = f
                .mgr
                .update(name, labels(&[("l9", "v9")]), vec![path.to_string()])
                .await;
            assert_dbus_err!(
                r,
                "InvalidArgument",
                "({name}) Update with field path {path:?}"
            );
        }
        let r = f
            .mgr
            .update(
                name,
                labels(&[("l9", "v9")]),
                vec!["labels.l9".into(), "parent".into()],
            )
            .await;
        assert_dbus_err!(
            r,
            "InvalidArgument",
            "({name}) Update with a valid and an invalid path"
        );
        let st = f.stat(name).await;
        assert_eq!(
            st.labels, expected,
            "({name}) a refused Update changed the labels"
        );
        assert_eq!((st.kind.as_str(), st.parent.as_str()), (kind, parent));

        // Replacing with nothing clears them.
        let st = do_update(f, name, HashMap::new(), &[]).await;
        assert!(
            st.labels.is_empty(),
            "({name}) labels left: {:?}",
            st.labels
        );
    }
}

/// Walk filters as containerd's: `name==`, `parent==`, `kind==`,
/// `labels.K`, `labels.K==V`, `!=`, quoted keys and values; commas AND,
/// list items OR. Every row names the pool.
pub async fn walk(f: &mut Fixture) {
    let root = || labels(&[("layerd.io/x", "check-walk")]);
    let with_l = |v: &str| labels(&[("l", v), ("layerd.io/x", "check-walk")]);

    f.prepare_with("a-np", "", root()).await; // no-parent active
    f.prepare_with("p-tmp", "", root()).await;
    f.commit_with("p", "p-tmp", root()).await; // base parent
    f.prepare_with("a", "p", root()).await; // active
    f.view_with("v", "p", root()).await; // view
    f.prepare_with("p-wl-tmp", "", root()).await;
    f.commit_with("p-wl", "p-wl-tmp", with_l("1")).await; // base parent, l=1
    f.prepare_with("a-wl", "p-wl", with_l("2")).await; // active, l=2
    f.view_with("v-wl", "p-wl", with_l("3")).await; // view, l=3
    f.prepare_with("a-np-wl", "", with_l("2")).await; // no-parent active, l=2

    let cases: &[(&[&str], &[&str])] = &[
        (
            &["labels.\"layerd.io/x\"==check-walk"],
            &["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"],
        ),
        (
            &["kind==active,labels.\"layerd.io/x\"==check-walk"],
            &["a-np", "a", "a-wl", "a-np-wl"],
        ),
        (
            &["kind==view,labels.\"layerd.io/x\"==check-walk"],
            &["v", "v-wl"],
        ),
        (
            &["kind==committed,labels.\"layerd.io/x\"==check-walk"],
            &["p", "p-wl"],
        ),
        (&["name==p", "name==a-np-wl"], &["p", "a-np-wl"]),
        (&["name==a-wl,labels.l"], &["a-wl"]),
        (&["parent==p"], &["a", "v"]),
        (
            &["parent!=\"\",labels.\"layerd.io/x\"==check-walk"],
            &["a", "v", "a-wl", "v-wl"],
        ),
        (&["labels.l"], &["p-wl", "a-wl", "v-wl", "a-np-wl"]),
        (&["labels.l==2"], &["a-wl", "a-np-wl"]),
        // beyond containerd's list
        (
            &[],
            &["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"],
        ),
        (&["kind!=committed,labels.l"], &["a-wl", "v-wl", "a-np-wl"]),
        (&["labels.l,labels.l!=2"], &["p-wl", "v-wl"]),
        (&["name==\"a-np\""], &["a-np"]),
        (&["labels.\"l\"==1"], &["p-wl"]),
        (
            &["labels.\"layerd.io/x\""],
            &["a-np", "p", "a", "v", "p-wl", "a-wl", "v-wl", "a-np-wl"],
        ),
        (&["kind==view", "parent==p-wl"], &["v", "v-wl", "a-wl"]),
        (&["name==nothing-has-this-name"], &[]),
        (&["labels.nothing"], &[]),
    ];
    for (i, (filters, matches)) in cases.iter().enumerate() {
        let mut want: Vec<String> = matches.iter().map(|s| s.to_string()).collect();
        want.sort();
        let got = f.walk_names(filters).await;
        assert_eq!(got, want, "[{i}] Walk({filters:?})");
    }

    // Rows carry the pool, kinds, parents and labels.
    for (info, pool) in f.walk(&[]).await {
        assert_eq!(pool, f.pool_name(), "pool of {:?}", info.name);
        assert!(
            info.created > 0 && info.updated >= info.created,
            "times of {:?}",
            info.name
        );
    }
    let rows = f.walk(&["name==v-wl"]).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].0.kind.as_str(), rows[0].0.parent.as_str()),
        ("view", "p-wl")
    );
    assert_eq!(rows[0].0.labels, with_l("3"));

    // Filters that do not parse.
    for bad in ["==active", "labels.\"unterminated==x"] {
        assert_dbus_err!(
            f.mgr.walk(vec![bad.to_string()]).await,
            "InvalidArgument",
            "Walk([{bad:?}])"
        );
    }
}

/// Stat may be called for every Walk row, and agrees with it.
pub async fn stat_in_walk(f: &mut Fixture) {
    let prefix = "stats-in-walk-";
    let c1 = format!("{prefix}c1");
    let c2 = format!("{prefix}c2");
    f.prepare(&format!("{c1}-a"), "").await;
    f.commit(&c1, &format!("{c1}-a")).await;
    f.prepare(&format!("{c2}-a"), &c1).await;
    f.commit(&c2, &format!("{c2}-a")).await;
    f.prepare_with(&format!("{prefix}a1"), &c2, labels(&[("k", "a1")]))
        .await;
    f.view_with(&format!("{prefix}v1"), &c2, labels(&[("k", "v1")]))
        .await;
    f.prepare("unrelated", "").await;

    let rows = f.walk(&[]).await;
    assert_eq!(rows.len(), 5, "rows: {rows:?}");
    for (row, _) in rows {
        let st = f.stat(&row.name).await;
        assert_eq!(st, row, "Stat({:?}) differs from its Walk row", row.name);
    }
}

/// The manager's properties and the pool object describe the configured pool.
pub async fn pool_object(f: &mut Fixture) {
    assert!(!must(f.mgr.version().await, "Version").is_empty());
    assert_eq!(
        must(f.mgr.default_pool().await, "DefaultPool"),
        f.pool_name()
    );
    let pools: Vec<String> = must(f.mgr.pools().await, "Pools")
        .iter()
        .map(|p| p.to_string())
        .collect();
    assert_eq!(
        pools,
        vec![format!("/org/layerd/Layerd1/pools/{}", f.pool_name())]
    );

    let pool = f.main_pool().await;
    assert_eq!(must(pool.name().await, "Pool.Name"), f.pool_name());
    assert_eq!(must(pool.driver().await, "Pool.Driver"), f.backend.driver());
    assert_eq!(
        std::path::PathBuf::from(must(pool.path().await, "Pool.Path")),
        f.pool_path(),
        "Pool.Path"
    );
    assert_eq!(must(pool.health().await, "Pool.Health"), "ok");
    let size = must(pool.data_size().await, "Pool.DataSize");
    let used = must(pool.data_used().await, "Pool.DataUsed");
    assert!(size > 0 && used <= size, "DataSize {size}, DataUsed {used}");

    f.prepare("a", "").await;
    f.commit("c", "a").await;
    f.prepare("b", "c").await;
    f.view("v", "c").await;
    assert_eq!(
        must(pool.layer_count().await, "Pool.LayerCount"),
        3,
        "LayerCount with c, b and v"
    );
    f.remove("v").await;
    assert_eq!(
        must(pool.layer_count().await, "Pool.LayerCount"),
        2,
        "LayerCount after a Remove"
    );
}
