//! [`Ledger`]: the sled-backed ledger and its operations — open, read, `stake`,
//! `unstake`, `score`. Each operation decides the amounts (policy) and writes the events
//! through one [`Tx`], which applies them with the rules of [`super::state`].

use std::path::Path;

use sled::transaction::{Transactional, TransactionalTree};
use tokio::sync::broadcast;

use super::error::LedgerError;
use super::event::{Event, EventKind};
use super::record;
use super::state::{next_trust_ppb, Account, Head, MAX_SUPPLY, TRUST_SCALE};
use super::tx::{abort, Tx, TxResult, HEAD_KEY};
use crate::policy::{
    below_minimum, slash_amount, slash_rate_bps, NodeId, ScoringParams, Stake, Trust,
};

/// Live-event fan-out buffer; a watcher that falls further behind is told it lagged and
/// re-reads from the log.
pub const EVENT_CHANNEL_CAPACITY: usize = 1024;
/// Largest page [`Ledger::events_page`] returns.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Largest amount one `Stake` call may deposit (10¹⁵ tokens). A deposit is meant to be a
/// node's skin in the game, not a way to reach the supply ceiling in one step; the bound
/// also keeps one deposit below 2⁵³, where the `stake` policy's `f64` weight is exact, and
/// leaves about 18 000 maximal deposits before [`MAX_SUPPLY`].
pub const MAX_STAKE_PER_CALL: Stake = 1_000_000_000_000_000;
/// Longest node id the ledger accepts, in bytes.
pub const MAX_NODE_ID_BYTES: usize = 256;
/// Longest request id `ReportOutcome` accepts, in bytes (the aggregator makes far shorter
/// ones); longer ones are rejected before any lookup.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

#[derive(Debug, Clone, PartialEq)]
pub struct ScoreChange {
    /// The node.
    pub node_id: NodeId,
    /// Whether its label matched the true label.
    pub correct: bool,
    /// Trust before.
    pub trust_before: Trust,
    /// Trust after.
    pub trust_after: Trust,
    /// Stake before.
    pub stake_before: Stake,
    /// Stake after.
    pub stake_after: Stake,
    /// Tokens minted (right answer).
    pub reward: Stake,
    /// Tokens burned (wrong answer).
    pub slashed: Stake,
    /// Ejected after this scoring.
    pub ejected: bool,
    /// This scoring caused the ejection.
    pub newly_ejected: bool,
}

/// An account after a stake/unstake, with the events written for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountChange {
    /// The account after the change.
    pub account: Account,
    /// `stake` (+ `rejoin`) or `unstake` (+ `eject`), in order.
    pub events: Vec<Event>,
}

/// The sled-backed ledger. Cheap to clone (sled handles are reference counted).
///
/// All methods block on disk I/O (flush); async callers use `spawn_blocking`.
#[derive(Clone)]
pub struct Ledger {
    pub(super) db: sled::Db,
    pub(super) accounts: sled::Tree,
    pub(super) events: sled::Tree,
    pub(super) meta: sled::Tree,
    pub(super) scored: sled::Tree,
    params: ScoringParams,
    events_tx: broadcast::Sender<Event>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Opens (or creates) the ledger at `path`.
    pub fn open(path: impl AsRef<Path>, params: ScoringParams) -> Result<Self, LedgerError> {
        let db = concord::storage::open_sled(&sled::Config::new().path(path.as_ref()))?;
        Self::with_db(db, params)
    }

    /// A ledger in a temporary sled db, deleted on drop (simulations, unit tests).
    pub fn temporary(params: ScoringParams) -> Result<Self, LedgerError> {
        let db = sled::Config::new().temporary(true).open()?;
        Self::with_db(db, params)
    }

    /// Opens the trees and migrates records still in the old JSON format (see
    /// `record.rs`); a JSON record that does not decode refuses the open.
    fn with_db(db: sled::Db, params: ScoringParams) -> Result<Self, LedgerError> {
        params.validate().map_err(LedgerError::InvalidArgument)?;
        let (events_tx, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        let ledger = Self {
            accounts: db.open_tree("accounts")?,
            events: db.open_tree("events")?,
            meta: db.open_tree("meta")?,
            scored: db.open_tree("scored")?,
            db,
            params,
            events_tx,
        };
        let migrated = record::migrate_json(&ledger.events, &ledger.accounts, &ledger.meta)
            .map_err(|e| {
                LedgerError::Corrupt(format!(
                    "cannot migrate the ledger from JSON to protobuf ({e}); nothing after that \
                     record was rewritten: restore the ledger directory from a backup, or move \
                     it aside to start an empty ledger"
                ))
            })?;
        if migrated > 0 {
            ledger.db.flush()?;
            tracing::info!(
                records = migrated,
                "ledger migrated from JSON to protobuf records"
            );
        }
        Ok(ledger)
    }

    /// The scoring knobs in force.
    pub fn params(&self) -> &ScoringParams {
        &self.params
    }

    /// Live feed of committed (and flushed) events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events_tx.subscribe()
    }

    /// Runs `f` in one transaction over all trees, flushes, publishes the new events.
    pub(super) fn transact<T>(
        &self,
        f: impl Fn(&mut Tx<'_>, &TransactionalTree) -> TxResult<T>,
    ) -> Result<(T, Vec<Event>), LedgerError> {
        let (out, events) = (&self.accounts, &self.events, &self.meta, &self.scored).transaction(
            |(accounts, events, meta, scored)| {
                let mut tx = Tx::begin(accounts, events, meta)?;
                let out = f(&mut tx, scored)?;
                let appended = tx.commit()?;
                Ok((out, appended))
            },
        )?;
        if !events.is_empty() {
            self.db.flush()?;
            for e in &events {
                // No receiver is fine: nobody is watching.
                let _ = self.events_tx.send(e.clone());
            }
        }
        Ok((out, events))
    }

    /// The account, if the node was ever seen.
    pub fn account(&self, node_id: &str) -> Result<Option<Account>, LedgerError> {
        self.accounts
            .get(node_id.as_bytes())?
            .map(|b| record::decode_account(&b))
            .transpose()
    }

    /// The accounts of `node_ids`, in order; `None` for a node that never staked. Reads
    /// only: no transaction, no flush, nothing opened (an unknown node gets no account).
    pub fn accounts(&self, node_ids: &[NodeId]) -> Result<Vec<Option<Account>>, LedgerError> {
        node_ids.iter().map(|id| self.account(id)).collect()
    }

    /// Every account, ordered by node id.
    pub fn list_accounts(&self) -> Result<Vec<Account>, LedgerError> {
        self.accounts
            .iter()
            .map(|r| {
                let (_, v) = r?;
                record::decode_account(&v)
            })
            .collect()
    }

    /// The current head (seq 0 when empty).
    pub fn head(&self) -> Result<Head, LedgerError> {
        match self.meta.get(HEAD_KEY)? {
            Some(b) => record::decode_head(&b),
            None => Ok(Head::default()),
        }
    }

    /// Up to `limit` events with `seq > after_seq`, optionally only one node's; plus the
    /// `after_seq` to ask for the next page (`None` at the end of the log).
    pub fn events_page(
        &self,
        after_seq: u64,
        limit: usize,
        node_id: Option<&str>,
    ) -> Result<(Vec<Event>, Option<u64>), LedgerError> {
        let limit = limit.clamp(1, MAX_PAGE_SIZE);
        let start = after_seq.saturating_add(1).to_be_bytes();
        let mut page = Vec::new();
        let mut last = after_seq;
        for r in self.events.range(start..) {
            let (_, v) = r?;
            let e = record::decode_event(&v)?;
            last = e.seq;
            if node_id.is_some_and(|n| n != e.node_id) {
                continue;
            }
            page.push(e);
            if page.len() == limit {
                break;
            }
        }
        let more = self
            .events
            .range(last.saturating_add(1).to_be_bytes()..)
            .next()
            .is_some();
        Ok((page, more.then_some(last)))
    }

    /// Whether `request_id` was scored, and by which batch (head seq).
    pub fn scored_seq(&self, request_id: &str) -> Result<Option<u64>, LedgerError> {
        Ok(self
            .scored
            .get(request_id.as_bytes())?
            .map(|b| seq_from(&b)))
    }

    /// Node adds `amount` tokens to its own stake, opening its account if it has none (the
    /// only way an account is ever opened). Rejoins consensus if it was ejected and is now
    /// at or above the minimum; a new account whose first stake is below the minimum opens
    /// ejected.
    ///
    /// `amount` must be in `1..=MAX_STAKE_PER_CALL` ([`LedgerError::InvalidArgument`]);
    /// if the account, a total or the supply would pass [`MAX_SUPPLY`] the call fails
    /// with [`LedgerError::WouldOverflow`] and writes nothing.
    pub fn stake(&self, node_id: &str, amount: Stake) -> Result<AccountChange, LedgerError> {
        self.deposit(node_id, amount, false)
    }

    /// [`Ledger::stake`] only for a node without an account: a node's start-up stake,
    /// paid at most once however often it restarts or retries. A node that already has
    /// an account gets [`LedgerError::AccountExists`] and nothing is written.
    pub fn open_with_stake(
        &self,
        node_id: &str,
        amount: Stake,
    ) -> Result<AccountChange, LedgerError> {
        self.deposit(node_id, amount, true)
    }

    fn deposit(
        &self,
        node_id: &str,
        amount: Stake,
        only_if_new: bool,
    ) -> Result<AccountChange, LedgerError> {
        check_node_id(node_id)?;
        if amount == 0 || amount > MAX_STAKE_PER_CALL {
            return Err(LedgerError::InvalidArgument(format!(
                "stake amount must be in 1..={MAX_STAKE_PER_CALL} tokens per call, got {amount}"
            )));
        }
        let min = self.params.min_stake;
        let result = self.transact(|tx, _| {
            let (mut a, opened) = match tx.get(node_id)? {
                Some(_) if only_if_new => {
                    return abort(LedgerError::AccountExists(node_id.to_string()))
                }
                Some(a) => (a, false),
                None => (Account::unopened(node_id), true),
            };
            let trust = a.trust_ppb;
            tx.append(&mut a, EventKind::Stake, amount, trust, None)?;
            match (a.ejected, below_minimum(a.stake, min)) {
                (true, false) => tx.append(&mut a, EventKind::Rejoin, 0, trust, None)?,
                // Only a new account can be below the minimum and not yet ejected.
                (false, true) => tx.append(&mut a, EventKind::Eject, 0, trust, None)?,
                _ => {}
            }
            tx.put(&a)?;
            Ok((a, opened))
        });
        let ((account, opened), events) = result.inspect_err(|e| {
            if matches!(e, LedgerError::WouldOverflow(_)) {
                tracing::warn!(node = node_id, amount, error = %e, "stake refused: would overflow");
            }
        })?;
        if opened {
            tracing::info!(
                node = node_id,
                stake = account.stake,
                ejected = account.ejected,
                "stake account opened"
            );
        }
        log_events(&events);
        Ok(AccountChange { account, events })
    }

    /// Node withdraws `amount` of its own stake; never below zero. Ejects the node if the
    /// balance falls under the minimum.
    pub fn unstake(&self, node_id: &str, amount: Stake) -> Result<AccountChange, LedgerError> {
        check_node_id(node_id)?;
        if amount == 0 {
            return Err(LedgerError::InvalidArgument(
                "unstake amount must be positive".into(),
            ));
        }
        let min = self.params.min_stake;
        let (account, events) = self.transact(|tx, _| {
            let Some(mut a) = tx.get(node_id)? else {
                return abort(LedgerError::NotFound(node_id.to_string()));
            };
            let trust = a.trust_ppb;
            tx.append(&mut a, EventKind::Unstake, amount, trust, None)?;
            if !a.ejected && below_minimum(a.stake, min) {
                tx.append(&mut a, EventKind::Eject, 0, trust, None)?;
            }
            tx.put(&a)?;
            Ok(a)
        })?;
        log_events(&events);
        Ok(AccountChange { account, events })
    }

    /// Scores one request: each `(node, correct)` once (duplicates ignored), all in one
    /// transaction together with the `scored` marker. A node without an account (it never
    /// staked; only `mean` asks it) is skipped: nothing to reward or slash, and no account
    /// is opened for it. A second call for the same request fails with
    /// [`LedgerError::AlreadyScored`] and changes nothing.
    pub fn score(
        &self,
        request_id: &str,
        outcomes: &[(NodeId, bool)],
    ) -> Result<Vec<ScoreChange>, LedgerError> {
        if request_id.is_empty() {
            return Err(LedgerError::InvalidArgument("empty request id".into()));
        }
        let mut seen = std::collections::HashSet::new();
        let outcomes: Vec<&(NodeId, bool)> = outcomes
            .iter()
            .filter(|(n, _)| seen.insert(n.as_str()))
            .collect();
        for (n, _) in &outcomes {
            check_node_id(n)?;
        }
        let p = self.params;
        let (changes, events) = self.transact(|tx, scored| {
            if let Some(b) = scored.get(request_id.as_bytes())? {
                return abort(LedgerError::AlreadyScored {
                    request_id: request_id.to_string(),
                    seq: seq_from(&b),
                });
            }
            let mut changes = Vec::with_capacity(outcomes.len());
            for (node_id, correct) in outcomes.iter().map(|o| (&o.0, o.1)) {
                let Some(mut a) = tx.get(node_id)? else {
                    continue;
                };
                let trust_before = a.trust();
                let stake_before = a.stake;
                let trust = next_trust_ppb(a.trust_ppb, correct, p.alpha);
                let (kind, amount) = if correct {
                    // Capped at what may still be minted, so nothing can wrap or abort
                    // the scoring; a.stake ≤ supply, so this also bounds the account.
                    let reward = p
                        .reward
                        .min(tx.head.totals.mint_headroom())
                        .min(MAX_SUPPLY - a.stake);
                    if reward < p.reward {
                        tracing::warn!(
                            node = %node_id,
                            reward,
                            configured = p.reward,
                            "reward capped: the ledger is at its supply ceiling"
                        );
                    }
                    (EventKind::Reward, reward)
                } else {
                    // The rate escalates with the record before this answer (rule v2).
                    let rate = slash_rate_bps(&p, a.right, a.wrong);
                    (EventKind::Slash, slash_amount(a.stake, rate))
                };
                tx.append(&mut a, kind, amount, trust, Some(request_id))?;
                let newly_ejected = !a.ejected && below_minimum(a.stake, p.min_stake);
                if newly_ejected {
                    tx.append(&mut a, EventKind::Eject, 0, trust, Some(request_id))?;
                }
                tx.put(&a)?;
                changes.push(ScoreChange {
                    node_id: node_id.clone(),
                    correct,
                    trust_before,
                    trust_after: a.trust(),
                    stake_before,
                    stake_after: a.stake,
                    reward: if correct { amount } else { 0 },
                    slashed: if correct { 0 } else { amount },
                    ejected: a.ejected,
                    newly_ejected,
                });
            }
            scored.insert(request_id.as_bytes(), &tx.head.seq.to_be_bytes())?;
            Ok(changes)
        })?;
        if events.is_empty() {
            // Nobody answered in time: the marker still has to be durable.
            self.db.flush()?;
        }
        log_events(&events);
        Ok(changes)
    }
}

/// A big-endian u64 key or value (the `events` keys, the `scored` values).
pub(super) fn seq_from(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[8 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    u64::from_be_bytes(buf)
}

/// `Ok` for a node id of 1..=[`MAX_NODE_ID_BYTES`] bytes.
pub fn check_node_id(node_id: &str) -> Result<(), LedgerError> {
    check_id_len("node id", node_id, MAX_NODE_ID_BYTES)
}

/// `Ok` for a request id of 1..=[`MAX_REQUEST_ID_BYTES`] bytes.
pub fn check_request_id(request_id: &str) -> Result<(), LedgerError> {
    check_id_len("request_id", request_id, MAX_REQUEST_ID_BYTES)
}

/// `Ok` for an id of 1..=`max` bytes; the error names the id by `what` (never echoes it).
fn check_id_len(what: &str, id: &str, max: usize) -> Result<(), LedgerError> {
    if id.is_empty() || id.len() > max {
        return Err(LedgerError::InvalidArgument(format!(
            "{what} must be 1..={max} bytes, got {}",
            id.len()
        )));
    }
    Ok(())
}

fn log_events(events: &[Event]) {
    for e in events {
        let trust = e.trust_after_ppb as f64 / TRUST_SCALE as f64;
        match e.kind {
            EventKind::Slash => {
                tracing::info!(node = %e.node_id, seq = e.seq, amount = e.amount, stake = e.stake_after, trust, request = ?e.request_id, "node slashed")
            }
            EventKind::Eject => {
                tracing::info!(node = %e.node_id, seq = e.seq, stake = e.stake_after, "node ejected from consensus")
            }
            EventKind::Rejoin => {
                tracing::info!(node = %e.node_id, seq = e.seq, stake = e.stake_after, "node rejoined consensus")
            }
            _ => {
                tracing::debug!(node = %e.node_id, seq = e.seq, kind = e.kind.as_str(), amount = e.amount, stake = e.stake_after, "ledger event")
            }
        }
    }
}
