//! [`LedgerError`]: what went wrong in a ledger call, by what a caller can do about it.
//! Its gRPC code is decided once, in [`crate::error`].

use sled::transaction::TransactionError;

use crate::policy::{NodeId, Stake};

/// Errors of the ledger, by what a caller can do about them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LedgerError {
    /// Bad input in any ledger state (zero amount, above [`MAX_STAKE_PER_CALL`](super::MAX_STAKE_PER_CALL), empty
    /// id); fix the request.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The change would push a balance, a running total or the supply past
    /// [`MAX_SUPPLY`](super::MAX_SUPPLY); nothing was written. Depends on the ledger's state.
    #[error("would overflow: {0}")]
    WouldOverflow(String),
    /// The account does not exist.
    #[error("no account for node {}", concord::error::quote(.0))]
    NotFound(NodeId),
    /// [`Ledger::open_with_stake`](super::Ledger::open_with_stake) for a node that already has an account; nothing written.
    #[error("node {} already has an account; nothing staked", concord::error::quote(.0))]
    AccountExists(NodeId),
    /// Unstake larger than the balance: stakes never go negative.
    #[error("insufficient stake: node {} has {stake}, asked to withdraw {requested}", concord::error::quote(.node_id))]
    InsufficientStake {
        /// The node.
        node_id: NodeId,
        /// Its balance.
        stake: Stake,
        /// The amount asked for.
        requested: Stake,
    },
    /// The request id was already scored; nothing changed.
    #[error("request {} was already scored (event batch {seq})", concord::error::quote(.request_id))]
    AlreadyScored {
        /// The request.
        request_id: String,
        /// Head seq of the batch that scored it.
        seq: u64,
    },
    /// sled failed (I/O); may succeed later.
    #[error("ledger storage error: {0}")]
    Storage(String),
    /// A stored record does not decode; needs an operator.
    #[error("ledger corrupt: {0}")]
    Corrupt(String),
}

impl From<sled::Error> for LedgerError {
    fn from(e: sled::Error) -> Self {
        LedgerError::Storage(e.to_string())
    }
}

impl From<TransactionError<LedgerError>> for LedgerError {
    fn from(e: TransactionError<LedgerError>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => e.into(),
        }
    }
}
