//! Registry error categories, mapped to gRPC codes by `concord::error`.

use concord::error::{Classify, ErrorKind};

/// Why a registry call failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    /// The request is malformed (bad name, address, TTL or metadata).
    #[error("{0}")]
    InvalidArgument(String),
    /// The lease is unknown or expired: register again.
    #[error("lease {} is unknown or expired; register again", concord::error::quote(.0))]
    LeaseNotFound(String),
    /// A primary claim the registry refuses: another live primary holds the same or a
    /// higher term, or the term is not the next one.
    #[error("{0}")]
    PrimaryTaken(String),
    /// The node id is registered, live, at another address.
    #[error("{0}")]
    NodeTaken(String),
    /// The caller's principal may not register this service or publish this metadata.
    #[error("{0}")]
    Forbidden(String),
    /// A cap on instances or leases is reached.
    #[error("{0}")]
    Exhausted(String),
    /// The store (etcd) cannot be reached or stays contended: try again, or another
    /// registry.
    #[error("the registry's store is unavailable: {0}")]
    Unavailable(String),
}

impl Classify for RegistryError {
    fn kind(&self) -> ErrorKind {
        match self {
            RegistryError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            RegistryError::LeaseNotFound(_) => ErrorKind::NotFound,
            RegistryError::PrimaryTaken(_) | RegistryError::NodeTaken(_) => {
                ErrorKind::FailedPrecondition
            }
            RegistryError::Forbidden(_) => ErrorKind::PermissionDenied,
            RegistryError::Exhausted(_) => ErrorKind::ResourceExhausted,
            RegistryError::Unavailable(_) => ErrorKind::Unavailable,
        }
    }
}

impl From<RegistryError> for tonic::Status {
    fn from(err: RegistryError) -> Self {
        concord::error::to_status(&err)
    }
}
