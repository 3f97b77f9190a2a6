//! containerd's Snapshotter calls, each one engine call: keys go through the
//! socket's [`Scope`], parentless layers go to the socket's pool, errors
//! through error.rs. Nothing is decided here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::Status;
use containerd_snapshots::{Info, Kind as CKind, Usage};

use super::error;
use super::scope::Scope;
use crate::engine::types::{Kind, LayerInfo};
use crate::engine::Engine;
use crate::shared::mount::MountSpec;

/// One socket: one pool, one key space.
pub struct Snapshotter {
    pub engine: Arc<Engine>,
    pub pool: String,
    pub scope: Scope,
}

/// Runs one engine call (see engine::guard) and maps its error.
fn call<T>(f: impl FnOnce() -> crate::engine::error::Result<T>) -> Result<T, Status> {
    match crate::engine::guard::call(f) {
        Ok(r) => r.map_err(error::status),
        Err(what) => Err(error::panicked(what)),
    }
}

fn labels_in(l: HashMap<String, String>) -> BTreeMap<String, String> {
    l.into_iter().collect()
}

fn time(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

fn mounts(specs: Vec<MountSpec>) -> Vec<Mount> {
    specs
        .into_iter()
        .map(|m| Mount {
            r#type: m.fstype,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

/// A layer as containerd's Info, names as they are.
fn info(i: LayerInfo) -> Info {
    Info {
        kind: match i.kind {
            Kind::Active => CKind::Active,
            Kind::View => CKind::View,
            Kind::Committed => CKind::Committed,
        },
        name: i.name,
        parent: i.parent,
        labels: i.labels.into_iter().collect(),
        created_at: time(i.created),
        updated_at: time(i.updated),
    }
}

impl Snapshotter {
    /// A stored layer as containerd sees it.
    fn info(&self, mut i: LayerInfo) -> Info {
        i.name = self.scope.outside(&i.name);
        i.parent = self.scope.outside(&i.parent);
        info(i)
    }

    fn create(
        &self,
        kind: Kind,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        let key = self.scope.key("key", &key)?;
        let parent = self.scope.parent(&parent);
        let specs = call(|| {
            self.engine
                .create_layer_in(Some(&self.pool), kind, &key, &parent, labels_in(labels))
        })?;
        Ok(mounts(specs))
    }
}

#[containerd_snapshots::tonic::async_trait]
impl containerd_snapshots::Snapshotter for Snapshotter {
    type Error = Status;
    type InfoStream = futures_util::stream::Iter<std::vec::IntoIter<Result<Info, Status>>>;

    async fn stat(&self, key: String) -> Result<Info, Status> {
        let key = self.scope.key("key", &key)?;
        call(|| self.engine.stat(&key)).map(|i| self.info(i))
    }

    async fn update(&self, info: Info, fieldpaths: Option<Vec<String>>) -> Result<Info, Status> {
        let key = self.scope.key("name", &info.name)?;
        let paths = fieldpaths.unwrap_or_default();
        call(|| self.engine.update(&key, labels_in(info.labels), &paths)).map(|i| self.info(i))
    }

    async fn usage(&self, key: String) -> Result<Usage, Status> {
        let key = self.scope.key("key", &key)?;
        let (bytes, inodes) = call(|| self.engine.usage(&key))?;
        Ok(Usage {
            size: i64::try_from(bytes).unwrap_or(i64::MAX),
            inodes: i64::try_from(inodes).unwrap_or(i64::MAX),
        })
    }

    async fn mounts(&self, key: String) -> Result<Vec<Mount>, Status> {
        let key = self.scope.key("key", &key)?;
        call(|| self.engine.mounts(&key)).map(mounts)
    }

    async fn prepare(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        self.create(Kind::Active, key, parent, labels)
    }

    async fn view(
        &self,
        key: String,
        parent: String,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        self.create(Kind::View, key, parent, labels)
    }

    async fn commit(
        &self,
        name: String,
        key: String,
        labels: HashMap<String, String>,
    ) -> Result<(), Status> {
        let name = self.scope.key("name", &name)?;
        let key = self.scope.key("key", &key)?;
        call(|| self.engine.commit(&name, &key, labels_in(labels)))
    }

    async fn remove(&self, key: String) -> Result<(), Status> {
        let key = self.scope.key("key", &key)?;
        call(|| self.engine.remove(&key))
    }

    /// containerd's Cleanup: space of removed layers back now.
    async fn clear(&self) -> Result<(), Status> {
        call(|| self.engine.cleanup()).map(|_| ())
    }

    async fn list(
        &self,
        _snapshotter: String,
        filters: Vec<String>,
    ) -> Result<Self::InfoStream, Status> {
        // walk_under has taken the prefix off already.
        let infos = call(|| self.engine.walk_under(self.scope.prefix(), &filters))?;
        let out: Vec<Result<Info, Status>> = infos.into_iter().map(|i| Ok(info(i))).collect();
        Ok(futures_util::stream::iter(out))
    }
}
