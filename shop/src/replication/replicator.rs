//! The replication state one shop process shares between its tasks: the role, the acks,
//! the lease guard, the pending primary claim, the follower's connection, and the task
//! tracker every replication task is spawned on.
//!
//! Why one owner: every role change goes through [`Replicator::set_role`], which also
//! moves the store's write fence (closed before a step-down becomes visible, opened after a
//! promotion did), so the role and the fence can never disagree. Connection state is kept
//! per side: the primary's is its current stream's (in [`Acks`]), the replica's is the
//! follower's own flag; a stream ending on one side never touches the other's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use concord::claim::{LogPosition, PrimaryClaim, Term};
use concord::identity::Credential;
use concord::pb::shop::v1 as pb;
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::acks::{AckError, Acks};
use super::role::Role;
use super::{OnReplicaLoss, ReplicationConfig, ReplicationMode};
use super::{WAL_TRIM_INTERVAL, WAL_TRIM_MAX_PER_PASS};
use crate::error::{Result, ShopError};
use crate::store::Store;
use crate::wal::Lsn;

/// Shared replication state: role, acks, connection flags, tasks.
pub struct Replicator {
    pub(super) store: Arc<Store>,
    pub(super) config: ReplicationConfig,
    pub(super) address: String,
    role_tx: watch::Sender<Role>,
    pub(super) acks: Acks,
    /// Replica side: the follower's stream to its primary is open. Written by the
    /// follower only.
    pub(super) following: AtomicBool,
    pub(super) caught_up: AtomicBool,
    /// The highest term whose primary this replica was caught up with (a heartbeat found
    /// it holding everything): its log is that term's log although it may hold no entry
    /// of it (a quiet term). Part of its [`LogPosition`]; in memory only, so a restart
    /// forgets it and can only make the position look older (never claim wrongly).
    caught_up_term: AtomicU64,
    pub(super) primary_last_lsn: AtomicU64,
    pub(super) stream_generation: AtomicU64,
    /// Cancelled on shutdown: every replication task ends.
    pub(super) stop: CancellationToken,
    /// This shop's credential: proves it to the primary it follows, and checks that a
    /// replica (or the primary) is a shop too. `None`: no replication either way.
    credential: Option<Credential>,
    /// The primary's registry lease, once registered: writes stop before it may expire.
    lease: std::sync::OnceLock<LeaseGuard>,
    /// A replica's published claim to this term, awaiting the registry's answer.
    claim_tx: watch::Sender<Option<Term>>,
    /// Every task replication spawns (streams, follower, failover, trimmer): joined on
    /// shutdown.
    tasks: TaskTracker,
}

/// How a primary knows its lease is still certainly held (module docs, "Lease guard") and
/// that the registry accepted its claim to the current term ("One primary per term").
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
    /// Creates the state in `role`; `address` is this process's advertised address;
    /// `credential` is this shop's identity (module docs, "Who may replicate"); `stop`
    /// is cancelled on shutdown.
    pub fn new(
        store: Arc<Store>,
        config: ReplicationConfig,
        role: Role,
        address: String,
        credential: Option<Credential>,
        stop: CancellationToken,
    ) -> Arc<Self> {
        store.fence_writes(!role.is_primary());
        Arc::new(Self {
            store,
            config,
            address,
            role_tx: watch::channel(role).0,
            acks: Acks::default(),
            following: AtomicBool::new(false),
            caught_up: AtomicBool::new(false),
            caught_up_term: AtomicU64::new(0),
            primary_last_lsn: AtomicU64::new(0),
            stream_generation: AtomicU64::new(0),
            stop,
            credential,
            lease: std::sync::OnceLock::new(),
            claim_tx: watch::channel(None).0,
            tasks: TaskTracker::new(),
        })
    }

    /// The role a process starts in: a replica of `config.primary_addr`, else the primary,
    /// at the store's term.
    pub fn initial_role(config: &ReplicationConfig, term: Term) -> Role {
        match &config.primary_addr {
            Some(primary) => Role::Replica {
                primary: primary.clone(),
                term,
            },
            None => Role::Primary { term },
        }
    }

    /// Spawns `task` on the replication tracker (joined by [`Replicator::join_tasks`]).
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Runs `f` on a blocking thread tracked like every other task.
    pub(super) fn spawn_blocking<T, F>(&self, f: F) -> tokio::task::JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.tasks.spawn_blocking(f)
    }

    /// Waits for every replication task to finish (call after shutdown was signalled).
    pub async fn join_tasks(&self) {
        self.tasks.close();
        self.tasks.wait().await;
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
    /// registry has not accepted this primary's claim to `term`. Both refusals happen
    /// before anything is written ([`ShopError::Fenced`]: a client may send the write
    /// elsewhere).
    fn check_lease(&self, term: Term) -> Result<()> {
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
        if PrimaryClaim::primary_term_of(&guard.accepted.borrow()) == Some(term) {
            Ok(())
        } else {
            Err(ShopError::Fenced(format!(
                "this process claims the primary role for term {term} but the registry has not \
                 accepted the claim yet; retry in a moment"
            )))
        }
    }

    /// Changes the role to `role` if `only_if(current role)`; true when it changed. The
    /// store's write fence follows: closed before the change becomes visible when stepping
    /// down, opened after it when becoming the primary.
    pub(super) fn set_role_if(&self, role: Role, only_if: impl FnOnce(&Role) -> bool) -> bool {
        self.role_tx.send_if_modified(|current| {
            if *current == role || !only_if(current) {
                return false;
            }
            let primary = role.is_primary();
            if !primary {
                self.store.fence_writes(true);
            }
            if primary && !current.is_primary() {
                // Acks from an earlier reign as primary say nothing about this one's LSNs.
                self.acks.reset();
            }
            if current.is_primary() && !primary {
                // Its streams must not ship what this process writes next as a follower
                // (another primary's entries) as if they continued its own log: a new
                // generation ends them at their next wake-up.
                self.stream_generation.fetch_add(1, Ordering::AcqRel);
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
    pub(super) fn must_credential(&self) -> Result<&Credential> {
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

    /// Watches the pending claim (the registry keeper publishes it).
    pub fn subscribe_claim(&self) -> watch::Receiver<Option<Term>> {
        self.claim_tx.subscribe()
    }

    /// Registry metadata: the pending claim while there is one, else the role's.
    pub fn registry_metadata(&self) -> HashMap<String, String> {
        let mut metadata = match *self.claim_tx.borrow() {
            Some(term) => PrimaryClaim::primary(term),
            None => self.role().claim(),
        }
        .to_metadata();
        self.log_position().write(&mut metadata);
        metadata
    }

    /// Where this process's log ends, as the registry orders claims (`concord::claim`):
    /// the last durable LSN, under the term of its last entry, or of the term it was
    /// promoted into (its next entry is of that term), or of the primary it was last
    /// caught up with, whichever is highest.
    pub fn log_position(&self) -> LogPosition {
        let lsn = self
            .store
            .durable_lsn()
            .max(self.store.last_lsn().unwrap_or(0));
        let entry_term = match self.store.term_at(lsn) {
            Ok(term) => term.unwrap_or(0),
            Err(e) => {
                tracing::error!(error = %e, lsn, "cannot read the term of the last WAL entry");
                0
            }
        };
        let promoted_into = match self.store.promotion_lsn() {
            Ok(Some(_)) => self.store.term(),
            _ => 0,
        };
        LogPosition {
            term: entry_term
                .max(promoted_into)
                .max(self.caught_up_term.load(Ordering::Acquire)),
            lsn,
        }
    }

    /// The follower found this replica holding everything the primary of `term` had:
    /// its log is that term's log ([`Replicator::log_position`]).
    pub(super) fn note_caught_up(&self, term: Term) {
        self.caught_up_term.fetch_max(term, Ordering::AcqRel);
    }

    /// Publishes (`Some`) or withdraws (`None`) a claim to the primary role. The process
    /// stays what it is until [`Replicator::become_primary`].
    pub(super) fn set_claim(&self, claim: Option<Term>) {
        self.claim_tx.send_if_modified(|current| {
            let changed = *current != claim;
            *current = claim;
            changed
        });
    }

    /// `Ok` on the primary; `NotPrimary(primary address)` on a replica.
    pub fn check_writable(&self) -> Result<()> {
        match self.role() {
            Role::Primary { term } => self.check_lease(term),
            Role::Fenced { .. } => Err(ShopError::Fenced(
                "this shop is fenced: it does not know the current primary yet; retry in a moment"
                    .into(),
            )),
            Role::Replica { primary, .. } => Err(ShopError::NotPrimary(primary)),
        }
    }

    pub(super) fn mode_pb(&self) -> pb::ReplicationMode {
        match self.config.mode {
            ReplicationMode::None => pb::ReplicationMode::None,
            ReplicationMode::Async => pb::ReplicationMode::Async,
            ReplicationMode::Sync => pb::ReplicationMode::Sync,
        }
    }

    /// The applied and durable LSNs of this process (what its reads reflect, what its WAL
    /// holds).
    pub fn positions(&self) -> (Lsn, Lsn) {
        let applied = self.store.last_lsn().unwrap_or(0);
        (applied, self.store.durable_lsn().max(applied))
    }

    /// Whether this process should get client traffic (`grpc.health.v1` readiness of the
    /// Shop service): a primary that takes writes, or a replica that has caught up with its
    /// primary. A replica still catching up would serve stale reads, and a fenced process
    /// takes no writes, so neither is ready.
    pub fn ready(&self) -> bool {
        match self.role() {
            Role::Primary { .. } => true,
            Role::Replica { .. } => self.caught_up.load(Ordering::Acquire),
            Role::Fenced { .. } => false,
        }
    }

    /// Whether a replica or the primary is connected, as seen from this process's side:
    /// the primary asks its current stream, a replica its follower.
    pub fn peer_connected(&self) -> bool {
        if self.role().is_primary() {
            self.acks.stream_open()
        } else {
            self.following.load(Ordering::Acquire)
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
            // Test-only planted bug (debug builds): see `planted_ack_before_replica`.
            ReplicationMode::Sync if planted_ack_before_replica() => info.replicated = true,
            ReplicationMode::Sync => {
                let degrade = self.config.on_replica_loss == OnReplicaLoss::Degrade;
                if degrade && !self.acks.stream_open() {
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

    /// Makes this replica the primary with a higher term at once (the admin's `Promote`).
    /// `expected_term` (0 = none) guards against racing promotions.
    pub async fn promote(&self, expected_term: u64) -> Result<u64> {
        let term = self.store.term();
        if expected_term != 0 && expected_term != term {
            return Err(ShopError::precondition(format!(
                "expected term {expected_term} but the current term is {term}"
            )));
        }
        if self.role().is_primary() {
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
        self.become_primary(new_term).await?;
        Ok(new_term)
    }

    /// Stores `term` with its promotion LSN and takes writes in it (a claim the registry
    /// accepted, or `Promote`).
    pub(super) async fn become_primary(&self, term: Term) -> Result<()> {
        let store = Arc::clone(&self.store);
        let promotion_lsn = self
            .spawn_blocking(move || store.begin_term(term))
            .await??;
        self.set_claim(None);
        self.set_role_if(Role::Primary { term }, |_| true);
        tracing::info!(term, promotion_lsn, "promoted to primary");
        Ok(())
    }

    /// Records a replica's cumulative ack from stream `generation` (module docs of
    /// `acks.rs`) and, on the primary, persists the acked LSN for WAL trimming.
    pub(super) fn note_ack(&self, generation: u64, lsn: Lsn) -> std::result::Result<(), AckError> {
        self.acks.note(generation, lsn)?;
        if let Role::Primary { term } = self.role() {
            if let Err(e) = self.store.record_replica_acked(term, self.acks.acked()) {
                tracing::error!(error = %e, lsn, "cannot record the replica's ack; trimming keeps more WAL");
            }
        }
        Ok(())
    }

    /// Stops taking writes and follows nobody (our held claim was refused).
    pub(super) fn step_down(&self, reason: &str) {
        let term = self.role().term();
        let stepped_down = self.set_role_if(Role::Fenced { term }, |role| {
            *role == Role::Primary { term }
        });
        if stepped_down {
            tracing::warn!(
                term,
                reason,
                "the registry refused our primary claim; fenced until a primary is known"
            );
        }
    }

    /// Steps down (or over) to follow a primary with term `term`.
    pub async fn follow(&self, primary: String, term: u64) -> Result<()> {
        // No write admitted under the old term may commit under the new one.
        self.store.fence_writes(true);
        self.raise_term(term).await?;
        let role = Role::Replica {
            primary: primary.clone(),
            term: term.max(self.store.term()),
        };
        if self.set_role_if(role, |_| true) {
            tracing::warn!(%primary, term, "a newer primary exists; following it");
        }
        Ok(())
    }

    /// A replica learned its primary's term (a heartbeat): store it and carry it in the role.
    pub(super) async fn observe_term(&self, term: Term) -> Result<()> {
        if term <= self.store.term() {
            return Ok(());
        }
        self.raise_term(term).await?;
        self.role_tx.send_if_modified(|current| {
            if current.is_primary() || current.term() >= term {
                return false;
            }
            *current = current.with_higher_term(term);
            true
        });
        Ok(())
    }

    /// Persists `term` if it is higher than the stored one.
    async fn raise_term(&self, term: Term) -> Result<()> {
        if term > self.store.term() {
            let store = Arc::clone(&self.store);
            self.spawn_blocking(move || store.set_term(term)).await??;
        }
        Ok(())
    }

    /// Current status (the GetReplicationStatus reply).
    pub fn status(&self) -> Result<pb::GetReplicationStatusResponse> {
        let last_lsn = self.store.last_lsn()?;
        let role = self.role();
        let primary = role.is_primary();
        let (role_pb, acked, primary_address) = match &role {
            Role::Primary { .. } => (pb::Role::Primary, self.acks.acked(), self.address.clone()),
            Role::Replica { primary, .. } => {
                (pb::Role::Replica, self.store.durable_lsn(), primary.clone())
            }
            Role::Fenced { .. } => (pb::Role::Replica, self.store.durable_lsn(), String::new()),
        };
        let lag_entries = if primary {
            last_lsn.saturating_sub(acked)
        } else {
            self.primary_last_lsn
                .load(Ordering::Acquire)
                .saturating_sub(last_lsn)
        };
        let lag_ms = if lag_entries == 0 {
            0
        } else {
            let oldest = if primary { acked + 1 } else { last_lsn };
            self.store
                .wal_since(oldest.saturating_sub(1), 1)?
                .first()
                .map_or(0, |e| {
                    (concord::clock::unix_ms() - e.committed_at_ms).max(0) as u64
                })
        };
        Ok(pb::GetReplicationStatusResponse {
            role: role_pb as i32,
            term: self.store.term(),
            last_lsn,
            replica_acked_lsn: acked,
            lag_entries,
            lag_ms,
            mode: self.mode_pb() as i32,
            peer_connected: self.peer_connected(),
            caught_up: self.caught_up.load(Ordering::Acquire),
            primary_address,
            address: self.address.clone(),
            first_wal_lsn: self.store.first_wal_lsn()?.unwrap_or(0),
            promotion_lsn: self.store.promotion_lsn()?.unwrap_or(0),
            applied_lsn: last_lsn,
            durable_lsn: self.store.durable_lsn(),
        })
    }

    /// WAL entries with an LSN below the returned one may be deleted (module docs, "WAL
    /// trimming"): everything but the last `retain` entries, and on a primary that expects
    /// a replica nothing from the highest LSN the replica acked on (in this process's life
    /// or, persisted, in an earlier one of the same term). The acked entry itself is kept because a reconnecting replica's `Hello` names it and the divergence check
    /// reads its term.
    pub fn wal_trim_floor(&self, retain: u64) -> Result<Lsn> {
        let last = self.store.last_lsn()?;
        let keep_tail_from = last.saturating_sub(retain.max(1)) + 1;
        let role = self.role();
        if !role.is_primary() || self.config.mode == ReplicationMode::None {
            return Ok(keep_tail_from);
        }
        // After a restart nothing is acked in memory yet: the persisted ack of this term
        // still says what the replica holds.
        let acked = self
            .acks
            .acked()
            .max(self.store.replica_acked(role.term())?);
        Ok(keep_tail_from.min(acked))
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
    let stop = rep.stop.clone();
    let mut tick = tokio::time::interval(WAL_TRIM_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last_pass = tokio::select! {
            _ = tick.tick() => false,
            () = stop.cancelled() => true,
        };
        let r = Arc::clone(&rep);
        match rep.spawn_blocking(move || r.trim_wal(retain)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "WAL trimming failed"),
            Err(e) => tracing::error!(error = %e, "WAL trimming task failed"),
        }
        if last_pass {
            return;
        }
    }
}

/// TEST-ONLY planted bug, for `concord chaos`'s self-test (`tests/chaos.rs`): in a
/// debug build with `CONCORD_PLANTED_BUG=ack-before-replica`, sync writes are acknowledged
/// (and reported replicated) without waiting for the replica's ack — the bug the chaos
/// checker must catch. Release builds never read the variable.
fn planted_ack_before_replica() -> bool {
    #[cfg(debug_assertions)]
    {
        static PLANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *PLANTED.get_or_init(|| {
            std::env::var("CONCORD_PLANTED_BUG").is_ok_and(|bug| bug == "ack-before-replica")
        })
    }
    #[cfg(not(debug_assertions))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicator(dir: &std::path::Path, role: Role) -> Arc<Replicator> {
        let store = Arc::new(
            Store::open(&crate::store::StoreConfig::new(dir.to_path_buf())).expect("store"),
        );
        Replicator::new(
            store,
            ReplicationConfig::default(),
            role,
            "me:1".into(),
            None,
            CancellationToken::new(),
        )
    }

    /// Issue 15: after a step-down, the old primary's replication stream ending must not
    /// make the healthy follower stream report `peer_connected = false`.
    #[tokio::test]
    async fn a_dying_primary_stream_leaves_the_follower_connected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rep = replicator(dir.path(), Role::Primary { term: 1 });
        // A replica streams from us.
        let generation = rep.stream_generation.fetch_add(1, Ordering::AcqRel) + 1;
        rep.acks.open(generation);
        assert!(rep.peer_connected());
        // A newer primary appears: we step down and our follower connects to it.
        rep.follow("new:1".into(), 2).await.expect("follow");
        rep.following.store(true, Ordering::Release);
        assert!(rep.status().expect("status").peer_connected);
        // Only now does the old stream to our former replica end.
        super::super::shipper::stream_ended(&rep, generation);
        let status = rep.status().expect("status");
        assert!(status.peer_connected, "{status:?}");
        assert_eq!(status.primary_address, "new:1");
    }

    /// Roles move the store's write fence: only the primary writes; a fenced process reports
    /// itself as a replica of nobody.
    #[tokio::test]
    async fn roles_move_the_write_fence() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rep = replicator(dir.path(), Role::Fenced { term: 1 });
        assert!(matches!(rep.check_writable(), Err(ShopError::Fenced(_))));
        assert_eq!(rep.status().expect("status").primary_address, "");
        rep.become_primary(2).await.expect("promote");
        assert!(rep.check_writable().is_ok());
        assert_eq!(rep.store.term(), 2);
        rep.step_down("test");
        assert_eq!(rep.role(), Role::Fenced { term: 2 });
        rep.follow("b:1".into(), 3).await.expect("follow");
        assert!(matches!(rep.check_writable(), Err(ShopError::NotPrimary(p)) if p == "b:1"));
        rep.observe_term(5).await.expect("term");
        assert_eq!(rep.role().term(), 5);
        assert_eq!(
            PrimaryClaim::parse(&rep.registry_metadata()),
            Ok(Some(PrimaryClaim::replica(5)))
        );
        rep.set_claim(Some(6));
        assert_eq!(
            PrimaryClaim::parse(&rep.registry_metadata()),
            Ok(Some(PrimaryClaim::primary(6)))
        );
        assert!(
            rep.check_writable().is_err(),
            "a claim alone takes no writes"
        );
    }
}
