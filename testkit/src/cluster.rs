//! The consensus side of a test cluster in one call: real nodes and an aggregator with a
//! fresh sled ledger, every node staked for itself.
//!
//! The ledger mints nothing for a node it has never seen, so a cluster whose `stake` and
//! `trust` policies should count its nodes needs each of them to stake first, as
//! `concord node --initial-stake` does at start-up. Tests that check something else
//! (metrics, slashing, sybils, the gateway's pages) all need this same set-up; they differ
//! only in the node configs and the aggregator's knobs, which are the parameters. The
//! registry is the caller's: several clusters, or a gateway, may share it.

use std::net::SocketAddr;

use concord_aggregator::AggregatorConfig;
use concord_node::NodeConfig;

use crate::Running;

/// What [`Consensus::start`] stakes for every node.
pub const INITIAL_STAKE: u64 = 1000;

/// Nodes and an aggregator with a ledger, registered at one registry.
pub struct Consensus {
    /// The nodes, in start order.
    pub nodes: Vec<Running<concord_node::Error>>,
    /// Their ids, in the same order.
    pub node_ids: Vec<String>,
    /// The aggregator (Predictor and Staking).
    pub aggregator: Running<concord_aggregator::Error>,
    /// Keeps the ledger directory alive.
    pub dir: tempfile::TempDir,
}

impl Consensus {
    /// Starts `nodes` as given (a config without a credential gets its node's), then an
    /// aggregator at `registry` with a ledger in a fresh tempdir and the test
    /// [`staking_auth`](crate::staking_auth), adjusted by `configure`; then every node
    /// stakes [`INITIAL_STAKE`] for itself.
    pub async fn start(
        registry: SocketAddr,
        nodes: Vec<NodeConfig>,
        configure: impl FnOnce(&mut AggregatorConfig),
    ) -> Self {
        let ids: Vec<String> = nodes.iter().map(|c| c.node_id.clone()).collect();
        let mut running = Vec::with_capacity(nodes.len());
        for config in nodes {
            running.push(crate::node(config).await);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = AggregatorConfig::with_ledger(
            registry.to_string(),
            dir.path().join("ledger"),
            crate::staking_auth(),
        );
        configure(&mut config);
        let aggregator = crate::aggregator(config).await;
        let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        crate::stake_nodes(aggregator.channel(), &id_refs, INITIAL_STAKE).await;
        Consensus {
            nodes: running,
            node_ids: ids,
            aggregator,
            dir,
        }
    }

    /// Like [`start`](Consensus::start) with every node [`registered`](crate::registered)
    /// at `registry` (the shortest lease, its node's credential).
    pub async fn start_registered(
        registry: SocketAddr,
        nodes: Vec<NodeConfig>,
        configure: impl FnOnce(&mut AggregatorConfig),
    ) -> Self {
        let nodes = nodes
            .into_iter()
            .map(|config| crate::registered(config, registry))
            .collect();
        Self::start(registry, nodes, configure).await
    }

    /// Stops the aggregator, then the nodes (each joined), then removes the ledger.
    pub async fn stop(self) {
        self.aggregator.stop().await;
        for node in self.nodes {
            node.stop().await;
        }
    }
}
