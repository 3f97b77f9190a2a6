//! Apply: unpacks an OCI layer tar (plain, gzip or zstd, told apart by
//! their magic bytes; its end checked: input.rs) into a layer's directory.
//! Owners are numbers below 4294967295 ((uid_t)-1); sparse entries (GNU
//! type 'S', PAX GNU.sparse.*) are refused.
//!
//! Safety: every name is resolved beneath the layer root by openat2 with
//! RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS (sys/beneath.rs), and every change
//! is a `*at` call on one component in an already resolved directory. So an
//! absolute name, `..`, a symlink on the way (also one this tar made) or a
//! hard link out of the layer fails in the kernel; user-space checks only
//! make the message name the entry. A name that exists is removed before
//! the new entry is created with O_EXCL, so nothing is written through a
//! device node, fifo or symlink left there.
//!
//! Whiteouts: in `Full` mode (the layer's whole tree) `.wh.NAME` deletes NAME
//! and `.wh..wh..opq` empties its directory of everything this tar did not
//! create; in `Upper` mode (overlay) they become a 0/0 character device and
//! `trusted.overlay.opaque=y`. aufs internals (`.wh..wh.plnk`, `.wh..wh.aufs`,
//! `.wh..wh.orph`) are skipped.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};

use super::input::Input;
use super::{DiffError, TreeMode};
use crate::sys::{beneath, fstree};

const WH_PREFIX: &[u8] = b".wh.";
const WH_OPAQUE: &[u8] = b".wh..wh..opq";
/// overlayfs's opaque-directory mark (Documentation/filesystems/overlayfs.rst).
pub const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";

/// What was read.
#[derive(Debug, Default, Clone, Copy)]
pub struct Applied {
    /// Content bytes of regular files written (uncompressed, tar headers
    /// and padding excluded).
    pub bytes: u64,
    pub entries: u64,
}

/// Normalizes a tar name into components: leading `./` and `/`-runs
/// dropped; absolute names, `..` and NUL refused.
pub fn components(name: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if name.starts_with(b"/") {
        return Err("absolute names are not allowed in a layer");
    }
    if name.contains(&0) {
        return Err("the name contains a NUL byte");
    }
    let mut out = Vec::new();
    for c in name.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("`..` is not allowed in a layer's names"),
            c => out.push(c),
        }
    }
    Ok(out)
}

fn join(cs: &[&[u8]]) -> Vec<u8> {
    cs.join(&b'/')
}

pub struct Applier {
    root: OwnedFd,
    mode: TreeMode,
    /// Paths this apply created, for `.wh..wh..opq` in Full mode.
    created: HashSet<Vec<u8>>,
    /// Directory times, set last (children change them).
    dir_times: Vec<(Vec<u8>, Timestamps)>,
    /// The last parent directory opened, reused by its siblings.
    cached: Option<(Vec<u8>, OwnedFd)>,
    buf: Vec<u8>,
    pub done: Applied,
}

fn ts(sec: i64, nsec: u32) -> Timespec {
    Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    }
}

/// A PAX `uid`/`gid` value: decimal digits only.
fn pax_id(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// An id a file can be owned by: 32 bits, and not (uid_t)-1, which
/// chown(2) takes as "leave unchanged" (the file would stay root's).
fn owner_id(v: u64) -> Option<u32> {
    u32::try_from(v).ok().filter(|v| *v != u32::MAX)
}

/// "1700000000.123456789" (PAX time) → (sec, nsec).
fn pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: i64 = sec.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    while digits.len() < 9 {
        digits.push('0');
    }
    Some((sec, digits.parse().ok()?))
}

impl Applier {
    pub fn new(root: OwnedFd, mode: TreeMode) -> Applier {
        Applier {
            root,
            mode,
            created: HashSet::new(),
            dir_times: Vec::new(),
            cached: None,
            buf: vec![0u8; 1 << 18],
            done: Applied::default(),
        }
    }

    /// Reads the whole tar from `input` and applies it.
    pub fn run<'a>(&mut self, input: Box<dyn Read + 'a>) -> Result<Applied, DiffError> {
        let input = Input::open(input)?;
        let mut ar = tar::Archive::new(input);
        let entries = ar
            .entries()
            .map_err(|e| DiffError::Input(format!("not a tar archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| {
                DiffError::Input(format!(
                    "after {} entries: the tar stream is broken (garbage, truncated or wrongly compressed): {e}",
                    self.done.entries
                ))
            })?;
            self.entry(&mut entry)?;
            self.done.entries += 1;
        }
        ar.into_inner().finish(self.done.entries)?;
        self.finish()?;
        Ok(self.done)
    }

    fn finish(&mut self) -> Result<(), DiffError> {
        self.cached = None;
        // Deepest first: setting a child's times never touches its parent's.
        let times = std::mem::take(&mut self.dir_times);
        for (path, t) in times.iter().rev() {
            let fd = beneath::open_dir(self.root.as_fd(), path)
                .map_err(|e| DiffError::io("open directory", path, e))?;
            rfs::futimens(&fd, t).map_err(|e| DiffError::io("set times", path, e.into()))?;
        }
        rfs::syncfs(&self.root).map_err(|e| DiffError::io("syncfs", b"", e.into()))?;
        Ok(())
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), DiffError> {
        let name = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&name).into_owned();
        let bad = |why: &str| DiffError::Entry {
            entry: shown.clone(),
            why: why.to_string(),
        };
        let kind = entry.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader) {
            return Ok(());
        }
        let cs = components(&name).map_err(bad)?;
        // PAX records: xattrs and precise times.
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let (mut mtime, mut atime) = (None, None);
        let (mut pax_uid, mut pax_gid) = (None, None);
        // GNU tar's PAX sparse files (formats 0.0, 0.1, 1.0): the header's
        // name is `GNUSparseFile.<pid>/<name>` and the data a sparse map.
        let (mut sparse, mut sparse_name) = (false, None);
        if let Some(pax) = entry
            .pax_extensions()
            .map_err(|e| bad(&format!("unreadable PAX header: {e}")))?
        {
            for ext in pax {
                let ext = ext.map_err(|e| bad(&format!("unreadable PAX record: {e}")))?;
                let key = ext.key_bytes();
                if let Some(x) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((x.to_vec(), ext.value_bytes().to_vec()));
                } else if key == b"mtime" {
                    mtime = pax_time(ext.value_bytes());
                } else if key == b"atime" {
                    atime = pax_time(ext.value_bytes());
                } else if key == b"uid" || key == b"gid" {
                    // The tar reader drops a value it cannot parse and
                    // keeps the header's (often 0): refuse it instead.
                    let v = pax_id(ext.value_bytes());
                    if key == b"uid" {
                        pax_uid = Some(v);
                    } else {
                        pax_gid = Some(v);
                    }
                } else if key.starts_with(b"GNU.sparse.") {
                    sparse = true;
                    if key == b"GNU.sparse.name" {
                        sparse_name = Some(String::from_utf8_lossy(ext.value_bytes()).into_owned());
                    }
                }
            }
        }
        if sparse {
            let real = sparse_name.unwrap_or_else(|| shown.clone());
            return Err(DiffError::Entry {
                why: format!(
                    "a sparse file (PAX GNU.sparse.* records, as tar --sparse --format=posix writes, stored as {shown:?}) is not supported in a layer; write the tar without --sparse"
                ),
                entry: real,
            });
        }
        if kind == tar::EntryType::GNUSparse {
            return Err(bad(
                "a sparse file (GNU type 'S', as tar --sparse --format=gnu writes) is not supported in a layer; write the tar without --sparse",
            ));
        }
        // Whiteouts carry no metadata worth refusing a tar for.
        let lenient = cs.last().is_some_and(|l| l.starts_with(WH_PREFIX));
        let h = entry.header();
        let num = |r: io::Result<u64>, what: &str| -> Result<u64, DiffError> {
            match r {
                Ok(v) => Ok(v),
                Err(_) if lenient => Ok(0),
                Err(e) => Err(bad(&format!("bad {what} field: {e}"))),
            }
        };
        let id = |pax: Option<Option<u64>>,
                  field: io::Result<u64>,
                  what: &str|
         -> Result<u32, DiffError> {
            let v = match pax {
                Some(Some(v)) => v,
                Some(None) if lenient => 0,
                Some(None) => {
                    return Err(bad(&format!(
                        "its PAX {what} record is not a number of 0 to 4294967294"
                    )))
                }
                None => num(field, what)?,
            };
            match owner_id(v) {
                Some(v) => Ok(v),
                None if lenient => Ok(0),
                None => Err(bad(&format!(
                    "{what} {v} cannot be a file's owner: ids go up to 4294967294 (4294967295 is (uid_t)-1, which chown takes as \"leave unchanged\")"
                ))),
            }
        };
        let mode = num(h.mode().map(u64::from), "mode")? as u32 & 0o7777;
        let uid = id(pax_uid, h.uid(), "uid")?;
        let gid = id(pax_gid, h.gid(), "gid")?;
        let mtime = match mtime {
            Some(t) => t,
            None => (num(h.mtime(), "mtime")? as i64, 0),
        };
        let atime = atime.unwrap_or(mtime);

        let Some((last, dirs)) = cs.split_last() else {
            // The root itself ("./"): only its metadata.
            if kind.is_dir() {
                let root = beneath::open_dir(self.root.as_fd(), b"")
                    .map_err(|e| DiffError::io("open", b".", e))?;
                self.meta_fd(root.as_fd(), &shown, uid, gid, mode, &xattrs)?;
                self.dir_times.push((Vec::new(), times(atime, mtime)));
            }
            return Ok(());
        };
        let last: &[u8] = last;
        let path = join(&cs);
        let parent_path = join(dirs);

        // Whiteouts.
        if let Some(target) = last.strip_prefix(WH_PREFIX) {
            if self.mode == TreeMode::Full && last != WH_OPAQUE {
                // Nothing to delete under a directory that is not there.
                match beneath::open_dir(self.root.as_fd(), &parent_path) {
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                    _ => {}
                }
            }
            let pd = self.parent(dirs, &parent_path, &shown, times(atime, mtime))?;
            if last == WH_OPAQUE {
                return self.opaque(pd.as_fd(), &parent_path, &shown);
            }
            if target.starts_with(WH_PREFIX) {
                // aufs internals (.wh..wh.plnk, .wh..wh.aufs, .wh..wh.orph).
                return Ok(());
            }
            if target.is_empty() || target == b"." || target == b".." {
                return Err(bad("a whiteout must name an entry"));
            }
            self.invalidate(&parent_path, target);
            beneath::remove_all_at(pd.as_fd(), target)
                .map_err(|e| DiffError::io("remove", &path, e))?;
            if self.mode == TreeMode::Upper {
                rfs::mknodat(
                    pd.as_fd(),
                    target,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    0,
                )
                .map_err(|e| DiffError::io("make whiteout", &path, e.into()))?;
            }
            return Ok(());
        }

        let pd = self.parent(dirs, &parent_path, &shown, times(atime, mtime))?;
        let pd = pd.as_fd();
        let existing = beneath::stat_at(pd, last).map_err(|e| DiffError::io("stat", &path, e))?;
        if kind.is_dir() {
            match existing {
                Some(st) if beneath::is_dir(st.st_mode) => {}
                Some(_) => {
                    rfs::unlinkat(pd, last, AtFlags::empty())
                        .map_err(|e| DiffError::io("unlink", &path, e.into()))?;
                    mkdir(pd, last, &path)?;
                }
                None => mkdir(pd, last, &path)?,
            }
            let fd = beneath::open_at(pd, last, OFlags::RDONLY | OFlags::DIRECTORY, 0)
                .map_err(|e| DiffError::io("open", &path, e))?;
            self.meta_fd(fd.as_fd(), &shown, uid, gid, mode, &xattrs)?;
            self.dir_times.push((path.clone(), times(atime, mtime)));
            self.created.insert(path);
            return Ok(());
        }
        if let Some(st) = existing {
            self.invalidate(&parent_path, last);
            if beneath::is_dir(st.st_mode) {
                beneath::remove_all_at(pd, last).map_err(|e| DiffError::io("remove", &path, e))?;
            } else {
                rfs::unlinkat(pd, last, AtFlags::empty())
                    .map_err(|e| DiffError::io("unlink", &path, e.into()))?;
            }
        }
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let fd = beneath::open_at(
                    pd,
                    last,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
                    0o600,
                )
                .map_err(|e| DiffError::io("create", &path, e))?;
                let want = entry.size();
                let mut file = File::from(fd);
                let mut got = 0u64;
                loop {
                    let n = match entry.read(&mut self.buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            return Err(DiffError::Input(format!(
                                "entry {shown:?}: reading its data: {e} (garbage, truncated or wrongly compressed input)"
                            )))
                        }
                    };
                    file.write_all(&self.buf[..n])
                        .map_err(|e| DiffError::io("write", &path, e))?;
                    got += n as u64;
                }
                if got != want {
                    return Err(DiffError::Input(format!(
                        "entry {shown:?}: the input ends after {got} of its {want} bytes (truncated)"
                    )));
                }
                self.done.bytes += got;
                self.meta_fd(file.as_fd(), &shown, uid, gid, mode, &xattrs)?;
                rfs::futimens(&file, &times(atime, mtime))
                    .map_err(|e| DiffError::io("set times", &path, e.into()))?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad("a symlink without a target"))?;
                if target.is_empty() || target.contains(&0) {
                    return Err(bad("a symlink target must be non-empty and without NUL"));
                }
                rfs::symlinkat(target.as_ref(), pd, last)
                    .map_err(|e| DiffError::io("symlink", &path, e.into()))?;
                self.meta_at(pd, last, &path, &shown, uid, gid, None, &xattrs)?;
                rfs::utimensat(pd, last, &times(atime, mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| DiffError::io("set times", &path, e.into()))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| bad("a hard link without a target"))?
                    .into_owned();
                let tcs =
                    components(&target).map_err(|why| bad(&format!("hard link target: {why}")))?;
                let Some((tlast, tdirs)) = tcs.split_last() else {
                    return Err(bad("a hard link to the layer root"));
                };
                let tpd = beneath::open_dir(self.root.as_fd(), &join(tdirs)).map_err(|e| {
                    bad(&format!(
                        "hard link target {:?} is not a file in this layer: {}",
                        String::from_utf8_lossy(&target),
                        resolve_why(&e)
                    ))
                })?;
                rfs::linkat(tpd.as_fd(), *tlast, pd, last, AtFlags::empty()).map_err(|e| {
                    bad(&format!(
                        "hard link target {:?} is not a file in this layer: {e}",
                        String::from_utf8_lossy(&target)
                    ))
                })?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let ft = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let h = entry.header();
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                rfs::mknodat(
                    pd,
                    last,
                    ft,
                    Mode::from_raw_mode(0o600),
                    rfs::makedev(major, minor),
                )
                .map_err(|e| DiffError::io("mknod", &path, e.into()))?;
                self.meta_at(pd, last, &path, &shown, uid, gid, Some(mode), &xattrs)?;
                rfs::utimensat(pd, last, &times(atime, mtime), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| DiffError::io("set times", &path, e.into()))?;
            }
            other => {
                return Err(bad(&format!(
                    "entry type {:?} is not supported in a layer",
                    other.as_byte() as char
                )))
            }
        }
        self.created.insert(path);
        Ok(())
    }

    /// Owner, mode (after chown, which clears set-id bits) and xattrs of
    /// an open file or directory.
    fn meta_fd(
        &self,
        fd: BorrowedFd<'_>,
        shown: &str,
        uid: u32,
        gid: u32,
        mode: u32,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), DiffError> {
        let p = shown.as_bytes();
        rfs::fchown(
            fd,
            Some(rfs::Uid::from_raw(uid)),
            Some(rfs::Gid::from_raw(gid)),
        )
        .map_err(|e| DiffError::io("chown", p, e.into()))?;
        rfs::fchmod(fd, Mode::from_raw_mode(mode))
            .map_err(|e| DiffError::io("chmod", p, e.into()))?;
        for (k, v) in xattrs {
            if !self.xattr_allowed(k) {
                continue;
            }
            rfs::fsetxattr(fd, k.as_slice(), v, rfs::XattrFlags::empty())
                .map_err(|e| DiffError::xattr(shown, k, e.into()))?;
        }
        Ok(())
    }

    /// The same for a name that cannot be opened (symlink, device, fifo).
    #[allow(clippy::too_many_arguments)]
    fn meta_at(
        &self,
        pd: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        shown: &str,
        uid: u32,
        gid: u32,
        mode: Option<u32>,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), DiffError> {
        rfs::chownat(
            pd,
            name,
            Some(rfs::Uid::from_raw(uid)),
            Some(rfs::Gid::from_raw(gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| DiffError::io("chown", path, e.into()))?;
        if let Some(mode) = mode {
            rfs::chmodat(pd, name, Mode::from_raw_mode(mode), AtFlags::empty())
                .map_err(|e| DiffError::io("chmod", path, e.into()))?;
        }
        for (k, v) in xattrs {
            if !self.xattr_allowed(k) {
                continue;
            }
            fstree::set_xattr_at(pd, name, k, v).map_err(|e| DiffError::xattr(shown, k, e))?;
        }
        Ok(())
    }

    /// overlayfs's own xattrs would forge whiteouts or redirects: a tar
    /// never sets them.
    fn xattr_allowed(&self, k: &[u8]) -> bool {
        !k.starts_with(b"trusted.overlay.")
    }

    /// The directory `dirs` beneath the root, created (0755, root) where
    /// missing, as tar(1) does for entries whose parents are not listed.
    /// Created directories get the entry's times, so that one tar always
    /// gives one tree.
    fn parent(
        &mut self,
        dirs: &[&[u8]],
        path: &[u8],
        shown: &str,
        t: Timestamps,
    ) -> Result<OwnedFd, DiffError> {
        if let Some((p, fd)) = &self.cached {
            if p == path {
                return fd.try_clone().map_err(|e| DiffError::io("dup", path, e));
            }
        }
        let fd = match beneath::open_dir(self.root.as_fd(), path) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let mut fd = beneath::open_dir(self.root.as_fd(), b"")
                    .map_err(|e| DiffError::io("open", b".", e))?;
                for (i, c) in dirs.iter().enumerate() {
                    let sub = join(&dirs[..=i]);
                    match beneath::open_at(fd.as_fd(), c, OFlags::RDONLY | OFlags::DIRECTORY, 0) {
                        Ok(next) => fd = next,
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                            mkdir(fd.as_fd(), c, &sub)?;
                            rfs::chmodat(
                                fd.as_fd(),
                                *c,
                                Mode::from_raw_mode(0o755),
                                AtFlags::empty(),
                            )
                            .map_err(|e| DiffError::io("chmod", &sub, e.into()))?;
                            fd = beneath::open_at(
                                fd.as_fd(),
                                c,
                                OFlags::RDONLY | OFlags::DIRECTORY,
                                0,
                            )
                            .map_err(|e| DiffError::io("open", &sub, e))?;
                            self.dir_times.push((sub.clone(), clone_ts(&t)));
                            self.created.insert(sub);
                        }
                        Err(e) => {
                            return Err(DiffError::Entry {
                                entry: shown.to_string(),
                                why: resolve_why(&e),
                            })
                        }
                    }
                }
                fd
            }
            Err(e) => {
                return Err(DiffError::Entry {
                    entry: shown.to_string(),
                    why: resolve_why(&e),
                })
            }
        };
        let keep = fd.try_clone().map_err(|e| DiffError::io("dup", path, e))?;
        self.cached = Some((path.to_vec(), keep));
        Ok(fd)
    }

    /// `name` in directory `parent` is about to be replaced: forget a
    /// cached descriptor at or under it.
    fn invalidate(&mut self, parent: &[u8], name: &[u8]) {
        let mut p = parent.to_vec();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(name);
        if let Some((c, _)) = &self.cached {
            if c == &p || (c.starts_with(&p) && c.get(p.len()) == Some(&b'/')) {
                self.cached = None;
            }
        }
    }

    fn opaque(&mut self, dir: BorrowedFd<'_>, path: &[u8], shown: &str) -> Result<(), DiffError> {
        match self.mode {
            TreeMode::Upper => rfs::fsetxattr(dir, OPAQUE_XATTR, b"y", rfs::XattrFlags::empty())
                .map_err(|e| DiffError::xattr(shown, OPAQUE_XATTR, e.into())),
            TreeMode::Full => {
                // Hide what lower layers put here, keep what this tar made.
                self.cached = None;
                let prefix = if path.is_empty() {
                    Vec::new()
                } else {
                    [path, b"/"].concat()
                };
                let created = &self.created;
                beneath::empty_dir_except(dir, &|n| {
                    created.contains(&[prefix.as_slice(), n].concat())
                })
                .map_err(|e| DiffError::io("empty opaque directory", path, e))
            }
        }
    }
}

fn mkdir(pd: BorrowedFd<'_>, name: &[u8], path: &[u8]) -> Result<(), DiffError> {
    rfs::mkdirat(pd, name, Mode::from_raw_mode(0o700))
        .map_err(|e| DiffError::io("mkdir", path, e.into()))
}

fn clone_ts(t: &Timestamps) -> Timestamps {
    Timestamps {
        last_access: ts(t.last_access.tv_sec, t.last_access.tv_nsec as u32),
        last_modification: ts(
            t.last_modification.tv_sec,
            t.last_modification.tv_nsec as u32,
        ),
    }
}

fn times(atime: (i64, u32), mtime: (i64, u32)) -> Timestamps {
    Timestamps {
        last_access: ts(atime.0, atime.1),
        last_modification: ts(mtime.0, mtime.1),
    }
}

/// Why openat2 refused a path, in words.
fn resolve_why(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ELOOP) => {
            "its path goes through a symlink, which a layer's entries may not do".into()
        }
        Some(libc::EXDEV) => "its path leaves the layer".into(),
        Some(libc::ENOTDIR) => "a parent of it is not a directory".into(),
        Some(libc::ENAMETOOLONG) => "the name is too long for the file system".into(),
        Some(libc::ENOENT) => "it does not exist".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalized_or_refused() {
        assert_eq!(components(b"./a//b/").unwrap(), vec![&b"a"[..], b"b"]);
        assert!(components(b"./").unwrap().is_empty());
        assert!(components(b"/etc/passwd").is_err());
        assert!(components(b"a/../../x").is_err());
        assert!(components(b"..").is_err());
    }

    #[test]
    fn pax_times_parse() {
        assert_eq!(pax_time(b"12.5"), Some((12, 500_000_000)));
        assert_eq!(pax_time(b"12"), Some((12, 0)));
        assert_eq!(pax_time(b"1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(pax_time(b"x"), None);
    }

    #[test]
    fn ids_are_representable() {
        assert_eq!(owner_id(0), Some(0));
        assert_eq!(owner_id(4_294_967_294), Some(u32::MAX - 1));
        assert_eq!(owner_id(4_294_967_295), None);
        assert_eq!(owner_id(4_294_967_296), None);
        assert_eq!(pax_id(b"1000"), Some(1000));
        assert_eq!(pax_id(b"-1"), None);
        assert_eq!(pax_id(b""), None);
        assert_eq!(pax_id(b"184467440737095516160"), None);
    }
}
