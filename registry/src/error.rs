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
}

impl Classify for RegistryError {
    fn kind(&self) -> ErrorKind {
        match self {
            RegistryError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            RegistryError::LeaseNotFound(_) => ErrorKind::NotFound,
        }
    }
}

impl From<RegistryError> for tonic::Status {
    fn from(err: RegistryError) -> Self {
        concord::error::to_status(&err)
    }
}
