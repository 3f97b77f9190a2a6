//! The containerd table's image, made locally (no registry): an OCI image
//! layout archive with two uncompressed layers — busybox-static with `sh`
//! and `true`, then a tree of the machine's own files
//! (`LAYERD_BENCH_CTD_TREE`, default `usr/share/doc`: thousands of files,
//! so that unpacking takes a measurable time) — and the timed steps on it:
//! containerd's unpack, and `ctr run`. Uncompressed layers keep gzip's CPU
//! time, the same for every snapshotter, out of the unpack figure.
//!
//! The unpack is the calls containerd's client makes for each layer
//! (`rootfs.ApplyLayerWithOpts`: Stat of the chain ID, Prepare on the
//! previous one, the diff service's Apply onto the returned mounts, Commit
//! as the chain ID), made from the bench's gRPC client so that `ctr`'s
//! start-up and `ctr images import`'s re-reading of the archive (about as
//! long as the unpack itself here) stay out of the figure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use containerd_snapshots::tonic::transport::Channel;
use serde_json::json;

use crate::ctd_daemon::Containerd;
use crate::ctd_grpc::{self, Descriptor, Snap};

/// The image's name after `ctr images import --base-name`.
pub const BASE_NAME: &str = "layerd.bench/img";

pub struct Image {
    pub archive: PathBuf,
    pub name: String,
    /// Entries and bytes of the second layer's tar.
    pub entries: usize,
    pub layer_bytes: u64,
    pub tree: String,
    pub layers: Vec<Descriptor>,
    /// The layers' chain IDs (the committed snapshots' names).
    pub chain: Vec<String>,
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn sha256(path: &Path) -> Result<String, String> {
    let out = run(Command::new("sha256sum").arg(path))?;
    out.split_whitespace()
        .next()
        .map(|h| format!("sha256:{h}"))
        .ok_or_else(|| format!("sha256sum {}: no output", path.display()))
}

/// The OCI chain ID of a layer on `parent`'s chain: sha256 of "P D".
fn chain_id(dir: &Path, parent: &str, diff_id: &str) -> Result<String, String> {
    let f = dir.join("chain");
    std::fs::write(&f, format!("{parent} {diff_id}")).map_err(|e| e.to_string())?;
    let id = sha256(&f);
    let _ = std::fs::remove_file(&f);
    id
}

fn descriptor(v: &serde_json::Value) -> Descriptor {
    Descriptor {
        media_type: v["mediaType"].as_str().unwrap_or_default().to_string(),
        digest: v["digest"].as_str().unwrap_or_default().to_string(),
        size: v["size"].as_i64().unwrap_or_default(),
    }
}

/// Moves `file` into `blobs/sha256/` of the layout; returns its descriptor.
fn blob(layout: &Path, file: &Path, media_type: &str) -> Result<serde_json::Value, String> {
    let digest = sha256(file)?;
    let size = std::fs::metadata(file).map_err(|e| e.to_string())?.len();
    let to = layout.join("blobs/sha256").join(&digest["sha256:".len()..]);
    std::fs::rename(file, &to).map_err(|e| format!("mv {}: {e}", file.display()))?;
    Ok(json!({ "mediaType": media_type, "digest": digest, "size": size }))
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), String> {
    std::fs::write(path, v.to_string()).map_err(|e| format!("write {}: {e}", path.display()))
}

/// Builds the archive in `dir` (on /tmp, not on a file system under test).
pub fn build(dir: &Path) -> Result<Image, String> {
    let tree = std::env::var("LAYERD_BENCH_CTD_TREE").unwrap_or_else(|_| "usr/share/doc".into());
    let layout = dir.join("oci");
    std::fs::create_dir_all(layout.join("blobs/sha256")).map_err(|e| e.to_string())?;
    let tar = |args: &[&std::ffi::OsStr]| {
        run(Command::new("tar")
            .args(["--numeric-owner", "--format=posix", "-c"])
            .args(args))
    };

    // Layer 1: busybox as /bin/busybox, /bin/sh, /bin/true.
    let l1 = dir.join("l1");
    std::fs::create_dir_all(l1.join("bin")).map_err(|e| e.to_string())?;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .ok_or("busybox is missing (apt-get install -y busybox-static)")?;
    std::fs::copy(busybox, l1.join("bin/busybox")).map_err(|e| format!("copy busybox: {e}"))?;
    for link in ["sh", "true"] {
        std::os::unix::fs::symlink("busybox", l1.join("bin").join(link))
            .map_err(|e| e.to_string())?;
    }
    let l1_tar = dir.join("l1.tar");
    tar(&[
        "--owner=0".as_ref(),
        "--group=0".as_ref(),
        "-f".as_ref(),
        l1_tar.as_os_str(),
        "-C".as_ref(),
        l1.as_os_str(),
        "bin".as_ref(),
    ])?;

    // Layer 2: the tree, with its parent directories as entries of their own.
    let l2_tar = dir.join("l2.tar");
    let mut args: Vec<std::ffi::OsString> = vec![
        "-f".into(),
        l2_tar.clone().into(),
        "-C".into(),
        "/".into(),
        "--no-recursion".into(),
    ];
    let parts: Vec<&str> = tree.split_whitespace().collect();
    let mut parents = std::collections::BTreeSet::new();
    for p in &parts {
        let mut acc = PathBuf::new();
        let comps: Vec<_> = Path::new(p).components().collect();
        for c in &comps[..comps.len().saturating_sub(1)] {
            acc.push(c);
            parents.insert(acc.clone());
        }
    }
    args.extend(parents.into_iter().map(Into::into));
    args.push("--recursion".into());
    args.extend(parts.iter().map(Into::into));
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    tar(&refs)?;
    let entries = run(Command::new("tar").arg("-tf").arg(&l2_tar))?
        .lines()
        .count();
    let layer_bytes = std::fs::metadata(&l2_tar).map_err(|e| e.to_string())?.len();

    let layer_type = "application/vnd.oci.image.layer.v1.tar";
    let d1 = blob(&layout, &l1_tar, layer_type)?;
    let d2 = blob(&layout, &l2_tar, layer_type)?;
    let layers = vec![descriptor(&d1), descriptor(&d2)];
    // Uncompressed: each diff ID is the layer's digest.
    let chain = vec![
        layers[0].digest.clone(),
        chain_id(dir, &layers[0].digest, &layers[1].digest)?,
    ];
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["/bin/true"] },
        "rootfs": { "type": "layers", "diff_ids": [d1["digest"], d2["digest"]] },
    });
    let cfg_file = dir.join("config.json");
    write_json(&cfg_file, &config)?;
    let dc = blob(
        &layout,
        &cfg_file,
        "application/vnd.oci.image.config.v1+json",
    )?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": dc,
        "layers": [d1, d2],
    });
    let m_file = dir.join("manifest.json");
    write_json(&m_file, &manifest)?;
    let mut dm = blob(
        &layout,
        &m_file,
        "application/vnd.oci.image.manifest.v1+json",
    )?;
    dm["annotations"] = json!({ "org.opencontainers.image.ref.name": "latest" });
    write_json(
        &layout.join("index.json"),
        &json!({ "schemaVersion": 2, "manifests": [dm] }),
    )?;
    write_json(
        &layout.join("oci-layout"),
        &json!({ "imageLayoutVersion": "1.0.0" }),
    )?;
    let archive = dir.join("image.tar");
    run(Command::new("tar")
        .arg("-cf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout)
        .args(["oci-layout", "index.json", "blobs"]))?;
    let _ = std::fs::remove_dir_all(&layout);
    let _ = std::fs::remove_dir_all(&l1);
    // Read once, so every import reads it from the page cache.
    let _ = std::fs::read(&archive);
    Ok(Image {
        archive,
        name: format!("{BASE_NAME}:latest"),
        entries,
        layer_bytes,
        tree,
        layers,
        chain,
    })
}

fn timed(cmd: &mut Command) -> Result<Duration, String> {
    let t = Instant::now();
    run(cmd)?;
    Ok(t.elapsed())
}

/// `ctr images import --no-unpack`: the image and its content into
/// containerd's store.
pub fn import(c: &Containerd, img: &Image) -> Result<Duration, String> {
    timed(
        c.ctr()
            .args(["images", "import", "--no-unpack", "--base-name", BASE_NAME])
            .arg(&img.archive),
    )
}

/// One unpack, timed: the whole, the diff service's Applys, and the
/// snapshot calls (Stat, Prepare, Commit of every layer).
#[derive(Default, Clone, Copy)]
pub struct Unpacked {
    pub total: Duration,
    pub apply: Duration,
    pub snapshot_calls: Duration,
}

/// containerd's unpack of `img` into `snap` (see the module doc). The
/// committed layers are labelled GC roots, as the image's content labels
/// would make them after a real unpack; `n` makes the active keys unique.
pub async fn unpack(ch: &Channel, snap: &Snap, img: &Image, n: usize) -> Result<Unpacked, String> {
    let root: std::collections::HashMap<String, String> = [(
        "containerd.io/gc.root".to_string(),
        "layerd-bench".to_string(),
    )]
    .into();
    let err = |what: &str, e: containerd_snapshots::tonic::Status| format!("unpack: {what}: {e}");
    let mut u = Unpacked::default();
    let t0 = Instant::now();
    let mut parent = String::new();
    for (i, (layer, chain)) in img.layers.iter().zip(&img.chain).enumerate() {
        let t = Instant::now();
        match snap.stat(chain).await {
            Err(e) if e.code() == containerd_snapshots::tonic::Code::NotFound => {}
            Ok(_) => return Err(format!("unpack: layer {i} is unpacked already")),
            Err(e) => return Err(err("Stat", e)),
        }
        let key = format!("extract-{n}-{i} {chain}");
        let mounts = snap
            .prepare(&key, &parent)
            .await
            .map_err(|e| err("Prepare", e))?;
        let t_apply = Instant::now();
        u.snapshot_calls += t_apply - t;
        ctd_grpc::apply(ch, layer, mounts)
            .await
            .map_err(|e| err("Apply", e))?;
        let t_commit = Instant::now();
        u.apply += t_commit - t_apply;
        snap.commit_labelled(chain, &key, root.clone())
            .await
            .map_err(|e| err("Commit", e))?;
        u.snapshot_calls += t_commit.elapsed();
        parent = chain.clone();
    }
    u.total = t0.elapsed();
    Ok(u)
}

/// `ctr run --rm --null-io --snapshotter S IMAGE ID /bin/true`.
pub fn run_true(
    c: &Containerd,
    img: &Image,
    snapshotter: &str,
    id: &str,
) -> Result<Duration, String> {
    timed(c.ctr().args([
        "run",
        "--rm",
        "--null-io",
        "--snapshotter",
        snapshotter,
        &img.name,
        id,
        "/bin/true",
    ]))
}
