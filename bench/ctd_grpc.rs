//! gRPC clients of the containerd table, each on one long-lived channel:
//! containerd's snapshots API (on containerd's own socket with the
//! `snapshotter` field set, or straight on a layerd socket) and two calls of
//! its leases API, which together run one synchronous garbage collection.
//! Every request carries the `containerd-namespace` header.

use std::collections::HashMap;
use std::path::Path;

use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
use containerd_snapshots::api::snapshots::v1::*;
use containerd_snapshots::api::types::Mount;
use containerd_snapshots::tonic::codegen::http::uri::PathAndQuery;
use containerd_snapshots::tonic::metadata::MetadataValue;
use containerd_snapshots::tonic::transport::{Channel, Endpoint};
use containerd_snapshots::tonic::{self, Request, Status};

/// The containerd namespace every request of the bench is in.
pub const NAMESPACE: &str = "layerd-bench";

pub type R<T> = Result<T, Status>;

/// One connection to a unix socket (tonic 0.9's connector).
pub async fn channel(socket: &Path) -> Result<Channel, String> {
    let path = socket.to_path_buf();
    // The URI is unused: the connector dials the socket.
    Endpoint::try_from("http://[::]:1")
        .map_err(|e| e.to_string())?
        .connect_with_connector(tower::service_fn(move |_| {
            tokio::net::UnixStream::connect(path.clone())
        }))
        .await
        .map_err(|e| format!("connect to {}: {e}", socket.display()))
}

fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "containerd-namespace",
        MetadataValue::from_static(NAMESPACE),
    );
    r
}

/// The snapshots API of one snapshotter: `snapshotter` names it on
/// containerd's socket (ignored by a layerd socket, which is one pool).
#[derive(Clone)]
pub struct Snap {
    client: SnapshotsClient<Channel>,
    snapshotter: String,
}

impl Snap {
    pub fn new(ch: &Channel, snapshotter: &str) -> Snap {
        Snap {
            client: SnapshotsClient::new(ch.clone()),
            snapshotter: snapshotter.to_string(),
        }
    }

    pub async fn prepare(&self, key: &str, parent: &str) -> R<Vec<Mount>> {
        let mut c = self.client.clone();
        let r = c.prepare(req(PrepareSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
        }));
        Ok(r.await?.into_inner().mounts)
    }

    pub async fn commit(&self, name: &str, key: &str) -> R<()> {
        self.commit_labelled(name, key, HashMap::new()).await
    }

    pub async fn commit_labelled(
        &self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> R<()> {
        let mut c = self.client.clone();
        let r = c.commit(req(CommitSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            name: name.into(),
            key: key.into(),
            labels,
        }));
        r.await.map(|_| ())
    }

    pub async fn remove(&self, key: &str) -> R<()> {
        let mut c = self.client.clone();
        let r = c.remove(req(RemoveSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
        }));
        r.await.map(|_| ())
    }

    pub async fn stat(&self, key: &str) -> R<Info> {
        let mut c = self.client.clone();
        let r = c.stat(req(StatSnapshotRequest {
            snapshotter: self.snapshotter.clone(),
            key: key.into(),
        }));
        Ok(r.await?.into_inner().info.unwrap_or_default())
    }

    pub async fn cleanup(&self) -> R<()> {
        let mut c = self.client.clone();
        let r = c.cleanup(req(CleanupRequest {
            snapshotter: self.snapshotter.clone(),
        }));
        r.await.map(|_| ())
    }

    /// (name, parent) of every snapshot in the namespace.
    pub async fn list(&self) -> R<Vec<(String, String)>> {
        let mut stream = self
            .client
            .clone()
            .list(req(ListSnapshotsRequest {
                snapshotter: self.snapshotter.clone(),
                filters: vec![],
            }))
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(batch) = stream.message().await? {
            out.extend(batch.info.into_iter().map(|i| (i.name, i.parent)));
        }
        Ok(out)
    }

    /// Removes every snapshot of the namespace, children first.
    pub async fn remove_all(&self) -> R<usize> {
        let mut left = self.list().await?;
        let n = left.len();
        while !left.is_empty() {
            let parents: std::collections::HashSet<String> =
                left.iter().map(|(_, p)| p.clone()).collect();
            let (leaves, rest): (Vec<_>, Vec<_>) =
                left.into_iter().partition(|(n, _)| !parents.contains(n));
            if leaves.is_empty() {
                return Err(Status::internal("snapshot parents form a cycle"));
            }
            for (name, _) in &leaves {
                self.remove(name).await?;
            }
            left = rest;
        }
        Ok(n)
    }
}

/// `containerd.types.Descriptor`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Descriptor {
    #[prost(string, tag = "1")]
    pub media_type: String,
    #[prost(string, tag = "2")]
    pub digest: String,
    #[prost(int64, tag = "3")]
    pub size: i64,
}

/// `containerd.services.diff.v1.ApplyRequest` (no payloads).
#[derive(Clone, PartialEq, prost::Message)]
struct ApplyRequest {
    #[prost(message, optional, tag = "1")]
    diff: Option<Descriptor>,
    #[prost(message, repeated, tag = "2")]
    mounts: Vec<Mount>,
}

/// containerd's diff service applies layer `diff` (from its content
/// store) onto `mounts`, as the unpacker does for each layer.
pub async fn apply(ch: &Channel, diff: &Descriptor, mounts: Vec<Mount>) -> R<()> {
    unary(
        ch,
        "/containerd.services.diff.v1.Diff/Apply",
        ApplyRequest {
            diff: Some(diff.clone()),
            mounts,
        },
    )
    .await
}

/// `containerd.services.leases.v1` messages, the fields the bench sends.
#[derive(Clone, PartialEq, prost::Message)]
struct CreateLease {
    #[prost(string, tag = "1")]
    id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DeleteLease {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(bool, tag = "2")]
    sync: bool,
}

/// Any reply whose fields the bench does not read.
#[derive(Clone, PartialEq, prost::Message)]
struct Ignored {}

async fn unary<Q>(ch: &Channel, path: &'static str, q: Q) -> R<()>
where
    Q: prost::Message + Send + Sync + 'static,
{
    let mut g = tonic::client::Grpc::new(ch.clone());
    g.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let codec = tonic::codec::ProstCodec::<Q, Ignored>::default();
    g.unary(req(q), PathAndQuery::from_static(path), codec)
        .await
        .map(|_| ())
}

/// A lease made, then deleted with `sync`: containerd's way to run a
/// garbage collection and wait for it, snapshotter cleanups included
/// (metadata.DB.GarbageCollect waits for each dirty snapshotter's pass).
/// Returns how long the Delete took: the collection.
pub async fn gc(ch: &Channel, n: usize) -> R<std::time::Duration> {
    let id = format!("layerd-bench-gc-{n}");
    unary(
        ch,
        "/containerd.services.leases.v1.Leases/Create",
        CreateLease { id: id.clone() },
    )
    .await?;
    let t = std::time::Instant::now();
    unary(
        ch,
        "/containerd.services.leases.v1.Leases/Delete",
        DeleteLease { id, sync: true },
    )
    .await?;
    Ok(t.elapsed())
}
