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
    /// A primary claim for a term that another live primary already holds or exceeds.
    #[error("{0}")]
    PrimaryTaken(String),
}

impl Classify for RegistryError {
    fn kind(&self) -> ErrorKind {
        match self {
            RegistryError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            RegistryError::LeaseNotFound(_) => ErrorKind::NotFound,
            RegistryError::PrimaryTaken(_) => ErrorKind::FailedPrecondition,
        }
    }
}

impl From<RegistryError> for tonic::Status {
    fn from(err: RegistryError) -> Self {
        concord::error::to_status(&err)
    }
}
