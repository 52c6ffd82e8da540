//! The gateway's one error enum and the one place where a failure becomes an HTTP status.
//!
//! Every handler returns `Result<_, Error>`; [`Error`]'s `IntoResponse` renders
//! `{"code": "...", "message": "..."}` with the status from [`Error::http_status`], which in
//! turn uses [`http_status_for`] for backend gRPC codes. Nothing else builds an error
//! response, so the same failure gets the same status on every route.

use axum::{
    extract::rejection::{JsonRejection, PathRejection, QueryRejection},
    http::StatusCode,
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
            Error::Backend(status) => http_status_for(status.code()),
            Error::InvalidConfig(_) | Error::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON `code` of this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid_argument",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::NoBackend(_) => "unavailable",
            Error::NoRoute(_) => "no_route",
            Error::Backend(status) => code_name(status.code()),
            Error::InvalidConfig(_) | Error::Io(_) => "internal",
        }
    }

    /// The gRPC code a retry decision looks at (`Unavailable` for a missing backend).
    pub fn grpc_code(&self) -> Code {
        match self {
            Error::Backend(status) => status.code(),
            Error::NoBackend(_) => Code::Unavailable,
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::PayloadTooLarge(_) => Code::ResourceExhausted,
            Error::NoRoute(_) => Code::NotFound,
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
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Error::PayloadTooLarge(rejection.body_text())
        } else {
            Error::InvalidArgument(rejection.body_text())
        }
    }
}

impl From<QueryRejection> for Error {
    fn from(rejection: QueryRejection) -> Self {
        Error::InvalidArgument(rejection.body_text())
    }
}

impl From<PathRejection> for Error {
    fn from(rejection: PathRejection) -> Self {
        Error::InvalidArgument(rejection.body_text())
    }
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
        (status, Json(body)).into_response()
    }
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
        ];
        for (err, http, name) in cases {
            assert_eq!(err.http_status().as_u16(), http, "{err:?}");
            assert_eq!(err.code(), name, "{err:?}");
        }
    }
}
