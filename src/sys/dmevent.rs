//! dm events: after `DM_DEV_ARM_POLL`, `/dev/mapper/control` polls readable
//! once any dm device raised an event (a thin pool crossing its low water
//! mark, running out of space, changing mode). This is how dmeventd and
//! stratisd wait; the devicemapper crate issues the ioctl.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use devicemapper::DM;

pub struct DmEvents {
    dm: DM,
}

impl DmEvents {
    /// Opens the control device and arms it.
    pub fn open() -> io::Result<Self> {
        let dm = DM::new().map_err(|e| io::Error::other(e.to_string()))?;
        dm.arm_poll().map_err(|e| io::Error::other(e.to_string()))?;
        Ok(DmEvents { dm })
    }

    /// Waits up to `timeout` for a dm event; true if one came (the control
    /// device is re-armed before returning, so none is missed).
    pub fn wait(&self, timeout: Duration) -> io::Result<bool> {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let mut pfd = libc::pollfd {
            fd: self.dm.file().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                return Ok(false);
            }
            return Err(e);
        }
        if n > 0 {
            self.dm
                .arm_poll()
                .map_err(|e| io::Error::other(e.to_string()))?;
            return Ok(true);
        }
        Ok(false)
    }
}
