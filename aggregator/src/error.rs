//! The error categories of the consensus path (`Predict`, `PredictBatch`, `serve`).
//!
//! The staking side keeps its own module errors (`LedgerError`, `OutcomeError`, …); the
//! consensus path folds the ones it meets into these categories, and every one becomes a
//! `tonic::Status` only through [`concord::error::to_status`].

use concord::error::{Classify, ErrorKind};

use crate::ledger::LedgerError;
use crate::policy::PolicyError;

/// Result alias of the consensus path.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong on the consensus path.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad request: wrong feature count, NaN, empty or oversized batch, unknown policy.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Too few nodes answered in time (the message says how many), or none with weight.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request needs something this aggregator was not configured with (a ledger),
    /// or the ledger's state refuses it (a new account would pass the supply ceiling).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// Unusable configuration at start-up.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Ledger or server failure; a bug or a broken disk, not the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Classify for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::FailedPrecondition(_) | Error::Config(_) => ErrorKind::FailedPrecondition,
            Error::Internal(_) => ErrorKind::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        concord::error::to_status(&err)
    }
}

impl From<PolicyError> for Error {
    fn from(err: PolicyError) -> Self {
        match err {
            PolicyError::UnknownPolicy(_) => Error::InvalidArgument(err.to_string()),
            PolicyError::NoEligibleAnswers { .. } => Error::Unavailable(err.to_string()),
        }
    }
}

impl From<LedgerError> for Error {
    fn from(err: LedgerError) -> Self {
        match err {
            // Opening an account would pass the supply ceiling: a state, not a bug.
            LedgerError::WouldOverflow(_) => Error::FailedPrecondition(format!("ledger: {err}")),
            other => Error::Internal(format!("ledger: {other}")),
        }
    }
}

impl From<concord_node::Error> for Error {
    fn from(err: concord_node::Error) -> Self {
        match err {
            concord_node::Error::InvalidArgument(msg) => Error::InvalidArgument(msg),
            other => Error::Internal(other.to_string()),
        }
    }
}
