//! The stake ledger: accounts plus an append-only, hash-chained event log in `sled`.
//!
//! # Layout
//!
//! | tree       | key                    | value                                  |
//! |------------|------------------------|----------------------------------------|
//! | `accounts` | node id (UTF-8)        | protobuf [`Account`]                   |
//! | `events`   | `seq` as big-endian u64| protobuf [`Event`]                     |
//! | `meta`     | `head`                 | protobuf [`Head`] (seq, hash, totals)  |
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
//!
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
//! `verify` replays the log through the same state transitions the write path applies
//! ([`Head::apply`], [`Account::apply`]): for every event, that it links to its
//! predecessor, that the hash recomputes, that the totals stay in range, that
//! `stake_after` equals the replayed balance (no step below zero) and that eject/rejoin
//! alternate; finally that every account record equals its replayed state and the stored
//! totals equal the replayed totals. It reports the first inconsistency found, in that
//! order, as a typed [`Problem`] naming the event or account.
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
//!
//! # Code map
//!
//! - `event.rs`: [`Event`], [`EventKind`], the hash chain ([`event_hash`]).
//! - `state.rs`: [`Account`], [`Head`] and [`Totals`] with their one `apply` each (the
//!   rules), trust in ppb.
//! - `tx.rs`: the sled transaction every change goes through.
//! - [`record`]: the stored encoding (protobuf) of events, accounts and the head, and
//!   the migration of ledgers written in JSON.
//! - `store.rs`: [`Ledger`] — open, reads, `stake`, `unstake`, `score`.
//! - `verify.rs`: the replay behind [`Ledger::verify`] and its typed report.
//! - `error.rs`: [`LedgerError`] (classified for gRPC in [`crate::error`]).

mod error;
mod event;
pub mod record;
mod state;
mod store;
mod tx;
mod verify;

pub use error::LedgerError;
pub use event::{event_hash, Event, EventKind, GENESIS_HASH};
pub use state::{
    next_trust_ppb, trust_to_ppb, Account, Head, Totals, Violation, MAX_SUPPLY, TRUST_SCALE,
};
pub use store::{
    check_node_id, check_request_id, AccountChange, Ledger, ScoreChange, EVENT_CHANNEL_CAPACITY,
    MAX_NODE_ID_BYTES, MAX_PAGE_SIZE, MAX_REQUEST_ID_BYTES, MAX_STAKE_PER_CALL,
};
pub use verify::{Inconsistency, Problem, VerifyReport};

#[cfg(test)]
mod tests;
