//! What a mount is, as mount(8) takes it: the spec every layer hands out.

use std::path::{Path, PathBuf};

/// A mount spec as mount(8) takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub fstype: String,
    pub source: String,
    pub options: Vec<String>,
}

impl MountSpec {
    /// Overlay spec with lowers nearest-first; upper = Some((upperdir, workdir))
    /// for writable; adds index=off.
    ///
    /// Paths are escaped the way overlay's option parser wants them (`\` before
    /// `:`, `,` and `\`). Paths that are not UTF-8 are converted lossily (the
    /// spec's strings must be UTF-8 for D-Bus); layerd's own paths are ASCII.
    /// Without an upper the overlay is read-only by nature (no "ro" is added,
    /// as containerd does not add one either). The kernel refuses a read-only
    /// overlay of a single lower ("at least 2 lowerdir are needed while
    /// upperdir nonexistent", `EINVAL`); for such a view use
    /// [`MountSpec::bind`]`(lower, true)`, as containerd does.
    pub fn overlay(lowers: &[PathBuf], upper: Option<(&Path, &Path)>) -> MountSpec {
        let lowerdir: Vec<String> = lowers.iter().map(|l| escape_classic(l)).collect();
        let mut options = vec![format!("lowerdir={}", lowerdir.join(":"))];
        if let Some((upperdir, workdir)) = upper {
            options.push(format!("upperdir={}", escape_classic(upperdir)));
            options.push(format!("workdir={}", escape_classic(workdir)));
        }
        options.push("index=off".to_string());
        MountSpec {
            fstype: "overlay".to_string(),
            source: "overlay".to_string(),
            options,
        }
    }

    /// A bind mount of `source`, read-only or read-write.
    ///
    /// Options are `["bind", "ro"|"rw"]`. containerd hands out `["rbind", …]`
    /// for its bind views, but a layer directory has no submounts that should
    /// come along, and a recursive bind would drag in any stray mount below the
    /// source while `ro` would only reach its top mount. The explicit "rw"
    /// keeps the intent visible to whoever reads the spec. mount(8) and
    /// `sys::mount::mount_spec` apply "ro" with a second, remounting `mount(2)`, since a
    /// bind ignores `MS_RDONLY` on the first call.
    pub fn bind(source: &Path, readonly: bool) -> MountSpec {
        MountSpec {
            fstype: "bind".to_string(),
            source: source.to_string_lossy().into_owned(),
            options: vec![
                "bind".to_string(),
                if readonly { "ro" } else { "rw" }.to_string(),
            ],
        }
    }
}

/// Escapes a path for overlay's classic option syntax: `\` before `:`, `,`
/// and `\` (overlay splits options on `,` and lowerdir on `:`, honouring `\`).
fn escape_classic(path: &Path) -> String {
    let s = path.to_string_lossy();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ':' | ',') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
