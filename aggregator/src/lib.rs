//! `concord-aggregator`: the consensus of the prediction nodes, and their stake ledger.
//!
//! The aggregator serves the same `concord.predict.v1.Predictor` as a node. For each
//! request it asks every live node (found through the registry) concurrently with a
//! deadline, ignores late or failed ones, requires a minimum number of answers, and
//! combines the class probabilities under a policy chosen per request (`mean`, `trust`,
//! `stake`). It also serves `concord.stake.v1.Staking`: trust, stake, rewards, slashing
//! and the hash-chained ledger.
//!
//! Concept → file:
//! - fleet from the registry, one channel per node, fan-out with a deadline → `fanout.rs`
//! - coalescing concurrent single predictions into one batch per node → `batcher.rs`
//! - the consensus path (validate, weigh, ask, quorum, combine, explain) → `consensus.rs`
//! - weighting policies, trust update, slashing formula → `policy.rs`
//! - sled ledger (accounts + hash-chained events) → `ledger/` (event, state + `apply`,
//!   transaction, stored encoding, operations, verify)
//! - ledger + request memory shared by Predict and Staking → `book.rs`, `outcomes.rs`
//! - tonic handlers → `service.rs` (Predictor), `staking.rs` (Staking)
//! - pb ↔ domain → `convert.rs`; process lifecycle → `server.rs`; errors and their gRPC
//!   codes → `error.rs`; the owner of every spawned task (cancel + join) → `tasks.rs`
//! - policy simulation backing the default knobs → `simulation.rs`

pub mod batcher;
pub mod book;
pub mod consensus;
pub mod convert;
pub mod error;
pub mod fanout;
pub mod ledger;
pub mod metrics;
pub mod outcomes;
pub mod policy;
mod server;
pub mod service;
pub mod simulation;
pub mod staking;
pub mod tasks;

pub use consensus::{Aggregator, ConsensusConfig, Decision, Vote, VoteStatus};
pub use error::{Error, Result};
pub use fanout::{Fleet, Member};
pub use server::{serve, AggregatorConfig, LedgerConfig, AGGREGATOR_SERVICE};
pub use service::AggregatorService;
pub use tasks::Tasks;
