//! A client of layerd's containerd sockets (containerd's snapshots gRPC
//! API), for the tests that drive it without containerd in between.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use containerd_snapshots::api::snapshots::v1::snapshots_client::SnapshotsClient;
use containerd_snapshots::api::snapshots::v1::*;
use containerd_snapshots::tonic::transport::{Channel, Endpoint};
use containerd_snapshots::tonic::{Code, Status};

pub use containerd_snapshots::api::snapshots::v1::Info;

/// The mount types of a reply, what the tests compare.
fn types(mounts: Vec<containerd_snapshots::api::types::Mount>) -> Vec<String> {
    mounts.into_iter().map(|m| m.r#type).collect()
}

/// One long-lived connection to one socket.
#[derive(Clone)]
pub struct Snapshots(SnapshotsClient<Channel>);

pub type R<T> = Result<T, Status>;

impl Snapshots {
    pub async fn connect(socket: &Path) -> Snapshots {
        let path = socket.to_path_buf();
        // The URI is unused: the connector dials the socket.
        let channel = Endpoint::try_from("http://[::]:1")
            .expect("endpoint")
            .connect_with_connector(tower::service_fn(move |_| {
                tokio::net::UnixStream::connect(path.clone())
            }))
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
        Snapshots(SnapshotsClient::new(channel))
    }

    pub async fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> R<Vec<String>> {
        let mut c = self.0.clone();
        let r = c.prepare(PrepareSnapshotRequest {
            snapshotter: String::new(),
            key: key.into(),
            parent: parent.into(),
            labels,
        });
        Ok(types(r.await?.into_inner().mounts))
    }

    pub async fn view(&self, key: &str, parent: &str) -> R<Vec<String>> {
        let mut c = self.0.clone();
        let r = c.view(ViewSnapshotRequest {
            snapshotter: String::new(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
        });
        Ok(types(r.await?.into_inner().mounts))
    }

    pub async fn commit(&self, name: &str, key: &str) -> R<()> {
        let mut c = self.0.clone();
        let r = c.commit(CommitSnapshotRequest {
            snapshotter: String::new(),
            name: name.into(),
            key: key.into(),
            labels: HashMap::new(),
        });
        r.await.map(|_| ())
    }

    pub async fn remove(&self, key: &str) -> R<()> {
        let mut c = self.0.clone();
        let r = c.remove(RemoveSnapshotRequest {
            snapshotter: String::new(),
            key: key.into(),
        });
        r.await.map(|_| ())
    }

    pub async fn stat(&self, key: &str) -> R<Info> {
        let mut c = self.0.clone();
        let r = c.stat(StatSnapshotRequest {
            snapshotter: String::new(),
            key: key.into(),
        });
        Ok(r.await?.into_inner().info.unwrap_or_default())
    }

    pub async fn mounts(&self, key: &str) -> R<Vec<String>> {
        let mut c = self.0.clone();
        let r = c.mounts(MountsRequest {
            snapshotter: String::new(),
            key: key.into(),
        });
        Ok(types(r.await?.into_inner().mounts))
    }

    pub async fn update(
        &self,
        key: &str,
        labels: HashMap<String, String>,
        paths: &[&str],
    ) -> R<Info> {
        let mut c = self.0.clone();
        let r = c.update(UpdateSnapshotRequest {
            snapshotter: String::new(),
            info: Some(Info {
                name: key.into(),
                labels,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|p| p.to_string()).collect(),
            }),
        });
        Ok(r.await?.into_inner().info.unwrap_or_default())
    }

    pub async fn usage(&self, key: &str) -> R<(i64, i64)> {
        let mut c = self.0.clone();
        let r = c.usage(UsageRequest {
            snapshotter: String::new(),
            key: key.into(),
        });
        let u = r.await?.into_inner();
        Ok((u.size, u.inodes))
    }

    /// Sorted (name, parent, kind) of List.
    pub async fn list(&self, filters: &[&str]) -> R<Vec<(String, String, i32)>> {
        let mut stream = self
            .0
            .clone()
            .list(ListSnapshotsRequest {
                snapshotter: String::new(),
                filters: filters.iter().map(|f| f.to_string()).collect(),
            })
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(batch) = stream.message().await? {
            out.extend(batch.info.into_iter().map(|i| (i.name, i.parent, i.kind)));
        }
        out.sort();
        Ok(out)
    }

    pub async fn cleanup(&self) -> R<()> {
        let mut c = self.0.clone();
        let r = c.cleanup(CleanupRequest {
            snapshotter: String::new(),
        });
        r.await.map(|_| ())
    }
}

/// The gRPC code of a failed call; panics if it succeeded.
pub fn code<T: std::fmt::Debug>(what: &str, r: R<T>) -> (Code, String) {
    match r {
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
        Err(s) => (s.code(), s.message().to_string()),
    }
}
