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

use concord::identity::{Credential, Principal};
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

/// The `--metrics-addr` flag every gRPC role takes (flattened into its `Args`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at `http://ADDR/metrics` (off by default; port 0 picks a
    /// free port). Plain HTTP: bind it to loopback or a monitoring network.
    #[arg(long, env = "CONCORD_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

/// A running metrics listener; [`MetricsServer::stop`] ends and joins it.
pub struct MetricsServer {
    stop_tx: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl MetricsArgs {
    /// Binds `--metrics-addr` (if given), prints `concord <role> metrics on <addr>` on
    /// stdout and serves `GET /metrics` until stopped.
    pub async fn start(&self, role: &str) -> anyhow::Result<Option<MetricsServer>> {
        let Some(addr) = self.metrics_addr else {
            return Ok(None);
        };
        let listener = concord::config::bind(addr)
            .await
            .map_err(|err| anyhow::anyhow!("cannot serve metrics on {addr}: {err}"))?;
        let bound = listener.local_addr()?;
        println!("{}", metrics_line(role, bound));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(concord::metrics::serve(listener, async move {
            let _ = stop_rx.await;
        }));
        Ok(Some(MetricsServer { stop_tx, task }))
    }
}

impl MetricsServer {
    /// Stops serving and waits for the listener task.
    pub async fn stop(self) {
        let _ = self.stop_tx.send(());
        match self.task.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(%err, "metrics listener failed"),
            Err(err) => tracing::error!(%err, "metrics listener task failed"),
        }
    }
}

/// Stops `server` if there is one (the role's serve has returned).
pub async fn stop_metrics(server: Option<MetricsServer>) {
    if let Some(server) = server {
        server.stop().await;
    }
}

/// The line a role prints once its metrics listener is bound.
pub fn metrics_line(role: &str, addr: SocketAddr) -> String {
    format!(
        "concord {role} metrics on http://{addr}{}",
        concord::metrics::METRICS_PATH
    )
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
        stored_secrets(&self.cluster_data_dir)
    }
}

/// The secrets stored under `data_dir` (created at random when missing, as `concord up`
/// does); logs where they came from, never their values.
pub fn stored_secrets(data_dir: &std::path::Path) -> anyhow::Result<concord::secrets::Secrets> {
    let dir = concord::secrets::dir(data_dir);
    let secrets = concord::secrets::Secrets::load_or_create(data_dir).map_err(|err| {
        anyhow::anyhow!(
            "cannot read or create the secrets in {}: {err}",
            dir.display()
        )
    })?;
    tracing::info!(dir = %dir.display(), "using the cluster secrets stored on disk");
    Ok(secrets)
}

/// Parses a `--credential` value.
pub fn parse_credential(text: &str) -> Result<concord::identity::Credential, String> {
    concord::identity::Credential::parse(text).map_err(|err| err.to_string())
}

/// The mutual-TLS flags every role takes (flattened into its `Args`).
///
/// With all three files the process serves mutual TLS and dials its peers over TLS with
/// its certificate ([`concord::tls`]); with none it speaks plaintext, which is allowed only
/// over loopback unless `--insecure` says otherwise.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// This process's certificate (PEM), naming its principal (`concord certs` makes them).
    #[arg(long, env = "CONCORD_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "CONCORD_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA (PEM): peers must present certificates it signed.
    #[arg(long, env = "CONCORD_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Allow plaintext gRPC to or from a non-loopback address (no TLS flags).
    #[arg(long, env = "CONCORD_INSECURE")]
    pub insecure: bool,
}

impl TlsArgs {
    /// The TLS files, if all three were given; an error if only some were.
    pub fn files(&self) -> anyhow::Result<Option<concord::tls::TlsFiles>> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Ok(Some(concord::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            })),
            (None, None, None) => Ok(None),
            _ => anyhow::bail!(
                "--tls-cert, --tls-key and --tls-ca go together: give all three or none"
            ),
        }
    }

    /// Sets up this process's TLS before it listens or dials anything.
    ///
    /// With TLS files: loads and checks them, checks the certificate names `principal`
    /// (when the role has one) and agrees with `credential`, and installs them for every
    /// server and channel of the process. Without: refuses plaintext gRPC on a
    /// non-loopback `listen` address or towards a non-loopback address in `dials` (the
    /// registry, a primary), unless `--insecure`.
    pub fn install(
        &self,
        principal: Option<&Principal>,
        credential: Option<&Credential>,
        listen: Option<SocketAddr>,
        dials: &[&str],
    ) -> anyhow::Result<()> {
        let Some(files) = self.files()? else {
            return self.check_plaintext(listen, dials);
        };
        let tls = concord::tls::Tls::load(&files)?;
        if let Some(principal) = principal {
            anyhow::ensure!(
                tls.principal() == principal,
                "the certificate {} names {} but this process runs as {principal}",
                files.cert.display(),
                tls.principal()
            );
        }
        if let Some(credential) = credential {
            anyhow::ensure!(
                credential.principal() == tls.principal(),
                "--credential names {} but the certificate {} names {}",
                credential.principal(),
                files.cert.display(),
                tls.principal()
            );
        }
        tracing::info!(principal = %tls.principal(), "mutual TLS on every gRPC link");
        concord::tls::install(tls)?;
        Ok(())
    }

    fn check_plaintext(&self, listen: Option<SocketAddr>, dials: &[&str]) -> anyhow::Result<()> {
        let exposed = listen
            .filter(|addr| !addr.ip().is_loopback())
            .map(|addr| format!("listen on {addr}"))
            .into_iter()
            .chain(
                dials
                    .iter()
                    // A registry flag may list several addresses (`a,b`).
                    .flat_map(|addrs| concord::discovery::registry_addrs(addrs))
                    .filter(|addr| !is_loopback(addr))
                    .map(|addr| format!("dial {addr}")),
            )
            .collect::<Vec<_>>();
        if exposed.is_empty() {
            return Ok(());
        }
        let what = exposed.join(" and ");
        if self.insecure {
            tracing::warn!(links = %what, "plaintext gRPC beyond loopback (--insecure)");
            return Ok(());
        }
        anyhow::bail!(
            "refusing to {what} in plaintext (not a loopback address): give --tls-cert, \
             --tls-key and --tls-ca (`concord certs --out DIR` makes development ones), or pass \
             --insecure to accept unauthenticated, unencrypted traffic across hosts"
        )
    }
}

/// Whether `addr` (`host:port`, optionally with a scheme) is certainly on this machine:
/// a loopback IP or `localhost`. Any other host name counts as remote.
pub fn is_loopback(addr: &str) -> bool {
    let authority = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    let authority = authority.split('/').next().unwrap_or(authority);
    if let Ok(socket) = authority.parse::<SocketAddr>() {
        return socket.ip().is_loopback();
    }
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host);
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loopback IPs and `localhost` are local; every other address or host name is not.
    #[test]
    fn loopback_addresses() {
        for (addr, local) in [
            ("127.0.0.1:50050", true),
            ("127.0.0.2:1", true),
            ("[::1]:50050", true),
            ("localhost:50050", true),
            ("http://127.0.0.1:50050", true),
            ("https://localhost:1/", true),
            ("0.0.0.0:50050", false),
            ("10.0.0.5:50050", false),
            ("registry.example:50050", false),
            ("localhost.evil.example:1", false),
        ] {
            assert_eq!(is_loopback(addr), local, "{addr}");
        }
    }

    /// Without TLS, a non-loopback listen or dial needs --insecure; loopback never does.
    #[test]
    fn plaintext_only_on_loopback() {
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let public: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let strict = TlsArgs::default();
        let insecure = TlsArgs {
            insecure: true,
            ..TlsArgs::default()
        };
        for (args, listen, dials, ok) in [
            (&strict, Some(local), vec!["127.0.0.1:50050"], true),
            (&strict, Some(public), vec![], false),
            (&strict, Some(local), vec!["10.0.0.5:50050"], false),
            (&strict, None, vec!["localhost:1"], true),
            (&insecure, Some(public), vec!["10.0.0.5:50050"], true),
        ] {
            let got = args.check_plaintext(listen, &dials);
            assert_eq!(got.is_ok(), ok, "{listen:?} {dials:?}: {got:?}");
            if let Err(err) = got {
                assert!(err.to_string().contains("--insecure"), "{err}");
            }
        }
    }
}
