//! [`Tx`]: one sled transaction over the ledger's trees, through which every change is
//! written. It reads the head once, builds each new event from the account's state,
//! applies it through [`Head::apply`] and [`Account::apply`] (the same rules `verify`
//! replays), stores it, and writes the new head on [`Tx::commit`]. Anything refused
//! aborts the whole transaction, so nothing of a refused call is ever written.

use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::error::LedgerError;
use super::event::{event_hash, Event, EventKind};
use super::record;
use super::state::{Account, Head, Violation, MAX_SUPPLY};
use crate::policy::Stake;

/// Key of the head in the `meta` tree.
pub(super) const HEAD_KEY: &[u8] = b"head";

/// What a function run inside a sled transaction returns.
pub(super) type TxResult<T> = Result<T, ConflictableTransactionError<LedgerError>>;

/// Aborts the transaction with `e`.
pub(super) fn abort<T>(e: LedgerError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

/// One open transaction: buffers the head and the events it appends.
pub(super) struct Tx<'a> {
    accounts: &'a TransactionalTree,
    events: &'a TransactionalTree,
    meta: &'a TransactionalTree,
    /// The head as of the last appended event.
    pub(super) head: Head,
    appended: Vec<Event>,
    at_ms: u64,
}

impl<'a> Tx<'a> {
    /// Starts on the stored head.
    pub(super) fn begin(
        accounts: &'a TransactionalTree,
        events: &'a TransactionalTree,
        meta: &'a TransactionalTree,
    ) -> TxResult<Self> {
        let head = match meta.get(HEAD_KEY)? {
            Some(b) => record::decode_head(&b).map_err(ConflictableTransactionError::Abort)?,
            None => Head::default(),
        };
        Ok(Self {
            accounts,
            events,
            meta,
            head,
            appended: Vec::new(),
            at_ms: now_ms(),
        })
    }

    /// The stored account, if the node has one.
    pub(super) fn get(&self, node_id: &str) -> TxResult<Option<Account>> {
        match self.accounts.get(node_id.as_bytes())? {
            Some(b) => Ok(Some(
                record::decode_account(&b).map_err(ConflictableTransactionError::Abort)?,
            )),
            None => Ok(None),
        }
    }

    /// Stores `account` (after the events applied to it).
    pub(super) fn put(&self, account: &Account) -> TxResult<()> {
        self.accounts
            .insert(account.node_id.as_bytes(), record::encode_account(account))?;
        Ok(())
    }

    /// Appends an event of `kind` moving `amount` for `account`, which leaves the node at
    /// `trust_after_ppb`, and applies it to the head and the account. A change the rules
    /// refuse (a balance or total out of range, a balance below zero) aborts.
    pub(super) fn append(
        &mut self,
        account: &mut Account,
        kind: EventKind,
        amount: Stake,
        trust_after_ppb: u64,
        request_id: Option<&str>,
    ) -> TxResult<()> {
        let node_id = account.node_id.clone();
        let refuse = |v| ConflictableTransactionError::Abort(refusal(&node_id, v));
        let stake_after = account.balance_after(kind, amount).map_err(refuse)?;
        let mut e = Event {
            seq: self.head.seq + 1,
            kind,
            node_id: node_id.clone(),
            amount,
            stake_after,
            trust_after_ppb,
            request_id: request_id.map(str::to_string),
            at_ms: self.at_ms,
            prev_hash: self.head.hash.clone(),
            hash: String::new(),
        };
        e.hash = event_hash(&e);
        let mut head = self.head.clone();
        head.apply(&e).map_err(refuse)?;
        account.apply(&e).map_err(refuse)?;
        self.head = head;
        let bytes = record::encode_event(&e).map_err(ConflictableTransactionError::Abort)?;
        self.events.insert(&e.seq.to_be_bytes(), bytes)?;
        self.appended.push(e);
        Ok(())
    }

    /// Stores the new head; returns the events appended, in order.
    pub(super) fn commit(self) -> TxResult<Vec<Event>> {
        let bytes = record::encode_head(&self.head).map_err(ConflictableTransactionError::Abort)?;
        self.meta.insert(HEAD_KEY, bytes)?;
        Ok(self.appended)
    }
}

/// The error a caller gets when the rules refuse a change to `node_id`'s account.
fn refusal(node_id: &str, v: Violation) -> LedgerError {
    let node = concord::error::quote(node_id);
    match v {
        Violation::BalanceOverflow { stake, amount } => LedgerError::WouldOverflow(format!(
            "node {node} holds {stake} tokens; adding {amount} more would exceed the largest \
             balance {MAX_SUPPLY}"
        )),
        Violation::Negative { stake, amount } => LedgerError::InsufficientStake {
            node_id: node_id.to_string(),
            stake,
            requested: amount,
        },
        Violation::Totals(msg) => LedgerError::WouldOverflow(msg),
        // The write path builds events that follow; anything else means the stored
        // state (head or account) is not what the log says.
        other => LedgerError::Corrupt(format!(
            "a new event for node {node} breaks the ledger's rules: {other}"
        )),
    }
}

/// Wall-clock ms since the Unix epoch (informational, recorded in each event).
fn now_ms() -> u64 {
    u64::try_from(concord::clock::unix_ms()).unwrap_or(0)
}
