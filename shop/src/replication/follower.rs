//! The replica's side: follow the primary the role names, reconnecting with backoff;
//! install a snapshot when sent one, apply WAL batches, ack what is durable.
//!
//! Why it runs as one loop per session: a session belongs to one primary. When the role
//! names another primary (or none) the session ends and the next one starts; a term raised
//! by the primary's own heartbeat does not end it. The follower alone writes its
//! connection flag, so nothing the primary side does (a stepped-down primary's streams
//! ending) can make a healthy follower report itself disconnected.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use concord::identity::{Principal, Verifier};
use concord::pb::shop::v1 as pb;
use concord::pb::shop::v1::replication_client::ReplicationClient;
use futures::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;

use super::convert::{entry_from_pb, mutation_from_pb};
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
    use pb::replicate_response::Kind;
    let unavailable =
        |e: &dyn std::fmt::Display| ShopError::Unavailable(format!("primary {primary}: {e}"));
    // Over TLS the primary must prove it is a shop (its certificate), not just answer.
    let channel =
        concord::grpc::lazy_channel_to(primary, &Principal::Shop).map_err(|e| unavailable(&e))?;
    let mut client = ReplicationClient::new(channel);
    let store = Arc::clone(&rep.store);
    let (out_tx, out_rx) = mpsc::channel(STREAM_CHANNEL_CAPACITY);
    // The Hello names what this replica holds: everything durable, applied first (an
    // earlier session's applier may still be behind), so the divergence check covers it.
    let applied_lsn = {
        let store = Arc::clone(&store);
        rep.spawn_blocking(move || store.apply_replicated())
            .await??
    };
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
    rep.following.store(true, Ordering::Release);
    tracing::info!(%primary, applied_lsn, "following primary");
    let stop = rep.stop.clone();
    // Pipelining (issue 14 item 2): a received batch is appended to this store's WAL and
    // synced by this task itself (no hand-off to a blocking thread and back: the sync
    // runs in `block_in_place`), together with every batch that already arrived behind it
    // (ONE sync for all of them). Meanwhile the transport keeps receiving into its
    // buffers, so receiving overlaps syncing. The durable LSN is acked at once, and only
    // then are the entries applied to the trees, in the same blocking section: off the
    // ack path (the ack is already queued to the stream) without another task or thread.
    // A message read while draining batches that was not a batch: handled next.
    let mut held: Option<Kind> = None;
    loop {
        let kind = match held.take() {
            Some(kind) => kind,
            None => {
                let msg = tokio::select! {
                    m = inbound.message() => m.map_err(|s| unavailable(&s))?,
                    changed = role_rx.changed() => {
                        // A heartbeat raising the term changes the role too: only another
                        // primary (or none) ends this session.
                        let same = changed.is_ok()
                            && role_rx.borrow_and_update().maybe_primary() == Some(primary);
                        if same {
                            continue;
                        }
                        return Ok(());
                    }
                    () = stop.cancelled() => return Ok(()),
                };
                let Some(pb::ReplicateResponse { kind: Some(kind) }) = msg else {
                    if msg.is_none() {
                        return Ok(());
                    }
                    continue;
                };
                kind
            }
        };
        if let Kind::Entries(batch) = kind {
            let mut entries = batch
                .entries
                .into_iter()
                .map(entry_from_pb)
                .collect::<Result<Vec<_>>>()?;
            // Whatever else already arrived goes into the same sync. `message()` keeps
            // its state in the stream, so a poll that finds nothing loses nothing.
            let mut ended = None;
            let mut alone = true;
            while let Some(next) = inbound.message().now_or_never() {
                alone = false;
                match next {
                    Ok(Some(pb::ReplicateResponse {
                        kind: Some(Kind::Entries(more)),
                    })) => {
                        for entry in more.entries {
                            entries.push(entry_from_pb(entry)?);
                        }
                    }
                    Ok(Some(pb::ReplicateResponse { kind: Some(other) })) => {
                        held = Some(other);
                        break;
                    }
                    Ok(Some(pb::ReplicateResponse { kind: None })) => {}
                    // The stream ended or broke: what arrived before still lands and is
                    // acked first.
                    Ok(None) => {
                        ended = Some(Ok(()));
                        break;
                    }
                    Err(status) => {
                        ended = Some(Err(unavailable(&status)));
                        break;
                    }
                }
            }
            if !entries.is_empty() {
                let (ack, applied) = crate::shop::run_blocking(alone, || {
                    let lsn = append_durable(&store, &entries)?;
                    let ack = queue_ack(rep, &out_tx, lsn);
                    Ok::<_, ShopError>((ack, apply_durable(rep)))
                })?;
                if !ack.delivered(&out_tx).await {
                    return Ok(());
                }
                applied?;
            }
            if let Some(ended) = ended {
                return ended;
            }
            continue;
        }
        let durable = match kind {
            // Handled above.
            Kind::Entries(_) => None,
            Kind::SnapshotBegin(begin) => {
                tracing::info!(lsn = begin.lsn, term = begin.term, "receiving snapshot");
                let store = Arc::clone(&store);
                rep.spawn_blocking(move || store.begin_snapshot()).await??;
                None
            }
            Kind::SnapshotChunk(chunk) => {
                let mutations = chunk
                    .mutations
                    .into_iter()
                    .map(mutation_from_pb)
                    .collect::<Result<Vec<_>>>()?;
                let store = Arc::clone(&store);
                rep.spawn_blocking(move || store.apply_snapshot_chunk(&mutations))
                    .await??;
                None
            }
            Kind::SnapshotEnd(end) => {
                let store = Arc::clone(&store);
                rep.spawn_blocking(move || store.finish_snapshot(end.lsn, end.lsn_term))
                    .await??;
                tracing::info!(lsn = end.lsn, "snapshot installed");
                Some(end.lsn)
            }
            Kind::Heartbeat(hb) => {
                rep.primary_last_lsn
                    .fetch_max(hb.last_lsn, Ordering::AcqRel);
                rep.observe_term(hb.term).await?;
                let applied = store.last_lsn()?;
                rep.caught_up
                    .store(applied >= hb.last_lsn, Ordering::Release);
                if applied >= hb.last_lsn {
                    rep.note_caught_up(hb.term);
                }
                None
            }
        };
        if let Some(lsn) = durable {
            if !queue_ack(rep, &out_tx, lsn).delivered(&out_tx).await {
                return Ok(());
            }
            crate::shop::run_blocking(false, || apply_durable(rep))?;
        }
    }
}

/// Replica side: appends a run of received entries to the WAL with one sync on the
/// calling (blocking) thread, without applying them; returns the durable LSN.
fn append_durable(store: &Store, entries: &[WalEntry]) -> Result<Lsn> {
    store.append_replicated(entries)?;
    Ok(store.durable_lsn())
}

/// Replica side: applies everything durable to the trees (after its ack went out); a
/// replica that applied all the primary has is caught up. An error leaves the store
/// refusing writes until restarted (start-up replays the WAL) and ends the session.
fn apply_durable(rep: &Replicator) -> Result<()> {
    let applied = rep.store.apply_replicated().inspect_err(|e| {
        tracing::error!(error = %e, "applying replicated entries failed");
    })?;
    if applied >= rep.primary_last_lsn.load(Ordering::Acquire) {
        rep.caught_up.store(true, Ordering::Release);
    }
    Ok(())
}

/// An ack on its way to the primary ([`queue_ack`]).
enum QueuedAck {
    /// In the stream's queue.
    Queued,
    /// The queue was full: still to send.
    Pending(pb::ReplicateRequest),
    /// The stream is gone.
    Gone,
}

impl QueuedAck {
    /// Waits until the ack is in the stream's queue; `false` when the stream is gone.
    async fn delivered(self, out_tx: &mpsc::Sender<pb::ReplicateRequest>) -> bool {
        match self {
            Self::Queued => true,
            Self::Pending(ack) => out_tx.send(ack).await.is_ok(),
            Self::Gone => false,
        }
    }
}

/// Replica side: queues the ack of the durable `lsn` to the primary without waiting
/// (callable from the blocking section that synced it).
fn queue_ack(rep: &Replicator, out_tx: &mpsc::Sender<pb::ReplicateRequest>, lsn: Lsn) -> QueuedAck {
    rep.primary_last_lsn.fetch_max(lsn, Ordering::AcqRel);
    let ack = pb::ReplicateRequest {
        kind: Some(pb::replicate_request::Kind::Ack(pb::Ack {
            durable_lsn: lsn,
        })),
    };
    match out_tx.try_send(ack) {
        Ok(()) => QueuedAck::Queued,
        Err(mpsc::error::TrySendError::Full(ack)) => QueuedAck::Pending(ack),
        Err(mpsc::error::TrySendError::Closed(_)) => QueuedAck::Gone,
    }
}
