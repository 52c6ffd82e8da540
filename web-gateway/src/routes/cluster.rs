//! `/api/services/{name}` and `/api/cluster`: what the registry knows and how the shop
//! processes stand.
//!
//! The cluster view is built from one registry `List` plus one `GetReplicationStatus` per
//! shop instance, probed concurrently with a short deadline ([`STATUS_PROBE_TIMEOUT`]) so one
//! hung process cannot stall the view. When the registry is down the view says so and
//! lists the instances the gateway's watches last saw, so the panel still shows something.

use std::time::Duration;

use axum::{extract::State, Json};
use concord::pb::{
    registry::v1::{ListRequest, ResolveRequest},
    shop::v1::{replication_client::ReplicationClient, GetReplicationStatusRequest},
};

use crate::{
    backends::{is_primary, order_shop_instances, term_of, Backends, CallContext, SHOP},
    dto::{ClusterStatus, RegistryStatus, ServiceInstances, ShopNode},
    error::{Error, ErrorBody},
    extract::ApiPath,
    state::AppState,
};

/// Deadline of each probe (registry `List`, shop `GetReplicationStatus`) for the view.
pub const STATUS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The live instances of one service, straight from the registry.
#[utoipa::path(get, path = "/api/services/{name}", tag = "cluster",
    params(("name" = String, Path, description = "Service name, e.g. shop, aggregator, predictor")),
    responses((status = 200, body = ServiceInstances), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn get_service(
    State(state): State<AppState>,
    ctx: CallContext,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ServiceInstances>, Error> {
    let request = ctx.request(ResolveRequest {
        service: name.clone(),
    });
    let reply = state
        .backends
        .registry()
        .resolve(request)
        .await?
        .into_inner();
    Ok(Json(ServiceInstances {
        service: name,
        instances: reply.instances,
    }))
}

/// Every registered instance, the shop roles, the primary's term and the replication lag.
#[utoipa::path(get, path = "/api/cluster", tag = "cluster",
    responses((status = 200, body = ClusterStatus), (status = "5XX", body = ErrorBody)))]
pub async fn get_cluster(State(state): State<AppState>) -> Json<ClusterStatus> {
    Json(snapshot(&state.backends).await)
}

/// Takes the cluster view now (never fails: unreachable parts are reported as such).
pub async fn snapshot(backends: &Backends) -> ClusterStatus {
    let mut list = tonic::Request::new(ListRequest {});
    list.set_timeout(STATUS_PROBE_TIMEOUT);
    let (registry, instances) = match backends.registry().list(list).await {
        Ok(reply) => {
            let reply = reply.into_inner();
            let status = RegistryStatus {
                address: backends.registry_addr().to_owned(),
                up: true,
                revision: reply.revision,
                error: None,
            };
            (status, reply.instances)
        }
        Err(err) => {
            let status = RegistryStatus {
                address: backends.registry_addr().to_owned(),
                up: false,
                revision: 0,
                error: Some(err.message().to_owned()),
            };
            (status, backends.known_instances())
        }
    };

    let shop_instances: Vec<_> = instances
        .iter()
        .filter(|i| i.service == SHOP)
        .cloned()
        .collect();
    let primary = order_shop_instances(&shop_instances)
        .into_iter()
        .next()
        .and_then(|addr| {
            shop_instances
                .iter()
                .find(|i| i.address == addr && is_primary(i))
        });
    let (primary, term) = match primary {
        Some(p) => (Some(p.address.clone()), term_of(p)),
        None => (None, 0),
    };
    let shops = futures::future::join_all(shop_instances.iter().map(|instance| async move {
        let probe = async {
            let channel = backends.channel(crate::backends::SHOP, &instance.address)?;
            let mut request = tonic::Request::new(GetReplicationStatusRequest {});
            request.set_timeout(STATUS_PROBE_TIMEOUT);
            let reply = ReplicationClient::new(channel)
                .get_replication_status(request)
                .await?;
            Ok::<_, Error>(reply.into_inner())
        };
        let (replication, error) = match probe.await {
            Ok(status) => (Some(status.into()), None),
            Err(err) => (None, Some(err.to_string())),
        };
        ShopNode {
            address: instance.address.clone(),
            registered_role: instance
                .metadata
                .get(crate::backends::ROLE_KEY)
                .cloned()
                .unwrap_or_default(),
            registered_term: term_of(instance),
            replication,
            error,
        }
    }))
    .await;

    ClusterStatus {
        registry,
        instances,
        shops,
        primary,
        term,
        at_unix_ms: concord::clock::unix_ms(),
    }
}
