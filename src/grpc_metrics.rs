//! Request metrics for every gRPC server: one tower layer, added by
//! [`crate::grpc::router`], so no handler counts anything itself.
//!
//! Families (names as on the page, after the `concord_` prefix):
//! - `grpc_server_started_total{service,method}`: calls that reached the server;
//! - `grpc_server_handled_total{service,method,code}`: calls finished, by gRPC status
//!   code name (`OK`, `UNAVAILABLE`, …), like go-grpc-prometheus;
//! - `grpc_server_handling_seconds{service,method}`: time from the request's arrival to
//!   the status (for a stream, its whole life);
//! - `grpc_server_in_flight{service}`: calls started and not finished.
//!
//! The status is read where gRPC puts it: the response headers of a trailers-only reply
//! (most errors, including tonic's own refusals), else the trailers at the end of the
//! body. A call whose body is dropped before its trailers (the client went away, the
//! server shut down) counts as `CANCELLED`.
//!
//! Bounded labels: `service` and `method` come from the request path, which a client
//! chooses. A path naming a service the server does not serve, or a method the server
//! answered `UNIMPLEMENTED`, is counted under `service="unknown", method="unknown"`, so a
//! client cannot grow the page by inventing names.

use std::{
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
    time::Instant,
};

use http_body::{Body as HttpBody, Frame};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
};
use tonic::Code;

/// Label value for a service or method the server does not know.
pub const UNKNOWN: &str = "unknown";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    service: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    service: String,
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

struct Families {
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    handling: Family<MethodLabels, Histogram>,
    in_flight: Family<ServiceLabels, Gauge>,
}

fn families() -> &'static Families {
    static FAMILIES: OnceLock<Families> = OnceLock::new();
    FAMILIES.get_or_init(|| {
        let families = Families {
            started: Family::default(),
            handled: Family::default(),
            handling: crate::metrics::latency_family(),
            in_flight: Family::default(),
        };
        crate::metrics::register(
            "grpc_server_started",
            "gRPC calls that reached the server.",
            families.started.clone(),
        );
        crate::metrics::register(
            "grpc_server_handled",
            "gRPC calls finished, by status code.",
            families.handled.clone(),
        );
        crate::metrics::register_with_unit(
            "grpc_server_handling",
            "Time from a call's arrival to its status (a stream's whole life).",
            prometheus_client::registry::Unit::Seconds,
            families.handling.clone(),
        );
        crate::metrics::register(
            "grpc_server_in_flight",
            "gRPC calls started and not finished.",
            families.in_flight.clone(),
        );
        families
    })
}

/// The layer [`crate::grpc::router`] adds (outermost, so it sees the final status).
#[derive(Clone, Debug)]
pub struct GrpcMetricsLayer {
    /// Services the server serves: any other name is counted as [`UNKNOWN`].
    services: Arc<[String]>,
}

impl GrpcMetricsLayer {
    /// A layer for a server serving `services` (full names, `package.Service`).
    pub fn new<'a>(services: impl IntoIterator<Item = &'a str>) -> Self {
        families();
        GrpcMetricsLayer {
            services: services.into_iter().map(str::to_owned).collect(),
        }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            services: Arc::clone(&self.services),
        }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around a server.
#[derive(Clone, Debug)]
pub struct GrpcMetrics<S> {
    inner: S,
    services: Arc<[String]>,
}

/// One call being measured; records itself exactly once.
struct Tracker {
    service: String,
    method: String,
    started: Instant,
    done: bool,
}

impl Tracker {
    fn start(path: &str, services: &[String]) -> Self {
        let (service, method) = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .filter(|(service, method)| {
                !method.is_empty() && !method.contains('/') && services.iter().any(|s| s == service)
            })
            .map_or((UNKNOWN, UNKNOWN), |(s, m)| (s, m));
        let tracker = Tracker {
            service: service.to_owned(),
            method: method.to_owned(),
            started: Instant::now(),
            done: false,
        };
        let families = families();
        families
            .started
            .get_or_create(&tracker.method_labels())
            .inc();
        families
            .in_flight
            .get_or_create(&ServiceLabels {
                service: tracker.service.clone(),
            })
            .inc();
        tracker
    }

    fn method_labels(&self) -> MethodLabels {
        MethodLabels {
            service: self.service.clone(),
            method: self.method.clone(),
        }
    }

    fn finish(&mut self, code: Code) {
        if self.done {
            return;
        }
        self.done = true;
        let families = families();
        families
            .in_flight
            .get_or_create(&ServiceLabels {
                service: self.service.clone(),
            })
            .dec();
        // An unknown method of a known service: fold it into `unknown` (module doc).
        let mut labels = self.method_labels();
        if code == Code::Unimplemented {
            labels = MethodLabels {
                service: UNKNOWN.to_owned(),
                method: UNKNOWN.to_owned(),
            };
        }
        families
            .handling
            .get_or_create(&labels)
            .observe(self.started.elapsed().as_secs_f64());
        families
            .handled
            .get_or_create(&HandledLabels {
                service: labels.service,
                method: labels.method,
                code: code_name(code).to_owned(),
            })
            .inc();
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// The canonical upper-case name of a gRPC status code (as in `grpc-status` docs).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn status_in(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get(tonic::Status::GRPC_STATUS)
        .map(|v| Code::from_bytes(v.as_bytes()))
}

impl<S, B> tower::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let mut tracker = Tracker::start(request.uri().path(), &self.services);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = match response.await {
                Ok(response) => response,
                Err(err) => {
                    tracker.finish(Code::Internal);
                    return Err(err);
                }
            };
            if let Some(code) = status_in(response.headers()) {
                tracker.finish(code);
                return Ok(response);
            }
            Ok(response.map(|body| {
                tonic::body::Body::new(TrackedBody {
                    inner: body,
                    tracker,
                })
            }))
        })
    }
}

/// A response body that records the call when its trailers pass (or it is dropped).
struct TrackedBody {
    inner: tonic::body::Body,
    tracker: Tracker,
}

impl HttpBody for TrackedBody {
    type Data = tonic::codegen::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.tracker
                        .finish(status_in(trailers).unwrap_or(Code::Unknown));
                }
            }
            Poll::Ready(Some(Err(status))) => this.tracker.finish(status.code()),
            Poll::Ready(None) => this.tracker.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths of served methods keep their names; anything else is `unknown`.
    #[test]
    fn labels_are_bounded() {
        let services = vec!["concord.shop.v1.Shop".to_owned()];
        for (path, want) in [
            (
                "/concord.shop.v1.Shop/PlaceOrder",
                ("concord.shop.v1.Shop", "PlaceOrder"),
            ),
            ("/concord.evil.v1.X/Y", (UNKNOWN, UNKNOWN)),
            ("/concord.shop.v1.Shop/", (UNKNOWN, UNKNOWN)),
            ("/concord.shop.v1.Shop/A/B", (UNKNOWN, UNKNOWN)),
            ("/", (UNKNOWN, UNKNOWN)),
        ] {
            let mut tracker = Tracker::start(path, &services);
            assert_eq!(
                (tracker.service.as_str(), tracker.method.as_str()),
                want,
                "{path}"
            );
            tracker.finish(Code::Ok);
        }
    }

    /// A real server after traffic: calls counted per method and code, latency observed,
    /// an unserved service folded into `unknown`, nothing left in flight.
    #[tokio::test]
    async fn real_server_counts_calls_by_code() {
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (router, _health) = crate::grpc::router(&[]);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::grpc::serve(router, listener, async move {
            let _ = stop_rx.await;
        }));
        let channel = crate::grpc::lazy_channel(&addr).expect("channel");
        let before = count(&crate::metrics::encode(), "Check", "NOT_FOUND");
        let mut health = HealthClient::new(channel.clone());
        for _ in 0..3 {
            let reply = health
                .check(HealthCheckRequest {
                    service: "no.such.Service".into(),
                })
                .await;
            assert_eq!(reply.expect_err("unknown service").code(), Code::NotFound);
        }
        let mut predictor = crate::pb::predict::v1::predictor_client::PredictorClient::new(channel);
        let reply = predictor
            .predict(crate::pb::predict::v1::PredictRequest::default())
            .await;
        assert_eq!(reply.expect_err("not served").code(), Code::Unimplemented);

        let page = crate::metrics::encode();
        let scrape = crate::metrics::test::parse(&page);
        assert_eq!(count(&page, "Check", "NOT_FOUND") - before, 3.0, "{page}");
        let sample = |name: &str, method: &str| {
            scrape
                .samples
                .iter()
                .find(|s| s.metric == name && s.labels.get("method") == Some(method))
        };
        assert!(
            sample("concord_grpc_server_handling_seconds_count", "Check").is_some(),
            "{page}"
        );
        let unknown = scrape.samples.iter().find(|s| {
            s.metric == "concord_grpc_server_handled_total"
                && s.labels.get("service") == Some(UNKNOWN)
                && s.labels.get("code") == Some("UNIMPLEMENTED")
        });
        assert!(unknown.is_some(), "{page}");
        assert!(
            !page.contains("concord.predict.v1.Predictor"),
            "unserved service named on the page:\n{page}"
        );
        let _ = stop_tx.send(());
        let _ = server.await;
    }

    /// `concord_grpc_server_handled_total` for the health `method` and `code`.
    fn count(page: &str, method: &str, code: &str) -> f64 {
        crate::metrics::test::parse(page)
            .samples
            .into_iter()
            .find(|s| {
                s.metric == "concord_grpc_server_handled_total"
                    && s.labels.get("method") == Some(method)
                    && s.labels.get("code") == Some(code)
            })
            .map_or(0.0, |s| match s.value {
                prometheus_parse::Value::Counter(v) => v,
                _ => panic!("not a counter"),
            })
    }
}
