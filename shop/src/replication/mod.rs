//! Primary → replica WAL shipping, write gating by replication mode, roles and terms.
//!
//! **Layout** (one concept per file): [`Role`] (`role.rs`, the part a process plays, with
//! its term), `acks.rs` (the replica's acks on the primary and the sync writes waiting for
//! them), `replicator.rs` (the shared state and every role change), `shipper.rs` (the
//! primary's side of a stream), `follower_core.rs` (the replica's side: its decisions as a
//! socket-free `step(event) -> actions` core), `follower.rs` (the driver feeding that core
//! from the stream and the store), `failover.rs` (the failover decisions as such a core),
//! `registry_watch.rs` (the start-up fence and the driver feeding that core), `service.rs`
//! (the gRPC service), `convert.rs` (stream messages ↔ protobuf).
//!
//! **Roles.** A process is the primary of a term (accepts writes, ships its WAL), a replica
//! of a named primary (applies the stream, serves reads, refuses writes with
//! FAILED_PRECONDITION + `x-concord-primary`), or fenced (follows nobody, refuses writes
//! with UNAVAILABLE). The term lives in the store's `meta` tree and only grows. `Promote`
//! (admin) turns a replica into the primary with term + 1; with a registry configured, a
//! replica also promotes itself when a fresh lookup shows no `role=primary` instance of
//! `shop` (its lease expired) and the registry accepts its claim, and any process that
//! sees a primary with a higher term steps down and follows it.
//!
//! **Stream.** The replica opens `Replicate` and says `Hello(applied_lsn, applied_term)`.
//! The primary resumes from `applied_lsn + 1`, or first sends a snapshot when that part of
//! its WAL is gone, the replica is ahead of it, or the replica's entry at `applied_lsn`
//! has another term (divergence after a failover). Then it ships `WalBatch`es of at most
//! [`WAL_BATCH_MAX`] entries as they commit, and a `Heartbeat` every
//! [`HEARTBEAT_INTERVAL`] when idle. The replica pipelines: it appends what it
//! received to its own WAL with one sync (`Store::append_replicated`: idempotent, in LSN
//! order, refuses gaps; whatever arrives during a sync goes into the next one, so receiving
//! overlaps syncing), acks the highest durable LSN at once (acks are cumulative and
//! strictly increasing, at most one per sync), and only then applies to the data, off the
//! ack path (`Store::apply_replicated`, in the same blocking section). It counts itself
//! caught up (ready) once a heartbeat of the session told where the primary's log ends and
//! everything up to there is applied. A crash between the sync and the apply is replayed from the WAL at start-up; a
//! promoted replica applies what is pending before its first write. Reads report the LSN
//! they reflect (`x-concord-applied-lsn`, and `x-concord-durable-lsn`), and
//! `GetReplicationStatus` reports `applied_lsn` and `durable_lsn`.
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
//! **Protocol errors** on the replica end the session and change nothing: entries with a
//! gap or with terms going back, snapshot messages out of order or an end at another LSN
//! than its begin, a snapshot below an LSN acked on the stream, a heartbeat or snapshot from
//! a term below the replica's (`follower_core.rs` has every rule; the replica reconnects
//! with backoff). On the primary they close the stream and change nothing: an ack beyond
//! the highest LSN
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
//!   at that moment (`tests/shop_failover.rs` checks lost ≤ lag read just before the
//!   kill + writes acknowledged after that read).
//! - `sync`: acknowledged only once the replica has acked the LSN, i.e. fsynced it to its
//!   WAL (applied a moment later; a replica read right after the ack may not show it yet): zero acknowledged-write loss when either process dies (checked over 10
//!   SIGKILLs under load). If the replica does not ack within `sync_timeout` the call fails
//!   with UNAVAILABLE (the write is committed on the primary but not acknowledged — a
//!   retry of PlaceOrder with the same key is safe), unless `--on-replica-loss degrade`,
//!   where it is acknowledged with `degraded = true` (and without waiting at all while no
//!   replica is connected). A degraded write has `async` guarantees only: it is lost if
//!   the primary dies before the replica is back and has caught up.
//!
//! **Failover and RTO.** The primary holds a registry lease (`role=primary, term=T`),
//! renewed every TTL/3. When it dies the lease expires within the TTL (default 2 s; the
//! registry sweeps every 100 ms), the replica's watch sees no primary, and the replica
//! asks the registry again (a fresh `Resolve`: a watch event can be late, e.g. delivered
//! after a registry outage healed). Only if that answer shows no live primary does it
//! publish a claim to T + 1, still as a replica; once the registry accepts the claim it
//! stores T + 1 and takes writes. A refused claim leaves it a replica of the primary it
//! followed (its stored term unchanged, so its stream is not refused) and it looks again
//! after [`failover::PROMOTION_RETRY_INTERVAL`]; see `failover.rs` for every rule. Measured kill → first accepted write:
//! 1.4–2.1 s with the default TTL. A replica only promotes itself after it has seen a
//! primary registered (a replica starting before its primary must not usurp it), or once
//! the set stayed empty past the registry's grace (two TTLs) and it has been in a cluster
//! before (term ≥ 1); and only the newest log may claim: every claim carries the shop's
//! log position and the registry refuses a new term to a log behind the newest it knows
//! (`failover.rs`, `concord::claim::LogPosition`). A replica restarted with flags naming a
//! primary registered below its own stored term (it succeeded that primary) does not
//! follow it but claims its term again (`told_primary_is_stale`). The
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
//! claim is refused while it is still a replica (a claim is published before the role
//! changes), so it never took a write: it withdraws the claim, stays the replica of whom it
//! followed, follows the winner once it sees it, or claims again later if the winner
//! vanished. A replica whose claim was refused while no primary was visible claims
//! one term further next time (the registry knows that term as taken), and a primary whose
//! held claim was refused promotes again only from a newer instance set
//! than the one it lost on (which lacked the winner). A claim whose KeepAlive got no answer
//! is re-sent until accepted or refused.
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
//! falls back to a snapshot when it finds a gap after its position. The acked LSN is
//! persisted in sled's `meta` with the term it was acked in (`Store::record_replica_acked`,
//! durable with the next checkpoint): after a primary restart trimming goes on up to the
//! replica's last ack of that term, never past it, so a replica that was away through the
//! restart resumes from its LSN without a snapshot. A promotion starts a new term, whose
//! acks start from nothing. `GetReplicationStatus` shows `first_wal_lsn` and the
//! `promotion_lsn` of the current term. A
//! replica that never comes back pins the WAL in `sync`/`async` mode (restart with
//! `--replication none` to release it). Trims are not flushed themselves; a crash can
//! only bring trimmed entries back.
//!
//! Bounded queues: a stream's catch-up channel holds [`STREAM_CHANNEL_CAPACITY`]
//! messages, and the live phase is the response stream itself (`shipper.rs`): a slow
//! replica stalls only its own stream (which then reads the WAL later, in bigger
//! batches). Every task stops on shutdown; a newer stream from the
//! replica supersedes older ones. Every replication task (catch-ups, ack readers, follower, failover,
//! trimmer, their blocking work) is spawned on the [`Replicator`]'s task tracker and joined
//! at shutdown ([`Replicator::join_tasks`]).
//!
//! Non-goals: more than one replica; quorums; a lease-checked write path (see "Fence").

mod acks;
mod convert;
mod failover;
mod follower;
mod follower_core;
mod registry_watch;
mod replicator;
mod role;
mod service;
mod shipper;

use std::str::FromStr;
use std::time::Duration;

pub use follower::run_follower;
pub use registry_watch::{
    check_fence, run_failover_watch, run_fence, told_primary_is_stale, Fence, KeeperFeed,
};

/// Whether `new` publishes another claim or another log term than `old` (the metadata
/// refresh republishes then; a moving LSN alone waits for the next such change).
pub fn claim_or_log_term_moved(
    old: &std::collections::HashMap<String, String>,
    new: &std::collections::HashMap<String, String>,
) -> bool {
    use concord::claim::{LogPosition, PrimaryClaim};
    PrimaryClaim::parse(old) != PrimaryClaim::parse(new)
        || LogPosition::of(old).term != LogPosition::of(new).term
}
pub use replicator::{run_wal_trimmer, Replicator};
pub use role::Role;
pub use service::ReplicationService;

/// Most WAL entries per `WalBatch` message.
pub const WAL_BATCH_MAX: usize = 256;
/// Idle primary → replica heartbeat period.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// Messages queued per stream direction before the producer waits.
pub const STREAM_CHANNEL_CAPACITY: usize = 16;
/// Keys per snapshot chunk.
pub const SNAPSHOT_CHUNK_KEYS: usize = 512;
/// Record bytes per `WalBatch` or snapshot chunk, beside the counts above: a message stays
/// far below the gRPC limit ([`concord::grpc::MAX_MESSAGE_BYTES`], 4 MiB) whatever the
/// records' sizes, or the replica could never decode it and would redial for ever. One
/// entry alone stays below it too (an order of `MAX_CART_LINES` lines of the largest
/// products is about 1 MiB).
pub const MESSAGE_RECORD_BYTES: usize = 1024 * 1024;
/// Default time a sync write waits for the replica's ack.
pub const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the WAL trimmer runs (it also runs once at shutdown).
pub const WAL_TRIM_INTERVAL: Duration = Duration::from_millis(500);
/// Most WAL entries one trimming pass deletes (bounds the pause; the rest go next pass).
pub const WAL_TRIM_MAX_PER_PASS: usize = 50_000;
/// Time limit of the registry lookup a primary makes before taking writes (the fence).
pub const FENCE_LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
/// How a replica reconnects (and a fenced primary asks the registry again): after
/// 100 ms, doubling to 2 s.
pub const RECONNECT_RETRY: concord::retry::RetryPolicy =
    concord::retry::RetryPolicy::new(Duration::from_millis(100), Duration::from_secs(2));

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
