//! Lock helpers.

use std::sync::{Mutex, MutexGuard};

/// A poisoned lock only means another request panicked; the data it
/// guards (status numbers, a unit) is still consistent.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
