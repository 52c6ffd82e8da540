//! The gateway's HTTP request metrics and its `/metrics` page.
//!
//! Families (after the `concord_` prefix):
//! - `gateway_http_requests_total{method,route,status}`;
//! - `gateway_http_request_seconds{method,route}` (histogram): time to the response head
//!   (for `/api/events`, to the start of the stream).
//!
//! Bounded labels: `route` is the matched path template (`/api/products/{id}`), never the
//! raw path; a request no route matched (a `404`, or one refused before routing, like a
//! cross-site write) is `route="unmatched"`. `method` is one of the standard methods or
//! `OTHER`. So no client can grow the page by inventing paths or methods.
//!
//! Two middlewares make this work: [`route_label`] runs inside the router, where the
//! matched template is known, and leaves it on the response; [`track`] runs outermost, so
//! it sees every request and the final status (after the CSRF check and the JSON error
//! rewriting).
//!
//! Exposure: `GET /metrics` on the gateway's own port serves the whole process page (the
//! gRPC client side has none; these families and the process's). It is read-only, takes
//! no body, and the cross-site rule does not apply to a `GET`. It is public like the rest
//! of the gateway: it shows request rates by route and status and nothing
//! `/api/cluster` and `/api/stakes` do not already show; an operator who does not want it
//! reachable from outside blocks `/metrics` at the proxy in front.

use std::sync::OnceLock;
use std::time::Instant;

use axum::{
    extract::{MatchedPath, Request},
    middleware::Next,
    response::Response,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Unit,
};

/// `route` of a request no route matched.
pub const UNMATCHED: &str = "unmatched";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

struct Families {
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
}

fn families() -> &'static Families {
    static FAMILIES: OnceLock<Families> = OnceLock::new();
    FAMILIES.get_or_init(|| {
        let families = Families {
            requests: Family::default(),
            latency: concord::metrics::latency_family(),
        };
        concord::metrics::register(
            "gateway_http_requests",
            "HTTP requests by method, matched route and status.",
            families.requests.clone(),
        );
        concord::metrics::register_with_unit(
            "gateway_http_request",
            "Time from a request's arrival to its response head.",
            Unit::Seconds,
            families.latency.clone(),
        );
        families
    })
}

/// The matched route template, left on the response by [`route_label`].
#[derive(Clone, Debug)]
struct RouteLabel(String);

/// Inside the router: copies the matched path template onto the response.
pub async fn route_label(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(RouteLabel(route));
    }
    response
}

/// Outermost: counts and times every request under its route and final status.
pub async fn track(request: Request, next: Next) -> Response {
    let families = families();
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let route = response
        .extensions()
        .get::<RouteLabel>()
        .map_or_else(|| UNMATCHED.to_owned(), |r| r.0.clone());
    families
        .latency
        .get_or_create(&RouteLabels {
            method,
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    families
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

fn method_label(method: &http::Method) -> &'static str {
    use http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}
