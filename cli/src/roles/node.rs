//! `concord node`: one prediction node (a KNN model on its own part of the Iris data).

use std::{net::SocketAddr, time::Duration};

use concord_node::{Behaviour, Feature, Metric, ModelConfig, NodeConfig, Weighting};

/// Flags of `concord node`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "CONCORD_NODE_LISTEN", default_value = "127.0.0.1:50052")]
    pub listen: SocketAddr,
    /// Node id, unique in the cluster.
    #[arg(long, env = "CONCORD_NODE_ID", default_value = "node-1")]
    pub id: String,
    /// Start from default fleet entry N (1..=5): its k, metric, weighting, features and
    /// seed; the flags below override single parameters.
    #[arg(long)]
    pub preset: Option<usize>,
    /// Neighbours that vote.
    #[arg(long)]
    pub k: Option<usize>,
    /// Distance metric: euclidean, manhattan or chebyshev.
    #[arg(long)]
    pub metric: Option<Metric>,
    /// Neighbour weighting: uniform or distance.
    #[arg(long)]
    pub weighting: Option<Weighting>,
    /// Comma-separated feature subset, e.g. petal_length,petal_width.
    #[arg(long)]
    pub features: Option<String>,
    /// Seed of this node's training split.
    #[arg(long)]
    pub seed: Option<u64>,
    /// honest, random, inverted, slow:<ms>, intermittent:<p>, sleeper:<n> or sybil (fault
    /// injection for demos and tests; see node/src/behaviour.rs).
    #[arg(long, env = "CONCORD_NODE_BEHAVIOUR", default_value = "honest")]
    pub behaviour: Behaviour,
    /// Registry to register with (`none` runs unregistered).
    #[arg(long, env = "CONCORD_REGISTRY", default_value = concord::config::DEFAULT_REGISTRY_ADDR)]
    pub registry: String,
    /// Address to publish in the registry (default: the bound address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Lease TTL in the registry.
    #[arg(long, default_value = "2s", value_parser = concord::config::parse_duration)]
    pub lease_ttl: Duration,
    /// This process's cluster credential, `<principal>:<hex>` (`concord token credential
    /// <principal>` prints one; `concord up` hands each child its own).
    #[arg(long, env = "CONCORD_CREDENTIAL", value_parser = super::parse_credential, hide_env_values = true)]
    pub credential: Option<concord::identity::Credential>,
    /// Prometheus metrics listener (off unless given).
    #[command(flatten)]
    pub metrics: super::MetricsArgs,
    /// Mutual TLS (or plaintext, loopback only unless --insecure).
    #[command(flatten)]
    pub tls: super::TlsArgs,
    /// Tokens this node stakes for itself at start-up, with its credential, if the
    /// aggregator's ledger has no account for it yet (paid once, never on a restart). The
    /// ledger grants nothing: a node with no stake has no weight under trust and stake.
    #[arg(long, env = "CONCORD_INITIAL_STAKE", default_value_t = 0)]
    pub initial_stake: u64,
}

impl Args {
    fn into_config(self) -> anyhow::Result<NodeConfig> {
        let mut model = match self.preset {
            Some(n) => {
                let fleet = concord_node::default_fleet();
                let total = fleet.len();
                fleet
                    .into_iter()
                    .nth(n.wrapping_sub(1))
                    .ok_or_else(|| anyhow::anyhow!("--preset must be 1..={total}"))?
                    .model
            }
            None => ModelConfig::default(),
        };
        if let Some(k) = self.k {
            model.k = k;
        }
        if let Some(metric) = self.metric {
            model.metric = metric;
        }
        if let Some(weighting) = self.weighting {
            model.weighting = weighting;
        }
        if let Some(features) = &self.features {
            model.features = Feature::parse_list(features)?;
        }
        if let Some(seed) = self.seed {
            model.seed = seed;
        }
        let mut config = NodeConfig::new(self.id, model);
        config.behaviour = self.behaviour;
        config.registry = (self.registry != "none").then_some(self.registry);
        config.advertise = self.advertise;
        config.lease_ttl = self.lease_ttl;
        config.credential = self.credential;
        config.initial_stake = self.initial_stake;
        config.validate()?;
        Ok(config)
    }
}

/// Trains the model and serves it until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = concord::shutdown::signal();
    let listen = args.listen;
    let principal = concord::identity::Principal::Node(args.id.clone());
    let dials: Vec<&str> = Some(args.registry.as_str())
        .filter(|r| *r != "none")
        .into_iter()
        .collect();
    args.tls.install(
        Some(&principal),
        args.credential.as_ref(),
        Some(listen),
        &dials,
    )?;
    let metrics = args.metrics.clone();
    let config = args.into_config()?;
    let listener = super::bind_and_announce("node", listen).await?;
    let metrics = metrics.start("node").await?;
    let served = concord_node::serve(config, listener, shutdown).await;
    super::stop_metrics(metrics).await;
    served?;
    Ok(())
}
