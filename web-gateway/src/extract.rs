//! Request extractors whose rejections are the gateway's [`Error`], so a malformed body,
//! query or path is a `400` JSON error carrying the parser's reason (and an oversized body
//! a `413`), never axum's plain-text default; plus the per-call context (request id,
//! bearer token or session cookie passed through, deadline) and the `Idempotency-Key` header.

use axum::{
    extract::{FromRequest, FromRequestParts},
    http::{header::AUTHORIZATION, request::Parts},
};

use crate::{backends::CallContext, error::Error, state::AppState};

/// HTTP header carrying the client's idempotency key for order placement.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// HTTP header carrying the request id (set by the request-id layer when absent).
pub const REQUEST_ID: &str = "x-request-id";

/// A JSON body; rejections become [`Error::InvalidArgument`] / [`Error::PayloadTooLarge`].
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(Error))]
pub struct ApiJson<T>(pub T);

/// A query string; rejections become [`Error::InvalidArgument`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Error))]
pub struct ApiQuery<T>(pub T);

/// Path parameters; rejections become [`Error::InvalidArgument`].
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Error))]
pub struct ApiPath<T>(pub T);

impl FromRequestParts<AppState> for CallContext {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let request_id = parts
            .headers
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Only a bearer token is passed through; any other scheme is dropped, so a route
        // that needs a token answers 401 from the backend rather than the gateway guessing.
        // Without one, the session cookie's token is sent as the bearer (see `session`).
        let bearer = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| bearer_token(value.to_str().ok()))
            .or_else(|| crate::session::from_headers(&parts.headers));
        Ok(CallContext {
            request_id,
            bearer,
            timeout: state.call_timeout,
        })
    }
}

/// The token of a `Bearer <token>` header value.
fn bearer_token(value: Option<&str>) -> Option<String> {
    let value = value?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?
        .trim();
    (!token.is_empty()).then(|| token.to_owned())
}

/// The required `Idempotency-Key` header of `POST /api/orders`.
pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        let key = parts
            .headers
            .get(IDEMPOTENCY_KEY)
            .ok_or_else(|| Error::InvalidArgument("missing Idempotency-Key header".into()))?
            .to_str()
            .map_err(|_| Error::InvalidArgument("Idempotency-Key must be visible ASCII".into()))?
            .trim();
        if key.is_empty() {
            return Err(Error::InvalidArgument(
                "Idempotency-Key must not be empty".into(),
            ));
        }
        Ok(Self(key.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only `Bearer <token>` headers yield a token.
    #[test]
    fn bearer_token_table() {
        let cases = [
            (Some("Bearer abc"), Some("abc")),
            (Some("bearer abc "), Some("abc")),
            (Some("Bearer "), None),
            (Some("Basic abc"), None),
            (None, None),
        ];
        for (header, want) in cases {
            assert_eq!(bearer_token(header).as_deref(), want, "{header:?}");
        }
    }
}
