//! The one place engine errors become gRPC statuses, with the codes
//! containerd's errdefs turn back into its error kinds (errdefs.FromGRPC).

use containerd_snapshots::tonic::{Code, Status};

use crate::engine::error::Error;
use crate::shared::error::ErrorKind;

/// The code for each engine error kind. Where D-Bus and containerd differ:
/// - a parent that is not committed is InvalidArgument, as containerd's
///   own snapshotters and metadata store answer ("parent is not committed
///   snapshot"); D-Bus keeps FailedPrecondition, its stable name;
/// - PoolFull is ResourceExhausted (containerd 1.6 shows it as unknown,
///   with the message);
/// - Busy (a layer the daemon has mounted, a pool in maintenance) is
///   Unavailable: gRPC's "transient, retry", which errdefs knows;
/// - NotSupported is Unimplemented (errdefs' NotImplemented).
pub fn code(e: &Error) -> Code {
    if matches!(e, Error::ParentNotCommitted { .. }) {
        return Code::InvalidArgument;
    }
    match e.kind() {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::PoolFull => Code::ResourceExhausted,
        ErrorKind::Busy => Code::Unavailable,
        ErrorKind::NotSupported => Code::Unimplemented,
        ErrorKind::AccessDenied => Code::PermissionDenied,
        ErrorKind::Internal => Code::Internal,
    }
}

pub fn status(e: Error) -> Status {
    let code = code(&e);
    let msg = e.to_string();
    if code == Code::Internal {
        tracing::error!(error = %msg, "internal error");
    }
    Status::new(code, msg)
}

/// A request that panicked (see engine::guard).
pub fn panicked(what: String) -> Status {
    Status::internal(format!(
        "internal error: the request panicked ({what}); the daemon goes on serving, see its log"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::types::Kind;

    #[test]
    fn codes_are_containerds() {
        let parent = Error::ParentNotCommitted {
            key: "p".into(),
            kind: Kind::Active,
        };
        assert_eq!(code(&parent), Code::InvalidArgument);
        assert_eq!(code(&Error::NotFound("k".into())), Code::NotFound);
        assert_eq!(code(&Error::AlreadyExists("k".into())), Code::AlreadyExists);
        let children = Error::HasChildren {
            key: "k".into(),
            children: 1,
        };
        assert_eq!(code(&children), Code::FailedPrecondition);
        assert_eq!(code(&Error::NotSupported("x".into())), Code::Unimplemented);
    }
}
