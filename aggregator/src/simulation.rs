//! Socket-free simulation of consensus + scoring, the library half of `concord simulate`.
//!
//! [`run_rounds`] plays one policy against a real [`Ledger`] (temporary sled db). Every
//! node first stakes its initial stake itself, as `concord node --initial-stake` does (the
//! ledger mints nothing for a new node); then each round gets the true label and every
//! node's answer from a caller-supplied source (which sees every account first), drops
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
//! - [`Behaviour::Intermittent`]`(p)`: lies (as inverted) on a fraction `p` of the rounds,
//!   honest at [`ADVERSARY_ACCURACY`] otherwise. Colluding: whether round `r` is a lie is
//!   [`colluding_lie`]`(seed, r, p)`, the same for every intermittent node, so they all lie
//!   on the same requests (what `concord node --behaviour intermittent:<p>` does with the
//!   request's features).
//! - [`Behaviour::Sleeper`]`(n)`: honest at [`ADVERSARY_ACCURACY`] for `n` rounds, then
//!   inverted.
//! - [`Behaviour::Sybil`]: inverted; once ejected it comes back under a new id. Re-entry is
//!   modelled as the cluster's rules allow it: the attacker withdraws what is left of the
//!   ejected id's stake (`Unstake`) into its wallet, which also holds
//!   [`SimConfig::sybil_budget`] tokens of its own; the new id (`<old>-sybil<k>`, whose credential
//!   the attacker is assumed to have obtained) registers and answers the next round with
//!   no account — so it has no weight — and stakes the next round after that, with its
//!   credential, `min(wallet, initial_stake)` tokens, if the wallet holds at least
//!   `min_stake` (otherwise it stays weightless). Nothing is minted for the new id.
//!
//! Deterministic for a given seed (a private SplitMix64, no global RNG).
//!
//! Adaptive liars, 3 of 5 nodes, 600 rounds, default knobs (rule v2: slash 2 % + 4·e², see
//! [`crate::policy`]), seeds 1, 2, 3, 42, 2026 (`adaptive_liars_meet_targets`):
//! - `intermittent:0.2`: `stake` over the last 100 rounds 0.99–1.00; the liars (right about
//!   76 % of the time) are ejected and end at 79–98 tokens (< 10 % of their deposit). Under
//!   rule v1 (flat 10 %) they kept 15–46 % in every seed (equilibrium
//!   `reward·p / ((1−p)·slash)` ≈ 317), and their weight with it
//!   (`flat_slash_lets_intermittent_liars_keep_their_stake`).
//! - `sleeper:150`: the sleepers hold 1 880–2 340 tokens when they turn and lose 80 % of it
//!   within 21–27 rounds (v1: 16); `stake` 0.97–1.00 over the last 100.
//! - `sybil` with a 2 000-token budget: every new id has weight 0 until it stakes; each
//!   slot comes back 4 times, and every deposit is slashed away again; `stake` 0.99–1.00.
//! - `inverted`, 300 rounds: `stake` 0.99–1.00 over the last 100; liars ejected after 11
//!   wrong answers at 65 tokens; honest nodes end at 2 360–3 440.
//!
//! Figures with the v1 knobs (α = 0.1, reward 10, slash 10 %, min stake 100, every
//! node staking 1000 for itself at the start, 300 rounds, seeds 1, 2, 3, 42, 2026):
//! - 2 honest (95 %) + 3 colluding inverted: `mean` 0.00 in every seed; `stake` over the
//!   last 100 rounds 0.96–1.00 (overall 0.977–0.993); `trust` 0.99–1.00. Liars fall
//!   under the minimum after 22 wrong answers (1000·0.9²² < 100), are ejected, no longer
//!   asked, and end at stake 94 (9.4 % of the start) and trust 0.05; honest nodes end at
//!   1069–2497. (Under `mean` ejected liars are still asked and slashed to 0.)
//! - 5 honest at 95 %, or at 97/95/93/92/90 %: all three policies 1.00.
//!
//! IMPLEMENTATION CAVEATS: at equilibrium an honest node's stake is about
//! `reward · p / ((1 − p) · slash)` (≈ 1900 at p = 0.95 under v1), i.e. proportional to its odds
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

/// How often an adversary is right while it behaves (as good as an honest node).
pub const ADVERSARY_ACCURACY: f64 = 0.95;
/// Rounds after a sleeper starts lying within which it must have lost most of its stake.
pub const SLEEPER_GRACE_ROUNDS: usize = 50;

/// How a synthetic node answers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behaviour {
    /// Right with this probability.
    Honest(f64),
    /// Always wrong, agreeing with the other inverted nodes.
    Inverted,
    /// Lies on this fraction of the rounds, the same rounds as every other intermittent node.
    Intermittent(f64),
    /// Honest for this many rounds, then inverted.
    Sleeper(usize),
    /// Inverted; comes back under a new id once ejected.
    Sybil,
}

impl Behaviour {
    /// Whether the node is an adversary (anything but [`Behaviour::Honest`]).
    pub fn is_adversary(self) -> bool {
        !matches!(self, Behaviour::Honest(_))
    }
}

impl std::fmt::Display for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Behaviour::Honest(a) => write!(f, "honest:{a}"),
            Behaviour::Inverted => f.write_str("inverted"),
            Behaviour::Intermittent(p) => write!(f, "intermittent:{p}"),
            Behaviour::Sleeper(n) => write!(f, "sleeper:{n}"),
            Behaviour::Sybil => f.write_str("sybil"),
        }
    }
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
    /// RNG seed (also the liars' shared collusion seed).
    pub seed: u64,
    /// Scoring knobs for the ledger.
    pub params: ScoringParams,
    /// What every node stakes for itself before the first round.
    pub initial_stake: Stake,
    /// Tokens each sybil attacker holds beyond its first deposit, to stake new ids with.
    pub sybil_budget: Stake,
}

impl SimConfig {
    /// The acceptance scenario: `honest` nodes at 95 % and `faulty` colluding inverted
    /// nodes, 300 rounds, last-100 window, default scoring knobs.
    pub fn scenario(honest: usize, faulty: usize, seed: u64) -> Self {
        Self::adversarial(honest, faulty, Behaviour::Inverted, seed)
    }

    /// `honest` nodes at 95 % and `faulty` nodes with `behaviour`: 300 rounds for
    /// `inverted`, 600 for the adaptive liars; last-100 window, default knobs, a sybil
    /// budget of two more deposits.
    pub fn adversarial(honest: usize, faulty: usize, behaviour: Behaviour, seed: u64) -> Self {
        let mut nodes = vec![Behaviour::Honest(0.95); honest];
        nodes.extend(std::iter::repeat_n(behaviour, faulty));
        Self {
            rounds: if behaviour == Behaviour::Inverted {
                300
            } else {
                600
            },
            window: 100,
            classes: 3,
            nodes,
            seed,
            params: ScoringParams::default(),
            initial_stake: DEFAULT_INITIAL_STAKE,
            sybil_budget: 2 * DEFAULT_INITIAL_STAKE,
        }
    }
}

/// A sybil's comeback: slot `slot` continues under `new_id`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reentry {
    /// Which node (position) comes back.
    pub slot: usize,
    /// Its new id; it has no account until it stakes.
    pub new_id: NodeId,
}

/// One round: the truth and what each node said (`None`: no answer in time).
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    /// The true label.
    pub truth: Label,
    /// One entry per node, in node order.
    pub answers: Vec<Option<Vec<f64>>>,
    /// Before this round: slots that withdraw their ejected id's stake and come back
    /// under a new id (no account yet).
    pub reentries: Vec<Reentry>,
    /// Before this round, after the re-entries: `(slot, amount)` staked by the slot's
    /// current id with its credential.
    pub stakes: Vec<(usize, Stake)>,
}

impl Round {
    /// A round without re-entries or stakes.
    pub fn answers(truth: Label, answers: Vec<Option<Vec<f64>>>) -> Self {
        Self {
            truth,
            answers,
            reentries: Vec::new(),
            stakes: Vec::new(),
        }
    }
}

/// One node at the end of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct SimNode {
    /// The node (its last id, for a sybil).
    pub node_id: NodeId,
    /// Stake at the start.
    pub initial_stake: Stake,
    /// Stake at the end.
    pub final_stake: Stake,
    /// Trust at the end.
    pub final_trust: f64,
    /// Ejected at the end.
    pub ejected: bool,
    /// Ids it used, in order (one unless it is a sybil that came back).
    pub ids: Vec<NodeId>,
}

/// What the ledger and the consensus said about one node in one round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standing {
    /// Stake after the round was scored.
    pub stake: Stake,
    /// Trust after the round was scored.
    pub trust: f64,
    /// Share of this round's consensus (0 if not asked, weightless or no consensus).
    pub weight: f64,
    /// Whether the id had an account (it staked) when the round was played.
    pub staked: bool,
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
    /// Per round, per node (in node order).
    pub history: Vec<Vec<Standing>>,
    /// Per round: whether the consensus was right.
    pub correct: Vec<bool>,
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

/// The colluding liars' shared decision: whether request `request` is one they lie on.
/// A pure function of the shared `seed` and the request, never of a node's own RNG, so
/// every intermittent liar lies on the same requests; true for a fraction `p` of them.
pub fn colluding_lie(seed: u64, request: u64, p: f64) -> bool {
    let mut rng = Rng(seed ^ request.wrapping_mul(0xD6E8_FEB8_6659_FD93));
    rng.unit() < p
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

/// Every node's account (`None`: never staked), in order.
fn standings(book: &StakeBook, node_ids: &[NodeId]) -> Result<Vec<Option<Account>>, LedgerError> {
    book.standings(node_ids)
}

/// Plays `rounds` rounds of `policy` for `node_ids` on a fresh temporary ledger, after
/// each node staked `initial_stake` for itself (0: nobody stakes); `play` supplies each
/// round, seeing every node's account (`None`: never staked) before it. Blocking (ledger
/// flushes).
pub fn run_rounds(
    node_ids: &[NodeId],
    policy: Policy,
    rounds: usize,
    window: usize,
    params: ScoringParams,
    initial_stake: Stake,
    mut play: impl FnMut(usize, &[Option<Account>]) -> Round,
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
    let mut ids: Vec<Vec<NodeId>> = node_ids.iter().map(|id| vec![id.clone()]).collect();
    let current = |ids: &[Vec<NodeId>]| -> Vec<NodeId> {
        ids.iter()
            .map(|v| v.last().cloned().unwrap_or_default())
            .collect()
    };
    let initial: Vec<Account> = node_ids
        .iter()
        .zip(standings(&book, node_ids)?)
        .map(|(id, a)| account_or_unstaked(id, a))
        .collect();
    let window_start = rounds.saturating_sub(window);
    let (mut right, mut window_right) = (0usize, 0usize);
    let mut history = Vec::with_capacity(rounds);
    let mut correct = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let before = standings(&book, &current(&ids))?;
        let Round {
            truth,
            answers,
            reentries,
            stakes,
        } = play(round, &before);
        if answers.len() != node_ids.len() {
            return Err(SimError::Config(format!(
                "round {round}: {} answers for {} nodes",
                answers.len(),
                node_ids.len()
            )));
        }
        for Reentry { slot, new_id } in reentries {
            let slot_ids = ids
                .get_mut(slot)
                .ok_or_else(|| SimError::Config(format!("round {round}: no node {slot}")))?;
            let old = slot_ids.last().cloned().unwrap_or_default();
            if let Some(a) = book.ledger().account(&old)? {
                if a.stake > 0 {
                    book.ledger().unstake(&old, a.stake)?;
                }
            }
            slot_ids.push(new_id);
        }
        for (slot, amount) in stakes {
            let id = ids
                .get(slot)
                .and_then(|v| v.last())
                .ok_or_else(|| SimError::Config(format!("round {round}: no node {slot}")))?;
            book.ledger().stake(id, amount)?;
        }
        let round_ids = current(&ids);
        let accounts: Vec<Account> = round_ids
            .iter()
            .zip(standings(&book, &round_ids)?)
            .map(|(id, a)| account_or_unstaked(id, a))
            .collect();
        let staked: Vec<bool> = accounts.iter().map(|a| a.last_seq > 0).collect();
        let asked: Vec<NodeAnswer> = accounts
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
        let consensus = book.conclude(&request_id, policy, &asked).ok();
        correct.push(consensus.as_ref().is_some_and(|c| c.label == truth));
        if let Some(c) = &consensus {
            if c.label == truth {
                right += 1;
                if round >= window_start {
                    window_right += 1;
                }
            }
            report_outcome(book.ledger(), book.recent(), &request_id, truth)?;
        }
        let after: Vec<Account> = round_ids
            .iter()
            .zip(standings(&book, &round_ids)?)
            .map(|(id, a)| account_or_unstaked(id, a))
            .collect();
        history.push(
            after
                .iter()
                .zip(&staked)
                .map(|(a, &staked)| Standing {
                    stake: a.stake,
                    trust: a.trust(),
                    weight: consensus
                        .as_ref()
                        .and_then(|c| c.votes.iter().find(|v| v.node_id == a.node_id))
                        .map_or(0.0, |v| v.weight),
                    staked,
                })
                .collect(),
        );
    }
    let final_ids = current(&ids);
    let finals: Vec<Account> = final_ids
        .iter()
        .zip(standings(&book, &final_ids)?)
        .map(|(id, a)| account_or_unstaked(id, a))
        .collect();
    Ok(PolicyRun {
        policy,
        accuracy: right as f64 / rounds.max(1) as f64,
        window_accuracy: window_right as f64 / (rounds - window_start).max(1) as f64,
        nodes: initial
            .into_iter()
            .zip(finals)
            .zip(ids)
            .map(|((i, f), ids)| SimNode {
                initial_stake: i.stake,
                final_stake: f.stake,
                final_trust: f.trust(),
                ejected: f.ejected,
                node_id: f.node_id,
                ids,
            })
            .collect(),
        ledger_ok: book.ledger().verify()?.ok(),
        history,
        correct,
    })
}

/// A sybil attacker's state: its wallet and how often it came back.
#[derive(Debug, Clone, Default)]
struct SybilState {
    /// Tokens it holds outside the ledger.
    wallet: Stake,
    /// Comebacks so far.
    comebacks: usize,
    /// The current id has no account yet and stakes this round.
    stake_next: bool,
}

/// Plays the synthetic simulation once per policy (same seed each time). See the module
/// docs for the behaviours.
pub fn run(config: &SimConfig) -> Result<SimReport, SimError> {
    if config.classes < 2 {
        return Err(SimError::Config("need at least 2 classes".into()));
    }
    let ids: Vec<NodeId> = (0..config.nodes.len())
        .map(|i| format!("sim-{i}"))
        .collect();
    let classes = config.classes;
    let min_stake = config.params.min_stake;
    let runs = [Policy::Mean, Policy::Trust, Policy::Stake]
        .into_iter()
        .map(|policy| {
            let mut rng = Rng(config.seed);
            let mut sybils: Vec<SybilState> = config
                .nodes
                .iter()
                .map(|_| SybilState {
                    wallet: config.sybil_budget,
                    ..SybilState::default()
                })
                .collect();
            run_rounds(
                &ids,
                policy,
                config.rounds,
                config.window,
                config.params,
                config.initial_stake,
                |round, accounts| {
                    let truth = rng.below(classes);
                    let lie_round = |p: f64| colluding_lie(config.seed, round as u64, p);
                    let inverted = peaked(classes, (truth + 1) % classes, 0.9);
                    let honest = |rng: &mut Rng, acc: f64| {
                        if rng.unit() < acc {
                            peaked(classes, truth, 0.8)
                        } else {
                            let wrong = (truth + 1 + rng.below(classes - 1)) % classes;
                            peaked(classes, wrong, 0.6)
                        }
                    };
                    let answers = config
                        .nodes
                        .iter()
                        .map(|b| {
                            Some(match *b {
                                Behaviour::Honest(acc) => honest(&mut rng, acc),
                                Behaviour::Inverted | Behaviour::Sybil => inverted.clone(),
                                Behaviour::Intermittent(p) if lie_round(p) => inverted.clone(),
                                Behaviour::Sleeper(n) if round >= n => inverted.clone(),
                                Behaviour::Intermittent(_) | Behaviour::Sleeper(_) => {
                                    honest(&mut rng, ADVERSARY_ACCURACY)
                                }
                            })
                        })
                        .collect();
                    let mut next = Round::answers(truth, answers);
                    for (slot, (b, s)) in config.nodes.iter().zip(&mut sybils).enumerate() {
                        if *b != Behaviour::Sybil {
                            continue;
                        }
                        if s.stake_next {
                            s.stake_next = false;
                            let amount = s.wallet.min(config.initial_stake);
                            if amount >= min_stake {
                                s.wallet -= amount;
                                next.stakes.push((slot, amount));
                            }
                            continue;
                        }
                        // Ejected (only a staked account can be): withdraw and come back.
                        if let Some(Some(a)) = accounts.get(slot) {
                            if a.ejected {
                                s.wallet += a.stake;
                                s.comebacks += 1;
                                s.stake_next = true;
                                next.reentries.push(Reentry {
                                    slot,
                                    new_id: format!("{}-sybil{}", ids[slot], s.comebacks),
                                });
                            }
                        }
                    }
                    next
                },
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SimReport { runs })
}

/// Checks the targets for `config`'s adversaries against the `stake` run (and
/// `mean` for always-inverted liars); returns every target missed, empty when all hold.
///
/// - `inverted`: `mean` < 0.5; `stake` ≥ 0.90 over the window; every liar < 20 % of its start.
/// - `intermittent`: `stake` ≥ 0.97 over the window; every liar < 20 % of its start.
/// - `sleeper:<n>`: every sleeper loses ≥ 80 % of its stake at round `n` within
///   [`SLEEPER_GRACE_ROUNDS`] rounds; `stake` ≥ 0.95 over the window.
/// - `sybil`: no id has weight in a round before it staked; `stake` ≥ 0.95 over the window.
pub fn missed_targets(config: &SimConfig, report: &SimReport) -> Vec<String> {
    let mut missed = Vec::new();
    let Some(stake) = report.run(Policy::Stake) else {
        return vec!["no stake run".into()];
    };
    let min_accuracy = |missed: &mut Vec<String>, want: f64| {
        if stake.window_accuracy < want {
            missed.push(format!(
                "stake accuracy over the last {} rounds {:.3} < {want}",
                config.window, stake.window_accuracy
            ));
        }
    };
    if !report.runs.iter().all(|r| r.ledger_ok) {
        missed.push("a ledger does not verify".into());
    }
    for (slot, (b, node)) in config.nodes.iter().zip(&stake.nodes).enumerate() {
        let below_fifth = |missed: &mut Vec<String>| {
            if node.final_stake as f64 >= 0.2 * node.initial_stake as f64 {
                missed.push(format!(
                    "{b} {} ends at {} of {}",
                    node.node_id, node.final_stake, node.initial_stake
                ));
            }
        };
        match *b {
            Behaviour::Honest(_) => {}
            Behaviour::Inverted | Behaviour::Intermittent(_) => below_fifth(&mut missed),
            Behaviour::Sleeper(n) => {
                let at = |r: usize| stake.history.get(r).map_or(0, |h| h[slot].stake);
                let start = at(n.saturating_sub(1));
                let end = at(n + SLEEPER_GRACE_ROUNDS - 1);
                if end as f64 > 0.2 * start as f64 {
                    missed.push(format!(
                        "{b} {}: {start} when it started lying, still {end} {SLEEPER_GRACE_ROUNDS} rounds later",
                        node.node_id
                    ));
                }
            }
            Behaviour::Sybil => {
                let weighed_unstaked = stake
                    .history
                    .iter()
                    .position(|h| !h[slot].staked && h[slot].weight > 0.0);
                if let Some(round) = weighed_unstaked {
                    missed.push(format!(
                        "sybil slot {slot} had weight without a stake in round {round}"
                    ));
                }
            }
        }
    }
    let adversary = config.nodes.iter().find(|b| b.is_adversary()).copied();
    match adversary {
        Some(Behaviour::Inverted) => {
            if let Some(mean) = report.run(Policy::Mean) {
                if mean.accuracy >= 0.5 {
                    missed.push(format!(
                        "mean accuracy {:.3} is not below 0.5",
                        mean.accuracy
                    ));
                }
            }
            min_accuracy(&mut missed, 0.90);
        }
        Some(Behaviour::Intermittent(_)) => min_accuracy(&mut missed, 0.97),
        Some(Behaviour::Sleeper(_) | Behaviour::Sybil) => min_accuracy(&mut missed, 0.95),
        Some(Behaviour::Honest(_)) | None => {}
    }
    missed
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

    const SEEDS: [u64; 5] = [1, 2, 3, 42, 2026];

    /// Issue 16 targets, 3 of 5 adaptive liars, 600 rounds, several seeds:
    /// `intermittent:0.2`, `sleeper:150` and `sybil` each meet theirs under the default rules.
    #[test]
    fn adaptive_liars_meet_targets() {
        for b in [
            Behaviour::Intermittent(0.2),
            Behaviour::Sleeper(150),
            Behaviour::Sybil,
        ] {
            for seed in SEEDS {
                let cfg = SimConfig::adversarial(2, 3, b, seed);
                let r = run(&cfg).expect("run");
                let missed = missed_targets(&cfg, &r);
                assert!(missed.is_empty(), "{b} seed {seed}: {missed:?}");
            }
        }
    }

    /// Under the flat slash of rule v1 the intermittent liars keep more than a fifth of
    /// their stake: the reason for rule v2.
    #[test]
    fn flat_slash_lets_intermittent_liars_keep_their_stake() {
        let mut cfg = SimConfig::adversarial(2, 3, Behaviour::Intermittent(0.2), 42);
        cfg.params.slash_bps = 1_000;
        cfg.params.escalation_bps = 0;
        let r = run(&cfg).expect("run");
        let missed = missed_targets(&cfg, &r);
        assert!(
            missed.iter().any(|m| m.starts_with("intermittent")),
            "{missed:?}"
        );
    }

    /// The colluding decision is shared (a function of seed and request only), lies on
    /// about a fraction p of the requests, and another seed picks other requests.
    #[test]
    fn colluding_decision_is_shared() {
        let lies = |seed| {
            (0..10_000u64)
                .filter(|&r| colluding_lie(seed, r, 0.2))
                .count()
        };
        let a = lies(7);
        assert!((1_850..=2_150).contains(&a), "{a}");
        let same = (0..1_000u64).all(|r| colluding_lie(7, r, 0.2) == colluding_lie(7, r, 0.2));
        let differ = (0..1_000u64).any(|r| colluding_lie(7, r, 0.2) != colluding_lie(8, r, 0.2));
        assert!(same && differ);
        assert!((0..100u64).all(|r| !colluding_lie(7, r, 0.0) && colluding_lie(7, r, 1.0)));
    }

    /// A sleeper gains stake while honest and loses it once it starts lying at round n.
    #[test]
    fn sleeper_switches_at_n() {
        let cfg = SimConfig::adversarial(2, 3, Behaviour::Sleeper(150), 1);
        let r = run(&cfg).expect("run");
        let stake = r.run(Policy::Stake).expect("stake");
        let at = |round: usize| stake.history[round][4];
        assert!(
            at(149).stake > cfg.initial_stake && at(149).trust > 0.8,
            "{:?}",
            at(149)
        );
        assert!(at(199).stake < cfg.params.min_stake, "{:?}", at(199));
        assert!(stake.nodes[4].ejected);
    }

    /// A sybil's new id carries no weight before it stakes (under `stake`, while `mean`,
    /// the baseline with no sybil resistance, counts it), then counts once it has staked.
    #[test]
    fn sybil_new_id_weightless_until_staked() {
        let cfg = SimConfig::adversarial(2, 3, Behaviour::Sybil, 2);
        let r = run(&cfg).expect("run");
        for policy in [Policy::Stake, Policy::Mean] {
            let run = r.run(policy).expect("run");
            let node = &run.nodes[4];
            assert!(node.ids.len() >= 2, "{policy}: {node:?}");
            assert_eq!(node.ids[1], "sim-4-sybil1");
            let unstaked: Vec<&Standing> = run
                .history
                .iter()
                .map(|h| &h[4])
                .filter(|s| !s.staked)
                .collect();
            assert!(
                !unstaked.is_empty(),
                "{policy}: a new id answered before staking"
            );
            let weightless = unstaked.iter().all(|s| s.weight == 0.0);
            assert_eq!(weightless, policy == Policy::Stake, "{policy}");
        }
        let stake = r.run(Policy::Stake).expect("stake");
        let first_new = stake
            .history
            .iter()
            .position(|h| !h[4].staked)
            .expect("re-entry");
        let staked = &stake.history[first_new + 1][4];
        assert!(staked.staked && staked.weight > 0.0, "{staked:?}");
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
            |_, _| Round::answers(0, vec![None]),
        );
        assert!(matches!(err, Err(SimError::Config(_))));
    }
}
