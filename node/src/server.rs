//! Running a node: train, serve `Predictor` (+ health, reflection), register, shut down.
//!
//! Lifecycle:
//! 1. Validate the config and train the model (milliseconds; a bad config fails here,
//!    before anything is bound or published).
//! 2. Serve on the given listener, with health reporting `Predictor` as SERVING.
//! 3. If a registry is configured, register as service [`PREDICTOR_SERVICE`] with the
//!    node id and model description in the metadata, and keep the lease alive in the
//!    background (re-registering after a registry restart, see `concord::discovery`).
//! 4. With an initial stake configured, a task stakes it for the node once (see
//!    [`crate::stake`]); the node serves meanwhile.
//! 5. When `shutdown` resolves: mark NOT_SERVING, stop the stake task, deregister
//!    (bounded, best effort) so the aggregator stops calling, then drain in-flight calls
//!    (bounded grace period) and join the stake task.
//!
//! Failure behaviour: if the registry is unreachable the node still serves and keeps
//! retrying registration; a killed node's lease simply expires after its TTL.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use concord::discovery::{LeaseKeeper, Registration};
use concord::pb::predict::v1::predictor_server::PredictorServer;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::service::NodeService;
use crate::stake::stake_at_start;

/// Registry service name under which nodes publish themselves.
pub const PREDICTOR_SERVICE: &str = concord::identity::PREDICTOR_SERVICE;
/// Registry metadata key: the node id (stable across restarts, unlike the lease).
pub const METADATA_NODE_ID: &str = "node_id";
/// Registry metadata key: the one-line model description.
pub const METADATA_MODEL: &str = "model";
/// Registry metadata key: hold-out accuracy measured at start-up.
pub const METADATA_HOLDOUT_ACCURACY: &str = "holdout_accuracy";

/// Trains the node described by `config` and serves it on `listener` until `shutdown`
/// resolves; see the module doc for the lifecycle.
pub async fn serve(
    config: NodeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let node = Arc::new(Node::new(config)?);
    let local_addr = listener
        .local_addr()
        .map_err(|e| Error::Unavailable(format!("listener has no local address: {e}")))?;
    let config = node.config();
    tracing::info!(
        node_id = %node.id(),
        model = %node.model().description(),
        behaviour = %node.behaviour(),
        training_size = node.model().training_size(),
        holdout_accuracy = node.model().holdout_accuracy(),
        %local_addr,
        "node trained and listening"
    );

    let keeper = match &config.registry {
        Some(registry) => {
            let registration = Registration {
                service: PREDICTOR_SERVICE.to_owned(),
                address: advertised_address(config.advertise.as_deref(), local_addr),
                metadata: registry_metadata(&node),
                ttl: config.lease_ttl,
                credential: config.credential.clone(),
            };
            let keeper = LeaseKeeper::spawn(registry, registration)
                .map_err(|e| Error::Config(format!("bad registry address {registry:?}: {e}")))?;
            Some(keeper)
        }
        None => None,
    };

    let stop = CancellationToken::new();
    // Cancelled however `serve` ends, aborted included.
    let _stop_on_drop = stop.clone().drop_guard();
    let tasks = TaskTracker::new();
    if let (Some(registry), Some(credential)) = (&config.registry, &config.credential) {
        if config.initial_stake > 0 {
            let (registry, credential) = (registry.clone(), credential.clone());
            let (node_id, amount) = (node.id().to_owned(), config.initial_stake);
            let stop = stop.clone();
            tasks.spawn(async move {
                stake_at_start(&registry, &node_id, &credential, amount, stop).await;
            });
        }
    }

    let (router, health) =
        concord::grpc::router(&[concord::pb::predict::v1::predictor_server::SERVICE_NAME]);
    health.set_serving::<PredictorServer<NodeService>>().await;
    let router = router.add_service(PredictorServer::new(NodeService::new(node.clone())));
    let node_id = node.id().to_owned();
    let stop = async move {
        shutdown.await;
        tracing::info!(%node_id, "node shutting down");
        health
            .set_not_serving::<PredictorServer<NodeService>>()
            .await;
        stop.cancel();
        if let Some(keeper) = keeper {
            keeper.deregister().await;
        }
    };
    let served = concord::grpc::serve(router, listener, stop).await;
    tasks.close();
    tasks.wait().await;
    served.map_err(|e| Error::Internal(format!("server failed: {e}")))
}

/// The address to publish: the configured one, else the bound one, with an unspecified
/// IP (`0.0.0.0`, `::`) replaced by loopback, since nobody can dial it.
pub fn advertised_address(advertise: Option<&str>, local_addr: SocketAddr) -> String {
    if let Some(address) = advertise {
        return address.to_owned();
    }
    if local_addr.ip().is_unspecified() {
        let loopback = match local_addr {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        tracing::warn!(%local_addr, "listening on all interfaces; registering loopback (set an advertise address)");
        return SocketAddr::new(loopback, local_addr.port()).to_string();
    }
    local_addr.to_string()
}

/// What a node publishes in the registry next to its address.
fn registry_metadata(node: &Node) -> HashMap<String, String> {
    HashMap::from([
        (METADATA_NODE_ID.to_owned(), node.id().to_owned()),
        (
            METADATA_MODEL.to_owned(),
            node.model().description().to_owned(),
        ),
        (
            METADATA_HOLDOUT_ACCURACY.to_owned(),
            format!("{:.4}", node.model().holdout_accuracy()),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The advertised address: configured wins, unspecified IPs become loopback.
    #[test]
    fn advertised() {
        let cases = [
            (Some("node-1.local:1"), "0.0.0.0:5", "node-1.local:1"),
            (None, "0.0.0.0:5", "127.0.0.1:5"),
            (None, "[::]:5", "[::1]:5"),
            (None, "10.0.0.7:5", "10.0.0.7:5"),
        ];
        for (advertise, local, want) in cases {
            let local: SocketAddr = local.parse().unwrap();
            assert_eq!(advertised_address(advertise, local), want);
        }
    }
}
