//! `concord aggregator`: consensus over every live node, plus the Staking service and its
//! ledger.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use concord::identity::ClusterSecret;
use concord_aggregator::{
    policy::{escalation_bps_from_factor, slash_bps_from_fraction, Policy, ScoringParams},
    staking::StakingAuth,
    AggregatorConfig, ConsensusConfig, LedgerConfig,
};

/// Flags of `concord aggregator`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "CONCORD_AGGREGATOR_LISTEN", default_value = concord::config::DEFAULT_AGGREGATOR_ADDR)]
    pub listen: SocketAddr,
    /// Registry where nodes are found and the aggregator registers.
    #[arg(long, env = "CONCORD_REGISTRY", default_value = concord::config::DEFAULT_REGISTRY_ADDR)]
    pub registry: String,
    /// Address to publish in the registry (default: the bound address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// This process's cluster credential, `<principal>:<hex>` (`concord token credential
    /// <principal>` prints one; `concord up` hands each child its own).
    #[arg(long, env = "CONCORD_CREDENTIAL", value_parser = super::parse_credential, hide_env_values = true)]
    pub credential: Option<concord::identity::Credential>,
    /// How long to wait for the nodes; late answers are ignored.
    #[arg(long, env = "CONCORD_DEADLINE", default_value = "250ms", value_parser = concord::config::parse_duration)]
    pub deadline: Duration,
    /// Fewer in-time answers than this (or than the nodes eligible to answer, if fewer)
    /// fails the request with UNAVAILABLE.
    #[arg(long, env = "CONCORD_MIN_ANSWERS", default_value_t = concord_aggregator::consensus::DEFAULT_MIN_ANSWERS)]
    pub min_answers: usize,
    /// Policy of requests that name none: mean, trust or stake.
    #[arg(long, default_value = "stake")]
    pub policy: Policy,
    /// Directory of the stake ledger (sled).
    #[arg(long, env = "CONCORD_LEDGER_PATH", default_value = "./data/ledger")]
    pub ledger_path: PathBuf,
    /// Below this stake a node is ejected from the trust and stake policies.
    #[arg(long, default_value_t = ScoringParams::default().min_stake)]
    pub min_stake: u64,
    /// Tokens minted for a right answer.
    #[arg(long, default_value_t = ScoringParams::default().reward)]
    pub reward: u64,
    /// Share of the current stake slashed for a wrong answer (0..1), before escalation.
    #[arg(long, default_value_t = ScoringParams::default().slash_bps as f64 / 10_000.0)]
    pub slash_fraction: f64,
    /// Extra share slashed, times the node's squared error rate (0..10; 0 = flat slashing,
    /// rule v1). See aggregator/src/policy.rs.
    #[arg(long, default_value_t = ScoringParams::default().escalation_bps as f64 / 10_000.0)]
    pub slash_escalation: f64,
    /// Trust EMA rate α (0..1].
    #[arg(long, default_value_t = ScoringParams::default().alpha)]
    pub trust_alpha: f64,
    /// Cluster secret that node credentials derive from (default: the stored one).
    #[arg(long, env = "CONCORD_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Token ReportOutcome requires (default: the stored one).
    #[arg(long, env = "CONCORD_ORACLE_TOKEN", hide_env_values = true)]
    pub oracle_token: Option<String>,
    /// Where the stored secrets are.
    #[command(flatten)]
    pub secrets: super::SecretsSource,
    /// Prometheus metrics listener (off unless given).
    #[command(flatten)]
    pub metrics: super::MetricsArgs,
    /// Mutual TLS (or plaintext, loopback only unless --insecure).
    #[command(flatten)]
    pub tls: super::TlsArgs,
}

impl Args {
    fn into_config(self) -> anyhow::Result<AggregatorConfig> {
        let (cluster_secret, oracle_token) = match (self.cluster_secret, self.oracle_token) {
            (Some(secret), Some(token)) => (secret, token),
            (secret, token) => {
                let stored = self.secrets.load()?;
                (
                    secret.unwrap_or(stored.cluster_secret),
                    token.unwrap_or(stored.oracle_token),
                )
            }
        };
        let slash_bps = slash_bps_from_fraction(self.slash_fraction).map_err(anyhow::Error::msg)?;
        let escalation_bps =
            escalation_bps_from_factor(self.slash_escalation).map_err(anyhow::Error::msg)?;
        let mut config = AggregatorConfig::with_ledger(
            self.registry,
            self.ledger_path,
            StakingAuth {
                cluster_secret: ClusterSecret::new(cluster_secret)
                    .map_err(|e| anyhow::anyhow!("--cluster-secret: {e}"))?,
                oracle_token,
            },
        );
        config.consensus = ConsensusConfig {
            deadline: self.deadline,
            min_answers: self.min_answers,
            default_policy: self.policy,
            ..ConsensusConfig::default()
        };
        config.advertise = self.advertise;
        config.credential = self.credential;
        if let Some(ledger) = config.ledger.as_mut() {
            *ledger = LedgerConfig {
                params: ScoringParams {
                    min_stake: self.min_stake,
                    reward: self.reward,
                    slash_bps,
                    escalation_bps,
                    alpha: self.trust_alpha,
                },
                ..ledger.clone()
            };
        }
        Ok(config)
    }
}

/// Serves the consensus and the Staking service until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = concord::shutdown::signal();
    let listen = args.listen;
    args.tls.install(
        Some(&concord::identity::Principal::Aggregator),
        args.credential.as_ref(),
        Some(listen),
        &[args.registry.as_str()],
    )?;
    let metrics = args.metrics.clone();
    let config = args.into_config()?;
    let listener = super::bind_and_announce("aggregator", listen).await?;
    let metrics = metrics.start("aggregator").await?;
    let served = concord_aggregator::serve(config, listener, shutdown).await;
    super::stop_metrics(metrics).await;
    served?;
    Ok(())
}
