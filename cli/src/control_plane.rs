//! `concord up --control-plane etcd`: a 3-member etcd cluster on loopback and two
//! registries keeping their leases in it, supervised like every other child.
//!
//! etcd (Debian's `etcd-server`, binary `etcd`) does not print Concord's
//! `concord <role> listening on <addr>` line, so each member runs under a small wrapper,
//! the hidden `concord etcd-member`: it starts `etcd` (killed with the wrapper), waits until
//! the member answers a linearizable read (that is, until the cluster has a quorum and a
//! leader), announces the member's client address, and on SIGTERM stops etcd with SIGTERM.
//! The supervisor then restarts a dead member like any child.
//!
//! **Secured by default.** etcd holds the primary claims and terms, and anyone who can
//! write to it bypasses the registry's identity checks, so the members serve TLS only and
//! require a certificate of the development CA (`<data-dir>/certs/`, the one `concord
//! certs` makes) from clients and peers (`--client-cert-auth`): the registries present
//! their own Concord certificate, each member a certificate `etcd.pem` made for the
//! members. Each member's Prometheus `/metrics` is served in plaintext on a port of its
//! own (`--listen-metrics-urls`), so scraping needs no client certificate.
//!
//! Every start makes a fresh etcd cluster (`<data-dir>/etcd/` is emptied first): the
//! registry's state is leases, which expire anyway, and a cluster made afresh may use new
//! ports (`--auto-ports`) without its old member list getting in the way.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use concord::etcd::{local_member_args_with, Etcd, EtcdSecurity, EtcdTls, LocalMember, MemberTls};

/// Members of the etcd cluster `concord up --control-plane etcd` starts.
pub const MEMBERS: usize = 3;
/// Default client ports of the members (peer ports are these + 10).
pub const DEFAULT_CLIENT_PORTS: [u16; MEMBERS] = [52379, 52380, 52381];
/// Default address of the second registry (the first has the usual one).
pub const DEFAULT_SECOND_REGISTRY_ADDR: &str = "127.0.0.1:50049";
/// How long a member may take to answer before the wrapper gives up (and the supervisor
/// restarts it).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long etcd gets after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Flags of the hidden `concord etcd-member`.
#[derive(Debug, clap::Args)]
pub struct MemberArgs {
    /// This member's name (one of `--initial-cluster`'s).
    #[arg(long)]
    pub name: String,
    /// Where clients reach it.
    #[arg(long)]
    pub client: SocketAddr,
    /// Every member as `name=peer-host:port`, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub initial_cluster: Vec<String>,
    /// Its data directory.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The etcd binary.
    #[arg(long, env = "CONCORD_ETCD", default_value = "etcd")]
    pub etcd: String,
    /// The member's certificate (server and client use): with it, client and peer links
    /// are TLS and need a certificate of --ca.
    #[arg(long, requires_all = ["key", "ca"])]
    pub cert: Option<PathBuf>,
    /// The key of --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// The CA of clients' and peers' certificates.
    #[arg(long, requires = "cert")]
    pub ca: Option<PathBuf>,
    /// Serve Prometheus `/metrics` in plaintext here.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
}

/// The members of a cluster from `name=peer` entries (client addresses are not needed for
/// the peers' part and are set to `client` for all).
fn members(entries: &[String], client: SocketAddr) -> anyhow::Result<Vec<LocalMember>> {
    entries
        .iter()
        .map(|entry| {
            let (name, peer) = entry
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("{entry:?} is not name=host:port"))?;
            Ok(LocalMember {
                name: name.to_owned(),
                client,
                peer: peer.parse()?,
            })
        })
        .collect()
}

/// Runs one etcd member until SIGTERM/Ctrl-C, or until etcd exits (an error: the supervisor
/// restarts the wrapper).
pub async fn run_member(args: MemberArgs) -> anyhow::Result<()> {
    let shutdown = concord::shutdown::signal();
    let all = members(&args.initial_cluster, args.client)?;
    let me = all
        .iter()
        .find(|m| m.name == args.name)
        .ok_or_else(|| anyhow::anyhow!("--name {} is not in --initial-cluster", args.name))?
        .clone();
    let me = LocalMember {
        client: args.client,
        ..me
    };
    let tls = match (&args.cert, &args.key, &args.ca) {
        (Some(cert), Some(key), Some(ca)) => Some(MemberTls {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
        }),
        _ => None,
    };
    // The wrapper's readiness check presents the member's own certificate.
    let security = EtcdSecurity {
        tls: tls
            .as_ref()
            .map(|t| EtcdTls::load(&t.ca, Some((&t.cert, &t.key))))
            .transpose()?,
        auth: None,
    };
    let mut command = tokio::process::Command::new(&args.etcd);
    command
        .args(local_member_args_with(
            &me,
            &all,
            &args.data_dir,
            tls.as_ref(),
            args.metrics_addr,
        ))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    crate::supervisor::die_with_parent(&mut command);
    let mut etcd = command.spawn().map_err(|err| {
        anyhow::anyhow!(
            "cannot start `{}` ({err}); install Debian's etcd-server or set CONCORD_ETCD",
            args.etcd
        )
    })?;
    let client = Etcd::connect_with(&[args.client.to_string()], &security)?;
    let ready = async {
        while client.range_prefix(b"/").await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        answered = tokio::time::timeout(READY_TIMEOUT, ready) => {
            if answered.is_err() {
                anyhow::bail!("etcd member {} did not answer within {READY_TIMEOUT:?}", args.name);
            }
        }
        status = etcd.wait() => anyhow::bail!("etcd member {} exited at start-up: {status:?}", args.name),
    }
    println!("{}", concord::config::listening_line("etcd", args.client));
    tokio::select! {
        () = shutdown => {
            if let Some(pid) = etcd.id() {
                let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            }
            if tokio::time::timeout(STOP_TIMEOUT, etcd.wait()).await.is_err() {
                tracing::warn!(member = %args.name, "etcd did not stop in time; killing it");
                let _ = etcd.kill().await;
            }
            Ok(())
        }
        status = etcd.wait() => anyhow::bail!("etcd member {} exited: {status:?}", args.name),
    }
}
