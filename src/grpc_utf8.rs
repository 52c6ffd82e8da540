//! Undecodable strings are the caller's fault: `INVALID_ARGUMENT`, not `INTERNAL`.
//!
//! A proto `string` field must hold UTF-8. prost refuses anything else while decoding a
//! request, and tonic's codec reports every decode failure as `INTERNAL` ("failed to decode
//! Protobuf message: Product.name: invalid string value: data is not UTF-8 encoded"),
//! following gRPC's table for "error parsing request proto". For a server that is
//! misleading: nothing is broken, the request is, and retrying it unchanged fails again.
//!
//! [`layer`] is a tower layer every server gets from [`crate::grpc::router`]. It looks at
//! the status of each response and rewrites exactly that case — `INTERNAL` whose message
//! says the data is not UTF-8 — to `INVALID_ARGUMENT`, keeping the message (which names the
//! field). It runs on the server side only: clients keep tonic's codec untouched, so a
//! client that receives a broken *response* still sees `INTERNAL`, as it should.
//!
//! Scope: tonic answers a request it cannot decode with a trailers-only response (the
//! status in the headers) before any handler runs, for unary and server-streaming calls;
//! that is what the layer rewrites. In client- or bidi-streaming calls the decode error
//! reaches the handler as a stream item instead, and the handler's own mapping applies.
//! Nothing is written in either case: the request never reaches the handler's logic.

use http::Response;
use tonic::{Code, Status};
use tower::util::MapResponseLayer;

/// The text prost's decode error carries for a `string` field that is not UTF-8.
pub const NOT_UTF8: &str = "data is not UTF-8 encoded";

/// The layer type [`layer`] returns.
pub type InvalidUtf8Layer =
    MapResponseLayer<fn(Response<tonic::body::Body>) -> Response<tonic::body::Body>>;

/// The server-side layer described in the module doc.
pub fn layer() -> InvalidUtf8Layer {
    MapResponseLayer::new(invalid_utf8_is_invalid_argument as fn(_) -> _)
}

/// Rewrites a trailers-only `INTERNAL` "not UTF-8" response to `INVALID_ARGUMENT`; any other
/// response is returned as is.
pub fn invalid_utf8_is_invalid_argument<B>(mut response: Response<B>) -> Response<B> {
    // Cheap check first: every successful response and most errors stop here.
    let internal = response
        .headers()
        .get(Status::GRPC_STATUS)
        .is_some_and(|code| Code::from_bytes(code.as_bytes()) == Code::Internal);
    if !internal {
        return response;
    }
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    if !status.message().contains(NOT_UTF8) {
        return response;
    }
    tracing::debug!(message = status.message(), "request string is not UTF-8");
    response.headers_mut().insert(
        Status::GRPC_STATUS,
        http::HeaderValue::from(Code::InvalidArgument as i32),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only INTERNAL "not UTF-8" becomes INVALID_ARGUMENT; its message stays; every other
    /// status and a plain success pass unchanged.
    #[test]
    fn rewrite_table() {
        let not_utf8 = format!(
            "failed to decode Protobuf message: Product.name: invalid string value: {NOT_UTF8}"
        );
        let cases = [
            (
                Some(Status::internal(not_utf8.clone())),
                Some(Code::InvalidArgument),
            ),
            (Some(Status::internal("disk on fire")), Some(Code::Internal)),
            (
                Some(Status::internal(
                    "failed to decode Protobuf message: invalid varint",
                )),
                Some(Code::Internal),
            ),
            (Some(Status::not_found(NOT_UTF8)), Some(Code::NotFound)),
            (None, None),
        ];
        for (status, want) in cases {
            let response: Response<()> = match &status {
                Some(status) => status.clone().into_http(),
                None => Response::new(()),
            };
            let rewritten = invalid_utf8_is_invalid_argument(response);
            let got = Status::from_header_map(rewritten.headers());
            assert_eq!(got.as_ref().map(Status::code), want, "{status:?}");
            if let (Some(got), Some(sent)) = (got, status) {
                assert_eq!(got.message(), sent.message());
            }
        }
    }
}
