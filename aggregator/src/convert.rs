//! pb ↔ domain conversions of the aggregator's two services (`Predictor`, `Staking`), in
//! one place: the handlers only call these, and no other file maps a wire enum.
//!
//! The one rule for `POLICY_UNSPECIFIED` is the proto's ("use the server's default"):
//! it maps to `None`, and the consensus path picks its configured default policy
//! (`stake` unless the aggregator runs without a ledger, where it is `mean`).

use concord::error::quote;
use concord::pb::predict::v1 as pb;
use concord::pb::stake::v1 as spb;
use concord_node::class_name;

use crate::consensus::{Decision, Vote, VoteStatus};
use crate::error::{Error, Result};
use crate::ledger::{Account, Event, EventKind, LedgerError, Totals, VerifyReport};
use crate::outcomes::{OutcomeReport, ReportResult};
use crate::policy::Policy;

/// The `node_id` the aggregator answers with.
pub const AGGREGATOR_NODE_ID: &str = "aggregator";

/// The request's policy; `None` for POLICY_UNSPECIFIED (the server's default, as the
/// proto says). An unknown enum value is `INVALID_ARGUMENT`.
pub fn policy_from_pb(value: i32) -> Result<Option<Policy>> {
    match pb::Policy::try_from(value) {
        Ok(pb::Policy::Unspecified) => Ok(None),
        Ok(pb::Policy::Mean) => Ok(Some(Policy::Mean)),
        Ok(pb::Policy::Trust) => Ok(Some(Policy::Trust)),
        Ok(pb::Policy::Stake) => Ok(Some(Policy::Stake)),
        Err(_) => Err(Error::InvalidArgument(format!("unknown policy {value}"))),
    }
}

/// A domain policy on the wire.
pub fn policy_to_pb(policy: Policy) -> pb::Policy {
    match policy {
        Policy::Mean => pb::Policy::Mean,
        Policy::Trust => pb::Policy::Trust,
        Policy::Stake => pb::Policy::Stake,
    }
}

/// A consensus as a `PredictResponse`.
pub fn decision_to_pb(decision: &Decision) -> pb::PredictResponse {
    pb::PredictResponse {
        label: decision.label,
        class_name: class_name(decision.label as usize).to_owned(),
        probabilities: decision.probabilities.clone(),
        node_id: AGGREGATOR_NODE_ID.to_owned(),
        model: format!(
            "consensus policy={} answered={}/{}",
            decision.policy, decision.answered, decision.asked
        ),
        request_id: decision.request_id.clone(),
        policy: policy_to_pb(decision.policy) as i32,
        votes: decision.votes.iter().map(vote_to_pb).collect(),
        answered: u32::try_from(decision.answered).unwrap_or(u32::MAX),
        asked: u32::try_from(decision.asked).unwrap_or(u32::MAX),
    }
}

fn vote_to_pb(vote: &Vote) -> pb::NodeVote {
    pb::NodeVote {
        node_id: vote.node_id.clone(),
        address: vote.address.clone(),
        status: match vote.status {
            VoteStatus::Answered => pb::VoteStatus::Answered,
            VoteStatus::TimedOut => pb::VoteStatus::TimedOut,
            VoteStatus::Failed => pb::VoteStatus::Failed,
            VoteStatus::Ejected => pb::VoteStatus::Ejected,
        } as i32,
        label: vote.label.unwrap_or_default(),
        probabilities: vote.probabilities.clone(),
        latency_ms: vote.latency.as_secs_f64() * 1000.0,
        trust: vote.trust,
        stake: vote.stake,
        weight: vote.weight,
        error: vote.error.clone().unwrap_or_default(),
    }
}

/// `reward − slashed` as the wire's signed delta (each saturating at `i64::MAX`).
fn signed_delta(reward: u64, slashed: u64) -> i64 {
    let reward = i64::try_from(reward).unwrap_or(i64::MAX);
    let slashed = i64::try_from(slashed).unwrap_or(i64::MAX);
    reward - slashed
}

/// Domain account → wire.
pub fn account_to_pb(a: &Account) -> spb::Account {
    spb::Account {
        node_id: a.node_id.clone(),
        stake: a.stake,
        trust: a.trust(),
        ejected: a.ejected,
        correct: a.right,
        wrong: a.wrong,
        last_event_seq: a.last_seq,
    }
}

/// A ledger event kind on the wire (and in the stored record, see `ledger/record.rs`).
pub fn event_kind_to_pb(kind: EventKind) -> spb::EventKind {
    match kind {
        EventKind::Grant => spb::EventKind::Grant,
        EventKind::Stake => spb::EventKind::Stake,
        EventKind::Unstake => spb::EventKind::Unstake,
        EventKind::Reward => spb::EventKind::Reward,
        EventKind::Slash => spb::EventKind::Slash,
        EventKind::Eject => spb::EventKind::Eject,
        EventKind::Rejoin => spb::EventKind::Rejoin,
    }
}

/// A wire (or stored) event kind in the domain; `None` for UNSPECIFIED or an unknown value.
pub fn event_kind_from_pb(value: i32) -> Option<EventKind> {
    match spb::EventKind::try_from(value).ok()? {
        spb::EventKind::Unspecified => None,
        spb::EventKind::Grant => Some(EventKind::Grant),
        spb::EventKind::Stake => Some(EventKind::Stake),
        spb::EventKind::Unstake => Some(EventKind::Unstake),
        spb::EventKind::Reward => Some(EventKind::Reward),
        spb::EventKind::Slash => Some(EventKind::Slash),
        spb::EventKind::Eject => Some(EventKind::Eject),
        spb::EventKind::Rejoin => Some(EventKind::Rejoin),
    }
}

/// Domain event → wire.
pub fn event_to_pb(e: &Event) -> spb::Event {
    spb::Event {
        seq: e.seq,
        at_unix_ms: i64::try_from(e.at_ms).unwrap_or(i64::MAX),
        node_id: e.node_id.clone(),
        kind: event_kind_to_pb(e.kind) as i32,
        amount: e.amount,
        stake_after: e.stake_after,
        trust_after: e.trust_after(),
        request_id: e.request_id.clone().unwrap_or_default(),
        prev_hash: e.prev_hash.clone(),
        hash: e.hash.clone(),
    }
}

/// Domain totals → wire, exactly: a sum that does not fit `uint64` is an error (the ledger
/// never writes one; only a corrupt or pre-check ledger can hold it), never a capped value.
pub fn totals_to_pb(t: &Totals, staked: u128, events: u64) -> Result<spb::Totals, LedgerError> {
    let fit = |name: &str, v: u128| {
        u64::try_from(v).map_err(|_| {
            LedgerError::Corrupt(format!(
                "{name} {v} does not fit uint64; VerifyLedger shows where the ledger went wrong"
            ))
        })
    };
    Ok(spb::Totals {
        staked: fit("total stake", staked)?,
        minted: fit("total minted", t.minted())?,
        burned: t.burned,
        deposited: t.deposited,
        withdrawn: t.withdrawn,
        events,
    })
}

/// A verify report → wire; the first inconsistency names its account, if any.
pub fn verify_to_pb(r: &VerifyReport) -> spb::VerifyLedgerResponse {
    let (first_bad_seq, problem) = match &r.first_inconsistency {
        None => (0, String::new()),
        Some(bad) => {
            let problem = match &bad.node_id {
                Some(node) => format!("{bad} (node {})", quote(node)),
                None => bad.to_string(),
            };
            (bad.seq.unwrap_or(0), problem)
        }
    };
    spb::VerifyLedgerResponse {
        ok: r.ok(),
        events_checked: r.events_checked,
        head_hash: r.head.hash.clone(),
        first_bad_seq,
        problem,
        // Replayed totals are range-checked by verify; if they still do not fit, `ok` is
        // false and `problem` says why, so leave them out rather than cap them.
        totals: totals_to_pb(&r.replayed, r.replayed_stake_sum, r.events_checked).ok(),
    }
}

/// A `ReportOutcome` result → wire: the nodes scored now, or none when it was scored
/// before (`already_reported`).
pub fn report_to_pb(report: &OutcomeReport) -> spb::ReportOutcomeResponse {
    let consensus_correct = report.consensus_correct.unwrap_or(false);
    let (already_reported, scores) = match &report.result {
        ReportResult::AlreadyReported { .. } => (true, Vec::new()),
        ReportResult::Scored(scores) => (
            false,
            scores
                .iter()
                .map(|s| spb::NodeScore {
                    node_id: s.change.node_id.clone(),
                    predicted_label: s.predicted_label,
                    correct: s.change.correct,
                    stake_delta: signed_delta(s.change.reward, s.change.slashed),
                    stake_after: s.change.stake_after,
                    trust_after: s.change.trust_after,
                    ejected: s.change.ejected,
                })
                .collect(),
        ),
    };
    spb::ReportOutcomeResponse {
        already_reported,
        scores,
        consensus_correct,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every wire policy maps to the domain and back; UNSPECIFIED is "the server's
    /// default" (`None`), never a fixed policy; unknown values are rejected.
    #[test]
    fn policies() {
        assert_eq!(
            policy_from_pb(pb::Policy::Unspecified as i32).unwrap(),
            None
        );
        for p in [Policy::Mean, Policy::Trust, Policy::Stake] {
            assert_eq!(policy_from_pb(policy_to_pb(p) as i32).unwrap(), Some(p));
        }
        assert!(matches!(policy_from_pb(42), Err(Error::InvalidArgument(_))));
    }

    /// Each ledger event kind lands on the wire kind of the same name and back;
    /// UNSPECIFIED and unknown values are no kind.
    #[test]
    fn event_kinds() {
        use strum::IntoEnumIterator;
        for kind in EventKind::iter() {
            let e = Event {
                seq: 1,
                kind,
                node_id: "n".into(),
                amount: 0,
                stake_after: 0,
                trust_after_ppb: 0,
                request_id: None,
                at_ms: 0,
                prev_hash: String::new(),
                hash: String::new(),
            };
            let wire = spb::EventKind::try_from(event_to_pb(&e).kind).expect("known kind");
            let want = format!("EVENT_KIND_{}", kind.as_str().to_uppercase());
            assert_eq!(wire.as_str_name(), want);
            assert_eq!(event_kind_from_pb(wire as i32), Some(kind));
        }
        assert_eq!(event_kind_from_pb(0), None);
        assert_eq!(event_kind_from_pb(99), None);
    }
}
