//! The aggregator's errors and the one place each is classified for gRPC.
//!
//! [`Error`] holds the categories of the consensus path (`Predict`, `PredictBatch`,
//! `serve`). The modules keep their own typed errors (`LedgerError`, `OutcomeError`,
//! `PolicyError`, `AccessError`); each gets its [`ErrorKind`] here, once, whichever
//! service meets it — the consensus path wraps them and delegates to the same
//! classification — and every one becomes a `tonic::Status` only through
//! [`concord::error::to_status`].

use concord::error::{Classify, ErrorKind};

use crate::ledger::LedgerError;
use crate::outcomes::OutcomeError;
use crate::policy::PolicyError;
use crate::staking::AccessError;

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
    /// The request needs something this aggregator was not configured with (a ledger).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// Unusable configuration at start-up.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Server failure; a bug, not the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
    /// The ledger refused or failed (classified as [`LedgerError`] is everywhere).
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    /// Combining the answers failed (classified as [`PolicyError`] is everywhere).
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

impl Classify for Error {
    fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument(_) => ErrorKind::InvalidArgument,
            Error::Unavailable(_) => ErrorKind::Unavailable,
            Error::FailedPrecondition(_) | Error::Config(_) => ErrorKind::FailedPrecondition,
            Error::Internal(_) => ErrorKind::Internal,
            Error::Ledger(e) => e.kind(),
            Error::Policy(e) => e.kind(),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        concord::error::to_status(&err)
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

impl Classify for LedgerError {
    fn kind(&self) -> ErrorKind {
        match self {
            LedgerError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            LedgerError::NotFound(_) => ErrorKind::NotFound,
            // Both depend on the ledger's state, not only on the request; nothing written.
            LedgerError::InsufficientStake { .. } | LedgerError::WouldOverflow(_) => {
                ErrorKind::FailedPrecondition
            }
            LedgerError::AlreadyScored { .. } | LedgerError::AccountExists(_) => {
                ErrorKind::AlreadyExists
            }
            LedgerError::Storage(_) | LedgerError::Corrupt(_) => ErrorKind::Internal,
        }
    }
}

impl Classify for OutcomeError {
    fn kind(&self) -> ErrorKind {
        match self {
            OutcomeError::UnknownRequest { .. } | OutcomeError::Expired { .. } => {
                ErrorKind::NotFound
            }
            OutcomeError::InvalidLabel { .. } => ErrorKind::InvalidArgument,
            OutcomeError::Ledger(e) => e.kind(),
        }
    }
}

impl Classify for PolicyError {
    fn kind(&self) -> ErrorKind {
        match self {
            PolicyError::UnknownPolicy(_) => ErrorKind::InvalidArgument,
            PolicyError::NoEligibleAnswers { .. } => ErrorKind::Unavailable,
        }
    }
}

impl Classify for AccessError {
    fn kind(&self) -> ErrorKind {
        match self {
            AccessError::Unauthenticated(_) => ErrorKind::Unauthenticated,
            AccessError::Denied(_) => ErrorKind::PermissionDenied,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ledger error gets the same code through Predict (wrapped in `Error`) as through
    /// Staking (on its own): it is classified once.
    #[test]
    fn ledger_errors_classify_the_same_on_both_services() {
        let cases = [
            (
                LedgerError::InvalidArgument("x".into()),
                ErrorKind::InvalidArgument,
            ),
            (LedgerError::NotFound("n".into()), ErrorKind::NotFound),
            (
                LedgerError::WouldOverflow("x".into()),
                ErrorKind::FailedPrecondition,
            ),
            (
                LedgerError::AccountExists("n".into()),
                ErrorKind::AlreadyExists,
            ),
            (LedgerError::Storage("io".into()), ErrorKind::Internal),
            (LedgerError::Corrupt("x".into()), ErrorKind::Internal),
        ];
        for (err, kind) in cases {
            assert_eq!(err.kind(), kind, "{err}");
            assert_eq!(Error::from(err.clone()).kind(), kind, "{err}");
            let outcome = OutcomeError::Ledger(err.clone());
            assert_eq!(outcome.kind(), kind, "{err}");
        }
        let unknown = PolicyError::UnknownPolicy("x".into());
        assert_eq!(Error::from(unknown).kind(), ErrorKind::InvalidArgument);
    }
}
