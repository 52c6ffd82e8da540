//! pb ↔ domain conversions of the aggregator's Predictor service, in one place.

use concord::pb::predict::v1 as pb;
use concord_node::class_name;

use crate::consensus::{Decision, Vote, VoteStatus};
use crate::error::{Error, Result};
use crate::policy::Policy;

/// The `node_id` the aggregator answers with.
pub const AGGREGATOR_NODE_ID: &str = "aggregator";

/// The request's policy; `None` for POLICY_UNSPECIFIED (use the default). An unknown enum
/// value is `INVALID_ARGUMENT`.
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every wire policy maps to the domain and back; unknown values are rejected.
    #[test]
    fn policies() {
        assert_eq!(policy_from_pb(0).unwrap(), None);
        for p in [Policy::Mean, Policy::Trust, Policy::Stake] {
            assert_eq!(policy_from_pb(policy_to_pb(p) as i32).unwrap(), Some(p));
        }
        assert!(matches!(policy_from_pb(42), Err(Error::InvalidArgument(_))));
    }
}
