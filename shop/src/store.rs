//! The sled store: data trees, the WAL, LSN allocation, durability.
//!
//! Every mutating operation runs through [`Store::transact`], which executes the caller's
//! closure inside ONE sled transaction over all trees and, in that same transaction:
//! 1. records each put/delete the closure makes through [`Tx`] (the closure cannot write
//!    around the log: `Tx` is its only handle on the trees);
//! 2. if anything changed, allocates the next LSN from `meta/last_lsn` (read + write
//!    inside the transaction), and
//! 3. writes the [`WalEntry`] under `wal/<lsn>`.
//!
//! **LSN choice.** Allocating from a meta key inside the transaction makes LSNs gap-free
//! (an aborted or retried transaction never consumed one: its write to `meta` vanishes
//! with it) and ordered with commit order (two writers both read-modify-write the same
//! key, so they conflict and serialize; sled 0.34 in fact runs transactions under a
//! process-wide write lock, and even without that the meta key would force a retry).
//! `sled::generate_id` was rejected: it is neither gap-free nor transactional. The cost is
//! that all writers serialize on one key, which sled imposes anyway.
//!
//! **Durability.** `transact` returns a [`Committed`] holding a group-commit ticket; the
//! write is acknowledged only after awaiting it ([`Committed::durable`]), i.e. after an
//! fsync that started after the commit. The shop writer instead runs a whole batch of
//! writes in one transaction ([`Store::transact_batch`], each write with its own LSN and
//! a savepoint so it can fail alone) and calls [`Store::flush_through`] before reporting
//! any of them. sled recovers transactions atomically, so after a crash either all of a
//! write (data + WAL entry + LSN) is there or none of it; a batch is recovered whole or
//! not at all, and none of it was acknowledged before its flush.
//!
//! **Replication hooks.** [`Store::apply_wal_entry`] applies a primary's entry on a
//! replica: it skips entries at or below the local LSN (idempotent re-delivery), refuses a
//! gap, and otherwise replays the mutations through the same `Tx` path — which re-logs
//! them under the same LSN, so a promoted replica owns an identical WAL.
//! [`Store::subscribe`] publishes the last committed LSN for the WAL shipper.
//!
//! Failure behaviour: storage errors become `Unavailable` (I/O) or `Internal`; an error
//! from the closure aborts the transaction and nothing is written.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{IVec, Transactional};
use tokio::sync::watch;

use crate::error::{Result, ShopError};
use crate::group_commit::{GroupCommit, GroupCommitStats, Ticket, DEFAULT_LINGER};
use crate::wal::{Lsn, Mutation, TreeName, WalEntry};

/// Result type inside a transaction closure: `Err(ShopError)` aborts (via `?`), sled
/// conflicts retry the closure.
pub type TxResult<T> = std::result::Result<T, ConflictableTransactionError<ShopError>>;

/// A validated write, ready to run in a transaction: alone through [`Store::transact`], or
/// in the shop writer's batch through [`Store::transact_batch`]. It may run more than once
/// (sled retries on conflict), so it must not have side effects outside `Tx`. The domain
/// modules build one per mutation (`catalog::create_op`, ...) after validating the input,
/// so bad input is refused before it reaches the writer.
pub trait WriteOp<T>: Fn(&Tx<'_>) -> TxResult<T> + Send + 'static {}

impl<T, F> WriteOp<T> for F where F: Fn(&Tx<'_>) -> TxResult<T> + Send + 'static {}

const WAL_TREE: &str = "wal";
const META_TREE: &str = "meta";
/// `meta` key: LSN of the last committed (primary) or applied (replica) entry.
const META_LAST_LSN: &[u8] = b"last_lsn";
/// `meta` key: the current term of this store.
const META_TERM: &[u8] = b"term";

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory of the sled database (created if missing).
    pub path: PathBuf,
    /// How long the flusher waits for in-flight writers to join a group commit.
    pub linger: Duration,
    /// sled page-cache size in bytes.
    pub cache_capacity_bytes: u64,
}

impl StoreConfig {
    /// Defaults for a store at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            linger: DEFAULT_LINGER,
            cache_capacity_bytes: 256 * 1024 * 1024,
        }
    }
}

/// A committed (not yet necessarily durable) write.
pub struct Committed<T> {
    /// What the closure returned.
    pub value: T,
    /// The write's LSN, or `None` when it changed nothing.
    pub lsn: Option<Lsn>,
    /// The term the write was committed in.
    pub term: u64,
    ticket: Ticket,
}

impl<T> Committed<T> {
    /// Waits for the group commit covering this write.
    pub async fn durable(self) -> Result<Written<T>> {
        self.ticket.wait().await?;
        Ok(Written {
            value: self.value,
            lsn: self.lsn,
            term: self.term,
        })
    }

    /// Blocking variant of [`durable`](Self::durable) for non-async callers.
    pub fn durable_blocking(self) -> Result<Written<T>> {
        self.ticket.wait_blocking()?;
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

/// The shop's sled database.
pub struct Store {
    db: sled::Db,
    /// Data trees in `TreeName::ALL` order, then `wal`, then `meta`.
    trees: Vec<sled::Tree>,
    group: GroupCommit,
    term: AtomicU64,
    /// Set while this process is not the primary (the replication layer keeps it in step
    /// with the role): local writes then fail instead of committing, so a write admitted
    /// just before a step-down can never commit under the newer term.
    writes_fenced: AtomicBool,
    committed_tx: watch::Sender<Lsn>,
    /// The last committed entries ([`WAL_TAIL_CAPACITY`] at most, consecutive LSNs), so the
    /// shipper sends fresh commits from memory instead of reading sled back.
    tail: Mutex<VecDeque<WalEntry>>,
}

/// Most entries [`Store::wal_tail_since`] keeps in memory.
pub const WAL_TAIL_CAPACITY: usize = 4096;

impl Store {
    /// Opens (or creates) the store and starts its flusher. Recovery is sled's: every
    /// flushed transaction is present in full, anything later is absent in full.
    pub fn open(config: &StoreConfig) -> Result<Self> {
        let db = concord::storage::open_sled(
            &sled::Config::new()
                .path(&config.path)
                .cache_capacity(config.cache_capacity_bytes)
                .mode(sled::Mode::LowSpace)
                // Every acknowledged write is flushed by the group commit; sled's own timer
                // flush would only compete for the same lock.
                .flush_every_ms(None),
        )?;
        let mut trees = Vec::with_capacity(TreeName::ALL.len() + 2);
        for name in TreeName::ALL {
            trees.push(db.open_tree(name.as_str())?);
        }
        trees.push(db.open_tree(WAL_TREE)?);
        trees.push(db.open_tree(META_TREE)?);
        let meta = &trees[TreeName::ALL.len() + 1];
        let last_lsn = read_u64(meta.get(META_LAST_LSN)?.as_deref())?;
        let term = read_u64(meta.get(META_TERM)?.as_deref())?.max(1);
        let wal = &trees[TreeName::ALL.len()];
        if let Some((key, _)) = wal.last()? {
            let wal_last = read_u64(Some(&key))?;
            // After a snapshot the WAL may be empty below last_lsn, never ahead of it.
            if wal_last != last_lsn {
                return Err(ShopError::internal(format!(
                    "store is inconsistent: last WAL entry {wal_last} but meta says {last_lsn}"
                )));
            }
        }
        let group = GroupCommit::start(db.clone(), last_lsn, config.linger)?;
        let (committed_tx, _) = watch::channel(last_lsn);
        tracing::info!(path = %config.path.display(), last_lsn, term, "shop store opened");
        Ok(Self {
            db,
            trees,
            group,
            term: AtomicU64::new(term),
            writes_fenced: AtomicBool::new(false),
            committed_tx,
            tail: Mutex::new(VecDeque::with_capacity(WAL_TAIL_CAPACITY)),
        })
    }

    /// A data tree, for reads outside transactions (single-key reads and range scans).
    pub fn tree(&self, name: TreeName) -> &sled::Tree {
        &self.trees[name.index()]
    }

    fn wal(&self) -> &sled::Tree {
        &self.trees[TreeName::ALL.len()]
    }

    fn meta(&self) -> &sled::Tree {
        &self.trees[TreeName::ALL.len() + 1]
    }

    /// LSN of the last committed write (primary) or applied entry (replica).
    pub fn last_lsn(&self) -> Result<Lsn> {
        read_u64(self.meta().get(META_LAST_LSN)?.as_deref())
    }

    /// Highest LSN known to be on disk.
    pub fn durable_lsn(&self) -> Lsn {
        self.group.durable_lsn()
    }

    /// Group-commit counters (flushes vs acknowledged writes).
    pub fn commit_stats(&self) -> GroupCommitStats {
        self.group.stats()
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

    /// Watches the last committed LSN (the WAL shipper waits on it for new entries).
    pub fn subscribe(&self) -> watch::Receiver<Lsn> {
        self.committed_tx.subscribe()
    }

    /// Runs `op` in one sled transaction with WAL logging and LSN allocation (see module
    /// docs). `op` may run several times (sled retries on conflict), so it must not have
    /// side effects outside `Tx`. Blocking: call from `spawn_blocking` in async code.
    pub fn transact<T, F>(&self, op: F) -> Result<Committed<T>>
    where
        F: Fn(&Tx<'_>) -> TxResult<T>,
    {
        let term = self.writable_term()?;
        let in_flight = self.group.begin();
        let now_ms = now_unix_ms();
        let result = self.trees.as_slice().transaction(|views| {
            let tx = Tx::new(views, now_ms, false);
            let value = op(&tx)?;
            let lsn = tx.log(term)?;
            Ok((value, lsn, tx.logged.take()))
        });
        let (value, lsn, logged) = tx_outcome(result)?;
        self.publish_committed(logged);
        let ticket = match lsn {
            Some(lsn) => self.group.register(lsn),
            None => Ticket::Ready,
        };
        drop(in_flight);
        Ok(Committed {
            value,
            lsn,
            term,
            ticket,
        })
    }

    /// Runs `n` independent writes in ONE sled transaction, each under its own LSN with its
    /// own WAL entry: the shop writer's path. Why: in sled 0.34 every transaction rolls the
    /// log buffer twice (two `pwrite` + `sync_file_range`, each handed to sled's I/O
    /// threadpool), which dominated the cost of a small write; a batch pays that once.
    ///
    /// Each write stays atomic: `run(i, tx)` runs write `i`; when it fails
    /// (`ConflictableTransactionError::Abort`), everything it wrote is rolled back to the
    /// savepoint taken before it, it logs nothing, and the next write goes on. Later writes
    /// see earlier ones (they run in order in one transaction), exactly as if they had
    /// committed one after the other. sled may rerun the whole closure on a conflict, so
    /// `run` must be repeatable.
    ///
    /// Returns the term the batch committed in and each write's outcome in order (its LSN,
    /// `None` when it changed nothing, or its own error). An error of the batch itself
    /// (storage) is returned instead and nothing of the batch is written. Nothing is
    /// durable yet: the caller must [`flush_through`](Self::flush_through) the highest LSN
    /// before reporting any of it.
    pub fn transact_batch<F>(&self, n: usize, run: F) -> Result<BatchOutcome>
    where
        F: Fn(usize, &Tx<'_>) -> TxResult<()>,
    {
        let term = match self.writable_term() {
            Ok(term) => term,
            Err(fenced) => {
                return Ok(BatchOutcome {
                    term: self.term(),
                    writes: vec![Err(fenced); n],
                })
            }
        };
        let now_ms = now_unix_ms();
        let result = self.trees.as_slice().transaction(|views| {
            let tx = Tx::new(views, now_ms, true);
            let mut outcomes = Vec::with_capacity(n);
            for i in 0..n {
                match run(i, &tx) {
                    Ok(()) => outcomes.push(Ok(tx.log(term)?)),
                    Err(ConflictableTransactionError::Abort(e)) => {
                        tx.rollback()?;
                        outcomes.push(Err(e));
                    }
                    // A conflict reruns the batch; a storage error fails all of it.
                    Err(other) => return Err(other),
                }
            }
            Ok((outcomes, tx.logged.take()))
        });
        let (writes, logged) = tx_outcome(result)?;
        self.publish_committed(logged);
        Ok(BatchOutcome { term, writes })
    }

    /// Appends freshly committed entries to the in-memory tail, then tells the WAL shipper
    /// (in that order, so a woken shipper finds them). The tail only ever holds
    /// consecutive LSNs: an entry that does not follow its last one starts it afresh.
    fn publish_committed(&self, logged: Vec<WalEntry>) {
        let Some(lsn) = logged.last().map(|e| e.lsn) else {
            return;
        };
        {
            let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
            for entry in logged {
                if tail.back().is_some_and(|last| last.lsn + 1 != entry.lsn) {
                    tail.clear();
                }
                if tail.len() == WAL_TAIL_CAPACITY {
                    tail.pop_front();
                }
                tail.push_back(entry);
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

    /// Flushes now (on the calling thread) unless `lsn` is already durable, then records
    /// it. The shop's writer thread calls this once per [`transact_batch`](Self::transact_batch).
    /// `writes` is the batch size, for [`commit_stats`](Self::commit_stats).
    pub fn flush_through(&self, lsn: Lsn, writes: usize) -> Result<()> {
        if lsn > self.group.durable_lsn() {
            let started = std::time::Instant::now();
            self.db.flush()?;
            self.group
                .record_flush(writes as u64, started.elapsed().as_micros() as u64);
            self.group.mark_durable(lsn);
        }
        Ok(())
    }

    /// Returns a ticket that completes once `lsn` is durable (for replies that report an
    /// earlier write, such as an idempotent replay).
    pub fn durable_ticket(&self, lsn: Lsn) -> Ticket {
        self.group.register(lsn)
    }

    /// Applies a run of consecutive WAL entries in ONE transaction (one commit, one
    /// durability ticket for the last LSN): what a replica does with each batch it
    /// receives, so its cost per entry is the mutations, not a transaction each. Same rules
    /// as [`Store::apply_wal_entry`] (which is this with one entry): entries at or below the
    /// store's LSN are skipped, a gap aborts the whole batch and changes nothing. Reports
    /// `Applied(last applied LSN)`, or `Skipped(last entry's LSN)` when nothing was new.
    pub fn apply_wal_entries(&self, entries: &[WalEntry]) -> Result<Committed<Applied>> {
        let applied = self.commit_wal_entries(entries)?;
        let (lsn, ticket) = match applied {
            Applied::Applied(lsn) => (Some(lsn), self.group.register(lsn)),
            Applied::Skipped(_) => (None, Ticket::Ready),
        };
        Ok(Committed {
            value: applied,
            lsn,
            term: self.term(),
            ticket,
        })
    }

    /// [`apply_wal_entries`](Self::apply_wal_entries), flushed on the calling thread
    /// instead of through the flusher (the replica's apply loop: one hand-off less per
    /// batch). Returns once the entries are durable.
    pub fn apply_wal_entries_flushed(&self, entries: &[WalEntry]) -> Result<Applied> {
        let applied = self.commit_wal_entries(entries)?;
        if let Applied::Applied(lsn) = applied {
            self.flush_through(lsn, entries.len())?;
        }
        Ok(applied)
    }

    /// Commits entries for the two apply variants (publishes the LSN, no durability).
    fn commit_wal_entries(&self, entries: &[WalEntry]) -> Result<Applied> {
        let committed = self.trees.as_slice().transaction(|views| {
            let tx = Tx::new(
                views,
                entries.last().map_or(0, |e| e.committed_at_ms),
                false,
            );
            let mut last = tx.last_lsn()?;
            let mut applied = None;
            for entry in entries {
                if entry.lsn <= last {
                    continue;
                }
                if entry.lsn != last + 1 {
                    return Err(ShopError::precondition(format!(
                        "WAL gap: store is at LSN {last}, entry has LSN {}",
                        entry.lsn
                    ))
                    .into());
                }
                for m in &entry.mutations {
                    tx.replay(m)?;
                }
                tx.log_entry(entry)?;
                last = entry.lsn;
                applied = Some(entry.lsn);
            }
            Ok(match (applied, entries.last()) {
                (Some(lsn), _) => Applied::Applied(lsn),
                // Everything was already here: report the batch's last entry as skipped.
                (None, Some(entry)) => Applied::Skipped(entry.lsn),
                (None, None) => Applied::Skipped(last),
            })
        });
        let applied = tx_outcome(committed)?;
        if let Applied::Applied(lsn) = applied {
            // Applied entries are the primary's; this store ships nothing until promoted,
            // and then from sled until its own commits refill the tail.
            self.clear_tail();
            self.committed_tx.send_replace(lsn);
        }
        Ok(applied)
    }

    /// Applies one WAL entry from the primary (replica side). Idempotent: an entry at or
    /// below the local LSN is skipped. An entry beyond `last + 1` is a gap and fails with
    /// `FailedPrecondition` (the shipper must resend from `last_lsn() + 1`).
    pub fn apply_wal_entry(&self, entry: &WalEntry) -> Result<Committed<Applied>> {
        self.apply_wal_entries(std::slice::from_ref(entry))
    }

    /// Up to `max` WAL entries with LSN > `after`, in order (the shipper's read path).
    pub fn wal_since(&self, after: Lsn, max: usize) -> Result<Vec<WalEntry>> {
        let start = after.saturating_add(1).to_be_bytes();
        let mut out = Vec::new();
        for item in self.wal().range(start..).take(max) {
            let (_, value) = item?;
            out.push(WalEntry::decode(&value)?);
        }
        Ok(out)
    }

    /// Like [`wal_since`](Self::wal_since), from memory and without blocking on sled:
    /// `None` when the in-memory tail does not reach back to `after + 1` (read sled then).
    pub fn wal_tail_since(&self, after: Lsn, max: usize) -> Option<Vec<WalEntry>> {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
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
        self.tail.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// Deletes the WAL entries with LSN < `below` (at most `max` of them, oldest first) and
    /// returns how many went. The last entry is never deleted (`below` is capped at
    /// `last_lsn`), so the WAL always ends at `last_lsn` as `open` checks. Not flushed: the
    /// deletions become durable with the next group commit; a crash before that only
    /// brings trimmed entries back, which is harmless.
    pub fn trim_wal(&self, below: Lsn, max: usize) -> Result<usize> {
        let below = below.min(self.last_lsn()?);
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.wal().range(..below.to_be_bytes()).take(max) {
            let (key, _) = item?;
            batch.remove(key);
            n += 1;
        }
        if n > 0 {
            self.wal().apply_batch(batch)?;
        }
        Ok(n)
    }

    /// LSN of the oldest WAL entry still stored (`None` when the WAL is empty).
    pub fn first_wal_lsn(&self) -> Result<Option<Lsn>> {
        match self.wal().first()? {
            Some((k, _)) => Ok(Some(read_u64(Some(&k))?)),
            None => Ok(None),
        }
    }

    /// Term of the WAL entry at `lsn` (`None` if that entry is not stored, e.g. `lsn` 0
    /// or before a snapshot). The replica sends it so the primary can detect divergence.
    pub fn term_at(&self, lsn: Lsn) -> Result<Option<u64>> {
        match self.wal().get(lsn.to_be_bytes())? {
            Some(bytes) => Ok(Some(WalEntry::decode(&bytes)?.term)),
            None => Ok(None),
        }
    }

    /// Starts installing a snapshot (replica side): empties every data tree and the WAL
    /// and sets `last_lsn` to 0, so a crash midway leaves an empty store that asks for
    /// everything again. Not atomic as a whole, by design (snapshots may be large).
    pub fn begin_snapshot(&self) -> Result<()> {
        for name in TreeName::ALL {
            self.tree(name).clear()?;
        }
        self.wal().clear()?;
        self.meta().insert(META_LAST_LSN, &0u64.to_be_bytes())?;
        self.db.flush()?;
        Ok(())
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

    /// Completes a snapshot: the store now stands at `lsn`; flushed before returning.
    /// The WAL stays empty up to `lsn` (a later replica of this store gets a snapshot).
    pub fn finish_snapshot(&self, lsn: Lsn, term: u64) -> Result<()> {
        self.meta().insert(META_LAST_LSN, &lsn.to_be_bytes())?;
        if term > self.term() {
            self.meta().insert(META_TERM, &term.to_be_bytes())?;
            self.term.store(term, Ordering::Release);
        }
        self.db.flush()?;
        self.group.reset_durable(lsn);
        self.clear_tail();
        self.committed_tx.send_replace(lsn);
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

/// A key's value before the current write touched it (`None`: it did not exist).
type Undo = (TreeName, Vec<u8>, Option<IVec>);

/// The closure's handle on the trees inside a transaction; records every change for the
/// WAL entry.
pub struct Tx<'a> {
    views: &'a [TransactionalTree],
    mutations: RefCell<Vec<Mutation>>,
    /// Previous value of every key written since the last savepoint, oldest first; only
    /// kept inside [`Store::transact_batch`], where one write can fail without the others.
    undo: Option<RefCell<Vec<Undo>>>,
    /// The entries this transaction logged, for the store's in-memory tail.
    logged: RefCell<Vec<WalEntry>>,
    now_ms: i64,
}

impl<'a> Tx<'a> {
    fn new(views: &'a [TransactionalTree], now_ms: i64, savepoints: bool) -> Self {
        Self {
            views,
            mutations: RefCell::new(Vec::new()),
            undo: savepoints.then(|| RefCell::new(Vec::new())),
            logged: RefCell::new(Vec::new()),
            now_ms,
        }
    }

    /// Records `old` as the value to restore if the current write fails (batch mode).
    fn remember(&self, tree: TreeName, key: &[u8], old: Option<IVec>) {
        if let Some(undo) = &self.undo {
            undo.borrow_mut().push((tree, key.to_vec(), old));
        }
    }

    /// Undoes every put/delete since the last savepoint, newest first, and forgets its
    /// mutations: the failed write leaves no trace in the data or the WAL.
    fn rollback(&self) -> TxResult<()> {
        self.mutations.borrow_mut().clear();
        if let Some(undo) = &self.undo {
            let undo = std::mem::take(&mut *undo.borrow_mut());
            for (tree, key, old) in undo.into_iter().rev() {
                match old {
                    Some(value) => self.view(tree).insert(key, value)?,
                    None => self.view(tree).remove(key)?,
                };
            }
        }
        Ok(())
    }

    /// Wall-clock time of the transaction (ms since the Unix epoch), fixed across retries.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    fn view(&self, tree: TreeName) -> &TransactionalTree {
        &self.views[tree.index()]
    }

    fn meta(&self) -> &TransactionalTree {
        &self.views[TreeName::ALL.len() + 1]
    }

    /// Reads a key (sees this transaction's own writes).
    pub fn get(&self, tree: TreeName, key: &[u8]) -> TxResult<Option<IVec>> {
        Ok(self.view(tree).get(key)?)
    }

    /// Writes a key.
    pub fn put(&self, tree: TreeName, key: &[u8], value: Vec<u8>) -> TxResult<()> {
        let old = self.view(tree).insert(key, value.clone())?;
        self.remember(tree, key, old);
        self.mutations.borrow_mut().push(Mutation {
            tree,
            key: key.to_vec(),
            value: Some(value),
        });
        Ok(())
    }

    /// Deletes a key (a no-op delete is still logged; replay is idempotent).
    pub fn delete(&self, tree: TreeName, key: &[u8]) -> TxResult<()> {
        let old = self.view(tree).remove(key)?;
        self.remember(tree, key, old);
        self.mutations.borrow_mut().push(Mutation {
            tree,
            key: key.to_vec(),
            value: None,
        });
        Ok(())
    }

    /// Applies a mutation from another store's WAL entry without recording it: the entry
    /// itself is logged as it is (replica apply).
    fn replay(&self, m: &Mutation) -> TxResult<()> {
        let view = self.view(m.tree);
        match &m.value {
            Some(v) => view.insert(m.key.as_slice(), v.as_slice())?,
            None => view.remove(m.key.as_slice())?,
        };
        Ok(())
    }

    /// Reads and decodes a JSON record; a record that does not decode is `Internal`.
    pub fn get_json<T: DeserializeOwned>(&self, tree: TreeName, key: &[u8]) -> TxResult<Option<T>> {
        match self.get(tree, key)? {
            Some(bytes) => Ok(Some(decode_json(tree, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Encodes and writes a JSON record.
    pub fn put_json<T: Serialize>(&self, tree: TreeName, key: &[u8], value: &T) -> TxResult<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| {
            ShopError::internal(format!("cannot encode {} record: {e}", tree.as_str()))
        })?;
        self.put(tree, key, bytes)
    }

    /// Increments the `counters` entry `name` and returns the new value (ids start at 1).
    pub fn next_id(&self, name: &[u8]) -> TxResult<u64> {
        let last = read_u64(self.get(TreeName::Counters, name)?.as_deref())?;
        let next = last
            .checked_add(1)
            .ok_or_else(|| ShopError::internal("id counter overflow"))?;
        self.put(TreeName::Counters, name, next.to_be_bytes().to_vec())?;
        Ok(next)
    }

    fn last_lsn(&self) -> TxResult<Lsn> {
        Ok(read_u64(self.meta().get(META_LAST_LSN)?.as_deref())?)
    }

    /// The LSN this transaction will commit under if it writes anything.
    pub fn lsn(&self) -> TxResult<Lsn> {
        Ok(self.last_lsn()? + 1)
    }

    /// Allocates the LSN and appends the WAL entry, if anything changed; the write is then
    /// part of the transaction for good (a new savepoint starts).
    fn log(&self, term: u64) -> TxResult<Option<Lsn>> {
        if let Some(undo) = &self.undo {
            undo.borrow_mut().clear();
        }
        if self.mutations.borrow().is_empty() {
            return Ok(None);
        }
        let entry = WalEntry {
            lsn: self.lsn()?,
            term,
            committed_at_ms: self.now_ms,
            mutations: std::mem::take(&mut *self.mutations.borrow_mut()),
        };
        self.log_entry(&entry)?;
        let lsn = entry.lsn;
        self.logged.borrow_mut().push(entry);
        Ok(Some(lsn))
    }

    /// Writes `entry` as the next WAL record and advances `last_lsn` to its LSN.
    fn log_entry(&self, entry: &WalEntry) -> TxResult<()> {
        self.views[TreeName::ALL.len()].insert(&entry.lsn.to_be_bytes(), entry.encode())?;
        self.meta()
            .insert(META_LAST_LSN, &entry.lsn.to_be_bytes())?;
        Ok(())
    }
}

/// A sled transaction's result as ours: the closure's own error, or a storage error.
fn tx_outcome<T>(result: std::result::Result<T, TransactionError<ShopError>>) -> Result<T> {
    match result {
        Ok(value) => Ok(value),
        Err(TransactionError::Abort(e)) => Err(e),
        Err(TransactionError::Storage(e)) => Err(e.into()),
    }
}

/// Decodes a JSON record; corruption is a broken invariant (`Internal`).
pub fn decode_json<T: DeserializeOwned>(tree: TreeName, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| ShopError::internal(format!("corrupt {} record: {e}", tree.as_str())))
}

/// Reads a big-endian u64 value (absent = 0).
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

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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

    fn put(store: &Store, key: &[u8], value: &[u8]) -> Result<Option<Lsn>> {
        let c = store.transact(|tx| tx.put(TreeName::Carts, key, value.to_vec()))?;
        Ok(c.durable_blocking()?.lsn)
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

    /// Concurrent writers get distinct consecutive LSNs and share flushes.
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
        // Writes whose LSN was already covered by a finished flush skip the queue.
        assert!(stats.writes <= 400, "{stats:?}");
        assert_eq!(stats.durable_lsn, 400);
        assert!(stats.flushes < 400, "no grouping at all: {stats:?}");
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
        store.flush_through(4, 4).unwrap();
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
        let (_d2, replica) = temp_store();
        replica
            .apply_wal_entries(&store.wal_since(0, 10).unwrap())
            .unwrap()
            .durable_blocking()
            .unwrap();
        assert_eq!(replica.digest().unwrap(), store.digest().unwrap());
    }

    /// The in-memory tail serves exactly what the WAL holds for fresh commits (single and
    /// batched), says `None` when it does not reach back far enough, and is dropped when
    /// the store applies someone else's entries.
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
        store.flush_through(3, 2).unwrap();
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
            None,
            "applied entries are not kept"
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
}
