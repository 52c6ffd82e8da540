//! `concord gateway`: HTTP/JSON and the browser UI over the gRPC services. It registers
//! itself in the registry as `gateway` (so `concord status` lists it) and deregisters on
//! Ctrl-C/SIGTERM.

use std::{net::SocketAddr, time::Duration};

/// Flags of `concord gateway`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "CONCORD_GATEWAY_LISTEN", default_value = concord::config::DEFAULT_GATEWAY_ADDR)]
    pub listen: SocketAddr,
    /// Registry where the backends are found and the gateway registers itself.
    #[arg(long, env = "CONCORD_REGISTRY", default_value = concord::config::DEFAULT_REGISTRY_ADDR)]
    pub registry: String,
    /// Address to publish in the registry (default: the bound address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Lease TTL of the gateway's registration.
    #[arg(long, default_value = "2s", value_parser = concord::config::parse_duration)]
    pub lease_ttl: Duration,
    /// This process's cluster credential, `<principal>:<hex>` (`concord token credential
    /// <principal>` prints one; `concord up` hands each child its own).
    #[arg(long, env = "CONCORD_CREDENTIAL", value_parser = super::parse_credential, hide_env_values = true)]
    pub credential: Option<concord::identity::Credential>,
    /// Deadline of each backend call attempt (past it: 504).
    #[arg(long, env = "CONCORD_GATEWAY_CALL_TIMEOUT", default_value = "10s", value_parser = concord::config::parse_duration)]
    pub call_timeout: Duration,
    /// Largest accepted request body, in bytes (larger: 413).
    #[arg(long, env = "CONCORD_GATEWAY_BODY_LIMIT", default_value_t = 64 * 1024)]
    pub body_limit: usize,
    /// How often the live cluster view is refreshed without a registry change.
    #[arg(long, env = "CONCORD_GATEWAY_CLUSTER_REFRESH", default_value = "2s", value_parser = concord::config::parse_duration)]
    pub cluster_refresh: Duration,
    /// Time a client has to send a complete request head before it is disconnected.
    #[arg(long, env = "CONCORD_GATEWAY_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = concord::config::parse_duration)]
    pub header_read_timeout: Duration,
    /// Time a request body has to arrive whole before the request fails.
    #[arg(long, env = "CONCORD_GATEWAY_BODY_READ_TIMEOUT", default_value = "10s", value_parser = concord::config::parse_duration)]
    pub body_read_timeout: Duration,
    /// Most HTTP connections open at once (past it the listener stops accepting).
    #[arg(long, env = "CONCORD_GATEWAY_MAX_CONNECTIONS", default_value_t = concord_web_gateway::edge::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Mark the customer session cookie `Secure` (browsers reach the gateway over HTTPS,
    /// through a TLS-terminating proxy).
    #[arg(long, env = "CONCORD_GATEWAY_SECURE_COOKIES")]
    pub secure_cookies: bool,
    /// Mutual TLS towards the gRPC backends (the HTTP listener stays HTTP); plaintext
    /// only to a loopback registry unless --insecure.
    #[command(flatten)]
    pub tls: super::TlsArgs,
    /// `concord up`'s supervisor admin API (`host:port`): the UI's live controls (kill,
    /// freeze, stop/start processes, turn a node liar) are proxied to it; without it
    /// `/api/admin/cluster` answers 503. `concord up` sets it.
    #[arg(long, env = "CONCORD_SUPERVISOR_ADDR")]
    pub supervisor_addr: Option<String>,
}

/// Serves the gateway until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = concord::shutdown::signal();
    // The listener is HTTP for browsers, not a cluster link: only the dials are checked.
    args.tls.install(
        Some(&concord::identity::Principal::Gateway),
        args.credential.as_ref(),
        None,
        &[args.registry.as_str()],
    )?;
    let config = concord_web_gateway::Config {
        registry_addr: args.registry,
        call_timeout: args.call_timeout,
        body_limit_bytes: args.body_limit,
        cluster_refresh: args.cluster_refresh,
        advertise: args.advertise,
        lease_ttl: args.lease_ttl,
        credential: args.credential,
        limits: concord_web_gateway::edge::Limits {
            header_read_timeout: args.header_read_timeout,
            body_read_timeout: args.body_read_timeout,
            max_connections: args.max_connections,
        },
        secure_cookies: args.secure_cookies,
        supervisor_addr: args.supervisor_addr,
    };
    config.validate()?;
    let listener = super::bind_and_announce("gateway", args.listen).await?;
    concord_web_gateway::serve(config, listener, shutdown).await?;
    Ok(())
}
