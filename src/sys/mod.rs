//! Thin wrappers over kernel interfaces that several drivers share: mount
//! (classic and the new mount API), /proc/self/mountinfo, tree copies.
//! Nothing here knows about layers, keys or pools.

pub mod beneath;
pub mod blockdev;
pub mod btrfs;
pub mod dmevent;
pub mod dmioctl;
pub mod fstree;
pub mod host;
pub mod loopdev;
pub mod mount;
pub mod mountinfo;
pub mod private;
pub mod trim;
