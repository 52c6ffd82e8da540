//! The primary's side of a `Replicate` stream: decide where the replica resumes (or send
//! a fuzzy snapshot), ship WAL batches as they commit, heartbeat when idle, and read the
//! replica's acks.
//!
//! **Two phases, one stream.** The response stream itself ([`Outgoing`]) ships fresh
//! commits: in its live phase its `poll_next` reads the store's in-memory WAL tail when
//! the commit's watch wakes it, so a commit wakes the task that writes to the connection
//! directly (issue 14 item 7: the shipper task and its channel were one wake-up per batch
//! on the sync path, docs/BENCHMARKS.md "The primary's ack path"). Whatever needs blocking
//! I/O — deciding where the replica resumes, a snapshot, entries older than the in-memory
//! tail (read back from the WAL files) — runs in a catch-up task ([`catch_up`]) that feeds
//! the stream through a bounded channel ([`STREAM_CHANNEL_CAPACITY`](super::STREAM_CHANNEL_CAPACITY)
//! messages) and then hands over the position it reached; the stream starts a new one
//! whenever the tail no longer reaches back to its position. Backpressure is the
//! transport's: a slow replica's stream is not polled while its flow-control window is
//! full, and reads bigger batches later. Only entries the tail or the files hold are
//! shipped, i.e. entries already durable on this primary (a primary that restarts and
//! reuses unsynced LSNs must never have shipped them).
//!
//! What happens next is decided by pure functions, tested below: [`needs_snapshot`]
//! (where the replica resumes) and [`next_step`] (ship, snapshot over a trimmed gap, read
//! the files, or idle; idle means a `Heartbeat` every [`HEARTBEAT_INTERVAL`]).
//!
//! The acks come in on the request stream, read by their own task ([`read_acks`]): an ack
//! must never wait behind a send. It records acks in [`Acks`] (which wakes the sync writes
//! they cover) and turns a protocol error into the stream's last item. Both sides end when
//! the replica goes, a newer stream supersedes theirs, or on shutdown; ending closes only
//! *their* stream's ack state.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use concord::pb::shop::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::Stream;
use tokio_util::sync::WaitForCancellationFutureOwned;
use tonic::Status;

use super::acks::Acks;
use super::convert::{entry_to_pb, mutation_to_pb};
use super::Replicator;
use super::{
    HEARTBEAT_INTERVAL, MESSAGE_RECORD_BYTES, SNAPSHOT_CHUNK_KEYS, STREAM_CHANNEL_CAPACITY,
    WAL_BATCH_MAX,
};
use crate::error::{Result, ShopError};
use crate::store::Store;
use crate::wal::{Lsn, Mutation, TreeName, WalEntry};

/// Stream `generation` ended (either side): its acks stop counting. Only the primary's
/// own stream state changes; the follower's connection is not touched.
pub(super) fn stream_ended(rep: &Replicator, generation: u64) {
    rep.acks.close(generation);
}

/// What the primary's WAL holds, as far as the resume decision needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WalBounds {
    /// Oldest entry still stored (`None`: the WAL is empty).
    first: Option<Lsn>,
    /// Last committed LSN.
    last: Lsn,
    /// Term of our entry at the replica's `applied_lsn` (`None`: not stored).
    term_at_applied: Option<u64>,
}

/// Whether a replica that holds everything up to `applied` (its entry there of
/// `applied_term`) needs a snapshot before it can resume at `applied + 1`: when that part
/// of our WAL is gone, it is ahead of us, or its entry at `applied` has another term than
/// ours (divergence after a failover).
fn needs_snapshot(applied: Lsn, applied_term: u64, wal: WalBounds) -> bool {
    if applied == 0 {
        // An empty replica: a snapshot is needed only if our WAL does not start at 1.
        return wal.first.is_some_and(|first| first > 1);
    }
    if applied > wal.last {
        return true;
    }
    match wal.term_at_applied {
        Some(term) => term != applied_term,
        None => true, // that entry is gone (we were snapshotted past it)
    }
}

/// What a stream at `pos` (everything up to it sent) does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Send the entries read; the position moves to `last`.
    Ship { last: Lsn },
    /// The entries right after `pos` were trimmed (e.g. during a long snapshot): the
    /// replica cannot apply a gap, so it gets a snapshot instead.
    Snapshot,
    /// The in-memory tail does not reach back to `pos + 1`: read the WAL files.
    ReadFiles,
    /// Nothing new: wait for a commit (heartbeat meanwhile), or hand over to the live
    /// phase.
    Idle,
}

/// Decides the next [`Step`] from what was read after `pos`: `read` is `None` when the
/// in-memory tail did not reach back to `pos + 1`; `last` is the last committed LSN.
fn next_step(pos: Lsn, last: Lsn, read: Option<&[WalEntry]>) -> Step {
    match read {
        Some([]) => Step::Idle,
        Some([first, .., end]) | Some([first @ end]) => {
            if first.lsn != pos + 1 {
                Step::Snapshot
            } else {
                Step::Ship { last: end.lsn }
            }
        }
        None if pos >= last => Step::Idle,
        None => Step::ReadFiles,
    }
}

/// The record bytes a mutation puts in a message (key and value; what makes messages big).
fn record_bytes(mutation: &Mutation) -> usize {
    mutation.key.len() + mutation.value.as_ref().map_or(0, Vec::len)
}

/// Keeps the longest prefix of `entries` within [`MESSAGE_RECORD_BYTES`], and at least
/// the first entry; the rest is read again for the next batch.
fn cap_batch(entries: &mut Vec<WalEntry>) {
    let mut bytes = 0;
    let over = entries.iter().position(|entry| {
        bytes += entry.mutations.iter().map(record_bytes).sum::<usize>();
        bytes > MESSAGE_RECORD_BYTES
    });
    if let Some(over) = over {
        entries.truncate(over.max(1));
    }
}

/// One `ReplicateResponse` of `kind`.
fn response(kind: pb::replicate_response::Kind) -> pb::ReplicateResponse {
    pb::ReplicateResponse { kind: Some(kind) }
}

/// The `WalBatch` message of `entries`.
fn batch(entries: Vec<WalEntry>) -> pb::ReplicateResponse {
    response(pb::replicate_response::Kind::Entries(pb::WalBatch {
        entries: entries.into_iter().map(entry_to_pb).collect(),
    }))
}

/// What the catch-up task hands the stream.
enum CatchUp {
    /// A message to send as it is.
    Send(pb::ReplicateResponse),
    /// Caught up to this LSN (everything up to it was sent): the stream takes over.
    Live(Lsn),
}

/// The catch-up task's end of the channel.
type CatchUpTx = mpsc::Sender<CatchUp>;

/// Streams a fuzzy snapshot (module docs of `replication`) on stream `generation`;
/// returns the LSN to resume after.
async fn send_snapshot(
    store: &Arc<Store>,
    acks: &Acks,
    generation: u64,
    out: &CatchUpTx,
) -> Result<Lsn> {
    use pb::replicate_response::Kind;
    let snap_lsn = store.last_lsn()?;
    let term = store.term();
    let closed = || ShopError::Unavailable("replica went away during snapshot".into());
    let send = |kind| out.send(CatchUp::Send(response(kind)));
    send(Kind::SnapshotBegin(pb::SnapshotBegin {
        lsn: snap_lsn,
        term,
    }))
    .await
    .map_err(|_| closed())?;
    for name in TreeName::ALL {
        let mut iter = store.tree(name).iter();
        loop {
            let mut chunk = Vec::with_capacity(SNAPSHOT_CHUNK_KEYS);
            let mut bytes = 0;
            while chunk.len() < SNAPSHOT_CHUNK_KEYS && bytes < MESSAGE_RECORD_BYTES {
                let Some(item) = iter.next() else { break };
                let (k, v) = item?;
                let mutation = Mutation {
                    tree: name,
                    key: k.to_vec(),
                    value: Some(v.to_vec()),
                };
                bytes += record_bytes(&mutation);
                chunk.push(mutation_to_pb(mutation));
            }
            if chunk.is_empty() {
                break;
            }
            send(Kind::SnapshotChunk(pb::SnapshotChunk { mutations: chunk }))
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
    send(Kind::SnapshotEnd(pb::SnapshotEnd {
        lsn: snap_lsn,
        lsn_term,
    }))
    .await
    .map_err(|_| closed())?;
    tracing::info!(lsn = snap_lsn, "snapshot sent to replica");
    Ok(snap_lsn)
}

/// Decides where the replica of `hello` resumes: its `applied_lsn` (then that much counts
/// as acked: it already holds it durably), or after a snapshot sent now. `None`: the
/// stream cannot go on (logged).
async fn resume_point(
    rep: &Arc<Replicator>,
    hello: &pb::Hello,
    generation: u64,
    out: &CatchUpTx,
) -> Option<Lsn> {
    let applied = hello.applied_lsn;
    let bounds = {
        let store = Arc::clone(&rep.store);
        rep.spawn_blocking(move || -> Result<WalBounds> {
            Ok(WalBounds {
                first: store.first_wal_lsn()?,
                last: store.last_lsn()?,
                term_at_applied: store.term_at(applied)?,
            })
        })
        .await
    };
    let bounds = match bounds {
        Ok(Ok(bounds)) => bounds,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot decide where the replica resumes");
            return None;
        }
        Err(e) => {
            tracing::error!(error = %e, "snapshot decision task failed");
            return None;
        }
    };
    if !needs_snapshot(applied, hello.applied_term, bounds) {
        // Same history up to applied_lsn: the replica already holds it durably.
        if rep.acks.sent(generation, applied) {
            // In range by construction: `applied` is at most our last LSN.
            let _ = rep.note_ack(generation, applied);
        }
        return Some(applied);
    }
    match send_snapshot(&rep.store, &rep.acks, generation, out).await {
        Ok(lsn) => Some(lsn),
        Err(e) => {
            tracing::warn!(error = %e, "snapshot failed");
            None
        }
    }
}

/// The catch-up phase of stream `generation` (module docs): from `hello` (a new stream:
/// decide where it resumes first) or from `pos`, sends what the in-memory tail cannot
/// serve — a snapshot, entries from the WAL files — until nothing is left, then hands the
/// position to the stream. Ends early (the stream then ends too) when the replica goes,
/// a newer stream supersedes this one, or on shutdown.
async fn catch_up(
    rep: Arc<Replicator>,
    hello: Option<pb::Hello>,
    mut pos: Lsn,
    generation: u64,
    out: CatchUpTx,
) {
    let store = Arc::clone(&rep.store);
    if let Some(hello) = &hello {
        let resumed = tokio::select! {
            resumed = resume_point(&rep, hello, generation, &out) => resumed,
            () = rep.stop.cancelled() => None,
        };
        let Some(resumed) = resumed else { return };
        pos = resumed;
        tracing::info!(replica = %hello.replica_id, from_lsn = pos + 1, "replica connected");
    }
    loop {
        if rep.stream_generation.load(Ordering::Acquire) != generation || rep.stop.is_cancelled() {
            return;
        }
        // Fresh commits come from the store's in-memory tail; older ones from the files.
        let mut entries = match store.wal_tail_since(pos, WAL_BATCH_MAX) {
            Some(entries) => entries,
            None => {
                let store = Arc::clone(&store);
                match rep
                    .spawn_blocking(move || store.wal_since(pos, WAL_BATCH_MAX))
                    .await
                {
                    Ok(Ok(entries)) => entries,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, pos, "cannot read the WAL");
                        return;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "WAL reader task failed");
                        return;
                    }
                }
            }
        };
        cap_batch(&mut entries);
        let sent = match next_step(pos, pos, Some(&entries)) {
            Step::Ship { last } => {
                pos = last;
                if !rep.acks.sent(generation, pos) {
                    return; // superseded or closed
                }
                out.send(CatchUp::Send(batch(entries))).await
            }
            Step::Snapshot => {
                tracing::info!(pos, "WAL trimmed past the replica; sending a snapshot");
                match send_snapshot(&store, &rep.acks, generation, &out).await {
                    Ok(lsn) => {
                        pos = lsn;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "snapshot failed");
                        return;
                    }
                }
            }
            Step::ReadFiles | Step::Idle => {
                let _ = out.send(CatchUp::Live(pos)).await;
                return;
            }
        };
        if sent.is_err() {
            return; // the stream is gone
        }
    }
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

/// Where the stream's messages come from now (module docs).
enum Phase {
    /// A catch-up task feeds them.
    CatchUp(mpsc::Receiver<CatchUp>),
    /// The stream reads fresh commits from the in-memory tail itself; everything up to
    /// `pos` was sent.
    Live { pos: Lsn },
    /// The stream ended.
    Done,
}

/// The primary's half of one `Replicate` stream (module docs): the catch-up task's
/// messages, then fresh commits read from the in-memory tail and heartbeats; cut short by
/// a protocol error [`read_acks`] found — the error is the next and last item, so nothing
/// behind it is sent.
pub(super) struct Outgoing {
    rep: Arc<Replicator>,
    generation: u64,
    phase: Phase,
    /// Resolves with the status to close the stream with (dropped: no error).
    failed_rx: Option<tokio::sync::oneshot::Receiver<Status>>,
    /// Ticks on every commit (the store's committed-LSN watch).
    committed: WatchStream<Lsn>,
    /// Paces the heartbeats sent while idle.
    heartbeat: tokio::time::Interval,
    /// Shutdown.
    stopped: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl Outgoing {
    /// Opens stream `generation` for the replica of `hello`: spawns its catch-up task
    /// (tracked by the replicator) and returns the stream. `failed_rx` carries
    /// [`read_acks`]' protocol error.
    pub(super) fn start(
        rep: Arc<Replicator>,
        hello: pb::Hello,
        generation: u64,
        failed_rx: tokio::sync::oneshot::Receiver<Status>,
    ) -> Self {
        // Subscribed before anything is read, so no commit after the catch-up's last read
        // goes unnoticed.
        let committed = WatchStream::from_changes(rep.store.subscribe());
        let mut heartbeat = tokio::time::interval(HEARTBEAT_INTERVAL);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stopped = Box::pin(rep.stop.clone().cancelled_owned());
        let mut outgoing = Self {
            rep,
            generation,
            phase: Phase::Done,
            failed_rx: Some(failed_rx),
            committed,
            heartbeat,
            stopped,
        };
        let pos = hello.applied_lsn;
        outgoing.phase = outgoing.spawn_catch_up(Some(hello), pos);
        outgoing
    }

    /// Starts a catch-up task from `pos` (or from `hello`) and reads from it.
    fn spawn_catch_up(&self, hello: Option<pb::Hello>, pos: Lsn) -> Phase {
        let (tx, rx) = mpsc::channel(STREAM_CHANNEL_CAPACITY);
        self.rep.spawn(catch_up(
            Arc::clone(&self.rep),
            hello,
            pos,
            self.generation,
            tx,
        ));
        Phase::CatchUp(rx)
    }

    /// The stream is over: its acks stop counting (once).
    fn finish(&mut self) {
        if !matches!(self.phase, Phase::Done) {
            self.phase = Phase::Done;
            stream_ended(&self.rep, self.generation);
            tracing::info!(generation = self.generation, "replica stream ended");
        }
    }

    /// The next message of the live phase at `pos`, or `Pending` (a commit, the heartbeat
    /// or shutdown wakes the stream), or `None` when the stream must end.
    fn poll_live(&mut self, pos: Lsn, cx: &mut Context<'_>) -> Poll<Option<LiveNext>> {
        let store = &self.rep.store;
        loop {
            if self.rep.stream_generation.load(Ordering::Acquire) != self.generation {
                return Poll::Ready(None);
            }
            let mut read = store.wal_tail_since(pos, WAL_BATCH_MAX);
            if let Some(entries) = read.as_mut() {
                cap_batch(entries);
            }
            let last = store.last_lsn().unwrap_or(pos);
            match next_step(pos, last, read.as_deref()) {
                Step::Ship { last } => {
                    if !self.rep.acks.sent(self.generation, last) {
                        return Poll::Ready(None); // superseded or closed
                    }
                    let entries = read.unwrap_or_default();
                    return Poll::Ready(Some(LiveNext::Ship(last, batch(entries))));
                }
                // Gaps are never in the tail (it holds consecutive LSNs), but a snapshot
                // is the catch-up task's business anyway.
                Step::ReadFiles | Step::Snapshot => return Poll::Ready(Some(LiveNext::CatchUp)),
                Step::Idle => {}
            }
            match Pin::new(&mut self.committed).poll_next(cx) {
                Poll::Ready(Some(_)) => continue,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
            return match self.heartbeat.poll_tick(cx) {
                Poll::Ready(_) => {
                    let hb = pb::Heartbeat {
                        last_lsn: pos,
                        term: store.term(),
                        now_unix_ms: concord::clock::unix_ms(),
                    };
                    Poll::Ready(Some(LiveNext::Send(response(
                        pb::replicate_response::Kind::Heartbeat(hb),
                    ))))
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }
}

/// What the live phase produced.
enum LiveNext {
    /// Entries up to this LSN, to send.
    Ship(Lsn, pb::ReplicateResponse),
    /// A message that does not move the position (a heartbeat).
    Send(pb::ReplicateResponse),
    /// The tail does not reach back far enough: back to a catch-up task.
    CatchUp,
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Stream for Outgoing {
    type Item = std::result::Result<pb::ReplicateResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        use std::future::Future;
        let this = self.get_mut();
        loop {
            if matches!(this.phase, Phase::Done) {
                return Poll::Ready(None);
            }
            if let Some(failed_rx) = &mut this.failed_rx {
                match Pin::new(failed_rx).poll(cx) {
                    Poll::Ready(Ok(status)) => {
                        this.finish();
                        return Poll::Ready(Some(Err(status)));
                    }
                    Poll::Ready(Err(_)) => this.failed_rx = None,
                    Poll::Pending => {}
                }
            }
            if this.stopped.as_mut().poll(cx).is_ready() {
                this.finish();
                return Poll::Ready(None);
            }
            match &mut this.phase {
                Phase::Done => {}
                Phase::CatchUp(rx) => match rx.poll_recv(cx) {
                    Poll::Ready(Some(CatchUp::Send(msg))) => return Poll::Ready(Some(Ok(msg))),
                    Poll::Ready(Some(CatchUp::Live(pos))) => this.phase = Phase::Live { pos },
                    Poll::Ready(None) => this.finish(),
                    Poll::Pending => return Poll::Pending,
                },
                Phase::Live { pos } => {
                    let pos = *pos;
                    match this.poll_live(pos, cx) {
                        Poll::Ready(Some(LiveNext::Ship(last, msg))) => {
                            this.phase = Phase::Live { pos: last };
                            return Poll::Ready(Some(Ok(msg)));
                        }
                        Poll::Ready(Some(LiveNext::Send(msg))) => {
                            return Poll::Ready(Some(Ok(msg)))
                        }
                        Poll::Ready(Some(LiveNext::CatchUp)) => {
                            this.phase = this.spawn_catch_up(None, pos);
                        }
                        Poll::Ready(None) => this.finish(),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(lsns: std::ops::RangeInclusive<Lsn>) -> Vec<WalEntry> {
        lsns.map(|lsn| WalEntry {
            lsn,
            term: 1,
            committed_at_ms: 0,
            mutations: Vec::new(),
        })
        .collect()
    }

    /// Where a replica resumes: a snapshot exactly when the WAL cannot continue its log.
    #[test]
    fn needs_snapshot_decides_where_a_replica_resumes() {
        let wal = |first, last, term_at_applied| WalBounds {
            first,
            last,
            term_at_applied,
        };
        let cases = [
            (
                "empty replica, WAL from 1",
                0,
                0,
                wal(Some(1), 9, None),
                false,
            ),
            ("empty replica, empty WAL", 0, 0, wal(None, 0, None), false),
            (
                "empty replica, WAL trimmed",
                0,
                0,
                wal(Some(5), 9, None),
                true,
            ),
            ("same history", 4, 1, wal(Some(1), 9, Some(1)), false),
            ("caught up exactly", 9, 2, wal(Some(1), 9, Some(2)), false),
            ("replica ahead of us", 10, 1, wal(Some(1), 9, Some(1)), true),
            (
                "diverged after a failover",
                4,
                1,
                wal(Some(1), 9, Some(2)),
                true,
            ),
            ("its entry was trimmed", 4, 1, wal(Some(6), 9, None), true),
        ];
        for (label, applied, applied_term, bounds, want) in cases {
            assert_eq!(
                needs_snapshot(applied, applied_term, bounds),
                want,
                "{label}"
            );
        }
    }

    /// What a stream at a position does with what it read: ship, snapshot over a trimmed
    /// gap, go to the files, or idle.
    #[test]
    fn next_step_follows_what_was_read() {
        /// (label, position, last committed, what was read, step)
        type Case = (&'static str, Lsn, Lsn, Option<Vec<WalEntry>>, Step);
        let cases: [Case; 8] = [
            (
                "fresh entries",
                4,
                6,
                Some(entries(5..=6)),
                Step::Ship { last: 6 },
            ),
            (
                "one entry",
                4,
                5,
                Some(entries(5..=5)),
                Step::Ship { last: 5 },
            ),
            (
                "a batch of the files",
                0,
                900,
                Some(entries(1..=256)),
                Step::Ship { last: 256 },
            ),
            (
                "trimmed past the position",
                4,
                9,
                Some(entries(7..=9)),
                Step::Snapshot,
            ),
            ("nothing new", 6, 6, Some(Vec::new()), Step::Idle),
            ("tail misses, more committed", 4, 9, None, Step::ReadFiles),
            (
                "tail misses, nothing committed (just restarted)",
                9,
                9,
                None,
                Step::Idle,
            ),
            (
                "tail misses, position ahead of the applied LSN",
                10,
                9,
                None,
                Step::Idle,
            ),
        ];
        for (label, pos, last, read, want) in cases {
            assert_eq!(next_step(pos, last, read.as_deref()), want, "{label}");
        }
    }

    fn put(store: &Store, key: &[u8]) -> Lsn {
        let written = store
            .transact(|tx| tx.put(TreeName::Carts, key, b"v".to_vec()))
            .expect("write")
            .durable_blocking()
            .expect("durable");
        written.lsn.expect("an LSN")
    }

    /// The LSNs of a `WalBatch` item, or what else came.
    fn shipped(item: Option<std::result::Result<pb::ReplicateResponse, Status>>) -> Vec<Lsn> {
        match item.expect("an item").expect("not an error").kind {
            Some(pb::replicate_response::Kind::Entries(batch)) => {
                batch.entries.iter().map(|e| e.lsn).collect()
            }
            other => panic!("expected entries, got {other:?}"),
        }
    }

    /// A primary of term 1 holding one write (LSN 1) and the stream a replica at LSN 0
    /// opened on it.
    struct Opened {
        dir: tempfile::TempDir,
        /// Kept so that the stream's error channel stays open.
        failed_tx: tokio::sync::oneshot::Sender<Status>,
        store: Arc<Store>,
        rep: Arc<Replicator>,
        stop: tokio_util::sync::CancellationToken,
        generation: u64,
        stream: Outgoing,
    }

    fn open_stream_on_primary() -> Opened {
        open_stream_from(0, |store| {
            put(store, b"a");
        })
    }

    /// Like [`open_stream_on_primary`], with the store filled by `fill` and the replica at
    /// `applied_lsn`.
    fn open_stream_from(applied_lsn: Lsn, fill: impl FnOnce(&Store)) -> Opened {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(
            Store::open(&crate::store::StoreConfig::new(dir.path().join("db"))).expect("store"),
        );
        fill(&store);
        let stop = tokio_util::sync::CancellationToken::new();
        let rep = Replicator::new(
            Arc::clone(&store),
            super::super::ReplicationConfig::default(),
            super::super::Role::Primary { term: 1 },
            "me:1".into(),
            None,
            stop.clone(),
        );
        let generation = rep.stream_generation.fetch_add(1, Ordering::AcqRel) + 1;
        rep.acks.open(generation);
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel();
        let hello = pb::Hello {
            replica_id: "r".into(),
            applied_lsn,
            term: 1,
            applied_term: 0,
        };
        let stream = Outgoing::start(Arc::clone(&rep), hello, generation, failed_rx);
        Opened {
            dir,
            failed_tx,
            store,
            rep,
            stop,
            generation,
            stream,
        }
    }

    /// A batch keeps its entries within the message budget, but always at least one.
    #[test]
    fn cap_batch_keeps_messages_small() {
        let sized = |sizes: &[usize]| -> Vec<WalEntry> {
            sizes
                .iter()
                .zip(1..)
                .map(|(&size, lsn)| WalEntry {
                    lsn,
                    term: 1,
                    committed_at_ms: 0,
                    mutations: vec![Mutation {
                        tree: TreeName::Carts,
                        key: Vec::new(),
                        value: Some(vec![0; size]),
                    }],
                })
                .collect()
        };
        let mib = MESSAGE_RECORD_BYTES;
        let cases: [(&str, Vec<usize>, usize); 5] = [
            ("small ones all go", vec![10, 10, 10], 3),
            ("exactly the budget", vec![mib / 2, mib / 2], 2),
            ("the one over it waits", vec![mib / 2, mib / 2, 1], 2),
            ("a big one alone still goes", vec![3 * mib, 1], 1),
            ("a big one after others waits", vec![10, 3 * mib], 1),
        ];
        for (label, sizes, kept) in cases {
            let mut entries = sized(&sizes);
            cap_batch(&mut entries);
            assert_eq!(entries.len(), kept, "{label}");
        }
    }

    /// A snapshot of big records comes in chunks the replica can decode (below the gRPC
    /// message limit), and holds every record.
    #[tokio::test]
    async fn snapshot_chunks_stay_below_the_message_limit() {
        use futures::StreamExt;
        use prost::Message as _;
        const RECORDS: usize = 600;
        let Opened {
            dir: _dir,
            failed_tx: _failed_tx,
            store: _,
            rep,
            stop,
            generation: _,
            mut stream,
        } = open_stream_from(10_000, |store| {
            for batch in 0..RECORDS / 100 {
                store
                    .transact(|tx| {
                        for i in 0..100 {
                            let key = format!("k{:04}", batch * 100 + i).into_bytes();
                            tx.put(TreeName::Carts, &key, vec![7; 8 * 1024])?;
                        }
                        Ok(())
                    })
                    .expect("write")
                    .durable_blocking()
                    .expect("durable");
            }
        });
        let mut records = 0;
        loop {
            let message = stream.next().await.expect("an item").expect("not an error");
            assert!(message.encoded_len() < concord::grpc::MAX_MESSAGE_BYTES);
            match message.kind {
                Some(pb::replicate_response::Kind::SnapshotChunk(chunk)) => {
                    records += chunk.mutations.len();
                }
                Some(pb::replicate_response::Kind::SnapshotEnd(_)) => break,
                _ => {}
            }
        }
        assert_eq!(records, RECORDS);
        stop.cancel();
        drop(stream);
        rep.join_tasks().await;
    }

    /// A primary that steps down ships nothing more on its old streams: what it writes
    /// next as a follower is another primary's log, not the continuation of its own.
    #[tokio::test]
    async fn a_stepped_down_primary_ends_its_streams() {
        use futures::StreamExt;
        let Opened {
            dir: _dir,
            failed_tx: _failed_tx,
            store: _,
            rep,
            stop,
            generation: _,
            mut stream,
        } = open_stream_on_primary();
        assert_eq!(shipped(stream.next().await), vec![1], "the catch-up");
        rep.step_down("a test");
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
            .await
            .expect("the stream answers within its heartbeat interval");
        assert!(next.is_none(), "ended, not {next:?}");
        stop.cancel();
        drop(stream);
        rep.join_tasks().await;
    }

    /// The stream ships the catch-up, then each fresh commit itself, woken by the commit
    /// (no task in between), and counts each batch as sent before it leaves; when idle it
    /// heartbeats, and it ends (closing its acks) on shutdown.
    #[tokio::test]
    async fn the_stream_ships_commits_itself_and_heartbeats_when_idle() {
        use futures::StreamExt;
        let Opened {
            dir: _dir,
            failed_tx: _failed_tx,
            store,
            rep,
            stop,
            generation,
            mut stream,
        } = open_stream_on_primary();
        assert_eq!(shipped(stream.next().await), vec![1], "the catch-up");
        // Idle now: the first heartbeat tick is due at once.
        match stream.next().await.expect("item").expect("ok").kind {
            Some(pb::replicate_response::Kind::Heartbeat(hb)) => assert_eq!(hb.last_lsn, 1),
            other => panic!("expected a heartbeat, got {other:?}"),
        }
        assert!(matches!(stream.phase, Phase::Live { pos: 1 }));
        let next = stream.next();
        tokio::pin!(next);
        assert!(futures::poll!(&mut next).is_pending(), "nothing new yet");
        put(&store, b"b");
        put(&store, b"c");
        assert_eq!(shipped(next.await), vec![2, 3], "woken by the commit");
        assert!(matches!(stream.phase, Phase::Live { pos: 3 }));
        assert_eq!(rep.note_ack(generation, 3), Ok(()), "counted as sent");
        assert!(rep.acks.stream_open());
        stop.cancel();
        assert!(stream.next().await.is_none(), "shutdown ends the stream");
        assert!(!rep.acks.stream_open(), "and closes its acks");
        drop(stream);
        rep.join_tasks().await;
    }
}
