//! The one place engine errors become D-Bus errors. Names are stable API:
//! clients branch on them, so a kind never changes name.

use crate::engine::error::Error;
use crate::shared::error::ErrorKind;

/// Errors as clients see them: `org.layerd.Layerd1.Error.<Variant>`, with a
/// message a person can act on.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.layerd.Layerd1.Error")]
pub enum DbusError {
    #[zbus(error)]
    ZBus(zbus::Error),
    NotFound(String),
    AlreadyExists(String),
    FailedPrecondition(String),
    InvalidArgument(String),
    PoolFull(String),
    Busy(String),
    NotSupported(String),
    AccessDenied(String),
    Internal(String),
}

impl From<Error> for DbusError {
    fn from(e: Error) -> Self {
        let msg = e.to_string();
        match e.kind() {
            ErrorKind::NotFound => DbusError::NotFound(msg),
            ErrorKind::AlreadyExists => DbusError::AlreadyExists(msg),
            ErrorKind::FailedPrecondition => DbusError::FailedPrecondition(msg),
            ErrorKind::InvalidArgument => DbusError::InvalidArgument(msg),
            ErrorKind::PoolFull => DbusError::PoolFull(msg),
            ErrorKind::Busy => DbusError::Busy(msg),
            ErrorKind::NotSupported => DbusError::NotSupported(msg),
            ErrorKind::AccessDenied => DbusError::AccessDenied(msg),
            ErrorKind::Internal => {
                tracing::error!(error = %msg, "internal error");
                DbusError::Internal(msg)
            }
        }
    }
}
