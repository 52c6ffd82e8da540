//! The gateway's edge: what every HTTP response carries, which cross-site writes are
//! refused, and how the listener protects itself from slow or too many clients.
//!
//! - **Security headers** ([`CONTENT_SECURITY_POLICY`], [`X_FRAME_OPTIONS`],
//!   [`X_CONTENT_TYPE_OPTIONS`], [`REFERRER_POLICY`]) are set on every response by
//!   `tower-http` layers wired in `lib.rs`, outside the error rewriting, so the UI, the API,
//!   a `404`, a `405` and a refused write all carry them. The CSP allows scripts and styles
//!   from the gateway itself only: no inline `<script>`, no `on*=` attributes, no `style=`
//!   attributes (the UI sets colours through the CSSOM), no `eval`; the page cannot be
//!   framed (`frame-ancestors 'none'` and, for old browsers, `X-Frame-Options: DENY`).
//! - **Cross-site writes** are refused by [`csrf_layer`]: `tower-http`'s implementation of
//!   Go 1.25's `CrossOriginProtection`. A `POST`/`PUT`/`PATCH`/`DELETE` passes when
//!   `Sec-Fetch-Site` is `same-origin` or `none`, or, without that header, when `Origin`'s
//!   host:port equals the request's `Host`; a browser request from another site gets a JSON
//!   `403 {"code":"permission_denied"}`. Requests with neither header (curl, the Python
//!   client, any non-browser caller using a bearer token) pass: they carry no ambient
//!   credentials a third-party page could ride on. The rule applies whether or not the
//!   request carries a `Cookie`; that is stricter than "cookie-authenticated writes only",
//!   costs no legitimate caller anything (a browser page on another origin cannot send an
//!   `Authorization` header without a CORS preflight, which the gateway never grants), and
//!   is already in place for the session cookie accounts will bring.
//! - **Slow clients** ([`serve_http`]): HTTP/1.1 only (browsers never speak cleartext
//!   HTTP/2), with hyper's header-read timeout: a connection that has not sent a complete
//!   request head within [`Limits::header_read_timeout`] of starting one — or of finishing
//!   its previous request, so idle keep-alive connections too — is closed. A slowloris
//!   client dripping one header byte at a time is therefore cut after that time, whatever
//!   it sends.
//! - **Slow bodies**: a request body must arrive whole within [`Limits::body_read_timeout`]
//!   of the handler starting to read it (`tower-http`'s `RequestBodyDeadlineLayer`, wired
//!   in `lib.rs`: a hard deadline, not an idle timeout a drip could keep resetting); past it
//!   the request fails with a `400` and the connection is free again.
//! - **Too many clients**: at most [`Limits::max_connections`] connections are open at once.
//!   When all are taken the listener stops accepting (new connections wait in the kernel's
//!   backlog) until one closes, so memory and file descriptors stay bounded; the header-read
//!   timeout guarantees that connections held by slow clients free up.
//!
//! Shutdown: when the shutdown future resolves, the listener closes, idle connections are
//! closed at once and busy ones after their current response; connections still open after
//! the grace period are dropped. Every connection task is owned by a `JoinSet` and joined.
//!
//! Caveat: responses hyper makes itself before any layer runs (a malformed request line,
//! a header section over its size limit) carry none of the security headers; they have no
//! body a browser could render.

use std::{convert::Infallible, future::Future, sync::Arc, time::Duration};

use axum::{
    http::{Request, Response, StatusCode},
    response::IntoResponse,
};
use hyper::body::{Body as HttpBody, Incoming};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use tower_http::csrf::{CsrfLayer, ProtectionError};

use crate::error::Error;

/// The Content-Security-Policy of every response: everything from the gateway itself, no
/// inline script or style, no plugins, no framing, forms post only to the gateway.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
/// `X-Frame-Options` for browsers that predate `frame-ancestors`.
pub const X_FRAME_OPTIONS: &str = "DENY";
/// `X-Content-Type-Options`: never guess a content type (no script from a JSON reply).
pub const X_CONTENT_TYPE_OPTIONS: &str = "nosniff";
/// `Referrer-Policy`: URLs (which may hold ids and filters) never leave in a `Referer`.
pub const REFERRER_POLICY: &str = "no-referrer";

/// Default time a client has to send a complete request head.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a request body has to arrive whole.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default most connections open at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Connection limits of the HTTP listener (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Time a connection has to send a complete request head; then it is closed.
    pub header_read_timeout: Duration,
    /// Time a request body has to arrive whole, from the handler starting to read it.
    pub body_read_timeout: Duration,
    /// Most connections open at once; past it the listener stops accepting.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// The cross-site write protection (see the module doc); refusals are JSON `403`s.
pub fn csrf_layer() -> CsrfLayer<fn(ProtectionError) -> Response<axum::body::Body>> {
    CsrfLayer::new().with_rejection_response(refuse_cross_site)
}

fn refuse_cross_site(error: ProtectionError) -> Response<axum::body::Body> {
    Error::Http(
        StatusCode::FORBIDDEN,
        format!(
            "{error}: a state-changing request from a browser must come from this gateway's \
             own pages (Sec-Fetch-Site: same-origin, or an Origin matching Host)"
        ),
    )
    .into_response()
}

/// Serves `service` on `listener` over HTTP/1.1 with `limits` until `shutdown` resolves,
/// then lets open connections finish for at most `grace` (see the module doc).
pub async fn serve_http<S, B>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: HttpBody + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // Reap finished connection tasks so the set stays as small as the open connections.
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => {
                permit.expect("the connection semaphore is never closed")
            }
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::error!(%err, "accept failed; pausing");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if permits.available_permits() == 0 {
            tracing::debug!(
                max = limits.max_connections,
                "connection limit reached; not accepting"
            );
        }
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%peer, %err, "could not set TCP_NODELAY");
        }
        let connection = graceful.watch(http.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(service.clone()),
        ));
        connections.spawn(async move {
            if let Err(err) = connection.await {
                // Header-read timeouts and clients that hang up land here.
                tracing::debug!(%peer, %err, "connection closed with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::debug!(open = connections.len(), "closing connections");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            open = connections.len(),
            "grace period over; dropping open connections"
        );
        connections.abort_all();
    }
    while connections.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CSP forbids what the issue asks (inline script, framing) and allows the UI.
    #[test]
    fn csp_forbids_inline_script_and_framing() {
        for directive in [
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "object-src 'none'",
        ] {
            assert!(CONTENT_SECURITY_POLICY.contains(directive), "{directive}");
        }
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }
}
