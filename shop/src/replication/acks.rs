//! The replica's cumulative acks on the primary, validated per stream, and the sync
//! writes waiting for them.
//!
//! Why its own type: an ack is what makes a sync write succeed, so it must be impossible to
//! forge or replay one. Each ack is checked against the stream it came on (the current one
//! only) and against what that stream was actually sent; a waiter is woken only by the ack
//! that covers its LSN. Whether a replica is connected *to this primary* is also answered
//! here ([`Acks::stream_open`]): it is a property of the primary's current stream, not a
//! flag shared with the follower side (a stepped-down primary's dying stream must not
//! clear the state of the stream it now follows on).

use std::sync::atomic::{AtomicU64, Ordering};

use tonic::Status;

use crate::wal::Lsn;

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
pub(super) struct Acks {
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
    /// The stream (numbered by the `Replicator`).
    generation: u64,
    /// Highest LSN sent on it (or proved held by its Hello): its acks may not exceed this.
    sent: Lsn,
}

/// Why an ack was refused; each closes the stream it came on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum AckError {
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
    pub(super) fn acked(&self) -> Lsn {
        self.acked.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AckState> {
        // Only plain field updates, inserts and removals happen under the lock: a poisoned
        // state is intact.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `generation` the stream whose acks count (nothing sent on it yet), unless a
    /// newer one was opened already; the previous stream's acks stop counting.
    pub(super) fn open(&self, generation: u64) {
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
    pub(super) fn sent(&self, generation: u64, lsn: Lsn) -> bool {
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
    pub(super) fn close(&self, generation: u64) {
        let mut state = self.lock();
        if state.stream.is_some_and(|s| s.generation == generation) {
            state.stream = None;
        }
    }

    /// Whether a replica's stream is open on this primary now.
    pub(super) fn stream_open(&self) -> bool {
        self.lock().stream.is_some()
    }

    /// This process (again) became the primary: forget every ack and stream of before.
    pub(super) fn reset(&self) {
        let mut state = self.lock();
        state.stream = None;
        self.acked.store(0, Ordering::Release);
    }

    /// Records a cumulative ack from stream `generation` and wakes the writes it covers;
    /// refuses (changing nothing) an ack from a stream that is not current or beyond what
    /// that stream was sent.
    pub(super) fn note(&self, generation: u64, lsn: Lsn) -> std::result::Result<(), AckError> {
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
    pub(super) async fn wait_for(&self, lsn: Lsn) -> bool {
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
