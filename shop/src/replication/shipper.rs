//! The primary's side of a `Replicate` stream: decide where the replica resumes (or send
//! a fuzzy snapshot), ship WAL batches as they commit, heartbeat when idle, and read the
//! replica's acks.
//!
//! Why two tasks per stream: shipping must never wait for an ack and an ack must never
//! wait behind a slow send. [`ship`] feeds a bounded channel ([`STREAM_CHANNEL_CAPACITY`](super::STREAM_CHANNEL_CAPACITY)
//! messages: a slow replica stalls only its own stream, which then reads bigger batches
//! later); [`read_acks`] records acks in [`Acks`] and turns a protocol error into the
//! stream's last item ([`Outgoing`]). Both end when the replica goes, a newer stream
//! supersedes theirs, or on shutdown; ending closes only *their* stream's ack state.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use concord::pb::shop::v1 as pb;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::Status;

use super::acks::Acks;
use super::convert::{entry_to_pb, mutation_to_pb, response, Outbound};
use super::Replicator;
use super::{HEARTBEAT_INTERVAL, SNAPSHOT_CHUNK_KEYS, WAL_BATCH_MAX};
use crate::error::{Result, ShopError};
use crate::store::Store;
use crate::wal::{Lsn, Mutation, TreeName};

/// Stream `generation` ended (either task): its acks stop counting. Only the primary's
/// own stream state changes; the follower's connection is not touched.
pub(super) fn stream_ended(rep: &Replicator, generation: u64) {
    rep.acks.close(generation);
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
pub(super) async fn ship(rep: Arc<Replicator>, hello: pb::Hello, out: Outbound, generation: u64) {
    use pb::replicate_response::Kind;
    let stop = rep.stop.clone();
    let store = Arc::clone(&rep.store);
    let mut committed_rx = store.subscribe();
    let mut pos = hello.applied_lsn;
    let snapshot = {
        let store = Arc::clone(&store);
        let hello = hello.clone();
        rep.spawn_blocking(move || needs_snapshot(&store, &hello))
            .await
    };
    match snapshot {
        // Same history up to applied_lsn: the replica already holds it durably.
        Ok(Ok(false)) => {
            if rep.acks.sent(generation, pos) {
                // In range by construction: `pos` is at most our last LSN.
                let _ = rep.note_ack(generation, pos);
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
        if rep.stream_generation.load(Ordering::Acquire) != generation || stop.is_cancelled() {
            break;
        }
        // Fresh commits come from the store's in-memory tail; older ones from sled.
        let batch = match store.wal_tail_since(pos, WAL_BATCH_MAX) {
            Some(entries) => Ok(Ok(entries)),
            None => {
                let store = Arc::clone(&store);
                rep.spawn_blocking(move || store.wal_since(pos, WAL_BATCH_MAX))
                    .await
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
                    now_unix_ms: concord::clock::unix_ms(),
                };
                if out.send(response(Kind::Heartbeat(hb))).await.is_err() {
                    break;
                }
            }
            () = stop.cancelled() => break,
            // The response stream ended (a protocol error, or the replica went away).
            _ = out.closed() => break,
        }
    }
    stream_ended(&rep, generation);
    tracing::info!(replica = %hello.replica_id, pos, "replica stream ended");
}

/// Primary side: reads the replica's acks. A protocol error (an ack the stream may not
/// make, or anything but an ack after the Hello) changes nothing, goes to `failed_tx` —
/// which ends the response stream with that status, nothing more is sent — and stops.
pub(super) async fn read_acks(
    rep: Arc<Replicator>,
    mut inbound: tonic::Streaming<pb::ReplicateRequest>,
    generation: u64,
    failed_tx: tokio::sync::oneshot::Sender<Status>,
) {
    let stop = rep.stop.clone();
    loop {
        let msg = tokio::select! {
            m = inbound.message() => m,
            () = stop.cancelled() => break,
        };
        let refused = match msg {
            Ok(Some(pb::ReplicateRequest {
                kind: Some(pb::replicate_request::Kind::Ack(ack)),
            })) => match rep.note_ack(generation, ack.durable_lsn) {
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
    stream_ended(&rep, generation);
}

/// The primary's half of one `Replicate` stream: what [`ship`] queues, cut short by a
/// protocol error [`read_acks`] found — the error is the next and last item, so nothing
/// queued behind it is sent.
pub(super) struct Outgoing {
    pub(super) messages: ReceiverStream<std::result::Result<pb::ReplicateResponse, Status>>,
    /// Resolves with the status to close the stream with (dropped: no error).
    pub(super) failed_rx: Option<tokio::sync::oneshot::Receiver<Status>>,
    /// The error was sent: the stream is over.
    pub(super) done: bool,
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
