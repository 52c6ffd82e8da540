//! The store: the WAL (log of record, segment files in `<path>/wal/`) and the sled trees
//! (materialized state).
//!
//! **One write path.** Every write — a batch from the shop's commit leader, one write from
//! [`Store::transact`] (tests, tools), or a replica applying the primary's entries — goes
//! through the same steps, one writer at a time:
//! 1. the write runs against the current state plus the batch's own pending changes
//!    ([`Tx`]: reads see earlier writes of the batch; every put/delete is recorded);
//! 2. it gets the next LSN and its [`WalEntry`];
//! 3. the batch's entries are appended to the WAL and made durable with ONE `fdatasync`
//!    (group commit) — from here the write survives a crash;
//! 4. they are applied to the sled trees with plain inserts, one per key the batch
//!    touched (its final state; readers are held off for that moment by
//!    [`Store::read_view`], so they never see half a write), and the applied LSN moves
//!    to the batch's last LSN;
//! 5. they are published to the WAL shipper (in-memory tail + watch) and the callers get
//!    their replies (in sync mode the service then waits for the replica's ack).
//!
//! Nothing reaches sled before its WAL record is durable, so sled is never ahead of the
//! log. sled is not flushed on the write path: a checkpointer thread flushes it in the
//! background ([`CHECKPOINT_INTERVAL`]), writing the applied LSN to `meta/last_lsn` just
//! before each flush, so `meta/last_lsn` on disk is the checkpoint.
//! [`Store::open`] replays the WAL above it (sled recovers a prefix of its own log, and
//! replaying physical puts/deletes in LSN order from an older point gives the same state).
//!
//! **LSNs** are gap-free and in commit order: one writer at a time allocates them from the
//! applied LSN, and a write that fails (its own error) is rolled back to its savepoint in
//! the batch and consumes none.
//!
//! **Failure:** if the WAL append or sync fails, nothing of the batch was applied or
//! acknowledged and the store refuses every later write (`Unavailable`) until restarted:
//! the file's state after a failed `fdatasync` is unknown, start-up recovery decides.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sled::transaction::ConflictableTransactionError;
use sled::IVec;
use tokio::sync::watch;

use crate::codec::{self, Record};
use crate::error::{Result, ShopError};
use crate::segments::{SegmentLog, DEFAULT_SEGMENT_BYTES};
use crate::wal::{Lsn, Mutation, TreeName, WalEntry};

/// Result type inside a write: `Err(ShopError)` (via `?` or `.into()`) fails the write
/// alone; a storage error fails the whole batch.
pub type TxResult<T> = std::result::Result<T, ConflictableTransactionError<ShopError>>;

/// A validated write, ready to run: alone through [`Store::transact`], or in the shop
/// writer's batch through [`Store::transact_batch`]. It must not have side effects outside
/// `Tx`. The domain modules build one per mutation (`catalog::create_op`, ...) after
/// validating the input, so bad input is refused before it reaches the writer.
pub trait WriteOp<T>: Fn(&Tx<'_>) -> TxResult<T> + Send + 'static {}

impl<T, F> WriteOp<T> for F where F: Fn(&Tx<'_>) -> TxResult<T> + Send + 'static {}

const META_TREE: &str = "meta";
/// `meta` key: LSN of the last entry applied to the sled trees.
const META_LAST_LSN: &[u8] = b"last_lsn";
/// `meta` key: the current term of this store.
const META_TERM: &[u8] = b"term";
/// `meta` key: the WAL's logical start after trimming (entries below it are gone).
const META_WAL_FIRST: &[u8] = b"wal_first";
/// `meta` key: (term, LSN), the highest LSN the replica durably acked while this process
/// was the primary of that term (module docs of `replication`, "WAL trimming").
const META_REPLICA_ACKED: &[u8] = b"replica_acked";
/// `meta` key: (term, LSN), the current term began on this process after that LSN (its
/// promotion).
const META_TERM_START: &[u8] = b"term_start";
/// Directory of the WAL segments inside the store's directory.
pub const WAL_DIR: &str = "wal";
/// Default group-commit linger (the writer takes what is queued and goes).
pub const DEFAULT_LINGER: Duration = Duration::ZERO;
/// How often the checkpointer flushes sled (the WAL to replay after a crash is at most
/// about this much).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// Ids issued in one term: the id counters jump to `(term - 1) × ID_TERM_STRIDE` at the
/// first id of a new term, so ids of writes lost with an old primary's tail are never
/// issued again after a failover (term 1 ids are 1, 2, 3, ...).
pub const ID_TERM_STRIDE: u64 = 1 << 40;

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory of the store: sled's files, and the WAL in `wal/` (created if missing).
    pub path: PathBuf,
    /// How long the shop's writer waits for more writes before it commits a batch.
    pub linger: Duration,
    /// sled page-cache size in bytes.
    pub cache_capacity_bytes: u64,
    /// Size after which the WAL starts a new segment file.
    pub segment_bytes: u64,
}

impl StoreConfig {
    /// Defaults for a store at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            linger: DEFAULT_LINGER,
            cache_capacity_bytes: 256 * 1024 * 1024,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// Counters describing how well commits are being grouped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Number of WAL syncs (`fdatasync`) done.
    pub flushes: u64,
    /// Number of entries made durable through them.
    pub writes: u64,
    /// Highest LSN known to be durable.
    pub durable_lsn: Lsn,
    /// Total time spent appending + syncing, in microseconds.
    pub flush_micros: u64,
}

/// A committed, durable write (kept as its own type so callers read
/// `store.transact(op)?.durable_blocking()?` the same way whatever the store's internals).
pub struct Committed<T> {
    /// What the closure returned.
    pub value: T,
    /// The write's LSN, or `None` when it changed nothing.
    pub lsn: Option<Lsn>,
    /// The term the write was committed in.
    pub term: u64,
}

impl<T> Committed<T> {
    /// The write as acknowledged (it is already durable).
    pub async fn durable(self) -> Result<Written<T>> {
        self.durable_blocking()
    }

    /// Same as [`durable`](Self::durable), for non-async callers.
    pub fn durable_blocking(self) -> Result<Written<T>> {
        Ok(Written {
            value: self.value,
            lsn: self.lsn,
            term: self.term,
        })
    }
}

/// A durable, acknowledged write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written<T> {
    /// The operation's result.
    pub value: T,
    /// LSN of the write, `None` when nothing changed (proto: lsn 0).
    pub lsn: Option<Lsn>,
    /// The term the write was committed in: what its reply reports, even when this
    /// process stepped down between the commit and the reply.
    pub term: u64,
}

/// What [`Store::transact_batch`] committed.
#[derive(Debug)]
pub struct BatchOutcome {
    /// The term every write of the batch was committed in.
    pub term: u64,
    /// Each write's LSN (`None`: it changed nothing) or its own error, in order.
    pub writes: Vec<Result<Option<Lsn>>>,
}

/// What [`Store::apply_wal_entry`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The entry was new and is now committed locally.
    Applied(Lsn),
    /// The entry was at or below the local LSN: already applied, nothing done.
    Skipped(Lsn),
}

#[derive(Default)]
struct Counters {
    syncs: AtomicU64,
    writes: AtomicU64,
    sync_micros: AtomicU64,
    /// Per-sync latency and group size for the metrics page.
    histograms: crate::metrics::WalHistograms,
}

/// State the checkpointer thread shares with the store.
struct Checkpoint {
    db: sled::Db,
    meta: sled::Tree,
    /// The store's writer lock (`Store::writer`).
    writer: Arc<Mutex<()>>,
    applied: AtomicU64,
    checkpointed: AtomicU64,
    /// Set when `meta` changed outside the write path (trimming, a replica's ack): flush
    /// even without new applied writes.
    dirty: AtomicBool,
    /// The replica's highest ack on this primary, kept in memory and written to `meta`
    /// by the next checkpoint ([`Store::record_replica_acked`]).
    replica_acked: Mutex<ReplicaAcked>,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// The replica's ack as [`Store::record_replica_acked`] keeps it.
#[derive(Debug, Default)]
struct ReplicaAcked {
    /// (term, LSN): the highest LSN acked while this process was the primary of that term.
    latest: Option<(u64, Lsn)>,
    /// `latest` changed since the last checkpoint wrote it to `meta`.
    unsaved: bool,
}

impl Checkpoint {
    /// Flushes sled if something was applied since the last checkpoint. `meta/last_lsn`
    /// is written here, not per write (one sled insert less on the write path): it is
    /// inserted under the writer lock, after every tree insert up to `applied` (so sled's
    /// log never has it ahead of the data it covers) and never during a snapshot's
    /// install, which sets it itself.
    fn run_once(&self) -> Result<()> {
        let applied = {
            let _writer = lock(&self.writer);
            let applied = self.applied.load(Ordering::Acquire);
            let dirty = self.dirty.swap(false, Ordering::AcqRel);
            if !dirty && applied <= self.checkpointed.load(Ordering::Acquire) {
                return Ok(());
            }
            self.meta.insert(META_LAST_LSN, &applied.to_be_bytes())?;
            let mut acked = lock(&self.replica_acked);
            if let (true, Some((term, lsn))) = (acked.unsaved, acked.latest) {
                self.meta
                    .insert(META_REPLICA_ACKED, &term_lsn_bytes(term, lsn))?;
                acked.unsaved = false;
            }
            applied
        };
        self.db.flush()?;
        self.checkpointed.fetch_max(applied, Ordering::AcqRel);
        Ok(())
    }
}

fn run_checkpointer(cp: &Checkpoint) {
    let mut stop = cp.stop.lock().unwrap_or_else(|p| p.into_inner());
    while !*stop {
        stop = cp
            .wake
            .wait_timeout(stop, CHECKPOINT_INTERVAL)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        drop(stop);
        if let Err(e) = cp.run_once() {
            tracing::error!(error = %e, "checkpoint (sled flush) failed");
        }
        stop = cp.stop.lock().unwrap_or_else(|p| p.into_inner());
    }
}

/// The shop's store (module docs).
pub struct Store {
    db: sled::Db,
    /// Data trees in `TreeName::ALL` order, then `meta`.
    trees: Vec<sled::Tree>,
    /// The WAL files. Locked briefly for appends and reads.
    log: Mutex<SegmentLog>,
    /// One writer at a time (the write path, replica apply, snapshot install).
    writer: Arc<Mutex<()>>,
    /// Readers share it; applying a batch to the trees takes it exclusively.
    view: RwLock<()>,
    checkpoint: Arc<Checkpoint>,
    checkpointer: Option<JoinHandle<()>>,
    durable: AtomicU64,
    /// Logical start of the WAL (trimming moves it; segments below it are deleted once
    /// checkpointed).
    wal_first: AtomicU64,
    /// Set when a WAL write failed: later writes are refused until restart.
    broken: AtomicBool,
    counters: Counters,
    term: AtomicU64,
    /// Set while this process is not the primary (the replication layer keeps it in step
    /// with the role): local writes then fail instead of committing, so a write admitted
    /// just before a step-down can never commit under the newer term.
    writes_fenced: AtomicBool,
    committed_tx: watch::Sender<Lsn>,
    /// The last committed entries ([`WAL_TAIL_CAPACITY`] at most, consecutive LSNs), so the
    /// shipper sends fresh commits from memory instead of reading the WAL files back.
    tail: Mutex<VecDeque<WalEntry>>,
    /// Replica side: entries durable in the WAL but not yet applied to the trees
    /// ([`Store::append_replicated`]); applied by [`Store::apply_replicated`], or before
    /// anything else takes the writer lock to write.
    unapplied: Mutex<VecDeque<WalEntry>>,
    /// Counts as a task on its tracker until the store is closed: declared last, so it
    /// drops after the final checkpoint and after sled released its files
    /// ([`Store::closes_on`]).
    open: Option<tokio_util::task::task_tracker::TaskTrackerToken>,
}

/// Most entries [`Store::wal_tail_since`] keeps in memory.
pub const WAL_TAIL_CAPACITY: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Store {
    /// Opens (or creates) the store: recovers the WAL (a torn tail is dropped, corruption
    /// before it is an error naming file and offset), replays every entry above sled's
    /// applied LSN into the trees, migrates an old store's records (`codec`),
    /// checkpoints, and starts the checkpointer.
    pub fn open(config: &StoreConfig) -> Result<Self> {
        let db = concord::storage::open_sled(
            &sled::Config::new()
                .path(&config.path)
                .cache_capacity(config.cache_capacity_bytes)
                .mode(sled::Mode::LowSpace)
                // The checkpointer flushes; sled's own timer would only compete with it.
                .flush_every_ms(None),
        )?;
        let mut trees = Vec::with_capacity(TreeName::ALL.len() + 1);
        for name in TreeName::ALL {
            trees.push(db.open_tree(name.as_str())?);
        }
        trees.push(db.open_tree(META_TREE)?);
        let meta = &trees[TreeName::ALL.len()];
        let mut applied = read_u64(meta.get(META_LAST_LSN)?.as_deref())?;
        let term = read_u64(meta.get(META_TERM)?.as_deref())?.max(1);
        let wal_first_meta = read_u64(meta.get(META_WAL_FIRST)?.as_deref())?;
        let (mut log, recovered) =
            SegmentLog::open(&config.path.join(WAL_DIR), config.segment_bytes)?;
        if log.last_lsn() < applied {
            if !log.is_empty() {
                return Err(ShopError::internal(format!(
                    "store is inconsistent: the WAL ends at LSN {} but sled applied {applied}",
                    log.last_lsn()
                )));
            }
            // An installed snapshot (or a fresh WAL next to existing data): the log
            // continues after the applied state.
            log.reset(applied + 1)?;
        }
        if log.first_lsn() > applied + 1 {
            return Err(ShopError::internal(format!(
                "store is inconsistent: sled applied LSN {applied} but the WAL starts at {}",
                log.first_lsn()
            )));
        }
        let replay_from = applied;
        while applied < log.last_lsn() {
            let entries = log.read_from(applied, 1024)?;
            for entry in &entries {
                apply_to_trees(&trees, entry)?;
            }
            applied = entries.last().map_or(applied, |e| e.lsn);
            trees[TreeName::ALL.len()].insert(META_LAST_LSN, &applied.to_be_bytes())?;
        }
        // After the replay: an old store's replayed entries are upgraded as they are read.
        let migrated = codec::migrate_store(&trees, &trees[TreeName::ALL.len()], &config.path)?;
        if applied > replay_from || migrated > 0 {
            db.flush()?;
        }
        let replica_acked = read_term_lsn(
            trees[TreeName::ALL.len()]
                .get(META_REPLICA_ACKED)?
                .as_deref(),
        )
        .unwrap_or_else(|e| {
            // Only trimming reads it: without it, trimming keeps everything of the term.
            tracing::error!(error = %e, "unreadable persisted replica ack; ignoring it");
            None
        });
        let writer = Arc::new(Mutex::new(()));
        let checkpoint = Arc::new(Checkpoint {
            db: db.clone(),
            meta: trees[TreeName::ALL.len()].clone(),
            writer: Arc::clone(&writer),
            applied: AtomicU64::new(applied),
            checkpointed: AtomicU64::new(applied),
            dirty: AtomicBool::new(false),
            replica_acked: Mutex::new(ReplicaAcked {
                latest: replica_acked,
                unsaved: false,
            }),
            stop: Mutex::new(false),
            wake: Condvar::new(),
        });
        let cp = Arc::clone(&checkpoint);
        let checkpointer = std::thread::Builder::new()
            .name("shop-checkpoint".into())
            .spawn(move || run_checkpointer(&cp))
            .map_err(|e| ShopError::internal(format!("cannot start checkpointer: {e}")))?;
        let (committed_tx, _) = watch::channel(applied);
        tracing::info!(path = %config.path.display(), last_lsn = applied, term,
            replayed = applied - replay_from, wal_segments = recovered.segments,
            torn_tail = recovered.torn_tail.is_some(), "shop store opened");
        let wal_first = wal_first_meta.max(log.first_lsn());
        Ok(Self {
            db,
            trees,
            log: Mutex::new(log),
            writer,
            view: RwLock::new(()),
            checkpoint,
            checkpointer: Some(checkpointer),
            durable: AtomicU64::new(applied),
            wal_first: AtomicU64::new(wal_first),
            broken: AtomicBool::new(false),
            counters: Counters::default(),
            term: AtomicU64::new(term),
            writes_fenced: AtomicBool::new(false),
            committed_tx,
            tail: Mutex::new(VecDeque::with_capacity(WAL_TAIL_CAPACITY)),
            unapplied: Mutex::new(VecDeque::new()),
            open: None,
        })
    }

    /// Makes this store a task of `tracker` until it is closed (last handle dropped, final
    /// checkpoint written, files released), so shutdown joins the close with `wait()`
    /// like any task, whichever user of the store happens to drop it last.
    pub fn closes_on(mut self, tracker: &tokio_util::task::TaskTracker) -> Self {
        self.open = Some(tracker.token());
        self
    }

    /// A data tree, for reads outside writes (single-key reads and range scans). Readers
    /// that read several keys hold [`read_view`](Self::read_view) meanwhile.
    pub fn tree(&self, name: TreeName) -> &sled::Tree {
        &self.trees[name.index()]
    }

    /// Holds off the applying of new writes while alive: reads under it never see half a
    /// write.
    pub fn read_view(&self) -> RwLockReadGuard<'_, ()> {
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    fn meta(&self) -> &sled::Tree {
        &self.trees[TreeName::ALL.len()]
    }

    /// LSN of the last write applied to the trees (every LSN up to it is durable and
    /// visible to reads).
    pub fn last_lsn(&self) -> Result<Lsn> {
        Ok(self.checkpoint.applied.load(Ordering::Acquire))
    }

    /// Highest LSN known to be on disk (in the WAL).
    pub fn durable_lsn(&self) -> Lsn {
        self.durable.load(Ordering::Acquire)
    }

    /// Highest LSN whose state sled has flushed (start-up replays the WAL above it).
    pub fn checkpointed_lsn(&self) -> Lsn {
        self.checkpoint.checkpointed.load(Ordering::Acquire)
    }

    /// Flushes sled now (a checkpoint) and returns the LSN it covers.
    pub fn checkpoint(&self) -> Result<Lsn> {
        self.checkpoint.run_once()?;
        Ok(self.checkpointed_lsn())
    }

    /// Group-commit counters (WAL syncs vs entries made durable).
    pub fn commit_stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            flushes: self.counters.syncs.load(Ordering::Relaxed),
            writes: self.counters.writes.load(Ordering::Relaxed),
            durable_lsn: self.durable_lsn(),
            flush_micros: self.counters.sync_micros.load(Ordering::Relaxed),
        }
    }

    /// WAL sync latency and group size histograms (the metrics page reads them).
    pub fn wal_histograms(&self) -> &crate::metrics::WalHistograms {
        &self.counters.histograms
    }

    /// Current term (1 for a fresh store).
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }

    /// Closes (`true`) or opens local writes; the replication layer closes them before a
    /// step-down changes the term and opens them once this process is the primary.
    pub fn fence_writes(&self, fenced: bool) {
        self.writes_fenced.store(fenced, Ordering::Release);
    }

    /// The term a write may commit under, or the fence's refusal. The term is read on both
    /// sides of the fence check: a step-down closes the fence before it raises the term,
    /// and a promotion raises the term before it opens the fence, so a write that saw the
    /// fence open and the same term on both sides commits under a term in which this
    /// process was the primary, never under the term of the primary it is about to follow.
    fn writable_term(&self) -> Result<u64> {
        let before = self.term();
        self.check_not_fenced()?;
        let after = self.term();
        if before != after {
            return Err(ShopError::Fenced(
                "this shop's term changed while the write started; nothing was written: retry"
                    .into(),
            ));
        }
        Ok(after)
    }

    fn check_not_fenced(&self) -> Result<()> {
        if self.writes_fenced.load(Ordering::Acquire) {
            return Err(ShopError::Fenced(
                "this shop stopped being the primary before the write could commit; nothing \
                 was written: retry on the primary"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Persists a new term (promotion, or seeing a higher term) and flushes it. Terms only
    /// grow: a lower value is refused.
    pub fn set_term(&self, term: u64) -> Result<()> {
        let current = self.term();
        if term < current {
            return Err(ShopError::precondition(format!(
                "term {term} is older than the current term {current}"
            )));
        }
        self.meta().insert(META_TERM, &term.to_be_bytes())?;
        self.db.flush()?;
        self.term.store(term, Ordering::Release);
        Ok(())
    }

    /// Takes `term` as a newly promoted primary: persists it and records that it begins
    /// after the current last LSN (the promotion LSN), flushed together. Returns that LSN.
    pub fn begin_term(&self, term: u64) -> Result<Lsn> {
        let start = self.last_lsn()?;
        self.meta()
            .insert(META_TERM_START, &term_lsn_bytes(term, start))?;
        self.set_term(term)?;
        Ok(start)
    }

    /// The LSN the current term began after on this process, if it was promoted into it.
    pub fn promotion_lsn(&self) -> Result<Option<Lsn>> {
        let term = self.term();
        Ok(read_term_lsn(self.meta().get(META_TERM_START)?.as_deref())?
            .filter(|(t, _)| *t == term)
            .map(|(_, lsn)| lsn))
    }

    /// Records that the replica durably acked `lsn` while this process is the primary of
    /// `term` (kept across restarts, so WAL trimming after a restart keeps what the replica
    /// still needs). Only grows within a term. Kept in memory and written to `meta` by the
    /// next checkpoint, durable with it (a crash can only bring back an older value, which
    /// trims less): one sled update per checkpoint instead of one per ack, off the ack path.
    pub fn record_replica_acked(&self, term: u64, lsn: Lsn) -> Result<()> {
        let mut acked = lock(&self.checkpoint.replica_acked);
        if acked.latest.is_some_and(|(t, l)| t == term && l >= lsn) {
            return Ok(());
        }
        acked.latest = Some((term, lsn));
        acked.unsaved = true;
        self.checkpoint.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// The highest LSN the replica acked while this process was the primary of `term`
    /// (0 when none was recorded in that term).
    pub fn replica_acked(&self, term: u64) -> Result<Lsn> {
        Ok(lock(&self.checkpoint.replica_acked)
            .latest
            .filter(|(t, _)| *t == term)
            .map_or(0, |(_, lsn)| lsn))
    }

    /// Watches the last committed LSN (the WAL shipper waits on it for new entries).
    pub fn subscribe(&self) -> watch::Receiver<Lsn> {
        self.committed_tx.subscribe()
    }

    /// Runs one write through the write path (module docs) on the calling thread and
    /// returns once it is durable and applied. Blocking: call from `spawn_blocking` in
    /// async code. The shop batches concurrent writes (leader/follower, `shop.rs`) instead.
    pub fn transact<T, F>(&self, op: F) -> Result<Committed<T>>
    where
        F: Fn(&Tx<'_>) -> TxResult<T>,
    {
        let mut value = None;
        let outcome = self.transact_batch(1, |_, tx| {
            value = Some(op(tx)?);
            Ok(())
        });
        let BatchOutcome { term, mut writes } = outcome?;
        let lsn = writes.pop().unwrap_or(Ok(None))?;
        let value = value.ok_or_else(|| ShopError::internal("a committed write left no result"))?;
        Ok(Committed { value, lsn, term })
    }

    /// Runs `n` independent writes as ONE batch of the write path (module docs): each
    /// under its own LSN with its own WAL entry, all appended with one `fdatasync`, then
    /// applied. Returns once the batch is durable and applied.
    ///
    /// Each write stays atomic: `run(i, tx)` runs write `i`; when it fails, everything it
    /// wrote is rolled back to the savepoint taken before it, it logs nothing, and the next
    /// write goes on. Later writes see earlier ones, exactly as if they had committed one
    /// after the other.
    ///
    /// Returns the term the batch committed in and each write's outcome in order (its LSN,
    /// `None` when it changed nothing, or its own error). An error of the batch itself
    /// (the WAL) is returned instead and nothing of the batch is acknowledged.
    pub fn transact_batch<F>(&self, n: usize, mut run: F) -> Result<BatchOutcome>
    where
        F: FnMut(usize, &Tx<'_>) -> TxResult<()>,
    {
        let _writer = lock(&self.writer);
        let term = match self
            .writable_term()
            .and_then(|t| self.check_intact().map(|()| t))
        {
            Ok(term) => term,
            Err(refused) => {
                return Ok(BatchOutcome {
                    term: self.term(),
                    writes: vec![Err(refused); n],
                })
            }
        };
        // A replica promoted with entries still unapplied: they come first.
        self.apply_unapplied()?;
        let tx = Tx::new(self, term, self.last_lsn()? + 1, concord::clock::unix_ms());
        let mut writes = Vec::with_capacity(n);
        for i in 0..n {
            match run(i, &tx) {
                Ok(()) => writes.push(Ok(tx.log())),
                Err(ConflictableTransactionError::Abort(e)) => {
                    tx.rollback();
                    writes.push(Err(e));
                }
                Err(ConflictableTransactionError::Storage(e)) => {
                    tx.rollback();
                    writes.push(Err(e.into()));
                }
                Err(_) => {
                    tx.rollback();
                    writes.push(Err(ShopError::internal("unexpected write conflict")));
                }
            }
        }
        let entries = tx.entries.take();
        let state = tx.pending.take();
        self.commit_entries(&entries, Some(state))?;
        Ok(BatchOutcome { term, writes })
    }

    fn check_intact(&self) -> Result<()> {
        if self.broken.load(Ordering::Acquire) {
            return Err(ShopError::Unavailable(
                "a WAL write failed earlier; this shop takes no writes until restarted".into(),
            ));
        }
        Ok(())
    }

    /// Steps 3–5 of the write path for consecutive `entries` continuing the applied LSN.
    /// `state`, when given, is the batch's final value of every key its entries touch
    /// (`Tx::pending`): applying it instead of each entry in turn gives the same trees
    /// with one sled insert per key, not per mutation (a batch of N creations writes the
    /// id counter once, not N times). Caller holds the writer lock.
    fn commit_entries(
        &self,
        entries: &[WalEntry],
        state: Option<HashMap<Key, Option<IVec>>>,
    ) -> Result<()> {
        let Some(last) = entries.last().map(|e| e.lsn) else {
            return Ok(());
        };
        let started = Instant::now();
        if let Err(e) = lock(&self.log).append(entries) {
            self.broken.store(true, Ordering::Release);
            tracing::error!(error = %e, "WAL append failed; refusing writes until restart");
            return Err(e);
        }
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        self.counters
            .writes
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        let elapsed = started.elapsed();
        self.counters
            .sync_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
        self.counters.histograms.observe(elapsed, entries.len());
        self.durable.fetch_max(last, Ordering::AcqRel);
        {
            let _view = self.view.write().unwrap_or_else(|p| p.into_inner());
            let applied = match state {
                Some(state) => apply_state(&self.trees, state),
                None => entries
                    .iter()
                    .try_for_each(|entry| apply_to_trees(&self.trees, entry)),
            };
            if let Err(e) = applied {
                // Durable in the WAL: a restart replays it. Until then stop writing.
                self.broken.store(true, Ordering::Release);
                return Err(e);
            }
            self.checkpoint.applied.store(last, Ordering::Release);
        }
        self.publish_committed(entries);
        Ok(())
    }

    /// Appends freshly committed entries to the in-memory tail, then tells the WAL shipper
    /// (in that order, so a woken shipper finds them). The tail only ever holds
    /// consecutive LSNs: an entry that does not follow its last one starts it afresh.
    fn publish_committed(&self, logged: &[WalEntry]) {
        let Some(lsn) = logged.last().map(|e| e.lsn) else {
            return;
        };
        {
            let mut tail = lock(&self.tail);
            for entry in logged {
                if tail.back().is_some_and(|last| last.lsn + 1 != entry.lsn) {
                    tail.clear();
                }
                if tail.len() == WAL_TAIL_CAPACITY {
                    tail.pop_front();
                }
                tail.push_back(entry.clone());
            }
        }
        self.committed_tx.send_if_modified(|last| {
            let newer = lsn > *last;
            if newer {
                *last = lsn;
            }
            newer
        });
    }

    /// Applies a run of consecutive WAL entries from the primary through the write path
    /// (append to this store's WAL, one sync, apply): what a replica does with each batch
    /// it receives. Entries at or below the store's LSN are skipped (idempotent
    /// re-delivery), a gap refuses the whole batch and changes nothing. Reports
    /// `Applied(last applied LSN)`, or `Skipped(last entry's LSN)` when nothing was new.
    /// Returns once the entries are durable.
    pub fn apply_wal_entries_flushed(&self, entries: &[WalEntry]) -> Result<Applied> {
        let _writer = lock(&self.writer);
        self.check_intact()?;
        self.apply_unapplied()?;
        let last = self.last_lsn()?;
        let fresh: Vec<WalEntry> = entries.iter().filter(|e| e.lsn > last).cloned().collect();
        if fresh.is_empty() {
            return Ok(Applied::Skipped(entries.last().map_or(last, |e| e.lsn)));
        }
        for (i, entry) in fresh.iter().enumerate() {
            if entry.lsn != last + 1 + i as u64 {
                return Err(ShopError::precondition(format!(
                    "WAL gap: store is at LSN {}, entry has LSN {}",
                    last + i as u64,
                    entry.lsn
                )));
            }
        }
        self.commit_entries(&fresh, None)?;
        Ok(Applied::Applied(fresh.last().expect("not empty").lsn))
    }

    /// Replica pipelining, first half: appends the primary's consecutive `entries` to this
    /// store's WAL with one sync and returns at once, without applying them (module docs of
    /// `replication`, "Stream"). Entries at or below the durable LSN are skipped
    /// (re-delivery); a gap refuses the batch and changes nothing. `Applied(last durable
    /// LSN)`, or `Skipped` when nothing was new. The entries are applied by
    /// [`Store::apply_replicated`] (or before the next local write); a crash before that
    /// replays them from the WAL at start-up.
    pub fn append_replicated(&self, entries: &[WalEntry]) -> Result<Applied> {
        let _writer = lock(&self.writer);
        self.check_intact()?;
        let durable = self.durable_lsn();
        let fresh: Vec<WalEntry> = entries
            .iter()
            .filter(|e| e.lsn > durable)
            .cloned()
            .collect();
        let Some(last) = fresh.last().map(|e| e.lsn) else {
            return Ok(Applied::Skipped(entries.last().map_or(durable, |e| e.lsn)));
        };
        for (i, entry) in fresh.iter().enumerate() {
            if entry.lsn != durable + 1 + i as u64 {
                return Err(ShopError::precondition(format!(
                    "WAL gap: store is durable at LSN {}, entry has LSN {}",
                    durable + i as u64,
                    entry.lsn
                )));
            }
        }
        let started = Instant::now();
        if let Err(e) = lock(&self.log).append(&fresh) {
            self.broken.store(true, Ordering::Release);
            tracing::error!(error = %e, "WAL append failed; refusing writes until restart");
            return Err(e);
        }
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        self.counters
            .writes
            .fetch_add(fresh.len() as u64, Ordering::Relaxed);
        self.counters
            .sync_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.durable.fetch_max(last, Ordering::AcqRel);
        lock(&self.unapplied).extend(fresh);
        Ok(Applied::Applied(last))
    }

    /// Replica pipelining, second half: applies every entry [`Store::append_replicated`]
    /// made durable to the trees; returns the applied LSN.
    pub fn apply_replicated(&self) -> Result<Lsn> {
        let _writer = lock(&self.writer);
        self.apply_unapplied()?;
        self.last_lsn()
    }

    /// Applies the durable but unapplied entries. Caller holds the writer lock.
    fn apply_unapplied(&self) -> Result<()> {
        let entries: Vec<WalEntry> = lock(&self.unapplied).drain(..).collect();
        let Some(last) = entries.last().map(|e| e.lsn) else {
            return Ok(());
        };
        {
            let _view = self.view.write().unwrap_or_else(|p| p.into_inner());
            for entry in &entries {
                if let Err(e) = apply_to_trees(&self.trees, entry) {
                    // Durable in the WAL: a restart replays it. Until then stop writing.
                    self.broken.store(true, Ordering::Release);
                    return Err(e);
                }
            }
            self.checkpoint.applied.store(last, Ordering::Release);
        }
        self.publish_committed(&entries);
        Ok(())
    }

    /// [`apply_wal_entries_flushed`](Self::apply_wal_entries_flushed) in the
    /// [`Committed`] form.
    pub fn apply_wal_entries(&self, entries: &[WalEntry]) -> Result<Committed<Applied>> {
        let applied = self.apply_wal_entries_flushed(entries)?;
        Ok(Committed {
            value: applied,
            lsn: match applied {
                Applied::Applied(lsn) => Some(lsn),
                Applied::Skipped(_) => None,
            },
            term: self.term(),
        })
    }

    /// Applies one WAL entry from the primary (replica side). Idempotent: an entry at or
    /// below the local LSN is skipped. An entry beyond `last + 1` is a gap and fails with
    /// `FailedPrecondition` (the shipper must resend from `last_lsn() + 1`).
    pub fn apply_wal_entry(&self, entry: &WalEntry) -> Result<Committed<Applied>> {
        self.apply_wal_entries(std::slice::from_ref(entry))
    }

    /// Up to `max` WAL entries with LSN > `after`, in order, read from the WAL files (the
    /// shipper's catch-up path): `wal.read_from(after)`.
    pub fn wal_since(&self, after: Lsn, max: usize) -> Result<Vec<WalEntry>> {
        let after = after.max(self.wal_first.load(Ordering::Acquire).saturating_sub(1));
        lock(&self.log).read_from(after, max)
    }

    /// Like [`wal_since`](Self::wal_since), from memory and without touching the files:
    /// `None` when the in-memory tail does not reach back to `after + 1` (read the WAL then).
    pub fn wal_tail_since(&self, after: Lsn, max: usize) -> Option<Vec<WalEntry>> {
        let tail = lock(&self.tail);
        let first = tail.front()?.lsn;
        let last = tail.back()?.lsn;
        if after >= last {
            return (after == last).then(Vec::new);
        }
        let skip = usize::try_from(after.checked_add(1)?.checked_sub(first)?).ok()?;
        Some(tail.iter().skip(skip).take(max).cloned().collect())
    }

    /// Forgets the in-memory tail (the WAL's history was replaced or continued elsewhere).
    fn clear_tail(&self) {
        lock(&self.tail).clear();
    }

    /// Trims the WAL below `below` (at most `max` entries per call, oldest first) and
    /// returns how many entries went. The last entry is never trimmed (`below` is capped at
    /// `last_lsn`). The logical start moves at once (recorded in sled's `meta`, durable
    /// with the next checkpoint; a crash before it only brings trimmed entries back, which
    /// is harmless); segment files go once every entry in them is below both the new start
    /// and the checkpoint, so start-up replay never misses an entry.
    pub fn trim_wal(&self, below: Lsn, max: usize) -> Result<usize> {
        let last = self.last_lsn()?;
        let first = self.wal_first.load(Ordering::Acquire);
        let target = below.min(last).min(first.saturating_add(max as u64));
        let mut trimmed = 0;
        if target > first && last > 0 {
            self.meta().insert(META_WAL_FIRST, &target.to_be_bytes())?;
            self.checkpoint.dirty.store(true, Ordering::Release);
            self.wal_first.store(target, Ordering::Release);
            trimmed = (target - first) as usize;
        }
        let keep_from = self
            .wal_first
            .load(Ordering::Acquire)
            .min(self.checkpointed_lsn() + 1);
        lock(&self.log).remove_below(keep_from)?;
        Ok(trimmed)
    }

    /// LSN of the oldest WAL entry still stored (`None` when the WAL is empty).
    pub fn first_wal_lsn(&self) -> Result<Option<Lsn>> {
        let log = lock(&self.log);
        let first = self.wal_first.load(Ordering::Acquire).max(log.first_lsn());
        Ok((first <= log.last_lsn()).then_some(first))
    }

    /// Term of the WAL entry at `lsn` (`None` if that entry is not stored, e.g. `lsn` 0
    /// or before a snapshot). The replica sends it so the primary can detect divergence.
    pub fn term_at(&self, lsn: Lsn) -> Result<Option<u64>> {
        if lsn < self.wal_first.load(Ordering::Acquire) {
            return Ok(None);
        }
        if let Some(term) = lock(&self.tail)
            .iter()
            .rev()
            .find(|e| e.lsn == lsn)
            .map(|e| e.term)
        {
            return Ok(Some(term));
        }
        Ok(lock(&self.log).entry(lsn)?.map(|e| e.term))
    }

    /// Starts installing a snapshot (replica side): empties every data tree and the WAL
    /// and sets `last_lsn` to 0, so a crash midway leaves an empty store that asks for
    /// everything again. Not atomic as a whole, by design (snapshots may be large).
    pub fn begin_snapshot(&self) -> Result<()> {
        let _writer = lock(&self.writer);
        for name in TreeName::ALL {
            self.tree(name).clear()?;
        }
        self.meta().insert(META_LAST_LSN, &0u64.to_be_bytes())?;
        self.meta().insert(META_WAL_FIRST, &0u64.to_be_bytes())?;
        self.db.flush()?;
        lock(&self.log).reset(1)?;
        self.set_positions(0);
        Ok(())
    }

    fn set_positions(&self, lsn: Lsn) {
        lock(&self.unapplied).clear();
        self.checkpoint.applied.store(lsn, Ordering::Release);
        self.checkpoint.checkpointed.store(lsn, Ordering::Release);
        self.durable.store(lsn, Ordering::Release);
        self.wal_first.store(0, Ordering::Release);
        self.clear_tail();
        self.committed_tx.send_replace(lsn);
    }

    /// Writes one chunk of snapshot puts (replica side).
    pub fn apply_snapshot_chunk(&self, mutations: &[Mutation]) -> Result<()> {
        for m in mutations {
            let tree = self.tree(m.tree);
            match &m.value {
                Some(v) => tree.insert(&m.key, v.as_slice())?,
                None => tree.remove(&m.key)?,
            };
        }
        Ok(())
    }

    /// Completes a snapshot: the store now stands at `lsn`, flushed before returning, and
    /// its WAL starts empty at `lsn + 1` (a later replica of this store gets a snapshot).
    pub fn finish_snapshot(&self, lsn: Lsn, term: u64) -> Result<()> {
        let _writer = lock(&self.writer);
        self.meta().insert(META_LAST_LSN, &lsn.to_be_bytes())?;
        if term > self.term() {
            self.meta().insert(META_TERM, &term.to_be_bytes())?;
            self.term.store(term, Ordering::Release);
        }
        self.db.flush()?;
        lock(&self.log).reset(lsn + 1)?;
        self.set_positions(lsn);
        Ok(())
    }

    /// SHA-256 (hex) over every key/value of the six data trees, in tree then key order,
    /// each field length-prefixed. Two stores with the same digest hold byte-identical data;
    /// the `wal` and `meta` trees are per store and left out (a snapshotted replica's WAL
    /// legitimately differs). Tests compare a primary and its replica with it.
    pub fn digest(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for name in TreeName::ALL {
            let tree_name = name.as_str().as_bytes();
            hasher.update((tree_name.len() as u64).to_be_bytes());
            hasher.update(tree_name);
            for item in self.tree(name).iter() {
                let (k, v) = item?;
                hasher.update((k.len() as u64).to_be_bytes());
                hasher.update(&k);
                hasher.update((v.len() as u64).to_be_bytes());
                hasher.update(&v);
            }
        }
        Ok(hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }

    /// Every key/value of every data tree, in tree then key order (snapshots and tests).
    pub fn dump(&self) -> Result<Vec<Mutation>> {
        let mut out = Vec::new();
        for name in TreeName::ALL {
            for item in self.tree(name).iter() {
                let (k, v) = item?;
                out.push(Mutation {
                    tree: name,
                    key: k.to_vec(),
                    value: Some(v.to_vec()),
                });
            }
        }
        Ok(out)
    }
}

/// Applies one entry's mutations to the trees (plain inserts; the caller records the LSN).
fn apply_to_trees(trees: &[sled::Tree], entry: &WalEntry) -> Result<()> {
    for m in &entry.mutations {
        let tree = &trees[m.tree.index()];
        match &m.value {
            Some(v) => tree.insert(m.key.as_slice(), v.as_slice())?,
            None => tree.remove(m.key.as_slice())?,
        };
    }
    Ok(())
}

/// Applies a batch's final key states (see `Store::commit_entries`).
fn apply_state(trees: &[sled::Tree], state: HashMap<Key, Option<IVec>>) -> Result<()> {
    for ((tree, key), value) in state {
        let tree = &trees[tree.index()];
        match value {
            Some(v) => tree.insert(key, v)?,
            None => tree.remove(key)?,
        };
    }
    Ok(())
}

impl Drop for Store {
    fn drop(&mut self) {
        *lock(&self.checkpoint.stop) = true;
        self.checkpoint.wake.notify_all();
        if let Some(thread) = self.checkpointer.take() {
            if thread.join().is_err() {
                tracing::error!("shop checkpointer panicked");
            }
        }
        if let Err(e) = self.checkpoint.run_once() {
            tracing::error!(error = %e, "final checkpoint failed; start-up will replay the WAL");
        }
    }
}

type Key = (TreeName, Vec<u8>);

/// A write's handle on the trees: reads see the state plus the batch's pending changes;
/// every put/delete is recorded for the WAL entry. The only way a write touches the store.
pub struct Tx<'a> {
    store: &'a Store,
    /// Changes of the batch so far, not yet applied (`None`: deleted).
    pending: RefCell<HashMap<Key, Option<IVec>>>,
    /// For the current write: each key's pending state before it touched it, oldest first.
    undo: RefCell<Vec<(Key, Option<Option<IVec>>)>>,
    mutations: RefCell<Vec<Mutation>>,
    /// The entries this batch logged, in LSN order.
    entries: RefCell<Vec<WalEntry>>,
    next_lsn: Cell<Lsn>,
    term: u64,
    now_ms: i64,
}

impl<'a> Tx<'a> {
    fn new(store: &'a Store, term: u64, next_lsn: Lsn, now_ms: i64) -> Self {
        Self {
            store,
            pending: RefCell::new(HashMap::new()),
            undo: RefCell::new(Vec::new()),
            mutations: RefCell::new(Vec::new()),
            entries: RefCell::new(Vec::new()),
            next_lsn: Cell::new(next_lsn),
            term,
            now_ms,
        }
    }

    /// Undoes every put/delete of the current write, newest first, and forgets its
    /// mutations: the failed write leaves no trace in the batch or the WAL.
    fn rollback(&self) {
        self.mutations.borrow_mut().clear();
        let undo = std::mem::take(&mut *self.undo.borrow_mut());
        let mut pending = self.pending.borrow_mut();
        for (key, before) in undo.into_iter().rev() {
            match before {
                Some(state) => pending.insert(key, state),
                None => pending.remove(&key),
            };
        }
    }

    /// Wall-clock time of the batch (ms since the Unix epoch).
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// The term this write commits in.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Reads a key (sees this batch's own writes).
    pub fn get(&self, tree: TreeName, key: &[u8]) -> TxResult<Option<IVec>> {
        if let Some(state) = self.pending.borrow().get(&(tree, key.to_vec())) {
            return Ok(state.clone());
        }
        Ok(self.store.tree(tree).get(key)?)
    }

    fn set(&self, tree: TreeName, key: &[u8], value: Option<Vec<u8>>) {
        let k = (tree, key.to_vec());
        let before = self
            .pending
            .borrow_mut()
            .insert(k.clone(), value.clone().map(IVec::from));
        self.undo.borrow_mut().push((k, before));
        self.mutations.borrow_mut().push(Mutation {
            tree,
            key: key.to_vec(),
            value,
        });
    }

    /// Writes a key.
    pub fn put(&self, tree: TreeName, key: &[u8], value: Vec<u8>) -> TxResult<()> {
        self.set(tree, key, Some(value));
        Ok(())
    }

    /// Deletes a key (a no-op delete is still logged; replay is idempotent).
    pub fn delete(&self, tree: TreeName, key: &[u8]) -> TxResult<()> {
        self.set(tree, key, None);
        Ok(())
    }

    /// Reads and decodes a record (`codec`); a record that does not decode is `Internal`.
    pub fn get_record<R: Record>(&self, key: &[u8]) -> TxResult<Option<R>> {
        match self.get(R::TREE, key)? {
            Some(bytes) => Ok(Some(R::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Encodes and writes a record (`codec`).
    pub fn put_record<R: Record>(&self, key: &[u8], record: &R) -> TxResult<()> {
        self.put(R::TREE, key, record.encode())
    }

    /// Increments the `counters` entry `name` and returns the new id. Ids are unique
    /// across terms: the first id of term T is at least `(T - 1) × ID_TERM_STRIDE + 1`,
    /// so a new primary never hands out an id the old one may have issued in a lost tail
    /// (term 1 ids are 1, 2, 3, ...).
    pub fn next_id(&self, name: &[u8]) -> TxResult<u64> {
        let last = read_u64(self.get(TreeName::Counters, name)?.as_deref())?;
        let floor = (self.term - 1)
            .checked_mul(ID_TERM_STRIDE)
            .ok_or_else(|| ShopError::internal("term too large for the id space"))?;
        let next = last
            .max(floor)
            .checked_add(1)
            .ok_or_else(|| ShopError::internal("id counter overflow"))?;
        self.put(TreeName::Counters, name, next.to_be_bytes().to_vec())?;
        Ok(next)
    }

    /// The LSN this write will commit under if it writes anything.
    pub fn lsn(&self) -> TxResult<Lsn> {
        Ok(self.next_lsn.get())
    }

    /// Gives the current write its LSN and WAL entry, if it changed anything; it is then
    /// part of the batch for good (a new savepoint starts).
    fn log(&self) -> Option<Lsn> {
        self.undo.borrow_mut().clear();
        if self.mutations.borrow().is_empty() {
            return None;
        }
        let lsn = self.next_lsn.get();
        self.entries.borrow_mut().push(WalEntry {
            lsn,
            term: self.term,
            committed_at_ms: self.now_ms,
            mutations: std::mem::take(&mut *self.mutations.borrow_mut()),
        });
        self.next_lsn.set(lsn + 1);
        Some(lsn)
    }
}

/// Reads a big-endian u64 value (absent = 0).
/// A (term, LSN) pair as stored in `meta`: two big-endian u64s.
fn term_lsn_bytes(term: u64, lsn: Lsn) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&term.to_be_bytes());
    bytes[8..].copy_from_slice(&lsn.to_be_bytes());
    bytes
}

/// Reads a (term, LSN) pair written by [`term_lsn_bytes`]; `None` when absent.
fn read_term_lsn(bytes: Option<&[u8]>) -> Result<Option<(u64, Lsn)>> {
    let Some(b) = bytes else {
        return Ok(None);
    };
    if b.len() != 16 {
        return Err(ShopError::internal(format!(
            "a (term, LSN) record has {} bytes, not 16",
            b.len()
        )));
    }
    Ok(Some((read_u64(Some(&b[..8]))?, read_u64(Some(&b[8..]))?)))
}

fn read_u64(bytes: Option<&[u8]>) -> Result<u64> {
    match bytes {
        None => Ok(0),
        Some(b) => {
            let arr: [u8; 8] = b
                .try_into()
                .map_err(|_| ShopError::internal(format!("counter has {} bytes", b.len())))?;
            Ok(u64::from_be_bytes(arr))
        }
    }
}

#[cfg(test)]
pub mod test {
    //! Shared test helpers: a store in a fresh temporary directory.
    use super::*;

    /// A store in a temp dir; keep the `TempDir` alive as long as the store.
    pub fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&StoreConfig::new(dir.path().join("db"))).expect("open store");
        (dir, store)
    }
}

#[cfg(test)]
mod tests {
    use super::test::temp_store;
    use super::*;
    use crate::segments::SegmentLog;

    fn put(store: &Store, key: &[u8], value: &[u8]) -> Result<Option<Lsn>> {
        let c = store.transact(|tx| tx.put(TreeName::Carts, key, value.to_vec()))?;
        Ok(c.durable_blocking()?.lsn)
    }

    /// A store made a task of a tracker is joined by `wait()` once its last handle drops,
    /// whoever drops it, and the directory opens again at once afterwards.
    #[tokio::test]
    async fn a_closing_store_is_joined_through_its_tracker() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = StoreConfig::new(dir.path().join("db"));
        let tracker = tokio_util::task::TaskTracker::new();
        let store = Arc::new(Store::open(&config).expect("open").closes_on(&tracker));
        tracker.close();
        let user = Arc::clone(&store);
        drop(store);
        assert_eq!(tracker.len(), 1, "a user still holds the store");
        std::thread::spawn(move || drop(user));
        tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .expect("the close is joined");
        drop(Store::open(&config).expect("reopens at once"));
    }

    /// LSNs start at 1, have no gaps, skip aborted and no-op transactions, and each
    /// write's WAL entry holds exactly its mutations.
    #[test]
    fn lsns_are_gap_free_and_logged() {
        let (_dir, store) = temp_store();
        assert_eq!(put(&store, b"a", b"1").unwrap(), Some(1));
        let aborted = store.transact(|tx| -> TxResult<()> {
            tx.put(TreeName::Carts, b"x", b"y".to_vec())?;
            Err(ShopError::invalid("no").into())
        });
        assert!(matches!(aborted, Err(ShopError::InvalidArgument(_))));
        assert_eq!(store.tree(TreeName::Carts).get(b"x").unwrap(), None);
        let noop = store.transact(|tx| tx.get(TreeName::Carts, b"a")).unwrap();
        assert_eq!(noop.lsn, None);
        assert_eq!(put(&store, b"b", b"2").unwrap(), Some(2));
        let wal = store.wal_since(0, 10).unwrap();
        assert_eq!(wal.iter().map(|e| e.lsn).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(wal[1].mutations.len(), 1);
        assert_eq!(wal[1].mutations[0].key, b"b");
        assert_eq!(wal[1].term, 1);
        assert_eq!(store.last_lsn().unwrap(), 2);
        assert_eq!(store.wal_since(1, 10).unwrap().len(), 1);
        assert_eq!(store.first_wal_lsn().unwrap(), Some(1));
    }

    /// Concurrent writers get distinct consecutive LSNs, each durable when it returns.
    #[test]
    fn concurrent_writers_group_commit() {
        let (_dir, store) = temp_store();
        let store = std::sync::Arc::new(store);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .map(|i| {
                            put(&store, format!("{t}-{i}").as_bytes(), b"v")
                                .unwrap()
                                .unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut lsns: Vec<Lsn> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        lsns.sort_unstable();
        assert_eq!(lsns, (1..=400).collect::<Vec<_>>());
        let stats = store.commit_stats();
        assert_eq!(stats.writes, 400, "{stats:?}");
        assert_eq!(stats.durable_lsn, 400);
        tracing::info!(?stats, "group commit");
    }

    /// A batch is one transaction of independent writes: each gets its own consecutive LSN
    /// and WAL entry, later writes see earlier ones, and a write that fails is rolled back
    /// to its savepoint (every put and delete it made, even to keys it wrote twice) without
    /// costing the others anything.
    #[test]
    fn batch_writes_fail_alone() {
        let (_dir, store) = temp_store();
        put(&store, b"kept", b"before").unwrap();
        put(&store, b"gone", b"before").unwrap();
        let outcomes = store
            .transact_batch(4, |i, tx| match i {
                0 => tx.put(TreeName::Carts, b"a", b"1".to_vec()),
                1 => {
                    tx.put(TreeName::Carts, b"kept", b"first".to_vec())?;
                    tx.put(TreeName::Carts, b"kept", b"second".to_vec())?;
                    tx.delete(TreeName::Carts, b"gone")?;
                    tx.put(TreeName::Orders, b"new", b"x".to_vec())?;
                    Err(ShopError::precondition("out of stock").into())
                }
                2 => {
                    let a = tx.get(TreeName::Carts, b"a")?;
                    assert_eq!(a.as_deref(), Some(&b"1"[..]), "sees the earlier write");
                    tx.put(TreeName::Carts, b"b", b"2".to_vec())
                }
                _ => tx.get(TreeName::Carts, b"b").map(|_| ()), // changes nothing
            })
            .unwrap()
            .writes;
        assert_eq!(outcomes.len(), 4);
        assert_eq!(outcomes[0].as_ref().ok(), Some(&Some(3)));
        assert!(matches!(outcomes[1], Err(ShopError::FailedPrecondition(_))));
        assert_eq!(outcomes[2].as_ref().ok(), Some(&Some(4)));
        assert_eq!(outcomes[3].as_ref().ok(), Some(&None));
        assert_eq!(store.durable_lsn(), 4);
        let carts = store.tree(TreeName::Carts);
        assert_eq!(carts.get(b"kept").unwrap().as_deref(), Some(&b"before"[..]));
        assert_eq!(carts.get(b"gone").unwrap().as_deref(), Some(&b"before"[..]));
        assert_eq!(store.tree(TreeName::Orders).get(b"new").unwrap(), None);
        let wal = store.wal_since(2, 10).unwrap();
        assert_eq!(wal.iter().map(|e| e.lsn).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(wal[0].mutations.len(), 1);
        assert_eq!(wal[1].mutations[0].key, b"b");
        assert_eq!(store.last_lsn().unwrap(), 4);

        // Replayed on a replica, the batch's WAL gives the same data.
        assert_replays_to_same_data(&store);
    }

    /// `store`'s WAL (its first 10 entries), applied to a fresh replica, gives the same data.
    fn assert_replays_to_same_data(store: &Store) {
        let (_dir, replica) = temp_store();
        replica
            .apply_wal_entries(&store.wal_since(0, 10).unwrap())
            .unwrap()
            .durable_blocking()
            .unwrap();
        assert_eq!(replica.digest().unwrap(), store.digest().unwrap());
    }

    /// A batch applies each key's final state once (the counter of N writes is inserted
    /// once): the trees equal an entry-by-entry replay, also for a key put, deleted and
    /// put again, or put then deleted, within the batch; the checkpoint records the
    /// applied LSN in sled, so a reopen replays nothing and finds the same data.
    #[test]
    fn a_batch_applies_each_keys_final_state() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::new(dir.path().join("db"));
        let store = Store::open(&config).unwrap();
        put(&store, b"doomed", b"before").unwrap();
        let writes = store
            .transact_batch(5, |i, tx| match i {
                0 => tx.put(TreeName::Carts, b"k", b"1".to_vec()),
                1 => {
                    tx.delete(TreeName::Carts, b"k")?;
                    tx.put(TreeName::Carts, b"gone", b"x".to_vec())
                }
                2 => {
                    tx.put(TreeName::Carts, b"k", b"3".to_vec())?;
                    tx.delete(TreeName::Carts, b"gone")
                }
                3 => tx.delete(TreeName::Carts, b"doomed"),
                _ => tx.next_id(b"ctr").map(|_| ()),
            })
            .unwrap()
            .writes;
        assert!(
            writes.iter().all(|w| matches!(w, Ok(Some(_)))),
            "{writes:?}"
        );
        let carts = store.tree(TreeName::Carts);
        assert_eq!(carts.get(b"k").unwrap().as_deref(), Some(&b"3"[..]));
        assert_eq!(carts.get(b"gone").unwrap(), None);
        assert_eq!(carts.get(b"doomed").unwrap(), None);
        assert_replays_to_same_data(&store);

        assert_eq!(store.checkpoint().unwrap(), 6);
        let meta = store.meta().get(META_LAST_LSN).unwrap();
        assert_eq!(read_u64(meta.as_deref()).unwrap(), 6);
        let digest = store.digest().unwrap();
        drop(store);
        let store = Store::open(&config).unwrap();
        assert_eq!(store.last_lsn().unwrap(), 6);
        assert_eq!(store.digest().unwrap(), digest);
    }

    /// The in-memory tail serves exactly what the WAL holds for fresh commits (single and
    /// batched) and applied entries, and says `None` when it does not reach back far enough.
    #[test]
    fn wal_tail_matches_the_wal() {
        let (_dir, store) = temp_store();
        assert_eq!(store.wal_tail_since(0, 10), None, "empty tail: read sled");
        put(&store, b"a", b"1").unwrap();
        store
            .transact_batch(2, |i, tx| {
                tx.put(TreeName::Carts, &[i as u8], b"v".to_vec())
            })
            .unwrap();
        assert_eq!(
            store.wal_tail_since(0, 10).unwrap(),
            store.wal_since(0, 10).unwrap()
        );
        assert_eq!(
            store.wal_tail_since(1, 1).unwrap(),
            store.wal_since(1, 1).unwrap()
        );
        assert_eq!(store.wal_tail_since(3, 10), Some(vec![]), "nothing new");
        let (_d2, replica) = temp_store();
        put(&replica, b"own", b"x").unwrap();
        assert!(replica.wal_tail_since(0, 10).is_some());
        let (_d3, other) = temp_store();
        let entries = store.wal_since(0, 10).unwrap();
        other
            .apply_wal_entry(&entries[0])
            .unwrap()
            .durable_blocking()
            .unwrap();
        assert_eq!(
            other.wal_tail_since(0, 10),
            Some(entries[..1].to_vec()),
            "applied entries are kept for shipping after a promotion"
        );
    }

    /// Replaying a primary's WAL onto an empty store reproduces its data and WAL; replays
    /// are skipped and gaps refused.
    #[test]
    fn apply_wal_reproduces_primary() {
        let (_d1, primary) = temp_store();
        let (_d2, replica) = temp_store();
        put(&primary, b"a", b"1").unwrap();
        put(&primary, b"b", b"2").unwrap();
        primary
            .transact(|tx| {
                tx.delete(TreeName::Carts, b"a")?;
                tx.put(TreeName::Orders, b"o", b"3".to_vec())
            })
            .unwrap()
            .durable_blocking()
            .unwrap();
        let entries = primary.wal_since(0, 100).unwrap();
        let gap = replica.apply_wal_entry(&entries[1]);
        assert!(matches!(gap, Err(ShopError::FailedPrecondition(_))));
        for e in &entries {
            let applied = replica
                .apply_wal_entry(e)
                .unwrap()
                .durable_blocking()
                .unwrap();
            assert_eq!(applied.value, Applied::Applied(e.lsn));
        }
        for e in &entries {
            let again = replica
                .apply_wal_entry(e)
                .unwrap()
                .durable_blocking()
                .unwrap();
            assert_eq!(again.value, Applied::Skipped(e.lsn));
        }
        assert_eq!(replica.dump().unwrap(), primary.dump().unwrap());
        assert_eq!(replica.digest().unwrap(), primary.digest().unwrap());
        let (_d3, empty) = temp_store();
        assert_ne!(replica.digest().unwrap(), empty.digest().unwrap());
        assert_eq!(replica.wal_since(0, 100).unwrap(), entries);
        assert_eq!(replica.last_lsn().unwrap(), 3);
    }

    /// A batch applied in one transaction gives the same store as entry-by-entry replay:
    /// entries already applied are skipped, a gap anywhere refuses the whole batch and
    /// changes nothing.
    #[test]
    fn apply_wal_batch_reproduces_primary() {
        let (_d1, primary) = temp_store();
        let (_d2, replica) = temp_store();
        for i in 0..20u8 {
            put(&primary, &[b'k', i], &[i]).unwrap();
        }
        primary
            .transact(|tx| tx.delete(TreeName::Carts, &[b'k', 3]))
            .unwrap()
            .durable_blocking()
            .unwrap();
        let entries = primary.wal_since(0, 100).unwrap();
        assert_eq!(entries.len(), 21);

        let first = replica
            .apply_wal_entries(&entries[..5])
            .unwrap()
            .durable_blocking()
            .unwrap();
        assert_eq!(first.value, Applied::Applied(5));

        let mut gapped = entries[3..8].to_vec();
        gapped.remove(3); // LSN 7 missing: 4, 5, 6, 8
        let refused = replica.apply_wal_entries(&gapped);
        assert!(matches!(refused, Err(ShopError::FailedPrecondition(_))));
        assert_eq!(
            replica.last_lsn().unwrap(),
            5,
            "a refused batch changes nothing"
        );

        let rest = replica
            .apply_wal_entries(&entries[2..])
            .unwrap()
            .durable_blocking()
            .unwrap();
        assert_eq!(rest.value, Applied::Applied(21));
        let again = replica
            .apply_wal_entries(&entries)
            .unwrap()
            .durable_blocking()
            .unwrap();
        assert_eq!(again.value, Applied::Skipped(21));
        assert_eq!(replica.digest().unwrap(), primary.digest().unwrap());
        assert_eq!(replica.wal_since(0, 100).unwrap(), entries);
        assert_eq!(replica.durable_lsn(), 21);
    }

    /// Installing a snapshot replaces a diverged (even longer) history, resets the durable
    /// LSN to the snapshot's, and later entries apply on top.
    #[test]
    fn snapshot_replaces_diverged_history() {
        let (_d1, source) = temp_store();
        let (_d2, target) = temp_store();
        put(&source, b"a", b"1").unwrap();
        for i in 0..3u8 {
            put(&target, &[b'x', i], b"stale").unwrap();
        }
        assert_eq!(target.durable_lsn(), 3);
        target.begin_snapshot().unwrap();
        target
            .apply_snapshot_chunk(&source.dump().unwrap())
            .unwrap();
        target
            .finish_snapshot(source.last_lsn().unwrap(), 1)
            .unwrap();
        assert_eq!(
            target.durable_lsn(),
            1,
            "durable LSN follows the new history"
        );
        assert_eq!(target.dump().unwrap(), source.dump().unwrap());
        put(&source, b"b", b"2").unwrap();
        for e in source.wal_since(1, 10).unwrap() {
            let applied = target
                .apply_wal_entry(&e)
                .unwrap()
                .durable_blocking()
                .unwrap();
            assert_eq!(applied.value, Applied::Applied(e.lsn));
        }
        assert_eq!(target.dump().unwrap(), source.dump().unwrap());
        assert_eq!(target.last_lsn().unwrap(), 2);
        assert_eq!(target.durable_lsn(), 2);
    }

    /// Replica pipelining: appended entries are durable (and survive a crash before they
    /// are applied: start-up replays them) but only applied by `apply_replicated` or by the
    /// next local write; re-delivery is skipped, a gap refused, and the result equals the
    /// primary.
    #[test]
    fn appended_entries_are_durable_before_they_are_applied() {
        let (_d1, primary) = temp_store();
        for i in 0..10u8 {
            put(&primary, &[b'k', i], &[i]).unwrap();
        }
        let entries = primary.wal_since(0, 100).unwrap();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = StoreConfig::new(dir.path().join("db"));
        {
            let replica = Store::open(&config).expect("open");
            assert_eq!(
                replica.append_replicated(&entries[..6]).unwrap(),
                Applied::Applied(6)
            );
            assert_eq!(replica.durable_lsn(), 6);
            assert_eq!(
                replica.last_lsn().unwrap(),
                0,
                "not applied on the ack path"
            );
            assert_eq!(replica.apply_replicated().unwrap(), 6);
            let mut gapped = entries[6..].to_vec();
            gapped.remove(1);
            assert!(matches!(
                replica.append_replicated(&gapped),
                Err(ShopError::FailedPrecondition(_))
            ));
            assert_eq!(
                replica.append_replicated(&entries[4..8]).unwrap(),
                Applied::Applied(8)
            );
            assert_eq!(
                replica.append_replicated(&entries[..8]).unwrap(),
                Applied::Skipped(8)
            );
            // Closed with 7 and 8 in the WAL only, as a crash before the apply leaves them.
            drop(replica);
        }
        let replica = Store::open(&config).expect("reopen replays the WAL");
        assert_eq!(replica.last_lsn().unwrap(), 8);
        replica.append_replicated(&entries[8..]).unwrap();
        assert_eq!(replica.last_lsn().unwrap(), 8);
        // A promoted replica's first local write applies what is pending first.
        let written = put(&replica, b"new", b"1").unwrap();
        assert_eq!(written, Some(11));
        for i in 0..10u8 {
            assert_eq!(
                replica
                    .tree(TreeName::Carts)
                    .get([b'k', i])
                    .unwrap()
                    .as_deref(),
                Some(&[i][..])
            );
        }
    }

    /// The replica's persisted ack only grows within a term, belongs to its term, and
    /// survives a reopen; a promotion records where its term began.
    #[test]
    fn replica_ack_and_promotion_lsn_persist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = StoreConfig::new(dir.path().join("db"));
        {
            let store = Store::open(&config).expect("open");
            assert_eq!(store.replica_acked(1).expect("read"), 0);
            assert_eq!(store.promotion_lsn().expect("read"), None);
            for (term, lsn, want_1, want_2) in
                [(1, 5, 5, 0), (1, 3, 5, 0), (1, 9, 9, 0), (2, 4, 0, 4)]
            {
                store.record_replica_acked(term, lsn).expect("record");
                assert_eq!(
                    store.replica_acked(1).expect("read"),
                    want_1,
                    "{term}/{lsn}"
                );
                assert_eq!(
                    store.replica_acked(2).expect("read"),
                    want_2,
                    "{term}/{lsn}"
                );
            }
            put(&store, b"a", b"1").expect("put");
            let start = store.last_lsn().expect("lsn");
            assert_eq!(store.begin_term(3).expect("promote"), start);
            assert_eq!(store.promotion_lsn().expect("read"), Some(start));
            store.record_replica_acked(3, 7).expect("record");
            drop(store);
        }
        let store = Store::open(&config).expect("reopen");
        assert_eq!(store.term(), 3);
        assert_eq!(store.replica_acked(3).expect("read"), 7);
        assert!(store.promotion_lsn().expect("read").is_some());
        store.set_term(4).expect("follow a newer primary");
        assert_eq!(
            store.promotion_lsn().expect("read"),
            None,
            "not promoted into term 4"
        );
    }

    /// Trimming deletes only entries below the bound, never the last one, and the store
    /// reopens consistently afterwards.
    #[test]
    fn trim_wal_keeps_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::new(dir.path().join("db"));
        {
            let store = Store::open(&config).unwrap();
            for i in 0..10u8 {
                put(&store, &[i], b"v").unwrap();
            }
            assert_eq!(store.trim_wal(4, 2).unwrap(), 2, "at most `max` per call");
            assert_eq!(store.first_wal_lsn().unwrap(), Some(3));
            assert_eq!(store.trim_wal(4, 100).unwrap(), 1);
            assert_eq!(store.trim_wal(4, 100).unwrap(), 0);
            assert_eq!(store.trim_wal(u64::MAX, 100).unwrap(), 6, "keeps LSN 10");
            assert_eq!(store.first_wal_lsn().unwrap(), Some(10));
            assert_eq!(store.term_at(10).unwrap(), Some(1));
            assert_eq!(store.term_at(9).unwrap(), None);
            assert_eq!(put(&store, b"x", b"v").unwrap(), Some(11));
            assert_eq!(store.wal_since(0, 10).unwrap().len(), 2);
        }
        let store = Store::open(&config).unwrap();
        assert_eq!(store.last_lsn().unwrap(), 11);
        assert_eq!(store.first_wal_lsn().unwrap(), Some(10));
    }

    /// Data, LSN and term survive a close and reopen.
    #[test]
    fn reopen_recovers_lsn_and_term() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::new(dir.path().join("db"));
        {
            let store = Store::open(&config).unwrap();
            put(&store, b"a", b"1").unwrap();
            store.set_term(4).unwrap();
            assert!(store.set_term(2).is_err());
        }
        let store = Store::open(&config).unwrap();
        assert_eq!(store.last_lsn().unwrap(), 1);
        assert_eq!(store.durable_lsn(), 1);
        assert_eq!(store.term(), 4);
        assert_eq!(put(&store, b"b", b"2").unwrap(), Some(2));
        assert_eq!(store.wal_since(1, 1).unwrap()[0].term, 4);
    }

    fn segment_files(config: &StoreConfig) -> Vec<PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(config.path.join(WAL_DIR))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    }

    /// A crash after the WAL sync but before the sled apply (records durable in the WAL,
    /// absent from sled) is replayed at open: the writes are there, LSNs continue.
    #[test]
    fn open_replays_what_sled_never_applied() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::new(dir.path().join("db"));
        {
            let store = Store::open(&config).unwrap();
            put(&store, b"a", b"1").unwrap();
        }
        {
            // What the writer had made durable when it died, before applying.
            let (mut log, _) = SegmentLog::open(&config.path.join(WAL_DIR), 1 << 20).unwrap();
            let entry = |lsn: Lsn, key: &[u8]| WalEntry {
                lsn,
                term: 1,
                committed_at_ms: 0,
                mutations: vec![Mutation {
                    tree: TreeName::Carts,
                    key: key.to_vec(),
                    value: Some(b"from the WAL".to_vec()),
                }],
            };
            log.append(&[entry(2, b"b"), entry(3, b"a")]).unwrap();
        }
        let store = Store::open(&config).unwrap();
        assert_eq!(store.last_lsn().unwrap(), 3);
        let carts = store.tree(TreeName::Carts);
        assert_eq!(
            carts.get(b"a").unwrap().as_deref(),
            Some(&b"from the WAL"[..])
        );
        assert_eq!(
            carts.get(b"b").unwrap().as_deref(),
            Some(&b"from the WAL"[..])
        );
        assert_eq!(put(&store, b"c", b"v").unwrap(), Some(4));
    }

    /// A torn record at the WAL's tail (garbage or a cut record after the last synced
    /// one) is dropped at open; every acknowledged write is still there and writing goes
    /// on after it.
    #[test]
    fn torn_tail_loses_nothing_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::new(dir.path().join("db"));
        {
            let store = Store::open(&config).unwrap();
            for i in 0..5u8 {
                put(&store, &[i], b"acked").unwrap();
            }
        }
        let last = segment_files(&config).pop().unwrap();
        let mut bytes = std::fs::read(&last).unwrap();
        let good_len = records_end(&bytes);
        // A half-written next record: a plausible header, then the process died.
        let mut torn = 200u32.to_le_bytes().to_vec();
        torn.extend_from_slice(&[0xab; 37]);
        bytes.splice(good_len..good_len + torn.len(), torn);
        std::fs::write(&last, &bytes).unwrap();
        let store = Store::open(&config).unwrap();
        assert_eq!(store.last_lsn().unwrap(), 5);
        for i in 0..5u8 {
            assert!(store.tree(TreeName::Carts).get([i]).unwrap().is_some());
        }
        assert_eq!(put(&store, b"next", b"v").unwrap(), Some(6));
        drop(store);
        let store = Store::open(&config).unwrap();
        assert_eq!(store.last_lsn().unwrap(), 6);
        assert!(records_end(&std::fs::read(&last).unwrap()) > good_len);
    }

    /// Where a segment's records end: its preallocated zeros start after the last
    /// record's last byte (the tests' values never end in a zero byte).
    fn records_end(segment: &[u8]) -> usize {
        segment.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
    }

    /// A corrupt record in the middle of the WAL stops the open with an error naming the
    /// file and the byte offset; nothing is truncated.
    #[test]
    fn corrupt_middle_record_stops_open() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::new(dir.path().join("db"));
        let offset_of_lsn_2;
        {
            let store = Store::open(&config).unwrap();
            put(&store, b"a", b"1").unwrap();
            offset_of_lsn_2 =
                records_end(&std::fs::read(&segment_files(&config)[0]).unwrap()) as u64;
            put(&store, b"b", b"2").unwrap();
            put(&store, b"c", b"3").unwrap();
        }
        let file = segment_files(&config).pop().unwrap();
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[offset_of_lsn_2 as usize + 12] ^= 0x01;
        std::fs::write(&file, &bytes).unwrap();
        let err = Store::open(&config).err().expect("must refuse").to_string();
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(err.contains(&format!("offset {offset_of_lsn_2}")), "{err}");
        assert_eq!(std::fs::read(&file).unwrap(), bytes);
    }

    /// Ids are unique across terms: term 1 counts 1, 2, ...; the first id of term 3 is
    /// above every id terms 1 and 2 can have issued, so ids lost with an old primary's
    /// tail are never handed out again.
    #[test]
    fn ids_jump_at_a_new_term() {
        let (_dir, store) = temp_store();
        let id = |store: &Store| {
            store
                .transact(|tx| tx.next_id(b"x"))
                .unwrap()
                .durable_blocking()
                .unwrap()
                .value
        };
        assert_eq!((id(&store), id(&store)), (1, 2));
        store.set_term(3).unwrap();
        assert_eq!(id(&store), 2 * ID_TERM_STRIDE + 1);
        assert_eq!(id(&store), 2 * ID_TERM_STRIDE + 2);
    }

    /// Trimming never deletes a segment above sled's checkpoint (start-up replay needs it),
    /// and does once the checkpoint passed it; segments rotate by size.
    #[test]
    fn trim_deletes_segments_only_below_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::new(dir.path().join("db"));
        config.segment_bytes = 100;
        let store = Store::open(&config).unwrap();
        for i in 0..20u8 {
            put(&store, &[i], b"v").unwrap();
        }
        let before = segment_files(&config).len();
        assert!(before >= 5, "{before} segments");
        let checkpointed = store.checkpointed_lsn();
        store.trim_wal(15, 100).unwrap();
        assert_eq!(store.first_wal_lsn().unwrap(), Some(15));
        if checkpointed == 0 {
            assert_eq!(
                segment_files(&config).len(),
                before,
                "nothing checkpointed yet"
            );
        }
        assert_eq!(store.checkpoint().unwrap(), 20);
        store.trim_wal(15, 100).unwrap();
        assert!(segment_files(&config).len() < before);
        assert_eq!(store.wal_since(0, 100).unwrap()[0].lsn, 15);
        drop(store);
        let store = Store::open(&config).unwrap();
        assert_eq!(store.first_wal_lsn().unwrap(), Some(15));
        assert_eq!(store.last_lsn().unwrap(), 20);
    }
}
