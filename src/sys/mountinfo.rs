//! Reading `/proc/self/mountinfo`, and checking overlay mounts against it.
//!
//! A line is `id parent major:minor root mount-point mount-options
//! [optional fields…] - fstype source super-options`. The kernel escapes
//! space, tab, newline and backslash in paths as octal (`\040`, `\011`,
//! `\012`, `\134`); [`parse_mountinfo`] undoes that in `root`, `mount_point`,
//! `source` and `fstype`. `super_options` is kept exactly as the kernel shows
//! it (still escaped): inside it a `,` that belongs to a value is shown as
//! `\054`, so unescaping it first would make such a comma look like an option
//! separator. [`overlay_lowers`] splits and unescapes it.
//!
//! How overlay shows its layers (measured on Linux 6.18):
//!
//! * Layers added one by one with `lowerdir+` (the new mount API, Linux 6.8+;
//!   classic `mount(2)` is limited to one page of options, see
//!   [`super::mount`]) are shown one option each:
//!   `lowerdir+=/a,lowerdir+=/b,…`, nearest first. The value is the path as
//!   given (or, for a layer passed as a descriptor, its resolved path), octal
//!   escaped: `,` → `\054`, `\` → `\134`, space → `\040`; a `:` stays as is.
//!   Data-only layers would show as `datadir+=`; they are not lowers.
//! * Layers given as one classic `lowerdir=a:b:c` list are shown as that list
//!   with overlay's own escapes kept (`\:` `\,` `\\` inside a path), then octal
//!   escaped on top: a path `/l 0:a,b\c` shows as
//!   `/l\0400\134:a\134\054b\134\134c`. `::` would start data-only layers.
//! * `upperdir=`/`workdir=` show the string the kernel was given, which for a
//!   string value carries overlay's backslash escapes (the kernel unescapes
//!   them when it looks the path up) but for a layer passed as a descriptor
//!   is the raw path. [`verify_overlay`] accepts either reading.
//! * Overlay keeps at most 500 lowers (`OVL_MAX_STACK`).

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use super::mount::MountError;

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub mount_id: u32,
    pub parent_id: u32,
    /// The directory of the filesystem mounted here (unescaped).
    pub root: PathBuf,
    /// Where it is mounted (unescaped).
    pub mount_point: PathBuf,
    /// Per-mount options (`ro`, `nosuid`, `relatime`…).
    pub mount_options: String,
    pub fstype: String,
    /// Unescaped; not UTF-8 bytes are replaced.
    pub source: String,
    /// Superblock options as the kernel shows them, still escaped (see the
    /// module doc).
    pub super_options: String,
}

/// Parses mountinfo text; lines that do not parse are skipped.
/// Unescapes `\040` `\011` `\012` `\134` (any `\NNN` octal escape) in paths.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    parse_bytes(text.as_bytes())
}

fn parse_bytes(text: &[u8]) -> Vec<MountInfo> {
    text.split(|&b| b == b'\n').filter_map(parse_line).collect()
}

fn parse_line(line: &[u8]) -> Option<MountInfo> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    if fields.len() < 10 {
        return None;
    }
    // Fields 0..6 are fixed; optional fields follow until a lone "-".
    let sep = 6 + fields[6..].iter().position(|f| *f == b"-")?;
    if fields.len() < sep + 4 {
        return None;
    }
    let num = |f: &[u8]| std::str::from_utf8(f).ok()?.parse::<u32>().ok();
    Some(MountInfo {
        mount_id: num(fields[0])?,
        parent_id: num(fields[1])?,
        root: path_of(&unescape_octal(fields[3])),
        mount_point: path_of(&unescape_octal(fields[4])),
        mount_options: String::from_utf8_lossy(fields[5]).into_owned(),
        fstype: String::from_utf8_lossy(&unescape_octal(fields[sep + 1])).into_owned(),
        source: String::from_utf8_lossy(&unescape_octal(fields[sep + 2])).into_owned(),
        super_options: String::from_utf8_lossy(&fields[sep + 3..].join(&b' ')).into_owned(),
    })
}

fn path_of(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(bytes.to_vec()))
}

/// Replaces each `\NNN` (three octal digits) with that byte.
fn unescape_octal(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && s.get(i + 1..i + 4).is_some_and(is_octal3) {
            let v = (u32::from(s[i + 1] - b'0') << 6)
                | (u32::from(s[i + 2] - b'0') << 3)
                | u32::from(s[i + 3] - b'0');
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(s[i]);
        i += 1;
    }
    out
}

fn is_octal3(d: &[u8]) -> bool {
    d.len() == 3 && d.iter().all(|c| (b'0'..=b'7').contains(c))
}

/// Removes overlay's backslash escapes: `\x` → `x` for any `x`.
fn unescape_backslash(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.iter();
    while let Some(&c) = it.next() {
        if c == b'\\' {
            if let Some(&next) = it.next() {
                out.push(next);
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Splits a classic `lowerdir=` value on `:` not escaped by `\`, keeping the
/// escapes in the parts.
fn split_escaped_colons(s: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b':' => {
                parts.push(&s[start..i]);
                start = i + 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    parts.push(&s[start.min(s.len())..]);
    parts
}

/// Reads `/proc/self/mountinfo`.
pub fn read_mountinfo() -> std::io::Result<Vec<MountInfo>> {
    Ok(parse_bytes(&std::fs::read("/proc/self/mountinfo")?))
}

/// `path` as mountinfo would show it: absolute, symlinks resolved (as far as
/// it exists).
fn as_shown(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_path_buf())
}

/// The mount that is at `target` (topmost), if anything is mounted there.
///
/// mountinfo also lists mounts nobody can reach any more: one over a
/// parent directory hides them (a private mount namespace with a tmpfs
/// over /var/lib still lists the host's /var/lib/layerd/main), yet they
/// keep their path. So the answer is the mount the path resolves to
/// (statx's mount id), if its mount point is `target`; by path alone only
/// where statx gives no mount id (before Linux 5.8).
pub fn find_mount(target: &Path) -> std::io::Result<Option<MountInfo>> {
    use rustix::fs::{statx, AtFlags, StatxFlags, CWD};
    let want = as_shown(target);
    let id = match statx(CWD, target, AtFlags::empty(), StatxFlags::MNT_ID) {
        Ok(st) if st.stx_mask & StatxFlags::MNT_ID.bits() != 0 => Some(st.stx_mnt_id),
        Ok(_) => None,
        // Nothing at the path: nothing is mounted there.
        Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    Ok(read_mountinfo()?
        .into_iter()
        .rev()
        .find(|m| m.mount_point == want && id.is_none_or(|id| u64::from(m.mount_id) == id)))
}

/// The mounts strictly below `dir` (not one at `dir` itself), in mountinfo
/// order: parents before children, so unmount them in reverse.
pub fn mounts_under(dir: &Path) -> std::io::Result<Vec<MountInfo>> {
    let dir = as_shown(dir);
    Ok(read_mountinfo()?
        .into_iter()
        .filter(|m| m.mount_point != dir && m.mount_point.starts_with(&dir))
        .collect())
}

/// The values of `key=` in raw (still escaped) super options, octal-unescaped.
fn option_values(super_options: &str, key: &str) -> Vec<Vec<u8>> {
    super_options
        .split(',')
        .filter_map(|opt| opt.strip_prefix(key)?.strip_prefix('='))
        .map(|v| unescape_octal(v.as_bytes()))
        .collect()
}

/// The overlay lower dirs shown in super options, nearest first (unescaped),
/// whatever syntax this kernel uses (`lowerdir+=` per layer, or a classic
/// `lowerdir=a:b:c` list). Data-only layers are left out. Empty for a mount
/// that is not an overlay.
pub fn overlay_lowers(mi: &MountInfo) -> Vec<PathBuf> {
    if mi.fstype != "overlay" {
        return Vec::new();
    }
    let mut lowers = Vec::new();
    for opt in mi.super_options.split(',') {
        if let Some(v) = opt.strip_prefix("lowerdir+=") {
            lowers.push(path_of(&unescape_octal(v.as_bytes())));
        } else if let Some(v) = opt.strip_prefix("lowerdir=") {
            let list = unescape_octal(v.as_bytes());
            for part in split_escaped_colons(&list) {
                if part.is_empty() {
                    // "::" starts the data-only layers.
                    break;
                }
                lowers.push(path_of(&unescape_backslash(part)));
            }
        }
    }
    lowers
}

/// The overlay upper dir as shown in super options, read both ways the kernel
/// may show it: (as shown, with overlay's backslash escapes removed). See the
/// module doc for why both.
pub fn overlay_upper(mi: &MountInfo) -> Option<(PathBuf, PathBuf)> {
    if mi.fstype != "overlay" {
        return None;
    }
    let raw = option_values(&mi.super_options, "upperdir").pop()?;
    Some((path_of(&raw), path_of(&unescape_backslash(&raw))))
}

fn same_path(shown: &Path, want: &Path) -> bool {
    shown == want || as_shown(shown) == as_shown(want)
}

/// Verifies that the mount at target is an overlay with exactly these lowers
/// (and upper if given); Err describes the mismatch.
///
/// Paths compare equal as given or after resolving symlinks and `..`.
/// `upper: None` does not check the upper layer at all.
pub fn verify_overlay(
    target: &Path,
    lowers: &[PathBuf],
    upper: Option<&Path>,
) -> Result<(), MountError> {
    let mismatch = |detail: String| MountError::Mismatch {
        target: target.to_path_buf(),
        detail,
    };
    let mi = find_mount(target)
        .map_err(|source| MountError::MountInfo {
            target: target.to_path_buf(),
            source,
        })?
        .ok_or_else(|| mismatch("nothing is mounted there".to_string()))?;
    if mi.fstype != "overlay" {
        return Err(mismatch(format!(
            "it is a {} mount, not an overlay",
            mi.fstype
        )));
    }
    let shown = overlay_lowers(&mi);
    if shown.len() != lowers.len() {
        return Err(mismatch(format!(
            "it has {} lower layers, expected {}",
            shown.len(),
            lowers.len()
        )));
    }
    if let Some((i, (got, want))) = shown
        .iter()
        .zip(lowers)
        .enumerate()
        .find(|(_, (got, want))| !same_path(got, want))
    {
        return Err(mismatch(format!(
            "lower layer {i} (0 = nearest) is {}, expected {}",
            got.display(),
            want.display()
        )));
    }
    if let Some(want) = upper {
        match overlay_upper(&mi) {
            None => {
                return Err(mismatch(format!(
                    "it has no upper layer, expected {}",
                    want.display()
                )))
            }
            Some((as_is, unescaped)) => {
                if !same_path(&unescaped, want) && !same_path(&as_is, want) {
                    return Err(mismatch(format!(
                        "upper layer is {}, expected {}",
                        unescaped.display(),
                        want.display()
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mount hidden by a later mount over one of its parent directories
    /// is still listed in mountinfo under its path (what a private mount
    /// namespace with a tmpfs over /var/lib sees of the host's
    /// /var/lib/layerd/main): it is not what is mounted at that path.
    #[test]
    fn find_mount_ignores_a_shadowed_mount() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP: needs root (mount)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let outer = t.path().join("a");
        let inner = outer.join("b");
        std::fs::create_dir_all(&inner).unwrap();
        let tmpfs = |at: &Path| {
            nix::mount::mount(
                Some("layerd-test"),
                at,
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .unwrap()
        };
        tmpfs(&inner);
        let seen = find_mount(&inner).unwrap().map(|m| m.fstype);
        tmpfs(&outer);
        // Now `a/b` is a plain directory of the new tmpfs, mounted nowhere.
        std::fs::create_dir(&inner).unwrap();
        let shadowed = find_mount(&inner).unwrap();
        let at_outer = find_mount(&outer).unwrap().map(|m| m.mount_point);
        let _ = nix::mount::umount(&outer);
        let _ = nix::mount::umount(&inner);
        assert_eq!(seen.as_deref(), Some("tmpfs"));
        assert!(
            shadowed.is_none(),
            "a shadowed mount was found: {shadowed:?}"
        );
        assert_eq!(at_outer, Some(as_shown(&outer)));
    }

    const SAMPLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
40 27 0:42 / /var/lib/with\\040space/and\\011tab rw,relatime shared:5 master:2 - overlay overlay rw,lowerdir=/l/a\\134:b:/l/c,upperdir=/u\\040p,workdir=/w,index=off
41 27 0:43 /sub\\134dir /mnt/new\\012line ro,nosuid - tmpfs my\\040src ro,size=10k
garbage line
";

    #[test]
    fn parses_sample_with_escapes() {
        let mounts = parse_mountinfo(SAMPLE);
        assert_eq!(mounts.len(), 4);
        let m = &mounts[1];
        assert_eq!((m.mount_id, m.parent_id), (36, 35));
        assert_eq!(m.root, PathBuf::from("/mnt1"));
        assert_eq!(m.mount_point, PathBuf::from("/mnt/parent"));
        assert_eq!(m.mount_options, "rw,noatime");
        assert_eq!(m.fstype, "ext3");
        assert_eq!(m.source, "/dev/root");
        assert_eq!(m.super_options, "rw,errors=continue");

        let o = &mounts[2];
        assert_eq!(o.mount_point, PathBuf::from("/var/lib/with space/and\ttab"));
        assert_eq!(o.fstype, "overlay");
        assert_eq!(
            overlay_lowers(o),
            vec![PathBuf::from("/l/a:b"), PathBuf::from("/l/c")]
        );
        assert_eq!(
            overlay_upper(o),
            Some((PathBuf::from("/u p"), PathBuf::from("/u p")))
        );

        let t = &mounts[3];
        assert_eq!(t.root, PathBuf::from("/sub\\dir"));
        assert_eq!(t.mount_point, PathBuf::from("/mnt/new\nline"));
        assert_eq!(t.source, "my src");
        assert_eq!(t.mount_options, "ro,nosuid");
        assert!(overlay_lowers(t).is_empty());
    }

    #[test]
    fn lowerdir_plus_syntax() {
        // As Linux 6.18 shows an overlay built with fsconfig lowerdir+.
        let line = "45 27 0:39 / /tmp/ovexp/mnt ro,relatime - overlay none ro,lowerdir+=/tmp/ovexp/l\\0400:a\\054b\\134c,lowerdir+=/tmp/ovexp/l1,datadir+=/d,redirect_dir=on\n";
        let mi = &parse_mountinfo(line)[0];
        assert_eq!(
            overlay_lowers(mi),
            vec![
                PathBuf::from("/tmp/ovexp/l 0:a,b\\c"),
                PathBuf::from("/tmp/ovexp/l1")
            ]
        );
        assert_eq!(overlay_upper(mi), None);
    }

    #[test]
    fn classic_syntax_with_escapes_and_data_layers() {
        // As Linux 6.18 shows lowerdir=/l 0\:a\,b\\c:/l1 given to mount(2).
        let line = "49 27 0:42 / /m ro,relatime - overlay overlay ro,lowerdir=/l\\0400\\134:a\\134\\054b\\134\\134c:/l1::/data,upperdir=/u\\134\\134x,workdir=/w\n";
        let mi = &parse_mountinfo(line)[0];
        assert_eq!(
            overlay_lowers(mi),
            vec![PathBuf::from("/l 0:a,b\\c"), PathBuf::from("/l1")]
        );
        assert_eq!(
            overlay_upper(mi),
            Some((PathBuf::from("/u\\\\x"), PathBuf::from("/u\\x")))
        );
    }

    #[test]
    fn octal_unescape_edges() {
        assert_eq!(unescape_octal(b"a\\040b"), b"a b");
        assert_eq!(unescape_octal(b"trailing\\04"), b"trailing\\04");
        assert_eq!(unescape_octal(b"\\"), b"\\");
        assert_eq!(unescape_octal(b"\\134\\134"), b"\\\\");
        assert_eq!(unescape_octal(b"\\999"), b"\\999");
        assert_eq!(unescape_octal(b"\\377"), [0xffu8]);
        assert_eq!(
            split_escaped_colons(b"a\\:b:c"),
            vec![&b"a\\:b"[..], &b"c"[..]]
        );
        assert_eq!(unescape_backslash(b"a\\:b\\\\c\\"), b"a:b\\c\\");
    }

    #[test]
    fn finds_root_mount() {
        let root = find_mount(Path::new("/"))
            .expect("mountinfo")
            .expect("/ is mounted");
        assert_eq!(root.mount_point, PathBuf::from("/"));
        let proc_mounts = mounts_under(Path::new("/proc")).expect("mountinfo");
        assert!(proc_mounts
            .iter()
            .all(|m| m.mount_point.starts_with("/proc") && m.mount_point != Path::new("/proc")));
        let all = mounts_under(Path::new("/")).expect("mountinfo");
        assert!(all.iter().any(|m| m.mount_point == Path::new("/proc")));
    }
}
