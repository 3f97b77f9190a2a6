//! A store written by layerd on redb 2 (file format v2, schema 1) opens
//! with the current `Store` and keeps every row; a current store is left
//! alone; a torn upgrade leaves the old file intact.
//!
//! `write_v1` mirrors the redb 2 writer of `src/engine/store.rs` before the
//! upgrade (same table names and types, the tuple key of `last_runs`, JSON
//! values), through the `redb2` crate the upgrade reads it with.

use std::collections::BTreeMap;
use std::path::Path;

#[path = "fixtures/store_v2/contents.rs"]
mod contents;

use std::io::Read;

use layerd::engine::store::{LastRun, MountRef, Store};
use layerd::engine::types::{Kind, LayerRecord, State};
use redb2::{MultimapTableDefinition, ReadableTableMetadata, TableDefinition};

const LAYERS: TableDefinition<u64, &[u8]> = TableDefinition::new("layers");
const KEYS: TableDefinition<&str, u64> = TableDefinition::new("keys");
const CHILDREN: MultimapTableDefinition<u64, u64> = MultimapTableDefinition::new("children");
const TOMBSTONES: TableDefinition<u64, &str> = TableDefinition::new("tombstones");
const MOUNTS: TableDefinition<u64, &[u8]> = TableDefinition::new("mounts");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const POOL_TOKENS: TableDefinition<&str, u64> = TableDefinition::new("pool_tokens");
const LAST_RUNS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("last_runs");

/// What a schema 1 store holds, as the test wrote it.
struct Old {
    layers: Vec<LayerRecord>,
    tombstones: Vec<(u64, String)>,
    mounts: Vec<(u64, MountRef)>,
    tokens: Vec<(String, u64)>,
    runs: Vec<(String, String, LastRun)>,
    next_id: u64,
}

fn record(
    id: u64,
    pool: &str,
    key: &str,
    parent: Option<u64>,
    kind: Kind,
    state: State,
) -> LayerRecord {
    let mut labels = BTreeMap::new();
    labels.insert("containerd.io/gc.root".into(), format!("r{id}"));
    labels.insert("ünïcode".into(), "värde".into());
    LayerRecord {
        id,
        pool: pool.into(),
        key: key.into(),
        parent,
        kind,
        state,
        labels,
        created: 1_700_000_000_000_000 + id,
        updated: 1_700_000_000_500_000 + id,
    }
}

fn old_contents() -> Old {
    let mut layers = Vec::new();
    // A chain long enough to fill several pages of every table.
    for id in 1..=300u64 {
        let parent = (id > 1).then(|| id - 1);
        let pool = if id % 3 == 0 { "fast" } else { "main" };
        layers.push(record(
            id,
            pool,
            &format!("layer-{id}"),
            parent,
            Kind::Committed,
            State::Ready,
        ));
    }
    layers.push(record(
        301,
        "main",
        "containerd-default/active",
        Some(300),
        Kind::Active,
        State::Ready,
    ));
    layers.push(record(
        302,
        "main",
        "view",
        Some(300),
        Kind::View,
        State::Creating,
    ));
    let mut labels = BTreeMap::new();
    labels.insert("a".into(), "b".into());
    layers.push(record(
        303,
        "main",
        "committing/a",
        Some(300),
        Kind::Active,
        State::Committing {
            name: "committed-name".into(),
            labels,
        },
    ));
    Old {
        layers,
        tombstones: vec![(400, "main".into()), (401, "fast".into())],
        mounts: vec![
            (
                301,
                MountRef {
                    refs: 2,
                    pinned: false,
                },
            ),
            (
                300,
                MountRef {
                    refs: 0,
                    pinned: true,
                },
            ),
        ],
        tokens: vec![("main".into(), 0xdead_beef_cafe), ("fast".into(), 7)],
        runs: vec![
            (
                "main".into(),
                "trim".into(),
                LastRun {
                    time: 11,
                    bytes: 4096,
                    outcome: "ok".into(),
                },
            ),
            (
                "main".into(),
                "balance".into(),
                LastRun {
                    time: 12,
                    bytes: 0,
                    outcome: "failed: no space".into(),
                },
            ),
            (
                "fast".into(),
                "trim".into(),
                LastRun {
                    time: 13,
                    bytes: 1,
                    outcome: "cancelled".into(),
                },
            ),
        ],
        next_id: 402,
    }
}

/// A store as layerd on redb 2 wrote it: `Store::open`'s tables and meta
/// rows, then the rows, in that writer's encodings.
fn write_v1(path: &Path, old: &Old) {
    let db = redb2::Database::create(path).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let mut layers = tx.open_table(LAYERS).unwrap();
        let mut keys = tx.open_table(KEYS).unwrap();
        let mut children = tx.open_multimap_table(CHILDREN).unwrap();
        for r in &old.layers {
            layers
                .insert(r.id, serde_json::to_vec(r).unwrap().as_slice())
                .unwrap();
            keys.insert(r.key.as_str(), r.id).unwrap();
            if let Some(p) = r.parent {
                children.insert(p, r.id).unwrap();
            }
        }
        let mut t = tx.open_table(TOMBSTONES).unwrap();
        for (id, pool) in &old.tombstones {
            t.insert(*id, pool.as_str()).unwrap();
        }
        let mut t = tx.open_table(MOUNTS).unwrap();
        for (id, m) in &old.mounts {
            t.insert(*id, serde_json::to_vec(m).unwrap().as_slice())
                .unwrap();
        }
        let mut t = tx.open_table(POOL_TOKENS).unwrap();
        for (pool, token) in &old.tokens {
            t.insert(pool.as_str(), *token).unwrap();
        }
        let mut t = tx.open_table(LAST_RUNS).unwrap();
        for (pool, op, run) in &old.runs {
            t.insert(
                (pool.as_str(), op.as_str()),
                serde_json::to_vec(run).unwrap().as_slice(),
            )
            .unwrap();
        }
        let mut meta = tx.open_table(META).unwrap();
        meta.insert("schema", 1).unwrap();
        meta.insert("next_id", old.next_id).unwrap();
    }
    tx.commit().unwrap();
}

/// Every row of `old`, read back through the current `Store`.
fn assert_holds(store: &Store, old: &Old) {
    store
        .read(|tx| -> Result<(), layerd::engine::store::StoreError> {
            let mut got = tx.layers()?;
            got.sort_by_key(|r| r.id);
            assert_eq!(got.len(), old.layers.len());
            for (g, w) in got.iter().zip(&old.layers) {
                assert_eq!(
                    serde_json::to_value(g).unwrap(),
                    serde_json::to_value(w).unwrap()
                );
                assert_eq!(tx.id_of(&w.key)?, Some(w.id), "key {}", w.key);
                let want: Vec<u64> = old
                    .layers
                    .iter()
                    .filter(|c| c.parent == Some(w.id))
                    .map(|c| c.id)
                    .collect();
                assert_eq!(tx.children(w.id)?, want, "children of {}", w.id);
            }
            let mut tombstones = old.tombstones.clone();
            tombstones.sort();
            assert_eq!(tx.tombstones()?, tombstones);
            let mut mounts = tx.mount_refs()?;
            mounts.sort_by_key(|m| m.0);
            let mut want = old.mounts.clone();
            want.sort_by_key(|m| m.0);
            assert_eq!(mounts, want);
            for (pool, token) in &old.tokens {
                assert_eq!(tx.pool_token(pool)?, Some(*token), "token of {pool}");
            }
            for (pool, op, run) in &old.runs {
                assert_eq!(tx.last_run(pool, op)?.as_ref(), Some(run), "{op} of {pool}");
            }
            assert_eq!(tx.last_run("main", "extend")?, None);
            assert_eq!(tx.next_id()?, old.next_id);
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_redb2_store_opens_with_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layerd.redb");
    let old = old_contents();
    write_v1(&path, &old);

    let store = Store::open(&path).unwrap();
    assert_holds(&store, &old);
    assert!(!dir.path().join("layerd.redb.upgrade").exists());

    // The upgraded store is an ordinary one: it takes writes and keeps them.
    let id = store
        .write(
            true,
            |tx| -> Result<u64, layerd::engine::store::StoreError> {
                let id = tx.alloc_id()?;
                tx.set_last_run(
                    "main",
                    "trim",
                    &LastRun {
                        time: 99,
                        bytes: 2,
                        outcome: "ok".into(),
                    },
                )?;
                Ok(id)
            },
        )
        .unwrap();
    assert_eq!(id, old.next_id);
    drop(store);
    let store = Store::open(&path).unwrap();
    store
        .read(|tx| -> Result<(), layerd::engine::store::StoreError> {
            assert_eq!(tx.next_id()?, old.next_id + 1);
            assert_eq!(tx.last_run("main", "trim")?.map(|r| r.time), Some(99));
            assert_eq!(tx.last_run("main", "balance")?.map(|r| r.time), Some(12));
            Ok(())
        })
        .unwrap();
}

/// The fixture layerd on redb 2 itself wrote
/// (`scripts/make-store-v2-fixture.sh`).
#[test]
fn a_store_written_by_layerd_on_redb2_opens_with_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layerd.redb");
    let gz = std::fs::File::open(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/store_v2/layerd.redb.gz"
    ))
    .unwrap();
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut bytes)
        .unwrap();
    std::fs::write(&path, bytes).unwrap();
    assert!(
        matches!(
            redb::Database::open(&path),
            Err(redb::DatabaseError::UpgradeRequired(2))
        ),
        "the fixture is not in redb 2's file format v2"
    );
    let store = Store::open(&path).unwrap();
    contents::check(&store);
    drop(store);
    contents::check(&Store::open(&path).unwrap());
}

/// The fixture's rows, written by today's layerd, read back the same.
#[test]
fn the_fixture_rows_round_trip_in_a_current_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("layerd.redb")).unwrap();
    contents::write(&store);
    contents::check(&store);
}

#[test]
fn an_empty_redb2_store_upgrades_to_an_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layerd.redb");
    let old = Old {
        layers: vec![],
        tombstones: vec![],
        mounts: vec![],
        tokens: vec![],
        runs: vec![],
        next_id: 1,
    };
    write_v1(&path, &old);
    let store = Store::open(&path).unwrap();
    assert_holds(&store, &old);
}

#[test]
fn a_current_store_is_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layerd.redb");
    write_v1(&path, &old_contents());
    drop(Store::open(&path).unwrap());
    let before = std::fs::read(&path).unwrap();
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
    let store = Store::open(&path).unwrap();
    assert_holds(&store, &old_contents());
    drop(store);
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap()),
        ino
    );
    assert_eq!(std::fs::read(&path).unwrap().len(), before.len());
    assert!(!dir.path().join("layerd.redb.upgrade").exists());
}

#[test]
fn a_redb2_store_with_an_unknown_table_is_refused_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layerd.redb");
    let old = old_contents();
    write_v1(&path, &old);
    {
        let db = redb2::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(TableDefinition::<u64, u64>::new("someone_elses"))
            .unwrap()
            .insert(1, 2)
            .unwrap();
        tx.commit().unwrap();
    }
    let err = Store::open(&path).err().expect("refused");
    let msg = std::error::Error::source(&err)
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.to_string().contains("someone_elses"), "{err} / {msg}");
    // Still redb 2's file, with every row.
    let db = redb2::Database::open(&path).unwrap();
    let tx = db.begin_read().unwrap();
    assert_eq!(
        tx.open_table(LAYERS).unwrap().len().unwrap(),
        old.layers.len() as u64
    );
}

/// A child of this test binary that opens the store with the fault point
/// `store-upgrade-rename` armed: it dies after writing the new file and
/// before the rename.
#[cfg(feature = "fault-injection")]
#[test]
fn torn_upgrade_child() {
    if let Ok(path) = std::env::var("STORE_UPGRADE_CHILD") {
        let _ = Store::open(Path::new(&path));
        panic!("the fault point did not kill the child");
    }
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_torn_upgrade_leaves_the_old_store_and_is_redone() {
    use std::os::unix::process::ExitStatusExt;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layerd.redb");
    let old = old_contents();
    write_v1(&path, &old);
    let before = std::fs::read(&path).unwrap();

    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "torn_upgrade_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("STORE_UPGRADE_CHILD", &path)
        .env("LAYERD_TEST_FAULT", "store-upgrade-rename")
        .status()
        .unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    // The new file was complete but not in place; the old one is untouched.
    assert!(dir.path().join("layerd.redb.upgrade").exists());
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the old store changed"
    );

    let store = Store::open(&path).unwrap();
    assert_holds(&store, &old);
    assert!(!dir.path().join("layerd.redb.upgrade").exists());
}
