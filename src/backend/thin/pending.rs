//! Deferred removals: thin ids whose delete message waits for their
//! device to close, recorded durably and finished at open.

use super::*;

impl Thin {
    /// Records (`pending`) or forgets a deferred removal, durably.
    pub(super) fn set_pending(&self, id: u64, pending: bool) -> Result<(), BackendError> {
        let mut set = crate::shared::sync::lock(&self.pending);
        let changed = if pending {
            set.insert(id)
        } else {
            set.remove(&id)
        };
        if !changed {
            return Ok(());
        }
        write_pending(&self.token_dir, &set)
    }

    /// Finishes removals left deferred whose devices are gone by now
    /// (discard, delete the thin id).
    pub(super) fn finish_pending(&self) -> Result<(), BackendError> {
        let pending: Vec<u64> = crate::shared::sync::lock(&self.pending)
            .iter()
            .copied()
            .collect();
        for id in pending {
            if !self.is_active(&self.layer_name(id)) {
                self.destroy(id)?;
            }
        }
        Ok(())
    }

    /// Thin ids in the pool's metadata (base excluded), read by `thin_ls`
    /// from a metadata snapshot the pool holds meanwhile; `None` (logged)
    /// when that fails, and reconciliation then sees active devices only.
    pub(super) fn metadata_thin_ids(&self) -> Option<BTreeSet<u64>> {
        let meta = self.meta_dm.as_deref()?;
        // Its node, where udev has not made it.
        let src = match self.dm.device_info(&DevId::Name(dm_name(meta).ok()?)) {
            Ok(info) => {
                let d = info.device();
                blockdev::ensure_mapper_node(meta, d.major, d.minor).ok()?
            }
            Err(e) => {
                tracing::warn!(pool = %self.name, device = meta, error = %e, "no metadata device: thin ids of inactive devices are not reconciled");
                return None;
            }
        };
        let _g = crate::shared::sync::lock(&self.lock);
        if self.message("reserve_metadata_snap").is_err() {
            // One left reserved by a crash while it was held.
            let _ = self.message("release_metadata_snap");
            if let Err(e) = self.message("reserve_metadata_snap") {
                tracing::warn!(pool = %self.name, error = %e, "cannot reserve a metadata snapshot: thin ids of inactive devices are not reconciled");
                return None;
            }
        }
        let out = Command::new("thin_ls")
            .args(["-m", "--no-headers", "-o", "DEV"])
            .arg(&src)
            .stdin(Stdio::null())
            .output();
        if let Err(e) = self.message("release_metadata_snap") {
            tracing::warn!(pool = %self.name, error = %e, "releasing the metadata snapshot failed");
        }
        let why = match out {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                let ids: Option<BTreeSet<u64>> =
                    text.split_whitespace().map(|w| w.parse().ok()).collect();
                match ids {
                    Some(mut ids) => {
                        ids.remove(&(BASE_ID as u64));
                        return Some(ids);
                    }
                    None => format!("unexpected output {text:?}"),
                }
            }
            Ok(o) => format!(
                "{}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => e.to_string(),
        };
        tracing::warn!(pool = %self.name, metadata = %src.display(), error = %why, "thin_ls failed: thin ids of inactive devices are not reconciled");
        None
    }
}

/// The file listing deferred removals.
pub(super) const PENDING: &str = "removing";

pub(super) fn read_pending(dir: &Path) -> BTreeSet<u64> {
    fs::read_to_string(dir.join(PENDING))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Replaces `<dir>/removing` atomically (through `<dir>/t`) and durably.
pub(super) fn write_pending(dir: &Path, ids: &BTreeSet<u64>) -> Result<(), BackendError> {
    use std::io::Write;
    let path = dir.join(PENDING);
    let tmp = dir.join("t").join(PENDING);
    let mut f = fs::File::create(&tmp).map_err(|e| BackendError::io("create", &tmp, e))?;
    for id in ids {
        writeln!(f, "{id}").map_err(|e| BackendError::io("write", &tmp, e))?;
    }
    f.sync_all()
        .map_err(|e| BackendError::io("fsync", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| BackendError::io("rename", &tmp, e))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| BackendError::io("fsync", dir, e))
}
