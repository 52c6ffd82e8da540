//! The history of one chaos run: what the clients were told (every acknowledged write with
//! the term and LSN of its `WriteInfo`), what they saw of the cluster (primaries, lag,
//! stakes) and which faults were injected when. Times are milliseconds since the workload
//! started. It is plain data (serde), so a run can be saved with `--history` and the
//! checker tested on recorded histories without a cluster.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Everything recorded during a run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct History {
    /// The shop's replication mode: `sync` or `async`.
    pub replication: String,
    /// How long the workload ran.
    pub duration_ms: u64,
    /// Every acknowledged write, in the order the acks arrived.
    pub writes: Vec<WriteAck>,
    /// Writes that got an error or no answer (not acknowledged: no promise to check).
    pub failures: Vec<Failure>,
    /// Every consensus prediction that was answered.
    pub predictions: Vec<PredictionAck>,
    /// What the registry and the primary said, sampled a few times a second.
    pub samples: Vec<Sample>,
    /// Node stakes read from the aggregator's ledger, about once a second.
    pub stakes: Vec<StakeSample>,
    /// The faults injected (and their ends).
    pub faults: Vec<FaultEvent>,
    /// The products orders draw from, with their initial stock.
    pub stock: Vec<StockItem>,
}

/// One acknowledged write.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WriteAck {
    /// When the ack arrived.
    pub at_ms: u64,
    /// Round trip of the acknowledged call.
    pub latency_ms: f64,
    /// The shop address that acknowledged it.
    pub host: String,
    /// `WriteInfo.term`: the primary term that accepted it.
    pub term: u64,
    /// `WriteInfo.lsn`.
    pub lsn: u64,
    /// `WriteInfo.replicated`.
    pub replicated: bool,
    /// What was written.
    pub what: Written,
}

/// The thing an acknowledged write created.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum Written {
    /// A product, found later by id and name.
    Product {
        /// Id the shop assigned.
        id: String,
        /// The unique name the client chose.
        name: String,
    },
    /// An order, replayed later by its idempotency key.
    Order {
        /// Id the shop assigned.
        order_id: String,
        /// The idempotency key it was placed with.
        key: String,
        /// Index of the workload user that placed it (whose session replays it).
        user: usize,
    },
}

/// A write that was not acknowledged.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Failure {
    /// When the error (or the timeout) came.
    pub at_ms: u64,
    /// `product`, `cart` or `order`.
    pub op: String,
    /// gRPC code, or `timeout`.
    pub error: String,
}

/// One answered consensus prediction.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PredictionAck {
    /// When the answer arrived.
    pub at_ms: u64,
    /// Round trip.
    pub latency_ms: f64,
    /// Nodes whose vote was wrong (known from the row's true label).
    pub wrong: Vec<String>,
}

/// The cluster as seen from outside at one moment.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Sample {
    /// When the probes were sent (a status read after an ack was sent after it).
    pub at_ms: u64,
    /// Every instance the registry listed as `role=primary`: (address, term).
    pub primaries: Vec<(String, u64)>,
    /// The highest-term primary's `GetReplicationStatus`, when it answered.
    pub status: Option<PrimaryStatus>,
}

/// What a primary said about its replication.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PrimaryStatus {
    /// The primary's address.
    pub addr: String,
    /// Its term.
    pub term: u64,
    /// Highest LSN the replica durably acked.
    pub replica_acked_lsn: u64,
    /// Lag in entries.
    pub lag_entries: u64,
    /// Age of the oldest unacknowledged entry.
    pub lag_ms: u64,
}

/// A node's stake at one moment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StakeSample {
    /// When.
    pub at_ms: u64,
    /// Node id.
    pub node: String,
    /// Tokens staked.
    pub stake: u64,
}

/// One injected fault (or the end of one).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultEvent {
    /// When it was applied.
    pub at_ms: u64,
    /// The fault as written in `--faults` (e.g. `freeze-replica@12s:3s`).
    pub fault: String,
    /// `kill`, `freeze`, `thaw`, `stop`, `start`, `liar`, `honest`.
    pub action: String,
    /// The child it hit (`shop-1`, `node-3`, `registry`).
    pub target: String,
    /// The supervisor's refusal or the reason it could not be applied.
    pub error: Option<String>,
}

/// A product orders are placed for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StockItem {
    /// Product id.
    pub id: String,
    /// Stock it was created with.
    pub initial: i64,
}

/// Shared, append-only access to a [`History`] for the concurrent clients.
#[derive(Clone)]
pub struct Recorder {
    started: Instant,
    history: Arc<Mutex<History>>,
}

impl Recorder {
    /// Starts the clock now.
    pub fn new(replication: &str) -> Self {
        Self {
            started: Instant::now(),
            history: Arc::new(Mutex::new(History {
                replication: replication.to_owned(),
                ..History::default()
            })),
        }
    }

    /// Milliseconds since the start.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The start.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Appends with the lock held for the closure only (no `.await` inside).
    pub fn record(&self, change: impl FnOnce(&mut History)) {
        // A poisoned lock means a recording closure panicked: the history is still the
        // best evidence there is, so keep using it.
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut history);
    }

    /// A copy of what is recorded so far.
    pub fn snapshot(&self) -> History {
        let mut history = self
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        history.duration_ms = self.now_ms();
        history
    }
}
