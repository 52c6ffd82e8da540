//! One way to run a gRPC server and one way to dial a peer.
//!
//! [`router`] gives every server the same limits (request timeout, message sizes via the
//! generated servers' defaults), a tracing span per request carrying its request id
//! (`x-request-id` from the client, or a fresh one) that continues the caller's W3C trace
//! context ([`crate::telemetry`]), request metrics per method ([`crate::grpc_metrics`]),
//! `grpc.health.v1.Health`, and server reflection in both `v1` and `v1alpha` (grpcurl 1.8
//! only speaks `v1alpha`). Reflection lists only the services the caller says it serves
//! (plus health and reflection): the descriptor set holds every Concord service, and
//! advertising one a server does not run sends clients to an `UNIMPLEMENTED` dead end. Every message type stays describable.
//! Undecodable (non-UTF-8) strings in any request are answered `INVALID_ARGUMENT`
//! ([`crate::grpc_utf8`]). [`serve`]
//! runs it on a listener until the shutdown future resolves, then gives in-flight calls a
//! bounded grace period: long-lived streams must watch shutdown themselves, and are cut
//! when the grace period ends.
//!
//! TLS: when the process installed a TLS setting ([`crate::tls::install`]), [`router`]
//! serves mutual TLS (a client certificate of the cluster CA is required) and the channels
//! dial `https://` with this process's certificate; [`lazy_channel_to`] also makes the
//! server prove it is the expected principal. Without one, both are plaintext, as in
//! every in-process test.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
    time::Duration,
};

use tokio::net::TcpListener;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Server, ServerTlsConfig};
use tonic_health::server::HealthReporter;
use tower::layer::util::{Identity, Stack};

/// The server [`router`] builds: tonic's router with the layers every server shares.
pub type Router = tonic::transport::server::Router<
    Stack<
        crate::grpc_utf8::InvalidUtf8Layer,
        Stack<crate::grpc_metrics::GrpcMetricsLayer, Identity>,
    >,
>;

/// Longest time a unary call may run on any server.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long shutdown waits for in-flight calls before closing connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long dialling a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest message a server accepts or a client sends, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Metadata key of the request id, propagated in logs.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

static NEXT_REQUEST_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh request id: process id and a counter, unique per process run and cheap to make.
pub fn new_request_id() -> String {
    static PROCESS_ID: OnceLock<u32> = OnceLock::new();
    format!(
        "{:x}-{:x}",
        PROCESS_ID.get_or_init(std::process::id),
        NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed)
    )
}

/// The request's span. It costs nothing per request unless someone wants it: a call that
/// carries no trace context, in a process that exports nothing, gets a span for logs only
/// ([`crate::telemetry::LOGS_ONLY`]), disabled at the default log level; the id is made and
/// the trace context parsed only for an enabled span.
fn request_span(request: &http::Request<()>) -> tracing::Span {
    let traced = crate::telemetry::wants_trace(request.headers());
    let span = if traced {
        tracing::debug_span!(
            "grpc",
            method = %request.uri().path(),
            request_id = tracing::field::Empty
        )
    } else {
        tracing::debug_span!(
            target: "concord::grpc::logs",
            "grpc",
            method = %request.uri().path(),
            request_id = tracing::field::Empty
        )
    };
    if span.is_disabled() {
        return span;
    }
    match request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        Some(id) => span.record("request_id", id),
        None => span.record("request_id", new_request_id()),
    };
    // A caller's W3C `traceparent` makes this call a child of the caller's span.
    crate::telemetry::continue_trace(&span, request.headers());
    span
}

/// Services every server runs besides its own: health and both reflection versions.
pub const COMMON_SERVICES: [&str; 3] = [
    tonic_health::pb::health_server::SERVICE_NAME,
    tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
    tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME,
];

/// A server with health and reflection already added, plus the reporter to mark the
/// caller's own services serving or not.
///
/// `services` names the Concord services the caller adds to the router (the generated
/// `*_server::SERVICE_NAME` constants); reflection lists exactly those plus
/// [`COMMON_SERVICES`].
///
/// Serves mutual TLS when the process installed a TLS setting ([`crate::tls::installed`]).
pub fn router(services: &[&str]) -> (Router, HealthReporter) {
    router_with_tls(
        services,
        crate::tls::installed().map(crate::tls::Tls::server_config),
    )
}

/// [`router`] with an explicit TLS choice instead of the process's.
pub fn router_with_tls(
    services: &[&str],
    tls: Option<ServerTlsConfig>,
) -> (Router, HealthReporter) {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let reflection_v1 = reflection_builder(services)
        .build_v1()
        .expect("the embedded descriptor sets are valid");
    let reflection_v1alpha = reflection_builder(services)
        .build_v1alpha()
        .expect("the embedded descriptor sets are valid");
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server
            .tls_config(tls)
            .expect("TLS material is checked when loaded (Tls::from_pem)");
    }
    let router = server
        .timeout(REQUEST_TIMEOUT)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .trace_fn(request_span)
        // Outermost: counts every call with the status the client finally sees.
        .layer(crate::grpc_metrics::GrpcMetricsLayer::new(
            services.iter().copied().chain(COMMON_SERVICES),
        ))
        // Non-UTF-8 strings in a request: INVALID_ARGUMENT, not tonic's INTERNAL.
        .layer(crate::grpc_utf8::layer())
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    (router, health_reporter)
}

/// Reflection over every descriptor we embed (so any message can be described), listing
/// only `services` and [`COMMON_SERVICES`]. Both reflection protos are registered in both
/// versions, so each version can also describe the other one it lists.
fn reflection_builder(services: &[&str]) -> tonic_reflection::server::Builder<'static> {
    let builder = tonic_reflection::server::Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
    services
        .iter()
        .chain(COMMON_SERVICES.iter())
        .fold(builder, |builder, name| builder.with_service_name(*name))
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains for at most
/// [`SHUTDOWN_GRACE`].
pub async fn serve(
    router: Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let addr = listener.local_addr().ok();
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let server = router.serve_with_incoming_shutdown(incoming, async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    });
    tokio::pin!(server);
    let grace_over = async {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = &mut server => {
            tracing::info!(?addr, "server stopped");
            result
        }
        () = grace_over => {
            tracing::warn!(?addr, grace = ?SHUTDOWN_GRACE, "grace period over; closing remaining connections");
            Ok(())
        }
    }
}

/// A channel to `addr` (`host:port` or a full URI) that connects on first use and
/// reconnects by itself: make one per peer and reuse it.
///
/// With the process's TLS setting, the server's certificate must verify for the host in
/// `addr`, which proves cluster membership but not role: dial a known peer with
/// [`lazy_channel_to`].
pub fn lazy_channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    lazy_channel_with_tls(
        addr,
        crate::tls::installed().map(|tls| tls.client_config(None)),
    )
}

/// A [`lazy_channel`] to a peer that must be `server`: with the process's TLS setting,
/// the handshake fails unless the server's certificate is `server`'s
/// ([`crate::tls::server_name`]), whatever address it answers on.
pub fn lazy_channel_to(
    addr: &str,
    server: &crate::identity::Principal,
) -> Result<Channel, tonic::transport::Error> {
    lazy_channel_with_tls(
        addr,
        crate::tls::installed().map(|tls| tls.client_config(Some(server))),
    )
}

/// [`lazy_channel`] with an explicit TLS choice instead of the process's: `https://` with
/// `tls`, `http://` without (any scheme in `addr` is replaced accordingly).
pub fn lazy_channel_with_tls(
    addr: &str,
    tls: Option<ClientTlsConfig>,
) -> Result<Channel, tonic::transport::Error> {
    channel(addr, tls, KEEPALIVE_INTERVAL)
}

/// A [`lazy_channel_to`] for a long-lived stream whose silence means something (the
/// registry's Watch): it pings the server every `ping_every` and drops the connection —
/// failing its streams — when a ping goes unanswered for as long. Without this a cut-off
/// registry looks like a quiet one, and the news it queued during the cut (leases it
/// expired because it heard nobody) arrives after the heal as if it were current.
pub fn watch_channel_to(
    addr: &str,
    server: &crate::identity::Principal,
    ping_every: Duration,
) -> Result<Channel, tonic::transport::Error> {
    channel(
        addr,
        crate::tls::installed().map(|tls| tls.client_config(Some(server))),
        ping_every,
    )
}

/// How often an idle channel pings its server (HTTP/2 keepalive).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

fn channel(
    addr: &str,
    tls: Option<ClientTlsConfig>,
    ping_every: Duration,
) -> Result<Channel, tonic::transport::Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let authority = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{authority}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(ping_every)
        .keep_alive_timeout(ping_every.max(Duration::from_millis(100)))
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint.connect_lazy())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_reflection::pb::{v1, v1alpha};

    /// Serves `router(services)` on a free port until the returned sender is dropped.
    async fn start(services: &[&str]) -> (String, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let (router, _health) = router(services);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(router, listener, async move {
            let _ = stop_rx.await;
        }));
        (addr, stop_tx)
    }

    async fn list_v1(addr: &str) -> Vec<String> {
        let channel = lazy_channel(addr).expect("channel");
        let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel);
        let request = v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        };
        let mut replies = client
            .server_reflection_info(tokio_stream::once(request))
            .await
            .expect("reflection v1")
            .into_inner();
        match replies
            .message()
            .await
            .expect("reply")
            .map(|r| r.message_response)
        {
            Some(Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(
                list,
            ))) => sorted(list.service.into_iter().map(|s| s.name).collect()),
            other => panic!("unexpected v1 reply {other:?}"),
        }
    }

    async fn list_v1alpha(addr: &str) -> Vec<String> {
        let channel = lazy_channel(addr).expect("channel");
        let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
        let request = v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        };
        let mut replies = client
            .server_reflection_info(tokio_stream::once(request))
            .await
            .expect("reflection v1alpha")
            .into_inner();
        match replies
            .message()
            .await
            .expect("reply")
            .map(|r| r.message_response)
        {
            Some(Some(
                v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list),
            )) => sorted(list.service.into_iter().map(|s| s.name).collect()),
            other => panic!("unexpected v1alpha reply {other:?}"),
        }
    }

    fn sorted(mut names: Vec<String>) -> Vec<String> {
        names.sort();
        names
    }

    /// Over mutual TLS a call succeeds only when the client presents a certificate of the
    /// cluster CA and the server proves the principal the client expects.
    #[tokio::test]
    async fn mutual_tls_checks_both_sides() {
        use crate::identity::Principal;
        use crate::tls::test::TestCa;
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        let ca = TestCa::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr").to_string();
        let shop = ca.tls(&Principal::Shop);
        let (router, _health) = router_with_tls(&[], Some(shop.server_config()));
        let (_stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(router, listener, async move {
            let _ = stop_rx.await;
        }));
        let gateway = ca.tls(&Principal::Gateway);
        let stranger = TestCa::new().tls(&Principal::Gateway);
        let ca_only = ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&ca.pem))
            .domain_name("shop.concord");
        let cases = [
            (
                "expects the shop",
                Some(gateway.client_config(Some(&Principal::Shop))),
                true,
            ),
            (
                "verifies the address",
                Some(gateway.client_config(None)),
                true,
            ),
            (
                "expects the registry",
                Some(gateway.client_config(Some(&Principal::Registry))),
                false,
            ),
            ("no client certificate", Some(ca_only), false),
            (
                "another CA",
                Some(stranger.client_config(Some(&Principal::Shop))),
                false,
            ),
            ("plaintext", None, false),
        ];
        for (case, tls, ok) in cases {
            let channel = lazy_channel_with_tls(&addr, tls).expect("channel");
            let reply = HealthClient::new(channel)
                .check(HealthCheckRequest::default())
                .await;
            assert_eq!(reply.is_ok(), ok, "{case}: {reply:?}");
        }
    }

    /// In a process that exports no traces, a call without trace context gets no live span
    /// (nothing made per call) unless debug logs show it, and then it is no OpenTelemetry
    /// span; a caller's `traceparent` still gets a span continuing its trace.
    #[test]
    fn request_span_costs_nothing_without_a_trace() {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let call = |traceparent: Option<&str>| {
            let mut request = http::Request::builder().uri("/grpc.health.v1.Health/Check");
            if let Some(value) = traceparent {
                request = request.header(crate::telemetry::TRACEPARENT, value);
            }
            request.body(()).expect("request")
        };
        let in_otel_trace = |span: &tracing::Span| span.context().span().span_context().is_valid();
        let sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        tracing::subscriber::with_default(crate::telemetry::test::subscriber("info"), || {
            assert!(
                request_span(&call(None)).is_disabled(),
                "no trace, info logs"
            );
            let span = request_span(&call(Some(sent)));
            assert!(!span.is_disabled(), "a caller's trace");
            let forwarded = span
                .in_scope(crate::telemetry::current_traceparent)
                .expect("continues the caller's trace");
            assert_eq!(
                crate::telemetry::trace_id_of(&forwarded),
                crate::telemetry::trace_id_of(sent)
            );
        });
        tracing::subscriber::with_default(crate::telemetry::test::subscriber("debug"), || {
            let span = request_span(&call(None));
            assert!(!span.is_disabled(), "debug logs show the request id");
            assert!(!in_otel_trace(&span), "but it is no trace span");
        });
    }

    /// Both reflection versions list exactly the services a server was built with, plus
    /// health and reflection; never the rest of the descriptor set.
    #[tokio::test]
    async fn reflection_lists_only_the_served_services() {
        use crate::pb::{predict, shop, stake};
        let cases: &[&[&str]] = &[
            &[],
            &[predict::v1::predictor_server::SERVICE_NAME],
            &[
                predict::v1::predictor_server::SERVICE_NAME,
                stake::v1::staking_server::SERVICE_NAME,
            ],
            &[
                shop::v1::shop_server::SERVICE_NAME,
                shop::v1::replication_server::SERVICE_NAME,
            ],
        ];
        for services in cases {
            let (addr, _stop) = start(services).await;
            let want = sorted(
                services
                    .iter()
                    .chain(COMMON_SERVICES.iter())
                    .map(|s| (*s).to_owned())
                    .collect(),
            );
            assert_eq!(list_v1(&addr).await, want, "v1, serving {services:?}");
            assert_eq!(
                list_v1alpha(&addr).await,
                want,
                "v1alpha, serving {services:?}"
            );
        }
    }
}
