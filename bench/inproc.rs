//! The same work without D-Bus: layerd's own `Engine` (library API) in the
//! benchmark's process, on its own store and pool directories of the same
//! file system, and bare `Store` transactions shaped like the engine's.
//! Used only to say where the daemon's time goes:
//!
//! * daemon − in-process engine ≈ D-Bus, zbus dispatch, the blocking-thread
//!   hop and (de)serialisation;
//! * in-process engine − raw kernel steps − one fdatasync ≈ what the store
//!   and the engine's logic add.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use layerd::engine::store::Store;
use layerd::engine::types::{Kind, LayerRecord, State};
use layerd::engine::{Backing, Driver, Engine, EngineConfig, PoolSpec, Thresholds};

use crate::stats::Samples;

/// A directory pool as the daemon's config would give it. The one place
/// that knows `PoolSpec`'s fields.
fn pool_spec(name: &str, driver: Driver, path: std::path::PathBuf) -> PoolSpec {
    PoolSpec {
        name: name.into(),
        driver,
        backing: Backing::Existing,
        path,
        size: None,
        thresholds: Thresholds::default(),
        balance: layerd::backend::BalanceOptions {
            dusage: vec![0, 5, 10],
            musage: vec![0, 5],
        },
        thin: None,
    }
}

pub struct InProc {
    pub engine: Engine,
    store: Store,
}

fn e<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> Result<T, String> {
    r.map_err(|err| format!("in-process {what}: {err}"))
}

/// Times, in this process, what the daemon's start-up does before it
/// touches D-Bus, on the daemon's own (stopped) state: opening the store
/// alone, then `Engine::open` (store, pools incl. the overlay probe mount,
/// reconciliation, layer counts, first sample). Returns (store, engine).
pub fn time_open(
    cfg: &crate::common::DaemonConfig,
) -> Result<(std::time::Duration, std::time::Duration), String> {
    let t = Instant::now();
    let store = e(
        Store::open(&cfg.state_dir.join("layerd.redb")),
        "Store::open",
    )?;
    let store_open = t.elapsed();
    drop(store);
    let pools = cfg
        .pools
        .iter()
        .map(|p| {
            let driver = match p.driver.as_str() {
                "vfs" => Driver::Vfs,
                "btrfs" => Driver::Btrfs,
                _ => Driver::Overlay,
            };
            pool_spec(&p.name, driver, p.path.clone())
        })
        .collect();
    let t = Instant::now();
    let (engine, _) = e(
        Engine::open(EngineConfig {
            state_dir: cfg.state_dir.clone(),
            run_dir: cfg.run_dir.clone(),
            default_pool: cfg.default_pool.clone(),
            pools,
        }),
        "Engine::open",
    )?;
    let engine_open = t.elapsed();
    drop(engine);
    Ok((store_open, engine_open))
}

impl InProc {
    /// An engine with an overlay pool "main" and a vfs pool "vfs" under
    /// `dir` (on the benchmark's xfs), and a btrfs pool "btrfs" at `btrfs`
    /// (a directory on the benchmark's btrfs) when given; daemon mounts
    /// under `run_dir`.
    pub fn open(dir: &Path, run_dir: &Path, btrfs: Option<&Path>) -> Result<InProc, String> {
        let mut pools: Vec<PoolSpec> = [
            ("main", Driver::Overlay, "overlay"),
            ("vfs", Driver::Vfs, "vfs"),
        ]
        .into_iter()
        .map(|(name, driver, sub)| pool_spec(name, driver, dir.join(sub)))
        .collect();
        if let Some(b) = btrfs {
            pools.push(pool_spec("btrfs", Driver::Btrfs, b.to_path_buf()));
        }
        let (engine, _) = e(
            Engine::open(EngineConfig {
                state_dir: dir.join("state"),
                run_dir: run_dir.to_path_buf(),
                default_pool: "main".into(),
                pools,
            }),
            "Engine::open",
        )?;
        let store = e(Store::open(&dir.join("store-only.redb")), "Store::open")?;
        Ok(InProc { engine, store })
    }

    pub fn prepare(
        &self,
        s: &mut Samples,
        key: &str,
        parent: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        let t = Instant::now();
        e(
            self.engine
                .create_layer(Kind::Active, key, parent, labels.clone()),
            "Prepare",
        )?;
        s.push(t.elapsed());
        Ok(())
    }

    pub fn commit(
        &self,
        s: &mut Samples,
        name: &str,
        key: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        let t = Instant::now();
        e(self.engine.commit(name, key, labels.clone()), "Commit")?;
        s.push(t.elapsed());
        Ok(())
    }

    pub fn remove(&self, s: Option<&mut Samples>, key: &str) -> Result<(), String> {
        let t = Instant::now();
        e(self.engine.remove(key), "Remove")?;
        if let Some(s) = s {
            s.push(t.elapsed());
        }
        Ok(())
    }

    pub fn mount(&self, s: &mut Samples, key: &str) -> Result<std::path::PathBuf, String> {
        let t = Instant::now();
        let p = e(self.engine.mount(key), "Mount")?;
        s.push(t.elapsed());
        Ok(p)
    }

    pub fn unmount(&self, s: &mut Samples, key: &str) -> Result<(), String> {
        let t = Instant::now();
        e(self.engine.unmount(key), "Unmount")?;
        s.push(t.elapsed());
        Ok(())
    }

    pub fn stat(&self, s: &mut Samples, key: &str) -> Result<(), String> {
        let t = Instant::now();
        e(self.engine.stat(key), "Stat")?;
        s.push(t.elapsed());
        Ok(())
    }

    pub fn cleanup(&self) -> Result<u64, String> {
        e(self.engine.cleanup(), "Cleanup")
    }

    /// The store transactions of a parentless Prepare, without the kernel
    /// step: a non-durable intent (new id, record `Creating`, key) and the
    /// durable `Ready`. Then the same record removed again, durably (the
    /// shape of Remove), untimed.
    pub fn store_prepare(
        &self,
        intent: &mut Samples,
        durable: &mut Samples,
        one: &mut Samples,
        key: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        let now = layerd::shared::time::now_us();
        let mut rec = LayerRecord {
            id: 0,
            pool: "main".into(),
            key: key.into(),
            parent: None,
            kind: Kind::Active,
            state: State::Creating,
            labels: labels.clone(),
            created: now,
            updated: now,
        };
        let t = Instant::now();
        let id = e(
            self.store
                .write(false, |tx| -> layerd::engine::store::Result<u64> {
                    let id = tx.alloc_id()?;
                    let mut r = rec.clone();
                    r.id = id;
                    tx.put(&r)?;
                    tx.set_key(key, id)?;
                    Ok(id)
                }),
            "store intent",
        )?;
        intent.push(t.elapsed());
        rec.id = id;
        rec.state = State::Ready;
        let t = Instant::now();
        e(self.store.write(true, |tx| tx.put(&rec)), "store durable")?;
        durable.push(t.elapsed());

        // The same record dropped again in one durable transaction: what a
        // single-transaction Prepare would cost (its mirror image).
        let t = Instant::now();
        e(
            self.store
                .write(true, |tx| -> layerd::engine::store::Result<()> {
                    tx.delete(id)?;
                    tx.delete_key(key)?;
                    Ok(())
                }),
            "store delete",
        )?;
        one.push(t.elapsed());
        Ok(())
    }
}
