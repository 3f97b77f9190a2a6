//! The engine's error type. Every variant has one [`ErrorKind`], which the
//! D-Bus adapter maps to a stable `org.layerd.Layerd1.Error.*` name; the
//! message is what a person reads, so it names the key, pool or limit.

use crate::backend::BackendError;
use crate::engine::store::StoreError;
use crate::shared::error::ErrorKind;
use crate::shared::layer::Kind;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("layer {0:?} does not exist")]
    NotFound(String),
    #[error("parent {0:?} does not exist")]
    ParentNotFound(String),
    #[error("no pool named {0:?} is configured")]
    PoolNotFound(String),
    #[error("key {0:?} already exists (active, view and committed keys share one name space)")]
    AlreadyExists(String),
    #[error("parent {key:?} is {kind}: only a committed layer can be a parent")]
    ParentNotCommitted { key: String, kind: Kind },
    #[error("{key:?} is {kind}: only an active layer can be committed")]
    NotActive { key: String, kind: Kind },
    #[error("{key:?} is committed: mounts exist only for active layers and views")]
    IsCommitted { key: String },
    #[error("{key:?} has {children} child layer(s): remove them first")]
    HasChildren { key: String, children: usize },
    #[error("{key:?} is busy: {why}")]
    Busy { key: String, why: String },
    #[error("{key:?} is not mounted by the daemon")]
    NotMounted { key: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("pool {pool:?} has {free_percent:.1}% free {what} space left; new layers need at least {min_free_percent}%")]
    PoolFull {
        pool: String,
        /// `data` or `metadata` (thin): whichever is fuller.
        what: &'static str,
        free_percent: f64,
        min_free_percent: u8,
    },
    #[error("pool {pool:?} is {health}: {reason}")]
    PoolUnavailable {
        pool: String,
        health: &'static str,
        reason: String,
    },
    #[error("{0}")]
    NotSupported(String),
    #[error("pool {pool:?} is busy: {why}")]
    PoolBusy { pool: String, why: String },
    #[error("job {0} does not exist (finished jobs are kept for a while, then forgotten)")]
    JobNotFound(u64),
    #[error("job {id} ({operation}) has already finished: {outcome}")]
    JobFinished {
        id: u64,
        operation: &'static str,
        outcome: String,
    },
    #[error("{key:?} is {kind}: only an active layer can take Apply")]
    NotWritable { key: String, kind: Kind },
    /// Boxed: the io::Error inside would make every Result large.
    #[error(transparent)]
    Diff(Box<crate::engine::diff::DiffError>),
    /// EDQUOT in an Apply into a layer with a size limit: the tar does not
    /// fit the limit the layer was created with. InvalidArgument, not
    /// PoolFull: the pool may have space, freeing it would not help, and
    /// the same tar into the same layer never fits.
    #[error("layer {key:?} is full: it reached its own size limit {label}={limit} ({bytes} bytes beyond its parent, set when it was created): {source}")]
    LayerSizeLimit {
        key: String,
        /// `layerd.io/size`.
        label: &'static str,
        /// The label's value.
        limit: String,
        bytes: u64,
        source: Box<crate::engine::diff::DiffError>,
    },
    #[error("metadata store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        use Error::*;
        match self {
            NotFound(_) | ParentNotFound(_) | PoolNotFound(_) | JobNotFound(_) => {
                ErrorKind::NotFound
            }
            AlreadyExists(_) => ErrorKind::AlreadyExists,
            ParentNotCommitted { .. }
            | NotActive { .. }
            | IsCommitted { .. }
            | HasChildren { .. }
            | NotMounted { .. }
            | JobFinished { .. }
            | NotWritable { .. } => ErrorKind::FailedPrecondition,
            Diff(e) => e.kind(),
            Busy { .. } | PoolBusy { .. } => ErrorKind::Busy,
            InvalidArgument(_) | LayerSizeLimit { .. } => ErrorKind::InvalidArgument,
            PoolFull { .. } => ErrorKind::PoolFull,
            PoolUnavailable { .. } => ErrorKind::FailedPrecondition,
            NotSupported(_) => ErrorKind::NotSupported,
            Store(_) => ErrorKind::Internal,
            Backend(e) => e.kind(),
        }
    }
}

impl Error {
    /// The errno behind the failure, if the kernel gave one (the journal's
    /// ERRNO field).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Backend(e) => e.errno(),
            Error::Diff(e) | Error::LayerSizeLimit { source: e, .. } => e.errno(),
            _ => None,
        }
    }
}

impl From<crate::engine::diff::DiffError> for Error {
    fn from(e: crate::engine::diff::DiffError) -> Self {
        Error::Diff(Box::new(e))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
