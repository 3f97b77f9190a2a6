//! `org.layerd.Layerd1.Manager` at `/org/layerd/Layerd1`. Each method:
//! check access, convert arguments, call one engine method on a blocking
//! thread, map the result. No logic lives here.

use std::collections::HashMap;
use std::sync::Arc;

use zbus::message::Header;
use zbus::zvariant::OwnedObjectPath;
use zbus::{interface, Connection};

use super::access::Access;
use super::error::DbusError;
use super::{blocking, caller, pool_path};
use crate::engine::diff::watch::Cancel;
use crate::engine::types::{Kind, LayerInfo};
use crate::engine::Engine;
use crate::shared::mount::MountSpec;

type Spec = (String, String, Vec<String>);
type Labels = HashMap<String, String>;
/// Spelled out in method signatures too: zbus introspects an alias as
/// one struct argument instead of six out-arguments.
type StatOut = (String, String, String, Labels, u64, u64);
type WalkRow = (String, String, String, String, Labels, u64, u64);

pub struct Manager {
    pub engine: Arc<Engine>,
    pub access: Arc<Access>,
}

fn specs(v: Vec<MountSpec>) -> Vec<Spec> {
    v.into_iter()
        .map(|s| (s.fstype, s.source, s.options))
        .collect()
}

fn stat_out(i: LayerInfo) -> StatOut {
    (
        i.name,
        i.parent,
        i.kind.as_str().to_string(),
        i.labels.into_iter().collect(),
        i.created,
        i.updated,
    )
}

/// Container layers with copy-on-write, in containerd's snapshotter model.
/// Keys are any UTF-8 string up to 4096 bytes; active, view and committed
/// keys share one name space. Labels: each key and value together up to
/// 4096 bytes, a layer's labels up to 65536 bytes in all (InvalidArgument
/// naming the limit). Errors: org.layerd.Layerd1.Error.{NotFound,
/// AlreadyExists, FailedPrecondition, InvalidArgument, PoolFull, Busy,
/// NotSupported, AccessDenied, Internal}.
#[interface(name = "org.layerd.Layerd1.Manager")]
impl Manager {
    /// Creates active layer `key` on committed `parent` ("" for none) and
    /// returns its mounts (type, source, options) as mount(8) takes them.
    /// A parent that is an active layer or a view is FailedPrecondition
    /// here (the stable name since the first release); containerd's gRPC
    /// socket answers InvalidArgument for it, as containerd does.
    /// A parentless layer's pool is the label layerd.io/pool, else the
    /// default pool; layerd.io/size limits its own bytes (btrfs). Both are
    /// fixed from then on: Update and Commit may keep or drop them, never
    /// change them (InvalidArgument naming the label). Labels, here and at
    /// View, Commit and Update: at most 4096 bytes per key and value, 65536
    /// bytes in all per layer (InvalidArgument naming the limit).
    #[zbus(out_args("mounts"))]
    async fn prepare(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        key: String,
        parent: String,
        labels: Labels,
    ) -> Result<Vec<Spec>, DbusError> {
        self.access.require_root(conn, &hdr, "Prepare").await?;
        let e = self.engine.clone();
        blocking(move || e.create_layer(Kind::Active, &key, &parent, labels.into_iter().collect()))
            .await
            .map(specs)
    }

    /// Creates read-only view `key` of committed `parent`; returns its mounts.
    #[zbus(out_args("mounts"))]
    async fn view(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        key: String,
        parent: String,
        labels: Labels,
    ) -> Result<Vec<Spec>, DbusError> {
        self.access.require_root(conn, &hdr, "View").await?;
        let e = self.engine.clone();
        blocking(move || e.create_layer(Kind::View, &key, &parent, labels.into_iter().collect()))
            .await
            .map(specs)
    }

    /// Turns active `key` into committed `name` with exactly `labels`; the
    /// key is freed. Fails with Busy while the daemon holds Mount() refs,
    /// InvalidArgument if `labels` change layerd.io/pool or layerd.io/size.
    async fn commit(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        name: String,
        key: String,
        labels: Labels,
    ) -> Result<(), DbusError> {
        self.access.require_root(conn, &hdr, "Commit").await?;
        let e = self.engine.clone();
        blocking(move || e.commit(&name, &key, labels.into_iter().collect())).await
    }

    /// Removes a layer of any kind; FailedPrecondition while it has
    /// children. Space comes back at the next Cleanup.
    async fn remove(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        key: String,
    ) -> Result<(), DbusError> {
        self.access.require_root(conn, &hdr, "Remove").await?;
        let e = self.engine.clone();
        blocking(move || e.remove(&key)).await
    }

    /// Name, parent, kind (active, view, committed), labels, and created
    /// and updated times in µs since the epoch.
    #[zbus(out_args("name", "parent", "kind", "labels", "created", "updated"))]
    async fn stat(
        &self,
        key: String,
    ) -> Result<(String, String, String, Labels, u64, u64), DbusError> {
        let e = self.engine.clone();
        blocking(move || e.stat(&key)).await.map(stat_out)
    }

    /// Changes labels only. fieldpaths: none or "labels" replace all;
    /// "labels.K" sets K from `labels`, or deletes it when absent there.
    /// layerd.io/pool and layerd.io/size cannot change (InvalidArgument).
    #[zbus(out_args("name", "parent", "kind", "labels", "created", "updated"))]
    async fn update(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        key: String,
        labels: Labels,
        fieldpaths: Vec<String>,
    ) -> Result<(String, String, String, Labels, u64, u64), DbusError> {
        self.access.require_root(conn, &hdr, "Update").await?;
        let e = self.engine.clone();
        blocking(move || e.update(&key, labels.into_iter().collect(), &fieldpaths))
            .await
            .map(stat_out)
    }

    /// Bytes and inodes of this layer alone, parents excluded.
    #[zbus(out_args("bytes", "inodes"))]
    async fn usage(&self, key: String) -> Result<(u64, u64), DbusError> {
        let e = self.engine.clone();
        blocking(move || e.usage(&key)).await
    }

    /// Mounts of an active layer or view (FailedPrecondition for committed).
    #[zbus(out_args("mounts"))]
    async fn mounts(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        key: String,
    ) -> Result<Vec<Spec>, DbusError> {
        self.access.require_root(conn, &hdr, "Mounts").await?;
        let e = self.engine.clone();
        blocking(move || e.mounts(&key)).await.map(specs)
    }

    /// Every layer matching any of `filters` (containerd syntax: name==x,
    /// parent!=y, kind==committed, labels.K, labels."a/b"==v, name~=regex,
    /// commas AND): name, parent, kind, pool, labels, created µs, updated
    /// µs. Limits (InvalidArgument naming the limit): 64 filters of 8192
    /// bytes each, 16 regular expressions per Walk, each compiling to at
    /// most 256 KiB.
    #[zbus(out_args("layers"))]
    async fn walk(&self, filters: Vec<String>) -> Result<Vec<WalkRow>, DbusError> {
        let e = self.engine.clone();
        let rows = blocking(move || e.walk(&filters)).await?;
        Ok(rows
            .into_iter()
            .map(|i| {
                (
                    i.name,
                    i.parent,
                    i.kind.as_str().to_string(),
                    i.pool,
                    i.labels.into_iter().collect(),
                    i.created,
                    i.updated,
                )
            })
            .collect())
    }

    /// The daemon mounts the layer under its run directory and returns the
    /// path; references are counted, Unmount drops one.
    #[zbus(out_args("path"))]
    async fn mount(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        key: String,
    ) -> Result<String, DbusError> {
        self.access.require_root(conn, &hdr, "Mount").await?;
        let e = self.engine.clone();
        blocking(move || e.mount(&key))
            .await
            .map(|p| p.to_string_lossy().into_owned())
    }

    /// Drops one Mount() reference; the last one unmounts.
    async fn unmount(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        key: String,
    ) -> Result<(), DbusError> {
        self.access.require_root(conn, &hdr, "Unmount").await?;
        let e = self.engine.clone();
        blocking(move || e.unmount(&key)).await
    }

    /// Reads an OCI layer tar (plain, gzip or zstd) from `fd` into active
    /// layer `key`; returns the content bytes of the files written. A
    /// failure leaves the label layerd.io/apply-failed on the layer. Out of
    /// pool space: PoolFull; past the layer's own layerd.io/size:
    /// InvalidArgument naming the layer and its limit.
    #[zbus(out_args("bytes"))]
    async fn apply(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        key: String,
        fd: zbus::zvariant::OwnedFd,
    ) -> Result<u64, DbusError> {
        self.access.require_root(conn, &hdr, "Apply").await?;
        let e = self.engine.clone();
        let fd = std::os::fd::OwnedFd::from(fd);
        crate::engine::diff::check_descriptor(std::os::fd::AsFd::as_fd(&fd), false)?;
        let cancel = Cancel::new().map_err(|e| DbusError::Internal(format!("eventfd: {e}")))?;
        let _watch = caller::watch(conn, &hdr, &cancel).await;
        blocking(move || e.apply_fd(&key, fd, &cancel)).await
    }

    /// Writes the layer's changes against its parent into `fd` as an OCI
    /// layer tar (whiteouts for deletions; a view's is empty); returns the
    /// bytes written.
    #[zbus(out_args("bytes"))]
    async fn export(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        key: String,
        fd: zbus::zvariant::OwnedFd,
    ) -> Result<u64, DbusError> {
        self.access.require_root(conn, &hdr, "Export").await?;
        let e = self.engine.clone();
        let fd = std::os::fd::OwnedFd::from(fd);
        crate::engine::diff::check_descriptor(std::os::fd::AsFd::as_fd(&fd), true)?;
        let cancel = Cancel::new().map_err(|e| DbusError::Internal(format!("eventfd: {e}")))?;
        let _watch = caller::watch(conn, &hdr, &cancel).await;
        blocking(move || e.export_fd(&key, fd, &cancel)).await
    }

    /// Imports a legacy Docker aufs tree (layers/<id> ancestry files,
    /// diff/<id> directories) at `path` into `pool` as committed layers
    /// named `key_prefix` + aufs id, parents first; returns the names.
    #[zbus(out_args("names"))]
    async fn import_aufs(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        path: String,
        pool: String,
        key_prefix: String,
    ) -> Result<Vec<String>, DbusError> {
        self.access.require_root(conn, &hdr, "ImportAufs").await?;
        let e = self.engine.clone();
        blocking(move || e.import_aufs(std::path::Path::new(&path), &pool, &key_prefix)).await
    }

    /// Frees the space of removed layers now; returns the bytes freed.
    #[zbus(out_args("bytes"))]
    async fn cleanup(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<u64, DbusError> {
        self.access.require_root(conn, &hdr, "Cleanup").await?;
        let e = self.engine.clone();
        blocking(move || e.cleanup()).await
    }

    /// The daemon's version.
    #[zbus(property(emits_changed_signal = "const"))]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }

    /// The pool of parentless layers without a layerd.io/pool label.
    #[zbus(property(emits_changed_signal = "const"))]
    fn default_pool(&self) -> String {
        self.engine.default_pool().to_string()
    }

    /// Object paths of the configured pools.
    #[zbus(property(emits_changed_signal = "const"))]
    fn pools(&self) -> Vec<OwnedObjectPath> {
        self.engine
            .pool_names()
            .iter()
            .filter_map(|n| pool_path(n).ok())
            .collect()
    }
}
