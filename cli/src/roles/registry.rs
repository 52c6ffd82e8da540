//! `concord registry`: the service registry.

use std::net::SocketAddr;

/// Flags of `concord registry`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "CONCORD_REGISTRY_LISTEN", default_value = concord::config::DEFAULT_REGISTRY_ADDR)]
    pub listen: SocketAddr,
    /// Mutual TLS (or plaintext, loopback only unless --insecure).
    #[command(flatten)]
    pub tls: super::TlsArgs,
}

/// Runs the registry until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = concord::shutdown::signal();
    let principal = concord::identity::Principal::Registry;
    args.tls
        .install(Some(&principal), None, Some(args.listen), &[])?;
    let listener = super::bind_and_announce("registry", args.listen).await?;
    concord_registry::serve(concord_registry::Config::default(), listener, shutdown).await?;
    Ok(())
}
