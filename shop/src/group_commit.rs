//! Group commit for direct `Store::transact` callers: many writes share one fsync.
//!
//! Two paths make writes durable:
//! - The shop's request path goes through the writer thread in `shop`, which runs a batch
//!   of writes in one transaction (`Store::transact_batch`), flushes once itself
//!   (`Store::flush_through`) and then replies to the whole batch. That is the hot path; it only uses this module's
//!   counters and [`GroupCommit::mark_durable`].
//! - Every other caller of `Store::transact` (the replica applying the WAL, tools, unit
//!   tests) registers its LSN here and awaits a [`Ticket`]. One dedicated flusher thread
//!   takes every registered waiter, calls `Db::flush` once, and completes the batch.
//!
//! Why not `flush_async` per write: in sled 0.34 a flush holds the read side of sled's
//! process-wide concurrency lock while it fsyncs, and every transaction needs the write
//! side, so commits stall during a flush; one flush per write would make every writer pay
//! for several fsyncs. Batching is what makes durable writes cheap (see the README for
//! the measurements).
//!
//! The flusher lingers while writers are between "transaction started" and "registered"
//! ([`GroupCommit::begin`] counts them) *and* registrations keep arriving: it flushes as
//! soon as nobody is in flight, or no writer registered for [`LINGER_GAP`], or the
//! configured linger (default [`DEFAULT_LINGER`]) has passed.
//!
//! Invariants:
//! - A ticket completes `Ok` only after a flush that *started after* the writer's commit
//!   returned `Ok`. LSNs are allocated in commit order, so once a batch whose highest LSN
//!   is `n` is flushed, every LSN ≤ `n` is durable; `durable_lsn` records that and lets
//!   later callers with a smaller LSN skip the queue.
//! - A failed flush fails every ticket of its batch with `Unavailable`: those writes are
//!   committed in memory but not acknowledged. They may or may not survive a crash (sled
//!   recovers each transaction whole or not at all); a client retrying PlaceOrder with the
//!   same idempotency key gets exactly one order either way. sled treats an I/O error as
//!   fatal for the database, so later writes fail too until the process is restarted.
//! - On drop the flusher drains: queued waiters get one last flush, new registrations are
//!   refused with `Unavailable`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::{Result, ShopError};
use crate::wal::Lsn;

/// Default longest time the flusher waits for in-flight writers to join a batch. Zero:
/// on the 2-core test VM every non-zero linger measured lower throughput, because the
/// writers that queue behind an fsync already form the next batch (see README).
pub const DEFAULT_LINGER: Duration = Duration::ZERO;
/// The flusher stops lingering when no writer registered for this long.
pub const LINGER_GAP: Duration = Duration::from_micros(60);

/// Counters describing how well commits are being grouped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupCommitStats {
    /// Number of fsyncs (flushes) done.
    pub flushes: u64,
    /// Number of writes acknowledged through those flushes.
    pub writes: u64,
    /// Highest LSN known to be durable.
    pub durable_lsn: Lsn,
    /// Total time spent inside `Db::flush`, in microseconds.
    pub flush_micros: u64,
}

struct Waiter {
    lsn: Lsn,
    done_tx: oneshot::Sender<Result<()>>,
}

struct State {
    waiters: Vec<Waiter>,
    shutdown: bool,
    last_register: Instant,
}

struct Shared {
    db: sled::Db,
    state: Mutex<State>,
    wake: Condvar,
    durable_lsn: AtomicU64,
    in_flight: AtomicUsize,
    flushes: AtomicU64,
    writes: AtomicU64,
    flush_micros: AtomicU64,
    linger: Duration,
}

impl Shared {
    /// The state mutex only guards a Vec and a flag; a panic while holding it cannot leave
    /// them inconsistent, so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Handle to the flusher thread; owned by the store.
pub struct GroupCommit {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What a writer awaits after registering its LSN.
pub enum Ticket {
    /// Already durable when registered.
    Ready,
    /// Completed by the flusher.
    Pending(oneshot::Receiver<Result<()>>),
}

impl Ticket {
    /// Waits until the write is durable (or the flush failed).
    pub async fn wait(self) -> Result<()> {
        match self {
            Ticket::Ready => Ok(()),
            Ticket::Pending(rx) => rx
                .await
                .unwrap_or_else(|_| Err(ShopError::Unavailable("flusher stopped".into()))),
        }
    }

    /// Blocking variant for synchronous callers (tests, tools). Must not be called from an
    /// async context.
    pub fn wait_blocking(self) -> Result<()> {
        match self {
            Ticket::Ready => Ok(()),
            Ticket::Pending(rx) => rx
                .blocking_recv()
                .unwrap_or_else(|_| Err(ShopError::Unavailable("flusher stopped".into()))),
        }
    }
}

/// Marks a writer as in flight until dropped (see module docs on lingering).
pub struct InFlight {
    shared: Arc<Shared>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.shared.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Take the lock so the wake-up cannot slip between the flusher's check and wait.
            let _state = self.shared.lock();
            self.shared.wake.notify_all();
        }
    }
}

impl GroupCommit {
    /// Starts the flusher thread for `db`. `durable_lsn` is the LSN recovered at open
    /// (everything recovered is durable by definition).
    pub fn start(db: sled::Db, durable_lsn: Lsn, linger: Duration) -> Result<Self> {
        let shared = Arc::new(Shared {
            db,
            state: Mutex::new(State {
                waiters: Vec::new(),
                shutdown: false,
                last_register: Instant::now(),
            }),
            wake: Condvar::new(),
            durable_lsn: AtomicU64::new(durable_lsn),
            in_flight: AtomicUsize::new(0),
            flushes: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            flush_micros: AtomicU64::new(0),
            linger,
        });
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("shop-flusher".into())
            .spawn(move || run_flusher(&thread_shared))
            .map_err(|e| ShopError::internal(format!("cannot start flusher thread: {e}")))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Declares a writer in flight; hold the guard until after [`register`](Self::register).
    pub fn begin(&self) -> InFlight {
        self.shared.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Registers a committed LSN and returns the ticket to await for durability.
    pub fn register(&self, lsn: Lsn) -> Ticket {
        if lsn <= self.shared.durable_lsn.load(Ordering::Acquire) {
            return Ticket::Ready;
        }
        let (done_tx, done_rx) = oneshot::channel();
        let mut state = self.shared.lock();
        if state.shutdown {
            return Ticket::Pending(done_rx); // sender dropped: Unavailable
        }
        state.waiters.push(Waiter { lsn, done_tx });
        state.last_register = Instant::now();
        if state.waiters.len() == 1 {
            self.shared.wake.notify_all();
        }
        Ticket::Pending(done_rx)
    }

    /// Counts a flush done by a caller (see [`mark_durable`](Self::mark_durable)).
    pub fn record_flush(&self, writes: u64, micros: u64) {
        self.shared.flushes.fetch_add(1, Ordering::Relaxed);
        self.shared.writes.fetch_add(writes, Ordering::Relaxed);
        self.shared
            .flush_micros
            .fetch_add(micros, Ordering::Relaxed);
    }

    /// Records that everything up to `lsn` is durable after a flush done by a caller
    /// (the shop's writer thread flushes its own batches) and completes queued waiters
    /// that this covers.
    pub fn mark_durable(&self, lsn: Lsn) {
        self.shared.durable_lsn.fetch_max(lsn, Ordering::AcqRel);
        let covered: Vec<Waiter> = {
            let mut state = self.shared.lock();
            let (done, pending) = std::mem::take(&mut state.waiters)
                .into_iter()
                .partition(|w| w.lsn <= lsn);
            state.waiters = pending;
            done
        };
        for w in covered {
            let _ = w.done_tx.send(Ok(()));
        }
    }

    /// Resets the durable LSN to exactly `lsn` after a snapshot was installed and flushed:
    /// the store's history was replaced, so LSNs above `lsn` are not durable any more even
    /// if the old history had reached them. Callers guarantee no write is in flight.
    pub fn reset_durable(&self, lsn: Lsn) {
        self.shared.durable_lsn.store(lsn, Ordering::Release);
    }

    /// Highest LSN known to be durable.
    pub fn durable_lsn(&self) -> Lsn {
        self.shared.durable_lsn.load(Ordering::Acquire)
    }

    /// Counters for benchmarks and diagnostics.
    pub fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            flushes: self.shared.flushes.load(Ordering::Relaxed),
            writes: self.shared.writes.load(Ordering::Relaxed),
            durable_lsn: self.durable_lsn(),
            flush_micros: self.shared.flush_micros.load(Ordering::Relaxed),
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("shop flusher thread panicked");
            }
        }
    }
}

fn run_flusher(shared: &Shared) {
    loop {
        let batch = {
            let mut state = shared.lock();
            while state.waiters.is_empty() && !state.shutdown {
                state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.waiters.is_empty() {
                return; // shutdown with nothing left to flush
            }
            // Linger while other writers are mid-commit and still arriving, so they share
            // this fsync.
            let deadline = Instant::now() + shared.linger;
            while shared.in_flight.load(Ordering::Acquire) > 0 && !state.shutdown {
                let now = Instant::now();
                let gap_end = state.last_register + LINGER_GAP;
                if now >= deadline || now >= gap_end {
                    break;
                }
                let wait = deadline.min(gap_end) - now;
                state = shared
                    .wake
                    .wait_timeout(state, wait)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            std::mem::take(&mut state.waiters)
        };
        let max_lsn = batch.iter().map(|w| w.lsn).max().unwrap_or(0);
        let started = Instant::now();
        let result = shared.db.flush();
        shared
            .flush_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        shared.flushes.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(_) => {
                shared.durable_lsn.fetch_max(max_lsn, Ordering::AcqRel);
                shared
                    .writes
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                for w in batch {
                    // A dropped receiver means the client went away; nothing to do.
                    let _ = w.done_tx.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = batch.len(), max_lsn, "group flush failed");
                for w in batch {
                    let _ = w
                        .done_tx
                        .send(Err(ShopError::Unavailable(format!("flush failed: {e}"))));
                }
            }
        }
    }
}
