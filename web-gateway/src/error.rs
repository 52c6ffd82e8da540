//! The gateway's one error enum and the one place where a failure becomes an HTTP status.
//!
//! Every handler returns `Result<_, Error>`; [`Error`]'s `IntoResponse` renders
//! `{"code": "...", "message": "..."}` with the status from [`Error::http_status`], which in
//! turn uses [`http_status_for`] for backend gRPC codes. Nothing else builds an error
//! response, so the same failure gets the same status on every route.
//!
//! Some error responses are not made by a handler: axum's router answers an unknown
//! method with an empty `405`, and a layer may answer with plain text. [`json_errors`]
//! (the outermost layer around the routes) rewrites every such non-JSON error response
//! into the same JSON shape, keeping its status and headers (`Allow`), so the promise
//! "every error is `{code, message}`" holds without each source knowing about it. It also
//! refuses request targets longer than [`MAX_URI_BYTES`] with a JSON `414`.
//!
//! Every `503` carries `Retry-After` ([`Error::retry_after`]): it means "try again soon"
//! (no live backend, a shop failover in progress), never "your request is wrong".
//!
//! Caveat: a request target longer than hyper's hard limit (64 KiB) is refused by the
//! HTTP parser with an empty `414` before any layer runs; nothing here can change that.

use axum::{
    extract::{
        rejection::{JsonRejection, PathRejection, QueryRejection},
        Request,
    },
    http::{
        header::{ALLOW, CONTENT_TYPE, RETRY_AFTER},
        HeaderValue, Method, StatusCode,
    },
    middleware::Next,
    response::{IntoResponse, Response},
    Json,
};
use serde::Serialize;
use tonic::Code;
use utoipa::ToSchema;

/// Why a request (or the server itself) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The HTTP request is malformed: bad JSON, a bad query, a missing header.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request body is larger than the configured limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// No live instance of a backend service is known to the registry.
    #[error("no live instance of service '{0}' is registered")]
    NoBackend(String),
    /// No route matches the request path.
    #[error("no route for {}", concord::error::quote(.0))]
    NoRoute(String),
    /// The path exists but not with this method.
    #[error("method {method} is not allowed on {}; allowed: {allowed}", concord::error::quote(.path))]
    MethodNotAllowed {
        /// The method the client used.
        method: Method,
        /// The request path.
        path: String,
        /// The methods the path accepts, as in the `Allow` header.
        allowed: String,
    },
    /// The request target (path + query) is longer than [`MAX_URI_BYTES`].
    #[error("request target of {len} bytes is longer than the limit of {limit} bytes")]
    UriTooLong {
        /// Length of the request target.
        len: usize,
        /// The limit it exceeded.
        limit: usize,
    },
    /// Every shop instance tried refused the write as a replica: no primary accepts
    /// writes right now (a failover is in progress). Retryable, hence 503, not 409.
    #[error("no {service} primary is accepting writes right now (failover in progress?); retry shortly. Last answer: {detail}")]
    NoPrimary {
        /// The backend service ("shop").
        service: String,
        /// The last refusal, for the logs and the curious.
        detail: String,
    },
    /// An error response made outside the handlers (router, layers), rewritten as JSON.
    #[error("{1}")]
    Http(StatusCode, String),
    /// A backend answered with an error status; its code decides the HTTP status.
    #[error("{}", .0.message())]
    Backend(tonic::Status),
    /// The configuration is unusable (bad address).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The listener failed while serving.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable category, the snake_case gRPC code name (e.g. `not_found`,
    /// `unavailable`) or `payload_too_large` / `no_route` for gateway-local failures.
    pub code: String,
    /// Human-readable reason, from the backend or the JSON parser.
    pub message: String,
}

/// Longest request target (path + query) the gateway accepts; longer ones get a JSON `414`.
/// Far above anything the API needs (ids and short filters), far below hyper's own limit.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// `Retry-After` of a 503 while a shop failover is in progress: about one lease TTL, the
/// time a replica needs to notice the dead primary and promote itself.
pub const RETRY_AFTER_FAILOVER_SECS: u64 = 2;
/// `Retry-After` of any other 503 (no backend registered, backend unreachable).
pub const RETRY_AFTER_SECS: u64 = 1;
/// Most bytes of a non-JSON error body [`json_errors`] reads to reuse as the message.
const MAX_REWRITTEN_BODY_BYTES: usize = 4 * 1024;

/// The HTTP status for a backend's gRPC code; the single mapping used everywhere.
pub fn http_status_for(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        // A state conflict (illegal transition, idempotency key reuse, write sent to a
        // replica): the request may succeed once the state changes, so 409 rather than 412,
        // which HTTP reserves for conditional headers.
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable | Code::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// snake_case name of a gRPC code, used as the JSON `code`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

impl Error {
    /// The HTTP status this error is answered with.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
            Error::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::NoBackend(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::NoRoute(_) => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            Error::NoPrimary { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Http(status, _) => *status,
            Error::Backend(status) => http_status_for(status.code()),
            Error::InvalidConfig(_) | Error::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Seconds a client should wait before retrying; set on every `503`.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Error::NoPrimary { .. } => Some(RETRY_AFTER_FAILOVER_SECS),
            _ if self.http_status() == StatusCode::SERVICE_UNAVAILABLE => Some(RETRY_AFTER_SECS),
            _ => None,
        }
    }

    /// The JSON `code` of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid_argument",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::NoBackend(_) => "unavailable",
            Error::NoRoute(_) => "no_route",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
            Error::UriTooLong { .. } => "uri_too_long",
            Error::NoPrimary { .. } => "unavailable",
            Error::Http(status, _) => status_code_name(*status),
            Error::Backend(status) => code_name(status.code()),
            Error::InvalidConfig(_) | Error::Io(_) => "internal",
        }
    }

    /// The gRPC code a retry decision looks at (`Unavailable` for a missing backend).
    pub fn grpc_code(&self) -> Code {
        match self {
            Error::Backend(status) => status.code(),
            Error::NoBackend(_) | Error::NoPrimary { .. } => Code::Unavailable,
            Error::InvalidArgument(_) | Error::UriTooLong { .. } => Code::InvalidArgument,
            Error::PayloadTooLarge(_) => Code::ResourceExhausted,
            Error::NoRoute(_) => Code::NotFound,
            Error::MethodNotAllowed { .. } => Code::Unimplemented,
            Error::Http(status, _) => grpc_code_for(*status),
            Error::InvalidConfig(_) | Error::Io(_) => Code::Internal,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Backend(status)
    }
}

impl From<JsonRejection> for Error {
    fn from(rejection: JsonRejection) -> Self {
        let text = bound_quoted_spans(&rejection.body_text());
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge(text)
        } else {
            Error::InvalidArgument(text)
        }
    }
}

impl From<QueryRejection> for Error {
    fn from(rejection: QueryRejection) -> Self {
        Error::InvalidArgument(bound_quoted_spans(&rejection.body_text()))
    }
}

impl From<PathRejection> for Error {
    fn from(rejection: PathRejection) -> Self {
        Error::InvalidArgument(bound_quoted_spans(&rejection.body_text()))
    }
}

/// A parser's message with every span it quotes from the caller's input (between two
/// `` ` `` or two `"`, as serde and axum quote) cut to [`concord::error::QUOTE_MAX_CHARS`]
/// characters plus an ellipsis and the span's length, the same bound as
/// [`concord::error::quote`]. An unclosed quote counts as running to the end.
pub fn bound_quoted_spans(text: &str) -> String {
    use concord::error::QUOTE_MAX_CHARS;
    let mut out = String::with_capacity(text.len().min(1024));
    let mut rest = text;
    while let Some(open) = rest.find(['`', '"']) {
        let delimiter = rest[open..].chars().next().expect("found at open");
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        let (span, tail) = match after.find(delimiter) {
            Some(close) => (&after[..close], &after[close..]),
            None => (after, ""),
        };
        match span.char_indices().nth(QUOTE_MAX_CHARS) {
            None => out.push_str(span),
            Some((cut, _)) => {
                out.push_str(&span[..cut]);
                out.push('…');
                if !tail.is_empty() {
                    out.push(delimiter);
                }
                out.push_str(&format!(" ({} bytes)", span.len()));
                rest = tail.get(1..).unwrap_or("");
                continue;
            }
        }
        if let Some(after_close) = tail.get(1..) {
            out.push(delimiter);
            rest = after_close;
        } else {
            rest = "";
        }
    }
    out.push_str(rest);
    out
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.http_status();
        if status.is_server_error() {
            tracing::warn!(error = %self, %status, "request failed");
        } else {
            tracing::debug!(error = %self, %status, "request rejected");
        }
        let body = ErrorBody {
            code: self.code().to_owned(),
            message: self.to_string(),
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = self.retry_after() {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The JSON `code` of an HTTP status produced outside the handlers: the snake_case of its
/// canonical reason (`405` → `method_not_allowed`), or `http_<status>` without one.
fn status_code_name(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "invalid_argument",
        StatusCode::FORBIDDEN => "permission_denied",
        StatusCode::NOT_FOUND => "no_route",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::TOO_MANY_REQUESTS => "resource_exhausted",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        StatusCode::GATEWAY_TIMEOUT => "deadline_exceeded",
        s if s.is_server_error() => "internal",
        _ => "http_error",
    }
}

/// The gRPC code closest to an HTTP status produced outside the handlers.
fn grpc_code_for(status: StatusCode) -> Code {
    match status {
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::PAYLOAD_TOO_LARGE => Code::ResourceExhausted,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => Code::DeadlineExceeded,
        s if s.is_server_error() => Code::Internal,
        _ => Code::InvalidArgument,
    }
}

/// Middleware: refuses over-long request targets, and rewrites every error response that
/// is not JSON yet (axum's empty `405`, a layer's plain-text reply) into an [`Error`]
/// response with the same status, keeping `Allow`. JSON errors and successes pass as is.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let len = request
        .uri()
        .path_and_query()
        .map_or(path.len(), |pq| pq.as_str().len());
    if len > MAX_URI_BYTES {
        return Error::UriTooLong {
            len,
            limit: MAX_URI_BYTES,
        }
        .into_response();
    }
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let allow = parts.headers.get(ALLOW).cloned();
    let error = if status == StatusCode::METHOD_NOT_ALLOWED {
        Error::MethodNotAllowed {
            method,
            path,
            allowed: allow
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        }
    } else {
        let text = axum::body::to_bytes(body, MAX_REWRITTEN_BODY_BYTES)
            .await
            .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
            .unwrap_or_default();
        let message = if text.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("request failed")
                .to_owned()
        } else {
            text
        };
        Error::Http(status, message)
    };
    let mut rewritten = error.into_response();
    if let Some(allow) = allow {
        rewritten.headers_mut().insert(ALLOW, allow);
    }
    rewritten
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every gRPC code maps to the HTTP status and JSON code the API promises.
    #[test]
    fn grpc_code_to_http_status_table() {
        let cases = [
            (Code::InvalidArgument, 400, "invalid_argument"),
            (Code::OutOfRange, 400, "out_of_range"),
            (Code::Unauthenticated, 401, "unauthenticated"),
            (Code::PermissionDenied, 403, "permission_denied"),
            (Code::NotFound, 404, "not_found"),
            (Code::AlreadyExists, 409, "already_exists"),
            (Code::Aborted, 409, "aborted"),
            (Code::FailedPrecondition, 409, "failed_precondition"),
            (Code::ResourceExhausted, 429, "resource_exhausted"),
            (Code::Unimplemented, 501, "unimplemented"),
            (Code::Unavailable, 503, "unavailable"),
            (Code::Cancelled, 503, "cancelled"),
            (Code::DeadlineExceeded, 504, "deadline_exceeded"),
            (Code::Internal, 500, "internal"),
            (Code::Unknown, 500, "unknown"),
            (Code::DataLoss, 500, "data_loss"),
        ];
        for (code, http, name) in cases {
            let err = Error::from(tonic::Status::new(code, "boom"));
            assert_eq!(err.http_status().as_u16(), http, "{code:?}");
            assert_eq!(err.code(), name, "{code:?}");
            assert_eq!(err.to_string(), "boom");
        }
    }

    /// Gateway-local failures have their own fixed statuses.
    #[test]
    fn local_error_status_table() {
        let cases = [
            (Error::InvalidArgument("x".into()), 400, "invalid_argument"),
            (Error::PayloadTooLarge("x".into()), 413, "payload_too_large"),
            (Error::NoBackend("shop".into()), 503, "unavailable"),
            (Error::NoRoute("/x".into()), 404, "no_route"),
            (
                Error::MethodNotAllowed {
                    method: Method::DELETE,
                    path: "/x".into(),
                    allowed: "GET".into(),
                },
                405,
                "method_not_allowed",
            ),
            (Error::UriTooLong { len: 9, limit: 8 }, 414, "uri_too_long"),
            (
                Error::NoPrimary {
                    service: "shop".into(),
                    detail: "replica".into(),
                },
                503,
                "unavailable",
            ),
            (
                Error::Http(StatusCode::METHOD_NOT_ALLOWED, "x".into()),
                405,
                "method_not_allowed",
            ),
            (
                Error::Http(StatusCode::BAD_GATEWAY, "x".into()),
                502,
                "internal",
            ),
        ];
        for (err, http, name) in cases {
            assert_eq!(err.http_status().as_u16(), http, "{err:?}");
            assert_eq!(err.code(), name, "{err:?}");
        }
    }

    /// Quoted spans of caller input in parser messages keep at most 64 characters.
    #[test]
    fn bound_quoted_spans_table() {
        let long = "a".repeat(200);
        let cut = "a".repeat(64);
        let cases = [
            ("no quotes".to_owned(), "no quotes".to_owned()),
            (
                "short `x` and \"y\"".to_owned(),
                "short `x` and \"y\"".to_owned(),
            ),
            (
                format!("unknown variant `{long}`, expected `a`"),
                format!("unknown variant `{cut}…` (200 bytes), expected `a`"),
            ),
            (
                format!("invalid type: string \"{long}\", expected i64 at line 1"),
                format!("invalid type: string \"{cut}…\" (200 bytes), expected i64 at line 1"),
            ),
            (
                format!("unclosed `{long}"),
                format!("unclosed `{cut}… (200 bytes)"),
            ),
            ("unclosed `short".to_owned(), "unclosed `short".to_owned()),
        ];
        for (text, want) in cases {
            assert_eq!(bound_quoted_spans(&text), want);
        }
    }

    /// Every 503 tells the client when to come back; nothing else does.
    #[test]
    fn retry_after_table() {
        let cases = [
            (Error::NoBackend("shop".into()), Some(RETRY_AFTER_SECS)),
            (
                Error::NoPrimary {
                    service: "shop".into(),
                    detail: "replica".into(),
                },
                Some(RETRY_AFTER_FAILOVER_SECS),
            ),
            (
                Error::from(tonic::Status::unavailable("down")),
                Some(RETRY_AFTER_SECS),
            ),
            (Error::from(tonic::Status::failed_precondition("x")), None),
            (Error::NoRoute("/x".into()), None),
        ];
        for (err, want) in cases {
            assert_eq!(err.retry_after(), want, "{err:?}");
            let response = err.into_response();
            let header = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            assert_eq!(header, want);
        }
    }
}
