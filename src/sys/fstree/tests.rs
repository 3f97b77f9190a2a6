//! These run on the real kernel and need root (chown, mknod, trusted.*
//! xattrs, loop devices, mounts). As another user they are skipped.

use super::copy::*;
use super::data::*;
use super::error::*;
use super::meta::*;
use super::usage::*;
use super::walk::*;
use super::xattr::*;
use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    self as rfs, AtFlags, FileType, Mode, OFlags, StatxFlags, Timespec, Timestamps, XattrFlags, CWD,
};
use rustix::io::Errno;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{
    lchown, symlink, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::process::Command;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipping: needs root");
            return;
        }
    };
}

fn cs(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    rfs::lsetxattr(cs(p).as_c_str(), name, value, XattrFlags::empty())
        .unwrap_or_else(|e| panic!("lsetxattr {name} on {}: {e}", p.display()));
}

fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    xattr_get(XRef::Path(&cs(p)), &CString::new(name).unwrap()).unwrap()
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A version 2 `security.capability` blob: cap_net_raw+ep.
fn cap_blob() -> Vec<u8> {
    const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
    const VFS_CAP_FLAGS_EFFECTIVE: u32 = 1;
    const CAP_NET_RAW: u32 = 13;
    let words = [
        VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE,
        1 << CAP_NET_RAW,
        0,
        0,
        0,
    ];
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn list_noatime(p: &Path) -> Vec<OsString> {
    let fd = rfs::openat(
        CWD,
        cs(p).as_c_str(),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::NOATIME,
        Mode::empty(),
    )
    .unwrap();
    let mut names: Vec<OsString> = read_names(fd.as_fd())
        .unwrap()
        .into_iter()
        .map(|n| OsStr::from_bytes(n.to_bytes()).to_owned())
        .collect();
    names.sort();
    names
}

fn read_noatime(p: &Path) -> Vec<u8> {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME | libc::O_NOFOLLOW)
        .open(p)
        .unwrap();
    let mut v = Vec::new();
    f.read_to_end(&mut v).unwrap();
    v
}

fn all_xattrs(p: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let c = cs(p);
    xattr_list(XRef::Path(&c))
        .unwrap()
        .into_iter()
        .filter_map(|n| {
            xattr_get(XRef::Path(&c), &n)
                .unwrap()
                .map(|v| (n.to_bytes().to_vec(), v))
        })
        .collect()
}

/// What must be the same in a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snap {
    mode: u32,
    uid: u32,
    gid: u32,
    rdev: u64,
    size: Option<u64>,
    nlink: Option<u64>,
    mtime: (i64, i64),
    atime: (i64, i64),
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    target: Option<PathBuf>,
}

/// Every entry of the tree at `root` (relative path, "" for the root),
/// with its inode number. Reads nothing that would change an atime.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (Snap, u64)> {
    fn rec(root: &Path, rel: PathBuf, out: &mut BTreeMap<PathBuf, (Snap, u64)>) {
        let p = root.join(&rel);
        let md = fs::symlink_metadata(&p).unwrap();
        let snap = Snap {
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            rdev: md.rdev(),
            size: (!md.is_dir()).then_some(md.size()),
            nlink: (!md.is_dir()).then_some(md.nlink()),
            mtime: (md.mtime(), md.mtime_nsec()),
            atime: (md.atime(), md.atime_nsec()),
            xattrs: all_xattrs(&p),
            target: md
                .file_type()
                .is_symlink()
                .then(|| fs::read_link(&p).unwrap()),
        };
        out.insert(rel.clone(), (snap, md.ino()));
        if md.is_dir() {
            for name in list_noatime(&p) {
                rec(root, rel.join(name), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    rec(root, PathBuf::new(), &mut out);
    out
}

/// Sets distinct atime/mtime (with nanoseconds) on every entry, children
/// before their directory. The atimes lie in the future so that reading
/// a symlink (which has no O_NOATIME) leaves them alone under `relatime`.
fn set_all_times(root: &Path) {
    let mut paths: Vec<PathBuf> = snapshot(root).into_keys().collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, rel) in paths.iter().enumerate() {
        let i = i as i64;
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: 4_000_000_000 + i,
                tv_nsec: 987_654_321 - i,
            },
            last_modification: Timespec {
                tv_sec: 1_000_000_000 + i * 1000,
                tv_nsec: 123_456_789 + i,
            },
        };
        rfs::utimensat(
            CWD,
            cs(&root.join(rel)).as_c_str(),
            &times,
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
}

const SPARSE_SIZE: u64 = 64 << 20;

/// The reference tree: one of everything copy_tree must reproduce.
fn build_tree(root: &Path) {
    let p = |s: &str| root.join(s);
    let w = |s: &str, data: &[u8]| fs::write(root.join(s), data).unwrap();
    fs::create_dir_all(p("sub/deeper")).unwrap();

    w("file.txt", b"hello world\n");
    set_xattr(&p("file.txt"), "user.x", b"xval");
    set_xattr(&p("file.txt"), "trusted.y", b"yval");
    w("empty", b"");
    let large: Vec<u8> = (0..(3u32 << 20) + 17)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    w("large.bin", &large);
    {
        let f = fs::File::create_new(p("sparse.img")).unwrap();
        f.write_all_at(&[b'A'; 4096], 0).unwrap();
        f.write_all_at(&[b'B'; 4096], 40 << 20).unwrap();
        f.set_len(SPARSE_SIZE).unwrap();
    }
    w("hard1", b"linked data\n");
    fs::hard_link(p("hard1"), p("sub/hard2")).unwrap();
    fs::hard_link(p("hard1"), p("sub/deeper/hard3")).unwrap();

    symlink("/etc/passwd", p("abs_link")).unwrap();
    set_xattr(&p("abs_link"), "trusted.l", b"on a symlink");
    symlink("does/not/exist", p("dangling")).unwrap();
    symlink("sub", p("dir_link")).unwrap();
    symlink("file.txt", p("owned_link")).unwrap();
    lchown(p("owned_link"), Some(1234), Some(5678)).unwrap();

    rfs::mknodat(
        CWD,
        cs(&p("fifo")).as_c_str(),
        FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    chmod(&p("fifo"), 0o640);
    set_xattr(&p("fifo"), "trusted.f", b"fifo attr");
    rfs::mknodat(
        CWD,
        cs(&p("null")).as_c_str(),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o600),
        rfs::makedev(1, 3),
    )
    .unwrap();
    chmod(&p("null"), 0o666);
    drop(std::os::unix::net::UnixListener::bind(p("sock")).unwrap());

    w("setuid", b"#!/bin/sh\n");
    chmod(&p("setuid"), 0o4755);
    w("owned", b"owned by 1234\n");
    lchown(p("owned"), Some(1234), Some(5678)).unwrap();
    chmod(&p("owned"), 0o6750);
    w("cap", b"\x7fELF not really\n");
    chmod(&p("cap"), 0o755);
    set_xattr(&p("cap"), "security.capability", &cap_blob());

    fs::create_dir(p("private")).unwrap();
    w("private/inside", b"secret\n");
    chmod(&p("private"), 0o700);
    fs::create_dir(p("tmp")).unwrap();
    chmod(&p("tmp"), 0o1777);
    set_xattr(&p("tmp"), "trusted.overlay.opaque", b"y");
    fs::create_dir(p("ro")).unwrap();
    w("ro/file", b"in a read-only dir\n");
    chmod(&p("ro"), 0o555);
    fs::create_dir(p("emptydir")).unwrap();
    lchown(p("emptydir"), Some(1234), Some(5678)).unwrap();
    chmod(&p("emptydir"), 0o2710);

    lchown(root, Some(1234), Some(5678)).unwrap();
    chmod(root, 0o751);
    set_xattr(root, "user.root", b"r");
    set_all_times(root);
}

/// Checks that `dst` is a faithful copy of the tree `before` was taken
/// of at `src`, that `src` was not touched, and that `stats` add up.
fn check_copy(src: &Path, dst: &Path, before: &BTreeMap<PathBuf, (Snap, u64)>, stats: &CopyStats) {
    let strip = |m: &BTreeMap<PathBuf, (Snap, u64)>| -> BTreeMap<PathBuf, Snap> {
        m.iter().map(|(k, (s, _))| (k.clone(), s.clone())).collect()
    };
    let after = snapshot(src);
    assert_eq!(strip(before), strip(&after), "the source changed");
    let copy = snapshot(dst);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        copy.keys().collect::<Vec<_>>(),
        "different entries"
    );
    for (rel, (want, _)) in before {
        assert_eq!(want, &copy[rel].0, "{}", rel.display());
    }
    // Same hard-link structure: two paths share an inode in the copy
    // exactly when they do in the source.
    let groups = |m: &BTreeMap<PathBuf, (Snap, u64)>| {
        let mut by_ino: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
        for (rel, (_, ino)) in m {
            by_ino.entry(*ino).or_default().push(rel.clone());
        }
        let mut g: Vec<Vec<PathBuf>> = by_ino.into_values().collect();
        g.sort();
        g
    };
    assert_eq!(groups(before), groups(&copy), "hard links differ");
    // Contents, read without touching atimes.
    let mut regular = HashSet::new();
    let (mut files, mut bytes) = (0, 0);
    for (rel, (s, ino)) in before {
        if rel.as_os_str().is_empty() || s.mode & libc::S_IFMT == libc::S_IFDIR {
            continue;
        }
        files += 1;
        if s.mode & libc::S_IFMT == libc::S_IFREG {
            assert_eq!(
                read_noatime(&src.join(rel)),
                read_noatime(&dst.join(rel)),
                "{}",
                rel.display()
            );
            if regular.insert(*ino) {
                bytes += s.size.unwrap_or(0);
            }
        }
    }
    assert_eq!(stats.files, files, "{stats:?}");
    assert_eq!(
        stats.reflinked + stats.copied,
        regular.len() as u64,
        "{stats:?}"
    );
    assert_eq!(stats.bytes, bytes, "{stats:?}");
    // Holes stay holes.
    let sparse = fs::symlink_metadata(dst.join("sparse.img")).unwrap();
    assert_eq!(sparse.size(), SPARSE_SIZE);
    assert!(
        sparse.blocks() * 512 < 4 << 20,
        "sparse file filled in: {} blocks",
        sparse.blocks()
    );
}

/// Spot checks of what check_copy compares wholesale, so that a broken
/// tree builder cannot make the comparison vacuous.
fn spot_checks(dst: &Path) {
    let md = |s: &str| fs::symlink_metadata(dst.join(s)).unwrap();
    assert_eq!(md("setuid").mode() & 0o7777, 0o4755);
    assert_eq!(
        (
            md("owned").uid(),
            md("owned").gid(),
            md("owned").mode() & 0o7777
        ),
        (1234, 5678, 0o6750)
    );
    assert_eq!(
        (md("owned_link").uid(), md("owned_link").gid()),
        (1234, 5678)
    );
    assert_eq!(md("tmp").mode() & 0o7777, 0o1777);
    assert_eq!(md("private").mode() & 0o7777, 0o700);
    assert_eq!(md("ro").mode() & 0o7777, 0o555);
    assert_eq!(md("emptydir").mode() & 0o7777, 0o2710);
    assert!(md("fifo").file_type().is_fifo());
    assert_eq!(md("null").mode() & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!(md("null").rdev(), rfs::makedev(1, 3));
    assert_eq!(md("sock").mode() & libc::S_IFMT, libc::S_IFSOCK);
    assert_eq!(
        fs::read_link(dst.join("abs_link")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        fs::read_link(dst.join("dangling")).unwrap(),
        Path::new("does/not/exist")
    );
    assert_eq!(md("hard1").ino(), md("sub/deeper/hard3").ino());
    assert_eq!(md("hard1").nlink(), 3);
    assert_eq!(
        get_xattr(&dst.join("file.txt"), "user.x").as_deref(),
        Some(&b"xval"[..])
    );
    assert_eq!(
        get_xattr(&dst.join("file.txt"), "trusted.y").as_deref(),
        Some(&b"yval"[..])
    );
    assert_eq!(
        get_xattr(&dst.join("cap"), "security.capability"),
        Some(cap_blob())
    );
    assert_eq!(
        get_xattr(&dst.join("tmp"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        get_xattr(&dst.join("abs_link"), "trusted.l").as_deref(),
        Some(&b"on a symlink"[..])
    );
    assert_eq!(
        get_xattr(&dst.join("fifo"), "trusted.f").as_deref(),
        Some(&b"fifo attr"[..])
    );
    assert_eq!(get_xattr(dst, "user.root").as_deref(), Some(&b"r"[..]));
    let root = fs::symlink_metadata(dst).unwrap();
    assert_eq!(
        (root.uid(), root.gid(), root.mode() & 0o7777),
        (1234, 5678, 0o751)
    );
}

/// Builds the reference tree in `base/src`, copies it to `base/dst` and
/// checks the copy.
fn copy_reference_tree(base: &Path) -> CopyStats {
    let src = base.join("src");
    let dst = base.join("dst");
    fs::create_dir(&src).unwrap();
    fs::create_dir(&dst).unwrap();
    build_tree(&src);
    let before = snapshot(&src);
    let stats = copy_tree(&src, &dst).unwrap();
    check_copy(&src, &dst, &before, &stats);
    spot_checks(&dst);
    stats
}

#[test]
fn copies_every_kind_of_entry_and_attribute() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let stats = copy_reference_tree(tmp.path());
    assert!(stats.files >= 19, "{stats:?}");
}

fn du(path: &Path, arg: &str) -> u64 {
    let out = Command::new("du")
        .args(["-s", "-x", arg])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "du: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn tree_usage_matches_du() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src);
    let (bytes, inodes) = tree_usage(&src).unwrap();
    assert_eq!(bytes, du(&src, "--block-size=1"));
    assert_eq!(inodes, du(&src, "--inodes"));
    // The three links of hard1 are one inode.
    let distinct: HashSet<u64> = snapshot(&src).values().map(|(_, ino)| *ino).collect();
    assert_eq!(inodes, distinct.len() as u64);
    assert_eq!(inodes, snapshot(&src).len() as u64 - 2);
    // A symlink or a file is measured itself.
    assert_eq!(tree_usage(&src.join("abs_link")).unwrap().1, 1);
    let big = fs::symlink_metadata(src.join("large.bin")).unwrap();
    assert_eq!(
        tree_usage(&src.join("large.bin")).unwrap(),
        (big.blocks() * 512, 1)
    );
    assert!(tree_usage(&tmp.path().join("missing")).is_err());
}

/// A mount made for a test, undone on drop.
struct Mounted(PathBuf);
impl Drop for Mounted {
    fn drop(&mut self) {
        if nix::mount::umount(&self.0).is_err() {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn mount(
    src: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: nix::mount::MsFlags,
) -> Mounted {
    nix::mount::mount(src, target, fstype, flags, None::<&str>)
        .unwrap_or_else(|e| panic!("mount {}: {e}", target.display()));
    Mounted(target.to_path_buf())
}

#[test]
fn does_not_cross_mount_points() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    for d in [
        &src,
        &dst,
        &src.join("tmpfs"),
        &src.join("bind"),
        &src.join("plain"),
    ] {
        fs::create_dir(d).unwrap();
    }
    fs::write(src.join("plain/file"), b"kept").unwrap();
    let _tmpfs = mount(
        Some(Path::new("tmpfs")),
        &src.join("tmpfs"),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
    );
    fs::write(src.join("tmpfs/big"), vec![1u8; 1 << 20]).unwrap();
    let before_bind = tree_usage(&src).unwrap();
    // A bind mount of the same file system: same st_dev, other mount.
    let _bind = mount(
        Some(&src.join("plain")),
        &src.join("bind"),
        None,
        nix::mount::MsFlags::MS_BIND,
    );

    let stats = copy_tree(&src, &dst).unwrap();
    let mut names = list_noatime(&dst);
    names.sort();
    assert_eq!(names, vec![OsString::from("plain")]);
    assert_eq!(fs::read(dst.join("plain/file")).unwrap(), b"kept");
    assert_eq!(stats.files, 1);

    // tree_usage skips the tmpfs like `du -x` does (du measured after
    // the bind mount is gone: it would count a same-device bind mount)...
    drop(_bind);
    assert_eq!(before_bind.0, du(&src, "--block-size=1"));
    assert_eq!(before_bind.1, du(&src, "--inodes"));
    assert_eq!(before_bind.1, 4); // root, bind, plain, plain/file: not the tmpfs
                                  // ...and the bind mount as well, mount point included, although it
                                  // is on the same device.
    let bind_dir = fs::symlink_metadata(src.join("bind")).unwrap().blocks() * 512;
    let _bind = mount(
        Some(&src.join("plain")),
        &src.join("bind"),
        None,
        nix::mount::MsFlags::MS_BIND,
    );
    assert_eq!(
        tree_usage(&src).unwrap(),
        (before_bind.0 - bind_dir, before_bind.1 - 1)
    );
}

#[test]
fn never_follows_symlinks() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    let src = tmp.path().join("a/b/src");
    let dst = tmp.path().join("a/b/dst");
    fs::create_dir_all(outside.join("victim")).unwrap();
    fs::write(outside.join("secret"), b"do not copy").unwrap();
    fs::create_dir_all(src.join("d")).unwrap();
    fs::create_dir_all(&dst).unwrap();
    symlink(&outside, src.join("to_outside")).unwrap();
    symlink(outside.join("secret"), src.join("to_secret")).unwrap();
    symlink("../../../../outside/victim", src.join("d/dotdot")).unwrap();
    let outside_before = snapshot(&outside);

    copy_tree(&src, &dst).unwrap();
    assert_eq!(fs::read_link(dst.join("to_outside")).unwrap(), outside);
    assert_eq!(
        fs::read_link(dst.join("to_secret")).unwrap(),
        outside.join("secret")
    );
    assert_eq!(
        fs::read_link(dst.join("d/dotdot")).unwrap(),
        Path::new("../../../../outside/victim")
    );
    assert_eq!(snapshot(&dst).len(), 5);
    assert_eq!(snapshot(&outside), outside_before);

    // Neither root may be a symlink itself.
    let link = tmp.path().join("link_to_src");
    symlink(&src, &link).unwrap();
    let dst2 = tmp.path().join("dst2");
    fs::create_dir(&dst2).unwrap();
    assert!(copy_tree(&link, &dst2).is_err());
    let dst_link = tmp.path().join("link_to_dst2");
    symlink(&dst2, &dst_link).unwrap();
    assert!(copy_tree(&src, &dst_link).is_err());
}

#[test]
fn errors_name_path_and_operation() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    fs::create_dir(&src).unwrap();
    fs::create_dir(&dst).unwrap();
    fs::write(dst.join("x"), b"").unwrap();
    let e = copy_tree(&src, &dst).unwrap_err();
    assert!(matches!(e, CopyError::Invalid { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&*dst.to_string_lossy()) && msg.contains("not empty"),
        "{msg}"
    );

    let e = copy_tree(&src, &src).unwrap_err();
    assert!(e.to_string().contains("same directory"), "{e}");

    let missing = tmp.path().join("missing");
    let e = copy_tree(&missing, &dst).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&*missing.to_string_lossy()) && msg.contains("open"),
        "{msg}"
    );
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));

    let e = tree_usage(&missing).unwrap_err();
    assert!(e.to_string().starts_with("measuring "), "{e}");
}

#[test]
fn destination_inside_source_is_not_copied_into_itself() {
    require_root!();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("a")).unwrap();
    fs::write(src.join("a/f"), b"x").unwrap();
    let dst = src.join("dst");
    fs::create_dir(&dst).unwrap();
    copy_tree(&src, &dst).unwrap();
    assert_eq!(list_noatime(&dst), vec![OsString::from("a")]);
    assert_eq!(fs::read(dst.join("a/f")).unwrap(), b"x");
}

#[test]
fn inherited_acls_are_not_left_on_the_copy() {
    require_root!();
    // A default ACL on the destination root makes every new entry inherit
    // an access ACL (and directories a default one); the copy must end up
    // with exactly the source's xattrs.
    let acl = |entries: &[(u16, u16, u32)]| -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for (tag, perm, id) in entries {
            v.extend(tag.to_le_bytes());
            v.extend(perm.to_le_bytes());
            v.extend(id.to_le_bytes());
        }
        v
    };
    const USER_OBJ: u16 = 1;
    const USER: u16 = 2;
    const GROUP_OBJ: u16 = 4;
    const MASK: u16 = 0x10;
    const OTHER: u16 = 0x20;
    let default_acl = acl(&[
        (USER_OBJ, 7, u32::MAX),
        (USER, 7, 1000),
        (GROUP_OBJ, 5, u32::MAX),
        (MASK, 7, u32::MAX),
        (OTHER, 0, u32::MAX),
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("dir/file"), b"data").unwrap();
    fs::create_dir(&dst).unwrap();
    match rfs::lsetxattr(
        cs(&dst).as_c_str(),
        "system.posix_acl_default",
        &default_acl,
        XattrFlags::empty(),
    ) {
        Ok(()) => {}
        Err(Errno::OPNOTSUPP) => {
            eprintln!("skipping: no ACL support here");
            return;
        }
        Err(e) => panic!("setting a default ACL: {e}"),
    }
    set_all_times(&src);
    let before = snapshot(&src);
    copy_tree(&src, &dst).unwrap();
    let copy = snapshot(&dst);
    for (rel, (want, _)) in &before {
        assert_eq!(want, &copy[rel].0, "{}", rel.display());
    }
}

#[test]
fn deep_trees_beyond_path_max_and_fd_window() {
    require_root!();
    const DEPTH: usize = 1500;
    let name = |i: usize| format!("level-{i:05}-{}", "x".repeat(30));
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    fs::create_dir(&src).unwrap();
    fs::create_dir(&dst).unwrap();
    fs::write(src.join("top"), b"linked top and bottom").unwrap();
    // Built relative to descriptors: the full path is far beyond PATH_MAX.
    let mut cur = open_dir(CWD, cs(&src).as_c_str()).unwrap();
    for i in 0..DEPTH {
        rfs::mkdirat(&cur, name(i).as_str(), Mode::from_raw_mode(0o755)).unwrap();
        cur = open_dir(cur.as_fd(), CString::new(name(i)).unwrap().as_c_str()).unwrap();
        if i == 700 {
            rfs::fchmod(&cur, Mode::from_raw_mode(0o711)).unwrap();
            rfs::fsetxattr(&cur, "user.level", b"700", XattrFlags::empty()).unwrap();
        }
    }
    let leaf = rfs::openat(
        &cur,
        "leaf",
        OFlags::WRONLY | OFlags::CREATE,
        Mode::from_raw_mode(0o644),
    )
    .unwrap();
    rustix::io::write(&leaf, b"bottom").unwrap();
    let top = open_dir(CWD, cs(&src).as_c_str()).unwrap();
    rfs::linkat(&top, "top", &cur, "hardlink", AtFlags::empty()).unwrap();
    drop((leaf, cur, top));

    let stats = copy_tree(&src, &dst).unwrap();
    assert_eq!(stats.files, 3);

    let mut cur = open_dir(CWD, cs(&dst).as_c_str()).unwrap();
    let top_ino = fs::symlink_metadata(dst.join("top")).unwrap().ino();
    for i in 0..DEPTH {
        cur = open_dir(cur.as_fd(), CString::new(name(i)).unwrap().as_c_str()).unwrap();
        if i == 700 {
            let m = meta_fd(cur.as_fd()).unwrap();
            assert_eq!(m.perm, 0o711);
            assert_eq!(
                xattr_get(XRef::Fd(cur.as_fd()), c"user.level")
                    .unwrap()
                    .as_deref(),
                Some(&b"700"[..])
            );
        }
    }
    let leaf = rfs::openat(&cur, "leaf", OFlags::RDONLY, Mode::empty()).unwrap();
    let mut buf = [0u8; 16];
    let n = rustix::io::read(&leaf, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"bottom");
    assert_eq!(
        meta_at(cur.as_fd(), c"hardlink", AtFlags::empty())
            .unwrap()
            .ino,
        top_ino
    );

    let usage = tree_usage(&src).unwrap();
    assert_eq!(usage.1, DEPTH as u64 + 3);
    assert_eq!(usage.0, du(&src, "--block-size=1"));
    assert_eq!(tree_usage(&dst).unwrap().1, usage.1);
}

#[test]
fn stat_fallback_agrees_with_statx() {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("f");
    fs::write(&f, b"some bytes").unwrap();
    symlink("f", tmp.path().join("l")).unwrap();
    for p in [tmp.path().to_path_buf(), f, tmp.path().join("l")] {
        let c = cs(&p);
        let flags = AtFlags::SYMLINK_NOFOLLOW;
        let x = Meta::from_statx(
            &rfs::statx(CWD, c.as_c_str(), flags, StatxFlags::BASIC_STATS).unwrap(),
        );
        let s = Meta::from_stat(&rfs::statat(CWD, c.as_c_str(), flags).unwrap());
        let key = |m: &Meta| {
            (
                m.kind, m.perm, m.uid, m.gid, m.nlink, m.dev, m.ino, m.rdev, m.size, m.blocks,
                m.atime, m.mtime,
            )
        };
        assert_eq!(key(&x), key(&s), "{}", p.display());
    }
}

#[test]
fn read_write_fallback_keeps_data_and_holes() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let f = fs::File::create_new(&a).unwrap();
    let data: Vec<u8> = (0..COPY_BUF * 2 + 123).map(|i| (i % 253) as u8).collect();
    f.write_all_at(&data, 8 << 20).unwrap();
    f.set_len(32 << 20).unwrap();
    let g = fs::File::create_new(&b).unwrap();
    let mut copier = DataCopier {
        reflink_failed: true,
        copy_range_failed: true,
        buf: Vec::new(),
    };
    let shared = copier.copy(f.as_fd(), g.as_fd(), 32 << 20).ok().unwrap();
    assert!(!shared);
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    assert!(fs::metadata(&b).unwrap().blocks() * 512 < 4 << 20);
}

#[test]
fn reflink_probe_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let _ = reflink_supported(tmp.path());
    assert!(list_noatime(tmp.path()).is_empty());
    assert!(!reflink_supported(&tmp.path().join("missing")));
}

/// A file system on a loop device, mounted in a temporary directory;
/// unmounted and detached on drop, whether or not the test passed.
struct LoopFs {
    dir: tempfile::TempDir,
    dev: Option<String>,
    mounted: bool,
}

impl LoopFs {
    fn new(fstype: &str, mkfs_args: &[&str]) -> LoopFs {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        fs::File::create(&img).unwrap().set_len(512 << 20).unwrap();
        let mut me = LoopFs {
            dir,
            dev: None,
            mounted: false,
        };
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        me.dev = Some(dev.clone());
        let mkfs = format!("mkfs.{fstype}");
        let out = Command::new(&mkfs)
            .args(mkfs_args)
            .arg(&dev)
            .output()
            .unwrap_or_else(|e| panic!("{mkfs}: {e} (install xfsprogs / btrfs-progs / e2fsprogs)"));
        assert!(
            out.status.success(),
            "{mkfs}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mnt = me.mnt();
        fs::create_dir(&mnt).unwrap();
        nix::mount::mount(
            Some(dev.as_str()),
            &mnt,
            Some(fstype),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| panic!("mounting {fstype} from {dev}: {e}"));
        me.mounted = true;
        me
    }

    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted && nix::mount::umount(&self.mnt()).is_err() {
            let _ = nix::mount::umount2(&self.mnt(), nix::mount::MntFlags::MNT_DETACH);
        }
        if let Some(dev) = &self.dev {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
    }
}

/// Whether some extent of `path` is shared, by `filefrag -v`; `None`
/// when filefrag is not installed.
fn has_shared_extents(path: &Path) -> Option<bool> {
    let out = Command::new("filefrag").arg("-v").arg(path).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).contains("shared"))
}

fn reflink_fs_test(fstype: &str, mkfs_args: &[&str]) {
    let lfs = LoopFs::new(fstype, mkfs_args);
    let mnt = lfs.mnt();
    assert!(reflink_supported(&mnt), "{fstype} should support FICLONE");
    assert!(list_noatime(&mnt).is_empty(), "probe files left behind");
    let stats = copy_reference_tree(&mnt);
    assert!(stats.reflinked > 0, "{stats:?}");
    // Only the empty files need no clone.
    assert_eq!(stats.copied, 1, "{stats:?}");
    if let Some(shared) = has_shared_extents(&mnt.join("dst/large.bin")) {
        assert!(shared, "large.bin does not share extents");
    }
}

#[test]
fn xfs_copies_use_reflinks() {
    require_root!();
    reflink_fs_test("xfs", &["-q", "-f", "-m", "reflink=1"]);
}

#[test]
fn btrfs_copies_use_reflinks() {
    require_root!();
    reflink_fs_test("btrfs", &["-q", "-f"]);
}

#[test]
fn ext4_copies_fall_back_to_copying() {
    require_root!();
    let lfs = LoopFs::new("ext4", &["-q", "-F"]);
    let mnt = lfs.mnt();
    assert!(!reflink_supported(&mnt));
    assert!(
        list_noatime(&mnt).iter().all(|n| n == "lost+found"),
        "probe files left behind"
    );
    let stats = copy_reference_tree(&mnt);
    assert_eq!(stats.reflinked, 0, "{stats:?}");
    assert!(stats.copied > 0, "{stats:?}");
    assert_ne!(has_shared_extents(&mnt.join("dst/large.bin")), Some(true));
}
