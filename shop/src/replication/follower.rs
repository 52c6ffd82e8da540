//! The replica's side: follow the primary the role names, reconnecting with backoff. The
//! decisions (what to append, ack, apply or install, when a session ends, when the replica
//! is caught up) are the [`Follower`] core's (`follower_core.rs`); this driver opens the
//! stream, turns what arrives into [`Event`]s and carries out the core's [`Action`]s.
//!
//! Why one loop per session: a session belongs to one primary. When the role names another
//! primary (or none) the session ends and the next one starts; a term raised by the
//! primary's own heartbeat does not end it. The follower alone writes its connection flag,
//! so nothing the primary side does (a stepped-down primary's streams ending) can make a
//! healthy follower report itself disconnected.
//!
//! Pipelining (issue 14 item 2), the driver's part: a received batch is appended to this
//! store's WAL and synced by the receiving task itself (no hand-off to a blocking thread and
//! back: the sync runs in `block_in_place`, or inline when nothing else arrived), together
//! with every batch that already arrived behind it (ONE sync for all of them; the core
//! accepts each in turn). Meanwhile the transport keeps receiving into its buffers, so
//! receiving overlaps syncing. The core's ack of the durable LSN is queued to the stream in
//! the same blocking section, and only then are the entries applied to the trees: off the
//! ack path without another task or thread. No message costs a task, a channel hop or a
//! vector of its own: the core pushes into one reused action buffer, and batch vectors are
//! handed back for the next batch.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use concord::identity::{Principal, Verifier};
use concord::pb::shop::v1 as pb;
use concord::pb::shop::v1::replication_client::ReplicationClient;
use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;

use super::convert::message_from_pb;
use super::follower_core::{Action, End, Event, Follower, Message, Position};
use super::role::Role;
use super::{Replicator, RECONNECT_RETRY, STREAM_CHANNEL_CAPACITY};
use crate::error::{Result, ShopError};
use crate::store::Store;
use crate::wal::{Lsn, WalEntry};

/// Replica side: while this process is a replica, follow the primary (reconnecting with
/// backoff); returns on shutdown.
pub async fn run_follower(rep: Arc<Replicator>) {
    let stop = rep.stop.clone();
    let mut role_rx = rep.subscribe_role();
    let mut backoff = RECONNECT_RETRY.backoff();
    loop {
        if stop.is_cancelled() {
            return;
        }
        let role = role_rx.borrow_and_update().clone();
        let Role::Replica { primary, .. } = role else {
            tokio::select! {
                _ = role_rx.changed() => continue,
                () = stop.cancelled() => return,
            }
        };
        match follow_once(&rep, &primary, &mut role_rx).await {
            Ok(()) => backoff.reset(),
            Err(e) => {
                tracing::warn!(%primary, error = %e, "replication stream failed; reconnecting")
            }
        }
        rep.following.store(false, Ordering::Release);
        rep.caught_up.store(false, Ordering::Release);
        tokio::select! {
            () = backoff.wait() => {}
            () = stop.cancelled() => return,
        }
    }
}

/// One replication session with `primary`; returns when the stream ends, the role
/// changes or on shutdown.
async fn follow_once(
    rep: &Arc<Replicator>,
    primary: &str,
    role_rx: &mut watch::Receiver<Role>,
) -> Result<()> {
    let unavailable =
        |e: &dyn std::fmt::Display| ShopError::Unavailable(format!("primary {primary}: {e}"));
    // Over TLS the primary must prove it is a shop (its certificate), not just answer.
    let channel =
        concord::grpc::lazy_channel_to(primary, &Principal::Shop).map_err(|e| unavailable(&e))?;
    let mut client = ReplicationClient::new(channel);
    let store = Arc::clone(&rep.store);
    let (out_tx, out_rx) = mpsc::channel(STREAM_CHANNEL_CAPACITY);
    // The Hello names what this replica holds: everything durable, applied first (an
    // earlier session's apply may still be behind), so the divergence check covers it.
    let applied_lsn = {
        let store = Arc::clone(&store);
        rep.spawn_blocking(move || store.apply_replicated())
            .await??
    };
    let at = Position {
        lsn: applied_lsn,
        lsn_term: store.term_at(applied_lsn)?.unwrap_or(0),
        term: store.term(),
    };
    let hello = pb::Hello {
        replica_id: rep.config.replica_id.clone(),
        applied_lsn: at.lsn,
        term: at.term,
        applied_term: at.lsn_term,
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
    let inbound = response.into_inner();
    rep.following.store(true, Ordering::Release);
    tracing::info!(%primary, applied_lsn, "following primary");
    let session = Session {
        rep,
        primary,
        out_tx,
        core: Follower::new(primary, at),
        actions: Vec::new(),
        run: Vec::new(),
        spare: Vec::new(),
        later: std::collections::VecDeque::new(),
        done: None,
    };
    session.run(inbound, role_rx).await
}

/// One session's driver state: the core and the I/O it asked for but that is not done yet.
struct Session<'a> {
    /// The shared replication state (store, flags, tasks).
    rep: &'a Arc<Replicator>,
    /// The primary this session follows (for messages).
    primary: &'a str,
    /// The stream's outbound half (acks).
    out_tx: mpsc::Sender<pb::ReplicateRequest>,
    /// The decisions.
    core: Follower,
    /// The core's actions of one step (reused: no allocation per message).
    actions: Vec<Action>,
    /// Entries the core accepted, appended with the next sync.
    run: Vec<WalEntry>,
    /// An emptied batch vector, to decode the next batch into.
    spare: Vec<WalEntry>,
    /// Actions that must be awaited (and every action of the same step after one): a
    /// term raise, snapshot I/O on the blocking pool, an ack the full queue did not take.
    later: std::collections::VecDeque<Action>,
    /// The session is over, with this result.
    done: Option<Result<()>>,
}

impl Session<'_> {
    /// Feeds the core until the session ends, the role changes or shutdown.
    async fn run(
        mut self,
        mut inbound: tonic::Streaming<pb::ReplicateResponse>,
        role_rx: &mut watch::Receiver<Role>,
    ) -> Result<()> {
        let stop = self.rep.stop.clone();
        // An event read while gathering batches that was not a batch: handled next.
        let mut held: Option<Event> = None;
        loop {
            if let Some(done) = self.done.take() {
                return done;
            }
            let event = match held.take() {
                Some(event) => event,
                None => tokio::select! {
                    m = inbound.message() => match self.maybe_event(m)? {
                        Some(event) => event,
                        None => continue,
                    },
                    changed = role_rx.changed() => match changed {
                        Ok(()) => Event::RoleChanged(role_rx.borrow_and_update().clone()),
                        // The replicator is gone: so is this session.
                        Err(_) => return Ok(()),
                    },
                    () = stop.cancelled() => return Ok(()),
                },
            };
            self.step_now(event, false)?;
            if !self.run.is_empty() && self.done.is_none() {
                let alone = self.gather(&mut inbound, &mut held)?;
                if self.done.is_none() {
                    self.sync(alone)?;
                }
            }
            self.finish().await?;
        }
    }

    /// The event for what `inbound.message()` returned (`None`: an empty message).
    fn maybe_event(
        &mut self,
        message: std::result::Result<Option<pb::ReplicateResponse>, tonic::Status>,
    ) -> Result<Option<Event>> {
        Ok(match message {
            Ok(Some(pb::ReplicateResponse { kind: Some(kind) })) => {
                Some(Event::Received(message_from_pb(kind, &mut self.spare)?))
            }
            Ok(Some(pb::ReplicateResponse { kind: None })) => None,
            Ok(None) => Some(Event::StreamEnded),
            Err(status) => Some(Event::Broken(status.to_string())),
        })
    }

    /// Steps the core with every batch that already arrived, so they share the next sync;
    /// the first other event is left in `held`. Returns whether nothing else had arrived.
    fn gather(
        &mut self,
        inbound: &mut tonic::Streaming<pb::ReplicateResponse>,
        held: &mut Option<Event>,
    ) -> Result<bool> {
        let mut alone = true;
        // `message()` keeps its state in the stream, so a poll that finds nothing loses
        // nothing.
        while let Some(next) = inbound.message().now_or_never() {
            alone = false;
            let Some(event) = self.maybe_event(next)? else {
                continue;
            };
            if !matches!(event, Event::Received(Message::Entries(_))) {
                // Another message, or the stream ended or broke: what arrived before still
                // lands and is acked first.
                *held = Some(event);
                break;
            }
            self.step_now(event, false)?;
            if self.done.is_some() {
                break;
            }
        }
        Ok(alone)
    }

    /// Appends the gathered run with one sync on this thread (inline when `alone`, else in
    /// `block_in_place`), then lets the core ack and apply it in the same blocking section.
    fn sync(&mut self, alone: bool) -> Result<()> {
        let rep = self.rep;
        crate::shop::run_blocking(alone, || {
            let durable = append_durable(&rep.store, &self.run)?;
            self.run.clear();
            self.step_now(Event::Synced(durable), true)
        })
    }

    /// Steps the core with `event` and carries out its actions in order, with the reports
    /// they make (`Applied`), as far as no await is needed; from the first action that
    /// needs one, the rest of the step waits in `later` for [`Session::finish`], so the
    /// order holds. `blocking`: this thread may block (it is in the sync's blocking
    /// section).
    fn step_now(&mut self, event: Event, blocking: bool) -> Result<()> {
        let mut next = Some(event);
        while let Some(event) = next.take() {
            let mut actions = std::mem::take(&mut self.actions);
            self.core.step(event, &mut actions);
            for action in actions.drain(..) {
                if !self.later.is_empty() {
                    self.later.push_back(action);
                    continue;
                }
                // A report-back is the step's last action (the core's contract), so the
                // report is the next event.
                debug_assert!(next.is_none(), "a report-back before the step's end");
                next = self.perform_now(action, blocking)?;
            }
            self.actions = actions;
        }
        Ok(())
    }

    /// Carries out `action` if that needs no await (else queues it in `later`); returns the
    /// report it makes, if any.
    fn perform_now(&mut self, action: Action, blocking: bool) -> Result<Option<Event>> {
        match action {
            Action::Append(mut entries) => {
                if self.run.is_empty() {
                    std::mem::swap(&mut self.run, &mut entries);
                } else {
                    self.run.append(&mut entries);
                }
                self.spare = entries;
            }
            Action::Ack(lsn) => match self.out_tx.try_send(ack(lsn)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => self.later.push_back(Action::Ack(lsn)),
                Err(mpsc::error::TrySendError::Closed(_)) => self.done = Some(Ok(())),
            },
            Action::Apply => {
                let store = &self.rep.store;
                // Inline when this thread may block already, else in `block_in_place`.
                let applied = crate::shop::run_blocking(blocking, || apply_durable(store))?;
                return Ok(Some(Event::Applied(applied)));
            }
            Action::SetPrimaryLast(lsn) => self.rep.primary_last_lsn.store(lsn, Ordering::Release),
            Action::SetCaughtUp(caught_up) => {
                self.rep.caught_up.store(caught_up, Ordering::Release)
            }
            Action::NoteCaughtUp(term) => self.rep.note_caught_up(term),
            Action::EndSession(end) => self.done = Some(self.result_of(end)),
            // A term raise and snapshot I/O (on the blocking pool) are awaited.
            Action::RaiseTerm(_)
            | Action::BeginSnapshot
            | Action::ApplySnapshotChunk(_)
            | Action::FinishSnapshot { .. } => self.later.push_back(action),
        }
        Ok(None)
    }

    /// Carries out what [`Session::step_now`] left, in order, with the reports it makes.
    async fn finish(&mut self) -> Result<()> {
        while self.done.is_none() {
            let Some(action) = self.later.pop_front() else {
                return Ok(());
            };
            let store = || Arc::clone(&self.rep.store);
            let report = match action {
                Action::Ack(lsn) => {
                    if self.out_tx.send(ack(lsn)).await.is_err() {
                        self.done = Some(Ok(()));
                    }
                    None
                }
                Action::RaiseTerm(term) => {
                    self.rep.observe_term(term).await?;
                    None
                }
                Action::BeginSnapshot => {
                    tracing::info!(primary = %self.primary, "receiving snapshot");
                    let store = store();
                    self.rep
                        .spawn_blocking(move || store.begin_snapshot())
                        .await??;
                    None
                }
                Action::ApplySnapshotChunk(mutations) => {
                    let store = store();
                    self.rep
                        .spawn_blocking(move || store.apply_snapshot_chunk(&mutations))
                        .await??;
                    None
                }
                Action::FinishSnapshot { lsn, term } => {
                    let store = store();
                    let durable = self
                        .rep
                        .spawn_blocking(move || {
                            store.finish_snapshot(lsn, term)?;
                            Ok::<_, ShopError>(store.durable_lsn())
                        })
                        .await??;
                    tracing::info!(lsn, "snapshot installed");
                    Some(Event::Synced(durable))
                }
                other => self.perform_now(other, false)?,
            };
            if let Some(report) = report {
                self.step_now(report, false)?;
            }
        }
        Ok(())
    }

    /// What the session returns when the core ends it: an error for a broken stream or
    /// protocol (logged, and the reconnect backs off), `Ok` otherwise.
    fn result_of(&self, end: End) -> Result<()> {
        let primary = self.primary;
        match end {
            End::StreamEnded | End::RoleChanged => Ok(()),
            End::SnapshotCut | End::Broken(_) => {
                Err(ShopError::Unavailable(format!("primary {primary}: {end}")))
            }
            End::Protocol(_) => Err(ShopError::precondition(format!("primary {primary}: {end}"))),
        }
    }
}

/// The ack of the durable `lsn`.
fn ack(lsn: Lsn) -> pb::ReplicateRequest {
    pb::ReplicateRequest {
        kind: Some(pb::replicate_request::Kind::Ack(pb::Ack {
            durable_lsn: lsn,
        })),
    }
}

/// Replica side: appends a run of received entries to the WAL with one sync on the
/// calling (blocking) thread, without applying them; returns the durable LSN.
fn append_durable(store: &Store, entries: &[WalEntry]) -> Result<Lsn> {
    store.append_replicated(entries)?;
    Ok(store.durable_lsn())
}

/// Replica side: applies everything durable to the trees (after its ack went out) and
/// returns the applied LSN. An error leaves the store refusing writes until restarted
/// (start-up replays the WAL) and ends the session.
fn apply_durable(store: &Store) -> Result<Lsn> {
    store.apply_replicated().inspect_err(|e| {
        tracing::error!(error = %e, "applying replicated entries failed");
    })
}
