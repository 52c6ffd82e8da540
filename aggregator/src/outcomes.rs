//! Bounded memory of recent requests, and `ReportOutcome` on top of it.
//!
//! After a consensus the aggregator calls [`RecentRequests::record`] with the request id
//! and the label of every node that answered **in time** (late or failed nodes are not
//! recorded, so they are neither rewarded nor slashed). `ReportOutcome(request_id,
//! true_label)` then calls [`report_outcome`], which scores those nodes in the ledger.
//!
//! Bounds: at most `capacity` requests, each kept for at most `ttl`. Recording into a
//! full memory evicts the oldest request. A request that was evicted (or never existed)
//! is [`OutcomeError::UnknownRequest`]; one still held but older than `ttl` is
//! [`OutcomeError::Expired`]. The memory is not persisted: after a restart earlier
//! requests are unknown (their scores, already in the ledger, are not).
//!
//! Score-once, race-free: the ledger writes a `scored` marker in the same transaction as
//! the score, so of two concurrent reports exactly one commits; the other gets
//! [`ReportResult::AlreadyReported`]. The marker is durable, so a report after a restart
//! or after eviction still says "already reported" rather than scoring again.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ledger::{Ledger, LedgerError, ScoreChange};
use crate::policy::{Label, NodeId};

/// Default number of requests remembered.
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Default time a request can still be scored.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// The answer of one node, as needed for scoring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedAnswer {
    /// Who answered.
    pub node_id: NodeId,
    /// Its label (`argmax` of its probabilities).
    pub label: Label,
}

/// What is remembered about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// Number of classes, to validate the true label.
    pub classes: u32,
    /// The label the consensus chose (`None` if there was no consensus).
    pub consensus_label: Option<Label>,
    /// The in-time answers.
    pub answers: Vec<RecordedAnswer>,
}

/// Errors of `ReportOutcome`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OutcomeError {
    /// Never seen, or evicted from the bounded memory.
    #[error("unknown request id {} (only the last {capacity} requests are kept)", concord::error::quote(.request_id))]
    UnknownRequest {
        /// The request.
        request_id: String,
        /// The memory bound.
        capacity: usize,
    },
    /// Still remembered but older than the TTL.
    #[error("request id {} expired (outcomes are accepted for {ttl:?})", concord::error::quote(.request_id))]
    Expired {
        /// The request.
        request_id: String,
        /// The time limit.
        ttl: Duration,
    },
    /// True label out of range.
    #[error("true label {label} out of range: the model has {classes} classes")]
    InvalidLabel {
        /// What was reported.
        label: Label,
        /// How many classes there are.
        classes: u32,
    },
    /// The ledger failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

struct Entry {
    request: RecordedRequest,
    recorded_at: Instant,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Entry>,
    /// Insertion order, oldest first; may hold ids already replaced (checked on pop).
    order: VecDeque<(String, Instant)>,
}

/// Bounded, TTL-limited map `request_id → answers`. Thread-safe; std `Mutex` because
/// every critical section is a few map operations with no `.await`.
pub struct RecentRequests {
    inner: Mutex<Inner>,
    capacity: usize,
    ttl: Duration,
}

impl std::fmt::Debug for RecentRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentRequests")
            .field("capacity", &self.capacity)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Default for RecentRequests {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY, DEFAULT_TTL)
    }
}

impl RecentRequests {
    /// Memory of at most `capacity` (≥ 1) requests, each scorable for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remembers the in-time answers of `request_id` (replacing an earlier record).
    pub fn record(&self, request_id: &str, request: RecordedRequest) {
        self.record_at(request_id, request, Instant::now());
    }

    /// [`RecentRequests::record`] with an explicit clock, for tests.
    pub fn record_at(&self, request_id: &str, request: RecordedRequest, now: Instant) {
        let mut inner = self.lock();
        let Inner { map, order } = &mut *inner;
        // Drop expired entries from the front, then make room.
        while let Some((id, at)) = order.front() {
            let stale = now.saturating_duration_since(*at) > self.ttl;
            if !stale && map.len() < self.capacity {
                break;
            }
            if map.get(id).is_some_and(|e| e.recorded_at == *at) {
                map.remove(id);
            }
            order.pop_front();
        }
        map.insert(
            request_id.to_string(),
            Entry {
                request,
                recorded_at: now,
            },
        );
        order.push_back((request_id.to_string(), now));
    }

    /// The remembered answers, or why there are none.
    pub fn lookup(&self, request_id: &str) -> Result<RecordedRequest, OutcomeError> {
        self.lookup_at(request_id, Instant::now())
    }

    /// [`RecentRequests::lookup`] with an explicit clock, for tests.
    pub fn lookup_at(
        &self,
        request_id: &str,
        now: Instant,
    ) -> Result<RecordedRequest, OutcomeError> {
        let inner = self.lock();
        match inner.map.get(request_id) {
            None => Err(OutcomeError::UnknownRequest {
                request_id: request_id.to_string(),
                capacity: self.capacity,
            }),
            Some(e) if now.saturating_duration_since(e.recorded_at) > self.ttl => {
                Err(OutcomeError::Expired {
                    request_id: request_id.to_string(),
                    ttl: self.ttl,
                })
            }
            Some(e) => Ok(e.request.clone()),
        }
    }

    /// Number of requests currently held (including expired ones not yet dropped).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What scoring did to one node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeScore {
    /// The label the node answered.
    pub predicted_label: Label,
    /// The ledger change.
    pub change: ScoreChange,
}

/// Outcome of [`report_outcome`].
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeReport {
    /// Scored now, or already before.
    pub result: ReportResult,
    /// Whether the consensus was right; `None` once the request left the memory.
    pub consensus_correct: Option<bool>,
}

/// Scored now or before.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportResult {
    /// Scored now; one entry per node that answered in time.
    Scored(Vec<NodeScore>),
    /// Scored before (by the batch ending at event `seq`); nothing changed.
    AlreadyReported {
        /// Head seq of the earlier scoring.
        seq: u64,
    },
}

/// Scores `request_id` against `true_label`: every node that answered in time, once.
///
/// Blocking (ledger flush); call it from `spawn_blocking` in async code.
pub fn report_outcome(
    ledger: &Ledger,
    recent: &RecentRequests,
    request_id: &str,
    true_label: Label,
) -> Result<OutcomeReport, OutcomeError> {
    let remembered = recent.lookup(request_id);
    let consensus_correct = |r: &RecordedRequest| r.consensus_label.map(|l| l == true_label);
    let already = |seq: u64| OutcomeReport {
        result: ReportResult::AlreadyReported { seq },
        consensus_correct: remembered.as_ref().ok().and_then(consensus_correct),
    };
    if let Some(seq) = ledger.scored_seq(request_id)? {
        return Ok(already(seq));
    }
    let request = remembered.clone()?;
    if true_label >= request.classes {
        return Err(OutcomeError::InvalidLabel {
            label: true_label,
            classes: request.classes,
        });
    }
    let outcomes: Vec<(NodeId, bool)> = request
        .answers
        .iter()
        .map(|a| (a.node_id.clone(), a.label == true_label))
        .collect();
    match ledger.score(request_id, &outcomes) {
        Ok(changes) => {
            let scores = changes
                .into_iter()
                .filter_map(|change| {
                    let answer = request
                        .answers
                        .iter()
                        .find(|a| a.node_id == change.node_id)?;
                    Some(NodeScore {
                        predicted_label: answer.label,
                        change,
                    })
                })
                .collect();
            Ok(OutcomeReport {
                result: ReportResult::Scored(scores),
                consensus_correct: consensus_correct(&request),
            })
        }
        // Lost the race against a concurrent report of the same request.
        Err(LedgerError::AlreadyScored { seq, .. }) => Ok(already(seq)),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ScoringParams;
    use std::sync::{Arc, Barrier};

    fn req(answers: &[(&str, Label)]) -> RecordedRequest {
        RecordedRequest {
            classes: 3,
            consensus_label: Some(1),
            answers: answers
                .iter()
                .map(|(n, l)| RecordedAnswer {
                    node_id: n.to_string(),
                    label: *l,
                })
                .collect(),
        }
    }

    /// Capacity evicts the oldest; TTL expires; unknown ids are reported as such.
    #[test]
    fn bounded_and_expiring() {
        let ttl = Duration::from_secs(10);
        let m = RecentRequests::new(2, ttl);
        let t0 = Instant::now();
        m.record_at("a", req(&[("n", 0)]), t0);
        m.record_at("b", req(&[("n", 1)]), t0);
        m.record_at("c", req(&[("n", 2)]), t0);
        assert_eq!(m.len(), 2);
        assert!(matches!(
            m.lookup_at("a", t0),
            Err(OutcomeError::UnknownRequest { .. })
        ));
        assert_eq!(m.lookup_at("c", t0).expect("c").answers[0].label, 2);
        let later = t0 + ttl + Duration::from_secs(1);
        assert!(matches!(
            m.lookup_at("b", later),
            Err(OutcomeError::Expired { .. })
        ));
        // Recording after the TTL drops the stale entries.
        m.record_at("d", req(&[]), later);
        assert_eq!(m.len(), 1);
        assert!(matches!(
            m.lookup_at("zzz", later),
            Err(OutcomeError::UnknownRequest { .. })
        ));
    }

    /// Re-recording an id keeps the newest record and does not evict it early.
    #[test]
    fn re_record_replaces() {
        let m = RecentRequests::new(2, DEFAULT_TTL);
        let t0 = Instant::now();
        m.record_at("a", req(&[("n", 0)]), t0);
        m.record_at("a", req(&[("n", 1)]), t0 + Duration::from_millis(1));
        m.record_at("b", req(&[]), t0 + Duration::from_millis(2));
        assert_eq!(m.lookup_at("a", t0).expect("a").answers[0].label, 1);
    }

    /// Report scores right and wrong nodes (not one that never staked), then says
    /// "already reported" on a repeat.
    #[test]
    fn report_once() {
        let ledger = Ledger::temporary(ScoringParams::default()).expect("ledger");
        for n in ["right", "wrong"] {
            ledger.stake(n, 1000).expect("stake");
        }
        let m = RecentRequests::default();
        m.record("r", req(&[("right", 1), ("wrong", 2), ("never-staked", 1)]));
        let report = report_outcome(&ledger, &m, "r", 1).expect("report");
        assert_eq!(report.consensus_correct, Some(true));
        let ReportResult::Scored(c) = report.result else {
            panic!("not scored");
        };
        assert_eq!(
            c.iter()
                .map(|c| (c.predicted_label, c.change.correct))
                .collect::<Vec<_>>(),
            vec![(1, true), (2, false)],
            "a node that never staked is not scored"
        );
        let again = report_outcome(&ledger, &m, "r", 1).expect("report");
        assert!(matches!(again.result, ReportResult::AlreadyReported { .. }));
        assert_eq!(
            ledger.account("right").expect("get").expect("exists").stake,
            1010
        );
        assert_eq!(ledger.account("never-staked").expect("get"), None);
        assert!(matches!(
            report_outcome(&ledger, &m, "nope", 1),
            Err(OutcomeError::UnknownRequest { .. })
        ));
        m.record("r2", req(&[("right", 1)]));
        assert!(matches!(
            report_outcome(&ledger, &m, "r2", 3),
            Err(OutcomeError::InvalidLabel {
                label: 3,
                classes: 3
            })
        ));
    }

    /// Concurrent reports of one request: one scores, the rest say already reported.
    #[test]
    fn concurrent_reports_count_once() {
        let ledger = Ledger::temporary(ScoringParams::default()).expect("ledger");
        for n in ["a", "b"] {
            ledger.stake(n, 1000).expect("stake");
        }
        let m = Arc::new(RecentRequests::default());
        m.record("r", req(&[("a", 0), ("b", 1)]));
        let n = 8;
        let barrier = Arc::new(Barrier::new(n));
        let handles: Vec<_> = (0..n)
            .map(|_| {
                let (ledger, m, b) = (ledger.clone(), m.clone(), barrier.clone());
                std::thread::spawn(move || {
                    b.wait();
                    report_outcome(&ledger, &m, "r", 0)
                })
            })
            .collect();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("join"))
            .collect();
        let scored = results
            .iter()
            .filter(|r| matches!(r.as_ref().map(|r| &r.result), Ok(ReportResult::Scored(_))))
            .count();
        let already = results
            .iter()
            .filter(|r| {
                matches!(
                    r.as_ref().map(|r| &r.result),
                    Ok(ReportResult::AlreadyReported { .. })
                )
            })
            .count();
        assert_eq!((scored, already), (1, n - 1), "{results:?}");
        assert_eq!(
            ledger.account("a").expect("get").expect("exists").stake,
            1010
        );
        // One mistake of a new account: the base rate, 2 % (rule v2).
        assert_eq!(
            ledger.account("b").expect("get").expect("exists").stake,
            980
        );
    }
}
