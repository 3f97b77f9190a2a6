//! Checks on client input, before anything changes.

use std::collections::BTreeMap;

use crate::engine::error::{Error, Result};

/// Keys, names and label pairs are capped like containerd's labels: 4 KiB.
pub const MAX_KEY_BYTES: usize = 4096;
pub const MAX_LABEL_BYTES: usize = 4096;
/// All label keys and values of one layer together: 64 KiB (16 pairs at
/// the per-pair limit), so a layer's record and its Walk row stay small.
pub const MAX_LABELS_TOTAL_BYTES: usize = 64 << 10;
/// The label that picks a parentless layer's pool.
pub const POOL_LABEL: &str = "layerd.io/pool";
/// The label that caps a new layer's own bytes (btrfs: a qgroup limit).
pub const SIZE_LABEL: &str = "layerd.io/size";
/// The same label as containerd passes it to a proxy snapshotter (only
/// labels under `containerd.io/snapshot/` reach one).
pub const CONTAINERD_SIZE_LABEL: &str = "containerd.io/snapshot/layerd.size";

/// The size label a layer carries, as (name, value): either name; both
/// with different values is an error.
pub fn size_entry(labels: &BTreeMap<String, String>) -> Result<Option<(&'static str, &str)>> {
    let ours = labels.get(SIZE_LABEL).map(|v| (SIZE_LABEL, v.as_str()));
    let theirs = labels
        .get(CONTAINERD_SIZE_LABEL)
        .map(|v| (CONTAINERD_SIZE_LABEL, v.as_str()));
    match (ours, theirs) {
        (Some((_, a)), Some((_, b))) if a != b => Err(Error::InvalidArgument(format!(
            "labels {SIZE_LABEL}={:?} and {CONTAINERD_SIZE_LABEL}={:?} ask for different size limits",
            truncate(a, 64),
            truncate(b, 64)
        ))),
        (o, t) => Ok(o.or(t)),
    }
}

/// The byte limit the size label asks for, if any: a size as the config
/// writes them (`"512M"`, `"2G"`), more than zero.
pub fn size_label(labels: &BTreeMap<String, String>) -> Result<Option<u64>> {
    let Some((name, v)) = size_entry(labels)? else {
        return Ok(None);
    };
    let bad =
        |why: String| Error::InvalidArgument(format!("label {name}={:?}: {why}", truncate(v, 64)));
    match crate::shared::size::parse_size(v) {
        Ok(0) => Err(bad("a layer's size limit must be more than 0".into())),
        Ok(n) => Ok(Some(n)),
        Err(e) => Err(bad(e)),
    }
}

pub fn key(what: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::InvalidArgument(format!("{what} must not be empty")));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidArgument(format!(
            "{what} is {} bytes; the limit is {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

pub fn labels(labels: &BTreeMap<String, String>) -> Result<()> {
    for (k, v) in labels {
        if k.is_empty() {
            return Err(Error::InvalidArgument(
                "a label key must not be empty".into(),
            ));
        }
        if k.len() + v.len() > MAX_LABEL_BYTES {
            return Err(Error::InvalidArgument(format!(
                "label {:?}: key and value are {} bytes together; the limit is {MAX_LABEL_BYTES}",
                truncate(k, 64),
                k.len() + v.len()
            )));
        }
    }
    let total: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_LABELS_TOTAL_BYTES {
        return Err(Error::InvalidArgument(format!(
            "{} labels of {total} bytes in total (keys and values); the limit is {MAX_LABELS_TOTAL_BYTES} bytes of labels per layer",
            labels.len()
        )));
    }
    Ok(())
}

/// The labels layerd reads when it creates a layer keep saying what they
/// said then (Update and Commit of a layer living in `pool`, from its
/// `current` labels to `new`): `layerd.io/pool`, where present, names the
/// pool the layer lives in; `layerd.io/size`, where present, is the limit
/// the layer was created with. Either may be dropped; neither may change,
/// and a size limit cannot be added later.
pub fn fixed_labels(
    pool: &str,
    current: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Result<()> {
    if let Some(v) = new.get(POOL_LABEL) {
        if v != pool {
            return Err(Error::InvalidArgument(format!(
                "label {POOL_LABEL}={:?}: the layer lives in pool {pool:?}; its pool is chosen when it is created and the label cannot name another afterwards",
                truncate(v, 64)
            )));
        }
    }
    if let Some((name, v)) = size_entry(new)? {
        match size_entry(current)? {
            Some((_, c)) if c == v => {}
            Some((_, c)) => {
                return Err(Error::InvalidArgument(format!(
                    "label {name}={:?}: the layer's size limit is {:?}, set when it was created; it cannot change afterwards",
                    truncate(v, 64),
                    truncate(c, 64)
                )))
            }
            None => {
                return Err(Error::InvalidArgument(format!(
                    "label {name}={:?}: the layer has no size limit; a limit is set only when a layer is created (Prepare, View)",
                    truncate(v, 64)
                )))
            }
        }
    }
    Ok(())
}

/// Start of a long string, for messages.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Applies Update's field paths: none or `labels` replace all labels;
/// `labels.K` sets K from `new` or deletes it when `new` lacks it.
pub fn apply_fieldpaths(
    current: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    paths: &[String],
) -> Result<BTreeMap<String, String>> {
    if paths.is_empty() {
        return Ok(new.clone());
    }
    let mut out = current.clone();
    for p in paths {
        if p == "labels" {
            out = new.clone();
        } else if let Some(k) = p.strip_prefix("labels.") {
            if k.is_empty() {
                return Err(Error::InvalidArgument(
                    "field path \"labels.\" names no label".into(),
                ));
            }
            match new.get(k) {
                Some(v) => out.insert(k.to_string(), v.clone()),
                None => out.remove(k),
            };
        } else {
            return Err(Error::InvalidArgument(format!(
                "cannot update field path {:?}: only \"labels\" and \"labels.<key>\" can change",
                truncate(p, 64)
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn key_limits() {
        assert!(key("key", "a/b/c").is_ok());
        assert!(key("key", &"x".repeat(4096)).is_ok());
        assert!(key("key", &"x".repeat(4097)).is_err());
        assert!(key("key", "").is_err());
    }

    #[test]
    fn label_limits() {
        assert!(labels(&m(&[("a", "b")])).is_ok());
        assert!(labels(&m(&[("a", &"v".repeat(4095))])).is_ok());
        assert!(labels(&m(&[("a", &"v".repeat(4096))])).is_err());
        assert!(labels(&m(&[("", "v")])).is_err());
    }

    #[test]
    fn label_total_limit() {
        let pairs = |n: usize| -> BTreeMap<String, String> {
            (0..n)
                .map(|i| (format!("k{i:03}"), "v".repeat(4096 - 4)))
                .collect()
        };
        assert!(labels(&pairs(16)).is_ok());
        let e = labels(&pairs(17)).unwrap_err().to_string();
        assert!(e.contains("69632 bytes") && e.contains("65536"), "{e}");
        // Many small labels count too.
        let small: BTreeMap<String, String> = (0..10_000)
            .map(|i| (format!("k{i:05}"), "v".into()))
            .collect();
        assert!(labels(&small).is_err());
    }

    #[test]
    fn labels_read_at_creation_are_fixed() {
        let sized = m(&[(SIZE_LABEL, "32M"), ("a", "1")]);
        let ok = |pool: &str, cur: &BTreeMap<String, String>, new: &[(&str, &str)]| {
            fixed_labels(pool, cur, &m(new)).is_ok()
        };
        assert!(ok(
            "main",
            &sized,
            &[(POOL_LABEL, "main"), (SIZE_LABEL, "32M")]
        ));
        // Dropped: fine.
        assert!(ok("main", &sized, &[("b", "2")]));
        assert!(!ok("main", &sized, &[(POOL_LABEL, "fast")]));
        assert!(!ok("main", &sized, &[(SIZE_LABEL, "64M")]));
        // Same bytes only: "32768K" is another spelling of the label.
        assert!(!ok("main", &sized, &[(SIZE_LABEL, "32768K")]));
        assert!(!ok("main", &m(&[]), &[(SIZE_LABEL, "32M")]));
        let e = fixed_labels("main", &sized, &m(&[(POOL_LABEL, "fast")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(POOL_LABEL) && e.contains("\"fast\"") && e.contains("\"main\""),
            "{e}"
        );
    }

    #[test]
    fn fieldpaths() {
        let cur = m(&[("a", "1"), ("b", "2")]);
        let new = m(&[("b", "20"), ("c", "3")]);
        assert_eq!(apply_fieldpaths(&cur, &new, &[]).unwrap(), new);
        assert_eq!(
            apply_fieldpaths(&cur, &new, &["labels".into()]).unwrap(),
            new
        );
        assert_eq!(
            apply_fieldpaths(&cur, &new, &["labels.b".into(), "labels.a".into()]).unwrap(),
            m(&[("b", "20")])
        );
        assert_eq!(
            apply_fieldpaths(&cur, &new, &["labels.c".into()]).unwrap(),
            m(&[("a", "1"), ("b", "2"), ("c", "3")])
        );
        assert!(apply_fieldpaths(&cur, &new, &["name".into()]).is_err());
        assert!(apply_fieldpaths(&cur, &new, &["labels.".into()]).is_err());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("ab", 5), "ab");
        assert_eq!(truncate("ééé", 3), "é…");
    }
}
