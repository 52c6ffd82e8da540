//! The Concord registry: DNS-like service discovery with TTL leases.
//!
//! A process registers `(service, address, metadata)` with a TTL and gets a lease; it renews
//! the lease with `KeepAlive` (optionally replacing its metadata); a lease that is not
//! renewed in time expires and the instance disappears. `Watch` streams a service's whole
//! instance set on every change, so clients (the aggregator, the gateway, a shop replica)
//! react to failures without polling.
//!
//! State is in memory only, on purpose: after a restart every live process's next
//! `KeepAlive` gets `NOT_FOUND` and it registers again (see `concord::discovery`), so the
//! registry heals within one heartbeat and has nothing to corrupt on `kill -9`.
//!
//! **Identity.** Every Register, KeepAlive and Deregister carries a cluster credential
//! (`x-concord-credential`), checked against the cluster secret in [`Config`]; the
//! principal it proves decides what it may register (a node only itself, a role only its
//! role's service, only a shop `role=primary`), and a lease answers only to the principal
//! that registered it. Lease ids are never published. See `table` for the rules, the
//! primary-term arbitration and the caps that keep every `List`/`Watch` answer under the
//! 4 MiB message limit.
//!
//! Expiry is checked every [`EXPIRY_TICK`], so an instance may outlive its TTL by up to that.
//!
//! Modules: `table` is the lease table (pure, time passed in), `service` the gRPC face,
//! `metrics` the Prometheus families (leases, watchers), `error` the error categories.

mod error;
mod metrics;
mod service;
mod table;

use std::{future::Future, sync::Arc, time::Duration};

use concord::{identity::ClusterSecret, pb::registry::v1::registry_server::RegistryServer};
use tokio::net::TcpListener;

pub use error::RegistryError;
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
}

impl Config {
    /// A registry checking credentials against `cluster_secret`.
    pub fn new(cluster_secret: ClusterSecret) -> Self {
        Self { cluster_secret }
    }
}

/// Serves the registry on `listener` until `shutdown` resolves.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let state = Arc::new(service::Shared::new(
        concord::identity::Verifier::Secret(config.cluster_secret),
        stop_rx.clone(),
    ));
    metrics::RegistryCollector::register(&state);
    let sweeper = tokio::spawn(service::sweep_expired(state.clone(), stop_rx));
    let (router, health) =
        concord::grpc::router(&[concord::pb::registry::v1::registry_server::SERVICE_NAME]);
    health
        .set_serving::<RegistryServer<service::RegistryService>>()
        .await;
    let router = router.add_service(RegistryServer::new(service::RegistryService::new(state)));
    tracing::info!(addr = ?listener.local_addr().ok(), "registry serving");
    let result = concord::grpc::serve(router, listener, async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    })
    .await;
    if let Err(err) = sweeper.await {
        tracing::error!(%err, "expiry sweeper failed");
    }
    result
}
