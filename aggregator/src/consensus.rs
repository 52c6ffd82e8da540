//! The consensus path of `Predict`: validate, weigh, fan out, combine, explain.
//!
//! One request, step by step:
//! 1. Validate the features exactly as a node would (`concord_node::validate_sample`), so
//!    bad input is `INVALID_ARGUMENT` without calling any node.
//! 2. Pick the policy (the request's, else the configured default). Look up each node's
//!    standing (trust, stake, ejected) in the ledger through the [`StakeBook`], whatever
//!    the policy: the reply reports every node's real trust and stake at combination
//!    time, and only the *weighting* differs by policy (`mean` weighs every answer 1 and
//!    asks ejected nodes too; `trust`/`stake` skip them, and every node that never staked,
//!    which has no account and therefore no stake). An aggregator without a ledger
//!    (mean only) has no standing to report and shows [`NO_LEDGER_STANDING`].
//! 3. Fan out to the asked nodes with the deadline ([`crate::fanout`]).
//! 4. Fewer answers than the quorum → `UNAVAILABLE`, naming how many answered. The quorum
//!    is `min_answers`, or, when the policy skipped ejected nodes, `min(min_answers, asked)`.
//! 5. Combine the answers under the policy ([`crate::policy::combine`], through the book
//!    when there is one so `ReportOutcome` can later score exactly the nodes that
//!    answered in time) and return a [`Decision`] listing every node: its vote, latency,
//!    trust, stake and normalised weight, or why it has none.
//!
//! The weights are pluggable through the policy and the book; this module only decides
//! *who* takes part and explains the result. Steps 4–5 are the pure function [`decide`],
//! unit-tested without sockets.

use std::sync::Arc;
use std::time::Duration;

use concord::pb::predict::v1::Row;
use concord_node::{validate_sample, Iris, NUM_CLASSES};

use crate::book::StakeBook;
use crate::error::{Error, Result};
use crate::fanout::{ask_all, ask_all_batch, Call, CallResult, Fleet, Member};
use crate::policy::{
    combine, should_ask, Consensus, NodeAnswer, NodeId, Policy, Stake, Trust, INITIAL_TRUST,
};
use crate::tasks::Tasks;

/// Default time the aggregator waits for the nodes.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(250);
/// Default minimum number of in-time answers: a majority of the default fleet of five
/// (capped at the number of eligible nodes, see step 4 of the module doc).
pub const DEFAULT_MIN_ANSWERS: usize = 3;
/// Largest `PredictBatch` the aggregator accepts (the proto's bound).
pub const MAX_BATCH: usize = 1024;

/// Knobs of the consensus path.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsensusConfig {
    /// How long to wait for the nodes; late answers are ignored.
    pub deadline: Duration,
    /// Fewer in-time answers than this (or than the eligible nodes, if fewer) fails the
    /// request with `UNAVAILABLE`.
    pub min_answers: usize,
    /// Policy of requests that do not name one.
    pub default_policy: Policy,
    /// Largest accepted batch.
    pub max_batch: usize,
}

impl Default for ConsensusConfig {
    fn default() -> Self {
        ConsensusConfig {
            deadline: DEFAULT_DEADLINE,
            min_answers: DEFAULT_MIN_ANSWERS,
            default_policy: Policy::Stake,
            max_batch: MAX_BATCH,
        }
    }
}

impl ConsensusConfig {
    /// Rejects knobs the aggregator cannot work with.
    pub fn validate(&self) -> Result<()> {
        if self.deadline.is_zero() {
            return Err(Error::Config("deadline must be positive".into()));
        }
        if self.min_answers == 0 {
            return Err(Error::Config("min answers must be at least 1".into()));
        }
        if self.max_batch == 0 || self.max_batch > MAX_BATCH {
            return Err(Error::Config(format!(
                "max batch must be in 1..={MAX_BATCH}"
            )));
        }
        Ok(())
    }
}

/// A node's standing when a request is combined.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Standing {
    /// Trust in `[0, 1]`.
    pub trust: Trust,
    /// Tokens staked.
    pub stake: Stake,
    /// Out of the weighted consensus (ejected, or never staked).
    pub ejected: bool,
    /// Whether the node has a stake account at all; `false` for a node that never staked.
    pub staked: bool,
}

/// The standing of a node that never staked: no account, so no stake and no weight under
/// `trust` and `stake` (it is not asked); `mean` still counts it (see [`crate::policy`]).
pub const UNSTAKED_STANDING: Standing = Standing {
    trust: INITIAL_TRUST,
    stake: 0,
    ejected: true,
    staked: false,
};

/// What an aggregator *without* a ledger reports for every node (trust 0.5, stake 0): it
/// has no accounts, and `mean` does not need any. With a ledger every policy reports
/// the real accounts.
pub const NO_LEDGER_STANDING: Standing = Standing {
    trust: INITIAL_TRUST,
    stake: 0,
    ejected: false,
    staked: false,
};

/// What became of one node's part in a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteStatus {
    /// Answered in time; its vote counts.
    Answered,
    /// Did not answer in time; ignored.
    TimedOut,
    /// The call failed; ignored.
    Failed,
    /// Ejected from the weighted consensus, or never staked; not asked.
    Ejected,
}

/// One node's part in a [`Decision`].
#[derive(Debug, Clone, PartialEq)]
pub struct Vote {
    /// Node id.
    pub node_id: NodeId,
    /// Address called.
    pub address: String,
    /// What became of the call.
    pub status: VoteStatus,
    /// The node's label, when it answered.
    pub label: Option<u32>,
    /// The node's probabilities, when it answered.
    pub probabilities: Vec<f64>,
    /// Round-trip time (zero when not asked).
    pub latency: Duration,
    /// Trust from the ledger when the request was combined (whatever the policy).
    pub trust: Trust,
    /// Stake from the ledger when the request was combined (whatever the policy).
    pub stake: Stake,
    /// Normalised weight in the consensus (0 unless it answered and counted).
    pub weight: f64,
    /// Why the node has no (or a zero-weight) vote.
    pub error: Option<String>,
}

/// The consensus of one request, with everything needed to explain it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Id to quote in `ReportOutcome`.
    pub request_id: String,
    /// Policy applied.
    pub policy: Policy,
    /// Winning class.
    pub label: u32,
    /// Combined probabilities, one per class.
    pub probabilities: Vec<f64>,
    /// Every known node, in fleet order.
    pub votes: Vec<Vote>,
    /// Nodes that answered in time.
    pub answered: usize,
    /// Nodes that were asked.
    pub asked: usize,
}

/// The consensus engine: a fleet to ask, an optional stake book, and the knobs.
#[derive(Debug)]
pub struct Aggregator {
    /// The nodes.
    fleet: Fleet,
    /// Accounts and request memory; `None` allows only `mean`.
    book: Option<StakeBook>,
    /// Deadline, minimum answers, default policy.
    config: ConsensusConfig,
}

impl Aggregator {
    /// An engine over `fleet`; without a `book` only `mean` requests are served, and a
    /// default policy other than `mean` is refused.
    pub fn new(fleet: Fleet, book: Option<StakeBook>, config: ConsensusConfig) -> Result<Self> {
        config.validate()?;
        if book.is_none() && config.default_policy != Policy::Mean {
            return Err(Error::Config(format!(
                "default policy {} needs a ledger",
                config.default_policy
            )));
        }
        Ok(Aggregator {
            fleet,
            book,
            config,
        })
    }

    /// The nodes.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// The knobs.
    pub fn config(&self) -> &ConsensusConfig {
        &self.config
    }

    /// The stake book, when this aggregator has a ledger.
    pub fn book(&self) -> Option<&StakeBook> {
        self.book.as_ref()
    }

    /// Consensus for one sample; see the module doc for the steps.
    pub async fn predict(&self, features: &[f64], policy: Option<Policy>) -> Result<Decision> {
        validate_sample(features)?;
        let policy = self.policy(policy)?;
        let started = std::time::Instant::now();
        let decision = self.predict_with(features, policy).await;
        crate::metrics::consensus(policy, started.elapsed(), &decision);
        decision
    }

    async fn predict_with(&self, features: &[f64], policy: Policy) -> Result<Decision> {
        let members = self.fleet.members();
        let standings = self.standings(&members).await?;
        let (asked, skipped) = split_asked(policy, &members, &standings);
        let calls = ask_all(&asked, features, self.config.deadline).await;
        let calls = calls.into_iter().map(|c| {
            let standing = standing_of(&members, &standings, &c.node_id);
            (c, standing)
        });
        let decision = decide(
            new_request_id(),
            policy,
            calls.collect(),
            skipped,
            self.config.min_answers,
            self.config.deadline,
            |request_id, answers| self.conclude(request_id, policy, answers),
        )?;
        tracing::debug!(
            request_id = %decision.request_id,
            %policy,
            label = decision.label,
            answered = decision.answered,
            asked = decision.asked,
            "consensus"
        );
        Ok(decision)
    }

    /// Consensus for every row; each row gets its own request id and decision. Every node
    /// is asked once, for the whole batch.
    pub async fn predict_batch(
        &self,
        rows: &[Row],
        policy: Option<Policy>,
    ) -> Result<Vec<Decision>> {
        if rows.is_empty() {
            return Err(Error::InvalidArgument("empty batch".into()));
        }
        if rows.len() > self.config.max_batch {
            return Err(Error::InvalidArgument(format!(
                "batch of {} rows exceeds the maximum of {}",
                rows.len(),
                self.config.max_batch
            )));
        }
        for (i, row) in rows.iter().enumerate() {
            validate_sample(&row.features).map_err(|e| match e {
                concord_node::Error::InvalidArgument(msg) => {
                    Error::InvalidArgument(format!("row {i}: {msg}"))
                }
                other => Error::from(other),
            })?;
        }
        let policy = self.policy(policy)?;
        let started = std::time::Instant::now();
        let decisions = self.decide_batch(rows, policy, true).await;
        crate::metrics::consensus(policy, started.elapsed(), &decisions);
        decisions
    }

    /// Accuracy of the `mean` consensus of the current fleet on the shared hold-out set,
    /// and the set's size. Not recorded for `ReportOutcome`.
    pub async fn holdout_accuracy(&self) -> Result<(usize, f64)> {
        let iris = Iris::get();
        let holdout = iris.split(0).holdout;
        let rows: Vec<Row> = holdout
            .iter()
            .map(|&r| Row {
                features: iris.features().row(r).to_vec(),
            })
            .collect();
        let decisions = self.decide_batch(&rows, Policy::Mean, false).await?;
        let correct = decisions
            .iter()
            .zip(&holdout)
            .filter(|(d, &r)| d.label as usize == iris.labels()[r])
            .count();
        Ok((holdout.len(), correct as f64 / holdout.len() as f64))
    }

    /// Fans `rows` out as one batch per node and decides every row; `record` remembers
    /// the rows for `ReportOutcome`.
    async fn decide_batch(
        &self,
        rows: &[Row],
        policy: Policy,
        record: bool,
    ) -> Result<Vec<Decision>> {
        let members = self.fleet.members();
        let standings = self.standings(&members).await?;
        let (asked, skipped) = split_asked(policy, &members, &standings);
        let calls = ask_all_batch(&asked, rows, self.config.deadline).await;
        (0..rows.len())
            .map(|row| {
                let row_calls = calls
                    .iter()
                    .map(|c| {
                        let result = match &c.result {
                            Ok(answers) => {
                                // ask_all_batch only returns Ok with one answer per row.
                                let (label, probabilities) = answers[row].clone();
                                CallResult::Answered {
                                    label,
                                    probabilities,
                                }
                            }
                            Err(failure) => failure.clone(),
                        };
                        let call = Call {
                            node_id: c.node_id.clone(),
                            address: c.address.clone(),
                            result,
                            latency: c.latency,
                        };
                        (call, standing_of(&members, &standings, &c.node_id))
                    })
                    .collect();
                decide(
                    new_request_id(),
                    policy,
                    row_calls,
                    skipped.clone(),
                    self.config.min_answers,
                    self.config.deadline,
                    |request_id, answers| {
                        if record {
                            self.conclude(request_id, policy, answers)
                        } else {
                            combine(policy, answers)
                        }
                    },
                )
            })
            .collect()
    }

    fn policy(&self, requested: Option<Policy>) -> Result<Policy> {
        let policy = requested.unwrap_or(self.config.default_policy);
        if policy != Policy::Mean && self.book.is_none() {
            return Err(Error::FailedPrecondition(format!(
                "policy {policy} needs the stake ledger, which this aggregator does not run"
            )));
        }
        Ok(policy)
    }

    /// Every member's standing from the ledger, for every policy (the reply must show the
    /// real values even when `mean` does not weigh by them); defaults without a ledger.
    async fn standings(&self, members: &[Member]) -> Result<Vec<Standing>> {
        match &self.book {
            Some(book) => {
                let ids: Vec<NodeId> = members.iter().map(|m| m.node_id.clone()).collect();
                let accounts = book.standings(&ids)?;
                Ok(accounts
                    .iter()
                    .map(|a| match a {
                        Some(a) => Standing {
                            trust: a.trust(),
                            stake: a.stake,
                            ejected: a.ejected,
                            staked: true,
                        },
                        None => UNSTAKED_STANDING,
                    })
                    .collect())
            }
            None => Ok(vec![NO_LEDGER_STANDING; members.len()]),
        }
    }

    fn conclude(
        &self,
        request_id: &str,
        policy: Policy,
        answers: &[NodeAnswer],
    ) -> std::result::Result<Consensus, crate::policy::PolicyError> {
        match &self.book {
            Some(book) => book.conclude(request_id, policy, answers),
            None => combine(policy, answers),
        }
    }
}

/// Splits the fleet into nodes to ask and ejected nodes to skip (with their standing).
fn split_asked(
    policy: Policy,
    members: &[Member],
    standings: &[Standing],
) -> (Vec<Member>, Vec<(Member, Standing)>) {
    let mut asked = Vec::with_capacity(members.len());
    let mut skipped = Vec::new();
    for (member, standing) in members.iter().zip(standings) {
        if should_ask(policy, standing.ejected) {
            asked.push(member.clone());
        } else {
            skipped.push((member.clone(), *standing));
        }
    }
    (asked, skipped)
}

fn standing_of(members: &[Member], standings: &[Standing], node_id: &str) -> Standing {
    members
        .iter()
        .position(|m| m.node_id == node_id)
        .and_then(|i| standings.get(i).copied())
        .unwrap_or(NO_LEDGER_STANDING)
}

/// A request id unique across aggregator restarts (the ledger remembers scored ids
/// durably, so a per-process counter could collide after a restart).
fn new_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Steps 4–5 of the module doc, pure: checks the quorum, combines the in-time answers via
/// `conclude` and explains every node's part.
pub fn decide(
    request_id: String,
    policy: Policy,
    calls: Vec<(Call, Standing)>,
    skipped: Vec<(Member, Standing)>,
    min_answers: usize,
    deadline: Duration,
    conclude: impl FnOnce(
        &str,
        &[NodeAnswer],
    ) -> std::result::Result<Consensus, crate::policy::PolicyError>,
) -> Result<Decision> {
    let asked = calls.len();
    let answers: Vec<NodeAnswer> = calls
        .iter()
        .filter_map(|(call, standing)| match &call.result {
            CallResult::Answered { probabilities, .. } => Some(NodeAnswer {
                node_id: call.node_id.clone(),
                probabilities: probabilities.clone(),
                trust: standing.trust,
                stake: standing.stake,
                ejected: standing.ejected,
            }),
            _ => None,
        })
        .collect();
    let answered = answers.len();
    // Ejected nodes shrink the quorum (the ledger excluded them on purpose, and must not
    // make the service unavailable by doing so); failures and timeouts never do.
    let quorum = if skipped.is_empty() {
        min_answers
    } else {
        min_answers.min(asked).max(1)
    };
    if answered < quorum {
        return Err(Error::Unavailable(format!(
            "only {answered} of {asked} nodes answered within {} ms; at least {quorum} needed",
            deadline.as_millis()
        )));
    }
    let consensus = conclude(&request_id, &answers)?;
    if consensus.probabilities.len() != NUM_CLASSES {
        tracing::warn!(
            classes = consensus.probabilities.len(),
            "nodes answered with an unexpected class count"
        );
    }

    let mut weighted = consensus.votes.iter();
    let mut votes = Vec::with_capacity(asked + skipped.len());
    for (call, standing) in calls {
        let mut vote = Vote {
            node_id: call.node_id,
            address: call.address,
            status: VoteStatus::Answered,
            label: None,
            probabilities: Vec::new(),
            latency: call.latency,
            trust: standing.trust,
            stake: standing.stake,
            weight: 0.0,
            error: None,
        };
        match call.result {
            CallResult::Answered {
                label,
                probabilities,
            } => {
                // `consensus.votes` has one entry per answer, in answer order.
                if let Some(w) = weighted.next() {
                    vote.weight = w.weight;
                    vote.error = w.excluded.map(|e| e.as_str().to_owned());
                }
                vote.label = Some(label);
                vote.probabilities = probabilities;
            }
            CallResult::TimedOut => {
                vote.status = VoteStatus::TimedOut;
                vote.error = Some(format!("no answer within {} ms", deadline.as_millis()));
            }
            CallResult::Failed(error) => {
                vote.status = VoteStatus::Failed;
                vote.error = Some(error);
            }
        }
        votes.push(vote);
    }
    for (member, standing) in skipped {
        votes.push(Vote {
            node_id: member.node_id,
            address: member.address,
            status: VoteStatus::Ejected,
            label: None,
            probabilities: Vec::new(),
            latency: Duration::ZERO,
            trust: standing.trust,
            stake: standing.stake,
            weight: 0.0,
            error: Some(if standing.staked {
                "ejected: stake below the minimum".into()
            } else {
                "not staked: no stake account (a node joins by staking with its credential)".into()
            }),
        });
    }
    Ok(Decision {
        request_id,
        policy,
        label: consensus.label,
        probabilities: consensus.probabilities,
        votes,
        answered,
        asked,
    })
}

/// Convenience for tests and tools: a fixed fleet at `addresses` with the default knobs
/// for `mean`. Its batchers belong to a task set of their own and end when the returned
/// aggregator (and with it the fleet) is dropped.
pub fn mean_over(
    addresses: &[(&str, &str)],
    deadline: Duration,
    min_answers: usize,
) -> Result<Arc<Aggregator>> {
    let members = addresses
        .iter()
        .map(|(id, addr)| Member::new(*id, *addr, &Tasks::new()))
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(Aggregator::new(
        Fleet::fixed(members),
        None,
        ConsensusConfig {
            deadline,
            min_answers,
            default_policy: Policy::Mean,
            max_batch: MAX_BATCH,
        },
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_millis(250);

    fn call(id: &str, result: CallResult) -> (Call, Standing) {
        (
            Call {
                node_id: id.into(),
                address: format!("{id}:1"),
                result,
                latency: Duration::from_millis(1),
            },
            NO_LEDGER_STANDING,
        )
    }

    fn answered(id: &str, p: [f64; 3]) -> (Call, Standing) {
        let label = concord_node::argmax(&p) as u32;
        call(
            id,
            CallResult::Answered {
                label,
                probabilities: p.to_vec(),
            },
        )
    }

    fn mean(calls: Vec<(Call, Standing)>, min: usize) -> Result<Decision> {
        decide(
            "r".into(),
            Policy::Mean,
            calls,
            vec![],
            min,
            DEADLINE,
            |_, a| combine(Policy::Mean, a),
        )
    }

    /// Mean averages the in-time answers; late and failed nodes are listed with weight 0.
    #[test]
    fn mean_ignores_late_and_failed() {
        let d = mean(
            vec![
                answered("a", [0.8, 0.2, 0.0]),
                call("b", CallResult::TimedOut),
                answered("c", [0.0, 0.4, 0.6]),
                call("d", CallResult::Failed("refused".into())),
            ],
            2,
        )
        .unwrap();
        assert_eq!((d.answered, d.asked, d.label), (2, 4, 0));
        assert_eq!(d.probabilities, vec![0.4, 0.30000000000000004, 0.3]);
        let got: Vec<_> = d.votes.iter().map(|v| (v.status, v.weight)).collect();
        assert_eq!(
            got,
            vec![
                (VoteStatus::Answered, 0.5),
                (VoteStatus::TimedOut, 0.0),
                (VoteStatus::Answered, 0.5),
                (VoteStatus::Failed, 0.0),
            ]
        );
        assert_eq!(d.votes[3].error.as_deref(), Some("refused"));
    }

    /// Too few answers is UNAVAILABLE and says how many answered (table-driven).
    #[test]
    fn quorum() {
        let cases = [(0, 1, false), (1, 1, true), (2, 3, false), (3, 3, true)];
        for (answers, min, ok) in cases {
            let mut calls: Vec<_> = (0..answers)
                .map(|i| answered(&format!("n{i}"), [1.0, 0.0, 0.0]))
                .collect();
            calls.push(call("late", CallResult::TimedOut));
            match mean(calls, min) {
                Ok(d) => assert!(ok && d.answered == answers),
                Err(Error::Unavailable(msg)) => {
                    assert!(!ok);
                    assert!(
                        msg.contains(&format!("only {answers} of {}", answers + 1)),
                        "{msg}"
                    );
                }
                Err(other) => panic!("{other:?}"),
            }
        }
    }

    /// Ejections shrink the quorum to the nodes asked; timeouts do not (table-driven).
    #[tokio::test]
    async fn quorum_shrinks_only_for_ejected() {
        // (answered, late, ejected, min_answers, ok)
        let cases = [
            (2, 0, 3, 3, true),
            (1, 1, 3, 3, false),
            (2, 0, 0, 3, false),
            (0, 0, 5, 3, false),
        ];
        for (answers, late, ejected, min, ok) in cases {
            let mut calls: Vec<_> = (0..answers)
                .map(|i| answered(&format!("n{i}"), [1.0, 0.0, 0.0]))
                .collect();
            calls.extend((0..late).map(|i| call(&format!("late{i}"), CallResult::TimedOut)));
            let skipped = (0..ejected)
                .map(|i| {
                    let member =
                        Member::new(format!("e{i}"), "127.0.0.1:1", &Tasks::new()).unwrap();
                    (
                        member,
                        Standing {
                            trust: 0.1,
                            stake: 1,
                            ejected: true,
                            staked: true,
                        },
                    )
                })
                .collect();
            let got = decide(
                "r".into(),
                Policy::Stake,
                calls,
                skipped,
                min,
                DEADLINE,
                |_, a| combine(Policy::Mean, a),
            );
            assert_eq!(got.is_ok(), ok, "{answers} {late} {ejected} {min}: {got:?}");
        }
    }

    /// A node answering garbage is shown with weight 0 and the reason, and does not
    /// spoil the consensus of the others.
    #[test]
    fn garbage_answer_is_excluded() {
        let d = mean(
            vec![
                answered("a", [0.0, 1.0, 0.0]),
                call(
                    "bad",
                    CallResult::Answered {
                        label: 0,
                        probabilities: vec![f64::NAN, 1.0, 1.0],
                    },
                ),
            ],
            1,
        )
        .unwrap();
        assert_eq!(d.label, 1);
        assert_eq!(d.votes[1].weight, 0.0);
        assert_eq!(d.votes[1].error.as_deref(), Some("invalid probabilities"));
    }

    /// Ejected and never-staked nodes are listed, not asked, and carry their standing.
    #[tokio::test]
    async fn ejected_listed() {
        let member = Member::new("poor", "127.0.0.1:1", &Tasks::new()).unwrap();
        let sybil = Member::new("sybil", "127.0.0.1:2", &Tasks::new()).unwrap();
        let standing = Standing {
            trust: 0.1,
            stake: 5,
            ejected: true,
            staked: true,
        };
        let d = decide(
            "r".into(),
            Policy::Stake,
            vec![answered("a", [1.0, 0.0, 0.0])],
            vec![(member, standing), (sybil, UNSTAKED_STANDING)],
            1,
            DEADLINE,
            |_, a| combine(Policy::Mean, a),
        )
        .unwrap();
        assert_eq!((d.asked, d.votes.len()), (1, 3));
        assert_eq!(d.votes[1].status, VoteStatus::Ejected);
        assert_eq!((d.votes[1].trust, d.votes[1].stake), (0.1, 5));
        assert!(d.votes[1].error.as_deref().unwrap().starts_with("ejected"));
        assert_eq!((d.votes[2].stake, d.votes[2].weight), (0, 0.0));
        assert!(d.votes[2]
            .error
            .as_deref()
            .unwrap()
            .starts_with("not staked"));
    }

    /// A policy other than mean needs a ledger; bad knobs are refused.
    #[tokio::test]
    async fn configuration() {
        let no_book = Aggregator::new(Fleet::fixed(vec![]), None, ConsensusConfig::default());
        assert!(matches!(no_book, Err(Error::Config(_))));
        let agg = mean_over(&[], DEADLINE, 1).unwrap();
        assert!(matches!(
            agg.predict(&[1.0; 4], Some(Policy::Stake)).await,
            Err(Error::FailedPrecondition(_))
        ));
        assert!(matches!(
            agg.predict(&[1.0; 3], None).await,
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            agg.predict(&[1.0; 4], None).await,
            Err(Error::Unavailable(_))
        ));
        for bad in [
            ConsensusConfig {
                min_answers: 0,
                ..Default::default()
            },
            ConsensusConfig {
                deadline: Duration::ZERO,
                ..Default::default()
            },
            ConsensusConfig {
                max_batch: 0,
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err());
        }
    }
}
