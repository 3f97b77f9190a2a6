//! The containerd adapter: containerd's snapshots gRPC API
//! (`containerd.services.snapshots.v1.Snapshots`, through the
//! containerd-snapshots crate on tonic) on one unix socket per configured
//! snapshotter, so containerd takes each as a proxy snapshotter. Like
//! src/dbus/ it holds no logic: snapshotter.rs turns calls into engine
//! calls, scope.rs keeps each socket's keys apart, error.rs maps errors.

pub mod error;
pub mod scope;
pub mod snapshotter;

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::ContainerdConfig;
use crate::engine::Engine;

/// The sockets being served; dropping it does not stop them, [`Served::close`]
/// removes the socket files.
pub struct Served {
    pub sockets: Vec<PathBuf>,
}

impl Served {
    pub fn close(&self) {
        for s in &self.sockets {
            let _ = fs::remove_file(s);
        }
    }
}

/// Binds every configured socket (root-only, or 0660 with `socket_group`)
/// and serves each on its own task. A socket that cannot be bound fails
/// start-up: containerd would otherwise see a snapshotter that is not there.
pub async fn serve(engine: Arc<Engine>, cfg: &ContainerdConfig) -> io::Result<Served> {
    let mut sockets = Vec::new();
    if cfg.snapshotters.is_empty() {
        return Ok(Served { sockets });
    }
    let gid = match &cfg.socket_group {
        Some(g) => Some(group_id(g)?),
        None => None,
    };
    prepare_dir(&cfg.socket_dir, gid)?;
    for s in &cfg.snapshotters {
        let path = cfg.socket_path(&s.name);
        let listener = bind(&path, gid).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("containerd socket {}: {e}", path.display()),
            )
        })?;
        let service = containerd_snapshots::server(Arc::new(snapshotter::Snapshotter {
            engine: engine.clone(),
            pool: s.pool.clone(),
            scope: scope::Scope::new(&s.name),
        }));
        let (name, shown) = (s.name.clone(), path.display().to_string());
        tokio::spawn(async move {
            let r = containerd_snapshots::tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await;
            if let Err(e) = r {
                tracing::error!(snapshotter = %name, socket = %shown, error = %e, "containerd socket stopped serving");
            }
        });
        tracing::info!(snapshotter = %s.name, pool = %s.pool, socket = %path.display(), "serving containerd's snapshots API");
        sockets.push(path);
    }
    Ok(Served { sockets })
}

fn group_id(name: &str) -> io::Result<nix::unistd::Gid> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid),
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("containerd socket_group: no group named {name:?}"),
        )),
        Err(e) => Err(io::Error::from(e)),
    }
}

/// The socket directory: made root-only if missing (0750 with the group, so
/// its members can reach the sockets). An existing one is left as it is:
/// it may be run_dir, which the engine keeps root-only.
fn prepare_dir(dir: &Path, gid: Option<nix::unistd::Gid>) -> io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    crate::sys::private::ensure_dir(dir)?;
    if let Some(g) = gid {
        nix::unistd::chown(dir, None, Some(g)).map_err(io::Error::from)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o750))?;
    }
    Ok(())
}

/// Binds `path`, replacing a socket left by an earlier run (never any other
/// kind of file, nor one that a live process still serves), then sets its
/// mode: 0600, or 0660 owned by the group.
fn bind(path: &Path, gid: Option<nix::unistd::Gid>) -> io::Result<UnixListener> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process serves this socket (a second layerd on the same socket_dir?); not replaced",
                ));
            }
            fs::remove_file(path)?
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket; not replaced",
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    // The socket is made with the umask's mode: connecting takes write
    // permission, which a umask of 022 gives no one else before the chmod.
    match gid {
        Some(g) => {
            nix::unistd::chown(path, None, Some(g)).map_err(io::Error::from)?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o660))?;
        }
        None => fs::set_permissions(path, fs::Permissions::from_mode(0o600))?,
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::bind;

    #[tokio::test]
    async fn a_live_socket_is_never_replaced_a_stale_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("containerd-main.sock");
        let live = bind(&path, None).unwrap();
        let e = bind(&path, None).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
        drop(live); // the file stays behind, as after a crash
        assert!(path.exists());
        let _again = bind(&path, None).unwrap();
        std::fs::write(dir.path().join("f"), b"").unwrap();
        assert!(bind(&dir.path().join("f"), None).is_err());
    }
}
