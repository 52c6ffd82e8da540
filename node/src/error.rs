//! The one error type of `concord-node`.
//!
//! Variants are categories a caller can act on, not a list of wrapped libraries: a bad
//! request (`InvalidArgument`, never retry), a configuration the node cannot start with
//! (`Config`), a dependency that is down (`Unavailable`, retry later) and a broken
//! invariant (`Internal`). They become `tonic::Status` only through
//! [`concord::error::to_status`], via the [`Classify`] impl here.

use concord::error::{Classify, ErrorKind};

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller sent something we refuse to evaluate (wrong feature count, NaN, empty
    /// or oversized batch); the message says which.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The node configuration is unusable (k = 0, no features, unknown metric …).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A dependency (the registry, the listener) could not be used.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A broken invariant inside the node; a bug, not the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Classify for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::Config(_) => ErrorKind::FailedPrecondition,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        concord::error::to_status(&err)
    }
}
