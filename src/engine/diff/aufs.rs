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
//! form. Nothing is written when the tree is inconsistent or a name is
//! taken; a layer that fails is removed, those committed before it stay
//! (a rerun with the same prefix then reports them as existing).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;

use super::export::Exporter;
use super::DiffError;
use crate::engine::error::{Error, Result};
use crate::engine::Engine;

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

/// The layers of an aufs tree, parents before children.
pub fn read_tree(root: &Path) -> Result<Vec<(String, Option<String>)>> {
    let layers = root.join("layers");
    let entries = std::fs::read_dir(&layers).map_err(|e| {
        bad(format!(
            "{} is not a Docker aufs tree: cannot read {}: {e}",
            root.display(),
            layers.display()
        ))
    })?;
    let mut ancestry: HashMap<String, Vec<String>> = HashMap::new();
    for e in entries {
        let e = e.map_err(|e| bad(format!("reading {}: {e}", layers.display())))?;
        let Some(id) = e.file_name().to_str().map(str::to_string) else {
            return Err(bad(format!("{}: a non-UTF-8 layer id", layers.display())));
        };
        if !valid_id(&id) {
            return Err(bad(format!(
                "{}: {id:?} is not a layer id",
                layers.display()
            )));
        }
        let text = std::fs::read_to_string(e.path())
            .map_err(|err| bad(format!("reading {}: {err}", e.path().display())))?;
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
        let diff = root.join("diff").join(id);
        if !diff.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Err(bad(format!(
                "layer {id} has no diff directory {}",
                diff.display()
            )));
        }
    }
    let mut order: Vec<(usize, String)> = ancestry
        .iter()
        .map(|(id, l)| (l.len(), id.clone()))
        .collect();
    order.sort();
    Ok(order
        .into_iter()
        .map(|(_, id)| {
            let parent = ancestry[&id].first().cloned();
            (id, parent)
        })
        .collect())
}

pub fn import(engine: &Engine, root: &Path, pool: &str, prefix: &str) -> Result<Vec<String>> {
    engine.pool(pool)?;
    let layers = read_tree(root)?;
    let name = |id: &str| format!("{prefix}{id}");
    for (id, _) in &layers {
        let n = name(id);
        super::super::validate::key("name", &n)?;
        if engine.store.read(|tx| tx.id_of(&n))?.is_some() {
            return Err(Error::AlreadyExists(n));
        }
    }
    let mut done = Vec::new();
    for (id, parent) in &layers {
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
        let diff = root.join("diff").join(id);
        let (reader, writer) = nix::unistd::pipe()
            .map_err(|e| crate::backend::BackendError::io("pipe", &diff, e.into()))?;
        let dir = diff.clone();
        let producer = std::thread::spawn(move || -> std::result::Result<u64, DiffError> {
            let fd = super::open_root(&dir)
                .map_err(|e| DiffError::io("open", dir.as_os_str().as_encoded_bytes(), e))?;
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
            (Err(e), Err(pe)) if e.kind() == super::ErrorKind::InvalidArgument => {
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
