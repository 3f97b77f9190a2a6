//! Import of a legacy Docker aufs tree (moby's daemon/graphdriver/aufs):
//!
//! ```text
//! <root>/layers/<id>   ancestor ids of <id>, one per line, nearest first
//!                      (empty for a base layer)
//! <root>/diff/<id>/    the layer's own files, aufs whiteouts `.wh.<name>`
//!                      and `.wh..wh..opq`, and aufs internals at its top
//!                      (`.wh..wh.plnk`, `.wh..wh.aufs`, `.wh..wh.orph`)
//! <root>/mnt/<id>      mount points (ignored)
//! ```
//!
//! Every layer becomes a committed layer named `<prefix><id>` labelled
//! `layerd.io/aufs-id=<id>`, parents first. Each diff directory is streamed
//! as a tar (export.rs, aufs internals left out) through a pipe into the
//! ordinary Apply path, which converts the whiteouts to the pool's own
//! form. The path must be absolute, without `..`; nothing beneath it is
//! resolved through a symlink (openat2 beneath the opened root, as Apply
//! does), so a tree cannot point the import at the host's files. Nothing
//! is written when the tree is inconsistent or a name is
//! taken; a layer that fails is removed, those committed before it stay
//! (a rerun with the same prefix then reports them as existing).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path};

use rustix::fs::{Mode, OFlags};

use super::export::Exporter;
use super::DiffError;
use crate::engine::error::{Error, Result};
use crate::engine::Engine;
use crate::sys::beneath;

/// The label naming a layer's aufs id.
pub const AUFS_ID_LABEL: &str = "layerd.io/aufs-id";

/// aufs's own files at the top of a branch.
const INTERNALS: [&[u8]; 3] = [b".wh..wh.plnk", b".wh..wh.aufs", b".wh..wh.orph"];

fn bad(why: String) -> Error {
    Error::InvalidArgument(why)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !id.starts_with('.')
}

/// Largest `layers/<id>` file read: 128 ancestors of 128 bytes each fit
/// many times over.
const MAX_ANCESTRY: u64 = 1 << 20;

/// An aufs tree opened for import: everything beneath `root` is resolved
/// by openat2 with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS (sys/beneath.rs),
/// so a symlink anywhere inside (`diff -> /`, `layers/<id> -> /etc/shadow`)
/// is refused instead of followed out of the tree.
pub struct Tree {
    shown: String,
    diff: OwnedFd,
    /// Layers, parents before children: (id, parent id).
    pub layers: Vec<(String, Option<String>)>,
}

/// Why openat2 refused `what` (a path beneath `dir`, the tree's `shown`
/// `base`), in words.
fn resolve_err(dir: BorrowedFd<'_>, shown: &str, what: &str, e: &std::io::Error) -> String {
    let name = what.rsplit('/').next().unwrap_or(what);
    // O_DIRECTORY | O_NOFOLLOW on a symlink answers ENOTDIR.
    let symlink = e.raw_os_error() == Some(libc::ELOOP)
        || beneath::stat_at(dir, name.as_bytes())
            .ok()
            .flatten()
            .is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK);
    let why = if symlink {
        "is a symlink, and nothing inside an aufs tree is followed".to_string()
    } else {
        match e.raw_os_error() {
            Some(libc::EXDEV) => "is on another mount than the tree".to_string(),
            Some(libc::ENOENT) => "does not exist".to_string(),
            Some(libc::ENOTDIR) => "is not a directory".to_string(),
            _ => format!("cannot be opened: {e}"),
        }
    };
    format!("{shown}/{what} {why}")
}

/// Takes an absolute path without `..`; symlinks in the path itself are
/// the admin's and followed, nothing beneath it is.
fn open_root(root: &Path) -> Result<(OwnedFd, String)> {
    let shown = root.display().to_string();
    if !root.is_absolute() {
        return Err(bad(format!(
            "ImportAufs takes an absolute path; {shown:?} is relative"
        )));
    }
    if root.components().any(|c| c == Component::ParentDir) {
        return Err(bad(format!(
            "ImportAufs takes a path without `..` components; {shown:?} has one"
        )));
    }
    let fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| bad(format!("{shown} is not a Docker aufs tree: {e}")))?;
    Ok((fd, shown))
}

/// Reads `layers/<id>` (a regular file, not followed if a symlink).
fn read_ancestry(layers: BorrowedFd<'_>, shown: &str, id: &str) -> Result<String> {
    let what = format!("layers/{id}");
    let fd = beneath::open_at(layers, id.as_bytes(), OFlags::RDONLY | OFlags::NONBLOCK, 0)
        .map_err(|e| bad(resolve_err(layers, shown, &what, &e)))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| bad(format!("{shown}/{what}: {e}")))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(bad(format!("{shown}/{what} is not a regular file")));
    }
    let mut text = String::new();
    File::from(fd)
        .take(MAX_ANCESTRY + 1)
        .read_to_string(&mut text)
        .map_err(|e| bad(format!("reading {shown}/{what}: {e}")))?;
    if text.len() as u64 > MAX_ANCESTRY {
        return Err(bad(format!(
            "{shown}/{what} is larger than {MAX_ANCESTRY} bytes"
        )));
    }
    Ok(text)
}

/// Opens an aufs tree and reads its layers, parents before children.
pub fn read_tree(root: &Path) -> Result<Tree> {
    let (root, shown) = open_root(root)?;
    let layers = beneath::open_dir(root.as_fd(), b"layers").map_err(|e| {
        bad(format!(
            "{shown} is not a Docker aufs tree: {}",
            resolve_err(root.as_fd(), &shown, "layers", &e)
        ))
    })?;
    let diff = beneath::open_dir(root.as_fd(), b"diff").map_err(|e| {
        bad(format!(
            "{shown} is not a Docker aufs tree: {}",
            resolve_err(root.as_fd(), &shown, "diff", &e)
        ))
    })?;
    let names = beneath::list_dir(layers.as_fd())
        .map_err(|e| bad(format!("reading {shown}/layers: {e}")))?;
    let mut ancestry: HashMap<String, Vec<String>> = HashMap::new();
    for name in names {
        let Ok(id) = String::from_utf8(name) else {
            return Err(bad(format!("{shown}/layers: a non-UTF-8 layer id")));
        };
        if !valid_id(&id) {
            return Err(bad(format!("{shown}/layers: {id:?} is not a layer id")));
        }
        let text = read_ancestry(layers.as_fd(), &shown, &id)?;
        let list: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        ancestry.insert(id, list);
    }
    // Each list must be the parent followed by the parent's own list.
    for (id, list) in &ancestry {
        if let Some((p, rest)) = list.split_first() {
            let Some(plist) = ancestry.get(p) else {
                return Err(bad(format!(
                    "layers/{id} names parent {p:?}, which has no layers/{p} file"
                )));
            };
            if plist.as_slice() != rest {
                return Err(bad(format!(
                    "layers/{id} lists ancestors {rest:?} after {p:?}, but layers/{p} lists {plist:?}"
                )));
            }
        }
        beneath::open_dir(diff.as_fd(), id.as_bytes()).map_err(|e| {
            bad(format!(
                "layer {id} has no usable diff directory: {}",
                resolve_err(diff.as_fd(), &shown, &format!("diff/{id}"), &e)
            ))
        })?;
    }
    let mut order: Vec<(usize, String)> = ancestry
        .iter()
        .map(|(id, l)| (l.len(), id.clone()))
        .collect();
    order.sort();
    let layers = order
        .into_iter()
        .map(|(_, id)| {
            let parent = ancestry[&id].first().cloned();
            (id, parent)
        })
        .collect();
    Ok(Tree {
        shown,
        diff,
        layers,
    })
}

pub fn import(engine: &Engine, root: &Path, pool: &str, prefix: &str) -> Result<Vec<String>> {
    engine.pool(pool)?;
    let tree = read_tree(root)?;
    let name = |id: &str| format!("{prefix}{id}");
    for (id, _) in &tree.layers {
        let n = name(id);
        super::super::validate::key("name", &n)?;
        if engine.store.read(|tx| tx.id_of(&n))?.is_some() {
            return Err(Error::AlreadyExists(n));
        }
    }
    let mut done = Vec::new();
    for (id, parent) in &tree.layers {
        let mut labels = BTreeMap::new();
        labels.insert(AUFS_ID_LABEL.to_string(), id.clone());
        let parent_name = match parent {
            Some(p) => name(p),
            None => {
                labels.insert(
                    super::super::validate::POOL_LABEL.to_string(),
                    pool.to_string(),
                );
                String::new()
            }
        };
        let what = format!("diff/{id}");
        let fd = beneath::open_dir(tree.diff.as_fd(), id.as_bytes())
            .map_err(|e| bad(resolve_err(tree.diff.as_fd(), &tree.shown, &what, &e)))?;
        let (reader, writer) = nix::unistd::pipe()
            .map_err(|e| crate::backend::BackendError::io("pipe", &root.join(&what), e.into()))?;
        let producer = std::thread::spawn(move || -> std::result::Result<u64, DiffError> {
            let mut ex = Exporter::new(File::from(writer));
            ex.walk_dir(&fd, &INTERNALS)?;
            ex.finish()
        });
        let r = engine.import_layer(&name(id), &parent_name, labels, File::from(reader));
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(DiffError::Input("the aufs reader panicked".into())));
        match (r, produced) {
            (Ok(()), Ok(_)) => {
                tracing::info!(aufs_id = %id, name = %name(id), "aufs layer imported");
                done.push(name(id));
            }
            (Ok(()), Err(e)) => {
                // Cannot happen without Apply failing too (a short stream is
                // a broken tar); remove the layer to be sure.
                let _ = engine.remove(&name(id));
                return Err(bad(format!("aufs layer {id}: {e}")));
            }
            // The tree could not be read to the end, so Apply saw a short
            // tar: the reader's error is the cause. (A reader that only
            // lost its pipe did so because Apply had refused the tar.)
            (Err(e), Err(pe))
                if e.kind() == super::ErrorKind::InvalidArgument
                    && !matches!(pe, DiffError::Output { .. }) =>
            {
                return Err(bad(format!("aufs layer {id}: {pe}")));
            }
            (Err(e), _) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("0123abcd-init"));
        assert!(!valid_id("../x"));
        assert!(!valid_id(""));
        assert!(!valid_id(".wh.x"));
    }
}
