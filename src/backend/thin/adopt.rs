//! Activating the pool target, and adopting an active one only when it
//! stands on this pool's own storage.

use super::*;

/// An active `layerd-<name>-pool` is only adopted if it stands on this
/// pool's own storage: its table names our `layerd-<name>-meta` and
/// `-data` linear devices, and those map the configured devices (loop: the
/// loop devices of `metadata.img` and `data.img`). The same pool name in
/// another state directory or config (another daemon, a test, a changed
/// `path`) must not be taken over. `Existing` pools are someone else's by
/// definition and are taken as they are.
pub(super) fn check_adopted(
    dm: &DM,
    name: &str,
    pool_params: &str,
    setup: &Setup,
) -> Result<(), BackendError> {
    let expected: [(&str, PathBuf, Vec<String>); 2] = match setup {
        Setup::Loop { dir, .. } => {
            let loops = |f: PathBuf| {
                let devs = loopdev::find_backing(&f)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|d| devno(&d.path()).ok())
                    .map(|d| d.to_string())
                    .collect();
                (f, devs)
            };
            let (m, md) = loops(dir.join("metadata.img"));
            let (d, dd) = loops(dir.join("data.img"));
            [("meta", m, md), ("data", d, dd)]
        }
        Setup::Device { data, metadata } => [
            ("meta", metadata.clone(), vec![devno(metadata)?.to_string()]),
            ("data", data.clone(), vec![devno(data)?.to_string()]),
        ],
        Setup::Existing { .. } => return Ok(()),
    };
    // thin-pool <metadata dev> <data dev> <block size> <low water> …
    let mut pool_devs = pool_params.split(' ');
    for ((role, path, mine), in_pool) in expected.iter().zip([pool_devs.next(), pool_devs.next()]) {
        let linear = format!("layerd-{name}-{role}");
        let info = dm
            .device_info(&DevId::Name(dm_name(&linear)?))
            .ok()
            .map(|i| i.device().to_string());
        let table = dm
            .table_status(
                &DevId::Name(dm_name(&linear)?),
                DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE),
            )
            .ok()
            .and_then(|(_, t)| t.first().map(|l| l.3.clone()))
            .unwrap_or_default();
        let dev = table.split(' ').next().unwrap_or("");
        let stands_on_linear = info.is_some() && info.as_deref() == in_pool;
        if !stands_on_linear || dev.is_empty() || !mine.iter().any(|m| m == dev) {
            return Err(unusable(
                path,
                format!(
                    "the active thin pool layerd-{name}-pool does not use this {role} storage (its {role} is on device {:?}); \
                     another pool named {name:?} is active: deactivate it (dmsetup remove) or rename this pool",
                    if stands_on_linear { dev } else { in_pool.unwrap_or("") }
                ),
            ));
        }
    }
    Ok(())
}

/// Creates loop devices (loop backing), linear devices and the pool.
pub(super) fn activate_pool(
    dm: &DM,
    name: &str,
    pool_dm: &str,
    setup: &Setup,
    o: &Options,
) -> Result<Device, BackendError> {
    let (data_dev, meta_dev, meta_path) = match setup {
        Setup::Loop {
            dir,
            size,
            metadata_size,
        } => {
            private::ensure_dir(dir).map_err(|e| BackendError::io("mkdir", dir, e))?;
            let data = dir.join("data.img");
            let meta = dir.join("metadata.img");
            let msize = metadata_size.unwrap_or_else(|| metadata_size_for(*size, o.block_size));
            for (f, s) in [(&data, *size), (&meta, msize)] {
                match loopdev::create_sparse(f, s) {
                    Ok(()) => tracing::info!(file = %f.display(), size = s, "created sparse file"),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        if !fs::metadata(f).is_ok_and(|m| m.is_file()) {
                            return Err(unusable(f, "exists and is not a regular file"));
                        }
                    }
                    Err(e) => return Err(BackendError::io("create sparse file", f, e)),
                }
            }
            // Check before anything is attached: a damaged pool stays as it is.
            if !blockdev::is_zeroed(&meta, 4096).map_err(|e| BackendError::io("read", &meta, e))? {
                thin_check(&meta)?;
            }
            let attach = |f: &Path| -> Result<PathBuf, BackendError> {
                let bound =
                    loopdev::find_backing(f).map_err(|e| BackendError::io("find loop", f, e))?;
                match bound.first() {
                    Some(d) => Ok(d.path()),
                    None => loopdev::attach(f, loopdev::AttachOptions::default())
                        .map(|(d, _)| d.path())
                        .map_err(|e| BackendError::io("attach loop device", f, e)),
                }
            };
            (attach(&data)?, attach(&meta)?, meta)
        }
        Setup::Device { data, metadata } => {
            if !blockdev::is_zeroed(metadata, 4096)
                .map_err(|e| BackendError::io("read", metadata, e))?
            {
                thin_check(metadata)?;
            }
            (data.clone(), metadata.clone(), metadata.clone())
        }
        Setup::Existing { pool } => return Err(unusable(pool, "is not active")),
    };
    let _ = meta_path;
    let linear = |suffix: &str, dev: &Path| -> Result<LinearDev, BackendError> {
        let n = format!("layerd-{name}-{suffix}");
        let sectors = sectors_of(dev)?;
        let table = vec![TargetLine::new(
            Sectors(0),
            Sectors(sectors),
            LinearDevTargetParams::Linear(LinearTargetParams::new(devno(dev)?, Sectors(0))),
        )];
        LinearDev::setup(dm, dm_name(&n)?, None, table).map_err(|e| dm_err("linear device", &n, e))
    };
    let meta = linear("meta", &meta_dev)?;
    let data = linear("data", &data_dev)?;
    let block_sectors = o.block_size / SECTOR;
    let total_blocks = *data.size() / block_sectors;
    let low_water = total_blocks * (100 - o.warn_percent.min(100) as u64) / 100;
    // Queue writes while the pool can still grow (the daemon extends it
    // from the warning level on); error them when nothing can grow, so a
    // writer of a full pool gets ENOSPC instead of hanging.
    // The data file's length is the truth (Extend may have grown it past
    // the configured size).
    let can_grow = matches!(setup, Setup::Loop { .. }
        if o.autoextend_percent > 0 && *data.size() * SECTOR < o.autoextend_max);
    let mut features = vec!["skip_block_zeroing".to_string()];
    if !can_grow {
        features.push("error_if_no_space".to_string());
    }
    let pool = ThinPoolDev::setup(
        dm,
        dm_name(pool_dm)?,
        None,
        meta,
        data,
        Sectors(block_sectors),
        DataBlocks(low_water),
        features,
    )
    .map_err(|e| dm_err("activate thin pool", pool_dm, e))?;
    tracing::info!(
        pool = name,
        dm = pool_dm,
        blocks = total_blocks,
        low_water,
        "thin pool activated"
    );
    Ok(pool.device())
}
