//! Block devices under a pool, as the backends report them and the
//! monitor watches them.

/// A block device a pool's storage sits on, which the monitor watches
/// through udev: growth is taken up, disappearance fails the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingDevice {
    /// What the pool uses it for: `data`, `metadata`, `device`.
    pub role: &'static str,
    pub major: u32,
    pub minor: u32,
    /// Kernel name (`sdb`, `loop3`) when the pool was opened.
    pub name: String,
}
