//! Socket-free simulation of consensus + scoring, the library half of `concord simulate`.
//!
//! [`run_rounds`] plays one policy against a real [`Ledger`] (temporary sled db). Every
//! node first stakes its initial stake itself, as `concord node --initial-stake` does (the
//! ledger mints nothing for a new node); then each round gets the true label and every node's answer from a caller-supplied source, drops
//! the answers of nodes the policy would not ask (ejected nodes under `trust`/`stake`),
//! combines the rest with [`StakeBook::conclude`] exactly like the aggregator, and reports
//! the true label through [`StakeBook::report_outcome`]'s blocking twin. [`run`] does that
//! for the three policies, each on a fresh ledger with the same seed, using synthetic
//! nodes; `tests/staking_models.rs` drives it with the real KNN nodes instead.
//!
//! Node behaviours:
//! - [`Behaviour::Honest`]`(accuracy)`: with probability `accuracy` puts 0.8 on the true
//!   class (the rest spread evenly); otherwise 0.6 on a random wrong class.
//! - [`Behaviour::Inverted`]: colluding liars — every inverted node puts 0.9 on the same
//!   wrong class, `(true + 1) mod classes`.
//!
//! Deterministic for a given seed (a private SplitMix64, no global RNG).
//!
//! Figures with the default knobs (α = 0.1, reward 10, slash 10 %, min stake 100, every
//! node staking 1000 for itself at the start, 300 rounds, seeds 1, 2, 3, 42, 2026):
//! - 2 honest (95 %) + 3 colluding inverted: `mean` 0.00 in every seed; `stake` over the
//!   last 100 rounds 0.96–1.00 (overall 0.977–0.993); `trust` 0.99–1.00. Liars fall
//!   under the minimum after 22 wrong answers (1000·0.9²² < 100), are ejected, no longer
//!   asked, and end at stake 94 (9.4 % of the start) and trust 0.05; honest nodes end at
//!   1069–2497. (Under `mean` ejected liars are still asked and slashed to 0.)
//! - 5 honest at 95 %, or at 97/95/93/92/90 %: all three policies 1.00.
//!
//! IMPLEMENTATION CAVEATS: at equilibrium an honest node's stake is about
//! `reward · p / ((1 − p) · slash)` (≈ 1900 at p = 0.95), i.e. proportional to its odds
//! of being right, so `stake` concentrates weight on the best nodes more sharply than the
//! optimal log-odds weighting. With very uneven honest nodes (95/90/85/80/75 %) and
//! independent errors, `stake` scores 0.987–0.993 where `mean` scores 0.997–1.00. The
//! issue fixes the weight as `t·s`, so we keep it and document the trade-off.

use std::time::Duration;

use crate::book::StakeBook;
use crate::ledger::Account;
use crate::ledger::{Ledger, LedgerError};
use crate::outcomes::{report_outcome, OutcomeError, RecentRequests};
use crate::policy::{
    should_ask, Label, NodeAnswer, NodeId, Policy, ScoringParams, Stake, DEFAULT_INITIAL_STAKE,
    INITIAL_TRUST,
};

/// How a synthetic node answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behaviour {
    /// Right with this probability.
    Honest(f64),
    /// Always wrong, agreeing with the other inverted nodes.
    Inverted,
}

/// Synthetic simulation set-up.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Rounds to play.
    pub rounds: usize,
    /// Accuracy is also reported over the last `window` rounds.
    pub window: usize,
    /// Number of classes (Iris: 3).
    pub classes: u32,
    /// One entry per node.
    pub nodes: Vec<Behaviour>,
    /// RNG seed.
    pub seed: u64,
    /// Scoring knobs for the ledger.
    pub params: ScoringParams,
    /// What every node stakes for itself before the first round.
    pub initial_stake: Stake,
}

impl SimConfig {
    /// The acceptance scenario: `honest` nodes at 95 % and `faulty` colluding inverted
    /// nodes, 300 rounds, last-100 window, default scoring knobs.
    pub fn scenario(honest: usize, faulty: usize, seed: u64) -> Self {
        let mut nodes = vec![Behaviour::Honest(0.95); honest];
        nodes.extend(std::iter::repeat_n(Behaviour::Inverted, faulty));
        Self {
            rounds: 300,
            window: 100,
            classes: 3,
            nodes,
            seed,
            params: ScoringParams::default(),
            initial_stake: DEFAULT_INITIAL_STAKE,
        }
    }
}

/// One round: the truth and what each node said (`None`: no answer in time).
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    /// The true label.
    pub truth: Label,
    /// One entry per node, in node order.
    pub answers: Vec<Option<Vec<f64>>>,
}

/// One node at the end of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimNode {
    /// The node.
    pub node_id: NodeId,
    /// Stake at the start.
    pub initial_stake: Stake,
    /// Stake at the end.
    pub final_stake: Stake,
    /// Trust at the end.
    pub final_trust: f64,
    /// Ejected at the end.
    pub ejected: bool,
}

/// Result of one policy's run.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRun {
    /// The policy.
    pub policy: Policy,
    /// Right answers / rounds (a round with no eligible answer counts as wrong).
    pub accuracy: f64,
    /// Same over the last `window` rounds.
    pub window_accuracy: f64,
    /// Per node, in node order.
    pub nodes: Vec<SimNode>,
    /// Whether `VerifyLedger` passed at the end.
    pub ledger_ok: bool,
}

/// Result of [`run`]: `mean`, `trust`, `stake`, in that order.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReport {
    /// One run per policy.
    pub runs: Vec<PolicyRun>,
}

impl SimReport {
    /// The run of `policy`.
    pub fn run(&self, policy: Policy) -> Option<&PolicyRun> {
        self.runs.iter().find(|p| p.policy == policy)
    }
}

/// Errors of a simulation run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Ledger failure.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Scoring failure.
    #[error(transparent)]
    Outcome(#[from] OutcomeError),
    /// Nonsense configuration or round.
    #[error("invalid simulation: {0}")]
    Config(String),
}

/// SplitMix64: tiny, deterministic, good enough for simulations.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (n ≥ 1).
    fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % u64::from(n)) as u32
    }
}

/// A vector with `peak` on `label` and the rest spread evenly.
fn peaked(classes: u32, label: u32, peak: f64) -> Vec<f64> {
    let rest = (1.0 - peak) / f64::from(classes - 1);
    (0..classes)
        .map(|c| if c == label { peak } else { rest })
        .collect()
}

/// A node's account, or what a node that never staked looks like (stake 0, trust 0.5,
/// out of the weighted policies).
fn account_or_unstaked(node_id: &str, account: Option<Account>) -> Account {
    account.unwrap_or_else(|| Account {
        node_id: node_id.to_string(),
        stake: 0,
        trust_ppb: crate::ledger::trust_to_ppb(INITIAL_TRUST),
        ejected: true,
        right: 0,
        wrong: 0,
        last_seq: 0,
    })
}

/// Every node's account (or its unstaked stand-in), in order.
fn standings(book: &StakeBook, node_ids: &[NodeId]) -> Result<Vec<Account>, LedgerError> {
    Ok(node_ids
        .iter()
        .zip(book.standings(node_ids)?)
        .map(|(id, a)| account_or_unstaked(id, a))
        .collect())
}

/// Plays `rounds` rounds of `policy` for `node_ids` on a fresh temporary ledger, after
/// each node staked `initial_stake` for itself (0: nobody stakes); `play` supplies each
/// round. Blocking (ledger flushes).
pub fn run_rounds(
    node_ids: &[NodeId],
    policy: Policy,
    rounds: usize,
    window: usize,
    params: ScoringParams,
    initial_stake: Stake,
    mut play: impl FnMut(usize) -> Round,
) -> Result<PolicyRun, SimError> {
    if node_ids.is_empty() {
        return Err(SimError::Config("need at least one node".into()));
    }
    let book = StakeBook::new(
        Ledger::temporary(params)?,
        RecentRequests::new(rounds.max(1), Duration::from_secs(3600)),
    );
    if initial_stake > 0 {
        for id in node_ids {
            book.ledger().stake(id, initial_stake)?;
        }
    }
    let initial = standings(&book, node_ids)?;
    let window_start = rounds.saturating_sub(window);
    let (mut right, mut window_right) = (0usize, 0usize);
    for round in 0..rounds {
        let Round { truth, answers } = play(round);
        if answers.len() != node_ids.len() {
            return Err(SimError::Config(format!(
                "round {round}: {} answers for {} nodes",
                answers.len(),
                node_ids.len()
            )));
        }
        let accounts = standings(&book, node_ids)?;
        let answers: Vec<NodeAnswer> = accounts
            .into_iter()
            .zip(answers)
            .filter(|(a, _)| should_ask(policy, a.ejected))
            .filter_map(|(a, p)| {
                Some(NodeAnswer {
                    probabilities: p?,
                    trust: a.trust(),
                    stake: a.stake,
                    ejected: a.ejected,
                    node_id: a.node_id,
                })
            })
            .collect();
        let request_id = format!("sim-{policy}-{round}");
        // No eligible answer: the aggregator replies UNAVAILABLE and nothing is scored.
        let Ok(consensus) = book.conclude(&request_id, policy, &answers) else {
            continue;
        };
        if consensus.label == truth {
            right += 1;
            if round >= window_start {
                window_right += 1;
            }
        }
        report_outcome(book.ledger(), book.recent(), &request_id, truth)?;
    }
    let finals = standings(&book, node_ids)?;
    Ok(PolicyRun {
        policy,
        accuracy: right as f64 / rounds.max(1) as f64,
        window_accuracy: window_right as f64 / (rounds - window_start).max(1) as f64,
        nodes: initial
            .into_iter()
            .zip(finals)
            .map(|(i, f)| SimNode {
                initial_stake: i.stake,
                final_stake: f.stake,
                final_trust: f.trust(),
                ejected: f.ejected,
                node_id: f.node_id,
            })
            .collect(),
        ledger_ok: book.ledger().verify()?.ok(),
    })
}

/// Plays the synthetic simulation once per policy (same seed each time).
///
/// Behaviours: [`Behaviour::Honest`]`(accuracy)` puts 0.8 on the true class with
/// probability `accuracy`, otherwise 0.6 on a random wrong class; [`Behaviour::Inverted`]
/// nodes collude: all put 0.9 on `(truth + 1) mod classes` (what `--behaviour inverted`
/// does to a right answer).
pub fn run(config: &SimConfig) -> Result<SimReport, SimError> {
    if config.classes < 2 {
        return Err(SimError::Config("need at least 2 classes".into()));
    }
    let ids: Vec<NodeId> = (0..config.nodes.len())
        .map(|i| format!("sim-{i}"))
        .collect();
    let classes = config.classes;
    let runs = [Policy::Mean, Policy::Trust, Policy::Stake]
        .into_iter()
        .map(|policy| {
            let mut rng = Rng(config.seed);
            run_rounds(
                &ids,
                policy,
                config.rounds,
                config.window,
                config.params,
                config.initial_stake,
                |_| {
                    let truth = rng.below(classes);
                    let answers = config
                        .nodes
                        .iter()
                        .map(|b| {
                            Some(match *b {
                                Behaviour::Honest(acc) if rng.unit() < acc => {
                                    peaked(classes, truth, 0.8)
                                }
                                Behaviour::Honest(_) => {
                                    let wrong = (truth + 1 + rng.below(classes - 1)) % classes;
                                    peaked(classes, wrong, 0.6)
                                }
                                Behaviour::Inverted => peaked(classes, (truth + 1) % classes, 0.9),
                            })
                        })
                        .collect();
                    Round { truth, answers }
                },
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SimReport { runs })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue acceptance: 3 of 5 colluding inverted nodes. `mean` < 0.5, `stake` ≥ 0.90
    /// over the last 100 of 300 rounds, every faulty stake < 20 % of its start — with the
    /// default knobs, across several seeds.
    #[test]
    fn stake_policy_defeats_colluding_majority() {
        for seed in [1, 2, 3, 42, 2026] {
            let cfg = SimConfig::scenario(2, 3, seed);
            let r = run(&cfg).expect("run");
            let mean = r.run(Policy::Mean).expect("mean");
            let stake = r.run(Policy::Stake).expect("stake");
            assert!(mean.accuracy < 0.5, "seed {seed}: mean {mean:?}");
            assert!(
                stake.window_accuracy >= 0.90,
                "seed {seed}: stake {stake:?}"
            );
            for (n, b) in stake.nodes.iter().zip(&cfg.nodes) {
                if *b == Behaviour::Inverted {
                    assert!(
                        (n.final_stake as f64) < 0.2 * n.initial_stake as f64 && n.ejected,
                        "seed {seed}: {n:?}"
                    );
                } else {
                    assert!(
                        !n.ejected && n.final_stake > n.initial_stake,
                        "seed {seed}: {n:?}"
                    );
                }
            }
            assert!(r.runs.iter().all(|r| r.ledger_ok));
        }
    }

    /// With no faulty nodes (five honest nodes of similar quality), `stake` is no worse
    /// than `mean`.
    #[test]
    fn stake_no_worse_than_mean_when_all_honest() {
        let fleets = [vec![0.95; 5], vec![0.97, 0.95, 0.93, 0.92, 0.90]];
        for (fleet, seed) in fleets
            .iter()
            .flat_map(|f| [1, 2, 3, 42, 2026].map(|s| (f, s)))
        {
            let mut cfg = SimConfig::scenario(0, 0, seed);
            cfg.nodes = fleet.iter().copied().map(Behaviour::Honest).collect();
            let r = run(&cfg).expect("run");
            let mean = r.run(Policy::Mean).expect("mean");
            let stake = r.run(Policy::Stake).expect("stake");
            assert!(
                stake.accuracy >= mean.accuracy,
                "seed {seed}: {stake:?} vs {mean:?}"
            );
            assert!(
                stake.nodes.iter().all(|n| !n.ejected),
                "seed {seed}: {stake:?}"
            );
        }
    }

    /// A round with the wrong number of answers is rejected, not silently misattributed.
    #[test]
    fn malformed_round_is_rejected() {
        let ids = vec!["a".to_string(), "b".to_string()];
        let err = run_rounds(
            &ids,
            Policy::Mean,
            1,
            1,
            ScoringParams::default(),
            DEFAULT_INITIAL_STAKE,
            |_| Round {
                truth: 0,
                answers: vec![None],
            },
        );
        assert!(matches!(err, Err(SimError::Config(_))));
    }
}
