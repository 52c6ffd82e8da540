//! The stake ledger: accounts plus an append-only, hash-chained event log in `sled`.
//!
//! # Layout
//!
//! | tree       | key                    | value                                  |
//! |------------|------------------------|----------------------------------------|
//! | `accounts` | node id (UTF-8)        | JSON [`Account`]                       |
//! | `events`   | `seq` as big-endian u64| JSON [`Event`]                         |
//! | `meta`     | `head`                 | JSON [`Head`] (last seq, hash, totals) |
//! | `scored`   | request id (UTF-8)     | `seq` (BE u64) of the scoring batch    |
//!
//! Every change — the account records, the new events, the head and (for an outcome) the
//! `scored` marker — is written in **one** sled transaction, and the db is flushed before
//! the call returns. So an acknowledged update survives a crash (`kill -9`), and a request
//! is scored at most once even under concurrent `ReportOutcome` calls: sled serialises
//! the conflicting transactions on the `head`/`scored` keys and the loser sees the marker.
//!
//! # Events and the hash chain
//!
//! Kinds: `stake`, `unstake`, `reward`, `slash`, `eject`, `rejoin`, and the legacy
//! `grant`. Events are numbered `1, 2, 3, …` without gaps.
//!
//! # Accounts are opened by staking, never on first sight
//!
//! A node id the ledger has never seen has **no account**: no stake, no trust, no weight
//! under `trust` and `stake` (the aggregator does not even ask it), and scoring skips it.
//! The only way in is a `Stake` — which the Staking service accepts only with that node's
//! credential — and the account counts once that stake reaches `min_stake` (a smaller
//! first stake opens the account already ejected). So registering new node ids mints
//! nothing and buys no influence (a sybil attack costs real deposits, and every deposit
//! is recorded). `concord node --initial-stake N` is how a node pays its own start-up
//! stake, once ([`Ledger::open_with_stake`] refuses an account that exists).
//!
//! `grant` (the default stake minted for a node on first sight) is no longer written;
//! ledgers written before still verify — a `grant` may only be an account's first
//! event — and count it in `minted`.
//! `hash = SHA-256(canonical bytes of every other field, including prev_hash)` and
//! `prev_hash` is the previous event's hash (64 zeros for event 1). See [`event_hash`].
//!
//! # Token identity (checked by [`Ledger::verify`])
//!
//! All amounts are `u64` tokens; trust is stored as an integer in parts per billion so the
//! ledger contains no floating-point value and replays are exact.
//!
//! ```text
//! minted    = Σ grant + Σ reward          (tokens created by the ledger; grant: legacy)
//! burned    = Σ slash                      (tokens destroyed by the ledger)
//! deposited = Σ stake,  withdrawn = Σ unstake   (tokens moved in/out by nodes)
//!
//! Σ account.stake  =  minted + deposited − withdrawn − burned
//! ```
//!
//! # Amounts never overflow silently
//!
//! Every balance, every running total and the supply `Σ account.stake` stay within
//! [`MAX_SUPPLY`] (`u64::MAX`, what the wire's `uint64` fields can carry), and every
//! addition is checked *inside* the transaction before anything is written:
//! - `Stake` of more than [`MAX_STAKE_PER_CALL`] is refused up front
//!   ([`LedgerError::InvalidArgument`]: wrong in any ledger state). A `Stake` that fits
//!   the per-call bound but would push the account, a running total or the supply past
//!   [`MAX_SUPPLY`] aborts the transaction ([`LedgerError::WouldOverflow`],
//!   `FAILED_PRECONDITION`: it depends on the ledger's state, like an unstake above the
//!   balance, and may succeed after unstakes or slashes). Nothing is written either way,
//!   not even a new account.
//! - A reward is capped at the headroom left under [`MAX_SUPPLY`] for the supply and for
//!   the cumulative `minted` total (possibly 0, logged as a warning) instead of wrapping,
//!   panicking or failing the scoring; the event records the amount actually minted, so
//!   the books still balance. Once `minted` reaches the ceiling no reward is paid again.
//! - An unstake or slash that would push a *cumulative* total (withdrawn, burned) past
//!   `u64::MAX` aborts with [`LedgerError::WouldOverflow`]; that takes more
//!   than 1.8·10¹⁹ tokens moved, and is a limit, not a silent error.
//! - [`Ledger::verify`] replays the totals with the same checks, so a log whose totals
//!   ever left that range (e.g. one written before these checks) is reported, not
//!   capped.
//!
//! # Scoring rule versions
//!
//! The amount of a `reward` or `slash` is decided by the scoring rule in force when it was
//! written (see [`crate::policy`]): v1 burned a flat `slash_bps` share, v2 (since the
//! adaptive-liar simulations) escalates the share with the node's error rate. Events record
//! the amounts actually moved, and `verify` replays balances, totals and the chain from
//! those amounts — not the knobs, which are flags of the aggregator and not stored — so a
//! ledger written under v1 still verifies under v2, unchanged.
//!
//! `verify` also checks, for every event, that the hash recomputes, that it links to its
//! predecessor, that `stake_after` equals the replayed balance (no step below zero), that
//! eject/rejoin alternate, and finally that every account record equals its replayed
//! state and the stored totals equal the replayed totals. It reports the first
//! inconsistency found, in that order.
//!
//! # Eject rule
//!
//! After a slash or unstake leaves `stake < min_stake`, an `eject` event follows in the
//! same transaction; so does a first `stake` below the minimum (the account opens
//! ejected). After a `stake` call lifts an ejected node to `≥ min_stake`, a `rejoin`
//! event follows. Rewards alone never rejoin a node.
//!
//! Non-goals: the `scored` tree is never pruned (one small key per scored request);
//! there is no multi-node replication of the ledger. The chain detects edits, deletions
//! and reordering, but someone with write access who rewrites an event *and* re-hashes
//! every later one produces a valid chain with a different head: compare the head hash
//! `VerifyLedger` reports with one recorded earlier (anchoring) to catch that.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, Transactional, TransactionalTree,
};
use tokio::sync::broadcast;

use crate::policy::{
    below_minimum, slash_amount, slash_rate_bps, update_trust, NodeId, ScoringParams, Stake, Trust,
    INITIAL_TRUST,
};

/// Trust is persisted as `round(t · TRUST_SCALE)`: exact integers in the ledger.
pub const TRUST_SCALE: u64 = 1_000_000_000;
/// `prev_hash` of the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Live-event fan-out buffer; a watcher that falls further behind is told it lagged and
/// re-reads from the log.
pub const EVENT_CHANNEL_CAPACITY: usize = 1024;
/// Largest page [`Ledger::events_page`] returns.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Ceiling of every balance, running total and of the supply `Σ account.stake`: the
/// wire carries them as `uint64`, so nothing above this may ever be stored.
pub const MAX_SUPPLY: Stake = u64::MAX;
/// Largest amount one `Stake` call may deposit (10¹⁵ tokens). A deposit is meant to be a
/// node's skin in the game, not a way to reach the supply ceiling in one step; the bound
/// also keeps one deposit below 2⁵³, where the `stake` policy's `f64` weight is exact, and
/// leaves about 18 000 maximal deposits before [`MAX_SUPPLY`].
pub const MAX_STAKE_PER_CALL: Stake = 1_000_000_000_000_000;

const HEAD_KEY: &[u8] = b"head";

/// Errors of the ledger, by what a caller can do about them.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LedgerError {
    /// Bad input in any ledger state (zero amount, above [`MAX_STAKE_PER_CALL`], empty
    /// id); fix the request.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The change would push a balance, a running total or the supply past
    /// [`MAX_SUPPLY`]; nothing was written. Depends on the ledger's state.
    #[error("would overflow: {0}")]
    WouldOverflow(String),
    /// The account does not exist.
    #[error("no account for node {}", concord::error::quote(.0))]
    NotFound(NodeId),
    /// [`Ledger::open_with_stake`] for a node that already has an account; nothing written.
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

type TxResult<T> = Result<T, ConflictableTransactionError<LedgerError>>;

/// A node's balance sheet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The node.
    pub node_id: NodeId,
    /// Current stake in tokens.
    pub stake: Stake,
    /// Trust in parts per billion (see [`Account::trust`]).
    pub trust_ppb: u64,
    /// Out of the weighted consensus until it stakes back above the minimum.
    pub ejected: bool,
    /// Scored answers that were right.
    pub right: u64,
    /// Scored answers that were wrong.
    pub wrong: u64,
    /// Seq of the last event that touched this account.
    pub last_seq: u64,
}

impl Account {
    /// Trust as a float in `[0, 1]`.
    pub fn trust(&self) -> Trust {
        self.trust_ppb as f64 / TRUST_SCALE as f64
    }

    /// The state of an account before its first event: nothing staked, trust 0.5. Not
    /// stored until an event (the first `stake`) is appended for it.
    fn unopened(node_id: &str) -> Self {
        Self {
            node_id: node_id.to_string(),
            stake: 0,
            trust_ppb: trust_to_ppb(INITIAL_TRUST),
            ejected: false,
            right: 0,
            wrong: 0,
            last_seq: 0,
        }
    }
}

/// Converts a float trust to the stored integer form.
pub fn trust_to_ppb(t: Trust) -> u64 {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    // In [0, 1e9]: the cast cannot truncate.
    (t * TRUST_SCALE as f64).round() as u64
}

/// The EMA step on the stored integer: [`update_trust`] rounded to ppb, but always at
/// least one ppb in the direction of the move, so a long run of wrong (right) answers
/// reaches exactly 0 (1) instead of stalling on a rounding fixpoint.
pub fn next_trust_ppb(trust_ppb: u64, correct: bool, alpha: f64) -> u64 {
    let old = trust_ppb.min(TRUST_SCALE);
    let new = trust_to_ppb(update_trust(
        old as f64 / TRUST_SCALE as f64,
        correct,
        alpha,
    ));
    match (correct, new == old) {
        (true, true) if old < TRUST_SCALE => old + 1,
        (false, true) if old > 0 => old - 1,
        _ => new,
    }
}

/// What an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Legacy: the default stake minted for a node on first sight. No longer written
    /// (accounts open with a credentialed `Stake`); kept so older ledgers still verify.
    Grant,
    /// Node deposited tokens.
    Stake,
    /// Node withdrew tokens.
    Unstake,
    /// Right answer: tokens minted.
    Reward,
    /// Wrong answer: tokens burned.
    Slash,
    /// Fell below the minimum stake.
    Eject,
    /// Staked back to at least the minimum.
    Rejoin,
}

impl EventKind {
    /// Wire/log name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Grant => "grant",
            EventKind::Stake => "stake",
            EventKind::Unstake => "unstake",
            EventKind::Reward => "reward",
            EventKind::Slash => "slash",
            EventKind::Eject => "eject",
            EventKind::Rejoin => "rejoin",
        }
    }
}

/// One entry of the append-only log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log, from 1, no gaps.
    pub seq: u64,
    /// What happened.
    pub kind: EventKind,
    /// Whose account.
    pub node_id: NodeId,
    /// Tokens moved (0 for eject/rejoin).
    pub amount: Stake,
    /// Balance right after this event.
    pub stake_after: Stake,
    /// Trust (ppb) right after this event.
    pub trust_after_ppb: u64,
    /// The scored request, for reward/slash (and the eject they cause).
    pub request_id: Option<String>,
    /// Wall-clock time of the commit, ms since the Unix epoch (informational).
    pub at_ms: u64,
    /// Hash of event `seq − 1`.
    pub prev_hash: String,
    /// SHA-256 of this event, see [`event_hash`].
    pub hash: String,
}

impl Event {
    /// Trust after this event as a float in `[0, 1]`.
    pub fn trust_after(&self) -> Trust {
        self.trust_after_ppb as f64 / TRUST_SCALE as f64
    }
}

/// Running totals, kept in the head so `verify` can check them against a replay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Σ grant (legacy ledgers only; 0 in a ledger opened since grants ended).
    #[serde(default)]
    pub granted: u64,
    /// Σ reward.
    pub rewarded: u64,
    /// Σ slash.
    pub burned: u64,
    /// Σ stake.
    pub deposited: u64,
    /// Σ unstake.
    pub withdrawn: u64,
}

impl Totals {
    /// `granted + rewarded`.
    pub fn minted(&self) -> u128 {
        u128::from(self.granted) + u128::from(self.rewarded)
    }

    /// `minted + deposited − withdrawn − burned`: what Σ stakes must equal.
    pub fn expected_stake_sum(&self) -> i128 {
        self.minted() as i128 + i128::from(self.deposited)
            - i128::from(self.withdrawn)
            - i128::from(self.burned)
    }

    /// The supply `Σ account.stake` these totals imply; `None` outside `0..=u64::MAX`
    /// (never for totals the ledger built: every addition is range-checked).
    pub fn supply(&self) -> Option<Stake> {
        u64::try_from(self.expected_stake_sum()).ok()
    }

    /// Tokens that may still be minted without any total or the supply passing
    /// [`MAX_SUPPLY`]: what a reward is capped at.
    pub fn mint_headroom(&self) -> Stake {
        let minted = u64::try_from(self.minted()).unwrap_or(MAX_SUPPLY);
        let supply = self.supply().unwrap_or(MAX_SUPPLY);
        (MAX_SUPPLY - self.rewarded)
            .min(MAX_SUPPLY.saturating_sub(minted))
            .min(MAX_SUPPLY.saturating_sub(supply))
    }

    /// Adds one event's amount, refusing (and leaving `self` unchanged) if a running
    /// total, `minted` or the supply would leave `0..=MAX_SUPPLY`.
    fn add(&mut self, kind: EventKind, amount: u64) -> Result<(), LedgerError> {
        let mut next = *self;
        let (slot, name) = match kind {
            EventKind::Grant => (&mut next.granted, "granted"),
            EventKind::Reward => (&mut next.rewarded, "rewarded"),
            EventKind::Slash => (&mut next.burned, "burned"),
            EventKind::Stake => (&mut next.deposited, "deposited"),
            EventKind::Unstake => (&mut next.withdrawn, "withdrawn"),
            EventKind::Eject | EventKind::Rejoin => return Ok(()),
        };
        *slot = slot.checked_add(amount).ok_or_else(|| {
            LedgerError::WouldOverflow(format!(
                "total {name} {slot} + {amount} would exceed {MAX_SUPPLY}"
            ))
        })?;
        if next.minted() > u128::from(MAX_SUPPLY) {
            return Err(LedgerError::WouldOverflow(format!(
                "total minted {} + {amount} would exceed {MAX_SUPPLY}",
                self.minted()
            )));
        }
        if next.supply().is_none() {
            return Err(LedgerError::WouldOverflow(format!(
                "{} {amount} would take the total stake from {} out of 0..={MAX_SUPPLY}",
                kind.as_str(),
                self.expected_stake_sum()
            )));
        }
        *self = next;
        Ok(())
    }
}

/// The tip of the chain plus totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// Seq of the last event (0 when empty).
    pub seq: u64,
    /// Hash of the last event ([`GENESIS_HASH`] when empty).
    pub hash: String,
    /// Running totals.
    pub totals: Totals,
}

impl Default for Head {
    fn default() -> Self {
        Self {
            seq: 0,
            hash: GENESIS_HASH.to_string(),
            totals: Totals::default(),
        }
    }
}

/// Per-node result of scoring one request.
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

/// Result of [`Ledger::verify`].
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyReport {
    /// Events read.
    pub events_checked: u64,
    /// Accounts read.
    pub accounts_checked: u64,
    /// The stored head.
    pub head: Head,
    /// Totals recomputed from the events.
    pub replayed: Totals,
    /// Σ account stakes as stored.
    pub stake_sum: u128,
    /// Σ balances replayed from the events.
    pub replayed_stake_sum: u128,
    /// The first problem found; `None` means the ledger is consistent.
    pub first_inconsistency: Option<Inconsistency>,
}

impl VerifyReport {
    /// True when no inconsistency was found.
    pub fn ok(&self) -> bool {
        self.first_inconsistency.is_none()
    }
}

/// Where the ledger stopped adding up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inconsistency {
    /// The offending event, if the problem is in the log.
    pub seq: Option<u64>,
    /// The offending account, if any.
    pub node_id: Option<NodeId>,
    /// Human-readable description.
    pub message: String,
}

/// Canonical SHA-256 of an event: every field except `hash`, length-prefixed, in order.
pub fn event_hash(e: &Event) -> String {
    fn field(h: &mut Sha256, bytes: &[u8]) {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    let mut h = Sha256::new();
    field(&mut h, b"concord.stake.event.v1");
    field(&mut h, &e.seq.to_be_bytes());
    field(&mut h, e.kind.as_str().as_bytes());
    field(&mut h, e.node_id.as_bytes());
    field(&mut h, &e.amount.to_be_bytes());
    field(&mut h, &e.stake_after.to_be_bytes());
    field(&mut h, &e.trust_after_ppb.to_be_bytes());
    match &e.request_id {
        Some(r) => {
            field(&mut h, b"1");
            field(&mut h, r.as_bytes());
        }
        None => field(&mut h, b"0"),
    }
    field(&mut h, &e.at_ms.to_be_bytes());
    field(&mut h, e.prev_hash.as_bytes());
    hex::encode(h.finalize())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, LedgerError> {
    serde_json::from_slice(bytes).map_err(|e| LedgerError::Corrupt(format!("{what}: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, LedgerError> {
    serde_json::to_vec(value).map_err(|e| LedgerError::Corrupt(format!("encode: {e}")))
}

/// One open transaction: buffers the head and the events it appends.
struct Tx<'a> {
    accounts: &'a TransactionalTree,
    events: &'a TransactionalTree,
    meta: &'a TransactionalTree,
    head: Head,
    appended: Vec<Event>,
    at_ms: u64,
}

impl<'a> Tx<'a> {
    fn begin(
        accounts: &'a TransactionalTree,
        events: &'a TransactionalTree,
        meta: &'a TransactionalTree,
    ) -> TxResult<Self> {
        let head = match meta.get(HEAD_KEY)? {
            Some(b) => decode("head", &b).map_err(ConflictableTransactionError::Abort)?,
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

    fn get(&self, node_id: &str) -> TxResult<Option<Account>> {
        match self.accounts.get(node_id.as_bytes())? {
            Some(b) => Ok(Some(
                decode("account", &b).map_err(ConflictableTransactionError::Abort)?,
            )),
            None => Ok(None),
        }
    }

    fn put(&self, account: &Account) -> TxResult<()> {
        let bytes = encode(account).map_err(ConflictableTransactionError::Abort)?;
        self.accounts.insert(account.node_id.as_bytes(), bytes)?;
        Ok(())
    }

    /// Appends an event describing `account`'s state *after* the change.
    fn append(
        &mut self,
        kind: EventKind,
        account: &mut Account,
        amount: Stake,
        request_id: Option<&str>,
    ) -> TxResult<()> {
        self.head
            .totals
            .add(kind, amount)
            .map_err(ConflictableTransactionError::Abort)?;
        let seq = self.head.seq + 1;
        account.last_seq = seq;
        let mut e = Event {
            seq,
            kind,
            node_id: account.node_id.clone(),
            amount,
            stake_after: account.stake,
            trust_after_ppb: account.trust_ppb,
            request_id: request_id.map(str::to_string),
            at_ms: self.at_ms,
            prev_hash: self.head.hash.clone(),
            hash: String::new(),
        };
        e.hash = event_hash(&e);
        let bytes = encode(&e).map_err(ConflictableTransactionError::Abort)?;
        self.events.insert(&seq.to_be_bytes(), bytes)?;
        self.head.seq = seq;
        self.head.hash = e.hash.clone();
        self.appended.push(e);
        Ok(())
    }

    fn commit(self) -> TxResult<Vec<Event>> {
        let bytes = encode(&self.head).map_err(ConflictableTransactionError::Abort)?;
        self.meta.insert(HEAD_KEY, bytes)?;
        Ok(self.appended)
    }
}

fn abort<T>(e: LedgerError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

/// The sled-backed ledger. Cheap to clone (sled handles are reference counted).
///
/// All methods block on disk I/O (flush); async callers use `spawn_blocking`.
#[derive(Clone)]
pub struct Ledger {
    db: sled::Db,
    accounts: sled::Tree,
    events: sled::Tree,
    meta: sled::Tree,
    scored: sled::Tree,
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

    fn with_db(db: sled::Db, params: ScoringParams) -> Result<Self, LedgerError> {
        params.validate().map_err(LedgerError::InvalidArgument)?;
        let (events_tx, _) = broadcast::channel(EVENT_CHANNEL_CAPACITY);
        Ok(Self {
            accounts: db.open_tree("accounts")?,
            events: db.open_tree("events")?,
            meta: db.open_tree("meta")?,
            scored: db.open_tree("scored")?,
            db,
            params,
            events_tx,
        })
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
    fn transact<T>(
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
            .map(|b| decode("account", &b))
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
                decode("account", &v)
            })
            .collect()
    }

    /// The current head (seq 0 when empty).
    pub fn head(&self) -> Result<Head, LedgerError> {
        match self.meta.get(HEAD_KEY)? {
            Some(b) => decode("head", &b),
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
            let e: Event = decode("event", &v)?;
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
            a.stake = match a.stake.checked_add(amount) {
                Some(s) => s,
                None => {
                    return abort(LedgerError::WouldOverflow(format!(
                        "node {node_id:?} holds {} tokens; staking {amount} more would exceed \
                         the largest balance {MAX_SUPPLY}",
                        a.stake
                    )))
                }
            };
            tx.append(EventKind::Stake, &mut a, amount, None)?;
            match (a.ejected, below_minimum(a.stake, min)) {
                (true, false) => {
                    a.ejected = false;
                    tx.append(EventKind::Rejoin, &mut a, 0, None)?;
                }
                // Only a new account can be below the minimum and not yet ejected.
                (false, true) => {
                    a.ejected = true;
                    tx.append(EventKind::Eject, &mut a, 0, None)?;
                }
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
            a.stake = match a.stake.checked_sub(amount) {
                Some(s) => s,
                None => {
                    return abort(LedgerError::InsufficientStake {
                        node_id: node_id.to_string(),
                        stake: a.stake,
                        requested: amount,
                    })
                }
            };
            tx.append(EventKind::Unstake, &mut a, amount, None)?;
            if !a.ejected && below_minimum(a.stake, min) {
                a.ejected = true;
                tx.append(EventKind::Eject, &mut a, 0, None)?;
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
                a.trust_ppb = next_trust_ppb(a.trust_ppb, correct, p.alpha);
                let (kind, amount) = if correct {
                    a.right += 1;
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
                    a.stake += reward;
                    (EventKind::Reward, reward)
                } else {
                    // The rate escalates with the record before this answer (rule v2).
                    let rate = slash_rate_bps(&p, a.right, a.wrong);
                    a.wrong += 1;
                    let slash = slash_amount(a.stake, rate);
                    a.stake -= slash;
                    (EventKind::Slash, slash)
                };
                tx.append(kind, &mut a, amount, Some(request_id))?;
                let newly_ejected = !a.ejected && below_minimum(a.stake, p.min_stake);
                if newly_ejected {
                    a.ejected = true;
                    tx.append(EventKind::Eject, &mut a, 0, Some(request_id))?;
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

    /// Recomputes the chain, the balances and the totals from the events; see module docs.
    pub fn verify(&self) -> Result<VerifyReport, LedgerError> {
        #[derive(Default)]
        struct Replayed {
            stake: Stake,
            trust_ppb: u64,
            ejected: bool,
            last_seq: u64,
        }
        let head = self.head()?;
        let mut report = VerifyReport {
            events_checked: 0,
            accounts_checked: 0,
            head: head.clone(),
            replayed: Totals::default(),
            stake_sum: 0,
            replayed_stake_sum: 0,
            first_inconsistency: None,
        };
        let fail = |seq: Option<u64>, node: Option<&str>, message: String| Inconsistency {
            seq,
            node_id: node.map(str::to_string),
            message,
        };
        let mut nodes: BTreeMap<NodeId, Replayed> = BTreeMap::new();
        let mut prev_hash = GENESIS_HASH.to_string();
        let mut expected_seq = 1u64;
        let mut problem: Option<Inconsistency> = None;
        for r in self.events.iter() {
            let (k, v) = r?;
            report.events_checked += 1;
            let key_seq = seq_from(&k);
            let e: Event = match decode("event", &v) {
                Ok(e) => e,
                Err(err) => {
                    problem = Some(fail(Some(key_seq), None, err.to_string()));
                    break;
                }
            };
            let at = Some(e.seq);
            let node = Some(e.node_id.as_str());
            if e.seq != key_seq || e.seq != expected_seq {
                problem = Some(fail(
                    Some(key_seq),
                    node,
                    format!(
                        "expected event {expected_seq}, found seq {} under key {key_seq}",
                        e.seq
                    ),
                ));
                break;
            }
            if e.prev_hash != prev_hash {
                problem = Some(fail(
                    at,
                    node,
                    "prev_hash does not link to the previous event".into(),
                ));
                break;
            }
            if event_hash(&e) != e.hash {
                problem = Some(fail(
                    at,
                    node,
                    "hash does not match the event's contents".into(),
                ));
                break;
            }
            if let Err(err) = report.replayed.add(e.kind, e.amount) {
                problem = Some(fail(
                    at,
                    node,
                    format!("replayed totals out of range: {err}"),
                ));
                break;
            }
            // An account opens with its first event: a `stake` (or, in a legacy ledger, a
            // `grant`); a `grant` never comes later.
            let fresh = !nodes.contains_key(&e.node_id);
            let opens = matches!(e.kind, EventKind::Grant | EventKind::Stake);
            if (fresh && !opens) || (!fresh && e.kind == EventKind::Grant) {
                problem = Some(fail(
                    at,
                    node,
                    format!(
                        "{} event {}",
                        e.kind.as_str(),
                        if fresh {
                            "before the account was opened"
                        } else {
                            "for an account already opened"
                        }
                    ),
                ));
                break;
            }
            if fresh {
                nodes.insert(
                    e.node_id.clone(),
                    Replayed {
                        trust_ppb: trust_to_ppb(INITIAL_TRUST),
                        ..Replayed::default()
                    },
                );
            }
            let n = nodes.entry(e.node_id.clone()).or_default();
            let step = match e.kind {
                EventKind::Grant | EventKind::Stake | EventKind::Reward => {
                    n.stake.checked_add(e.amount).ok_or("balance overflow")
                }
                EventKind::Unstake | EventKind::Slash => n
                    .stake
                    .checked_sub(e.amount)
                    .ok_or("balance would go negative"),
                EventKind::Eject if n.ejected => Err("eject of an ejected node"),
                EventKind::Rejoin if !n.ejected => Err("rejoin of a node that is not ejected"),
                EventKind::Eject | EventKind::Rejoin => Ok(n.stake),
            };
            match step {
                Ok(s) if s == e.stake_after => n.stake = s,
                Ok(s) => {
                    problem = Some(fail(
                        at,
                        node,
                        format!("stake_after {} but replay gives {s}", e.stake_after),
                    ));
                    break;
                }
                Err(msg) => {
                    problem = Some(fail(at, node, msg.to_string()));
                    break;
                }
            }
            match e.kind {
                EventKind::Eject => n.ejected = true,
                EventKind::Rejoin => n.ejected = false,
                _ => {}
            }
            if e.trust_after_ppb > TRUST_SCALE {
                problem = Some(fail(at, node, "trust above 1".into()));
                break;
            }
            n.trust_ppb = e.trust_after_ppb;
            n.last_seq = e.seq;
            prev_hash = e.hash;
            expected_seq += 1;
        }
        if problem.is_none() && (head.seq != expected_seq - 1 || head.hash != prev_hash) {
            problem = Some(fail(
                Some(head.seq),
                None,
                format!(
                    "head says seq {} but the log ends at {}",
                    head.seq,
                    expected_seq - 1
                ),
            ));
        }
        if problem.is_none() && head.totals != report.replayed {
            problem = Some(fail(
                None,
                None,
                format!(
                    "stored totals {:?} differ from replayed {:?}",
                    head.totals, report.replayed
                ),
            ));
        }
        report.replayed_stake_sum = nodes.values().map(|n| u128::from(n.stake)).sum();
        for r in self.accounts.iter() {
            let (k, v) = r?;
            report.accounts_checked += 1;
            let key = String::from_utf8_lossy(&k).into_owned();
            let a: Account = match decode("account", &v) {
                Ok(a) => a,
                Err(err) => {
                    problem.get_or_insert(fail(None, Some(&key), err.to_string()));
                    continue;
                }
            };
            report.stake_sum += u128::from(a.stake);
            if problem.is_some() {
                continue;
            }
            let msg = match nodes.remove(&a.node_id) {
                _ if a.node_id != key => Some(format!("record names {:?}", a.node_id)),
                None => Some("account has no events".to_string()),
                Some(n) if n.stake != a.stake => {
                    Some(format!("stake {} but events give {}", a.stake, n.stake))
                }
                Some(n)
                    if n.trust_ppb != a.trust_ppb
                        || n.ejected != a.ejected
                        || n.last_seq != a.last_seq =>
                {
                    Some("trust, ejected flag or last_seq differ from the events".into())
                }
                Some(_) => None,
            };
            if let Some(m) = msg {
                problem = Some(fail(None, Some(&key), m));
            }
        }
        if problem.is_none() {
            if let Some(id) = nodes.keys().next() {
                problem = Some(fail(None, Some(id), "events for a missing account".into()));
            }
        }
        if problem.is_none() && report.stake_sum as i128 != head.totals.expected_stake_sum() {
            problem = Some(fail(
                None,
                None,
                format!(
                    "Σ stakes {} ≠ minted {} + deposited {} − withdrawn {} − burned {}",
                    report.stake_sum,
                    head.totals.minted(),
                    head.totals.deposited,
                    head.totals.withdrawn,
                    head.totals.burned
                ),
            ));
        }
        report.first_inconsistency = problem;
        Ok(report)
    }
}

fn seq_from(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[8 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    u64::from_be_bytes(buf)
}

/// Longest node id the ledger accepts, in bytes.
pub const MAX_NODE_ID_BYTES: usize = 256;
/// Longest request id `ReportOutcome` accepts, in bytes (the aggregator makes far shorter
/// ones); longer ones are rejected before any lookup.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// `Ok` for a node id of 1..=[`MAX_NODE_ID_BYTES`] bytes.
pub fn check_node_id(node_id: &str) -> Result<(), LedgerError> {
    if node_id.is_empty() || node_id.len() > MAX_NODE_ID_BYTES {
        return Err(LedgerError::InvalidArgument(format!(
            "node id must be 1..={MAX_NODE_ID_BYTES} bytes, got {}",
            node_id.len()
        )));
    }
    Ok(())
}

/// `Ok` for a request id of 1..=[`MAX_REQUEST_ID_BYTES`] bytes.
pub fn check_request_id(request_id: &str) -> Result<(), LedgerError> {
    if request_id.is_empty() || request_id.len() > MAX_REQUEST_ID_BYTES {
        return Err(LedgerError::InvalidArgument(format!(
            "request_id must be 1..={MAX_REQUEST_ID_BYTES} bytes, got {}",
            request_id.len()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    /// Rule v1's flat 10 % slash: these tests check the ledger's mechanics with round
    /// numbers; the v2 rate itself is tested in `policy.rs` and `simulation.rs`.
    fn params() -> ScoringParams {
        ScoringParams {
            slash_bps: 1_000,
            escalation_bps: 0,
            ..ScoringParams::default()
        }
    }

    /// Opens each account the way a node does: by staking 1000 for itself.
    fn fund(l: &Ledger, nodes: &[&str]) {
        for n in nodes {
            l.stake(n, 1000).expect("stake");
        }
    }

    impl Ledger {
        /// Writes what the code before "no mint on first sight" wrote when it first saw a
        /// node: a `grant` of `amount` opening the account (a legacy ledger).
        fn legacy_grant(&self, node_id: &str, amount: Stake) -> Account {
            let (a, _) = self
                .transact(|tx, _| {
                    let mut a = Account::unopened(node_id);
                    a.stake = amount;
                    tx.append(EventKind::Grant, &mut a, amount, None)?;
                    tx.put(&a)?;
                    Ok(a)
                })
                .expect("legacy grant");
            a
        }
    }

    /// Attack (sybils): a node the ledger has never seen gets nothing — reading its
    /// standing or scoring its answers opens no account and mints nothing; only a stake
    /// opens it (ejected while below the minimum), and `open_with_stake` pays once.
    #[test]
    fn unknown_nodes_get_no_account() {
        let l = Ledger::temporary(params()).expect("open");
        let sybils: Vec<NodeId> = (0..100).map(|i| format!("sybil-{i}")).collect();
        assert!(l
            .accounts(&sybils)
            .expect("read")
            .iter()
            .all(Option::is_none));
        let outcomes: Vec<_> = sybils.iter().map(|n| (n.clone(), true)).collect();
        assert_eq!(l.score("r1", &outcomes).expect("score"), vec![]);
        assert_eq!(l.head().expect("head").seq, 0, "nothing written");
        assert!(l.list_accounts().expect("list").is_empty());

        // A first stake below the minimum opens the account ejected; more stake rejoins.
        let c = l.stake("n1", 50).expect("stake");
        let kinds: Vec<_> = c.events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, vec![EventKind::Stake, EventKind::Eject]);
        assert_eq!((c.account.stake, c.account.ejected), (50, true));
        assert_eq!(c.account.trust(), 0.5);
        let c = l.stake("n1", 50).expect("stake");
        assert!(!c.account.ejected, "{c:?}");

        // The start-up stake is paid once, whatever happens afterwards.
        let c = l.open_with_stake("n2", 1000).expect("open");
        assert_eq!((c.account.stake, c.events.len()), (1000, 1));
        let head = l.head().expect("head");
        assert_eq!(
            l.open_with_stake("n2", 1000),
            Err(LedgerError::AccountExists("n2".into()))
        );
        assert_eq!(
            l.head().expect("head"),
            head,
            "a refused open writes nothing"
        );
        let r = l.verify().expect("verify");
        assert!(r.ok(), "{:?}", r.first_inconsistency);
        assert_eq!((r.replayed.minted(), r.replayed.deposited), (0, 1100));
    }

    /// A ledger written before grants ended (accounts opened by `grant`) still verifies,
    /// keeps working, and counts its grants as minted; a `grant` anywhere but an
    /// account's first event is flagged.
    #[test]
    fn legacy_grants_still_verify() {
        let l = Ledger::temporary(params()).expect("open");
        l.legacy_grant("old", 1000);
        fund(&l, &["new"]);
        l.score("r", &[("old".into(), true), ("new".into(), false)])
            .expect("score");
        l.stake("old", 5).expect("stake");
        l.unstake("new", 100).expect("unstake");
        let r = l.verify().expect("verify");
        assert!(r.ok(), "{:?}", r.first_inconsistency);
        assert_eq!(r.replayed.granted, 1000);
        assert_eq!(r.replayed.minted(), 1010);
        assert_eq!(r.stake_sum, 1015 + 800);
        // A grant for an account that is already open is not something the old code wrote.
        l.legacy_grant("new", 1);
        let bad = l
            .verify()
            .expect("verify")
            .first_inconsistency
            .expect("flagged");
        assert!(bad.message.contains("already opened"), "{bad:?}");
    }

    /// Reward and slash follow the formula; trust follows the EMA.
    #[test]
    fn scoring_applies_formula() {
        let l = Ledger::temporary(params()).expect("open");
        fund(&l, &["good", "bad"]);
        let c = l
            .score(
                "r1",
                &[
                    ("good".into(), true),
                    ("bad".into(), false),
                    ("good".into(), false),
                ],
            )
            .expect("score");
        assert_eq!(c.len(), 2, "duplicate node scored once");
        assert_eq!((c[0].stake_after, c[0].reward, c[0].slashed), (1010, 10, 0));
        assert!((c[0].trust_after - 0.55).abs() < 1e-9);
        assert_eq!((c[1].stake_after, c[1].reward, c[1].slashed), (900, 0, 100));
        assert!((c[1].trust_after - 0.45).abs() < 1e-9);
        let r = l.verify().expect("verify");
        assert!(r.ok(), "{:?}", r.first_inconsistency);
        assert_eq!((r.replayed.minted(), r.replayed.deposited), (10, 2000));
        assert_eq!(r.replayed.burned, 100);
        assert_eq!(r.stake_sum, 1910);
    }

    /// A second report for the same request changes nothing and says so.
    #[test]
    fn second_score_is_rejected() {
        let l = Ledger::temporary(params()).expect("open");
        fund(&l, &["n"]);
        l.score("r1", &[("n".into(), true)]).expect("first");
        let head = l.head().expect("head");
        let err = l.score("r1", &[("n".into(), true)]).expect_err("second");
        assert!(matches!(err, LedgerError::AlreadyScored { .. }), "{err}");
        assert_eq!(l.head().expect("head"), head);
        assert_eq!(l.scored_seq("r1").expect("seq"), Some(head.seq));
    }

    /// Concurrent scoring of one request counts once.
    #[test]
    fn concurrent_scores_count_once() {
        let l = Ledger::temporary(params()).expect("open");
        fund(&l, &["a", "b"]);
        let threads = 8;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let l = l.clone();
                let b = barrier.clone();
                std::thread::spawn(move || {
                    b.wait();
                    l.score("same", &[("a".into(), true), ("b".into(), false)])
                })
            })
            .collect();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect();
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 1, "{results:?}");
        assert!(results
            .iter()
            .all(|r| r.is_ok() || matches!(r, Err(LedgerError::AlreadyScored { .. }))));
        let a = l.account("a").expect("get").expect("exists");
        assert_eq!((a.stake, a.right), (1010, 1));
        let b = l.account("b").expect("get").expect("exists");
        assert_eq!((b.stake, b.wrong), (900, 1));
        assert!(l.verify().expect("verify").ok());
    }

    /// Stakes never go negative: unstake past zero fails, slashing at zero burns nothing.
    #[test]
    fn zero_stake_cannot_go_negative() {
        let l = Ledger::temporary(params()).expect("open");
        fund(&l, &["n"]);
        let a = l.unstake("n", 1000).expect("unstake all").account;
        assert_eq!((a.stake, a.ejected), (0, true));
        let err = l.unstake("n", 1).expect_err("negative");
        assert!(matches!(
            err,
            LedgerError::InsufficientStake {
                stake: 0,
                requested: 1,
                ..
            }
        ));
        let c = l.score("r", &[("n".into(), false)]).expect("score");
        assert_eq!(
            (c[0].stake_after, c[0].slashed, c[0].newly_ejected),
            (0, 0, false)
        );
        assert!(matches!(
            l.unstake("ghost", 1),
            Err(LedgerError::NotFound(_))
        ));
        assert!(matches!(
            l.stake("n", 0),
            Err(LedgerError::InvalidArgument(_))
        ));
        l.stake("n", 1).expect("stake");
        assert!(matches!(
            l.stake("n", u64::MAX),
            Err(LedgerError::InvalidArgument(_))
        ));
        assert!(l.verify().expect("verify").ok());
    }

    fn event_count(l: &Ledger) -> usize {
        l.events_page(0, MAX_PAGE_SIZE, None).expect("page").0.len()
    }

    /// Stake amounts are bounded per call (INVALID_ARGUMENT) and can never push an
    /// account, a total or the supply past u64::MAX (WOULD_OVERFLOW); a refused Stake
    /// writes nothing, not even a new account (table-driven). Balances near the ceiling
    /// come from legacy grants: staking alone takes ~18 000 maximal calls to get there.
    #[test]
    fn stake_never_overflows() {
        // (legacy accounts opened first, stake node, amount, expected outcome)
        #[derive(Debug, PartialEq)]
        enum Want {
            Ok(Stake),
            Invalid,
            Overflow(&'static str),
        }
        const NEAR: Stake = u64::MAX - 5;
        const HALF: Stake = u64::MAX / 2;
        type Case = (&'static [(&'static str, Stake)], &'static str, Stake, Want);
        let cases: Vec<Case> = vec![
            (&[("a", 1000)], "a", 0, Want::Invalid),
            (&[("a", 1000)], "a", MAX_STAKE_PER_CALL + 1, Want::Invalid),
            (&[("a", 1000)], "a", u64::MAX, Want::Invalid),
            (&[], "new", MAX_STAKE_PER_CALL + 1, Want::Invalid),
            (
                &[("a", 1000)],
                "a",
                MAX_STAKE_PER_CALL,
                Want::Ok(1000 + MAX_STAKE_PER_CALL),
            ),
            (&[], "new", MAX_STAKE_PER_CALL, Want::Ok(MAX_STAKE_PER_CALL)),
            // The account itself would pass u64::MAX.
            (&[("a", NEAR)], "a", 6, Want::Overflow("largest balance")),
            (&[("a", NEAR)], "a", 5, Want::Ok(u64::MAX)),
            // Each account fits, the sum of all stakes would not.
            (
                &[("a", HALF), ("b", HALF)],
                "a",
                2,
                Want::Overflow("total stake"),
            ),
            (&[("a", HALF), ("b", HALF)], "a", 1, Want::Ok(HALF + 1)),
            // A new node's first stake would pass the ceiling: no account is opened.
            (&[("a", NEAR)], "new", 6, Want::Overflow("total stake")),
            (&[("a", NEAR)], "new", 5, Want::Ok(5)),
        ];
        for (open, node, amount, want) in cases {
            let what = format!("{open:?} {node} {amount}");
            let l = Ledger::temporary(params()).expect("open");
            for (id, stake) in open {
                l.legacy_grant(id, *stake);
            }
            let head = l.head().expect("head");
            let events = event_count(&l);
            match (l.stake(node, amount), want) {
                (Ok(c), Want::Ok(stake)) => assert_eq!(c.account.stake, stake, "{what}"),
                (Err(LedgerError::InvalidArgument(msg)), Want::Invalid) => {
                    assert!(msg.contains("1..=1000000000000000"), "{what}: {msg}");
                }
                (Err(LedgerError::WouldOverflow(msg)), Want::Overflow(fragment)) => {
                    assert!(msg.contains(fragment), "{what}: {msg}");
                }
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
            let report = l.verify().expect("verify");
            assert!(report.ok(), "{what}: {:?}", report.first_inconsistency);
            let supply = report.head.totals.supply().expect("supply fits u64");
            assert_eq!(u128::from(supply), report.stake_sum, "{what}");
            if l.head().expect("head") != head {
                continue; // accepted: a stake event was written
            }
            // Refused: nothing written at all.
            assert_eq!(event_count(&l), events, "{what}");
            assert_eq!(l.account("new").expect("get"), None, "{what}");
        }
    }

    /// Rewards near the ceiling are capped at the headroom (finally 0) instead of
    /// wrapping, panicking or failing the scoring, and the books still balance.
    #[test]
    fn rewards_are_capped_at_the_supply_ceiling() {
        let l = Ledger::temporary(ScoringParams {
            reward: 10,
            ..params()
        })
        .expect("open");
        l.legacy_grant("a", u64::MAX / 2);
        l.legacy_grant("b", u64::MAX / 2);
        // Supply is u64::MAX - 1: one token of headroom left.
        let rounds = [("r1", 1, u64::MAX / 2 + 1), ("r2", 0, u64::MAX / 2 + 1)];
        for (request, reward, stake) in rounds {
            let c = l.score(request, &[("a".into(), true)]).expect("score");
            assert_eq!(
                (c[0].reward, c[0].stake_after),
                (reward, stake),
                "{request}"
            );
        }
        let report = l.verify().expect("verify");
        assert!(report.ok(), "{:?}", report.first_inconsistency);
        assert_eq!(report.replayed.supply(), Some(u64::MAX));
        assert_eq!(report.replayed.minted(), u128::from(u64::MAX));
        assert_eq!(report.stake_sum, u128::from(u64::MAX));
        // A slash frees supply, but `minted` is cumulative and already at the ceiling:
        // the reward stays 0 rather than letting that total pass u64::MAX.
        l.score("r3", &[("b".into(), false)]).expect("slash");
        let c = l.score("r4", &[("a".into(), true)]).expect("score");
        assert_eq!(c[0].reward, 0);
        assert!(l.verify().expect("verify").ok());
    }

    /// A log whose stakes summed past u64::MAX (as the unchecked code could write) is
    /// reported by verify, not passed with a capped figure.
    #[test]
    fn verify_flags_totals_beyond_u64() {
        let l = Ledger::temporary(params()).expect("open");
        // Forge what the old code wrote: a = 1000 + (u64::MAX - 1000), b = 1000.
        let mut head = Head::default();
        let steps = [
            ("a", EventKind::Grant, 1000, 1000),
            ("a", EventKind::Stake, u64::MAX - 1000, u64::MAX),
            ("b", EventKind::Grant, 1000, 1000),
        ];
        for (node, kind, amount, stake_after) in steps {
            let mut e = Event {
                seq: head.seq + 1,
                kind,
                node_id: node.into(),
                amount,
                stake_after,
                trust_after_ppb: TRUST_SCALE / 2,
                request_id: None,
                at_ms: 0,
                prev_hash: head.hash.clone(),
                hash: String::new(),
            };
            e.hash = event_hash(&e);
            l.events
                .insert(e.seq.to_be_bytes(), encode(&e).unwrap())
                .unwrap();
            let account = Account {
                node_id: node.into(),
                stake: stake_after,
                trust_ppb: TRUST_SCALE / 2,
                ejected: false,
                right: 0,
                wrong: 0,
                last_seq: e.seq,
            };
            l.accounts
                .insert(node.as_bytes(), encode(&account).unwrap())
                .unwrap();
            match kind {
                EventKind::Grant => head.totals.granted += amount,
                _ => head.totals.deposited += amount,
            }
            head.seq = e.seq;
            head.hash = e.hash;
        }
        l.meta.insert(HEAD_KEY, encode(&head).unwrap()).unwrap();
        let report = l.verify().expect("verify");
        let bad = report.first_inconsistency.expect("flagged");
        assert_eq!(bad.seq, Some(3), "{bad:?}");
        assert!(bad.message.contains("total stake"), "{bad:?}");
        // And nothing more can be staked on top of it.
        assert!(matches!(
            l.stake("b", 1),
            Err(LedgerError::WouldOverflow(_))
        ));
    }

    /// Falling under the minimum ejects; staking back above it rejoins; rewards don't.
    #[test]
    fn eject_and_rejoin() {
        let l = Ledger::temporary(params()).expect("open");
        fund(&l, &["n"]);
        l.unstake("n", 850).expect("unstake"); // 150
        let c = l.score("r1", &[("n".into(), false)]).expect("score"); // 150-15=135
        assert!(!c[0].ejected);
        l.unstake("n", 40).expect("unstake"); // 95 → ejected
        assert!(l.account("n").expect("get").expect("exists").ejected);
        let c = l.score("r2", &[("n".into(), true)]).expect("score"); // 105, still ejected
        assert_eq!((c[0].stake_after, c[0].ejected), (105, true));
        let a = l.stake("n", 1).expect("stake").account;
        assert!(!a.ejected);
        let kinds: Vec<_> = l
            .events_page(0, 100, Some("n"))
            .expect("page")
            .0
            .into_iter()
            .map(|e| e.kind)
            .collect();
        use EventKind::*;
        assert_eq!(
            kinds,
            vec![Stake, Unstake, Slash, Unstake, Eject, Reward, Stake, Rejoin]
        );
        assert!(l.verify().expect("verify").ok());
    }

    /// Paging walks the log in order and says when it ends.
    #[test]
    fn paging() {
        let l = Ledger::temporary(params()).expect("open");
        fund(&l, &["a", "b", "c", "d", "e"]);
        let (p1, next) = l.events_page(0, 2, None).expect("page");
        assert_eq!(p1.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        let (p2, next) = l.events_page(next.expect("more"), 2, None).expect("page");
        assert_eq!(p2.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
        let (p3, next) = l.events_page(next.expect("more"), 2, None).expect("page");
        assert_eq!(p3.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5]);
        assert_eq!(next, None);
        let (only_c, _) = l.events_page(0, 10, Some("c")).expect("page");
        assert_eq!(only_c.len(), 1);
    }

    /// Tampering with an event, an account or the log shape is caught by verify.
    #[test]
    fn tampering_is_detected() {
        type Tamper = fn(&Ledger);
        let cases: Vec<(&str, Tamper, Option<u64>)> = vec![
            (
                "event amount",
                |l| {
                    let mut e: Event =
                        decode("e", &l.events.get(2u64.to_be_bytes()).unwrap().unwrap()).unwrap();
                    e.amount += 1;
                    e.stake_after += 1;
                    l.events
                        .insert(2u64.to_be_bytes(), encode(&e).unwrap())
                        .unwrap();
                },
                Some(2),
            ),
            (
                "event rehashed",
                |l| {
                    // Recomputing the hash of the edited event breaks the link of the next one.
                    let mut e: Event =
                        decode("e", &l.events.get(2u64.to_be_bytes()).unwrap().unwrap()).unwrap();
                    e.amount = 1;
                    e.stake_after = 1;
                    e.hash = event_hash(&e);
                    l.events
                        .insert(2u64.to_be_bytes(), encode(&e).unwrap())
                        .unwrap();
                },
                Some(3),
            ),
            (
                "event deleted",
                |l| {
                    l.events.remove(2u64.to_be_bytes()).unwrap();
                },
                Some(3),
            ),
            (
                "account balance",
                |l| {
                    let mut a = l.account("a").unwrap().unwrap();
                    a.stake += 5;
                    l.accounts.insert("a", encode(&a).unwrap()).unwrap();
                },
                None,
            ),
        ];
        for (name, tamper, seq) in cases {
            let l = Ledger::temporary(params()).expect("open");
            fund(&l, &["a", "b"]);
            l.score("r", &[("a".into(), true), ("b".into(), false)])
                .expect("score");
            assert!(l.verify().expect("verify").ok());
            tamper(&l);
            let r = l.verify().expect("verify");
            let bad = r
                .first_inconsistency
                .unwrap_or_else(|| panic!("{name}: not detected"));
            assert_eq!(bad.seq, seq, "{name}: {bad:?}");
        }
    }

    /// Rule v2 in the ledger: each slash of a node escalates with its error rate
    /// (2 %, then 2.9 %, then 5.3 % of 1000 → 980 → 951 → 900), and a ledger written
    /// under rule v1 (flat 10 %) still verifies when reopened under v2.
    #[test]
    fn slashes_escalate_and_v1_ledgers_still_verify() {
        let l = Ledger::temporary(ScoringParams::default()).expect("open");
        fund(&l, &["liar"]);
        let slashed: Vec<Stake> = (0..3)
            .map(|i| {
                let c = l
                    .score(&format!("r{i}"), &[("liar".into(), false)])
                    .expect("score");
                c[0].slashed
            })
            .collect();
        assert_eq!(slashed, vec![20, 29, 51]);
        assert!(l.verify().expect("verify").ok());

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger");
        {
            let v1 = Ledger::open(&path, params()).expect("open v1");
            fund(&v1, &["a", "b"]);
            for i in 0..5 {
                v1.score(&format!("r{i}"), &[("a".into(), true), ("b".into(), false)])
                    .expect("score");
            }
        }
        let v2 = Ledger::open(&path, ScoringParams::default()).expect("reopen under v2");
        let r = v2.verify().expect("verify");
        assert!(r.ok(), "{:?}", r.first_inconsistency);
        v2.score("r5", &[("b".into(), false)]).expect("score");
        assert!(v2.verify().expect("verify").ok());
    }

    /// Balances, trust and the chain survive closing and reopening the db.
    #[test]
    fn survives_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger");
        {
            let l = Ledger::open(&path, params()).expect("open");
            fund(&l, &["a", "b"]);
            l.score("r", &[("a".into(), true), ("b".into(), false)])
                .expect("score");
            l.stake("b", 7).expect("stake");
        }
        let l = Ledger::open(&path, params()).expect("reopen");
        let a = l.account("a").expect("get").expect("exists");
        let b = l.account("b").expect("get").expect("exists");
        assert_eq!((a.stake, b.stake), (1010, 907));
        assert!((b.trust() - 0.45).abs() < 1e-9);
        assert!(matches!(
            l.score("r", &[]),
            Err(LedgerError::AlreadyScored { .. })
        ));
        let r = l.verify().expect("verify");
        assert!(r.ok(), "{:?}", r.first_inconsistency);
        assert_eq!(r.events_checked, 5);
    }

    /// The stored trust reaches exactly 0 and 1 instead of stalling on rounding.
    #[test]
    fn trust_ppb_reaches_bounds() {
        let (mut lo, mut hi) = (trust_to_ppb(INITIAL_TRUST), trust_to_ppb(INITIAL_TRUST));
        for _ in 0..1000 {
            lo = next_trust_ppb(lo, false, 0.1);
            hi = next_trust_ppb(hi, true, 0.1);
        }
        assert_eq!((lo, hi), (0, TRUST_SCALE));
        assert_eq!(next_trust_ppb(500_000_000, true, 0.1), 550_000_000);
        assert_eq!(next_trust_ppb(500_000_000, false, 0.1), 450_000_000);
    }

    /// Watchers see committed events in order.
    #[test]
    fn subscribers_see_events() {
        let l = Ledger::temporary(params()).expect("open");
        let mut rx = l.subscribe();
        l.stake("n", 5).expect("stake");
        let kinds: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds, vec![EventKind::Stake, EventKind::Eject]);
    }
}
