//! The HTTP surface: every route, registered together with its OpenAPI description so the
//! two cannot drift apart (`utoipa-axum`'s `routes!` adds the handler and its
//! `#[utoipa::path]` in one step).
//!
//! Handlers only convert: HTTP → protobuf request, call through [`crate::backends`],
//! protobuf reply → JSON (the message itself, or [`crate::dto`] via [`crate::convert`]). Errors go through [`crate::error::Error`].

pub mod accounts;
pub mod cluster;
pub mod consensus;
pub mod events;
pub mod shop;
pub mod ui;

use axum::{http::Uri, Router};
use utoipa::{
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    Modify, OpenApi,
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{error::Error, state::AppState};

/// Top-level OpenAPI information; the paths come from the handlers.
#[derive(OpenApi)]
#[openapi(
    info(title = "Concord web gateway", description = "HTTP/JSON over Concord's gRPC services: shop, consensus prediction, staking ledger, cluster status."),
    modifiers(&BearerAuth),
    tags(
        (name = "shop", description = "Products, carts and orders (Shop service)"),
        (name = "accounts", description = "Customer sign-up, sign-in and sign-out; the session lives in the `concord_session` cookie"),
        (name = "consensus", description = "Predictions, outcomes, stakes and the ledger (aggregator)"),
        (name = "cluster", description = "Registry lookups, cluster status, live events"),
        (name = "ui", description = "Greeting, static UI, this document"),
    )
)]
struct ApiDoc;

/// Declares the `bearer` security scheme the admin and oracle routes use, and the
/// `session` cookie scheme of the customer routes.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::session::SESSION_COOKIE,
                "Set by /api/signup and /api/signin (HttpOnly, SameSite=Strict)",
            ))),
        );
    }
}

/// Every route and the OpenAPI document describing exactly those routes.
pub fn router() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(ui::hello))
        .routes(routes!(ui::index))
        .routes(routes!(ui::script))
        .routes(routes!(ui::style))
        .routes(routes!(ui::openapi_json))
        .routes(routes!(shop::list_products, shop::create_product))
        .routes(routes!(
            shop::get_product,
            shop::update_product,
            shop::delete_product
        ))
        .routes(routes!(shop::get_cart, shop::clear_cart))
        .routes(routes!(shop::add_cart_item))
        .routes(routes!(shop::set_cart_item, shop::remove_cart_item))
        .routes(routes!(shop::place_order, shop::list_orders))
        .routes(routes!(shop::get_order))
        .routes(routes!(shop::update_order_status))
        .routes(routes!(shop::list_all_orders))
        .routes(routes!(accounts::sign_up))
        .routes(routes!(accounts::sign_in))
        .routes(routes!(accounts::sign_out))
        .routes(routes!(accounts::get_account))
        .routes(routes!(consensus::predict_query, consensus::predict_body))
        .routes(routes!(consensus::report_outcome))
        .routes(routes!(consensus::list_stakes))
        .routes(routes!(consensus::get_stake))
        .routes(routes!(consensus::list_ledger_events))
        .routes(routes!(consensus::verify_ledger))
        .routes(routes!(cluster::get_service))
        .routes(routes!(cluster::get_cluster))
        .routes(routes!(events::events))
        .routes(routes!(crate::cluster_admin::list_children))
        .routes(routes!(crate::cluster_admin::child_action))
        .fallback(no_route)
        .split_for_parts()
}

/// Unknown paths get the same JSON error shape as everything else.
async fn no_route(uri: Uri) -> Error {
    Error::NoRoute(uri.path().to_owned())
}
