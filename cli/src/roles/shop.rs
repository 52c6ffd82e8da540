//! `concord shop`: the shop (primary, or a replica of one) on sled.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use concord_shop::{OnReplicaLoss, ReplicationMode};

/// Flags of `concord shop`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "CONCORD_SHOP_LISTEN", default_value = concord::config::DEFAULT_SHOP_PRIMARY_ADDR)]
    pub listen: SocketAddr,
    /// Directory of this shop's sled database.
    #[arg(long, env = "CONCORD_SHOP_DATA_DIR", default_value = "./data/shop")]
    pub data_dir: PathBuf,
    /// Token product mutations and Promote require (default: the cluster's stored one).
    #[arg(long, env = "CONCORD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Key customer session tokens are signed with; both shops of a cluster need the same
    /// one (`concord up` hands it over). Without it: a random key per start, so sessions
    /// end with the process and the peer refuses them after a failover.
    #[arg(long, env = "CONCORD_SESSION_KEY", hide_env_values = true)]
    pub session_key: Option<String>,
    /// How long a customer session token is accepted after sign-in.
    #[arg(long, default_value = "720m", value_parser = concord::config::parse_duration)]
    pub session_ttl: Duration,
    /// Where the stored secrets are.
    #[command(flatten)]
    pub secrets: super::SecretsSource,
    /// Registry to register with (none: run unregistered).
    #[arg(long, env = "CONCORD_REGISTRY")]
    pub registry: Option<String>,
    /// Address to publish in the registry (default: the bound address).
    #[arg(long, env = "CONCORD_SHOP_ADVERTISE")]
    pub advertise: Option<String>,
    /// Start as a replica of the primary at this address (default: start as primary).
    #[arg(long, env = "CONCORD_SHOP_REPLICA_OF")]
    pub replica_of: Option<String>,
    /// none, async or sync.
    #[arg(
        long = "replication",
        alias = "replication-mode",
        env = "CONCORD_SHOP_REPLICATION",
        default_value = "none"
    )]
    pub replication: ReplicationMode,
    /// In sync mode, when no replica acks in time: fail (UNAVAILABLE) or degrade (ack
    /// after the local flush, flagged in the reply).
    #[arg(long, env = "CONCORD_SHOP_ON_REPLICA_LOSS", default_value = "fail")]
    pub on_replica_loss: OnReplicaLoss,
    /// How long a sync write waits for the replica's ack.
    #[arg(long, default_value = "2s", value_parser = concord::config::parse_duration)]
    pub sync_timeout: Duration,
    /// Stable id of this process as a replica.
    #[arg(long)]
    pub replica_id: Option<String>,
    /// Trim the WAL, keeping at least the last N entries and never an entry the replica
    /// has not acked yet (default: never trim; a replica that falls behind the trimmed
    /// part gets a snapshot).
    #[arg(long, env = "CONCORD_SHOP_WAL_RETAIN")]
    pub wal_retain: Option<u64>,
    /// Lease TTL in the registry (failover happens about one TTL after a primary dies).
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
}

/// Serves the shop until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = concord::shutdown::signal();
    let dials: Vec<&str> = [args.registry.as_deref(), args.replica_of.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    args.tls.install(
        Some(&concord::identity::Principal::Shop),
        args.credential.as_ref(),
        Some(args.listen),
        &dials,
    )?;
    let admin_token = match args.admin_token {
        Some(token) => token,
        None => args.secrets.load()?.admin_token,
    };
    let mut config = concord_shop::Config::new(args.data_dir);
    config.admin_token = admin_token;
    config.session_key = args.session_key;
    config.session_ttl = args.session_ttl;
    config.registry_addr = args.registry;
    config.advertise_addr = args.advertise;
    config.lease_ttl = args.lease_ttl;
    config.credential = args.credential;
    config.replication.mode = args.replication;
    config.replication.on_replica_loss = args.on_replica_loss;
    config.replication.sync_timeout = args.sync_timeout;
    config.replication.primary_addr = args.replica_of;
    config.replication.wal_retain = args.wal_retain;
    if let Some(id) = args.replica_id {
        config.replication.replica_id = id;
    }
    let listener = super::bind_and_announce("shop", args.listen).await?;
    let metrics = args.metrics.start("shop").await?;
    let served = concord_shop::serve(config, listener, shutdown).await;
    super::stop_metrics(metrics).await;
    served?;
    Ok(())
}
