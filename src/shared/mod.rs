//! Words every layer uses: error kinds, layer kinds, time, locks, sizes,
//! block devices, mount specs. This folder imports nothing of layerd, so
//! any folder may import it without making a cycle.

pub mod device;
pub mod error;
pub mod image;
pub mod layer;
pub mod mount;
pub mod size;
pub mod sync;
pub mod time;
