//! `GET /hello`, the static UI and the OpenAPI document.
//!
//! The UI files are compiled into the binary (`include_str!`), so `concord gateway` serves
//! them from any working directory and there is no build step.

use axum::{
    extract::State,
    http::{header, HeaderValue},
    response::{IntoResponse, Response},
};

use crate::state::AppState;

const INDEX_HTML: &str = include_str!("../../static/index.html");
const SCRIPT_JS: &str = include_str!("../../static/script.js");
const STYLE_CSS: &str = include_str!("../../static/style.css");

/// Liveness greeting.
#[utoipa::path(get, path = "/hello", tag = "ui",
    responses((status = 200, content_type = "text/plain", body = String, example = "Hello, World!")))]
pub async fn hello() -> &'static str {
    "Hello, World!"
}

/// The OpenAPI 3 description of this API, generated from the handlers.
#[utoipa::path(get, path = "/api/openapi.json", tag = "ui",
    responses((status = 200, content_type = "application/json", description = "OpenAPI 3 document")))]
pub async fn openapi_json(State(state): State<AppState>) -> Response {
    asset("application/json", state.openapi_json.to_string())
}

/// The single-page UI.
#[utoipa::path(get, path = "/", tag = "ui",
    responses((status = 200, content_type = "text/html", description = "The UI")))]
pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// The UI's script.
#[utoipa::path(get, path = "/script.js", tag = "ui",
    responses((status = 200, content_type = "text/javascript", description = "UI script")))]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT_JS)
}

/// The UI's stylesheet.
#[utoipa::path(get, path = "/style.css", tag = "ui",
    responses((status = 200, content_type = "text/css", description = "UI stylesheet")))]
pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

fn asset(content_type: &'static str, body: impl IntoResponse) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}
