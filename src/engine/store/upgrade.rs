//! The one-time rewrite of a store made by layerd on redb 2 (file format
//! v2, schema 1) into the current redb's format and schema.
//!
//! redb 3 no longer opens the v2 format and redb 4 no longer reads redb 2's
//! tuple encoding (schema 1 keys `last_runs` by `(&str, &str)`), so redb's
//! own path (2.6's in-place `Database::upgrade()`, then 3.x's `Legacy`)
//! would need three redb versions and would rewrite the only copy in place.
//! Instead redb 2 (the `redb2` dependency, used only here) reads every table
//! and the current redb writes them into `<store>.upgrade`, which replaces
//! the store only once it is complete and on disk: a crash or an error
//! before the rename leaves the old file as it was, and the next start
//! begins again. Values are copied byte for byte, so even a record this
//! layerd could not decode is kept.
//!
//! Fault point (`fault-injection`): `store-upgrade-rename`, after the new
//! file is on disk and before it replaces the old one.

use std::fs::File;
use std::path::{Path, PathBuf};

use redb::Database;
use redb2::{MultimapTableHandle, ReadableMultimapTable, ReadableTable, TableHandle};

use super::{
    last_run_key, CHILDREN, KEYS, LAST_RUNS, LAYERS, META, MOUNTS, POOL_TOKENS, SCHEMA,
    SCHEMA_VERSION, TOMBSTONES,
};
use crate::engine::fault;

/// Schema 1's tables, as layerd on redb 2 defined them.
mod v1 {
    use redb2::{MultimapTableDefinition, TableDefinition};

    pub const LAYERS: TableDefinition<u64, &[u8]> = TableDefinition::new("layers");
    pub const KEYS: TableDefinition<&str, u64> = TableDefinition::new("keys");
    pub const CHILDREN: MultimapTableDefinition<u64, u64> =
        MultimapTableDefinition::new("children");
    pub const TOMBSTONES: TableDefinition<u64, &str> = TableDefinition::new("tombstones");
    pub const MOUNTS: TableDefinition<u64, &[u8]> = TableDefinition::new("mounts");
    pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
    pub const POOL_TOKENS: TableDefinition<&str, u64> = TableDefinition::new("pool_tokens");
    pub const LAST_RUNS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("last_runs");

    pub const TABLES: &[&str] = &[
        "layers",
        "keys",
        "tombstones",
        "mounts",
        "meta",
        "pool_tokens",
        "last_runs",
    ];
    pub const MULTIMAP_TABLES: &[&str] = &["children"];
}

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("reading it with redb 2: {0}")]
    Read(Box<redb2::Error>),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: Box<redb::Error>,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// Copying only the tables we know would drop the others' data.
    #[error("it holds a table {0:?} this layerd does not know")]
    UnknownTable(String),
    #[error("its schema is {0}, but only schema 1 was written in redb 2's file format")]
    Schema(u64),
}

macro_rules! from_redb2 {
    ($($t:ty),*) => {$(
        impl From<$t> for UpgradeError {
            fn from(e: $t) -> Self { UpgradeError::Read(Box::new(e.into())) }
        }
    )*};
}
from_redb2!(
    redb2::Error,
    redb2::DatabaseError,
    redb2::TransactionError,
    redb2::TableError,
    redb2::StorageError
);

/// Every row of a schema 1 store.
#[derive(Debug, Default)]
struct Rows {
    layers: Vec<(u64, Vec<u8>)>,
    keys: Vec<(String, u64)>,
    children: Vec<(u64, u64)>,
    tombstones: Vec<(u64, String)>,
    mounts: Vec<(u64, Vec<u8>)>,
    meta: Vec<(String, u64)>,
    pool_tokens: Vec<(String, u64)>,
    last_runs: Vec<((String, String), Vec<u8>)>,
}

/// Rewrites the redb 2 store at `path` in the current format (see the
/// module doc); on error the file at `path` is unchanged.
pub(super) fn from_redb2(path: &Path) -> Result<(), UpgradeError> {
    let io = |what, path: &Path| {
        let path = path.to_path_buf();
        move |source| UpgradeError::Io { what, path, source }
    };
    let rows = read_v1(path)?;
    check(&rows)?;

    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".upgrade");
    let tmp = PathBuf::from(tmp);
    // A leftover of an upgrade that did not finish: begin again.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io("removing the unfinished", &tmp)(e))
        }
        _ => {}
    }
    write_current(&tmp, &rows).map_err(|e| UpgradeError::Write {
        path: tmp.clone(),
        source: Box::new(e),
    })?;
    // The commit was durable; this also covers the file's own metadata.
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io("syncing", &tmp))?;
    fault::hit("store-upgrade-rename");
    std::fs::rename(&tmp, path).map_err(io("renaming into place", &tmp))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing the directory", dir))?;
    tracing::info!(
        path = %path.display(),
        layers = rows.layers.len(),
        "metadata store rewritten from redb 2's file format into the current one"
    );
    Ok(())
}

fn check(rows: &Rows) -> Result<(), UpgradeError> {
    match rows.meta.iter().find(|(k, _)| k == SCHEMA) {
        Some(&(_, v)) if v != 1 => Err(UpgradeError::Schema(v)),
        _ => Ok(()),
    }
}

fn read_v1(path: &Path) -> Result<Rows, UpgradeError> {
    let db = redb2::Database::open(path)?;
    let tx = db.begin_read()?;
    for t in tx.list_tables()? {
        if !v1::TABLES.contains(&t.name()) {
            return Err(UpgradeError::UnknownTable(t.name().to_string()));
        }
    }
    for t in tx.list_multimap_tables()? {
        if !v1::MULTIMAP_TABLES.contains(&t.name()) {
            return Err(UpgradeError::UnknownTable(t.name().to_string()));
        }
    }
    let mut rows = Rows::default();
    // A table that is not there (an older layerd had no such table) is empty.
    macro_rules! copy {
        ($field:ident, $def:expr, |$k:ident, $v:ident| $row:expr) => {
            match tx.open_table($def) {
                Ok(t) => {
                    for row in t.iter()? {
                        let (k, v) = row?;
                        let ($k, $v) = (k.value(), v.value());
                        rows.$field.push($row);
                    }
                }
                Err(redb2::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(e.into()),
            }
        };
    }
    copy!(layers, v1::LAYERS, |k, v| (k, v.to_vec()));
    copy!(keys, v1::KEYS, |k, v| (k.to_string(), v));
    copy!(tombstones, v1::TOMBSTONES, |k, v| (k, v.to_string()));
    copy!(mounts, v1::MOUNTS, |k, v| (k, v.to_vec()));
    copy!(meta, v1::META, |k, v| (k.to_string(), v));
    copy!(pool_tokens, v1::POOL_TOKENS, |k, v| (k.to_string(), v));
    copy!(last_runs, v1::LAST_RUNS, |k, v| (
        (k.0.to_string(), k.1.to_string()),
        v.to_vec()
    ));
    match tx.open_multimap_table(v1::CHILDREN) {
        Ok(t) => {
            for row in t.iter()? {
                let (parent, children) = row?;
                for child in children {
                    rows.children.push((parent.value(), child?.value()));
                }
            }
        }
        Err(redb2::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(rows)
}

fn write_current(tmp: &Path, rows: &Rows) -> Result<(), redb::Error> {
    let db = Database::create(tmp)?;
    // Default durability: Immediate (fsync at commit).
    let tx = db.begin_write()?;
    {
        let mut t = tx.open_table(LAYERS)?;
        for (k, v) in &rows.layers {
            t.insert(*k, v.as_slice())?;
        }
        let mut t = tx.open_table(KEYS)?;
        for (k, v) in &rows.keys {
            t.insert(k.as_str(), *v)?;
        }
        let mut t = tx.open_multimap_table(CHILDREN)?;
        for (k, v) in &rows.children {
            t.insert(*k, *v)?;
        }
        let mut t = tx.open_table(TOMBSTONES)?;
        for (k, v) in &rows.tombstones {
            t.insert(*k, v.as_str())?;
        }
        let mut t = tx.open_table(MOUNTS)?;
        for (k, v) in &rows.mounts {
            t.insert(*k, v.as_slice())?;
        }
        let mut t = tx.open_table(POOL_TOKENS)?;
        for (k, v) in &rows.pool_tokens {
            t.insert(k.as_str(), *v)?;
        }
        let mut t = tx.open_table(LAST_RUNS)?;
        for ((pool, op), v) in &rows.last_runs {
            t.insert(last_run_key(pool, op).as_slice(), v.as_slice())?;
        }
        let mut t = tx.open_table(META)?;
        for (k, v) in &rows.meta {
            t.insert(k.as_str(), *v)?;
        }
        t.insert(SCHEMA, SCHEMA_VERSION)?;
    }
    tx.commit()?;
    db.close()?;
    Ok(())
}
