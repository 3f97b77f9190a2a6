//! Helpers of the diff tests: layer tars built entry by entry with the
//! `tar` crate, and a tree walk that compares everything Apply and Export
//! promise to keep (type, mode, owner, mtime, xattrs, content, link target,
//! device number, hard-link groups).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Builds a layer tar in memory.
pub struct TarW {
    b: tar::Builder<Vec<u8>>,
}

impl Default for TarW {
    fn default() -> Self {
        Self::new()
    }
}

pub struct Attrs {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

pub fn attrs(mode: u32) -> Attrs {
    Attrs {
        mode,
        uid: 0,
        gid: 0,
        mtime: 1_600_000_000,
        xattrs: Vec::new(),
    }
}

impl Attrs {
    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn xattr(mut self, k: &str, v: &[u8]) -> Self {
        self.xattrs.push((k.into(), v.to_vec()));
        self
    }
    pub fn mtime(mut self, t: u64) -> Self {
        self.mtime = t;
        self
    }
}

impl TarW {
    pub fn new() -> Self {
        TarW {
            b: tar::Builder::new(Vec::new()),
        }
    }
    fn head(&mut self, t: tar::EntryType, a: &Attrs, size: u64) -> tar::Header {
        if !a.xattrs.is_empty() {
            let recs: Vec<(String, Vec<u8>)> = a
                .xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.clone()))
                .collect();
            self.b
                .append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(t);
        h.set_mode(a.mode);
        h.set_uid(a.uid);
        h.set_gid(a.gid);
        h.set_mtime(a.mtime);
        h.set_size(size);
        h
    }
    /// Writes a raw header whose name the `tar` crate would refuse to set
    /// (absolute, `..`): the hostile cases.
    pub fn raw(
        &mut self,
        t: tar::EntryType,
        name: &str,
        link: Option<&str>,
        data: &[u8],
    ) -> &mut Self {
        let mut h = tar::Header::new_old();
        h.set_entry_type(t);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        let old = h.as_old_mut();
        old.name.fill(0);
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            old.linkname.fill(0);
            old.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }
    pub fn dir(&mut self, path: &str, a: Attrs) -> &mut Self {
        let mut h = self.head(tar::EntryType::Directory, &a, 0);
        self.b.append_data(&mut h, path, io::empty()).unwrap();
        self
    }
    pub fn file(&mut self, path: &str, data: &[u8], a: Attrs) -> &mut Self {
        let mut h = self.head(tar::EntryType::Regular, &a, data.len() as u64);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = self.head(tar::EntryType::Symlink, &attrs(0o777), 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = self.head(tar::EntryType::Link, &attrs(0o644), 0);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }
    pub fn node(
        &mut self,
        path: &str,
        t: tar::EntryType,
        major: u32,
        minor: u32,
        a: Attrs,
    ) -> &mut Self {
        let mut h = self.head(t, &a, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, io::empty()).unwrap();
        self
    }
    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        self.file(path, b"", attrs(0o600))
    }
    pub fn finish(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

/// Everything of a tree that a layer diff must keep, one line per path
/// (the root excluded).
pub fn full_tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut groups: BTreeMap<(u64, u64), String> = BTreeMap::new();
    fn walk(
        root: &Path,
        dir: &Path,
        out: &mut BTreeMap<String, String>,
        groups: &mut BTreeMap<(u64, u64), String>,
    ) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let md = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let ft = md.file_type();
            let what = if ft.is_dir() {
                "dir".to_string()
            } else if ft.is_file() {
                let data = fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
                let mut h = std::collections::hash_map::DefaultHasher::new();
                data.hash(&mut h);
                format!("file {} bytes #{:016x}", data.len(), h.finish())
            } else if ft.is_symlink() {
                format!("symlink -> {}", fs::read_link(&p).unwrap().display())
            } else {
                format!("special {:o} rdev {}", md.mode() & 0o170000, md.rdev())
            };
            let mut xs: Vec<String> = xattr_list(&p)
                .into_iter()
                .filter(|(k, _)| !k.starts_with("trusted.overlay.") && k != "security.selinux")
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect();
            xs.sort();
            let link = if !ft.is_dir() && md.nlink() > 1 {
                let first = groups
                    .entry((md.dev(), md.ino()))
                    .or_insert_with(|| rel.clone());
                format!(" link-group {first}")
            } else {
                String::new()
            };
            out.insert(
                rel.clone(),
                format!(
                    "{what} mode {:o} owner {}:{} mtime {}.{:09} xattrs [{}]{link}",
                    md.mode() & 0o7777,
                    md.uid(),
                    md.gid(),
                    md.mtime(),
                    md.mtime_nsec(),
                    xs.join(", ")
                ),
            );
            if ft.is_dir() {
                walk(root, &p, out, groups);
            }
        }
    }
    walk(root, root, &mut out, &mut groups);
    // A group with one member in the tree is no hard link of the tree's
    // (overlay shows a lower inode's nlink after its sibling was copied up).
    let mut members: BTreeMap<String, usize> = BTreeMap::new();
    for v in out.values() {
        if let Some((_, g)) = v.split_once(" link-group ") {
            *members.entry(g.to_string()).or_default() += 1;
        }
    }
    for v in out.values_mut() {
        if let Some((head, g)) = v.split_once(" link-group ") {
            if members.get(g) == Some(&1) {
                *v = head.to_string();
            }
        }
    }
    out
}

fn xattr_list(p: &Path) -> Vec<(String, Vec<u8>)> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 65536];
    // SAFETY: c is NUL-terminated, buf is writable for its length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        let cn = std::ffi::CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        // SAFETY: both strings NUL-terminated, v writable for its length.
        let l = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        if l >= 0 {
            v.truncate(l as usize);
            out.push((String::from_utf8_lossy(name).into_owned(), v));
        }
    }
    out
}

/// Differences between two `full_tree`s, expected → actual.
pub fn tree_diff(
    expected: &BTreeMap<String, String>,
    actual: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (p, e) in expected {
        match actual.get(p) {
            None => out.push(format!("missing {p}: {e}")),
            Some(a) if a != e => {
                out.push(format!("changed {p}:\n    expected {e}\n    actual   {a}"))
            }
            _ => {}
        }
    }
    for (p, a) in actual {
        if !expected.contains_key(p) {
            out.push(format!("unexpected {p}: {a}"));
        }
    }
    out
}

pub fn assert_trees_equal(
    what: &str,
    expected: &BTreeMap<String, String>,
    actual: &BTreeMap<String, String>,
) {
    let d = tree_diff(expected, actual);
    assert!(
        d.is_empty(),
        "{what}: {} differences:\n  {}",
        d.len(),
        d.iter().take(40).cloned().collect::<Vec<_>>().join("\n  ")
    );
}

/// Writes `data` to a fresh file and returns it opened for reading, for
/// passing to Apply.
pub fn input_file(dir: &Path, name: &str, data: &[u8]) -> fs::File {
    let p = dir.join(name);
    fs::write(&p, data).unwrap();
    fs::File::open(&p).unwrap()
}

/// A fresh file for Export to write into; read it back with `fs::read`.
pub fn output_file(dir: &Path, name: &str) -> (fs::File, std::path::PathBuf) {
    let p = dir.join(name);
    (fs::File::create(&p).unwrap(), p)
}

/// Names in a tar, in order.
pub fn tar_names(data: &[u8]) -> Vec<String> {
    let mut ar = tar::Archive::new(data);
    ar.entries()
        .unwrap()
        .map(|e| String::from_utf8_lossy(&e.unwrap().path_bytes()).into_owned())
        .collect()
}
