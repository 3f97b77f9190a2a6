//! `[containerd]`: which pools containerd reaches as proxy snapshotters, and
//! where their sockets live.
//!
//! containerd passes a proxy only the labels under `containerd.io/snapshot/`,
//! so a request cannot name its pool: each snapshotter is one socket on one
//! pool, `<socket_dir>/containerd-<name>.sock`. Each is also its own key
//! space (two containerds, or two snapshotters of one containerd, may use the
//! same keys), which the adapter keeps apart with a key prefix.

use std::path::PathBuf;

use serde::Deserialize;

/// Longest snapshotter name: it becomes a socket file name and a key prefix.
pub const MAX_NAME: usize = 64;

/// `[containerd]`, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdConfig {
    /// Where the sockets are made; `[daemon] run_dir` unless set.
    pub socket_dir: PathBuf,
    /// A group whose members may use the sockets (mode 0660); root only
    /// (0600) when unset.
    pub socket_group: Option<String>,
    /// One socket each, in file order: `pools` first, then the
    /// `[[containerd.snapshotter]]` tables.
    pub snapshotters: Vec<SnapshotterConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotterConfig {
    pub name: String,
    pub pool: String,
}

impl ContainerdConfig {
    /// No `[containerd]` table: the default pool, on a socket in run_dir.
    pub fn default_for(run_dir: &std::path::Path, default_pool: &str) -> Self {
        ContainerdConfig {
            socket_dir: run_dir.to_path_buf(),
            socket_group: None,
            snapshotters: vec![SnapshotterConfig {
                name: default_pool.to_string(),
                pool: default_pool.to_string(),
            }],
        }
    }

    pub fn socket_path(&self, name: &str) -> PathBuf {
        self.socket_dir.join(format!("containerd-{name}.sock"))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawContainerd {
    socket_dir: Option<PathBuf>,
    socket_group: Option<String>,
    pools: Option<Vec<String>>,
    #[serde(default)]
    snapshotter: Vec<RawSnapshotter>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSnapshotter {
    name: String,
    pool: String,
}

/// A problem at `containerd.<key>`, for the config's error reporting.
pub(super) struct Problem {
    pub key: &'static str,
    pub message: String,
}

pub(super) fn resolve(
    raw: Option<RawContainerd>,
    run_dir: &std::path::Path,
    default_pool: &str,
) -> ContainerdConfig {
    let Some(raw) = raw else {
        return ContainerdConfig::default_for(run_dir, default_pool);
    };
    let pools = raw.pools.unwrap_or_else(|| vec![default_pool.to_string()]);
    let mut snapshotters: Vec<SnapshotterConfig> = pools
        .into_iter()
        .map(|p| SnapshotterConfig {
            name: p.clone(),
            pool: p,
        })
        .collect();
    snapshotters.extend(raw.snapshotter.into_iter().map(|s| SnapshotterConfig {
        name: s.name,
        pool: s.pool,
    }));
    ContainerdConfig {
        socket_dir: raw
            .socket_dir
            .map_or_else(|| run_dir.to_path_buf(), super::resolve::normalize),
        socket_group: raw.socket_group,
        snapshotters,
    }
}

/// Checks names, pools and the socket directory. `pool_exists` answers for
/// the configured pools; `host_checks` also looks the group up.
pub(super) fn validate(
    c: &ContainerdConfig,
    run_dir: &std::path::Path,
    pool_exists: impl Fn(&str) -> bool,
    host_checks: bool,
) -> Result<(), Problem> {
    let p = |key, message| Problem { key, message };
    super::validate::check_abs_path(&c.socket_dir).map_err(|m| p("socket_dir", m))?;
    for (i, s) in c.snapshotters.iter().enumerate() {
        check_name(&s.name).map_err(|m| p("snapshotter", m))?;
        if !pool_exists(&s.pool) {
            return Err(p(
                "pools",
                format!(
                    "snapshotter {:?} names pool {:?}, which is not configured",
                    s.name, s.pool
                ),
            ));
        }
        if c.snapshotters[..i].iter().any(|o| o.name == s.name) {
            return Err(p(
                "snapshotter",
                format!(
                    "snapshotter name {:?} is used twice: each name is one socket and one key space",
                    s.name
                ),
            ));
        }
    }
    if let Some(g) = &c.socket_group {
        if c.socket_dir.starts_with(run_dir) {
            return Err(p(
                "socket_group",
                format!(
                    "socket_group {g:?} cannot reach sockets in {} (run_dir, root-only): set socket_dir outside run_dir, e.g. \"/run/layerd-containerd\"",
                    c.socket_dir.display()
                ),
            ));
        }
        if host_checks {
            match nix::unistd::Group::from_name(g) {
                Ok(Some(_)) => {}
                Ok(None) => return Err(p("socket_group", format!("no group named {g:?}"))),
                Err(e) => {
                    return Err(p(
                        "socket_group",
                        format!("cannot look up group {g:?}: {e}"),
                    ))
                }
            }
        }
    }
    Ok(())
}

/// Names become socket file names and key prefixes: a short, plain word.
fn check_name(n: &str) -> Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= MAX_NAME
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !n.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "snapshotter name {:?}: use 1 to {MAX_NAME} of A-Z a-z 0-9 - _ . (not starting with .)",
            n.chars().take(MAX_NAME + 1).collect::<String>()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(text: &str) -> ContainerdConfig {
        let raw: RawContainerd = toml::from_str(text).unwrap();
        resolve(Some(raw), Path::new("/run/layerd"), "main")
    }

    #[test]
    fn defaults_serve_the_default_pool_in_run_dir() {
        let c = resolve(None, Path::new("/run/layerd"), "main");
        assert_eq!(
            c.socket_path("main"),
            Path::new("/run/layerd/containerd-main.sock")
        );
        assert_eq!(c.snapshotters.len(), 1);
        let c = cfg("socket_dir = \"/run/x\"");
        assert_eq!(c.snapshotters[0].pool, "main");
    }

    #[test]
    fn pools_and_named_snapshotters() {
        let c = cfg("pools = []\n[[snapshotter]]\nname = \"k8s\"\npool = \"fast\"\n");
        assert_eq!(
            c.snapshotters,
            vec![SnapshotterConfig {
                name: "k8s".into(),
                pool: "fast".into()
            }]
        );
        let run = Path::new("/run/layerd");
        assert!(validate(&c, run, |p| p == "fast", false).is_ok());
        let e = validate(&c, run, |p| p == "main", false).unwrap_err();
        assert!(e.message.contains("\"fast\""), "{}", e.message);
    }

    #[test]
    fn bad_names_duplicates_and_group_in_run_dir_are_refused() {
        let run = Path::new("/run/layerd");
        for bad in ["", "../x", "a/b", ".hidden", &"n".repeat(65)] {
            let c = cfg(&format!(
                "pools = []\n[[snapshotter]]\nname = {bad:?}\npool = \"main\"\n"
            ));
            assert!(validate(&c, run, |_| true, false).is_err(), "{bad:?}");
        }
        let c = cfg("[[snapshotter]]\nname = \"main\"\npool = \"main\"\n");
        let e = validate(&c, run, |_| true, false).unwrap_err();
        assert!(e.message.contains("twice"), "{}", e.message);
        let c = cfg("socket_group = \"docker\"");
        let e = validate(&c, run, |_| true, false).unwrap_err();
        assert_eq!(e.key, "socket_group");
        assert!(toml::from_str::<RawContainerd>("sockets = 1").is_err());
    }
}
