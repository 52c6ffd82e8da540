//! The one test harness of the workspace (STYLE.md §8): every crate's integration tests
//! and the end-to-end tests in the root package's `tests/` use it, so "start a server, wait
//! until it is ready, stop it" is written once.
//!
//! In-process servers run in the test's process on `127.0.0.1:0`; the test reads the bound
//! address, and a guard stops them. It is only ever a dev-dependency; it depends on the
//! crates it starts, which cargo allows (a dev-dependency cycle) because their integration
//! tests link the same non-test library it does, so the types line up.
//!
//! - [`Running`] is any server spawned on the current runtime: [`Running::stop`] signals
//!   shutdown and joins it; dropping it only signals, [`Running::abort`] cancels it.
//! - [`registry`], [`node`] and [`aggregator`] start the real services with it;
//!   [`cluster::Consensus`] nodes plus an aggregator with a staked ledger; [`shop`] the real
//!   shop and the client calls of the shop tests; [`gateway`] a registry + web gateway, a
//!   fake aggregator and the HTTP helpers; [`fake_primary`] a scripted shop primary for
//!   the replica's attack tests.
//! - [`NodeProcess`] is a node in its own runtime and thread, so a test can `kill -9` it:
//!   dropping the runtime closes its sockets and nothing deregisters.
//! - [`process`] runs the real `concord` binary as child processes (kill -9, SIGSTOP, ports
//!   read from their output); [`netns`] puts them on hosts in network namespaces, for
//!   partitions; [`etcd::EtcdCluster`] is a real etcd cluster (processes, tempdir) for the
//!   registry's etcd store, [`registry_on_etcd`] a registry keeping its leases in it.
//! - [`eventually`] polls a condition up to a deadline (never a sleep until ready);
//!   [`process_cpu_seconds`] lets the ignored bench tests report CPU per operation;
//!   [`metrics`] scrapes and parses `/metrics` pages.

pub mod cluster;
pub mod etcd;
pub mod fake_primary;
pub mod gateway;
pub mod netns;
pub mod process;
pub mod shop;

/// Scraping `/metrics` pages.
pub mod metrics;

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use concord::identity::{ClusterSecret, Credential, Principal};
use concord::pb::stake::v1::{staking_client::StakingClient, StakeRequest};
use concord_aggregator::{staking::StakingAuth, AggregatorConfig};
use concord_node::NodeConfig;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

/// How long [`Running::stop`] waits for a server to return after the shutdown signal.
pub const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// Shortest lease the registry grants; [`registered`] nodes use it so a killed one expires
/// quickly.
pub const LEASE_TTL: Duration = Duration::from_secs(1);

/// The shutdown future handed to a server: it completes when its [`Running`] is stopped or
/// dropped.
#[derive(Debug)]
pub struct Shutdown(oneshot::Receiver<()>);

impl Future for Shutdown {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// A server task in this process and the means to stop it.
///
/// [`stop`](Running::stop) signals shutdown and joins; dropping the guard only signals
/// (the server shuts down cleanly in the background); [`abort`](Running::abort) cancels the
/// task without a clean shutdown.
#[derive(Debug)]
pub struct Running<E> {
    /// The address the server listens on.
    pub addr: SocketAddr,
    stop_tx: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), E>>>,
}

impl<E: Send + 'static> Running<E> {
    /// Binds `127.0.0.1:0` and spawns `serve(listener, shutdown)` on the current runtime.
    pub async fn spawn<F>(serve: impl FnOnce(TcpListener, Shutdown) -> F) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        Self::spawn_on(local(), serve).await
    }

    /// Like [`spawn`](Running::spawn) on a given address, e.g. one from [`free_addr`] or a
    /// stopped server's, to restart it where its clients expect it.
    pub async fn spawn_on<F>(
        addr: SocketAddr,
        serve: impl FnOnce(TcpListener, Shutdown) -> F,
    ) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|err| panic!("bind {addr}: {err}"));
        Self::serve_on(listener, serve)
    }

    /// Spawns `serve(listener, shutdown)` on a listener the test bound itself (e.g. one
    /// whose connections hung unanswered until now).
    pub fn serve_on<F>(
        listener: TcpListener,
        serve: impl FnOnce(TcpListener, Shutdown) -> F,
    ) -> Self
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
    {
        concord::telemetry::init_for_tests();
        let addr = listener.local_addr().expect("local addr");
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(serve(listener, Shutdown(stop_rx)));
        Running {
            addr,
            stop_tx: Some(stop_tx),
            task: Some(task),
        }
    }

    /// A lazy channel to the server.
    pub fn channel(&self) -> Channel {
        channel(self.addr)
    }

    /// Cancels the server without a clean shutdown (no deregistration): a crash, as far as
    /// its peers can tell.
    pub fn abort(mut self) {
        // Cancel first, so the shutdown signal (the sender dropping) is never seen.
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.stop_tx.take();
    }
}

impl<E: std::fmt::Debug> Running<E> {
    /// Signals shutdown and joins the server; panics if it fails or does not return
    /// within [`STOP_DEADLINE`].
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let addr = self.addr;
            tokio::time::timeout(STOP_DEADLINE, task)
                .await
                .unwrap_or_else(|_| panic!("server on {addr} did not stop in time"))
                .expect("join")
                .expect("serve");
        }
    }
}

impl<E> Drop for Running<E> {
    fn drop(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
    }
}

/// The cluster secret every in-process test cluster uses (tests only: real clusters get a
/// random one from `concord up`).
pub const CLUSTER_SECRET: &str = "concord-test-cluster-secret";

/// [`CLUSTER_SECRET`] as a [`ClusterSecret`].
pub fn cluster_secret() -> ClusterSecret {
    ClusterSecret::new(CLUSTER_SECRET).expect("the test secret is not empty")
}

/// `principal`'s credential under [`CLUSTER_SECRET`].
pub fn credential(principal: Principal) -> Credential {
    cluster_secret().issue(principal)
}

/// The oracle token of every in-process test aggregator ([`staking_auth`]).
pub const ORACLE_TOKEN: &str = "concord-test-oracle-token";

/// What a test aggregator's Staking service checks: [`CLUSTER_SECRET`] for node
/// credentials, [`ORACLE_TOKEN`] for `ReportOutcome`.
pub fn staking_auth() -> StakingAuth {
    StakingAuth {
        cluster_secret: cluster_secret(),
        oracle_token: ORACLE_TOKEN.to_owned(),
    }
}

/// Each node in `node_ids` stakes `amount` for itself with its own credential, through
/// the Staking service on `staking` — what `concord node --initial-stake` does at
/// start-up (the ledger mints nothing for a node it has never seen). Panics on failure.
pub async fn stake_nodes(staking: Channel, node_ids: &[&str], amount: u64) {
    let mut client = StakingClient::new(staking);
    for id in node_ids {
        let mut request = tonic::Request::new(StakeRequest {
            node_id: (*id).to_owned(),
            amount,
            only_if_new: false,
        });
        credential(Principal::Node((*id).to_owned())).attach(&mut request);
        client
            .stake(request)
            .await
            .unwrap_or_else(|status| panic!("{id} stakes {amount}: {status:?}"));
    }
}

/// A real registry checking credentials against [`cluster_secret`], on `127.0.0.1:0`.
pub async fn registry() -> Running<tonic::transport::Error> {
    registry_on(local()).await
}

/// A real registry keeping its leases in the etcd cluster at `endpoints`, on `127.0.0.1:0`.
pub async fn registry_on_etcd(endpoints: &[String]) -> Running<tonic::transport::Error> {
    registry_on_etcd_with(endpoints, &concord::etcd::EtcdSecurity::default()).await
}

/// A registry on `127.0.0.1:0` keeping its leases in the etcd at `endpoints`, reaching it
/// with `security` (TLS, a user).
pub async fn registry_on_etcd_with(
    endpoints: &[String],
    security: &concord::etcd::EtcdSecurity,
) -> Running<tonic::transport::Error> {
    let etcd =
        concord_registry::EtcdConfig::with_security(endpoints, security).expect("etcd endpoints");
    Running::spawn(move |listener, shutdown| {
        concord_registry::serve(
            concord_registry::Config::new(cluster_secret()).with_etcd(etcd),
            listener,
            shutdown,
        )
    })
    .await
}

/// A real registry on `addr`: a restart on a stopped registry's address, or a registry
/// appearing where clients already look.
pub async fn registry_on(addr: SocketAddr) -> Running<tonic::transport::Error> {
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|err| panic!("bind {addr}: {err}"));
    registry_serving(listener)
}

/// A real registry answering on `listener`, bound by the test beforehand (until now its
/// connections hung unanswered, like a registry that is not up yet).
pub fn registry_serving(listener: TcpListener) -> Running<tonic::transport::Error> {
    Running::serve_on(listener, |listener, shutdown| {
        concord_registry::serve(
            concord_registry::Config::new(cluster_secret()),
            listener,
            shutdown,
        )
    })
}

/// A real node on `127.0.0.1:0`, on the test's runtime; without a credential in `config`
/// it gets its node's ([`with_node_credential`]).
pub async fn node(config: NodeConfig) -> Running<concord_node::Error> {
    let config = with_node_credential(config);
    Running::spawn(|listener, shutdown| concord_node::serve(config, listener, shutdown)).await
}

/// A real aggregator on `127.0.0.1:0`; without a credential in `config` it gets the
/// aggregator's, so it can register itself.
pub async fn aggregator(mut config: AggregatorConfig) -> Running<concord_aggregator::Error> {
    if config.credential.is_none() {
        config.credential = Some(credential(Principal::Aggregator));
    }
    Running::spawn(|listener, shutdown| concord_aggregator::serve(config, listener, shutdown)).await
}

/// `config` with its node's credential when it has none (a test node registers as
/// itself unless the test says otherwise).
pub fn with_node_credential(mut config: NodeConfig) -> NodeConfig {
    if config.credential.is_none() {
        config.credential = Some(credential(Principal::Node(config.node_id.to_string())));
    }
    config
}

/// `config` registered at `registry` with the shortest lease ([`LEASE_TTL`]) and its
/// node's credential.
pub fn registered(config: NodeConfig, registry: SocketAddr) -> NodeConfig {
    let credential = Some(credential(Principal::Node(config.node_id.to_string())));
    NodeConfig {
        registry: Some(registry.to_string()),
        lease_ttl: LEASE_TTL,
        credential,
        ..config
    }
}

/// A node in its own runtime and thread, killable without any clean-up.
#[derive(Debug)]
pub struct NodeProcess {
    /// The node's id, from its config.
    pub node_id: String,
    /// The address the node listens on.
    pub addr: SocketAddr,
    kill_tx: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NodeProcess {
    /// Starts a node on `127.0.0.1:0` in a runtime of its own; dropping it kills it.
    /// Without a credential in `config` it gets its node's ([`with_node_credential`]).
    pub fn start(config: NodeConfig) -> Self {
        let config = with_node_credential(config);
        concord::telemetry::init_for_tests();
        let std_listener = std::net::TcpListener::bind(local()).expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("local addr");
        let node_id = config.node_id.clone();
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("node runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                let serve = concord_node::serve(config, listener, std::future::pending());
                tokio::select! {
                    result = serve => panic!("node stopped by itself: {result:?}"),
                    _ = kill_rx => {}
                }
            });
            // Drops every task of the node (connections, lease keeper) without clean-up.
            runtime.shutdown_background();
        });
        NodeProcess {
            node_id,
            addr,
            kill_tx: Some(kill_tx),
            thread: Some(thread),
        }
    }

    /// The in-process equivalent of `kill -9`.
    pub fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        if let Some(kill_tx) = self.kill_tx.take() {
            let _ = kill_tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().expect("node thread");
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// A lazy channel to `addr`.
pub fn channel(addr: SocketAddr) -> Channel {
    concord::grpc::lazy_channel(&addr.to_string()).expect("channel")
}

/// An address nothing listens on: bound on `127.0.0.1:0`, then released.
pub async fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind(local()).await.expect("bind");
    listener.local_addr().expect("local addr")
}

/// Polls `check` every 20 ms until it holds (true) or `timeout` passes (false).
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// `127.0.0.1:0`: any free loopback port.
pub fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// User + system CPU seconds this process has used so far (Linux `/proc/self/stat`; 0 where
/// that is unreadable). The ignored bench tests divide the difference by their operations.
pub fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the `)` that closes the command name; utime and stime are 14 and 15.
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that reports on `done` how it ended: `true` after its shutdown signal.
    async fn watched() -> (Running<std::convert::Infallible>, oneshot::Receiver<bool>) {
        let (done_tx, done_rx) = oneshot::channel();
        let server = Running::spawn(|listener, shutdown| async move {
            let _listener = listener;
            shutdown.await;
            let _ = done_tx.send(true);
            Ok(())
        })
        .await;
        (server, done_rx)
    }

    /// `stop`, drop and `abort` end the server as documented: joined, signalled, cancelled.
    #[tokio::test]
    async fn guard_ends_the_server() {
        let (server, mut done) = watched().await;
        assert!(server.addr.ip().is_loopback() && server.addr.port() != 0);
        server.stop().await;
        assert_eq!(done.try_recv(), Ok(true), "stop joins after the signal");

        let (server, done) = watched().await;
        drop(server);
        assert_eq!(done.await, Ok(true), "drop signals a clean shutdown");

        let (server, done) = watched().await;
        server.abort();
        assert!(
            done.await.is_err(),
            "abort cancels without a clean shutdown"
        );
    }

    /// A freed address can be served again with `spawn_on`, on the very same port.
    #[tokio::test]
    async fn spawn_on_reuses_a_free_addr() {
        let addr = free_addr().await;
        let registry = registry_on(addr).await;
        assert_eq!(registry.addr, addr);
        registry.stop().await;
    }
}
