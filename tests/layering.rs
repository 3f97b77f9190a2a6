//! Which folder of src/ may import which (docs/ARCHITECTURE.md, "Architecture
//! invariants"): adapters → engine → backend → sys. Reads every `crate::<m>`
//! path outside comments and fails on an edge the table does not allow, so
//! a new one (say containerd reaching a backend) is caught where it is
//! written. The edges that issue 13 removes are listed file by file: a
//! ratchet, not a licence — a new file cannot join them.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// Folder → the folders it may import (itself always).
const ALLOWED: &[(&str, &[&str])] = &[
    ("dbus", &["engine", "shared"]),
    ("containerd", &["engine", "config", "shared"]),
    ("engine", &["backend", "filters", "sys", "shared"]),
    ("backend", &["sys", "shared"]),
    ("monitor", &["engine", "sys", "shared"]),
    ("maintenance", &["config", "dbus", "engine", "shared"]),
    ("config", &["shared"]),
    ("sys", &["shared"]),
    ("filters", &["shared"]),
    ("shared", &[]),
];

/// Edges that exist today and go against the table (issue 13: a leaf for
/// shared words, capabilities instead of driver names).
const KNOWN: &[(&str, &str)] = &[("src/containerd/mod.rs", "sys")];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The modules a line names as `crate::<m>`, ignoring comments.
fn imports(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    code.match_indices("crate::")
        .map(|(i, _)| {
            code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn folders_import_only_what_the_architecture_allows() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut bad = Vec::new();
    let mut seen_known = BTreeSet::new();
    for (folder, may) in ALLOWED {
        let mut files = Vec::new();
        rust_files(&root.join("src").join(folder), &mut files);
        let single = root.join("src").join(format!("{folder}.rs"));
        if single.exists() {
            files.push(single);
        }
        for file in files {
            let rel = file
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            for (n, line) in fs::read_to_string(&file).unwrap().lines().enumerate() {
                for m in imports(line) {
                    if m == *folder || may.contains(&m.as_str()) || !is_folder(&m) {
                        continue;
                    }
                    if KNOWN.contains(&(rel.as_str(), m.as_str())) {
                        seen_known.insert((rel.clone(), m));
                        continue;
                    }
                    bad.push(format!("{rel}:{}: {folder} imports crate::{m}", n + 1));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "imports against docs/ARCHITECTURE.md:\n{}",
        bad.join("\n")
    );
    // An exception that is gone must leave the list, so it cannot return.
    let stale: Vec<_> = KNOWN
        .iter()
        .filter(|(f, m)| !seen_known.contains(&(f.to_string(), m.to_string())))
        .collect();
    assert!(
        stale.is_empty(),
        "no longer imported, drop from KNOWN: {stale:?}"
    );
}

fn is_folder(m: &str) -> bool {
    ALLOWED.iter().any(|(f, _)| *f == m)
}

#[test]
fn comments_are_not_imports() {
    assert_eq!(
        imports("use crate::engine::Engine; // crate::sys"),
        vec!["engine"]
    );
    assert!(imports("//! see crate::backend").is_empty());
}
