//! Primary → replica WAL shipping, write gating by replication mode, roles and terms.
//!
//! **Roles.** A process is the primary (accepts writes, ships its WAL) or a replica of a
//! named primary (applies the stream, serves reads, refuses writes with
//! FAILED_PRECONDITION + `x-concord-primary`). The term lives in the store's `meta` tree
//! and only grows. `Promote` (admin) turns a replica into the primary with term + 1; with a
//! registry configured, a replica also promotes itself when no `role=primary` instance of
//! `shop` is left (its lease expired), and any process that sees a primary with a higher
//! term steps down and follows it.
//!
//! **Stream.** The replica opens `Replicate` and says `Hello(applied_lsn, applied_term)`.
//! The primary resumes from `applied_lsn + 1`, or first sends a snapshot when that part of
//! its WAL is gone, the replica is ahead of it, or the replica's entry at `applied_lsn`
//! has another term (divergence after a failover). Then it ships `WalBatch`es of at most
//! [`WAL_BATCH_MAX`] entries as they commit, and a `Heartbeat` every
//! [`HEARTBEAT_INTERVAL`] when idle. The replica applies each entry through
//! `Store::apply_wal_entries` (one transaction per batch; idempotent, in LSN order, refuses
//! gaps), waits for the group
//! flush, and acks the highest durable LSN (acks are cumulative, one per batch).
//! The snapshot is fuzzy (taken while writes continue) and followed by the WAL from the
//! LSN read before the scan; entries are full-value puts/deletes, so redoing them over the
//! fuzzy copy converges to the primary's state.
//!
//! **Who may replicate.** Both ends of `Replicate` prove they are a shop with the shop
//! credential, checked against this process's own (`Verifier::Own`): the replica attaches
//! it to the call and the primary authenticates it before reading the Hello (anyone else
//! gets UNAUTHENTICATED / PERMISSION_DENIED and nothing is sent); the primary attaches it
//! to the response's initial metadata and the follower checks it before installing any
//! snapshot or entry. A shop without a credential refuses every stream both ways.
//!
//! **Protocol errors** close the stream and change nothing: an ack beyond the highest LSN
//! sent on that stream (`Acks`: acks count only from the current stream and within what it
//! was sent, with checked arithmetic), anything but an ack after the Hello
//! (INVALID_ARGUMENT), and a Hello whose term is above the primary's own — the term the
//! registry accepted from it (FAILED_PRECONDITION; the primary does not step down: only
//! the registry's word, seen by the failover watch, makes it do that).
//!
//! **Modes and what they promise** (primary; "acknowledged" = the client got an OK):
//! - `none`: acknowledged after the local fsync. Survives a crash of the process (same
//!   disk); nothing survives the loss of the disk.
//! - `async`: acknowledged after the local fsync; the replica trails by the lag that
//!   `GetReplicationStatus` exports (`lag_entries` = last LSN − replica's acked LSN, and
//!   `lag_ms`). If the primary dies and the replica takes over, the acknowledged writes
//!   lost are exactly those above the replica's acked LSN: at most `lag_entries` as read
//!   at that moment (`cli/tests/shop_failover.rs` checks lost ≤ lag read just before the
//!   kill + writes acknowledged after that read).
//! - `sync`: acknowledged only once the replica has acked the LSN, i.e. applied *and*
//!   fsynced it: zero acknowledged-write loss when either process dies (checked over 10
//!   SIGKILLs under load). If the replica does not ack within `sync_timeout` the call fails
//!   with UNAVAILABLE (the write is committed on the primary but not acknowledged — a
//!   retry of PlaceOrder with the same key is safe), unless `--on-replica-loss degrade`,
//!   where it is acknowledged with `degraded = true` (and without waiting at all while no
//!   replica is connected). A degraded write has `async` guarantees only: it is lost if
//!   the primary dies before the replica is back and has caught up.
//!
//! **Failover and RTO.** The primary holds a registry lease (`role=primary, term=T`),
//! renewed every TTL/3. When it dies the lease expires within the TTL (default 2 s; the
//! registry sweeps every 100 ms), the replica's watch sees no primary and promotes itself
//! to T + 1; writes are accepted from then on. Measured kill → first accepted write:
//! 1.4–2.1 s with the default TTL. A replica only promotes itself after it has seen a
//! primary registered (a replica starting before its primary must not usurp it). The
//! promoted process keeps the mode it was started with: in `sync` with `fail` and no
//! replica it refuses writes until one connects, so start replicas with `degrade` if
//! the shop must take writes while alone.
//!
//! **Fence (split brain).** A process configured as primary with a registry asks the
//! registry (`Resolve shop`, ≤ [`FENCE_LOOKUP_TIMEOUT`]) *before it serves*: if another
//! instance is registered as primary with a term above its stored term, it adopts that
//! term and starts as that primary's replica; if the registry does not answer it starts
//! fenced (replica of nobody: every write refused with UNAVAILABLE, retryable) and retries
//! with backoff until it gets an answer ([`run_fence`]). So an old primary restarted by a
//! supervisor after a failover never takes a write in the old term. Remaining window (not
//! closed, documented): a *live* primary whose lease lapses (starved for a whole TTL, or
//! cut off from the registry) keeps taking writes until it sees the higher term; in `sync`
//! with `fail` they could not be acknowledged anyway (the promoted replica no longer acks).
//!
//! **Lease guard (live split brain).** That window is closed by the lease itself: a primary
//! in `sync`/`async` mode with a registry accepts a write only while its lease is certainly
//! held — the last successful Register/KeepAlive was *sent* less than TTL − margin ago
//! (margin = TTL/4; `concord::discovery::LeaseKeeper::lease_validity`). The registry set the
//! lease's expiry no earlier than that send + TTL, and the replica promotes only after the
//! expiry, so every write this primary acknowledges was accepted before any promotion could
//! happen. A primary that is starved or cut off from the registry therefore refuses writes
//! (UNAVAILABLE) within TTL − margin, before its replica takes over. The price: writes pause
//! while the registry is unreachable for longer than TTL − margin (the supervisor restarts
//! a dead registry in ~100 ms and keepers re-register at once, well within it).
//!
//! **One primary per term (registry-arbitrated claims).** A promotion is only a *claim*
//! until the registry accepts it: the registry refuses a `role=primary` registration whose
//! term another live primary of the service already holds or exceeds (see
//! `concord_registry`'s lease table). With a registry, a primary takes writes only while
//! the metadata the registry last *accepted* from it says `role=primary` with its current
//! term (`LeaseKeeper::accepted_metadata`), so two replicas promoting at once (or after a
//! forged registration with a high term expired) cannot both accept writes: the loser's
//! claim is refused, it never took a write, it fences itself (writes UNAVAILABLE) and the
//! failover watch makes it follow the winner, or promote again with a higher term if the
//! winner vanished. A refused term is never claimed again, and a refused claimant promotes
//! again only from a newer instance set than the one it lost on (which lacked the winner).
//! A claim whose KeepAlive got no answer is re-sent until accepted or refused.
//!
//! The failover watch promotes only when a primary it saw *on the current Watch stream*
//! is gone: a restarted registry forgets every lease until the next KeepAlive, and its
//! first, primary-less set must not look like the primary's death. A write commits under
//! the term read on both sides of the store's fence check (`Store::writable_term`), so a
//! step-down racing a write never labels that write with the new primary's term.
//!
//! **WAL trimming** (`--wal-retain N`, off by default: the WAL grows). A trimmer task
//! deletes entries with LSN < floor every [`WAL_TRIM_INTERVAL`] and once at shutdown,
//! where floor = min(last − N + 1, the highest LSN the replica acked) on a primary whose
//! mode is `sync`/`async` (a replica is expected), and last − N + 1 otherwise (mode
//! `none`, or a replica: nobody follows it). So it keeps at least the last N entries and
//! never an entry the replica has not acked; the acked entry itself stays because the
//! replica's next `Hello` names it and the divergence check reads its term. Consequences:
//! a replica that was away resumes from its LSN; a new or wiped replica, or one whose
//! position was trimmed meanwhile (e.g. it acked on another process before a failover, or
//! the WAL moved past it during a long snapshot), gets a snapshot — the shipper also
//! falls back to a snapshot when it finds a gap after its position. The acked LSN lives in
//! memory: after a primary restart nothing is trimmed until the replica acks again. A
//! replica that never comes back pins the WAL in `sync`/`async` mode (restart with
//! `--replication none` to release it). Trims are not flushed themselves; a crash can
//! only bring trimmed entries back.
//!
//! Bounded queues: each stream's outbound channel holds [`STREAM_CHANNEL_CAPACITY`]
//! messages; a slow replica stalls only its own shipping task (which then reads the WAL
//! later, in bigger batches). Every task stops on shutdown; a newer stream from the
//! replica supersedes older ones.
//!
//! Non-goals: more than one replica; quorums; a lease-checked write path (see "Fence").

use std::collections::HashMap;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use concord::pb::shop::v1 as pb;
use concord::pb::shop::v1::replication_client::ReplicationClient;
use concord::pb::shop::v1::replication_server::Replication;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use concord::identity::{Credential, Principal, Verifier};

use crate::error::{Result, ShopError};
use crate::store::Store;
use crate::wal::{Lsn, Mutation, TreeName, WalEntry};

/// Most WAL entries per `WalBatch` message.
pub const WAL_BATCH_MAX: usize = 256;
/// Idle primary → replica heartbeat period.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// Messages queued per stream direction before the producer waits.
pub const STREAM_CHANNEL_CAPACITY: usize = 16;
/// Keys per snapshot chunk.
pub const SNAPSHOT_CHUNK_KEYS: usize = 512;
/// Default time a sync write waits for the replica's ack.
pub const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the WAL trimmer runs (it also runs once at shutdown).
pub const WAL_TRIM_INTERVAL: Duration = Duration::from_millis(500);
/// Most WAL entries one trimming pass deletes (bounds the pause; the rest go next pass).
pub const WAL_TRIM_MAX_PER_PASS: usize = 50_000;
/// Time limit of the registry lookup a primary makes before taking writes (the fence).
pub const FENCE_LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
/// First and longest wait between a replica's reconnection attempts.
pub const RECONNECT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(2));

/// How writes reach the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplicationMode {
    /// No replica expected.
    #[default]
    None,
    /// Acknowledge after the local flush.
    Async,
    /// Acknowledge after the replica's durable ack.
    Sync,
}

impl FromStr for ReplicationMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "async" => Ok(Self::Async),
            "sync" => Ok(Self::Sync),
            other => Err(format!(
                "unknown replication mode {other:?} (none|async|sync)"
            )),
        }
    }
}

/// What a sync write does when the replica does not ack in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnReplicaLoss {
    /// Fail the write with UNAVAILABLE.
    #[default]
    Fail,
    /// Acknowledge it anyway, flagged `degraded`.
    Degrade,
}

impl FromStr for OnReplicaLoss {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "fail" => Ok(Self::Fail),
            "degrade" => Ok(Self::Degrade),
            other => Err(format!(
                "unknown replica-loss policy {other:?} (fail|degrade)"
            )),
        }
    }
}

/// Replication settings of one shop process.
#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// Mode used while primary.
    pub mode: ReplicationMode,
    /// Sync-mode policy when the replica is gone.
    pub on_replica_loss: OnReplicaLoss,
    /// How long a sync write waits for the replica.
    pub sync_timeout: Duration,
    /// `Some(addr)`: start as a replica of this primary.
    pub primary_addr: Option<String>,
    /// Stable id sent in `Hello`.
    pub replica_id: String,
    /// `Some(n)`: trim the WAL, keeping at least the last `n` entries and (on a primary
    /// that expects a replica) every entry from the replica's acked LSN on; `None`: never
    /// trim. See the module docs for the rule.
    pub wal_retain: Option<u64>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            mode: ReplicationMode::None,
            on_replica_loss: OnReplicaLoss::Fail,
            sync_timeout: DEFAULT_SYNC_TIMEOUT,
            primary_addr: None,
            replica_id: "replica".into(),
            wal_retain: None,
        }
    }
}

/// This process's part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Accepts writes.
    Primary,
    /// Follows the primary at this address ("" while unknown).
    Replica(String),
}

/// The replica's cumulative acks, and the sync writes waiting for them. Each waiter is
/// filed under its LSN and woken only by the ack that covers it (a watch channel would wake
/// every waiting write on every ack, most of them for nothing).
///
/// An ack counts only if it is genuine: it comes from the current stream (a superseded or
/// closed stream's acks are refused) and names an LSN that stream was actually sent (or
/// that its Hello proved the replica already holds). Anything else is an [`AckError`], a
/// protocol error that closes the stream and changes nothing here. So `acked` never
/// exceeds what this primary has shipped to a shop that proved itself, and a dead or
/// forged stream can never satisfy a sync write. `acked` itself outlives its stream (it
/// only covers LSNs already genuinely acked: the WAL trimming floor and the status keep
/// it) and is reset when this process becomes the primary again ([`Acks::reset`]), since
/// an ack from an earlier reign may name LSNs that no longer hold the same writes.
#[derive(Default)]
struct Acks {
    /// Highest LSN genuinely acked; only grows until [`Acks::reset`]. Written under the lock.
    acked: AtomicU64,
    state: std::sync::Mutex<AckState>,
}

/// [`Acks`]' lock-protected part.
#[derive(Default)]
struct AckState {
    /// The stream whose acks count, if one is open.
    stream: Option<StreamAcks>,
    /// Highest stream generation ever opened: an older one can never become current.
    newest: u64,
    /// Sync writes waiting, by the LSN they need acked.
    waiters: std::collections::BTreeMap<Lsn, Vec<tokio::sync::oneshot::Sender<()>>>,
}

/// What one stream may ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StreamAcks {
    /// The stream (`Replicator::stream_generation`).
    generation: u64,
    /// Highest LSN sent on it (or proved held by its Hello): its acks may not exceed this.
    sent: Lsn,
}

/// Why an ack was refused; each closes the stream it came on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum AckError {
    /// The stream is not (or no longer) the current one.
    #[error("this replication stream was superseded or closed; its acks no longer count")]
    NotCurrent,
    /// The ack names an LSN this stream was never sent.
    #[error("protocol error: ack of LSN {lsn} is beyond the highest LSN sent on this stream ({sent}); closing the stream")]
    BeyondSent {
        /// What the peer acked.
        lsn: Lsn,
        /// The most it could have acked.
        sent: Lsn,
    },
}

impl From<AckError> for Status {
    fn from(err: AckError) -> Self {
        match err {
            AckError::NotCurrent => Status::aborted(err.to_string()),
            AckError::BeyondSent { .. } => Status::invalid_argument(err.to_string()),
        }
    }
}

/// Waiters kept before abandoned ones (timed-out writes) are swept out.
const ACK_WAITERS_SWEEP_AT: usize = 4096;

impl Acks {
    fn acked(&self) -> Lsn {
        self.acked.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AckState> {
        // Only plain field updates, inserts and removals happen under the lock: a poisoned
        // state is intact.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `generation` the stream whose acks count (nothing sent on it yet), unless a
    /// newer one was opened already; the previous stream's acks stop counting.
    fn open(&self, generation: u64) {
        let mut state = self.lock();
        if generation > state.newest {
            state.newest = generation;
            state.stream = Some(StreamAcks {
                generation,
                sent: 0,
            });
        }
    }

    /// Records that `generation` is about to be sent (or holds) everything up to `lsn`;
    /// call it *before* the message leaves, so the ack can never arrive first.
    /// `false` if the stream is no longer current (stop shipping on it).
    fn sent(&self, generation: u64, lsn: Lsn) -> bool {
        let mut state = self.lock();
        match &mut state.stream {
            Some(stream) if stream.generation == generation => {
                stream.sent = stream.sent.max(lsn);
                true
            }
            _ => false,
        }
    }

    /// Stream `generation` ended: its acks no longer count.
    fn close(&self, generation: u64) {
        let mut state = self.lock();
        if state.stream.is_some_and(|s| s.generation == generation) {
            state.stream = None;
        }
    }

    /// This process (again) became the primary: forget every ack and stream of before.
    fn reset(&self) {
        let mut state = self.lock();
        state.stream = None;
        self.acked.store(0, Ordering::Release);
    }

    /// Records a cumulative ack from stream `generation` and wakes the writes it covers;
    /// refuses (changing nothing) an ack from a stream that is not current or beyond what
    /// that stream was sent.
    fn note(&self, generation: u64, lsn: Lsn) -> std::result::Result<(), AckError> {
        let covered = {
            let mut state = self.lock();
            let sent = match state.stream {
                Some(stream) if stream.generation == generation => stream.sent,
                _ => return Err(AckError::NotCurrent),
            };
            if lsn > sent {
                return Err(AckError::BeyondSent { lsn, sent });
            }
            if lsn <= self.acked() {
                return Ok(());
            }
            self.acked.store(lsn, Ordering::Release);
            // Everything at or below `lsn` is covered; `lsn + 1` cannot overflow (`lsn` ≤
            // an LSN that was sent), but an overflow would only mean "every waiter".
            match lsn.checked_add(1) {
                Some(above) => {
                    let rest = state.waiters.split_off(&above);
                    std::mem::replace(&mut state.waiters, rest)
                }
                None => std::mem::take(&mut state.waiters),
            }
        };
        for tx in covered.into_values().flatten() {
            let _ = tx.send(());
        }
        Ok(())
    }

    /// `true` once the replica has acked `lsn`; `false` if the replicator went away first.
    async fn wait_for(&self, lsn: Lsn) -> bool {
        let rx = {
            let mut state = self.lock();
            if self.acked() >= lsn {
                return true;
            }
            if state.waiters.len() >= ACK_WAITERS_SWEEP_AT {
                state.waiters.retain(|_, txs| {
                    txs.retain(|tx| !tx.is_closed());
                    !txs.is_empty()
                });
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            state.waiters.entry(lsn).or_default().push(tx);
            rx
        };
        rx.await.is_ok()
    }
}

/// Shared replication state: role, acks, connection flags.
pub struct Replicator {
    store: Arc<Store>,
    config: ReplicationConfig,
    address: String,
    role_tx: watch::Sender<Role>,
    acks: Acks,
    peer_connected: AtomicBool,
    caught_up: AtomicBool,
    primary_last_lsn: AtomicU64,
    stream_generation: AtomicU64,
    stop_rx: watch::Receiver<bool>,
    /// This shop's credential: proves it to the primary it follows, and checks that a
    /// replica (or the primary) is a shop too. `None`: no replication either way.
    credential: Option<Credential>,
    /// The primary's registry lease, once registered: writes stop before it may expire.
    lease: std::sync::OnceLock<LeaseGuard>,
}

/// How a primary knows its lease is still certainly held (see "Lease guard" above) and
/// that the registry accepted its claim to the current term (see "One primary per term").
struct LeaseGuard {
    /// Until when the registry certainly holds the lease (`None`: not held).
    valid_until: watch::Receiver<Option<std::time::Instant>>,
    /// The metadata the registry last accepted from this process.
    accepted: watch::Receiver<HashMap<String, String>>,
    /// Writes stop this long before `valid_until`, so an acknowledged write always lands
    /// before the replica can be promoted.
    margin: Duration,
}

impl Replicator {
    /// Creates the state; `address` is this process's advertised address; `credential`
    /// is this shop's identity (module docs, "Who may replicate"); `stop_rx` turns true on
    /// shutdown.
    pub fn new(
        store: Arc<Store>,
        config: ReplicationConfig,
        address: String,
        credential: Option<Credential>,
        stop_rx: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let role = match &config.primary_addr {
            Some(primary) => Role::Replica(primary.clone()),
            None => Role::Primary,
        };
        store.fence_writes(role != Role::Primary);
        Arc::new(Self {
            store,
            config,
            address,
            role_tx: watch::channel(role).0,
            acks: Acks::default(),
            peer_connected: AtomicBool::new(false),
            caught_up: AtomicBool::new(false),
            primary_last_lsn: AtomicU64::new(0),
            stream_generation: AtomicU64::new(0),
            stop_rx,
            credential,
            lease: std::sync::OnceLock::new(),
        })
    }

    /// Makes writes depend on the registry lease: from now on the primary refuses writes
    /// (UNAVAILABLE) unless `valid_until` is more than `margin` away. Set once, at start-up;
    /// only when a replica may be promoted (mode sync or async).
    /// Writes also wait until `accepted` (the metadata the registry accepted) names this
    /// process as primary for its current term.
    pub fn guard_with_lease(
        &self,
        valid_until: watch::Receiver<Option<std::time::Instant>>,
        accepted: watch::Receiver<HashMap<String, String>>,
        margin: Duration,
    ) {
        if self.config.mode == ReplicationMode::None {
            return;
        }
        if self
            .lease
            .set(LeaseGuard {
                valid_until,
                accepted,
                margin,
            })
            .is_err()
        {
            tracing::warn!("lease guard already set; keeping the first");
        }
    }

    /// `Ok` unless a lease guard is set and the lease may be about to expire, or the
    /// registry has not accepted this primary's claim to its term. Both refusals happen
    /// before anything is written ([`ShopError::Fenced`]: a client may send the write
    /// elsewhere).
    fn check_lease(&self) -> Result<()> {
        let Some(guard) = self.lease.get() else {
            return Ok(());
        };
        match *guard.valid_until.borrow() {
            Some(until) if std::time::Instant::now() + guard.margin < until => {}
            _ => {
                return Err(ShopError::Fenced(
                    "this primary cannot confirm its registry lease (registry unreachable or lease lost); \
                     writes are refused until it renews it, so that a replica promoted meanwhile can never \
                     diverge from acknowledged writes"
                        .into(),
                ))
            }
        }
        let term = self.store.term();
        if primary_term(&guard.accepted.borrow()) == Some(term) {
            Ok(())
        } else {
            Err(ShopError::Fenced(format!(
                "this process claims the primary role for term {term} but the registry has not \
                 accepted the claim yet; retry in a moment"
            )))
        }
    }

    /// The registry refused `metadata`: if it was this primary's claim to its current
    /// term, step down to a fenced replica (no writes) and let the failover watch pick
    /// whom to follow, or promote again with a higher term. Never re-claims that term.
    pub fn claim_refused(&self, metadata: &HashMap<String, String>, reason: &str) {
        let term = self.store.term();
        if primary_term(metadata) != Some(term) {
            return;
        }
        let stepped_down =
            self.set_role_if(Role::Replica(String::new()), |role| *role == Role::Primary);
        if stepped_down {
            tracing::warn!(
                term,
                reason,
                "the registry refused our primary claim; fenced until a primary is known"
            );
        }
    }

    /// Changes the role to `role` if `only_if(current role)`; true when it changed. The
    /// store's write fence follows: closed before the change becomes visible when stepping
    /// down, opened after it when becoming the primary.
    fn set_role_if(&self, role: Role, only_if: impl FnOnce(&Role) -> bool) -> bool {
        self.role_tx.send_if_modified(|current| {
            if *current == role || !only_if(current) {
                return false;
            }
            let primary = role == Role::Primary;
            if !primary {
                self.store.fence_writes(true);
            }
            if primary {
                // Acks from an earlier reign as primary say nothing about this one's LSNs.
                self.acks.reset();
            }
            *current = role;
            if primary {
                self.store.fence_writes(false);
            }
            true
        })
    }

    /// This shop's credential, or `Unauthenticated` when it has none (then it neither
    /// serves nor follows a replication stream).
    fn must_credential(&self) -> Result<&Credential> {
        self.credential.as_ref().ok_or_else(|| {
            ShopError::Unauthenticated(
                "this shop has no credential, so it can neither prove it is a shop nor check \
                 that its replication peer is one: replication refused (start it with \
                 --credential)"
                    .into(),
            )
        })
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role_tx.borrow().clone()
    }

    /// Watches role changes (the registry keeper republishes metadata on each).
    pub fn subscribe_role(&self) -> watch::Receiver<Role> {
        self.role_tx.subscribe()
    }

    /// Registry metadata for the current role and term.
    pub fn registry_metadata(&self) -> HashMap<String, String> {
        let role = match self.role() {
            Role::Primary => "primary",
            Role::Replica(_) => "replica",
        };
        HashMap::from([
            ("role".to_string(), role.to_string()),
            ("term".to_string(), self.store.term().to_string()),
        ])
    }

    /// `Ok` on the primary; `NotPrimary(primary address)` on a replica.
    pub fn check_writable(&self) -> Result<()> {
        match self.role() {
            Role::Primary => self.check_lease(),
            Role::Replica(primary) if primary.is_empty() => Err(ShopError::Fenced(
                "this shop is fenced: it does not know the current primary yet; retry in a moment"
                    .into(),
            )),
            Role::Replica(primary) => Err(ShopError::NotPrimary(primary)),
        }
    }

    fn mode_pb(&self) -> pb::ReplicationMode {
        match self.config.mode {
            ReplicationMode::None => pb::ReplicationMode::None,
            ReplicationMode::Async => pb::ReplicationMode::Async,
            ReplicationMode::Sync => pb::ReplicationMode::Sync,
        }
    }

    /// Completes a locally durable write, committed in `term`, according to the mode
    /// (module docs) and says what was achieved. `lsn: None` = the write changed nothing.
    /// The reply reports the commit's term, not the current one: a step-down between the
    /// commit and the reply must not make the write look as if a newer primary took it.
    pub async fn finish_write(&self, lsn: Option<Lsn>, term: u64) -> Result<pb::WriteInfo> {
        let mut info = pb::WriteInfo {
            lsn: lsn.unwrap_or(0),
            replicated: false,
            mode: self.mode_pb() as i32,
            degraded: false,
            term,
        };
        let Some(lsn) = lsn else {
            info.replicated = self.config.mode != ReplicationMode::None
                && self.acks.acked() >= self.store.last_lsn()?;
            return Ok(info);
        };
        match self.config.mode {
            ReplicationMode::None => {}
            ReplicationMode::Async => info.replicated = self.acks.acked() >= lsn,
            ReplicationMode::Sync => {
                let degrade = self.config.on_replica_loss == OnReplicaLoss::Degrade;
                if degrade && !self.peer_connected.load(Ordering::Acquire) {
                    info.degraded = true;
                    return Ok(info);
                }
                let waited =
                    tokio::time::timeout(self.config.sync_timeout, self.acks.wait_for(lsn)).await;
                match waited {
                    Ok(true) => info.replicated = true,
                    _ if degrade => info.degraded = true,
                    _ => {
                        tracing::warn!(lsn, timeout = ?self.config.sync_timeout, "replica did not ack a sync write");
                        return Err(ShopError::Unavailable(format!(
                            "the replica did not acknowledge LSN {lsn} within {:?}; the write is committed on the primary but not replicated",
                            self.config.sync_timeout
                        )));
                    }
                }
            }
        }
        Ok(info)
    }

    /// Makes this replica the primary with a higher term. `expected_term` (0 = none)
    /// guards against racing promotions.
    pub async fn promote(&self, expected_term: u64) -> Result<u64> {
        let term = self.store.term();
        if expected_term != 0 && expected_term != term {
            return Err(ShopError::precondition(format!(
                "expected term {expected_term} but the current term is {term}"
            )));
        }
        if self.role() == Role::Primary {
            return Err(ShopError::precondition(format!(
                "already the primary (term {term})"
            )));
        }
        // Heartbeats already raised our term to the primary's, so +1 is newer than anything
        // this replica has seen.
        let new_term = term.checked_add(1).ok_or_else(|| {
            ShopError::precondition(format!(
                "term {term} is the largest possible; this shop cannot be promoted"
            ))
        })?;
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || store.set_term(new_term)).await??;
        self.set_role_if(Role::Primary, |_| true);
        self.peer_connected.store(false, Ordering::Release);
        tracing::info!(
            term = new_term,
            last_lsn = self.store.last_lsn()?,
            "promoted to primary"
        );
        Ok(new_term)
    }

    /// Steps down to follow a primary with a higher term.
    pub async fn follow(&self, primary: String, term: u64) -> Result<()> {
        // No write admitted under the old term may commit under the new one.
        self.store.fence_writes(true);
        if term > self.store.term() {
            let store = Arc::clone(&self.store);
            tokio::task::spawn_blocking(move || store.set_term(term)).await??;
        }
        if self.role() != Role::Replica(primary.clone()) {
            tracing::warn!(%primary, term, "a newer primary exists; stepping down to replica");
            self.set_role_if(Role::Replica(primary), |_| true);
        }
        Ok(())
    }

    /// Current status (the GetReplicationStatus reply).
    pub fn status(&self) -> Result<pb::GetReplicationStatusResponse> {
        let last_lsn = self.store.last_lsn()?;
        let (role, acked, primary_address) = match self.role() {
            Role::Primary => (pb::Role::Primary, self.acks.acked(), self.address.clone()),
            Role::Replica(primary) => (pb::Role::Replica, self.store.durable_lsn(), primary),
        };
        let lag_entries = match self.role() {
            Role::Primary => last_lsn.saturating_sub(acked),
            Role::Replica(_) => self
                .primary_last_lsn
                .load(Ordering::Acquire)
                .saturating_sub(last_lsn),
        };
        let lag_ms = if lag_entries == 0 {
            0
        } else {
            let oldest = match self.role() {
                Role::Primary => acked + 1,
                Role::Replica(_) => last_lsn,
            };
            self.store
                .wal_since(oldest.saturating_sub(1), 1)?
                .first()
                .map_or(0, |e| (now_ms() - e.committed_at_ms).max(0) as u64)
        };
        Ok(pb::GetReplicationStatusResponse {
            role: role as i32,
            term: self.store.term(),
            last_lsn,
            replica_acked_lsn: acked,
            lag_entries,
            lag_ms,
            mode: self.mode_pb() as i32,
            peer_connected: self.peer_connected.load(Ordering::Acquire),
            caught_up: self.caught_up.load(Ordering::Acquire),
            primary_address,
            address: self.address.clone(),
            first_wal_lsn: self.store.first_wal_lsn()?.unwrap_or(0),
        })
    }

    /// WAL entries with an LSN below the returned one may be deleted (module docs, "WAL
    /// trimming"): everything but the last `retain` entries, and on a primary that expects
    /// a replica nothing from the highest LSN the replica acked on. The acked entry itself
    /// is kept because a reconnecting replica's `Hello` names it and the divergence check
    /// reads its term.
    pub fn wal_trim_floor(&self, retain: u64) -> Result<Lsn> {
        let last = self.store.last_lsn()?;
        let keep_tail_from = last.saturating_sub(retain.max(1)) + 1;
        let expects_replica =
            self.role() == Role::Primary && self.config.mode != ReplicationMode::None;
        Ok(if expects_replica {
            keep_tail_from.min(self.acks.acked())
        } else {
            keep_tail_from
        })
    }

    /// One trimming pass (blocking: sled I/O).
    fn trim_wal(&self, retain: u64) -> Result<usize> {
        let floor = self.wal_trim_floor(retain)?;
        let trimmed = self.store.trim_wal(floor, WAL_TRIM_MAX_PER_PASS)?;
        if trimmed > 0 {
            tracing::debug!(trimmed, below = floor, "WAL trimmed");
        }
        Ok(trimmed)
    }
}

/// Trims the WAL every [`WAL_TRIM_INTERVAL`] by [`Replicator::wal_trim_floor`], and once
/// more at shutdown; returns on shutdown. Errors are logged and retried next pass.
pub async fn run_wal_trimmer(rep: Arc<Replicator>, retain: u64) {
    let mut stop_rx = rep.stop_rx.clone();
    let mut tick = tokio::time::interval(WAL_TRIM_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last_pass = tokio::select! {
            _ = tick.tick() => false,
            _ = stopped(&mut stop_rx) => true,
        };
        let r = Arc::clone(&rep);
        match tokio::task::spawn_blocking(move || r.trim_wal(retain)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "WAL trimming failed"),
            Err(e) => tracing::error!(error = %e, "WAL trimming task failed"),
        }
        if last_pass {
            return;
        }
    }
}

/// What the registry says to a process about to act as primary (module docs, "Fence").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fence {
    /// No registered primary has a higher term: take writes.
    Clear,
    /// A primary with a higher term is registered: start as its replica.
    Follow {
        /// The newer primary's address.
        primary: String,
        /// Its term.
        term: u64,
    },
    /// The registry did not answer: refuse writes until it does.
    Unknown,
}

/// Asks the registry once whether another `service` instance is registered as primary
/// with a term above `our_term` (instances at `own_address` are ignored).
pub async fn check_fence(registry: &str, service: &str, own_address: &str, our_term: u64) -> Fence {
    // `registry` may list several registries: the first that answers decides.
    let Ok(registries) = concord::discovery::Registries::connect(registry) else {
        return Fence::Unknown;
    };
    let instances = match registries.resolve(service, FENCE_LOOKUP_TIMEOUT).await {
        Ok(instances) => instances,
        Err(status) => {
            tracing::warn!(%registry, %status, "registry lookup failed; writes fenced");
            return Fence::Unknown;
        }
    };
    instances
        .into_iter()
        .filter(|i| i.address != own_address)
        .filter_map(|i| Some((primary_term(&i.metadata)?, i.address)))
        .filter(|(term, _)| *term > our_term)
        .max_by_key(|(term, _)| *term)
        .map_or(Fence::Clear, |(term, primary)| Fence::Follow {
            primary,
            term,
        })
}

/// A process that started fenced (registry unreachable) keeps asking the registry with
/// backoff; once it answers, this process becomes the primary (same term) or follows the
/// newer one. Returns then, or on shutdown, or when something else (the failover watch)
/// already gave it a role.
pub async fn run_fence(rep: Arc<Replicator>, registry: String, service: String) {
    let mut stop_rx = rep.stop_rx.clone();
    let mut backoff = RECONNECT_BACKOFF.0;
    loop {
        if rep.role() != Role::Replica(String::new()) {
            return;
        }
        match check_fence(&registry, &service, &rep.address, rep.store.term()).await {
            Fence::Clear => {
                let lifted =
                    rep.set_role_if(Role::Primary, |role| *role == Role::Replica(String::new()));
                if lifted {
                    tracing::info!(
                        term = rep.store.term(),
                        "registry reached, no newer primary: taking writes"
                    );
                }
                return;
            }
            Fence::Follow { primary, term } => {
                if let Err(e) = rep.follow(primary, term).await {
                    tracing::error!(error = %e, "cannot follow the newer primary");
                }
                return;
            }
            Fence::Unknown => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped(&mut stop_rx) => return,
        }
        backoff = (backoff * 2).min(RECONNECT_BACKOFF.1);
    }
}

/// Resolves once `stop_rx` turns true (or its sender is gone); drops the borrow guard
/// before returning so callers stay `Send`.
pub(crate) async fn stopped(stop_rx: &mut watch::Receiver<bool>) {
    let _ = stop_rx.wait_for(|stop| *stop).await;
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// WAL entry → proto.
pub fn entry_to_pb(e: WalEntry) -> pb::WalEntry {
    pb::WalEntry {
        lsn: e.lsn,
        term: e.term,
        committed_at_unix_ms: e.committed_at_ms,
        mutations: e.mutations.into_iter().map(mutation_to_pb).collect(),
    }
}

fn mutation_to_pb(m: Mutation) -> pb::Mutation {
    let delete = m.value.is_none();
    pb::Mutation {
        tree: m.tree.as_str().to_string(),
        key: m.key,
        value: m.value.unwrap_or_default(),
        delete,
    }
}

fn mutation_from_pb(m: pb::Mutation) -> Result<Mutation> {
    Ok(Mutation {
        tree: TreeName::from_name(&m.tree)?,
        key: m.key,
        value: if m.delete { None } else { Some(m.value) },
    })
}

/// Proto → WAL entry; an unknown tree name is `InvalidArgument`.
pub fn entry_from_pb(e: pb::WalEntry) -> Result<WalEntry> {
    Ok(WalEntry {
        lsn: e.lsn,
        term: e.term,
        committed_at_ms: e.committed_at_unix_ms,
        mutations: e
            .mutations
            .into_iter()
            .map(mutation_from_pb)
            .collect::<Result<_>>()?,
    })
}

type Outbound = mpsc::Sender<std::result::Result<pb::ReplicateResponse, Status>>;

fn response(
    kind: pb::replicate_response::Kind,
) -> std::result::Result<pb::ReplicateResponse, Status> {
    Ok(pb::ReplicateResponse { kind: Some(kind) })
}

/// Whether the primary must send a snapshot before resuming at `hello.applied_lsn + 1`.
fn needs_snapshot(store: &Store, hello: &pb::Hello) -> Result<bool> {
    let applied = hello.applied_lsn;
    if applied == 0 {
        // An empty replica: a snapshot is needed only if our WAL does not start at 1.
        return Ok(store.first_wal_lsn()?.is_some_and(|first| first > 1));
    }
    if applied > store.last_lsn()? {
        return Ok(true);
    }
    match store.term_at(applied)? {
        Some(term) => Ok(term != hello.applied_term),
        None => Ok(true), // that entry is gone (we were snapshotted past it)
    }
}

/// Streams a fuzzy snapshot (module docs) on stream `generation`; returns the LSN to
/// resume after.
async fn send_snapshot(
    store: &Arc<Store>,
    acks: &Acks,
    generation: u64,
    out: &Outbound,
) -> Result<Lsn> {
    use pb::replicate_response::Kind;
    let snap_lsn = store.last_lsn()?;
    let term = store.term();
    let closed = || ShopError::Unavailable("replica went away during snapshot".into());
    out.send(response(Kind::SnapshotBegin(pb::SnapshotBegin {
        lsn: snap_lsn,
        term,
    })))
    .await
    .map_err(|_| closed())?;
    for name in TreeName::ALL {
        let mut iter = store.tree(name).iter();
        loop {
            let mut chunk = Vec::with_capacity(SNAPSHOT_CHUNK_KEYS);
            for item in iter.by_ref().take(SNAPSHOT_CHUNK_KEYS) {
                let (k, v) = item?;
                chunk.push(mutation_to_pb(Mutation {
                    tree: name,
                    key: k.to_vec(),
                    value: Some(v.to_vec()),
                }));
            }
            if chunk.is_empty() {
                break;
            }
            out.send(response(Kind::SnapshotChunk(pb::SnapshotChunk {
                mutations: chunk,
            })))
            .await
            .map_err(|_| closed())?;
        }
    }
    let lsn_term = store.term_at(snap_lsn)?.unwrap_or(term);
    if !acks.sent(generation, snap_lsn) {
        return Err(ShopError::Unavailable(
            "a newer replication stream replaced this one during the snapshot".into(),
        ));
    }
    out.send(response(Kind::SnapshotEnd(pb::SnapshotEnd {
        lsn: snap_lsn,
        lsn_term,
    })))
    .await
    .map_err(|_| closed())?;
    tracing::info!(lsn = snap_lsn, "snapshot sent to replica");
    Ok(snap_lsn)
}

/// Primary side: ships the WAL from `hello` on until the replica goes, a newer stream
/// supersedes this one, or shutdown.
async fn ship(rep: Arc<Replicator>, hello: pb::Hello, out: Outbound, generation: u64) {
    use pb::replicate_response::Kind;
    let mut stop_rx = rep.stop_rx.clone();
    let store = Arc::clone(&rep.store);
    let mut committed_rx = store.subscribe();
    let mut pos = hello.applied_lsn;
    let snapshot = {
        let store = Arc::clone(&store);
        let hello = hello.clone();
        tokio::task::spawn_blocking(move || needs_snapshot(&store, &hello)).await
    };
    match snapshot {
        // Same history up to applied_lsn: the replica already holds it durably.
        Ok(Ok(false)) => {
            if rep.acks.sent(generation, pos) {
                // In range by construction: `pos` is at most our last LSN.
                let _ = rep.acks.note(generation, pos);
            }
        }
        Ok(Ok(true)) => match send_snapshot(&store, &rep.acks, generation, &out).await {
            Ok(lsn) => pos = lsn,
            Err(e) => {
                tracing::warn!(error = %e, "snapshot failed");
                return;
            }
        },
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot decide where the replica resumes");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "snapshot decision task failed");
            return;
        }
    }
    tracing::info!(replica = %hello.replica_id, from_lsn = pos + 1, "replica connected");
    let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if rep.stream_generation.load(Ordering::Acquire) != generation || *stop_rx.borrow() {
            break;
        }
        // Fresh commits come from the store's in-memory tail; older ones from sled.
        let batch = match store.wal_tail_since(pos, WAL_BATCH_MAX) {
            Some(entries) => Ok(Ok(entries)),
            None => {
                let store = Arc::clone(&store);
                tokio::task::spawn_blocking(move || store.wal_since(pos, WAL_BATCH_MAX)).await
            }
        };
        let entries = match batch {
            Ok(Ok(entries)) => entries,
            Ok(Err(e)) => {
                tracing::error!(error = %e, pos, "cannot read the WAL");
                break;
            }
            Err(e) => {
                tracing::error!(error = %e, "WAL reader task failed");
                break;
            }
        };
        if entries.first().is_some_and(|first| first.lsn != pos + 1) {
            // The entries after `pos` were trimmed meanwhile (e.g. during a long snapshot):
            // the replica cannot apply a gap, so it gets a snapshot instead.
            tracing::info!(replica = %hello.replica_id, pos, "WAL trimmed past the replica; sending a snapshot");
            match send_snapshot(&store, &rep.acks, generation, &out).await {
                Ok(lsn) => pos = lsn,
                Err(e) => {
                    tracing::warn!(error = %e, "snapshot failed");
                    break;
                }
            }
            continue;
        }
        if let Some(last) = entries.last() {
            pos = last.lsn;
            if !rep.acks.sent(generation, pos) {
                break; // superseded or closed
            }
            let batch = pb::WalBatch {
                entries: entries.into_iter().map(entry_to_pb).collect(),
            };
            if out.send(response(Kind::Entries(batch))).await.is_err() {
                break; // replica gone
            }
            continue;
        }
        tokio::select! {
            changed = committed_rx.changed() => if changed.is_err() { break },
            _ = heartbeat.tick() => {
                let hb = pb::Heartbeat {
                    last_lsn: pos,
                    term: store.term(),
                    now_unix_ms: now_ms(),
                };
                if out.send(response(Kind::Heartbeat(hb))).await.is_err() {
                    break;
                }
            }
            _ = stopped(&mut stop_rx) => break,
            // The response stream ended (a protocol error, or the replica went away).
            _ = out.closed() => break,
        }
    }
    rep.acks.close(generation);
    if rep.stream_generation.load(Ordering::Acquire) == generation {
        rep.peer_connected.store(false, Ordering::Release);
    }
    tracing::info!(replica = %hello.replica_id, pos, "replica stream ended");
}

/// Primary side: reads the replica's acks. A protocol error (an ack the stream may not
/// make, or anything but an ack after the Hello) changes nothing, goes to `failed_tx` —
/// which ends the response stream with that status, nothing more is sent — and stops.
async fn read_acks(
    rep: Arc<Replicator>,
    mut inbound: tonic::Streaming<pb::ReplicateRequest>,
    generation: u64,
    failed_tx: tokio::sync::oneshot::Sender<Status>,
) {
    let mut stop_rx = rep.stop_rx.clone();
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            _ = stopped(&mut stop_rx) => break,
        };
        let refused = match msg {
            Ok(Some(pb::ReplicateRequest {
                kind: Some(pb::replicate_request::Kind::Ack(ack)),
            })) => match rep.acks.note(generation, ack.durable_lsn) {
                Ok(()) => continue,
                Err(e) => Status::from(e),
            },
            Ok(Some(_)) => Status::invalid_argument(
                "protocol error: only Acks may follow the Hello; closing the stream",
            ),
            Ok(None) => break,
            Err(status) => {
                tracing::debug!(%status, "replica stream broke");
                break;
            }
        };
        tracing::warn!(generation, status = %refused.message(), "replication stream closed");
        let _ = failed_tx.send(refused);
        break;
    }
    rep.acks.close(generation);
    if rep.stream_generation.load(Ordering::Acquire) == generation {
        rep.peer_connected.store(false, Ordering::Release);
    }
}

/// The primary's half of one `Replicate` stream: what [`ship`] queues, cut short by a
/// protocol error [`read_acks`] found — the error is the next and last item, so nothing
/// queued behind it is sent.
struct Outgoing {
    messages: ReceiverStream<std::result::Result<pb::ReplicateResponse, Status>>,
    /// Resolves with the status to close the stream with (dropped: no error).
    failed_rx: Option<tokio::sync::oneshot::Receiver<Status>>,
    /// The error was sent: the stream is over.
    done: bool,
}

impl Stream for Outgoing {
    type Item = std::result::Result<pb::ReplicateResponse, Status>;

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future;
        use std::task::Poll;
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(failed_rx) = &mut this.failed_rx {
            match Pin::new(failed_rx).poll(cx) {
                Poll::Ready(Ok(status)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
                Poll::Ready(Err(_)) => this.failed_rx = None,
                Poll::Pending => {}
            }
        }
        Pin::new(&mut this.messages).poll_next(cx)
    }
}

/// The `concord.shop.v1.Replication` service.
pub struct ReplicationService {
    rep: Arc<Replicator>,
    admin_token: String,
}

impl ReplicationService {
    /// A service over `rep`; `Promote` needs `admin_token`.
    pub fn new(rep: Arc<Replicator>, admin_token: String) -> Self {
        Self { rep, admin_token }
    }
}

type ReplicateStream =
    Pin<Box<dyn Stream<Item = std::result::Result<pb::ReplicateResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Replication for ReplicationService {
    type ReplicateStream = ReplicateStream;

    async fn replicate(
        &self,
        request: Request<tonic::Streaming<pb::ReplicateRequest>>,
    ) -> std::result::Result<Response<Self::ReplicateStream>, Status> {
        // Only a shop may read the WAL or ack writes: nothing is read or sent before this.
        let own = self.rep.must_credential().map_err(Status::from)?;
        let principal = concord::identity::authenticate(&request, &Verifier::Own(own.clone()))?;
        if principal != Principal::Shop {
            return Err(Status::permission_denied(format!(
                "{principal} may not replicate the shop; only a shop may"
            )));
        }
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(pb::ReplicateRequest {
                kind: Some(pb::replicate_request::Kind::Hello(hello)),
            }) => hello,
            _ => {
                return Err(Status::invalid_argument(
                    "the first Replicate message must be Hello",
                ))
            }
        };
        crate::validate::replica_id(&hello.replica_id)?;
        let term = self.rep.store.term();
        if hello.term > term {
            // Our term is the one the registry accepted from us (writes need that). A
            // newer one counts only once the registry accepted it, and then the failover
            // watch steps us down; a peer's word is not enough.
            tracing::warn!(
                replica = %hello.replica_id,
                claimed = hello.term,
                term,
                "replica claims a term above ours; refusing the stream, not stepping down"
            );
            return Err(Status::failed_precondition(format!(
                "protocol error: the replica claims term {} above this primary's term {term}; \
                 a primary steps down only when the registry accepts a newer primary",
                hello.term
            )));
        }
        self.rep.check_writable()?;
        let generation = self.rep.stream_generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.rep.acks.open(generation);
        self.rep.peer_connected.store(true, Ordering::Release);
        let (out_tx, out_rx) = mpsc::channel(STREAM_CHANNEL_CAPACITY);
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(ship(Arc::clone(&self.rep), hello, out_tx, generation));
        tokio::spawn(read_acks(
            Arc::clone(&self.rep),
            inbound,
            generation,
            failed_tx,
        ));
        let outgoing = Outgoing {
            messages: ReceiverStream::new(out_rx),
            failed_rx: Some(failed_rx),
            done: false,
        };
        let mut response = Response::new(Box::pin(outgoing) as Self::ReplicateStream);
        // The primary proves to the replica that it is a shop too (`follow_once`).
        own.attach_to(response.metadata_mut());
        Ok(response)
    }

    async fn get_replication_status(
        &self,
        _request: Request<pb::GetReplicationStatusRequest>,
    ) -> std::result::Result<Response<pb::GetReplicationStatusResponse>, Status> {
        Ok(Response::new(self.rep.status()?))
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> std::result::Result<Response<pb::PromoteResponse>, Status> {
        concord::auth::require_token(request.metadata(), &self.admin_token)
            .map_err(Status::from)?;
        let term = self.rep.promote(request.get_ref().expected_term).await?;
        Ok(Response::new(pb::PromoteResponse {
            role: pb::Role::Primary as i32,
            term,
            last_lsn: self.rep.store.last_lsn()?,
        }))
    }
}

/// Replica side: while this process is a replica, follow the primary (reconnecting with
/// backoff); returns on shutdown.
pub async fn run_follower(rep: Arc<Replicator>) {
    let mut stop_rx = rep.stop_rx.clone();
    let mut role_rx = rep.subscribe_role();
    let mut backoff = RECONNECT_BACKOFF.0;
    loop {
        if *stop_rx.borrow() {
            return;
        }
        let role = role_rx.borrow_and_update().clone();
        let Role::Replica(primary) = role else {
            tokio::select! {
                _ = role_rx.changed() => continue,
                _ = stopped(&mut stop_rx) => return,
            }
        };
        if primary.is_empty() {
            tokio::select! {
                _ = role_rx.changed() => continue,
                _ = stopped(&mut stop_rx) => return,
            }
        }
        match follow_once(&rep, &primary, &mut role_rx).await {
            Ok(()) => backoff = RECONNECT_BACKOFF.0,
            Err(e) => {
                tracing::warn!(%primary, error = %e, "replication stream failed; reconnecting")
            }
        }
        rep.peer_connected.store(false, Ordering::Release);
        rep.caught_up.store(false, Ordering::Release);
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stopped(&mut stop_rx) => return,
        }
        backoff = (backoff * 2).min(RECONNECT_BACKOFF.1);
    }
}

/// One replication session with `primary`; returns when the stream ends, the role
/// changes or on shutdown.
async fn follow_once(
    rep: &Arc<Replicator>,
    primary: &str,
    role_rx: &mut watch::Receiver<Role>,
) -> Result<()> {
    use pb::replicate_response::Kind;
    let unavailable =
        |e: &dyn std::fmt::Display| ShopError::Unavailable(format!("primary {primary}: {e}"));
    // Over TLS the primary must prove it is a shop (its certificate), not just answer.
    let channel = concord::grpc::lazy_channel_to(primary, &concord::identity::Principal::Shop)
        .map_err(|e| unavailable(&e))?;
    let mut client = ReplicationClient::new(channel);
    let store = Arc::clone(&rep.store);
    let (out_tx, out_rx) = mpsc::channel(STREAM_CHANNEL_CAPACITY);
    let applied_lsn = store.last_lsn()?;
    let hello = pb::Hello {
        replica_id: rep.config.replica_id.clone(),
        applied_lsn,
        term: store.term(),
        applied_term: store.term_at(applied_lsn)?.unwrap_or(0),
    };
    out_tx
        .send(pb::ReplicateRequest {
            kind: Some(pb::replicate_request::Kind::Hello(hello)),
        })
        .await
        .map_err(|_| ShopError::internal("outbound channel closed"))?;
    let own = rep.must_credential()?;
    let mut request = Request::new(ReceiverStream::new(out_rx));
    own.attach(&mut request);
    let response = client
        .replicate(request)
        .await
        .map_err(|s| unavailable(&s))?;
    // The primary must prove it is a shop before anything it sends is installed: a
    // snapshot from anyone else would replace this replica's data.
    match concord::identity::authenticate_metadata(response.metadata(), &Verifier::Own(own.clone()))
    {
        Ok(Principal::Shop) => {}
        Ok(other) => {
            return Err(ShopError::Unauthenticated(format!(
                "{primary} proved it is {other}, not a shop; not following it"
            )))
        }
        Err(e) => {
            return Err(ShopError::Unauthenticated(format!(
                "{primary} did not prove it is a shop ({e}); nothing it sends is installed"
            )))
        }
    }
    let mut inbound = response.into_inner();
    rep.peer_connected.store(true, Ordering::Release);
    tracing::info!(%primary, applied_lsn, "following primary");
    let mut stop_rx = rep.stop_rx.clone();
    // Entry batches are applied on a blocking thread, one apply in flight at a time;
    // whatever arrives meanwhile waits in `pending` and goes into the next apply as ONE
    // transaction and ONE flush, so receiving overlaps applying and a busy stream costs
    // one fsync per apply, not per message.
    let mut pending: Vec<WalEntry> = Vec::new();
    let mut applying = false;
    let (applied_tx, mut applied_rx) = mpsc::channel::<Result<Lsn>>(1);
    loop {
        if !applying && !pending.is_empty() {
            applying = true;
            let entries = std::mem::take(&mut pending);
            let store = Arc::clone(&store);
            let applied_tx = applied_tx.clone();
            tokio::task::spawn_blocking(move || {
                let _ = applied_tx.blocking_send(apply_and_flush(&store, &entries));
            });
        }
        let msg = tokio::select! {
            m = inbound.message() => m.map_err(|s| unavailable(&s))?,
            applied = applied_rx.recv(), if applying => {
                applying = false;
                let lsn = applied.ok_or_else(|| ShopError::internal("apply task vanished"))??;
                if !ack_applied(rep, &out_tx, lsn).await {
                    return Ok(());
                }
                continue;
            }
            _ = role_rx.changed() => return Ok(()),
            _ = stopped(&mut stop_rx) => return Ok(()),
        };
        let Some(pb::ReplicateResponse { kind: Some(kind) }) = msg else {
            if msg.is_none() {
                return Ok(());
            }
            continue;
        };
        if !matches!(kind, Kind::Entries(_) | Kind::Heartbeat(_)) {
            // A snapshot replaces the store: everything received before it lands first.
            if applying {
                applying = false;
                let lsn = applied_rx
                    .recv()
                    .await
                    .ok_or_else(|| ShopError::internal("apply task vanished"))??;
                if !ack_applied(rep, &out_tx, lsn).await {
                    return Ok(());
                }
            }
            if !pending.is_empty() {
                let entries = std::mem::take(&mut pending);
                let store = Arc::clone(&store);
                let lsn = tokio::task::spawn_blocking(move || apply_and_flush(&store, &entries))
                    .await??;
                if !ack_applied(rep, &out_tx, lsn).await {
                    return Ok(());
                }
            }
        }
        let durable = match kind {
            Kind::Entries(batch) => {
                for entry in batch.entries {
                    pending.push(entry_from_pb(entry)?);
                }
                None
            }
            Kind::SnapshotBegin(begin) => {
                tracing::info!(lsn = begin.lsn, term = begin.term, "receiving snapshot");
                let store = Arc::clone(&store);
                tokio::task::spawn_blocking(move || store.begin_snapshot()).await??;
                None
            }
            Kind::SnapshotChunk(chunk) => {
                let mutations = chunk
                    .mutations
                    .into_iter()
                    .map(mutation_from_pb)
                    .collect::<Result<Vec<_>>>()?;
                let store = Arc::clone(&store);
                tokio::task::spawn_blocking(move || store.apply_snapshot_chunk(&mutations))
                    .await??;
                None
            }
            Kind::SnapshotEnd(end) => {
                let store = Arc::clone(&store);
                tokio::task::spawn_blocking(move || store.finish_snapshot(end.lsn, end.lsn_term))
                    .await??;
                tracing::info!(lsn = end.lsn, "snapshot installed");
                Some(end.lsn)
            }
            Kind::Heartbeat(hb) => {
                rep.primary_last_lsn
                    .fetch_max(hb.last_lsn, Ordering::AcqRel);
                if hb.term > store.term() {
                    let s = Arc::clone(&store);
                    tokio::task::spawn_blocking(move || s.set_term(hb.term)).await??;
                }
                let applied = store.last_lsn()?;
                rep.caught_up
                    .store(applied >= hb.last_lsn, Ordering::Release);
                None
            }
        };
        if let Some(lsn) = durable {
            if !ack_applied(rep, &out_tx, lsn).await {
                return Ok(());
            }
        }
    }
}

/// Replica side: applies a run of received entries in one transaction and flushes it on
/// the calling (blocking) thread; returns the store's LSN, now durable.
fn apply_and_flush(store: &Store, entries: &[WalEntry]) -> Result<Lsn> {
    store.apply_wal_entries_flushed(entries)?;
    store.last_lsn()
}

/// Replica side: records that the store is durable at `lsn` and acks it to the primary.
/// `false` when the stream is gone.
async fn ack_applied(
    rep: &Replicator,
    out_tx: &mpsc::Sender<pb::ReplicateRequest>,
    lsn: Lsn,
) -> bool {
    if lsn >= rep.primary_last_lsn.load(Ordering::Acquire) {
        rep.caught_up.store(true, Ordering::Release);
    }
    rep.primary_last_lsn.fetch_max(lsn, Ordering::AcqRel);
    let ack = pb::ReplicateRequest {
        kind: Some(pb::replicate_request::Kind::Ack(pb::Ack {
            durable_lsn: lsn,
        })),
    };
    out_tx.send(ack).await.is_ok()
}

/// With a registry: watches the `shop` instances and (a) promotes this replica when no
/// primary is registered any more, (b) steps down and follows a primary with a higher
/// term. Returns on shutdown.
pub async fn run_failover_watch(rep: Arc<Replicator>, registry_addr: String, service: String) {
    let watch = match concord::discovery::ServiceWatch::spawn(&registry_addr, &service) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch the registry; automatic failover disabled");
            return;
        }
    };
    let mut instances_rx = watch.subscribe();
    let mut role_rx = rep.subscribe_role();
    let mut stop_rx = rep.stop_rx.clone();
    // Only promote after having seen a primary on the current Watch stream: a replica that
    // starts before its primary registered must not usurp it, and neither may one whose
    // registry restarted and has not yet heard the primary's next KeepAlive.
    let mut seen_primary: Option<u64> = None;
    // Whether this pass looks at an instance set it has not decided on yet. A pass woken
    // by a role change (our own claim refused) sees the same set, which lacks the winner
    // the registry already holds: promoting again from it would only claim a still higher
    // term over a primary that may have acknowledged writes. Wait for the set to change.
    let mut fresh_instances = true;
    loop {
        let snapshot = instances_rx.borrow_and_update().clone();
        let instances = snapshot.instances;
        let our_term = rep.store.term();
        if let Some(newer) = instances
            .iter()
            .filter(|i| i.address != rep.address)
            .filter_map(|i| Some((primary_term(&i.metadata)?, i)))
            .max_by_key(|(t, _)| *t)
        {
            seen_primary = Some(snapshot.stream);
            let (term, instance) = newer;
            let follow = match rep.role() {
                // The registry grants one primary per term, so another primary at our term
                // means our claim lost (or will): follow the winner.
                Role::Primary => term >= our_term,
                Role::Replica(current) => term >= our_term && current != instance.address,
            };
            if follow {
                if let Err(e) = rep.follow(instance.address.clone(), term).await {
                    tracing::error!(error = %e, "cannot step down");
                }
            }
        } else if seen_primary == Some(snapshot.stream)
            && fresh_instances
            && matches!(rep.role(), Role::Replica(_))
        {
            tracing::warn!("no shop primary registered any more; promoting this replica");
            if let Err(e) = rep.promote(0).await {
                tracing::error!(error = %e, "automatic promotion failed");
            }
        }
        tokio::select! {
            changed = instances_rx.changed() => {
                if changed.is_err() { return }
                fresh_instances = true;
            }
            // A refused claim fences this process: decide again (follow a rival the set
            // already shows), but promote only from a newer set.
            changed = role_rx.changed() => {
                if changed.is_err() { return }
                fresh_instances = false;
            }
            _ = stopped(&mut stop_rx) => return,
        }
    }
}

/// The term a registry entry claims the primary role for: `Some` when its metadata (as
/// [`Replicator::registry_metadata`] publishes it) says `role=primary` with a valid `term`.
fn primary_term(metadata: &HashMap<String, String>) -> Option<u64> {
    if metadata.get("role").map(String::as_str) != Some("primary") {
        return None;
    }
    metadata.get("term")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One step of an [`Acks`] script and what it must give.
    enum Op {
        Open(u64),
        Sent(u64, Lsn, bool),
        Note(u64, Lsn, std::result::Result<(), AckError>),
        Close(u64),
        Reset,
        Acked(Lsn),
    }
    use Op::*;

    fn beyond(lsn: Lsn, sent: Lsn) -> std::result::Result<(), AckError> {
        Err(AckError::BeyondSent { lsn, sent })
    }

    const NOT_CURRENT: std::result::Result<(), AckError> = Err(AckError::NotCurrent);

    /// Acks count only from the current stream and up to what it was sent; every refusal
    /// leaves the acked LSN as it was; nothing overflows.
    #[test]
    fn acks_are_validated_per_stream() {
        let cases: Vec<(&str, Vec<Op>)> = vec![
            (
                "genuine cumulative acks advance, never go back",
                vec![
                    Open(1),
                    Sent(1, 5, true),
                    Note(1, 3, Ok(())),
                    Acked(3),
                    Note(1, 5, Ok(())),
                    Note(1, 4, Ok(())),
                    Acked(5),
                ],
            ),
            (
                "an ack beyond what was sent is refused and changes nothing",
                vec![
                    Open(1),
                    Sent(1, 5, true),
                    Note(1, 2, Ok(())),
                    Note(1, 6, beyond(6, 5)),
                    Note(1, 1 << 62, beyond(1 << 62, 5)),
                    Acked(2),
                ],
            ),
            (
                "u64::MAX before anything was sent: refused, no overflow",
                vec![Open(1), Note(1, u64::MAX, beyond(u64::MAX, 0)), Acked(0)],
            ),
            (
                "no stream open: nothing counts",
                vec![Note(1, 0, NOT_CURRENT), Sent(1, 5, false), Acked(0)],
            ),
            (
                "a superseded stream's acks no longer count",
                vec![
                    Open(1),
                    Sent(1, 5, true),
                    Open(2),
                    Note(1, 5, NOT_CURRENT),
                    Sent(1, 6, false),
                    Note(2, 5, beyond(5, 0)),
                    Acked(0),
                ],
            ),
            (
                "a closed stream's acks no longer count",
                vec![
                    Open(1),
                    Sent(1, 5, true),
                    Note(1, 4, Ok(())),
                    Close(1),
                    Note(1, 5, NOT_CURRENT),
                    Acked(4),
                ],
            ),
            (
                "an older stream never becomes current again",
                vec![Open(2), Open(1), Sent(1, 5, false), Sent(2, 5, true)],
            ),
            (
                "closing an old stream leaves the current one",
                vec![
                    Open(1),
                    Open(2),
                    Sent(2, 3, true),
                    Close(1),
                    Note(2, 3, Ok(())),
                ],
            ),
            (
                "what was sent only grows",
                vec![
                    Open(1),
                    Sent(1, 5, true),
                    Sent(1, 3, true),
                    Note(1, 5, Ok(())),
                ],
            ),
            (
                "a new reign forgets every ack and stream",
                vec![
                    Open(1),
                    Sent(1, 5, true),
                    Note(1, 5, Ok(())),
                    Acked(5),
                    Reset,
                    Acked(0),
                    Note(1, 5, NOT_CURRENT),
                ],
            ),
        ];
        for (label, ops) in cases {
            let acks = Acks::default();
            for (step, op) in ops.into_iter().enumerate() {
                match op {
                    Open(g) => acks.open(g),
                    Sent(g, lsn, want) => assert_eq!(acks.sent(g, lsn), want, "{label} #{step}"),
                    Note(g, lsn, want) => assert_eq!(acks.note(g, lsn), want, "{label} #{step}"),
                    Close(g) => acks.close(g),
                    Reset => acks.reset(),
                    Acked(want) => assert_eq!(acks.acked(), want, "{label} #{step}"),
                }
            }
        }
    }

    /// A waiting sync write is woken by the genuine ack that covers it, never by a refused
    /// one.
    #[tokio::test]
    async fn only_a_genuine_ack_wakes_a_sync_write() {
        let acks = Acks::default();
        acks.open(1);
        assert!(acks.sent(1, 2));
        let waiter = acks.wait_for(3);
        tokio::pin!(waiter);
        assert!(futures::poll!(&mut waiter).is_pending());
        assert!(acks.note(1, 1 << 62).is_err());
        assert!(acks.note(1, u64::MAX).is_err());
        assert!(acks.note(1, 2).is_ok());
        assert!(futures::poll!(&mut waiter).is_pending());
        assert!(acks.sent(1, 3));
        assert!(acks.note(1, 3).is_ok());
        assert_eq!(futures::poll!(&mut waiter), std::task::Poll::Ready(true));
    }
}
