//! [`StakeBook`]: the ledger plus the memory of recent requests, shared by the consensus
//! path (`Predict`) and the `Staking` service.
//!
//! The consensus path uses it in three steps:
//! 1. [`StakeBook::standings`] before the fan-out: every node's account, or `None` for a
//!    node that never staked (nothing is opened on first sight: such a node has no
//!    weight under `trust` and `stake` and is not asked; see [`crate::ledger`]). Call a
//!    node only if [`should_ask`]`(policy, ejected)`.
//! 2. Fan out with a deadline; keep the answers that arrived in time.
//! 3. [`StakeBook::conclude`]: combine them under the policy (see [`crate::policy`]) and
//!    remember each node's label under the request id, so `ReportOutcome` can score
//!    exactly the nodes that answered in time.
//!
//! Failure behaviour: a ledger error in step 1 fails the request (`INTERNAL`); neither
//! step 1 nor step 3 writes to the disk.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::ledger::{Account, Ledger, LedgerError};
use crate::outcomes::{
    report_outcome, OutcomeError, OutcomeReport, RecentRequests, RecordedAnswer, RecordedRequest,
};
pub use crate::policy::should_ask;
use crate::policy::{
    combine, Consensus, Label, NodeAnswer, NodeId, Policy, PolicyError, ScoringParams,
};

/// Shared staking state. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StakeBook {
    ledger: Ledger,
    recent: Arc<RecentRequests>,
}

impl StakeBook {
    /// Wraps an open ledger and a request memory.
    pub fn new(ledger: Ledger, recent: RecentRequests) -> Self {
        Self {
            ledger,
            recent: Arc::new(recent),
        }
    }

    /// Opens the sled ledger at `path`; remembers `capacity` requests for `ttl`.
    pub fn open(
        path: impl AsRef<Path>,
        params: ScoringParams,
        capacity: usize,
        ttl: Duration,
    ) -> Result<Self, LedgerError> {
        Ok(Self::new(
            Ledger::open(path, params)?,
            RecentRequests::new(capacity, ttl),
        ))
    }

    /// The ledger (blocking API).
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The request memory.
    pub fn recent(&self) -> &RecentRequests {
        &self.recent
    }

    /// Accounts of `node_ids`, in order; `None` for a node that never staked. Reads only
    /// (a few reads of sled's in-memory cache, cheap enough inline on every Predict).
    pub fn standings(&self, node_ids: &[NodeId]) -> Result<Vec<Option<Account>>, LedgerError> {
        self.ledger.accounts(node_ids)
    }

    /// Combines the in-time `answers` under `policy` and remembers them for scoring.
    /// `answers` carry the trust/stake/ejected values from [`StakeBook::standings`].
    pub fn conclude(
        &self,
        request_id: &str,
        policy: Policy,
        answers: &[NodeAnswer],
    ) -> Result<Consensus, PolicyError> {
        let consensus = combine(policy, answers)?;
        let recorded = consensus
            .votes
            .iter()
            .filter_map(|v| {
                let label: Label = v.vote?;
                Some(RecordedAnswer {
                    node_id: v.node_id.clone(),
                    label,
                })
            })
            .collect();
        let classes = u32::try_from(consensus.probabilities.len()).unwrap_or(u32::MAX);
        self.recent.record(
            request_id,
            RecordedRequest {
                classes,
                consensus_label: Some(consensus.label),
                answers: recorded,
            },
        );
        Ok(consensus)
    }

    /// `ReportOutcome`: scores the nodes that answered `request_id`, once. Runs on the
    /// blocking pool.
    pub async fn report_outcome(
        &self,
        request_id: String,
        true_label: Label,
    ) -> Result<OutcomeReport, OutcomeError> {
        let book = self.clone();
        blocking(move || report_outcome(&book.ledger, &book.recent, &request_id, true_label)).await
    }
}

/// Runs blocking ledger work off the async executor.
pub(crate) async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: Send + 'static + From<LedgerError>,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(LedgerError::Storage(format!("ledger task failed: {e}")).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(a: &Account, p: &[f64]) -> NodeAnswer {
        NodeAnswer {
            node_id: a.node_id.clone(),
            probabilities: p.to_vec(),
            trust: a.trust(),
            stake: a.stake,
            ejected: a.ejected,
        }
    }

    /// Standings → conclude → report: the nodes that answered are scored, once; standings
    /// open no account for a node that never staked.
    #[tokio::test]
    async fn predict_then_report() {
        let book = StakeBook::new(
            Ledger::temporary(ScoringParams::default()).expect("ledger"),
            RecentRequests::default(),
        );
        for id in ["a", "b", "late"] {
            book.ledger().stake(id, 1000).expect("stake");
        }
        let accounts: Vec<Account> = book
            .standings(&["a".into(), "b".into(), "late".into(), "sybil".into()])
            .expect("standings")
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(accounts.len(), 3, "a node that never staked has no account");
        assert!(accounts
            .iter()
            .all(|a| should_ask(Policy::Stake, a.ejected)));
        // "late" missed the deadline: not in the answers.
        let answers = [
            answer(&accounts[0], &[0.1, 0.8, 0.1]),
            answer(&accounts[1], &[0.7, 0.2, 0.1]),
        ];
        let c = book
            .conclude("req-1", Policy::Stake, &answers)
            .expect("conclude");
        assert_eq!(c.votes.len(), 2);
        let report = book
            .report_outcome("req-1".into(), 1)
            .await
            .expect("report");
        assert_eq!(report.consensus_correct, Some(c.label == 1));
        let crate::outcomes::ReportResult::Scored(scores) = report.result else {
            panic!("not scored");
        };
        let got: Vec<_> = scores
            .iter()
            .map(|s| {
                (
                    s.change.node_id.as_str(),
                    s.predicted_label,
                    s.change.correct,
                )
            })
            .collect();
        assert_eq!(got, vec![("a", 1, true), ("b", 0, false)]);
        let late = book.ledger().account("late").expect("get").expect("exists");
        assert_eq!((late.stake, late.right + late.wrong), (1000, 0));
        assert_eq!(book.ledger().account("sybil").expect("get"), None);
    }
}
