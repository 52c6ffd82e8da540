//! One module per role: its flags (`Args`) and how to run it in the foreground.
//!
//! Each role binds its listener, prints the line `concord <role> listening on <addr>` on
//! stdout (the launcher and tests read it, which is what makes `--listen 127.0.0.1:0`
//! usable), then serves until Ctrl-C or SIGTERM.

pub mod aggregator;
pub mod gateway;
pub mod node;
pub mod registry;
pub mod shop;

use std::{net::SocketAddr, path::PathBuf};

use tokio::net::TcpListener;

/// Binds `addr` and announces the address actually bound.
pub async fn bind_and_announce(role: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = concord::config::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {addr}: {err}"))?;
    let bound = listener.local_addr()?;
    println!("{}", concord::config::listening_line(role, bound));
    tracing::info!(role, %bound, "listening");
    Ok(listener)
}

/// Where a role started by hand finds the cluster's secrets that no flag gave it.
#[derive(Debug, clap::Args)]
pub struct SecretsSource {
    /// The cluster's data directory: secrets not given by flag or environment are read
    /// from `<dir>/secrets/` (created at random on first use, as `concord up` does).
    #[arg(
        long = "cluster-data-dir",
        env = "CONCORD_DATA_DIR",
        default_value = "./data"
    )]
    pub cluster_data_dir: PathBuf,
}

impl SecretsSource {
    /// The stored secrets (created when missing); logs where they came from.
    pub fn load(&self) -> anyhow::Result<concord::secrets::Secrets> {
        let dir = concord::secrets::dir(&self.cluster_data_dir);
        let secrets =
            concord::secrets::Secrets::load_or_create(&self.cluster_data_dir).map_err(|err| {
                anyhow::anyhow!(
                    "cannot read or create the secrets in {}: {err}",
                    dir.display()
                )
            })?;
        tracing::info!(dir = %dir.display(), "using the cluster secrets stored on disk");
        Ok(secrets)
    }
}

/// Parses a `--credential` value.
pub fn parse_credential(text: &str) -> Result<concord::identity::Credential, String> {
    concord::identity::Credential::parse(text).map_err(|err| err.to_string())
}
