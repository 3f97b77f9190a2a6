//! Export: writes a layer's changes as an OCI layer tar.
//!
//! - From an overlay upper directory (`walk_upper`): every entry is a
//!   change; a 0/0 character device becomes `.wh.NAME`, a directory with
//!   `trusted.overlay.opaque=y` gets a `.wh..wh..opq` entry after its own.
//! - From a whole tree beside its parent's (`walk_changes`, the double
//!   walk of containerd's fs.Changes): a name only in the layer is added
//!   (with its subtree), a name only in the parent becomes `.wh.NAME`, a
//!   name in both is emitted when its type, mode, owner, size, mtime
//!   (seconds and nanoseconds), rdev, xattrs or symlink target differ; a
//!   regular file whose metadata are all equal but whose mtime has no
//!   nanoseconds (a file system or copy that truncates times) has its
//!   content compared too. Directories are compared by mode, owner, mtime
//!   and xattrs and always descended into.
//!
//! Every emitted entry is preceded by its not yet emitted parent
//! directories, so the tar applies onto any backend (an overlay upper
//! lacks them) with their real metadata. The layer root itself is never
//! emitted.
//!
//! Deterministic: names sorted bytewise, GNU headers with no user or group
//! names and no atime/ctime, PAX records (mtime with nanoseconds when it
//! has any, SCHILY.xattr.* sorted) only when needed, whiteouts with mode 0,
//! owner 0:0 and mtime 0. The same tree gives the same bytes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::fs::{self as rfs, OFlags};

use super::apply::OPAQUE_XATTR;
use super::DiffError;
use crate::sys::{beneath, fstree};

/// Counts what reaches the output, and remembers whether writing to it
/// failed (so that an error is told apart from one reading the layer,
/// which reaches the tar writer the same way).
pub struct Counting<W: Write> {
    pub inner: W,
    pub bytes: u64,
    pub failed: bool,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf).inspect_err(|_| self.failed = true)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| self.failed = true)
    }
}

struct Meta {
    st: fstree::Meta,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    link: Option<Vec<u8>>,
}

fn ftype(mode: u32) -> u32 {
    mode & libc::S_IFMT
}

fn meta(dir: BorrowedFd<'_>, name: &[u8], path: &[u8]) -> Result<Meta, DiffError> {
    let st = fstree::lstat_at(dir, name)
        .map_err(|e| DiffError::io("stat", path, e))?
        .ok_or_else(|| DiffError::io("stat", path, io::ErrorKind::NotFound.into()))?;
    let mut xattrs =
        fstree::xattrs_at(dir, name).map_err(|e| DiffError::io("read xattrs", path, e))?;
    xattrs.retain(|(k, _)| !k.starts_with(b"trusted.overlay."));
    let link = if ftype(st.raw_mode()) == libc::S_IFLNK {
        Some(
            rfs::readlinkat(dir, name, Vec::new())
                .map_err(|e| DiffError::io("readlink", path, e.into()))?
                .into_bytes(),
        )
    } else {
        None
    };
    Ok(Meta { st, xattrs, link })
}

pub struct Exporter<W: Write> {
    out: tar::Builder<Counting<W>>,
    /// (dev, ino) of emitted multiply-linked files → their path.
    links: HashMap<(u64, u64), Vec<u8>>,
    /// Directories entered but not emitted yet: path and metadata.
    pending: Vec<(Vec<u8>, Option<Meta>)>,
    pub content_bytes: u64,
}

impl<W: Write> Exporter<W> {
    pub fn new(out: W) -> Self {
        let mut b = tar::Builder::new(Counting {
            inner: out,
            bytes: 0,
            failed: false,
        });
        b.mode(tar::HeaderMode::Complete);
        Exporter {
            out: b,
            links: HashMap::new(),
            pending: Vec::new(),
            content_bytes: 0,
        }
    }

    /// Ends the archive; returns the bytes written.
    pub fn finish(self) -> Result<u64, DiffError> {
        let mut c = self.out.into_inner().map_err(DiffError::output)?;
        c.flush().map_err(DiffError::output)?;
        Ok(c.bytes)
    }

    /// An error from the tar writer: the caller's descriptor's if writing
    /// to it failed, else one reading `path` in the layer.
    fn werr(&self, path: &[u8], e: io::Error) -> DiffError {
        if self.out.get_ref().failed {
            DiffError::output(e)
        } else {
            DiffError::io("write tar", path, e)
        }
    }

    fn flush_pending(&mut self) -> Result<(), DiffError> {
        for i in 0..self.pending.len() {
            if let Some(m) = self.pending[i].1.take() {
                let p = self.pending[i].0.clone();
                self.header(&p, &m, None)?;
            }
        }
        Ok(())
    }

    /// One entry; `file` is the open regular file for content.
    fn header(&mut self, path: &[u8], m: &Meta, file: Option<File>) -> Result<(), DiffError> {
        let werr = |e| DiffError::io("write tar", path, e);
        let st = &m.st;
        let mut h = tar::Header::new_gnu();
        h.set_mode(st.perm);
        h.set_uid(u64::from(st.uid));
        h.set_gid(u64::from(st.gid));
        h.set_mtime(st.mtime.0.max(0) as u64);
        h.set_size(0);
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        if st.mtime.1 != 0 || st.mtime.0 < 0 {
            let mut frac = format!("{:09}", st.mtime.1);
            while frac.ends_with('0') {
                frac.pop();
            }
            let v = if frac.is_empty() {
                format!("{}", st.mtime.0)
            } else {
                format!("{}.{frac}", st.mtime.0)
            };
            pax.push(("mtime".into(), v.into_bytes()));
        }
        for (k, v) in &m.xattrs {
            pax.push((
                format!("SCHILY.xattr.{}", String::from_utf8_lossy(k)),
                v.clone(),
            ));
        }
        let mut name = path.to_vec();
        let t = ftype(st.raw_mode());
        let os = |b: &[u8]| -> std::path::PathBuf {
            use std::os::unix::ffi::OsStrExt;
            std::ffi::OsStr::from_bytes(b).into()
        };
        // Hard links: a second name of an emitted inode is a link entry.
        if t != libc::S_IFDIR && st.nlink > 1 {
            let key = st.id();
            if let Some(first) = self.links.get(&key).cloned() {
                h.set_entry_type(tar::EntryType::Link);
                self.out
                    .append_link(&mut h, os(&name), os(&first))
                    .map_err(|e| self.werr(path, e))?;
                return Ok(());
            }
            self.links.insert(key, path.to_vec());
        }
        if !pax.is_empty() {
            self.out
                .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(|e| self.werr(path, e))?;
        }
        match t {
            libc::S_IFDIR => {
                name.push(b'/');
                h.set_entry_type(tar::EntryType::Directory);
                self.out
                    .append_data(&mut h, os(&name), io::empty())
                    .map_err(|e| self.werr(path, e))?;
            }
            libc::S_IFREG => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(st.size);
                let file = file
                    .ok_or_else(|| DiffError::io("open", path, io::ErrorKind::NotFound.into()))?;
                // A file that changes size while exported would corrupt
                // the stream: exactly st_size bytes or an error.
                let mut r = ExactRead {
                    inner: file,
                    left: st.size,
                    path: path.to_vec(),
                };
                self.out
                    .append_data(&mut h, os(&name), &mut r)
                    .map_err(|e| self.werr(path, e))?;
                if r.left != 0 {
                    return Err(DiffError::io(
                        "read",
                        path,
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the file shrank while exported",
                        ),
                    ));
                }
                self.content_bytes += st.size;
            }
            libc::S_IFLNK => {
                h.set_entry_type(tar::EntryType::Symlink);
                let target = m.link.clone().unwrap_or_default();
                self.symlink(&mut h, &name, &target)?;
            }
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO => {
                h.set_entry_type(match t {
                    libc::S_IFCHR => tar::EntryType::Char,
                    libc::S_IFBLK => tar::EntryType::Block,
                    _ => tar::EntryType::Fifo,
                });
                if t != libc::S_IFIFO {
                    h.set_device_major(rfs::major(st.rdev)).map_err(werr)?;
                    h.set_device_minor(rfs::minor(st.rdev)).map_err(werr)?;
                }
                self.out
                    .append_data(&mut h, os(&name), io::empty())
                    .map_err(|e| self.werr(path, e))?;
            }
            _ => {
                // Sockets have no tar form (tar(1) skips them too).
                tracing::debug!(path = %String::from_utf8_lossy(path), "socket not exported");
            }
        }
        Ok(())
    }

    /// A symlink entry with its target byte for byte. The tar crate's
    /// `append_link` takes the target as a path and normalizes it (`/`
    /// became `//`, `a//b` and `x/.` lost their extra parts), but a
    /// symlink's target is an opaque string: it is written literally, in
    /// a GNU long-link entry before the header when it does not fit.
    fn symlink(
        &mut self,
        h: &mut tar::Header,
        name: &[u8],
        target: &[u8],
    ) -> Result<(), DiffError> {
        let werr = |e| DiffError::io("write tar", name, e);
        let slot = h.as_old().linkname.len();
        if target.len() > slot {
            let mut long = tar::Header::new_gnu();
            long.as_gnu_mut()
                .ok_or_else(|| werr(io::ErrorKind::InvalidInput.into()))?
                .name[..13]
                .copy_from_slice(b"././@LongLink");
            long.set_entry_type(tar::EntryType::GNULongLink);
            long.set_mode(0o644);
            long.set_uid(0);
            long.set_gid(0);
            long.set_mtime(0);
            long.set_size(target.len() as u64 + 1);
            long.set_cksum();
            self.out
                .append(&long, target.chain(&[0u8][..]))
                .map_err(|e| self.werr(name, e))?;
        }
        h.set_link_name_literal(&target[..target.len().min(slot)])
            .map_err(werr)?;
        use std::os::unix::ffi::OsStrExt;
        self.out
            .append_data(h, std::ffi::OsStr::from_bytes(name), io::empty())
            .map_err(|e| self.werr(name, e))
    }

    fn whiteout(&mut self, dir: &[u8], name: &[u8]) -> Result<(), DiffError> {
        self.flush_pending()?;
        let mut p = dir.to_vec();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(b".wh.");
        p.extend_from_slice(name);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(0);
        h.set_mtime(0);
        use std::os::unix::ffi::OsStrExt;
        self.out
            .append_data(&mut h, std::ffi::OsStr::from_bytes(&p), io::empty())
            .map_err(|e| self.werr(&p, e))
    }

    /// Emits `name` in `dir` (at `path`) and, for a directory, everything
    /// under it; in upper mode whiteout devices and opaque marks convert.
    fn emit_tree(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        upper: bool,
    ) -> Result<(), DiffError> {
        let m = meta(dir, name, path)?;
        let t = ftype(m.st.raw_mode());
        if upper && t == libc::S_IFCHR && m.st.rdev == 0 {
            let (d, n) = split(path);
            return self.whiteout(d, n);
        }
        self.flush_pending()?;
        if t == libc::S_IFDIR {
            let opaque = upper
                && fstree::xattrs_at(dir, name)
                    .map_err(|e| DiffError::io("read xattrs", path, e))?
                    .iter()
                    .any(|(k, v)| k == OPAQUE_XATTR && v == b"y");
            self.header(path, &m, None)?;
            if opaque {
                self.whiteout(path, b".wh..opq")?;
            }
            let sub = beneath::open_at(dir, name, OFlags::RDONLY | OFlags::DIRECTORY, 0)
                .map_err(|e| DiffError::io("open", path, e))?;
            for n in
                beneath::list_dir(sub.as_fd()).map_err(|e| DiffError::io("readdir", path, e))?
            {
                self.emit_tree(sub.as_fd(), &n, &child(path, &n), upper)?;
            }
            return Ok(());
        }
        let file = if t == libc::S_IFREG {
            Some(File::from(
                beneath::open_at(dir, name, OFlags::RDONLY, 0)
                    .map_err(|e| DiffError::io("open", path, e))?,
            ))
        } else {
            None
        };
        self.header(path, &m, file)
    }

    /// Everything under an overlay upper directory.
    pub fn walk_upper(&mut self, root: &OwnedFd) -> Result<(), DiffError> {
        for n in beneath::list_dir(root.as_fd()).map_err(|e| DiffError::io("readdir", b".", e))? {
            self.emit_tree(root.as_fd(), &n, &n, true)?;
        }
        Ok(())
    }

    /// Everything under a plain directory except the top-level names in
    /// `skip` (aufs internals), whiteout files kept as they are.
    pub fn walk_dir(&mut self, root: &OwnedFd, skip: &[&[u8]]) -> Result<(), DiffError> {
        for n in beneath::list_dir(root.as_fd()).map_err(|e| DiffError::io("readdir", b".", e))? {
            if skip.contains(&n.as_slice()) {
                continue;
            }
            self.emit_tree(root.as_fd(), &n, &n, false)?;
        }
        Ok(())
    }

    /// The double walk of a layer tree against its parent's.
    pub fn walk_changes(
        &mut self,
        layer: &OwnedFd,
        parent: Option<&OwnedFd>,
    ) -> Result<(), DiffError> {
        match parent {
            None => {
                for n in beneath::list_dir(layer.as_fd())
                    .map_err(|e| DiffError::io("readdir", b".", e))?
                {
                    self.emit_tree(layer.as_fd(), &n, &n, false)?;
                }
                Ok(())
            }
            Some(p) => self.changes(layer.as_fd(), p.as_fd(), b""),
        }
    }

    fn changes(
        &mut self,
        l: BorrowedFd<'_>,
        p: BorrowedFd<'_>,
        dir: &[u8],
    ) -> Result<(), DiffError> {
        let ln = beneath::list_dir(l).map_err(|e| DiffError::io("readdir", dir, e))?;
        let pn = beneath::list_dir(p).map_err(|e| DiffError::io("readdir (parent)", dir, e))?;
        let (mut i, mut j) = (0, 0);
        while i < ln.len() || j < pn.len() {
            let ord = match (ln.get(i), pn.get(j)) {
                (Some(a), Some(b)) => a.cmp(b),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match ord {
                std::cmp::Ordering::Less => {
                    let n = &ln[i];
                    self.emit_tree(l, n, &child(dir, n), false)?;
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    self.whiteout(dir, &pn[j])?;
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let n = &ln[i];
                    let path = child(dir, n);
                    self.both(l, p, n, &path)?;
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(())
    }

    fn both(
        &mut self,
        l: BorrowedFd<'_>,
        p: BorrowedFd<'_>,
        n: &[u8],
        path: &[u8],
    ) -> Result<(), DiffError> {
        let a = meta(l, n, path)?;
        let b = meta(p, n, path)?;
        let (ta, tb) = (ftype(a.st.raw_mode()), ftype(b.st.raw_mode()));
        if ta != tb {
            return self.emit_tree(l, n, path, false);
        }
        let same_meta = a.st.raw_mode() == b.st.raw_mode()
            && a.st.uid == b.st.uid
            && a.st.gid == b.st.gid
            && a.st.mtime == b.st.mtime
            && a.xattrs == b.xattrs;
        if ta == libc::S_IFDIR {
            let la = beneath::open_at(l, n, OFlags::RDONLY | OFlags::DIRECTORY, 0)
                .map_err(|e| DiffError::io("open", path, e))?;
            let pa = beneath::open_at(p, n, OFlags::RDONLY | OFlags::DIRECTORY, 0)
                .map_err(|e| DiffError::io("open (parent)", path, e))?;
            if same_meta {
                self.pending.push((path.to_vec(), Some(a)));
            } else {
                self.flush_pending()?;
                self.header(path, &a, None)?;
                self.pending.push((path.to_vec(), None));
            }
            let r = self.changes(la.as_fd(), pa.as_fd(), path);
            self.pending.pop();
            return r;
        }
        let mut same =
            same_meta && a.st.size == b.st.size && a.st.rdev == b.st.rdev && a.link == b.link;
        if same && ta == libc::S_IFREG && a.st.mtime.1 == 0 && a.st.id() != b.st.id() {
            same = same_content(l, p, n, path)?;
        }
        if same {
            return Ok(());
        }
        self.emit_tree(l, n, path, false)
    }
}

fn same_content(
    l: BorrowedFd<'_>,
    p: BorrowedFd<'_>,
    n: &[u8],
    path: &[u8],
) -> Result<bool, DiffError> {
    let open = |d| {
        beneath::open_at(d, n, OFlags::RDONLY, 0)
            .map(File::from)
            .map_err(|e| DiffError::io("open", path, e))
    };
    let (mut a, mut b) = (open(l)?, open(p)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let na = read_full(&mut a, &mut ba).map_err(|e| DiffError::io("read", path, e))?;
        let nb = read_full(&mut b, &mut bb).map_err(|e| DiffError::io("read", path, e))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

struct ExactRead {
    inner: File,
    left: u64,
    path: Vec<u8>,
}

impl Read for ExactRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let max = buf.len().min(self.left as usize);
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{} shrank while exported",
                    String::from_utf8_lossy(&self.path)
                ),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn child(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|b| *b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"", path),
    }
}
