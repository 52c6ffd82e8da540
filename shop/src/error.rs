//! The one error type of the shop crate.
//!
//! Variants are categories a caller can act on, not a list of wrapped libraries: a bad
//! request (`InvalidArgument`), a missing entity (`NotFound`), a request that is valid but
//! not in the current state (`FailedPrecondition`: empty cart, not enough stock, illegal
//! order transition, idempotency key reused for another cart), a missing or wrong admin
//! token or session (`Unauthenticated`), a signed-in customer acting for someone else
//! (`PermissionDenied`), a username that is taken (`AlreadyExists`), a transient storage or shutdown problem (`Unavailable`) and
//! a broken invariant or corrupt record (`Internal`). The mapping to `tonic::Status`
//! lives in one place (`convert`), never in handlers.

use thiserror::Error;

/// Result alias used throughout the crate.
pub type Result<T, E = ShopError> = std::result::Result<T, E>;

/// Everything that can go wrong in the shop, grouped by what the caller should do.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ShopError {
    /// The request itself is wrong (bad id, quantity, price, name…); retrying won't help.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The named product, order or cart line does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request is well-formed but the current state forbids it.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// This process is a replica: writes go to the primary at the given address ("" when
    /// unknown). Maps to FAILED_PRECONDITION with metadata `x-concord-primary`.
    #[error("this shop is a replica; send writes to the primary at {0:?}")]
    NotPrimary(String),
    /// This process is fenced (it stepped down, lost a primary claim, or has not reached the
    /// registry yet) and did nothing with the write. Maps to UNAVAILABLE with an empty
    /// `x-concord-primary`, so a client knows the write may be sent elsewhere.
    #[error("unavailable: {0}")]
    Fenced(String),
    /// The admin token or session token is missing, wrong or expired.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller is signed in but may not act for the user it named.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The thing to create exists already (a username that is taken).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// Too much at once: too many sign-in attempts for one username, or too many password
    /// hashes waiting. Nothing was done; the message says when to retry.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// Storage is shutting down or could not flush; the write was not acknowledged.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A broken invariant: corrupt record, storage failure, task panic.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ShopError {
    /// Shorthand for [`ShopError::InvalidArgument`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::InvalidArgument(msg.into())
    }

    /// Shorthand for [`ShopError::NotFound`].
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::NotFound(msg.into())
    }

    /// Shorthand for [`ShopError::FailedPrecondition`].
    pub fn precondition(msg: impl Into<String>) -> Self {
        Self::FailedPrecondition(msg.into())
    }

    /// Shorthand for [`ShopError::Internal`].
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::Internal(msg.into())
    }

    /// Whether the same request may succeed if simply retried (a client's retry loop uses
    /// this; a PlaceOrder retry must reuse its idempotency key).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<sled::Error> for ShopError {
    fn from(err: sled::Error) -> Self {
        match err {
            sled::Error::Io(io) => Self::Unavailable(format!("storage I/O: {io}")),
            other => Self::Internal(format!("storage: {other}")),
        }
    }
}

impl From<tokio::task::JoinError> for ShopError {
    fn from(err: tokio::task::JoinError) -> Self {
        Self::Internal(format!("storage task failed: {err}"))
    }
}

/// Lets domain code inside a sled transaction closure write `Err(ShopError::…)?`: the error
/// aborts the transaction and comes back out of `Store::transact` unchanged.
impl From<ShopError> for sled::transaction::ConflictableTransactionError<ShopError> {
    fn from(err: ShopError) -> Self {
        Self::Abort(err)
    }
}
