//! `concord registry`: the service registry.

use std::{net::SocketAddr, path::PathBuf};

use concord::identity::ClusterSecret;

/// Flags of `concord registry`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "CONCORD_REGISTRY_LISTEN", default_value = concord::config::DEFAULT_REGISTRY_ADDR)]
    pub listen: SocketAddr,
    /// The cluster secret every Register/KeepAlive/Deregister credential is checked
    /// against. Without it, the one in `<data-dir>/secrets/` (created on first use).
    #[arg(long, env = "CONCORD_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Data directory whose `secrets/` holds the cluster secret when none is given.
    #[arg(long, env = "CONCORD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Keep leases, instance sets and primary claims in this etcd cluster (comma-separated
    /// client addresses, `host:port`) instead of in memory; several registries given the
    /// same endpoints then serve one cluster.
    #[arg(long, env = "CONCORD_REGISTRY_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The key prefix in etcd (one per Concord cluster sharing an etcd).
    #[arg(long, env = "CONCORD_REGISTRY_ETCD_ROOT", default_value = concord_registry::DEFAULT_ETCD_ROOT)]
    pub etcd_root: String,
    /// The CA etcd's certificates chain to: with it, etcd is dialled over TLS (`https://`).
    #[arg(long, env = "CONCORD_ETCD_CA", requires = "etcd")]
    pub etcd_ca: Option<PathBuf>,
    /// The client certificate to present to etcd (for etcd's `--client-cert-auth`); needs
    /// --etcd-key and --etcd-ca.
    #[arg(long, env = "CONCORD_ETCD_CERT", requires_all = ["etcd_key", "etcd_ca"])]
    pub etcd_cert: Option<PathBuf>,
    /// The key of --etcd-cert.
    #[arg(long, env = "CONCORD_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// The etcd user to authenticate as (etcd `--auth`); its password is read from
    /// --etcd-password-file, never taken on the command line.
    #[arg(long, env = "CONCORD_ETCD_USER", requires_all = ["etcd", "etcd_password_file"])]
    pub etcd_user: Option<String>,
    /// A file holding the etcd user's password (one line).
    #[arg(long, env = "CONCORD_ETCD_PASSWORD_FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
    /// Prometheus metrics listener (off unless given).
    #[command(flatten)]
    pub metrics: super::MetricsArgs,
    /// Mutual TLS (or plaintext, loopback only unless --insecure).
    #[command(flatten)]
    pub tls: super::TlsArgs,
}

impl Args {
    /// The cluster secret: the flag's or environment's, else the data directory's. Logs
    /// where it came from, never its value.
    fn cluster_secret(&self) -> anyhow::Result<ClusterSecret> {
        if let Some(secret) = &self.cluster_secret {
            tracing::info!("cluster secret from --cluster-secret / CONCORD_CLUSTER_SECRET");
            return Ok(ClusterSecret::new(secret.as_str())?);
        }
        let secrets = super::stored_secrets(&self.data_dir)?;
        Ok(ClusterSecret::new(secrets.cluster_secret)?)
    }

    /// How to reach etcd: TLS with --etcd-ca (and a client certificate with --etcd-cert),
    /// a user with --etcd-user.
    fn etcd_security(&self) -> anyhow::Result<concord::etcd::EtcdSecurity> {
        let tls = match &self.etcd_ca {
            Some(ca) => {
                let client = self.etcd_cert.as_deref().zip(self.etcd_key.as_deref());
                Some(concord::etcd::EtcdTls::load(ca, client)?)
            }
            None => None,
        };
        let auth = match (&self.etcd_user, &self.etcd_password_file) {
            (Some(user), Some(file)) => Some(concord::etcd::EtcdAuth::from_file(user, file)?),
            _ => None,
        };
        Ok(concord::etcd::EtcdSecurity { tls, auth })
    }
}

/// Runs the registry until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut config = concord_registry::Config::new(args.cluster_secret()?);
    if !args.etcd.is_empty() {
        let mut etcd =
            concord_registry::EtcdConfig::with_security(&args.etcd, &args.etcd_security()?)?;
        etcd.root.clone_from(&args.etcd_root);
        config = config.with_etcd(etcd);
    }
    let shutdown = concord::shutdown::signal();
    let principal = concord::identity::Principal::Registry;
    args.tls
        .install(Some(&principal), None, Some(args.listen), &[])?;
    let listener = super::bind_and_announce("registry", args.listen).await?;
    let metrics = args.metrics.start("registry").await?;
    let served = concord_registry::serve(config, listener, shutdown).await;
    super::stop_metrics(metrics).await;
    served?;
    Ok(())
}
