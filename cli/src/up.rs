//! `concord up`: the whole cluster on one machine, as supervised child processes of this
//! same binary.
//!
//! Start order: the registry first (everyone else registers with it), then every other
//! role at once. With `--control-plane etcd`, a 3-member etcd cluster comes before two
//! registries that keep their leases in it, and every process is given both registries
//! (`crate::control_plane`). Stop order is the reverse. Addresses follow the default port plan
//! (`concord::config`, README's table of processes), or, with
//! `--auto-ports`, free ports picked at start-up (tests, or two clusters side by side); a
//! restarted child gets the same address it had, so peers never need to be told.
//!
//! Every child that (re)starts and announces its address prints one line on stdout:
//! `concord up: <name> (<role>) pid <pid> running on <addr>` — scripts and tests follow it.
//! Once all are up, one line per child says where its Prometheus metrics are:
//! `concord up: <name> metrics at http://<addr>/metrics` (a gRPC child's metrics listener is
//! its gRPC port + [`METRICS_PORT_OFFSET`], or a free port with `--auto-ports`; the
//! gateway's is its HTTP port). `--otlp-endpoint` is handed to every child.
//!
//! Operators (the UI through the gateway, `concord chaos`) give children orders through
//! the supervisor admin API (`crate::up_admin`): `concord up: supervisor admin API at
//! http://<addr>` on stdout, the address also in `<data-dir>/supervisor-admin.addr`, and
//! the gateway gets it as `--supervisor-addr`.
//!
//! Secrets: the first start creates a random cluster secret, admin token and oracle token
//! under `<data-dir>/secrets/` (mode 0600; `concord token` prints them) and every later
//! start reuses them. Each child gets, in its environment, only what its role needs: the
//! registry the cluster secret (to check every registration), the aggregator the cluster
//! secret (to check `Stake` credentials) and the oracle token, the shops the admin token
//! and the session key (both shops sign and check customer sessions with it, so a session
//! survives failover; no other role can mint one), and every process its own credential — a node never sees the cluster secret, so it can
//! speak only for itself.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use concord::{
    identity::{ClusterSecret, Principal},
    secrets::Secrets,
};

use crate::supervisor::{ChildSpec, ChildState, RestartPolicy, Supervised};

/// Flags of `concord up`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory for every process's data (sub-directories per process).
    #[arg(long, env = "CONCORD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Pick free ports instead of the defaults: registry 127.0.0.1:50050, aggregator
    /// :50051, nodes :50052…, shops :50060/:50061, gateway :8080 (README's table).
    #[arg(long, env = "CONCORD_AUTO_PORTS")]
    pub auto_ports: bool,
    /// Prediction nodes to start (each a different default-fleet model, cycling).
    #[arg(long, env = "CONCORD_NODES", default_value_t = 5)]
    pub nodes: usize,
    /// How many of the nodes are faulty (the last ones).
    #[arg(long, env = "CONCORD_FAULTY", default_value_t = 0)]
    pub faulty: usize,
    /// Behaviour of the faulty nodes: inverted (colluding), random or slow:<ms>.
    #[arg(long, default_value = "inverted")]
    pub faulty_behaviour: String,
    /// Shop replication: sync (zero acknowledged-write loss), async (bounded loss) or
    /// none (no replica process).
    #[arg(long, env = "CONCORD_REPLICATION", default_value = "sync")]
    pub replication: String,
    /// How long each child may take to announce its address.
    #[arg(long, default_value = "30s", value_parser = concord::config::parse_duration)]
    pub start_timeout: Duration,
    /// Cluster secret (default: `<data-dir>/secrets/cluster-secret`, created at random).
    #[arg(long, env = "CONCORD_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// Admin token (default: `<data-dir>/secrets/admin-token`, created at random).
    #[arg(long, env = "CONCORD_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Oracle token (default: `<data-dir>/secrets/oracle-token`, created at random).
    #[arg(long, env = "CONCORD_ORACLE_TOKEN", hide_env_values = true)]
    pub oracle_token: Option<String>,
    /// Tokens each node stakes for itself on its first start (the ledger mints nothing
    /// for a node it has never seen: without a stake it has no weight).
    #[arg(long, env = "CONCORD_INITIAL_STAKE", default_value_t = concord_aggregator::policy::DEFAULT_INITIAL_STAKE)]
    pub initial_stake: u64,
    /// Mutual TLS on every gRPC link: a development CA and one certificate per process
    /// are made under `<data-dir>/certs/` (reused after), and each child gets its own.
    #[arg(long, env = "CONCORD_TLS")]
    pub tls: bool,
    /// Where the registry keeps its leases: `embedded` (one registry, in memory: nothing
    /// to install) or `etcd` (a fresh 3-member etcd cluster on loopback, data under
    /// `<data-dir>/etcd/`, and two registries on it; needs Debian's `etcd-server`).
    #[arg(
        long,
        env = "CONCORD_CONTROL_PLANE",
        value_enum,
        default_value = "embedded"
    )]
    pub control_plane: ControlPlane,
    /// Metrics of the launcher itself (each child's restarts and state); every child gets
    /// its own metrics listener regardless (gRPC port + 1000, or a free port with
    /// --auto-ports; the gateway serves /metrics on its HTTP port).
    #[command(flatten)]
    pub metrics: crate::roles::MetricsArgs,
    /// Where the supervisor admin API listens (kill, freeze, stop/start children, change a
    /// node's behaviour; needs the admin token). Default: a free port on 127.0.0.1. The
    /// address is also written to `<data-dir>/supervisor-admin.addr`.
    #[arg(long, env = "CONCORD_UP_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
}

/// Where `concord up`'s registry keeps its leases.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ControlPlane {
    /// One registry, leases in memory.
    Embedded,
    /// Two registries on a 3-member etcd cluster.
    Etcd,
}

/// Offset from a child's default gRPC port to its default metrics port.
pub const METRICS_PORT_OFFSET: u16 = 1000;

/// The cluster's secrets: the files under `data_dir` (created when missing), each
/// overridden by its flag or environment variable when given.
pub fn cluster_secrets(
    data_dir: &std::path::Path,
    cluster_secret: Option<String>,
    admin_token: Option<String>,
    oracle_token: Option<String>,
) -> anyhow::Result<Secrets> {
    let stored = crate::roles::stored_secrets(data_dir)?;
    let secrets = Secrets {
        cluster_secret: cluster_secret.unwrap_or(stored.cluster_secret),
        admin_token: admin_token.unwrap_or(stored.admin_token),
        oracle_token: oracle_token.unwrap_or(stored.oracle_token),
        session_key: stored.session_key,
    };
    ClusterSecret::new(secrets.cluster_secret.clone())?;
    anyhow::ensure!(
        !secrets.admin_token.trim().is_empty() && !secrets.oracle_token.trim().is_empty(),
        "the admin and oracle tokens must not be empty"
    );
    Ok(secrets)
}

/// Picks addresses: the defaults of `concord::config`, or free loopback ports.
struct PortPlan {
    auto: bool,
    /// Ports this plan handed out: a released probe port can come back from the kernel
    /// on a later probe, and two children given one port would fight over it for ever
    /// (the supervisor restarts the loser on the same flags).
    given: std::sync::Mutex<std::collections::HashSet<u16>>,
}

impl PortPlan {
    fn new(auto: bool) -> Self {
        Self {
            auto,
            given: Default::default(),
        }
    }

    fn addr(&self, default: &str) -> anyhow::Result<SocketAddr> {
        let default: SocketAddr = default.parse()?;
        if !self.auto {
            return Ok(default);
        }
        let mut given = self
            .given
            .lock()
            .map_err(|_| anyhow::anyhow!("port plan poisoned"))?;
        // Bind port 0, read the port, release it: the child binds it a moment later.
        // The kernel picks from thousands of ports, so a repeat is rare and a few tries
        // always find a fresh one.
        for _ in 0..64 {
            let probe = std::net::TcpListener::bind((default.ip(), 0))?;
            let addr = probe.local_addr()?;
            if given.insert(addr.port()) {
                return Ok(addr);
            }
        }
        anyhow::bail!("no fresh free port on {} after 64 tries", default.ip())
    }
}

/// Runs the cluster until Ctrl-C or SIGTERM; `otlp_endpoint` (the global flag) is passed
/// to every child.
pub async fn run(args: Args, otlp_endpoint: Option<String>) -> anyhow::Result<()> {
    let shutdown = concord::shutdown::signal();
    std::fs::create_dir_all(&args.data_dir)?;
    let program = std::env::current_exe()?;
    let ports = PortPlan::new(args.auto_ports);
    let policy = RestartPolicy::default();
    let secrets = cluster_secrets(
        &args.data_dir,
        args.cluster_secret.clone(),
        args.admin_token.clone(),
        args.oracle_token.clone(),
    )?;
    println!(
        "secrets in {} (`concord token admin|oracle --data-dir {}` prints the tokens)",
        concord::secrets::dir(&args.data_dir).display(),
        args.data_dir.display()
    );

    let admin_listener = concord::config::bind(
        args.admin_addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
    )
    .await
    .map_err(|err| anyhow::anyhow!("supervisor admin API: {err}"))?;
    let admin_addr = admin_listener.local_addr()?;

    let (registry_addr, tiers, metrics) = plan(
        &args,
        &program,
        &ports,
        &secrets,
        otlp_endpoint.as_deref(),
        admin_addr,
    )?;
    let registry_addr = registry_addr.as_str();
    let own_metrics = args.metrics.start("up").await?;

    let mut running: Vec<Supervised> = Vec::new();
    for tier in tiers {
        let started: Vec<Supervised> = tier
            .into_iter()
            .map(|spec| Supervised::start(spec, policy))
            .collect();
        for child in &started {
            if let Err(err) = child.wait_running(args.start_timeout).await {
                tracing::error!(%err, "start-up failed; stopping the cluster");
                running.extend(started);
                stop_all(running).await;
                return Err(err);
            }
        }
        running.extend(started);
    }
    print_table(&running, registry_addr, &metrics);
    crate::supervisor::ChildrenCollector::register(&running);

    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(crate::up_admin::serve(
        admin_listener,
        crate::up_admin::router(
            secrets.admin_token.clone(),
            running.iter().map(Supervised::controller).collect(),
        ),
        async move {
            let _ = admin_stopped.await;
        },
    ));
    std::fs::write(
        args.data_dir.join(crate::up_admin::ADDR_FILE),
        admin_addr.to_string(),
    )?;
    println!("concord up: supervisor admin API at http://{admin_addr}");

    let announcer = tokio::spawn(announce_restarts(
        running
            .iter()
            .map(|c| (c.spec.clone(), c.status_receiver()))
            .collect(),
    ));
    shutdown.await;
    announcer.abort();
    let _ = admin_stop.send(());
    // A browser's keep-alive connection must not hold the shutdown up.
    let _ = tokio::time::timeout(Duration::from_secs(2), admin).await;
    stop_all(running).await;
    crate::roles::stop_metrics(own_metrics).await;
    Ok(())
}

/// Where each child's metrics are: `(child name, URL)`, in start order.
pub type MetricsPlan = Vec<(String, String)>;

/// The children to start, tier by tier (each tier waits for the previous one), the
/// registry address (a comma-separated list with several registries) and where each
/// child serves its metrics.
fn plan(
    args: &Args,
    program: &std::path::Path,
    ports: &PortPlan,
    secrets: &Secrets,
    otlp_endpoint: Option<&str>,
    admin_addr: SocketAddr,
) -> anyhow::Result<(String, Vec<Vec<ChildSpec>>, MetricsPlan)> {
    anyhow::ensure!(
        args.faulty <= args.nodes,
        "--faulty {} is more than --nodes {}",
        args.faulty,
        args.nodes
    );
    let cluster_secret = ClusterSecret::new(secrets.cluster_secret.clone())?;
    let node_ids: Vec<String> = (1..=args.nodes).map(|n| format!("node-{n}")).collect();
    let pki = match args.tls {
        true => Some(crate::certs::ensure_dev_pki(&args.data_dir, &node_ids)?),
        false => None,
    };
    let secret_env = |name: &str, value: &str| (name.to_owned(), value.to_owned());
    let mut metrics: MetricsPlan = Vec::new();
    // A gRPC child's metrics listener: its gRPC port + METRICS_PORT_OFFSET by default.
    let metrics_args = |metrics: &mut MetricsPlan,
                        name: &str,
                        grpc_default: &str|
     -> anyhow::Result<Vec<String>> {
        let default: SocketAddr = grpc_default.parse()?;
        let port = default
            .port()
            .checked_add(METRICS_PORT_OFFSET)
            .ok_or_else(|| anyhow::anyhow!("no metrics port above {default}"))?;
        let addr = ports.addr(&SocketAddr::new(default.ip(), port).to_string())?;
        metrics.push((
            name.to_owned(),
            format!("http://{addr}{}", concord::metrics::METRICS_PATH),
        ));
        Ok(strings(&["--metrics-addr", &addr.to_string()]))
    };
    // Every child gets its principal's credential (the registry checks, it does not call)
    // and, with --tls, its principal's certificate.
    let child = |name: String,
                 role: &str,
                 principal: Principal,
                 mut args: Vec<String>,
                 mut env: Vec<(String, String)>|
     -> anyhow::Result<ChildSpec> {
        if let Some(endpoint) = otlp_endpoint {
            env.push((
                "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
                endpoint.to_owned(),
            ));
        }
        if principal != Principal::Registry {
            env.push((
                "CONCORD_CREDENTIAL".to_owned(),
                cluster_secret.issue(principal.clone()).encode(),
            ));
        }
        if let Some(pki) = &pki {
            args.extend(
                pki.args(&principal)
                    .ok_or_else(|| anyhow::anyhow!("no certificate made for {principal}"))?,
            );
        }
        Ok(ChildSpec {
            name,
            role: role.into(),
            program: program.to_path_buf(),
            args,
            env,
        })
    };
    let registry_addr = ports.addr(concord::config::DEFAULT_REGISTRY_ADDR)?;
    let mut registry_addrs = vec![registry_addr];
    if args.control_plane == ControlPlane::Etcd {
        registry_addrs.push(ports.addr(crate::control_plane::DEFAULT_SECOND_REGISTRY_ADDR)?);
    }
    let registry = registry_addrs
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(",");

    let mut services = Vec::new();
    let fleet_size = concord_node::default_fleet().len();
    for n in 1..=args.nodes {
        let default_port = usize::from(concord::config::DEFAULT_FIRST_NODE_PORT) + n - 1;
        let addr = ports.addr(&format!("127.0.0.1:{default_port}"))?;
        let behaviour = if n > args.nodes - args.faulty {
            args.faulty_behaviour.clone()
        } else {
            "honest".to_owned()
        };
        let id = format!("node-{n}");
        let node_metrics = metrics_args(&mut metrics, &id, &format!("127.0.0.1:{default_port}"))?;
        services.push(child(
            id.clone(),
            "node",
            Principal::Node(id.clone()),
            [
                strings(&[
                    "node",
                    "--listen",
                    &addr.to_string(),
                    "--id",
                    &id,
                    "--preset",
                    &((n - 1) % fleet_size + 1).to_string(),
                    "--behaviour",
                    &behaviour,
                    "--registry",
                    &registry,
                    "--initial-stake",
                    &args.initial_stake.to_string(),
                ]),
                node_metrics,
            ]
            .concat(),
            Vec::new(),
        )?);
    }

    let aggregator_addr = ports.addr(concord::config::DEFAULT_AGGREGATOR_ADDR)?;
    let aggregator_metrics = metrics_args(
        &mut metrics,
        "aggregator",
        concord::config::DEFAULT_AGGREGATOR_ADDR,
    )?;
    services.push(child(
        "aggregator".into(),
        "aggregator",
        Principal::Aggregator,
        [
            strings(&[
                "aggregator",
                "--listen",
                &aggregator_addr.to_string(),
                "--registry",
                &registry,
                "--ledger-path",
                &args.data_dir.join("ledger").to_string_lossy(),
            ]),
            aggregator_metrics,
        ]
        .concat(),
        vec![
            secret_env("CONCORD_CLUSTER_SECRET", &secrets.cluster_secret),
            secret_env("CONCORD_ORACLE_TOKEN", &secrets.oracle_token),
        ],
    )?);

    let shop_env = vec![
        secret_env("CONCORD_ADMIN_TOKEN", &secrets.admin_token),
        secret_env("CONCORD_SESSION_KEY", &secrets.session_key),
    ];
    let shop_addr = ports.addr(concord::config::DEFAULT_SHOP_PRIMARY_ADDR)?;
    let shop_metrics = metrics_args(
        &mut metrics,
        "shop-1",
        concord::config::DEFAULT_SHOP_PRIMARY_ADDR,
    )?;
    services.push(child(
        "shop-1".into(),
        "shop",
        Principal::Shop,
        [
            strings(&[
                "shop",
                "--listen",
                &shop_addr.to_string(),
                "--registry",
                &registry,
                "--replication",
                &args.replication,
                "--data-dir",
                &args.data_dir.join("shop-1").to_string_lossy(),
            ]),
            shop_metrics,
        ]
        .concat(),
        shop_env.clone(),
    )?);
    if args.replication != "none" {
        let replica_addr = ports.addr(concord::config::DEFAULT_SHOP_REPLICA_ADDR)?;
        let replica_metrics = metrics_args(
            &mut metrics,
            "shop-2",
            concord::config::DEFAULT_SHOP_REPLICA_ADDR,
        )?;
        services.push(child(
            "shop-2".into(),
            "shop",
            Principal::Shop,
            [
                strings(&[
                    "shop",
                    "--listen",
                    &replica_addr.to_string(),
                    "--registry",
                    &registry,
                    "--replication",
                    &args.replication,
                    "--replica-of",
                    &shop_addr.to_string(),
                    "--replica-id",
                    "shop-2",
                    "--data-dir",
                    &args.data_dir.join("shop-2").to_string_lossy(),
                ]),
                replica_metrics,
            ]
            .concat(),
            shop_env,
        )?);
    }

    let gateway_addr = ports.addr(concord::config::DEFAULT_GATEWAY_ADDR)?;
    metrics.push((
        "gateway".to_owned(),
        format!("http://{gateway_addr}{}", concord::metrics::METRICS_PATH),
    ));
    services.push(child(
        "gateway".into(),
        "gateway",
        Principal::Gateway,
        strings(&[
            "gateway",
            "--listen",
            &gateway_addr.to_string(),
            "--registry",
            &registry,
            "--supervisor-addr",
            &admin_addr.to_string(),
        ]),
        Vec::new(),
    )?);

    let registry_env = || {
        vec![secret_env(
            "CONCORD_CLUSTER_SECRET",
            &secrets.cluster_secret,
        )]
    };
    if args.control_plane == ControlPlane::Embedded {
        let registry_metrics = metrics_args(
            &mut metrics,
            "registry",
            concord::config::DEFAULT_REGISTRY_ADDR,
        )?;
        metrics.rotate_right(1); // the registry starts first; list it first
        let registry_tier = vec![child(
            "registry".into(),
            "registry",
            Principal::Registry,
            [
                strings(&["registry", "--listen", &registry]),
                registry_metrics,
            ]
            .concat(),
            registry_env(),
        )?];
        return Ok((registry, vec![registry_tier, services], metrics));
    }

    // --control-plane etcd: a fresh etcd cluster, then two registries on it.
    let etcd_dir = args.data_dir.join("etcd");
    if etcd_dir.exists() {
        std::fs::remove_dir_all(&etcd_dir)?;
    }
    let mut members = Vec::new();
    for (i, port) in crate::control_plane::DEFAULT_CLIENT_PORTS
        .iter()
        .enumerate()
    {
        members.push(concord::etcd::LocalMember {
            name: format!("etcd-{}", i + 1),
            client: ports.addr(&format!("127.0.0.1:{port}"))?,
            peer: ports.addr(&format!("127.0.0.1:{}", port + 10))?,
        });
    }
    let initial_cluster = members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer))
        .collect::<Vec<_>>()
        .join(",");
    let endpoints = members
        .iter()
        .map(|m| m.client.to_string())
        .collect::<Vec<_>>()
        .join(",");
    // etcd is secured whether or not --tls is on (control_plane docs): the members'
    // certificate and the registries' client certificates come from the development CA.
    let member_tls = crate::certs::ensure_etcd_member_cert(&args.data_dir)?;
    let registry_files = match &pki {
        Some(pki) => pki.files(&Principal::Registry).cloned(),
        None => crate::certs::ensure_dev_pki_for(&args.data_dir, &[Principal::Registry])?
            .files(&Principal::Registry)
            .cloned(),
    }
    .ok_or_else(|| anyhow::anyhow!("no registry certificate made"))?;
    let mut etcd_tier = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let member_metrics = metrics_args(
            &mut metrics,
            &m.name,
            &format!(
                "127.0.0.1:{}",
                crate::control_plane::DEFAULT_CLIENT_PORTS[i]
            ),
        )?;
        etcd_tier.push(ChildSpec {
            name: m.name.clone(),
            role: "etcd".into(),
            program: program.to_path_buf(),
            args: [
                strings(&[
                    "etcd-member",
                    "--name",
                    &m.name,
                    "--client",
                    &m.client.to_string(),
                    "--initial-cluster",
                    &initial_cluster,
                    "--data-dir",
                    &etcd_dir.join(&m.name).display().to_string(),
                    "--cert",
                    &member_tls.cert.display().to_string(),
                    "--key",
                    &member_tls.key.display().to_string(),
                    "--ca",
                    &member_tls.ca.display().to_string(),
                ]),
                member_metrics,
            ]
            .concat(),
            env: Vec::new(),
        });
    }
    let mut registry_tier = Vec::new();
    for (i, addr) in registry_addrs.iter().enumerate() {
        let name = format!("registry-{}", i + 1);
        let registry_metrics = metrics_args(&mut metrics, &name, &addr.to_string())?;
        registry_tier.push(child(
            name,
            "registry",
            Principal::Registry,
            [
                strings(&[
                    "registry",
                    "--listen",
                    &addr.to_string(),
                    "--etcd",
                    &endpoints,
                    "--etcd-ca",
                    &registry_files.ca.display().to_string(),
                    "--etcd-cert",
                    &registry_files.cert.display().to_string(),
                    "--etcd-key",
                    &registry_files.key.display().to_string(),
                ]),
                registry_metrics,
            ]
            .concat(),
            registry_env(),
        )?);
    }
    // The control plane starts first; list its metrics first.
    let control_plane_metrics = members.len() + registry_addrs.len();
    metrics.rotate_right(control_plane_metrics);
    Ok((registry, vec![etcd_tier, registry_tier, services], metrics))
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// Stops children in reverse start order, after telling every supervisor not to restart
/// its child any more: on Ctrl-C in a terminal the children got the signal too and are
/// exiting already, and restarting them only to stop them again delays the exit.
async fn stop_all(mut running: Vec<Supervised>) {
    for child in &running {
        child.hold_restarts();
    }
    while let Some(child) = running.pop() {
        tracing::info!(child = %child.spec.name, "stopping");
        child.stop().await;
    }
}

fn print_table(running: &[Supervised], registry_addr: &str, metrics: &MetricsPlan) {
    println!();
    println!(
        "{:<14} {:<11} {:<22} {:>8}  METRICS",
        "NAME", "ROLE", "ADDRESS", "PID"
    );
    for child in running {
        let status = child.status();
        let url = metrics
            .iter()
            .find(|(name, _)| *name == child.spec.name)
            .map_or("", |(_, url)| url.as_str());
        println!(
            "{:<14} {:<11} {:<22} {:>8}  {url}",
            child.spec.name,
            child.spec.role,
            status.address.map(|a| a.to_string()).unwrap_or_default(),
            status.pid.map(|p| p.to_string()).unwrap_or_default()
        );
    }
    println!();
    println!("cluster up; registry at {registry_addr}. `concord status --registry {registry_addr}` lists live instances. Ctrl-C stops everything.");
    for child in running {
        announce(&child.spec, &child.status());
    }
    for (name, url) in metrics {
        println!("concord up: {name} metrics at {url}");
    }
}

fn announce(spec: &ChildSpec, status: &crate::supervisor::ChildStatus) {
    if let (ChildState::Running, Some(pid), Some(addr)) =
        (&status.state, status.pid, status.address)
    {
        println!(
            "concord up: {} ({}) pid {pid} running on {addr}",
            spec.name, spec.role
        );
    }
}

/// Prints a line every time a child comes back after a restart, or gives up.
async fn announce_restarts(
    children: Vec<(
        ChildSpec,
        tokio::sync::watch::Receiver<crate::supervisor::ChildStatus>,
    )>,
) {
    let mut tasks = Vec::new();
    for (spec, mut status_rx) in children {
        tasks.push(tokio::spawn(async move {
            let mut last = status_rx.borrow_and_update().clone();
            while status_rx.changed().await.is_ok() {
                let status = status_rx.borrow_and_update().clone();
                // A thawed child is the same process coming back: nothing to announce.
                let thawed = last.state == ChildState::Frozen && status.pid == last.pid;
                if (status.state != last.state || status.pid != last.pid) && !thawed {
                    match status.state {
                        ChildState::Running => announce(&spec, &status),
                        ChildState::Errored => {
                            println!("concord up: {} errored; left down", spec.name)
                        }
                        _ => {}
                    }
                }
                last = status;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--auto-ports` never hands one port to two children, though the kernel may return
    /// a released probe port again (it did: a shop's metrics port was a registry's gRPC
    /// port, and the shop was restarted into the same clash for ever).
    #[test]
    fn auto_ports_are_never_handed_out_twice() {
        let plan = PortPlan::new(true);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let addr = plan.addr("127.0.0.1:1").expect("a free port");
            assert!(
                seen.insert(addr.port()),
                "port {} handed out twice",
                addr.port()
            );
        }
    }

    /// `--help` names the real default addresses (the constants in `concord::config`), not
    /// a document that is not in the repository.
    #[test]
    fn auto_ports_help_names_the_defaults() {
        use clap::Args as _;
        let mut command = Args::augment_args(clap::Command::new("up"));
        let help = command.render_long_help().to_string();
        assert!(!help.contains("DESIGN.md"), "{help}");
        let port = |addr: &str| addr.rsplit_once(':').map(|(_, p)| p.to_owned());
        for addr in [
            concord::config::DEFAULT_REGISTRY_ADDR,
            concord::config::DEFAULT_AGGREGATOR_ADDR,
            concord::config::DEFAULT_SHOP_PRIMARY_ADDR,
            concord::config::DEFAULT_SHOP_REPLICA_ADDR,
            concord::config::DEFAULT_GATEWAY_ADDR,
        ] {
            let port = port(addr).expect("host:port");
            assert!(help.contains(&port), "help lacks {port}:\n{help}");
        }
        assert!(help.contains(&concord::config::DEFAULT_FIRST_NODE_PORT.to_string()));
    }
}
