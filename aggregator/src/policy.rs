//! Consensus weighting policies, the trust update and the eject rule.
//!
//! Pure functions: no I/O, no tonic, no clock. The aggregator gathers the answers that
//! arrived before the deadline, looks up each node's trust and stake in the ledger and
//! calls [`combine`]; the ledger calls [`update_trust`], [`slash_amount`] and
//! [`below_minimum`] while scoring an outcome.
//!
//! # Combining
//!
//! Every answer is a probability vector `pᵢ` over the classes. Its *vote* is `argmax pᵢ`
//! (lowest index on a tie). The raw weight `wᵢ` depends on the policy:
//!
//! | policy  | `wᵢ`      | ejected or never-staked nodes |
//! |---------|-----------|-------------------------------|
//! | `mean`  | `1`       | counted (plain unweighted baseline) |
//! | `trust` | `tᵢ`      | weight 0 |
//! | `stake` | `tᵢ · sᵢ` | weight 0 (default policy) |
//!
//! A node that never staked has no ledger account (nothing is minted on first sight), so
//! under `trust` and `stake` it has no weight until a `Stake` made with its credential
//! lifts it to `min_stake`. `mean` is the unweighted baseline: every answering node counts
//! equally by definition, so it has **no sybil resistance** — a hundred registered node
//! ids are a hundred votes. What keeps sybils out of `mean` is the registry, which only
//! accepts a node id with that node's credential.
//!
//! The consensus is `P = Σ wᵢ pᵢ / Σ wᵢ` and its label is `argmax P`. The weight
//! reported per node is the normalised share `wᵢ / Σ wⱼ` (the shares sum to 1).
//!
//! Invariants and failure behaviour:
//! - Each node's vector is renormalised to sum to 1 before combining, so a node cannot
//!   gain influence by inflating its numbers. A vector with a negative or non-finite
//!   entry, an all-zero vector, or one whose length differs from the majority length is
//!   *excluded* (weight 0, reason reported) instead of failing the whole request: a
//!   faulty node must never be able to deny consensus to the others.
//! - If no answer has a positive weight (none answered, all ejected, all trust 0),
//!   [`combine`] returns [`PolicyError::NoEligibleAnswers`]; the caller maps it to
//!   `UNAVAILABLE`.
//!
//! # Trust and slashing (applied by the ledger on `ReportOutcome`)
//!
//! - Trust is an exponential moving average of correctness, `t₀ = 0.5`:
//!   right: `t ← t + α(1 − t)`, wrong: `t ← t(1 − α)`. It stays in `[0, 1]`.
//! - Right: `s ← s + reward`. Wrong: `s ← s − ⌈s · f / 10 000⌉` (never below 0; the
//!   ceiling makes a small stake reach 0 instead of stalling at a remainder). The slash
//!   rate `f` escalates with the node's error rate `e = wrong / (right + wrong + 20)`,
//!   counted before this answer (rule v2, [`slash_rate_bps`]):
//!   `f = slash_bps + escalation_bps · e²`, at most 10 000 — by default 2 % + 4·e².
//!
//!   Why (rule v1 was a flat 10 %): a node's stake settles where what it earns equals
//!   what it loses, `reward · p = (1 − p) · f · s`. With a flat `f`, a liar right 76 % of
//!   the time (`intermittent:0.2`) settles at a third of its deposit and keeps a third of
//!   its weight; and an honest node's stake jumps by 10 % at each of its rare mistakes,
//!   so two equally good honest nodes drift apart (2–3× in 600 rounds) and the heavier
//!   one's mistakes carry the consensus. Escalating with `e²` separates the two cases:
//!   an honest node at 95 % pays about 3 % per mistake (smooth, near-linear growth), the
//!   intermittent liar about 25 % and falls under `min_stake`; a sleeper that turns
//!   liar sees its rate climb with every lie. The `e` has a prior of 20 answers so a
//!   new account's first mistakes are not an error rate of 1. Figures: `simulation.rs`
//!   and docs/ARCHITECTURE.md ("Adaptive liars").
//! - A node with `s < min_stake` is ejected from the weighted policies until it stakes
//!   again (the `Stake` call, not a reward, brings it back).
//!
//! Non-goals: no time decay of trust, no per-class trust.

use std::fmt;
use std::str::FromStr;

use strum::IntoEnumIterator;

/// Identifies a node (its registry instance id).
pub type NodeId = String;
/// Token amount. Integer on purpose: money is never a float.
pub type Stake = u64;
/// Trust in `[0, 1]`.
pub type Trust = f64;
/// Class index into a probability vector.
pub type Label = u32;

/// Trust of a node never scored before.
pub const INITIAL_TRUST: Trust = 0.5;
/// Denominator of [`ScoringParams::slash_bps`].
pub const BASIS_POINTS: u64 = 10_000;

/// How answers are weighted. Chosen per request. Its snake-case name (`mean`, `trust`,
/// `stake`) is the name flags, metrics and logs use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, strum::IntoStaticStr, strum::EnumIter)]
#[strum(serialize_all = "snake_case")]
pub enum Policy {
    /// Plain average of every answer; the baseline whose weights ignore trust and stake
    /// (and so has no sybil resistance: every registered node counts).
    Mean,
    /// Weight `tᵢ`: history of correctness only.
    Trust,
    /// Weight `tᵢ · sᵢ`: correctness times skin in the game.
    #[default]
    Stake,
}

impl Policy {
    /// The wire name (`mean`, `trust`, `stake`).
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = PolicyError;

    /// Case-insensitive; the empty string means the default (`stake`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.trim();
        if name.is_empty() {
            return Ok(Policy::default());
        }
        Policy::iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| PolicyError::UnknownPolicy(s.to_string()))
    }
}

/// Errors of the pure consensus step.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// The request named a policy we do not know (caller error).
    #[error("unknown policy {}; expected mean, trust or stake", concord::error::quote(.0))]
    UnknownPolicy(String),
    /// Nothing with positive weight to combine (no answers, all ejected or excluded).
    #[error("no eligible answers to combine ({answers} answers, all excluded or weight 0)")]
    NoEligibleAnswers {
        /// How many answers were offered.
        answers: usize,
    },
}

/// One node's answer plus what the ledger knows about it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeAnswer {
    /// Who answered.
    pub node_id: NodeId,
    /// Class probabilities as sent by the node (renormalised by [`combine`]).
    pub probabilities: Vec<f64>,
    /// Trust from the ledger.
    pub trust: Trust,
    /// Stake from the ledger.
    pub stake: Stake,
    /// Ejected nodes get weight 0 under `trust` and `stake`.
    pub ejected: bool,
}

/// Why an answer got weight 0 regardless of policy arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    /// Below the minimum stake; only under `trust`/`stake`.
    Ejected,
    /// Negative/non-finite entries or all zeros.
    InvalidProbabilities,
    /// Vector length differs from the majority of answers.
    WrongClassCount,
}

impl Exclusion {
    /// Short machine-friendly reason for replies and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Exclusion::Ejected => "ejected",
            Exclusion::InvalidProbabilities => "invalid probabilities",
            Exclusion::WrongClassCount => "wrong class count",
        }
    }
}

/// One node's part in the consensus, as shown in the reply.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedVote {
    /// Who answered.
    pub node_id: NodeId,
    /// Trust used for the weight.
    pub trust: Trust,
    /// Stake used for the weight.
    pub stake: Stake,
    /// Normalised share of the consensus in `[0, 1]`; shares sum to 1.
    pub weight: f64,
    /// The node's own label (`argmax`), `None` if its vector was unusable.
    pub vote: Option<Label>,
    /// Renormalised probabilities (empty if unusable).
    pub probabilities: Vec<f64>,
    /// Set when the answer was forced to weight 0.
    pub excluded: Option<Exclusion>,
}

/// Result of [`combine`].
#[derive(Debug, Clone, PartialEq)]
pub struct Consensus {
    /// Policy that produced it.
    pub policy: Policy,
    /// Combined class probabilities (sum to 1).
    pub probabilities: Vec<f64>,
    /// `argmax` of `probabilities`.
    pub label: Label,
    /// One entry per input answer, same order.
    pub votes: Vec<WeightedVote>,
}

/// Index of the largest entry; the lowest index wins a tie. `None` for an empty slice.
pub fn argmax(values: &[f64]) -> Option<Label> {
    let mut best: Option<(usize, f64)> = None;
    for (i, &v) in values.iter().enumerate() {
        match best {
            Some((_, b)) if v <= b => {}
            _ => best = Some((i, v)),
        }
    }
    best.and_then(|(i, _)| Label::try_from(i).ok())
}

/// Renormalises to sum 1; `None` if any entry is negative/non-finite or all are zero.
fn normalise(p: &[f64]) -> Option<Vec<f64>> {
    if p.is_empty() || p.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return None;
    }
    let sum: f64 = p.iter().sum();
    if sum <= 0.0 || !sum.is_finite() {
        return None;
    }
    Some(p.iter().map(|v| v / sum).collect())
}

/// The most common vector length among answers (longer wins a tie).
fn majority_len(answers: &[NodeAnswer]) -> usize {
    let mut counts: Vec<(usize, usize)> = Vec::new();
    for a in answers {
        let len = a.probabilities.len();
        match counts.iter_mut().find(|(l, _)| *l == len) {
            Some((_, c)) => *c += 1,
            None => counts.push((len, 1)),
        }
    }
    counts
        .into_iter()
        .max_by_key(|&(len, count)| (count, len))
        .map_or(0, |(len, _)| len)
}

/// Whether the aggregator should call a node at all: ejected nodes are skipped under
/// `trust` and `stake` (their weight would be 0) but asked under `mean`, the baseline
/// whose weights ignore the ledger.
pub fn should_ask(policy: Policy, ejected: bool) -> bool {
    policy == Policy::Mean || !ejected
}

/// Raw (unnormalised) weight of one eligible answer under `policy`.
pub fn raw_weight(policy: Policy, trust: Trust, stake: Stake) -> f64 {
    let trust = if trust.is_finite() {
        trust.clamp(0.0, 1.0)
    } else {
        0.0
    };
    match policy {
        Policy::Mean => 1.0,
        Policy::Trust => trust,
        // u64 → f64 loses precision only above 2^53 tokens; weights are relative anyway.
        Policy::Stake => trust * stake as f64,
    }
}

/// Combines the answers under `policy`. See the module docs for the formula.
pub fn combine(policy: Policy, answers: &[NodeAnswer]) -> Result<Consensus, PolicyError> {
    let classes = majority_len(answers);
    let mut votes = Vec::with_capacity(answers.len());
    let mut raw = Vec::with_capacity(answers.len());
    for a in answers {
        let normalised = if a.probabilities.len() != classes {
            Err(Exclusion::WrongClassCount)
        } else {
            normalise(&a.probabilities).ok_or(Exclusion::InvalidProbabilities)
        };
        let (probabilities, mut excluded) = match normalised {
            Ok(p) => (p, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        if excluded.is_none() && a.ejected && policy != Policy::Mean {
            excluded = Some(Exclusion::Ejected);
        }
        let w = if excluded.is_some() {
            0.0
        } else {
            raw_weight(policy, a.trust, a.stake)
        };
        raw.push(w);
        votes.push(WeightedVote {
            node_id: a.node_id.clone(),
            trust: a.trust,
            stake: a.stake,
            weight: 0.0,
            vote: argmax(&probabilities),
            probabilities,
            excluded,
        });
    }
    let total: f64 = raw.iter().sum();
    if total <= 0.0 || !total.is_finite() {
        return Err(PolicyError::NoEligibleAnswers {
            answers: answers.len(),
        });
    }
    let mut combined = vec![0.0; classes];
    for (v, w) in votes.iter_mut().zip(&raw) {
        v.weight = w / total;
        if v.weight > 0.0 {
            for (c, p) in combined.iter_mut().zip(&v.probabilities) {
                *c += v.weight * p;
            }
        }
    }
    // Non-empty: total > 0 implies at least one eligible answer of length `classes` ≥ 1.
    let label = argmax(&combined).expect("combined has at least one class");
    Ok(Consensus {
        policy,
        probabilities: combined,
        label,
        votes,
    })
}

/// Stake a node deposits for itself at start-up in `concord up` and the simulations
/// (`concord node --initial-stake`, whose own default is 0). The ledger mints nothing for
/// a new node: this is a deposit made with the node's credential, paid once.
pub const DEFAULT_INITIAL_STAKE: Stake = 1_000;

/// Answers of benefit of the doubt in the error rate of [`slash_rate_bps`]: a new
/// account's few early mistakes do not count as a high error rate.
pub const ERROR_RATE_PRIOR: u64 = 20;

/// Largest [`ScoringParams::escalation_bps`]: ten times the stake at an error rate of 1,
/// so the escalation alone reaches the whole stake at an error rate of about 0.32.
pub const MAX_ESCALATION_BPS: u64 = 10 * BASIS_POINTS;

/// Scoring knobs. Defaults are justified by the simulation test in `simulation.rs`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoringParams {
    /// Below this stake a node is ejected from the weighted policies.
    pub min_stake: Stake,
    /// Tokens minted for a right answer.
    pub reward: Stake,
    /// Share of the current stake burned for a wrong answer, in basis points (1/10 000).
    pub slash_bps: u64,
    /// Extra slash at an error rate of 1, scaled by the squared error rate, in basis
    /// points (0: a flat rate, rule v1); see [`slash_rate_bps`].
    pub escalation_bps: u64,
    /// EMA rate of the trust update, in `(0, 1]`.
    pub alpha: f64,
}

impl Default for ScoringParams {
    fn default() -> Self {
        Self {
            min_stake: 100,
            reward: 10,
            slash_bps: 200,
            escalation_bps: 40_000,
            alpha: 0.1,
        }
    }
}

impl ScoringParams {
    /// Rejects knobs that would break the invariants (called at startup).
    pub fn validate(&self) -> Result<(), String> {
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err(format!("alpha must be in (0, 1], got {}", self.alpha));
        }
        if self.slash_bps > BASIS_POINTS {
            return Err(format!(
                "slash fraction must be at most {BASIS_POINTS} basis points, got {}",
                self.slash_bps
            ));
        }
        if self.escalation_bps > MAX_ESCALATION_BPS {
            return Err(format!(
                "slash escalation must be at most {MAX_ESCALATION_BPS} basis points, got {}",
                self.escalation_bps
            ));
        }
        Ok(())
    }
}

/// Converts a slash fraction such as `0.1` (a flag) to basis points, rejecting values
/// outside `[0, 1]` or finer than one basis point.
pub fn slash_bps_from_fraction(fraction: f64) -> Result<u64, String> {
    if !(0.0..=1.0).contains(&fraction) {
        return Err(format!("slash fraction must be in [0, 1], got {fraction}"));
    }
    let bps = fraction * BASIS_POINTS as f64;
    if (bps - bps.round()).abs() > 1e-6 {
        return Err(format!(
            "slash fraction {fraction} is finer than one basis point"
        ));
    }
    // In [0, 10 000] after the checks above.
    Ok(bps.round() as u64)
}

/// Converts an escalation factor such as `4.0` (a flag) to basis points, rejecting values
/// outside `[0, 10]` or finer than one basis point.
pub fn escalation_bps_from_factor(factor: f64) -> Result<u64, String> {
    let max = MAX_ESCALATION_BPS as f64 / BASIS_POINTS as f64;
    if !(0.0..=max).contains(&factor) {
        return Err(format!(
            "slash escalation must be in [0, {max}], got {factor}"
        ));
    }
    let bps = factor * BASIS_POINTS as f64;
    if (bps - bps.round()).abs() > 1e-6 {
        return Err(format!(
            "slash escalation {factor} is finer than one basis point"
        ));
    }
    // In [0, MAX_ESCALATION_BPS] after the checks above.
    Ok(bps.round() as u64)
}

/// EMA trust update: right `t + α(1 − t)`, wrong `t(1 − α)`; result clamped to `[0, 1]`.
pub fn update_trust(trust: Trust, correct: bool, alpha: f64) -> Trust {
    let t = if trust.is_finite() {
        trust.clamp(0.0, 1.0)
    } else {
        INITIAL_TRUST
    };
    let next = if correct {
        t + alpha * (1.0 - t)
    } else {
        t * (1.0 - alpha)
    };
    next.clamp(0.0, 1.0)
}

/// Slash rate (basis points) for a node's next wrong answer, given its record *before*
/// it: `slash_bps + escalation_bps · e²` with `e = wrong / (right + wrong +
/// ERROR_RATE_PRIOR)`, at most 10 000 (rule v2). Integer arithmetic (rounded down), so
/// the ledger's amounts are exact.
pub fn slash_rate_bps(params: &ScoringParams, right: u64, wrong: u64) -> u64 {
    let answers = u128::from(right) + u128::from(wrong) + u128::from(ERROR_RATE_PRIOR);
    let wrong = u128::from(wrong);
    let extra = u128::from(params.escalation_bps) * wrong * wrong / (answers * answers);
    // extra ≤ escalation_bps because wrong < answers.
    (params.slash_bps + u64::try_from(extra).unwrap_or(BASIS_POINTS)).min(BASIS_POINTS)
}

/// Tokens burned for a wrong answer: `⌈stake · bps / 10 000⌉`, at most `stake`.
pub fn slash_amount(stake: Stake, slash_bps: u64) -> Stake {
    let bps = u128::from(slash_bps.min(BASIS_POINTS));
    let num = u128::from(stake) * bps;
    let amount = num.div_ceil(u128::from(BASIS_POINTS));
    // amount ≤ stake because bps ≤ 10 000, so the conversion cannot fail.
    Stake::try_from(amount).map_or(stake, |a| a.min(stake))
}

/// The eject rule: a node is out of the weighted consensus while `stake < min_stake`.
pub fn below_minimum(stake: Stake, min_stake: Stake) -> bool {
    stake < min_stake
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(id: &str, p: &[f64], trust: f64, stake: u64) -> NodeAnswer {
        NodeAnswer {
            node_id: id.to_string(),
            probabilities: p.to_vec(),
            trust,
            stake,
            ejected: false,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// The three policies on hand-made answers: each picks the label its weights favour.
    #[test]
    fn policies_on_hand_made_answers() {
        // Two low-trust, low-stake nodes say class 0; one trusted rich node says class 2;
        // one trusted poor node says class 1.
        let answers = vec![
            answer("a", &[0.9, 0.05, 0.05], 0.2, 100),
            answer("b", &[0.8, 0.1, 0.1], 0.2, 100),
            answer("c", &[0.1, 0.1, 0.8], 0.9, 5_000),
            answer("d", &[0.1, 0.8, 0.1], 0.95, 10),
        ];
        let cases = [
            // mean: (0.9+0.8+0.1+0.1)/4 = 0.475 for class 0 wins.
            (Policy::Mean, 0, [0.25, 0.25, 0.25, 0.25]),
            // trust: weights .2,.2,.9,.95 / 2.25; class1 = (.02+.09+.76)/2.25 wins.
            (
                Policy::Trust,
                1,
                [0.2 / 2.25, 0.2 / 2.25, 0.9 / 2.25, 0.95 / 2.25],
            ),
            // stake: weights 20,20,4500,9.5; class 2 wins.
            (
                Policy::Stake,
                2,
                [20.0 / 4549.5, 20.0 / 4549.5, 4500.0 / 4549.5, 9.5 / 4549.5],
            ),
        ];
        for (policy, label, weights) in cases {
            let c = combine(policy, &answers).expect("combine");
            assert_eq!(c.label, label, "{policy}");
            for (v, w) in c.votes.iter().zip(weights) {
                assert!(
                    close(v.weight, w),
                    "{policy} {}: {} vs {w}",
                    v.node_id,
                    v.weight
                );
            }
            assert!(close(c.probabilities.iter().sum::<f64>(), 1.0));
            let votes: Vec<_> = c.votes.iter().map(|v| v.vote).collect();
            assert_eq!(votes, vec![Some(0), Some(0), Some(2), Some(1)]);
        }
    }

    /// Mean probabilities are the plain average of the renormalised vectors.
    #[test]
    fn mean_is_plain_average_after_renormalising() {
        let answers = vec![
            answer("a", &[2.0, 0.0], 0.0, 0), // renormalised to [1, 0]
            answer("b", &[0.0, 1.0], 1.0, 1),
        ];
        let c = combine(Policy::Mean, &answers).expect("combine");
        assert!(close(c.probabilities[0], 0.5) && close(c.probabilities[1], 0.5));
        assert_eq!(c.label, 0, "tie goes to the lowest index");
    }

    /// Ejected and malformed answers get weight 0 and a reason; they never fail the request.
    #[test]
    fn exclusions() {
        let mut ejected = answer("e", &[0.0, 1.0, 0.0], 1.0, 50);
        ejected.ejected = true;
        let answers = vec![
            answer("ok", &[0.6, 0.3, 0.1], 0.5, 1000),
            ejected,
            answer("nan", &[f64::NAN, 0.5, 0.5], 1.0, 1000),
            answer("neg", &[-1.0, 1.0, 1.0], 1.0, 1000),
            answer("zero", &[0.0, 0.0, 0.0], 1.0, 1000),
            answer("short", &[1.0, 0.0], 1.0, 1000),
        ];
        let c = combine(Policy::Stake, &answers).expect("combine");
        let got: Vec<_> = c.votes.iter().map(|v| (v.weight, v.excluded)).collect();
        assert_eq!(
            got,
            vec![
                (1.0, None),
                (0.0, Some(Exclusion::Ejected)),
                (0.0, Some(Exclusion::InvalidProbabilities)),
                (0.0, Some(Exclusion::InvalidProbabilities)),
                (0.0, Some(Exclusion::InvalidProbabilities)),
                (0.0, Some(Exclusion::WrongClassCount)),
            ]
        );
        assert_eq!(c.label, 0);
        // Under mean the ejected node still counts (baseline ignores the ledger).
        let m = combine(Policy::Mean, &answers).expect("combine");
        assert!(close(m.votes[1].weight, 0.5));
        assert_eq!(m.votes[1].excluded, None);
    }

    /// Nothing with positive weight is an error, not a made-up answer.
    #[test]
    fn no_eligible_answers() {
        let mut e = answer("e", &[1.0, 0.0], 1.0, 10);
        e.ejected = true;
        let cases: Vec<(Policy, Vec<NodeAnswer>)> = vec![
            (Policy::Stake, vec![]),
            (Policy::Mean, vec![]),
            (Policy::Stake, vec![e.clone()]),
            (Policy::Trust, vec![answer("z", &[1.0, 0.0], 0.0, 10)]),
            (Policy::Stake, vec![answer("z", &[1.0, 0.0], 1.0, 0)]),
        ];
        for (policy, answers) in cases {
            assert!(matches!(
                combine(policy, &answers),
                Err(PolicyError::NoEligibleAnswers { .. })
            ));
        }
        assert!(combine(Policy::Mean, &[e]).is_ok());
    }

    /// Policy names parse case-insensitively; empty means the default.
    #[test]
    fn policy_names() {
        let cases = [
            ("", Some(Policy::Stake)),
            ("stake", Some(Policy::Stake)),
            ("Trust", Some(Policy::Trust)),
            (" MEAN ", Some(Policy::Mean)),
            ("median", None),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<Policy>().ok(), want, "{s:?}");
        }
        assert_eq!(Policy::default(), Policy::Stake);
    }

    /// The EMA moves toward 1 when right and toward 0 when wrong, within [0, 1].
    #[test]
    fn trust_update() {
        let cases = [
            (0.5, true, 0.1, 0.55),
            (0.5, false, 0.1, 0.45),
            (1.0, true, 0.1, 1.0),
            (0.0, false, 0.1, 0.0),
            (0.9, false, 1.0, 0.0),
            (0.2, true, 1.0, 1.0),
            (f64::NAN, true, 0.1, 0.55),
            (7.0, false, 0.5, 0.5),
        ];
        for (t, correct, alpha, want) in cases {
            let got = update_trust(t, correct, alpha);
            assert!(close(got, want), "{t} {correct} {alpha}: {got} vs {want}");
        }
    }

    /// Slashing rounds up, never exceeds the stake and never overflows.
    #[test]
    fn slash_amounts() {
        let cases = [
            (1000, 1000, 100),
            (1001, 1000, 101),
            (5, 1000, 1),
            (1, 1000, 1),
            (0, 1000, 0),
            (1000, 0, 0),
            (1000, 10_000, 1000),
            (1000, 99_999, 1000),
            (u64::MAX, 10_000, u64::MAX),
        ];
        for (stake, bps, want) in cases {
            assert_eq!(slash_amount(stake, bps), want, "{stake} {bps}");
        }
    }

    /// The slash rate starts at `slash_bps` and escalates with the error rate (table-driven).
    #[test]
    fn slash_rate_escalates_with_errors() {
        let p = ScoringParams::default();
        let flat = ScoringParams {
            escalation_bps: 0,
            ..p
        };
        let cases = [
            // (params, right, wrong, bps)
            (p, 0, 0, 200),         // first mistake of a new account: the base rate
            (p, 0, 1, 290),         // e = 1/21: 40 000 / 441 on top
            (p, 95, 5, 269),        // honest at 95 %: e = 5/120
            (p, 76, 24, 1_800),     // intermittent liar: e = 24/120
            (p, 0, 10_000, 10_000), // capped at the whole stake
            (flat, 76, 24, 200),
            (flat, 0, 0, 200),
        ];
        for (params, right, wrong, want) in cases {
            assert_eq!(
                slash_rate_bps(&params, right, wrong),
                want,
                "{right}/{wrong} {params:?}"
            );
        }
        assert!(ScoringParams {
            escalation_bps: MAX_ESCALATION_BPS + 1,
            ..p
        }
        .validate()
        .is_err());
        assert_eq!(escalation_bps_from_factor(4.0), Ok(40_000));
        assert!(escalation_bps_from_factor(10.5).is_err());
        assert!(escalation_bps_from_factor(0.00001).is_err());
    }

    /// The defaults are internally consistent and bad knobs are rejected.
    #[test]
    fn params_validation() {
        assert!(ScoringParams::default().validate().is_ok());
        let bad = [
            ScoringParams {
                alpha: 0.0,
                ..Default::default()
            },
            ScoringParams {
                alpha: 1.5,
                ..Default::default()
            },
            ScoringParams {
                slash_bps: 10_001,
                ..Default::default()
            },
        ];
        for p in bad {
            assert!(p.validate().is_err(), "{p:?}");
        }
        assert!(below_minimum(99, 100) && !below_minimum(100, 100));
        assert_eq!(slash_bps_from_fraction(0.1), Ok(1000));
        assert_eq!(slash_bps_from_fraction(1.0), Ok(10_000));
        assert!(slash_bps_from_fraction(1.5).is_err());
        assert!(slash_bps_from_fraction(0.00001).is_err());
        assert!(should_ask(Policy::Mean, true) && !should_ask(Policy::Stake, true));
    }
}
