//! The aggregator's Prometheus families.
//!
//! Events, counted where they happen:
//! - `aggregator_consensus_seconds{policy,outcome}` (histogram): one consensus, from the
//!   request to the decision (`outcome` = `ok` or the error category), per request of a
//!   `Predict` and per batch of a `PredictBatch`;
//! - `aggregator_node_call_seconds{node}` (histogram): one node's answer time, or the time
//!   until the aggregator gave up on it;
//! - `aggregator_node_calls_total{node,result}`: `answered`, `timed_out` or `failed`.
//!
//! State, read from the ledger at scrape time (so it is what `ListStakes` says, survives
//! restarts, and costs nothing per request):
//! - `aggregator_node_stake{node}`, `aggregator_node_trust{node}` (0..1),
//!   `aggregator_node_ejected{node}`;
//! - `aggregator_node_scored_total{node,outcome}`: answers scored `right` (rewarded) or
//!   `wrong` (slashed);
//! - `aggregator_tokens_rewarded_total`, `aggregator_tokens_slashed_total`,
//!   `aggregator_ledger_events_total` (the chain's head seq).
//!
//! Label cardinality: `node` is a node id from the registry, which only a holder of that
//! node's credential can register, so it is bounded by the fleet.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Unit,
};

use crate::consensus::Aggregator;
use crate::fanout::CallResult;
use crate::policy::Policy;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsensusLabels {
    policy: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeResultLabels {
    node: String,
    result: String,
}

struct Families {
    consensus: Family<ConsensusLabels, Histogram>,
    node_call: Family<NodeLabels, Histogram>,
    node_calls: Family<NodeResultLabels, Counter>,
}

fn families() -> &'static Families {
    static FAMILIES: OnceLock<Families> = OnceLock::new();
    FAMILIES.get_or_init(|| {
        let families = Families {
            consensus: concord::metrics::latency_family(),
            node_call: concord::metrics::latency_family(),
            node_calls: Family::default(),
        };
        concord::metrics::register_with_unit(
            "aggregator_consensus",
            "Time of one consensus, from the request to the decision.",
            Unit::Seconds,
            families.consensus.clone(),
        );
        concord::metrics::register_with_unit(
            "aggregator_node_call",
            "A node's answer time, or the time until the aggregator gave up on it.",
            Unit::Seconds,
            families.node_call.clone(),
        );
        concord::metrics::register(
            "aggregator_node_calls",
            "Calls to nodes by result: answered, timed_out, failed.",
            families.node_calls.clone(),
        );
        families
    })
}

/// Records one consensus under `policy` that took `elapsed` and ended in `outcome`.
pub fn consensus<T>(policy: Policy, elapsed: Duration, outcome: &crate::Result<T>) {
    let outcome = match outcome {
        Ok(_) => "ok".to_owned(),
        Err(err) => {
            use concord::error::Classify;
            concord::grpc_metrics::code_name(err.kind().code()).to_ascii_lowercase()
        }
    };
    families()
        .consensus
        .get_or_create(&ConsensusLabels {
            policy: policy.to_string(),
            outcome,
        })
        .observe(elapsed.as_secs_f64());
}

/// Records one node call's `result` after `latency`.
pub fn node_call(node: &str, result: &CallResult, latency: Duration) {
    let families = families();
    let node = node.to_owned();
    let result = match result {
        CallResult::Answered { .. } => "answered",
        CallResult::TimedOut => "timed_out",
        CallResult::Failed(_) => "failed",
    };
    families
        .node_call
        .get_or_create(&NodeLabels { node: node.clone() })
        .observe(latency.as_secs_f64());
    families
        .node_calls
        .get_or_create(&NodeResultLabels {
            node,
            result: result.to_owned(),
        })
        .inc();
}

/// Reads stakes, trust and ledger totals of a running aggregator at scrape time.
pub struct LedgerCollector {
    aggregator: Weak<Aggregator>,
}

impl std::fmt::Debug for LedgerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerCollector").finish_non_exhaustive()
    }
}

impl LedgerCollector {
    /// Puts `aggregator`'s ledger on the process's metrics page (the event families are
    /// registered too, so they show from the first scrape).
    pub fn register(aggregator: &Arc<Aggregator>) {
        families();
        concord::metrics::register_collector(Box::new(LedgerCollector {
            aggregator: Arc::downgrade(aggregator),
        }));
    }
}

impl Collector for LedgerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(aggregator) = self.aggregator.upgrade() else {
            return Ok(());
        };
        let Some(book) = aggregator.book() else {
            return Ok(());
        };
        let ledger = book.ledger();
        let (accounts, head) = match ledger.list_accounts().and_then(|a| Ok((a, ledger.head()?))) {
            Ok(read) => read,
            Err(err) => {
                tracing::error!(%err, "aggregator metrics: ledger unreadable; leaving it out");
                return Ok(());
            }
        };
        let node = |id: &str| vec![("node", id.to_owned())];
        let gauges = |value: fn(&crate::ledger::Account) -> f64| -> Vec<_> {
            accounts
                .iter()
                .map(|a| (node(&a.node_id), value(a)))
                .collect()
        };
        concord::metrics::encode_gauges(
            &mut encoder,
            "aggregator_node_stake",
            "Tokens a node has staked (its weight under the stake policy, with trust).",
            &gauges(|a| a.stake as f64),
        )?;
        concord::metrics::encode_gauges(
            &mut encoder,
            "aggregator_node_trust",
            "A node's trust, the moving average of its correctness (0..1).",
            &gauges(|a| a.trust()),
        )?;
        concord::metrics::encode_gauges(
            &mut encoder,
            "aggregator_node_ejected",
            "1 while a node is below the minimum stake and out of weighted consensus.",
            &gauges(|a| f64::from(u8::from(a.ejected))),
        )?;
        let scored: Vec<_> = accounts
            .iter()
            .flat_map(|a| {
                [
                    (
                        vec![("node", a.node_id.clone()), ("outcome", "right".to_owned())],
                        a.right,
                    ),
                    (
                        vec![("node", a.node_id.clone()), ("outcome", "wrong".to_owned())],
                        a.wrong,
                    ),
                ]
            })
            .collect();
        concord::metrics::encode_counters(
            &mut encoder,
            "aggregator_node_scored",
            "Answers scored right (rewarded) or wrong (slashed).",
            &scored,
        )?;
        let none = Vec::<(&str, &str)>::new;
        concord::metrics::encode_counters(
            &mut encoder,
            "aggregator_tokens_rewarded",
            "Tokens minted as rewards.",
            &[(none(), head.totals.rewarded)],
        )?;
        concord::metrics::encode_counters(
            &mut encoder,
            "aggregator_tokens_slashed",
            "Tokens burned by slashes.",
            &[(none(), head.totals.burned)],
        )?;
        concord::metrics::encode_counters(
            &mut encoder,
            "aggregator_ledger_events",
            "Events in the ledger's hash chain.",
            &[(none(), head.seq)],
        )?;
        Ok(())
    }
}
