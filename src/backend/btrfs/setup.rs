//! Making a pool's btrfs usable: an existing file system, a loop image
//! (created, attached, mounted) or a device (probed for foreign data,
//! formatted, mounted).

use super::*;

pub(super) fn open_existing(path: &Path) -> Result<Btrfs, BackendError> {
    let md = fs::metadata(path).map_err(|e| BackendError::io("stat", path, e))?;
    if !md.is_dir() {
        return Err(unusable(
            path,
            "is not a directory; backing = \"existing\" needs a directory on a mounted btrfs",
        ));
    }
    if !sys::is_btrfs(path).map_err(|e| BackendError::io("statfs", path, e))? {
        return Err(unusable(
            path,
            "is not on a btrfs; backing = \"existing\" needs a directory on a mounted btrfs (or use backing = \"loop\")",
        ));
    }
    let devs = sys::devices(path).map_err(|e| BackendError::io("btrfs device info", path, e))?;
    let device = devs
        .first()
        .map(|d| d.path.clone())
        .ok_or_else(|| unusable(path, "the btrfs reports no device"))?;
    Ok(Btrfs {
        quotas: AtomicBool::new(false),
        backing: "existing",
        root: path.to_path_buf(),
        device,
    })
}

pub(super) fn open_loop(mount: &Path, size: u64, label: &str) -> Result<Btrfs, BackendError> {
    let image = image_path(mount);
    if let Some(parent) = image.parent() {
        private::ensure_dir(parent).map_err(|e| BackendError::io("mkdir", parent, e))?;
    }
    if let Ok(m) = fs::metadata(mount) {
        if !m.is_dir() {
            return Err(unusable(
                mount,
                "exists and is not a directory: a loop pool's path is its mount point",
            ));
        }
    }
    let mount_existed = exists(mount);
    let created = match create_image(&image, size, label) {
        Ok(()) => {
            tracing::info!(image = %image.display(), size, "created and formatted sparse pool image");
            true
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let md = fs::metadata(&image).map_err(|e| BackendError::io("stat", &image, e))?;
            if !md.is_file() {
                return Err(unusable(&image, "exists and is not a regular file"));
            }
            if md.len() < size {
                tracing::warn!(image = %image.display(), image_size = md.len(), configured = size, "the pool image is smaller than the configured size; growing it is the Extend job's work");
            }
            false
        }
        Err(e) => return Err(BackendError::io("create sparse image", &image, e)),
    };
    let r = attach_and_mount(mount, &image, label);
    if r.is_err() && created {
        // Nothing of a pool that never opened stays behind: the image made
        // here (its loop device is detached by attach_and_mount) and the
        // mount point if it was made for it.
        if let Err(e) = fs::remove_file(&image) {
            tracing::warn!(image = %image.display(), error = %e, "cannot remove the image of a pool that failed to open");
        }
        if !mount_existed {
            let _ = fs::remove_dir(mount);
        }
    }
    r
}

/// Attaches the image (or finds its loop device) and mounts the pool;
/// a loop device attached here is detached again if mounting fails.
pub(super) fn attach_and_mount(
    mount: &Path,
    image: &Path,
    label: &str,
) -> Result<Btrfs, BackendError> {
    let image = image.to_path_buf();
    let bound = loopdev::find_backing(&image)
        .map_err(|e| BackendError::io("find loop device", &image, e))?;
    // Prefer the device already mounted at the pool path (a restart).
    let mounted = mounted_device(mount)?;
    let reuse = bound
        .iter()
        .find(|d| mounted.as_ref().is_some_and(|m| same_device(m, &d.path())))
        .or(bound.first())
        .cloned();
    let (dev, attached_now) = match reuse {
        Some(d) => {
            tracing::info!(image = %image.display(), device = %d.path().display(), "pool image is already attached");
            (d, false)
        }
        None => {
            let (d, _) = loopdev::attach(&image, loopdev::AttachOptions::default())
                .map_err(|e| BackendError::io("attach loop device", &image, e))?;
            (d, true)
        }
    };
    let device = dev.path();
    if let Err(e) = mount_pool(&device, mount, label, "loop") {
        if attached_now {
            let _ = loopdev::detach(&dev);
        }
        return Err(e);
    }
    Ok(Btrfs {
        quotas: AtomicBool::new(false),
        backing: "loop",
        root: mount.to_path_buf(),
        device,
    })
}

/// Makes a new pool image: a sparse file formatted under a temporary name
/// (`.<name>.new` beside it) and renamed last; AlreadyExists if `image`
/// exists. The file is formatted, not its loop device: mkfs.btrfs takes a
/// loop device as mounted when a mounted loop device's backing file has
/// the same path string (btrfs-progs' `is_same_loop_file`), which is what a
/// private mount namespace sees of the host's own pool at the default path.
pub(super) fn create_image(image: &Path, size: u64, label: &str) -> io::Result<()> {
    if fs::symlink_metadata(image).is_ok() {
        return Err(io::ErrorKind::AlreadyExists.into());
    }
    let name = image.file_name().unwrap_or_default().to_string_lossy();
    let tmp = image.with_file_name(format!(".{name}.new"));
    // Left by a start that died before the rename: never attached, no data.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    loopdev::create_sparse(&tmp, size)?;
    let made = format_btrfs(&tmp, label)
        .map_err(|e| io::Error::other(e.to_string()))
        .and_then(|()| fs::File::open(&tmp)?.sync_all())
        .and_then(|()| fs::hard_link(&tmp, image));
    let _ = fs::remove_file(&tmp);
    made?;
    if let Some(dir) = image.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The device of the btrfs mounted exactly at `mount`, if one is; an error
/// if something else is mounted there.
pub(super) fn mounted_device(mount: &Path) -> Result<Option<Vec<PathBuf>>, BackendError> {
    let mi =
        mountinfo::find_mount(mount).map_err(|e| BackendError::io("read mountinfo", mount, e))?;
    let Some(mi) = mi else {
        return Ok(None);
    };
    if mi.fstype != "btrfs" {
        return Err(unusable(
            mount,
            format!(
                "is a mount point of a {} file system ({}), not of this pool's btrfs",
                mi.fstype, mi.source
            ),
        ));
    }
    let devs = sys::devices(mount).map_err(|e| BackendError::io("btrfs device info", mount, e))?;
    Ok(Some(devs.into_iter().map(|d| d.path).collect()))
}

pub(super) fn rdev(p: &Path) -> Option<u64> {
    fs::metadata(p).ok().map(|m| m.rdev())
}

pub(super) fn same_device(devs: &[PathBuf], dev: &Path) -> bool {
    let want = rdev(dev);
    want.is_some() && devs.iter().any(|d| rdev(d) == want)
}

/// Makes sure the btrfs on `device` is mounted at `mount`: reuses a mount
/// of it that is there, else formats the device if it carries no signature
/// at all, and mounts it (`discard=async`).
pub(super) fn mount_pool(
    device: &Path,
    mount: &Path,
    label: &str,
    what: &str,
) -> Result<(), BackendError> {
    if let Some(devs) = mounted_device(mount)? {
        if same_device(&devs, device) {
            tracing::info!(device = %device.display(), mount = %mount.display(), "pool is already mounted");
            return Ok(());
        }
        return Err(unusable(
            mount,
            format!(
                "another btrfs ({}) is mounted here, not the pool's {what} {}",
                devs.iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                device.display()
            ),
        ));
    }
    match probe_signature(device)? {
        None => format_btrfs(device, label)?,
        Some(sig) if sig == "btrfs" => {}
        Some(sig) => {
            return Err(unusable(
                device,
                format!(
                    "carries a {sig} signature; layerd formats only a {what} with no signature at all, so that nothing is overwritten. If its contents are not needed, erase the signatures (wipefs -a {}) and start layerd again",
                    device.display()
                ),
            ))
        }
    }
    private::ensure_dir(mount).map_err(|e| BackendError::io("mkdir", mount, e))?;
    let mut entries = fs::read_dir(mount).map_err(|e| BackendError::io("readdir", mount, e))?;
    if entries.next().is_some() {
        return Err(unusable(
            mount,
            format!(
                "is not empty; layerd will not mount the pool's btrfs ({}) over it",
                device.display()
            ),
        ));
    }
    let flags = nix::mount::MsFlags::empty();
    let r = nix::mount::mount(
        Some(device),
        mount,
        Some("btrfs"),
        flags,
        Some(POOL_MOUNT_OPTIONS),
    );
    let r = match r {
        Err(nix::errno::Errno::EINVAL) => {
            tracing::warn!(device = %device.display(), "mount with {POOL_MOUNT_OPTIONS} refused; mounting without it (trim jobs still give space back)");
            nix::mount::mount(Some(device), mount, Some("btrfs"), flags, None::<&str>)
        }
        r => r,
    };
    r.map_err(|e| {
        BackendError::Mount(mount::MountError::Sys {
            op: format!("mount btrfs from {}", device.display()),
            target: mount.to_path_buf(),
            errno: e,
            kernel_log: String::new(),
        })
    })?;
    tracing::info!(device = %device.display(), mount = %mount.display(), "pool mounted");
    Ok(())
}

/// `mkfs.btrfs` — a one-time process to format a new pool (a fresh loop
/// image or an empty device); never `-f`, so mkfs itself also refuses a
/// device with a file system on it.
pub(super) fn format_btrfs(device: &Path, label: &str) -> Result<(), BackendError> {
    let label: String = label.chars().take(255).collect();
    tracing::info!(device = %device.display(), %label, "formatting new btrfs pool");
    let out = Command::new("mkfs.btrfs")
        .arg("-q")
        .arg("-L")
        .arg(&label)
        .arg(device)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BackendError::io("run mkfs.btrfs", device, e))?;
    if !out.status.success() {
        return Err(unusable(
            device,
            format!(
                "mkfs.btrfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

/// Well-known magic numbers: (offset, bytes, name as blkid says it).
pub(super) const MAGICS: &[(usize, &[u8], &str)] = &[
    (0x10040, b"_BHRfS_M", "btrfs"),
    (0x438, &[0x53, 0xef], "ext4"),
    (0, b"XFSB", "xfs"),
    (0, b"LUKS\xba\xbe", "crypto_LUKS"),
    (0, b"SKL\xba\xbe", "crypto_LUKS"),
    (512, b"EFI PART", "gpt partition table"),
    (0, b"LABELONE", "LVM2_member"),
    (512, b"LABELONE", "LVM2_member"),
    (1024, b"LABELONE", "LVM2_member"),
    (1536, b"LABELONE", "LVM2_member"),
    (4086, b"SWAPSPACE2", "swap"),
    (4086, b"SWAP-SPACE", "swap"),
    (0x8001, b"CD001", "iso9660"),
    (0, b"hsqs", "squashfs"),
    (1024, &[0x10, 0x20, 0xf5, 0xf2], "f2fs"),
    (0, &[0xfc, 0x4e, 0x2b, 0xa9], "linux_raid_member"),
    (4096, &[0xfc, 0x4e, 0x2b, 0xa9], "linux_raid_member"),
    (3, b"NTFS    ", "ntfs"),
    (0x36, b"FAT1", "vfat"),
    (0x52, b"FAT32   ", "vfat"),
    (
        4096 + 24,
        &[
            0xc6, 0x85, 0x73, 0xf6, 0x4e, 0x1a, 0x45, 0xca, 0x82, 0x65, 0xf5, 0x7f, 0x48, 0xba,
            0x6d, 0x81,
        ],
        "bcache",
    ),
    (510, &[0x55, 0xaa], "dos partition table or boot sector"),
];

/// The signature `device` carries: `None` when nothing is found, else what
/// (`"btrfs"`, `"ext4"`, …). Asks `blkid -p` (low-level probing, no cache)
/// when it is installed, and checks well-known magic numbers in the first
/// MiB itself either way.
pub(super) fn probe_signature(device: &Path) -> Result<Option<String>, BackendError> {
    let mut head = Vec::with_capacity(1 << 20);
    fs::File::open(device)
        .and_then(|f| f.take(1 << 20).read_to_end(&mut head))
        .map_err(|e| BackendError::io("read", device, e))?;
    let own = MAGICS
        .iter()
        .find(|(off, magic, _)| head.get(*off..off + magic.len()) == Some(*magic))
        .map(|(_, _, name)| name.to_string());
    let blkid = match Command::new("blkid")
        .args(["-p", "-o", "export", "--"])
        .arg(device)
        .stdin(Stdio::null())
        .output()
    {
        // 2: nothing found.
        Ok(out) if out.status.code() == Some(2) => None,
        Ok(out) if out.status.success() => {
            let text = String::from_utf8_lossy(&out.stdout);
            let field = |k: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(k).map(str::to_string))
            };
            field("TYPE=")
                .or_else(|| field("PTTYPE=").map(|t| format!("{t} partition table")))
                .or_else(|| Some(text.trim().replace('\n', " ")))
        }
        Ok(out) => Some(format!(
            "ambiguous (blkid -p: {}{})",
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )),
        Err(e) => {
            tracing::debug!(error = %e, "blkid is not available; checking magic numbers only");
            None
        }
    };
    Ok(match (blkid, own) {
        (Some(b), _) => Some(b),
        (None, o) => o,
    })
}
