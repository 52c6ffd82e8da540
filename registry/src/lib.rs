//! The Concord registry: DNS-like service discovery with TTL leases.
//!
//! A process registers `(service, address, metadata)` with a TTL and gets a lease; it renews
//! the lease with `KeepAlive` (optionally replacing its metadata); a lease that is not
//! renewed in time expires and the instance disappears. `Watch` streams a service's whole
//! instance set on every change, so clients (the aggregator, the gateway, a shop replica)
//! react to failures without polling.
//!
//! **Store.** By default state is in memory only, on purpose: after a restart every live
//! process's next `KeepAlive` gets `NOT_FOUND` and it registers again (see
//! `concord::discovery`), so the registry heals within one heartbeat and has nothing to
//! corrupt on `kill -9`; a registry that was stalled or cut off expires nobody for it (see
//! `table`). With [`Config::etcd`] the leases live in etcd instead (`etcd_store`): several
//! registry instances then serve one cluster, a client that moves from one to another keeps
//! its lease, and primary claims are etcd transactions, so two instances can never accept
//! two primaries for one term.
//!
//! **Identity.** Every Register, KeepAlive and Deregister carries a cluster credential
//! (`x-concord-credential`), checked against the cluster secret in [`Config`]; the
//! principal it proves decides what it may register (a node only itself, a role only its
//! role's service, only a shop `role=primary`), and a lease answers only to the principal
//! that registered it. Lease ids are never published. See `table` for the rules, the
//! primary-term arbitration and the caps that keep every `List`/`Watch` answer under the
//! 4 MiB message limit.
//!
//! In memory, expiry is checked every [`EXPIRY_TICK`], so an instance may outlive its TTL by
//! up to that; in etcd, etcd expires leases.
//!
//! Modules: `table` is the lease table and its rules (pure, time passed in), `store` the
//! choice of store, `etcd_store` the etcd one, `service` the gRPC face, `metrics` the
//! Prometheus families (leases, watchers), `error` the error categories.

mod error;
mod etcd_store;
mod metrics;
mod service;
mod store;
mod table;

use std::{future::Future, sync::Arc, time::Duration};

use concord::{identity::ClusterSecret, pb::registry::v1::registry_server::RegistryServer};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use error::RegistryError;
pub use etcd_store::{LeaseRecord, TermRecord, DEFAULT_ROOT as DEFAULT_ETCD_ROOT};
pub use table::{
    authorize, LeaseTable, MAX_INSTANCES, MAX_INSTANCES_PER_SERVICE, MAX_LEASES_PER_PRINCIPAL,
    MAX_LEASES_PER_PRINCIPAL_PER_SERVICE, MAX_METADATA_TOTAL_BYTES, MAX_TTL, METADATA_NODE_ID,
    MIN_TTL, PREDICTOR_SERVICE,
};

/// How often expired leases are swept.
pub const EXPIRY_TICK: Duration = Duration::from_millis(100);

/// Registry settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// The secret every caller's credential is checked against (required: there is no
    /// public default).
    pub cluster_secret: ClusterSecret,
    /// Keep the leases in this etcd cluster instead of in memory.
    pub etcd: Option<EtcdConfig>,
}

/// Where in etcd the registry keeps its leases.
#[derive(Clone)]
pub struct EtcdConfig {
    /// A client of the etcd cluster (every member's client address).
    pub client: concord::etcd::Etcd,
    /// The key prefix (one per Concord cluster sharing an etcd), ending in `/`.
    pub root: String,
}

impl std::fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.client.endpoints())
            .field("root", &self.root)
            .finish()
    }
}

impl EtcdConfig {
    /// The members at `endpoints` (`host:port`), under [`DEFAULT_ETCD_ROOT`]; refuses an
    /// unusable endpoint (members are dialled later, lazily).
    pub fn new(endpoints: &[String]) -> Result<Self, concord::etcd::EtcdError> {
        Self::with_security(endpoints, &concord::etcd::EtcdSecurity::default())
    }

    /// The same, reaching etcd with `security` (TLS, a user; see `concord::etcd`).
    pub fn with_security(
        endpoints: &[String],
        security: &concord::etcd::EtcdSecurity,
    ) -> Result<Self, concord::etcd::EtcdError> {
        Ok(Self {
            client: concord::etcd::Etcd::connect_with(endpoints, security)?,
            root: DEFAULT_ETCD_ROOT.to_owned(),
        })
    }
}

impl Config {
    /// A registry checking credentials against `cluster_secret`, leases in memory.
    pub fn new(cluster_secret: ClusterSecret) -> Self {
        Self {
            cluster_secret,
            etcd: None,
        }
    }

    /// The same, with the leases in etcd.
    pub fn with_etcd(mut self, etcd: EtcdConfig) -> Self {
        self.etcd = Some(etcd);
        self
    }
}

/// Serves the registry on `listener` until `shutdown` resolves.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    // Every task (sweeper or etcd follower, metrics view, Watch feeders) stops on `stop`
    // and is joined before this returns.
    let stop = CancellationToken::new();
    // Cancelled however `serve` ends, aborted included.
    let _stop_on_drop = stop.clone().drop_guard();
    let tasks = TaskTracker::new();
    let store = match &config.etcd {
        None => {
            let memory = Arc::new(store::MemoryStore::new());
            tasks.spawn(service::sweep_expired(memory.clone(), stop.clone()));
            store::Store::Memory(memory)
        }
        Some(etcd) => {
            let store =
                etcd_store::EtcdStore::start(etcd.client.clone(), &etcd.root, stop.clone(), &tasks);
            tracing::info!(endpoints = ?etcd.client.endpoints(), root = %etcd.root, "registry keeps its leases in etcd");
            store::Store::Etcd(store)
        }
    };
    let state = Arc::new(service::Shared::new(
        store,
        concord::identity::Verifier::Secret(config.cluster_secret),
        stop.clone(),
        tasks.clone(),
    ));
    metrics::RegistryCollector::register(&state);
    tasks.spawn(service::follow_for_metrics(state.clone()));
    let (router, health) =
        concord::grpc::router(&[concord::pb::registry::v1::registry_server::SERVICE_NAME]);
    health
        .set_serving::<RegistryServer<service::RegistryService>>()
        .await;
    let router = router.add_service(RegistryServer::new(service::RegistryService::new(state)));
    tracing::info!(addr = ?listener.local_addr().ok(), "registry serving");
    let result = concord::grpc::serve(router, listener, async move {
        shutdown.await;
        stop.cancel();
    })
    .await;
    tasks.close();
    tasks.wait().await;
    result
}
