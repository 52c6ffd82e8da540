//! The replica's side of a `Replicate` session as a socket-free state machine:
//! [`Follower::step`] takes what the primary sent (or what the store reported) and says
//! what to do.
//!
//! Why a core without sockets: an ack is a promise (the primary acknowledges sync writes on
//! it), so every rule that keeps it honest — acked ⇒ durable, never twice, never for a
//! half-installed snapshot, never for a log with a hole — is one decision over (phase,
//! event), tested by a table of scripts. The driver (`follower.rs`) only turns stream
//! messages and store results into [`Event`]s and carries out [`Action`]s, batching the
//! I/O: every [`Action::Append`] that arrived before a sync goes into that one sync, which
//! it reports as [`Event::Synced`].
//!
//! The rules (one session = one stream to one primary):
//! - **Entries continue the log.** Entries at or below what the session already holds are
//!   re-deliveries and dropped; the rest must start right after it and be consecutive
//!   (else [`ProtocolError::Gap`]), and an entry's term never goes below the term of the
//!   entry before it ([`ProtocolError::TermWentBack`]: a log's terms only grow). An entry
//!   may be of an older term than the primary's: a promoted replica ships its
//!   predecessor's writes. `Store::append_replicated` skips re-deliveries and refuses gaps
//!   too; that guards the WAL for every caller of the store, while the core decides first,
//!   before any I/O and with the reason, and is the only one that knows terms and acks.
//! - **Acks are cumulative, strictly increasing, and only for what the store reported
//!   durable** ([`Event::Synced`]); the apply comes after the ack ([`Action::Ack`] then
//!   [`Action::Apply`]).
//! - **Snapshots.** A begin wipes the store ([`Action::BeginSnapshot`]): nothing is durable
//!   then, so nothing is acked and the replica is not caught up until the end is installed.
//!   A chunk or an end without a begin, a second begin, entries during a snapshot, or an
//!   end at another LSN than its begin (the fuzzy copy is only complete from the begin's
//!   LSN on) end the session. A begin below what this session already acked would make an
//!   acked LSN not durable: refused before anything is wiped. (A first message may well be
//!   a snapshot below the Hello's position: a diverged replica is reset.) If the stream
//!   ends mid-snapshot the session ends without an ack ([`End::SnapshotCut`]): the store
//!   stays empty at LSN 0 and the next Hello asks for everything again.
//! - **Terms.** A heartbeat or snapshot from a term below the one this replica has seen
//!   comes from a deposed primary: the session ends ([`ProtocolError::StaleTerm`]). A
//!   heartbeat raising the term stores it ([`Action::RaiseTerm`]) and the session goes on.
//! - **Role changes.** The session belongs to one primary: a role naming that primary (a
//!   raised term) changes nothing; another primary, or none (promoted, fenced), ends it.
//! - **Caught up** only once the primary said where its log ends (a heartbeat of this
//!   session) and everything up to there — or up to the last entry received, if higher — is
//!   applied. A heartbeat showing the primary ahead of what is applied, or a snapshot
//!   begin, clears it; entries in flight alone do not (that is normal streaming). While
//!   caught up, each heartbeat notes its term ([`Action::NoteCaughtUp`]: this log is that
//!   term's log, for claim ordering).
//!
//! Contract with the driver: an action that asks for a report back ([`Action::Apply`] →
//! [`Event::Applied`], [`Action::FinishSnapshot`] → [`Event::Synced`]) is always the last
//! of its step, so that report is the next event. [`Action::EndSession`] is always last,
//! and after it every event is ignored. The driver clears the session's flags (connected,
//! caught up) when a session ends, whatever ended it.
//!
//! Non-goals: I/O, time, batching. The core never syncs or waits; `step` pushes into the
//! caller's buffer so a message costs no allocation.

use concord::claim::Term;

use super::role::Role;
use crate::wal::{Lsn, Mutation, WalEntry};

/// Where a replica's log stands when a session starts: what its Hello names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Its durable LSN, every entry up to it applied.
    pub lsn: Lsn,
    /// Term of the entry at `lsn` (0 when that entry is not stored, e.g. after a snapshot).
    pub lsn_term: Term,
    /// The highest term this replica has seen (its stored term).
    pub term: Term,
}

/// A message from the primary, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Consecutive WAL entries.
    Entries(Vec<WalEntry>),
    /// A snapshot of the primary's data as of (at least) `lsn` follows; `term` is the
    /// primary's.
    SnapshotBegin {
        /// The primary's last applied LSN when it started the scan.
        lsn: Lsn,
        /// The primary's term.
        term: Term,
    },
    /// Part of the snapshot's data.
    SnapshotChunk(Vec<Mutation>),
    /// The snapshot is complete: the replica stands at `lsn`, whose entry has `lsn_term`.
    SnapshotEnd {
        /// The LSN the snapshot stands for.
        lsn: Lsn,
        /// Term of the entry at `lsn`.
        lsn_term: Term,
    },
    /// The primary is idle; its log ends at `last_lsn`, in `term`.
    Heartbeat {
        /// The last LSN the primary shipped on this stream.
        last_lsn: Lsn,
        /// The primary's term.
        term: Term,
    },
}

/// What the follower core hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The primary sent this.
    Received(Message),
    /// The store reports this LSN durable (after an append's sync or a snapshot's finish).
    Synced(Lsn),
    /// The store reports this LSN applied to the trees.
    Applied(Lsn),
    /// The process's role is now this one.
    RoleChanged(Role),
    /// The primary closed the stream.
    StreamEnded,
    /// The stream broke (the transport's error).
    Broken(String),
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Append these entries to the WAL with the next sync, then report [`Event::Synced`].
    Append(Vec<WalEntry>),
    /// Send the primary a cumulative ack of this durable LSN.
    Ack(Lsn),
    /// Apply everything durable to the trees and report [`Event::Applied`].
    Apply,
    /// Wipe the store for a snapshot (it then stands at LSN 0).
    BeginSnapshot,
    /// Write this part of the snapshot.
    ApplySnapshotChunk(Vec<Mutation>),
    /// Complete the snapshot at `lsn` (the term of its entry, `term`), then report
    /// [`Event::Synced`] with the store's durable LSN.
    FinishSnapshot {
        /// The LSN the store stands at afterwards.
        lsn: Lsn,
        /// Term of the entry at `lsn`.
        term: Term,
    },
    /// Store this higher term (the primary's) and carry it in the role.
    RaiseTerm(Term),
    /// Publish where the primary's log ends, as far as known (the replica's lag).
    SetPrimaryLast(Lsn),
    /// Publish whether this replica is caught up (its readiness).
    SetCaughtUp(bool),
    /// This replica holds everything the primary of this term had: its log is that term's.
    NoteCaughtUp(Term),
    /// The session is over.
    EndSession(End),
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum End {
    /// The primary closed the stream.
    #[error("the primary closed the stream")]
    StreamEnded,
    /// The primary closed the stream in the middle of a snapshot.
    #[error("the stream ended mid-snapshot; the store stays empty until the next snapshot")]
    SnapshotCut,
    /// The stream broke.
    #[error("the stream broke: {0}")]
    Broken(String),
    /// The role names another primary, or none.
    #[error("the role no longer names this primary")]
    RoleChanged,
    /// The primary broke the protocol; nothing of the offending message was kept.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
}

/// How a primary broke the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Entries that do not continue the log.
    #[error("entry {got} does not continue the log, which ends at LSN {held}")]
    Gap {
        /// The last LSN held or received.
        held: Lsn,
        /// The LSN that came instead of `held + 1`.
        got: Lsn,
    },
    /// An entry whose term is below the term of the entry before it.
    #[error("entry {lsn} has term {term}, below the term {before} of the entry before it")]
    TermWentBack {
        /// The entry's LSN.
        lsn: Lsn,
        /// Its term.
        term: Term,
        /// The term of the entry before it.
        before: Term,
    },
    /// A heartbeat or snapshot from a term below one this replica has seen.
    #[error("the primary is in term {term}, below term {seen} this replica has seen")]
    StaleTerm {
        /// The primary's term.
        term: Term,
        /// The highest term seen.
        seen: Term,
    },
    /// Entries between a snapshot's begin and end.
    #[error("WAL entries in the middle of a snapshot")]
    EntriesDuringSnapshot,
    /// A snapshot chunk outside a snapshot.
    #[error("a snapshot chunk without a snapshot begin")]
    ChunkWithoutBegin,
    /// A snapshot end outside a snapshot.
    #[error("a snapshot end without a snapshot begin")]
    EndWithoutBegin,
    /// A snapshot begin inside a snapshot.
    #[error("a snapshot begin in the middle of a snapshot")]
    NestedSnapshot,
    /// A snapshot end at another LSN than its begin.
    #[error("the snapshot began at LSN {begin} but ends at LSN {end}")]
    SnapshotMoved {
        /// The begin's LSN.
        begin: Lsn,
        /// The end's LSN.
        end: Lsn,
    },
    /// A snapshot that would take the replica below an LSN it acked on this stream.
    #[error("a snapshot at LSN {lsn} would drop LSN {acked}, already acked as durable")]
    SnapshotBelowAcked {
        /// The snapshot's LSN.
        lsn: Lsn,
        /// The highest LSN acked on this stream.
        acked: Lsn,
    },
}

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Receiving entries and heartbeats.
    Streaming,
    /// Between a snapshot's begin (at `lsn`) and its end: the store is wiped.
    Snapshot {
        /// The begin's LSN.
        lsn: Lsn,
    },
    /// The session is over: every event is ignored.
    Ended,
}

/// One replication session's state: what is held, durable, acked and applied.
#[derive(Debug, Clone)]
pub struct Follower {
    /// The primary this session follows.
    primary: String,
    /// Where the session is.
    phase: Phase,
    /// The highest term seen (stored, from heartbeats, from the role).
    term: Term,
    /// The last LSN received and accepted (appended or about to be).
    received: Lsn,
    /// The term of the entry at `received` (0 when unknown).
    last_term: Term,
    /// The last LSN the store reported durable.
    durable: Lsn,
    /// The last LSN acked on this stream (`None`: nothing yet).
    acked: Option<Lsn>,
    /// The last LSN the store reported applied.
    applied: Lsn,
    /// Where the primary's log ends, as far as this session knows.
    primary_last: Lsn,
    /// A heartbeat of this session told where the primary's log ends.
    heard: bool,
    /// What was last published with [`Action::SetCaughtUp`] (the driver starts a session
    /// with `false`).
    caught_up: bool,
}

impl Follower {
    /// The core of a session with `primary`, starting from the replica's position `at`
    /// (the one its Hello names).
    pub fn new(primary: impl Into<String>, at: Position) -> Self {
        Follower {
            primary: primary.into(),
            phase: Phase::Streaming,
            term: at.term,
            received: at.lsn,
            last_term: at.lsn_term,
            durable: at.lsn,
            acked: None,
            applied: at.lsn,
            primary_last: 0,
            heard: false,
            caught_up: false,
        }
    }

    /// Takes one event and pushes what to do onto `actions` (the caller's buffer, reused
    /// from step to step), in order.
    pub fn step(&mut self, event: Event, actions: &mut Vec<Action>) {
        if self.phase == Phase::Ended {
            return;
        }
        match event {
            Event::Received(message) => self.receive(message, actions),
            Event::Synced(lsn) => {
                if self.phase != Phase::Streaming {
                    return;
                }
                self.durable = self.durable.max(lsn);
                if self.acked.is_none_or(|acked| self.durable > acked) {
                    self.acked = Some(self.durable);
                    actions.push(Action::Ack(self.durable));
                }
                if self.durable > self.applied {
                    actions.push(Action::Apply);
                }
            }
            Event::Applied(lsn) => {
                if self.phase != Phase::Streaming {
                    return;
                }
                self.applied = self.applied.max(lsn);
                if self.heard && self.applied >= self.primary_last {
                    self.set_caught_up(true, actions);
                }
            }
            Event::RoleChanged(role) => match role.maybe_primary() {
                Some(primary) if primary == self.primary => self.term = self.term.max(role.term()),
                _ => self.end(End::RoleChanged, actions),
            },
            Event::StreamEnded => {
                let end = match self.phase {
                    Phase::Snapshot { .. } => End::SnapshotCut,
                    _ => End::StreamEnded,
                };
                self.end(end, actions);
            }
            Event::Broken(why) => self.end(End::Broken(why), actions),
        }
    }

    /// One message from the primary.
    fn receive(&mut self, message: Message, actions: &mut Vec<Action>) {
        match message {
            Message::Entries(entries) => {
                if let Err(e) = self.accept_entries(entries, actions) {
                    self.end(e.into(), actions);
                }
            }
            Message::SnapshotBegin { lsn, term } => {
                if let Err(e) = self.begin_snapshot(lsn, term, actions) {
                    self.end(e.into(), actions);
                }
            }
            Message::SnapshotChunk(mutations) => match self.phase {
                Phase::Snapshot { .. } => actions.push(Action::ApplySnapshotChunk(mutations)),
                _ => self.end(ProtocolError::ChunkWithoutBegin.into(), actions),
            },
            Message::SnapshotEnd { lsn, lsn_term } => match self.phase {
                Phase::Snapshot { lsn: begin } if begin == lsn => {
                    self.phase = Phase::Streaming;
                    self.received = lsn;
                    self.last_term = lsn_term;
                    actions.push(Action::FinishSnapshot {
                        lsn,
                        term: lsn_term,
                    });
                }
                Phase::Snapshot { lsn: begin } => self.end(
                    ProtocolError::SnapshotMoved { begin, end: lsn }.into(),
                    actions,
                ),
                _ => self.end(ProtocolError::EndWithoutBegin.into(), actions),
            },
            Message::Heartbeat { last_lsn, term } => {
                if let Err(e) = self.check_term(term) {
                    return self.end(e.into(), actions);
                }
                if term > self.term {
                    self.term = term;
                    actions.push(Action::RaiseTerm(term));
                }
                self.heard = true;
                self.raise_primary_last(last_lsn, actions);
                if self.phase != Phase::Streaming {
                    return;
                }
                let caught_up = self.applied >= self.primary_last;
                if caught_up {
                    actions.push(Action::NoteCaughtUp(term));
                }
                self.set_caught_up(caught_up, actions);
            }
        }
    }

    /// Checks `entries` against the log and hands the fresh ones to the driver.
    fn accept_entries(
        &mut self,
        mut entries: Vec<WalEntry>,
        actions: &mut Vec<Action>,
    ) -> Result<(), ProtocolError> {
        if matches!(self.phase, Phase::Snapshot { .. }) {
            return Err(ProtocolError::EntriesDuringSnapshot);
        }
        let held = entries
            .iter()
            .take_while(|e| e.lsn <= self.received)
            .count();
        let (mut last, mut term) = (self.received, self.last_term);
        for entry in &entries[held..] {
            if last.checked_add(1) != Some(entry.lsn) {
                return Err(ProtocolError::Gap {
                    held: last,
                    got: entry.lsn,
                });
            }
            if entry.term < term {
                return Err(ProtocolError::TermWentBack {
                    lsn: entry.lsn,
                    term: entry.term,
                    before: term,
                });
            }
            (last, term) = (entry.lsn, entry.term);
        }
        // In place: the re-delivered prefix goes, the vector is handed on.
        entries.drain(..held);
        if entries.is_empty() {
            return Ok(());
        }
        (self.received, self.last_term) = (last, term);
        actions.push(Action::Append(entries));
        self.raise_primary_last(last, actions);
        Ok(())
    }

    /// A snapshot begins at `lsn`, from a primary in `term`.
    fn begin_snapshot(
        &mut self,
        lsn: Lsn,
        term: Term,
        actions: &mut Vec<Action>,
    ) -> Result<(), ProtocolError> {
        if matches!(self.phase, Phase::Snapshot { .. }) {
            return Err(ProtocolError::NestedSnapshot);
        }
        self.check_term(term)?;
        if let Some(acked) = self.acked.filter(|acked| lsn < *acked) {
            return Err(ProtocolError::SnapshotBelowAcked { lsn, acked });
        }
        self.phase = Phase::Snapshot { lsn };
        (self.received, self.last_term, self.durable, self.applied) = (0, 0, 0, 0);
        self.set_caught_up(false, actions);
        self.raise_primary_last(lsn, actions);
        actions.push(Action::BeginSnapshot);
        Ok(())
    }

    /// A primary's `term` must not be below what this replica has seen.
    fn check_term(&self, term: Term) -> Result<(), ProtocolError> {
        if term < self.term {
            return Err(ProtocolError::StaleTerm {
                term,
                seen: self.term,
            });
        }
        Ok(())
    }

    /// The primary's log reaches at least `lsn`.
    fn raise_primary_last(&mut self, lsn: Lsn, actions: &mut Vec<Action>) {
        if lsn > self.primary_last {
            self.primary_last = lsn;
            actions.push(Action::SetPrimaryLast(lsn));
        }
    }

    /// Publishes `caught_up` if it changed.
    fn set_caught_up(&mut self, caught_up: bool, actions: &mut Vec<Action>) {
        if caught_up != self.caught_up {
            self.caught_up = caught_up;
            actions.push(Action::SetCaughtUp(caught_up));
        }
    }

    /// Ends the session for `why`.
    fn end(&mut self, why: End, actions: &mut Vec<Action>) {
        self.phase = Phase::Ended;
        actions.push(Action::EndSession(why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "primary:1";

    /// A WAL entry with no mutations.
    fn e(lsn: Lsn, term: Term) -> WalEntry {
        WalEntry {
            lsn,
            term,
            committed_at_ms: 0,
            mutations: Vec::new(),
        }
    }

    fn entries(list: &[(Lsn, Term)]) -> Event {
        Event::Received(Message::Entries(
            list.iter().map(|&(lsn, term)| e(lsn, term)).collect(),
        ))
    }

    fn append(list: &[(Lsn, Term)]) -> Action {
        Action::Append(list.iter().map(|&(lsn, term)| e(lsn, term)).collect())
    }

    fn hb(last_lsn: Lsn, term: Term) -> Event {
        Event::Received(Message::Heartbeat { last_lsn, term })
    }

    fn begin(lsn: Lsn, term: Term) -> Event {
        Event::Received(Message::SnapshotBegin { lsn, term })
    }

    fn chunk() -> Event {
        Event::Received(Message::SnapshotChunk(vec![mutation()]))
    }

    fn mutation() -> Mutation {
        Mutation {
            tree: crate::wal::TreeName::Products,
            key: b"k".to_vec(),
            value: Some(b"v".to_vec()),
        }
    }

    fn end(lsn: Lsn, lsn_term: Term) -> Event {
        Event::Received(Message::SnapshotEnd { lsn, lsn_term })
    }

    fn at(lsn: Lsn, lsn_term: Term, term: Term) -> Position {
        Position {
            lsn,
            lsn_term,
            term,
        }
    }

    fn replica_of(primary: &str, term: Term) -> Event {
        Event::RoleChanged(Role::Replica {
            primary: primary.into(),
            term,
        })
    }

    fn protocol(e: ProtocolError) -> Action {
        Action::EndSession(End::Protocol(e))
    }

    /// One step of a script: the event and the actions it must give.
    type Step = (Event, Vec<Action>);

    /// Every transition of the core, as scripts (start position, then events and actions).
    #[test]
    fn transitions_table() {
        use Action::*;
        let cases: Vec<(&str, Position, Vec<Step>)> = vec![
            (
                "entries: appended, acked once durable, then applied; caught up after a heartbeat",
                at(0, 0, 1),
                vec![
                    (
                        entries(&[(1, 1), (2, 1)]),
                        vec![append(&[(1, 1), (2, 1)]), SetPrimaryLast(2)],
                    ),
                    (Event::Synced(2), vec![Ack(2), Apply]),
                    (Event::Applied(2), vec![]),
                    (hb(2, 1), vec![NoteCaughtUp(1), SetCaughtUp(true)]),
                    (hb(2, 1), vec![NoteCaughtUp(1)]),
                ],
            ),
            (
                "batches that arrived together are accepted in turn; one sync acks them all",
                at(0, 0, 1),
                vec![
                    (
                        entries(&[(1, 1)]),
                        vec![append(&[(1, 1)]), SetPrimaryLast(1)],
                    ),
                    (
                        entries(&[(2, 1), (3, 1)]),
                        vec![append(&[(2, 1), (3, 1)]), SetPrimaryLast(3)],
                    ),
                    (Event::Synced(3), vec![Ack(3), Apply]),
                ],
            ),
            (
                "re-delivered entries are dropped; only the fresh tail is appended",
                at(5, 1, 1),
                vec![
                    (
                        entries(&[(4, 1), (5, 1), (6, 1)]),
                        vec![append(&[(6, 1)]), SetPrimaryLast(6)],
                    ),
                    (entries(&[(5, 1), (6, 1)]), vec![]),
                    (entries(&[]), vec![]),
                ],
            ),
            (
                "a gap after what is held ends the session before any I/O; nothing is acked",
                at(5, 1, 1),
                vec![
                    (
                        entries(&[(7, 1)]),
                        vec![protocol(ProtocolError::Gap { held: 5, got: 7 })],
                    ),
                    (Event::Synced(7), vec![]),
                    (entries(&[(6, 1)]), vec![]),
                ],
            ),
            (
                "a gap inside a batch, or after what an earlier batch of the same sync brought",
                at(5, 1, 1),
                vec![
                    (
                        entries(&[(6, 1)]),
                        vec![append(&[(6, 1)]), SetPrimaryLast(6)],
                    ),
                    (
                        entries(&[(7, 1), (9, 1)]),
                        vec![protocol(ProtocolError::Gap { held: 7, got: 9 })],
                    ),
                ],
            ),
            (
                "a batch out of order is a gap, not a re-delivery",
                at(5, 1, 1),
                vec![(
                    entries(&[(7, 1), (6, 1)]),
                    vec![protocol(ProtocolError::Gap { held: 5, got: 7 })],
                )],
            ),
            (
                "an entry from a lower term than the log's last entry ends the session",
                at(5, 2, 2),
                vec![(
                    entries(&[(6, 1)]),
                    vec![protocol(ProtocolError::TermWentBack {
                        lsn: 6,
                        term: 1,
                        before: 2,
                    })],
                )],
            ),
            (
                "terms going back inside a batch end the session too",
                at(5, 1, 1),
                vec![(
                    entries(&[(6, 2), (7, 1)]),
                    vec![protocol(ProtocolError::TermWentBack {
                        lsn: 7,
                        term: 1,
                        before: 2,
                    })],
                )],
            ),
            (
                "older-term entries continuing the log are fine (a predecessor's writes)",
                at(5, 1, 3),
                vec![(
                    entries(&[(6, 1), (7, 3)]),
                    vec![append(&[(6, 1), (7, 3)]), SetPrimaryLast(7)],
                )],
            ),
            (
                "acks strictly increase and only name what the store reported durable",
                at(0, 0, 1),
                vec![
                    (
                        entries(&[(1, 1), (2, 1)]),
                        vec![append(&[(1, 1), (2, 1)]), SetPrimaryLast(2)],
                    ),
                    (Event::Synced(1), vec![Ack(1), Apply]),
                    (Event::Synced(2), vec![Ack(2), Apply]),
                    (Event::Applied(2), vec![]),
                    (Event::Synced(2), vec![]),
                    (Event::Synced(1), vec![]),
                ],
            ),
            (
                "a resumed session's first sync acks its position even with nothing new",
                at(5, 1, 1),
                vec![(Event::Synced(5), vec![Ack(5)])],
            ),
            (
                "a snapshot: begin wipes, chunks apply, end installs; acked once durable",
                at(0, 0, 1),
                vec![
                    (begin(10, 1), vec![SetPrimaryLast(10), BeginSnapshot]),
                    (chunk(), vec![ApplySnapshotChunk(vec![mutation()])]),
                    (end(10, 1), vec![FinishSnapshot { lsn: 10, term: 1 }]),
                    (Event::Synced(10), vec![Ack(10), Apply]),
                    (Event::Applied(10), vec![]),
                    (hb(10, 1), vec![NoteCaughtUp(1), SetCaughtUp(true)]),
                    (
                        entries(&[(11, 1)]),
                        vec![append(&[(11, 1)]), SetPrimaryLast(11)],
                    ),
                ],
            ),
            (
                "entries go on from the snapshot's LSN; a gap after it is refused",
                at(0, 0, 1),
                vec![
                    (begin(10, 1), vec![SetPrimaryLast(10), BeginSnapshot]),
                    (end(10, 1), vec![FinishSnapshot { lsn: 10, term: 1 }]),
                    (
                        entries(&[(12, 1)]),
                        vec![protocol(ProtocolError::Gap { held: 10, got: 12 })],
                    ),
                ],
            ),
            (
                "the snapshot's entry term bounds the next entries' terms",
                at(0, 0, 2),
                vec![
                    (begin(10, 2), vec![SetPrimaryLast(10), BeginSnapshot]),
                    (end(10, 2), vec![FinishSnapshot { lsn: 10, term: 2 }]),
                    (
                        entries(&[(11, 1)]),
                        vec![protocol(ProtocolError::TermWentBack {
                            lsn: 11,
                            term: 1,
                            before: 2,
                        })],
                    ),
                ],
            ),
            (
                "a snapshot begin while caught up: no longer caught up (the data is replaced)",
                at(4, 1, 1),
                vec![
                    (
                        hb(4, 1),
                        vec![SetPrimaryLast(4), NoteCaughtUp(1), SetCaughtUp(true)],
                    ),
                    (begin(4, 1), vec![SetCaughtUp(false), BeginSnapshot]),
                    (hb(4, 1), vec![]),
                    (end(4, 1), vec![FinishSnapshot { lsn: 4, term: 1 }]),
                    (Event::Synced(4), vec![Ack(4), Apply]),
                    (Event::Applied(4), vec![SetCaughtUp(true)]),
                ],
            ),
            (
                "a snapshot chunk without a begin ends the session",
                at(3, 1, 1),
                vec![
                    (chunk(), vec![protocol(ProtocolError::ChunkWithoutBegin)]),
                    (chunk(), vec![]),
                ],
            ),
            (
                "a snapshot end without a begin ends the session: nothing installed or acked",
                at(3, 1, 1),
                vec![
                    (end(9, 1), vec![protocol(ProtocolError::EndWithoutBegin)]),
                    (Event::Synced(9), vec![]),
                ],
            ),
            (
                "a second begin inside a snapshot ends the session",
                at(0, 0, 1),
                vec![
                    (begin(5, 1), vec![SetPrimaryLast(5), BeginSnapshot]),
                    (begin(6, 1), vec![protocol(ProtocolError::NestedSnapshot)]),
                ],
            ),
            (
                "entries during a snapshot end the session",
                at(0, 0, 1),
                vec![
                    (begin(5, 1), vec![SetPrimaryLast(5), BeginSnapshot]),
                    (
                        entries(&[(6, 1)]),
                        vec![protocol(ProtocolError::EntriesDuringSnapshot)],
                    ),
                ],
            ),
            (
                "a snapshot end at another LSN than its begin ends the session, uninstalled",
                at(0, 0, 1),
                vec![
                    (begin(5, 1), vec![SetPrimaryLast(5), BeginSnapshot]),
                    (
                        end(7, 1),
                        vec![protocol(ProtocolError::SnapshotMoved { begin: 5, end: 7 })],
                    ),
                    (Event::Synced(7), vec![]),
                ],
            ),
            (
                "a snapshot below what this stream acked is refused before anything is wiped",
                at(0, 0, 1),
                vec![
                    (
                        entries(&[(1, 1), (2, 1), (3, 1)]),
                        vec![append(&[(1, 1), (2, 1), (3, 1)]), SetPrimaryLast(3)],
                    ),
                    (Event::Synced(3), vec![Ack(3), Apply]),
                    (
                        begin(2, 1),
                        vec![protocol(ProtocolError::SnapshotBelowAcked {
                            lsn: 2,
                            acked: 3,
                        })],
                    ),
                ],
            ),
            (
                "a snapshot at or above what was acked is fine; the same LSN is not acked twice",
                at(0, 0, 1),
                vec![
                    (
                        entries(&[(1, 1), (2, 1), (3, 1)]),
                        vec![append(&[(1, 1), (2, 1), (3, 1)]), SetPrimaryLast(3)],
                    ),
                    (Event::Synced(3), vec![Ack(3), Apply]),
                    (Event::Applied(3), vec![]),
                    (begin(3, 1), vec![BeginSnapshot]),
                    (end(3, 1), vec![FinishSnapshot { lsn: 3, term: 1 }]),
                    (Event::Synced(3), vec![Apply]),
                ],
            ),
            (
                "a diverged replica is reset by a snapshot below its Hello (nothing acked yet)",
                at(100, 1, 1),
                vec![
                    (begin(90, 2), vec![SetPrimaryLast(90), BeginSnapshot]),
                    (end(90, 2), vec![FinishSnapshot { lsn: 90, term: 2 }]),
                    (Event::Synced(90), vec![Ack(90), Apply]),
                ],
            ),
            (
                "the stream ending mid-snapshot ends the session; nothing half-installed is acked",
                at(0, 0, 1),
                vec![
                    (begin(10, 1), vec![SetPrimaryLast(10), BeginSnapshot]),
                    (chunk(), vec![ApplySnapshotChunk(vec![mutation()])]),
                    (Event::StreamEnded, vec![EndSession(End::SnapshotCut)]),
                    (Event::Synced(10), vec![]),
                    (end(10, 1), vec![]),
                ],
            ),
            (
                "the stream breaking mid-snapshot: the same",
                at(0, 0, 1),
                vec![
                    (begin(10, 1), vec![SetPrimaryLast(10), BeginSnapshot]),
                    (
                        Event::Broken("reset".into()),
                        vec![EndSession(End::Broken("reset".into()))],
                    ),
                    (Event::Synced(10), vec![]),
                ],
            ),
            (
                "the stream ending or breaking ends the session",
                at(0, 0, 1),
                vec![
                    (Event::StreamEnded, vec![EndSession(End::StreamEnded)]),
                    (Event::Broken("reset".into()), vec![]),
                ],
            ),
            (
                "during a snapshot: store reports are ignored; only another primary ends it",
                at(0, 0, 1),
                vec![
                    (begin(5, 1), vec![SetPrimaryLast(5), BeginSnapshot]),
                    (Event::Synced(5), vec![]),
                    (Event::Applied(5), vec![]),
                    (replica_of(P, 1), vec![]),
                    (replica_of("other:1", 2), vec![EndSession(End::RoleChanged)]),
                ],
            ),
            (
                "the stream breaking while streaming ends the session",
                at(3, 1, 1),
                vec![(
                    Event::Broken("reset".into()),
                    vec![EndSession(End::Broken("reset".into()))],
                )],
            ),
            (
                "a stale heartbeat during a snapshot ends the session",
                at(0, 0, 2),
                vec![
                    (begin(5, 2), vec![SetPrimaryLast(5), BeginSnapshot]),
                    (
                        hb(5, 1),
                        vec![protocol(ProtocolError::StaleTerm { term: 1, seen: 2 })],
                    ),
                ],
            ),
            (
                "a heartbeat from a lower term ends the session (a deposed primary)",
                at(5, 3, 3),
                vec![
                    (
                        hb(5, 2),
                        vec![protocol(ProtocolError::StaleTerm { term: 2, seen: 3 })],
                    ),
                    (hb(5, 3), vec![]),
                ],
            ),
            (
                "a snapshot from a lower term ends the session before anything is wiped",
                at(5, 3, 3),
                vec![(
                    begin(9, 2),
                    vec![protocol(ProtocolError::StaleTerm { term: 2, seen: 3 })],
                )],
            ),
            (
                "a heartbeat raising the term: stored, and the session goes on",
                at(0, 0, 1),
                vec![
                    (
                        hb(0, 2),
                        vec![RaiseTerm(2), NoteCaughtUp(2), SetCaughtUp(true)],
                    ),
                    (replica_of(P, 2), vec![]),
                    (
                        entries(&[(1, 2)]),
                        vec![append(&[(1, 2)]), SetPrimaryLast(1)],
                    ),
                    (
                        hb(1, 1),
                        vec![protocol(ProtocolError::StaleTerm { term: 1, seen: 2 })],
                    ),
                ],
            ),
            (
                "a role change naming the same primary goes on; its term counts as seen",
                at(0, 0, 1),
                vec![
                    (replica_of(P, 4), vec![]),
                    (
                        hb(0, 3),
                        vec![protocol(ProtocolError::StaleTerm { term: 3, seen: 4 })],
                    ),
                ],
            ),
            (
                "a role change naming another primary ends the session",
                at(0, 0, 1),
                vec![
                    (replica_of("other:1", 2), vec![EndSession(End::RoleChanged)]),
                    (entries(&[(1, 1)]), vec![]),
                ],
            ),
            (
                "a role change to fenced (no primary) ends the session",
                at(0, 0, 1),
                vec![(
                    Event::RoleChanged(Role::Fenced { term: 1 }),
                    vec![EndSession(End::RoleChanged)],
                )],
            ),
            (
                "a promotion ends the session",
                at(0, 0, 1),
                vec![(
                    Event::RoleChanged(Role::Primary { term: 2 }),
                    vec![EndSession(End::RoleChanged)],
                )],
            ),
            (
                "never caught up before the primary said where its log ends",
                at(0, 0, 1),
                vec![
                    (
                        entries(&[(1, 1)]),
                        vec![append(&[(1, 1)]), SetPrimaryLast(1)],
                    ),
                    (Event::Synced(1), vec![Ack(1), Apply]),
                    (Event::Applied(1), vec![]),
                ],
            ),
            (
                "caught up only once applied reaches the primary's last LSN",
                at(5, 1, 1),
                vec![
                    (hb(8, 1), vec![SetPrimaryLast(8)]),
                    (entries(&[(6, 1), (7, 1)]), vec![append(&[(6, 1), (7, 1)])]),
                    (Event::Synced(7), vec![Ack(7), Apply]),
                    (Event::Applied(7), vec![]),
                    (entries(&[(8, 1)]), vec![append(&[(8, 1)])]),
                    (Event::Synced(8), vec![Ack(8), Apply]),
                    (Event::Applied(8), vec![SetCaughtUp(true)]),
                ],
            ),
            (
                "the primary ahead (heartbeat) clears caught-up; applying up to it sets it again",
                at(5, 1, 1),
                vec![
                    (
                        hb(5, 1),
                        vec![SetPrimaryLast(5), NoteCaughtUp(1), SetCaughtUp(true)],
                    ),
                    (
                        entries(&[(6, 1)]),
                        vec![append(&[(6, 1)]), SetPrimaryLast(6)],
                    ),
                    (Event::Synced(6), vec![Ack(6), Apply]),
                    (Event::Applied(6), vec![]),
                    (hb(8, 1), vec![SetPrimaryLast(8), SetCaughtUp(false)]),
                    (entries(&[(7, 1), (8, 1)]), vec![append(&[(7, 1), (8, 1)])]),
                    (Event::Synced(8), vec![Ack(8), Apply]),
                    (Event::Applied(8), vec![SetCaughtUp(true)]),
                ],
            ),
            (
                "the largest LSN: nothing can follow it, nothing overflows",
                at(u64::MAX, 1, 1),
                vec![
                    (entries(&[(u64::MAX, 1)]), vec![]),
                    (Event::Synced(u64::MAX), vec![Ack(u64::MAX)]),
                ],
            ),
        ];
        for (label, start, steps) in cases {
            let mut core = Follower::new(P, start);
            let mut got = Vec::new();
            for (n, (event, want)) in steps.into_iter().enumerate() {
                got.clear();
                core.step(event.clone(), &mut got);
                assert_eq!(got, want, "{label}, step {n}: {event:?}");
                // The driver's contract: a report-back or an end is the step's last action.
                let last = got.len().saturating_sub(1);
                for (i, action) in got.iter().enumerate() {
                    let must_be_last = matches!(
                        action,
                        Action::Apply | Action::FinishSnapshot { .. } | Action::EndSession(_)
                    );
                    assert!(
                        !must_be_last || i == last,
                        "{label}, step {n}: {action:?} is not last in {got:?}"
                    );
                }
            }
        }
    }
}
