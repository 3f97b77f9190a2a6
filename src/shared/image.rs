//! Where a loop-backed pool keeps its image: config checks it before the
//! pool exists, the btrfs backend makes and attaches it.

use std::path::{Path, PathBuf};

/// The image of a loop pool mounted at `mount`: `<mount>.img`.
pub fn image_path(mount: &Path) -> PathBuf {
    let mut s = mount.as_os_str().to_owned();
    s.push(".img");
    PathBuf::from(s)
}
