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

use std::net::SocketAddr;

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

/// Parses a `--credential` value.
pub fn parse_credential(text: &str) -> Result<concord::identity::Credential, String> {
    concord::identity::Credential::parse(text).map_err(|err| err.to_string())
}
