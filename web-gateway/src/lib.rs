//! The Concord web gateway: HTTP/JSON, server-sent events and a static UI over the
//! cluster's gRPC services.
//!
//! A request walks through:
//! 0. the listener ([`edge::serve_http`]): HTTP/1.1 with a header-read timeout and a
//!    connection limit, so slow or too many clients cannot exhaust it;
//! 1. tower layers around the whole router: a request id (`x-request-id`, generated when
//!    absent, echoed in the reply and forwarded to the backend), a tracing span carrying
//!    it, the security headers of every response and the cross-site write rule
//!    ([`edge`]), a deadline and a size limit for the body;
//! 2. a handler in [`routes`] that turns path/query/JSON into a protobuf request — malformed
//!    input is a `400` with the parser's reason;
//! 3. [`backends`], which picks an instance found through the registry's `Watch` (shop
//!    writes to the highest-term primary), reuses one cached channel per address, and retries
//!    once on another instance when that is safe;
//! 4. the reply as JSON — the protobuf message itself, whose serde and OpenAPI derives
//!    `build.rs` adds, or one of the gateway's own shapes in [`dto`] (mapped in
//!    [`convert`]) — or the error mapped to an HTTP status in the
//!    one place that does it, [`error`] — whose [`error::json_errors`] layer also turns
//!    error responses made outside the handlers (axum's `405`, a too-long URI) into the
//!    same `{"code", "message"}` JSON.
//!
//! Observability: a request's W3C `traceparent` header is continued by its span and
//! forwarded to the backend with the call ([`backends::CallContext::request`]), so a trace
//! runs browser → gateway → aggregator → nodes. `GET /metrics` serves the process's
//! Prometheus page, with requests by route template and status ([`metrics`]).
//!
//! The gateway registers itself in the registry as service [`SERVICE_NAME`] (a lease
//! renewed every TTL/3 by a [`LeaseKeeper`], like every other role), so `concord status` and
//! `/api/cluster` list it; it deregisters when it shuts down. Nothing routes to it through
//! the registry (it is the entry point); the registration is for operators. A registry that
//! is down does not stop the gateway from serving: the keeper registers once it is back.
//!
//! Failure behaviour: with no live instance of a backend the answer is `503
//! {"code":"unavailable"}`; while the registry is down the last known instances keep being
//! used. `/api/events` streams end on shutdown; after the shutdown future resolves, the
//! server stops accepting and gives open requests [`SHUTDOWN_GRACE`] to finish, then drops
//! the connections still open.
//!
//! Customer sessions: sign-up and sign-in keep the shop's session token in an `HttpOnly`,
//! `SameSite=Strict` cookie that every call forwards as the bearer token ([`session`]).
//!
//! Non-goals: authentication of its own (bearer tokens and the session cookie are passed
//! through to the services that check them), TLS, caching of replies.

pub mod backends;
pub mod cluster_admin;
pub mod convert;
pub mod dto;
pub mod edge;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod routes;
pub mod session;
pub mod state;

use std::{
    collections::HashMap,
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use axum::{
    body::Body,
    extract::DefaultBodyLimit,
    http::{
        header::{
            CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
        },
        HeaderName, HeaderValue, Request,
    },
};
use concord::discovery::{LeaseKeeper, Registration};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::{
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    set_header::SetResponseHeaderLayer,
    timeout::RequestBodyDeadlineLayer,
    trace::{DefaultOnFailure, TraceLayer},
};
use tracing::Level;

pub use error::Error;

use crate::{backends::Backends, state::AppState};

/// How long shutdown waits for open requests before returning.
pub const SHUTDOWN_GRACE: Duration = concord::grpc::SHUTDOWN_GRACE;
/// Registry name under which the gateway registers itself.
pub const SERVICE_NAME: &str = concord::identity::GATEWAY_SERVICE;
/// Metadata key telling registry readers which protocol the instance speaks.
pub const PROTOCOL_KEY: &str = "protocol";

/// Gateway settings; every field has a default and can be overridden by the CLI.
#[derive(Clone, Debug)]
pub struct Config {
    /// Registry address (host:port); backends are discovered through it.
    pub registry_addr: String,
    /// Deadline of each backend call attempt; past it the answer is `504`.
    pub call_timeout: Duration,
    /// Largest accepted request body, in bytes; larger bodies get `413`.
    pub body_limit_bytes: usize,
    /// How often `/api/events` refreshes the cluster view without a registry change (lag).
    pub cluster_refresh: Duration,
    /// Address published in the registry; `None`: the bound address (loopback when bound
    /// to all interfaces).
    pub advertise: Option<String>,
    /// TTL of the gateway's own registry lease (renewed every TTL/3).
    pub lease_ttl: Duration,
    /// Credential this process proves its identity with (registry, peers).
    pub credential: Option<concord::identity::Credential>,
    /// Header-read timeout and connection limit of the HTTP listener ([`edge`]).
    pub limits: edge::Limits,
    /// Mark the session cookie `Secure`: set it when browsers reach the gateway over
    /// HTTPS (a TLS-terminating proxy in front), or they would not send the cookie back.
    pub secure_cookies: bool,
    /// `concord up`'s supervisor admin API (`host:port`), target of the
    /// `/api/admin/cluster` controls; `None`: those routes answer 503.
    pub supervisor_addr: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            registry_addr: concord::config::DEFAULT_REGISTRY_ADDR.to_owned(),
            call_timeout: Duration::from_secs(10),
            body_limit_bytes: 64 * 1024,
            cluster_refresh: Duration::from_secs(2),
            advertise: None,
            lease_ttl: concord::config::DEFAULT_LEASE_TTL,
            credential: None,
            limits: edge::Limits::default(),
            secure_cookies: false,
            supervisor_addr: None,
        }
    }
}

impl Config {
    /// Checks the settings; the error names the bad field.
    pub fn validate(&self) -> Result<(), Error> {
        if self.registry_addr.trim().is_empty() {
            return Err(Error::InvalidConfig("registry_addr is empty".into()));
        }
        if self.call_timeout.is_zero() {
            return Err(Error::InvalidConfig("call_timeout must be > 0".into()));
        }
        if self.body_limit_bytes == 0 {
            return Err(Error::InvalidConfig("body_limit_bytes must be > 0".into()));
        }
        if self.cluster_refresh.is_zero() {
            return Err(Error::InvalidConfig("cluster_refresh must be > 0".into()));
        }
        if self.limits.header_read_timeout.is_zero() {
            return Err(Error::InvalidConfig(
                "header_read_timeout must be > 0".into(),
            ));
        }
        if self.limits.body_read_timeout.is_zero() {
            return Err(Error::InvalidConfig("body_read_timeout must be > 0".into()));
        }
        if self.limits.max_connections == 0 {
            return Err(Error::InvalidConfig("max_connections must be > 0".into()));
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(Error::InvalidConfig("lease_ttl must be >= 1s".into()));
        }
        if self
            .advertise
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            return Err(Error::InvalidConfig("advertise is empty".into()));
        }
        Ok(())
    }
}

/// Serves the gateway on `listener` until `shutdown` resolves.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    let backends = Backends::start(&config.registry_addr)?;
    let (router, openapi) = routes::router();
    let openapi_json = openapi
        .to_json()
        .map_err(|err| Error::InvalidConfig(format!("OpenAPI document: {err}")))?;
    let stopping = CancellationToken::new();
    // Cancelled however `serve` ends, aborted included.
    let _stop_on_drop = stopping.clone().drop_guard();
    let state = AppState {
        backends,
        call_timeout: config.call_timeout,
        cluster_refresh: config.cluster_refresh,
        shutdown: stopping.clone(),
        openapi_json: Arc::new(openapi_json),
        secure_cookies: config.secure_cookies,
        supervisor: config
            .supervisor_addr
            .as_deref()
            .map(|addr| cluster_admin::SupervisorClient::new(addr, config.call_timeout))
            .transpose()?,
    };

    let request_id = HeaderName::from_static(extract::REQUEST_ID);
    // The layers wrap the whole router, not each route: a `405`'s `Allow` header, which the
    // router adds after its routes' layers, is then visible to `json_errors`. Outermost
    // first; see the module doc and [`edge`].
    let app = ServiceBuilder::new()
        .layer(RequestBodyDeadlineLayer::new(config.limits.body_read_timeout))
        .map_request(|request: Request<_>| request.map(Body::new))
        // Every request counted under its final status (see `metrics`).
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request<_>| {
                    let id = request
                        .headers()
                        .get(extract::REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    // No trace to continue or export: a span for logs only, disabled at
                    // the default log level, so the shop behind us gets no `traceparent`
                    // either (see `concord::telemetry`, "Spans for logs only").
                    if !concord::telemetry::wants_trace(request.headers()) {
                        return tracing::debug_span!(target: "concord_web_gateway::logs", "http", method = %request.method(), path = %request.uri().path(), request_id = %id);
                    }
                    let span = tracing::debug_span!("http", method = %request.method(), path = %request.uri().path(), request_id = %id);
                    // A browser's or proxy's `traceparent` makes this request part of its trace.
                    concord::telemetry::continue_trace(&span, request.headers());
                    span
                })
                // Failed replies are logged once, with their cause, by `Error`.
                .on_failure(DefaultOnFailure::new().level(Level::DEBUG)),
        )
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(SetResponseHeaderLayer::overriding(
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(edge::CONTENT_SECURITY_POLICY),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            X_FRAME_OPTIONS,
            HeaderValue::from_static(edge::X_FRAME_OPTIONS),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static(edge::X_CONTENT_TYPE_OPTIONS),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            REFERRER_POLICY,
            HeaderValue::from_static(edge::REFERRER_POLICY),
        ))
        // Inside the headers, outside the routes: every error response leaves as JSON.
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(edge::csrf_layer())
        .service(
            router
                .merge(concord::metrics::http_router())
                .with_state(state)
                .layer(axum::middleware::from_fn(metrics::route_label))
                .layer(DefaultBodyLimit::max(config.body_limit_bytes)),
        );

    let addr = listener.local_addr().ok();
    let keeper = match addr {
        Some(bound) => Some(register(&config, bound)?),
        None => {
            tracing::error!("listener has no local address; not registering the gateway");
            None
        }
    };
    tracing::info!(?addr, registry = %config.registry_addr, limits = ?config.limits, "web gateway serving");
    edge::serve_http(listener, app, config.limits, SHUTDOWN_GRACE, async move {
        shutdown.await;
        tracing::info!("web gateway shutting down");
        stopping.cancel();
        // Leave the registry first (bounded by the registry client's call timeout), so
        // `concord status` stops listing a gateway that no longer takes requests.
        if let Some(keeper) = keeper {
            keeper.deregister().await;
            tracing::info!("web gateway deregistered");
        }
    })
    .await;
    tracing::info!(?addr, "web gateway stopped");
    Ok(())
}

/// Starts keeping the gateway's registration alive (see the module doc).
fn register(config: &Config, bound: SocketAddr) -> Result<LeaseKeeper, Error> {
    let address = advertised_address(config.advertise.as_deref(), bound);
    let registration = Registration {
        service: SERVICE_NAME.to_owned(),
        address: address.clone(),
        metadata: HashMap::from([(PROTOCOL_KEY.to_owned(), "http".to_owned())]),
        ttl: config.lease_ttl,
        credential: config.credential.clone(),
    };
    let keeper = LeaseKeeper::spawn(&config.registry_addr, registration).map_err(|err| {
        Error::InvalidConfig(format!(
            "registry address {:?}: {err}",
            config.registry_addr
        ))
    })?;
    tracing::info!(%address, registry = %config.registry_addr, "registering the gateway");
    Ok(keeper)
}

/// The address to publish: the configured one, else the bound one with an unspecified IP
/// (`0.0.0.0`, `::`) replaced by loopback, since nobody can dial it.
pub fn advertised_address(advertise: Option<&str>, bound: SocketAddr) -> String {
    if let Some(address) = advertise {
        return address.to_owned();
    }
    if bound.ip().is_unspecified() {
        let loopback = match bound {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        return SocketAddr::new(loopback, bound.port()).to_string();
    }
    bound.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published address: the configured one, or the bound one made dialable.
    #[test]
    fn advertised_address_table() {
        let cases = [
            (None, "127.0.0.1:8080", "127.0.0.1:8080"),
            (None, "0.0.0.0:8080", "127.0.0.1:8080"),
            (None, "[::]:8080", "[::1]:8080"),
            (Some("gw.example:80"), "0.0.0.0:8080", "gw.example:80"),
        ];
        for (advertise, bound, want) in cases {
            let bound: SocketAddr = bound.parse().expect("test address");
            assert_eq!(advertised_address(advertise, bound), want);
        }
    }

    /// Startup validation names the bad field.
    #[test]
    fn config_validation_table() {
        assert!(Config::default().validate().is_ok());
        let cases = [
            Config {
                lease_ttl: Duration::from_millis(10),
                ..Config::default()
            },
            Config {
                advertise: Some(" ".into()),
                ..Config::default()
            },
            Config {
                registry_addr: String::new(),
                ..Config::default()
            },
        ];
        for config in cases {
            assert!(config.validate().is_err(), "{config:?}");
        }
    }
}
