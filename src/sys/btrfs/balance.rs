//! Balance: start with usage filters, progress, cancel.

use super::*;

// ---------------------------------------------------------------------------
// Balance
// ---------------------------------------------------------------------------

/// Which chunks one balance call rewrites: data chunks at most
/// `data_usage` percent full, metadata (and system) chunks at most
/// `metadata_usage` percent full (`btrfs balance start -dusage=N
/// -musage=M`). `None` leaves that kind alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalanceFilters {
    pub data_usage: Option<u8>,
    pub metadata_usage: Option<u8>,
}

/// Runs one balance with `filters` on the file system holding `path` and
/// blocks until it ends; returns the kernel's final progress. Meant to run
/// on its own thread while another polls [`balance_progress`] and may call
/// [`balance_cancel`]. Errors: `ECANCELED` when cancelled, `EINPROGRESS`
/// when a balance already runs, `EBUSY` when another exclusive operation
/// runs, `ENOSPC` when no chunk could be allocated to relocate into,
/// `EINVAL` for empty filters (layerd never runs a full balance).
pub fn balance_start(path: &Path, filters: &BalanceFilters) -> io::Result<BalanceProgress> {
    if filters.data_usage.is_none() && filters.metadata_usage.is_none() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a balance needs a data or metadata usage filter",
        ));
    }
    let d = open_dir(path)?;
    // SAFETY: integers and arrays only.
    let mut args = unsafe { zeroed::<BalanceIoctlArgs>() };
    if let Some(u) = filters.data_usage {
        args.flags |= BALANCE_DATA;
        args.data.flags = BALANCE_ARGS_USAGE;
        args.data.usage = u.min(100) as u64;
    }
    if let Some(u) = filters.metadata_usage {
        // As btrfs-progs does: system chunks follow the metadata filter.
        args.flags |= BALANCE_METADATA | BALANCE_SYSTEM;
        args.meta.flags = BALANCE_ARGS_USAGE;
        args.meta.usage = u.min(100) as u64;
        args.sys = args.meta;
    }
    // SAFETY: `args` is a complete 1 KiB `btrfs_ioctl_balance_args` that
    // stays alive (boxed) for the whole, possibly long, blocking call.
    let ret = unsafe { ioc_balance_v2(d.as_raw_fd(), &mut *args) }.map_err(errno)?;
    if ret == ERROR_DEV_EXCL_RUN_IN_PROGRESS {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    } else if ret > 0 {
        return Err(io::Error::other(format!(
            "btrfs balance refused with btrfs error code {ret}"
        )));
    }
    Ok(args.stat)
}

/// Progress of the balance running on the file system holding `path`;
/// `None` when none runs.
pub fn balance_progress(path: &Path) -> io::Result<Option<BalanceProgress>> {
    let d = open_dir(path)?;
    // SAFETY: integers and arrays only.
    let mut args = unsafe { zeroed::<BalanceIoctlArgs>() };
    // SAFETY: the kernel writes one `btrfs_ioctl_balance_args` into `args`.
    match unsafe { ioc_balance_progress(d.as_raw_fd(), &mut *args) } {
        Ok(_) => Ok(Some(args.stat)),
        Err(nix::errno::Errno::ENOTCONN) => Ok(None),
        Err(e) => Err(errno(e)),
    }
}

/// Asks the running balance to stop (it finishes the chunk it is moving);
/// `ENOTCONN` when none runs.
pub fn balance_cancel(path: &Path) -> io::Result<()> {
    let d = open_dir(path)?;
    // SAFETY: BALANCE_CTL takes the command as the integer argument itself.
    unsafe { ioc_balance_ctl(d.as_raw_fd(), BALANCE_CTL_CANCEL) }.map_err(errno)?;
    Ok(())
}
