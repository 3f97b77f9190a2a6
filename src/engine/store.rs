//! The metadata store: layer records, the key name space, parent→children
//! index, tombstones of removed layers, the daemon's mount references and
//! the last maintenance run per pool and kind, in one redb file
//! (`<state_dir>/layerd.redb`).
//!
//! redb gives ACID transactions with copy-on-write B-trees and a checksummed
//! commit, so a crash leaves either the old or the new state. Durability is
//! chosen per transaction: a step that acknowledges something to a client
//! is durable (one fsync); intents written before a kernel step may be
//! non-durable because recovery treats a missing intent the same as a
//! rolled-back one (see engine/recovery.rs).
//!
//! A store written by a layerd on redb 2 (file format v2, schema 1) is
//! rewritten into the current format once, at open (`store/upgrade.rs`).
//! Keys are plain integers, strings and byte strings: no tuples, whose
//! encoding redb changed in 3.0 and stopped reading in 4.0.

mod upgrade;

use std::path::{Path, PathBuf};

use redb::{
    Database, Durability, MultimapTableDefinition, ReadableDatabase, ReadableMultimapTable,
    ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};

use crate::engine::types::LayerRecord;

const LAYERS: TableDefinition<u64, &[u8]> = TableDefinition::new("layers");
const KEYS: TableDefinition<&str, u64> = TableDefinition::new("keys");
const CHILDREN: MultimapTableDefinition<u64, u64> = MultimapTableDefinition::new("children");
const TOMBSTONES: TableDefinition<u64, &str> = TableDefinition::new("tombstones");
const MOUNTS: TableDefinition<u64, &[u8]> = TableDefinition::new("mounts");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// pool name → token also written into the pool's storage, proving the
/// storage and this store belong together.
const POOL_TOKENS: TableDefinition<&str, u64> = TableDefinition::new("pool_tokens");

/// [`last_run_key`]`(pool name, operation)` → the last maintenance run of
/// that kind on that pool ([`LastRun`] as JSON), so LastTrim/LastBalance
/// survive restarts.
const LAST_RUNS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("last_runs");

const NEXT_ID: &str = "next_id";
const SCHEMA: &str = "schema";
/// 1: redb 2, `last_runs` keyed by a `(&str, &str)` tuple; 2: the current
/// redb, `last_runs` keyed by [`last_run_key`].
const SCHEMA_VERSION: u64 = 2;

/// A `last_runs` key: the pool name's length (4 bytes, big-endian), the
/// pool name, the operation. Our own encoding, so no redb release can
/// change it.
fn last_run_key(pool: &str, operation: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + pool.len() + operation.len());
    key.extend_from_slice(&(pool.len() as u32).to_be_bytes());
    key.extend_from_slice(pool.as_bytes());
    key.extend_from_slice(operation.as_bytes());
    key
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Db(#[from] redb::Error),
    #[error("record {id} is corrupt: {source}")]
    Corrupt {
        id: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("store schema {found} is newer than this layerd understands ({SCHEMA_VERSION})")]
    Schema { found: u64 },
    /// Schema 1 was only ever written in redb 2's file format, which the
    /// upgrade reads; one in the current format was not made by layerd.
    #[error("store schema {found} in redb's current file format was not written by layerd: cannot upgrade it")]
    OldSchema { found: u64 },
    #[error("upgrading the store {path} from redb 2's file format: {source}")]
    Upgrade {
        path: PathBuf,
        #[source]
        source: Box<upgrade::UpgradeError>,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Db(e.into()) }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

pub type Result<T> = std::result::Result<T, StoreError>;

/// A daemon-held mount of a layer: `refs` from Mount() calls, and `pinned`
/// when the daemon mounted it to hand out a bind spec (chains whose overlay
/// options do not fit one mount(2) page).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRef {
    pub refs: u32,
    pub pinned: bool,
}

/// The last maintenance run of one kind on one pool: when it ended (µs
/// since the epoch), the bytes it reported, and its outcome (`ok`,
/// `failed: <why>`, `cancelled`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastRun {
    pub time: u64,
    pub bytes: u64,
    pub outcome: String,
}

impl MountRef {
    pub fn held(&self) -> bool {
        self.refs > 0 || self.pinned
    }
}

pub struct Store {
    db: Database,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let db = match Database::create(path) {
            Err(redb::DatabaseError::UpgradeRequired(_)) => {
                upgrade::from_redb2(path).map_err(|e| StoreError::Upgrade {
                    path: path.to_path_buf(),
                    source: Box::new(e),
                })?;
                Database::create(path)?
            }
            db => db?,
        };
        let tx = db.begin_write()?;
        {
            tx.open_table(LAYERS)?;
            tx.open_table(KEYS)?;
            tx.open_multimap_table(CHILDREN)?;
            tx.open_table(TOMBSTONES)?;
            tx.open_table(MOUNTS)?;
            tx.open_table(POOL_TOKENS)?;
            tx.open_table(LAST_RUNS)?;
            let mut meta = tx.open_table(META)?;
            let schema = meta.get(SCHEMA)?.map(|v| v.value());
            match schema {
                None => {
                    meta.insert(SCHEMA, SCHEMA_VERSION)?;
                    meta.insert(NEXT_ID, 1)?;
                }
                Some(v) if v > SCHEMA_VERSION => return Err(StoreError::Schema { found: v }),
                Some(v) if v < SCHEMA_VERSION => return Err(StoreError::OldSchema { found: v }),
                Some(_) => {}
            }
        }
        tx.commit()?;
        Ok(Store { db })
    }

    /// Runs `f` in a write transaction; commits if it returns Ok, aborts
    /// otherwise. `durable` = fsync before returning.
    pub fn write<T, E>(
        &self,
        durable: bool,
        f: impl FnOnce(&WriteTx) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E>
    where
        E: From<StoreError>,
    {
        let mut tx = self.db.begin_write().map_err(StoreError::from)?;
        tx.set_durability(if durable {
            Durability::Immediate
        } else {
            Durability::None
        })
        .map_err(StoreError::from)?;
        let wtx = WriteTx { tx };
        let out = f(&wtx)?;
        wtx.tx.commit().map_err(StoreError::from)?;
        Ok(out)
    }

    pub fn read<T, E>(
        &self,
        f: impl FnOnce(&ReadTx) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E>
    where
        E: From<StoreError>,
    {
        let tx = self.db.begin_read().map_err(StoreError::from)?;
        f(&ReadTx { tx })
    }
}

fn decode(id: u64, bytes: &[u8]) -> Result<LayerRecord> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt { id, source })
}

fn encode(rec: &LayerRecord) -> Vec<u8> {
    // Serializing plain structs of strings and integers cannot fail.
    serde_json::to_vec(rec).unwrap_or_default()
}

/// Reads shared by read and write transactions.
macro_rules! reads {
    () => {
        pub fn id_of(&self, key: &str) -> Result<Option<u64>> {
            let t = self.tx.open_table(KEYS)?;
            let id = t.get(key)?.map(|v| v.value());
            Ok(id)
        }

        pub fn get(&self, id: u64) -> Result<Option<LayerRecord>> {
            let t = self.tx.open_table(LAYERS)?;
            let v = t.get(id)?;
            v.map(|v| decode(id, v.value())).transpose()
        }

        pub fn by_key(&self, key: &str) -> Result<Option<LayerRecord>> {
            match self.id_of(key)? {
                Some(id) => self.get(id),
                None => Ok(None),
            }
        }

        pub fn children(&self, id: u64) -> Result<Vec<u64>> {
            let t = self.tx.open_multimap_table(CHILDREN)?;
            let mut out = Vec::new();
            for c in t.get(id)? {
                out.push(c?.value());
            }
            Ok(out)
        }

        pub fn layers(&self) -> Result<Vec<LayerRecord>> {
            let t = self.tx.open_table(LAYERS)?;
            let mut out = Vec::with_capacity(t.len()? as usize);
            for row in t.iter()? {
                let (k, v) = row?;
                out.push(decode(k.value(), v.value())?);
            }
            Ok(out)
        }

        pub fn mount_ref(&self, id: u64) -> Result<MountRef> {
            let t = self.tx.open_table(MOUNTS)?;
            let v = t.get(id)?;
            Ok(v.and_then(|v| serde_json::from_slice(v.value()).ok())
                .unwrap_or_default())
        }

        pub fn mount_refs(&self) -> Result<Vec<(u64, MountRef)>> {
            let t = self.tx.open_table(MOUNTS)?;
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                out.push((
                    k.value(),
                    serde_json::from_slice(v.value()).unwrap_or_default(),
                ));
            }
            Ok(out)
        }

        pub fn tombstones(&self) -> Result<Vec<(u64, String)>> {
            let t = self.tx.open_table(TOMBSTONES)?;
            let mut out = Vec::new();
            for row in t.iter()? {
                let (k, v) = row?;
                out.push((k.value(), v.value().to_string()));
            }
            Ok(out)
        }

        pub fn pool_token(&self, pool: &str) -> Result<Option<u64>> {
            let t = self.tx.open_table(POOL_TOKENS)?;
            let v = t.get(pool)?.map(|v| v.value());
            Ok(v)
        }

        /// The last `operation` run on `pool`, if any was recorded.
        pub fn last_run(&self, pool: &str, operation: &str) -> Result<Option<LastRun>> {
            let t = self.tx.open_table(LAST_RUNS)?;
            let v = t.get(last_run_key(pool, operation).as_slice())?;
            Ok(v.and_then(|v| serde_json::from_slice(v.value()).ok()))
        }

        /// The id the next layer will get; ids below it were handed out by
        /// a transaction that reached the disk.
        pub fn next_id(&self) -> Result<u64> {
            let t = self.tx.open_table(META)?;
            let id = t.get(NEXT_ID)?.map(|v| v.value()).unwrap_or(1);
            Ok(id)
        }
    };
}

pub struct ReadTx {
    tx: redb::ReadTransaction,
}

impl ReadTx {
    reads!();
}

pub struct WriteTx {
    tx: redb::WriteTransaction,
}

impl WriteTx {
    reads!();

    pub fn alloc_id(&self) -> Result<u64> {
        let mut t = self.tx.open_table(META)?;
        let id = t.get(NEXT_ID)?.map(|v| v.value()).unwrap_or(1);
        t.insert(NEXT_ID, id + 1)?;
        Ok(id)
    }

    /// Inserts or replaces a record (its key mapping is separate).
    pub fn put(&self, rec: &LayerRecord) -> Result<()> {
        let mut t = self.tx.open_table(LAYERS)?;
        t.insert(rec.id, encode(rec).as_slice())?;
        Ok(())
    }

    pub fn delete(&self, id: u64) -> Result<()> {
        let mut t = self.tx.open_table(LAYERS)?;
        t.remove(id)?;
        Ok(())
    }

    pub fn set_key(&self, key: &str, id: u64) -> Result<()> {
        let mut t = self.tx.open_table(KEYS)?;
        t.insert(key, id)?;
        Ok(())
    }

    pub fn delete_key(&self, key: &str) -> Result<()> {
        let mut t = self.tx.open_table(KEYS)?;
        t.remove(key)?;
        Ok(())
    }

    pub fn add_child(&self, parent: u64, child: u64) -> Result<()> {
        let mut t = self.tx.open_multimap_table(CHILDREN)?;
        t.insert(parent, child)?;
        Ok(())
    }

    pub fn delete_child(&self, parent: u64, child: u64) -> Result<()> {
        let mut t = self.tx.open_multimap_table(CHILDREN)?;
        t.remove(parent, child)?;
        Ok(())
    }

    pub fn add_tombstone(&self, id: u64, pool: &str) -> Result<()> {
        let mut t = self.tx.open_table(TOMBSTONES)?;
        t.insert(id, pool)?;
        Ok(())
    }

    pub fn delete_tombstone(&self, id: u64) -> Result<()> {
        let mut t = self.tx.open_table(TOMBSTONES)?;
        t.remove(id)?;
        Ok(())
    }

    pub fn set_pool_token(&self, pool: &str, token: u64) -> Result<()> {
        let mut t = self.tx.open_table(POOL_TOKENS)?;
        t.insert(pool, token)?;
        Ok(())
    }

    pub fn set_last_run(&self, pool: &str, operation: &str, run: &LastRun) -> Result<()> {
        let mut t = self.tx.open_table(LAST_RUNS)?;
        let bytes = serde_json::to_vec(run).unwrap_or_default();
        t.insert(last_run_key(pool, operation).as_slice(), bytes.as_slice())?;
        Ok(())
    }

    pub fn set_mount_ref(&self, id: u64, m: MountRef) -> Result<()> {
        let mut t = self.tx.open_table(MOUNTS)?;
        if m.held() {
            let bytes = serde_json::to_vec(&m).unwrap_or_default();
            t.insert(id, bytes.as_slice())?;
        } else {
            t.remove(id)?;
        }
        Ok(())
    }
}
