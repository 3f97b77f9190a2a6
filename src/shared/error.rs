//! Error kinds every layer shares: each error of the engine and the
//! backends has one, and the adapters map it to a stable name.

/// The nine error kinds of the D-Bus contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    PoolFull,
    Busy,
    NotSupported,
    AccessDenied,
    Internal,
}
