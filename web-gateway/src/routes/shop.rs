//! `/api/products`, `/api/carts`, `/api/orders`: the Shop service over HTTP.
//!
//! Reads may be answered by any shop instance (primary first) and are retried on another
//! after `UNAVAILABLE`. Writes go to the primary; only order placement, deduplicated by its
//! `Idempotency-Key`, is retried after `UNAVAILABLE`. Product mutations and order status
//! changes pass the caller's `Authorization: Bearer` header through to the shop, which
//! checks the admin token (UNAUTHENTICATED → 401).
//!
//! Carts and orders belong to the signed-in customer: the session (cookie or bearer) goes
//! to the shop, which answers 401 without one, 403 for another user's `user_id` and 404
//! for another customer's order. `{user_id}` may be `me`, the session's own account, which
//! is what the UI uses. The admin token reads any user's cart and orders and lists them all
//! (`/api/admin/orders`).

use std::future::Future;

use axum::{extract::State, http::StatusCode, Json};
use concord::pb::shop::v1::{self as pb, shop_client::ShopClient};
use tonic::transport::Channel;

use crate::{
    backends::{Access, CallContext, SHOP},
    dto::{
        AllOrdersQuery, CartQuantity, NewCartItem, NewOrder, NewOrderStatus, OrderQuery,
        ProductPatch, ProductQuery,
    },
    error::{Error, ErrorBody},
    extract::{ApiJson, ApiPath, ApiQuery, IdempotencyKey},
    state::AppState,
};

/// Calls the shop with the retry rule of `access`.
pub(crate) async fn shop_call<T, F, Fut>(
    state: &AppState,
    access: Access,
    mut rpc: F,
) -> Result<T, Error>
where
    F: FnMut(ShopClient<Channel>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let candidates = state.backends.shop_candidates();
    state
        .backends
        .call(SHOP, candidates, access, |channel| {
            rpc(ShopClient::new(channel))
        })
        .await
}

/// The `user_id` to send for a path's `{user_id}`: `me` is the session's own (empty).
fn path_user(user_id: String) -> String {
    if user_id == ME {
        String::new()
    } else {
        user_id
    }
}

/// Path segment naming the signed-in customer's own cart.
pub const ME: &str = "me";

/// A missing message field in a reply is a backend bug, reported as such.
pub(crate) fn must<T>(field: Option<T>, what: &str) -> Result<T, Error> {
    field.ok_or_else(|| {
        Error::Backend(tonic::Status::internal(format!(
            "shop reply without {what}"
        )))
    })
}

/// Lists products, one page at a time.
#[utoipa::path(get, path = "/api/products", tag = "shop", params(ProductQuery),
    responses((status = 200, body = pb::ListProductsResponse), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn list_products(
    State(state): State<AppState>,
    ctx: CallContext,
    ApiQuery(query): ApiQuery<ProductQuery>,
) -> Result<Json<pb::ListProductsResponse>, Error> {
    let message = pb::ListProductsRequest {
        page_size: query.page_size,
        page_token: query.page_token,
        name_contains: query.name_contains,
    };
    let reply = shop_call(&state, Access::Read, |mut c| {
        let request = ctx.request(message.clone());
        async move { c.list_products(request).await }
    })
    .await?;
    Ok(Json(reply))
}

/// Creates a product (admin bearer token passed through).
#[utoipa::path(post, path = "/api/products", tag = "shop", request_body = pb::CreateProductRequest,
    security(("bearer" = [])),
    responses((status = 201, body = pb::CreateProductResponse), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn create_product(
    State(state): State<AppState>,
    ctx: CallContext,
    ApiJson(message): ApiJson<pb::CreateProductRequest>,
) -> Result<(StatusCode, Json<pb::CreateProductResponse>), Error> {
    let reply = shop_call(&state, Access::Write, |mut c| {
        let request = ctx.request(message.clone());
        async move { c.create_product(request).await }
    })
    .await?;
    Ok((StatusCode::CREATED, Json(reply)))
}

/// Returns one product.
#[utoipa::path(get, path = "/api/products/{id}", tag = "shop",
    params(("id" = String, Path, description = "Product id")),
    responses((status = 200, body = pb::Product), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn get_product(
    State(state): State<AppState>,
    ctx: CallContext,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<pb::Product>, Error> {
    let message = pb::GetProductRequest { id };
    let reply = shop_call(&state, Access::Read, |mut c| {
        let request = ctx.request(message.clone());
        async move { c.get_product(request).await }
    })
    .await?;
    Ok(Json(must(reply.product, "product")?))
}

/// Changes the fields present in the body (admin bearer token passed through).
#[utoipa::path(patch, path = "/api/products/{id}", tag = "shop", request_body = ProductPatch,
    params(("id" = String, Path, description = "Product id")), security(("bearer" = [])),
    responses((status = 200, body = pb::UpdateProductResponse), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn update_product(
    State(state): State<AppState>,
    ctx: CallContext,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ProductPatch>,
) -> Result<Json<pb::UpdateProductResponse>, Error> {
    let message = body.into_request(id);
    let reply = shop_call(&state, Access::Write, |mut c| {
        let request = ctx.request(message.clone());
        async move { c.update_product(request).await }
    })
    .await?;
    Ok(Json(reply))
}

/// Deletes a product (admin bearer token passed through).
#[utoipa::path(delete, path = "/api/products/{id}", tag = "shop",
    params(("id" = String, Path, description = "Product id")), security(("bearer" = [])),
    responses((status = 200, body = pb::DeleteProductResponse), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn delete_product(
    State(state): State<AppState>,
    ctx: CallContext,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<pb::DeleteProductResponse>, Error> {
    let message = pb::DeleteProductRequest { id };
    let reply = shop_call(&state, Access::Write, |mut c| {
        let request = ctx.request(message.clone());
        async move { c.delete_product(request).await }
    })
    .await?;
    Ok(Json(reply))
}

/// Returns a user's cart priced at current prices (empty when the user has none).
#[utoipa::path(get, path = "/api/carts/{user_id}", tag = "shop", security(("session" = []), ("bearer" = [])),
    params(("user_id" = String, Path, description = "User id, or `me` for the signed-in customer")),
    responses((status = 200, body = pb::Cart), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn get_cart(
    State(state): State<AppState>,
    ctx: CallContext,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Json<pb::Cart>, Error> {
    let message = pb::GetCartRequest {
        user_id: path_user(user_id),
    };
    let reply = shop_call(&state, Access::Read, |mut c| {
        let request = ctx.request(message.clone());
        async move { c.get_cart(request).await }
    })
    .await?;
    Ok(Json(must(reply.cart, "cart")?))
}

/// Empties a user's cart.
#[utoipa::path(delete, path = "/api/carts/{user_id}", tag = "shop", security(("session" = []), ("bearer" = [])),
    params(("user_id" = String, Path, description = "User id, or `me` for the signed-in customer")),
    responses((status = 200, body = pb::ClearCartResponse), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn clear_cart(
    State(state): State<AppState>,
    ctx: CallContext,
    ApiPath(user_id): ApiPath<String>,
) -> Result<Json<pb::ClearCartResponse>, Error> {
    let message = pb::ClearCartRequest {
        user_id: path_user(user_id),
    };
    let reply = shop_call(&state, Access::Write, |mut c| {
        let request = ctx.request(message.clone());
        async move { c.clear_cart(request).await }
    })
    .await?;
    Ok(Json(reply))
}

/// Adds units of a product to a user's cart.
#[utoipa::path(post, path = "/api/carts/{user_id}/items", tag = "shop", security(("session" = []), ("bearer" = [])), request_body = NewCartItem,
    params(("user_id" = String, Path, description = "User id, or `me` for the signed-in customer")),
    responses((status = 200, body = pb::AddCartItemResponse), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn add_cart_item(
    State(state): State<AppState>,
    ctx: CallContext,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(body): ApiJson<NewCartItem>,
) -> Result<Json<pb::AddCartItemResponse>, Error> {
    let message = pb::AddCartItemRequest {
        user_id: path_user(user_id),
        product_id: body.product_id,
        quantity: body.quantity,
    };
    let reply = shop_call(&state, Access::Write, |mut c| {
        let request = ctx.request(message.clone());
        async move { c.add_cart_item(request).await }
    })
    .await?;
    Ok(Json(reply))
}

/// Sets the quantity of a product already in the cart.
#[utoipa::path(put, path = "/api/carts/{user_id}/items/{product_id}", tag = "shop", security(("session" = []), ("bearer" = [])), request_body = CartQuantity,
    params(("user_id" = String, Path, description = "User id, or `me` for the signed-in customer"), ("product_id" = String, Path, description = "Product id")),
    responses((status = 200, body = pb::SetCartItemQuantityResponse), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn set_cart_item(
    State(state): State<AppState>,
    ctx: CallContext,
    ApiPath((user_id, product_id)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<CartQuantity>,
) -> Result<Json<pb::SetCartItemQuantityResponse>, Error> {
    let message = pb::SetCartItemQuantityRequest {
        user_id: path_user(user_id),
        product_id,
        quantity: body.quantity,
    };
    let reply = shop_call(&state, Access::Write, |mut c| {
        let request = ctx.request(message.clone());
        async move { c.set_cart_item_quantity(request).await }
    })
    .await?;
    Ok(Json(reply))
}

/// Removes a product from the cart.
#[utoipa::path(delete, path = "/api/carts/{user_id}/items/{product_id}", tag = "shop", security(("session" = []), ("bearer" = [])),
    params(("user_id" = String, Path, description = "User id, or `me` for the signed-in customer"), ("product_id" = String, Path, description = "Product id")),
    responses((status = 200, body = pb::RemoveCartItemResponse), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn remove_cart_item(
    State(state): State<AppState>,
    ctx: CallContext,
    ApiPath((user_id, product_id)): ApiPath<(String, String)>,
) -> Result<Json<pb::RemoveCartItemResponse>, Error> {
    let message = pb::RemoveCartItemRequest {
        user_id: path_user(user_id),
        product_id,
    };
    let reply = shop_call(&state, Access::Write, |mut c| {
        let request = ctx.request(message.clone());
        async move { c.remove_cart_item(request).await }
    })
    .await?;
    Ok(Json(reply))
}

/// Checks out the signed-in customer's cart. The `Idempotency-Key` header is required: the same key
/// returns the same order, so the gateway may retry it on another instance.
#[utoipa::path(post, path = "/api/orders", tag = "shop", security(("session" = []), ("bearer" = [])), request_body = NewOrder,
    params(("Idempotency-Key" = String, Header, description = "Client-chosen key, 1..=128 characters")),
    responses((status = 201, body = pb::PlaceOrderResponse), (status = 200, description = "Replay of an earlier placement", body = pb::PlaceOrderResponse),
        (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn place_order(
    State(state): State<AppState>,
    ctx: CallContext,
    IdempotencyKey(idempotency_key): IdempotencyKey,
    ApiJson(body): ApiJson<NewOrder>,
) -> Result<(StatusCode, Json<pb::PlaceOrderResponse>), Error> {
    let message = pb::PlaceOrderRequest {
        user_id: body.user_id,
        idempotency_key,
    };
    let reply = shop_call(&state, Access::IdempotentWrite, |mut c| {
        let request = ctx.request(message.clone());
        async move { c.place_order(request).await }
    })
    .await?;
    let status = if reply.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(reply)))
}

/// Lists the signed-in customer's orders (or, with the admin token, a named user's),
/// newest first.
#[utoipa::path(get, path = "/api/orders", tag = "shop", security(("session" = []), ("bearer" = [])), params(OrderQuery),
    responses((status = 200, body = pb::ListOrdersResponse), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn list_orders(
    State(state): State<AppState>,
    ctx: CallContext,
    ApiQuery(query): ApiQuery<OrderQuery>,
) -> Result<Json<pb::ListOrdersResponse>, Error> {
    let message = pb::ListOrdersRequest {
        user_id: query.user_id,
        page_size: query.page_size,
        page_token: query.page_token,
    };
    let reply = shop_call(&state, Access::Read, |mut c| {
        let request = ctx.request(message.clone());
        async move { c.list_orders(request).await }
    })
    .await?;
    Ok(Json(reply))
}

/// Returns one order.
#[utoipa::path(get, path = "/api/orders/{order_id}", tag = "shop", security(("session" = []), ("bearer" = [])),
    params(("order_id" = String, Path, description = "Order id")),
    responses((status = 200, body = pb::Order), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn get_order(
    State(state): State<AppState>,
    ctx: CallContext,
    ApiPath(order_id): ApiPath<String>,
) -> Result<Json<pb::Order>, Error> {
    let message = pb::GetOrderRequest { order_id };
    let reply = shop_call(&state, Access::Read, |mut c| {
        let request = ctx.request(message.clone());
        async move { c.get_order(request).await }
    })
    .await?;
    Ok(Json(must(reply.order, "order")?))
}

/// Moves an order to a new status (pending → paid → shipped → delivered, or cancelled);
/// admin only (bearer token passed through; the shop answers 401 without it).
#[utoipa::path(put, path = "/api/orders/{order_id}/status", tag = "shop", request_body = NewOrderStatus,
    params(("order_id" = String, Path, description = "Order id")),
    security(("bearer" = [])),
    responses((status = 200, body = pb::UpdateOrderStatusResponse), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn update_order_status(
    State(state): State<AppState>,
    ctx: CallContext,
    ApiPath(order_id): ApiPath<String>,
    ApiJson(body): ApiJson<NewOrderStatus>,
) -> Result<Json<pb::UpdateOrderStatusResponse>, Error> {
    let message = pb::UpdateOrderStatusRequest {
        order_id,
        status: body.status.into(),
    };
    let reply = shop_call(&state, Access::Write, |mut c| {
        let request = ctx.request(message.clone());
        async move { c.update_order_status(request).await }
    })
    .await?;
    Ok(Json(reply))
}

/// Lists every customer's orders, newest first, optionally one status (admin bearer token
/// passed through; the shop answers 401 without it).
#[utoipa::path(get, path = "/api/admin/orders", tag = "shop", params(AllOrdersQuery),
    security(("bearer" = [])),
    responses((status = 200, body = pb::ListAllOrdersResponse), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
pub async fn list_all_orders(
    State(state): State<AppState>,
    ctx: CallContext,
    ApiQuery(query): ApiQuery<AllOrdersQuery>,
) -> Result<Json<pb::ListAllOrdersResponse>, Error> {
    let message = pb::ListAllOrdersRequest {
        page_size: query.page_size,
        page_token: query.page_token,
        status: query.status.unwrap_or_default().into(),
    };
    let reply = shop_call(&state, Access::Read, |mut c| {
        let request = ctx.request(message.clone());
        async move { c.list_all_orders(request).await }
    })
    .await?;
    Ok(Json(reply))
}
