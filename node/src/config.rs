//! The node's configuration and the default fleet of diverse nodes.
//!
//! [`NodeConfig`] has plain fields (no clap): the CLI maps flags and `CONCORD_*` env vars
//! onto it, tests build it directly. [`default_fleet`] is the table `concord up` and the
//! tests start: five honest nodes that differ in k, metric, weighting, feature subset and
//! training seed, so their errors are not all the same and consensus has something to
//! gain. Every entry scores ≥ 0.90 on the shared hold-out set (tested).

use std::time::Duration;

use crate::behaviour::Behaviour;
use crate::error::{Error, Result};
use crate::model::{Feature, Metric, ModelConfig, Weighting};

/// Default cap on the samples in one `PredictBatch` request.
pub const DEFAULT_MAX_BATCH: usize = 1024;

/// A node's identity, in the registry and in every answer.
pub type NodeId = String;

/// Everything one `concord node` process needs.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Unique name of the node, reported in answers and registry metadata.
    pub node_id: NodeId,
    /// The model to train at start-up.
    pub model: ModelConfig,
    /// Honest or one of the injected faults.
    pub behaviour: Behaviour,
    /// Largest accepted `PredictBatch`; larger batches are `INVALID_ARGUMENT`.
    pub max_batch: usize,
    /// Registry endpoint (e.g. `http://127.0.0.1:50050`); `None` runs unregistered.
    pub registry: Option<String>,
    /// Address to register; `None` registers the listener's local address.
    pub advertise: Option<String>,
    /// Lease TTL requested from the registry.
    pub lease_ttl: Duration,
    /// Credential this process proves its identity with (registry, peers, `Stake`).
    pub credential: Option<concord::identity::Credential>,
    /// Tokens the node stakes for itself at start-up if it has no stake account yet (0:
    /// none). Needs a registry (to find the aggregator) and the credential.
    pub initial_stake: u64,
}

impl NodeConfig {
    /// An honest, unregistered node with the given model.
    pub fn new(node_id: impl Into<NodeId>, model: ModelConfig) -> Self {
        NodeConfig {
            node_id: node_id.into(),
            model,
            behaviour: Behaviour::Honest,
            max_batch: DEFAULT_MAX_BATCH,
            registry: None,
            advertise: None,
            lease_ttl: concord::config::DEFAULT_LEASE_TTL,
            credential: None,
            initial_stake: 0,
        }
    }

    /// Rejects a configuration the node cannot start with.
    pub fn validate(&self) -> Result<()> {
        if self.node_id.trim().is_empty() {
            return Err(Error::Config("node id must not be empty".into()));
        }
        if self.max_batch == 0 {
            return Err(Error::Config("max batch must be at least 1".into()));
        }
        if self.lease_ttl.is_zero() {
            return Err(Error::Config("lease TTL must be positive".into()));
        }
        if self.initial_stake > 0 {
            if self.registry.is_none() {
                return Err(Error::Config(
                    "an initial stake needs a registry to find the aggregator".into(),
                ));
            }
            match &self.credential {
                None => {
                    return Err(Error::Config(
                        "an initial stake needs the node's credential (--credential)".into(),
                    ))
                }
                Some(c) if c.principal().node_id() != Some(self.node_id.as_str()) => {
                    return Err(Error::Config(format!(
                        "the credential is {}'s, not node/{}'s",
                        c.principal(),
                        self.node_id
                    )))
                }
                Some(_) => {}
            }
        }
        self.model.validate()
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig::new("node-1", ModelConfig::default())
    }
}

/// The five default nodes (`node-1` … `node-5`), all honest and unregistered; callers
/// set `registry`, `behaviour` etc. as needed.
pub fn default_fleet() -> Vec<NodeConfig> {
    use Feature::*;
    let models = [
        (
            5,
            Metric::Euclidean,
            Weighting::Uniform,
            Feature::ALL.to_vec(),
            1,
        ),
        (
            15,
            Metric::Chebyshev,
            Weighting::Uniform,
            vec![PetalLength, PetalWidth],
            2,
        ),
        (
            7,
            Metric::Chebyshev,
            Weighting::Distance,
            vec![SepalLength, PetalLength, PetalWidth],
            3,
        ),
        (
            9,
            Metric::Euclidean,
            Weighting::Distance,
            vec![SepalWidth, PetalLength, PetalWidth],
            4,
        ),
        (
            11,
            Metric::Manhattan,
            Weighting::Uniform,
            Feature::ALL.to_vec(),
            5,
        ),
    ];
    models
        .into_iter()
        .enumerate()
        .map(|(i, (k, metric, weighting, features, seed))| {
            NodeConfig::new(
                format!("node-{}", i + 1),
                ModelConfig {
                    k,
                    metric,
                    weighting,
                    features,
                    seed,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::KnnModel;

    /// Every default node is valid, distinct, and scores ≥ 0.90 on the hold-out set.
    #[test]
    fn default_fleet_is_diverse_and_accurate() {
        let fleet = default_fleet();
        assert_eq!(fleet.len(), 5);
        for (i, node) in fleet.iter().enumerate() {
            node.validate().unwrap();
            let model = KnnModel::train(node.model.clone()).unwrap();
            assert!(
                model.holdout_accuracy() >= 0.90,
                "{}: {}",
                model.description(),
                model.holdout_accuracy()
            );
            for other in &fleet[i + 1..] {
                assert_ne!(node.model, other.model);
                assert_ne!(node.node_id, other.node_id);
            }
        }
    }

    /// Invalid node configurations are refused (table-driven).
    #[test]
    fn validation() {
        let mut cases = vec![NodeConfig::default(); 3];
        cases[0].node_id = " ".into();
        cases[1].max_batch = 0;
        cases[2].lease_ttl = Duration::ZERO;
        for c in cases {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
